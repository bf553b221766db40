"""Reductions along axes: sums, means, maxima, argmax and the softmax family."""

from __future__ import annotations

from typing import Any

import numpy as np

from dslc.ir.graph import Builder, OpDef, Value, register

from ._common import check, concrete, i64, is_float, norm_axes, norm_axis, prod, scalar


def _reduce_shape(ins, at):
    check(len(ins) == 1, "reduction takes one input")
    x = ins[0]
    axes = norm_axes(at.get("axes", ()), x.rank, "reduce")
    keep = bool(at.get("keepdims", 1))
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else tuple(
        d for i, d in enumerate(x.shape) if i not in axes)
    return [(x.dtype, shape)]


def _reduce_emit(onnx_op: str):
    def emit(ctx: Any, node) -> None:
        axes = tuple(node.attr("axes", ()))
        if not axes:
            # An empty axes input would reduce everything in ONNX; here it means no reduction.
            ctx.add("Identity", [node.inputs[0]], list(node.outputs))
            return
        ctx.add(onnx_op, [node.inputs[0], i64(ctx, axes, "axes")], list(node.outputs),
                keepdims=int(node.attr("keepdims", 1)))

    return emit


def _reduce_np(fn):
    def rule(xs, at):
        x = xs[0]
        axes = tuple(at.get("axes", ()))
        if not axes:
            return [x.copy()]
        return [np.asarray(fn(x, axis=axes, keepdims=bool(at.get("keepdims", 1)))).astype(x.dtype)]

    return rule


def _keep(b: Builder, g: Value, x: Value, at: dict) -> Value:
    """The cotangent `g` of a reduction, with the reduced axes restored as size 1."""
    axes = tuple(at.get("axes", ()))
    if axes and not at.get("keepdims", 1):
        g = b.op("unsqueeze", g, axes=axes)
    return g


def _spread(b: Builder, g: Value, x: Value, at: dict) -> Value:
    """Broadcast a keepdims-shaped cotangent back over the reduced axes of `x`."""
    axes = norm_axes(at.get("axes", ()), x.rank, "reduce")
    if not axes:
        return g
    target = tuple(d if i in axes else 1 for i, d in enumerate(x.shape))
    concrete(target, "the gradient of a reduction over its reduced axes")
    return b.op("expand", g, shape=target)


def _sum_vjp(b, ins, outs, gs, at):
    return [_spread(b, _keep(b, gs[0], ins[0], at), ins[0], at)]


def _mean_vjp(b, ins, outs, gs, at):
    x = ins[0]
    axes = norm_axes(at.get("axes", ()), x.rank, "reduce_mean")
    count = prod(concrete(tuple(x.shape[a] for a in axes), "reduce_mean gradient"))
    g = b.op("mul", gs[0], scalar(b, 1.0 / count, gs[0]))
    return [_spread(b, _keep(b, g, x, at), x, at)]


def _max_vjp(b, ins, outs, gs, at):
    # The cotangent goes to the maxima; ties share it evenly (as torch.amax does).
    x = ins[0]
    axes = tuple(at.get("axes", ()))
    if not axes:
        return [gs[0]]
    y = _keep(b, outs[0], x, at)
    hit = b.op("cast", b.op("equal", x, y), to=x.dtype)
    count = b.op("reduce_sum", hit, axes=axes, keepdims=1)
    share = b.op("div", _keep(b, gs[0], x, at), count)
    return [b.op("mul", hit, share)]


register(OpDef("reduce_sum", _reduce_shape, _reduce_emit("ReduceSum"), _reduce_np(np.sum),
               _sum_vjp))
register(OpDef("reduce_mean", _reduce_shape, _reduce_emit("ReduceMean"), _reduce_np(np.mean),
               _mean_vjp))
register(OpDef("reduce_max", _reduce_shape, _reduce_emit("ReduceMax"), _reduce_np(np.max),
               _max_vjp))

# ---------------------------------------------------------------- argmax


def _argmax_shape(ins, at):
    x = ins[0]
    axis = norm_axis(at.get("axis", 0), x.rank, "argmax")
    keep = bool(at.get("keepdims", 1))
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape)) if keep else tuple(
        d for i, d in enumerate(x.shape) if i != axis)
    return [("int64", shape)]


def _argmax_np(xs, at):
    x = xs[0]
    axis = norm_axis(at.get("axis", 0), x.ndim, "argmax")
    return [np.argmax(x, axis=axis, keepdims=bool(at.get("keepdims", 1))).astype(np.int64)]


register(OpDef(
    "argmax", _argmax_shape,
    lambda ctx, n: ctx.add("ArgMax", list(n.inputs), list(n.outputs),
                           axis=int(n.attr("axis", 0)), keepdims=int(n.attr("keepdims", 1))),
    _argmax_np, None))

# ---------------------------------------------------------------- softmax family


def _softmax_shape(ins, at):
    x = ins[0]
    check(is_float(x.dtype), "softmax needs a float input")
    norm_axis(at.get("axis", -1), x.rank, "softmax")
    return [(x.dtype, x.shape)]


def _log_softmax_np(xs, at):
    x = xs[0]
    axis = at.get("axis", -1)
    z = x - np.max(x, axis=axis, keepdims=True)
    return [(z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))).astype(x.dtype)]


def _softmax_np(xs, at):
    return [np.exp(_log_softmax_np(xs, at)[0])]


def _softmax_vjp(b, ins, outs, gs, at):
    y, g = outs[0], gs[0]
    axis = norm_axis(at.get("axis", -1), y.rank, "softmax")
    dot = b.op("reduce_sum", b.op("mul", g, y), axes=(axis,), keepdims=1)
    return [b.op("mul", y, b.op("sub", g, dot))]


def _log_softmax_vjp(b, ins, outs, gs, at):
    y, g = outs[0], gs[0]
    axis = norm_axis(at.get("axis", -1), y.rank, "log_softmax")
    total = b.op("reduce_sum", g, axes=(axis,), keepdims=1)
    return [b.op("sub", g, b.op("mul", b.op("exp", y), total))]


def _axis_emit(onnx_op: str):
    return lambda ctx, n: ctx.add(onnx_op, list(n.inputs), list(n.outputs),
                                  axis=int(n.attr("axis", -1)))


register(OpDef("softmax", _softmax_shape, _axis_emit("Softmax"), _softmax_np, _softmax_vjp))
register(OpDef("log_softmax", _softmax_shape, _axis_emit("LogSoftmax"), _log_softmax_np,
               _log_softmax_vjp))
