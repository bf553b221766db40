"""A table of a checked model: one row per layer, then totals and FLOPs per example."""

from __future__ import annotations

import math

from dslc.catalogue import FUNCTION_LIKE, LAYERS
from dslc.catalogue.layers import show_shape
from dslc.check.model import CheckedModel, GNode


def _fmt(n: int) -> str:
    return f"{n:,}"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def node_flops(model: CheckedModel, node: GNode) -> int:
    """Forward FLOPs per example of one node (symbolic dimensions count as 1)."""
    ins = [model.nodes[i].type for i in node.inputs]
    if node.op == "layer":
        layer = model.layers[node.attrs["layer"]]
        return LAYERS[layer.kind].flops(layer.args, ins[0], node.type)
    if node.op == "fn":
        return FUNCTION_LIKE[node.attrs["name"]].flops(ins, node.type)
    if node.op == "binop":
        size = math.prod(d if isinstance(d, int) else 1 for d in node.type.shape)
        if node.attrs["op"] == "@":
            k = ins[0].shape[-1]
            return 2 * size * (k if isinstance(k, int) else 1)
        return size
    if node.op == "neg":
        return math.prod(d if isinstance(d, int) else 1 for d in node.type.shape)
    return 0


def inference_flops(model: CheckedModel) -> int:
    """Forward FLOPs per example over the nodes that do not depend on a target."""
    uses_target = [False] * len(model.nodes)
    total = 0
    for n in model.nodes:
        uses_target[n.id] = n.op == "target" or any(uses_target[i] for i in n.inputs)
        if not uses_target[n.id] and n.type.batched:
            total += node_flops(model, n)
    return total


def summary(model: CheckedModel) -> str:
    """A Keras-like summary: layers with kind, output shape and parameters; totals and FLOPs."""
    applied: dict[str, list[GNode]] = {}
    for n in model.nodes:
        if n.op == "layer":
            applied.setdefault(n.attrs["layer"], []).append(n)
    rows = [("Layer", "Kind", "Output shape", "Params")]
    for name, layer in model.layers.items():
        nodes = applied.get(name, [])
        shape = show_shape(nodes[0].type.shape) if nodes else "-"
        kind = layer.kind + (f" (shared x{len(nodes)})" if len(nodes) > 1 else "")
        count = sum(math.prod(p.shape) for p in layer.params if p.trainable)
        rows.append((name, kind, shape, _fmt(count)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "-" * (sum(widths) + 6)

    def line(r: tuple[str, str, str, str]) -> str:
        return "  ".join(
            [
                r[0].ljust(widths[0]),
                r[1].ljust(widths[1]),
                r[2].ljust(widths[2]),
                r[3].rjust(widths[3]),
            ]
        ).rstrip()

    params = model.params()
    trainable = sum(math.prod(p.shape) for p in params if p.trainable)
    buffers = sum(math.prod(p.shape) for p in params if not p.trainable)
    out = [f"model {model.name} ({model.file})", rule, line(rows[0]), rule]
    out += [line(r) for r in rows[1:]]
    out.append(rule)
    out.append("inputs:  " + ", ".join(f"{d.name}: {d.type}" for d in model.inputs))
    if model.targets:
        out.append("targets: " + ", ".join(f"{d.name}: {d.type}" for d in model.targets))
    if model.outputs:
        out.append(
            "outputs: " + ", ".join(f"{name}: {model.nodes[i].type}" for name, i in model.outputs)
        )
    if model.loss is not None:
        out.append(f"loss:    {_describe(model, model.loss)}")
    if model.metrics:
        out.append("metrics: " + ", ".join(name for name, _ in model.metrics))
    out.append(f"trainable parameters: {_fmt(trainable)}")
    out.append(f"buffers: {_fmt(buffers)}")
    out.append(
        f"parameter and buffer bytes: {_fmt(4 * (trainable + buffers))} "
        f"({_human_bytes(4 * (trainable + buffers))}, float32)"
    )
    symbolic = any(isinstance(d, str) for n in model.nodes for d in n.type.shape)
    out.append(
        f"forward FLOPs per example: {_fmt(inference_flops(model))}"
        + (" (symbolic dimensions counted as 1)" if symbolic else "")
    )
    return "\n".join(out)


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2}


def _describe(model: CheckedModel, node_id: int) -> str:
    """The loss as written, calls abridged: `cross_entropy(...) + 0.5 * mse(...)`."""
    n = model.nodes[node_id]
    if n.op == "fn":
        return n.attrs["name"] + "(...)"
    if n.op == "neg":
        return "-" + _operand(model, n.inputs[0], 3)
    if n.op == "binop":
        op = n.attrs["op"]
        level = _PRECEDENCE[op]
        # The right operand of - and / binds tighter: a - (b + c) keeps its parentheses.
        left = _operand(model, n.inputs[0], level)
        right = _operand(model, n.inputs[1], level + (op in "-/"))
        return f"{left} {op} {right}"
    if n.op == "const":
        return f"{n.attrs['value']:g}"
    return n.op


def _operand(model: CheckedModel, node_id: int, level: int) -> str:
    """An operand of an operator of precedence `level`, parenthesised where it binds looser."""
    n = model.nodes[node_id]
    text = _describe(model, node_id)
    looser = n.op == "binop" and _PRECEDENCE[n.attrs["op"]] < level
    return f"({text})" if looser else text
