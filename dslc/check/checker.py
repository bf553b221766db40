"""The checker: `ast.Module` to `CheckedModel`.

It resolves names, inlines blocks, names layer instances as LANGUAGE.md §6,
binds every call to its catalogue signature, infers per-example types with
symbolic dimensions and resolves the `train` block. Errors are collected per
statement, so one run reports every independent mistake; a statement that
fails poisons the names it defines, which keeps later uses of them quiet.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dslc.catalogue import FUNCTION_LIKE, LAYERS, METRIC_ONLY
from dslc.catalogue.layers import show_shape
from dslc.catalogue.regularizers import select
from dslc.catalogue.signature import Word, bind, did_you_mean, kind_of
from dslc.catalogue.train import TRAIN_KEYS
from dslc.check.model import (
    CallValue,
    CheckedModel,
    Declared,
    Dim,
    GNode,
    LayerInstance,
    RegTerm,
    TensorType,
    TrainConfig,
)
from dslc.errors import Diagnostic, DslcError, Span
from dslc.syntax import ast

_DTYPES = {"float": "float32", "int": "int64"}

# Keys of each epoch's record in metrics.jsonl besides the metrics (validation ones add val_).
_RESERVED_METRICS = frozenset({"loss", "epoch", "step", "lr", "time_s", "samples_per_s"})

# Names of the training step's own inputs and outputs (docs/step-graph.md), which data
# inputs and targets are fed beside; the evaluation step outputs `loss` beside the outputs.
_RESERVED_DATA = frozenset({"step", "seed", "lr", "loss"})

# The most values one parameter or dimension may hold (ONNX and NumPy index limits).
MAX_ELEMENTS = 2**31 - 1

# Blocks are inlined by recursion over their bodies; this bounds the Python stack.
MAX_BLOCK_DEPTH = 32


class _Poisoned(Exception):
    """A use of something that already failed; its error has been reported."""


@dataclass
class _Shared:
    """A `layer NAME = Ctor(args)` declaration; built on its first application."""

    name: str  # full name
    call: ast.Call
    args: dict[str, Any]
    instance: LayerInstance | None = None
    in_type: TensorType | None = None


@dataclass
class _Scope:
    """The names visible in a model or in one block instance."""

    prefix: str
    consts: dict[str, Any]
    chain: tuple[str, ...]
    in_block: bool
    values: dict[str, int] = field(default_factory=dict)
    defined_at: dict[str, Span] = field(default_factory=dict)
    shared: dict[str, _Shared] = field(default_factory=dict)
    layer_names: dict[str, Span] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    poisoned: set[str] = field(default_factory=set)


def _key_span(kw: ast.Keyword) -> Span:
    s = kw.span
    return Span(s.file, s.line, s.col, s.line, s.col + len(kw.key))


def _is_layer_name(name: str) -> bool:
    return name[:1].isupper()


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """NumPy broadcasting of per-example shapes (symbolic dims match only themselves or 1)."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


class _Checker:
    def __init__(self, module: ast.Module) -> None:
        self.file = module.file
        self.module = module
        self.diags: list[Diagnostic] = []
        self.nodes: list[GNode] = []
        self.layers: dict[str, LayerInstance] = {}
        self.layer_regs: list[tuple[CallValue, str, Span]] = []
        self.blocks: dict[str, ast.BlockDecl] = {}
        self.used_blocks: set[str] = set()

    # ------------------------------------------------------------ plumbing

    def guard(self, fn, *args) -> bool:
        """Run one unit of checking; record its errors. True when it succeeded."""
        try:
            fn(*args)
            return True
        except DslcError as e:
            self.diags.extend(e.diagnostics)
        except _Poisoned:
            pass
        return False

    def add(
        self, op: str, inputs: tuple[int, ...], attrs: dict[str, Any], t: TensorType, span: Span
    ) -> int:
        node = GNode(len(self.nodes), op, inputs, attrs, t, span)
        self.nodes.append(node)
        return node.id

    def type_of(self, node: int) -> TensorType:
        return self.nodes[node].type

    # ------------------------------------------------------------ top level

    def run(self) -> CheckedModel:
        models = [d for d in self.module.decls if isinstance(d, ast.ModelDecl)]
        trains = [d for d in self.module.decls if isinstance(d, ast.TrainDecl)]
        for b in (d for d in self.module.decls if isinstance(d, ast.BlockDecl)):
            self.guard(self.declare_block, b)
        if not models:
            self.diags.append(
                Diagnostic(
                    "this file has no `model`",
                    Span(self.file, 1, 1, 1, 2),
                    "add `model NAME { input x: float[...] ... }`",
                )
            )
        for extra in models[1:]:
            self.diags.append(
                Diagnostic(
                    f"a file holds exactly one model; `{extra.name}` is a second one",
                    extra.name_span,
                    f"the first is `{models[0].name}`",
                )
            )
        for extra in trains[1:]:
            self.diags.append(Diagnostic("a file holds at most one `train` block", extra.span))
        train_values = self.check_train_items(trains[0]) if trains else {}
        result = None
        if models:
            result = self.check_model(models[0], train_values)
        for b in self.blocks.values():
            if b.name not in self.used_blocks:
                self.scan_unused_block(b)
        if self.diags or result is None:
            raise DslcError(_dedupe(self.diags))
        return result

    def declare_block(self, b: ast.BlockDecl) -> None:
        if not _is_layer_name(b.name):
            raise DslcError(
                f"block names are capitalised, like layers: `{b.name}`",
                b.name_span,
                f"rename it `{b.name[:1].upper() + b.name[1:]}`",
            )
        if b.name in LAYERS:
            raise DslcError(f"block `{b.name}` has the name of a catalogue layer", b.name_span)
        if b.name in self.blocks:
            raise DslcError(
                f"block `{b.name}` is defined twice",
                b.name_span,
                f"first defined at line {self.blocks[b.name].name_span.line}",
            )
        seen: set[str] = set()
        for p in b.params:
            if p.name in seen:
                raise DslcError(f"parameter `{p.name}` of block `{b.name}` is given twice", p.span)
            seen.add(p.name)
        self.blocks[b.name] = b

    # ------------------------------------------------------------ model

    def check_model(self, m: ast.ModelDecl, train_values: dict[str, Any]) -> CheckedModel | None:
        scope = _Scope(prefix="", consts={}, chain=(), in_block=False)
        self.inputs: list[Declared] = []
        self.targets: list[Declared] = []
        self.outputs: list[tuple[str, int]] = []
        self.output_spans: dict[str, Span] = {}
        self.loss: int | None = None
        self.loss_span: Span | None = None
        self.metrics: list[tuple[str, int]] = []
        self.metric_spans: dict[str, Span] = {}
        for stmt in m.body:
            if not self.guard(self.model_stmt, stmt, scope):
                _poison(stmt, scope)
        regs: list[RegTerm] = []
        for reg, layer, span in self.layer_regs:
            if layer in self.layers:
                self.guard(
                    lambda r=reg, n=layer, s=span: regs.append(select(r, self.layers[n].params, s))
                )
        global_regs: list[RegTerm] = []
        params = [p for layer in self.layers.values() for p in layer.params]
        for reg in train_values.get("regularize", ()):
            self.guard(lambda r=reg: global_regs.append(select(r, params, r.span)))
        if "early_stopping" in train_values:
            self.guard(
                self.check_monitor,
                train_values["early_stopping"],
                self.train_spans["early_stopping"],
            )
        if self.diags:
            return None
        cfg = {k: v for k, v in train_values.items() if k != "regularize"}
        train = TrainConfig(**cfg, regularize=tuple(global_regs))
        return CheckedModel(
            name=m.name,
            file=self.file,
            inputs=tuple(self.inputs),
            targets=tuple(self.targets),
            nodes=tuple(self.nodes),
            layers=dict(self.layers),
            outputs=tuple(self.outputs),
            loss=self.loss,
            metrics=tuple(self.metrics),
            regularizers=tuple(regs) + tuple(global_regs),
            train=train,
        )

    def model_stmt(self, stmt: ast.Stmt, scope: _Scope) -> None:
        if isinstance(stmt, ast.InputStmt | ast.TargetStmt):
            self.data_stmt(stmt, scope)
        elif isinstance(stmt, ast.OutputStmt):
            self.output_stmt(stmt, scope)
        elif isinstance(stmt, ast.LossStmt):
            self.loss_stmt(stmt, scope)
        elif isinstance(stmt, ast.MetricStmt):
            self.metric_stmt(stmt, scope)
        else:
            self.common_stmt(stmt, scope)

    def data_stmt(self, stmt: ast.InputStmt | ast.TargetStmt, scope: _Scope) -> None:
        """`input NAME: TYPE` or `target NAME: TYPE` in the model."""
        op = "input" if isinstance(stmt, ast.InputStmt) else "target"
        if stmt.type is None:
            raise DslcError(
                f"model input `{stmt.name}` needs a type",
                stmt.name_span,
                f"write `input {stmt.name}: float[...]`",
            )
        t = self.tensor_type(stmt.type)
        _need_data_name("an input" if op == "input" else "a target", stmt.name, stmt.name_span)
        self.define(scope, stmt.name, stmt.name_span)
        scope.values[stmt.name] = self.add(op, (), {"name": stmt.name}, t, stmt.span)
        (self.inputs if op == "input" else self.targets).append(Declared(stmt.name, t, stmt.span))

    def common_stmt(self, stmt: ast.Stmt, scope: _Scope) -> None:
        """Statements allowed in both models and blocks: `NAME = EXPR` and `layer NAME = ...`."""
        if isinstance(stmt, ast.AssignStmt):
            self.check_free(scope, stmt.name, stmt.name_span)
            node = self.eval(stmt.value, scope)
            self.define(scope, stmt.name, stmt.name_span)
            scope.values[stmt.name] = node
        elif isinstance(stmt, ast.LayerStmt):
            self.layer_stmt(stmt, scope)
        else:
            raise DslcError("this statement is not allowed here", stmt.span)

    def check_free(self, scope: _Scope, name: str, span: Span) -> None:
        if name in scope.defined_at:
            raise DslcError(
                f"`{name}` is already defined",
                span,
                f"first defined at line {scope.defined_at[name].line}",
            )

    def define(self, scope: _Scope, name: str, span: Span) -> None:
        self.check_free(scope, name, span)
        scope.defined_at[name] = span

    def tensor_type(self, te: ast.TypeExpr) -> TensorType:
        if te.dtype not in _DTYPES:
            raise DslcError(
                f"unknown element type `{te.dtype}`",
                te.span,
                did_you_mean(te.dtype, list(_DTYPES)) or "use float[...] or int[...]",
            )
        dims: list[Dim] = []
        for d in te.dims:
            if isinstance(d.value, int) and d.value < 1:
                raise DslcError(f"a dimension must be at least 1, got {d.value}", d.span)
            if isinstance(d.value, int) and d.value > MAX_ELEMENTS:
                raise DslcError(f"a dimension may be at most {MAX_ELEMENTS:,}", d.span)
            dims.append(d.value)
        return TensorType(_DTYPES[te.dtype], tuple(dims))

    def output_stmt(self, stmt: ast.OutputStmt, scope: _Scope) -> None:
        if stmt.name is None:
            raise DslcError(
                "a model output needs a name",
                stmt.span,
                "write `output NAME = EXPR` or `output NAME`",
            )
        expr = stmt.value if stmt.value is not None else ast.Name(stmt.name, stmt.name_span)
        if stmt.name in self.output_spans:
            raise DslcError(
                f"output `{stmt.name}` is declared twice",
                stmt.name_span,
                f"first declared at line {self.output_spans[stmt.name].line}",
            )
        # The evaluation step outputs the loss, the metrics and the outputs by name.
        if stmt.name == "loss" or stmt.name in self.metric_spans:
            what = "the loss" if stmt.name == "loss" else "a metric"
            raise DslcError(
                f"`{stmt.name}` cannot name an output: it names {what}",
                stmt.name_span,
                "outputs, metrics and the loss are reported side by side; rename the output",
            )
        node = self.eval(expr, scope)
        t = self.type_of(node)
        if not t.batched:
            raise DslcError(
                f"output `{stmt.name}` is a scalar over the whole batch (a loss or a "
                "metric); outputs are per example",
                stmt.span,
            )
        for tgt in self.targets_under(node):
            raise DslcError(
                f"output `{stmt.name}` depends on the target `{tgt}`",
                stmt.span,
                "targets are absent at inference; outputs may use inputs only",
            )
        if stmt.value is not None:
            self.define(scope, stmt.name, stmt.name_span)
            scope.values[stmt.name] = node
        self.output_spans[stmt.name] = stmt.name_span
        self.outputs.append((stmt.name, node))

    def loss_stmt(self, stmt: ast.LossStmt, scope: _Scope) -> None:
        if self.loss_span is not None:
            raise DslcError(
                "a model has one `loss`",
                stmt.span,
                f"add the terms into the loss at line {self.loss_span.line}: loss a + 0.5 * b",
            )
        self.loss_span = stmt.span
        node = self.eval(stmt.value, scope)
        _need_batch_scalar(
            "the loss",
            self.type_of(node),
            stmt.value.span,
            "use a loss such as cross_entropy(...) or mse(...), which average over the batch",
        )
        for n in self.ancestors(node):
            g = self.nodes[n]
            if g.op == "fn" and g.attrs["name"] in METRIC_ONLY:
                raise DslcError(
                    f"`{g.attrs['name']}` is a metric and has no gradient; it cannot "
                    "be part of the loss",
                    g.span,
                    "report it with `metric` instead",
                )
        self.loss = node

    def metric_stmt(self, stmt: ast.MetricStmt, scope: _Scope) -> None:
        if stmt.name is not None:
            name, span = stmt.name, stmt.name_span
        elif isinstance(stmt.value, ast.Call):
            name, span = stmt.value.callee, stmt.value.callee_span
        else:
            raise DslcError(
                "this metric needs a name", stmt.value.span, "write `metric NAME = EXPR`"
            )
        if name in _RESERVED_METRICS or name.startswith("val_"):
            raise DslcError(
                f"`{name}` cannot name a metric: the training log uses it",
                span,
                "reserved: " + ", ".join(sorted(_RESERVED_METRICS)) + " and names starting val_",
            )
        if name in self.metric_spans:
            raise DslcError(
                f"metric `{name}` is reported twice",
                span,
                "name the second one: metric NAME = ...",
            )
        if name in self.output_spans:
            raise DslcError(
                f"`{name}` cannot name a metric: it names an output",
                span,
                f"the output is declared at line {self.output_spans[name].line}; "
                "name the metric: metric NAME = ...",
            )
        self.metric_spans[name] = span
        node = self.eval(stmt.value, scope)
        _need_batch_scalar(
            "a metric",
            self.type_of(node),
            stmt.value.span,
            "use accuracy(...), mse(...) or another metric",
        )
        self.metrics.append((name, node))

    def targets_under(self, node: int) -> list[str]:
        return [
            self.nodes[n].attrs["name"]
            for n in self.ancestors(node)
            if self.nodes[n].op == "target"
        ]

    def ancestors(self, node: int) -> list[int]:
        seen = {node}
        stack = [node]
        while stack:
            for i in self.nodes[stack.pop()].inputs:
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
        return sorted(seen)

    # ------------------------------------------------------------ shared layers

    def layer_stmt(self, stmt: ast.LayerStmt, scope: _Scope) -> None:
        call = stmt.call
        self.check_free(scope, stmt.name, stmt.name_span)
        if call.callee in self.blocks:
            raise DslcError(
                f"`layer` shares a catalogue layer; `{call.callee}` is a block",
                call.callee_span,
                "apply the block where it is needed instead",
            )
        if call.callee not in LAYERS:
            raise self.unknown_callee(call.callee, call.callee_span)
        args = self.bind_call(LAYERS[call.callee].signature, call, scope, 0)
        self.claim_layer_name(scope, stmt.name, stmt.name_span)
        self.define(scope, stmt.name, stmt.name_span)
        scope.shared[stmt.name] = _Shared(scope.prefix + stmt.name, call, args)

    def apply_shared(self, sh: _Shared, node: int, span: Span) -> int:
        t = self.type_of(node)
        ldef = LAYERS[sh.call.callee]
        norm, out = ldef.build(dict(sh.args), t, span)
        params = ldef.params(sh.name, norm, t)
        if sh.instance is None:
            sh.instance = LayerInstance(sh.name, sh.call.callee, norm, params, sh.call.span)
            sh.in_type = t
            self.register_layer(sh.instance)
        elif [p.shape for p in params] != [
            p.shape for p in sh.instance.params
        ] or norm != sh.instance.args:
            raise DslcError(
                f"shared layer `{sh.name}` was built for {sh.in_type} and cannot be applied to {t}",
                span,
                "its parameters would need different shapes",
            )
        return self.add("layer", (node,), {"layer": sh.name}, out, span)

    def register_layer(self, inst: LayerInstance) -> None:
        for p in inst.params:
            if math.prod(p.shape) > MAX_ELEMENTS:
                raise DslcError(
                    f"`{p.name}` would hold {math.prod(p.shape):,} values {list(p.shape)}; "
                    f"the limit is {MAX_ELEMENTS:,}",
                    inst.span,
                )
        self.layers[inst.name] = inst
        reg = inst.args.get("regularizer")
        if reg is not None:
            self.layer_regs.append((reg, inst.name, reg.span or inst.span))

    # ------------------------------------------------------------ naming

    def claim_layer_name(self, scope: _Scope, local: str, span: Span) -> str:
        if local in scope.layer_names:
            raise DslcError(
                f"the layer name `{local}` is used twice",
                span,
                f"first used at line {scope.layer_names[local].line}",
            )
        scope.layer_names[local] = span
        return scope.prefix + local

    def layer_name(
        self, scope: _Scope, kind: str, label: str | None, label_span: Span | None, span: Span
    ) -> str:
        if label is not None:
            assert label_span is not None
            return self.claim_layer_name(scope, label, label_span)
        key = kind.lower()
        scope.counters[key] += 1
        return self.claim_layer_name(scope, f"{key}_{scope.counters[key]}", span)

    # ------------------------------------------------------------ constants

    def const(self, expr: ast.Expr, scope: _Scope) -> Any:
        """An argument value: numbers, strings, booleans, words, tuples, lists and calls."""
        if isinstance(expr, ast.Number | ast.String | ast.Bool):
            return expr.value
        if isinstance(expr, ast.Name):
            return scope.consts[expr.id] if expr.id in scope.consts else Word(expr.id)
        if isinstance(expr, ast.TupleExpr):
            return tuple(self.const(e, scope) for e in expr.items)
        if isinstance(expr, ast.ListExpr):
            return [self.const(e, scope) for e in expr.items]
        if isinstance(expr, ast.Call):
            return CallValue(
                expr.callee,
                tuple(self.const(a, scope) for a in expr.args),
                tuple((k.key, self.const(k.value, scope)) for k in expr.kwargs),
                expr.span,
                tuple(a.span for a in expr.args),
                tuple((_key_span(k), k.value.span) for k in expr.kwargs),
            )
        if isinstance(expr, ast.Neg):
            v = self.const(expr.operand, scope)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise DslcError(f"cannot negate {kind_of(v)}", expr.span)
            return -v
        if isinstance(expr, ast.BinOp):
            a, b = self.const(expr.left, scope), self.const(expr.right, scope)
            if expr.op == "@" or any(
                isinstance(v, bool) or not isinstance(v, int | float) for v in (a, b)
            ):
                raise DslcError(
                    f"cannot compute {kind_of(a)} {expr.op} {kind_of(b)} here",
                    expr.span,
                    "argument values are constants; arithmetic works on numbers",
                )
            if expr.op == "/" and b == 0:
                raise DslcError("division by zero", expr.span)
            if expr.op == "+":
                return a + b
            if expr.op == "-":
                return a - b
            if expr.op == "*":
                return a * b
            if isinstance(a, int) and isinstance(b, int) and a % b == 0:
                return a // b  # exact integer division stays an int: Dense(width / 2)
            return a / b
        raise DslcError(
            "expected a constant value here (a number, string, word, tuple or call)", expr.span
        )

    def bind_call(self, signature, call: ast.Call, scope: _Scope, skip: int) -> dict[str, Any]:
        args = [(self.const(a, scope), a.span) for a in call.args[skip:]]
        kwargs = [
            (k.key, self.const(k.value, scope), _key_span(k), k.value.span) for k in call.kwargs
        ]
        return bind(signature, call.callee, args, kwargs, call.span)

    # ------------------------------------------------------------ expressions

    def eval(self, expr: ast.Expr, scope: _Scope) -> int:
        """The node id of a tensor-valued expression."""
        if isinstance(expr, ast.Name):
            return self.value(expr, scope)
        if isinstance(expr, ast.Number):
            return self.add(
                "const",
                (),
                {"value": float(expr.value)},
                TensorType("float32", (), batched=False),
                expr.span,
            )
        if isinstance(expr, ast.Pipeline):
            node = self.eval(expr.source, scope)
            for stage in expr.stages:
                node = self.stage(stage, node, scope)
            return node
        if isinstance(expr, ast.BinOp):
            return self.binop(expr, self.eval(expr.left, scope), self.eval(expr.right, scope))
        if isinstance(expr, ast.Neg):
            x = self.eval(expr.operand, scope)
            t = self.type_of(x)
            if t.dtype != "float32":
                raise DslcError(f"unary minus needs a float value, got {t}", expr.span)
            return self.add("neg", (x,), {}, t, expr.span)
        if isinstance(expr, ast.Call):
            return self.call_expr(expr, scope)
        raise DslcError(f"expected a tensor value here, got {_describe_expr(expr)}", expr.span)

    def value(self, name: ast.Name, scope: _Scope) -> int:
        n = name.id
        if n in scope.values:
            return scope.values[n]
        if n in scope.poisoned:
            raise _Poisoned()
        if n in scope.consts:
            v = scope.consts[n]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise DslcError(f"block parameter `{n}` is {kind_of(v)}, not a number", name.span)
            return self.add(
                "const",
                (),
                {"value": float(v)},
                TensorType("float32", (), batched=False),
                name.span,
            )
        if n in scope.shared:
            raise DslcError(f"`{n}` is a layer; apply it in a pipeline: `x -> {n}`", name.span)
        if n in FUNCTION_LIKE or n in LAYERS or n in self.blocks:
            what = "function" if n in FUNCTION_LIKE else "layer"
            raise DslcError(
                f"`{n}` is a {what}, not a value",
                name.span,
                f"apply it to a value: `x -> {n}`"
                if what == "layer"
                else f"call it on a value: `{n}(x)` or `x -> {n}`",
            )
        raise DslcError(
            f"unknown name `{n}`",
            name.span,
            did_you_mean(n, list(scope.values) + list(scope.shared))
            or ("values must be defined before they are used" if not scope.values else None),
        )

    def unknown_callee(self, callee: str, span: Span) -> DslcError:
        layers = list(LAYERS) + list(self.blocks)
        if _is_layer_name(callee):
            return DslcError(
                f"unknown layer `{callee}`",
                span,
                did_you_mean(callee, layers + list(FUNCTION_LIKE)),
            )
        hint = did_you_mean(callee, list(FUNCTION_LIKE) + layers)
        return DslcError(f"unknown function `{callee}`", span, hint)

    def call_expr(self, call: ast.Call, scope: _Scope) -> int:
        if call.callee in scope.shared or call.callee in scope.values:
            raise DslcError(
                f"`{call.callee}` cannot be called",
                call.callee_span,
                f"apply a shared layer in a pipeline: `x -> {call.callee}`"
                if call.callee in scope.shared
                else f"`{call.callee}` is the value defined at line "
                f"{scope.defined_at[call.callee].line}, which hides any function of that name",
            )
        if call.callee in FUNCTION_LIKE:
            return self.fn_call(call, None, scope)
        if call.callee in LAYERS or call.callee in self.blocks:
            raise DslcError(
                f"`{call.callee}` is a layer and needs an input",
                call.callee_span,
                f"apply it in a pipeline: `x -> {_show_call(call)}`",
            )
        raise self.unknown_callee(call.callee, call.callee_span)

    def stage(self, stage: ast.Stage, node: int, scope: _Scope) -> int:
        expr = stage.expr
        callee = expr.id if isinstance(expr, ast.Name) else expr.callee
        cspan = expr.span if isinstance(expr, ast.Name) else expr.callee_span
        call = expr if isinstance(expr, ast.Call) else ast.Call(callee, cspan, (), (), expr.span)
        if isinstance(expr, ast.Name) and callee in scope.shared:
            if stage.label is not None:
                raise DslcError(
                    f"the shared layer `{callee}` already has a name; it cannot be labelled",
                    stage.label_span,
                )
            return self.apply_shared(scope.shared[callee], node, cspan)
        if callee in scope.poisoned:
            raise _Poisoned()
        if callee in scope.shared:
            raise DslcError(
                f"the shared layer `{callee}` takes no arguments where it is applied",
                cspan,
                f"its arguments are given once, in `layer {callee} = ...`; write `x -> {callee}`",
            )
        if callee in scope.values:
            raise DslcError(
                f"`{callee}` is a value, not a layer or function",
                cspan,
                "combine values with arithmetic or concat(...)",
            )
        if callee in LAYERS or callee in self.blocks:
            if callee in self.blocks:
                return self.block_instance(self.blocks[callee], call, stage, node, scope)
            return self.new_layer(call, stage, node, scope)
        if callee in FUNCTION_LIKE:
            if stage.label is not None:
                raise DslcError(
                    f"a label names a layer, but `{callee}` is a function",
                    stage.label_span,
                    "remove the label",
                )
            return self.fn_call(call, node, scope)
        raise self.unknown_callee(callee, cspan)

    def new_layer(self, call: ast.Call, stage: ast.Stage, node: int, scope: _Scope) -> int:
        ldef = LAYERS[call.callee]
        args = self.bind_call(ldef.signature, call, scope, 0)
        t = self.type_of(node)
        norm, out = ldef.build(args, t, call.span)
        name = self.layer_name(scope, call.callee, stage.label, stage.label_span, call.span)
        inst = LayerInstance(name, call.callee, norm, ldef.params(name, norm, t), call.span)
        self.register_layer(inst)
        return self.add("layer", (node,), {"layer": name}, out, call.span)

    def fn_call(self, call: ast.Call, piped: int | None, scope: _Scope) -> int:
        fdef = FUNCTION_LIKE[call.callee]
        args = list(call.args)
        if fdef.variadic:
            if len(args) == 1 and isinstance(args[0], ast.ListExpr):
                args = list(args[0].items)
            tensors = ([piped] if piped is not None else []) + [self.eval(a, scope) for a in args]
            opts_from = len(args)
            if not tensors:
                raise DslcError(f"`{call.callee}` needs at least one value", call.span)
        else:
            need = fdef.tensors - (1 if piped is not None else 0)
            if len(args) < need:
                have = len(args) + (1 if piped is not None else 0)
                raise DslcError(
                    f"`{call.callee}` needs {fdef.tensors} value argument"
                    f"{'s' if fdef.tensors > 1 else ''}, got {have}",
                    call.span,
                    "in a pipeline the value on the left is the first argument"
                    if piped is not None
                    else None,
                )
            tensors = ([piped] if piped is not None else []) + [
                self.eval(a, scope) for a in args[:need]
            ]
            opts_from = need
        opts = self.bind_call(
            fdef.signature,
            ast.Call(call.callee, call.callee_span, tuple(args), call.kwargs, call.span),
            scope,
            opts_from,
        )
        types = [self.type_of(n) for n in tensors]
        norm, out = fdef.infer(types, opts, call.span)
        if fdef.family == "function" and out.batched != any(t.batched for t in types):
            out = TensorType(out.dtype, out.shape, any(t.batched for t in types))
        return self.add("fn", tuple(tensors), {"name": call.callee, "kwargs": norm}, out, call.span)

    def binop(self, expr: ast.BinOp, a: int, b: int) -> int:
        ta, tb = self.type_of(a), self.type_of(b)
        for t in (ta, tb):
            if t.dtype != "float32":
                raise DslcError(f"`{expr.op}` needs float values, got {ta} and {tb}", expr.span)
        batched = ta.batched or tb.batched
        if expr.op == "@":
            sa, sb = ta.shape, tb.shape
            if len(sa) < 2 or len(sb) < 2:
                raise DslcError(
                    f"`@` needs at least 2 per-example dimensions on each side, got "
                    f"{show_shape(sa)} @ {show_shape(sb)}",
                    expr.span,
                )
            if sa[-1] != sb[-2]:
                raise DslcError(
                    f"`@` cannot multiply {show_shape(sa)} by {show_shape(sb)}: "
                    f"{sa[-1]} != {sb[-2]}",
                    expr.span,
                )
            lead = broadcast(sa[:-2], sb[:-2])
            if lead is None:
                raise DslcError(
                    f"`@` cannot broadcast {show_shape(sa)} and {show_shape(sb)}", expr.span
                )
            shape = lead + (sa[-2], sb[-1])
        else:
            res = broadcast(ta.shape, tb.shape)
            if res is None:
                raise DslcError(
                    f"cannot broadcast {show_shape(ta.shape)} and "
                    f"{show_shape(tb.shape)} for `{expr.op}`",
                    expr.span,
                    "shapes broadcast as in NumPy: equal sizes, or 1",
                )
            shape = res
        return self.add(
            "binop", (a, b), {"op": expr.op}, TensorType("float32", shape, batched), expr.span
        )

    # ------------------------------------------------------------ blocks

    def block_instance(
        self, block: ast.BlockDecl, call: ast.Call, stage: ast.Stage, node: int, scope: _Scope
    ) -> int:
        self.used_blocks.add(block.name)
        if block.name in scope.chain:
            chain = " -> ".join(scope.chain[scope.chain.index(block.name) :] + (block.name,))
            raise DslcError(
                f"block `{block.name}` uses itself: {chain}",
                call.callee_span,
                "blocks are inlined, so they cannot be recursive",
            )
        if len(scope.chain) >= MAX_BLOCK_DEPTH:
            raise DslcError(
                f"blocks are nested more than {MAX_BLOCK_DEPTH} deep here", call.callee_span
            )
        consts = self.block_args(block, call, scope)
        name = self.layer_name(scope, block.name, stage.label, stage.label_span, call.span)
        inner = _Scope(
            prefix=name + ".", consts=consts, chain=scope.chain + (block.name,), in_block=True
        )
        inputs = [s for s in block.body if isinstance(s, ast.InputStmt)]
        outputs = [s for s in block.body if isinstance(s, ast.OutputStmt)]
        if len(inputs) != 1:
            raise DslcError(
                f"block `{block.name}` needs exactly one `input`, it has {len(inputs)}",
                block.name_span,
            )
        if len(outputs) != 1:
            raise DslcError(
                f"block `{block.name}` needs exactly one `output EXPR`, it has {len(outputs)}",
                block.name_span,
            )
        before = len(self.diags)
        result: list[int] = []
        for stmt in block.body:
            if not self.guard(self.block_stmt, stmt, inner, node, result):
                _poison(stmt, inner)
        if len(self.diags) > before or not result:
            raise _Poisoned()
        return result[0]

    def block_args(self, block: ast.BlockDecl, call: ast.Call, scope: _Scope) -> dict[str, Any]:
        params = block.params
        if len(call.args) > len(params):
            raise DslcError(
                f"block `{block.name}` takes {len(params)} argument"
                f"{'s' if len(params) != 1 else ''}, got {len(call.args)}",
                call.args[len(params)].span,
                f"parameters: {', '.join(p.name for p in params) or 'none'}",
            )
        given = zip(params, call.args, strict=False)
        out: dict[str, Any] = {p.name: self.const(a, scope) for p, a in given}
        names = [p.name for p in params]
        for kw in call.kwargs:
            if kw.key not in names:
                raise DslcError(
                    f"block `{block.name}` has no parameter `{kw.key}`",
                    _key_span(kw),
                    did_you_mean(kw.key, names),
                )
            if kw.key in out:
                raise DslcError(
                    f"argument `{kw.key}` of `{block.name}` is given twice", _key_span(kw)
                )
            out[kw.key] = self.const(kw.value, scope)
        for p in params:
            if p.name not in out:
                if p.default is None:
                    raise DslcError(
                        f"block `{block.name}` needs the argument `{p.name}`", call.span
                    )
                out[p.name] = self.const(p.default, _Scope("", dict(out), (), True))
        return out

    def block_stmt(self, stmt: ast.Stmt, scope: _Scope, node: int, result: list[int]) -> None:
        if isinstance(stmt, ast.InputStmt):
            if stmt.type is not None:
                raise DslcError(
                    "a block's input takes no type; its shape comes from the caller",
                    stmt.type.span,
                    f"write `input {stmt.name}`",
                )
            self.define(scope, stmt.name, stmt.name_span)
            scope.values[stmt.name] = node
        elif isinstance(stmt, ast.OutputStmt):
            if stmt.value is not None and stmt.name is not None:
                raise DslcError(
                    "a block's output is unnamed", stmt.name_span, "write `output EXPR`"
                )
            expr = stmt.value if stmt.value is not None else ast.Name(stmt.name, stmt.name_span)
            out = self.eval(expr, scope)
            if not self.type_of(out).batched:
                raise DslcError("a block's output must be a per-example value", stmt.span)
            result.append(out)
        elif isinstance(stmt, ast.TargetStmt | ast.LossStmt | ast.MetricStmt):
            word = {ast.TargetStmt: "target", ast.LossStmt: "loss", ast.MetricStmt: "metric"}
            raise DslcError(f"`{word[type(stmt)]}` belongs in the model, not in a block", stmt.span)
        else:
            self.common_stmt(stmt, scope)

    def scan_unused_block(self, block: ast.BlockDecl) -> None:
        """Report unknown callees in a block that is never used (its shapes are unknown)."""
        local = {p.name for p in block.params}
        local |= {s.name for s in block.body if isinstance(s, ast.LayerStmt | ast.AssignStmt)}
        for stmt in block.body:
            for call_name, span in _callees(stmt):
                known = call_name in LAYERS or call_name in self.blocks
                if not (known or call_name in FUNCTION_LIKE or call_name in local):
                    self.diags.append(self.unknown_callee(call_name, span).diagnostics[0])

    # ------------------------------------------------------------ train

    def check_train_items(self, train: ast.TrainDecl) -> dict[str, Any]:
        values: dict[str, Any] = {}
        self.train_spans: dict[str, Span] = {}
        empty = _Scope("", {}, (), False)
        for item in train.items:

            def one(item=item):
                if item.key not in TRAIN_KEYS:
                    raise DslcError(
                        f"unknown train setting `{item.key}`",
                        item.key_span,
                        did_you_mean(item.key, list(TRAIN_KEYS))
                        or "settings: " + ", ".join(TRAIN_KEYS),
                    )
                if item.key in self.train_spans:
                    raise DslcError(
                        f"`{item.key}` is set twice",
                        item.key_span,
                        f"first set at line {self.train_spans[item.key].line}",
                    )
                self.train_spans[item.key] = item.key_span
                value = self.const(item.value, empty)
                try:
                    values[item.key] = TRAIN_KEYS[item.key].convert(value, item.value.span)
                except DslcError as e:
                    d = e.diagnostics[0]
                    if d.message.startswith("`"):
                        raise
                    raise DslcError(f"`{item.key}`: {d.message}", d.span, d.hint) from None

            self.guard(one)
        return values

    def check_monitor(self, es, span: Span) -> None:
        names = ["loss"] + [m for m, _ in self.metrics]
        allowed = names + [f"val_{n}" for n in names]
        if es.monitor not in allowed:
            raise DslcError(
                f"early stopping monitors `{es.monitor}`, which is not reported",
                span,
                did_you_mean(es.monitor, allowed) or "reported: " + ", ".join(allowed),
            )


# ---------------------------------------------------------------- utilities


def _need_data_name(what: str, name: str, span: Span) -> None:
    """An error for an input or target name that the training step uses for itself."""
    if name in _RESERVED_DATA:
        raise DslcError(
            f"`{name}` cannot name {what}: the training step uses it",
            span,
            "reserved: " + ", ".join(sorted(_RESERVED_DATA)),
        )


def _need_batch_scalar(what: str, t: TensorType, span: Span, hint: str) -> None:
    """An error unless t is one float scalar for the whole batch (a loss or a metric)."""
    if t.batched or t.shape != ():
        raise DslcError(f"{what} must be a scalar over the batch, got {t} per example", span, hint)


def _poison(stmt: ast.Stmt, scope: _Scope) -> None:
    name = getattr(stmt, "name", None)
    if name is not None and not isinstance(stmt, ast.MetricStmt):
        scope.poisoned.add(name)


def _callees(node: object) -> list[tuple[str, Span]]:
    """The callees a statement applies to values: pipeline stages and calls in value position.

    Arguments of layers are constants (initialisers, regularisers), so they are not searched.
    """
    out: list[tuple[str, Span]] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Stage):
            e = n.expr
            out.append((e.id, e.span) if isinstance(e, ast.Name) else (e.callee, e.callee_span))
            if isinstance(e, ast.Call) and not _is_layer_name(e.callee):
                stack.extend(e.args)
        elif isinstance(n, ast.Call):
            out.append((n.callee, n.callee_span))
            if not _is_layer_name(n.callee):
                stack.extend(n.args)
        elif isinstance(n, ast.LayerStmt):
            out.append((n.call.callee, n.call.callee_span))
        elif isinstance(n, ast.Pipeline):
            stack.append(n.source)
            stack.extend(n.stages)
        elif isinstance(n, ast.BinOp):
            stack.extend((n.left, n.right))
        elif isinstance(n, ast.Neg):
            stack.append(n.operand)
        elif isinstance(n, ast.TupleExpr | ast.ListExpr):
            stack.extend(n.items)
        elif isinstance(n, ast.AssignStmt | ast.OutputStmt | ast.LossStmt | ast.MetricStmt):
            if n.value is not None:
                stack.append(n.value)
    return sorted(out, key=lambda c: (c[1].line, c[1].col))


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple] = set()
    out = []
    for d in diags:
        key = (d.message, d.span, d.hint)
        if key not in seen:
            seen.add(key)
            out.append(d)
    out.sort(key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
    return out


def _describe_expr(expr: ast.Expr) -> str:
    if isinstance(expr, ast.String):
        return f'the string "{expr.value}"'
    if isinstance(expr, ast.Bool):
        return "a boolean"
    if isinstance(expr, ast.TupleExpr):
        return "a tuple"
    if isinstance(expr, ast.ListExpr):
        return "a list"
    return "this expression"


def _show_call(call: ast.Call) -> str:
    return f"{call.callee}(...)" if call.args or call.kwargs else f"{call.callee}()"


def check(module: ast.Module) -> CheckedModel:
    """Check a parsed module; every user error in it is raised as one `DslcError`."""
    try:
        return _Checker(module).run()
    except RecursionError:
        raise DslcError(
            "this model is nested too deeply to check", Span(module.file, 1, 1, 1, 2)
        ) from None


__all__ = ["broadcast", "check"]
