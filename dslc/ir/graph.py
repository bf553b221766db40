"""The IR: a typed SSA graph of primitive ops, and the builder that lowering and autodiff use.

Values are named; names are deterministic and descriptive (`dense_1.matmul`,
`grad.dense_1.weight`). Shapes are tuples of ints and symbolic names ("N" for
the batch, "T" for a sequence length). Training-step graphs are built with
every dimension bound to an int; inference graphs keep "N" (and other
symbols) symbolic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int | str, ...]

FLOAT_DTYPES = ("float32", "float64")
DTYPES = ("float32", "float64", "int64", "int32", "bool")


@dataclass(frozen=True)
class Value:
    """A named SSA value with its dtype and shape."""

    name: str
    dtype: str
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Node:
    """One primitive op application; `attrs` is a sorted tuple of (key, value) pairs."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclass(frozen=True)
class Graph:
    """An immutable IR graph: ordered nodes, graph inputs/outputs, constants and value table."""

    name: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    values: dict[str, Value]
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def value(self, name: str) -> Value:
        return self.values[name]

    def producers(self) -> dict[str, Node]:
        """Map each value name to the node that produces it."""
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out


# ---------------------------------------------------------------- the op registry

ShapeRule = Callable[[Sequence[Value], dict[str, Any]], list[tuple[str, Shape]]]
"""(input values, attrs) -> [(dtype, shape)] for each output; raises IRError if ill-typed."""

VjpRule = Callable[
    ["Builder", Sequence[Value], Sequence[Value], Sequence["Value | None"], dict[str, Any]],
    Sequence["Value | None"],
]
"""(builder, inputs, outputs, output cotangents (None = zero), attrs) -> input cotangents."""

EmitRule = Callable[[Any, Node], None]
"""(emit context, node) -> appends ONNX nodes via the context (see emit_onnx)."""

NumpyRule = Callable[[Sequence[np.ndarray], dict[str, Any]], list[np.ndarray]]
"""(input arrays, attrs) -> output arrays: the reference semantics of the op."""


@dataclass(frozen=True)
class OpDef:
    """Everything about one primitive, registered together."""

    name: str
    shape: ShapeRule
    emit: EmitRule
    numpy: NumpyRule
    vjp: VjpRule | None = None  # None: not differentiable (comparisons, argmax, integer ops)
    num_outputs: int = 1


REGISTRY: dict[str, OpDef] = {}


class IRError(Exception):
    """An internal inconsistency in an IR graph: a dslc bug, never a user error."""


def register(opdef: OpDef) -> OpDef:
    """Add a primitive to the registry (each op family module calls this at import)."""
    if opdef.name in REGISTRY:
        raise IRError(f"op {opdef.name!r} registered twice")
    REGISTRY[opdef.name] = opdef
    return opdef


def opdef(name: str) -> OpDef:
    _ensure_ops_loaded()
    try:
        return REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def _ensure_ops_loaded() -> None:
    # The op families register themselves on import; importing the package loads them all.
    import dslc.ir.ops  # noqa: F401


# ---------------------------------------------------------------- the builder


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        raise IRError("array attributes are not allowed; use a constant value")
    return v


class Builder:
    """Appends typed nodes to a graph under construction; names are deterministic.

    `b.op("matmul", x, w)` checks shapes with the op's shape rule and returns the
    output Value (a tuple for multi-output ops). `name=` gives the output its
    exact name; otherwise it is `<scope>.<op>` with a numeric suffix when taken.
    """

    def __init__(self, name: str = "graph", float_dtype: str = "float32") -> None:
        self.name = name
        self.float_dtype = float_dtype
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self._scope: list[str] = []
        self._counts: dict[str, int] = {}

    @classmethod
    def from_graph(cls, graph: Graph, float_dtype: str = "float32") -> Builder:
        """A builder that continues an existing graph (autodiff appends to the forward graph)."""
        b = cls(graph.name, float_dtype)
        b.inputs = list(graph.inputs)
        b.outputs = list(graph.outputs)
        b.nodes = list(graph.nodes)
        b.values = dict(graph.values)
        b.constants = dict(graph.constants)
        for name in b.values:
            b._counts[name] = 1
        return b

    # -- naming
    @contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        """Names created inside start with `prefix.` (nested scopes join with dots)."""
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh(self, base: str) -> str:
        """A unique value name derived from `base` and the current scope."""
        full = ".".join([*self._scope, base]) if self._scope else base
        n = self._counts.get(full, 0)
        self._counts[full] = n + 1
        name = full if n == 0 else f"{full}_{n}"
        while name in self.values:
            n += 1
            self._counts[full] = n + 1
            name = f"{full}_{n}"
        return name

    # -- graph boundary
    def input(self, name: str, dtype: str, shape: Shape) -> Value:
        if name in self.values:
            raise IRError(f"value {name!r} already defined")
        v = Value(name, dtype, tuple(shape))
        self.values[name] = v
        self._counts[name] = 1
        self.inputs.append(v)
        return v

    def output(self, value: Value, name: str | None = None) -> Value:
        """Mark a value as a graph output, under `name` if given (adds an identity)."""
        if name is not None and name != value.name:
            value = self.op("identity", value, name=name)
        self.outputs.append(value)
        return value

    def const(self, array: Any, name: str | None = None, dtype: str | None = None) -> Value:
        """A constant tensor; Python scalars take the builder's float dtype unless `dtype` says."""
        if dtype is None:
            if isinstance(array, np.ndarray):
                dtype = str(array.dtype)
            elif isinstance(array, bool):
                dtype = "bool"
            else:  # ints and floats alike: a Python number is a float constant
                dtype = self.float_dtype
        arr = np.asarray(array, dtype=dtype)
        vname = name if name is not None else self.fresh("const")
        if vname in self.values:
            raise IRError(f"value {vname!r} already defined")
        self.constants[vname] = arr
        v = Value(vname, str(arr.dtype), tuple(arr.shape))
        self.values[vname] = v
        self._counts[vname] = 1
        return v

    # -- nodes
    def op(self, op: str, *inputs: Value | None, name: str | Sequence[str] | None = None,
           **attrs: Any) -> Any:
        """Append one node; returns its output Value, or a tuple of Values for multi-output ops."""
        d = opdef(op)
        ins = list(inputs)
        attr_items = tuple(sorted((k, _freeze(v)) for k, v in attrs.items()))
        out_types = d.shape([i for i in ins if i is not None], dict(attr_items))
        if isinstance(name, str) or name is None:
            names = [name] if len(out_types) == 1 else [
                f"{name}.{k}" if name else None for k in range(len(out_types))
            ]
        else:
            names = list(name)
        outs = []
        for (dtype, shape), nm in zip(out_types, names, strict=True):
            vname = nm if nm is not None else self.fresh(op)
            if vname in self.values:
                raise IRError(f"value {vname!r} already defined")
            v = Value(vname, dtype, tuple(shape))
            self.values[vname] = v
            self._counts[vname] = max(self._counts.get(vname, 0), 1)
            outs.append(v)
        self.nodes.append(
            Node(op, tuple(i.name if i is not None else "" for i in ins),
                 tuple(o.name for o in outs), attr_items)
        )
        return outs[0] if len(outs) == 1 else tuple(outs)

    def build(self) -> Graph:
        """Freeze into an immutable Graph."""
        return Graph(self.name, tuple(self.inputs), tuple(self.outputs), tuple(self.nodes),
                     dict(self.values), dict(self.constants))
