"""Property tests: no input file whatsoever makes `dslc check` crash.

Every input must either parse or raise `DslcError`, and the command line must
exit with 0 or 1 and print no internal error.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_example import EXAMPLE

from dslc.cli import main
from dslc.errors import DslcError
from dslc.syntax import ast, parse

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
CORPUS = [EXAMPLE.encode()] + [p.read_bytes() for p in sorted(EXAMPLES_DIR.glob("*.nn"))]

TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|->|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\w+|\s+|.', re.DOTALL
)
VOCABULARY = [
    "model",
    "block",
    "train",
    "input",
    "target",
    "layer",
    "output",
    "loss",
    "metric",
    "x",
    "y",
    "M",
    "Dense",
    "Conv2D",
    "relu",
    "softmax",
    "cross_entropy",
    "accuracy",
    "float",
    "int",
    "true",
    "false",
    "same",
    "3",
    "-1",
    "0.5",
    "1e-3",
    '"s"',
    '"',
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ";",
    "=",
    "->",
    "+",
    "-",
    "*",
    "/",
    "@",
    "#",
    "\n",
    " ",
]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_survives(workdir: Path, data: bytes) -> None:
    """`parse` returns a Module or raises DslcError; `dslc check` exits 0 or 1 cleanly."""
    try:
        assert isinstance(parse(data, "fuzz.nn"), ast.Module)
    except DslcError as err:
        assert err.diagnostics and err.message
    path = workdir / "fuzz.nn"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(["check", str(path)])
    assert status in (0, 1), err.getvalue()
    assert "internal error" not in err.getvalue(), err.getvalue()
    assert "Traceback" not in err.getvalue(), err.getvalue()


def tokens(data: bytes) -> list[str]:
    return TOKEN.findall(data.decode("utf-8", errors="replace"))


def test_corpus_is_valid(workdir):
    assert len(CORPUS) >= 1
    for data in CORPUS:
        assert parse(data, "corpus.nn").decls


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(workdir, data):
    check_survives(workdir, data)


@FUZZ
@given(st.lists(st.sampled_from(VOCABULARY), max_size=60))
def test_random_token_soup(workdir, words):
    check_survives(workdir, " ".join(words).encode())


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_truncations(workdir, source, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(source)))
    check_survives(workdir, source[:cut])


@FUZZ
@given(
    st.sampled_from(CORPUS),
    st.lists(
        st.tuples(st.sampled_from(["delete", "duplicate", "swap"]), st.integers(0), st.integers(0)),
        min_size=1,
        max_size=4,
    ),
)
def test_token_mutations(workdir, source, edits):
    toks = tokens(source)
    for kind, i, j in edits:
        if not toks:
            break
        i, j = i % len(toks), j % len(toks)
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        else:
            toks[i], toks[j] = toks[j], toks[i]
    check_survives(workdir, "".join(toks).encode())
