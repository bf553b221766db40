"""Unusual but valid models through check and lowering: shared normalisation, binary accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dslc.check import check_source
from dslc.check.model import CallValue, CheckedModel
from dslc.errors import DslcError, Span
from dslc.lower import build_eval_step, build_train_step, initial_state, optimizer_state

ort = pytest.importorskip("onnxruntime")


def _session(graph: Any) -> Any:
    from dslc.emit_onnx import to_onnx

    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def _train_once(model: CheckedModel, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(batch.values())))
    state = {**initial_state(model, 0), **optimizer_state(model)}
    run = _session(build_train_step(model, batch=n))
    return run({**state, "seed": np.array(0, np.int64), **batch})


# ---------------------------------------------------------------- shared BatchNorm

SHARED_BN = """
model S {
    input a: float[3]
    input b: float[3]
    target y: float[3]
    layer bn = BatchNorm(momentum = 0.25)
    h = a -> bn
    g = b -> bn
    loss mse(g + h, y)
}
"""


def test_shared_batchnorm_updates_its_running_statistics_once_per_application() -> None:
    """torch.nn.BatchNorm1d applied to a, then to b, updates the buffers twice, in that order."""
    model = check_source(SHARED_BN, "shared_bn.nn")
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 2.0, size=(5, 3)).astype(np.float32)
    b = rng.normal(-1.0, 0.5, size=(5, 3)).astype(np.float32)
    out = _train_once(model, {"a": a, "b": b, "y": np.zeros((5, 3), np.float32)})
    mean, var = np.zeros(3), np.ones(3)
    for x in (a, b):  # source order: the application in `h` comes first
        mean = 0.75 * mean + 0.25 * x.mean(0)
        var = 0.75 * var + 0.25 * x.var(0, ddof=1)
    np.testing.assert_allclose(out["bn.running_mean.next"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["bn.running_var.next"], var, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- binary accuracy

BINARY = """
model B {{
    input x: float[4]
    target y: {target}
    target z: float[1]
    p = x -> Dense(1)
    loss binary_cross_entropy(p, z)
    metric accuracy(p, y)
}}
"""


@pytest.mark.parametrize("target", ["float[1]", "float[]"])
def test_accuracy_on_one_logit_is_binary_accuracy(target: str) -> None:
    """As Keras's accuracy with one sigmoid unit: logit > 0 against target > 0.5."""
    model = check_source(BINARY.format(target=target), "binary.nn")
    state = initial_state(model, 0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    shape = (16, 1) if target.endswith("[1]") else (16,)
    y = rng.integers(0, 2, size=shape).astype(np.float32)
    z = np.zeros((16, 1), np.float32)
    got = _session(build_eval_step(model))({**state, "x": x, "y": y, "z": z})
    logit = x @ state["dense_1.weight"].T + state["dense_1.bias"]
    want = np.mean((logit[:, 0] > 0) == (y.reshape(16) > 0.5))
    assert got["accuracy"] == pytest.approx(want)


def test_accuracy_on_one_logit_with_int_labels_is_still_an_error() -> None:
    with pytest.raises(DslcError) as info:
        check_source(BINARY.format(target="int[]"), "binary.nn")
    assert "at least 2 classes" in info.value.diagnostics[0].message


# ---------------------------------------------------------------- spans inside nested calls

NESTED = """model M {
  input x: float[4]
  target y: int[]
  h = x -> Dense(8, init = normal(std = -1))
  loss cross_entropy(h, y)
}
train {
  optimizer = Adam(lr = 1e-3, betas = (0.9, 1.5))
  schedule = step(every = 0)
  regularize = [l2(-1)]
  data = text("a.txt", seq_len = 0)
}
"""


def test_an_argument_of_a_call_given_as_a_value_is_pointed_at() -> None:
    """As for a layer's own arguments, the caret stands under the culprit, not the call."""
    with pytest.raises(DslcError) as info:
        check_source(NESTED, "t.nn")
    got = [(d.span.line, d.span.col, d.message.split(":")[0]) for d in info.value.diagnostics]
    assert got == [
        (4, 41, "`init` of `Dense`"),
        (8, 39, "`betas` of `Adam`"),
        (9, 27, "`every` of `step`"),
        (10, 20, "`c` of `l2`"),
        (11, 34, "`seq_len` of `text`"),
    ]


def test_call_values_compare_without_their_argument_spans() -> None:
    """Argument spans serve diagnostics only; equal calls stay equal wherever they are written."""
    here, there = Span("t.nn", 1, 1, 1, 2), Span("t.nn", 7, 3, 7, 4)
    a = CallValue("l2", (1e-4,), arg_spans=(here,))
    b = CallValue("l2", (1e-4,), arg_spans=(there,))
    assert a == b and hash(a) == hash(b)


# ---------------------------------------------------------------- the summary's loss line


@pytest.mark.parametrize("loss, shown", [
    ("-mse(h, t) / 2 + 2 * mae(h, t) - 1", "-mse(...) / 2 + 2 * mae(...) - 1"),
    ("(mse(h, t) + mae(h, t)) * 0.5", "(mse(...) + mae(...)) * 0.5"),
    ("mse(h, t) - (mae(h, t) - 1)", "mse(...) - (mae(...) - 1)"),
    ("-(mse(h, t) + 1)", "-(mse(...) + 1)"),
])
def test_summary_shows_the_loss_as_written(loss: str, shown: str) -> None:
    from dslc.check.summary import summary

    src = f"model M {{\n  input x: float[4]\n  target t: float[2]\n  h = x -> Dense(2)\n" \
          f"  loss {loss}\n}}\n"
    assert f"loss:    {shown}\n" in summary(check_source(src, "m.nn"))
