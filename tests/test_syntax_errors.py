"""Syntax diagnostics: each user mistake gives one DslcError with its message, line and column."""

from __future__ import annotations

import pytest

from dslc.errors import DslcError, render
from dslc.syntax import ast, parse, parse_file


def error_of(src: str | bytes) -> DslcError:
    with pytest.raises(DslcError) as info:
        parse(src, "bad.nn")
    assert len(info.value.diagnostics) == 1
    return info.value


def assert_error(src: str | bytes, fragment: str, line: int, col: int) -> DslcError:
    err = error_of(src)
    assert fragment in err.message, err.message
    assert err.span is not None and err.span.file == "bad.nn"
    assert (err.span.line, err.span.col) == (line, col), err.span
    return err


# ---------------------------------------------------------------- raw text


def test_invalid_utf8_points_at_first_bad_byte():
    src = 'model M {\n  x = "é" \xff\n}'.encode("latin-1").replace(b"\xe9", "é".encode())
    assert_error(src, "file is not valid UTF-8 text", 2, 11)


def test_invalid_utf8_on_first_line():
    assert_error(b"\x80model M {}", "file is not valid UTF-8 text", 1, 1)


def test_nul_character():
    assert_error("model M {\n  x = a\0\n}", "NUL character U+0000", 2, 8)


def test_control_character():
    assert_error("model M { x = \x07a }", "control character U+0007", 1, 15)


def test_control_character_inside_comment_is_still_refused():
    assert_error("# note \x1b[31m\nmodel M {}", "control character U+001B", 1, 8)


def test_line_separator_character():
    assert_error("model M {\u2028}", "U+2028", 1, 10)


# ---------------------------------------------------------------- characters and strings


def test_unexpected_character():
    err = assert_error("model M {\n  x = a $ b\n}", "unexpected character `$`", 2, 9)
    assert err.span.end_col == 10


def test_non_ascii_letter_in_name():
    err = assert_error("model M { x = aé }", "unexpected character `é`", 1, 16)
    assert "ASCII" in err.diagnostics[0].hint


def test_single_quotes():
    err = assert_error("model M { x = f('a') }", "unexpected character `'`", 1, 17)
    assert "double quotes" in err.diagnostics[0].hint


def test_unterminated_string_points_at_opening_quote():
    assert_error('train {\n  data = "digits\n}', "unterminated string", 2, 10)


def test_unterminated_string_with_escaped_quote():
    assert_error('train { data = "abc\\" }', "unterminated string", 1, 16)


def test_unknown_escape_sequence():
    assert_error('train { data = "a\\qb" }', "unknown escape sequence `\\q`", 1, 18)


# ---------------------------------------------------------------- unexpected tokens


def test_expected_an_expression():
    assert_error("model M {\n  x =\n}", "unexpected `}`; expected an expression", 3, 1)


def test_expected_an_expression_after_operator():
    assert_error("model M { loss a + * b }", "expected an expression", 1, 20)


def test_expected_closing_parenthesis():
    err = assert_error("model M { x = Dense(10 }", "unexpected `}`; expected `)` or `,`", 1, 24)
    assert err.span.end_col == 25


def test_missing_comma_between_arguments():
    assert_error("model M { x = f(a b) }", "unexpected name `b`; expected `)` or `,`", 1, 19)


def test_expected_closing_bracket_of_type():
    assert_error("model M { input x: float[1, 8 }", "expected `]` or `,`", 1, 31)


def test_expected_closing_brace():
    assert_error(
        "model M { x = a } }", "unexpected `}`; expected `model`, `block` or `train`", 1, 19
    )


def test_top_level_statement():
    assert_error("x = 1", "unexpected name `x`; expected `model`, `block` or `train`", 1, 1)


def test_expected_a_statement():
    assert_error("model M {\n  3\n}", "unexpected number `3`; expected `}` or a statement", 2, 3)


def test_expected_stage_name_after_arrow():
    assert_error("model M { x = a -> 3 }", "expected a layer or function name after `->`", 1, 20)


def test_layer_statement_needs_a_call():
    assert_error("model M { layer enc = Dense }", "unexpected `}`; expected `(`", 1, 29)


def test_model_needs_a_name():
    assert_error("model { }", "unexpected `{`; expected a name", 1, 7)


def test_keyword_used_as_statement_name():
    err = assert_error("model M { input = 3 }", "unexpected `=`", 1, 17)
    assert "`input` is a keyword" in err.diagnostics[0].hint


def test_unknown_element_type():
    assert_error("model M { input x: double[1] }", "unknown element type `double`", 1, 20)


def test_fractional_dimension():
    assert_error("model M { input x: float[1.5] }", "not a whole number", 1, 26)


def test_type_without_brackets():
    assert_error("model M { input x: float }", "unexpected `}`; expected `[`", 1, 26)


# ---------------------------------------------------------------- end of file


def test_unexpected_end_of_file_missing_brace():
    err = assert_error("model M {\n  x = a\n", "unexpected end of file", 2, 8)
    hint = err.diagnostics[0].hint
    assert "is a `}` missing?" in hint and "line 1, column 9" in hint


def test_unexpected_end_of_file_missing_parenthesis():
    err = assert_error("model M {\n  x = f(a,\n", "unexpected end of file", 2, 11)
    assert "is a `)` missing?" in err.diagnostics[0].hint
    assert "expected `)` or an expression" in err.message


def test_unexpected_end_of_file_after_keyword():
    assert_error("model", "unexpected end of file; expected a name", 1, 6)


# ---------------------------------------------------------------- arguments


def test_positional_argument_after_keyword():
    err = assert_error(
        "model M {\n  x = Conv2D(kernel = 3, 8)\n}",
        "positional argument after keyword argument",
        2,
        26,
    )
    assert err.span.end_col == 27


def test_duplicate_keyword_argument():
    err = assert_error(
        "model M { x = Dense(10, bias = true, bias = false) }",
        "duplicate keyword argument `bias`",
        1,
        38,
    )
    assert err.span.end_col == 42


def test_duplicate_keyword_in_train_value():
    assert_error(
        "train { optimizer = SGD(lr = 1, lr = 2) }", "duplicate keyword argument `lr`", 1, 33
    )


# ---------------------------------------------------------------- nesting


def test_ten_thousand_nested_parentheses():
    src = "model M { x = " + "(" * 10_000 + "a" + ")" * 10_000 + " }"
    # `{` is level 1, so the 100th `(` is level 101.
    assert_error(src, "expression nested too deeply", 1, 15 + 99)


def test_nesting_counts_brackets_of_every_kind():
    src = "model M {\n x = " + "[f(" * 60 + "a" + ")]" * 60 + "\n}"
    # `{` is level 1; the `(` of the 50th `[f(` is level 101.
    assert_error(src, "expression nested too deeply", 2, 6 + 3 * 49 + 2)


def test_unclosed_deep_nesting():
    assert_error("model M { x = " + "(" * 10_000, "expression nested too deeply", 1, 114)


def test_brackets_in_strings_and_comments_do_not_count():
    src = "model M { # " + "(" * 500 + '\n x = "' + "[" * 500 + '" }'
    module = parse(src, "ok.nn")
    assert module.decls[0].body[0].value.value == "[" * 500


def test_long_addition_chain_is_an_error_not_a_crash():
    src = "model M {\n  x = " + " + ".join(["a"] * 10_000) + "\n}"
    err = assert_error(src, "expression nested too deeply", 2, 7)
    assert "named values" in err.diagnostics[0].hint


def test_long_unary_minus_chain():
    assert_error("model M { x = " + "-" * 10_000 + "a }", "expression nested too deeply", 1, 15)


def test_long_pipelines_and_many_statements_are_fine():
    src = "model M {\n" + "x = a" + " -> relu" * 5_000 + "\n" + "y = x\n" * 2_000 + "}"
    module = parse(src, "ok.nn")
    assert len(module.decls[0].body) == 2_001
    assert len(module.decls[0].body[0].value.stages) == 5_000


# ---------------------------------------------------------------- not errors


@pytest.mark.parametrize("src", ["", "   \n\n", "# only a comment", ";", "block B { output x }"])
def test_no_model_is_not_a_parse_error(src):
    module = parse(src, "m.nn")
    assert isinstance(module, ast.Module)
    assert not any(isinstance(d, ast.ModelDecl) for d in module.decls)


# ---------------------------------------------------------------- files and rendering


def test_missing_file_has_no_span(tmp_path):
    missing = tmp_path / "nope.nn"
    with pytest.raises(DslcError) as info:
        parse_file(str(missing))
    assert info.value.span is None
    assert "cannot read" in info.value.message and "nope.nn" in info.value.message


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(DslcError) as info:
        parse_file(str(tmp_path))
    assert info.value.span is None


def test_rendered_diagnostic_format():
    src = "model M {\n  x = Dense(10\n}\n"
    err = error_of(src)
    text = render(err.diagnostics[0], src)
    lines = text.splitlines()
    assert lines[0] == "bad.nn:3:1: error: unexpected `}`; expected `)` or `,`"
    assert lines[1] == "    }"
    assert lines[2] == "    ^"


def test_missing_closing_brace_before_next_declaration():
    err = assert_error("model M {\n  x = a\ntrain { epochs = 3 }", "unexpected `{`", 3, 7)
    assert err.diagnostics[0].hint == "is a `}` missing before `train`?"


def test_missing_closing_brace_of_block_before_model():
    err = assert_error("block B {\n  output x\nmodel M { }", "unexpected name `M`", 3, 7)
    assert err.diagnostics[0].hint == "is a `}` missing before `model`?"


def test_declaration_word_at_top_level_gets_no_brace_hint():
    err = assert_error("model { }", "expected a name", 1, 7)
    assert err.diagnostics[0].hint is None
