"""BatchNorm and LayerNorm, lowered to primitives so that autodiff differentiates them.

BatchNorm normalises axis 0 of the per-example shape (channels of [C, ...],
features of [F]) over the batch and every other axis, as torch.nn.BatchNorm1d/2d:
in train mode with the batch statistics (biased variance) and updating the
running buffers with `running = (1 - momentum)·running + momentum·batch_stat`,
the variance estimate unbiased; in eval and inference with the running buffers.
LayerNorm normalises the last axis (torch.nn.LayerNorm(last)).
"""

from __future__ import annotations

from dslc.ir.graph import Builder, Value
from dslc.ir.ops._common import prod
from dslc.lower.functions import const
from dslc.lower.layers import LayerCall, LayerResult, register_layer


def per_channel(b: Builder, v: Value, rank: int) -> Value:
    """A [C] vector shaped [C, 1, ...] to broadcast over a (N, C, ...) value of `rank`."""
    if rank == 2:
        return v
    return b.op("reshape", v, shape=(v.shape[0], *(1,) * (rank - 2)))


def _reduced_count(x: Value, axes: tuple[int, ...]) -> int:
    return prod([int(x.shape[a]) for a in axes])


@register_layer("BatchNorm")
def lower_batchnorm(call: LayerCall) -> LayerResult:
    """Batch normalisation over every axis but the channels (axis 1 of the batched value)."""
    b, x = call.b, call.x
    eps = float(call.layer.args.get("eps", 1e-5))
    weight = per_channel(b, call.param("weight"), x.rank)
    bias = per_channel(b, call.param("bias"), x.rank)
    rmean, rvar = call.param("running_mean"), call.param("running_var")
    if call.mode != "train":
        # Running statistics folded into one scale and shift per channel.
        scale = b.op("mul", call.param("weight"),
                     b.op("reciprocal", b.op("sqrt", b.op("add", rvar, const(b, eps, rvar)))))
        shift = b.op("sub", call.param("bias"), b.op("mul", rmean, scale))
        y = b.op("mul", x, per_channel(b, scale, x.rank))
        return LayerResult(b.op("add", y, per_channel(b, shift, x.rank)))
    axes = (0, *range(2, x.rank))
    mean = b.op("reduce_mean", x, axes=axes, keepdims=1)
    centred = b.op("sub", x, mean)
    var = b.op("reduce_mean", b.op("square", centred), axes=axes, keepdims=1)
    inv_std = b.op("reciprocal", b.op("sqrt", b.op("add", var, const(b, eps, var))))
    y = b.op("add", b.op("mul", b.op("mul", centred, inv_std), weight), bias)
    updates = _running_updates(call, mean, var, _reduced_count(x, axes))
    return LayerResult(y, updates)


def _running_updates(call: LayerCall, mean: Value, var: Value, count: int) -> dict[str, Value]:
    """PyTorch's running-statistics rule; the variance estimate is unbiased (n / (n - 1))."""
    b = call.b
    momentum = float(call.layer.args.get("momentum", 0.1))
    rmean, rvar = call.param("running_mean"), call.param("running_var")
    channels = (int(rmean.shape[0]),)
    batch_mean = b.op("reshape", mean, shape=channels)
    unbias = count / (count - 1) if count > 1 else 1.0
    batch_var = b.op("mul", b.op("reshape", var, shape=channels), const(b, unbias, var))
    keep = const(b, 1.0 - momentum, rmean)
    take = const(b, momentum, rmean)
    new_mean = b.op("add", b.op("mul", rmean, keep), b.op("mul", batch_mean, take))
    new_var = b.op("add", b.op("mul", rvar, keep), b.op("mul", batch_var, take))
    name = call.layer.name
    return {f"{name}.running_mean": new_mean, f"{name}.running_var": new_var}


@register_layer("LayerNorm")
def lower_layernorm(call: LayerCall) -> LayerResult:
    """(x - mean) / sqrt(var + eps) · weight + bias over the last axis, variance biased."""
    b, x = call.b, call.x
    eps = float(call.layer.args.get("eps", 1e-5))
    last = (x.rank - 1,)
    mean = b.op("reduce_mean", x, axes=last, keepdims=1)
    centred = b.op("sub", x, mean)
    var = b.op("reduce_mean", b.op("square", centred), axes=last, keepdims=1)
    inv_std = b.op("reciprocal", b.op("sqrt", b.op("add", var, const(b, eps, var))))
    y = b.op("mul", b.op("mul", centred, inv_std), call.param("weight"))
    return LayerResult(b.op("add", y, call.param("bias")))
