"""Early stopping (LANGUAGE.md §8): monitor, patience, min_delta, mode, restore_best, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dslc.api as api
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.trainer import _improved

MODEL = """
model Small {{
    input  image: float[64]
    target label: int[]
    logits = image -> Dense(16) -> relu -> head: Dense(10)
    loss cross_entropy(logits, label)
    metric accuracy(logits, label)
}}

train {{
    data           = "digits"
    validation     = 0.2
    epochs         = 8
    batch_size     = 128
    optimizer      = SGD(lr = {lr})
    early_stopping = EarlyStopping({es})
}}
"""


def _model(tmp_path, es: str, lr: str = "1e-4"):
    path = tmp_path / "small.nn"
    path.write_text(MODEL.format(es=es, lr=lr))
    return api.load(str(path))


def _lines(run) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


STOP = "monitor = val_accuracy, patience = 2, min_delta = 0.5, mode = max"


def test_a_run_that_cannot_improve_by_min_delta_stops_after_patience(tmp_path):
    model = _model(tmp_path, STOP)
    run = tmp_path / "run"
    result = api.train(model, out=str(run), device="cpu", progress=False)
    # Epoch 1 sets the best; epochs 2 and 3 fail to beat it by 0.5: stop after 3 of 8.
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1
    assert [r["epoch"] for r in _lines(run)] == [1, 2, 3]
    assert result.best == _lines(run)[0]["val_accuracy"] and result.monitor == "val_accuracy"
    best, best_meta = load_checkpoint(str(run / "best.safetensors"))
    last, last_meta = load_checkpoint(str(run / "last.safetensors"))
    final, final_meta = load_checkpoint(str(run / "final.safetensors"))
    assert best_meta["epoch"] == "1" and last_meta["epoch"] == "3" and last_meta["wait"] == "2"
    # restore_best: the returned and the final parameters are the best epoch's; last stays last.
    assert final_meta["source"] == "best" and result.restored_best
    for key in ("dense_1.weight", "head.bias"):
        np.testing.assert_array_equal(result.state[key], best[key])
        np.testing.assert_array_equal(final[key], best[key])
        assert not np.array_equal(last[key], best[key])
    assert int(last["step"]) == 3 * 12 and "step" not in final


def test_restore_best_false_returns_the_last_state(tmp_path):
    model = _model(tmp_path, STOP + ", restore_best = false")
    run = tmp_path / "run"
    result = api.train(model, out=str(run), device="cpu", progress=False)
    last, _ = load_checkpoint(str(run / "last.safetensors"))
    assert result.stopped_early and not result.restored_best
    np.testing.assert_array_equal(result.state["head.weight"], last["head.weight"])


def test_mode_min_on_loss_with_a_real_learning_rate_runs_to_the_end(tmp_path):
    model = _model(tmp_path, "monitor = loss, patience = 2, mode = min", lr="0.5")
    result = api.train(model, out=str(tmp_path / "run"), device="cpu", progress=False)
    assert not result.stopped_early and result.epochs == 8
    losses = [r["loss"] for r in result.history]
    assert result.best == min(losses) and result.best_epoch == 1 + losses.index(min(losses))


def test_resume_keeps_the_patience_counter_and_stops_at_the_same_epoch(tmp_path):
    model = _model(tmp_path, STOP)
    full = api.train(model, out=str(tmp_path / "full"), device="cpu", progress=False)
    run = tmp_path / "part"
    # Two epochs and a bit: the counter (wait = 1) and the best must survive the restart.
    part = api.train(model, out=str(run), steps=29, epochs=8, device="cpu", progress=False)
    assert not part.stopped_early
    assert load_checkpoint(str(run / "last.safetensors"))[1]["wait"] == "1"
    resumed = api.train(model, out=str(run), resume=True, device="cpu", progress=False)
    assert resumed.stopped_early and resumed.best_epoch == 1
    assert resumed.steps == full.steps
    np.testing.assert_array_equal(resumed.state["head.weight"], full.state["head.weight"])
    # A finished run stays finished: resuming it trains nothing.
    again = api.train(model, out=str(run), resume=True, device="cpu", progress=False)
    assert again.stopped_early and again.steps == full.steps
    assert len(_lines(run)) == len(_lines(tmp_path / "full")) + 1  # the --steps split epoch 3


@pytest.mark.parametrize(
    ("value", "best", "mode", "delta", "want"),
    [
        (0.5, None, "min", 0.0, True),
        (0.4, 0.5, "min", 0.0, True),
        (0.45, 0.5, "min", 0.1, False),
        (0.7, 0.5, "max", 0.1, True),
        (0.55, 0.5, "max", 0.1, False),
        (float("nan"), None, "min", 0.0, False),
    ],
)
def test_improvement_rule(value, best, mode, delta, want):
    assert _improved(value, best, mode, delta) is want


def test_auto_mode_and_an_unreported_monitor(tmp_path):
    result = api.train(
        _model(tmp_path, "monitor = val_accuracy, patience = 1"),
        out=str(tmp_path / "a"),
        epochs=1,
        device="cpu",
        progress=False,
    )
    assert (
        json.loads(load_checkpoint(str(tmp_path / "a" / "last.safetensors"))[1]["best"])
        == (result.history[0]["val_accuracy"])
    )
    assert load_checkpoint(str(tmp_path / "a" / "last.safetensors"))[1]["mode"] == "max"
    with pytest.raises(api.DslcError, match="monitors `val_f1`"):
        api.train(_model(tmp_path, "monitor = val_f1"), out=str(tmp_path / "b"), progress=False)
