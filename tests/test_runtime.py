"""The step runner against a hand-written training-step graph that follows the contract."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dslc.errors import DslcError
from dslc.runtime.progress import Progress
from dslc.runtime.session import EvalRunner, StepRunner, make_session, resolve_device
from dslc.runtime.trainer import epoch_order

D, C, LR = 5, 3, 0.1


def linear_step(batch: int) -> bytes:
    """Softmax regression with SGD: params W [C, D], b [C]; outputs loss, accuracy, lr, *.next."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    consts = [
        numpy_helper.from_array(np.array(LR, np.float32), "lr_c"),
        numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array(C, np.int64), "depth"),
        numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onehot_vals"),
        numpy_helper.from_array(np.array(1.0 / batch, np.float32), "inv_b"),
    ]
    n = helper.make_node
    nodes = [
        n("Gemm", ["x", "W", "b"], ["logits"], transB=1),
        n("LogSoftmax", ["logits"], ["logp"], axis=1),
        n("Unsqueeze", ["y", "one_axis"], ["y2"]),
        n("GatherElements", ["logp", "y2"], ["picked"], axis=1),
        n("ReduceMean", ["picked"], ["mean_picked"], keepdims=0),
        n("Neg", ["mean_picked"], ["loss"]),
        n("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0),
        n("Equal", ["pred", "y"], ["hit"]),
        n("Cast", ["hit"], ["hitf"], to=f),
        n("ReduceMean", ["hitf"], ["accuracy"], keepdims=0),
        n("Identity", ["lr_c"], ["lr"]),
        n("Softmax", ["logits"], ["p"], axis=1),
        n("OneHot", ["y", "depth", "onehot_vals"], ["oh"], axis=-1),
        n("Sub", ["p", "oh"], ["d0"]),
        n("Mul", ["d0", "inv_b"], ["dlogits"]),
        n("Gemm", ["dlogits", "x"], ["dW"], transA=1),
        n("ReduceSum", ["dlogits", "zero_axis"], ["db"], keepdims=0),
        n("Mul", ["dW", "lr"], ["uW"]),
        n("Sub", ["W", "uW"], ["W.next"]),
        n("Mul", ["db", "lr"], ["ub"]),
        n("Sub", ["b", "ub"], ["b.next"]),
        n("Add", ["step", "one_i"], ["step.next"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "linear_step",
        [
            vi("W", f, [C, D]),
            vi("b", f, [C]),
            vi("step", i64, []),
            vi("seed", i64, []),
            vi("x", f, [batch, D]),
            vi("y", i64, [batch]),
        ],
        [
            vi("loss", f, []),
            vi("accuracy", f, []),
            vi("lr", f, []),
            vi("W.next", f, [C, D]),
            vi("b.next", f, [C]),
            vi("step.next", i64, []),
        ],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def numpy_step(W, b, x, y):
    logits = x @ W.T + b
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    acc = (logits.argmax(axis=1) == y).mean()
    g = (np.exp(logp) - np.eye(C)[y]) / len(y)
    return W - LR * (g.T @ x), b - LR * g.sum(axis=0), loss, acc


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, D)).astype(np.float32)
    y = rng.integers(0, C, size=10).astype(np.int64)
    state = {
        "W": rng.normal(size=(C, D)).astype(np.float32),
        "b": np.zeros(C, np.float32),
        "step": np.array(0, np.int64),
    }
    return x, y, state


def test_ping_pong_matches_numpy_over_several_steps(problem):
    x, y, state = problem
    runner = StepRunner({4: linear_step(4), 2: linear_step(2)}, state, seed=7)
    assert runner.state_names == ("W", "b", "step")
    assert runner.data_names == ("x", "y")
    assert runner.report_names == ("loss", "accuracy", "lr")
    W, b = state["W"].astype(np.float64), state["b"].astype(np.float64)
    # Two epochs of 4 + 4 + 2: the last smaller batch runs on its own session.
    for k, idx in enumerate([np.arange(0, 4), np.arange(4, 8), np.arange(8, 10)] * 2):
        out = runner.step_indices({"x": x, "y": y}, idx)
        W, b, loss, acc = numpy_step(W, b, x[idx].astype(np.float64), y[idx])
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        assert out["accuracy"] == pytest.approx(acc)
        assert out["lr"] == pytest.approx(LR)
        assert runner.step_count == k + 1
    got = runner.state()
    np.testing.assert_allclose(got["W"], W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], b, rtol=1e-5, atol=1e-6)
    assert got["step"] == 6 and got["step"].dtype == np.int64


def test_state_is_a_copy_and_set_state_takes_effect(problem):
    x, y, state = problem
    runner = StepRunner({4: linear_step(4)}, state)
    snap = runner.state()
    runner.step({"x": x[:4], "y": y[:4]})
    assert not np.allclose(runner.state()["W"], snap["W"])
    runner.set_state(snap)
    np.testing.assert_array_equal(runner.state()["W"], snap["W"])
    assert runner.step_count == 0
    # Both halves of the ping-pong pair see the restored state.
    a = runner.step({"x": x[:4], "y": y[:4]})
    runner.set_state(snap)
    b = runner.step({"x": x[:4], "y": y[:4]})
    assert a == b


def test_missing_state_and_unknown_batch_size(problem):
    x, y, state = problem
    with pytest.raises(DslcError, match="lacks `b`"):
        StepRunner({4: linear_step(4)}, {"W": state["W"], "step": state["step"]})
    runner = StepRunner({4: linear_step(4)}, state)
    with pytest.raises(DslcError, match="batch size 3"):
        runner.step({"x": x[:3], "y": y[:3]})


def test_eval_runner_weighted_means(problem):
    x, y, state = problem
    runner = EvalRunner(linear_step)
    feeds = {**state, "seed": np.array(0, np.int64)}  # the step graph doubles as an eval graph
    out = runner.evaluate(feeds, {"x": x, "y": y}, 4, ["loss", "accuracy"])
    _, _, loss, acc = numpy_step(state["W"].astype(np.float64), state["b"], x.astype(np.float64), y)
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["accuracy"] == pytest.approx(acc)


def test_devices(capsys):
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DslcError, match="unknown device"):
        resolve_device("tpu")
    lines: list[str] = []
    dev = resolve_device("auto", say=lines.append)
    assert dev in ("cpu", "cuda")
    if dev == "cpu":
        assert lines == ["dslc: CUDA not available, using CPU"]
        with pytest.raises(DslcError, match="CUDA"):
            resolve_device("cuda")
    assert make_session(linear_step(2), "cpu", 1).get_providers() == ["CPUExecutionProvider"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    tty = _Tty()
    bar = Progress(tty)
    bar.start_epoch(2, 5, 10)
    bar.update(10, 0.5, 320)
    bar.end_epoch(10, {"loss": 0.5, "val_loss": 0.25}, 1.0, 320.0)
    text = tty.getvalue()
    assert "\r" in text and "Epoch 2/5 [" in text and "10/10" in text and "samples/s" in text
    assert text.endswith("\n") and "val_loss: 0.2500" in text

    plain = io.StringIO()
    bar = Progress(plain)
    bar.start_epoch(1, 1, 3)
    bar.update(1, 0.5, 32)  # no redraws into a pipe or a log file
    assert plain.getvalue() == ""
    bar.end_epoch(3, {"loss": 0.5}, 0.1, 10.0)
    assert plain.getvalue() == "Epoch 1/1 - 3/3 - loss: 0.5000 - 0.1s - 10 samples/s\n"

    quiet = io.StringIO()
    Progress(quiet, enabled=False).end_epoch(1, {"loss": 1.0}, 0.1, 1.0)
    assert quiet.getvalue() == ""


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(3, 1, 50, True)
    np.testing.assert_array_equal(a, epoch_order(3, 1, 50, True))
    assert not np.array_equal(a, epoch_order(3, 2, 50, True))
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(epoch_order(3, 1, 5, False), np.arange(5))
