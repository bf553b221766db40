"""The command line end to end: check, compile, train, resume, eval, export, gradcheck."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint, save_checkpoint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TINY = """\
model Tiny {
    input  image: float[64]
    target label: int[]
    logits = image -> Dense(16) -> relu -> head: Dense(10)
    output probs = softmax(logits)
    loss cross_entropy(logits, label)
    metric accuracy(logits, label)
}

train {
    data       = "digits"
    validation = 0.5
    epochs     = 2
    batch_size = 128
    optimizer  = Adam(lr = 1e-2)
    seed       = 3
    EXTRA
}
"""


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.nn"
    path.write_text(TINY.replace("EXTRA", ""))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def read_metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------- check and errors


def test_check_prints_the_summary(capsys, tiny):
    code, out, err = run(capsys, "check", tiny)
    assert code == 0, err
    assert "head" in out and "dense_1" in out


def test_source_errors_render_with_caret_and_exit_1(capsys, tmp_path):
    bad = tmp_path / "bad.nn"
    bad.write_text(TINY.replace("Dense(16)", "Dense(16").replace("EXTRA", ""))
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1
    assert f"{bad}:" in err and "error:" in err and "^" in err
    assert "Traceback" not in err


def test_usage_and_missing_file(capsys, tmp_path):
    assert run(capsys, "check", str(tmp_path / "none.nn"))[0] == 1
    code, _, err = run(capsys, "train")
    assert code == 2 and "usage" in err
    code, _, err = run(capsys, "train", "x.nn", "--steps", "0")
    assert code == 2 and "at least 1" in err


# ---------------------------------------------------------------- train


def test_train_digits_mlp_steps_20(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys, "train", str(EXAMPLES / "digits_mlp.nn"), "--steps", "20", "--out", str(out_dir)
    )
    assert code == 0, err
    from dslc.runtime.session import cuda_available

    assert cuda_available() or "dslc: CUDA not available, using CPU" in err.splitlines()
    assert (out_dir / "last.safetensors").is_file() and (out_dir / "best.safetensors").is_file()
    (record,) = read_metrics(out_dir)
    assert list(record) == [
        "epoch",
        "step",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "time_s",
        "samples_per_s",
    ]
    assert record["step"] == 20 and record["epoch"] == 1 and record["lr"] == pytest.approx(2e-3)
    tensors, meta = load_checkpoint(str(out_dir / "last.safetensors"))
    assert int(tensors["step"]) == 20 and tensors["step"].dtype == np.int64
    assert tensors["head.weight"].shape == (10, 64)
    assert {"opt.head.weight.exp_avg", "opt.head.weight.exp_avg_sq"} <= set(tensors)
    assert meta["epoch"] == "0" and meta["position"] == "20" and meta["model"] == "DigitsMLP"


def test_training_learns_and_is_reproducible(capsys, tiny, tmp_path):
    for name in ("a", "b"):
        assert run(capsys, "train", tiny, "--out", str(tmp_path / name), "--quiet")[0] == 0
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in a] == [1, 2] and a[-1][
        "step"
    ] == 16  # 899 examples / 128 -> 8 steps
    assert a[-1]["loss"] < a[0]["loss"] and a[-1]["val_accuracy"] > 0.5
    strip = [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in a]
    assert strip == [
        {k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in b
    ]


def test_resume_mid_epoch_is_exact(capsys, tiny, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(capsys, "train", tiny, "--out", str(full), "--quiet")[0] == 0
    assert (
        run(capsys, "train", tiny, "--out", str(part), "--steps", "5", "--epochs", "2", "--quiet")[
            0
        ]
        == 0
    )
    assert load_checkpoint(str(part / "last.safetensors"))[1]["position"] == "5"
    assert run(capsys, "train", tiny, "--out", str(part), "--resume", "--quiet")[0] == 0
    want, _ = load_checkpoint(str(full / "last.safetensors"))
    got, meta = load_checkpoint(str(part / "last.safetensors"))
    assert meta["epoch"] == "2" and meta["position"] == "0"
    assert set(want) == set(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # metrics.jsonl is appended: the split first epoch, then the second.
    assert [r["step"] for r in read_metrics(part)] == [5, 8, 16]
    code, _, err = run(capsys, "train", tiny, "--out", str(part), "--resume", "--batch-size", "64")
    assert code == 1 and "batch size 128" in err


def test_resume_without_a_run_and_init_errors(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "train", tiny, "--out", str(tmp_path / "none"), "--resume")
    assert code == 1 and "last.safetensors not found" in err
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(str(bad), {"dense_1.weight": np.zeros((3, 3), np.float32)}, {})
    code, _, err = run(
        capsys, "train", tiny, "--init", str(bad), "--steps", "1", "--out", str(tmp_path / "x")
    )
    assert code == 1 and "no parameter" in err and "Traceback" not in err


def test_init_starts_from_given_parameters(capsys, tiny, tmp_path):
    assert run(capsys, "train", tiny, "--out", str(tmp_path / "a"), "--quiet")[0] == 0
    ckpt = str(tmp_path / "a" / "last.safetensors")
    assert (
        run(
            capsys,
            "train",
            tiny,
            "--out",
            str(tmp_path / "b"),
            "--init",
            ckpt,
            "--steps",
            "1",
            "--quiet",
        )[0]
        == 0
    )
    first = read_metrics(tmp_path / "b")[0]
    fresh = read_metrics(tmp_path / "a")[0]
    assert first["loss"] < fresh["loss"]  # a trained start has a lower first-step loss


def test_data_errors_exit_1(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "train", tiny, "--data", "missing.npz", "--steps", "1")
    assert code == 1 and "missing.npz: dataset not found" in err
    npz = tmp_path / "d.npz"
    np.savez(npz, image=np.zeros((4, 64)))
    code, _, err = run(capsys, "train", tiny, "--data", str(npz), "--steps", "1")
    assert code == 1 and "missing key `label`" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("train", "--steps", "1", "--out", "{file}"),
        ("train", "--steps", "1", "--out", "{file}/run"),
        ("compile", "-o", "{file}"),
        ("export", "-o", "{file}/model.onnx"),
        ("export", "-o", "{folder}"),
    ],
    ids=["train-out-is-a-file", "train-out-under-a-file", "compile", "export", "export-to-folder"],
)
def test_an_unwritable_output_path_is_a_one_line_error(capsys, tiny, tmp_path, argv):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a folder")
    args = [a.format(file=in_the_way, folder=tmp_path) for a in argv]
    code, _, err = run(capsys, args[0], tiny, *args[1:])
    assert code == 1
    assert "internal error" not in err and "Traceback" not in err
    assert str(in_the_way if "{file}" in " ".join(argv) else tmp_path) in err, err


def test_early_stopping_restores_and_stops(capsys, tmp_path):
    path = tmp_path / "es.nn"
    es = "early_stopping = EarlyStopping(monitor = val_loss, patience = 1, min_delta = 100)"
    path.write_text(TINY.replace("EXTRA", es).replace("epochs     = 2", "epochs     = 5"))
    code, _, err = run(capsys, "train", str(path), "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert len(read_metrics(tmp_path / "r")) == 2 and "early stopping" in err
    _, meta = load_checkpoint(str(tmp_path / "r" / "best.safetensors"))
    assert meta["epoch"] == "1"


def test_keyboard_interrupt_exits_130(capsys, tiny, monkeypatch):
    import dslc.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dslc.api, "train", interrupted)
    code, _, err = run(capsys, "train", tiny)
    assert code == 130 and "interrupted" in err and "Traceback" not in err


# ---------------------------------------------------------------- eval, export, compile, gradcheck


def test_eval_and_export(capsys, tiny, tmp_path):
    assert run(capsys, "train", tiny, "--out", str(tmp_path / "r"), "--quiet")[0] == 0
    ckpt = str(tmp_path / "r" / "last.safetensors")
    code, out, err = run(capsys, "eval", tiny, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert set(metrics) == {"loss", "accuracy"} and 0.5 < metrics["accuracy"] <= 1.0
    code, out, _ = run(capsys, "eval", tiny, "--checkpoint", ckpt)
    assert code == 0 and out.startswith("loss: ")

    onnx_path = str(tmp_path / "tiny.onnx")
    assert run(capsys, "export", tiny, "--checkpoint", ckpt, "-o", onnx_path)[0] == 0
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1] == 64
    assert [o.name for o in sess.get_outputs()] == ["probs"]
    x = np.random.default_rng(0).uniform(size=(5, 64)).astype(np.float32)
    (probs,) = sess.run(None, {"image": x})
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sess.run(None, {"image": x[:1]})[0], probs[:1], rtol=1e-5)


def test_eval_json_writes_a_non_finite_metric_as_null(capsys, tiny, tmp_path):
    out_dir = str(tmp_path / "r")
    assert run(capsys, "train", tiny, "--steps", "1", "--out", out_dir, "--quiet")[0] == 0
    tensors, meta = load_checkpoint(str(tmp_path / "r" / "final.safetensors"))
    tensors["head.bias"] = np.full_like(tensors["head.bias"], np.nan)
    ckpt = str(tmp_path / "nan.safetensors")
    save_checkpoint(ckpt, tensors, meta)
    code, out, err = run(capsys, "eval", tiny, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    metrics = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert metrics["loss"] is None and isinstance(metrics["accuracy"], float)


def test_compile_writes_the_graphs(capsys, tiny, tmp_path):
    out_dir = tmp_path / "c"
    code, out, err = run(capsys, "compile", tiny, "-o", str(out_dir), "--dump", "ir")
    assert code == 0, err
    assert {p.name for p in out_dir.iterdir()} == {
        "train_step.onnx",
        "eval_step.onnx",
        "model.onnx",
        "init.safetensors",
    }
    assert "head.weight" in out
    sess = ort.InferenceSession(
        str(out_dir / "train_step.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in sess.get_inputs()]
    assert names[-2:] == ["image", "label"] and "step" in names and "seed" in names
    tensors, _ = load_checkpoint(str(out_dir / "init.safetensors"))
    assert tensors["head.weight"].shape == (10, 16)


def test_gradcheck_passes_and_detects_a_mismatch(capsys, tiny, monkeypatch):
    code, out, _ = run(capsys, "gradcheck", tiny)
    assert code == 0 and out.count(" ok") == 4
    import dataclasses

    from dslc.runtime import gradcheck

    # A step that moves twice as far as the gradient must be reported as wrong.
    spec = gradcheck.SGD_PLAIN
    doubled = dataclasses.replace(spec, options={**spec.options, "lr": 2.0})
    monkeypatch.setattr(gradcheck, "SGD_PLAIN", doubled)
    code, out, err = run(capsys, "gradcheck", tiny)
    assert code == 1 and "MISMATCH" in out and "mismatch" in err


# ---------------------------------------------------------------- the Python API


def test_api_train_with_a_stopping_callback(tiny, tmp_path):
    import dslc.api as api

    model = api.load(tiny)
    seen = []

    def stop_after_first(record):
        seen.append(record)
        return True

    result = api.train(model, out=str(tmp_path / "r"), progress=False, callbacks=[stop_after_first])
    assert len(seen) == 1 and result.epochs == 1 and result.steps == 8
    assert result.history[0]["epoch"] == 1 and result.monitor == "val_loss"
    assert result.state["head.weight"].shape == (10, 16) and int(result.state["step"]) == 8
    metrics = api.evaluate(model, str(tmp_path / "r" / "last.safetensors"))
    assert set(metrics) == {"loss", "accuracy"}
