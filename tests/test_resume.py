"""Crash safety: a run killed with SIGKILL at random moments and resumed ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dslc.runtime.checkpoint import load_checkpoint

MODEL = """
model DropMLP {
    input  image: float[64]
    target label: int[]
    hidden = image -> Dense(32) -> relu -> Dropout(0.3)
    logits = hidden -> head: Dense(10)
    loss cross_entropy(logits, label)
    metric accuracy(logits, label)
}

train {
    data       = "digits"
    validation = 0.2
    epochs     = 40
    batch_size = 16
    optimizer  = Adam(lr = 2e-3)
    seed       = 3
}
"""

TIMING = ("time_s", "samples_per_s")


def _train(nn: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dslc", "train", str(nn), "--out", str(out), "--quiet"]
    cmd += ["--checkpoint-every", "5", "--device", "cpu", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k not in TIMING} for s in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    nn = root / "drop.nn"
    nn.write_text(MODEL)
    _finish(_train(nn, root / "full"))
    return nn, root / "full"


def _checkpoint_step(run: Path) -> int:
    try:
        return int(load_checkpoint(str(run / "last.safetensors"))[0]["step"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def test_kill_9_at_random_moments_then_resume_is_bit_identical(uninterrupted, tmp_path):
    nn, full = uninterrupted
    run = tmp_path / "killed"
    rng = np.random.default_rng(20261125)
    # Kill once the run has passed these steps (of 3600), a random few milliseconds later:
    # anywhere between checkpoints, inside a step or inside a checkpoint write.
    targets = sorted(int(t) for t in rng.choice(np.arange(50, 2800), size=4, replace=False))
    positions = []
    for target in targets:
        resume = (run / "last.safetensors").exists()
        proc = _train(nn, run, *(["--resume"] if resume else []))
        deadline = time.monotonic() + 120
        while proc.poll() is None and _checkpoint_step(run) < target:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[1].decode()
        time.sleep(float(rng.uniform(0.0, 0.03)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Loadable whenever it was killed.
        _, meta = load_checkpoint(str(run / "last.safetensors"))
        positions.append((meta["epoch"], meta["position"]))
    assert any(p != "0" for _, p in positions), positions  # some kill fell mid-epoch
    while True:
        _, meta = load_checkpoint(str(run / "last.safetensors"))
        if meta["epoch"] == "40":
            break
        _finish(_train(nn, run, "--resume"))

    want, want_meta = load_checkpoint(str(full / "last.safetensors"))
    got, got_meta = load_checkpoint(str(run / "last.safetensors"))
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert got[key].tobytes() == want[key].tobytes(), key
    assert got_meta == want_meta
    # Same tensors, same metadata, deterministic header: the very same file.
    assert (run / "last.safetensors").read_bytes() == (full / "last.safetensors").read_bytes()
    assert (run / "best.safetensors").read_bytes() == (full / "best.safetensors").read_bytes()
    # Every epoch exactly once, each record the same as the uninterrupted run's.
    assert _metrics(run) == _metrics(full)
    assert [r["epoch"] for r in _metrics(run)] == list(range(1, 41))
    assert not [p for p in os.listdir(run) if p.startswith(".tmp-")]


def test_mid_epoch_checkpoint_carries_the_epoch_so_far(uninterrupted, tmp_path):
    nn, full = uninterrupted
    run = tmp_path / "steps"
    # 90 batches per epoch: stop inside epoch 2.
    _finish(_train(nn, run, "--steps", "100", "--epochs", "40"))
    tensors, meta = load_checkpoint(str(run / "last.safetensors"))
    assert int(tensors["step"]) == 100 and meta["epoch"] == "1" and meta["position"] == "10"
    # --steps ended the run inside epoch 2: that part has its own line (no carried sums).
    assert meta["partial"] == ""
    assert [r["step"] for r in _metrics(run)] == [90, 100]
    _finish(_train(nn, run, "--resume"))
    records = _metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, *range(2, 41)]
    want, _ = load_checkpoint(str(full / "last.safetensors"))
    got, _ = load_checkpoint(str(run / "last.safetensors"))
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key


def test_resume_drops_metrics_lines_newer_than_the_checkpoint(uninterrupted, tmp_path):
    nn, full = uninterrupted
    run = tmp_path / "torn"
    _finish(_train(nn, run, "--steps", "90"))
    # A kill between writing an epoch's line and its checkpoint leaves a line ahead of it.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "step": 180, "loss": 0.0}) + "\n")
        f.write('{"epoch": 3, "st')  # and a torn write
    _finish(_train(nn, run, "--resume"))
    assert _metrics(run) == _metrics(full)


def test_resume_refuses_another_seed_or_batch_size(uninterrupted, tmp_path):
    nn, _ = uninterrupted
    run = tmp_path / "seeded"
    _finish(_train(nn, run, "--steps", "3"))
    for flags, message in (
        (("--seed", "4"), "was trained with seed 3, this run uses 4"),
        (("--batch-size", "32"), "was trained with batch size 16, this run uses 32"),
    ):
        proc = _train(nn, run, "--resume", *flags)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and message in err.decode()


def test_checkpoint_writes_fsync_the_file_and_then_its_folder(tmp_path, monkeypatch):
    import stat

    from dslc.runtime import checkpoint

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", spy)
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(4)}
    checkpoint.save_checkpoint(str(tmp_path / "a.safetensors"), tensors, {"epoch": "1"})
    assert synced == ["file", "dir"]
    # Deterministic bytes: the same state and metadata give the same file.
    checkpoint.save_checkpoint(str(tmp_path / "b.safetensors"), tensors, {"epoch": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    from safetensors.numpy import load_file

    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert loaded["step"].shape == () and int(loaded["step"]) == 4
    np.testing.assert_array_equal(loaded["w"], tensors["w"])


def test_ctrl_c_mid_epoch_saves_the_position_and_the_epoch_so_far(uninterrupted, tmp_path):
    import dslc.api as api

    nn, full = uninterrupted
    run = tmp_path / "interrupted"

    def interrupt(info: dict) -> None:
        if info["step"] == 130:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(str(nn), out=str(run), device="cpu", progress=False, on_step=interrupt)
    tensors, meta = load_checkpoint(str(run / "last.safetensors"))
    assert int(tensors["step"]) == 130 and (meta["epoch"], meta["position"]) == ("1", "40")
    assert json.loads(meta["partial"])["seen"] == 40 * 16
    api.train(str(nn), out=str(run), device="cpu", progress=False, resume=True)
    assert (run / "last.safetensors").read_bytes() == (full / "last.safetensors").read_bytes()
    assert _metrics(run) == _metrics(full)
