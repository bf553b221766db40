"""Metrics: accuracy and top-k accuracy (mse and mae are shared with the losses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dslc.ir.graph import Builder, Value
from dslc.lower.functions import const, mean_all, register_fn, to_float
from dslc.lower.losses import align


def _class_labels(b: Builder, logits: Value, labels: Value) -> Value:
    """Integer class labels; probabilities (or one-hot labels) give their argmax."""
    if labels.dtype.startswith("int"):
        return labels
    return b.op("argmax", labels, axis=labels.rank - 1, keepdims=0)


@register_fn("accuracy")
def lower_accuracy(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Fraction of positions whose argmax equals the label.

    With one logit per position (`[..., 1]`, as the checker allows) it is binary:
    logit > 0 against target > 0.5.
    """
    logits, labels = args[0], args[1]
    if logits.shape[-1] == 1:
        p, t = align(b, logits, labels)
        hit = b.op("equal", b.op("greater", p, const(b, 0.0, p)),
                   b.op("greater", t, const(b, 0.5, t)))
        return mean_all(b, to_float(b, hit))
    pred = b.op("argmax", logits, axis=logits.rank - 1, keepdims=0)
    hit = b.op("equal", pred, _class_labels(b, logits, labels))
    return mean_all(b, to_float(b, hit))


@register_fn("top_k_accuracy")
def lower_top_k_accuracy(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Fraction of examples whose label's logit has fewer than k logits strictly above it."""
    logits, labels = args[0], _class_labels(b, args[0], args[1])
    k = int(kw.get("k", 5))
    idx = b.op("unsqueeze", labels, axes=(labels.rank,))
    true_logit = b.op("gather_elements", logits, idx, axis=logits.rank - 1)
    above = to_float(b, b.op("greater", logits, true_logit))
    count = b.op("reduce_sum", above, axes=(logits.rank - 1,), keepdims=0)
    hit = b.op("less", count, const(b, float(k), count))
    return mean_all(b, to_float(b, hit))
