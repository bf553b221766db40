"""Assembly of the training step, the evaluation step and the inference graph.

The training step follows the contract in docs/architecture.md and
docs/step-graph.md: inputs are parameters, buffers, optimiser slots, `step`,
`seed` and the data; outputs are `loss`, the metrics, `lr` and the successor
of every state input, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dslc.check.model import CheckedModel, Declared
from dslc.ir.graph import Builder, Graph, IRError, Shape, Value
from dslc.lower.forward import lower_forward
from dslc.lower.optimizers import apply_optimizer, clip_gradients, slot_names, slot_value_name
from dslc.lower.schedules import learning_rate

BATCH = "N"


@dataclass(frozen=True)
class StateLayout:
    """The ordered state names a runtime feeds to and reads back from the training step."""

    params: tuple[str, ...]  # trainable parameters, full names
    buffers: tuple[str, ...]  # non-trainable buffers, full names
    slots: tuple[str, ...]  # `opt.<param>.<slot>`, parameter-major
    slot_names: tuple[str, ...]  # the optimiser's slot names per parameter

    @property
    def state(self) -> tuple[str, ...]:
        """Every state input of the training step before `step` and `seed`, in order."""
        return (*self.params, *self.buffers, *self.slots)

    @property
    def checkpoint_keys(self) -> tuple[str, ...]:
        """Every key a full training checkpoint holds."""
        return (*self.state, "step")


def state_layout(model: CheckedModel) -> StateLayout:
    """The model's parameter, buffer and optimiser slot names, in graph order."""
    specs = model.params()
    params = tuple(p.name for p in specs if p.trainable)
    buffers = tuple(p.name for p in specs if not p.trainable)
    names = slot_names(model.train.optimizer)
    slots = tuple(slot_value_name(p, s) for p in params for s in names)
    return StateLayout(params, buffers, slots, names)


def _dtype(dtype: str, float_dtype: str) -> str:
    return float_dtype if dtype.startswith("float") else dtype


def _shape(decl: Declared, batch: int | str, dims: Mapping[str, int] | None) -> Shape:
    out: list[int | str] = [batch]
    for d in decl.type.shape:
        if isinstance(d, str) and dims is not None:
            if d not in dims:
                raise IRError(f"dimension {d!r} of {decl.name!r} has no size: pass it in dims")
            out.append(int(dims[d]))
        else:
            out.append(d)
    return tuple(out)


def _data_inputs(b: Builder, model: CheckedModel, batch: int | str,
                 dims: Mapping[str, int] | None, targets: bool) -> dict[str, Value]:
    decls = [*model.inputs, *(model.targets if targets else ())]
    return {d.name: b.input(d.name, _dtype(d.type.dtype, b.float_dtype), _shape(d, batch, dims))
            for d in decls}


def _param_inputs(b: Builder, model: CheckedModel, layout: StateLayout) -> dict[str, Value]:
    shapes = {p.name: tuple(p.shape) for p in model.params()}
    return {n: b.input(n, b.float_dtype, shapes[n]) for n in (*layout.params, *layout.buffers)}


def _optimise(graph: Graph) -> Graph:
    try:
        from dslc.passes import optimise
    except ImportError:
        return graph
    return optimise(graph)


def build_train_step(
    model: CheckedModel,
    *,
    batch: int,
    dims: Mapping[str, int] | None = None,
    total_steps: int = 1,
    float_dtype: str = "float32",
    optimise: bool = True,
) -> Graph:
    """One optimiser step: forward (train mode), gradients, clipping, update, schedule.

    Every dimension is concrete: the batch is `batch`, symbolic dimensions come
    from `dims`. `total_steps` is the run's length, which the cosine schedule needs.
    """
    from dslc.autodiff import backward

    if model.loss is None:
        raise IRError(f"model {model.name!r} has no loss to train")
    layout = state_layout(model)
    b = Builder(f"{model.name}.train_step", float_dtype)
    state = _param_inputs(b, model, layout)
    shapes = {p.name: tuple(p.shape) for p in model.params()}
    for s in layout.slots:
        b.input(s, float_dtype, shapes[s[len("opt."):s.rindex(".")]])
    step = b.input("step", "int64", ())
    seed = b.input("seed", "int64", ())
    data = _data_inputs(b, model, batch, dims or {}, targets=True)
    fwd = lower_forward(b, model, state, data, "train", seed=seed, step=step)
    assert fwd.loss is not None
    loss_name = fwd.loss.name

    graph, grad_names = backward(b.build(), loss_name, layout.params)
    b = Builder.from_graph(graph, float_dtype)
    b.outputs = []
    grads: dict[str, Value | None] = {
        p: (b.values[g] if g is not None else None)
        for p, g in ((p, grad_names.get(p)) for p in layout.params)}
    opt = model.train.optimizer
    grads = clip_gradients(b, opt, grads)
    lr = learning_rate(b, model.train.schedule, float(opt.options.get("lr", 1e-3)), step,
                       total_steps)
    params = {p: b.values[p] for p in layout.params}
    slots = {p: {s: b.values[slot_value_name(p, s)] for s in layout.slot_names}
             for p in layout.params}
    updates = apply_optimizer(b, opt, lr, step, params, grads, slots)

    b.output(b.values[loss_name], name="loss")
    for name, v in fwd.metrics.items():
        b.output(b.values[v.name], name=name)
    b.output(lr, name="lr")
    for p in layout.params:
        b.output(updates[p].param)
    for buf in layout.buffers:
        new = fwd.buffer_updates.get(buf)
        b.output(b.op("identity", b.values[new.name] if new is not None else b.values[buf],
                      name=f"{buf}.next"))
    for p in layout.params:
        for s in layout.slot_names:
            b.output(updates[p].slots[s])
    b.output(b.op("add", step, b.const(1, dtype="int64", name="step.one"), name="step.next"))
    graph = b.build()
    return _optimise(graph) if optimise else graph


def build_eval_step(
    model: CheckedModel,
    *,
    batch: int | None = None,
    dims: Mapping[str, int] | None = None,
    float_dtype: str = "float32",
    optimise: bool = True,
) -> Graph:
    """Loss, metrics and model outputs in eval mode; batch None keeps a symbolic "N"."""
    layout = state_layout(model)
    b = Builder(f"{model.name}.eval_step", float_dtype)
    state = _param_inputs(b, model, layout)
    data = _data_inputs(b, model, BATCH if batch is None else batch, dims, targets=True)
    fwd = lower_forward(b, model, state, data, "eval")
    if fwd.loss is not None:
        b.output(fwd.loss, name="loss")
    for name, v in fwd.metrics.items():
        b.output(v, name=name)
    for name, v in fwd.outputs.items():
        if name not in fwd.metrics and name != "loss":
            b.output(v, name=name)
    graph = b.build()
    return _optimise(graph) if optimise else graph


def build_inference(model: CheckedModel, *, float_dtype: str = "float32",
                    optimise: bool = True) -> Graph:
    """The exported model: inputs (batch "N", symbolic dims kept), then parameters and buffers
    as graph inputs (the emitter makes them initializers); outputs by their declared names."""
    layout = state_layout(model)
    b = Builder(model.name, float_dtype)
    data = _data_inputs(b, model, BATCH, None, targets=False)
    state = _param_inputs(b, model, layout)
    fwd = lower_forward(b, model, state, data, "infer")
    for name, v in fwd.outputs.items():
        b.output(v, name=name)
    graph = b.build()
    return _optimise(graph) if optimise else graph
