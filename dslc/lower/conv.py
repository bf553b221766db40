"""Convolutions and pooling: Conv1D/Conv2D, MaxPool, AvgPool and GlobalAvgPool.

Layouts are PyTorch's: values (N, C, *spatial), weights [filters, in/groups, *kernel].
Padding may be asymmetric (`same` with an even kernel pads total//2 before and
the rest after, as PyTorch). MaxPool pads with -inf; AvgPool counts padding
(PyTorch's default `count_include_pad=True`): the input is zero-padded first,
then averaged over whole windows.
"""

from __future__ import annotations

from dslc.ir.graph import Value
from dslc.lower.layers import LayerCall, LayerResult, register_layer


def onnx_pads(pairs: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """Per-dimension (begin, end) pairs as ONNX pads: every begin, then every end."""
    return (*(p[0] for p in pairs), *(p[1] for p in pairs))


def _conv(call: LayerCall) -> LayerResult:
    b, x, a = call.b, call.x, call.layer.args
    w = call.param("weight")
    bias = call.param("bias") if a.get("bias", True) and call.has_param("bias") else None
    y = b.op("conv", x, w, bias, strides=tuple(a["stride"]), pads=onnx_pads(a["padding"]),
             dilations=tuple(a["dilation"]), group=int(a["groups"]))
    return LayerResult(y)


register_layer("Conv1D")(_conv)
register_layer("Conv2D")(_conv)


def _pool_geometry(call: LayerCall) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    a = call.layer.args
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


@register_layer("MaxPool")
def lower_maxpool(call: LayerCall) -> LayerResult:
    """The window maximum; padding counts as -inf, the gradient goes to the first maximum."""
    kernel, stride, pad = _pool_geometry(call)
    y, _ = call.b.op("max_pool", call.x, kernel=kernel, strides=stride, pads=(*pad, *pad))
    return LayerResult(y)


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
