"""Reverse-mode automatic differentiation over the IR.

The backward pass walks the forward nodes that lie on a path from a `wrt`
value to the loss, in reverse, calling each op's VJP rule (written with the
Builder in IR ops). Cotangents of values used several times are summed; a
zero cotangent is `None` and never materialised. Backward nodes that no
requested gradient needs are dropped again, so VJP rules may compute
cotangents for every input without cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dslc.ir.graph import FLOAT_DTYPES, Builder, Graph, IRError, Node, Value, opdef


def _active_nodes(graph: Graph, loss: str, wrt: Sequence[str]) -> list[Node]:
    """Forward nodes on some path from a `wrt` value to `loss`."""
    depends = set(wrt)
    for n in graph.nodes:
        if any(i in depends for i in n.inputs):
            depends.update(n.outputs)
    feeds_loss = {loss}
    for n in reversed(graph.nodes):
        if any(o in feeds_loss for o in n.outputs):
            feeds_loss.update(i for i in n.inputs if i)
    return [n for n in graph.nodes
            if any(o in depends and o in feeds_loss for o in n.outputs)]


def _accumulate(b: Builder, cts: dict[str, Value], target: Value, g: Value) -> None:
    if g.dtype != target.dtype or tuple(g.shape) != tuple(target.shape):
        raise IRError(f"cotangent {g.name!r} is {g.dtype}{list(g.shape)} but {target.name!r} "
                      f"is {target.dtype}{list(target.shape)}")
    prev = cts.get(target.name)
    cts[target.name] = g if prev is None else b.op(
        "add", prev, g, name=b.fresh(f"bwd.{target.name}.acc"))


def backward(graph: Graph, loss: str, wrt: Sequence[str]) -> tuple[Graph, dict[str, str | None]]:
    """Extend `graph` with the gradients of `loss` with respect to each `wrt` value.

    Returns the extended graph (forward nodes first, outputs unchanged) and, per
    `wrt` name, the name of its gradient `grad.<name>`, or None when the loss
    does not depend on it.
    """
    if loss not in graph.values:
        raise IRError(f"unknown loss value {loss!r}")
    missing = [w for w in wrt if w not in graph.values]
    if missing:
        raise IRError(f"unknown values to differentiate with respect to: {missing}")
    loss_v = graph.values[loss]
    if loss_v.dtype not in FLOAT_DTYPES:
        raise IRError(f"loss {loss!r} has non-float dtype {loss_v.dtype}")
    if not all(isinstance(d, int) for d in loss_v.shape):
        raise IRError(f"loss {loss!r} has symbolic shape {loss_v.shape}")

    b = Builder.from_graph(graph, float_dtype=loss_v.dtype)
    n_forward = len(b.nodes)
    cts: dict[str, Value] = {
        loss: b.const(np.ones(loss_v.shape, dtype=loss_v.dtype), name=b.fresh(f"grad_seed.{loss}"))
    }
    for node in reversed(_active_nodes(graph, loss, wrt)):
        gs = [cts.get(o) for o in node.outputs]
        rule = opdef(node.op).vjp
        if rule is None or all(g is None for g in gs):
            continue
        ins = [graph.values[i] for i in node.inputs if i]
        outs = [graph.values[o] for o in node.outputs]
        with b.scope(f"bwd.{node.outputs[0]}"):
            in_cts = rule(b, ins, outs, gs, node.attr_dict)
        if len(in_cts) != len(ins):
            raise IRError(f"VJP of {node.op} returned {len(in_cts)} cotangents "
                          f"for {len(ins)} inputs")
        for x, g in zip(ins, in_cts, strict=True):
            if g is not None and x.dtype in FLOAT_DTYPES:
                _accumulate(b, cts, x, g)

    names: dict[str, str | None] = {}
    for w in wrt:
        if w in names:
            continue
        if w in cts:
            names[w] = b.op("identity", cts[w], name=f"grad.{w}").name
        else:
            names[w] = None
    return _prune(b.build(), n_forward, graph, {n for n in names.values() if n}), names


def _prune(g: Graph, n_forward: int, forward: Graph, keep: set[str]) -> Graph:
    """Drop backward nodes and constants that no kept gradient needs."""
    needed = set(keep)
    kept: list[Node] = []
    for node in reversed(g.nodes[n_forward:]):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    nodes = g.nodes[:n_forward] + tuple(reversed(kept))
    defined = {o for n in nodes for o in n.outputs} | {v.name for v in g.inputs}
    constants = {k: v for k, v in g.constants.items() if k in forward.constants or k in needed}
    defined |= set(constants)
    values = {k: v for k, v in g.values.items() if k in defined}
    return Graph(g.name, g.inputs, g.outputs, nodes, values, constants)
