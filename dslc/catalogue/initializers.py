"""Initialisers (`init = ...`, `bias_init = ...`), resolved to a `CallValue` with every option."""

from __future__ import annotations

from typing import Any

from dslc.catalogue.signature import (
    Arg,
    Signature,
    Word,
    bind,
    bind_call_value,
    did_you_mean,
    number,
    sig,
)
from dslc.check.model import CallValue
from dslc.errors import DslcError, Span

# glorot/he use the fans of ParamSpec (PyTorch's _calculate_fan_in_and_fan_out);
# he_* is kaiming with gain sqrt(2) in fan_in mode; orthogonal as torch.nn.init.orthogonal_.
INITIALIZERS: dict[str, Signature] = {
    "glorot_uniform": sig(),
    "glorot_normal": sig(),
    "he_uniform": sig(),
    "he_normal": sig(),
    "normal": sig(Arg("std", number(0), 0.05, "float"), Arg("mean", number(), 0.0, "float")),
    "uniform": sig(Arg("a", number(), -0.05, "float"), Arg("b", number(), 0.05, "float")),
    "zeros": sig(),
    "ones": sig(),
    "orthogonal": sig(Arg("gain", number(0), 1.0, "float")),
}


def resolve_initializer(value: Any, span: Span) -> CallValue:
    """An initialiser name or call, checked, with every option filled in."""
    if isinstance(value, Word):
        value = CallValue(value.name, span=span)
    if not isinstance(value, CallValue):
        raise DslcError(
            "expected an initialiser such as `glorot_uniform` or `normal(std = 0.02)`", span
        )
    s = value.span or span
    if value.name not in INITIALIZERS:
        raise DslcError(
            f"unknown initialiser `{value.name}`", s, did_you_mean(value.name, list(INITIALIZERS))
        )
    opts = bind_call_value(INITIALIZERS[value.name], value, s)
    if value.name == "uniform" and opts["a"] >= opts["b"]:
        raise DslcError(f"uniform(a, b) needs a < b, got a = {opts['a']:g}, b = {opts['b']:g}", s)
    return CallValue(value.name, (), tuple(opts.items()), s)


def default(name: str) -> CallValue:
    """The resolved CallValue of an initialiser with its defaults."""
    return CallValue(name, (), tuple(bind(INITIALIZERS[name], name, [], [], _NOWHERE).items()))


_NOWHERE = Span("<default>", 1, 1, 1, 1)
