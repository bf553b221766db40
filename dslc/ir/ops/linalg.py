"""Matrix products: batched matmul and rank-2 gemm with an optional bias."""

from __future__ import annotations

import numpy as np

from dslc.ir.graph import OpDef, register

from ._common import broadcast, check, is_float, same_dtype, simple, unbroadcast


def _matmul_shape(ins, at):
    check(len(ins) == 2, "matmul takes 2 inputs")
    a, b = ins
    dtype = same_dtype(ins, "matmul")
    check(a.rank >= 2 and b.rank >= 2, f"matmul needs rank >= 2, got {a.shape} @ {b.shape}")
    check(a.shape[-1] == b.shape[-2], f"matmul: inner dims differ in {a.shape} @ {b.shape}")
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    return [(dtype, (*batch, a.shape[-2], b.shape[-1]))]


def _swap_last(b, v):
    perm = (*range(v.rank - 2), v.rank - 1, v.rank - 2)
    return b.op("transpose", v, perm=perm)


def _matmul_vjp(b, ins, outs, gs, at):
    a, w = ins
    g = gs[0]
    ga = b.op("matmul", g, _swap_last(b, w))
    gw = b.op("matmul", _swap_last(b, a), g)
    # Batch dims broadcast like elementwise ops: sum the cotangents back over them.
    return [unbroadcast(b, ga, a.shape), unbroadcast(b, gw, w.shape)]


register(OpDef("matmul", _matmul_shape, simple("MatMul"),
               lambda xs, at: [np.matmul(xs[0], xs[1])], _matmul_vjp))


def _gemm_dims(ins, at):
    a, b = ins[0], ins[1]
    m, ka = (a.shape[1], a.shape[0]) if at.get("trans_a", 0) else a.shape
    kb, n = (b.shape[1], b.shape[0]) if at.get("trans_b", 0) else b.shape
    return m, ka, kb, n


def _gemm_shape(ins, at):
    check(len(ins) in (2, 3), "gemm takes 2 or 3 inputs")
    dtype = same_dtype(ins, "gemm")
    check(is_float(dtype), "gemm needs float inputs")
    check(ins[0].rank == 2 and ins[1].rank == 2, "gemm needs rank-2 a and b")
    m, ka, kb, n = _gemm_dims(ins, at)
    check(ka == kb, f"gemm: inner dims differ ({ka} vs {kb})")
    if len(ins) == 3:
        check(broadcast(ins[2].shape, (m, n)) == (m, n),
              f"gemm: c {ins[2].shape} does not broadcast to {(m, n)}")
    return [(dtype, (m, n))]


def _gemm_emit(ctx, n):
    ctx.add("Gemm", [i for i in n.inputs if i], list(n.outputs),
            alpha=float(n.attr("alpha", 1.0)), beta=float(n.attr("beta", 1.0)),
            transA=int(n.attr("trans_a", 0)), transB=int(n.attr("trans_b", 0)))


def _gemm_np(xs, at):
    a = xs[0].T if at.get("trans_a", 0) else xs[0]
    b = xs[1].T if at.get("trans_b", 0) else xs[1]
    y = np.asarray(at.get("alpha", 1.0), a.dtype) * (a @ b)
    if len(xs) == 3:
        y = y + np.asarray(at.get("beta", 1.0), a.dtype) * xs[2]
    return [y.astype(xs[0].dtype)]


def _gemm_vjp(b, ins, outs, gs, at):
    a, w = ins[0], ins[1]
    g = gs[0]
    ta, tb = int(at.get("trans_a", 0)), int(at.get("trans_b", 0))
    alpha = float(at.get("alpha", 1.0))
    # d op(a) = alpha g op(b)^T and d op(b) = alpha op(a)^T g, each transposed back as needed.
    if ta:
        ga = b.op("gemm", w, g, trans_a=tb, trans_b=1, alpha=alpha)
    else:
        ga = b.op("gemm", g, w, trans_a=0, trans_b=1 - tb, alpha=alpha)
    if tb:
        gw = b.op("gemm", g, a, trans_a=1, trans_b=ta, alpha=alpha)
    else:
        gw = b.op("gemm", a, g, trans_a=1 - ta, trans_b=0, alpha=alpha)
    out = [ga, gw]
    if len(ins) == 3:
        beta = float(at.get("beta", 1.0))
        gc = g if beta == 1.0 else b.op("mul", g, b.const(np.asarray(beta, g.dtype)))
        out.append(unbroadcast(b, gc, ins[2].shape))
    return out


register(OpDef("gemm", _gemm_shape, _gemm_emit, _gemm_np, _gemm_vjp))
