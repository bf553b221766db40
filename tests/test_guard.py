"""The NaN/Inf guard: a diverging run stops at the first bad step and names the .nn line."""

from __future__ import annotations

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint

BASE = """model Net {{
    input  image: float[64]
    target label: int[]
    hidden = image -> Dense(16) -> relu
    logits = hidden -> head: Dense(10)
    {extra}
    loss cross_entropy({logits}, label)
}}

train {{
    data       = "digits"
    epochs     = 2
    batch_size = 32
    optimizer  = SGD(lr = {lr})
}}
"""


def _run(capsys, tmp_path, *, lr="0.1", extra="", logits="logits"):
    nn = tmp_path / "net.nn"
    nn.write_text(BASE.format(lr=lr, extra=extra, logits=logits))
    out = tmp_path / "run"
    code = main(["train", str(nn), "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    tensors, meta = load_checkpoint(str(out / "last.safetensors"))
    return code, err, str(nn), tensors, meta


def _all_finite(tensors) -> bool:
    return all(np.isfinite(v).all() for v in tensors.values() if v.dtype.kind == "f")


def test_log_of_a_negative_names_the_function_and_its_line(capsys, tmp_path):
    code, err, nn, tensors, meta = _run(
        capsys, tmp_path, extra="shifted = log(logits)", logits="shifted"
    )
    assert code == 1
    assert f"{nn}:6:15: error: training diverged at step 1: NaN first appears in `log(...)`" in err
    assert "Traceback" not in err
    # Nothing finite was learnt yet: the checkpoint is the initial state, step 0.
    assert int(tensors["step"]) == 0 and _all_finite(tensors)
    assert meta["epoch"] == "0" and meta["position"] == "0"


def test_huge_learning_rate_names_the_layer_where_inf_appears(capsys, tmp_path):
    code, err, nn, tensors, meta = _run(capsys, tmp_path, lr="1e30")
    assert code == 1
    assert (
        f"{nn}:5:30: error: training diverged at step 2: Inf first appears in layer `head`" in err
    )
    assert "last.safetensors holds the last finite state (before step 2)" in err
    assert int(tensors["step"]) == 1 and meta["position"] == "1" and _all_finite(tensors)


def test_an_update_that_overflows_is_caught_before_it_is_kept(capsys, tmp_path):
    code, err, nn, tensors, _ = _run(capsys, tmp_path, lr="1e38")
    assert code == 1
    assert f"{nn}:4:23: error: training diverged at step 1" in err
    assert "the update of `dense_1.weight` overflows float32" in err
    assert int(tensors["step"]) == 0 and _all_finite(tensors)


def test_the_api_raises_training_diverged_with_the_step(tmp_path):
    import dslc.api as api

    nn = tmp_path / "net.nn"
    nn.write_text(BASE.format(lr="1e30", extra="", logits="logits"))
    with pytest.raises(api.TrainingDiverged) as info:
        api.train(str(nn), out=str(tmp_path / "r"), device="cpu", progress=False)
    assert info.value.step == 1 and info.value.span is not None and info.value.span.line == 5


def test_probe_output_is_zero_for_finite_state_and_nan_otherwise():
    from dslc.check import check_source
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_train_step, initial_state, optimizer_state
    from dslc.runtime.guard import PROBE, add_finite_probe
    from dslc.runtime.session import StepRunner

    model = check_source(BASE.format(lr="0.1", extra="", logits="logits"), "net.nn")
    graph = to_onnx(add_finite_probe(build_train_step(model, batch=4))).SerializeToString()
    state = {**initial_state(model, 0), **optimizer_state(model)}
    runner = StepRunner({4: graph}, state)
    batch = {"image": np.full((4, 64), 0.5, np.float32), "label": np.arange(4, dtype=np.int64)}
    assert runner.step(batch)[PROBE] == 0.0
    bad = dict(state)
    bad["head.bias"] = np.array([np.inf] + [0.0] * 9, np.float32)
    runner.set_state(bad)
    assert np.isnan(runner.step(batch)[PROBE])
    runner.rewind()  # the inputs of the failed step are intact
    assert np.isinf(runner.state()["head.bias"][0])


def test_optimiser_state_that_overflows_is_caught_at_the_checkpoint(tmp_path, capsys):
    nn = tmp_path / "slot.nn"
    nn.write_text(
        BASE.format(lr="1e-3", extra="", logits="logits")
        .replace("hidden = image -> Dense(16) -> relu", "hidden = image * 1e20")
        .replace("SGD(lr = 1e-3)", "Adam(lr = 1e-3)")
    )
    out = tmp_path / "run"
    argv = ["train", str(nn), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main([*argv, "--checkpoint-every", "4"]) == 1
    err = capsys.readouterr().err
    # Adam's squared gradient overflows while the parameters stay finite (the update is 0).
    assert f"{nn}:5:30: error: training diverged by step 4: the optimiser state" in err
    assert "`opt.head.weight.exp_avg_sq` is not finite" in err
    tensors, _ = load_checkpoint(str(out / "last.safetensors"))
    assert int(tensors["step"]) == 0 and _all_finite(tensors)  # the start of the run
