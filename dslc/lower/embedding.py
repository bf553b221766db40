"""Embedding: a table lookup (Gather on axis 0), as torch.nn.Embedding.

The gradient comes from the gather primitive's VJP, a ScatterND with
reduction add into a zero table, so repeated ids accumulate exactly. Ids
outside [0, num) are refused when the data is validated (dslc/runtime/data.py),
never clamped.
"""

from __future__ import annotations

from dslc.lower.layers import LayerCall, LayerResult, register_layer


@register_layer("Embedding")
def lower_embedding(call: LayerCall) -> LayerResult:
    """ids [N, ...] (int64) -> weight[ids], float [N, ..., dim]."""
    return LayerResult(call.b.op("gather", call.param("weight"), call.x, axis=0))
