"""Optimisation passes: each keeps results, inputs and outputs, and yields verified graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

from dslc import passes
from dslc.autodiff import backward
from dslc.emit_onnx import to_onnx
from dslc.ir import interp
from dslc.ir.graph import Builder, Graph
from dslc.ir.text import to_text
from dslc.ir.verify import verify


def _messy() -> Graph:
    """A graph with something for every pass to do."""
    b = Builder("messy", "float64")
    x = b.input("x", "float64", (4, 3))
    w = b.input("w", "float64", (3, 5))
    bias = b.input("bias", "float64", (5,))
    one = b.const(np.ones((1,)))
    zero = b.const(0.0)
    k = b.op("add", b.const(np.full((5,), 2.0)), b.const(np.arange(5.0)))  # foldable
    x1 = b.op("identity", b.op("identity", b.op("mul", x, one)))
    x2 = b.op("add", x1, zero)
    y = b.op("add", b.op("matmul", x2, w), bias)  # gemm candidate
    y2 = b.op("mul", y, k)
    t = b.op("transpose", b.op("transpose", y2, perm=(1, 0)), perm=(1, 0))
    r = b.op("reshape", b.op("reshape", t, shape=(20,)), shape=(2, 10))
    s1 = b.op("reduce_sum", y2, axes=(0,), keepdims=0)  # batch reduction
    s2 = b.op("reduce_sum", y2, axes=(0,), keepdims=0)  # duplicate of s1
    b.op("exp", r)  # dead
    b.output(b.op("add", s1, s2, name="total"))
    b.output(r, name="flat")
    b.output(b.op("add", k, zero, name="folded"))  # a graph output computed from constants only
    return b.build()


FEEDS = {
    "x": np.random.default_rng(0).standard_normal((4, 3)),
    "w": np.random.default_rng(1).standard_normal((3, 5)),
    "bias": np.random.default_rng(2).standard_normal(5),
}

PASSES = [passes.fold_constants, passes.cse, passes.dce, passes.simplify, passes.fuse_gemm,
          passes.reduce_to_matmul, passes.sink_transposes, passes.optimise]


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.__name__)
def test_pass_preserves_results_and_boundary(p) -> None:
    g = _messy()
    verify(g)
    out = p(g)
    verify(out)
    assert out.inputs == g.inputs and out.outputs == g.outputs
    want = interp.run(g, FEEDS)
    got = interp.run(out, FEEDS)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


def _ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes)


def test_each_pass_does_its_job() -> None:
    g = _messy()
    assert _ops(passes.dce(g))["exp"] == 0
    assert len(passes.cse(g).nodes) < len(g.nodes)
    folded = passes.fold_constants(g)
    assert len(folded.nodes) == len(g.nodes) - 1
    simple = passes.simplify(g)
    assert _ops(simple)["identity"] < _ops(g)["identity"]
    assert _ops(passes.dce(simple))["transpose"] == 0  # the inner transpose is left dead
    assert _ops(passes.fuse_gemm(g))["gemm"] == 1
    assert _ops(passes.reduce_to_matmul(g))["reduce_sum"] == 0


def test_optimise_result() -> None:
    g = _messy()
    out = passes.optimise(g)
    ops = _ops(out)
    assert ops["gemm"] == 1 and ops["reduce_sum"] == 0 and ops["exp"] == 0
    assert ops["transpose"] == 0 and ops["matmul"] == 1  # the ones-row reduction, once
    assert ops["reshape"] == 2  # one merged flatten, one after the ones-row product
    assert to_text(passes.optimise(_messy())) == to_text(out)  # deterministic


def test_optimised_training_graph_runs_in_onnxruntime() -> None:
    b = Builder("step", "float32")
    x = b.input("x", "float32", (8, 4))
    w = b.input("w", "float32", (4, 3))
    bias = b.input("bias", "float32", (3,))
    t = b.input("t", "float32", (8, 3))
    y = b.op("relu", b.op("add", b.op("matmul", x, w), bias))
    d = b.op("sub", y, t)
    b.output(b.op("reduce_mean", b.op("mul", d, d), axes=(0, 1), keepdims=0, name="loss"))
    graph, grads = backward(b.build(), "loss", ["w", "bias"])
    full = Builder.from_graph(graph)
    for p in ("w", "bias"):
        full.output(graph.values[grads[p]])
    g = full.build()
    opt = passes.optimise(g)
    verify(opt)
    assert len(opt.nodes) < len(g.nodes)
    assert _ops(opt)["gemm"] == 1 and _ops(opt)["reduce_sum"] == 0
    rng = np.random.default_rng(3)
    feeds = {v.name: rng.standard_normal([int(d) for d in v.shape]).astype(np.float32)
             for v in g.inputs}
    want = interp.run(g, feeds)
    sess = ort.InferenceSession(to_onnx(opt).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6)


def test_reduce_to_matmul_skips_symbolic_batch() -> None:
    b = Builder("sym")
    x = b.input("x", "float32", ("N", 3))
    b.output(b.op("reduce_sum", x, axes=(0,), keepdims=1))
    g = b.build()
    assert passes.reduce_to_matmul(g).nodes == g.nodes


def test_fuse_gemm_keeps_shared_products() -> None:
    b = Builder("shared")
    x = b.input("x", "float32", (2, 3))
    w = b.input("w", "float32", (3, 4))
    c = b.input("c", "float32", (4,))
    m = b.op("matmul", x, w)
    b.output(b.op("add", m, c))
    b.output(b.op("exp", m))  # a second use of the product: no fusion
    g = b.build()
    assert passes.fuse_gemm(g).nodes == g.nodes


@pytest.mark.parametrize("scaled", [True, False])
def test_momentum_update_fuses_into_gemm(scaled: bool) -> None:
    b = Builder("momentum", "float64")
    dy = b.input("dy", "float64", (8, 3))
    x = b.input("x", "float64", (8, 4))
    v = b.input("v", "float64", (3, 4))
    grad = b.op("gemm", dy, x, trans_a=1, beta=5.0)  # beta without c has no effect
    kept = b.op("mul", v, b.const(0.9)) if scaled else v
    b.output(b.op("add", kept, grad, name="v.next"))
    g = b.build()
    out = passes.fuse_gemm(g)
    verify(out)
    assert [n.op for n in out.nodes] == ["gemm"]
    assert out.nodes[0].attr("beta", 1.0) == (0.9 if scaled else 1.0)
    rng = np.random.default_rng(4)
    feeds = {n.name: rng.standard_normal([int(d) for d in n.shape]) for n in g.inputs}
    np.testing.assert_allclose(interp.run(out, feeds)["v.next"], interp.run(g, feeds)["v.next"],
                               rtol=1e-12)


@pytest.mark.parametrize("scaled", [True, False])
def test_bias_momentum_update_fuses_through_the_row_reshape(scaled: bool) -> None:
    b = Builder("bias", "float64")
    dy = b.input("dy", "float64", (8, 3))
    v = b.input("v", "float64", (3,))
    grad = b.op("reduce_sum", dy, axes=(0,), keepdims=0)  # the bias gradient
    kept = b.op("mul", v, b.const(0.9)) if scaled else v
    b.output(b.op("add", kept, grad, name="v.next"))
    g = passes.reduce_to_matmul(b.build())
    out = passes.fuse_gemm(g)
    verify(out)
    assert [n.op for n in out.nodes] == ["gemm", "reshape"]
    assert out.nodes[0].attr("beta", 1.0) == (0.9 if scaled else 1.0)
    assert out.nodes[1].outputs == ("v.next",)
    rng = np.random.default_rng(5)
    feeds = {n.name: rng.standard_normal([int(d) for d in n.shape]) for n in g.inputs}
    np.testing.assert_allclose(interp.run(out, feeds)["v.next"], interp.run(g, feeds)["v.next"],
                               rtol=1e-12)


def _layout_round_trip() -> Graph:
    """Channels-last data made channels-first for a relu, then channels-last again, with the
    relu's gradient: the pattern between an im2col convolution and a pooling layer."""
    b = Builder("layout", "float64")
    a = b.input("a", "float64", (2, 3, 4, 5))
    g = b.input("g", "float64", (2, 3, 4, 5))
    first = b.op("transpose", a, perm=(0, 3, 1, 2))
    y = b.op("relu", first)
    back = b.op("transpose", y, perm=(0, 2, 3, 1))
    b.output(b.op("mul", back, b.const(2.0), name="y"))
    dy = b.op("transpose", g, perm=(0, 3, 1, 2))
    mask = b.op("cast", b.op("greater", first, b.const(0.0)), to="float64")
    b.output(b.op("transpose", b.op("mul", dy, mask), perm=(0, 2, 3, 1), name="dx"))
    return b.build()


def test_sink_transposes_cancels_layout_round_trips() -> None:
    g = _layout_round_trip()
    out = passes.optimise(g)
    verify(out)
    assert _ops(out)["transpose"] == 0
    rng = np.random.default_rng(5)
    feeds = {v.name: rng.standard_normal([int(d) for d in v.shape]) for v in g.inputs}
    want, got = interp.run(g, feeds), interp.run(out, feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_sink_transposes_leaves_shared_or_mixed_transposes() -> None:
    b = Builder("kept", "float64")
    a = b.input("a", "float64", (2, 3))
    c = b.input("c", "float64", (3, 2))
    t = b.op("transpose", a, perm=(1, 0))
    b.output(b.op("exp", t, name="e"))
    b.output(b.op("reshape", t, shape=(6,), name="flat"))  # a non-elementwise reader of t
    b.output(b.op("add", b.op("transpose", b.input("d", "float64", (2, 3)), perm=(1, 0)), c,
                  name="mixed"))  # c is not transposed and not a scalar
    g = b.build()
    assert passes.sink_transposes(g).nodes == g.nodes


def test_an_output_identity_is_folded_into_its_producer() -> None:
    b = Builder("named", "float64")
    x = b.input("x", "float64", (4, 3))
    total = b.op("reduce_mean", b.op("exp", x), axes=(0, 1), keepdims=0)
    b.output(total, name="loss")
    shared = b.op("exp", x, name="shared")
    b.output(shared, name="out")  # `shared` has another reader: its identity stays
    b.output(b.op("neg", shared))
    g = b.build()
    out = passes.name_outputs(g)
    verify(out)
    producers = out.producers()
    assert producers["loss"].op == "reduce_mean"
    assert producers["out"].op == "identity"
    feeds = {"x": np.random.default_rng(6).standard_normal((4, 3))}
    want, got = interp.run(g, feeds), interp.run(out, feeds)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0)


def test_sum_of_a_one_per_row_scatter_into_zeros_is_the_update() -> None:
    b = Builder("pick", "float64")
    logits = b.input("logits", "float64", (5, 4))
    label = b.input("label", "int64", (5, 1))
    upd = b.input("upd", "float64", (5, 1))
    zeros = b.op("constant_of_shape", shape=(5, 4), value=0.0, dtype="float64")
    scattered = b.op("scatter_add", zeros, label, upd, axis=1)
    b.output(b.op("mul", logits, b.op("reduce_sum", scattered, axes=(1,), keepdims=1)))
    g = b.build()
    out = passes.simplify(g)
    verify(out)
    assert "reduce_sum" not in [n.op for n in out.nodes]
    rng = np.random.default_rng(7)
    feeds = {"logits": rng.standard_normal((5, 4)), "label": rng.integers(0, 4, (5, 1)),
             "upd": rng.standard_normal((5, 1))}
    name = g.outputs[0].name
    np.testing.assert_allclose(interp.run(out, feeds)[name], interp.run(g, feeds)[name], rtol=0)


def _random_graph(seed: int) -> Graph:
    """A random float64 graph of the ops the passes rewrite: units, transposes, reshapes,
    products with biases, batch sums and scalings, with some values read several times."""
    rng = np.random.default_rng(seed)
    b = Builder(f"random_{seed}", "float64")
    vals = [b.input("x", "float64", (3, 4)), b.input("y", "float64", (4, 3)),
            b.input("z", "float64", (3,))]

    def pick(fits=lambda v: True):
        cands = [v for v in vals if fits(v)]
        return cands[rng.integers(len(cands))] if cands else None

    for _ in range(int(rng.integers(3, 20))):
        a = pick()
        kind = int(rng.integers(9))
        if kind == 0:  # a unit or a scale, either side: x*1, 0+x, x-0, 2.5*x
            op = ("add", "sub", "mul")[int(rng.integers(3))]
            value = (0.0 if op != "mul" else 1.0) if rng.random() < 0.7 else float(rng.normal())
            k = b.const(np.full(a.shape, value) if rng.random() < 0.5 else value)
            v = b.op(op, *((a, k) if op == "sub" or rng.random() < 0.5 else (k, a)))
        elif kind == 1:
            v = b.op(("identity", "tanh", "relu", "neg")[int(rng.integers(4))], a)
        elif kind == 2 and a.rank == 2:
            v = b.op("transpose", a, perm=(1, 0))
        elif kind == 3:
            n = int(np.prod(a.shape))
            v = b.op("reshape", a, shape=((n,), (1, n), (n // 2, 2) if n % 2 == 0 else (n, 1))[
                int(rng.integers(3))])
        elif kind == 4 and a.rank == 2 and (w := pick(
                lambda u, a=a: u.rank == 2 and u.shape[0] == a.shape[1])) is not None:
            v = b.op("matmul", a, w)
        elif kind == 5 and a.rank == 2:
            v = b.op("reduce_sum", a, axes=(0,), keepdims=int(rng.integers(2)))
        elif kind == 6 and a.rank == 2 and (c := pick(
                lambda u, a=a: u.rank == 1 and u.shape[0] == a.shape[1])) is not None:
            v = b.op("add", *((a, c) if rng.random() < 0.5 else (c, a)))
        elif kind == 7 and (o := pick(lambda u, a=a: u.shape == a.shape)) is not None:
            v = b.op(("add", "sub", "mul")[int(rng.integers(3))], a, o)
        elif kind == 8 and a.rank == 2 and a.shape[1] == 4:  # a dense layer: x @ y + bias
            bias = b.op("mul", pick(lambda u: u.shape == (3,)), b.const(float(rng.normal())))
            v = b.op("add", b.op("matmul", a, vals[1]), bias)
        else:
            continue
        vals.append(v)
    for i in range(int(rng.integers(1, 4))):
        b.output(pick(), name=f"out{i}")
    return b.build()


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.__name__)
def test_passes_keep_the_results_of_random_graphs(p) -> None:
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal((3, 4)), "y": rng.standard_normal((4, 3)),
             "z": rng.standard_normal(3)}
    for seed in range(60):
        g = _random_graph(seed)
        out = p(g)
        verify(out)
        assert out.inputs == g.inputs and out.outputs == g.outputs
        want, got = interp.run(g, feeds), interp.run(out, feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{p.__name__} on graph {seed}, output {k}")
