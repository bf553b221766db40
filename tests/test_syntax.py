"""The .nn parser: every construct of LANGUAGE.md sections 2-5 and 8 parses to the expected AST."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import pytest
from spec_example import EXAMPLE

from dslc.errors import Span
from dslc.syntax import ast, parse, parse_file

# ---------------------------------------------------------------- helpers


def nospan(node):
    """The node with every Span field set to None, for comparing structure only."""
    if isinstance(node, tuple):
        return tuple(nospan(x) for x in node)
    if is_dataclass(node) and not isinstance(node, Span):
        changes = {}
        for f in fields(node):
            value = getattr(node, f.name)
            changes[f.name] = None if isinstance(value, Span) else nospan(value)
        return replace(node, **changes)
    return node


def sx(node):
    """A compact, span-free form of an expression: names as strings, operators as tuples."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.String):
        return ("str", node.value)
    if isinstance(node, ast.Bool):
        return ("bool", node.value)
    if isinstance(node, ast.TupleExpr):
        return ("tuple", *map(sx, node.items))
    if isinstance(node, ast.ListExpr):
        return ("list", *map(sx, node.items))
    if isinstance(node, ast.Call):
        kws = tuple(("=", k.key, sx(k.value)) for k in node.kwargs)
        return ("call", node.callee, *map(sx, node.args), *kws)
    if isinstance(node, ast.Stage):
        return sx(node.expr) if node.label is None else (":", node.label, sx(node.expr))
    if isinstance(node, ast.Pipeline):
        return ("->", sx(node.source), *map(sx, node.stages))
    if isinstance(node, ast.BinOp):
        return (node.op, sx(node.left), sx(node.right))
    if isinstance(node, ast.Neg):
        return ("neg", sx(node.operand))
    raise AssertionError(f"not an expression: {node!r}")


def body(src: str) -> tuple:
    """The statements of a model whose body is `src`."""
    module = parse("model M {\n" + src + "\n}\n", "t.nn")
    (decl,) = module.decls
    return decl.body


def expr(src: str) -> ast.Expr:
    """The expression `src`, parsed as the value of an assignment."""
    (stmt,) = body("v = " + src)
    assert isinstance(stmt, ast.AssignStmt)
    return stmt.value


def S(line: int, col: int, end_line: int, end_col: int) -> Span:
    return Span("t.nn", line, col, end_line, end_col)


def N(name: str) -> ast.Name:
    return ast.Name(name, None)


def num(value, text: str | None = None) -> ast.Number:
    return ast.Number(value, text if text is not None else str(value), None)


# ---------------------------------------------------------------- the whole example


def test_section_1_example_parses():
    module = parse(EXAMPLE, "digits_cnn.nn")
    assert module.file == "digits_cnn.nn"
    block, model, train = module.decls
    assert isinstance(block, ast.BlockDecl) and block.name == "ConvBN"
    assert isinstance(model, ast.ModelDecl) and model.name == "DigitsCNN"
    assert isinstance(train, ast.TrainDecl)
    assert [p.name for p in block.params] == ["channels", "kernel"]
    assert nospan(block.params[1].default) == num(3)
    assert [type(s).__name__ for s in model.body] == [
        "InputStmt",
        "TargetStmt",
        "AssignStmt",
        "AssignStmt",
        "OutputStmt",
        "LossStmt",
        "MetricStmt",
    ]
    assert [item.key for item in train.items] == [
        "data",
        "epochs",
        "batch_size",
        "optimizer",
        "schedule",
        "regularize",
        "validation",
        "seed",
        "early_stopping",
    ]
    assert module.span == Span("digits_cnn.nn", 1, 1, 34, 1)


def test_section_1_example_block_body():
    block = parse(EXAMPLE, "t.nn").decls[0]
    inp, out = block.body
    assert nospan(inp) == ast.InputStmt("x", None, None, None)
    assert out.name is None and out.name_span is None
    assert sx(out.value) == (
        "->",
        "x",
        ("call", "Conv2D", "channels", "kernel", ("=", "padding", "same")),
        ("call", "BatchNorm"),
        "relu",
    )


def test_section_1_example_model_body():
    model = parse(EXAMPLE, "t.nn").decls[1]
    image, label, features, logits, probs, loss, metric = model.body
    assert nospan(image) == ast.InputStmt(
        "image",
        None,
        ast.TypeExpr("float", (ast.Dim(1, None), ast.Dim(8, None), ast.Dim(8, None)), None),
        None,
    )
    assert nospan(label) == ast.TargetStmt("label", None, ast.TypeExpr("int", (), None), None)
    assert sx(features.value) == (
        "->",
        "image",
        (":", "stem", ("call", "ConvBN", 16)),
        ("call", "MaxPool", 2),
        ("call", "ConvBN", 32),
        ("call", "GlobalAvgPool"),
    )
    assert sx(logits.value) == (
        "->",
        "features",
        ("call", "Dropout", 0.25),
        (":", "head", ("call", "Dense", 10)),
    )
    assert probs.name == "probs" and sx(probs.value) == ("call", "softmax", "logits")
    assert sx(loss.value) == (
        "call",
        "cross_entropy",
        "logits",
        "label",
        ("=", "label_smoothing", 0.05),
    )
    assert metric.name is None and sx(metric.value) == ("call", "accuracy", "logits", "label")


def test_section_1_example_train_values():
    train = parse(EXAMPLE, "t.nn").decls[2]
    values = {item.key: sx(item.value) for item in train.items}
    assert values == {
        "data": ("str", "digits"),
        "epochs": 30,
        "batch_size": 64,
        "optimizer": ("call", "AdamW", ("=", "lr", 3e-3), ("=", "weight_decay", 1e-4)),
        "schedule": ("call", "cosine", ("=", "warmup_steps", 50)),
        "regularize": ("list", ("call", "l2", 1e-5, ("=", "on", "weights"))),
        "validation": 0.2,
        "seed": 0,
        "early_stopping": (
            "call",
            "EarlyStopping",
            ("=", "monitor", "val_loss"),
            ("=", "patience", 5),
        ),
    }


def test_section_1_example_spans():
    module = parse(EXAMPLE, "t.nn")
    block, model, train = module.decls
    assert block.span == S(2, 1, 5, 2)
    assert block.name_span == S(2, 7, 2, 13)
    assert block.params[1].span == S(2, 24, 2, 34)
    assert model.span == S(7, 1, 21, 2)
    assert model.name_span == S(7, 7, 7, 16)
    image = model.body[0]
    assert image.span == S(8, 5, 8, 33)
    assert image.name_span == S(8, 12, 8, 17)
    assert image.type.span == S(8, 19, 8, 33)
    assert [d.span for d in image.type.dims] == [S(8, 25, 8, 26), S(8, 28, 8, 29), S(8, 31, 8, 32)]
    features = model.body[2]
    assert features.span == S(11, 5, 15, 27)
    assert features.value.span == S(11, 16, 15, 27)
    stem = features.value.stages[0]
    assert stem.span == S(12, 12, 12, 28)
    assert stem.label_span == S(12, 12, 12, 16)
    assert stem.expr.callee_span == S(12, 18, 12, 24)
    assert stem.expr.span == S(12, 18, 12, 28)
    head = model.body[3].value.stages[1]
    assert head.label == "head" and head.label_span == S(16, 43, 16, 47)
    assert head.expr.callee_span == S(16, 49, 16, 54)
    probs = model.body[4]
    assert probs.span == S(18, 5, 18, 35) and probs.name_span == S(18, 12, 18, 17)
    loss = model.body[5]
    assert loss.span == S(19, 5, 19, 62)
    kw = loss.value.kwargs[0]
    assert kw.span == S(19, 39, 19, 61) and kw.value.span == S(19, 57, 19, 61)
    item = train.items[3]
    assert item.key_span == S(27, 5, 27, 14) and item.span == S(27, 5, 27, 55)
    assert train.span == S(23, 1, 33, 2)


# ---------------------------------------------------------------- declarations


def test_empty_file_is_an_empty_module():
    module = parse("", "empty.nn")
    assert module == ast.Module("empty.nn", (), Span("empty.nn", 1, 1, 1, 1))


def test_comments_and_semicolons_only():
    assert parse("# nothing here\n;;\n  # still nothing\n", "t.nn").decls == ()


def test_file_without_model_parses():
    module = parse("train { epochs = 3 }", "t.nn")
    assert [type(d) for d in module.decls] == [ast.TrainDecl]


def test_block_without_parentheses():
    (decl,) = parse("block B { input x output x }", "t.nn").decls
    assert nospan(decl) == ast.BlockDecl(
        "B",
        None,
        (),
        (ast.InputStmt("x", None, None, None), ast.OutputStmt("x", None, None, None)),
        None,
    )


def test_block_with_empty_parentheses_and_trailing_comma():
    a, b = parse("block A() { output x }\nblock B(c, k = 3,) { output c }", "t.nn").decls
    assert a.params == ()
    assert nospan(b.params) == (ast.Param("c", None, None), ast.Param("k", num(3), None))


def test_block_param_default_may_be_any_value():
    (decl,) = parse('block B(p = same, s = (1, 2), f = "x") { output p }', "t.nn").decls
    assert [sx(p.default) for p in decl.params] == ["same", ("tuple", 1, 2), ("str", "x")]


def test_multiple_declarations_in_order():
    module = parse("block A { output x } model M { } train { } block B { output y }", "t.nn")
    kinds = [type(d).__name__ for d in module.decls]
    assert kinds == ["BlockDecl", "ModelDecl", "TrainDecl", "BlockDecl"]


def test_train_items_and_separators():
    (train,) = parse("train { epochs = 3; seed = 0\n device = cpu ; }", "t.nn").decls
    assert nospan(train) == ast.TrainDecl(
        (
            ast.TrainItem("epochs", None, num(3), None),
            ast.TrainItem("seed", None, num(0), None),
            ast.TrainItem("device", None, N("cpu"), None),
        ),
        None,
    )


def test_train_keys_may_be_statement_words():
    (train,) = parse("train { data = input; loss = 1 }", "t.nn").decls
    assert [(i.key, sx(i.value)) for i in train.items] == [("data", "input"), ("loss", 1)]


# ---------------------------------------------------------------- statements


def test_input_and_target_statements():
    stmts = body("input x: float[1, 8, 8]\ntarget y: int[]\ninput s: float[T, F]\ninput z")
    assert nospan(stmts) == (
        ast.InputStmt(
            "x",
            None,
            ast.TypeExpr("float", (ast.Dim(1, None), ast.Dim(8, None), ast.Dim(8, None)), None),
            None,
        ),
        ast.TargetStmt("y", None, ast.TypeExpr("int", (), None), None),
        ast.InputStmt(
            "s", None, ast.TypeExpr("float", (ast.Dim("T", None), ast.Dim("F", None)), None), None
        ),
        ast.InputStmt("z", None, None, None),
    )


def test_type_dims_allow_trailing_comma_and_lines():
    (stmt,) = body("input x: int[\n  4,\n  T,\n]")
    assert [d.value for d in stmt.type.dims] == [4, "T"]
    assert isinstance(stmt.type.dims[0].value, int)


def test_assignment():
    (stmt,) = body("h = x")
    assert nospan(stmt) == ast.AssignStmt("h", None, N("x"), None)


def test_layer_statement():
    (stmt,) = body("layer enc = Dense(64, bias = false)")
    assert nospan(stmt) == ast.LayerStmt(
        "enc",
        None,
        ast.Call(
            "Dense", None, (num(64),), (ast.Keyword("bias", ast.Bool(False, None), None),), None
        ),
        None,
    )
    assert stmt.name_span == S(2, 7, 2, 10) and stmt.call.callee_span == S(2, 13, 2, 18)


def test_output_bare_name():
    (stmt,) = body("output logits")
    assert nospan(stmt) == ast.OutputStmt("logits", None, None, None)
    assert stmt.name_span == S(2, 8, 2, 14) and stmt.span == S(2, 1, 2, 14)


def test_output_named_expression():
    (stmt,) = body("output probs = softmax(logits)")
    assert stmt.name == "probs" and stmt.name_span == S(2, 8, 2, 13)
    assert sx(stmt.value) == ("call", "softmax", "logits")


def test_output_expression():
    (stmt,) = body("output x -> Conv2D(8)")
    assert stmt.name is None and stmt.name_span is None
    assert sx(stmt.value) == ("->", "x", ("call", "Conv2D", 8))
    (stmt,) = body("output f(x)")
    assert stmt.name is None and sx(stmt.value) == ("call", "f", "x")


def test_loss_statement_with_terms():
    (stmt,) = body("loss ce(a, y) + 0.5 * mse(b, z)")
    assert isinstance(stmt, ast.LossStmt)
    assert sx(stmt.value) == ("+", ("call", "ce", "a", "y"), ("*", 0.5, ("call", "mse", "b", "z")))


def test_metric_statements():
    plain, named = body(
        "metric accuracy(logits, y)\nmetric top5 = top_k_accuracy(logits, y, k = 5)"
    )
    assert plain.name is None and plain.name_span is None
    assert sx(plain.value) == ("call", "accuracy", "logits", "y")
    assert named.name == "top5" and named.name_span == S(3, 8, 3, 12)
    assert sx(named.value) == ("call", "top_k_accuracy", "logits", "y", ("=", "k", 5))


def test_metric_may_name_a_bare_value():
    (stmt,) = body("metric err")
    assert stmt.name is None and sx(stmt.value) == "err"


def test_statements_span_lines_and_semicolons_separate():
    stmts = body("a =\n  x\n  + y; b = a ;; c = b\nd = c")
    assert [s.name for s in stmts] == ["a", "b", "c", "d"]
    assert sx(stmts[0].value) == ("+", "x", "y")
    assert stmts[0].span == S(2, 1, 4, 6)


def test_comments_anywhere():
    stmts = body("a = f(x, # first\n  y) # trailing\n# own line\nb = a")
    assert sx(stmts[0].value) == ("call", "f", "x", "y")
    assert [s.name for s in stmts] == ["a", "b"]


def test_keywords_are_names_outside_statement_starts():
    stmts = body("x = input\ny = f(loss, metric, output, model, train, block, layer, target)")
    assert sx(stmts[0].value) == "input"
    assert sx(stmts[1].value) == (
        "call",
        "f",
        "loss",
        "metric",
        "output",
        "model",
        "train",
        "block",
        "layer",
        "target",
    )


def test_words_containing_keywords_are_names():
    stmts = body("input_ids = val_loss\nloss_scale = output_x\nmetric loss = model_1\ntrue_x = 1")
    assert [s.name for s in stmts] == ["input_ids", "loss_scale", "loss", "true_x"]
    assert isinstance(stmts[2], ast.MetricStmt)
    assert sx(stmts[0].value) == "val_loss" and sx(stmts[2].value) == "model_1"


# ---------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    "src, expected",
    [
        ("a + b * c", ("+", "a", ("*", "b", "c"))),
        ("a * b + c", ("+", ("*", "a", "b"), "c")),
        ("a - b - c", ("-", ("-", "a", "b"), "c")),
        ("a / b * c", ("*", ("/", "a", "b"), "c")),
        ("a @ b * c", ("*", ("@", "a", "b"), "c")),
        ("a + b @ c", ("+", "a", ("@", "b", "c"))),
        ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
        ("-a * b", ("*", ("neg", "a"), "b")),
        ("a * -b", ("*", "a", ("neg", "b"))),
        ("a - -b", ("-", "a", ("neg", "b"))),
        ("a - 1", ("-", "a", 1)),
        ("a-1", ("-", "a", 1)),
        ("a - -1", ("-", "a", -1)),
        ("-(a + b)", ("neg", ("+", "a", "b"))),
        ("- - a", ("neg", ("neg", "a"))),
        ("((a))", "a"),
    ],
)
def test_arithmetic_precedence(src, expected):
    assert sx(expr(src)) == expected


@pytest.mark.parametrize(
    "src, expected",
    [
        ("x -> relu", ("->", "x", "relu")),
        ("x -> A -> B", ("->", "x", "A", "B")),
        ("a + b -> relu", ("->", ("+", "a", "b"), "relu")),
        ("x -> Dense(10)", ("->", "x", ("call", "Dense", 10))),
        ("x -> head: Dense(10)", ("->", "x", (":", "head", ("call", "Dense", 10)))),
        ("x -> act: relu", ("->", "x", (":", "act", "relu"))),
        ("x -> enc -> enc", ("->", "x", "enc", "enc")),
        ("x -> leaky_relu(alpha = 0.1)", ("->", "x", ("call", "leaky_relu", ("=", "alpha", 0.1)))),
        (
            "x -> mean(axis = 0) -> flatten",
            ("->", "x", ("call", "mean", ("=", "axis", 0)), "flatten"),
        ),
        ("f(x -> relu, y)", ("call", "f", ("->", "x", "relu"), "y")),
        ("(x -> relu) * 2", ("*", ("->", "x", "relu"), 2)),
        (
            "concat([a, b], axis = -1) -> relu",
            ("->", ("call", "concat", ("list", "a", "b"), ("=", "axis", -1)), "relu"),
        ),
    ],
)
def test_pipelines(src, expected):
    assert sx(expr(src)) == expected


def test_pipeline_across_lines_and_spans():
    value = expr("x\n  -> head: Dense(10)\n  -> relu")
    assert isinstance(value, ast.Pipeline)
    assert value.span == S(2, 5, 4, 10)
    head, relu = value.stages
    assert head.label_span == S(3, 6, 3, 10) and head.span == S(3, 6, 3, 21)
    assert relu.label is None and relu.label_span is None and relu.span == S(4, 6, 4, 10)
    assert nospan(relu) == ast.Stage(None, None, N("relu"), None)


@pytest.mark.parametrize(
    "src, expected",
    [
        ("f()", ("call", "f")),
        ("f(x)", ("call", "f", "x")),
        ("f(x, y, k = 1)", ("call", "f", "x", "y", ("=", "k", 1))),
        ("f(k = 1, j = 2,)", ("call", "f", ("=", "k", 1), ("=", "j", 2))),
        ("f(x,)", ("call", "f", "x")),
        (
            "Conv2D(8, (3, 3), padding = same)",
            ("call", "Conv2D", 8, ("tuple", 3, 3), ("=", "padding", "same")),
        ),
        (
            "Dense(64, regularizer = l2(1e-4), init = normal(std = 0.02))",
            (
                "call",
                "Dense",
                64,
                ("=", "regularizer", ("call", "l2", 1e-4)),
                ("=", "init", ("call", "normal", ("=", "std", 0.02))),
            ),
        ),
        ("f(\n  x,\n  k = 1\n)", ("call", "f", "x", ("=", "k", 1))),
    ],
)
def test_calls(src, expected):
    assert sx(expr(src)) == expected


def test_call_fields_and_spans():
    value = expr("Conv2D(8, kernel = 3)")
    assert nospan(value) == ast.Call(
        "Conv2D", None, (num(8),), (ast.Keyword("kernel", num(3), None),), None
    )
    assert value.callee_span == S(2, 5, 2, 11)
    assert value.span == S(2, 5, 2, 26)
    assert value.args[0].span == S(2, 12, 2, 13)
    assert value.kwargs[0].span == S(2, 15, 2, 25)


@pytest.mark.parametrize(
    "src, expected",
    [
        ("(3, 3)", ("tuple", 3, 3)),
        ("(3, 3,)", ("tuple", 3, 3)),
        ("(x,)", ("tuple", "x")),
        ("()", ("tuple",)),
        ("(x)", "x"),
        ("(0.9, 0.999)", ("tuple", 0.9, 0.999)),
        ("[a, b]", ("list", "a", "b")),
        ("[a, b,]", ("list", "a", "b")),
        ("[]", ("list",)),
        ("[(1, 2), [3]]", ("list", ("tuple", 1, 2), ("list", 3))),
    ],
)
def test_tuples_and_lists(src, expected):
    assert sx(expr(src)) == expected


def test_tuple_and_list_spans():
    assert expr("(x,)").span == S(2, 5, 2, 9)
    assert expr("[a, b]").span == S(2, 5, 2, 11)


@pytest.mark.parametrize(
    "src, value",
    [
        ('"digits"', "digits"),
        ('""', ""),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        ('"head.*"', "head.*"),
        ('"# not a comment"', "# not a comment"),
        ('"ünïcode"', "ünïcode"),
    ],
)
def test_strings(src, value):
    node = expr(src)
    assert isinstance(node, ast.String) and node.value == value
    assert node.span == S(2, 5, 2, 5 + len(src))


def test_booleans():
    assert nospan(expr("f(true, false)")) == ast.Call(
        "f", None, (ast.Bool(True, None), ast.Bool(False, None)), (), None
    )


@pytest.mark.parametrize(
    "src, value, kind",
    [
        ("3", 3, int),
        ("0", 0, int),
        ("-1", -1, int),
        ("0.25", 0.25, float),
        ("3e-3", 3e-3, float),
        ("1E5", 1e5, float),
        ("2.", 2.0, float),
        ("-0.5", -0.5, float),
        ("1e+2", 100.0, float),
    ],
)
def test_numbers(src, value, kind):
    node = expr(src)
    assert isinstance(node, ast.Number)
    assert node.value == value and type(node.value) is kind
    assert node.text == src
    assert node.span == S(2, 5, 2, 5 + len(src))


def test_negative_literal_folds_with_space():
    node = expr("- 2")
    assert nospan(node) == num(-2, "-2")
    assert node.span == S(2, 5, 2, 8)


def test_negative_of_parenthesised_literal_is_neg():
    assert nospan(expr("-(2)")) == ast.Neg(num(2), None)


def test_double_negative_literal():
    node = expr("--1")
    assert nospan(node) == ast.Neg(num(-1, "-1"), None)
    assert node.span == S(2, 5, 2, 8) and node.operand.span == S(2, 6, 2, 8)


def test_neg_and_binop_spans():
    node = expr("-a * (b + c)")
    assert node.span == S(2, 5, 2, 16)
    assert node.left.span == S(2, 5, 2, 7)
    assert node.right.span == S(2, 11, 2, 16)


def test_long_operator_chain_is_left_associative():
    node = expr(" + ".join(f"x{i}" for i in range(150)))
    depth = 0
    while isinstance(node, ast.BinOp):
        assert node.right == ast.Name(f"x{149 - depth}", node.right.span)
        node, depth = node.left, depth + 1
    assert depth == 149 and node.id == "x0"


def test_deep_but_allowed_nesting():
    node = expr("f(" * 90 + "x" + ")" * 90)
    depth = 0
    while isinstance(node, ast.Call):
        node, depth = node.args[0], depth + 1
    assert depth == 90 and node.id == "x"


# ---------------------------------------------------------------- input forms


def test_bytes_crlf_and_bom():
    src = "\ufeffmodel M {\r\n  x = a\r\n}\r\n".encode()
    module = parse(src, "t.nn")
    (stmt,) = module.decls[0].body
    assert stmt.span == S(2, 3, 2, 8)
    assert module.decls[0].span == S(1, 1, 3, 2)


def test_tabs_count_as_one_column():
    (stmt,) = body("\tx = a")
    assert stmt.name_span == S(2, 2, 2, 3)


def test_parse_file_reads_the_file(tmp_path):
    path = tmp_path / "m.nn"
    path.write_bytes(EXAMPLE.encode("utf-8"))
    module = parse_file(str(path))
    assert module.file == str(path)
    assert module.decls[1].span.file == str(path)
    assert nospan(module) == nospan(parse(EXAMPLE, str(path)))


def test_same_source_same_tree():
    assert parse(EXAMPLE, "a.nn") == parse(EXAMPLE.encode(), "a.nn")
