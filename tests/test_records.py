"""Run records: run.json and the model copy, `dslc plot` PNGs, `dslc eval`'s confusion matrix."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import dslc.api as api
from dslc.cli import main
from dslc.runtime.plot import png_bytes, quantities, render
from dslc.runtime.records import read_metrics, sha256_arrays, truncate_metrics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MODEL = """
model Rec {
    input  image: float[64]
    target label: int[]
    logits = image -> Dense(16) -> relu -> head: Dense(10)
    loss cross_entropy(logits, label)
    metric accuracy(logits, label)
}

train {
    data       = "digits"
    validation = 0.25
    epochs     = 3
    batch_size = 64
    optimizer  = Adam(lr = 1e-2)
    seed       = 5
}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("records")
    nn = root / "rec.nn"
    nn.write_text(MODEL)
    run = root / "run"
    argv = ["train", str(nn), "--out", str(run), "--quiet", "--device", "cpu", "--seed", "7"]
    assert main(argv) == 0
    return nn, run


def _png(data: bytes) -> tuple[int, int, np.ndarray]:
    """Decode the PNGs that png_bytes writes (8-bit RGB, filter 0) back to pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return w, h, raw[:, 1:].reshape(h, w, 3)


def test_run_json_records_what_repeats_the_run(trained):
    nn, run = trained
    record = json.loads((run / "run.json").read_text())
    assert (run / "rec.nn").read_text() == MODEL
    assert record["model_sha256"] == hashlib.sha256(nn.read_bytes()).hexdigest()
    assert record["seed"] == 7 and record["settings"]["seed"] == 7  # the CLI override
    assert record["settings"]["batch_size"] == 64 and record["settings"]["epochs"] == 3
    assert record["settings"]["optimizer"]["name"] == "Adam"
    assert record["device"] == "cpu" and record["settings"]["device_requested"] == "cpu"
    assert set(record["versions"]) >= {"dslc", "onnx", "onnxruntime", "numpy"}
    assert record["command"][:3] == ["dslc", "train", str(nn)] and "--seed" in record["command"]
    data = api.load_data(str(nn))
    from dslc.runtime.data import split

    train, val = split(data, 0.25, 7)
    assert record["data_sha256"] == {
        "train": sha256_arrays(train.arrays),
        "validation": sha256_arrays(val.arrays),
    }


def test_resume_appends_to_run_json(trained, tmp_path):
    nn, _ = trained
    run = tmp_path / "run"
    assert (
        main(["train", str(nn), "--out", str(run), "--quiet", "--device", "cpu", "--steps", "5"])
        == 0
    )
    assert (
        main(["train", str(nn), "--out", str(run), "--quiet", "--device", "cpu", "--resume"]) == 0
    )
    record = json.loads((run / "run.json").read_text())
    assert "--steps" in record["command"]
    assert len(record["resumed"]) == 1 and "--resume" in record["resumed"][0]["command"]


def test_plot_writes_a_png_with_both_curves(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "chart.png"
    assert main(["plot", str(run), "-o", str(out)]) == 0
    w, h, px = _png(out.read_bytes())
    assert (w, h) == (720, 2 * 240)  # one panel for the loss, one for accuracy
    colours = {tuple(int(c) for c in p) for p in px.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # train and val lines
    assert (px < 128).all(axis=2).sum() > 200  # dark text and labels
    assert main(["plot", str(run)]) == 0 and (run / "metrics.png").is_file()
    assert main(["plot", str(tmp_path)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_png_writer_round_trips_pixels():
    img = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    w, h, px = _png(png_bytes(img))
    assert (w, h) == (5, 7) and np.array_equal(px, img)


def test_plot_takes_the_last_line_of_a_split_epoch_and_knows_the_metrics():
    records = [
        {"epoch": 1, "step": 5, "loss": 2.0, "acc": 0.1, "lr": 0.1, "time_s": 1},
        {"epoch": 1, "step": 10, "loss": 1.0, "acc": 0.2, "val_loss": 1.5, "val_acc": 0.3},
        {"epoch": 2, "step": 20, "loss": 0.5, "acc": 0.4, "val_loss": 0.9, "val_acc": 0.5},
    ]
    assert quantities(records) == ["loss", "acc"]
    assert render(records).shape == (480, 720, 3)


def test_truncate_metrics_keeps_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 4}\n{"epoch": 2, "step": 8}\n{"epoch": 3, "st')
    assert [r["epoch"] for r in truncate_metrics(str(path), 4)] == [1]
    assert [r["epoch"] for r in read_metrics(str(path))] == [1]


def test_eval_prints_a_confusion_matrix_for_classifiers(trained, capsys):
    nn, run = trained
    ckpt = str(run / "last.safetensors")
    assert main(["eval", str(nn), "--checkpoint", ckpt]) == 0
    out = capsys.readouterr().out
    assert "confusion matrix of `label` (rows: true, columns: predicted)" in out
    conf = api.confusion_matrix(str(nn), ckpt)
    assert conf is not None and conf.matrix.shape == (10, 10)
    labels = api.load_data(str(nn)).arrays["label"]
    assert conf.matrix.sum() == len(labels)
    np.testing.assert_array_equal(conf.matrix.sum(axis=1), np.bincount(labels, minlength=10))
    accuracy = api.evaluate(str(nn), ckpt)["accuracy"]
    assert np.trace(conf.matrix) / len(labels) == pytest.approx(accuracy, abs=1e-6)
    assert main(["eval", str(nn), "--checkpoint", ckpt, "--json"]) == 0
    assert "confusion" not in capsys.readouterr().out


def test_no_confusion_matrix_for_a_regression_model(tmp_path):
    model = api.load(str(EXAMPLES / "regression.nn"))
    api.train(model, out=str(tmp_path / "r"), steps=2, device="cpu", progress=False)
    assert api.confusion_matrix(model, str(tmp_path / "r" / "last.safetensors")) is None


SEQ = """
model Tagger {
    input  tokens: int[5]
    target tags: int[5]
    logits = tokens -> Embedding(12, 6) -> head: Dense(3)
    loss cross_entropy(logits, tags)
    metric accuracy(logits, tags)
}

train {
    data       = "tags.npz"
    epochs     = 2
    batch_size = 8
    optimizer  = Adam(lr = 1e-2)
}
"""


def test_a_sequence_classifier_counts_every_position(tmp_path, capsys):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 12, size=(20, 5))
    np.savez(tmp_path / "tags.npz", tokens=tokens, tags=tokens % 3)
    nn = tmp_path / "tagger.nn"
    nn.write_text(SEQ)
    api.train(str(nn), out=str(tmp_path / "r"), device="cpu", progress=False)
    ckpt = str(tmp_path / "r" / "last.safetensors")
    conf = api.confusion_matrix(str(nn), ckpt)
    assert conf is not None and conf.target == "tags" and conf.matrix.sum() == 100
    np.testing.assert_array_equal(conf.matrix.sum(axis=1), np.bincount((tokens % 3).ravel()))
    accuracy = api.evaluate(str(nn), ckpt)["accuracy"]
    assert np.trace(conf.matrix) / 100 == pytest.approx(accuracy, abs=1e-6)
