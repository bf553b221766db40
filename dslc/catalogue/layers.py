"""Layers (capitalised callees): signatures, shape and dtype rules, parameters and FLOPs.

Shapes are per example (the batch dimension is implicit); a dimension is an int
or a symbolic name. Parameter names and layouts follow PyTorch (LANGUAGE.md §6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.catalogue import initializers as inits
from dslc.catalogue.regularizers import resolve_regularizer
from dslc.catalogue.signature import (
    Arg,
    Signature,
    Word,
    boolean,
    int_or_tuple,
    integer,
    kind_of,
    number,
    optional,
    per_dim,
    sig,
)
from dslc.check.model import CallValue, Dim, ParamSpec, TensorType
from dslc.errors import DslcError, Span

Build = Callable[[dict[str, Any], TensorType, Span], tuple[dict[str, Any], TensorType]]
Params = Callable[[str, dict[str, Any], TensorType], tuple[ParamSpec, ...]]
Flops = Callable[[dict[str, Any], TensorType, TensorType], int]


@dataclass(frozen=True)
class LayerDef:
    """A catalogue layer; `build` normalises its arguments for an input and types the output."""

    kind: str
    signature: Signature
    build: Build
    params: Params
    flops: Flops
    doc: str = ""


def show_shape(shape: tuple[Dim, ...]) -> str:
    """A per-example shape as users write it: `[C, H, W]`."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def numel(shape: tuple[Dim, ...]) -> int:
    """Elements per example; symbolic dimensions count as 1."""
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _need_float(kind: str, t: TensorType, span: Span) -> None:
    if t.dtype != "float32":
        hint = "use Embedding to turn integer ids into vectors" if t.dtype == "int64" else None
        raise DslcError(f"{kind} expects a float input, got {t}", span, hint)


def _fixed(kind: str, what: str, d: Dim, t: TensorType, span: Span) -> int:
    if not isinstance(d, int):
        raise DslcError(
            f"{kind} needs a fixed {what}, but the input {t} has the symbolic size `{d}` there",
            span,
        )
    return d


# ---------------------------------------------------------------- shared arguments


def _init_arg(name: str, default: str) -> Arg:
    """A keyword-only initialiser argument (`init`, `bias_init`, `recurrent_init`)."""
    return Arg(name, inits.resolve_initializer, inits.default(default), "initialiser", kw_only=True)


_REGULARIZER = Arg(
    "regularizer", optional(resolve_regularizer), None, "l1(...)|l2(...)", kw_only=True
)


def _init_args(kernel: str = "glorot_uniform", bias: bool = True) -> tuple[Arg, ...]:
    """`init`, then `bias_init` when the layer has a bias, then `regularizer`."""
    bias_init = (_init_arg("bias_init", "zeros"),) if bias else ()
    return (_init_arg("init", kernel), *bias_init, _REGULARIZER)


def _p(
    name: str,
    shape: tuple[int, ...],
    init: CallValue,
    kernel: bool = False,
    fan: tuple[int, int] = (0, 0),
    trainable: bool = True,
) -> ParamSpec:
    return ParamSpec(name, shape, init, trainable, kernel, fan[0], fan[1])


def _no_params(name: str, args: dict[str, Any], t: TensorType) -> tuple[ParamSpec, ...]:
    return ()


def _zero_flops(args: dict[str, Any], t: TensorType, out: TensorType) -> int:
    return 0


# ---------------------------------------------------------------- Dense


def _dense_build(args, t, span):
    _need_float("Dense", t, span)
    if not t.shape:
        raise DslcError(
            f"Dense expects at least one dimension [..., F], got {show_shape(t.shape)}",
            span,
            "a scalar per example has no features; declare it as float[1]",
        )
    _fixed("Dense", "last dimension (features)", t.shape[-1], t, span)
    return args, TensorType("float32", t.shape[:-1] + (args["units"],))


def _dense_params(name, args, t):
    f, u = t.shape[-1], args["units"]
    out = [_p(f"{name}.weight", (u, f), args["init"], True, (f, u))]
    if args["bias"]:
        out.append(_p(f"{name}.bias", (u,), args["bias_init"], False, (f, u)))
    return tuple(out)


def _dense_flops(args, t, out):
    f, u = t.shape[-1], args["units"]
    return numel(t.shape[:-1]) * (2 * f * u + (u if args["bias"] else 0))


DENSE = LayerDef(
    "Dense",
    sig(
        Arg("units", integer(1), type="int >= 1"), Arg("bias", boolean, True, "bool"), *_init_args()
    ),
    _dense_build,
    _dense_params,
    _dense_flops,
    "a linear map on the last axis (torch.nn.Linear)",
)

# ---------------------------------------------------------------- Conv1D / Conv2D


def _padding(v: Any, span: Span) -> Any:
    if isinstance(v, Word) and v.name in ("same", "valid"):
        return v.name
    if isinstance(v, bool):
        raise DslcError(
            f"padding expects `same`, `valid`, an integer or a tuple, got {kind_of(v)}", span
        )
    if isinstance(v, int) and v >= 0:
        return v
    if isinstance(v, tuple) and v:
        ok = all(
            (isinstance(x, int) and not isinstance(x, bool) and x >= 0)
            or (
                isinstance(x, tuple)
                and len(x) == 2
                and all(isinstance(y, int) and not isinstance(y, bool) and y >= 0 for y in x)
            )
            for x in v
        )
        if ok:
            return v
    hint = None
    if isinstance(v, str) and v in ("same", "valid"):
        hint = f"write the bare word: padding = {v}"
    raise DslcError(
        f"padding expects `same`, `valid`, a non-negative integer or a tuple, got {kind_of(v)}",
        span,
        hint,
    )


def _conv_def(n: int) -> LayerDef:
    kind = f"Conv{n}D"
    expect = "[C, L]" if n == 1 else "[C, H, W]"

    def build(args, t, span):
        _need_float(kind, t, span)
        if len(t.shape) != n + 1:
            raise DslcError(
                f"{kind} expects {expect}, got {show_shape(t.shape)}", span, _conv_hint(n, t)
            )
        c = _fixed(kind, "channel count", t.shape[0], t, span)
        spatial = [_fixed(kind, "spatial size", d, t, span) for d in t.shape[1:]]
        k = per_dim(args["kernel"], n, "kernel", span)
        s = per_dim(args["stride"], n, "stride", span)
        dil = per_dim(args["dilation"], n, "dilation", span)
        pad = args["padding"]
        if pad == "valid":
            pads = tuple((0, 0) for _ in range(n))
        elif pad == "same":
            if any(x > 1 for x in s):
                raise DslcError(
                    f"{kind}: padding = same needs stride 1 (as in PyTorch), "
                    f"got stride {args['stride']}",
                    span,
                    "use an explicit integer padding with strided convolutions",
                )
            # PyTorch pads total // 2 before and the rest after
            totals = [dd * (kk - 1) for kk, dd in zip(k, dil, strict=True)]
            pads = tuple((tot // 2, tot - tot // 2) for tot in totals)
        elif isinstance(pad, int):
            pads = tuple((pad, pad) for _ in range(n))
        else:
            if len(pad) != n:
                raise DslcError(
                    f"padding needs {n} entries (one per spatial dimension), got {len(pad)}", span
                )
            pads = tuple(tuple(x) if isinstance(x, tuple) else (x, x) for x in pad)
        g = args["groups"]
        if c % g or args["filters"] % g:
            raise DslcError(
                f"{kind}: groups = {g} must divide both the input channels ({c}) "
                f"and filters ({args['filters']})",
                span,
            )
        out_sp = []
        for size, kk, ss, dd, (pb, pe) in zip(spatial, k, s, dil, pads, strict=False):
            o = (size + pb + pe - dd * (kk - 1) - 1) // ss + 1
            if o < 1:
                raise DslcError(
                    f"{kind}: kernel {kk} (dilation {dd}) does not fit the input "
                    f"{show_shape(t.shape)}",
                    span,
                    "use padding = same or a smaller kernel",
                )
            out_sp.append(o)
        norm = dict(args, kernel=k, stride=s, dilation=dil, padding=pads)
        return norm, TensorType("float32", (args["filters"], *out_sp))

    def params(name, args, t):
        c, f, g, k = t.shape[0], args["filters"], args["groups"], args["kernel"]
        rf = math.prod(k)
        fan = ((c // g) * rf, f * rf)
        out = [_p(f"{name}.weight", (f, c // g, *k), args["init"], True, fan)]
        if args["bias"]:
            out.append(_p(f"{name}.bias", (f,), args["bias_init"], False, fan))
        return tuple(out)

    def flops(args, t, out):
        c, g = t.shape[0], args["groups"]
        per_out = 2 * (c // g) * math.prod(args["kernel"]) + (1 if args["bias"] else 0)
        return numel(out.shape) * per_out

    return LayerDef(
        kind,
        sig(
            Arg("filters", integer(1), type="int >= 1"),
            Arg("kernel", int_or_tuple(1), type="int|tuple"),
            Arg("stride", int_or_tuple(1), 1, "int|tuple"),
            Arg("padding", _padding, "valid", "valid|same|int|tuple"),
            Arg("dilation", int_or_tuple(1), 1, "int|tuple"),
            Arg("groups", integer(1), 1, "int >= 1"),
            Arg("bias", boolean, True, "bool"),
            *_init_args(),
        ),
        build,
        params,
        flops,
        f"{n}-D convolution, channels first {expect} (torch.nn.Conv{n}d)",
    )


def _conv_hint(n: int, t: TensorType) -> str | None:
    if n == 2 and len(t.shape) == 1 and isinstance(t.shape[0], int):
        side = math.isqrt(t.shape[0])
        if side * side == t.shape[0]:
            shape = f"(1, {side}, {side})"
            return f"declare the input as float[1, {side}, {side}] or use reshape({shape})"
    if n == 2 and len(t.shape) == 2:
        return "add a channel axis: declare the input as float[1, H, W]"
    return None


# ---------------------------------------------------------------- normalisation


def _bn_build(args, t, span):
    _need_float("BatchNorm", t, span)
    if not t.shape:
        raise DslcError("BatchNorm expects [C, ...] (channels first), got []", span)
    _fixed("BatchNorm", "channel count", t.shape[0], t, span)
    return args, t


def _bn_params(name, args, t):
    c = t.shape[0]
    zeros, ones = inits.default("zeros"), inits.default("ones")
    return (
        _p(f"{name}.weight", (c,), args["init"]),
        _p(f"{name}.bias", (c,), args["bias_init"]),
        _p(f"{name}.running_mean", (c,), zeros, trainable=False),
        _p(f"{name}.running_var", (c,), ones, trainable=False),
    )


BATCHNORM = LayerDef(
    "BatchNorm",
    sig(
        Arg("momentum", number(0, 1), 0.1, "float in [0, 1]"),
        Arg("eps", number(0, lo_open=True), 1e-5, "float > 0"),
        *_init_args("ones"),
    ),
    _bn_build,
    _bn_params,
    lambda a, t, o: 2 * numel(t.shape),
    "batch normalisation over axis 0 of the per-example shape (torch.nn.BatchNorm1d/2d)",
)


def _ln_build(args, t, span):
    _need_float("LayerNorm", t, span)
    if not t.shape:
        raise DslcError("LayerNorm expects at least one dimension [..., F], got []", span)
    _fixed("LayerNorm", "last dimension", t.shape[-1], t, span)
    return args, t


def _ln_params(name, args, t):
    f = t.shape[-1]
    return (_p(f"{name}.weight", (f,), args["init"]), _p(f"{name}.bias", (f,), args["bias_init"]))


LAYERNORM = LayerDef(
    "LayerNorm",
    sig(
        Arg("eps", number(0, lo_open=True), 1e-5, "float > 0"),
        *_init_args("ones"),
    ),
    _ln_build,
    _ln_params,
    lambda a, t, o: 5 * numel(t.shape),
    "layer normalisation over the last axis (torch.nn.LayerNorm(last))",
)

# ---------------------------------------------------------------- Embedding


def _emb_build(args, t, span):
    if t.dtype != "int64":
        raise DslcError(
            f"Embedding expects integer ids, got {t}", span, "declare the input as int[...]"
        )
    return args, TensorType("float32", t.shape + (args["dim"],))


EMBEDDING = LayerDef(
    "Embedding",
    sig(
        Arg("num", integer(1), type="int >= 1"),
        Arg("dim", integer(1), type="int >= 1"),
        *_init_args(bias=False),
    ),
    _emb_build,
    lambda name, a, t: (
        _p(f"{name}.weight", (a["num"], a["dim"]), a["init"], True, (a["dim"], a["num"])),
    ),
    _zero_flops,
    "a lookup table: int[...] ids to float[..., dim] (torch.nn.Embedding)",
)

# ---------------------------------------------------------------- recurrent

_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _rnn_def(kind: str) -> LayerDef:
    gates = _GATES[kind]

    def build(args, t, span):
        _need_float(kind, t, span)
        if len(t.shape) != 2:
            raise DslcError(
                f"{kind} expects a sequence [T, F], got {show_shape(t.shape)}",
                span,
                "add a time axis or use return_sequences = true on the previous layer"
                if len(t.shape) == 1
                else None,
            )
        _fixed(kind, "feature size", t.shape[1], t, span)
        width = args["hidden"] * (2 if args["bidirectional"] else 1)
        shape = (t.shape[0], width) if args["return_sequences"] else (width,)
        return args, TensorType("float32", shape)

    def params(name, args, t):
        f, h = t.shape[1], args["hidden"]
        g = gates * h
        out = []
        for suffix in ("", "_reverse") if args["bidirectional"] else ("",):
            out += [
                _p(f"{name}.weight_ih{suffix}", (g, f), args["init"], True, (f, g)),
                _p(f"{name}.weight_hh{suffix}", (g, h), args["recurrent_init"], True, (h, g)),
                _p(f"{name}.bias_ih{suffix}", (g,), args["bias_init"], False, (f, g)),
                _p(f"{name}.bias_hh{suffix}", (g,), args["bias_init"], False, (h, g)),
            ]
        return tuple(out)

    def flops(args, t, out):
        f, h = t.shape[1], args["hidden"]
        steps = t.shape[0] if isinstance(t.shape[0], int) else 1
        per_step = 2 * gates * h * (f + h) + 2 * gates * h + 5 * h
        return steps * per_step * (2 if args["bidirectional"] else 1)

    return LayerDef(
        kind,
        sig(
            Arg("hidden", integer(1), type="int >= 1"),
            Arg("return_sequences", boolean, False, "bool"),
            Arg("bidirectional", boolean, False, "bool"),
            _init_arg("init", "glorot_uniform"),
            _init_arg("recurrent_init", "orthogonal"),
            _init_arg("bias_init", "zeros"),
            _REGULARIZER,
        ),
        build,
        params,
        flops,
        f"one-layer {kind} over [T, F] (torch.nn.{'RNN' if kind == 'SimpleRNN' else kind}, "
        "batch_first)",
    )


# ---------------------------------------------------------------- parameter-free layers


def _dropout_build(args, t, span):
    _need_float("Dropout", t, span)
    return args, t


DROPOUT = LayerDef(
    "Dropout",
    sig(Arg("rate", number(0, 1, hi_open=True), type="float in [0, 1)")),
    _dropout_build,
    _no_params,
    _zero_flops,
    "zeroes a fraction `rate` of values in training, scaling the rest by 1/(1-rate)",
)


def _pool_def(kind: str) -> LayerDef:
    def build(args, t, span):
        _need_float(kind, t, span)
        if len(t.shape) not in (2, 3):
            raise DslcError(f"{kind} expects [C, L] or [C, H, W], got {show_shape(t.shape)}", span)
        n = len(t.shape) - 1
        spatial = [_fixed(kind, "spatial size", d, t, span) for d in t.shape[1:]]
        k = per_dim(args["kernel"], n, "kernel", span)
        s = per_dim(
            args["stride"] if args["stride"] is not None else args["kernel"], n, "stride", span
        )
        p = per_dim(args["padding"], n, "padding", span)
        for kk, pp in zip(k, p, strict=False):
            if pp * 2 > kk:
                raise DslcError(
                    f"{kind}: padding {pp} must be at most half the kernel ({kk})", span
                )
        out = []
        for size, kk, ss, pp in zip(spatial, k, s, p, strict=False):
            o = (size + 2 * pp - kk) // ss + 1
            if o < 1:
                raise DslcError(
                    f"{kind}: kernel {kk} does not fit the input {show_shape(t.shape)}", span
                )
            out.append(o)
        return dict(args, kernel=k, stride=s, padding=p), TensorType("float32", (t.shape[0], *out))

    return LayerDef(
        kind,
        sig(
            Arg("kernel", int_or_tuple(1), type="int|tuple"),
            Arg("stride", optional(int_or_tuple(1)), None, "int|tuple (default: kernel)"),
            Arg("padding", int_or_tuple(0), 0, "int|tuple"),
        ),
        build,
        _no_params,
        lambda a, t, o: numel(o.shape) * math.prod(a["kernel"]),
        "1-D or 2-D pooling by the input's rank; "
        + ("padding counts as -inf" if kind == "MaxPool"
           else "padding counts as zeros in the mean (torch's count_include_pad=True)"),
    )


def _gap_build(args, t, span):
    _need_float("GlobalAvgPool", t, span)
    if len(t.shape) < 2:
        raise DslcError(f"GlobalAvgPool expects [C, ...spatial], got {show_shape(t.shape)}", span)
    return args, TensorType("float32", (t.shape[0],))


GLOBALAVGPOOL = LayerDef(
    "GlobalAvgPool",
    sig(),
    _gap_build,
    _no_params,
    lambda a, t, o: numel(t.shape),
    "the mean over every axis after the channels: [C, ...] to [C]",
)


def flatten_type(kind: str, t: TensorType, span: Span) -> TensorType:
    """The type of flattening every per-example axis into one."""
    for d in t.shape:
        if not isinstance(d, int):
            raise DslcError(
                f"{kind} needs fixed dimensions, but {t} has the symbolic size `{d}`",
                span,
                "reduce the symbolic axis first, e.g. mean(axis = 0)",
            )
    return TensorType(t.dtype, (math.prod(t.shape),))


FLATTEN = LayerDef(
    "Flatten",
    sig(),
    lambda a, t, s: (a, flatten_type("Flatten", t, s)),
    _no_params,
    _zero_flops,
    "every per-example axis into one: [C, H, W] to [C*H*W]",
)

LAYERS: dict[str, LayerDef] = {
    d.kind: d
    for d in (
        DENSE,
        _conv_def(1),
        _conv_def(2),
        BATCHNORM,
        LAYERNORM,
        EMBEDDING,
        _rnn_def("SimpleRNN"),
        _rnn_def("LSTM"),
        _rnn_def("GRU"),
        DROPOUT,
        _pool_def("MaxPool"),
        _pool_def("AvgPool"),
        GLOBALAVGPOOL,
        FLATTEN,
    )
}
