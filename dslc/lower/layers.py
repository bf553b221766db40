"""Per-kind layer lowering: a registry from layer kind to a function of one layer application.

Each layer kind is one function `LayerCall -> LayerResult` registered under its
catalogue name; other modules of this package add their kinds with
`@register_layer("Conv2D")`. Layers are compositions of primitives: their
gradients come from autodiff, never from hand-written rules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dslc.check.model import GNode, LayerInstance
from dslc.ir.graph import Builder, IRError, Value


@dataclass(frozen=True)
class LayerCall:
    """One application of a layer instance to a value, with what a lowering may need."""

    b: Builder
    layer: LayerInstance
    x: Value
    params: Mapping[str, Value]  # every parameter and buffer of the model, by full name
    mode: str  # "train" | "eval" | "infer"
    node: GNode  # the application; its id distinguishes applications of a shared layer
    seed: Value | None = None  # int64 scalar (train mode), for reproducible randomness
    step: Value | None = None  # int64 scalar (train mode): optimiser steps already taken

    def param(self, short: str) -> Value:
        """The value of this layer's parameter `short` (`weight`, `bias`, `running_mean`)."""
        return self.params[f"{self.layer.name}.{short}"]

    def has_param(self, short: str) -> bool:
        return f"{self.layer.name}.{short}" in self.params


@dataclass(frozen=True)
class LayerResult:
    """The layer's output and, in train mode, new values of its buffers by full name."""

    value: Value
    buffer_updates: Mapping[str, Value] = field(default_factory=dict)


LayerLowering = Callable[[LayerCall], "LayerResult | Value"]

LAYER_LOWERINGS: dict[str, LayerLowering] = {}


def register_layer(kind: str) -> Callable[[LayerLowering], LayerLowering]:
    """Decorator: register the lowering of layer kind `kind`."""

    def deco(fn: LayerLowering) -> LayerLowering:
        if kind in LAYER_LOWERINGS:
            raise IRError(f"layer kind {kind!r} lowered twice")
        LAYER_LOWERINGS[kind] = fn
        return fn

    return deco


def _load_package_modules() -> None:
    # Layer kinds may live in any module of dslc.lower; import them all once on a miss.
    import dslc.lower as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def layer_lowering(kind: str) -> LayerLowering:
    """The registered lowering for `kind`; IRError when none is registered."""
    if kind not in LAYER_LOWERINGS:
        _load_package_modules()
    try:
        return LAYER_LOWERINGS[kind]
    except KeyError:
        raise IRError(f"no lowering for layer kind {kind!r}") from None


def apply_layer(call: LayerCall) -> LayerResult:
    """Lower one layer application under the layer's name scope."""
    with call.b.scope(call.layer.name):
        out = layer_lowering(call.layer.kind)(call)
    return out if isinstance(out, LayerResult) else LayerResult(out)


# ---------------------------------------------------------------- dense and shape-only layers


@register_layer("Dense")
def lower_dense(call: LayerCall) -> LayerResult:
    """y = x · Wᵀ + b on the last axis, W stored [units, in] as torch.nn.Linear."""
    b, x = call.b, call.x
    w = call.param("weight")
    use_bias = call.layer.args.get("bias", True) and call.has_param("bias")
    bias = call.param("bias") if use_bias else None
    if x.rank == 2:
        # Gemm with the bias fused: the form ONNX Runtime runs fastest.
        return LayerResult(b.op("gemm", x, w, bias, trans_b=1))
    y = b.op("matmul", x, b.op("transpose", w, perm=(1, 0)))
    return LayerResult(b.op("add", y, bias) if bias is not None else y)


@register_layer("Flatten")
def lower_flatten_layer(call: LayerCall) -> LayerResult:
    """Flatten every per-example axis into one."""
    from dslc.lower.functions import flatten

    return LayerResult(flatten(call.b, call.x))
