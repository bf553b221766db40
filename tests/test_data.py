"""Dataset loading, binding to a model's declarations, and every data error."""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct

import numpy as np
import pytest

from dslc.check.model import CallValue, CheckedModel, Declared, GNode, TensorType, TrainConfig
from dslc.errors import DslcError, Span
from dslc.runtime.data import label_classes, load_dataset, split, symbolic_dims

SPAN = Span("m.nn", 1, 1, 1, 2)


INT_LABEL = TensorType("int64", ())


def make_model(x_shape=(4,), y_type: TensorType | None = INT_LABEL, classes=3):
    """A checked model with input x, optional target y and `cross_entropy(logits[classes], y)`."""
    x = Declared("x", TensorType("float32", tuple(x_shape)), SPAN)
    nodes = [GNode(0, "input", (), {"name": "x"}, x.type, SPAN)]
    targets: tuple[Declared, ...] = ()
    loss = None
    if y_type is not None:
        y = Declared("y", y_type, SPAN)
        targets = (y,)
        nodes.append(GNode(1, "target", (), {"name": "y"}, y_type, SPAN))
        if y_type.dtype == "int64":
            nodes.append(
                GNode(
                    2,
                    "fn",
                    (0,),
                    {"name": "relu", "kwargs": {}},
                    TensorType("float32", (classes,)),
                    SPAN,
                )
            )
            loss_t = TensorType("float32", (), batched=False)
            nodes.append(
                GNode(3, "fn", (2, 1), {"name": "cross_entropy", "kwargs": {}}, loss_t, SPAN)
            )
            loss = 3
    return CheckedModel(
        name="M",
        file="m.nn",
        inputs=(x,),
        targets=targets,
        nodes=tuple(nodes),
        layers={},
        outputs=(),
        loss=loss,
        metrics=(),
        regularizers=(),
        train=TrainConfig(),
    )


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ---------------------------------------------------------------- npz


def test_npz_loads_and_converts_dtypes(tmp_path):
    x = np.arange(20, dtype=np.int32).reshape(5, 4)
    y = np.array([0, 1, 2, 1, 0], dtype=np.int32)
    ds = load_dataset(
        save_npz(tmp_path / "d.npz", x=x, y=y, extra=np.zeros(2)), make_model(), str(tmp_path)
    )
    assert len(ds) == 5
    assert ds.arrays["x"].dtype == np.float32 and ds.arrays["y"].dtype == np.int64
    np.testing.assert_array_equal(ds.arrays["x"], x)
    assert set(ds.arrays) == {"x", "y"}


def test_npz_integral_float_labels_are_accepted(tmp_path):
    path = save_npz(tmp_path / "d.npz", x=np.zeros((2, 4)), y=np.array([1.0, 2.0]))
    assert load_dataset(path, make_model(), str(tmp_path)).arrays["y"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"x": np.zeros((3, 4))}, r"d\.npz: missing key `y`"),
        (
            {"x": np.zeros((3, 5)), "y": np.zeros(3, int)},
            r"key `x`: wrong per-example shape: expected \[4\].*got \[5\]",
        ),
        (
            {"x": np.array([["a"] * 4] * 3), "y": np.zeros(3, int)},
            r"key `x`: expected float values.*<U1",
        ),
        (
            {"x": np.zeros((3, 4)), "y": np.array([0.5, 1, 2])},
            r"key `y`: expected int values.*float64",
        ),
        (
            {"x": np.zeros((3, 4)), "y": np.zeros(2, int)},
            r"`x` and `y` have different lengths \(3 vs 2",
        ),
        ({"x": np.zeros((0, 4)), "y": np.zeros(0, int)}, r"key `x`: the dataset is empty"),
        (
            {"x": np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]]), "y": np.zeros(2, int)},
            r"key `x`: NaN or Inf in example 1",
        ),
        (
            {"x": np.zeros((3, 4)), "y": np.array([0, 2, 3])},
            r"key `y`: label 3 in example 2 is out of range for 3 classes",
        ),
        ({"x": np.zeros((3, 4)), "y": np.array([0, -1, 1])}, r"label -1 in example 1"),
        ({"x": np.float32(1.0), "y": np.zeros(3, int)}, r"key `x`: expected an array"),
    ],
)
def test_npz_errors_name_file_key_and_problem(tmp_path, arrays, pattern):
    path = save_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DslcError, match=pattern) as info:
        load_dataset(path, make_model(), str(tmp_path))
    assert "d.npz" in info.value.message
    assert "\n" not in info.value.message


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([np.zeros(4), "a"], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DslcError, match="object arrays"):
        load_dataset(str(path), make_model(), str(tmp_path))


def test_not_an_npz_and_not_found(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(DslcError, match="cannot read"):
        load_dataset("bad.npz", make_model(), str(tmp_path))
    with pytest.raises(DslcError, match="nope.npz: dataset not found"):
        load_dataset("nope.npz", make_model(), str(tmp_path))
    with pytest.raises(DslcError, match="unknown dataset format"):
        (tmp_path / "a.dat").write_text("1")
        load_dataset("a.dat", make_model(), str(tmp_path))


def test_npz_extra_keys_are_not_read(tmp_path):
    # An object array under a key the model does not use (class names, say) is ignored.
    path = tmp_path / "d.npz"
    names = np.array([{"0": "cat"}], dtype=object)
    np.savez(path, x=np.zeros((2, 4)), y=np.zeros(2, int), names=names)
    assert set(load_dataset(str(path), make_model(), str(tmp_path)).arrays) == {"x", "y"}
    np.savez(path, x=np.zeros((2, 4)), names=names)
    with pytest.raises(DslcError, match=r"missing key `y` \(the file has: names, x\)"):
        load_dataset(str(path), make_model(), str(tmp_path))


def test_an_npy_file_named_npz_is_a_one_line_error(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4)))
    os.replace(tmp_path / "a.npy", tmp_path / "d.npz")
    with pytest.raises(DslcError, match=r"d\.npz: cannot read \.npz file \(not a zip archive\)"):
        load_dataset("d.npz", make_model(), str(tmp_path))


def test_relative_paths_resolve_against_base_dir_then_cwd(tmp_path, monkeypatch):
    base, cwd = tmp_path / "models", tmp_path / "work"
    base.mkdir()
    cwd.mkdir()
    save_npz(base / "d.npz", x=np.ones((2, 4)), y=np.zeros(2, int))
    save_npz(cwd / "d.npz", x=np.ones((3, 4)), y=np.zeros(3, int))
    save_npz(cwd / "only_cwd.npz", x=np.ones((4, 4)), y=np.zeros(4, int))
    monkeypatch.chdir(cwd)
    assert len(load_dataset("d.npz", make_model(), str(base))) == 2
    assert len(load_dataset("only_cwd.npz", make_model(), str(base))) == 4


def test_symbolic_dims_are_read_from_the_data(tmp_path):
    model = make_model(x_shape=("T", 2), y_type=None)
    path = save_npz(tmp_path / "s.npz", x=np.zeros((3, 7, 2)))
    ds = load_dataset(path, model, str(tmp_path))
    assert symbolic_dims(ds, model) == {"T": 7}


# ---------------------------------------------------------------- csv


def test_csv_named_columns_row_major(tmp_path):
    model = make_model(x_shape=(2, 2))
    (tmp_path / "d.csv").write_text("y,x.0,x.1,x.2,x.3,notes\n1,1,2,3,4,9\n0,5,6,7,8,9\n")
    ds = load_dataset("d.csv", model, str(tmp_path))
    np.testing.assert_array_equal(ds.arrays["x"][0], [[1, 2], [3, 4]])
    assert ds.arrays["y"].tolist() == [1, 0]
    assert ds.arrays["x"].dtype == np.float32


def test_csv_scalar_input_is_the_bare_column(tmp_path):
    model = make_model(x_shape=(), y_type=TensorType("float32", ()))
    (tmp_path / "d.csv").write_text("x,y\n1.5,3\n2.5,5\n")
    ds = load_dataset("d.csv", model, str(tmp_path))
    assert ds.arrays["x"].tolist() == [1.5, 2.5] and ds.arrays["y"].tolist() == [3.0, 5.0]


def test_csv_fallback_last_column_is_the_target(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c,d,label\n1,2,3,4,2\n5,6,7,8,0\n")
    ds = load_dataset("d.csv", make_model(), str(tmp_path))
    np.testing.assert_array_equal(ds.arrays["x"], [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert ds.arrays["y"].tolist() == [2, 0]
    # A file without a header row binds the same way.
    (tmp_path / "n.csv").write_text("1,2,3,4,2\n5,6,7,8,0\n")
    assert load_dataset("n.csv", make_model(), str(tmp_path)).arrays["y"].tolist() == [2, 0]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("x.0,x.1,x.2,x.3\n1,2,3,4\n", r"d\.csv: key `y`: missing column `y`"),
        ("x.0,x.1,x.2,y\n1,2,3,1\n", r"key `x`: missing column `x.3`"),
        ("x.0,x.1,x.2,x.3,y\n1,2,oops,4,1\n", r"d\.csv:2: not a number: 'oops'"),
        ("x.0,x.1,x.2,x.3,y\n1,2,3,4\n", r"d\.csv:2: expected 5 columns, got 4"),
        ("x.0,x.1,x.2,x.3,y\n", r"the dataset is empty"),
        ("a,b,c\n1,2,1\n", r"key `x`: expected 4 input column\(s\)"),
        ("x.0,x.1,x.2,x.3,y\n1,2,3,4,7\n", r"label 7 in example 0 is out of range"),
    ],
)
def test_csv_errors(tmp_path, text, pattern):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DslcError, match=pattern):
        load_dataset("d.csv", make_model(), str(tmp_path))


# ---------------------------------------------------------------- digits


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (8, 8)])
def test_digits_binds_to_any_64_value_shape(shape):
    ds = load_dataset("digits", make_model(x_shape=shape, classes=10), ".")
    x, y = ds.arrays["x"], ds.arrays["y"]
    assert x.shape == (1797, *shape) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and sorted(set(y.tolist())) == list(range(10))


def test_digits_without_targets_and_shape_errors():
    assert set(load_dataset("digits", make_model(x_shape=(64,), y_type=None), ".").arrays) == {"x"}
    with pytest.raises(DslcError, match=r"key `x`: expected float\[4\]"):
        load_dataset("digits", make_model(x_shape=(4,)), ".")
    with pytest.raises(DslcError, match="out of range for 3 classes"):
        load_dataset("digits", make_model(x_shape=(64,), classes=3), ".")
    with pytest.raises(DslcError, match="expected the target to be int"):
        load_dataset("digits", make_model(x_shape=(64,), y_type=TensorType("float32", (2,))), ".")


def test_digits_refuses_an_int_input():
    # The pixels are fractions: an `int[64]` input must not receive them (nor crash the step).
    model = make_model(x_shape=(64,), classes=10)
    x = dataclasses.replace(model.inputs[0], type=TensorType("int64", (64,)))
    model = dataclasses.replace(model, inputs=(x,))
    with pytest.raises(DslcError, match=r"digits: key `x`: expected int values for int\[64\]"):
        load_dataset("digits", model, ".")


# ---------------------------------------------------------------- IDX


def write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_pair_and_folder(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 2, 2))
    labels = np.array([0, 1, 2, 0, 1, 2])
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    spec = f"train-images-idx3-ubyte{suffix},train-labels-idx1-ubyte{suffix}"
    ds = load_dataset(spec, make_model(x_shape=(1, 2, 2)), str(tmp_path))
    np.testing.assert_allclose(ds.arrays["x"][:, 0], images / 255.0, rtol=1e-6)
    assert ds.arrays["y"].tolist() == labels.tolist()
    folder = load_dataset(str(tmp_path), make_model(x_shape=(4,)), ".")
    assert folder.arrays["x"].shape == (6, 4)


def test_idx_errors(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DslcError, match="bad.idx: not an IDX file"):
        load_dataset("bad.idx", make_model(y_type=None), str(tmp_path))
    with pytest.raises(DslcError, match="no MNIST-style IDX files"):
        load_dataset(str(tmp_path), make_model(), ".")


# ---------------------------------------------------------------- split and classes


def test_split_is_seeded_disjoint_and_complete():
    ds = load_dataset("digits", make_model(x_shape=(64,), classes=10), ".")
    train, val = split(ds, 0.2, seed=3)
    assert val is not None and len(val) == round(1797 * 0.2) and len(train) + len(val) == 1797
    train2, val2 = split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(val.arrays["x"], val2.arrays["x"])
    _, val3 = split(ds, 0.2, seed=4)
    assert not np.array_equal(val.arrays["x"], val3.arrays["x"])
    rows = {r.tobytes() for r in train.arrays["x"]} | {r.tobytes() for r in val.arrays["x"]}
    assert len(rows) == len({r.tobytes() for r in ds.arrays["x"]})
    assert split(ds, 0.0, 0) == (ds, None)
    with pytest.raises(DslcError, match="validation fraction"):
        split(ds, 1.5, 0)


def test_label_classes_from_the_loss_logits():
    assert label_classes(make_model(classes=7)) == {"y": 7}
    assert label_classes(make_model(y_type=None)) == {}


# ---------------------------------------------------------------- text


def test_text_windows_of_characters(tmp_path):
    # Ids index the sorted set of the text's characters (docs/sequences.md).
    (tmp_path / "t.txt").write_bytes(b"jihgfedcba")
    model = make_model(x_shape=("T",), y_type=TensorType("int64", ("T",)), classes=256)
    model = dataclasses.replace(model, inputs=(Declared("x", TensorType("int64", ("T",)), SPAN),))
    spec = CallValue("text", (), (("path", "t.txt"), ("seq_len", 3)))
    ds = load_dataset(spec, model, str(tmp_path))
    assert ds.arrays["x"].tolist() == [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    assert ds.arrays["y"].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    assert symbolic_dims(ds, model) == {"T": 3}
    with pytest.raises(DslcError, match="too few for one window"):
        load_dataset(
            CallValue("text", (), (("path", "t.txt"), ("seq_len", 20))), model, str(tmp_path)
        )
    with pytest.raises(DslcError, match="a text dataset gives int"):
        load_dataset(spec, make_model(x_shape=("T",), y_type=None), str(tmp_path))
