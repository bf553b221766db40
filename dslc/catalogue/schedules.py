"""Learning-rate schedules of `t` (optimiser steps already taken), resolved to `ScheduleSpec`."""

from __future__ import annotations

from typing import Any

from dslc.catalogue.signature import (
    Arg,
    Signature,
    Word,
    bind_call_value,
    did_you_mean,
    integer,
    kind_of,
    number,
    sig,
)
from dslc.check.model import CallValue, ScheduleSpec
from dslc.errors import DslcError, Span

SCHEDULES: dict[str, Signature] = {
    # lr
    "constant": sig(),
    # lr * gamma ** (t // every)
    "step": sig(
        Arg("every", integer(1), type="int >= 1"),
        Arg("gamma", number(0, lo_open=True), 0.1, "float > 0"),
    ),
    # lr * gamma ** t
    "exponential": sig(Arg("gamma", number(0, lo_open=True), type="float > 0")),
    # warm-up lr * (t + 1) / w, then cosine from lr to min_lr over the remaining steps of the run
    "cosine": sig(
        Arg("min_lr", number(0), 0.0, "float >= 0"), Arg("warmup_steps", integer(0), 0, "int >= 0")
    ),
    # lr * min(1, (t + 1) / steps)
    "linear_warmup": sig(Arg("steps", integer(1), type="int >= 1")),
}


def resolve_schedule(value: Any, span: Span) -> ScheduleSpec:
    """A schedule call (or bare name such as `constant`), checked, with every option filled in."""
    if isinstance(value, Word):
        value = CallValue(value.name, span=span)
    if not isinstance(value, CallValue):
        raise DslcError(f"expected a schedule such as `cosine()`, got {kind_of(value)}", span)
    s = value.span or span
    if value.name not in SCHEDULES:
        raise DslcError(
            f"unknown schedule `{value.name}`", s, did_you_mean(value.name, list(SCHEDULES))
        )
    opts = bind_call_value(SCHEDULES[value.name], value, s)
    return ScheduleSpec(value.name, opts, s)
