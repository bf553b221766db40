"""Gradient clipping and optimiser updates as IR, with PyTorch's exact update rules.

Slots are PyTorch's per-parameter state names; in graphs they are the values
`opt.<param>.<slot>` and their successors `opt.<param>.<slot>.next`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dslc.check.model import OptimizerSpec
from dslc.ir.graph import Builder, IRError, Value
from dslc.lower.functions import const, sum_all

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")


def slot_names(spec: OptimizerSpec) -> tuple[str, ...]:
    """The state names the optimiser keeps per parameter, as torch.optim's `state[p]` keys."""
    o = spec.options
    if spec.kind == "SGD":
        return ("momentum_buffer",) if float(o.get("momentum", 0.0) or 0.0) != 0.0 else ()
    if spec.kind in ("Adam", "AdamW"):
        return ("exp_avg", "exp_avg_sq")
    if spec.kind == "RMSprop":
        slots = ["square_avg"]
        if float(o.get("momentum", 0.0) or 0.0) > 0.0:
            slots.append("momentum_buffer")
        if o.get("centered", False):
            slots.append("grad_avg")
        return tuple(slots)
    if spec.kind == "Adagrad":
        return ("sum",)
    raise IRError(f"unknown optimiser {spec.kind!r}")


def slot_initial_value(spec: OptimizerSpec, slot: str) -> float:
    """The fill value of a fresh slot (Adagrad's initial_accumulator_value; else 0)."""
    if spec.kind == "Adagrad" and slot == "sum":
        return float(spec.options.get("initial_accumulator_value", 0.0) or 0.0)
    return 0.0


def slot_value_name(param: str, slot: str) -> str:
    """The graph value (and checkpoint key) of a slot: `opt.<param>.<slot>`."""
    return f"opt.{param}.{slot}"


# ---------------------------------------------------------------- clipping


def clip_gradients(b: Builder, spec: OptimizerSpec,
                   grads: Mapping[str, Value | None]) -> dict[str, Value | None]:
    """clip_norm (one global norm, as torch.nn.utils.clip_grad_norm_) then clip_value (clamp)."""
    out = dict(grads)
    clip_norm = spec.options.get("clip_norm")
    clip_value = spec.options.get("clip_value")
    present = [n for n, g in out.items() if g is not None]
    if clip_norm is not None and present:
        with b.scope("clip"):
            squares = [sum_all(b, b.op("square", out[n])) for n in present]
            total = squares[0]
            for s in squares[1:]:
                total = b.op("add", total, s)
            norm = b.op("sqrt", total, name=b.fresh("total_norm"))
            # coef = max_norm / (norm + 1e-6), clamped to at most 1
            coef = b.op("div", const(b, float(clip_norm), norm),
                        b.op("add", norm, const(b, 1e-6, norm)))
            coef = b.op("min2", coef, const(b, 1.0, coef), name=b.fresh("coef"))
            for n in present:
                out[n] = b.op("mul", out[n], coef, name=b.fresh(f"{n}"))
    if clip_value is not None and present:
        c = float(clip_value)
        with b.scope("clip"):
            for n in present:
                g = out[n]
                assert g is not None
                g = b.op("min2", g, const(b, c, g))
                out[n] = b.op("max2", g, const(b, -c, g), name=b.fresh(f"{n}"))
    return out


# ---------------------------------------------------------------- updates


@dataclass(frozen=True)
class Update:
    """A parameter's new value and its slots' new values (by slot name)."""

    param: Value
    slots: dict[str, Value]


def _opt(spec: OptimizerSpec, key: str, default: float) -> float:
    v = spec.options.get(key, default)
    return float(default if v is None else v)


def _axpy(b: Builder, a: Value, x: Value, y: Value, name: str | None = None) -> Value:
    """a·x + y."""
    return b.op("add", b.op("mul", x, a), y, name=name)


def apply_optimizer(
    b: Builder,
    spec: OptimizerSpec,
    lr: Value,
    step: Value,
    params: Mapping[str, Value],
    grads: Mapping[str, Value | None],
    slots: Mapping[str, Mapping[str, Value]],
) -> dict[str, Update]:
    """New parameters and slots, named `<param>.next` and `opt.<param>.<slot>.next`.

    A parameter whose gradient is None (no path to the loss) keeps its value and
    slots, as torch skips parameters without a gradient.
    """
    if spec.kind not in OPTIMIZERS:
        raise IRError(f"unknown optimiser {spec.kind!r}")
    wd = _opt(spec, "weight_decay", 0.0)
    shared = _shared_scalars(b, spec, lr, step)
    updates: dict[str, Update] = {}
    for name, p in params.items():
        g = grads.get(name)
        s = slots.get(name, {})
        if g is None:
            updates[name] = Update(
                b.op("identity", p, name=f"{name}.next"),
                {k: b.op("identity", v, name=f"{slot_value_name(name, k)}.next")
                 for k, v in s.items()},
            )
            continue
        def nm(key: str, name: str = name) -> str:
            return f"{name}.next" if key == "param" else f"{slot_value_name(name, key)}.next"

        with b.scope(f"opt.{name}"):
            new_p, new_s = _RULES[spec.kind](b, spec, lr, shared, p, g, s, wd, nm)
        updates[name] = Update(new_p, new_s)
    return updates


def _shared_scalars(b: Builder, spec: OptimizerSpec, lr: Value,
                    step: Value) -> dict[str, Value]:
    """Per-step scalars shared by every parameter (bias corrections, decayed lr)."""
    out: dict[str, Value] = {}
    with b.scope("opt"):
        t = b.op("cast", step, to=lr.dtype, name=b.fresh("t"))
        if spec.kind in ("Adam", "AdamW"):
            beta1, beta2 = (float(x) for x in spec.options.get("betas", (0.9, 0.999)))
            t1 = b.op("add", t, const(b, 1.0, t))
            bc1 = b.op("sub", const(b, 1.0, t), b.op("pow", const(b, beta1, t), t1))
            bc2 = b.op("sub", const(b, 1.0, t), b.op("pow", const(b, beta2, t), t1))
            out["step_size"] = b.op("div", lr, bc1, name=b.fresh("step_size"))
            out["bc2_sqrt"] = b.op("sqrt", bc2, name=b.fresh("bias_correction2_sqrt"))
            if spec.kind == "AdamW":
                wd = _opt(spec, "weight_decay", 0.01)
                out["decay"] = b.op("sub", const(b, 1.0, lr), b.op("mul", lr, const(b, wd, lr)),
                                    name=b.fresh("decay"))
        elif spec.kind == "Adagrad":
            lr_decay = _opt(spec, "lr_decay", 0.0)
            if lr_decay:
                denom = b.op("add", const(b, 1.0, t), b.op("mul", t, const(b, lr_decay, t)))
                out["clr"] = b.op("div", lr, denom, name=b.fresh("clr"))
            else:
                out["clr"] = lr
        elif spec.kind == "SGD" and _opt(spec, "dampening", 0.0):
            out["first"] = b.op("cast", b.op("equal", step, b.const(0, dtype=step.dtype)),
                                to=lr.dtype, name=b.fresh("first"))
    return out


def _sgd(b, spec, lr, shared, p, g, s, wd, nm):
    momentum = _opt(spec, "momentum", 0.0)
    if wd:
        g = _axpy(b, const(b, wd, g), p, g)
    new_s = {}
    if momentum:
        damp = _opt(spec, "dampening", 0.0)
        buf = b.op("mul", s["momentum_buffer"], const(b, momentum, g))
        if damp:
            # torch sets the buffer to the first gradient undamped: scale 1 − damp·(1 − first)
            scale = b.op("sub", const(b, 1.0, g),
                         b.op("mul", b.op("sub", const(b, 1.0, g), shared["first"]),
                              const(b, damp, g)))
            buf = b.op("add", buf, b.op("mul", g, scale), name=nm("momentum_buffer"))
        else:
            # The buffer starts at zero, so at step 0 this is exactly torch's buf = g.
            buf = b.op("add", buf, g, name=nm("momentum_buffer"))
        new_s["momentum_buffer"] = buf
        g = _axpy(b, const(b, momentum, g), buf, g) if spec.options.get("nesterov") else buf
    return b.op("sub", p, b.op("mul", g, lr), name=nm("param")), new_s


def _adam(b, spec, lr, shared, p, g, s, wd, nm):
    beta1, beta2 = (float(x) for x in spec.options.get("betas", (0.9, 0.999)))
    eps = _opt(spec, "eps", 1e-8)
    if spec.kind == "AdamW":
        p = b.op("mul", p, shared["decay"])
    elif wd:
        g = _axpy(b, const(b, wd, g), p, g)
    m = _axpy(b, const(b, 1.0 - beta1, g), g, b.op("mul", s["exp_avg"], const(b, beta1, g)),
              nm("exp_avg"))
    v = _axpy(b, const(b, 1.0 - beta2, g), b.op("square", g),
              b.op("mul", s["exp_avg_sq"], const(b, beta2, g)), nm("exp_avg_sq"))
    denom = b.op("add", b.op("div", b.op("sqrt", v), shared["bc2_sqrt"]), const(b, eps, g))
    upd = b.op("mul", b.op("div", m, denom), shared["step_size"])
    return b.op("sub", p, upd, name=nm("param")), {"exp_avg": m, "exp_avg_sq": v}


def _rmsprop(b, spec, lr, shared, p, g, s, wd, nm):
    alpha = _opt(spec, "alpha", 0.99)
    eps = _opt(spec, "eps", 1e-8)
    momentum = _opt(spec, "momentum", 0.0)
    if wd:
        g = _axpy(b, const(b, wd, g), p, g)
    sq = _axpy(b, const(b, 1.0 - alpha, g), b.op("square", g),
               b.op("mul", s["square_avg"], const(b, alpha, g)), nm("square_avg"))
    new_s = {"square_avg": sq}
    if "grad_avg" in s:
        ga = _axpy(b, const(b, 1.0 - alpha, g), g,
                   b.op("mul", s["grad_avg"], const(b, alpha, g)), nm("grad_avg"))
        new_s["grad_avg"] = ga
        avg = b.op("sqrt", b.op("sub", sq, b.op("square", ga)))
    else:
        avg = b.op("sqrt", sq)
    avg = b.op("add", avg, const(b, eps, g))
    if momentum > 0.0:
        buf = b.op("add", b.op("mul", s["momentum_buffer"], const(b, momentum, g)),
                   b.op("div", g, avg), name=nm("momentum_buffer"))
        new_s["momentum_buffer"] = buf
        return b.op("sub", p, b.op("mul", buf, lr), name=nm("param")), new_s
    return b.op("sub", p, b.op("mul", b.op("div", g, avg), lr), name=nm("param")), new_s


def _adagrad(b, spec, lr, shared, p, g, s, wd, nm):
    eps = _opt(spec, "eps", 1e-10)
    if wd:
        g = _axpy(b, const(b, wd, g), p, g)
    acc = b.op("add", s["sum"], b.op("square", g), name=nm("sum"))
    std = b.op("add", b.op("sqrt", acc), const(b, eps, g))
    return (b.op("sub", p, b.op("mul", b.op("div", g, std), shared["clr"]), name=nm("param")),
            {"sum": acc})


_RULES = {"SGD": _sgd, "Adam": _adam, "AdamW": _adam, "RMSprop": _rmsprop, "Adagrad": _adagrad}
