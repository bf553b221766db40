"""The NaN/Inf guard: detect the first non-finite step and say where in the `.nn` file it began.

Detection is cheap: the training step gets one extra scalar output,
`finite_probe` = 0 · Σ over every new parameter and buffer of its sum, which is
0 while they are finite and NaN as soon as any element is NaN or ±Inf (a sum
that overflows float32 counts too: such a state has diverged anyway). The loss
is read on the host every step in any case. The step before a failing one left
finite parameters behind, so that state is what `last.safetensors` keeps.
Optimiser slots (which can overflow while the parameters stay finite, e.g. a
squared gradient in Adam) are checked on the host before every checkpoint;
then `last.safetensors` keeps the previous checkpoint.

Location: the forward pass of the failing batch is re-run in train mode with
the last finite state and every node of the checked model as an output; the
first node (in topological order) with a non-finite value is reported with its
span. When the forward pass is finite throughout, the gradients or the update
overflowed, and the first parameter whose new value is not finite names the layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from dslc.check.model import CheckedModel, GNode
from dslc.errors import DslcError, Span
from dslc.ir.graph import Builder, Graph

PROBE = "finite_probe"


def add_finite_probe(graph: Graph) -> Graph:
    """The training step with one more output, `finite_probe`: 0 when every new state is finite."""
    b = Builder.from_graph(graph, "float32")
    total = None
    for out in graph.outputs:
        # Optimiser slots are left out: probing them too cost ~10% of a small step, and a
        # non-finite gradient reaches the parameters in the same step. `nonfinite_key`
        # checks the slots whenever a checkpoint is written.
        if not out.name.endswith(".next") or out.name.startswith("opt."):
            continue
        if not out.dtype.startswith("float"):
            continue
        s = out
        if out.shape:
            s = b.op("reduce_sum", out, axes=tuple(range(len(out.shape))), keepdims=0)
        total = s if total is None else b.op("add", total, s)
    if total is None:
        total = b.const(0.0)
    zero = b.const(np.zeros((), dtype=total.dtype))
    b.output(b.op("mul", total, zero), name=PROBE)
    return b.build()


class TrainingDiverged(DslcError):
    """A loss, gradient or update became NaN or Inf; carries the step and the source span."""

    def __init__(self, message: str, span: Span | None, step: int, hint: str | None) -> None:
        super().__init__(message, span, hint)
        self.step = step


def _node_label(model: CheckedModel, node: GNode) -> str:
    if node.op == "layer":
        layer = model.layers[node.attrs["layer"]]
        return f"layer `{layer.name}` ({layer.kind})"
    if node.op == "fn":
        if node.id == model.loss:
            return f"the loss `{node.attrs['name']}(...)`"
        return f"`{node.attrs['name']}(...)`"
    if node.op == "binop":
        return f"the expression `{node.attrs['op']}`"
    return f"the {node.op} expression"


def forward_values(
    model: CheckedModel,
    state: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    *,
    seed: int,
    step: int,
) -> dict[int, np.ndarray]:
    """Every computed node's value (train mode, as in the step) for one batch, by node id."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower.forward import lower_forward
    from dslc.lower.step import state_layout
    from dslc.runtime.session import make_session

    ids = [n.id for n in model.nodes if n.op not in ("input", "target", "const")]
    probe = dataclasses.replace(model, outputs=tuple((f"node_{i}", i) for i in ids))
    layout = state_layout(model)
    shapes = {p.name: tuple(p.shape) for p in model.params()}
    b = Builder(f"{model.name}.diagnose", "float32")
    params = {n: b.input(n, "float32", shapes[n]) for n in (*layout.params, *layout.buffers)}
    step_v = b.input("step", "int64", ())
    seed_v = b.input("seed", "int64", ())
    data = {}
    for decl in (*model.inputs, *model.targets):
        arr = batch[decl.name]
        dtype = "int64" if decl.type.dtype == "int64" else "float32"
        data[decl.name] = b.input(decl.name, dtype, tuple(arr.shape))
    fwd = lower_forward(b, probe, params, data, "train", seed=seed_v, step=step_v)
    for name, v in fwd.outputs.items():
        b.output(v, name=name)
    sess = make_session(to_onnx(b.build()).SerializeToString(), "cpu", 1)
    feeds = {n: np.asarray(state[n], dtype=np.float32) for n in params}
    feeds.update({"step": np.array(step, dtype=np.int64), "seed": np.array(seed, dtype=np.int64)})
    feeds.update({k: np.asarray(batch[k]) for k in data})
    names = [o.name for o in sess.get_outputs()]
    return {int(n[len("node_") :]): v for n, v in zip(names, sess.run(names, feeds), strict=True)}


def first_nonfinite_node(model: CheckedModel, values: Mapping[int, np.ndarray]) -> GNode | None:
    """The first node, in topological order, whose value holds a NaN or Inf."""
    for node in model.nodes:
        v = values.get(node.id)
        if v is not None and v.dtype.kind == "f" and not np.isfinite(v).all():
            return node
    return None


def _owner(model: CheckedModel, param: str) -> Span | None:
    for layer in model.layers.values():
        if any(p.name == param for p in layer.params):
            return layer.span
    return None


def nonfinite_key(state: Mapping[str, np.ndarray]) -> str | None:
    """The first float tensor of a state holding a NaN or Inf, else None."""
    for name, arr in state.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return name
    return None


def slot_diverged(model: CheckedModel, name: str, step: int, checkpoint: str) -> TrainingDiverged:
    """The error for optimiser state that overflowed while the parameters stayed finite."""
    param = name.removeprefix("opt.").rsplit(".", 1)[0]
    return TrainingDiverged(
        f"training diverged by step {step}: the optimiser state `{name}` is not finite "
        "(a gradient overflowed)",
        _owner(model, param),
        step,
        f"{checkpoint} holds the last finite checkpoint; try a smaller learning rate or "
        "gradient clipping",
    )


def _first_bad_update(new_state: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """The first state successor that is not finite, or whose sum overflows float32."""
    for name, arr in new_state.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return name, "is not finite (the gradient overflowed)"
    for name, arr in new_state.items():
        with np.errstate(over="ignore"):
            total = np.sum(arr, dtype=arr.dtype) if arr.dtype.kind == "f" and arr.size else 0.0
        if not np.isfinite(total):
            return name, f"overflows float32 (largest magnitude {float(np.abs(arr).max()):.3g})"
    return None


def diagnose(
    model: CheckedModel,
    *,
    step: int,
    loss: float,
    state: Mapping[str, np.ndarray],
    new_state: Mapping[str, np.ndarray] | None,
    batch: Mapping[str, np.ndarray],
    seed: int,
    checkpoint: str,
) -> TrainingDiverged:
    """The error to raise for a non-finite step `step` (0-based), pointing at its source."""
    where = f"step {step + 1}"
    kept = f"{checkpoint} holds the last finite state (before {where})"
    hint = f"{kept}; try a smaller learning rate, gradient clipping, or check the data"
    try:
        values = forward_values(model, state, batch, seed=seed, step=step)
    except Exception:  # noqa: BLE001 - the diagnosis must never hide the divergence itself
        values = {}
    node = first_nonfinite_node(model, values)
    if node is not None:
        bad = values[node.id]
        kind = "NaN" if np.isnan(bad).any() else "Inf"
        return TrainingDiverged(
            f"training diverged at {where}: {kind} first appears in {_node_label(model, node)}",
            node.span,
            step,
            hint,
        )
    loss_txt = f"{loss:.6g}"
    culprit = _first_bad_update(new_state or {})
    if culprit is not None:
        name, what = culprit
        param = name.removeprefix("opt.").rsplit(".", 1)[0] if name.startswith("opt.") else name
        return TrainingDiverged(
            f"training diverged at {where}: the forward pass is finite (loss {loss_txt}) "
            f"but the update of `{name}` {what}",
            _owner(model, param),
            step,
            hint,
        )
    return TrainingDiverged(
        f"training diverged at {where}: the loss is {loss_txt}", None, step, hint
    )
