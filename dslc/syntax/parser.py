"""The `.nn` parser: source text to the `ast.Module` of dslc/syntax/ast.py.

Parsing runs in three steps: checks on the raw text (UTF-8, control
characters, bracket depth), Lark's LALR parser building a parse tree, and an
iterative conversion of that tree to the AST. Every user mistake becomes a
`DslcError` with an exact span; nothing here recurses over the input's depth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from dslc.errors import DslcError, Span
from dslc.syntax import ast

MAX_NESTING = 100  # levels of nested brackets
MAX_DEPTH = 200  # levels of the syntax tree, so that later passes may recurse over it

# ---------------------------------------------------------------- the Lark parser


def _grammar_text() -> str:
    try:
        return resources.files("dslc.grammar").joinpath("nn.lark").read_text(encoding="utf-8")
    except (ImportError, OSError):
        # Running from a source tree that is not installed: the grammar sits beside the package.
        fallback = Path(__file__).resolve().parents[2] / "grammar" / "nn.lark"
        return fallback.read_text(encoding="utf-8")


@cache
def _lark() -> Lark:
    return Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


# ---------------------------------------------------------------- public API


def parse(source: str | bytes, file: str) -> ast.Module:
    """Parse `.nn` source (text or UTF-8 bytes) into an `ast.Module`; errors raise `DslcError`."""
    text = _decode(source, file) if isinstance(source, bytes) else source
    text = _normalise(text)
    _check_characters(text, file)
    _check_nesting(text, file)
    try:
        tree = _lark().parse(text)
        module = _Converter(text, file).convert(tree)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    except RecursionError:
        # Not expected (parsing and conversion are iterative), but never a traceback.
        raise DslcError("expression nested too deeply", _point(text, file, 0)) from None
    _check_depth(module)
    return module


def parse_file(path: str) -> ast.Module:
    """Read and parse a `.nn` file; an unreadable file is a `DslcError` without a span."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DslcError(f"cannot read `{path}`: {reason}") from None
    return parse(data, path)


# ---------------------------------------------------------------- raw text checks


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[: e.start]
        line = good.count(b"\n") + 1
        line_start = good.rfind(b"\n") + 1
        col = len(good[line_start:].decode("utf-8")) + 1
        raise DslcError(
            "file is not valid UTF-8 text",
            Span(file, line, col, line, col + 1),
            hint="save the file with UTF-8 encoding",
        ) from None


def _normalise(text: str) -> str:
    # A leading byte-order mark is invisible to the user; \r\n and lone \r count as one newline.
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


# Control characters (Unicode category Cc, except tab and newline), line/paragraph
# separators (they would disagree with the line numbers diagnostics show) and lone
# surrogates (only reachable through `parse` on a `str`; they cannot be printed).
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _check_characters(text: str, file: str) -> None:
    m = _FORBIDDEN.search(text)
    if m is not None:
        ch = m.group()
        what = "control character" if ch < "\xa0" else "character"
        what = "NUL character" if ch == "\0" else what
        raise DslcError(
            f"{what} U+{ord(ch):04X} is not allowed in source text",
            _point(text, file, m.start()),
            hint="remove it; a .nn file is plain text",
        )


_BRACKET_SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[()\[\]{}]')
_CLOSER = {"(": ")", "[": "]", "{": "}"}


def _open_brackets(text: str, file: str, limit: int | None = None) -> list[tuple[str, int]]:
    """The brackets still open at the end of `text` (character, offset), innermost last."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKET_SCAN.finditer(text):
        ch = m.group()
        if ch in _CLOSER:
            stack.append((ch, m.start()))
            if limit is not None and len(stack) > limit:
                raise DslcError(
                    "expression nested too deeply",
                    _point(text, file, m.start()),
                    hint=f"at most {limit} levels of nested brackets are supported",
                )
        elif ch in ")]}" and stack and _CLOSER[stack[-1][0]] == ch:
            stack.pop()
    return stack


def _check_nesting(text: str, file: str) -> None:
    _open_brackets(text, file, MAX_NESTING)


def _check_depth(module: ast.Module) -> None:
    """Refuse syntax trees deeper than `MAX_DEPTH` (long operator chains, `- - - x`)."""
    # Entries: node, depth, and the outermost expression above it (where errors point).
    stack: list[tuple[object, int, object]] = [(module, 0, None)]
    while stack:
        node, depth, top = stack.pop()
        if top is None and isinstance(node, _EXPR_TYPES):
            top = node
        if depth > MAX_DEPTH:
            raise DslcError(
                "expression nested too deeply",
                (top or node).span,  # type: ignore[attr-defined]
                hint="split it into several named values",
            )
        stack.extend((child, depth + 1, top) for child in _ast_children(node))


_EXPR_TYPES = (
    ast.Name,
    ast.Number,
    ast.String,
    ast.Bool,
    ast.TupleExpr,
    ast.ListExpr,
    ast.Call,
    ast.Pipeline,
    ast.BinOp,
    ast.Neg,
)


def _ast_children(node: object) -> Iterable[object]:
    for f in fields(node):  # type: ignore[arg-type]
        value = getattr(node, f.name)
        items = value if isinstance(value, tuple) else (value,)
        yield from (x for x in items if is_dataclass(x) and not isinstance(x, Span))


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - text.rfind("\n", 0, offset)


def _point(text: str, file: str, offset: int) -> Span:
    line, col = _line_col(text, offset)
    return Span(file, line, col, line, col + 1)


# ---------------------------------------------------------------- syntax error messages

_TOKEN_WORDS = {
    "LPAR": "`(`",
    "RPAR": "`)`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "COMMA": "`,`",
    "COLON": "`:`",
    "EQUAL": "`=`",
    "SEMICOLON": "`;`",
    "ARROW": "`->`",
    "PLUS": "`+`",
    "MINUS": "`-`",
    "STAR": "`*`",
    "SLASH": "`/`",
    "AT": "`@`",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
}
_KEYWORDS = {"MODEL", "BLOCK", "TRAIN", "INPUT", "TARGET", "LAYER", "OUTPUT", "LOSS", "METRIC"}
_LITERALS = {"TRUE", "FALSE"}
_EXPR_START = {"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS"}
_STMT_START = {"INPUT", "TARGET", "LAYER", "OUTPUT", "LOSS", "METRIC"}
_DECL_START = {"MODEL", "BLOCK", "TRAIN"}
# Tokens that may continue any expression; listed only when nothing else is possible.
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "ARROW", "LPAR"}
# The order in which alternatives are listed in "expected ..." messages.
_CLOSERS = ["RPAR", "RSQB", "RBRACE"]
_ORDER = ["NAME", "NUMBER", "STRING", "COMMA", "EQUAL", "COLON", "LPAR", "LSQB", "LBRACE"]


def _terminal_word(name: str) -> str:
    if name in _TOKEN_WORDS:
        return _TOKEN_WORDS[name]
    if name in _KEYWORDS or name in _LITERALS:
        return f"`{name.lower()}`"
    return name.lower()


def _join_or(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_expected(expected: Iterable[str]) -> str:
    """Words for a set of Lark terminal names: "an expression", "`)` or `,`", ..."""
    rest = set(expected) - {"$END", "SEMICOLON", "COMMENT", "WS"}
    # Closing brackets first: when one is possible, it is the likeliest fix.
    words = [_terminal_word(n) for n in _CLOSERS if n in rest]
    rest -= set(_CLOSERS)
    if {"NUMBER", "STRING", "LSQB"} <= rest:
        words.append("an expression")
        rest -= _EXPR_START
    if _STMT_START <= rest:
        words.append("a statement")
        rest -= _STMT_START | {"NAME"}
    if _DECL_START <= rest:
        words.extend(["`model`", "`block`", "`train`"])
        rest -= _DECL_START
    ops = rest & _OPERATORS
    rest -= _OPERATORS
    for name in _ORDER:
        if name in rest:
            words.append(_terminal_word(name))
            rest.discard(name)
    words.extend(_terminal_word(n) for n in sorted(rest))
    # `=` and `:` are offered after any name (`key = v`, `label: Stage`); rarely the fix.
    secondary = [w for w in ("`=`", "`:`") if w in words]
    if len(secondary) < len(words):
        words = [w for w in words if w not in secondary]
    if not words and ops == {"LPAR"}:
        words.append("`(`")
    elif not words and ops:
        words.append("an operator")
    return _join_or(words)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "NAME":
        return f"name `{tok.value}`"
    if tok.type == "NUMBER":
        return f"number `{tok.value}`"
    if tok.type == "STRING":
        value = tok.value if len(tok.value) <= 20 else tok.value[:17] + '..."'
        return f"string `{value}`"
    return f"`{tok.value}`"


def _previous_token(text: str, offset: int) -> Token | None:
    prev = None
    try:
        for tok in _lark().lex(text):
            if tok.start_pos >= offset:
                break
            prev = tok
    except UnexpectedInput:
        pass
    return prev


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> DslcError:
    if isinstance(e, UnexpectedCharacters):
        return _character_error(e, text, file)
    if isinstance(e, UnexpectedToken):
        return _token_error(e, text, file)
    offset = min(max(0, getattr(e, "pos_in_stream", 0) or 0), len(text))
    return DslcError("syntax error", _point(text, file, offset))


def _character_error(e: UnexpectedCharacters, text: str, file: str) -> DslcError:
    offset = e.pos_in_stream
    ch = text[offset]
    line, col = _line_col(text, offset)
    if ch == '"':
        end = text.find("\n", offset)
        end = len(text) if end < 0 else end
        return DslcError(
            "unterminated string",
            Span(file, line, col, line, col + (end - offset)),
            hint='close it with `"` on the same line',
        )
    hint = None
    if ch.isalpha() or ch.isdigit():
        hint = "names use only ASCII letters, digits and `_`"
    elif ch == "'":
        hint = 'strings use double quotes: "..."'
    shown = f"`{ch}`" if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"
    span = Span(file, line, col, line, col + 1)
    return DslcError(f"unexpected character {shown}", span, hint=hint)


def _token_error(e: UnexpectedToken, text: str, file: str) -> DslcError:
    tok = e.token
    expected = set(e.accepts or e.expected)
    if tok.type == "$END":
        stack = _open_brackets(text, file)
        line, col = (tok.end_line, tok.end_column) if tok.end_line else (1, 1)
        span = Span(file, line, col, line, col)
        hint = None
        if stack:
            opener, at = stack[-1]
            oline, ocol = _line_col(text, at)
            hint = (
                f"is a `{_CLOSER[opener]}` missing? "
                f"the `{opener}` at line {oline}, column {ocol} is never closed"
            )
        what = _describe_expected(expected)
        message = "unexpected end of file" + (f"; expected {what}" if what else "")
        return DslcError(message, span, hint=hint)

    span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
    prev = _previous_token(text, tok.start_pos)
    hint = None
    if prev is not None and prev.type == "ARROW" and expected <= {"NAME"}:
        what = "a layer or function name after `->`"
    else:
        what = _describe_expected(expected)
    in_body = expected == {"EQUAL"}
    if prev is not None and prev.value in ("model", "block", "train") and in_body:
        # Inside a body these words are names, so a missing `}` surfaces one token later.
        hint = f"is a `}}` missing before `{prev.value}`?"
    elif prev is not None and prev.type in _KEYWORDS and tok.type in ("EQUAL", "COLON"):
        hint = f"`{prev.value}` is a keyword here; choose another name"
    elif what in ("`,`", "`)`", "`]`", "`}`", "`=`", "`:`") and tok.type in ("NAME", "NUMBER"):
        hint = f"is a {what} missing?"
    message = f"unexpected {_describe_token(tok)}" + (f"; expected {what}" if what else "")
    return DslcError(message, span, hint=hint)


# ---------------------------------------------------------------- tree to AST


@dataclass(frozen=True)
class _Params:
    """The parameter list of a block, kept apart from the block's statements."""

    items: tuple[ast.Param, ...]


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


class _Converter:
    """Turns a Lark parse tree into AST nodes, bottom-up and without recursion."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.rules: dict[str, Callable[[Tree, list], object]] = {
            "start": self._start,
            "model": self._model,
            "block": self._block,
            "params": lambda t, c: _Params(tuple(c)),
            "param": self._param,
            "train": lambda t, c: ast.TrainDecl(tuple(c), self._span(t)),
            "train_item": self._train_item,
            "input_stmt": self._input,
            "target_stmt": self._target,
            "assign_stmt": self._assign,
            "layer_stmt": self._layer,
            "output_named": self._output_named,
            "output_expr": self._output_expr,
            "loss_stmt": lambda t, c: ast.LossStmt(c[0], self._span(t)),
            "metric_named": self._metric_named,
            "metric_expr": lambda t, c: ast.MetricStmt(None, None, c[0], self._span(t)),
            "type": self._type,
            "dim": self._dim,
            "pipeline": lambda t, c: ast.Pipeline(c[0], tuple(c[1:]), self._span(t)),
            "stage": self._stage,
            "sum": self._binary_chain,
            "term": self._binary_chain,
            "neg": self._neg,
            "number": lambda t, c: self._number(c[0].value, self._tok_span(c[0])),
            "string": lambda t, c: ast.String(self._unescape(c[0]), self._span(t)),
            "true": lambda t, c: ast.Bool(True, self._span(t)),
            "false": lambda t, c: ast.Bool(False, self._span(t)),
            "name": lambda t, c: ast.Name(c[0].value, self._span(t)),
            "call": self._call,
            "kwarg": lambda t, c: ast.Keyword(c[0].value, c[1], self._span(t)),
            "tuple": lambda t, c: ast.TupleExpr(tuple(c), self._span(t)),
            "list": lambda t, c: ast.ListExpr(tuple(c), self._span(t)),
        }

    def convert(self, root: Tree) -> ast.Module:
        done: dict[int, object] = {}
        # Explicit post-order walk: children are converted before their parent.
        stack: list[tuple[Tree, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.children) if isinstance(c, Tree))
                continue
            children = [done.pop(id(c)) if isinstance(c, Tree) else c for c in node.children]
            done[id(node)] = self.rules[node.data](node, children)
        result = done[id(root)]
        assert isinstance(result, ast.Module)
        return result

    # ------------------------------------------------------------ spans

    def _span(self, tree: Tree) -> Span:
        m = tree.meta
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # ------------------------------------------------------------ declarations

    def _start(self, tree: Tree, c: list) -> ast.Module:
        end_line, end_col = _line_col(self.text, len(self.text))
        return ast.Module(self.file, tuple(c), Span(self.file, 1, 1, end_line, end_col))

    def _model(self, tree: Tree, c: list) -> ast.ModelDecl:
        return ast.ModelDecl(c[0].value, self._tok_span(c[0]), tuple(c[1:]), self._span(tree))

    def _block(self, tree: Tree, c: list) -> ast.BlockDecl:
        name, rest = c[0], c[1:]
        params: tuple[ast.Param, ...] = ()
        if rest and isinstance(rest[0], _Params):
            params, rest = rest[0].items, rest[1:]
        return ast.BlockDecl(
            name.value, self._tok_span(name), params, tuple(rest), self._span(tree)
        )

    def _param(self, tree: Tree, c: list) -> ast.Param:
        return ast.Param(c[0].value, c[1] if len(c) > 1 else None, self._span(tree))

    def _train_item(self, tree: Tree, c: list) -> ast.TrainItem:
        return ast.TrainItem(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    # ------------------------------------------------------------ statements

    def _input(self, tree: Tree, c: list) -> ast.InputStmt:
        type_ = c[1] if len(c) > 1 else None
        return ast.InputStmt(c[0].value, self._tok_span(c[0]), type_, self._span(tree))

    def _target(self, tree: Tree, c: list) -> ast.TargetStmt:
        return ast.TargetStmt(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    def _assign(self, tree: Tree, c: list) -> ast.AssignStmt:
        return ast.AssignStmt(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    def _layer(self, tree: Tree, c: list) -> ast.LayerStmt:
        return ast.LayerStmt(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    def _output_named(self, tree: Tree, c: list) -> ast.OutputStmt:
        return ast.OutputStmt(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    def _output_expr(self, tree: Tree, c: list) -> ast.OutputStmt:
        # `output x` names an existing value; the checker reads it as an expression in a block.
        value = c[0]
        if isinstance(value, ast.Name):
            return ast.OutputStmt(value.id, value.span, None, self._span(tree))
        return ast.OutputStmt(None, None, value, self._span(tree))

    def _metric_named(self, tree: Tree, c: list) -> ast.MetricStmt:
        return ast.MetricStmt(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))

    def _type(self, tree: Tree, c: list) -> ast.TypeExpr:
        dtype = c[0]
        if dtype.value not in ("float", "int"):
            raise DslcError(
                f"unknown element type `{dtype.value}`",
                self._tok_span(dtype),
                hint="use `float` (float32) or `int` (int64)",
            )
        return ast.TypeExpr(dtype.value, tuple(c[1:]), self._span(tree))

    def _dim(self, tree: Tree, c: list) -> ast.Dim:
        tok = c[0]
        if tok.type == "NAME":
            return ast.Dim(tok.value, self._tok_span(tok))
        if not tok.value.isdigit():
            raise DslcError(
                f"dimension `{tok.value}` is not a whole number",
                self._tok_span(tok),
                hint="a dimension is an integer or a name for a symbolic size",
            )
        return ast.Dim(self._int(tok.value, self._tok_span(tok)), self._tok_span(tok))

    # ------------------------------------------------------------ expressions

    def _stage(self, tree: Tree, c: list) -> ast.Stage:
        if len(c) == 2:
            return ast.Stage(c[0].value, self._tok_span(c[0]), c[1], self._span(tree))
        return ast.Stage(None, None, c[0], self._span(tree))

    def _binary_chain(self, tree: Tree, c: list) -> ast.Expr:
        left = c[0]
        for i in range(1, len(c), 2):
            right = c[i + 1]
            left = ast.BinOp(c[i].value, left, right, left.span.to(right.span))
        return left

    def _neg(self, tree: Tree, c: list) -> ast.Expr:
        operand = c[-1]
        minuses = c[:-1]
        for k, minus in enumerate(reversed(minuses)):
            start = self._tok_span(minus)
            span = start.to(operand.span)
            if k == 0 and self._is_literal(operand, minus, tree.children[-1]):
                operand = ast.Number(-operand.value, "-" + operand.text, span)
            else:
                operand = ast.Neg(operand, span)
        return operand

    def _is_literal(self, operand: object, minus: Token, node: Tree | Token) -> bool:
        # `-3` folds into a Number; `-(3)` stays a negation of a parenthesised literal.
        if not isinstance(operand, ast.Number) or not isinstance(node, Tree):
            return False
        return "(" not in self.text[minus.end_pos : node.meta.start_pos]

    def _number(self, text: str, span: Span) -> ast.Number:
        if any(ch in text for ch in ".eE"):
            return ast.Number(float(text), text, span)
        return ast.Number(self._int(text, span), text, span)

    def _int(self, text: str, span: Span) -> int:
        try:
            return int(text)
        except ValueError:
            # Python refuses to convert integers of thousands of digits.
            raise DslcError("number literal is too long", span) from None

    def _unescape(self, tok: Token) -> str:
        raw = tok.value[1:-1]
        out: list[str] = []
        i = 0
        while i < len(raw):
            ch = raw[i]
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            esc = raw[i + 1]
            if esc not in _ESCAPES:
                col = tok.column + 1 + i
                raise DslcError(
                    f"unknown escape sequence `\\{esc}` in string",
                    Span(self.file, tok.line, col, tok.line, col + 2),
                    hint='write `\\\\` for a backslash and `\\"` for a quote',
                )
            out.append(_ESCAPES[esc])
            i += 2
        return "".join(out)

    def _call(self, tree: Tree, c: list) -> ast.Call:
        callee, args = c[0], c[1:]
        positional: list[ast.Expr] = []
        keywords: list[ast.Keyword] = []
        seen: set[str] = set()
        for arg in args:
            if isinstance(arg, ast.Keyword):
                if arg.key in seen:
                    key_span = Span(
                        self.file,
                        arg.span.line,
                        arg.span.col,
                        arg.span.line,
                        arg.span.col + len(arg.key),
                    )
                    raise DslcError(
                        f"duplicate keyword argument `{arg.key}`",
                        key_span,
                        hint=f"`{arg.key}` is already given in this call to `{callee.value}`",
                    )
                seen.add(arg.key)
                keywords.append(arg)
            elif keywords:
                raise DslcError(
                    "positional argument after keyword argument",
                    arg.span,
                    hint="put positional arguments before keyword arguments",
                )
            else:
                positional.append(arg)
        return ast.Call(
            callee.value,
            self._tok_span(callee),
            tuple(positional),
            tuple(keywords),
            self._span(tree),
        )
