"""Recurrent and embedding lowering: parameter names, both lowerings, the gather gradient."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from dslc.check import check_source
from dslc.emit_onnx import to_onnx
from dslc.ir import interp
from dslc.ir.graph import Builder
from dslc.lower import build_eval_step, build_inference, initial_state

KINDS = ("SimpleRNN", "LSTM", "GRU")


def _model(kind: str, rs: bool, bd: bool, length: str = "T"):
    flags = f"return_sequences = {str(rs).lower()}, bidirectional = {str(bd).lower()}"
    return check_source(f"""
model Seq {{
    input x: float[{length}, 3]
    h = x -> {kind}(4, {flags})
    output h
}}
""", "seq.nn")


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_names_and_layouts(kind: str) -> None:
    gates = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[kind]
    specs = {p.name: p.shape for p in _model(kind, False, True).params()}
    name = kind.lower() + "_1"
    want = {}
    for suffix in ("", "_reverse"):
        want[f"{name}.weight_ih{suffix}"] = (gates * 4, 3)
        want[f"{name}.weight_hh{suffix}"] = (gates * 4, 4)
        want[f"{name}.bias_ih{suffix}"] = (gates * 4,)
        want[f"{name}.bias_hh{suffix}"] = (gates * 4,)
    assert specs == want


def _run(graph, feeds):
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rs", "bd"), [(False, False), (True, True), (False, True)])
def test_unrolled_and_fused_lowerings_agree(kind: str, rs: bool, bd: bool) -> None:
    """The eval step at a fixed T (unrolled) equals the exported graph (ONNX operator)."""
    model = _model(kind, rs, bd)
    rng = np.random.default_rng(0)
    params = {k: rng.uniform(-0.5, 0.5, v.shape).astype(np.float32)
              for k, v in initial_state(model, 0).items()}
    fused = build_inference(model)
    assert any(n.op.endswith("_sequence") for n in fused.nodes)
    for t in (1, 6):
        unrolled = build_eval_step(model, batch=2, dims={"T": t})
        assert not any(n.op.endswith("_sequence") for n in unrolled.nodes)
        x = rng.standard_normal((2, t, 3)).astype(np.float32)
        (a,) = _run(unrolled, {**params, "x": x})
        (b,) = _run(fused, {**params, "x": x})
        assert a.shape == b.shape == ((2, t, 4 * (1 + bd)) if rs else (2, 4 * (1 + bd)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fixed_length_model_unrolls_in_every_graph() -> None:
    model = _model("LSTM", False, False, length="8")
    graph = build_inference(model)
    assert not any(n.op.endswith("_sequence") for n in graph.nodes)
    assert graph.outputs[0].shape == ("N", 4)


def test_gather_gradient_accumulates_repeated_ids() -> None:
    """d/dW sum(G * W[ids]) adds G's rows into the table once per occurrence of an id."""
    b = Builder("emb", "float64")
    w = b.input("w", "float64", (5, 3))
    ids = b.input("ids", "int64", (2, 4))
    g = b.input("g", "float64", (2, 4, 3))
    y = b.op("gather", w, ids, axis=0)
    from dslc.ir.graph import opdef

    (dw, _) = opdef("gather").vjp(b, [w, ids], [y], [g], {"axis": 0})
    b.output(dw, name="dw")
    ids_v = np.array([[1, 1, 3, 1], [3, 0, 1, 1]])
    g_v = np.random.default_rng(1).standard_normal((2, 4, 3))
    got = interp.run(b.build(), {"w": np.zeros((5, 3)), "ids": ids_v, "g": g_v})["dw"]
    want = np.zeros((5, 3))
    for (i, j), k in np.ndenumerate(ids_v):
        want[k] += g_v[i, j]
    np.testing.assert_array_equal(got, want)
    assert not got[2].any() and not got[4].any()
    (ort_dw,) = _run(b.build(), {"w": np.zeros((5, 3)), "ids": ids_v, "g": g_v})
    np.testing.assert_allclose(ort_dw, want, rtol=1e-12)


def test_embedding_lowers_to_one_gather() -> None:
    model = check_source("""
model E {
    input ids: int[T]
    e = ids -> Embedding(10, 4)
    output e
}
""", "e.nn")
    graph = build_inference(model)
    assert [n.op for n in graph.nodes].count("gather") == 1
    w = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.array([[0, 9, 9], [3, 3, 1]])
    (got,) = _run(graph, {"embedding_1.weight": w, "ids": ids})
    np.testing.assert_array_equal(got, w[ids])
