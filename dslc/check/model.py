"""The checked model: what the checker hands to lowering.

Blocks are inlined, names resolved, every value typed, every layer instance
named as LANGUAGE.md §6 and its arguments resolved to plain Python values with
defaults filled in. Lowering never looks at the AST.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslc.errors import Span

Dim = int | str  # a per-example dimension: fixed size, or a symbolic name such as "T"


@dataclass(frozen=True)
class TensorType:
    """dtype ("float32" or "int64") and per-example shape; `batched` is False for losses."""

    dtype: str
    shape: tuple[Dim, ...]
    batched: bool = True

    def __str__(self) -> str:
        kind = {"float32": "float", "int64": "int"}.get(self.dtype, self.dtype)
        return f"{kind}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class CallValue:
    """A call used as an argument value, resolved: `l2(1e-4)`, `normal(std = 0.02)`.

    `arg_spans` and `kwarg_spans` (key span, value span) locate the arguments as
    written, so that an error points at the culprit; they take no part in equality.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    span: Span | None = None
    arg_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    kwarg_spans: tuple[tuple[Span, Span], ...] = field(default=(), compare=False, repr=False)

    def kw(self) -> dict[str, Any]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter or buffer of a layer instance, with its full §6 name and PyTorch layout."""

    name: str  # full name, e.g. "stem.conv2d_1.weight"
    shape: tuple[int, ...]
    init: CallValue  # initialiser, e.g. CallValue("glorot_uniform"), CallValue("zeros")
    trainable: bool = True  # False for buffers (BatchNorm running statistics)
    is_kernel: bool = False  # True for the weights that `on = weights` selects
    fan_in: int = 0  # for glorot/he initialisers, as PyTorch's _calculate_fan_in_and_fan_out
    fan_out: int = 0


@dataclass(frozen=True)
class LayerInstance:
    """A named layer with its resolved arguments; several graph nodes may apply it (shared)."""

    name: str  # full name: "head", "dense_1", "stem.conv2d_1"
    kind: str  # catalogue name: "Dense", "Conv2D", ...
    args: dict[str, Any]  # every argument of the signature, defaults filled, normalised
    params: tuple[ParamSpec, ...]
    span: Span


@dataclass(frozen=True)
class GNode:
    """One node of the checked model's dataflow graph (blocks already inlined).

    op is one of:
      "input"  attrs {"name"}           a declared input
      "target" attrs {"name"}           a declared target
      "const"  attrs {"value"}          a numeric literal used as a tensor (float)
      "layer"  attrs {"layer"}          applies LayerInstance `layer` to inputs[0]
      "fn"     attrs {"name", "kwargs"} a catalogue function, loss or metric; kwargs a dict
                                        of resolved keyword arguments with defaults filled
      "binop"  attrs {"op"}             + - * / @ with NumPy broadcasting
      "neg"    attrs {}                 unary minus
    """

    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict[str, Any]
    type: TensorType
    span: Span


@dataclass(frozen=True)
class RegTerm:
    """A resolved regulariser: adds coeff * sum(w**2) (l2) or coeff * sum(|w|) (l1) per param."""

    kind: str  # "l1" or "l2"
    coeff: float
    params: tuple[str, ...]
    span: Span | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimiser with every option filled: lr, betas, eps, weight_decay, momentum, ..."""

    kind: str  # "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"
    options: dict[str, Any]  # includes clip_norm / clip_value (None when absent)
    span: Span | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str  # "constant", "step", "exponential", "cosine", "linear_warmup"
    options: dict[str, Any]
    span: Span | None = None


@dataclass(frozen=True)
class EarlyStoppingSpec:
    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    mode: str = "auto"  # auto|min|max
    restore_best: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The `train { }` block with defaults filled; CLI flags override fields later."""

    data: str = "digits"
    validation: float | str = 0.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: OptimizerSpec = field(
        default_factory=lambda: OptimizerSpec(
            "Adam",
            {
                "lr": 1e-3,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.0,
                "clip_norm": None,
                "clip_value": None,
            },
        )
    )
    schedule: ScheduleSpec = field(default_factory=lambda: ScheduleSpec("constant", {}))
    regularize: tuple[RegTerm, ...] = ()
    shuffle: bool = True
    seed: int = 0
    early_stopping: EarlyStoppingSpec | None = None
    device: str = "auto"


@dataclass(frozen=True)
class Declared:
    """A declared input or target."""

    name: str
    type: TensorType
    span: Span


@dataclass(frozen=True)
class CheckedModel:
    """A fully checked model: the input of lowering."""

    name: str
    file: str
    inputs: tuple[Declared, ...]
    targets: tuple[Declared, ...]
    nodes: tuple[GNode, ...]  # topologically ordered; GNode.id == index
    layers: dict[str, LayerInstance]  # by full name, in source order
    outputs: tuple[tuple[str, int], ...]  # (output name, node id)
    loss: int | None  # node id of the scalar loss expression
    metrics: tuple[tuple[str, int], ...]  # (metric name, node id)
    regularizers: tuple[RegTerm, ...]  # per-layer and global, resolved to parameter names
    train: TrainConfig

    def params(self) -> list[ParamSpec]:
        """Every parameter and buffer, in layer source order."""
        return [p for layer in self.layers.values() for p in layer.params]
