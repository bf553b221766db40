"""Reverse mode over composite graphs: finite differences, torch.autograd, the graph contract."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dslc import passes
from dslc.autodiff import backward
from dslc.emit_onnx import to_onnx
from dslc.ir import interp
from dslc.ir.graph import Builder, Graph
from dslc.ir.verify import verify


def _fd(graph: Graph, loss: str, feeds: dict[str, np.ndarray], name: str,
        eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar `loss` with respect to feed `name`."""
    out = np.zeros(feeds[name].shape)
    for idx in np.ndindex(*feeds[name].shape):
        vals = []
        for sign in (1, -1):
            f = {k: v.copy() for k, v in feeds.items()}
            f[name][idx] += sign * eps
            vals.append(float(interp.evaluate(graph, f)[loss].sum()))
        out[idx] = (vals[0] - vals[1]) / (2 * eps)
    return out


def _mlp(dtype: str = "float64", batch: int = 4) -> Builder:
    """x -> dense(5) -> tanh -> dense(3) -> log_softmax -> mean NLL of integer labels."""
    b = Builder("mlp", dtype)
    x = b.input("x", dtype, (batch, 3))
    y = b.input("y", "int64", (batch, 1))
    w1 = b.input("w1", dtype, (3, 5))
    b1 = b.input("b1", dtype, (5,))
    w2 = b.input("w2", dtype, (5, 3))
    b2 = b.input("b2", dtype, (3,))
    b.input("unused", dtype, (2,))
    h = b.op("tanh", b.op("add", b.op("matmul", x, w1), b1))
    logits = b.op("add", b.op("matmul", h, w2), b2, name="logits")
    logp = b.op("log_softmax", logits, axis=1)
    picked = b.op("gather_elements", logp, y, axis=1)
    loss = b.op("neg", b.op("reduce_mean", picked, axes=(0, 1), keepdims=0), name="loss")
    b.output(loss)
    b.output(logits)
    return b


def _mlp_feeds(dtype: str = "float64", batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((batch, 3)).astype(dtype),
        "y": rng.integers(0, 3, (batch, 1)).astype(np.int64),
        "w1": rng.standard_normal((3, 5)).astype(dtype),
        "b1": rng.standard_normal(5).astype(dtype),
        "w2": rng.standard_normal((5, 3)).astype(dtype),
        "b2": rng.standard_normal(3).astype(dtype),
        "unused": rng.standard_normal(2).astype(dtype),
    }


PARAMS = ["w1", "b1", "w2", "b2"]


def test_mlp_gradients_match_finite_differences() -> None:
    fwd = _mlp().build()
    graph, grads = backward(fwd, "loss", [*PARAMS, "x", "unused"])
    verify(graph)
    assert grads == {**{p: f"grad.{p}" for p in [*PARAMS, "x"]}, "unused": None}
    assert graph.outputs == fwd.outputs and graph.inputs == fwd.inputs
    feeds = _mlp_feeds()
    env = interp.evaluate(graph, feeds)
    for p in [*PARAMS, "x"]:
        np.testing.assert_allclose(env[f"grad.{p}"], _fd(fwd, "loss", feeds, p),
                                   rtol=1e-6, atol=1e-8)


def test_forward_nodes_kept_and_unneeded_backward_pruned() -> None:
    fwd = _mlp().build()
    graph, _ = backward(fwd, "loss", ["w2"])
    assert graph.nodes[: len(fwd.nodes)] == fwd.nodes
    # Only w2's gradient was asked for: nothing flows back into the first layer.
    back = graph.nodes[len(fwd.nodes):]
    assert not any(n.outputs[0].startswith("bwd.tanh") for n in back)
    assert all(name in graph.values for n in back for name in n.inputs if name)
    assert len(back) < 15


def test_fan_out_accumulates_cotangents() -> None:
    b = Builder("fan", "float64")
    x = b.input("x", "float64", (3,))
    w = b.input("w", "float64", (3,))
    a = b.op("mul", x, w)
    c = b.op("add", b.op("mul", a, a), b.op("mul", b.op("exp", a), x))  # a used three times
    loss = b.op("reduce_sum", b.op("mul", c, w), axes=(0,), keepdims=0, name="loss")
    b.output(loss)
    fwd = b.build()
    graph, grads = backward(fwd, "loss", ["x", "w"])
    verify(graph)
    feeds = {"x": np.array([0.3, -0.2, 0.5]), "w": np.array([1.1, 0.4, -0.7])}
    env = interp.evaluate(graph, feeds)
    for p in ("x", "w"):
        np.testing.assert_allclose(env[grads[p]], _fd(fwd, "loss", feeds, p), rtol=1e-6)
    # a = x*w has three uses, so its cotangent is a sum of three terms.
    assert sum(1 for n in graph.nodes if n.op == "add" and n.outputs[0].startswith("bwd.")) >= 2


def test_no_path_gives_none_and_non_differentiable_ops_stop_gradients() -> None:
    b = Builder("stop", "float64")
    x = b.input("x", "float64", (2, 3))
    w = b.input("w", "float64", (3,))
    k = b.op("argmax", b.op("mul", x, w), axis=1, keepdims=0)  # integer: no gradient
    onehot = b.op("one_hot", k, depth=3, dtype="float64")
    loss = b.op("reduce_sum", b.op("mul", onehot, x), axes=(0, 1), keepdims=0, name="loss")
    b.output(loss)
    graph, grads = backward(b.build(), "loss", ["x", "w"])
    verify(graph)
    assert grads["w"] is None
    feeds = {"x": np.array([[0.1, 0.9, 0.2], [0.5, -0.1, 0.3]]), "w": np.ones(3)}
    env = interp.evaluate(graph, feeds)
    np.testing.assert_array_equal(env["grad.x"], env[onehot.name])


def test_loss_seed_and_loss_dtype() -> None:
    b = Builder("seed", "float32")
    x = b.input("x", "float32", (2,))
    loss = b.op("reduce_sum", b.op("square", x), axes=(0,), keepdims=1, name="loss")
    b.output(loss)
    graph, grads = backward(b.build(), "loss", ["x", "loss"])
    verify(graph)
    env = interp.evaluate(graph, {"x": np.array([1.0, -2.0], np.float32)})
    np.testing.assert_allclose(env["grad.x"], [2.0, -4.0])
    np.testing.assert_array_equal(env["grad.loss"], [1.0])
    assert graph.values["grad.x"].dtype == "float32"


def test_backward_graph_emits_and_runs_in_onnxruntime() -> None:
    fwd = _mlp("float32").build()
    graph, grads = backward(fwd, "loss", PARAMS)
    b = Builder.from_graph(graph)
    for p in PARAMS:
        b.output(graph.values[grads[p]])
    full = b.build()
    feeds = _mlp_feeds("float32")
    sess = ort.InferenceSession(to_onnx(full).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    want = interp.run(full, feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def _cnn(dtype: str = "float64") -> Builder:
    """conv(pad same, even kernel) -> relu -> overlapping max_pool -> conv(group 2, stride 2)
    -> padded avg_pool -> flatten -> gemm -> softmax cross entropy."""
    b = Builder("cnn", dtype)
    x = b.input("x", dtype, (2, 2, 7, 7))
    y = b.input("y", "int64", (2, 1))
    w1 = b.input("w1", dtype, (4, 2, 2, 2))
    b1 = b.input("b1", dtype, (4,))
    w2 = b.input("w2", dtype, (4, 2, 3, 3))
    wd = b.input("wd", dtype, (4 * 2 * 2, 3))
    bd = b.input("bd", dtype, (3,))
    h = b.op("relu", b.op("conv", x, w1, b1, pads=(0, 0, 1, 1)))
    h, _ = b.op("max_pool", h, kernel=(3, 3), strides=(1, 1))
    h = b.op("conv", h, w2, strides=(2, 2), pads=(1, 1, 1, 1), group=2)
    h = b.op("avg_pool", h, kernel=(2, 2), strides=(2, 2), pads=(1, 1, 1, 1))
    h = b.op("reshape", h, shape=(0, -1))
    logits = b.op("gemm", h, wd, bd)
    picked = b.op("gather_elements", b.op("log_softmax", logits, axis=1), y, axis=1)
    b.output(b.op("neg", b.op("reduce_mean", picked, axes=(0, 1), keepdims=0), name="loss"))
    return b


CNN_PARAMS = ["w1", "b1", "w2", "wd", "bd", "x"]


def _cnn_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    fwd = _cnn().build()
    feeds = {v.name: rng.standard_normal([int(d) for d in v.shape]) for v in fwd.inputs}
    feeds["y"] = np.array([[0], [2]], dtype=np.int64)
    return feeds


def test_optimised_cnn_step_runs_in_onnxruntime() -> None:
    graph, grads = backward(_cnn("float32").build(), "loss", CNN_PARAMS)
    b = Builder.from_graph(graph)
    for p in CNN_PARAMS:
        b.output(graph.values[grads[p]])
    full = passes.optimise(b.build())
    verify(full)
    feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v
             for k, v in _cnn_feeds().items()}
    model = to_onnx(full)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    want = interp.run(full, feeds)
    assert set(got) == {"loss", *(f"grad.{p}" for p in CNN_PARAMS)}
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)


def test_cnn_gradients_match_finite_differences() -> None:
    fwd = _cnn().build()
    graph, grads = backward(fwd, "loss", CNN_PARAMS)
    verify(graph)
    feeds = _cnn_feeds()
    env = interp.evaluate(graph, feeds)
    for p in ("w1", "b1", "w2", "bd"):
        np.testing.assert_allclose(env[grads[p]], _fd(fwd, "loss", feeds, p),
                                   rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- against torch.autograd


@pytest.mark.torch
def test_mlp_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    feeds = _mlp_feeds()
    graph, grads = backward(_mlp().build(), "loss", [*PARAMS, "x"])
    env = interp.evaluate(graph, feeds)
    t = {k: torch.tensor(v, requires_grad=v.dtype == np.float64) for k, v in feeds.items()}
    h = torch.tanh(t["x"] @ t["w1"] + t["b1"])
    logits = h @ t["w2"] + t["b2"]
    loss = torch.nn.functional.cross_entropy(logits, t["y"][:, 0])
    loss.backward()
    np.testing.assert_allclose(env["loss"], loss.item(), rtol=1e-12)
    for p in [*PARAMS, "x"]:
        np.testing.assert_allclose(env[grads[p]], t[p].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.torch
def test_cnn_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional  # noqa: N806
    feeds = _cnn_feeds()
    graph, grads = backward(_cnn().build(), "loss", CNN_PARAMS)
    env = interp.evaluate(graph, feeds)
    t = {k: torch.tensor(v, requires_grad=v.dtype == np.float64) for k, v in feeds.items()}
    h = F.relu(F.conv2d(F.pad(t["x"], (0, 1, 0, 1)), t["w1"], t["b1"]))
    h = F.max_pool2d(h, 3, stride=1)
    h = F.conv2d(h, t["w2"], stride=2, padding=1, groups=2)
    h = F.avg_pool2d(h, 2, stride=2, padding=1, count_include_pad=False)
    logits = h.reshape(2, -1) @ t["wd"] + t["bd"]
    loss = F.cross_entropy(logits, t["y"][:, 0])
    loss.backward()
    np.testing.assert_allclose(env["loss"], loss.item(), rtol=1e-10)
    for p in CNN_PARAMS:
        np.testing.assert_allclose(env[grads[p]], t[p].grad.numpy(), rtol=1e-9, atol=1e-12)
