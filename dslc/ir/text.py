"""The stable text form of an IR graph (`dslc compile --dump ir`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dslc.ir.graph import Graph, Value


def type_str(v: Value) -> str:
    """`float32[N,128]` for a value."""
    return f"{v.dtype}[{','.join(str(d) for d in v.shape)}]"


def _attr_str(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_attr_str(x) for x in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return str(value)


def _const_str(arr: np.ndarray) -> str:
    if arr.size <= 8:
        return np.array2string(arr.reshape(-1), separator=",", precision=6).replace("\n", "")
    flat = arr.reshape(-1).astype(np.float64) if arr.dtype != bool else arr.reshape(-1)
    return f"<{arr.size} values, min {flat.min():.6g}, max {flat.max():.6g}>"


def to_text(graph: Graph) -> str:
    """One line per input, constant, node and output; identical graphs print identically."""
    lines = [f"graph {graph.name} {{"]
    for v in graph.inputs:
        lines.append(f"  input %{v.name}: {type_str(v)}")
    for name in sorted(graph.constants):
        lines.append(f"  const %{name}: {type_str(graph.values[name])} = "
                     f"{_const_str(np.asarray(graph.constants[name]))}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o}: {type_str(graph.values[o])}" for o in n.outputs)
        args = ", ".join(f"%{i}" if i else "_" for i in n.inputs)
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={_attr_str(v)}" for k, v in n.attrs) + "}"
        lines.append(f"  {outs} = {n.op}({args}){attrs}")
    for v in graph.outputs:
        lines.append(f"  output %{v.name}: {type_str(v)}")
    lines.append("}")
    return "\n".join(lines) + "\n"
