"""Lowering of the catalogue's pure functions (activations, shape functions, reductions).

Axes in the checked model count per-example dimensions; IR axes count the full
(batched) value, so a non-negative axis shifts by one for the batch dimension.
Losses and metrics register into the same table from `losses.py` and `metrics.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dslc.ir.graph import Builder, IRError, Value

FnLowering = Callable[[Builder, Sequence[Value], Mapping[str, Any]], Value]

FUNCTION_LOWERINGS: dict[str, FnLowering] = {}


def register_fn(*names: str) -> Callable[[FnLowering], FnLowering]:
    """Decorator: register the lowering of catalogue function(s) `names`."""

    def deco(fn: FnLowering) -> FnLowering:
        for name in names:
            if name in FUNCTION_LOWERINGS:
                raise IRError(f"function {name!r} lowered twice")
            FUNCTION_LOWERINGS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------- helpers shared by losses etc.


def batch_axis(axis: int, rank: int) -> int:
    """A per-example axis (negative counts from the end) as an axis of the batched value."""
    if axis < 0:
        axis += rank
        if axis < 1:
            raise IRError(f"axis {axis - rank} out of range for rank {rank}")
        return axis
    if axis + 1 >= rank:
        raise IRError(f"axis {axis} out of range for a per-example rank {rank - 1}")
    return axis + 1


def batch_axes(axis: Any, rank: int) -> tuple[int, ...]:
    """Per-example axis, tuple of axes or None (every per-example axis) as batched axes."""
    if axis is None:
        return tuple(range(1, rank))
    if isinstance(axis, (tuple, list)):
        return tuple(sorted(batch_axis(a, rank) for a in axis))
    return (batch_axis(int(axis), rank),)


def const(b: Builder, value: float, like: Value | None = None) -> Value:
    """A scalar constant in `like`'s dtype (the builder's float dtype by default)."""
    dtype = like.dtype if like is not None else b.float_dtype
    return b.const(value, dtype=dtype)


def to_float(b: Builder, x: Value) -> Value:
    """Cast a non-float value to the builder's float dtype."""
    return x if x.dtype == b.float_dtype else b.op("cast", x, to=b.float_dtype)


def mean_all(b: Builder, x: Value) -> Value:
    """The mean of every element: a scalar."""
    if x.rank == 0:
        return x
    return b.op("reduce_mean", x, axes=tuple(range(x.rank)), keepdims=0)


def sum_all(b: Builder, x: Value) -> Value:
    """The sum of every element: a scalar."""
    if x.rank == 0:
        return x
    return b.op("reduce_sum", x, axes=tuple(range(x.rank)), keepdims=0)


def flatten(b: Builder, x: Value) -> Value:
    """[N, d1, d2, ...] -> [N, d1·d2·...]."""
    rest = x.shape[1:]
    if all(isinstance(d, int) for d in rest):
        size = math.prod(rest)  # type: ignore[arg-type]
        if x.rank == 2:
            return x
        lead = x.shape[0] if isinstance(x.shape[0], int) else 0
        return b.op("reshape", x, shape=(lead, size))
    return b.op("reshape", x, shape=(0, -1))


# ---------------------------------------------------------------- activations


def _unary(op: str) -> FnLowering:
    def lower(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
        return b.op(op, args[0])

    return lower


for _name in ("relu", "sigmoid", "tanh", "exp", "log", "sqrt", "abs"):
    register_fn(_name)(_unary(_name))


@register_fn("leaky_relu")
def lower_leaky_relu(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """max(x, alpha·x); alpha defaults to torch's 0.01."""
    return b.op("leaky_relu", args[0], alpha=float(kw.get("alpha", 0.01)))


@register_fn("elu")
def lower_elu(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    return b.op("elu", args[0], alpha=float(kw.get("alpha", 1.0)))


@register_fn("gelu")
def lower_gelu(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """The exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)), torch's default."""
    x = args[0]
    e = b.op("erf", b.op("mul", x, const(b, 1.0 / math.sqrt(2.0), x)))
    half_x = b.op("mul", x, const(b, 0.5, x))
    return b.op("mul", half_x, b.op("add", e, const(b, 1.0, x)))


@register_fn("silu")
def lower_silu(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """x·sigmoid(x)."""
    return b.op("mul", args[0], b.op("sigmoid", args[0]))


def _softmax(op: str) -> FnLowering:
    def lower(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
        x = args[0]
        return b.op(op, x, axis=batch_axis(int(kw.get("axis", -1)), x.rank))

    return lower


register_fn("softmax")(_softmax("softmax"))
register_fn("log_softmax")(_softmax("log_softmax"))


# ---------------------------------------------------------------- shape functions


@register_fn("flatten")
def lower_flatten(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    return flatten(b, args[0])


@register_fn("reshape")
def lower_reshape(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Reshape each example to `shape` (one entry may be -1).

    Symbolic sizes still unbound (inference graphs) are copied when they stand
    at the same position of the input, else inferred as the one -1.
    """
    x = args[0]
    shape: list[int] = []
    for i, d in enumerate(kw["shape"]):
        if isinstance(d, int):
            shape.append(d)
        elif i + 1 < x.rank and x.shape[i + 1] == d:
            shape.append(0)
        else:
            shape.append(-1)
    if shape.count(-1) > 1:
        raise IRError(f"reshape to {tuple(kw['shape'])}: more than one size to infer")
    lead = x.shape[0] if isinstance(x.shape[0], int) else 0
    return b.op("reshape", x, shape=(lead, *shape))


@register_fn("transpose")
def lower_transpose(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Permute the per-example axes; without `perm`, reverse them."""
    x = args[0]
    perm = kw.get("perm")
    if perm is None:
        perm = tuple(reversed(range(x.rank - 1)))
    return b.op("transpose", x, perm=(0, *(int(p) + 1 for p in perm)))


@register_fn("concat")
def lower_concat(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    xs = list(args)
    return b.op("concat", *xs, axis=batch_axis(int(kw.get("axis", -1)), xs[0].rank))


def _reduction(op: str) -> FnLowering:
    def lower(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
        x = args[0]
        axes = batch_axes(kw.get("axis"), x.rank)
        if not axes:
            return x
        return b.op(op, x, axes=axes, keepdims=int(bool(kw.get("keepdims", False))))

    return lower


register_fn("mean")(_reduction("reduce_mean"))
register_fn("sum")(_reduction("reduce_sum"))
register_fn("max")(_reduction("reduce_max"))
