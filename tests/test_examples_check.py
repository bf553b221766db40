"""Every example in examples/ checks clean, starts with a comment and finds its data files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dslc.check import check_file
from dslc.check.model import CallValue
from dslc.check.summary import summary

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(EXAMPLES.glob("*.nn"))


def test_the_examples_are_there():
    names = {f.name for f in FILES}
    assert {
        "digits_mlp.nn",
        "digits_cnn.nn",
        "digits_lstm.nn",
        "char_gru.nn",
        "regression.nn",
        "autoencoder.nn",
        "residual.nn",
        "residual_cnn.nn",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_checks_clean(path: Path):
    m = check_file(str(path))
    assert path.read_text().startswith("#")
    assert m.loss is not None and m.outputs
    assert summary(m).startswith(f"model {m.name}")
    data = m.train.data
    if isinstance(data, CallValue):
        data = data.kw()["path"]
    if data != "digits":
        assert (path.parent / data).is_file(), data


def test_regression_csv_matches_the_model():
    m = check_file(str(EXAMPLES / "regression.nn"))
    (x,) = m.inputs
    (y,) = m.targets
    with open(EXAMPLES / "data" / "regression.csv") as f:
        header = next(csv.reader(f))
    assert header == [f"{x.name}.{i}" for i in range(x.type.shape[0])] + [y.name]


def test_digit_models_bind_to_64_pixels():
    for name in (
        "digits_mlp",
        "digits_cnn",
        "digits_lstm",
        "residual",
        "residual_cnn",
        "autoencoder",
    ):
        m = check_file(str(EXAMPLES / f"{name}.nn"))
        (x,) = m.inputs
        assert x.type.dtype == "float32" and x.type.shape in ((64,), (1, 8, 8), (8, 8))
