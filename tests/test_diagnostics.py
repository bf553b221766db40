"""One test per diagnostic of the checker: exact line and column, message and hint."""

from __future__ import annotations

import pytest

from dslc.check import check_source
from dslc.errors import Diagnostic, DslcError, render

HEAD = "model M {\n  input x: float[64]\n  target y: int[]\n"


def diags(src: str) -> list[Diagnostic]:
    with pytest.raises(DslcError) as info:
        check_source(src, "t.nn")
    return info.value.diagnostics


def one(src: str, line: int, col: int, fragment: str, hint: str | None = None) -> Diagnostic:
    ds = diags(src)
    assert len(ds) == 1, [d.message for d in ds]
    d = ds[0]
    assert (d.span.file, d.span.line, d.span.col) == ("t.nn", line, col), d
    assert fragment in d.message, d.message
    if hint is not None:
        assert d.hint is not None and hint in d.hint, d.hint
    return d


def body(*lines: str) -> str:
    """A model with input x: float[64] and target y: int[]; lines start at line 4."""
    return HEAD + "".join(f"  {line}\n" for line in lines) + "}\n"


# ---------------------------------------------------------------- file structure


def test_missing_model_is_reported_at_1_1():
    one("train { epochs = 3 }\n", 1, 1, "no `model`")


def test_empty_file_has_no_model():
    one("", 1, 1, "no `model`")


def test_second_model():
    src = body("output z = x") + "model N {\n  input a: float[1]\n}\n"
    one(src, 6, 7, "exactly one model", "`M`")


def test_second_train_block():
    src = body("output z = x") + "train { epochs = 1 }\ntrain { epochs = 2 }\n"
    one(src, 7, 1, "at most one `train`")


def test_block_defined_twice():
    src = "block B { input a\n output a }\nblock B { input a\n output a }\n" + body("output z = x")
    one(src, 3, 7, "defined twice", "line 1")


def test_lower_case_block_name():
    one("block conv { input a\n output a }\n" + body("output z = x"), 1, 7, "capitalised")


# ---------------------------------------------------------------- names and callees


def test_unknown_layer_suggests_close_name():
    one(body("h = x -> Dens(10)"), 4, 12, "unknown layer `Dens`", "did you mean `Dense`?")


def test_lower_case_layer_name_suggests_the_layer():
    one(body("h = x -> dense(10)"), 4, 12, "unknown function `dense`", "did you mean `Dense`?")


def test_capitalised_function_suggests_the_function():
    one(body("h = x -> Relu"), 4, 12, "unknown layer `Relu`", "did you mean `relu`?")


def test_unknown_function_in_expression():
    one(body("h = sigmod(x)"), 4, 7, "unknown function `sigmod`", "did you mean `sigmoid`?")


def test_unknown_value_suggests_defined_name():
    one(
        body("hidden = x -> relu", "z = hiden + x"),
        5,
        7,
        "unknown name `hiden`",
        "did you mean `hidden`?",
    )


def test_unknown_keyword_argument():
    one(body("h = x -> Dense(10, unit = 3)"), 4, 22, "no argument `unit`", "did you mean `units`?")


def test_too_many_positional_arguments():
    one(body("h = x -> Dense(10, true, 3)"), 4, 28, "at most")


def test_missing_required_argument():
    one(body("h = x -> Dense()"), 4, 12, "needs the argument `units`", "Dense(units")


def test_argument_of_wrong_type():
    one(body('h = x -> Dense("ten")'), 4, 18, "`units` of `Dense`: expected an integer")


def test_argument_out_of_range():
    one(body("h = x -> Dropout(1.5)"), 4, 20, "`rate` of `Dropout`", None)


def test_bad_enum_word():
    d = one(body("h = x -> Conv1D(4, 3, padding = sme)"), 4, 35, "padding expects")
    assert "`sme`" in d.message


def test_unknown_initialiser():
    one(
        body("h = x -> Dense(4, init = glorot)"),
        4,
        28,
        "unknown initialiser `glorot`",
        "did you mean",
    )


def test_duplicate_value_name():
    one(body("h = x -> relu", "h = x -> tanh"), 5, 3, "`h` is already defined", "line 4")


def test_duplicate_label():
    one(
        body("a = x -> enc: Dense(4)", "b = x -> enc: Dense(4)"),
        5,
        12,
        "layer name `enc` is used twice",
        "line 4",
    )


def test_label_on_a_function():
    one(body("h = x -> act: relu"), 4, 12, "label names a layer")


def test_layer_needs_an_input():
    one(body("h = Dense(10)"), 4, 7, "needs an input", "x -> Dense(...)")


def test_value_used_as_a_stage():
    one(body("h = x -> relu", "z = x -> h"), 5, 12, "`h` is a value")


def test_function_used_as_a_value():
    one(body("z = relu + x"), 4, 7, "`relu` is a function")


# ---------------------------------------------------------------- types and shapes


def test_conv2d_on_a_flat_input():
    one(
        body("h = x -> Conv2D(8, 3)"), 4, 12, "Conv2D expects [C, H, W], got [64]", "float[1, 8, 8]"
    )


def test_conv_needs_fixed_spatial_dims():
    src = "model M {\n  input s: float[3, T]\n  h = s -> Conv1D(4, 3)\n}\n"
    one(src, 3, 12, "symbolic size `T`")


def test_same_padding_with_stride_is_an_error():
    src = (
        "model M {\n  input s: float[1, 8, 8]\n"
        "  h = s -> Conv2D(4, 3, stride = 2, padding = same)\n}\n"
    )
    one(src, 3, 12, "padding = same needs stride 1")


def test_kernel_larger_than_input():
    src = "model M {\n  input s: float[1, 2, 2]\n  h = s -> Conv2D(4, 3)\n}\n"
    one(src, 3, 12, "does not fit")


def test_dense_on_int_input_hints_embedding():
    src = "model M {\n  input t: int[T]\n  h = t -> Dense(4)\n}\n"
    one(src, 3, 12, "Dense expects a float input, got int[T]", "Embedding")


def test_embedding_on_float_input():
    one(body("h = x -> Embedding(10, 4)"), 4, 12, "Embedding expects integer ids")


def test_recurrent_layer_needs_a_sequence():
    one(body("h = x -> LSTM(8)"), 4, 12, "LSTM expects a sequence [T, F], got [64]")


def test_broadcast_mismatch_shows_both_shapes():
    d = one(body("a = x -> Dense(32)", "z = x + a"), 5, 7, "cannot broadcast [64] and [32]")
    assert "NumPy" in d.hint


def test_matmul_mismatch():
    src = "model M {\n  input a: float[4, 5]\n  input b: float[4, 5]\n  z = a @ b\n}\n"
    one(src, 4, 7, "cannot multiply [4, 5] by [4, 5]")


def test_arithmetic_on_int_values():
    one(body("z = y + 1"), 4, 7, "needs float values")


def test_axis_out_of_range():
    one(body("z = softmax(x, axis = 1)"), 4, 7, "axis 1 is out of range", "per-example")


def test_reshape_with_wrong_element_count():
    one(body("z = reshape(x, (3, 3))"), 4, 7, "cannot turn [64] into [3, 3]")


def test_unknown_element_type():
    one("model M {\n  input x: double[3]\n}\n", 2, 12, "unknown element type `double`")


def test_model_input_needs_a_type():
    one("model M {\n  input x\n}\n", 2, 9, "needs a type", "input x: float[...]")


def test_zero_dimension():
    one("model M {\n  input x: float[0]\n}\n", 2, 18, "at least 1")


# ---------------------------------------------------------------- losses, metrics, outputs


def test_loss_must_be_a_scalar():
    one(body("loss mean(x)"), 4, 8, "loss must be a scalar", "mse(...)")


def test_one_loss_statement():
    one(body("loss cross_entropy(x, y)", "loss cross_entropy(x, y)"), 5, 3, "one `loss`", "line 4")


def test_metric_inside_the_loss():
    one(body("loss cross_entropy(x, y) + accuracy(x, y)"), 4, 30, "`accuracy` is a metric")


def test_duplicate_metric_name():
    one(
        body("metric accuracy(x, y)", "metric accuracy(x, y)"),
        5,
        10,
        "metric `accuracy` is reported twice",
    )


def test_metric_expression_needs_a_name():
    one(body("metric accuracy(x, y) * 2"), 4, 10, "needs a name", "metric NAME = EXPR")


def test_cross_entropy_label_shape():
    src = "model M {\n  input x: float[T, 5]\n  target y: int[]\n  loss cross_entropy(x, y)\n}\n"
    one(src, 4, 8, "int labels must have shape [T]", "class index")


def test_cross_entropy_with_one_class():
    src = "model M {\n  input x: float[1]\n  target y: int[]\n  loss cross_entropy(x, y)\n}\n"
    one(src, 4, 8, "at least 2 classes", "binary_cross_entropy")


def test_regression_loss_with_int_targets():
    one(
        body("loss mse(x -> Dense(1) -> mean(axis = -1), y)"),
        4,
        8,
        "expects float targets",
        "float[]",
    )


def test_regression_loss_shape_mismatch():
    src = "model M {\n  input x: float[4]\n  target t: float[]\n  loss mse(x -> Dense(1), t)\n}\n"
    one(src, 4, 8, "predictions [1] and targets [] differ", "float[1]")


def test_loss_function_with_too_few_values():
    one(body("loss cross_entropy(x)"), 4, 8, "needs 2 value arguments, got 1")


def test_output_depending_on_a_target():
    one(body("output z = y -> Embedding(10, 4)"), 4, 3, "depends on the target `y`")


def test_output_declared_twice():
    one(body("output x", "output x"), 5, 10, "declared twice")


def test_output_of_a_loss():
    one(body("output l = cross_entropy(x, y)"), 4, 3, "scalar over the whole batch")


def test_top_k_larger_than_classes():
    src = (
        "model M {\n  input x: float[3]\n  target y: int[]\n"
        "  metric top_k_accuracy(x, y, k = 5)\n}\n"
    )
    one(src, 4, 10, "exceeds the 3 classes")


# ---------------------------------------------------------------- blocks and shared layers


BLOCK = "block B(units, act = relu) {\n  input a\n  output a -> Dense(units)\n}\n"


def test_block_recursion_shows_the_chain():
    src = "block A { input a\n output a -> B() }\nblock B { input a\n output a -> A() }\n" + body(
        "z = x -> A()"
    )
    # the cycle closes at B's call of A
    d = one(src, 4, 14, "block `A` uses itself: A -> B -> A")
    assert "recursive" in d.hint


def test_block_missing_argument():
    one(BLOCK + body("z = x -> B()"), 8, 12, "needs the argument `units`")


def test_block_too_many_arguments():
    one(BLOCK + body("z = x -> B(1, 2, 3)"), 8, 20, "takes 2 arguments, got 3")


def test_block_unknown_keyword():
    one(
        BLOCK + body("z = x -> B(4, unit = 3)"),
        8,
        17,
        "no parameter `unit`",
        "did you mean `units`?",
    )


def test_error_inside_a_block_points_into_the_block():
    src = "block B(n) {\n  input a\n  output a -> Conv2D(n, 3)\n}\n" + body("z = x -> B(4)")
    one(src, 3, 15, "Conv2D expects [C, H, W], got [64]")


def test_block_with_a_loss():
    src = "block B {\n  input a\n  loss mse(a, a)\n  output a\n}\n" + body("z = x -> B()")
    one(src, 3, 3, "`loss` belongs in the model")


def test_block_input_takes_no_type():
    src = "block B {\n  input a: float[3]\n  output a\n}\n" + body("z = x -> B()")
    one(src, 2, 12, "takes no type")


def test_block_needs_one_input():
    src = "block B {\n  output 1\n}\n" + body("z = x -> B()")
    one(src, 1, 7, "exactly one `input`")


def test_shared_layer_applied_to_another_shape():
    src = (
        "model M {\n  input a: float[8]\n  input b: float[4]\n  layer enc = Dense(3)\n"
        "  p = a -> enc\n  q = b -> enc\n}\n"
    )
    one(src, 6, 12, "shared layer `enc` was built for float[8]")


def test_shared_layer_cannot_be_labelled():
    one(body("layer enc = Dense(3)", "z = x -> e: enc"), 5, 12, "cannot be labelled")


def test_shared_block_is_rejected():
    one(BLOCK + body("layer b = B(3)"), 8, 13, "is a block")


# ---------------------------------------------------------------- train settings


def train(*items: str) -> str:
    """A valid model followed by a train block whose items start at line 11."""
    model = body(
        "logits = x -> Dense(10)", "loss cross_entropy(logits, y)", "metric accuracy(logits, y)"
    )
    return model + "train {\n" + "".join(f"  {i}\n" for i in items) + "}\n"


def test_unknown_train_key():
    one(train("epoch = 3"), 9, 3, "unknown train setting `epoch`", "did you mean `epochs`?")


def test_train_key_set_twice():
    one(train("epochs = 3", "epochs = 4"), 10, 3, "`epochs` is set twice", "line 9")


def test_train_value_out_of_range():
    one(train("batch_size = 0"), 9, 16, "`batch_size`: value 0 is out of range")


def test_data_must_be_a_string():
    one(train("data = digits"), 9, 10, "`data` expects a string", '"digits"')


def test_unknown_optimiser():
    one(
        train("optimizer = Adamm(lr = 1e-3)"),
        9,
        15,
        "unknown optimiser `Adamm`",
        "did you mean `Adam`?",
    )


def test_unknown_optimiser_option():
    one(train("optimizer = Adam(learning_rate = 1e-3)"), 9, 20, "`Adam` has no argument")


def test_nesterov_without_momentum():
    one(
        train("optimizer = SGD(lr = 0.1, nesterov = true)"), 9, 15, "nesterov = true needs momentum"
    )


def test_unknown_schedule():
    one(train("schedule = cosin()"), 9, 14, "unknown schedule `cosin`", "did you mean `cosine`?")


def test_validation_fraction_range():
    one(train("validation = 1.5"), 9, 16, "must be in [0, 1)")


def test_bad_device():
    one(train("device = gpu"), 9, 12, "expected one of `auto`, `cpu`, `cuda`", "`cuda`")


def test_regularizer_glob_matching_nothing():
    one(train('regularize = [l2(1e-4, on = "head.*")]'), 9, 17, "matches no parameter", "dense_1")


def test_unknown_regularizer():
    one(train("regularize = [l3(1e-4)]"), 9, 17, "unknown regulariser `l3`", "l1(c), l2(c)")


def test_early_stopping_monitor_must_be_reported():
    one(
        train("early_stopping = EarlyStopping(monitor = val_acc)"),
        9,
        3,
        "monitors `val_acc`",
        "did you mean `val_accuracy`?",
    )


def test_early_stopping_bad_mode():
    one(train("early_stopping = EarlyStopping(mode = up)"), 9, 41, "`mode` of `EarlyStopping`")


# ---------------------------------------------------------------- several errors at once


def test_several_independent_errors_in_one_run():
    src = (
        body(
            "a = x -> Dens(10)",  # line 4
            "b = a -> relu",  # line 5: uses a failed name, so no second error
            "c = x -> Conv2D(4, 3)",  # line 6
            "d = x -> Dense(10)",  # line 7: fine
            "e = d + qq",  # line 8
        )
        + "train {\n  epoch = 3\n}\n"
    )  # line 10
    ds = diags(src)
    got = [(d.span.line, d.span.col) for d in ds]
    assert got == [(4, 12), (6, 12), (8, 11), (11, 3)]
    assert "Dens" in ds[0].message and "Conv2D" in ds[1].message
    assert "qq" in ds[2].message and "epoch" in ds[3].message


def test_errors_in_two_block_instances_are_reported_once():
    src = "block B {\n  input a\n  output a -> Dens(3)\n}\n" + body("p = x -> B()", "q = x -> B()")
    ds = diags(src)
    assert [(d.span.line, d.span.col) for d in ds] == [(3, 15)]


def test_rendered_diagnostic_has_location_caret_and_hint():
    src = body("h = x -> Dens(10)")
    d = diags(src)[0]
    text = render(d, src)
    assert text.splitlines()[0] == "t.nn:4:12: error: unknown layer `Dens`"
    assert text.splitlines()[2].strip() == "^~~~"
    assert text.splitlines()[-1] == "hint: did you mean `Dense`?"


def test_blocks_nested_too_deeply():
    blocks = "".join(f"block B{i} {{ input a\n output a -> B{i + 1}() }}\n" for i in range(40))
    src = blocks + "block B40 { input a\n output a }\n" + body("z = x -> B0()")
    (d,) = diags(src)
    assert "nested more than 32 deep" in d.message
    assert (d.span.line, d.span.col) == (64, 14)


def test_quoted_enum_word_hints_the_bare_word():
    src = 'model M {\n  input s: float[1, 8, 8]\n  h = s -> Conv2D(4, 3, padding = "same")\n}\n'
    one(src, 3, 35, "padding expects", "padding = same")


def test_inexact_division_is_not_an_integer():
    one(
        body("h = x -> Dense(5 / 2)"),
        4,
        18,
        "`units` of `Dense`: expected an integer, got the number 2.5",
    )


@pytest.mark.parametrize("name", ["loss", "lr", "val_accuracy"])
def test_reserved_metric_names(name):
    one(body(f"metric {name} = cross_entropy(x, y)"), 4, 10, f"`{name}` cannot name a metric")


def test_shared_layer_applied_with_arguments():
    one(
        body("layer enc = Dense(3)", "z = x -> enc(4)"),
        5,
        12,
        "takes no arguments",
        "layer enc = ...",
    )


def test_unknown_callees_in_an_unused_block():
    src = (
        "block Unused(n) {\n"
        "  input a\n"
        "  layer s = Dense(3, init = normal(std = 0.1))\n"
        "  h = a -> Dens(n) -> relu -> s -> concat(a, axis = 0)\n"
        "  output (h -> sigmod) + softmax(h)\n"
        "}\n" + body("output z = x")
    )
    ds = diags(src)
    assert [(d.span.line, d.span.col) for d in ds] == [(4, 12), (5, 16)]
    assert [d.hint for d in ds] == ["did you mean `Dense`?", "did you mean `sigmoid`?"]


def test_parameter_too_large():
    one(body("z = x -> Dense(99999) -> Dense(99999)"), 4, 28, "would hold 9,999,800,001 values")


def test_a_long_source_line_is_shown_as_a_window_around_the_caret() -> None:
    from dslc.errors import Diagnostic, Span, render

    line = "x" * 500 + "BAD" + "y" * 500
    text = render(Diagnostic("oops", Span("f.nn", 1, 501, 1, 504)), line)
    shown, caret = text.splitlines()[1:3]
    assert len(shown) < 120 and shown.strip().startswith("...") and shown.endswith("...")
    assert shown[caret.index("^") : caret.index("^") + 3] == "BAD"
    assert caret.strip() == "^~~"


# ---------------------------------------------------------------- names the step graphs use


@pytest.mark.parametrize("name", ["step", "seed", "lr", "loss"])
def test_input_named_like_a_training_step_value(name: str):
    src = f"model M {{\n  input {name}: float[4]\n  output z = {name}\n}}\n"
    one(src, 2, 9, f"`{name}` cannot name an input", "reserved: loss, lr, seed, step")


def test_target_named_like_a_training_step_value():
    one("model M {\n  input x: float[4]\n  target seed: int[]\n}\n", 3, 10,
        "`seed` cannot name a target")


def test_output_named_loss():
    one(body("output loss = x"), 4, 10, "`loss` cannot name an output: it names the loss")


def test_metric_named_like_an_output():
    src = body("output mse = x", "metric mse(x, x)")
    one(src, 5, 10, "`mse` cannot name a metric: it names an output", "line 4")


def test_output_named_like_a_metric():
    src = body("logits = x -> Dense(10)", "metric acc = accuracy(logits, y)", "output acc = logits")
    one(src, 6, 10, "`acc` cannot name an output: it names a metric")


def test_value_hiding_a_function_says_so():
    src = body("logits = x -> Dense(10)", "accuracy = logits", "metric accuracy(logits, y)")
    one(src, 6, 10, "`accuracy` cannot be called", "value defined at line 5")


def test_reshape_moving_two_symbolic_sizes():
    """Evaluation and inference graphs could not infer both sizes (one ONNX Reshape -1)."""
    src = "model M {\n  input x: float[T, U]\n  output h = reshape(x, (U, T))\n}\n"
    one(src, 3, 14, "moves the symbolic sizes `U`, `T`", "transpose")
