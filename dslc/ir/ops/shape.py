"""Data-movement primitives: reshapes, permutations, slicing, gathers, scatters, padding."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from dslc.ir.graph import DTYPES, OpDef, register

from ._common import (
    broadcast,
    check,
    concrete,
    i64,
    norm_axes,
    norm_axis,
    prod,
    reshape_spec,
    same_dtype,
    unbroadcast,
)

BIG = 2**62  # "to the end" in slice bounds

# ---------------------------------------------------------------- reshape


def _reshape_shape(ins, at):
    x = ins[0]
    spec = tuple(at["shape"])
    check(spec.count(-1) <= 1, f"reshape: more than one -1 in {spec}")
    out: list[int | str | None] = []
    for i, s in enumerate(spec):
        if s == 0:
            check(i < x.rank, f"reshape: 0 at index {i} beyond rank {x.rank}")
            out.append(x.shape[i])
        elif s == -1:
            out.append(None)
        else:
            check(s > 0, f"reshape: bad dim {s}")
            out.append(s)
    # Symbolic dims must cancel between input and output; the rest is integer arithmetic.
    sym_in = Counter(d for d in x.shape if isinstance(d, str))
    sym_out = Counter(d for d in out if isinstance(d, str))
    left = sym_in - sym_out
    check(not (sym_out - sym_in), f"reshape: {x.shape} -> {spec} invents a symbolic dim")
    n_in = prod([d for d in x.shape if isinstance(d, int)])
    n_out = prod([d for d in out if isinstance(d, int)])
    if None in out:
        check(n_in % n_out == 0, f"reshape: {x.shape} -> {spec} does not divide")
        rest = n_in // n_out
        if left:
            check(sum(left.values()) == 1 and rest == 1,
                  f"reshape: cannot infer -1 in {x.shape} -> {spec}")
            fill: int | str = next(iter(left))
        else:
            fill = rest
        out[out.index(None)] = fill
    else:
        check(not left and n_in == n_out, f"reshape: {x.shape} -> {spec} changes the size")
    return [(x.dtype, tuple(out))]


def _reshape_np(xs, at):
    x = xs[0]
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(at["shape"])]
    return [x.reshape(target)]


register(OpDef(
    "reshape", _reshape_shape,
    lambda ctx, n: ctx.add("Reshape", [n.inputs[0], i64(ctx, n.attr("shape"), "shape")],
                           list(n.outputs)),
    _reshape_np,
    lambda b, ins, outs, gs, at: [
        b.op("reshape", gs[0], shape=reshape_spec(ins[0].shape, gs[0].shape))]))

# ---------------------------------------------------------------- transpose


def _transpose_shape(ins, at):
    x = ins[0]
    perm = tuple(at["perm"])
    check(sorted(perm) == list(range(x.rank)), f"transpose: bad perm {perm} for rank {x.rank}")
    return [(x.dtype, tuple(x.shape[p] for p in perm))]


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


register(OpDef(
    "transpose", _transpose_shape,
    lambda ctx, n: ctx.add("Transpose", list(n.inputs), list(n.outputs),
                           perm=[int(p) for p in n.attr("perm")]),
    lambda xs, at: [np.transpose(xs[0], at["perm"])],
    lambda b, ins, outs, gs, at: [b.op("transpose", gs[0], perm=_inverse(at["perm"]))]))

# ---------------------------------------------------------------- expand


def _expand_shape(ins, at):
    target = tuple(at["shape"])
    check(all(isinstance(d, int) and d > 0 for d in target), f"expand: bad shape {target}")
    return [(ins[0].dtype, broadcast(ins[0].shape, target))]


register(OpDef(
    "expand", _expand_shape,
    lambda ctx, n: ctx.add("Expand", [n.inputs[0], i64(ctx, n.attr("shape"), "shape")],
                           list(n.outputs)),
    lambda xs, at: [np.broadcast_to(xs[0], np.broadcast_shapes(xs[0].shape,
                                                              tuple(at["shape"]))).copy()],
    lambda b, ins, outs, gs, at: [unbroadcast(b, gs[0], ins[0].shape)]))

# ---------------------------------------------------------------- concat


def _concat_shape(ins, at):
    check(len(ins) >= 1, "concat needs inputs")
    dtype = same_dtype(ins, "concat")
    rank = ins[0].rank
    axis = norm_axis(at["axis"], rank, "concat")
    for v in ins:
        check(v.rank == rank, f"concat: ranks differ in {[v.shape for v in ins]}")
        check(all(d == e for i, (d, e) in enumerate(zip(v.shape, ins[0].shape, strict=True))
                  if i != axis), f"concat: shapes {[v.shape for v in ins]}")
    sizes = [v.shape[axis] for v in ins]
    total = sum(sizes) if all(isinstance(s, int) for s in sizes) else (
        sizes[0] if len(sizes) == 1 else None)
    check(total is not None, f"concat along a symbolic axis: {sizes}")
    shape = list(ins[0].shape)
    shape[axis] = total
    return [(dtype, tuple(shape))]


def _concat_vjp(b, ins, outs, gs, at):
    axis = norm_axis(at["axis"], ins[0].rank, "concat")
    out, start = [], 0
    for v in ins:
        size = concrete((v.shape[axis],), "concat gradient")[0]
        out.append(b.op("slice", gs[0], starts=(start,), ends=(start + size,), axes=(axis,),
                        steps=(1,)))
        start += size
    return out


register(OpDef(
    "concat", _concat_shape,
    lambda ctx, n: ctx.add("Concat", list(n.inputs), list(n.outputs), axis=int(n.attr("axis"))),
    lambda xs, at: [np.concatenate(xs, axis=at["axis"])], _concat_vjp))


def _split_shape(ins, at):
    x = ins[0]
    axis = norm_axis(at["axis"], x.rank, "split")
    sizes = tuple(at["sizes"])
    check(len(sizes) >= 1 and all(isinstance(s, int) and s > 0 for s in sizes),
          f"split: sizes must be positive ints, got {sizes}")
    check(x.shape[axis] == sum(sizes), f"split: sizes {sizes} do not add up to {x.shape[axis]}")
    return [(x.dtype, (*x.shape[:axis], s, *x.shape[axis + 1:])) for s in sizes]


def _split_np(xs, at):
    cuts = np.cumsum(at["sizes"])[:-1]
    return [p.copy() for p in np.split(xs[0], cuts, axis=at["axis"])]


def _split_vjp(b, ins, outs, gs, at):
    # One Concat of the pieces' cotangents (zeros where a piece is unused): leaner than the
    # Pad-and-Add that separate slices would cost in the backward pass.
    parts = [g if g is not None else _zeros(b, o.shape, o.dtype, "split gradient")
             for g, o in zip(gs, outs, strict=True)]
    return [parts[0] if len(parts) == 1 else b.op("concat", *parts, axis=at["axis"])]


def _split_emit(ctx, n):
    ins = [n.inputs[0], i64(ctx, n.attr("sizes"), "sizes")]
    ctx.add("Split", ins, list(n.outputs), axis=int(n.attr("axis")))


register(OpDef("split", _split_shape, _split_emit, _split_np, _split_vjp))

# ---------------------------------------------------------------- slice


def _slice_params(rank: int, at: dict) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, as given."""
    starts, ends = tuple(at["starts"]), tuple(at["ends"])
    axes = tuple(at.get("axes") or range(len(starts)))
    steps = tuple(at.get("steps") or (1,) * len(starts))
    check(len(starts) == len(ends) == len(axes) == len(steps), "slice: attribute lengths differ")
    check(all(s != 0 for s in steps), "slice: zero step")
    return [(norm_axis(a, rank, "slice"), s, e, st)
            for a, s, e, st in zip(axes, starts, ends, steps, strict=True)]


def _slice_shape(ins, at):
    x = ins[0]
    shape = list(x.shape)
    for axis, s, e, st in _slice_params(x.rank, at):
        d = x.shape[axis]
        if isinstance(d, str):
            check(s == 0 and e >= BIG and st == 1, f"slice of symbolic dim {d!r}")
            continue
        shape[axis] = len(range(*slice(s, e, st).indices(d)))
    return [(x.dtype, tuple(shape))]


def _slice_np(xs, at):
    x = xs[0]
    idx = [slice(None)] * x.ndim
    for axis, s, e, st in _slice_params(x.ndim, at):
        idx[axis] = slice(s, e, st)
    return [x[tuple(idx)].copy()]


def _slice_emit(ctx, n):
    params = _slice_params(len(ctx.value(n.inputs[0]).shape), n.attr_dict)
    ins = [n.inputs[0]] + [i64(ctx, [p[k] for p in params], h)
                           for k, h in ((1, "starts"), (2, "ends"), (0, "axes"), (3, "steps"))]
    ctx.add("Slice", ins, list(n.outputs))


def _slice_vjp(b, ins, outs, gs, at):
    x, g = ins[0], gs[0]
    for axis, s, e, st in _slice_params(x.rank, at):
        d = x.shape[axis]
        if isinstance(d, str):
            continue
        check(st > 0, "slice gradient needs positive steps")
        start, _, _ = slice(s, e, st).indices(d)
        k = g.shape[axis]
        if k == 0:
            continue
        if st > 1:
            # Interleave step-1 zeros after each element, then trim to what fits in the axis.
            shape = concrete(g.shape, "strided slice gradient")
            g = b.op("unsqueeze", g, axes=(axis + 1,))
            pads = [0] * (2 * g.rank)
            pads[g.rank + axis + 1] = st - 1
            g = b.op("pad", g, pads=tuple(pads))
            merged = list(shape)
            merged[axis] = k * st
            g = b.op("reshape", g, shape=tuple(merged))
            length = min(k * st, d - start)
            if length < k * st:
                g = b.op("slice", g, starts=(0,), ends=(length,), axes=(axis,), steps=(1,))
        else:
            length = k
        pads = [0] * (2 * x.rank)
        pads[axis], pads[x.rank + axis] = start, d - start - length
        if any(pads):
            g = b.op("pad", g, pads=tuple(pads))
    return [g]


register(OpDef("slice", _slice_shape, _slice_emit, _slice_np, _slice_vjp))

# ---------------------------------------------------------------- pad (zeros)


def _pad_shape(ins, at):
    x = ins[0]
    pads = tuple(at["pads"])
    check(len(pads) == 2 * x.rank and all(p >= 0 for p in pads), f"pad: bad pads {pads}")
    shape = []
    for i, d in enumerate(x.shape):
        extra = pads[i] + pads[x.rank + i]
        check(isinstance(d, int) or extra == 0, f"pad of symbolic dim {d!r}")
        shape.append(d + extra if extra else d)
    return [(x.dtype, tuple(shape))]


def _pad_np(xs, at):
    x, pads = xs[0], at["pads"]
    r = x.ndim
    return [np.pad(x, [(pads[i], pads[r + i]) for i in range(r)])]


def _pad_vjp(b, ins, outs, gs, at):
    x, pads = ins[0], at["pads"]
    r = x.rank
    axes = [i for i in range(r) if pads[i] or pads[r + i]]
    if not axes:
        return [gs[0]]
    return [b.op("slice", gs[0], starts=tuple(pads[i] for i in axes),
                 ends=tuple(pads[i] + x.shape[i] for i in axes), axes=tuple(axes),
                 steps=(1,) * len(axes))]


register(OpDef(
    "pad", _pad_shape,
    lambda ctx, n: ctx.add("Pad", [n.inputs[0], i64(ctx, n.attr("pads"), "pads")],
                           list(n.outputs)),
    _pad_np, _pad_vjp))

# ---------------------------------------------------------------- squeeze / unsqueeze


def _squeeze_shape(ins, at):
    x = ins[0]
    axes = norm_axes(at["axes"], x.rank, "squeeze")
    check(all(x.shape[a] == 1 for a in axes), f"squeeze: axes {axes} of {x.shape} are not 1")
    return [(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


def _unsqueeze_shape(ins, at):
    x = ins[0]
    rank = x.rank + len(at["axes"])
    axes = norm_axes(at["axes"], rank, "unsqueeze")
    dims = iter(x.shape)
    return [(x.dtype, tuple(1 if i in axes else next(dims) for i in range(rank)))]


def _axes_emit(onnx_op: str):
    return lambda ctx, n: ctx.add(onnx_op, [n.inputs[0], i64(ctx, n.attr("axes"), "axes")],
                                  list(n.outputs))


register(OpDef(
    "squeeze", _squeeze_shape, _axes_emit("Squeeze"),
    lambda xs, at: [np.squeeze(xs[0], axis=tuple(at["axes"]))],
    lambda b, ins, outs, gs, at: [b.op("unsqueeze", gs[0], axes=norm_axes(
        at["axes"], ins[0].rank, "squeeze"))]))
register(OpDef(
    "unsqueeze", _unsqueeze_shape, _axes_emit("Unsqueeze"),
    lambda xs, at: [np.expand_dims(xs[0], tuple(norm_axes(
        at["axes"], xs[0].ndim + len(at["axes"]), "unsqueeze")))],
    lambda b, ins, outs, gs, at: [b.op("squeeze", gs[0], axes=norm_axes(
        at["axes"], outs[0].rank, "unsqueeze"))]))

# ---------------------------------------------------------------- gathers and scatters


def _zeros(b, shape, dtype, what):
    return b.op("constant_of_shape", shape=concrete(shape, what), value=0.0, dtype=dtype)


def _gather_shape(ins, at):
    x, idx = ins
    check(idx.dtype in ("int64", "int32"), "gather: indices must be integers")
    axis = norm_axis(at.get("axis", 0), x.rank, "gather")
    return [(x.dtype, (*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


def _gather_vjp(b, ins, outs, gs, at):
    # Move the gathered axis to the front, scatter-add rows there, and move it back.
    x, idx = ins
    g = gs[0]
    axis = norm_axis(at.get("axis", 0), x.rank, "gather")
    r = idx.rank
    perm_x = (axis, *(i for i in range(x.rank) if i != axis))
    x_t_shape = tuple(x.shape[p] for p in perm_x)
    if axis:
        perm_g = (*range(axis, axis + r), *range(axis), *range(axis + r, g.rank))
        g = b.op("transpose", g, perm=perm_g)
    idx64 = idx if idx.dtype == "int64" else b.op("cast", idx, to="int64")
    zeros = _zeros(b, x_t_shape, g.dtype, "gather gradient")
    dx = b.op("scatter_nd_add", zeros, b.op("unsqueeze", idx64, axes=(r,)), g)
    if axis:
        dx = b.op("transpose", dx, perm=_inverse(perm_x))
    return [dx, None]


register(OpDef(
    "gather", _gather_shape,
    lambda ctx, n: ctx.add("Gather", list(n.inputs), list(n.outputs), axis=int(n.attr("axis", 0))),
    lambda xs, at: [np.take(xs[0], xs[1], axis=at.get("axis", 0))], _gather_vjp))


def _gather_elements_shape(ins, at):
    x, idx = ins
    check(idx.dtype in ("int64", "int32") and idx.rank == x.rank,
          "gather_elements: integer indices of the input's rank")
    norm_axis(at.get("axis", 0), x.rank, "gather_elements")
    return [(x.dtype, idx.shape)]


def _gather_elements_vjp(b, ins, outs, gs, at):
    x, idx = ins
    zeros = _zeros(b, x.shape, gs[0].dtype, "gather_elements gradient")
    return [b.op("scatter_add", zeros, idx, gs[0], axis=at.get("axis", 0)), None]


register(OpDef(
    "gather_elements", _gather_elements_shape,
    lambda ctx, n: ctx.add("GatherElements", list(n.inputs), list(n.outputs),
                           axis=int(n.attr("axis", 0))),
    lambda xs, at: [np.take_along_axis(xs[0], xs[1], axis=at.get("axis", 0))],
    _gather_elements_vjp))


def _scatter_add_shape(ins, at):
    base, idx, upd = ins
    check(idx.dtype in ("int64", "int32") and idx.shape == upd.shape and idx.rank == base.rank,
          "scatter_add: indices and updates of one shape, of the base's rank")
    check(base.dtype == upd.dtype, "scatter_add: base and updates dtypes differ")
    norm_axis(at.get("axis", 0), base.rank, "scatter_add")
    return [(base.dtype, base.shape)]


def _scatter_add_np(xs, at):
    base, idx, upd = xs
    axis = norm_axis(at.get("axis", 0), base.ndim, "scatter_add")
    out = base.copy()
    where = list(np.indices(idx.shape))
    where[axis] = idx
    np.add.at(out, tuple(where), upd)
    return [out]


register(OpDef(
    "scatter_add", _scatter_add_shape,
    lambda ctx, n: ctx.add("ScatterElements", list(n.inputs), list(n.outputs),
                           axis=int(n.attr("axis", 0)), reduction="add"),
    _scatter_add_np,
    lambda b, ins, outs, gs, at: [
        gs[0], None, b.op("gather_elements", gs[0], ins[1], axis=at.get("axis", 0))]))


def _scatter_nd_shape(ins, at):
    base, idx, upd = ins
    check(idx.dtype == "int64" and idx.rank >= 1, "scatter_nd_add: int64 indices")
    k = idx.shape[-1]
    check(isinstance(k, int) and k <= base.rank, "scatter_nd_add: bad index depth")
    want = (*idx.shape[:-1], *base.shape[k:])
    check(tuple(upd.shape) == want, f"scatter_nd_add: updates {upd.shape}, expected {want}")
    check(base.dtype == upd.dtype, "scatter_nd_add: base and updates dtypes differ")
    return [(base.dtype, base.shape)]


def _scatter_nd_np(xs, at):
    base, idx, upd = xs
    k = idx.shape[-1]
    out = base.copy()
    flat = idx.reshape(-1, k)
    np.add.at(out, tuple(flat.T), upd.reshape(flat.shape[0], *base.shape[k:]))
    return [out]


def _scatter_nd_vjp(b, ins, outs, gs, at):
    base, idx, upd = ins
    check(idx.shape[-1] == 1, "scatter_nd_add gradient supports index depth 1 only")
    rows = b.op("squeeze", idx, axes=(idx.rank - 1,))
    return [gs[0], None, b.op("gather", gs[0], rows, axis=0)]


register(OpDef(
    "scatter_nd_add", _scatter_nd_shape,
    lambda ctx, n: ctx.add("ScatterND", list(n.inputs), list(n.outputs), reduction="add"),
    _scatter_nd_np, _scatter_nd_vjp))

# ---------------------------------------------------------------- one_hot, constant_of_shape


def _one_hot_shape(ins, at):
    idx = ins[0]
    check(idx.dtype == "int64", "one_hot: int64 indices")
    check(at.get("dtype", "float32") in DTYPES, "one_hot: bad dtype")
    return [(at.get("dtype", "float32"), (*idx.shape, int(at["depth"])))]


def _one_hot_emit(ctx: Any, n) -> None:
    # Equal against arange + Cast: runs for every index/output dtype pair, unlike OneHot.
    col = ctx.tmp("col")
    hit = ctx.tmp("hit")
    ctx.add("Unsqueeze", [n.inputs[0], i64(ctx, [-1], "axes")], [col])
    ctx.add("Equal", [col, ctx.const(np.arange(int(n.attr("depth")), dtype=np.int64), "range")],
            [hit])
    ctx.add("Cast", [hit], list(n.outputs), to=ctx.onnx_dtype(n.attr("dtype", "float32")))


register(OpDef(
    "one_hot", _one_hot_shape, _one_hot_emit,
    lambda xs, at: [(xs[0][..., None] == np.arange(at["depth"])).astype(
        at.get("dtype", "float32"))],
    None))


def _cos_shape(ins, at):
    check(not ins, "constant_of_shape takes no inputs")
    dtype = at.get("dtype", "float32")
    check(dtype in DTYPES, f"constant_of_shape: bad dtype {dtype!r}")
    return [(dtype, concrete(tuple(at["shape"]), "constant_of_shape"))]


def _cos_emit(ctx: Any, n) -> None:
    value = np.asarray([n.attr("value", 0.0)], dtype=n.attr("dtype", "float32"))
    ctx.add("ConstantOfShape", [i64(ctx, n.attr("shape"), "shape")], list(n.outputs), value=value)


register(OpDef(
    "constant_of_shape", _cos_shape, _cos_emit,
    lambda xs, at: [np.full(tuple(at["shape"]), at.get("value", 0.0),
                            dtype=at.get("dtype", "float32"))],
    None))
