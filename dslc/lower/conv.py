"""Convolutions and pooling: Conv1D/Conv2D, MaxPool, AvgPool and GlobalAvgPool.

Layouts are PyTorch's: values (N, C, *spatial), weights [filters, in/groups, *kernel].
Padding may be asymmetric (`same` with an even kernel pads total//2 before and
the rest after, as PyTorch). MaxPool pads with -inf; AvgPool counts padding
(PyTorch's default `count_include_pad=True`): the input is zero-padded first,
then averaged over whole windows.
"""

from __future__ import annotations

import math

import numpy as np

from dslc.ir.graph import Builder, Value
from dslc.lower.layers import LayerCall, LayerResult, register_layer


def onnx_pads(pairs: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """Per-dimension (begin, end) pairs as ONNX pads: every begin, then every end."""
    return (*(p[0] for p in pairs), *(p[1] for p in pairs))


def _conv(call: LayerCall) -> LayerResult:
    b, x, a = call.b, call.x, call.layer.args
    w = call.param("weight")
    bias = call.param("bias") if a.get("bias", True) and call.has_param("bias") else None
    if IM2COL and int(a["groups"]) == 1 and all(isinstance(d, int) for d in x.shape):
        return LayerResult(conv_im2col(b, x, w, bias, tuple(a["stride"]), a["padding"],
                                       tuple(a["dilation"])))
    y = b.op("conv", x, w, bias, strides=tuple(a["stride"]), pads=onnx_pads(a["padding"]),
             dilations=tuple(a["dilation"]), group=int(a["groups"]))
    return LayerResult(y)


IM2COL = True
TILED_POOL = False


def conv_im2col(b: Builder, x: Value, w: Value, bias: Value | None, stride: tuple[int, ...],
                pads: tuple[tuple[int, int], ...], dilation: tuple[int, ...]) -> Value:
    """An ungrouped convolution as channels-last patches times the weight matrix (one GEMM).

    x (N, C, *S) is transposed to (N, *S, C) and padded; each kernel offset is a strided
    slice (N, *O, C); their concatenation on the last axis, flattened to (N·|O|, K·C),
    times the weight laid out [F, *k, C] -> [F, K·C] gives (N·|O|, F), back to (N, F, *O).
    """
    sp = x.rank - 2
    n, c = int(x.shape[0]), int(x.shape[1])
    f, kernel = int(w.shape[0]), tuple(int(k) for k in w.shape[2:])
    spatial = tuple(int(d) for d in x.shape[2:])
    out = tuple((spatial[i] + pads[i][0] + pads[i][1] - dilation[i] * (kernel[i] - 1) - 1)
                // stride[i] + 1 for i in range(sp))
    last = (0, *range(2, 2 + sp), 1)
    xt = b.op("transpose", x, perm=last)
    if any(p for pair in pads for p in pair):
        xt = b.op("pad", xt, pads=(0, *(p[0] for p in pads), 0, 0, *(p[1] for p in pads), 0))
    padded = tuple(spatial[i] + pads[i][0] + pads[i][1] for i in range(sp))
    patches = []
    for kpos in np.ndindex(*kernel):
        starts = tuple(kpos[i] * dilation[i] for i in range(sp))
        ends = tuple(starts[i] + stride[i] * (out[i] - 1) + 1 for i in range(sp))
        if starts == (0,) * sp and ends == padded and stride == (1,) * sp:
            patches.append(xt)
        else:
            patches.append(b.op("slice", xt, starts=starts, ends=ends,
                                axes=tuple(range(1, 1 + sp)), steps=stride))
    cols = patches[0] if len(patches) == 1 else b.op("concat", *patches, axis=sp + 1)
    rows = n * math.prod(out)
    depth = c * math.prod(kernel)
    cols = b.op("reshape", cols, shape=(rows, depth))
    wmat = b.op("reshape", b.op("transpose", w, perm=last), shape=(f, depth))
    y = b.op("gemm", cols, wmat, bias, trans_b=1)
    y = b.op("reshape", y, shape=(n, *out, f))
    return b.op("transpose", y, perm=(0, sp + 1, *range(1, sp + 1)))


register_layer("Conv1D")(_conv)
register_layer("Conv2D")(_conv)


def _pool_geometry(call: LayerCall) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    a = call.layer.args
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


@register_layer("MaxPool")
def lower_maxpool(call: LayerCall) -> LayerResult:
    """The window maximum; padding counts as -inf, the gradient goes to the first maximum."""
    kernel, stride, pad = _pool_geometry(call)
    if TILED_POOL and kernel == stride and all(isinstance(d, int) for d in call.x.shape):
        return LayerResult(maxpool_tiled(call.b, call.x, kernel, pad))
    y, _ = call.b.op("max_pool", call.x, kernel=kernel, strides=stride, pads=(*pad, *pad))
    return LayerResult(y)


def maxpool_tiled(b: Builder, x: Value, kernel: tuple[int, ...], pad: tuple[int, ...]) -> Value:
    """Max pooling with stride = kernel as a reshape into tiles and a first-maximum selection.

    Each spatial axis (N, C, ..., O·k, ...) splits into (O, k) and the tile axes are
    reduced one at a time, last first: per axis, ArgMax (the first maximum) picks
    a one-hot mask and the output is the masked sum, so the gradient flows only to
    the first maximum in row-major window order, as PyTorch's. Padding is the dtype's
    lowest finite value (a masked -inf would give 0·inf = NaN).
    """
    sp = x.rank - 2
    if any(pad):
        x = b.op("pad", x, pads=(0, 0, *pad, 0, 0, *pad))
        low = np.zeros((1, 1, *(int(d) for d in x.shape[2:])), dtype=x.dtype)
        inner = tuple(slice(p, int(d) - p) for p, d in zip(pad, x.shape[2:], strict=True))
        low[...] = np.finfo(low.dtype).min
        low[(slice(None), slice(None), *inner)] = 0.0
        x = b.op("add", x, b.const(low, name=b.fresh("pad_lowest")))
    spatial = tuple(int(d) for d in x.shape[2:])
    out = tuple(spatial[i] // kernel[i] for i in range(sp))
    used = tuple(out[i] * kernel[i] for i in range(sp))
    if used != spatial:  # floor mode: trailing rows that fill no window are dropped
        x = b.op("slice", x, starts=(0,) * sp, ends=used, axes=tuple(range(2, 2 + sp)),
                 steps=(1,) * sp)
    tiles = tuple(d for i in range(sp) for d in (out[i], kernel[i]))
    v = b.op("reshape", x, shape=(*(int(d) for d in x.shape[:2]), *tiles))
    for i in reversed(range(sp)):
        if kernel[i] > 1:
            v = _first_max(b, v, 3 + i)
    return v


def _first_max(b: Builder, v: Value, axis: int) -> Value:
    """The maximum over `axis` as a sum masked to its first occurrence."""
    first = b.op("argmax", v, axis=axis, keepdims=1)
    iota = np.arange(int(v.shape[axis]), dtype=np.int64).reshape(
        (-1, *(1,) * (v.rank - 1 - axis)))
    hit = b.op("equal", first, b.const(iota, name=b.fresh("window_index")))
    mask = b.op("cast", hit, to=v.dtype)
    return b.op("reduce_sum", b.op("mul", v, mask), axes=(axis,), keepdims=0)


@register_layer("AvgPool")
def lower_avgpool(call: LayerCall) -> LayerResult:
    """The window mean with padding counted as zeros (torch's count_include_pad=True)."""
    b, x = call.b, call.x
    kernel, stride, pad = _pool_geometry(call)
    if any(pad):
        x = b.op("pad", x, pads=(0, 0, *pad, 0, 0, *pad))
    return LayerResult(b.op("avg_pool", x, kernel=kernel, strides=stride))


@register_layer("GlobalAvgPool")
def lower_global_avgpool(call: LayerCall) -> Value:
    """The mean over every axis after the channels: (N, C, ...) to (N, C)."""
    x = call.x
    return call.b.op("reduce_mean", x, axes=tuple(range(2, x.rank)), keepdims=0)
