"""Emit an IR graph as a plain ONNX model: standard ops of the default domain only.

The opset and IR version are pinned here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dslc.ir.graph import Graph, IRError, Value, opdef

OPSET = 18
IR_VERSION = 10  # onnxruntime 1.19 reads up to 10, 1.31 up to 13
PRODUCER = "dslc"

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


def value_info(v: Value) -> onnx.ValueInfoProto:
    """An ONNX tensor type for `v`; symbolic dims become dim_params."""
    return helper.make_tensor_value_info(v.name, ONNX_DTYPES[v.dtype], list(v.shape))


class EmitContext:
    """What an op's emit rule sees: the value table and ways to add ONNX nodes and tensors.

    Everything created is named after the IR node's first output, so names are stable.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._taken: set[str] = set(graph.values)
        self._used = _used_names(graph)
        self._prefix = ""

    def is_used(self, name: str) -> bool:
        """Whether any node or graph output reads the IR value `name`."""
        return name in self._used

    def value(self, name: str) -> Value:
        """The IR value named `name`."""
        return self.graph.values[name]

    def onnx_dtype(self, dtype: str) -> int:
        """The TensorProto element type of an IR dtype."""
        return ONNX_DTYPES[dtype]

    def _name(self, hint: str) -> str:
        base = f"{self._prefix}.{hint}" if self._prefix else hint
        name, k = base, 1
        while name in self._taken:
            name = f"{base}_{k}"
            k += 1
        self._taken.add(name)
        return name

    def tmp(self, hint: str) -> str:
        """A fresh intermediate tensor name for the node being emitted."""
        return self._name(hint)

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding `array`, named after the node being emitted."""
        name = self._name(hint)
        self.initializers[name] = np.asarray(array)
        return name

    def add(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
            **attrs: Any) -> None:
        """Append one ONNX node of the default domain."""
        conv = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                for k, v in sorted(attrs.items())}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=self._node_name(outputs), **conv))

    def _node_name(self, outputs: Sequence[str]) -> str:
        name, k = f"node.{outputs[0]}", 1
        while name in self._taken:
            name = f"node.{outputs[0]}_{k}"
            k += 1
        self._taken.add(name)
        return name


def _used_names(graph: Graph) -> set[str]:
    used = {i for n in graph.nodes for i in n.inputs if i}
    return used | {o.name for o in graph.outputs}


def to_onnx(graph: Graph, initializers: Mapping[str, np.ndarray] | None = None,
            doc_string: str = "") -> onnx.ModelProto:
    """Emit `graph` as an ONNX model; `initializers` embeds the named graph inputs."""
    initializers = dict(initializers or {})
    input_names = {v.name for v in graph.inputs}
    unknown = set(initializers) - input_names
    if unknown:
        raise IRError(f"initializers for values that are not graph inputs: {sorted(unknown)}")
    ctx = EmitContext(graph)
    for node in graph.nodes:
        ctx._prefix = node.outputs[0]
        opdef(node.op).emit(ctx, node)
    used = _used_names(graph)
    tensors: list[onnx.TensorProto] = []
    for v in graph.inputs:
        # An embedded weight that no node reads (one only the loss used) is left out:
        # ONNX Runtime would warn about it on every load.
        if v.name in initializers and v.name in used:
            arr = np.asarray(initializers[v.name], dtype=v.dtype)
            if tuple(arr.shape) != tuple(v.shape):
                raise IRError(f"initializer {v.name!r} has shape {arr.shape}, expected {v.shape}")
            tensors.append(numpy_helper.from_array(arr, v.name))
    for name in sorted(graph.constants):
        if name in used:
            arr = np.asarray(graph.constants[name], dtype=graph.values[name].dtype)
            tensors.append(numpy_helper.from_array(arr, name))
    for name, arr in ctx.initializers.items():
        tensors.append(numpy_helper.from_array(arr, name))
    g = helper.make_graph(
        ctx.nodes, graph.name,
        [value_info(v) for v in graph.inputs if v.name not in initializers],
        [value_info(v) for v in graph.outputs],
        initializer=tensors,
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
        ir_version=IR_VERSION, doc_string=doc_string,
    )
    return model


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write `model` to `path` as one self-contained file."""
    Path(path).write_bytes(model.SerializeToString())
