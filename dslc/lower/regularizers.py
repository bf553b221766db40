"""Regularisation terms (Keras convention): l2 adds c·Σw², l1 adds c·Σ|w|."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dslc.check.model import RegTerm
from dslc.ir.graph import Builder, IRError, Value
from dslc.lower.functions import const, sum_all


def regularization(b: Builder, terms: Sequence[RegTerm],
                   params: Mapping[str, Value]) -> Value | None:
    """The sum of every term over its parameters; None when there is nothing to add."""
    total: Value | None = None
    for term in terms:
        for name in term.params:
            if name not in params:
                continue
            w = params[name]
            with b.scope(f"reg.{term.kind}.{name}"):
                if term.kind == "l2":
                    s = sum_all(b, b.op("square", w))
                elif term.kind == "l1":
                    s = sum_all(b, b.op("abs", w))
                else:
                    raise IRError(f"unknown regulariser {term.kind!r}")
                s = b.op("mul", s, const(b, float(term.coeff), s))
            total = s if total is None else b.op("add", total, s)
    return total
