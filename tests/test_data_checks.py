"""`dslc train` refuses bad data before the first step, with one line naming file, key and row."""

from __future__ import annotations

import numpy as np
import pytest

from dslc.cli import main

MODEL = """
model Tok {
    input  ids: int[6]
    input  extra: float[3]
    target label: int[]
    pooled = ids -> Embedding(20, 4) -> mean(axis = 0)
    logits = concat(pooled, extra, axis = 0) -> head: Dense(5)
    loss cross_entropy(logits, label)
}

train {
    data       = "data.npz"
    epochs     = 1
    batch_size = 4
}
"""


def _good(n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "ids": rng.integers(0, 20, size=(n, 6)),
        "extra": rng.normal(size=(n, 3)).astype(np.float32),
        "label": rng.integers(0, 5, size=n),
    }


def _with(**changes):
    arrays = _good()
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key])
    return arrays


def _set(row: int, col: int | None, value):
    def edit(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        if col is None:
            a[row] = value
        else:
            a[row, col] = value
        return a

    return edit


CASES = [
    (_with(extra=lambda a: a[:, :2]), r"key `extra`: wrong per-example shape: expected \[3\]"),
    (_with(ids=lambda a: a.astype(np.float32) + 0.5), r"key `ids`: expected int values"),
    (_with(label=_set(5, None, 7)), r"key `label`: label 7 in example 5 is out of range"),
    (_with(ids=_set(3, 2, 20)), r"key `ids`: token id 20 in example 3 is out of range"),
    (_with(ids=_set(2, 0, -1)), r"key `ids`: token id -1 in example 2 is out of range"),
    (_with(extra=_set(6, 1, np.nan)), r"key `extra`: NaN or Inf in example 6"),
    (_with(extra=_set(4, 0, np.inf)), r"key `extra`: NaN or Inf in example 4"),
    ({k: v[:0] for k, v in _good().items()}, r"key `ids`: the dataset is empty"),
    (_with(label=lambda a: a[:7]), r"have different lengths \(8 vs 7 examples\)"),
    ({k: v for k, v in _good().items() if k != "extra"}, r"missing key `extra`"),
]


@pytest.mark.parametrize(("arrays", "pattern"), CASES)
def test_bad_data_is_one_line_before_any_step(tmp_path, capsys, arrays, pattern):
    import re

    (tmp_path / "tok.nn").write_text(MODEL)
    np.savez(tmp_path / "data.npz", **arrays)
    run = tmp_path / "run"
    code = main(["train", str(tmp_path / "tok.nn"), "--out", str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert str(tmp_path / "data.npz") in lines[0]
    assert not (run / "last.safetensors").exists()  # refused before the first step


def test_good_data_trains_and_run_json_names_the_file(tmp_path, capsys):
    import hashlib
    import json

    (tmp_path / "tok.nn").write_text(MODEL)
    np.savez(tmp_path / "data.npz", **_good())
    assert main(["train", str(tmp_path / "tok.nn"), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    digest = hashlib.sha256((tmp_path / "data.npz").read_bytes()).hexdigest()
    assert record["data_files"] == {str(tmp_path / "data.npz"): digest}


def test_a_separate_validation_file_is_checked_too(tmp_path, capsys):
    (tmp_path / "tok.nn").write_text(MODEL.replace("epochs", 'validation = "val.npz"\n    epochs'))
    np.savez(tmp_path / "data.npz", **_good())
    np.savez(tmp_path / "val.npz", **_with(label=_set(1, None, 5)))
    assert main(["train", str(tmp_path / "tok.nn"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "val.npz: key `label`: label 5 in example 1 is out of range for 5 classes" in err
