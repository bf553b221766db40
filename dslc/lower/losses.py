"""Losses as compositions of primitives, each the mean over the batch as torch's reduction='mean'.

Extra per-example axes are averaged too (a per-step [T, C] cross-entropy
averages over batch·T, as torch does on flattened inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dslc.ir.graph import Builder, Value
from dslc.lower.functions import const, mean_all, register_fn, to_float


def align(b: Builder, pred: Value, target: Value) -> tuple[Value, Value]:
    """Give target the dtype of pred and, when one has an extra trailing 1, the same rank."""
    target = to_float(b, target) if target.dtype != pred.dtype else target
    if target.rank == pred.rank - 1 and pred.shape[-1] == 1:
        target = b.op("unsqueeze", target, axes=(target.rank,))
    elif pred.rank == target.rank - 1 and target.shape[-1] == 1:
        pred = b.op("unsqueeze", pred, axes=(pred.rank,))
    return pred, target


def _pick(b: Builder, x: Value, labels: Value) -> Value:
    """x[..., labels] along the last axis, keeping a trailing axis of 1."""
    idx = b.op("unsqueeze", labels, axes=(labels.rank,))
    return b.op("gather_elements", x, idx, axis=x.rank - 1)


@register_fn("cross_entropy")
def lower_cross_entropy(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """torch.nn.functional.cross_entropy on logits [.., C] with class indices or probabilities."""
    logits, labels = args[0], args[1]
    eps = float(kw.get("label_smoothing", 0.0) or 0.0)
    c = logits.shape[-1]
    lsm = b.op("log_softmax", logits, axis=logits.rank - 1)
    if labels.dtype.startswith("int"):
        nll = b.op("neg", _pick(b, lsm, labels))
        if eps == 0.0:
            return mean_all(b, nll)
        # torch: (1-ε)·nll + ε·mean over classes of −log p
        smooth = b.op("neg", b.op("reduce_mean", lsm, axes=(lsm.rank - 1,), keepdims=1))
        mixed = b.op("add", b.op("mul", nll, const(b, 1.0 - eps, nll)),
                     b.op("mul", smooth, const(b, eps, smooth)))
        return mean_all(b, mixed)
    probs = to_float(b, labels)
    if eps != 0.0:
        probs = b.op("add", b.op("mul", probs, const(b, 1.0 - eps, probs)),
                     const(b, eps / float(c), probs))
    per = b.op("neg", b.op("reduce_sum", b.op("mul", probs, lsm), axes=(lsm.rank - 1,),
                           keepdims=0))
    return mean_all(b, per)


@register_fn("nll")
def lower_nll(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """torch.nn.functional.nll_loss: −mean of log_probs at the labels."""
    return mean_all(b, b.op("neg", _pick(b, args[0], args[1])))


@register_fn("binary_cross_entropy")
def lower_binary_cross_entropy(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """BCE on logits in torch's stable form: max(x,0) − x·y + log(1 + exp(−|x|))."""
    x, y = align(b, args[0], args[1])
    softplus = b.op("log", b.op("add", b.op("exp", b.op("neg", b.op("abs", x))), const(b, 1.0, x)))
    per = b.op("add", b.op("sub", b.op("relu", x), b.op("mul", x, y)), softplus)
    return mean_all(b, per)


@register_fn("mse")
def lower_mse(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Mean squared error."""
    p, t = align(b, args[0], args[1])
    return mean_all(b, b.op("square", b.op("sub", p, t)))


@register_fn("mae")
def lower_mae(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """Mean absolute error."""
    p, t = align(b, args[0], args[1])
    return mean_all(b, b.op("abs", b.op("sub", p, t)))


@register_fn("huber")
def lower_huber(b: Builder, args: Sequence[Value], kw: Mapping[str, Any]) -> Value:
    """torch.nn.HuberLoss: 0.5·d² for |d| < δ, else δ·(|d| − δ/2).

    Written as 0.5·q² + δ·(|d| − q) with q = min(|d|, δ), which needs no select.
    """
    p, t = align(b, args[0], args[1])
    delta = float(kw.get("delta", 1.0))
    d = b.op("abs", b.op("sub", p, t))
    q = b.op("min2", d, const(b, delta, d))
    quad = b.op("mul", b.op("square", q), const(b, 0.5, q))
    lin = b.op("mul", b.op("sub", d, q), const(b, delta, d))
    return mean_all(b, b.op("add", quad, lin))
