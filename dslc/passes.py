"""Graph-to-graph optimisations over the IR.

Every pass keeps the graph's inputs and outputs (names, types, order) and
returns a graph that passes `verify`. `optimise` runs them to a fixed point.
The rewrites for speed follow what ONNX Runtime's CPU provider rewards: Gemm
with a fused bias, and MatMul by a row of ones instead of ReduceSum over the
batch axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from dslc.ir.graph import FLOAT_DTYPES, Graph, IRError, Node, Value, opdef
from dslc.ir.ops._common import broadcast, reshape_spec

FOLD_LIMIT = 1024  # folded results larger than this many elements stay as nodes


def _renamed(names: tuple[str, ...], rename: Mapping[str, str]) -> tuple[str, ...]:
    """`names` with each renamed value followed to its final name (empty optional slots kept)."""

    def final(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    return tuple(final(n) if n else n for n in names)


def _finish(graph: Graph, nodes: list[Node], constants: Mapping[str, np.ndarray],
            rename: Mapping[str, str], new_values: Mapping[str, Value] | None = None) -> Graph:
    """Rebuild `graph` from `nodes` and `constants`, replacing uses of each renamed value.

    A renamed value that is a graph output is re-created by an identity so the
    outputs keep their names.
    """
    out = [replace(n, inputs=_renamed(n.inputs, rename)) for n in nodes]
    defined = {o for n in out for o in n.outputs}
    for v in graph.outputs:
        if v.name in rename and v.name not in defined:
            out.append(Node("identity", _renamed((v.name,), rename), (v.name,)))
            defined.add(v.name)
    table = {**graph.values, **(new_values or {})}
    names = {v.name for v in graph.inputs} | set(constants) | {o for n in out for o in n.outputs}
    values = {k: table[k] for k in names}
    return Graph(graph.name, graph.inputs, graph.outputs, tuple(out), values, dict(constants))


def _output_names(graph: Graph) -> set[str]:
    return {v.name for v in graph.outputs}


def _fresh(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


# ---------------------------------------------------------------- the generic passes


def dce(graph: Graph) -> Graph:
    """Dead-code elimination: keep only the nodes and constants the outputs need."""
    needed = _output_names(graph)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    constants = {k: v for k, v in graph.constants.items() if k in needed}
    return _finish(graph, list(reversed(kept)), constants, {})


def _small(v: Value) -> bool:
    return all(isinstance(d, int) for d in v.shape) and int(
        np.prod([int(d) for d in v.shape], dtype=np.int64)) <= FOLD_LIMIT


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes with all-constant inputs; results over FOLD_LIMIT elements stay nodes."""
    constants = dict(graph.constants)
    outputs = _output_names(graph)
    nodes: list[Node] = []
    for node in graph.nodes:
        ins = [i for i in node.inputs if i]
        if all(i in constants for i in ins) and not outputs.intersection(node.outputs):
            types = [graph.values[o] for o in node.outputs]
            if all(_small(v) for v in types):
                results = opdef(node.op).numpy([constants[i] for i in ins], node.attr_dict)
                for v, arr in zip(types, results, strict=True):
                    constants[v.name] = np.asarray(arr, dtype=v.dtype).reshape(
                        [int(d) for d in v.shape])
                continue
        nodes.append(node)
    return _finish(graph, nodes, constants, {})


def cse(graph: Graph) -> Graph:
    """Common-subexpression elimination: one node per (op, inputs, attrs), one copy per constant."""
    rename: dict[str, str] = {}
    constants: dict[str, np.ndarray] = {}
    seen_const: dict[tuple, str] = {}
    for name in sorted(graph.constants):
        arr = np.asarray(graph.constants[name])
        key = (str(arr.dtype), arr.shape, arr.tobytes())
        if key in seen_const:
            rename[name] = seen_const[key]
        else:
            seen_const[key] = name
            constants[name] = arr

    seen: dict[tuple, Node] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        key = (node.op, _renamed(node.inputs, rename), node.attrs)
        first = seen.get(key)
        if first is not None:
            rename.update(zip(node.outputs, first.outputs, strict=True))
            continue
        seen[key] = node
        nodes.append(node)
    return _finish(graph, nodes, constants, rename)


# ---------------------------------------------------------------- algebraic simplification


def _is_const(graph: Graph, name: str, value: float) -> bool:
    arr = graph.constants.get(name)
    return arr is not None and arr.size > 0 and bool(np.all(arr == value))


def _same_type(a: Value, b: Value) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)


def _merged_reshape(graph: Graph, node: Node, inner: Node, out: Value) -> Node:
    """reshape(reshape(x)) as one reshape of x, when one spec gives the same shape."""
    if all(isinstance(d, int) for d in out.shape):
        spec = tuple(out.shape)
    else:
        spec = tuple(node.attr("shape"))
    src = graph.values[inner.inputs[0]]
    try:
        [(_, shape)] = opdef("reshape").shape([src], {"shape": spec})
    except IRError:
        return node
    if tuple(shape) != tuple(out.shape):
        return node
    return replace(node, inputs=(src.name,), attrs=(("shape", spec),))


def _zeros(graph: Graph, name: str, producer: Node | None) -> bool:
    if producer is not None and producer.op == "constant_of_shape":
        return float(producer.attr("value", 0.0)) == 0.0
    return _is_const(graph, name, 0.0)


def _sum_of_scatter(graph: Graph, node: Node, producer: Mapping[str, Node],
                    out: Value) -> str | None:
    """reduce_sum along `axis` of scatter_add(zeros, idx, upd) with one index per row is upd.

    This is the gradient of gather_elements (cross-entropy's label pick) summed by
    log_softmax's gradient: each row holds exactly the one scattered update.
    """
    inner = producer.get(node.inputs[0])
    if inner is None or inner.op != "scatter_add" or not node.attr("keepdims", 1):
        return None
    base, idx, upd = inner.inputs
    axis = inner.attr("axis", 0)
    rank = graph.values[base].rank
    axes = tuple(a % rank for a in node.attr("axes", ()))
    if (axes != (axis % rank,) or graph.values[idx].shape[axis] != 1
            or not _same_type(graph.values[upd], out)):
        return None
    return upd if _zeros(graph, base, producer.get(base)) else None


def simplify(graph: Graph) -> Graph:
    """Algebra: x*1, x/1, x+0, x-0, identities, reshape chains, transpose chains."""
    outputs = _output_names(graph)
    producer: dict[str, Node] = {}
    rename: dict[str, str] = {}
    nodes: list[Node] = []

    for node in graph.nodes:
        node = replace(node, inputs=_renamed(node.inputs, rename))
        out = graph.values[node.outputs[0]]
        ins = node.inputs
        keep_name = out.name in outputs
        target: str | None = None
        if node.op == "identity":
            target = ins[0]
        elif node.op in ("add", "sub", "mul", "div"):
            unit = 1.0 if node.op in ("mul", "div") else 0.0
            if _is_const(graph, ins[1], unit) and _same_type(graph.values[ins[0]], out):
                target = ins[0]
            elif node.op in ("add", "mul") and _is_const(graph, ins[0], unit) and _same_type(
                    graph.values[ins[1]], out):
                target = ins[1]
        elif node.op == "reshape":
            src = graph.values[ins[0]]
            inner = producer.get(ins[0])
            if _same_type(src, out):
                target = ins[0]
            elif inner is not None and inner.op == "reshape":
                node = _merged_reshape(graph, node, inner, out)
        elif node.op == "reduce_sum":
            target = _sum_of_scatter(graph, node, producer, out)
        elif node.op == "transpose":
            perm = tuple(node.attr("perm"))
            inner = producer.get(ins[0])
            if inner is not None and inner.op == "transpose":
                first = tuple(inner.attr("perm"))
                perm = tuple(first[p] for p in perm)
                node = replace(node, inputs=(inner.inputs[0],), attrs=(("perm", perm),))
            if perm == tuple(range(len(perm))):
                target = node.inputs[0]
        if target is not None and not keep_name:
            rename[out.name] = target
            continue
        if target is not None and node.op != "identity":
            node = Node("identity", (target,), node.outputs)
        nodes.append(node)
        for o in node.outputs:
            producer[o] = node
    return _finish(graph, nodes, dict(graph.constants), rename)


# ---------------------------------------------------------------- rewrites for ONNX Runtime


def _scaled(graph: Graph, node: Node | None) -> tuple[str, float] | None:
    """(c, k) when `node` is mul(c, k) or mul(k, c) with k a one-element constant."""
    if node is None or node.op != "mul":
        return None
    for j in (0, 1):
        k = graph.constants.get(node.inputs[j])
        if k is not None and k.size == 1:
            return node.inputs[1 - j], float(k.reshape(-1)[0])
    return None


def fuse_gemm(graph: Graph) -> Graph:
    """Fold an added bias into a product: gemm(a, b, c, beta) from add(matmul|gemm, c).

    matmul(a, b) + c on rank-2 floats, and gemm(a, b) + k*c (the momentum update
    v' = k*v + dW), become one gemm when the product (and the scaling) has no other use.
    """
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = _output_names(graph)

    def private(name: str) -> bool:
        return name not in outputs and len(consumers.get(name, [])) == 1

    fused: dict[str, list[Node]] = {}  # add output -> the gemm (and its row reshape)
    absorbed: set[str] = set()  # outputs of nodes folded into a gemm
    taken = set(graph.values)
    new_values: dict[str, Value] = {}
    for node in graph.nodes:
        if node.op != "add":
            continue
        out = graph.values[node.outputs[0]]
        for k in (0, 1):
            prod = producers.get(node.inputs[k])
            other = node.inputs[1 - k]
            # A bias gradient is a [1, C] product reshaped to [C]: fuse through the reshape.
            row = _row_product(graph, prod, producers) if prod is not None else None
            if row is not None and private(prod.outputs[0]):
                absorbed_reshape, prod = prod.outputs[0], row
            else:
                absorbed_reshape = None
            if (prod is None or prod.op not in ("matmul", "gemm") or not private(prod.outputs[0])
                    or prod.outputs[0] in absorbed or other in absorbed):
                continue
            prod_v = graph.values[prod.outputs[0]]
            a, b = (graph.values[i] for i in prod.inputs[:2])
            target = out if absorbed_reshape is None else Value(out.name, out.dtype, prod_v.shape)
            if (a.rank != 2 or b.rank != 2 or prod_v.dtype not in FLOAT_DTYPES
                    or not _same_type(prod_v, target)
                    or (prod.op == "gemm" and len(prod.inputs) > 2)):
                continue
            attrs = dict(prod.attrs) if prod.op == "gemm" else {}
            scaled = _scaled(graph, producers.get(other)) if private(other) else None
            if scaled is not None:
                c, attrs["beta"] = scaled
            else:
                c = other
                attrs.pop("beta", None)  # a beta on a gemm without c scaled nothing
            cv = graph.values[c]
            try:
                fits = broadcast(cv.shape, prod_v.shape) == tuple(prod_v.shape)
            except IRError:
                fits = False
            if not fits or cv.dtype != prod_v.dtype:
                continue
            gemm_out = node.outputs
            if absorbed_reshape is not None:
                gemm_out = (_fresh(taken, f"{out.name}.row"),)
                new_values[gemm_out[0]] = Value(gemm_out[0], out.dtype, prod_v.shape)
                absorbed.add(absorbed_reshape)
            gemm = Node("gemm", (prod.inputs[0], prod.inputs[1], c), gemm_out,
                        tuple(sorted(attrs.items())))
            fused[out.name] = [gemm] if absorbed_reshape is None else [gemm, Node(
                "reshape", gemm_out, node.outputs,
                (("shape", reshape_spec(out.shape, prod_v.shape)),))]
            absorbed.add(prod.outputs[0])
            if c != other:
                absorbed.add(other)
            break
    if not fused:
        return graph
    nodes = [m for n in graph.nodes if n.outputs[0] not in absorbed
             for m in fused.get(n.outputs[0], [n])]
    return _finish(graph, nodes, dict(graph.constants), {}, new_values)


def _row_product(graph: Graph, node: Node, producers: Mapping[str, Node]) -> Node | None:
    """The matmul/gemm under `reshape(product[1, C]) -> [C]`, else None."""
    if node.op != "reshape":
        return None
    inner = producers.get(node.inputs[0])
    src, dst = graph.values[node.inputs[0]], graph.values[node.outputs[0]]
    if (inner is None or inner.op not in ("matmul", "gemm") or src.rank != 2
            or src.shape[0] != 1 or tuple(dst.shape) != (src.shape[1],)):
        return None
    return inner


def reduce_to_matmul(graph: Graph) -> Graph:
    """reduce_sum over axis 0 of a 2-D float tensor with concrete rows becomes ones[1, N] @ x."""
    taken = set(graph.values)
    constants = dict(graph.constants)
    new_values: dict[str, Value] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        x = graph.values[node.inputs[0]] if node.inputs else None
        if (node.op != "reduce_sum" or x is None or x.rank != 2 or x.dtype not in FLOAT_DTYPES
                or tuple(node.attr("axes", ())) != (0,) or not isinstance(x.shape[0], int)
                or x.shape[0] < 2):
            nodes.append(node)
            continue
        out = graph.values[node.outputs[0]]
        ones = _fresh(taken, f"{out.name}.ones")
        constants[ones] = np.ones((1, x.shape[0]), dtype=x.dtype)
        new_values[ones] = Value(ones, x.dtype, (1, x.shape[0]))
        if node.attr("keepdims", 1):
            nodes.append(Node("matmul", (ones, x.name), (out.name,)))
            continue
        row = _fresh(taken, f"{out.name}.row")
        new_values[row] = Value(row, x.dtype, (1, x.shape[1]))
        nodes.append(Node("matmul", (ones, x.name), (row,)))
        nodes.append(Node("reshape", (row,), (out.name,),
                          (("shape", reshape_spec(out.shape, (1, x.shape[1]))),)))
    return _finish(graph, nodes, constants, {}, new_values)


ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "max2", "min2", "pow", "neg", "exp", "log", "sqrt", "abs",
    "tanh", "sigmoid", "relu", "erf", "sign", "reciprocal", "square", "leaky_relu", "elu",
    "greater", "less", "equal", "cast", "where",
})
"""Ops that act on each element alone, so they commute with a transpose of all their inputs."""


def _all_ones(v: Value) -> bool:
    return all(isinstance(d, int) and d == 1 for d in v.shape)


def sink_transposes(graph: Graph) -> Graph:
    """Move a transpose below an elementwise op: op(transpose(a), ...) -> transpose(op(a, ...)).

    Applies when every input is either a transpose by one common perm with the op's own
    output shape, or a value of all-ones shape (a scalar, which broadcasts the same either
    way), and each such transpose feeds only elementwise ops and transposes (so it dies once
    they have moved too, and no copy is added). The transposes then meet the opposite ones
    (channels-first and back between convolution and pooling, and their gradients), which
    `simplify` cancels.
    """
    consumers = graph.consumers()
    outputs = _output_names(graph)
    taken = set(graph.values)
    producer: dict[str, Node] = {}
    new_values: dict[str, Value] = {}
    nodes: list[Node] = []

    def movable(name: str) -> bool:
        return name not in outputs and all(
            c.op in ELEMENTWISE or c.op == "transpose" for c in consumers.get(name, []))

    for node in graph.nodes:
        perm = _common_perm(graph, node, producer) if node.op in ELEMENTWISE else None
        if perm is None or not all(movable(i) for i in node.inputs
                                   if i in producer and producer[i].op == "transpose"):
            nodes.append(node)
            producer.update((o, node) for o in node.outputs)
            continue
        out = graph.values[node.outputs[0]]
        inner_name = _fresh(taken, f"{out.name}.untransposed")
        inv = tuple(int(i) for i in np.argsort(perm))
        inner = Value(inner_name, out.dtype, tuple(out.shape[i] for i in inv))
        new_values[inner_name] = inner
        ins = tuple(producer[i].inputs[0] if i in producer and producer[i].op == "transpose"
                    else i for i in node.inputs)
        moved = replace(node, inputs=ins, outputs=(inner_name,))
        after = Node("transpose", (inner_name,), node.outputs, (("perm", perm),))
        nodes += [moved, after]
        producer[inner_name] = moved
        producer[out.name] = after
    if not new_values:
        return graph
    return _finish(graph, nodes, dict(graph.constants), {}, new_values)


def _common_perm(graph: Graph, node: Node, producer: Mapping[str, Node]) -> tuple | None:
    """The perm shared by the node's transposed inputs, when the rest are all-ones values."""
    out = graph.values[node.outputs[0]]
    if len(node.outputs) != 1 or not all(isinstance(d, int) for d in out.shape):
        return None
    perm = None
    for name in node.inputs:
        v = graph.values[name]
        src = producer.get(name)
        if src is not None and src.op == "transpose" and tuple(v.shape) == tuple(out.shape):
            p = tuple(src.attr("perm"))
            if perm is not None and p != perm:
                return None
            perm = p
        elif not _all_ones(v):
            return None
    return perm


# ---------------------------------------------------------------- the pipeline

def name_outputs(graph: Graph) -> Graph:
    """An output made by identity(x) is produced directly by x's node when nothing else reads x.

    ONNX Runtime pays per node even for an identity; the output keeps its name.
    """
    outputs = _output_names(graph)
    consumers = graph.consumers()
    producers = graph.producers()
    boundary = {v.name for v in graph.inputs} | set(graph.constants) | outputs
    take: dict[str, str] = {}  # a producer's output -> the graph output it becomes
    for node in graph.nodes:
        src = node.inputs[0] if node.op == "identity" else None
        if (src is not None and node.outputs[0] in outputs and src in producers
                and src not in boundary and len(consumers.get(src, [])) == 1):
            take[src] = node.outputs[0]
    if not take:
        return graph
    taken = set(take.values())
    nodes = [replace(n, outputs=tuple(take.get(o, o) for o in n.outputs))
             for n in graph.nodes if not (n.op == "identity" and n.outputs[0] in taken)]
    return _finish(graph, nodes, dict(graph.constants), {})


PIPELINE: tuple[Callable[[Graph], Graph], ...] = (
    simplify, fold_constants, cse, sink_transposes, reduce_to_matmul, fuse_gemm, name_outputs,
    dce,
)


def optimise(graph: Graph, max_rounds: int = 8) -> Graph:
    """Run every pass until the graph stops changing (or `max_rounds`)."""
    for _ in range(max_rounds):
        before = (graph.nodes, tuple(sorted(graph.constants)))
        for p in PIPELINE:
            graph = p(graph)
        if (graph.nodes, tuple(sorted(graph.constants))) == before:
            break
    return graph
