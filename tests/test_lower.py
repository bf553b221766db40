"""Lowering: forward graphs against NumPy, step graph structure and names, initialisers."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dslc.check.model import (
    CallValue,
    CheckedModel,
    Declared,
    GNode,
    LayerInstance,
    OptimizerSpec,
    ParamSpec,
    RegTerm,
    ScheduleSpec,
    TensorType,
    TrainConfig,
)
from dslc.errors import Span
from dslc.ir.graph import REGISTRY, Builder, Graph, IRError
from dslc.lower import (
    LAYER_LOWERINGS,
    build_eval_step,
    build_inference,
    build_train_step,
    initial_state,
    lower_forward,
    optimizer_state,
    state_layout,
)
from dslc.lower.init import init_array
from dslc.lower.schedules import cosine_rate

SPAN = Span("test.nn", 1, 1, 1, 2)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ---------------------------------------------------------------- hand-built checked models


class ModelMaker:
    """Builds CheckedModel objects node by node, as the checker would."""

    def __init__(self) -> None:
        self.nodes: list[GNode] = []
        self.layers: dict[str, LayerInstance] = {}
        self.inputs: list[Declared] = []
        self.targets: list[Declared] = []

    def _add(self, op: str, inputs: tuple[int, ...], attrs: dict[str, Any],
             dtype: str, shape: tuple, batched: bool = True) -> int:
        nid = len(self.nodes)
        self.nodes.append(GNode(nid, op, inputs, attrs, TensorType(dtype, shape, batched), SPAN))
        return nid

    def input(self, name: str, shape: tuple, dtype: str = "float32") -> int:
        self.inputs.append(Declared(name, TensorType(dtype, shape), SPAN))
        return self._add("input", (), {"name": name}, dtype, shape)

    def target(self, name: str, shape: tuple, dtype: str = "int64") -> int:
        self.targets.append(Declared(name, TensorType(dtype, shape), SPAN))
        return self._add("target", (), {"name": name}, dtype, shape)

    def dense(self, x: int, name: str, units: int, bias: bool = True,
              init: str = "glorot_uniform") -> int:
        fan_in = self.nodes[x].type.shape[-1]
        if name not in self.layers:
            params = [ParamSpec(f"{name}.weight", (units, fan_in), CallValue(init),
                                is_kernel=True, fan_in=fan_in, fan_out=units)]
            if bias:
                params.append(ParamSpec(f"{name}.bias", (units,), CallValue("zeros")))
            self.layers[name] = LayerInstance(
                name, "Dense",
                {"units": units, "bias": bias, "init": CallValue(init),
                 "bias_init": CallValue("zeros"), "regularizer": None},
                tuple(params), SPAN)
        shape = (*self.nodes[x].type.shape[:-1], units)
        return self._add("layer", (x,), {"layer": name}, "float32", shape)

    def fn(self, name: str, *xs: int, out_shape: tuple | None = None, dtype: str = "float32",
           batched: bool = True, **kwargs: Any) -> int:
        shape = self.nodes[xs[0]].type.shape if out_shape is None else out_shape
        return self._add("fn", tuple(xs), {"name": name, "kwargs": kwargs}, dtype, shape, batched)

    def loss(self, name: str, *xs: int, **kwargs: Any) -> int:
        return self.fn(name, *xs, out_shape=(), batched=False, **kwargs)

    def binop(self, op: str, a: int, c: int, shape: tuple | None = None,
              batched: bool = True) -> int:
        shape = self.nodes[a].type.shape if shape is None else shape
        return self._add("binop", (a, c), {"op": op}, "float32", shape, batched)

    def const(self, value: float) -> int:
        return self._add("const", (), {"value": value}, "float32", (), False)

    def neg(self, x: int) -> int:
        return self._add("neg", (x,), {}, "float32", self.nodes[x].type.shape)

    def build(self, outputs: dict[str, int], loss: int | None = None,
              metrics: dict[str, int] | None = None, regularizers: tuple[RegTerm, ...] = (),
              optimizer: OptimizerSpec | None = None,
              schedule: ScheduleSpec | None = None) -> CheckedModel:
        train = TrainConfig()
        if optimizer is not None:
            train = replace(train, optimizer=optimizer)
        if schedule is not None:
            train = replace(train, schedule=schedule)
        return CheckedModel("M", "test.nn", tuple(self.inputs), tuple(self.targets),
                            tuple(self.nodes), dict(self.layers), tuple(outputs.items()), loss,
                            tuple((metrics or {}).items()), regularizers, train)


def mlp(features: int = 5, hidden: int = 4, classes: int = 3, **build: Any) -> CheckedModel:
    """x:[features] -> Dense(hidden) -> relu -> head: Dense(classes); CE loss, accuracy."""
    m = ModelMaker()
    x = m.input("x", (features,))
    y = m.target("y", ())
    h = m.fn("relu", m.dense(x, "dense_1", hidden))
    logits = m.dense(h, "head", classes)
    probs = m.fn("softmax", logits, axis=-1)
    loss = m.loss("cross_entropy", logits, y, label_smoothing=0.0)
    acc = m.loss("accuracy", logits, y)
    return m.build({"probs": probs}, loss, {"accuracy": acc}, **build)


# ---------------------------------------------------------------- evaluation


def evaluate(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an IR graph: dslc.ir.interp when present, else the registry's NumPy rules."""
    try:
        from dslc.ir.interp import run
    except ImportError:
        env = {**graph.constants, **feeds}
        for node in graph.nodes:
            outs = REGISTRY[node.op].numpy([env[i] for i in node.inputs if i], node.attr_dict)
            env.update(zip(node.outputs, outs, strict=True))
        return {v.name: np.asarray(env[v.name]) for v in graph.outputs}
    return run(graph, feeds)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def forward_graph(model: CheckedModel, mode: str, batch: int = 6,
                  extra: tuple[str, ...] = ()) -> tuple[Graph, Any]:
    b = Builder("fwd")
    params = {p.name: b.input(p.name, "float32", p.shape) for p in model.params()}
    decls = [*model.inputs, *(model.targets if mode != "infer" else ())]
    data = {d.name: b.input(d.name, d.type.dtype, (batch, *d.type.shape)) for d in decls}
    fwd = lower_forward(b, model, params, data, mode)
    for name, v in fwd.outputs.items():
        b.output(v, name=name)
    if fwd.loss is not None:
        b.output(fwd.loss, name="loss")
    for name, v in fwd.metrics.items():
        b.output(v, name=name)
    return b.build(), fwd


def test_registry_has_dense() -> None:
    assert "Dense" in LAYER_LOWERINGS


def test_mlp_forward_matches_numpy() -> None:
    model = mlp()
    rng = np.random.default_rng(0)
    state = initial_state(model, seed=3)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    graph, _ = forward_graph(model, "eval")
    out = evaluate(graph, {**state, "x": x, "y": y})
    h = np.maximum(x @ state["dense_1.weight"].T + state["dense_1.bias"], 0)
    logits = h @ state["head.weight"].T + state["head.bias"]
    lsm = np_log_softmax(logits)
    np.testing.assert_allclose(out["probs"], np.exp(lsm), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["loss"], -lsm[np.arange(6), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == y).mean())


def test_infer_mode_lowers_no_targets_or_loss() -> None:
    graph, fwd = forward_graph(mlp(), "infer")
    assert fwd.loss is None and fwd.metrics == {}
    assert [v.name for v in graph.inputs if v.name in ("x", "y")] == ["x"]
    assert not any(n.op in ("log_softmax", "argmax") for n in graph.nodes)


def test_dense_on_rank3_uses_matmul() -> None:
    m = ModelMaker()
    x = m.input("x", (4, 3))
    out = m.dense(x, "dense_1", 2)
    model = m.build({"y": out})
    graph, _ = forward_graph(model, "infer", batch=2)
    state = initial_state(model, 0)
    xv = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    got = evaluate(graph, {**state, "x": xv})["y"]
    want = xv @ state["dense_1.weight"].T + state["dense_1.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert graph.value("dense_1.matmul").shape == (2, 4, 2)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


FUNCTIONS = [
    ("relu", {}, lambda x: np.maximum(x, 0)),
    ("leaky_relu", {"alpha": 0.1}, lambda x: np.where(x > 0, x, 0.1 * x)),
    ("elu", {"alpha": 1.0}, lambda x: np.where(x > 0, x, np.expm1(x))),
    ("gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    ("silu", {}, lambda x: x / (1 + np.exp(-x))),
    ("sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", {}, np.tanh),
    ("softmax", {"axis": 0}, lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("log_softmax", {"axis": -1}, np_log_softmax),
    ("exp", {}, np.exp),
    ("abs", {}, np.abs),
    ("flatten", {}, lambda x: x.reshape(x.shape[0], -1)),
    ("reshape", {"shape": (2, 6)}, lambda x: x.reshape(x.shape[0], 2, 6)),
    ("transpose", {"perm": (2, 1, 0)}, lambda x: x.transpose(0, 3, 2, 1)),
    ("mean", {"axis": 1}, lambda x: x.mean(2)),
    ("sum", {"axis": -1}, lambda x: x.sum(3)),
    ("max", {"axis": 0}, lambda x: x.max(1)),
    ("mean", {"axis": None}, lambda x: x.mean((1, 2, 3))),
]


@pytest.mark.parametrize(("name", "kwargs", "ref"), FUNCTIONS,
                         ids=[f"{f[0]}-{i}" for i, f in enumerate(FUNCTIONS)])
def test_function_matches_numpy(name: str, kwargs: dict, ref: Any) -> None:
    m = ModelMaker()
    x = m.input("x", (3, 2, 2))
    model = m.build({"out": m.fn(name, x, **kwargs)})
    graph, _ = forward_graph(model, "infer", batch=2)
    xv = np.random.default_rng(2).normal(size=(2, 3, 2, 2)).astype(np.float32)
    got = evaluate(graph, {"x": xv})["out"]
    np.testing.assert_allclose(got, ref(xv.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_log_sqrt_concat_binop_neg_const() -> None:
    m = ModelMaker()
    x = m.input("x", (3,))
    z = m.input("z", (2,))
    a = m.fn("log", x)
    c = m.fn("sqrt", x)
    s = m.binop("*", m.binop("+", a, c), m.const(2.0))
    cat = m.fn("concat", m.neg(s), z, axis=0, out_shape=(5,))
    model = m.build({"out": cat})
    graph, _ = forward_graph(model, "infer", batch=4)
    rng = np.random.default_rng(3)
    xv = rng.uniform(0.5, 2, size=(4, 3)).astype(np.float32)
    zv = rng.normal(size=(4, 2)).astype(np.float32)
    got = evaluate(graph, {"x": xv, "z": zv})["out"]
    want = np.concatenate([-(np.log(xv) + np.sqrt(xv)) * 2, zv], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_regularisation_added_to_loss() -> None:
    regs = (RegTerm("l2", 0.01, ("dense_1.weight", "head.weight")),
            RegTerm("l1", 0.002, ("head.bias",)))
    model = mlp(regularizers=regs)
    state = initial_state(model, 0)
    state["head.bias"] = np.array([0.5, -1.0, 0.25], np.float32)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    with_reg = evaluate(forward_graph(model, "eval")[0], {**state, "x": x, "y": y})["loss"]
    plain = evaluate(forward_graph(mlp(), "eval")[0], {**state, "x": x, "y": y})["loss"]
    extra = (0.01 * ((state["dense_1.weight"] ** 2).sum() + (state["head.weight"] ** 2).sum())
             + 0.002 * np.abs(state["head.bias"]).sum())
    np.testing.assert_allclose(with_reg - plain, extra, rtol=1e-4)


def test_unknown_layer_kind_is_reported() -> None:
    m = ModelMaker()
    x = m.input("x", (3,))
    m.layers["mystery_1"] = LayerInstance("mystery_1", "Mystery", {}, (), SPAN)
    out = m._add("layer", (x,), {"layer": "mystery_1"}, "float32", (3,))
    with pytest.raises(IRError, match="Mystery"):
        forward_graph(m.build({"out": out}), "infer")


# ---------------------------------------------------------------- initialisers and state


def test_initial_state_shapes_dtypes_and_determinism() -> None:
    model = mlp()
    a, b2 = initial_state(model, 7), initial_state(model, 7)
    assert list(a) == ["dense_1.weight", "dense_1.bias", "head.weight", "head.bias"]
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b2[k])
    assert not np.array_equal(a["dense_1.weight"], initial_state(model, 8)["dense_1.weight"])
    assert (a["dense_1.bias"] == 0).all()


def test_init_of_a_parameter_does_not_depend_on_other_layers() -> None:
    small = mlp(hidden=4)
    m = ModelMaker()
    x = m.input("x", (5,))
    m.dense(m.dense(x, "extra", 7), "other", 2)
    spec = small.layers["dense_1"].params[0]
    np.testing.assert_array_equal(init_array(spec, 0), initial_state(small, 0)[spec.name])


@pytest.mark.parametrize(("init", "std"), [
    (CallValue("glorot_uniform"), math.sqrt(2 / (300 + 200))),
    (CallValue("glorot_normal"), math.sqrt(2 / (300 + 200))),
    (CallValue("he_uniform"), math.sqrt(2 / 300)),
    (CallValue("he_normal"), math.sqrt(2 / 300)),
    (CallValue("normal", kwargs=(("std", 0.02),)), 0.02),
    (CallValue("uniform", kwargs=(("a", -0.1), ("b", 0.1))), 0.2 / math.sqrt(12)),
])
def test_initialiser_statistics(init: CallValue, std: float) -> None:
    spec = ParamSpec("w", (200, 300), init, fan_in=300, fan_out=200)
    w = init_array(spec, 0)
    assert w.shape == (200, 300)
    assert abs(w.std() - std) < 0.03 * std
    assert abs(w.mean()) < 0.05 * std


def test_glorot_uniform_bound_and_orthogonal() -> None:
    w = init_array(ParamSpec("w", (20, 30), CallValue("glorot_uniform"), fan_in=30, fan_out=20), 0)
    assert np.abs(w).max() <= math.sqrt(6 / 50)
    q = init_array(ParamSpec("q", (20, 30), CallValue("orthogonal")), 0)
    np.testing.assert_allclose(q @ q.T, np.eye(20), atol=1e-5)
    ones = init_array(ParamSpec("o", (3,), CallValue("ones")), 0)
    np.testing.assert_array_equal(ones, np.ones(3, np.float32))


def test_optimizer_state_slots() -> None:
    adam = OptimizerSpec("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                  "weight_decay": 0.0})
    st = optimizer_state(mlp(optimizer=adam))
    assert st["step"].dtype == np.int64 and st["step"].shape == ()
    assert "opt.head.weight.exp_avg_sq" in st and st["opt.head.weight.exp_avg"].shape == (3, 4)
    sgd = OptimizerSpec("SGD", {"lr": 0.1, "momentum": 0.0})
    assert set(optimizer_state(mlp(optimizer=sgd))) == {"step"}


# ---------------------------------------------------------------- step graphs


def _verify(graph: Graph) -> None:
    try:
        from dslc.ir.verify import verify
    except ImportError:
        pytest.skip("dslc.ir.verify not available")
    verify(graph)


def test_state_layout_order() -> None:
    sgd = OptimizerSpec("SGD", {"lr": 0.1, "momentum": 0.9})
    layout = state_layout(mlp(optimizer=sgd))
    assert layout.params == ("dense_1.weight", "dense_1.bias", "head.weight", "head.bias")
    assert layout.buffers == ()
    assert layout.slots == tuple(f"opt.{p}.momentum_buffer" for p in layout.params)
    assert layout.checkpoint_keys[-1] == "step"


def test_train_step_contract() -> None:
    pytest.importorskip("dslc.autodiff")
    adam = OptimizerSpec("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                  "weight_decay": 0.0, "clip_norm": 1.0})
    model = mlp(optimizer=adam)
    g = build_train_step(model, batch=8)
    layout = state_layout(model)
    names = [v.name for v in g.inputs]
    assert names == [*layout.params, *layout.slots, "step", "seed", "x", "y"]
    assert g.value("x").shape == (8, 5) and g.value("y").dtype == "int64"
    outs = [v.name for v in g.outputs]
    assert outs == ["loss", "accuracy", "lr", *(f"{p}.next" for p in layout.params),
                    *(f"{s}.next" for s in layout.slots), "step.next"]
    for p in layout.params:
        assert g.value(f"{p}.next").shape == g.value(p).shape
    _verify(g)


def test_train_step_runs_and_lowers_loss() -> None:
    pytest.importorskip("dslc.autodiff")
    sgd = OptimizerSpec("SGD", {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0})
    model = mlp(optimizer=sgd)
    g = build_train_step(model, batch=16)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    state = {**initial_state(model, 0), **optimizer_state(model)}
    losses = []
    for _ in range(20):
        out = evaluate(g, {**state, "seed": np.int64(0), "x": x, "y": y})
        losses.append(float(out["loss"]))
        state = {k: out[f"{k}.next"] for k in state}
    assert state["step"] == 20
    assert losses[-1] < 0.7 * losses[0]


def test_eval_and_inference_graphs() -> None:
    model = mlp()
    ev = build_eval_step(model)
    assert ev.value("x").shape == ("N", 5)
    assert [v.name for v in ev.outputs] == ["loss", "accuracy", "probs"]
    inf = build_inference(model)
    assert [v.name for v in inf.inputs][:1] == ["x"]
    assert "y" not in inf.values
    assert [v.name for v in inf.outputs] == ["probs"]
    _verify(ev)
    _verify(inf)


def test_symbolic_dims_bound_in_train_step() -> None:
    pytest.importorskip("dslc.autodiff")
    m = ModelMaker()
    x = m.input("x", ("T", 3))
    y = m.target("y", ("T",))
    logits = m.dense(x, "dense_1", 4)
    loss = m.loss("cross_entropy", logits, y)
    model = m.build({"logits": logits}, loss)
    with pytest.raises(IRError, match="T"):
        build_train_step(model, batch=2)
    g = build_train_step(model, batch=2, dims={"T": 5})
    assert g.value("x").shape == (2, 5, 3)
    assert build_inference(model).value("x").shape == ("N", "T", 3)


def test_cosine_rate_formula() -> None:
    rates = [cosine_rate(1.0, t, 10, min_lr=0.1, warmup_steps=2) for t in range(12)]
    assert rates[0] == pytest.approx(0.5) and rates[1] == pytest.approx(1.0)
    assert rates[2] == pytest.approx(1.0)
    assert rates[6] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert rates[10] == pytest.approx(0.1) and rates[11] == pytest.approx(0.1)


# ---------------------------------------------------------------- from .nn source, through ORT


def _ort(graph: Graph, initializers: dict | None = None) -> Any:
    ort = pytest.importorskip("onnxruntime")
    from dslc.emit_onnx import to_onnx

    sess = ort.InferenceSession(to_onnx(graph, initializers).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


SHARED = """
model S {
    input a: float[T, 3]
    layer enc = Dense(3)
    h = a -> enc -> relu -> enc
    output out = reshape(h, shape = (T, 3, 1))
    output flat = sum(h, axis = 0)
}
"""


def test_shared_layer_and_symbolic_reshape_in_inference() -> None:
    check = pytest.importorskip("dslc.check")
    model = check.check_source(SHARED, "shared.nn")
    assert list(model.layers) == ["enc"]
    state = initial_state(model, 1)
    graph = build_inference(model)
    assert graph.value("a").shape == ("N", "T", 3)
    run = _ort(graph, state)
    w, bias = state["enc.weight"], state["enc.bias"]
    for n, t in [(2, 4), (3, 1)]:
        a = np.random.default_rng(n).normal(size=(n, t, 3)).astype(np.float32)
        h = np.maximum(a @ w.T + bias, 0) @ w.T + bias
        out = run({"a": a})
        np.testing.assert_allclose(out["out"], h[..., None], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["flat"], h.sum(1), rtol=1e-5, atol=1e-6)


def test_eval_step_through_onnxruntime_matches_interpreter() -> None:
    check = pytest.importorskip("dslc.check")
    with open(EXAMPLES / "digits_mlp.nn") as f:
        model = check.check_source(f.read(), "digits_mlp.nn")
    graph = build_eval_step(model)
    state = initial_state(model, 0)
    rng = np.random.default_rng(6)
    feeds = {**state, "image": rng.uniform(size=(7, 64)).astype(np.float32),
             "label": rng.integers(0, 10, size=7)}
    got = _ort(graph)(feeds)
    ref = evaluate(graph, feeds)
    assert set(got) == {"loss", "accuracy", "probs"}
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["probs"].sum(-1), np.ones(7), rtol=1e-5)
