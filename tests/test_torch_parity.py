"""Training steps against PyTorch: losses, metrics, optimisers, schedules, regularisers, clipping.

Each case trains a small Dense model for several steps from identical initial
parameters, through ONNX Runtime, and compares parameters, losses and learning
rates with the same training written in PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from dslc.ir.graph import Graph
from dslc.lower import build_train_step, initial_state, optimizer_state, state_layout

torch = pytest.importorskip("torch")
pytest.importorskip("dslc.autodiff")
F = torch.nn.functional

pytestmark = pytest.mark.torch

SPAN = Span("parity.nn", 1, 1, 1, 2)
FEATURES, HIDDEN, CLASSES, T = 5, 6, 4, 3


# ---------------------------------------------------------------- the model under test


@dataclass
class Net:
    """A checked model x -> dense_1 -> relu -> head, assembled node by node."""

    head_units: int = CLASSES
    seq: bool = False
    nodes: list[GNode] = field(default_factory=list)

    def add(self, op: str, inputs: tuple[int, ...], attrs: dict, shape: tuple,
            dtype: str = "float32", batched: bool = True) -> int:
        self.nodes.append(GNode(len(self.nodes), op, inputs, attrs,
                                TensorType(dtype, shape, batched), SPAN))
        return len(self.nodes) - 1

    def fn(self, name: str, *xs: int, shape: tuple = (), **kw: Any) -> int:
        return self.add("fn", xs, {"name": name, "kwargs": kw}, shape, batched=bool(shape))


def _dense(name: str, units: int, fan_in: int) -> LayerInstance:
    return LayerInstance(name, "Dense", {"units": units, "bias": True,
                                         "init": CallValue("glorot_uniform"),
                                         "bias_init": CallValue("zeros"), "regularizer": None},
                         (ParamSpec(f"{name}.weight", (units, fan_in), CallValue("glorot_uniform"),
                                    is_kernel=True, fan_in=fan_in, fan_out=units),
                          ParamSpec(f"{name}.bias", (units,), CallValue(
                                        "normal", kwargs=(("std", 0.1),)))),
                         SPAN)


LossBuilder = Callable[[Net, int, int], int]


def build_model(loss: LossBuilder, target: TensorType, *, head_units: int = CLASSES,
                seq: bool = False, metrics: dict[str, LossBuilder] | None = None,
                optimizer: OptimizerSpec, schedule: ScheduleSpec | None = None,
                regs: tuple[RegTerm, ...] = ()) -> CheckedModel:
    net = Net(head_units, seq)
    lead = (T,) if seq else ()
    x = net.add("input", (), {"name": "x"}, (*lead, FEATURES))
    y = net.add("target", (), {"name": "y"}, target.shape, target.dtype)
    h = net.add("layer", (x,), {"layer": "dense_1"}, (*lead, HIDDEN))
    h = net.add("fn", (h,), {"name": "relu", "kwargs": {}}, (*lead, HIDDEN))
    logits = net.add("layer", (h,), {"layer": "head"}, (*lead, head_units))
    loss_id = loss(net, logits, y)
    metric_ids = {name: m(net, logits, y) for name, m in (metrics or {}).items()}
    train = replace(TrainConfig(), optimizer=optimizer,
                    schedule=schedule or ScheduleSpec("constant", {}))
    layers = {"dense_1": _dense("dense_1", HIDDEN, FEATURES),
              "head": _dense("head", head_units, HIDDEN)}
    return CheckedModel(
        "Parity", "parity.nn",
        (Declared("x", TensorType("float32", (*lead, FEATURES)), SPAN),),
        (Declared("y", target, SPAN),), tuple(net.nodes), layers,
        (("logits", logits),), loss_id, tuple(metric_ids.items()), regs, train)


# ---------------------------------------------------------------- running both sides


def session(graph: Graph) -> Callable[[dict], dict]:
    """Run a step graph through ONNX Runtime (emit_onnx), else through the IR interpreter."""
    try:
        import onnxruntime as ort

        from dslc.emit_onnx import to_onnx
    except ImportError:
        from dslc.ir.interp import run

        return lambda feeds: run(graph, feeds)
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def make_batches(target: str, steps: int, batch: int, seq: bool) -> list[tuple]:
    rng = np.random.default_rng(11)
    lead = (T,) if seq else ()
    out = []
    for _ in range(steps):
        x = rng.normal(size=(batch, *lead, FEATURES)).astype(np.float32)
        if target == "class":
            y = rng.integers(0, CLASSES, size=(batch, *lead)).astype(np.int64)
        elif target == "probs":
            z = rng.normal(size=(batch, CLASSES))
            y = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
        elif target == "binary":
            y = rng.integers(0, 2, size=(batch,)).astype(np.float32)
        else:
            y = rng.normal(size=(batch, CLASSES)).astype(np.float32)
        out.append((x, y))
    return out


@dataclass
class Trace:
    params: dict[str, np.ndarray]
    losses: list[float]
    lrs: list[float]
    metrics: dict[str, list[float]]


def run_dslc(model: CheckedModel, batches: list[tuple], total_steps: int) -> tuple[Trace, dict]:
    graph = build_train_step(model, batch=len(batches[0][0]), total_steps=total_steps)
    step = session(graph)
    state = {**initial_state(model, 0), **optimizer_state(model)}
    init = {k: v.copy() for k, v in state.items()}
    layout = state_layout(model)
    trace = Trace({}, [], [], {name: [] for name, _ in model.metrics})
    for x, y in batches:
        out = step({**state, "seed": np.array(0, np.int64), "x": x, "y": y})
        trace.losses.append(float(out["loss"]))
        trace.lrs.append(float(out["lr"]))
        for name in trace.metrics:
            trace.metrics[name].append(float(out[name]))
        state = {k: out[f"{k}.next"] for k in state}
    trace.params = {k: state[k] for k in layout.params}
    assert int(state["step"]) == len(batches)
    return trace, init


TORCH_OPT = {
    "SGD": lambda ps, o: torch.optim.SGD(ps, lr=o["lr"], momentum=o.get("momentum", 0.0),
                                         nesterov=o.get("nesterov", False),
                                         weight_decay=o.get("weight_decay", 0.0)),
    "Adam": lambda ps, o: torch.optim.Adam(ps, lr=o["lr"], betas=o.get("betas", (0.9, 0.999)),
                                           eps=o.get("eps", 1e-8),
                                           weight_decay=o.get("weight_decay", 0.0)),
    "AdamW": lambda ps, o: torch.optim.AdamW(ps, lr=o["lr"], betas=o.get("betas", (0.9, 0.999)),
                                             eps=o.get("eps", 1e-8),
                                             weight_decay=o.get("weight_decay", 0.01)),
    "RMSprop": lambda ps, o: torch.optim.RMSprop(ps, lr=o["lr"], alpha=o.get("alpha", 0.99),
                                                 eps=o.get("eps", 1e-8),
                                                 momentum=o.get("momentum", 0.0)),
    "Adagrad": lambda ps, o: torch.optim.Adagrad(ps, lr=o["lr"], eps=o.get("eps", 1e-10)),
}


def torch_schedule(opt: Any, spec: ScheduleSpec, total_steps: int) -> Any:
    o, sched = spec.options, torch.optim.lr_scheduler
    if spec.kind == "constant":
        return sched.LambdaLR(opt, lambda t: 1.0)
    if spec.kind == "step":
        return sched.StepLR(opt, step_size=o["every"], gamma=o["gamma"])
    if spec.kind == "exponential":
        return sched.ExponentialLR(opt, gamma=o["gamma"])
    if spec.kind == "linear_warmup":
        return sched.LinearLR(opt, start_factor=1 / o["steps"], end_factor=1.0,
                              total_iters=o["steps"] - 1)
    w = o["warmup_steps"]
    warm = sched.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
    cos = sched.CosineAnnealingLR(opt, T_max=total_steps - w, eta_min=o["min_lr"])
    return sched.SequentialLR(opt, [warm, cos], milestones=[w])


TorchLoss = Callable[[Any, Any], Any]


def run_torch(model: CheckedModel, init: dict, batches: list[tuple], loss_fn: TorchLoss,
              metric_fns: dict[str, TorchLoss], total_steps: int) -> Trace:
    layout = state_layout(model)
    params = {k: torch.tensor(init[k], dtype=torch.float32, requires_grad=True)
              for k in layout.params}
    spec = model.train.optimizer
    opt = TORCH_OPT[spec.kind](list(params.values()), spec.options)
    sched = torch_schedule(opt, model.train.schedule, total_steps)
    trace = Trace({}, [], [], {name: [] for name in metric_fns})
    for x, y in batches:
        h = F.relu(F.linear(torch.from_numpy(x), params["dense_1.weight"], params["dense_1.bias"]))
        logits = F.linear(h, params["head.weight"], params["head.bias"])
        yt = torch.from_numpy(y)
        loss = loss_fn(logits, yt)
        for term in model.regularizers:
            for name in term.params:
                w = params[name]
                penalty = w.square().sum() if term.kind == "l2" else w.abs().sum()
                loss = loss + term.coeff * penalty
        for name, fn in metric_fns.items():
            trace.metrics[name].append(float(fn(logits.detach(), yt)))
        opt.zero_grad()
        loss.backward()
        if spec.options.get("clip_norm") is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), spec.options["clip_norm"])
        if spec.options.get("clip_value") is not None:
            torch.nn.utils.clip_grad_value_(list(params.values()), spec.options["clip_value"])
        trace.losses.append(float(loss.detach()))
        trace.lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    trace.params = {k: v.detach().numpy() for k, v in params.items()}
    return trace


def assert_parity(model: CheckedModel, target: str, loss_fn: TorchLoss, *, steps: int = 4,
                  seq: bool = False, metric_fns: dict[str, TorchLoss] | None = None,
                  total_steps: int | None = None, batch: int = 8) -> Trace:
    total = total_steps or steps
    batches = make_batches(target, steps, batch, seq)
    ours, init = run_dslc(model, batches, total)
    ref = run_torch(model, init, batches, loss_fn, metric_fns or {}, total)
    np.testing.assert_allclose(ours.lrs, ref.lrs, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.losses, ref.losses, rtol=1e-5, atol=1e-6)
    for name, values in ref.metrics.items():
        np.testing.assert_allclose(ours.metrics[name], values, rtol=1e-5, atol=1e-6)
    for k, v in ref.params.items():
        np.testing.assert_allclose(ours.params[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
        assert not np.allclose(ours.params[k], init[k]), f"{k} did not move"
    return ours


SGD = OptimizerSpec("SGD", {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                            "clip_norm": None, "clip_value": None})
INT_SCALAR = TensorType("int64", ())


def ce(**kw: Any) -> LossBuilder:
    return lambda n, logits, y: n.fn("cross_entropy", logits, y, label_smoothing=kw.get("ls", 0.0))


# ---------------------------------------------------------------- losses


def test_cross_entropy_int_labels() -> None:
    model = build_model(ce(), INT_SCALAR, optimizer=SGD)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y))


def test_cross_entropy_label_smoothing() -> None:
    model = build_model(ce(ls=0.1), INT_SCALAR, optimizer=SGD)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1))


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_cross_entropy_float_probabilities(ls: float) -> None:
    model = build_model(ce(ls=ls), TensorType("float32", (CLASSES,)), optimizer=SGD)
    assert_parity(model, "probs", lambda z, y: F.cross_entropy(z, y, label_smoothing=ls))


def test_cross_entropy_per_step() -> None:
    model = build_model(ce(), TensorType("int64", (T,)), seq=True, optimizer=SGD)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z.reshape(-1, CLASSES),
                                                               y.reshape(-1)), seq=True)


def test_binary_cross_entropy() -> None:
    model = build_model(lambda n, z, y: n.fn("binary_cross_entropy", z, y),
                        TensorType("float32", ()), head_units=1, optimizer=SGD)
    assert_parity(model, "binary",
                  lambda z, y: F.binary_cross_entropy_with_logits(z, y[:, None]))


@pytest.mark.parametrize(("name", "kw", "ref"), [
    ("mse", {}, lambda z, y: F.mse_loss(z, y)),
    ("mae", {}, lambda z, y: F.l1_loss(z, y)),
    ("huber", {"delta": 0.5}, lambda z, y: F.huber_loss(z, y, delta=0.5)),
])
def test_regression_losses(name: str, kw: dict, ref: TorchLoss) -> None:
    model = build_model(lambda n, z, y: n.fn(name, z, y, **kw),
                        TensorType("float32", (CLASSES,)), optimizer=SGD)
    assert_parity(model, "regress", ref)


def test_nll_of_log_softmax() -> None:
    def loss(n: Net, z: int, y: int) -> int:
        lsm = n.fn("log_softmax", z, shape=(CLASSES,), axis=-1)
        return n.fn("nll", lsm, y)

    model = build_model(loss, INT_SCALAR, optimizer=SGD)
    assert_parity(model, "class", lambda z, y: F.nll_loss(F.log_softmax(z, -1), y))


def test_scaled_sum_of_losses() -> None:
    def loss(n: Net, z: int, y: int) -> int:
        half = n.add("const", (), {"value": 0.5}, (), batched=False)
        a = n.fn("cross_entropy", z, y, label_smoothing=0.0)
        lsm = n.fn("log_softmax", z, shape=(CLASSES,), axis=-1)
        scaled = n.add("binop", (half, n.fn("nll", lsm, y)), {"op": "*"}, (), batched=False)
        return n.add("binop", (a, scaled), {"op": "+"}, (), batched=False)

    model = build_model(loss, INT_SCALAR, optimizer=SGD)
    assert_parity(model, "class", lambda z, y: 1.5 * F.cross_entropy(z, y))


# ---------------------------------------------------------------- metrics


def _topk(z: Any, y: Any, k: int) -> float:
    return float((z.topk(k, dim=-1).indices == y[:, None]).any(-1).float().mean())


def test_metrics() -> None:
    metrics = {
        "accuracy": lambda n, z, y: n.fn("accuracy", z, y),
        "top2": lambda n, z, y: n.fn("top_k_accuracy", z, y, k=2),
    }
    model = build_model(ce(), INT_SCALAR, metrics=metrics, optimizer=SGD)
    ours = assert_parity(
        model, "class", lambda z, y: F.cross_entropy(z, y), batch=32,
        metric_fns={"accuracy": lambda z, y: (z.argmax(-1) == y).float().mean(),
                    "top2": lambda z, y: _topk(z, y, 2)})
    assert any(a != t for a, t in zip(ours.metrics["accuracy"], ours.metrics["top2"],
                                      strict=True))


def test_regression_metrics() -> None:
    metrics = {"mse": lambda n, z, y: n.fn("mse", z, y), "mae": lambda n, z, y: n.fn("mae", z, y)}
    model = build_model(lambda n, z, y: n.fn("huber", z, y, delta=1.0),
                        TensorType("float32", (CLASSES,)), metrics=metrics, optimizer=SGD)
    assert_parity(model, "regress", lambda z, y: F.huber_loss(z, y),
                  metric_fns={"mse": F.mse_loss, "mae": F.l1_loss})


# ---------------------------------------------------------------- optimisers


def _opt(kind: str, **o: Any) -> OptimizerSpec:
    return OptimizerSpec(kind, {"clip_norm": None, "clip_value": None, **o})


@pytest.mark.parametrize("spec", [
    _opt("SGD", lr=0.1, momentum=0.9),
    _opt("SGD", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    _opt("SGD", lr=0.05, weight_decay=0.1),
    _opt("Adam", lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    _opt("Adam", lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
    _opt("AdamW", lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    _opt("RMSprop", lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0),
    _opt("RMSprop", lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5),
    _opt("Adagrad", lr=0.1, eps=1e-10),
], ids=["sgd-momentum", "sgd-nesterov-decay", "sgd-decay", "adam", "adam-decay", "adamw",
        "rmsprop", "rmsprop-momentum", "adagrad"])
def test_optimizer(spec: OptimizerSpec) -> None:
    model = build_model(ce(), INT_SCALAR, optimizer=spec)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y), steps=5)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("spec", [
    ScheduleSpec("constant", {}),
    ScheduleSpec("step", {"every": 3, "gamma": 0.5}),
    ScheduleSpec("exponential", {"gamma": 0.8}),
    ScheduleSpec("cosine", {"min_lr": 0.01, "warmup_steps": 3}),
    ScheduleSpec("linear_warmup", {"steps": 4}),
], ids=lambda s: s.kind)
def test_schedule(spec: ScheduleSpec) -> None:
    model = build_model(ce(), INT_SCALAR, optimizer=_opt("SGD", lr=0.1, momentum=0.9),
                        schedule=spec)
    ours = assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y), steps=10)
    if spec.kind != "constant":
        assert len(set(ours.lrs)) > 2


def test_cosine_without_warmup_reaches_min_lr() -> None:
    model = build_model(ce(), INT_SCALAR, optimizer=_opt("SGD", lr=0.1),
                        schedule=ScheduleSpec("cosine", {"min_lr": 0.0, "warmup_steps": 0}))
    batches = make_batches("class", 6, 8, False)
    ours, _ = run_dslc(model, batches, total_steps=5)
    want = [0.05 * (1 + math.cos(math.pi * min(t, 5) / 5)) for t in range(6)]
    np.testing.assert_allclose(ours.lrs, want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- regularisers and clipping


def test_l1_l2_regularisers() -> None:
    regs = (RegTerm("l2", 0.01, ("dense_1.weight", "head.weight")),
            RegTerm("l1", 0.005, ("head.weight", "head.bias")))
    model = build_model(ce(), INT_SCALAR, optimizer=SGD, regs=regs)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y))


@pytest.mark.parametrize("clip", [{"clip_norm": 0.1}, {"clip_value": 0.01},
                                  {"clip_norm": 0.5, "clip_value": 0.02}],
                         ids=["norm", "value", "both"])
def test_clipping(clip: dict) -> None:
    spec = _opt("SGD", lr=0.5, momentum=0.9, **clip)
    model = build_model(ce(), INT_SCALAR, optimizer=spec)
    assert_parity(model, "class", lambda z, y: F.cross_entropy(z, y))


# ---------------------------------------------------------------- whole .nn sources


TORCH_FNS: dict[str, Callable[..., Any]] = {
    "relu": lambda x: F.relu(x),
    "tanh": torch.tanh,
    "gelu": lambda x: F.gelu(x),
    "silu": F.silu,
    "softmax": lambda x, axis: F.softmax(x, dim=axis + 1),
    "mean": lambda x, axis, keepdims: x.mean(dim=tuple(a + 1 for a in axis), keepdim=keepdims),
    "cross_entropy": lambda z, y, label_smoothing: F.cross_entropy(
        z.reshape(-1, z.shape[-1]), y.reshape(-1) if y.dtype == torch.int64
        else y.reshape(-1, z.shape[-1]), label_smoothing=label_smoothing),
    "huber": lambda p, t, delta: F.huber_loss(p, t, delta=delta),
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "accuracy": lambda z, y: (z.argmax(-1) == y).float().mean(),
}


def torch_forward(model: CheckedModel, params: dict, data: dict) -> dict[int, Any]:
    """The checked model's dataflow graph evaluated with torch (Dense stacks only)."""
    vals: dict[int, Any] = {}
    for n in model.nodes:
        ins = [vals[i] for i in n.inputs]
        if n.op in ("input", "target"):
            vals[n.id] = data[n.attrs["name"]]
        elif n.op == "layer":
            name = n.attrs["layer"]
            vals[n.id] = F.linear(ins[0], params[f"{name}.weight"], params[f"{name}.bias"])
        elif n.op == "fn":
            vals[n.id] = TORCH_FNS[n.attrs["name"]](*ins, **n.attrs["kwargs"])
        elif n.op == "const":
            vals[n.id] = torch.tensor(float(n.attrs["value"]))
        elif n.op == "binop":
            a, c = ins
            vals[n.id] = {"+": a + c, "-": a - c, "*": a * c, "/": a / c}[n.attrs["op"]]
        else:
            vals[n.id] = -ins[0]
    return vals


SOURCES = {
    "classifier": """
model C {
    input x: float[5]
    target y: int[]
    logits = x -> Dense(8) -> gelu -> Dense(6, regularizer = l1(1e-3)) -> silu -> head: Dense(4)
    output probs = softmax(logits)
    loss cross_entropy(logits, y, label_smoothing = 0.1) + 0.5 * cross_entropy(logits, y)
    metric accuracy(logits, y)
}
train {
    optimizer = AdamW(lr = 1e-2, weight_decay = 0.05, clip_norm = 0.5)
    schedule = cosine(min_lr = 1e-3, warmup_steps = 2)
    regularize = [l2(1e-3, on = weights)]
}
""",
    "regression": """
model R {
    input x: float[5]
    target y: float[]
    pred = x -> Dense(8) -> tanh -> Dense(1) -> mean(axis = -1)
    output prediction = pred
    loss huber(pred, y, delta = 0.5)
    metric mae(pred, y)
}
train {
    optimizer = RMSprop(lr = 1e-2, momentum = 0.5, centered = true, clip_value = 0.2)
    schedule = step(every = 2, gamma = 0.5)
    regularize = [l2(1e-2, on = "dense_2.*")]
}
""",
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_model_trains_as_torch(name: str) -> None:
    check = pytest.importorskip("dslc.check")
    model = check.check_source(SOURCES[name], f"{name}.nn")
    steps, batch, total = 6, 8, 6
    rng = np.random.default_rng(21)
    batches = [(rng.normal(size=(batch, FEATURES)).astype(np.float32),
                rng.integers(0, 4, size=batch).astype(np.int64) if name == "classifier"
                else rng.normal(size=batch).astype(np.float32)) for _ in range(steps)]
    ours, init = run_dslc(model, batches, total)

    layout = state_layout(model)
    params = {k: torch.tensor(init[k], requires_grad=True) for k in layout.params}
    spec = model.train.optimizer
    o = spec.options
    opt = (torch.optim.AdamW(list(params.values()), lr=o["lr"], weight_decay=o["weight_decay"])
           if spec.kind == "AdamW" else
           torch.optim.RMSprop(list(params.values()), lr=o["lr"], momentum=o["momentum"],
                               centered=True))
    sched = torch_schedule(opt, model.train.schedule, total)
    losses, lrs = [], []
    for x, y in batches:
        vals = torch_forward(model, params, {"x": torch.from_numpy(x), "y": torch.from_numpy(y)})
        loss = vals[model.loss]
        for term in model.regularizers:
            for p in term.params:
                w = params[p]
                loss = loss + term.coeff * (w.square().sum() if term.kind == "l2"
                                            else w.abs().sum())
        opt.zero_grad()
        loss.backward()
        if o.get("clip_norm") is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), o["clip_norm"])
        if o.get("clip_value") is not None:
            torch.nn.utils.clip_grad_value_(list(params.values()), o["clip_value"])
        losses.append(float(loss.detach()))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert model.regularizers
    np.testing.assert_allclose(ours.lrs, lrs, rtol=1e-6)
    np.testing.assert_allclose(ours.losses, losses, rtol=1e-5, atol=1e-6)
    for k, v in params.items():
        np.testing.assert_allclose(ours.params[k], v.detach().numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=k)
