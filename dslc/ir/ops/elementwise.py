"""Elementwise primitives: arithmetic, activations, comparisons, casts, integer lanes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dslc.ir.graph import DTYPES, Builder, OpDef, Value, register

from ._common import broadcast, check, float_like, is_float, same_dtype, scalar, simple, unbroadcast

# ---------------------------------------------------------------- shape rules


def _unary_shape(float_only: bool) -> Callable:
    def rule(ins: Sequence[Value], attrs: dict[str, Any]) -> list:
        check(len(ins) == 1, f"unary op takes 1 input, got {len(ins)}")
        if float_only:
            check(is_float(ins[0].dtype), f"float op applied to {ins[0].dtype}")
        return [(ins[0].dtype, ins[0].shape)]

    return rule


def _binary_shape(out_dtype: str | None = None, int_only: bool = False) -> Callable:
    def rule(ins: Sequence[Value], attrs: dict[str, Any]) -> list:
        check(len(ins) == 2, f"binary op takes 2 inputs, got {len(ins)}")
        dtype = same_dtype(ins, "binary op")
        if int_only:
            check(dtype == "int64", f"integer op applied to {dtype}")
        return [(out_dtype or dtype, broadcast(ins[0].shape, ins[1].shape))]

    return rule


# ---------------------------------------------------------------- numpy references


def _np_unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def rule(xs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        return [np.asarray(fn(xs[0])).astype(xs[0].dtype, copy=False)]

    return rule


def _np_binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    def rule(xs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        return [np.asarray(fn(xs[0], xs[1]))]

    return rule


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------- registration shortcuts


def _unary(name: str, onnx_op: str, fn: Callable, vjp: Callable | None,
           float_only: bool = True, **fixed: Any) -> None:
    register(OpDef(name, _unary_shape(float_only), simple(onnx_op, **fixed), _np_unary(fn), vjp))


def _binary(name: str, onnx_op: str, fn: Callable, vjp: Callable | None, **kw: Any) -> None:
    register(OpDef(name, _binary_shape(**kw), simple(onnx_op), _np_binary(fn), vjp))


def _both(b: Builder, ins: Sequence[Value], ga: Value | None, gb: Value | None) -> list:
    """Cotangents of a broadcasting binary op, summed back to each operand's shape."""
    return [None if ga is None else unbroadcast(b, ga, ins[0].shape),
            None if gb is None else unbroadcast(b, gb, ins[1].shape)]


# ---------------------------------------------------------------- identity, arithmetic

register(OpDef("identity", _unary_shape(False), simple("Identity"), _np_unary(np.copy),
               lambda b, ins, outs, gs, at: [gs[0]]))

_binary("add", "Add", np.add, lambda b, ins, outs, gs, at: _both(b, ins, gs[0], gs[0]))
_binary("sub", "Sub", np.subtract,
        lambda b, ins, outs, gs, at: _both(b, ins, gs[0], b.op("neg", gs[0])))
_binary("mul", "Mul", np.multiply, lambda b, ins, outs, gs, at: _both(
    b, ins, b.op("mul", gs[0], ins[1]), b.op("mul", gs[0], ins[0])))


def _div_vjp(b, ins, outs, gs, at):
    ga = b.op("div", gs[0], ins[1])
    gb = b.op("neg", b.op("mul", ga, outs[0]))
    return _both(b, ins, ga, gb)


def _np_div(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return _trunc_div(a, c)
    return np.divide(a, c)


_binary("div", "Div", _np_div, _div_vjp)


def _minmax_vjp(first_wins: str) -> Callable:
    # Ties split the cotangent evenly between both operands, as torch.maximum does.
    def vjp(b, ins, outs, gs, at):
        g = gs[0]
        wins = float_like(b, b.op(first_wins, ins[0], ins[1]), g)
        tie = float_like(b, b.op("equal", ins[0], ins[1]), g)
        share = b.op("add", wins, b.op("mul", tie, scalar(b, 0.5, g)))
        ga = b.op("mul", g, share)
        return _both(b, ins, ga, b.op("sub", g, ga))

    return vjp


_binary("max2", "Max", np.maximum, _minmax_vjp("greater"))
_binary("min2", "Min", np.minimum, _minmax_vjp("less"))


def _pow_vjp(b, ins, outs, gs, at):
    a, e = ins
    g = gs[0]
    ga = b.op("mul", g, b.op("mul", e, b.op("pow", a, b.op("sub", e, scalar(b, 1.0, e)))))
    gb = b.op("mul", g, b.op("mul", outs[0], b.op("log", a)))
    return _both(b, ins, ga, gb)


_binary("pow", "Pow", np.power, _pow_vjp)

# ---------------------------------------------------------------- unary math


def _g(fn: Callable) -> Callable:
    """A VJP for a unary op from fn(b, x, y, g) -> cotangent of x."""
    return lambda b, ins, outs, gs, at: [fn(b, ins[0], outs[0], gs[0])]


_unary("neg", "Neg", np.negative, _g(lambda b, x, y, g: b.op("neg", g)), float_only=False)
_unary("exp", "Exp", np.exp, _g(lambda b, x, y, g: b.op("mul", g, y)))
_unary("log", "Log", np.log, _g(lambda b, x, y, g: b.op("div", g, x)))
_unary("sqrt", "Sqrt", np.sqrt,
       _g(lambda b, x, y, g: b.op("div", g, b.op("mul", y, scalar(b, 2.0, y)))))
_unary("abs", "Abs", np.abs, _g(lambda b, x, y, g: b.op("mul", g, b.op("sign", x))),
       float_only=False)
_unary("tanh", "Tanh", np.tanh, _g(lambda b, x, y, g: b.op(
    "mul", g, b.op("sub", scalar(b, 1.0, y), b.op("mul", y, y)))))
_unary("sigmoid", "Sigmoid", _sigmoid, _g(lambda b, x, y, g: b.op(
    "mul", g, b.op("mul", y, b.op("sub", scalar(b, 1.0, y), y)))))
# Greater + Cast + Mul: ORT's Sign kernel is 2x slower than Greater + Cast.
_unary("relu", "Relu", lambda x: np.maximum(x, 0), _g(lambda b, x, y, g: b.op(
    "mul", g, float_like(b, b.op("greater", x, scalar(b, 0.0, x)), g))))
_unary("erf", "Erf", _erf, _g(lambda b, x, y, g: b.op("mul", g, b.op(
    "mul", scalar(b, 2.0 / math.sqrt(math.pi), x), b.op("exp", b.op("neg", b.op("mul", x, x)))))))
# sign is piecewise constant: its derivative is zero almost everywhere.
_unary("sign", "Sign", np.sign, lambda b, ins, outs, gs, at: [None], float_only=False)
_unary("reciprocal", "Reciprocal", lambda x: 1 / x, _g(lambda b, x, y, g: b.op(
    "neg", b.op("mul", g, b.op("mul", y, y)))))


def _emit_square(ctx: Any, node) -> None:
    ctx.add("Mul", [node.inputs[0], node.inputs[0]], list(node.outputs))


register(OpDef("square", _unary_shape(False), _emit_square, _np_unary(np.square), _g(
    lambda b, x, y, g: b.op("mul", g, b.op("mul", x, scalar(b, 2.0, x))))))


def _leaky_np(xs, at):
    x = xs[0]
    return [np.where(x > 0, x, x * np.asarray(at["alpha"], x.dtype)).astype(x.dtype)]


def _leaky_vjp(b, ins, outs, gs, at):
    x, g = ins[0], gs[0]
    pos = float_like(b, b.op("greater", x, scalar(b, 0.0, x)), g)
    slope = b.op("add", scalar(b, at["alpha"], g),
                 b.op("mul", pos, scalar(b, 1.0 - at["alpha"], g)))
    return [b.op("mul", g, slope)]


def _elu_np(xs, at):
    x = xs[0]
    alpha = np.asarray(at["alpha"], x.dtype)
    return [np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)]


def _elu_vjp(b, ins, outs, gs, at):
    # d elu / dx = 1 for x > 0, else y + alpha.
    x, y, g = ins[0], outs[0], gs[0]
    pos = float_like(b, b.op("greater", x, scalar(b, 0.0, x)), g)
    neg_slope = b.op("add", y, scalar(b, at["alpha"], y))
    slope = b.op("add", pos, b.op("mul", b.op("sub", scalar(b, 1.0, g), pos), neg_slope))
    return [b.op("mul", g, slope)]


def _alpha_emit(onnx_op: str):
    def emit(ctx, node):
        ctx.add(onnx_op, list(node.inputs), list(node.outputs), alpha=float(node.attr("alpha")))

    return emit


register(OpDef("leaky_relu", _unary_shape(True), _alpha_emit("LeakyRelu"), _leaky_np, _leaky_vjp))
register(OpDef("elu", _unary_shape(True), _alpha_emit("Elu"), _elu_np, _elu_vjp))

# ---------------------------------------------------------------- comparisons, cast, where

_binary("greater", "Greater", np.greater, None, out_dtype="bool")
_binary("less", "Less", np.less, None, out_dtype="bool")
_binary("equal", "Equal", np.equal, None, out_dtype="bool")

_ONNX_DTYPE = {"float32": 1, "int32": 6, "int64": 7, "bool": 9, "float64": 11}


def _cast_shape(ins, at):
    check(at.get("to") in DTYPES, f"cast: unknown dtype {at.get('to')!r}")
    return [(at["to"], ins[0].shape)]


def _cast_vjp(b, ins, outs, gs, at):
    # Only float-to-float casts carry a gradient; casts from masks and indices do not.
    if is_float(ins[0].dtype) and is_float(outs[0].dtype):
        return [b.op("cast", gs[0], to=ins[0].dtype)]
    return [None]


register(OpDef(
    "cast", _cast_shape,
    lambda ctx, n: ctx.add("Cast", list(n.inputs), list(n.outputs), to=_ONNX_DTYPE[n.attr("to")]),
    lambda xs, at: [xs[0].astype(at["to"])], _cast_vjp))


def _where_shape(ins, at):
    check(len(ins) == 3 and ins[0].dtype == "bool", "where: takes (bool cond, a, b)")
    dtype = same_dtype(ins[1:], "where")
    return [(dtype, broadcast(ins[0].shape, ins[1].shape, ins[2].shape))]


def _where_vjp(b, ins, outs, gs, at):
    g = gs[0]
    take = float_like(b, ins[0], g)
    ga = b.op("mul", g, take)
    gb = b.op("sub", g, ga)
    return [None, unbroadcast(b, ga, ins[1].shape), unbroadcast(b, gb, ins[2].shape)]


register(OpDef("where", _where_shape, simple("Where"),
               lambda xs, at: [np.where(xs[0], xs[1], xs[2])], _where_vjp))

# ---------------------------------------------------------------- integer lanes


def _trunc_div(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero, as ONNX Div does on integers."""
    q = np.abs(a) // np.abs(c)
    return np.where((a < 0) != (c < 0), -q, q).astype(np.result_type(a, c))


_binary("bitwise_and", "BitwiseAnd", np.bitwise_and, None, int_only=True)
# int_div rounds toward zero (ONNX Div semantics); mod takes the divisor's sign (Python %).
_binary("int_div", "Div", _trunc_div, None, int_only=True)
register(OpDef("mod", _binary_shape(int_only=True), simple("Mod", fmod=0),
               _np_binary(np.mod), None))
