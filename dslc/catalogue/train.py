"""The keys of `train { }`, their value rules and defaults, and `EarlyStopping(...)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.catalogue.optimizers import resolve_optimizer
from dslc.catalogue.regularizers import resolve_regularizer
from dslc.catalogue.schedules import resolve_schedule
from dslc.catalogue.signature import (
    Arg,
    Word,
    bind_call_value,
    boolean,
    did_you_mean,
    integer,
    kind_of,
    number,
    sig,
    string,
    word,
)
from dslc.check.model import CallValue, EarlyStoppingSpec
from dslc.errors import DslcError, Span

# Datasets given as calls: `text(path, seq_len)` cuts a text file into sequences.
DATA_CALLS = {
    "text": sig(Arg("path", string, type="string"), Arg("seq_len", integer(1), 64, "int >= 1")),
}


def resolve_data(value: Any, span: Span) -> str | CallValue:
    """`data`: a dataset name or path string, or a call such as `text("a.txt", seq_len = 64)`."""
    if isinstance(value, str):
        return value
    if isinstance(value, CallValue):
        s = value.span or span
        if value.name not in DATA_CALLS:
            raise DslcError(
                f"unknown dataset kind `{value.name}`",
                s,
                did_you_mean(value.name, list(DATA_CALLS)),
            )
        opts = bind_call_value(DATA_CALLS[value.name], value, s)
        return CallValue(value.name, (), tuple(opts.items()), s)
    hint = f'write it as a string: "{value.name}"' if isinstance(value, Word) else None
    raise DslcError(
        f'`data` expects a string such as "digits" or "data.npz", got {kind_of(value)}', span, hint
    )


def _validation(value: Any, span: Span) -> float | str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DslcError(
            f"`validation` expects a fraction in [0, 1) or a dataset string, got {kind_of(value)}",
            span,
        )
    if not 0 <= value < 1:
        raise DslcError(f"`validation` fraction must be in [0, 1), got {value:g}", span)
    return float(value)


def _regularize(value: Any, span: Span) -> tuple[CallValue, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(resolve_regularizer(v, span) for v in items)


def _monitor(value: Any, span: Span) -> str:
    if isinstance(value, Word):
        return value.name
    if isinstance(value, str):
        return value
    raise DslcError(
        f"`monitor` expects a metric name such as `val_loss`, got {kind_of(value)}", span
    )


EARLY_STOPPING = sig(
    Arg("monitor", _monitor, "val_loss", "loss|val_loss|METRIC|val_METRIC"),
    Arg("patience", integer(0), 5, "int >= 0"),
    Arg("min_delta", number(0), 0.0, "float >= 0"),
    Arg("mode", word("auto", "min", "max"), "auto", "auto|min|max"),
    Arg("restore_best", boolean, True, "bool"),
)


def resolve_early_stopping(value: Any, span: Span) -> EarlyStoppingSpec:
    """`EarlyStopping(...)` with every option filled in (the monitor is checked by the checker)."""
    if isinstance(value, Word) and value.name == "EarlyStopping":
        value = CallValue("EarlyStopping", span=span)
    if not isinstance(value, CallValue) or value.name != "EarlyStopping":
        hint = did_you_mean(value.name, ["EarlyStopping"]) if isinstance(value, CallValue) else None
        raise DslcError(
            f"`early_stopping` expects `EarlyStopping(...)`, got {kind_of(value)}", span, hint
        )
    s = value.span or span
    opts = bind_call_value(EARLY_STOPPING, value, s)
    return EarlyStoppingSpec(**opts)


def _device(value: Any, span: Span) -> str:
    if isinstance(value, Word | str) and str(value) in ("gpu", "GPU"):
        raise DslcError(
            f"expected one of `auto`, `cpu`, `cuda`, got {kind_of(value)}",
            span,
            "did you mean `cuda`?",
        )
    return word("auto", "cpu", "cuda")(value, span)


@dataclass(frozen=True)
class TrainKey:
    """A key of `train { }`: its value rule and a description for the docs."""

    name: str
    convert: Callable[[Any, Span], Any]
    doc: str


TRAIN_KEYS: dict[str, TrainKey] = {
    k.name: k
    for k in (
        TrainKey(
            "data",
            resolve_data,
            '"digits" | "file.npz" | "file.csv" | text("file.txt", seq_len = 64)',
        ),
        TrainKey("validation", _validation, "fraction in [0, 1) or a dataset string"),
        TrainKey("epochs", integer(1), "int >= 1"),
        TrainKey("batch_size", integer(1), "int >= 1"),
        TrainKey(
            "optimizer",
            resolve_optimizer,
            "SGD(...) | Adam(...) | AdamW(...) | RMSprop(...) | Adagrad(...)",
        ),
        TrainKey(
            "schedule",
            resolve_schedule,
            "constant | step(...) | exponential(...) | cosine(...) | linear_warmup(...)",
        ),
        TrainKey("regularize", _regularize, "[l1(c, on = SEL), l2(c, on = SEL), ...]"),
        TrainKey("shuffle", boolean, "bool"),
        TrainKey("seed", integer(0), "int >= 0"),
        TrainKey("early_stopping", resolve_early_stopping, "EarlyStopping(...)"),
        TrainKey("device", _device, "auto | cpu | cuda"),
    )
}
