"""The ONNX emitter (checker, determinism, pinned versions, symbolic dims), text form, verifier."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dslc.emit_onnx import IR_VERSION, OPSET, save, to_onnx
from dslc.ir import interp
from dslc.ir.graph import Builder, Graph, IRError, Node, Value
from dslc.ir.text import to_text
from dslc.ir.verify import verify


def _classifier(batch: int | str = "N") -> Graph:
    b = Builder("classifier")
    x = b.input("x", "float32", (batch, 1, 6, 6))
    w = b.input("conv.weight", "float32", (2, 1, 3, 3))
    wd = b.input("head.weight", "float32", (2 * 2 * 2, 3))
    bd = b.input("head.bias", "float32", (3,))
    h = b.op("relu", b.op("conv", x, w, pads=(1, 1, 1, 1)), name="conv.relu")
    h, _ = b.op("max_pool", h, kernel=(3, 3), strides=(2, 2))
    h = b.op("reshape", h, shape=(0, -1), name="flatten")
    logits = b.op("add", b.op("matmul", h, wd), bd, name="logits")
    b.output(b.op("softmax", logits, axis=1), name="probs")
    b.output(b.op("argmax", logits, axis=1, keepdims=0, name="label"))
    return b.build()


PARAMS = {
    "conv.weight": np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32),
    "head.weight": np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32),
    "head.bias": np.random.default_rng(2).standard_normal(3).astype(np.float32),
}


def test_full_checker_and_pinned_versions() -> None:
    model = to_onnx(_classifier(), doc_string="a classifier")
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert OPSET == 18
    assert model.producer_name == "dslc"
    assert model.doc_string == "a classifier"
    assert all(n.domain == "" for n in model.graph.node)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and all(names)


def test_emission_is_byte_identical() -> None:
    a = to_onnx(_classifier(), PARAMS).SerializeToString()
    b = to_onnx(_classifier(), PARAMS).SerializeToString()
    assert a == b


def test_symbolic_batch_runs_at_any_size() -> None:
    model = to_onnx(_classifier("N"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 6, 6]
    out_dim = model.graph.output[0].type.tensor_type.shape.dim[0]
    assert out_dim.dim_param == "N"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 1, 6, 6)).astype(np.float32)
        probs, label = sess.run(None, {"x": x, **PARAMS})
        want = interp.run(_classifier("N"), {"x": x, **PARAMS})
        assert probs.shape == (n, 3) and label.shape == (n,)
        np.testing.assert_allclose(probs, want["probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(label, want["label"])


def test_initializers_embed_parameters(tmp_path) -> None:
    model = to_onnx(_classifier(), PARAMS)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert {"conv.weight", "head.weight", "head.bias"} <= {t.name for t in model.graph.initializer}
    path = tmp_path / "model.onnx"
    save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 1, 6, 6), np.float32)
    probs, _ = sess.run(None, {"x": x})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(IRError):
        to_onnx(_classifier(), {"nope": np.zeros(1)})


def test_graph_constants_become_initializers() -> None:
    b = Builder("consts")
    x = b.input("x", "float32", (2,))
    b.output(b.op("mul", x, b.const(np.array([2.0, 3.0], np.float32), name="scale")))
    model = to_onnx(b.build())
    assert [t.name for t in model.graph.initializer] == ["scale"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": np.ones(2, np.float32)})[0], [2.0, 3.0])


# ---------------------------------------------------------------- text form


def test_text_form() -> None:
    b = Builder("tiny")
    x = b.input("x", "float32", ("N", 4))
    w = b.input("w", "float32", (4, 2))
    y = b.op("matmul", x, w, name="dense.matmul")
    b.output(b.op("reduce_sum", y, axes=(1,), keepdims=0, name="total"))
    text = to_text(b.build())
    assert text == (
        "graph tiny {\n"
        "  input %x: float32[N,4]\n"
        "  input %w: float32[4,2]\n"
        "  %dense.matmul: float32[N,2] = matmul(%x, %w)\n"
        "  %total: float32[N] = reduce_sum(%dense.matmul) {axes=[1], keepdims=0}\n"
        "  output %total: float32[N]\n"
        "}\n"
    )
    assert to_text(_classifier()) == to_text(_classifier())


# ---------------------------------------------------------------- verifier


def _tiny() -> Graph:
    b = Builder("tiny")
    x = b.input("x", "float32", (2, 3))
    b.output(b.op("exp", x, name="y"))
    return b.build()


def _with(g: Graph, **changes) -> Graph:
    fields = dict(name=g.name, inputs=g.inputs, outputs=g.outputs, nodes=g.nodes,
                  values=g.values, constants=g.constants)
    fields.update(changes)
    return Graph(**fields)


def test_verify_accepts_good_graphs() -> None:
    verify(_tiny())
    verify(_classifier())


@pytest.mark.parametrize("broken", [
    "twice", "undefined_input", "bad_shape", "unknown_op", "missing_output", "bad_const",
])
def test_verify_rejects(broken: str) -> None:
    g = _tiny()
    y = g.values["y"]
    if broken == "twice":
        g = _with(g, nodes=g.nodes + g.nodes)
    elif broken == "undefined_input":
        g = _with(g, nodes=(Node("exp", ("z",), ("y",)),))
    elif broken == "bad_shape":
        g = _with(g, values={**g.values, "y": Value("y", "float32", (3, 2))})
    elif broken == "unknown_op":
        g = _with(g, nodes=(Node("frobnicate", ("x",), ("y",)),))
    elif broken == "missing_output":
        g = _with(g, outputs=(*g.outputs, Value("ghost", "float32", ())),
                  values={**g.values, "ghost": Value("ghost", "float32", ())})
    else:
        g = _with(g, constants={"c": np.zeros(2, np.float64)},
                  values={**g.values, "c": Value("c", "float32", (2,))})
    assert y.name == "y"
    with pytest.raises(IRError):
        verify(g)


def test_embedded_weights_that_no_node_reads_are_left_out() -> None:
    b = Builder("infer")
    x = b.input("x", "float32", ("N", 3))
    w = b.input("w", "float32", (3, 2))
    b.input("unused", "float32", (4,))
    b.output(b.op("matmul", x, w), name="y")
    g = b.build()
    model = to_onnx(g, {"w": np.ones((3, 2), np.float32), "unused": np.zeros(4, np.float32)})
    onnx.checker.check_model(model, full_check=True)
    assert [t.name for t in model.graph.initializer] == ["w"]
    assert [i.name for i in model.graph.input] == ["x"]
