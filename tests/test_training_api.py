"""The notebook API (callbacks per step and per epoch), devices and the device-resident dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dslc.api as api
from dslc.cli import main
from dslc.runtime import session
from dslc.runtime.trainer import TrainOptions
from dslc.runtime.trainer import train as train_with_options

MODEL = """
model Api {
    input  image: float[64]
    target label: int[]
    logits = image -> Dense(16) -> relu -> Dropout(0.2) -> head: Dense(10)
    output probs = softmax(logits)
    loss cross_entropy(logits, label)
    metric accuracy(logits, label)
}

train {
    data       = "digits"
    validation = 0.25
    epochs     = 3
    batch_size = 100
    optimizer  = Adam(lr = 1e-2)
    seed       = 2
}
"""


@pytest.fixture
def nn(tmp_path) -> str:
    path = tmp_path / "api.nn"
    path.write_text(MODEL)
    return str(path)


def test_callbacks_receive_every_epoch_and_every_step(nn, tmp_path):
    epochs, steps = [], []
    result = api.train(
        nn,
        out=str(tmp_path / "r"),
        device="cpu",
        progress=False,
        callbacks=[epochs.append],
        on_step=steps.append,
    )
    lines = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == lines == list(result.history)
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    # 1348 training examples in batches of 100: 14 steps per epoch.
    assert [s["step"] for s in steps] == list(range(1, 43))
    assert [s["batch"] for s in steps[:15]] == [*range(1, 15), 1]
    assert {"epoch", "batch", "step", "loss", "accuracy", "lr"} <= set(steps[0])
    # The epoch's loss is the batch-size-weighted mean of its steps' losses.
    first = steps[:14]
    sizes = [100] * 13 + [48]
    weighted = sum(s["loss"] * n for s, n in zip(first, sizes, strict=True)) / sum(sizes)
    assert epochs[0]["loss"] == pytest.approx(weighted, rel=1e-12)


def test_evaluate_and_export_the_returned_state(nn, tmp_path):
    result = api.train(nn, out=str(tmp_path / "r"), device="cpu", progress=False, epochs=1)
    final = str(tmp_path / "r" / "final.safetensors")
    metrics = api.evaluate(nn, final)
    assert set(metrics) == {"loss", "accuracy"} and metrics["accuracy"] > 0.3
    path = api.export(nn, final, str(tmp_path / "m.onnx"))
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "image" and result.device == "cpu"
    with pytest.raises(api.DslcError, match="declares no `output`"):
        api.export(nn.replace("api.nn", "none.nn"), None, str(tmp_path / "x.onnx"))


@pytest.fixture(autouse=True)
def _no_output_model(tmp_path):
    (tmp_path / "none.nn").write_text(MODEL.replace("    output probs = softmax(logits)\n", ""))


def test_device_auto_falls_back_to_cpu_with_one_line(nn, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "cuda_available", lambda: False)
    code = main(["train", nn, "--out", str(tmp_path / "r"), "--quiet", "--device", "auto"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.splitlines() == ["dslc: CUDA not available, using CPU"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["device"] == "cpu"


def test_device_cuda_without_cuda_is_an_error(nn, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "cuda_available", lambda: False)
    code = main(["train", nn, "--out", str(tmp_path / "r"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: CUDA was requested but its execution provider does not initialise" in err
    assert not (tmp_path / "r" / "last.safetensors").exists()


def test_a_device_resident_dataset_gives_the_same_parameters(nn, tmp_path):
    # The Gather-on-device path runs on the CPU here; on CUDA it is the default.
    model = api.load(nn)
    runs = {}
    for resident in (False, True):
        opts = TrainOptions(
            out=str(tmp_path / str(resident)), device="cpu", progress=False, resident=resident
        )
        runs[resident] = train_with_options(model, opts).state
    for key, value in runs[False].items():
        assert np.array_equal(runs[True][key], value), key
