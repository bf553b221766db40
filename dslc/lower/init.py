"""Initial parameters, buffers and optimiser state as NumPy arrays.

Each parameter draws from its own generator seeded with (seed, crc32 of its
full name), so adding or removing a layer never changes another layer's init.
Formulas follow torch.nn.init (which agree with Keras for the uniform forms;
glorot_normal / he_normal are plain normals, as in PyTorch).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from dslc.check.model import CheckedModel, ParamSpec
from dslc.ir.graph import IRError
from dslc.lower.optimizers import slot_initial_value, slot_names


def _fans(spec: ParamSpec) -> tuple[int, int]:
    if spec.fan_in and spec.fan_out:
        return spec.fan_in, spec.fan_out
    shape = spec.shape
    if len(shape) < 2:
        n = int(shape[0]) if shape else 1
        return n, n
    receptive = math.prod(shape[2:])
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], gain: float) -> np.ndarray:
    # As torch.nn.init.orthogonal_: QR of a normal matrix, signs fixed by diag(R).
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    flat = rng.standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape)


def init_array(spec: ParamSpec, seed: int) -> np.ndarray:
    """The initial value of one parameter or buffer, float32."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(spec.name.encode("utf-8"))])
    kind, kw = spec.init.name, spec.init.kw()
    args = spec.init.args
    shape = tuple(int(d) for d in spec.shape)
    fan_in, fan_out = _fans(spec)
    if kind == "zeros":
        out = np.zeros(shape)
    elif kind == "ones":
        out = np.ones(shape)
    elif kind == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        out = rng.uniform(-limit, limit, shape)
    elif kind == "glorot_normal":
        out = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif kind == "he_uniform":
        limit = math.sqrt(6.0 / fan_in)
        out = rng.uniform(-limit, limit, shape)
    elif kind == "he_normal":
        out = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif kind == "normal":
        std = float(kw.get("std", args[0] if args else 0.05))
        out = rng.normal(float(kw.get("mean", 0.0)), std, shape)
    elif kind == "uniform":
        a = float(kw.get("a", args[0] if len(args) > 0 else -0.05))
        hi = float(kw.get("b", args[1] if len(args) > 1 else 0.05))
        out = rng.uniform(a, hi, shape)
    elif kind == "orthogonal":
        out = _orthogonal(rng, shape, float(kw.get("gain", args[0] if args else 1.0)))
    elif kind == "constant":
        out = np.full(shape, float(kw.get("value", args[0] if args else 0.0)))
    else:
        raise IRError(f"unknown initialiser {kind!r} for {spec.name}")
    return np.ascontiguousarray(out, dtype=np.float32)


def initial_state(model: CheckedModel, seed: int) -> dict[str, np.ndarray]:
    """Every parameter and buffer by full name, initialised from `seed`."""
    return {spec.name: init_array(spec, seed) for spec in model.params()}


def optimizer_state(model: CheckedModel) -> dict[str, np.ndarray]:
    """Fresh optimiser slots `opt.<param>.<slot>` for every trainable parameter, and `step` = 0."""
    opt = model.train.optimizer
    state = {
        f"opt.{spec.name}.{slot}": np.full(spec.shape, slot_initial_value(opt, slot), np.float32)
        for spec in model.params() if spec.trainable for slot in slot_names(opt)
    }
    state["step"] = np.array(0, dtype=np.int64)
    return state
