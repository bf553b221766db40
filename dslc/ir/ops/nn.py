"""Convolutions and pooling over N-D spatial data laid out as (batch, channels, *spatial)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dslc.ir.graph import Builder, OpDef, Value, register

from ._common import check, concrete, i64, is_float, prod, same_dtype

# ---------------------------------------------------------------- attribute handling


def _params(at: dict, sp: int, kernel: tuple[int, ...] | None = None) -> dict[str, tuple]:
    """Strides, pads (all begins then all ends), dilations and output padding with defaults."""
    return {
        "strides": tuple(at.get("strides") or (1,) * sp),
        "pads": tuple(at.get("pads") or (0,) * (2 * sp)),
        "dilations": tuple(at.get("dilations") or (1,) * sp),
        "output_padding": tuple(at.get("output_padding") or (0,) * sp),
    }


def _check_params(p: dict, sp: int, op: str) -> None:
    check(len(p["strides"]) == sp and len(p["dilations"]) == sp and len(p["pads"]) == 2 * sp
          and len(p["output_padding"]) == sp, f"{op}: attribute lengths do not match {sp}-D")
    check(all(s > 0 for s in p["strides"]) and all(d > 0 for d in p["dilations"])
          and all(q >= 0 for q in p["pads"]), f"{op}: bad strides, dilations or pads")


def _out_dims(spatial, kernel, p) -> tuple[int, ...]:
    sp = len(kernel)
    out = []
    for i in range(sp):
        span = p["dilations"][i] * (kernel[i] - 1) + 1
        full = spatial[i] + p["pads"][i] + p["pads"][sp + i] - span
        check(full >= 0, f"window {span} larger than padded input {spatial[i]}")
        out.append(full // p["strides"][i] + 1)
    return tuple(out)


def _t_out_dims(spatial, kernel, p) -> tuple[int, ...]:
    sp = len(kernel)
    out = tuple(p["strides"][i] * (spatial[i] - 1) + p["output_padding"][i]
                + p["dilations"][i] * (kernel[i] - 1) + 1 - p["pads"][i] - p["pads"][sp + i]
                for i in range(sp))
    check(all(d > 0 for d in out), f"conv_transpose: empty output {out}")
    return out


def _conv_attrs(ctx: Any, n, transpose: bool) -> dict[str, Any]:
    w = ctx.value(n.inputs[1])
    sp = w.rank - 2
    p = _params(n.attr_dict, sp)
    attrs = dict(strides=list(p["strides"]), pads=list(p["pads"]),
                 dilations=list(p["dilations"]), group=int(n.attr("group", 1)),
                 kernel_shape=[int(k) for k in w.shape[2:]])
    if transpose and any(p["output_padding"]):
        attrs["output_padding"] = list(p["output_padding"])
    return attrs


# ---------------------------------------------------------------- numpy references


def _windows(sp_out, kpos, p):
    return tuple(slice(kpos[i] * p["dilations"][i],
                       kpos[i] * p["dilations"][i] + p["strides"][i] * (sp_out[i] - 1) + 1,
                       p["strides"][i]) for i in range(len(kpos)))


def _pad_np(x: np.ndarray, pads: tuple[int, ...], value: float = 0.0) -> np.ndarray:
    sp = x.ndim - 2
    return np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[sp + i]) for i in range(sp)],
                  constant_values=value)


def _conv_np(xs, at):
    x, w = xs[0], xs[1]
    group = int(at.get("group", 1))
    sp = x.ndim - 2
    p = _params(at, sp)
    xp = _pad_np(x, p["pads"])
    out_sp = _out_dims(x.shape[2:], w.shape[2:], p)
    m, cg = w.shape[0], w.shape[1]
    mg = m // group
    y = np.zeros((x.shape[0], m, *out_sp), dtype=x.dtype)
    for kpos in np.ndindex(*w.shape[2:]):
        patch = xp[(slice(None), slice(None), *_windows(out_sp, kpos, p))]
        for g in range(group):
            y[:, g * mg:(g + 1) * mg] += np.einsum(
                "nc...,mc->nm...", patch[:, g * cg:(g + 1) * cg],
                w[(slice(g * mg, (g + 1) * mg), slice(None), *kpos)])
    if len(xs) == 3:
        y += xs[2].reshape(1, m, *([1] * sp))
    return [y]


def _conv_transpose_np(xs, at):
    x, w = xs
    group = int(at.get("group", 1))
    sp = x.ndim - 2
    p = _params(at, sp)
    cg, og = w.shape[0] // group, w.shape[1]
    full_sp = tuple(p["strides"][i] * (x.shape[2 + i] - 1)
                    + p["dilations"][i] * (w.shape[2 + i] - 1) + 1 + p["output_padding"][i]
                    for i in range(sp))
    full = np.zeros((x.shape[0], og * group, *full_sp), dtype=x.dtype)
    for kpos in np.ndindex(*w.shape[2:]):
        win = _windows(x.shape[2:], kpos, p)
        for g in range(group):
            full[(slice(None), slice(g * og, (g + 1) * og), *win)] += np.einsum(
                "nc...,co->no...", x[:, g * cg:(g + 1) * cg],
                w[(slice(g * cg, (g + 1) * cg), slice(None), *kpos)])
    crop = tuple(slice(p["pads"][i], full_sp[i] - p["pads"][sp + i]) for i in range(sp))
    return [full[(slice(None), slice(None), *crop)].copy()]


# ---------------------------------------------------------------- shape rules


def _conv_shape(ins, at):
    check(len(ins) in (2, 3), "conv takes x, w and an optional bias")
    x, w = ins[0], ins[1]
    dtype = same_dtype(ins, "conv")
    check(is_float(dtype) and x.rank == w.rank and x.rank >= 3, "conv: float (N, C, ...) inputs")
    sp = x.rank - 2
    p = _params(at, sp)
    _check_params(p, sp, "conv")
    group = int(at.get("group", 1))
    check(x.shape[1] == w.shape[1] * group and w.shape[0] % group == 0,
          f"conv: channels {x.shape} vs weight {w.shape} with group {group}")
    if len(ins) == 3:
        check(tuple(ins[2].shape) == (w.shape[0],), "conv: bias must be (filters,)")
    spatial = concrete(x.shape[2:], "conv spatial dims")
    return [(dtype, (x.shape[0], w.shape[0], *_out_dims(spatial, w.shape[2:], p)))]


def _conv_transpose_shape(ins, at):
    check(len(ins) == 2, "conv_transpose takes x and w")
    x, w = ins
    dtype = same_dtype(ins, "conv_transpose")
    check(is_float(dtype) and x.rank == w.rank and x.rank >= 3,
          "conv_transpose: float (N, C, ...) inputs")
    sp = x.rank - 2
    p = _params(at, sp)
    _check_params(p, sp, "conv_transpose")
    group = int(at.get("group", 1))
    check(x.shape[1] == w.shape[0] and w.shape[0] % group == 0,
          f"conv_transpose: channels {x.shape} vs weight {w.shape}")
    check(all(0 <= q < max(s, d) for q, s, d in
              zip(p["output_padding"], p["strides"], p["dilations"], strict=True)),
          "conv_transpose: output_padding must be smaller than stride or dilation")
    spatial = concrete(x.shape[2:], "conv_transpose spatial dims")
    out = _t_out_dims(spatial, w.shape[2:], p)
    return [(dtype, (x.shape[0], w.shape[1] * group, *out))]


# ---------------------------------------------------------------- gradients


def _correlate(b: Builder, inp: Value, ker: Value, group: int, strides, dilations, pads,
               kernel: tuple[int, ...]) -> Value:
    """sum over batch of inp (x) ker, per group: the weight cotangent of conv-like ops.

    `inp` (N, G*A, ...) and `ker` (N, G*B, ...) give (G*B, A, *kernel): the batch becomes
    the contracted channel axis, and each group only sees its own channels.
    """
    sp = inp.rank - 2
    rest = tuple(range(2, 2 + sp))
    if group == 1:
        i_t = b.op("transpose", inp, perm=(1, 0, *rest))
        k_t = b.op("transpose", ker, perm=(1, 0, *rest))
    else:
        n = concrete(inp.shape, "grouped convolution gradient")[0]
        a, bb = inp.shape[1] // group, ker.shape[1] // group
        i5 = b.op("reshape", inp, shape=(n, group, a, *inp.shape[2:]))
        i_t = b.op("reshape", b.op("transpose", i5, perm=(2, 1, 0, *(r + 1 for r in rest))),
                   shape=(a, group * n, *inp.shape[2:]))
        k5 = b.op("reshape", ker, shape=(n, group, bb, *ker.shape[2:]))
        k_t = b.op("reshape", b.op("transpose", k5, perm=(1, 2, 0, *(r + 1 for r in rest))),
                   shape=(group * bb, n, *ker.shape[2:]))
    out = b.op("conv", i_t, k_t, strides=tuple(strides), dilations=tuple(dilations),
               pads=tuple(pads), group=group)
    extra = [i for i in range(sp) if out.shape[2 + i] != kernel[i]]
    if extra:
        out = b.op("slice", out, starts=(0,) * len(extra), ends=tuple(kernel[i] for i in extra),
                   axes=tuple(2 + i for i in extra), steps=(1,) * len(extra))
    return b.op("transpose", out, perm=(1, 0, *rest))


def _conv_vjp(b, ins, outs, gs, at):
    x, w = ins[0], ins[1]
    g = gs[0]
    sp = x.rank - 2
    p = _params(at, sp)
    group = int(at.get("group", 1))
    kernel = concrete(w.shape[2:], "conv kernel")
    spatial = concrete(x.shape[2:], "conv spatial dims")
    # ConvTranspose of dY by the same weights; output_padding recovers the rows strides skipped.
    out_pad = tuple(
        spatial[i] - (p["strides"][i] * (g.shape[2 + i] - 1) + p["dilations"][i] * (kernel[i] - 1)
                      + 1 - p["pads"][i] - p["pads"][sp + i]) for i in range(sp))
    dx = b.op("conv_transpose", g, w, strides=p["strides"], pads=p["pads"],
              dilations=p["dilations"], group=group, output_padding=out_pad)
    dw = _correlate(b, x, g, group, p["dilations"], p["strides"], p["pads"], kernel)
    out = [dx, dw]
    if len(ins) == 3:
        out.append(b.op("reduce_sum", g, axes=(0, *range(2, 2 + sp)), keepdims=0))
    return out


def _conv_transpose_vjp(b, ins, outs, gs, at):
    x, w = ins
    g = gs[0]
    sp = x.rank - 2
    p = _params(at, sp)
    group = int(at.get("group", 1))
    kernel = concrete(w.shape[2:], "conv_transpose kernel")
    dx = b.op("conv", g, w, strides=p["strides"], pads=p["pads"], dilations=p["dilations"],
              group=group)
    # The cotangent, padded like the forward crop, correlated with x at stride `dilations`.
    pads = (*p["pads"][:sp],
            *(max(0, p["pads"][sp + i] - p["output_padding"][i]) for i in range(sp)))
    dw = _correlate(b, g, x, group, p["dilations"], p["strides"], pads, kernel)
    return [dx, dw]


register(OpDef("conv", _conv_shape,
               lambda ctx, n: ctx.add("Conv", [i for i in n.inputs if i], list(n.outputs),
                                      **_conv_attrs(ctx, n, False)),
               _conv_np, _conv_vjp))
register(OpDef("conv_transpose", _conv_transpose_shape,
               lambda ctx, n: ctx.add("ConvTranspose", list(n.inputs), list(n.outputs),
                                      **_conv_attrs(ctx, n, True)),
               _conv_transpose_np, _conv_transpose_vjp))

# ---------------------------------------------------------------- pooling


def _pool_shape(ins, at, op):
    x = ins[0]
    check(is_float(x.dtype) and x.rank >= 3, f"{op}: float (N, C, ...) input")
    kernel = tuple(at["kernel"])
    sp = x.rank - 2
    check(len(kernel) == sp, f"{op}: kernel {kernel} for {sp}-D input")
    p = _params(at, sp)
    _check_params(p, sp, op)
    check(all(q < k for q, k in zip(p["pads"], kernel * 2, strict=True)),
          f"{op}: pads must be smaller than the kernel")
    spatial = concrete(x.shape[2:], f"{op} spatial dims")
    return (*x.shape[:2], *_out_dims(spatial, kernel, p))


def _pool_attrs(n) -> dict[str, Any]:
    kernel = tuple(n.attr("kernel"))
    p = _params(n.attr_dict, len(kernel))
    return dict(kernel_shape=list(kernel), strides=list(p["strides"]), pads=list(p["pads"]))


def _max_pool_np(xs, at):
    x = xs[0]
    kernel = tuple(at["kernel"])
    sp = x.ndim - 2
    p = _params(at, sp)
    xp = _pad_np(x, p["pads"], -np.inf)
    out_sp = _out_dims(x.shape[2:], kernel, p)
    # Flat index of every padded position in the unpadded input (onnx counts over N and C too).
    coords = np.indices(xp.shape)
    flat = np.zeros(xp.shape, dtype=np.int64)
    for axis in range(x.ndim):
        c = coords[axis] - (p["pads"][axis - 2] if axis >= 2 else 0)
        flat = flat * x.shape[axis] + c
    best = np.full((*x.shape[:2], *out_sp), -np.inf, dtype=x.dtype)
    where = np.zeros(best.shape, dtype=np.int64)
    # Window positions in row-major order; strict > keeps the first maximum, as ORT does.
    for kpos in np.ndindex(*kernel):
        win = (slice(None), slice(None), *_windows(out_sp, kpos, p))
        patch = xp[win]
        take = patch > best
        best = np.where(take, patch, best)
        where = np.where(take, flat[win], where)
    return [best, where]


def _max_pool_vjp(b, ins, outs, gs, at):
    x = ins[0]
    g = gs[0]
    if g is None:
        return [None]
    kernel = tuple(at["kernel"])
    p = _params(at, len(kernel))
    if p["strides"] == kernel and not any(p["pads"]):
        # Disjoint windows: each index is hit once, and MaxUnpool is many times faster in
        # ONNX Runtime than ScatterElements (or than MaxPool's own indices output).
        return [b.op("max_unpool", g, outs[1], kernel=kernel,
                     shape=concrete(x.shape, "max_pool gradient"))]
    total = prod(concrete(x.shape, "max_pool gradient"))
    zeros = b.op("constant_of_shape", shape=(total,), value=0.0, dtype=g.dtype)
    flat = b.op("scatter_add", zeros, b.op("reshape", outs[1], shape=(-1,)),
                b.op("reshape", g, shape=(-1,)), axis=0)
    return [b.op("reshape", flat, shape=tuple(x.shape))]


def _max_pool_emit(ctx: Any, n) -> None:
    # Without a reader for the indices (inference), leave ONNX's optional output off.
    outs = list(n.outputs) if ctx.is_used(n.outputs[1]) else [n.outputs[0]]
    ctx.add("MaxPool", list(n.inputs), outs, **_pool_attrs(n))


register(OpDef(
    "max_pool",
    lambda ins, at: [(ins[0].dtype, _pool_shape(ins, at, "max_pool")),
                     ("int64", _pool_shape(ins, at, "max_pool"))],
    _max_pool_emit,
    _max_pool_np, _max_pool_vjp, num_outputs=2))


def _pool_counts(spatial, kernel, p) -> np.ndarray:
    """How many real (unpadded) inputs each average-pool window covers."""
    ones = np.ones((1, 1, *spatial))
    padded = _pad_np(ones, p["pads"])
    out_sp = _out_dims(spatial, kernel, p)
    counts = np.zeros((1, 1, *out_sp))
    for kpos in np.ndindex(*kernel):
        counts += padded[(slice(None), slice(None), *_windows(out_sp, kpos, p))]
    return counts


def _avg_pool_np(xs, at):
    x = xs[0]
    kernel = tuple(at["kernel"])
    sp = x.ndim - 2
    p = _params(at, sp)
    xp = _pad_np(x, p["pads"])
    out_sp = _out_dims(x.shape[2:], kernel, p)
    total = np.zeros((*x.shape[:2], *out_sp), dtype=x.dtype)
    for kpos in np.ndindex(*kernel):
        total += xp[(slice(None), slice(None), *_windows(out_sp, kpos, p))]
    return [(total / _pool_counts(x.shape[2:], kernel, p)).astype(x.dtype)]


def _avg_pool_vjp(b, ins, outs, gs, at):
    # dY / counts, spread back by a depthwise ConvTranspose with a ones kernel.
    x, g = ins[0], gs[0]
    kernel = tuple(at["kernel"])
    sp = x.rank - 2
    p = _params(at, sp)
    spatial = concrete(x.shape[2:], "avg_pool gradient")
    channels = concrete(x.shape[1:2], "avg_pool gradient")[0]
    counts = _pool_counts(spatial, kernel, p).astype(g.dtype)
    scaled = b.op("div", g, b.const(counts))
    ones = b.const(np.ones((channels, 1, *kernel), dtype=g.dtype))
    out_pad = tuple(spatial[i] - (p["strides"][i] * (g.shape[2 + i] - 1) + kernel[i]
                                  - p["pads"][i] - p["pads"][sp + i]) for i in range(sp))
    return [b.op("conv_transpose", scaled, ones, strides=p["strides"], pads=p["pads"],
                 group=channels, output_padding=out_pad)]


register(OpDef(
    "avg_pool",
    lambda ins, at: [(ins[0].dtype, _pool_shape(ins, at, "avg_pool"))],
    lambda ctx, n: ctx.add("AveragePool", list(n.inputs), list(n.outputs), count_include_pad=0,
                           **_pool_attrs(n)),
    _avg_pool_np, _avg_pool_vjp))

# ---------------------------------------------------------------- fused recurrent sequences
# ONNX's RNN, LSTM and GRU operators in their own layouts (X [T, N, F], W [D, G·H, F],
# R [D, G·H, H], B [D, 2·G·H]; gate orders i,o,f,c and z,r,h; GRU with
# linear_before_reset = 1). Forward-only, with no VJP: the inference graph uses them so
# that one model accepts any sequence length; training unrolls the cell instead.

_RNN_GATES = {"rnn_sequence": 1, "lstm_sequence": 4, "gru_sequence": 3}
_RNN_ONNX = {"rnn_sequence": "RNN", "lstm_sequence": "LSTM", "gru_sequence": "GRU"}


def _rnn_seq_shape(op: str):
    def shape(ins, at):
        check(len(ins) == 4, f"{op}: inputs X, W, R, B")
        x, w, r, bias = ins
        dtype = same_dtype(ins, op)
        check(is_float(dtype), f"{op}: float inputs")
        h = int(at["hidden_size"])
        d = 2 if at.get("direction", "forward") == "bidirectional" else 1
        g = _RNN_GATES[op] * h
        check(x.rank == 3, f"{op}: X must be [T, N, F], got {x.shape}")
        want_w = (d, g, x.shape[2])
        check(tuple(w.shape) == want_w, f"{op}: W {w.shape}, expected {want_w}")
        check(tuple(r.shape) == (d, g, h), f"{op}: R {r.shape}, expected {(d, g, h)}")
        check(tuple(bias.shape) == (d, 2 * g), f"{op}: B {bias.shape}, expected {(d, 2 * g)}")
        return [(dtype, (x.shape[0], d, x.shape[1], h)), (dtype, (d, x.shape[1], h))]

    return shape


def _sigmoid_np(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _rnn_seq_np(op: str):
    def run(xs, at):
        x, w, r, bias = xs
        h_size = int(at["hidden_size"])
        dirs = w.shape[0]
        steps, n = x.shape[0], x.shape[1]
        y = np.zeros((steps, dirs, n, h_size), dtype=x.dtype)
        y_h = np.zeros((dirs, n, h_size), dtype=x.dtype)
        for d in range(dirs):
            wb, rb = np.split(bias[d], 2)
            h = np.zeros((n, h_size), dtype=x.dtype)
            c = np.zeros((n, h_size), dtype=x.dtype)
            order = range(steps) if d == 0 else range(steps - 1, -1, -1)
            for t in order:
                xw = x[t] @ w[d].T + wb
                hr = h @ r[d].T + rb
                if op == "rnn_sequence":
                    h = np.tanh(xw + hr)
                elif op == "lstm_sequence":
                    i, o, f, cc = np.split(xw + hr, 4, axis=1)
                    c = _sigmoid_np(f) * c + _sigmoid_np(i) * np.tanh(cc)
                    h = _sigmoid_np(o) * np.tanh(c)
                else:
                    xz, xr, xh = np.split(xw, 3, axis=1)
                    hz, hr_, hh = np.split(hr, 3, axis=1)
                    z, rr = _sigmoid_np(xz + hz), _sigmoid_np(xr + hr_)
                    cand = np.tanh(xh + rr * hh)
                    h = (1 - z) * cand + z * h
                y[t, d] = h
            y_h[d] = h
        return [y, y_h]

    return run


def _rnn_seq_emit(op: str):
    def emit(ctx: Any, n) -> None:
        attrs: dict[str, Any] = {
            "hidden_size": int(n.attr("hidden_size")),
            "direction": str(n.attr("direction", "forward")),
        }
        if op == "gru_sequence":
            attrs["linear_before_reset"] = 1  # PyTorch's GRU: r multiplies (W_hn h + b_hn)
        ctx.add(_RNN_ONNX[op], list(n.inputs), list(n.outputs), **attrs)

    return emit


for _op in _RNN_GATES:
    register(OpDef(_op, _rnn_seq_shape(_op), _rnn_seq_emit(_op), _rnn_seq_np(_op), None, 2))


# ---------------------------------------------------------------- max_unpool


def _max_unpool_shape(ins, at):
    check(len(ins) == 2, "max_unpool takes values and indices")
    g, idx = ins
    check(is_float(g.dtype) and idx.dtype == "int64" and tuple(g.shape) == tuple(idx.shape),
          "max_unpool: float values and int64 indices of one shape")
    shape = tuple(at["shape"])
    check(len(shape) == g.rank and len(tuple(at["kernel"])) == g.rank - 2,
          f"max_unpool: output shape {shape} or kernel does not match rank {g.rank}")
    return [(g.dtype, shape)]


def _max_unpool_np(xs, at):
    g, idx = xs
    out = np.zeros(prod(at["shape"]), dtype=g.dtype)
    out[idx.reshape(-1)] = g.reshape(-1)
    return [out.reshape(tuple(at["shape"]))]


def _max_unpool_emit(ctx: Any, n) -> None:
    kernel = [int(k) for k in n.attr("kernel")]
    shape = i64(ctx, n.attr("shape"), "unpool_shape")
    ctx.add("MaxUnpool", [*n.inputs, shape], list(n.outputs), kernel_shape=kernel,
            strides=kernel)


def _max_unpool_vjp(b, ins, outs, gs, at):
    g, idx = ins
    flat = b.op("reshape", gs[0], shape=(-1,))
    picked = b.op("gather_elements", flat, b.op("reshape", idx, shape=(-1,)), axis=0)
    return [b.op("reshape", picked, shape=tuple(g.shape)), None]


# Values placed at flat indices of a zero tensor of `shape` (the indices of a max_pool with
# disjoint windows, `kernel` = strides, so no index repeats): ONNX MaxUnpool.
register(OpDef("max_unpool", _max_unpool_shape, _max_unpool_emit, _max_unpool_np,
               _max_unpool_vjp))
