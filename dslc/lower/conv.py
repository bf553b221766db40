"""Convolutions and pooling: Conv1D/Conv2D, MaxPool, AvgPool and GlobalAvgPool.

Layouts are PyTorch's: values (N, C, *spatial), weights [filters, in/groups, *kernel].
Padding may be asymmetric (`same` with an even kernel pads total//2 before and
the rest after, as PyTorch). MaxPool pads with -inf; AvgPool counts padding
(PyTorch's default `count_include_pad=True`): the input is zero-padded first,
then averaged over whole windows.

An ungrouped convolution with fixed shapes (every training step) is lowered to
channels-last patches (im2col from slices and concats) and GEMMs: in ONNX
Runtime this trains the digits CNN about 1.3× faster at batch 32 and at batch
256 than the `conv` primitive, whose backward runs ConvTranspose and a Conv
over the batch (docs/benchmarks.md, "CNN"). Grouped convolutions and graphs
with a symbolic batch (the exported model) use the `conv` primitive (ONNX Conv).

In a training step, MaxPool with disjoint windows (stride = kernel, no padding)
is also channels-last and index-free (`max_pool_disjoint`); the layout changes
between the two cancel in the optimiser, so consecutive convolutions, relus and
pools stay channels-last. Other pools, and every pool in evaluation and
inference graphs, use the `max_pool` primitive (ONNX MaxPool).
"""

from __future__ import annotations

import math

from dslc.ir.graph import Builder, Value
from dslc.lower.layers import LayerCall, LayerResult, register_layer

IM2COL = True
"""Lower ungrouped fixed-shape convolutions to im2col + GEMM (False: always the `conv` op)."""

SUM_FIRST_AXIS = True
"""In im2col, one GEMM per kernel offset of the first spatial axis, summed (False: one GEMM)."""

SUM_MIN_DEPTH = 32
"""The least patch depth per first-axis offset for which the summed GEMMs pay off."""


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
    # Patches gathered one spatial axis at a time, the last first: each stage concatenates
    # the kernel's shifts along that axis on the channel axis, so the cols' last axis is
    # (k1, ..., C) like the weight's [F, k1, ..., C], and each slice (whose gradient is a
    # pad) moves along one axis only.
    summed = (SUM_FIRST_AXIS and sp >= 2 and kernel[0] > 1
              and c * math.prod(kernel[1:]) >= SUM_MIN_DEPTH)
    cols = xt
    for i in reversed(range(1 if summed else 0, sp)):
        if kernel[i] == 1 and stride[i] == 1 and int(cols.shape[1 + i]) == out[i]:
            continue
        shifts = [_shift(b, cols, i, k, dilation[i], stride[i], out[i]) for k in range(kernel[i])]
        cols = shifts[0] if len(shifts) == 1 else b.op("concat", *shifts, axis=sp + 1)
    rows = n * math.prod(out)
    wt = b.op("transpose", w, perm=last)
    if summed:
        y = _first_axis_gemms(b, cols, wt, bias, kernel[0], dilation[0], stride[0], out, rows)
    else:
        depth = c * math.prod(kernel)
        cols = b.op("reshape", cols, shape=(rows, depth))
        y = b.op("gemm", cols, b.op("reshape", wt, shape=(f, depth)), bias, trans_b=1)
    y = b.op("reshape", y, shape=(n, *out, f))
    return b.op("transpose", y, perm=(0, sp + 1, *range(1, sp + 1)))


def _shift(b: Builder, cols: Value, axis: int, k: int, dilation: int, stride: int,
           out: int) -> Value:
    """The patches' values at kernel offset `k` of spatial `axis` (axis 1 + axis of cols)."""
    start = k * dilation
    return b.op("slice", cols, starts=(start,), ends=(start + stride * (out - 1) + 1,),
                axes=(1 + axis,), steps=(stride,))


def _first_axis_gemms(b: Builder, cols: Value, wt: Value, bias: Value | None, k0: int,
                      dilation: int, stride: int, out: tuple[int, ...], rows: int) -> Value:
    """sum over the first axis's kernel offsets of shift_k(cols) · W_k, one GEMM each.

    Each GEMM adds the previous one's result through its C input. Against one GEMM over
    every offset this leaves out the widest Concat of the patches (and the Split of its
    gradient), which in ONNX Runtime cost more than the extra GEMM calls.
    """
    f = int(wt.shape[0])
    depth = int(cols.shape[-1])
    parts = b.op("split", b.op("reshape", wt, shape=(f, k0, depth)), axis=1, sizes=(1,) * k0)
    y = bias
    for k in range(k0):
        patch = b.op("reshape", _shift(b, cols, 0, k, dilation, stride, out[0]),
                     shape=(rows, depth))
        y = b.op("gemm", patch, b.op("reshape", parts[k], shape=(f, depth)), y, trans_b=1)
    return y


register_layer("Conv1D")(_conv)
register_layer("Conv2D")(_conv)


def _pool_geometry(call: LayerCall) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    a = call.layer.args
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


@register_layer("MaxPool")
def lower_maxpool(call: LayerCall) -> LayerResult:
    """The window maximum; padding counts as -inf, the gradient goes to the first maximum."""
    kernel, stride, pad = _pool_geometry(call)
    x = call.x
    if (call.mode == "train" and stride == kernel and not any(pad)
            and all(isinstance(d, int) for d in x.shape)):
        pre = _relu_input(call.b, x)
        if pre is not None:
            # max_pool(relu(x)) = relu(max_pool(x)), gradient included: where the window
            # maximum is positive both pick its first position, and otherwise both give 0.
            # The relu and its gradient then run on the pooled, k-times smaller tensor.
            return LayerResult(call.b.op("relu", max_pool_disjoint(call.b, pre, kernel)))
        return LayerResult(max_pool_disjoint(call.b, x, kernel))
    y, _ = call.b.op("max_pool", x, kernel=kernel, strides=stride, pads=(*pad, *pad))
    return LayerResult(y)


def _relu_input(b: Builder, x: Value) -> Value | None:
    """The input of the relu that produced `x`, if a relu did (an unused relu is dropped later)."""
    for node in reversed(b.nodes):
        if x.name in node.outputs:
            return b.values[node.inputs[0]] if node.op == "relu" else None
    return None


def max_pool_disjoint(b: Builder, x: Value, kernel: tuple[int, ...]) -> Value:
    """Max pooling over disjoint windows (stride = kernel, no padding) for a training step.

    ONNX MaxPool needs its Indices output to send the gradient to the first maximum as
    PyTorch does, and ONNX Runtime computes it about 15× slower than the plain maximum.
    Here each window is reduced one spatial axis at a time, the last first, in channels-last
    layout: the axis is split into its k window offsets and a `greater` + `where` chain
    keeps the earlier offset on ties. Reducing the later axes first makes the survivor the
    first maximum in row-major window order, and `where`'s gradient sends dy to it alone.
    The floor-mode remainder is cropped first. The transposes to and from channels-last
    cancel against the im2col convolution's (`passes.sink_transposes`).
    """
    sp = x.rank - 2
    n, c = int(x.shape[0]), int(x.shape[1])
    spatial = tuple(int(d) for d in x.shape[2:])
    out = tuple(spatial[i] // kernel[i] for i in range(sp))
    crop = [i for i in range(sp) if out[i] * kernel[i] != spatial[i]]
    if crop:
        x = b.op("slice", x, starts=(0,) * len(crop),
                 ends=tuple(out[i] * kernel[i] for i in crop),
                 axes=tuple(2 + i for i in crop), steps=(1,) * len(crop))
    y = b.op("transpose", x, perm=(0, *range(2, 2 + sp), 1))
    dims = [out[i] * kernel[i] for i in range(sp)]
    for i in reversed(range(sp)):
        if kernel[i] == 1:
            continue
        # View as (outer, out_i, k_i, inner): the window offsets of axis i on axis 2.
        outer = n * math.prod(dims[:i])
        inner = math.prod(dims[i + 1:]) * c
        v = b.op("reshape", y, shape=(outer * out[i], kernel[i], inner))
        parts = b.op("split", v, axis=1, sizes=(1,) * kernel[i])
        best = parts[0]
        for part in parts[1:]:
            best = b.op("where", b.op("greater", part, best), part, best)
        dims[i] = out[i]
        y = b.op("reshape", best, shape=(n, *dims, c))
    return b.op("transpose", y, perm=(0, sp + 1, *range(1, sp + 1)))


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

