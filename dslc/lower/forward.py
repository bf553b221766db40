"""Lowering the checked model's dataflow graph to IR, for one mode: train, eval or infer."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

from dslc.check.model import CheckedModel, GNode
from dslc.ir.graph import Builder, IRError, Value
from dslc.lower.functions import FUNCTION_LOWERINGS, to_float
from dslc.lower.layers import LayerCall, apply_layer
from dslc.lower.regularizers import regularization

MODES = ("train", "eval", "infer")

_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}


@dataclass(frozen=True)
class Forward:
    """The lowered forward pass: outputs, loss (data + regularisation), metrics, new buffers."""

    outputs: dict[str, Value]
    loss: Value | None
    metrics: dict[str, Value]
    buffer_updates: dict[str, Value] = field(default_factory=dict)


def _ensure_loaded() -> None:
    # Losses and metrics register into FUNCTION_LOWERINGS on import.
    import dslc.lower.losses  # noqa: F401
    import dslc.lower.metrics  # noqa: F401


def _bound_dims(model: CheckedModel, data: Mapping[str, Value]) -> dict[str, int]:
    """Symbolic per-example sizes that the data values fix to integers."""
    bound: dict[str, int] = {}
    for decl in (*model.inputs, *model.targets):
        if decl.name in data:
            for d, v in zip(decl.type.shape, data[decl.name].shape[1:], strict=False):
                if isinstance(d, str) and isinstance(v, int):
                    bound[d] = v
    return bound


def lower_forward(
    b: Builder,
    model: CheckedModel,
    params: Mapping[str, Value],
    data: Mapping[str, Value],
    mode: str,
    *,
    seed: Value | None = None,
    step: Value | None = None,
) -> Forward:
    """Append the forward pass to `b`; only the nodes the mode needs are lowered.

    `params` maps every parameter and buffer full name to its value, `data` every
    input (and, outside "infer", target) name. `seed` and `step` (int64 scalars)
    feed the randomness of train-mode layers such as Dropout.
    """
    if mode not in MODES:
        raise IRError(f"unknown mode {mode!r}")
    _ensure_loaded()
    memo: dict[int, Value] = {}
    buffer_updates: dict[str, Value] = {}
    # What layers read: a shared BatchNorm applied twice updates its running statistics
    # twice, in source order, as torch does, so a later application sees the updated values.
    state = ChainMap(buffer_updates, dict(params))
    bound = _bound_dims(model, data)

    def lower_node(node: GNode) -> Value:
        ins = [memo[i] for i in node.inputs]
        if node.op in ("input", "target"):
            name = node.attrs["name"]
            if name not in data:
                raise IRError(f"no data value for {node.op} {name!r}")
            return data[name]
        if node.op == "const":
            with b.scope("fwd"):
                return b.const(float(node.attrs["value"]), dtype=b.float_dtype)
        if node.op == "layer":
            layer = model.layers[node.attrs["layer"]]
            result = apply_layer(LayerCall(b, layer, ins[0], state, mode, node, seed, step))
            if mode == "train":
                buffer_updates.update(result.buffer_updates)
            return result.value
        if node.op == "fn":
            fname = node.attrs["name"]
            try:
                lowering = FUNCTION_LOWERINGS[fname]
            except KeyError:
                raise IRError(f"no lowering for function {fname!r}") from None
            kwargs = dict(node.attrs.get("kwargs") or {})
            if isinstance(kwargs.get("shape"), (tuple, list)):
                kwargs["shape"] = tuple(bound.get(d, d) if isinstance(d, str) else d
                                        for d in kwargs["shape"])
            with b.scope(f"fwd.{fname}"):
                return lowering(b, ins, kwargs)
        if node.op == "binop":
            a, c = ins
            if a.dtype != c.dtype:
                a, c = to_float(b, a), to_float(b, c)
            with b.scope("fwd"):
                return b.op(_BINOPS[node.attrs["op"]], a, c)
        if node.op == "neg":
            with b.scope("fwd"):
                return b.op("neg", ins[0])
        raise IRError(f"unknown graph node op {node.op!r}")

    roots = [nid for _, nid in model.outputs]
    if mode != "infer":
        roots += [nid for _, nid in model.metrics]
        if model.loss is not None:
            roots.append(model.loss)
    # Node ids are in source order and every input precedes its node, so lowering the
    # needed nodes by id is a topological order that applies layers as the source does.
    for nid in sorted(needed_nodes(model, roots)):
        memo[nid] = lower_node(model.nodes[nid])

    outputs = {name: memo[nid] for name, nid in model.outputs}
    loss: Value | None = None
    metrics: dict[str, Value] = {}
    if mode != "infer":
        if model.loss is not None:
            loss = memo[model.loss]
            reg = regularization(b, model.regularizers, params)
            if reg is not None:
                loss = b.op("add", loss, reg, name=b.fresh("reg.total_loss"))
        metrics = {name: memo[nid] for name, nid in model.metrics}
    return Forward(outputs, loss, metrics, buffer_updates)


def needed_nodes(model: CheckedModel, roots: list[int]) -> set[int]:
    """The ids of the roots and every node they depend on (iterative: pipelines may be deep)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        nid = stack.pop()
        if nid not in seen:
            seen.add(nid)
            stack.extend(model.nodes[nid].inputs)
    return seen
