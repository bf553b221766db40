"""Learning-rate schedules as IR: the rate as a function of t, the optimiser steps already taken.

- constant:            lr
- step(every, gamma):  lr · gamma^⌊t / every⌋
- exponential(gamma):  lr · gamma^t
- linear_warmup(steps): lr · min(1, (t + 1) / steps)
- cosine(min_lr, warmup_steps = w), over a run of T = total_steps steps:
    t < w:  lr · (t + 1) / w
    t ≥ w:  min_lr + (lr − min_lr) · (1 + cos(π · min(1, (t − w) / max(1, T − w)))) / 2
  which is torch's LinearLR(1/w → 1 over w − 1 steps) followed by
  CosineAnnealingLR(T_max = T − w, eta_min = min_lr); past T it stays at min_lr.
  There is no cosine primitive, so the T + 1 rates are a constant table
  computed in double precision and indexed by min(t, T).
"""

from __future__ import annotations

import math

import numpy as np

from dslc.check.model import ScheduleSpec
from dslc.ir.graph import Builder, IRError, Value
from dslc.lower.functions import const


def cosine_rate(lr: float, t: int, total_steps: int, min_lr: float = 0.0,
                warmup_steps: int = 0) -> float:
    """The cosine schedule's rate at step t (the formula in this module's docstring)."""
    w = int(warmup_steps)
    if t < w:
        return lr * (t + 1) / w
    progress = min(1.0, (t - w) / max(1, total_steps - w))
    return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


def learning_rate(b: Builder, spec: ScheduleSpec, lr: float, step: Value,
                  total_steps: int = 1) -> Value:
    """The scheduled rate at `step` (int64 scalar), a float scalar named `sched.lr`."""
    o = spec.options
    with b.scope("sched"):
        base = const(b, float(lr))
        t = b.op("cast", step, to=b.float_dtype, name=b.fresh("t"))
        if spec.kind == "constant":
            rate = b.op("identity", base, name=b.fresh("lr"))
        elif spec.kind == "step":
            k = b.op("int_div", step, b.const(int(o.get("every", 1)), dtype=step.dtype))
            k = b.op("cast", k, to=b.float_dtype)
            rate = b.op("mul", base, b.op("pow", const(b, float(o.get("gamma", 0.1))), k),
                        name=b.fresh("lr"))
        elif spec.kind == "exponential":
            rate = b.op("mul", base, b.op("pow", const(b, float(o.get("gamma", 0.9))), t),
                        name=b.fresh("lr"))
        elif spec.kind == "linear_warmup":
            steps = max(1, int(o.get("steps", 1)))
            frac = b.op("div", b.op("add", t, const(b, 1.0)), const(b, float(steps)))
            rate = b.op("mul", base, b.op("min2", frac, const(b, 1.0)), name=b.fresh("lr"))
        elif spec.kind == "cosine":
            total = max(1, int(total_steps))
            table = np.array(
                [cosine_rate(float(lr), i, total, float(o.get("min_lr", 0.0) or 0.0),
                             int(o.get("warmup_steps", 0) or 0)) for i in range(total + 1)],
                dtype=b.float_dtype)
            tab = b.const(table, name=b.fresh("cosine_table"))
            last = b.const(total, dtype=step.dtype)
            idx = b.op("where", b.op("less", step, last), step, last)
            idx = b.op("reshape", idx, shape=(1,))
            rate = b.op("reshape", b.op("gather", tab, idx, axis=0), shape=(),
                        name=b.fresh("lr"))
        else:
            raise IRError(f"unknown schedule {spec.kind!r}")
    return rate
