"""Signatures of catalogue entries: parameters, value converters and argument binding.

Argument values reach the catalogue already turned into plain Python values by
the checker: int, float, str (a string literal), bool, `Word` (a bare
identifier such as `same`), tuple, list, or `CallValue` (a nested call such as
`l2(1e-4)`). Converters validate one value and return its normalised form.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dslc.check.model import CallValue
from dslc.errors import DslcError, Span


@dataclass(frozen=True)
class Word:
    """A bare identifier used as an argument value (`same`, `weights`, `val_loss`)."""

    name: str

    def __str__(self) -> str:
        return self.name


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

Converter = Callable[[Any, Span], Any]


@dataclass(frozen=True)
class Arg:
    """One parameter of a signature: its name, converter, default and type text for the docs."""

    name: str
    convert: Converter
    default: Any = REQUIRED
    type: str = ""
    kw_only: bool = False  # may only be given as `name = value`


@dataclass(frozen=True)
class Signature:
    """Parameters in positional order; every one may also be given by keyword."""

    args: tuple[Arg, ...]

    def names(self) -> list[str]:
        """The parameter names, in order."""
        return [a.name for a in self.args]


def sig(*args: Arg) -> Signature:
    """A signature from its parameters."""
    return Signature(tuple(args))


def did_you_mean(name: str, candidates: Sequence[str]) -> str | None:
    """A `did you mean `X`?` hint for a misspelt name, or None when nothing is close."""
    cands = list(dict.fromkeys(candidates))
    folded = [c for c in cands if c.lower() == name.lower()]
    if folded:
        return f"did you mean `{folded[0]}`?"
    close = difflib.get_close_matches(name, cands, n=1, cutoff=0.6)
    if not close:
        lower = {c.lower(): c for c in cands}
        close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), 1, 0.6)]
    return f"did you mean `{close[0]}`?" if close else None


def bind(
    signature: Signature,
    callee: str,
    args: Sequence[tuple[Any, Span]],
    kwargs: Sequence[tuple[str, Any, Span, Span]],
    span: Span,
) -> dict[str, Any]:
    """Match positional and keyword arguments to a signature, convert them and fill defaults.

    `kwargs` items are (key, value, key span, value span).
    """
    params = signature.args
    positional = [p for p in params if not p.kw_only]
    if len(args) > len(positional):
        extra_span = args[len(positional)][1]
        names = ", ".join(a.name for a in positional)
        raise DslcError(
            f"`{callee}` takes at most {len(positional)} positional argument"
            f"{'' if len(positional) == 1 else 's'}"
            + (f" ({names})" if names else "")
            + f", got {len(args)}",
            extra_span,
            "give the others by keyword: name = value" if any(p.kw_only for p in params) else None,
        )
    out: dict[str, Any] = {}
    for p, (value, vspan) in zip(positional, args, strict=False):
        out[p.name] = convert_named(p, callee, value, vspan)
    by_name = {p.name: p for p in params}
    for key, value, kspan, vspan in kwargs:
        if key not in by_name:
            raise DslcError(
                f"`{callee}` has no argument `{key}`",
                kspan,
                did_you_mean(key, list(by_name)) or _accepts(signature),
            )
        if key in out:
            raise DslcError(f"argument `{key}` of `{callee}` is given twice", kspan)
        out[key] = convert_named(by_name[key], callee, value, vspan)
    for p in params:
        if p.name not in out:
            if p.default is REQUIRED:
                raise DslcError(
                    f"`{callee}` needs the argument `{p.name}`",
                    span,
                    f"signature: {describe(callee, signature)}",
                )
            out[p.name] = p.default
    return {p.name: out[p.name] for p in params}


def bind_call_value(signature: Signature, value: CallValue, span: Span) -> dict[str, Any]:
    """Bind a call given as an argument value (`l2(1e-4)`, `Adam(lr = 1e-3)`) to its signature.

    Errors point at the offending argument where the checker recorded its span,
    else at the call.
    """
    s = value.span or span
    arg_spans = value.arg_spans if len(value.arg_spans) == len(value.args) else ()
    kw_spans = value.kwarg_spans if len(value.kwarg_spans) == len(value.kwargs) else ()
    args = [(a, arg_spans[i] if arg_spans else s) for i, a in enumerate(value.args)]
    kwargs = [
        (k, v, *(kw_spans[i] if kw_spans else (s, s))) for i, (k, v) in enumerate(value.kwargs)
    ]
    return bind(signature, value.name, args, kwargs, s)


def convert_named(arg: Arg, callee: str, value: Any, span: Span) -> Any:
    """Convert one argument; errors name the argument and its callee."""
    try:
        return arg.convert(value, span)
    except DslcError as e:
        d = e.diagnostics[0]
        raise DslcError(f"`{arg.name}` of `{callee}`: {d.message}", d.span, d.hint) from None


def _accepts(signature: Signature) -> str:
    names = signature.names()
    return f"it accepts {', '.join(f'`{n}`' for n in names)}" if names else "it takes no arguments"


def describe(callee: str, signature: Signature) -> str:
    """The signature as users write it: `Dense(units, bias = true, ...)`."""
    parts = []
    for a in signature.args:
        if a.default is REQUIRED:
            parts.append(a.name)
        else:
            parts.append(f"{a.name} = {show_value(a.default)}")
    return f"{callee}({', '.join(parts)})"


def show_value(v: Any) -> str:
    """A value as it would be written in a `.nn` file."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, Word):
        return v.name
    if isinstance(v, tuple):
        return "(" + ", ".join(show_value(x) for x in v) + ")"
    if isinstance(v, list):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    if isinstance(v, CallValue):
        items = [show_value(a) for a in v.args] + [f"{k} = {show_value(x)}" for k, x in v.kwargs]
        return f"{v.name}({', '.join(items)})" if items else v.name
    return repr(v)


def kind_of(v: Any) -> str:
    """A short user-facing description of a value's kind, for error messages."""
    if isinstance(v, bool):
        return f"the boolean `{show_value(v)}`"
    if isinstance(v, int):
        return f"the integer {v}"
    if isinstance(v, float):
        return f"the number {v:g}"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, Word):
        return f"`{v.name}`"
    if isinstance(v, tuple):
        return f"the tuple {show_value(v)}"
    if isinstance(v, list):
        return f"the list {show_value(v)}"
    if isinstance(v, CallValue):
        return f"the call `{show_value(v)}`"
    return repr(v)


# ---------------------------------------------------------------- converters


def integer(lo: int | None = None, hi: int | None = None) -> Converter:
    """An int, optionally bounded (inclusive)."""

    def conv(v: Any, span: Span) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DslcError(f"expected an integer, got {kind_of(v)}", span)
        _bounds(v, lo, hi, False, False, span)
        return v

    return conv


def number(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Converter:
    """A float (ints accepted), optionally bounded."""

    def conv(v: Any, span: Span) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise DslcError(f"expected a number, got {kind_of(v)}", span)
        _bounds(v, lo, hi, lo_open, hi_open, span)
        return float(v)

    return conv


def _bounds(v: float, lo, hi, lo_open: bool, hi_open: bool, span: Span) -> None:
    bad = (lo is not None and (v < lo or (lo_open and v == lo))) or (
        hi is not None and (v > hi or (hi_open and v == hi))
    )
    if bad:
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
        rng = " and ".join(x for x in (left, right) if x)
        raise DslcError(f"value {v:g} is out of range: it must be {rng}", span)


def boolean(v: Any, span: Span) -> bool:
    """`true` or `false`."""
    if not isinstance(v, bool):
        raise DslcError(f"expected `true` or `false`, got {kind_of(v)}", span)
    return v


def word(*choices: str, strings: bool = True) -> Converter:
    """One of a fixed set of bare words (a string literal with the same text is accepted too)."""

    def conv(v: Any, span: Span) -> str:
        text = v.name if isinstance(v, Word) else v if (strings and isinstance(v, str)) else None
        if text not in choices:
            hint = did_you_mean(text, choices) if text else None
            raise DslcError(
                f"expected one of {', '.join(f'`{c}`' for c in choices)}, got {kind_of(v)}",
                span,
                hint,
            )
        return text

    return conv


def string(v: Any, span: Span) -> str:
    """A string literal."""
    if not isinstance(v, str):
        raise DslcError(f'expected a string such as "file.csv", got {kind_of(v)}', span)
    return v


def int_or_tuple(lo: int = 1) -> Converter:
    """An int or a tuple of ints, each >= lo; returned unchanged (shaped later by rank)."""
    one = integer(lo)

    def conv(v: Any, span: Span) -> int | tuple[int, ...]:
        if isinstance(v, tuple) and v:
            return tuple(one(x, span) for x in v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise DslcError(f"expected an integer or a tuple of integers, got {kind_of(v)}", span)
        return one(v, span)

    return conv


def optional(conv: Converter) -> Converter:
    """`none` or a value accepted by conv."""

    def wrapped(v: Any, span: Span) -> Any:
        if isinstance(v, Word) and v.name == "none":
            return None
        return conv(v, span)

    return wrapped


def tuple_of(conv: Converter, n: int | None = None) -> Converter:
    """A tuple (of length n when given) whose items conv accepts."""

    def wrapped(v: Any, span: Span) -> tuple:
        if not isinstance(v, tuple | list):
            raise DslcError(f"expected a tuple, got {kind_of(v)}", span)
        if n is not None and len(v) != n:
            raise DslcError(f"expected a tuple of {n} values, got {len(v)}", span)
        return tuple(conv(x, span) for x in v)

    return wrapped


def anything(v: Any, span: Span) -> Any:
    """Any value; checked later by the entry's own rule."""
    return v


def per_dim(value: int | tuple[int, ...], n: int, what: str, span: Span) -> tuple[int, ...]:
    """An int or tuple expanded to one int per spatial dimension."""
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise DslcError(
            f"{what} needs {n} value{'s' if n > 1 else ''} (one per spatial dimension), "
            f"got {show_value(value)}",
            span,
        )
    return tuple(value)
