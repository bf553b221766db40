"""Optimisers with PyTorch's update rules and defaults, resolved to `OptimizerSpec`.

`lr` defaults to PyTorch's own default (SGD 1e-3, Adam 1e-3, AdamW 1e-3,
RMSprop 1e-2, Adagrad 1e-2). `clip_norm` / `clip_value` are None when absent.
"""

from __future__ import annotations

from typing import Any

from dslc.catalogue.signature import (
    Arg,
    Signature,
    Word,
    bind_call_value,
    boolean,
    did_you_mean,
    kind_of,
    number,
    optional,
    sig,
    tuple_of,
)
from dslc.check.model import CallValue, OptimizerSpec
from dslc.errors import DslcError, Span

_CLIP = (
    Arg("clip_norm", optional(number(0, lo_open=True)), None, "float > 0", kw_only=True),
    Arg("clip_value", optional(number(0, lo_open=True)), None, "float > 0", kw_only=True),
)


def _lr(default: float) -> Arg:
    return Arg("lr", number(0, lo_open=True), default, "float > 0")


def _wd(default: float = 0.0) -> Arg:
    return Arg("weight_decay", number(0), default, "float >= 0")


_BETAS = Arg("betas", tuple_of(number(0, 1, hi_open=True), 2), (0.9, 0.999), "(float, float)")
_EPS8 = Arg("eps", number(0, lo_open=True), 1e-8, "float > 0")

OPTIMIZERS: dict[str, Signature] = {
    "SGD": sig(
        _lr(1e-3),
        Arg("momentum", number(0), 0.0, "float >= 0"),
        Arg("nesterov", boolean, False, "bool"),
        _wd(),
        *_CLIP,
    ),
    "Adam": sig(_lr(1e-3), _BETAS, _EPS8, _wd(), *_CLIP),
    "AdamW": sig(_lr(1e-3), _BETAS, _EPS8, _wd(0.01), *_CLIP),
    "RMSprop": sig(
        _lr(1e-2),
        Arg("alpha", number(0, 1), 0.99, "float in [0, 1]"),
        _EPS8,
        Arg("momentum", number(0), 0.0, "float >= 0"),
        Arg("centered", boolean, False, "bool"),
        _wd(),
        *_CLIP,
    ),
    "Adagrad": sig(
        _lr(1e-2), Arg("eps", number(0, lo_open=True), 1e-10, "float > 0"), _wd(), *_CLIP
    ),
}


def resolve_optimizer(value: Any, span: Span) -> OptimizerSpec:
    """An optimiser call (or bare name), checked, with every option filled in."""
    if isinstance(value, Word):
        value = CallValue(value.name, span=span)
    if not isinstance(value, CallValue):
        raise DslcError(
            f"expected an optimiser such as `Adam(lr = 1e-3)`, got {kind_of(value)}", span
        )
    s = value.span or span
    if value.name not in OPTIMIZERS:
        raise DslcError(
            f"unknown optimiser `{value.name}`", s, did_you_mean(value.name, list(OPTIMIZERS))
        )
    opts = bind_call_value(OPTIMIZERS[value.name], value, s)
    if value.name == "SGD" and opts["nesterov"] and opts["momentum"] <= 0:
        raise DslcError("SGD: nesterov = true needs momentum > 0 (as in PyTorch)", s)
    return OptimizerSpec(value.name, opts, s)
