"""Recurrent layers against PyTorch: forward, gradients, optimiser steps and the exported model.

Each case builds the training step of a one-layer model for two sequence
lengths from one checked model, starts dslc and torch.nn.RNN/LSTM/GRU from the
same parameters, alternates batches of both lengths and compares losses,
gradients (from an SGD step) and parameters after several Adam steps. The
exported model (one graph, symbolic T) is compared with PyTorch in eval mode
at two lengths.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from dslc.check import check_source
from dslc.emit_onnx import to_onnx
from dslc.lower import build_inference, build_train_step, initial_state, optimizer_state

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

FEAT, HIDDEN = 3, 4
LENGTHS = (5, 7)
KINDS = ("SimpleRNN", "LSTM", "GRU")
SHAPES = [(False, False), (True, False), (False, True), (True, True)]


def _source(kind: str, rs: bool, bd: bool, optimizer: str) -> str:
    width = HIDDEN * (2 if bd else 1)
    target = f"float[T, {width}]" if rs else f"float[{width}]"
    flags = f"return_sequences = {str(rs).lower()}, bidirectional = {str(bd).lower()}"
    return f"""
model Seq {{
    input  x: float[T, {FEAT}]
    target y: {target}
    h = x -> {kind}({HIDDEN}, {flags})
    output h
    loss mse(h, y)
}}
train {{ optimizer = {optimizer} }}
"""


def _torch_layer(kind: str, bd: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = {"SimpleRNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[kind]
    return cls(FEAT, HIDDEN, batch_first=True, bidirectional=bd).double()


def _dslc_name(torch_name: str) -> str:
    """torch's `weight_ih_l0_reverse` is dslc's `rnn.weight_ih_reverse` (LANGUAGE.md §6)."""
    return "rnn." + torch_name.replace("_l0", "")


def _torch_out(layer: torch.nn.Module, kind: str, x: torch.Tensor, rs: bool) -> torch.Tensor:
    out, h_n = layer(x)
    if kind == "LSTM":
        h_n = h_n[0]
    return out if rs else torch.cat(list(h_n), dim=-1)


def _model(kind: str, rs: bool, bd: bool, optimizer: str):
    src = _source(kind, rs, bd, optimizer).replace(f"{kind}({HIDDEN}", f"rnn: {kind}({HIDDEN}")
    return check_source(src, "seq.nn")


class _Step:
    """A float64 training step per sequence length, driven with plain ONNX Runtime."""

    def __init__(self, model, batch: int) -> None:
        self.sessions = {}
        for t in LENGTHS:
            graph = build_train_step(model, batch=batch, dims={"T": t}, total_steps=10,
                                     float_dtype="float64")
            self.sessions[t] = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                                    providers=["CPUExecutionProvider"])
        self.state = {k: np.asarray(v, dtype=np.float64) if v.dtype.kind == "f" else v
                      for k, v in {**initial_state(model, 0), **optimizer_state(model)}.items()}

    def run(self, x: np.ndarray, y: np.ndarray) -> float:
        sess = self.sessions[x.shape[1]]
        names = [o.name for o in sess.get_outputs()]
        feeds = {i.name: self.state[i.name] for i in sess.get_inputs() if i.name in self.state}
        feeds.update(seed=np.array(0, dtype=np.int64), x=x, y=y)
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        self.state = {k: out[f"{k}.next"] for k in self.state}
        return float(out["loss"])


def _batches(rs: bool, bd: bool, count: int, batch: int = 3):
    rng = np.random.default_rng(1)
    width = HIDDEN * (2 if bd else 1)
    for k in range(count):
        t = LENGTHS[k % 2]
        x = rng.standard_normal((batch, t, FEAT))
        y = rng.standard_normal((batch, t, width) if rs else (batch, width))
        yield x, y


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rs", "bd"), SHAPES, ids=["last", "seq", "bi-last", "bi-seq"])
def test_gradients_match_torch(kind: str, rs: bool, bd: bool) -> None:
    """One SGD(lr = 1) step per length: p0 - p1 is the gradient; the loss is the forward."""
    model = _model(kind, rs, bd, "SGD(lr = 1.0)")
    layer = _torch_layer(kind, bd, seed=3)
    init = {_dslc_name(n): p.detach().numpy().copy() for n, p in layer.named_parameters()}
    assert set(init) == {p.name for p in model.params()}
    for x, y in _batches(rs, bd, 2):
        step = _Step(model, batch=x.shape[0])
        step.state.update({k: v.copy() for k, v in init.items()})
        loss = step.run(x, y)
        layer.zero_grad()
        want = torch.nn.functional.mse_loss(_torch_out(layer, kind, torch.from_numpy(x), rs),
                                            torch.from_numpy(y))
        want.backward()
        assert loss == pytest.approx(float(want.detach()), rel=1e-12)
        for n, p in layer.named_parameters():
            grad = init[_dslc_name(n)] - step.state[_dslc_name(n)]
            np.testing.assert_allclose(grad, p.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rs", "bd"), SHAPES, ids=["last", "seq", "bi-last", "bi-seq"])
def test_adam_steps_match_torch_over_two_lengths(kind: str, rs: bool, bd: bool) -> None:
    """Six Adam steps, alternating T = 5 and T = 7 in one compiled model, as torch."""
    model = _model(kind, rs, bd, "Adam(lr = 0.01)")
    layer = _torch_layer(kind, bd, seed=4)
    step = _Step(model, batch=3)
    step.state.update({_dslc_name(n): p.detach().numpy().copy()
                       for n, p in layer.named_parameters()})
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    for x, y in _batches(rs, bd, 6):
        loss = step.run(x, y)
        opt.zero_grad()
        want = torch.nn.functional.mse_loss(_torch_out(layer, kind, torch.from_numpy(x), rs),
                                            torch.from_numpy(y))
        want.backward()
        opt.step()
        assert loss == pytest.approx(float(want.detach()), rel=1e-10)
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(step.state[_dslc_name(n)], p.detach().numpy(),
                                   rtol=1e-8, atol=1e-10)


def _export(model, params: dict[str, np.ndarray]) -> ort.InferenceSession:
    graph = build_inference(model)
    inits = {k: v.astype(np.float32) for k, v in params.items()}
    proto = to_onnx(graph, inits)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rs", "bd"), SHAPES, ids=["last", "seq", "bi-last", "bi-seq"])
def test_exported_model_matches_torch_at_two_lengths(kind: str, rs: bool, bd: bool) -> None:
    model = _model(kind, rs, bd, "Adam()")
    layer = _torch_layer(kind, bd, seed=5).float().eval()
    sess = _export(model, {_dslc_name(n): p.detach().numpy()
                           for n, p in layer.named_parameters()})
    assert [i.name for i in sess.get_inputs()] == ["x"]
    rng = np.random.default_rng(2)
    for t in (4, 11):
        x = rng.standard_normal((2, t, FEAT)).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        with torch.no_grad():
            want = _torch_out(layer, kind, torch.from_numpy(x), rs).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


EMB_SOURCE = """
model CharRNN {
    input  ids: int[T]
    target next: int[T]
    h = ids -> emb: Embedding(7, 5) -> rnn: SimpleRNN(6, return_sequences = true)
    logits = h -> head: Dense(7)
    output logits
    loss cross_entropy(logits, next)
}
train { optimizer = Adam(lr = 0.02) }
"""


class _CharRNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.emb = torch.nn.Embedding(7, 5)
        self.rnn = torch.nn.RNN(5, 6, batch_first=True)
        self.head = torch.nn.Linear(6, 7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(ids))[0])


def _char_params(net: _CharRNN) -> dict[str, np.ndarray]:
    return {n.replace("_l0", ""): p.detach().numpy().copy() for n, p in net.named_parameters()}


def test_embedding_rnn_model_matches_torch() -> None:
    """Embedding + SimpleRNN + Dense, cross-entropy over every step: six Adam steps, two T."""
    model = check_source(EMB_SOURCE, "char.nn")
    net = _CharRNN().double()
    step = _Step(model, batch=4)
    step.state.update(_char_params(net))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    rng = np.random.default_rng(3)
    for k in range(6):
        t = LENGTHS[k % 2]
        # Few ids over many positions: every batch repeats ids, which the gather VJP accumulates.
        ids = rng.integers(0, 7, (4, t))
        nxt = rng.integers(0, 7, (4, t))
        sess = step.sessions[t]
        names = [o.name for o in sess.get_outputs()]
        feeds = {i.name: step.state[i.name] for i in sess.get_inputs() if i.name in step.state}
        feeds.update(seed=np.array(0, dtype=np.int64), ids=ids, next=nxt)
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        step.state = {n: out[f"{n}.next"] for n in step.state}
        opt.zero_grad()
        logits = net(torch.from_numpy(ids))
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 7),
                                                 torch.from_numpy(nxt).reshape(-1))
        want.backward()
        opt.step()
        assert float(out["loss"]) == pytest.approx(float(want.detach()), rel=1e-10)
    for n, p in net.named_parameters():
        np.testing.assert_allclose(step.state[n.replace("_l0", "")], p.detach().numpy(),
                                   rtol=1e-8, atol=1e-10)
    net = net.float().eval()
    sess = _export(model, _char_params(net))
    for t in (3, 13):
        ids = rng.integers(0, 7, (2, t))
        (got,) = sess.run(None, {"ids": ids})
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(ids)).numpy(),
                                       rtol=1e-5, atol=1e-5)
