"""Every primitive: NumPy reference vs ONNX Runtime, and VJP vs central finite differences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dslc.emit_onnx import to_onnx
from dslc.ir import interp
from dslc.ir.graph import REGISTRY, Builder, IRError, opdef
from dslc.ir.verify import verify

# ---------------------------------------------------------------- input specs


@dataclass(frozen=True)
class F:
    """A random float tensor, uniform in [lo, hi)."""

    shape: tuple[int, ...]
    lo: float = -1.0
    hi: float = 1.0

    def make(self, rng: np.random.Generator, float_dtype: str) -> np.ndarray:
        return rng.uniform(self.lo, self.hi, self.shape).astype(float_dtype)


@dataclass(frozen=True)
class I:  # noqa: E742
    """A random int64 tensor in [lo, hi)."""

    shape: tuple[int, ...]
    lo: int
    hi: int

    def make(self, rng: np.random.Generator, float_dtype: str) -> np.ndarray:
        return rng.integers(self.lo, self.hi, self.shape).astype(np.int64)


@dataclass(frozen=True)
class U:
    """Distinct int64 indices below `hi`, as a max_pool with disjoint windows yields."""

    shape: tuple[int, ...]
    hi: int

    def make(self, rng: np.random.Generator, float_dtype: str) -> np.ndarray:
        size = int(np.prod(self.shape))
        return rng.permutation(self.hi)[:size].reshape(self.shape).astype(np.int64)


@dataclass(frozen=True)
class Bool:
    """A random boolean tensor."""

    shape: tuple[int, ...]

    def make(self, rng: np.random.Generator, float_dtype: str) -> np.ndarray:
        return rng.uniform(size=self.shape) > 0.5


@dataclass(frozen=True)
class Case:
    inputs: tuple[Any, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def C(*inputs: Any, **attrs: Any) -> Case:  # noqa: N802
    return Case(tuple(inputs), attrs)


POS = (0.5, 2.0)


def _binary_cases(lo: float = -1.0, hi: float = 1.0, blo: float = -1.0, bhi: float = 1.0):
    return [
        C(F((2, 3), lo, hi), F((2, 3), blo, bhi)),
        C(F((2, 3), lo, hi), F((3,), blo, bhi)),
        C(F((2, 1, 3), lo, hi), F((4, 1), blo, bhi)),
        C(F((1,), lo, hi), F((2, 2), blo, bhi)),
    ]


def _unary(lo: float = -1.0, hi: float = 1.0):
    return [C(F((2, 3), lo, hi)), C(F((4,), lo, hi))]


INT_PAIR = [C(I((2, 3), -20, 20), I((3,), 1, 7)), C(I((4,), 0, 100), I((4,), -9, -1))]

OP_CASES: dict[str, list[Case]] = {
    "identity": [C(F((2, 3))), C(I((3,), 0, 5))],
    "add": _binary_cases() + [C(I((2, 3), -5, 5), I((3,), -5, 5))],
    "sub": _binary_cases() + [C(I((2, 3), -5, 5), I((1, 3), -5, 5))],
    "mul": _binary_cases() + [C(I((2, 3), -5, 5), I((2, 1), -5, 5))],
    "div": _binary_cases(blo=0.5, bhi=2.0),
    "max2": _binary_cases(),
    "min2": _binary_cases(),
    "pow": _binary_cases(*POS, -1.5, 1.5),
    "neg": _unary(),
    "exp": _unary(),
    "log": _unary(*POS),
    "sqrt": _unary(*POS),
    "abs": _unary(),
    "tanh": _unary(),
    "sigmoid": _unary(-4, 4),
    "relu": _unary(),
    "erf": _unary(),
    "sign": _unary(),
    "reciprocal": _unary(*POS),
    "square": _unary(),
    "leaky_relu": [C(F((2, 3)), alpha=0.1), C(F((5,)), alpha=0.3)],
    "elu": [C(F((2, 3)), alpha=1.0), C(F((5,), -2, 1), alpha=0.5)],
    "greater": [C(F((2, 3)), F((3,))), C(I((4,), 0, 3), I((4,), 0, 3))],
    "less": [C(F((2, 3)), F((2, 1))), C(I((4,), 0, 3), I((1,), 0, 3))],
    "equal": [C(I((2, 3), 0, 3), I((3,), 0, 3)), C(F((3,)), F((3,)))],
    "cast": [C(F((2, 3)), to="float64"), C(I((3,), -3, 3), to="float32"),
             C(Bool((2, 2)), to="float32"), C(F((4,), -3, 3), to="int64")],
    "where": [C(Bool((2, 3)), F((2, 3)), F((3,))), C(Bool((3,)), F((2, 1)), F((2, 3)))],
    "bitwise_and": [C(I((2, 3), 0, 2**40), I((3,), 0, 2**20))],
    "int_div": INT_PAIR,
    "mod": INT_PAIR,
    "matmul": [C(F((2, 3)), F((3, 4))), C(F((2, 2, 3)), F((3, 4))),
               C(F((2, 1, 2, 3)), F((3, 3, 2))), C(F((4, 3)), F((2, 3, 2)))],
    "gemm": [C(F((2, 3)), F((3, 4))),
             C(F((3, 2)), F((3, 4)), F((4,)), trans_a=1),
             C(F((2, 3)), F((4, 3)), F((2, 4)), trans_b=1, alpha=0.5, beta=2.0),
             C(F((3, 2)), F((4, 3)), F((1, 4)), trans_a=1, trans_b=1, alpha=1.5)],
    "reduce_sum": [C(F((2, 3, 4)), axes=(1,), keepdims=1), C(F((2, 3, 4)), axes=(0, 2), keepdims=0),
                   C(F((2, 3)), axes=(), keepdims=0)],
    "reduce_mean": [C(F((2, 3, 4)), axes=(2,), keepdims=0), C(F((2, 3)), axes=(0, 1), keepdims=1)],
    "reduce_max": [C(F((2, 3, 4)), axes=(1,), keepdims=0), C(F((3, 4)), axes=(0, 1), keepdims=1)],
    "argmax": [C(F((2, 5)), axis=1, keepdims=0), C(F((3, 2, 4)), axis=0, keepdims=1)],
    "softmax": [C(F((2, 5), -3, 3), axis=-1), C(F((2, 3, 4), -3, 3), axis=1)],
    "log_softmax": [C(F((2, 5), -3, 3), axis=-1), C(F((2, 3, 4), -3, 3), axis=0)],
    "reshape": [C(F((2, 3, 4)), shape=(0, -1)), C(F((6,)), shape=(2, 3)),
                C(F((2, 6)), shape=(3, 1, 4))],
    "transpose": [C(F((2, 3)), perm=(1, 0)), C(F((2, 3, 4)), perm=(2, 0, 1))],
    "expand": [C(F((3, 1)), shape=(2, 3, 4)), C(F((1, 4)), shape=(3, 1))],
    "concat": [C(F((2, 3)), F((2, 1)), axis=1), C(F((1, 3)), F((2, 3)), F((3, 3)), axis=0)],
    "slice": [C(F((4, 5)), starts=(1,), ends=(3,), axes=(0,), steps=(1,)),
              C(F((4, 5)), starts=(-3, 0), ends=(2**62, 4), axes=(1, 0), steps=(1, 1)),
              C(F((3, 7)), starts=(1,), ends=(7,), axes=(1,), steps=(2,)),
              C(F((6, 2)), starts=(0,), ends=(5,), axes=(0,), steps=(3,))],
    "squeeze": [C(F((2, 1, 3, 1)), axes=(1, 3)), C(F((1, 4)), axes=(0,))],
    "unsqueeze": [C(F((2, 3)), axes=(0, 3)), C(F((3,)), axes=(1,))],
    "gather": [C(F((5, 3)), I((2, 2), 0, 5), axis=0), C(F((2, 4, 3)), I((3,), 0, 4), axis=1),
               C(F((4, 3)), I((), 0, 3), axis=1)],
    "gather_elements": [C(F((3, 4)), I((3, 2), 0, 4), axis=1),
                        C(F((3, 4)), I((5, 4), 0, 3), axis=0)],
    "scatter_add": [C(F((3, 4)), I((2, 4), 0, 3), F((2, 4)), axis=0),
                    C(F((3, 4)), I((3, 6), 0, 4), F((3, 6)), axis=1)],
    "scatter_nd_add": [C(F((5, 3)), I((4, 1), 0, 5), F((4, 3))),
                       C(F((4, 2)), I((2, 3, 1), 0, 4), F((2, 3, 2)))],
    "one_hot": [C(I((4,), 0, 5), depth=5, dtype="float32"),
                C(I((2, 3), 0, 3), depth=3, dtype="int64")],
    "pad": [C(F((2, 3)), pads=(1, 0, 0, 2)), C(F((1, 2, 3)), pads=(0, 0, 1, 0, 0, 1))],
    "conv": [
        C(F((2, 3, 7)), F((4, 3, 3)), F((4,))),
        C(F((1, 2, 6, 6)), F((3, 2, 3, 3)), strides=(2, 2), pads=(1, 1, 1, 1)),
        C(F((2, 4, 5, 5)), F((6, 2, 3, 3)), F((6,)), group=2),
        C(F((1, 2, 7, 7)), F((2, 2, 2, 2)), dilations=(2, 2), strides=(1, 2)),
        C(F((1, 1, 5, 5)), F((2, 1, 4, 4)), pads=(1, 1, 2, 2)),
        C(F((1, 3, 6, 5)), F((3, 1, 2, 3)), group=3, strides=(2, 2), pads=(0, 1, 1, 0)),
    ],
    "conv_transpose": [
        C(F((1, 2, 3, 3)), F((2, 3, 3, 3)), strides=(2, 2), pads=(1, 1, 1, 1),
          output_padding=(1, 1)),
        C(F((1, 4, 3, 3)), F((4, 1, 2, 2)), group=2, dilations=(2, 2)),
        C(F((2, 2, 4)), F((2, 2, 3)), strides=(2,), pads=(0, 1)),
        C(F((1, 4, 3)), F((4, 3, 2)), strides=(3,), pads=(2, 0), output_padding=(2,), group=2),
    ],
    "max_pool": [
        C(F((2, 2, 5, 5)), kernel=(3, 3), strides=(1, 1)),
        C(F((1, 2, 5, 5)), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        C(F((2, 1, 7)), kernel=(2,), strides=(2,)),
    ],
    "max_unpool": [C(F((2, 2, 2, 2)), U((2, 2, 2, 2), 64), kernel=(2, 2), shape=(2, 2, 4, 4)),
                   C(F((1, 3, 3)), U((1, 3, 3), 21), kernel=(2,), shape=(1, 3, 7))],
    "avg_pool": [
        C(F((1, 2, 5, 5)), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        C(F((1, 1, 4, 4)), kernel=(2, 2), strides=(1, 1), pads=(0, 1, 1, 0)),
        C(F((2, 2, 6)), kernel=(2,), strides=(2,)),
    ],
    "split": [C(F((2, 5)), axis=1, sizes=(2, 3)), C(F((4, 3, 2)), axis=0, sizes=(1, 1, 2))],
    "rnn_sequence": [
        C(F((3, 2, 3)), F((1, 2, 3)), F((1, 2, 2)), F((1, 4)), hidden_size=2),
        C(F((4, 1, 2)), F((2, 3, 2)), F((2, 3, 3)), F((2, 6)), hidden_size=3,
          direction="bidirectional"),
    ],
    "lstm_sequence": [
        C(F((3, 2, 3)), F((1, 8, 3)), F((1, 8, 2)), F((1, 16)), hidden_size=2),
        C(F((2, 2, 2)), F((2, 8, 2)), F((2, 8, 2)), F((2, 16)), hidden_size=2,
          direction="bidirectional"),
    ],
    "gru_sequence": [
        C(F((3, 2, 3)), F((1, 6, 3)), F((1, 6, 2)), F((1, 12)), hidden_size=2),
        C(F((2, 2, 2)), F((2, 6, 2)), F((2, 6, 2)), F((2, 12)), hidden_size=2,
          direction="bidirectional"),
    ],
    "constant_of_shape": [C(shape=(2, 3), value=1.5, dtype="float32"),
                          C(shape=(4,), value=7, dtype="int64")],
}

CASES = [(op, k, case) for op, cases in sorted(OP_CASES.items()) for k, case in enumerate(cases)]
IDS = [f"{op}-{k}" for op, k, _ in CASES]


def _arrays(op: str, k: int, case: Case, float_dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng([k, *op.encode()])
    return [spec.make(rng, float_dtype) for spec in case.inputs]


def _graph(op: str, case: Case, arrays: list[np.ndarray], float_dtype: str):
    b = Builder(f"op_{op}", float_dtype)
    ins = [b.input(f"x{i}", str(a.dtype), a.shape) for i, a in enumerate(arrays)]
    outs = b.op(op, *ins, **case.attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return b, ins, list(outs)


# ---------------------------------------------------------------- test A: numpy vs onnxruntime


@pytest.mark.parametrize(("op", "k", "case"), CASES, ids=IDS)
def test_numpy_matches_onnxruntime(op: str, k: int, case: Case) -> None:
    arrays = _arrays(op, k, case, "float32")
    b, ins, outs = _graph(op, case, arrays, "float32")
    for o in outs:
        b.output(o)
    graph = b.build()
    verify(graph)
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {v.name: a for v, a in zip(ins, arrays, strict=True)})
    want = opdef(op).numpy(arrays, dict(case.attrs))
    assert len(got) == len(want) == len(outs)
    for g, w, o in zip(got, want, outs, strict=True):
        assert str(g.dtype) == o.dtype
        assert g.shape == tuple(o.shape) == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- test B: VJP vs finite differences


def _differentiable(op: str, case: Case) -> bool:
    """Whether a case has a float input and a float output to differentiate."""
    if opdef(op).vjp is None or not any(isinstance(s, F) for s in case.inputs):
        return False
    return case.attrs.get("to", "float64") in ("float32", "float64")


DIFF_CASES = [(op, k, case) for op, k, case in CASES if _differentiable(op, case)]


def _loss(op: str, case: Case, arrays: list[np.ndarray], cts: list[np.ndarray | None]) -> float:
    outs = opdef(op).numpy(arrays, dict(case.attrs))
    return sum(float(np.sum(o * c)) for o, c in zip(outs, cts, strict=True) if c is not None)


@pytest.mark.parametrize(("op", "k", "case"), DIFF_CASES,
                         ids=[f"{op}-{k}" for op, k, _ in DIFF_CASES])
def test_vjp_matches_finite_differences(op: str, k: int, case: Case) -> None:
    arrays = _arrays(op, k, case, "float64")
    b, ins, outs = _graph(op, case, arrays, "float64")
    rng = np.random.default_rng(99)
    ct_arrays: list[np.ndarray | None] = []
    ct_values = []
    for i, o in enumerate(outs):
        if o.dtype == "float64":
            ct_arrays.append(rng.standard_normal([int(d) for d in o.shape]))
            ct_values.append(b.input(f"ct{i}", "float64", o.shape))
        else:
            ct_arrays.append(None)
            ct_values.append(None)
    grads = opdef(op).vjp(b, ins, outs, ct_values, dict(case.attrs))
    assert len(grads) == len(ins)
    checked = 0
    for i, (x, gv) in enumerate(zip(ins, grads, strict=True)):
        if x.dtype != "float64" or gv is None:
            continue
        assert gv.shape == x.shape
        b.output(gv, name=f"grad{i}")
        checked += 1
    if op == "sign":
        assert checked == 0  # piecewise constant: a zero (None) cotangent
        return
    assert checked > 0
    graph = b.build()
    verify(graph)
    feeds = {v.name: a for v, a in zip(ins, arrays, strict=True)}
    feeds.update({f"ct{i}": c for i, c in enumerate(ct_arrays) if c is not None})
    got = interp.run(graph, feeds)
    eps = 1e-6
    for i in range(len(ins)):
        if f"grad{i}" not in got:
            continue
        fd = np.zeros(arrays[i].shape)
        for idx in np.ndindex(*arrays[i].shape):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            diff = _loss(op, case, plus, ct_arrays) - _loss(op, case, minus, ct_arrays)
            fd[idx] = diff / (2 * eps)
        np.testing.assert_allclose(got[f"grad{i}"], fd, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- test C: every op has cases


def test_every_registered_op_has_cases() -> None:
    opdef("identity")  # loads the registry
    assert set(REGISTRY) - set(OP_CASES) == set()
    assert set(OP_CASES) - set(REGISTRY) == set()
    assert all(OP_CASES[op] for op in OP_CASES)


# ---------------------------------------------------------------- shape rules


def _types(op: str, *shapes, **attrs):
    b = Builder("shapes")
    ins = [b.input(f"x{i}", "float32", s) for i, s in enumerate(shapes)]
    out = b.op(op, *ins, **attrs)
    return out.shape


def test_symbolic_broadcasting() -> None:
    assert _types("add", ("N", 3), (3,)) == ("N", 3)
    assert _types("mul", ("N", 1), (1, 4)) == ("N", 4)
    assert _types("sub", ("N", 3), ("N", 1)) == ("N", 3)
    assert _types("matmul", ("N", "T", 4), (4, 2)) == ("N", "T", 2)
    assert _types("reshape", ("N", 4, 4), shape=(0, -1)) == ("N", 16)
    assert _types("reshape", ("N", 16), shape=(-1, 4, 4)) == ("N", 4, 4)


@pytest.mark.parametrize(("op", "shapes", "attrs"), [
    ("add", [("N", 3), ("M", 3)], {}),
    ("add", [(2, 3), (4, 3)], {}),
    ("add", [("N",), (5,)], {}),
    ("matmul", [(2, 3), (4, 2)], {}),
    ("reshape", [(2, 3)], {"shape": (4, 2)}),
    ("reshape", [("N", 3)], {"shape": (3, -1, 2)}),
    ("transpose", [(2, 3)], {"perm": (0, 0)}),
    ("reduce_sum", [(2, 3)], {"axes": (2,), "keepdims": 0}),
    ("conv", [(1, 3, 5, 5), (4, 2, 3, 3)], {}),
    ("squeeze", [(2, 3)], {"axes": (0,)}),
])
def test_shape_rules_reject_inconsistent_inputs(op: str, shapes, attrs) -> None:
    with pytest.raises(IRError):
        _types(op, *shapes, **attrs)


def test_ties_share_the_cotangent_evenly() -> None:
    b = Builder("ties", "float64")
    x = b.input("x", "float64", (3,))
    y = b.input("y", "float64", (3,))
    m = b.op("reduce_max", x, axes=(0,), keepdims=0)
    mm = b.op("max2", x, y)
    gm = b.input("gm", "float64", ())
    gmm = b.input("gmm", "float64", (3,))
    [gx] = opdef("reduce_max").vjp(b, [x], [m], [gm], {"axes": (0,), "keepdims": 0})
    gx2, gy2 = opdef("max2").vjp(b, [x, y], [mm], [gmm], {})
    for v in (gx, gx2, gy2):
        b.output(v)
    out = interp.run(b.build(), {"x": np.array([1.0, 3.0, 3.0]), "y": np.array([0.0, 3.0, 4.0]),
                                 "gm": np.array(1.0), "gmm": np.ones(3)})
    np.testing.assert_allclose(out[gx.name], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(out[gx2.name], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(out[gy2.name], [0.0, 0.5, 1.0])
