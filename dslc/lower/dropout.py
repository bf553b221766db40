"""Dropout: inverted dropout in train mode, the identity in eval and inference.

The mask is a counter-based hash of (seed, step, layer application, element
index) computed with int64 integer ops in the graph (no ONNX random ops, whose
state cannot be fed): the same seed and step always give the same mask, so a
resumed run replays it, and every step draws a fresh one. Every intermediate
value stays below 2**32 and every product below 2**63, so int64 never
overflows; shifts are divisions, XOR is `a + b - 2·(a & b)`.

The seed and step enter through their low 32 bits. `keep_mask` is the same
hash in NumPy, the reference the tests compare with.
"""

from __future__ import annotations

import zlib

import numpy as np

from dslc.ir.graph import Builder, IRError, Value
from dslc.ir.ops._common import concrete
from dslc.lower.layers import LayerCall, LayerResult, register_layer

MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # the multiplier of a well-mixing 32-bit integer hash (two rounds)
_SPREAD = 0x61C88647  # 2**32 / golden ratio, below 2**31: spreads consecutive indices


# ---------------------------------------------------------------- the hash, in NumPy


def _xor_shift_np(x: np.ndarray, shift: int) -> np.ndarray:
    return x ^ (x >> shift)


def mix_np(x: np.ndarray) -> np.ndarray:
    """A bijective mix of 32-bit values held in int64."""
    x = _xor_shift_np(x, 16)
    x = (x * _MIX) & MASK32
    x = _xor_shift_np(x, 16)
    x = (x * _MIX) & MASK32
    return _xor_shift_np(x, 16)


def application_key(layer: str, node_id: int) -> int:
    """A 32-bit key for one application of a Dropout layer (shared layers differ per use)."""
    return zlib.crc32(f"{layer}#{node_id}".encode())


def spread_indices(shape: tuple[int, ...]) -> np.ndarray:
    """Element indices of `shape` in row-major order, spread over 32 bits."""
    return (np.arange(int(np.prod(shape)), dtype=np.int64) * _SPREAD & MASK32).reshape(shape)


def threshold(rate: float) -> int:
    """An element is dropped when its 32-bit hash is below this."""
    return int(round(rate * 2.0**32))


def keep_mask(seed: int, step: int, key: int, shape: tuple[int, ...], rate: float) -> np.ndarray:
    """The boolean keep-mask that the train-mode graph computes for these inputs."""
    s = mix_np(np.int64(seed) & MASK32)
    s = mix_np((s + key) & MASK32)
    s = mix_np((s + (np.int64(step) & MASK32)) & MASK32)
    h = mix_np(spread_indices(shape) ^ s)
    return h >= threshold(rate)


# ---------------------------------------------------------------- the hash, in IR ops


def _i64(b: Builder, value: int) -> Value:
    return b.const(np.asarray(value, dtype=np.int64))


def _xor(b: Builder, x: Value, y: Value) -> Value:
    both = b.op("bitwise_and", x, y)
    return b.op("sub", b.op("add", x, y), b.op("mul", both, _i64(b, 2)))


def _mix(b: Builder, x: Value) -> Value:
    def xor_shift(v: Value) -> Value:
        return _xor(b, v, b.op("int_div", v, _i64(b, 1 << 16)))

    def mul_low(v: Value) -> Value:
        return b.op("bitwise_and", b.op("mul", v, _i64(b, _MIX)), _i64(b, MASK32))

    return xor_shift(mul_low(xor_shift(mul_low(xor_shift(x)))))


def _add_low(b: Builder, x: Value, y: Value) -> Value:
    return b.op("bitwise_and", b.op("add", x, y), _i64(b, MASK32))


def _spread_index_ir(b: Builder, shape: tuple[int, ...]) -> Value:
    """`spread_indices(shape)` built from one small arange per axis (no full-size constant)."""
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    idx: Value | None = None
    for axis, (size, stride) in enumerate(zip(shape, strides, strict=True)):
        if size == 1:
            continue
        lane = (np.arange(size, dtype=np.int64) * stride).reshape(
            (size, *(1,) * (len(shape) - axis - 1)))
        part = b.const(lane, name=b.fresh("element_index"))
        idx = part if idx is None else b.op("add", idx, part)
    if idx is None:
        idx = _i64(b, 0)
    if tuple(idx.shape) != tuple(shape):
        # Broadcast against zeros of the full shape (an axis of size 1 is missing).
        idx = b.op("add", idx, b.op("constant_of_shape", shape=shape, value=0, dtype="int64"))
    return b.op("bitwise_and", b.op("mul", idx, _i64(b, _SPREAD)), _i64(b, MASK32))


def keep_mask_ir(b: Builder, seed: Value, step: Value, key: int, shape: tuple[int, ...],
                 rate: float) -> Value:
    """The boolean keep-mask of one Dropout application as graph values."""
    low = _i64(b, MASK32)
    s = _mix(b, b.op("bitwise_and", seed, low))
    s = _mix(b, _add_low(b, s, _i64(b, key)))
    s = _mix(b, _add_low(b, s, b.op("bitwise_and", step, low)))
    h = _mix(b, _xor(b, _spread_index_ir(b, shape), s))
    return b.op("greater", h, _i64(b, threshold(rate) - 1))


@register_layer("Dropout")
def lower_dropout(call: LayerCall) -> LayerResult:
    """x · mask / (1 - rate) in train mode (as torch), x otherwise."""
    b, x = call.b, call.x
    rate = float(call.layer.args["rate"])
    if call.mode != "train" or rate == 0.0:
        return LayerResult(x)
    if call.seed is None or call.step is None:
        raise IRError("train-mode Dropout needs the `seed` and `step` inputs")
    shape = concrete(x.shape, "train-mode Dropout")
    keep = keep_mask_ir(b, call.seed, call.step, application_key(call.layer.name, call.node.id),
                        shape, rate)
    scale = b.op("div", b.op("cast", keep, to=x.dtype), b.const(1.0 - rate, dtype=x.dtype))
    return LayerResult(b.op("mul", x, scale))
