"""Regularisers `l1(c, on = SEL)` / `l2(c, on = SEL)` (Keras convention), resolved to `RegTerm`s."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from dslc.catalogue.signature import Arg, Word, bind_call_value, did_you_mean, kind_of, number, sig
from dslc.check.model import CallValue, ParamSpec, RegTerm
from dslc.errors import DslcError, Span


def _selector(v: Any, span: Span) -> str:
    if isinstance(v, Word) and v.name in ("weights", "all"):
        return v.name
    if isinstance(v, str):
        return v
    raise DslcError(
        f'`on` expects `weights`, `all` or a glob string such as "head.*", got {kind_of(v)}',
        span,
    )


REGULARIZERS = {
    "l1": sig(
        Arg("c", number(0), type="float >= 0"),
        Arg("on", _selector, "weights", 'weights|all|"glob"'),
    ),
    "l2": sig(
        Arg("c", number(0), type="float >= 0"),
        Arg("on", _selector, "weights", 'weights|all|"glob"'),
    ),
}


def resolve_regularizer(value: Any, span: Span) -> CallValue:
    """A regulariser call, checked, as a CallValue with `c` and `on` filled in."""
    if not isinstance(value, CallValue):
        raise DslcError(f"expected a regulariser such as `l2(1e-4)`, got {kind_of(value)}", span)
    s = value.span or span
    if value.name not in REGULARIZERS:
        raise DslcError(
            f"unknown regulariser `{value.name}`",
            s,
            did_you_mean(value.name, list(REGULARIZERS)) or "regularisers: l1(c), l2(c)",
        )
    opts = bind_call_value(REGULARIZERS[value.name], value, s)
    return CallValue(value.name, (), tuple(opts.items()), s)


def select(reg: CallValue, params: Sequence[ParamSpec], span: Span) -> RegTerm:
    """The RegTerm of a resolved regulariser over the given parameters (buffers never count)."""
    opts = reg.kw()
    on = opts["on"]
    trainable = [p for p in params if p.trainable]
    if on == "weights":
        chosen = [p.name for p in trainable if p.is_kernel]
    elif on == "all":
        chosen = [p.name for p in trainable]
    else:
        chosen = [p.name for p in trainable if fnmatch.fnmatchcase(p.name, on)]
        if not chosen:
            names = [p.name for p in trainable]
            hint = did_you_mean(on, names)
            if hint is None and names:
                hint = (
                    "parameters are " + ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                )
            raise DslcError(f'`on = "{on}"` matches no parameter', reg.span or span, hint)
    return RegTerm(reg.name, float(opts["c"]), tuple(chosen), reg.span or span)
