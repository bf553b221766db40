"""Shared by the op families: shape arithmetic, gradient plumbing, emission shortcuts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dslc.ir.graph import FLOAT_DTYPES, Builder, IRError, Node, Shape, Value

Dim = int | str


def check(cond: bool, msg: str) -> None:
    """Raise IRError with `msg` unless `cond` holds."""
    if not cond:
        raise IRError(msg)


def is_float(dtype: str) -> bool:
    """Whether `dtype` is a floating-point dtype (the differentiable ones)."""
    return dtype in FLOAT_DTYPES


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    """NumPy broadcasting of one dimension; symbolic dims match only themselves or 1."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    raise IRError(f"cannot broadcast dimensions {a!r} and {b!r}")


def broadcast(*shapes: Shape) -> Shape:
    """The NumPy broadcast of several shapes (symbolic dims allowed)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dims(x, y) for x, y in zip(out, padded, strict=True)]
    return tuple(out)


def same_dtype(values: Sequence[Value], op: str) -> str:
    """The common dtype of `values`; raises IRError when they differ."""
    dtypes = {v.dtype for v in values}
    check(len(dtypes) == 1, f"{op}: mixed dtypes {sorted(dtypes)}")
    return values[0].dtype


def norm_axis(axis: int, rank: int, op: str) -> int:
    """A non-negative axis, checked against `rank`."""
    a = axis + rank if axis < 0 else axis
    check(0 <= a < rank, f"{op}: axis {axis} out of range for rank {rank}")
    return a


def norm_axes(axes: Sequence[int], rank: int, op: str) -> tuple[int, ...]:
    """Sorted non-negative axes; raises IRError on duplicates or out-of-range axes."""
    out = tuple(sorted(norm_axis(a, rank, op) for a in axes))
    check(len(set(out)) == len(out), f"{op}: repeated axes {axes}")
    return out


def prod(dims: Sequence[int]) -> int:
    """Product of concrete dims."""
    out = 1
    for d in dims:
        out *= int(d)
    return out


def concrete(shape: Shape, what: str) -> tuple[int, ...]:
    """`shape` as ints; raises IRError naming `what` when a dim is symbolic."""
    check(all(isinstance(d, int) for d in shape),
          f"{what} needs concrete dimensions, got {shape}")
    return tuple(int(d) for d in shape)


def reshape_spec(target: Shape, source: Shape) -> tuple[int, ...]:
    """The reshape `shape` attribute that turns `source` into `target`.

    Symbolic dims are copied (0) where `source` has the same symbol at the same
    index, and inferred (-1) when exactly one is left over.
    """
    spec: list[int] = []
    for i, d in enumerate(target):
        if isinstance(d, int):
            check(d != 0, "reshape to a zero-sized dimension is not supported")
            spec.append(d)
        elif i < len(source) and source[i] == d:
            spec.append(0)
        else:
            spec.append(-1)
    check(spec.count(-1) <= 1, f"cannot express reshape {source} -> {target}")
    return tuple(spec)


# ---------------------------------------------------------------- gradient plumbing


def scalar(b: Builder, value: float, like: Value) -> Value:
    """A scalar constant of `like`'s dtype."""
    return b.const(np.asarray(value, dtype=like.dtype))


def unbroadcast(b: Builder, g: Value, shape: Shape) -> Value:
    """Sum a cotangent of a broadcast result back to an operand of `shape`."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = len(g.shape) - len(shape)
    ones = [lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1]
    # An empty axes list would reduce everything in ONNX, so reductions are only emitted
    # for axes that really were broadcast.
    if not ones:
        return b.op("reduce_sum", g, axes=tuple(range(lead)), keepdims=0) if lead else g
    g = b.op("reduce_sum", g, axes=(*range(lead), *ones), keepdims=1)
    if lead:
        g = b.op("squeeze", g, axes=tuple(range(lead)))
    return g


def float_like(b: Builder, mask: Value, like: Value) -> Value:
    """A boolean mask cast to `like`'s float dtype (Mul by a cast beats Where in ORT)."""
    return b.op("cast", mask, to=like.dtype)


# ---------------------------------------------------------------- emission shortcuts


def simple(onnx_op: str, **fixed: Any):
    """An emit rule mapping the node one-to-one onto `onnx_op`."""

    def emit(ctx: Any, node: Node) -> None:
        ctx.add(onnx_op, list(node.inputs), list(node.outputs), **fixed)

    return emit


def i64(ctx: Any, values: Sequence[int], hint: str) -> str:
    """An int64 1-D initializer (axes, shapes, pads) for the node being emitted."""
    return ctx.const(np.asarray(list(values), dtype=np.int64), hint)
