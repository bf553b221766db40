"""Checkpoints: round trip, atomic writes, and `--init` name/shape checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dslc.check.model import CallValue, CheckedModel, LayerInstance, ParamSpec, TrainConfig
from dslc.errors import DslcError, Span
from dslc.runtime import checkpoint
from dslc.runtime.checkpoint import load_checkpoint, load_init, model_state, save_checkpoint

SPAN = Span("m.nn", 1, 1, 1, 2)


def model_with(params: dict[str, tuple[tuple[int, ...], bool]]) -> CheckedModel:
    specs = tuple(ParamSpec(n, s, CallValue("zeros"), trainable=t) for n, (s, t) in params.items())
    layer = LayerInstance("dense_1", "Dense", {}, specs, SPAN)
    return CheckedModel(
        name="M",
        file="m.nn",
        inputs=(),
        targets=(),
        nodes=(),
        layers={"dense_1": layer},
        outputs=(),
        loss=None,
        metrics=(),
        regularizers=(),
        train=TrainConfig(),
    )


MODEL = model_with(
    {
        "dense_1.weight": ((3, 2), True),
        "dense_1.bias": ((3,), True),
        "bn.running_mean": ((3,), False),
    }
)


def full_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "dense_1.weight": rng.normal(size=(3, 2)).astype(np.float32),
        "dense_1.bias": rng.normal(size=3).astype(np.float32),
        "bn.running_mean": np.ones(3, np.float32),
        "opt.dense_1.weight.exp_avg": np.zeros((3, 2), np.float32),
        "step": np.array(17, np.int64),
    }


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    path = str(tmp_path / "c.safetensors")
    state = full_state()
    save_checkpoint(path, state, {"epoch": 3, "position": "5", "model": "M"})
    tensors, meta = load_checkpoint(path)
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k], v)
        assert tensors[k].dtype == v.dtype and tensors[k].shape == v.shape
    assert tensors["step"].shape == () and int(tensors["step"]) == 17
    assert meta["epoch"] == "3" and meta["position"] == "5" and meta["model"] == "M"
    assert meta["format"] == checkpoint.FORMAT


def test_readable_by_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, full_state(), {})
    assert load_file(path)["dense_1.weight"].shape == (3, 2)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, {"a": np.zeros(2, np.float32)}, {"epoch": "1"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": np.ones(2, np.float32)}, {"epoch": "2"})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert meta["epoch"] == "1" and tensors["a"].tolist() == [0.0, 0.0]
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temp file left behind


def test_overwrite_and_new_folder(tmp_path):
    path = str(tmp_path / "run" / "deep" / "c.safetensors")
    save_checkpoint(path, {"a": np.zeros(2, np.float32)}, {})
    save_checkpoint(path, {"a": np.ones(2, np.float32)}, {})
    assert load_checkpoint(path)[0]["a"].tolist() == [1.0, 1.0]


def test_load_errors(tmp_path):
    with pytest.raises(DslcError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "none.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(DslcError, match="not a readable safetensors checkpoint"):
        load_checkpoint(str(bad))


def test_init_takes_parameters_and_buffers_only(tmp_path):
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, full_state(), {})
    got = load_init(path, MODEL)
    assert set(got) == {"dense_1.weight", "dense_1.bias", "bn.running_mean"}
    # A buffer the checkpoint lacks keeps its initial value (it is simply absent here).
    state = full_state()
    del state["bn.running_mean"]
    save_checkpoint(path, state, {})
    assert "bn.running_mean" not in load_init(path, MODEL)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda s: s.pop("dense_1.bias"),
            r"c\.safetensors: checkpoint has no parameter `dense_1.bias`",
        ),
        (
            lambda s: s.__setitem__("dense_1.weight", np.zeros((2, 3), np.float32)),
            r"`dense_1.weight` has shape \[2, 3\] in the checkpoint, model M expects \[3, 2\]",
        ),
        (
            lambda s: s.__setitem__("head.weight", np.zeros(1, np.float32)),
            r"checkpoint has `head.weight`, which model M does not have",
        ),
    ],
)
def test_init_name_and_shape_errors(tmp_path, edit, pattern):
    state = full_state()
    edit(state)
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, state, {})
    with pytest.raises(DslcError, match=pattern):
        load_init(path, MODEL)


def test_bfloat16_and_integer_parameters_become_float32(tmp_path):
    # torch's `model.bfloat16().state_dict()`, or a parameter saved as integers.
    import ml_dtypes

    state = full_state()
    weight = np.arange(6, dtype=np.float32).reshape(3, 2)
    state["dense_1.weight"] = weight.astype(ml_dtypes.bfloat16)
    state["dense_1.bias"] = np.array([1, 2, 3], np.int64)
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, state, {})
    got = load_init(path, MODEL)
    assert got["dense_1.weight"].dtype == np.float32 and got["dense_1.bias"].dtype == np.float32
    assert got["dense_1.weight"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert got["dense_1.bias"].tolist() == [1, 2, 3]


def test_model_state_converts_float_dtype():
    state = full_state()
    state["dense_1.weight"] = state["dense_1.weight"].astype(np.float64)
    assert model_state(MODEL, state, "x")["dense_1.weight"].dtype == np.float32


def test_init_from_a_torch_state_dict_maps_its_extra_names(tmp_path):
    # torch's BatchNorm counter is dropped; torch's `_l0` recurrent names are §6's.
    model = model_with(
        {
            "bn.weight": ((3,), True),
            "bn.running_mean": ((3,), False),
            "rnn.weight_ih": ((4, 2), True),
            "rnn.bias_hh_reverse": ((4,), True),
        }
    )
    torch_state = {
        "bn.weight": np.ones(3, np.float32),
        "bn.running_mean": np.full(3, 0.5, np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "rnn.weight_ih_l0": np.full((4, 2), 2.0, np.float32),
        "rnn.bias_hh_l0_reverse": np.full(4, 3.0, np.float32),
    }
    path = str(tmp_path / "torch.safetensors")
    save_checkpoint(path, torch_state, {})
    got = load_init(path, model)
    assert set(got) == {"bn.weight", "bn.running_mean", "rnn.weight_ih", "rnn.bias_hh_reverse"}
    assert got["rnn.weight_ih"].tolist() == [[2.0, 2.0]] * 4
    assert got["rnn.bias_hh_reverse"].tolist() == [3.0] * 4


def test_torch_names_without_a_model_counterpart_stay_errors(tmp_path):
    # A counter without a BatchNorm, or a second torch layer (`_l1`), is still reported.
    path = str(tmp_path / "c.safetensors")
    for extra in ("dense_1.num_batches_tracked", "dense_1.weight_ih_l1"):
        save_checkpoint(path, {**full_state(), extra: np.zeros((), np.int64)}, {})
        with pytest.raises(DslcError, match=f"checkpoint has `{extra}`"):
            load_init(path, MODEL)
