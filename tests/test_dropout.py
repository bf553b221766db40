"""Dropout: the in-graph hash mask, its statistics, scaling, determinism and resumption."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from dslc.check import check_source
from dslc.check.model import GNode, LayerInstance, TensorType
from dslc.emit_onnx import to_onnx
from dslc.errors import Span
from dslc.ir.graph import Builder
from dslc.lower import (
    build_eval_step,
    build_inference,
    build_train_step,
    initial_state,
    optimizer_state,
    state_layout,
)
from dslc.lower.dropout import application_key, keep_mask, keep_mask_ir
from dslc.lower.layers import LayerCall, apply_layer

SPAN = Span("d.nn", 1, 1, 1, 2)


def _session(graph: Any) -> Any:
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def _mask_graph(shape: tuple[int, ...], rate: float, key: int = 12345):
    b = Builder("mask")
    seed = b.input("seed", "int64", ())
    step = b.input("step", "int64", ())
    b.output(keep_mask_ir(b, seed, step, key, shape, rate), name="keep")
    return _session(b.build())


def _masks(run, seed: int, step: int) -> np.ndarray:
    return run({"seed": np.array(seed, np.int64), "step": np.array(step, np.int64)})["keep"]


@pytest.mark.parametrize(("seed", "step"), [(0, 0), (7, 123), (-3, 2**40 + 5), (2**62, 1)])
@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 4, 1), (6,), (1, 1)])
def test_graph_mask_equals_the_numpy_reference(seed: int, step: int,
                                               shape: tuple[int, ...]) -> None:
    run = _mask_graph(shape, 0.3)
    np.testing.assert_array_equal(_masks(run, seed, step), keep_mask(seed, step, 12345,
                                                                     shape, 0.3))


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.9])
def test_keep_rate_matches_one_minus_rate(rate: float) -> None:
    shape = (64, 40, 40)
    n = math.prod(shape)
    run = _mask_graph(shape, rate)
    for step in range(3):
        keep = _masks(run, 0, step)
        # Five standard deviations of a binomial proportion.
        assert abs(keep.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)


def test_masks_are_independent_across_steps_seeds_and_neighbours() -> None:
    rate, shape = 0.5, (128, 256)
    run = _mask_graph(shape, rate)
    base = _masks(run, 0, 0)
    n = base.size
    tol = 5 * math.sqrt(0.25 / n)
    for other in (_masks(run, 0, 1), _masks(run, 1, 0), _masks(run, 0, 2)):
        assert not np.array_equal(base, other)
        # Independent fair masks agree on half of the elements.
        assert abs((base == other).mean() - 0.5) < tol
    # Neighbouring elements (rows and columns) are uncorrelated too.
    assert abs((base[:, 1:] == base[:, :-1]).mean() - 0.5) < 2 * tol
    assert abs((base[1:] == base[:-1]).mean() - 0.5) < 2 * tol
    np.testing.assert_array_equal(base, _masks(run, 0, 0))


def _dropout_call(rate: float, mode: str, node_id: int = 1):
    b = Builder("d")
    x = b.input("x", "float32", (50, 40))
    seed = b.input("seed", "int64", ())
    step = b.input("step", "int64", ())
    layer = LayerInstance("drop", "Dropout", {"rate": rate}, (), SPAN)
    node = GNode(node_id, "layer", (0,), {"layer": "drop"}, TensorType("float32", (40,)), SPAN)
    return b, x, apply_layer(LayerCall(b, layer, x, {}, mode, node, seed, step)).value


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_train_mode_scales_kept_values_and_zeroes_the_rest(rate: float) -> None:
    b, x, y = _dropout_call(rate, "train")
    b.output(y, name="y")
    xv = np.random.default_rng(0).uniform(1.0, 2.0, (50, 40)).astype(np.float32)
    out = _session(b.build())({"x": xv, "seed": np.array(4), "step": np.array(9)})["y"]
    keep = keep_mask(4, 9, application_key("drop", 1), (50, 40), rate)
    np.testing.assert_allclose(out[keep], xv[keep] / np.float32(1 - rate), rtol=1e-6)
    assert np.all(out[~keep] == 0)
    assert 0 < (~keep).sum() < keep.size


@pytest.mark.parametrize("mode", ["eval", "infer"])
def test_identity_outside_training(mode: str) -> None:
    b, x, y = _dropout_call(0.5, mode)
    assert y is x


def test_rate_zero_is_the_identity_in_training() -> None:
    b, x, y = _dropout_call(0.0, "train")
    assert y is x


MODEL = """
model D {
    input x: float[6]
    target y: int[]
    layer drop = Dropout(0.5)
    h = x -> Dense(16) -> relu -> drop
    logits = (h -> drop) -> Dense(3)
    output probs = softmax(logits)
    loss cross_entropy(logits, y)
}
train { optimizer = SGD(lr = 0.1, momentum = 0.9)  shuffle = false  validation = 0 }
"""


def test_exported_graphs_have_no_randomness_and_step_graph_no_random_ops() -> None:
    model = check_source(MODEL, "d.nn")
    for graph in (build_eval_step(model), build_inference(model)):
        assert not any(n.op in ("bitwise_and", "greater") for n in graph.nodes)
    ops = {n.op_type for n in to_onnx(build_train_step(model, batch=4)).graph.node}
    assert not ops & {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal",
                      "RandomNormalLike", "Bernoulli", "Multinomial"}
    assert "BitwiseAnd" in ops


def test_shared_dropout_draws_a_mask_per_application() -> None:
    model = check_source(MODEL, "d.nn")
    ids = [n.id for n in model.nodes if n.op == "layer" and n.attrs["layer"] == "drop"]
    assert len(ids) == 2
    a, c = (keep_mask(0, 0, application_key("drop", i), (64, 16), 0.5) for i in ids)
    assert not np.array_equal(a, c)


def _steps(model, state: dict, batches: list, first_step: int) -> dict:
    run = _session(build_train_step(model, batch=len(batches[0][0]), total_steps=8))
    for x, y in batches:
        out = run({**state, "seed": np.array(11, np.int64), "x": x, "y": y})
        state = {k: out[f"{k}.next"] for k in state}
    assert int(state["step"]) == first_step + len(batches)
    return state


def test_a_resumed_run_replays_the_same_masks() -> None:
    """Four steps in one session equal two steps, a fresh session, then two more."""
    model = check_source(MODEL, "d.nn")
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 6)).astype(np.float32),
                rng.integers(0, 3, 8).astype(np.int64)) for _ in range(4)]
    state = {**initial_state(model, 0), **optimizer_state(model)}
    straight = _steps(model, dict(state), batches, 0)
    half = _steps(model, dict(state), batches[:2], 0)
    resumed = _steps(model, {k: v.copy() for k, v in half.items()}, batches[2:], 2)
    for k in state_layout(model).checkpoint_keys:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    # The masks matter: without dropout the same steps end elsewhere.
    plain = check_source(MODEL.replace("Dropout(0.5)", "Dropout(0.0)"), "p.nn")
    other = _steps(plain, dict(state), batches, 0)
    assert not np.allclose(other["dense_1.weight"], straight["dense_1.weight"])


def test_resume_through_the_api_matches_one_run(tmp_path: Any) -> None:
    import dslc.api as api

    model = check_source(MODEL, str(tmp_path / "d.nn"))
    rng = np.random.default_rng(5)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((40, 6)).astype(np.float32),
             y=rng.integers(0, 3, 40).astype(np.int64))
    kw = {"data": str(data), "batch_size": 8, "progress": False}
    one = api.train(model, steps=6, out=str(tmp_path / "one"), **kw)
    api.train(model, steps=3, out=str(tmp_path / "two"), **kw)
    two = api.train(model, steps=6, out=str(tmp_path / "two"), resume=True, **kw)
    assert one.steps == two.steps == 6
    for k in state_layout(model).params:
        np.testing.assert_array_equal(two.state[k], one.state[k], err_msg=k)
