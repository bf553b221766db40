"""Convolution, pooling and normalisation lowerings without PyTorch.

The lowered layers run through the IR interpreter in float64 and are compared
with direct NumPy formulas; their gradients (from autodiff over the
composition) with central finite differences; and the ONNX emission with the
interpreter. Shape functions (flatten, reshape, transpose) get the same
gradient check.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import dslc.lower.conv
from dslc.autodiff import backward
from dslc.check import check_source
from dslc.check.model import CallValue, GNode, LayerInstance, TensorType
from dslc.emit_onnx import to_onnx
from dslc.errors import Span
from dslc.ir import interp
from dslc.ir.graph import Builder, Value
from dslc.ir.ops.nn import _conv_np
from dslc.lower import build_eval_step, build_inference, build_train_step
from dslc.lower.conv import conv_im2col
from dslc.lower.functions import FUNCTION_LOWERINGS
from dslc.lower.layers import LayerCall, apply_layer

SPAN = Span("t.nn", 1, 1, 1, 2)


def _layer(kind: str, args: dict, params: dict[str, tuple[int, ...]]) -> LayerInstance:
    from dslc.check.model import ParamSpec

    specs = tuple(ParamSpec(f"l.{k}", v, CallValue("zeros"), trainable="running" not in k)
                  for k, v in params.items())
    return LayerInstance("l", kind, args, specs, SPAN)


def _lower(kind: str, args: dict, x_shape: tuple[int, ...], params: dict[str, tuple[int, ...]],
           mode: str = "train"):
    """A float64 graph applying one layer to input `x`; returns (builder, x, params, result)."""
    b = Builder("layer", "float64")
    x = b.input("x", "float64", x_shape)
    pv = {f"l.{k}": b.input(f"l.{k}", "float64", s) for k, s in params.items()}
    seed = b.input("seed", "int64", ())
    step = b.input("step", "int64", ())
    node = GNode(1, "layer", (0,), {"layer": "l"}, TensorType("float32", x_shape[1:]), SPAN)
    res = apply_layer(LayerCall(b, _layer(kind, args, params), x, pv, mode, node, seed, step))
    return b, x, pv, res


def _fd_check(b: Builder, y: Value, wrt: list[Value], feeds: dict[str, np.ndarray]) -> None:
    """Autodiff of sum(y · r) against central differences, for every value in `wrt`."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal([int(d) for d in y.shape])
    rv = b.const(r)
    loss = b.op("reduce_sum", b.op("mul", y, rv), axes=tuple(range(y.rank)), keepdims=0)
    graph, grads = backward(b.build(), loss.name, [v.name for v in wrt])
    gb = Builder.from_graph(graph, "float64")
    gb.outputs = []
    for v in wrt:
        gb.output(gb.values[grads[v.name]], name=f"g.{v.name}")
    gb.output(gb.values[loss.name], name="loss_out")
    fwd = gb.build()
    got = interp.run(fwd, feeds)
    eps = 1e-6
    for v in wrt:
        fd = np.zeros(feeds[v.name].shape)
        for idx in np.ndindex(*fd.shape):
            plus, minus = dict(feeds), dict(feeds)
            plus[v.name] = feeds[v.name].copy()
            minus[v.name] = feeds[v.name].copy()
            plus[v.name][idx] += eps
            minus[v.name][idx] -= eps
            fd[idx] = (interp.run(fwd, plus)["loss_out"] - interp.run(fwd, minus)["loss_out"]) / (
                2 * eps)
        np.testing.assert_allclose(got[f"g.{v.name}"], fd, rtol=1e-6, atol=1e-8, err_msg=v.name)


def _feeds(x_shape, params, rng, **extra):
    feeds = {"x": rng.standard_normal(x_shape), "seed": np.array(0), "step": np.array(0)}
    for k, s in params.items():
        feeds[f"l.{k}"] = (rng.uniform(0.5, 1.5, s) if "var" in k or k == "weight" and len(s) == 1
                           else rng.standard_normal(s))
    feeds.update(extra)
    return feeds


def _conv_args(stride, padding, dilation, groups=1, bias=True) -> dict:
    return {"filters": 0, "kernel": (), "stride": stride, "padding": padding,
            "dilation": dilation, "groups": groups, "bias": bias}


CONVS = [  # x shape, weight shape, stride, (begin, end) pads, dilation, groups
    ((2, 3, 6, 5), (4, 3, 3, 2), (1, 1), ((1, 1), (0, 1)), (1, 1), 1),
    ((1, 2, 7, 7), (3, 2, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 2), 1),
    ((2, 4, 5, 5), (4, 2, 2, 2), (1, 1), ((0, 1), (0, 1)), (2, 1), 2),
    ((2, 2, 9), (3, 2, 4), (2,), ((2, 1),), (1,), 1),
]


@pytest.fixture(params=["one_gemm", "summed"])
def first_axis(request, monkeypatch) -> str:
    """Both im2col forms: one GEMM, or one GEMM per first-axis kernel offset, summed."""
    monkeypatch.setattr(dslc.lower.conv, "SUM_MIN_DEPTH", 1 if request.param == "summed" else 10**9)
    return request.param


@pytest.mark.parametrize(("xs", "ws", "stride", "pads", "dil", "groups"), CONVS)
def test_conv_lowering_matches_reference_and_differentiates(xs, ws, stride, pads, dil,
                                                           groups, first_axis) -> None:
    params = {"weight": ws, "bias": (ws[0],)}
    b, x, pv, res = _lower("Conv2D" if len(xs) == 4 else "Conv1D",
                           _conv_args(stride, pads, dil, groups), xs, params)
    rng = np.random.default_rng(0)
    feeds = _feeds(xs, params, rng)
    b.output(res.value, name="y")
    got = interp.run(b.build(), feeds)["y"]
    flat_pads = (*(p[0] for p in pads), *(p[1] for p in pads))
    want = _conv_np([feeds["x"], feeds["l.weight"], feeds["l.bias"]],
                    {"strides": stride, "pads": flat_pads, "dilations": dil, "group": groups})[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    b, x, pv, res = _lower("Conv2D" if len(xs) == 4 else "Conv1D",
                           _conv_args(stride, pads, dil, groups), xs, params)
    _fd_check(b, res.value, [x, *pv.values()], feeds)


def test_im2col_emits_what_it_interprets(first_axis) -> None:
    b = Builder("c")
    x = b.input("x", "float32", (3, 2, 5, 6))
    w = b.input("w", "float32", (4, 2, 2, 3))
    b.output(conv_im2col(b, x, w, None, (1, 2), ((0, 1), (1, 1)), (2, 1)), name="y")
    graph = b.build()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 2, 5, 6)).astype(np.float32),
             "w": rng.standard_normal((4, 2, 2, 3)).astype(np.float32)}
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], interp.run(graph, feeds)["y"],
                               rtol=1e-5, atol=1e-5)


def _pool_np(x: np.ndarray, k: tuple, s: tuple, p: tuple, kind: str) -> np.ndarray:
    """Direct PyTorch semantics: -inf padding for max, zeros counted for average."""
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0), *((q, q) for q in p)], constant_values=fill)
    out = [(d + 2 * q - kk) // ss + 1 for d, q, kk, ss in zip(x.shape[2:], p, k, s, strict=True)]
    y = np.zeros((*x.shape[:2], *out))
    for o in np.ndindex(*out):
        win = xp[(slice(None), slice(None),
                  *(slice(oi * ss, oi * ss + kk) for oi, ss, kk in zip(o, s, k, strict=True)))]
        flat = win.reshape(*x.shape[:2], -1)
        y[(slice(None), slice(None), *o)] = flat.max(-1) if kind == "max" else flat.mean(-1)
    return y


POOLS = [
    ("MaxPool", (2, 2), (2, 2), (0, 0), (2, 3, 5, 4)),
    ("MaxPool", (3, 3), (2, 1), (1, 1), (1, 2, 6, 5)),
    ("AvgPool", (3, 2), (1, 2), (1, 1), (2, 2, 5, 6)),
    ("AvgPool", (3,), (2,), (1,), (2, 3, 8)),
    ("MaxPool", (3,), (3,), (1,), (2, 1, 7)),
]


@pytest.mark.parametrize(("kind", "k", "s", "p", "xs"), POOLS)
def test_pools_match_torch_semantics_and_differentiate(kind, k, s, p, xs) -> None:
    args = {"kernel": k, "stride": s, "padding": p}
    b, x, _, res = _lower(kind, args, xs, {})
    b.output(res.value, name="y")
    feeds = _feeds(xs, {}, np.random.default_rng(2))
    got = interp.run(b.build(), feeds)["y"]
    np.testing.assert_allclose(got, _pool_np(feeds["x"], k, s, p, kind[:3].lower()), rtol=1e-12)
    b, x, _, res = _lower(kind, args, xs, {})
    _fd_check(b, res.value, [x], feeds)


def _first_max_grad(x: np.ndarray, k: tuple, dy: np.ndarray) -> np.ndarray:
    """PyTorch's max-pool gradient for stride = kernel: dy goes to each window's first maximum."""
    dx = np.zeros_like(x)
    for o in np.ndindex(*dy.shape):
        n, c, pos = o[0], o[1], o[2:]
        starts = [p * kk for p, kk in zip(pos, k, strict=True)]
        win = x[(n, c, *(slice(s0, s0 + kk) for s0, kk in zip(starts, k, strict=True)))]
        at = np.unravel_index(int(np.argmax(win)), win.shape)  # argmax: the first maximum
        dx[(n, c, *(s0 + a for s0, a in zip(starts, at, strict=True)))] += dy[o]
    return dx


@pytest.mark.parametrize(("k", "xs"), [((2, 2), (2, 3, 5, 7)), ((3, 2), (1, 2, 6, 4)),
                                       ((3,), (2, 2, 8)), ((1, 2), (1, 1, 3, 4))])
def test_disjoint_max_pool_training_sends_ties_to_the_first_maximum(k, xs) -> None:
    """stride = kernel in a training step: no max_pool node, and ties resolved as PyTorch."""
    args = {"kernel": k, "stride": k, "padding": (0,) * len(k)}
    b, x, _, res = _lower("MaxPool", args, xs, {})
    y = res.value
    dy = np.random.default_rng(6).standard_normal([int(d) for d in y.shape])
    loss = b.op("reduce_sum", b.op("mul", y, b.const(dy)), axes=tuple(range(y.rank)), keepdims=0)
    graph, grads = backward(b.build(), loss.name, ["x"])
    assert "max_pool" not in {n.op for n in graph.nodes}
    gb = Builder.from_graph(graph, "float64")
    gb.outputs = []
    gb.output(gb.values[y.name], name="y")
    gb.output(gb.values[grads["x"]], name="dx")
    xv = np.random.default_rng(7).integers(0, 3, xs).astype(np.float64)  # many ties
    step = gb.build()
    feeds = {"x": xv, "seed": np.array(0, np.int64), "step": np.array(0, np.int64)}
    out = interp.run(step, feeds)
    np.testing.assert_array_equal(out["y"], _pool_np(xv, k, k, (0,) * len(k), "max"))
    np.testing.assert_array_equal(out["dx"], _first_max_grad(xv, k, dy))
    sess = ort.InferenceSession(to_onnx(step).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    np.testing.assert_array_equal(sess.run(["dx"], {n: feeds[n] for n in names})[0], out["dx"])
    for mode in ("eval", "infer"):
        b, _, _, res = _lower("MaxPool", args, xs, {}, mode=mode)
        assert "max_pool" in {n.op for n in b.build().nodes}


def test_global_avg_pool_means_over_spatial_axes() -> None:
    b, x, _, res = _lower("GlobalAvgPool", {}, (2, 3, 4, 5), {})
    b.output(res.value, name="y")
    feeds = _feeds((2, 3, 4, 5), {}, np.random.default_rng(3))
    np.testing.assert_allclose(interp.run(b.build(), feeds)["y"], feeds["x"].mean(axis=(2, 3)))


BN_PARAMS = {"weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,)}


@pytest.mark.parametrize("xs", [(4, 3, 2, 3), (5, 3), (3, 3, 4)])
def test_batchnorm_train_mode(xs: tuple[int, ...]) -> None:
    args = {"momentum": 0.3, "eps": 1e-3}
    b, x, pv, res = _lower("BatchNorm", args, xs, BN_PARAMS)
    b.output(res.value, name="y")
    for k, v in res.buffer_updates.items():
        b.output(v, name=f"{k}.next")
    feeds = _feeds(xs, BN_PARAMS, np.random.default_rng(4))
    out = interp.run(b.build(), feeds)
    axes = (0, *range(2, len(xs)))
    xv = feeds["x"]
    shape = (1, 3, *(1,) * (len(xs) - 2))
    mean, var = xv.mean(axis=axes), xv.var(axis=axes)
    want = ((xv - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-3)
            * feeds["l.weight"].reshape(shape) + feeds["l.bias"].reshape(shape))
    np.testing.assert_allclose(out["y"], want, rtol=1e-10)
    n = xv.size // 3
    np.testing.assert_allclose(out["l.running_mean.next"],
                               0.7 * feeds["l.running_mean"] + 0.3 * mean, rtol=1e-12)
    np.testing.assert_allclose(out["l.running_var.next"],
                               0.7 * feeds["l.running_var"] + 0.3 * var * n / (n - 1), rtol=1e-12)
    b, x, pv, res = _lower("BatchNorm", args, xs, BN_PARAMS)
    _fd_check(b, res.value, [x, pv["l.weight"], pv["l.bias"]], feeds)


@pytest.mark.parametrize("mode", ["eval", "infer"])
def test_batchnorm_uses_running_statistics_outside_training(mode: str) -> None:
    b, x, pv, res = _lower("BatchNorm", {"momentum": 0.1, "eps": 1e-5}, (4, 3, 2), BN_PARAMS,
                           mode)
    assert not res.buffer_updates
    b.output(res.value, name="y")
    feeds = _feeds((4, 3, 2), BN_PARAMS, np.random.default_rng(5))
    got = interp.run(b.build(), feeds)["y"]
    col = (1, 3, 1)
    want = ((feeds["x"] - feeds["l.running_mean"].reshape(col))
            / np.sqrt(feeds["l.running_var"].reshape(col) + 1e-5)
            * feeds["l.weight"].reshape(col) + feeds["l.bias"].reshape(col))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_layernorm_over_last_axis() -> None:
    params = {"weight": (4,), "bias": (4,)}
    b, x, pv, res = _lower("LayerNorm", {"eps": 1e-5}, (2, 3, 4), params)
    b.output(res.value, name="y")
    feeds = _feeds((2, 3, 4), params, np.random.default_rng(6))
    xv = feeds["x"]
    want = ((xv - xv.mean(-1, keepdims=True)) / np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
            * feeds["l.weight"] + feeds["l.bias"])
    np.testing.assert_allclose(interp.run(b.build(), feeds)["y"], want, rtol=1e-10)
    b, x, pv, res = _lower("LayerNorm", {"eps": 1e-5}, (2, 3, 4), params)
    _fd_check(b, res.value, [x, *pv.values()], feeds)


@pytest.mark.parametrize(("fn", "kw", "xs"), [
    ("flatten", {}, (2, 3, 2, 2)),
    ("reshape", {"shape": (4, -1)}, (2, 3, 4)),
    ("transpose", {"perm": (2, 0, 1)}, (2, 3, 4, 2)),
])
def test_shape_function_gradients(fn: str, kw: dict, xs: tuple[int, ...]) -> None:
    b = Builder("fn", "float64")
    x = b.input("x", "float64", xs)
    y = FUNCTION_LOWERINGS[fn](b, [x], kw)
    _fd_check(b, y, [x], {"x": np.random.default_rng(7).standard_normal(xs)})


MODEL = """
model M {
    input x: float[2, 6, 6]
    target y: int[]
    logits = x -> Conv2D(4, 3, padding = same) -> BatchNorm() -> relu -> MaxPool(2)
        -> reshape((4, 9)) -> Conv1D(3, 2, padding = same) -> AvgPool(2, padding = 1)
        -> flatten -> LayerNorm() -> Dropout(0.5) -> Dense(3)
    output probs = softmax(logits)
    loss cross_entropy(logits, y)
}
train { optimizer = SGD(lr = 0.1, momentum = 0.9) }
"""


def test_step_graphs_emit_and_agree_with_the_interpreter() -> None:
    model = check_source(MODEL, "m.nn")
    from dslc.lower import initial_state, optimizer_state

    rng = np.random.default_rng(8)
    data = {"x": rng.standard_normal((5, 2, 6, 6)).astype(np.float32),
            "y": rng.integers(0, 3, 5).astype(np.int64)}
    state = {**initial_state(model, 0), **optimizer_state(model)}
    for graph, feeds in (
        (build_train_step(model, batch=5), {**state, "seed": np.array(3), **data}),
        (build_eval_step(model), {k: v for k, v in {**state, **data}.items()
                                  if not k.startswith("opt.") and k != "step"}),
        (build_inference(model), {k: v for k, v in {**state, **data}.items()
                                  if not k.startswith("opt.") and k not in ("step", "y")}),
    ):
        sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
        got = dict(zip(names, sess.run(None, feeds), strict=True))
        want = interp.run(graph, feeds)
        for k in names:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
        assert all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in got.values())
