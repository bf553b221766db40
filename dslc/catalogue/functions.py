"""Pure functions (lower-case callees): signatures, shape and dtype rules, FLOPs.

A function takes `tensors` tensor arguments first (`variadic` for concat), then
options. Axes count per-example dimensions and are normalised to non-negative
ints; `mean/sum/max` normalise `axis` to a sorted tuple (every axis when omitted).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.catalogue.layers import flatten_type, numel, show_shape
from dslc.catalogue.signature import (
    Arg,
    Signature,
    Word,
    anything,
    boolean,
    kind_of,
    number,
    sig,
)
from dslc.check.model import TensorType
from dslc.errors import DslcError, Span

Infer = Callable[[list[TensorType], dict[str, Any], Span], tuple[dict[str, Any], TensorType]]


@dataclass(frozen=True)
class FnDef:
    """A catalogue function, loss or metric."""

    name: str
    tensors: int  # tensor arguments before the options
    signature: Signature
    infer: Infer
    flops: Callable[[list[TensorType], TensorType], int]
    family: str = "function"  # "function", "loss" or "metric"
    variadic: bool = False  # every positional argument is a tensor (concat)
    doc: str = ""


def need_float(name: str, t: TensorType, span: Span) -> None:
    """An error unless t is float."""
    if t.dtype != "float32":
        raise DslcError(f"`{name}` expects a float value, got {t}", span)


def norm_axis(name: str, axis: int, rank: int, span: Span) -> int:
    """A per-example axis made non-negative, or an error naming the valid range."""
    if not -rank <= axis < rank:
        raise DslcError(
            f"`{name}`: axis {axis} is out of range for a value with {rank} per-example "
            f"dimension{'s' if rank != 1 else ''}"
            + (f" (valid: {-rank} .. {rank - 1})" if rank else ""),
            span,
            "axes count per-example dimensions; the batch dimension is never addressed",
        )
    return axis % rank


def _axis_value(v: Any, span: Span) -> Any:
    if isinstance(v, Word) and v.name in ("none", "all"):
        return None
    if isinstance(v, bool):
        raise DslcError(f"expected an axis (an integer), got {kind_of(v)}", span)
    if isinstance(v, int):
        return v
    if isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return v
    raise DslcError(f"expected an axis (an integer or a tuple of integers), got {kind_of(v)}", span)


def _one_axis(v: Any, span: Span) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DslcError(f"expected an axis (an integer), got {kind_of(v)}", span)
    return v


def _elementwise(name: str, *options: Arg, cost: int = 1, doc: str = "") -> FnDef:
    def infer(ts, opts, span):
        need_float(name, ts[0], span)
        return opts, ts[0]

    return FnDef(name, 1, sig(*options), infer, lambda ts, out: cost * numel(out.shape), doc=doc)


def _softmax(name: str) -> FnDef:
    def infer(ts, opts, span):
        need_float(name, ts[0], span)
        if not ts[0].shape:
            raise DslcError(f"`{name}` needs at least one per-example dimension, got {ts[0]}", span)
        return dict(opts, axis=norm_axis(name, opts["axis"], len(ts[0].shape), span)), ts[0]

    return FnDef(
        name,
        1,
        sig(Arg("axis", _one_axis, -1, "int")),
        infer,
        lambda ts, out: 5 * numel(out.shape),
        doc="along `axis` (default: the last)",
    )


def _reduce(name: str) -> FnDef:
    def infer(ts, opts, span):
        t = ts[0]
        if name != "max":
            need_float(name, t, span)
        rank = len(t.shape)
        axis = opts["axis"]
        if axis is None:
            axes = tuple(range(rank))
        else:
            items = axis if isinstance(axis, tuple) else (axis,)
            axes = tuple(sorted({norm_axis(name, a, rank, span) for a in items}))
            if len(axes) != len(items):
                raise DslcError(f"`{name}`: an axis is repeated in {axis}", span)
        if opts["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
        else:
            shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
        return dict(opts, axis=axes), TensorType(t.dtype, shape, t.batched)

    return FnDef(
        name,
        1,
        sig(
            Arg("axis", _axis_value, None, "int|tuple (default: every axis)"),
            Arg("keepdims", boolean, False, "bool", kw_only=True),
        ),
        infer,
        lambda ts, out: numel(ts[0].shape),
        doc="over per-example axes; every axis when `axis` is omitted",
    )


def _flatten_infer(ts, opts, span):
    return opts, flatten_type("flatten", ts[0], span)


def _shape_value(v: Any, span: Span) -> tuple:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,)
    if isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, tuple):
        raise DslcError(f"expected a shape tuple such as (1, 8, 8), got {kind_of(v)}", span)
    out = []
    for d in v:
        if isinstance(d, Word):
            out.append(d.name)
        elif isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1):
            out.append(d)
        else:
            raise DslcError(
                f"a shape entry must be a positive integer, -1 or a symbolic size, "
                f"got {kind_of(d)}",
                span,
            )
    if out.count(-1) > 1:
        raise DslcError("a shape may contain -1 at most once", span)
    return tuple(out)


def _reshape_infer(ts, opts, span):
    t, target = ts[0], opts["shape"]
    fixed_in = math.prod(d for d in t.shape if isinstance(d, int))
    sym_in = Counter(d for d in t.shape if isinstance(d, str))
    fixed_out = math.prod(d for d in target if isinstance(d, int) and d != -1)
    sym_out = Counter(d for d in target if isinstance(d, str))
    bad = DslcError(
        f"`reshape` cannot turn {show_shape(t.shape)} into {show_shape(target)}: "
        "the element counts differ",
        span,
    )
    if sym_out - sym_in:
        raise bad
    if -1 in target:
        if sym_in - sym_out or fixed_in % fixed_out:
            raise bad
        target = tuple(fixed_in // fixed_out if d == -1 else d for d in target)
    elif sym_in != sym_out or fixed_in != fixed_out:
        raise bad
    # Graphs with free symbolic sizes (evaluation, inference) copy a symbolic size that keeps
    # its position and infer the one that moves (ONNX Reshape's 0 and -1), so one may move.
    moved = [d for i, d in enumerate(target) if isinstance(d, str) and d not in t.shape[i : i + 1]]
    if len(moved) > 1:
        raise DslcError(
            f"`reshape` from {show_shape(t.shape)} to {show_shape(target)} moves the symbolic "
            f"sizes {', '.join(f'`{d}`' for d in moved)}; at most one may change position",
            span,
            "reorder axes with transpose(perm = ...) instead",
        )
    return dict(opts, shape=target), TensorType(t.dtype, target)


def _perm_value(v: Any, span: Span) -> Any:
    if isinstance(v, Word) and v.name == "none":
        return None
    if isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return v
    raise DslcError(f"expected a permutation tuple such as (1, 0), got {kind_of(v)}", span)


def _transpose_infer(ts, opts, span):
    t = ts[0]
    rank = len(t.shape)
    perm = opts["perm"]
    if perm is None:
        perm = tuple(reversed(range(rank)))
    perm = tuple(norm_axis("transpose", p, rank, span) for p in perm) if rank else tuple(perm)
    if sorted(perm) != list(range(rank)):
        raise DslcError(
            f"`transpose`: perm {opts['perm']} is not a permutation of the "
            f"{rank} per-example axes of {t}",
            span,
        )
    return dict(opts, perm=perm), TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _concat_infer(ts, opts, span):
    first = ts[0]
    rank = len(first.shape)
    if rank == 0:
        raise DslcError(f"`concat` needs at least one per-example dimension, got {first}", span)
    axis = norm_axis("concat", opts["axis"], rank, span)
    total: int = 0
    for t in ts:
        if t.dtype != first.dtype:
            raise DslcError(f"`concat` needs values of one dtype, got {first} and {t}", span)
        if len(t.shape) != rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=False)) if i != axis
        ):
            raise DslcError(
                f"`concat` along axis {axis}: shapes {show_shape(first.shape)} and "
                f"{show_shape(t.shape)} differ on another axis",
                span,
            )
        d = t.shape[axis]
        if not isinstance(d, int):
            raise DslcError(f"`concat` along the symbolic axis `{d}` is not supported", span)
        total += d
    shape = first.shape[:axis] + (total,) + first.shape[axis + 1 :]
    return dict(opts, axis=axis), TensorType(first.dtype, shape, any(t.batched for t in ts))


def _shape_fn(
    name: str, tensors: int, signature: Signature, infer: Infer, doc: str, variadic: bool = False
) -> FnDef:
    return FnDef(name, tensors, signature, infer, lambda ts, out: 0, variadic=variadic, doc=doc)


FUNCTIONS: dict[str, FnDef] = {
    f.name: f
    for f in (
        _elementwise("relu"),
        _elementwise("leaky_relu", Arg("alpha", number(0), 0.01, "float >= 0"), cost=2),
        _elementwise("elu", Arg("alpha", number(0), 1.0, "float >= 0"), cost=4),
        _elementwise("gelu", cost=8, doc="exact (erf) form, as torch's default"),
        _elementwise("silu", cost=5),
        _elementwise("sigmoid", cost=4),
        _elementwise("tanh", cost=5),
        _softmax("softmax"),
        _softmax("log_softmax"),
        _elementwise("exp", cost=4),
        _elementwise("log", cost=4),
        _elementwise("sqrt", cost=4),
        _elementwise("abs"),
        _shape_fn("flatten", 1, sig(), _flatten_infer, "every per-example axis into one"),
        _shape_fn(
            "reshape",
            1,
            sig(Arg("shape", _shape_value, type="tuple")),
            _reshape_infer,
            "to a per-example shape; one entry may be -1",
        ),
        _shape_fn(
            "transpose",
            1,
            sig(Arg("perm", _perm_value, None, "tuple (default: reversed)")),
            _transpose_infer,
            "permutes per-example axes",
        ),
        _shape_fn(
            "concat",
            0,
            sig(Arg("axis", _one_axis, -1, "int")),
            _concat_infer,
            "joins values along `axis`",
            variadic=True,
        ),
        _reduce("mean"),
        _reduce("sum"),
        _reduce("max"),
    )
}

__all__ = ["FUNCTIONS", "FnDef", "anything", "need_float", "norm_axis"]
