"""Losses: each gives the mean over the batch (and over any other axes) as a float scalar.

`cross_entropy` and `nll` put the classes on the last per-example axis:
logits `[..., C]` with int labels `[...]`, or (cross_entropy only) float
probabilities of the logits' shape.
"""

from __future__ import annotations

from dslc.catalogue.functions import FnDef
from dslc.catalogue.layers import numel, show_shape
from dslc.catalogue.signature import Arg, number, sig
from dslc.check.model import TensorType
from dslc.errors import DslcError, Span

SCALAR = TensorType("float32", (), batched=False)


def _float(loss: str, what: str, t: TensorType, span: Span) -> None:
    if t.dtype != "float32":
        raise DslcError(f"`{loss}` expects float {what}, got {t}", span)


def check_class_targets(
    name: str, logits: TensorType, labels: TensorType, span: Span, probs_ok: bool
) -> None:
    """Labels: int `[...]` for logits `[..., C]`, or (when probs_ok) float of the logits' shape."""
    _float(name, "logits", logits, span)
    if not logits.shape:
        raise DslcError(
            f"`{name}` expects logits [..., C] with a class axis, got {logits}",
            span,
            "a single score per example calls for binary_cross_entropy",
        )
    c = logits.shape[-1]
    if c == 1:
        raise DslcError(
            f"`{name}` needs at least 2 classes, but the logits are {logits}",
            span,
            "with one logit per example use binary_cross_entropy",
        )
    if labels.dtype == "int64":
        if labels.shape != logits.shape[:-1]:
            raise DslcError(
                f"`{name}`: int labels must have shape {show_shape(logits.shape[:-1])} "
                f"for logits {show_shape(logits.shape)}, got {show_shape(labels.shape)}",
                span,
                "labels hold one class index per position; the logits' last axis is the classes",
            )
        return
    if not probs_ok:
        raise DslcError(
            f"`{name}` expects int class labels, got {labels}",
            span,
            "declare the target as int[...]",
        )
    if labels.shape != logits.shape:
        raise DslcError(
            f"`{name}`: float targets are class probabilities of the logits' shape "
            f"{show_shape(logits.shape)}, got {show_shape(labels.shape)}",
            span,
            f"for class indices declare the target as int{show_shape(logits.shape[:-1])}",
        )


def _ce_infer(ts, opts, span):
    check_class_targets("cross_entropy", ts[0], ts[1], span, probs_ok=True)
    return opts, SCALAR


def _nll_infer(ts, opts, span):
    check_class_targets("nll", ts[0], ts[1], span, probs_ok=False)
    return opts, SCALAR


def same_shape_float(name: str, a: TensorType, b: TensorType, span: Span) -> None:
    """Both float and of one shape (regression losses and metrics)."""
    _float(name, "predictions", a, span)
    if b.dtype != "float32":
        raise DslcError(
            f"`{name}` expects float targets, got {b}",
            span,
            f"declare the target as float{show_shape(b.shape)}",
        )
    if a.shape != b.shape:
        hint = None
        if a.shape == b.shape + (1,):
            hint = (
                f"declare the target as float{show_shape(a.shape)}, "
                "or produce predictions without the last axis"
            )
        elif b.shape == a.shape + (1,):
            hint = f"declare the target as float{show_shape(a.shape)}"
        raise DslcError(
            f"`{name}`: predictions {show_shape(a.shape)} and targets "
            f"{show_shape(b.shape)} differ in shape",
            span,
            hint,
        )


def _pair(name: str):
    def infer(ts, opts, span):
        same_shape_float(name, ts[0], ts[1], span)
        return opts, SCALAR

    return infer


def _bce_infer(ts, opts, span):
    same_shape_float("binary_cross_entropy", ts[0], ts[1], span)
    return opts, SCALAR


def _cost(k: int):
    return lambda ts, out: k * numel(ts[0].shape)


LOSSES: dict[str, FnDef] = {
    f.name: f
    for f in (
        FnDef(
            "cross_entropy",
            2,
            sig(Arg("label_smoothing", number(0, 1, hi_open=True), 0.0, "float in [0, 1)")),
            _ce_infer,
            _cost(6),
            "loss",
            doc="softmax cross-entropy on logits; int labels or float probabilities",
        ),
        FnDef(
            "binary_cross_entropy",
            2,
            sig(),
            _bce_infer,
            _cost(6),
            "loss",
            doc="sigmoid cross-entropy on logits, targets in [0, 1] of the logits' shape",
        ),
        FnDef("mse", 2, sig(), _pair("mse"), _cost(3), "loss", doc="mean squared error"),
        FnDef("mae", 2, sig(), _pair("mae"), _cost(3), "loss", doc="mean absolute error"),
        FnDef(
            "huber",
            2,
            sig(Arg("delta", number(0, lo_open=True), 1.0, "float > 0")),
            _pair("huber"),
            _cost(5),
            "loss",
            doc="torch.nn.HuberLoss",
        ),
        FnDef(
            "nll",
            2,
            sig(),
            _nll_infer,
            _cost(2),
            "loss",
            doc="negative log-likelihood of log-probabilities [..., C], int labels [...]",
        ),
    )
}
