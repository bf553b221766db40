"""The abstract syntax tree of a `.nn` file: frozen dataclasses, each with its source span."""

from __future__ import annotations

from dataclasses import dataclass

from dslc.errors import Span

# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Name:
    """A bare identifier: a value, a shared layer, a function, or an enum word (`same`)."""

    id: str
    span: Span


@dataclass(frozen=True)
class Number:
    """A numeric literal; `value` is an int when the text has no `.` or exponent."""

    value: int | float
    text: str
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class TupleExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Keyword:
    """`key = value` inside a call's argument list."""

    key: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    """`callee(args..., key = value...)`; `callee_span` covers the callee's name only."""

    callee: str
    callee_span: Span
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: `Name` or `Call`, optionally labelled (`head: Dense(10)`)."""

    label: str | None
    label_span: Span | None
    expr: Name | Call
    span: Span


@dataclass(frozen=True)
class Pipeline:
    """`source -> stage -> stage ...`."""

    source: Expr
    stages: tuple[Stage, ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    """Binary arithmetic: `op` is one of `+ - * / @`."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    """Unary minus on a non-literal (a negative literal parses as a `Number`)."""

    operand: Expr
    span: Span


Expr = Name | Number | String | Bool | TupleExpr | ListExpr | Call | Pipeline | BinOp | Neg

# ---------------------------------------------------------------- types


@dataclass(frozen=True)
class Dim:
    """One per-example dimension: an int, or a name for a symbolic size (`T`)."""

    value: int | str
    span: Span


@dataclass(frozen=True)
class TypeExpr:
    """`float[d1, d2]` or `int[...]`; `[]` (no dims) is a scalar per example."""

    dtype: str  # "float" or "int"
    dims: tuple[Dim, ...]
    span: Span


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class InputStmt:
    """`input NAME: TYPE` (in a block, `input NAME` with no type)."""

    name: str
    name_span: Span
    type: TypeExpr | None
    span: Span


@dataclass(frozen=True)
class TargetStmt:
    name: str
    name_span: Span
    type: TypeExpr
    span: Span


@dataclass(frozen=True)
class AssignStmt:
    """`NAME = EXPR`."""

    name: str
    name_span: Span
    value: Expr
    span: Span


@dataclass(frozen=True)
class LayerStmt:
    """`layer NAME = Ctor(args)`: a shared layer instance."""

    name: str
    name_span: Span
    call: Call
    span: Span


@dataclass(frozen=True)
class OutputStmt:
    """`output NAME = EXPR`, `output NAME`, or in a block `output EXPR` (name None)."""

    name: str | None
    name_span: Span | None
    value: Expr | None
    span: Span


@dataclass(frozen=True)
class LossStmt:
    value: Expr
    span: Span


@dataclass(frozen=True)
class MetricStmt:
    """`metric EXPR` or `metric NAME = EXPR`."""

    name: str | None
    name_span: Span | None
    value: Expr
    span: Span


Stmt = InputStmt | TargetStmt | AssignStmt | LayerStmt | OutputStmt | LossStmt | MetricStmt

# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Param:
    """A block parameter, with an optional default."""

    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class ModelDecl:
    name: str
    name_span: Span
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class BlockDecl:
    name: str
    name_span: Span
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class TrainItem:
    """`key = value` inside `train { ... }`."""

    key: str
    key_span: Span
    value: Expr
    span: Span


@dataclass(frozen=True)
class TrainDecl:
    items: tuple[TrainItem, ...]
    span: Span


Decl = ModelDecl | BlockDecl | TrainDecl


@dataclass(frozen=True)
class Module:
    """A whole `.nn` file."""

    file: str
    decls: tuple[Decl, ...]
    span: Span
