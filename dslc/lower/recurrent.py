"""SimpleRNN, LSTM and GRU with PyTorch's equations, gate orders and parameter layouts.

Inputs are batch-first sequences [N, T, F]. Parameters are torch.nn.RNN/LSTM/GRU's
`weight_ih` [G·H, F], `weight_hh` [G·H, H], `bias_ih`, `bias_hh` (gate blocks
i,f,g,o for LSTM and r,z,n for GRU), with `_reverse` for the backward direction.

Two lowerings, chosen by the sequence length (docs/sequences.md):

* a fixed T (every training step, and models declared with a fixed length) is
  unrolled into primitives, so autodiff differentiates it like any other graph;
* a symbolic T (the exported model and the evaluation graph of `int[T]` inputs)
  uses ONNX's own RNN/LSTM/GRU operators, forward-only, with the weights
  re-ordered from PyTorch's gate order to ONNX's, so one graph accepts any T.
"""

from __future__ import annotations

from dslc.ir.graph import Builder, Value
from dslc.lower.layers import LayerCall, LayerResult, register_layer

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}

# ONNX's gate order as indices into PyTorch's gate blocks: LSTM i,f,g,o -> i,o,f,c;
# GRU r,z,n -> z,r,h.
_ONNX_ORDER = {"SimpleRNN": (0,), "LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
_FUSED_OP = {"SimpleRNN": "rnn_sequence", "LSTM": "lstm_sequence", "GRU": "gru_sequence"}


def _directions(call: LayerCall) -> tuple[str, ...]:
    return ("", "_reverse") if call.layer.args.get("bidirectional") else ("",)


# ---------------------------------------------------------------- unrolled (fixed T)


def _input_projection(b: Builder, x: Value, w: Value, bias: Value) -> Value:
    """x · Wᵀ + bias for every step at once: [N, T, F] -> [N, T, G]."""
    n, t, f = x.shape
    g = w.shape[0]
    if isinstance(n, int):
        # One Gemm over N·T rows, bias fused: ORT's fastest form.
        flat = b.op("reshape", x, shape=(n * t, f))
        return b.op("reshape", b.op("gemm", flat, w, bias, trans_b=1), shape=(n, t, g))
    y = b.op("matmul", x, b.op("transpose", w, perm=(1, 0)))
    return b.op("add", y, bias)


def _steps(b: Builder, xw: Value) -> list[Value]:
    """[N, T, G] -> T values [N, G], one Split for all of them."""
    n, t, g = xw.shape
    parts = b.op("split", xw, axis=1, sizes=(1,) * t)
    parts = parts if isinstance(parts, tuple) else (parts,)
    return [b.op("reshape", p, shape=(0, g)) for p in parts]


def _rnn_cell(b: Builder, xw: Value, h: Value | None, w_hh: Value, state: Value | None,
              hidden: int) -> tuple[Value, None]:
    pre = xw if h is None else b.op("gemm", h, w_hh, xw, trans_b=1)
    return b.op("tanh", pre), None


def _lstm_cell(b: Builder, xw: Value, h: Value | None, w_hh: Value, c: Value | None,
               hidden: int) -> tuple[Value, Value]:
    pre = xw if h is None else b.op("gemm", h, w_hh, xw, trans_b=1)
    i, f, g, o = b.op("split", pre, axis=1, sizes=(hidden,) * 4)
    i, g, o = b.op("sigmoid", i), b.op("tanh", g), b.op("sigmoid", o)
    ig = b.op("mul", i, g)
    c_new = ig if c is None else b.op("add", b.op("mul", b.op("sigmoid", f), c), ig)
    return b.op("mul", o, b.op("tanh", c_new)), c_new


def _gru_cell(b: Builder, xw: Value, h: Value | None, w_hh: Value, b_hh: Value,
              hidden: int) -> Value:
    # PyTorch: r, z = σ(x_r + W_hr h + b_hr), σ(x_z + W_hz h + b_hz);
    # n = tanh(x_n + r * (W_hn h + b_hn)); h' = (1 - z) * n + z * h = n + z * (h - n).
    hh = b_hh if h is None else b.op("gemm", h, w_hh, b_hh, trans_b=1)
    x_rz, x_n = b.op("split", xw, axis=1, sizes=(2 * hidden, hidden))
    h_rz, h_n = b.op("split", hh, axis=hh.rank - 1, sizes=(2 * hidden, hidden))
    r, z = b.op("split", b.op("sigmoid", b.op("add", x_rz, h_rz)), axis=1,
                sizes=(hidden, hidden))
    n = b.op("tanh", b.op("add", x_n, b.op("mul", r, h_n)))
    if h is None:
        return b.op("sub", n, b.op("mul", z, n))
    return b.op("add", n, b.op("mul", z, b.op("sub", h, n)))


def _unrolled_direction(call: LayerCall, suffix: str, reverse: bool) -> list[Value]:
    """Hidden states h_t for t = 0..T-1 (in time order) of one direction."""
    b, kind = call.b, call.layer.kind
    hidden = int(call.layer.args["hidden"])
    w_ih, w_hh = call.param(f"weight_ih{suffix}"), call.param(f"weight_hh{suffix}")
    b_ih, b_hh = call.param(f"bias_ih{suffix}"), call.param(f"bias_hh{suffix}")
    # SimpleRNN and LSTM add both biases to every pre-activation: fold b_hh into the input
    # projection. GRU keeps b_hn inside r * (W_hn h + b_hn), so it keeps b_hh apart.
    bias = b_ih if kind == "GRU" else b.op("add", b_ih, b_hh)
    xs = _steps(b, _input_projection(b, call.x, w_ih, bias))
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    out: list[Value | None] = [None] * len(xs)
    h: Value | None = None
    c: Value | None = None
    for t in order:
        if kind == "SimpleRNN":
            h, _ = _rnn_cell(b, xs[t], h, w_hh, None, hidden)
        elif kind == "LSTM":
            h, c = _lstm_cell(b, xs[t], h, w_hh, c, hidden)
        else:
            h = _gru_cell(b, xs[t], h, w_hh, b_hh, hidden)
        out[t] = h
    return [v for v in out if v is not None]


def _lower_unrolled(call: LayerCall) -> Value:
    b = call.b
    seqs = [_unrolled_direction(call, s, reverse=bool(s)) for s in _directions(call)]
    if call.layer.args.get("return_sequences"):
        per_dir = [b.op("concat", *[b.op("unsqueeze", h, axes=(1,)) for h in hs], axis=1)
                   if len(hs) > 1 else b.op("unsqueeze", hs[0], axes=(1,)) for hs in seqs]
        return per_dir[0] if len(per_dir) == 1 else b.op("concat", *per_dir, axis=2)
    # The final state of each direction (PyTorch's h_n): the forward one after step T-1,
    # the reverse one after step 0.
    finals = [seqs[0][-1]] + ([seqs[1][0]] if len(seqs) > 1 else [])
    return finals[0] if len(finals) == 1 else b.op("concat", *finals, axis=1)


# ---------------------------------------------------------------- fused (any T)


def _onnx_gates(b: Builder, v: Value, kind: str, hidden: int) -> Value:
    """PyTorch's gate blocks of `v` (axis 0) in ONNX's order."""
    order = _ONNX_ORDER[kind]
    if len(order) == 1:
        return v
    parts = b.op("split", v, axis=0, sizes=(hidden,) * len(order))
    return b.op("concat", *[parts[k] for k in order], axis=0)


def _stack(b: Builder, vs: list[Value]) -> Value:
    ups = [b.op("unsqueeze", v, axes=(0,)) for v in vs]
    return ups[0] if len(ups) == 1 else b.op("concat", *ups, axis=0)


def _lower_fused(call: LayerCall) -> Value:
    b, kind = call.b, call.layer.kind
    hidden = int(call.layer.args["hidden"])
    dirs = _directions(call)
    w = _stack(b, [_onnx_gates(b, call.param(f"weight_ih{s}"), kind, hidden) for s in dirs])
    r = _stack(b, [_onnx_gates(b, call.param(f"weight_hh{s}"), kind, hidden) for s in dirs])
    bias = _stack(b, [b.op("concat", _onnx_gates(b, call.param(f"bias_ih{s}"), kind, hidden),
                           _onnx_gates(b, call.param(f"bias_hh{s}"), kind, hidden), axis=0)
                      for s in dirs])
    x = b.op("transpose", call.x, perm=(1, 0, 2))  # ONNX's layout 0: [T, N, F]
    y, y_h = b.op(_FUSED_OP[kind], x, w, r, bias, hidden_size=hidden,
                  direction="bidirectional" if len(dirs) == 2 else "forward")
    width = hidden * len(dirs)
    if call.layer.args.get("return_sequences"):
        # [T, D, N, H] -> [N, T, D, H] -> [N, T, D·H]: forward then reverse on the last axis.
        y = b.op("transpose", y, perm=(2, 0, 1, 3))
        return b.op("reshape", y, shape=(0, 0, width))
    y_h = b.op("transpose", y_h, perm=(1, 0, 2))  # [N, D, H]
    return b.op("reshape", y_h, shape=(0, width))


def lower_recurrent(call: LayerCall) -> LayerResult:
    """One recurrent layer on [N, T, F]: unrolled for a fixed T, ONNX's operator otherwise."""
    fixed = isinstance(call.x.shape[1], int)
    return LayerResult(_lower_unrolled(call) if fixed else _lower_fused(call))


for _kind in GATES:
    register_layer(_kind)(lower_recurrent)
