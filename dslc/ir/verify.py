"""The IR verifier: structural and type checks that every stage's output must pass."""

from __future__ import annotations

from dslc.ir.graph import DTYPES, Graph, IRError, opdef


def verify(graph: Graph) -> None:
    """Raise IRError unless `graph` is well formed.

    Checks: each value is defined once (input, constant or node output); every
    node input is defined before use; every op is registered and the recorded
    dtypes and shapes of its outputs equal its shape rule's; constants agree
    with their recorded values; graph outputs exist.
    """
    defined: set[str] = set()

    def define(name: str, what: str) -> None:
        if name in defined:
            raise IRError(f"value {name!r} defined twice ({what})")
        if name not in graph.values:
            raise IRError(f"value {name!r} ({what}) missing from the value table")
        defined.add(name)

    for v in graph.inputs:
        define(v.name, "graph input")
        if graph.values[v.name] != v:
            raise IRError(f"graph input {v.name!r} disagrees with the value table")
    for name, arr in graph.constants.items():
        define(name, "constant")
        v = graph.values[name]
        if str(arr.dtype) != v.dtype or tuple(arr.shape) != tuple(v.shape):
            raise IRError(f"constant {name!r} is {arr.dtype}{list(arr.shape)}, recorded as "
                          f"{v.dtype}{list(v.shape)}")
    for node in graph.nodes:
        d = opdef(node.op)
        for i in node.inputs:
            if i and i not in defined:
                raise IRError(f"{node.op} node {node.outputs[0]!r} uses {i!r} before definition")
        ins = [graph.values[i] for i in node.inputs if i]
        try:
            expected = d.shape(ins, node.attr_dict)
        except IRError as e:
            raise IRError(f"{node.op} node {node.outputs[0]!r}: {e}") from None
        if len(expected) != len(node.outputs):
            raise IRError(f"{node.op} node {node.outputs[0]!r} has {len(node.outputs)} outputs, "
                          f"expected {len(expected)}")
        for name, (dtype, shape) in zip(node.outputs, expected, strict=True):
            define(name, f"output of {node.op}")
            v = graph.values[name]
            if v.dtype != dtype or tuple(v.shape) != tuple(shape):
                raise IRError(f"{name!r} recorded as {v.dtype}{list(v.shape)}, but {node.op} "
                              f"gives {dtype}{list(shape)}")
    for v in graph.values.values():
        if v.dtype not in DTYPES:
            raise IRError(f"value {v.name!r} has unknown dtype {v.dtype!r}")
    for v in graph.outputs:
        if v.name not in defined:
            raise IRError(f"graph output {v.name!r} is never defined")
