"""Metrics: float scalars averaged over the examples; not differentiable, so never part of `loss`.

`accuracy` and `top_k_accuracy` take scores `[..., C]` (logits or
probabilities) with int labels `[...]`, or float targets of the scores' shape
(compared by argmax). `accuracy` on one logit per position `[..., 1]` with
float targets is binary, as Keras's with a sigmoid output: logit > 0 against
target > 0.5. `mse` and `mae` are the losses of the same name.
"""

from __future__ import annotations

from dslc.catalogue.functions import FnDef
from dslc.catalogue.layers import numel
from dslc.catalogue.losses import LOSSES, SCALAR, check_class_targets
from dslc.catalogue.signature import Arg, integer, sig
from dslc.check.model import TensorType
from dslc.errors import DslcError


def _is_binary(logits: TensorType, targets: TensorType) -> bool:
    """One float logit per position `[..., 1]` against float targets `[..., 1]` or `[...]`.

    Int targets stay class indices (the data checks bound them by the class count).
    """
    return (
        logits.dtype == "float32"
        and targets.dtype == "float32"
        and logits.shape[-1:] == (1,)
        and targets.shape in (logits.shape, logits.shape[:-1])
    )


def _accuracy(ts, opts, span):
    if not _is_binary(ts[0], ts[1]):
        check_class_targets("accuracy", ts[0], ts[1], span, probs_ok=True)
    return opts, SCALAR


def _top_k(ts, opts, span):
    check_class_targets("top_k_accuracy", ts[0], ts[1], span, probs_ok=True)
    c = ts[0].shape[-1]
    if isinstance(c, int) and opts["k"] > c:
        raise DslcError(f"`top_k_accuracy`: k = {opts['k']} exceeds the {c} classes", span)
    return opts, SCALAR


METRICS: dict[str, FnDef] = {
    "accuracy": FnDef(
        "accuracy",
        2,
        sig(),
        _accuracy,
        lambda ts, o: numel(ts[0].shape),
        "metric",
        doc="fraction of positions whose argmax matches the label",
    ),
    "top_k_accuracy": FnDef(
        "top_k_accuracy",
        2,
        sig(Arg("k", integer(1), 5, "int >= 1")),
        _top_k,
        lambda ts, o: 2 * numel(ts[0].shape),
        "metric",
        doc="fraction of positions whose label is among the k top scores",
    ),
    "mse": LOSSES["mse"],
    "mae": LOSSES["mae"],
}
