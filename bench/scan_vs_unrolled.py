"""The digits LSTM's training step as ONNX Scan loops against dslc's unrolled step.

The network is LSTM(64) over 8 steps of 8 features, its last hidden state into
Dense(10), cross-entropy, plain SGD with lr 0.1. dslc builds its step by
unrolling the LSTM (docs/sequences.md). This script builds the same step by
hand with standard opset-18 operators around two Scan loops:

- forward: one Gemm for every step's input projection, then a Scan over T whose
  body does the recurrent Gemm and the cell, carrying (h, c) and emitting the
  previous states, the gates i, f, g, o and tanh(c) of each step;
- backward: a Scan over the same saved tensors in reverse
  (`scan_input_directions` = 1) carrying dh and dc.

Two backward variants are built. "scan, accumulate" carries dW_ih, dW_hh and
the bias gradient as loop state (one small Gemm each per step). "scan, hoisted"
emits each step's gate gradient dz as a scan output instead and forms dW_ih,
dW_hh and the bias gradient after the loop with one Gemm (one ReduceSum) over
all T·N rows, as the unrolled graph can.

The script checks the Scan steps' loss and updated parameters against
torch.autograd (torch.nn.LSTM with the same weights) and against dslc's step,
then times the three with ONNX Runtime (pre-bound IOBindings, the parameters
ping-ponging between two sets of buffers as in dslc's runner, the same batch
of digits every step) as the best 50 ms window of bench/common.py's time_loop,
over interleaved rounds.

    python bench/scan_vs_unrolled.py [--batches 32 256] [--threads 1] [--seconds 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import digits_arrays, time_loop  # noqa: E402

T, F, H, C = 8, 8, 64, 10
LR = 0.1
PARAMS = (
    "lstm_1.weight_ih",
    "lstm_1.weight_hh",
    "lstm_1.bias_ih",
    "lstm_1.bias_hh",
    "dense_1.weight",
    "dense_1.bias",
)
SHAPES = {
    "lstm_1.weight_ih": [4 * H, F],
    "lstm_1.weight_hh": [4 * H, H],
    "lstm_1.bias_ih": [4 * H],
    "lstm_1.bias_hh": [4 * H],
    "dense_1.weight": [C, H],
    "dense_1.bias": [C],
}
SOURCE = """model DigitsLSTM {
    input  image: float[8, 8]
    target label: int[]
    logits = image -> LSTM(64) -> Dense(10)
    loss cross_entropy(logits, label)
}
train {
    optimizer = SGD(lr = 0.1)
}
"""
FLOAT = TensorProto.FLOAT


def _vi(name: str, shape: list[int], elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _n(op: str, ins: list[str], outs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, **attrs)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


# ---------------------------------------------------------------- the Scan training step


def _forward_body(n: int) -> onnx.GraphProto:
    """One LSTM step: (h, c, x·W_ihᵀ + b) -> (h', c'), emitting h, c, i, f, g, o, tanh(c')."""
    nodes = [
        # z = xp + h · W_hhᵀ (W_hh is read from the enclosing graph)
        _n("Gemm", ["h", "lstm_1.weight_hh", "xp"], ["z"], transB=1),
        _n("Split", ["z"], ["zi", "zf", "zg", "zo"], axis=1, num_outputs=4),
        _n("Sigmoid", ["zi"], ["i"]),
        _n("Sigmoid", ["zf"], ["f"]),
        _n("Tanh", ["zg"], ["g"]),
        _n("Sigmoid", ["zo"], ["o"]),
        _n("Mul", ["f", "c"], ["fc"]),
        _n("Mul", ["i", "g"], ["ig"]),
        _n("Add", ["fc", "ig"], ["c_next"]),
        _n("Tanh", ["c_next"], ["tc"]),
        _n("Mul", ["o", "tc"], ["h_next"]),
        _n("Identity", ["h"], ["h_prev"]),
        _n("Identity", ["c"], ["c_prev"]),
    ]
    nh = [n, H]
    return helper.make_graph(
        nodes,
        "lstm_forward_step",
        [_vi("h", nh), _vi("c", nh), _vi("xp", [n, 4 * H])],
        [_vi("h_next", nh), _vi("c_next", nh)]
        + [_vi(s, nh) for s in ("h_prev", "c_prev", "i", "f", "g", "o", "tc")],
    )


def _backward_body(n: int, accumulate: bool) -> onnx.GraphProto:
    """One reversed LSTM step: (dh_t, dc_t, saved step tensors) -> (dh_{t-1}, dc_{t-1}).

    With `accumulate`, also carries dW_ih, dW_hh and db and adds this step's
    terms; otherwise emits the step's gate gradient dz [n, 4H].
    """
    nodes = [
        _n("Mul", ["dh", "tc"], ["do"]),
        # dc_t = dc + dh · o · (1 − tanh²c_t)
        _n("Mul", ["tc", "tc"], ["tc2"]),
        _n("Sub", ["one", "tc2"], ["dtanh_c"]),
        _n("Mul", ["dh", "o"], ["dh_o"]),
        _n("Mul", ["dh_o", "dtanh_c"], ["dc_h"]),
        _n("Add", ["dc", "dc_h"], ["dct"]),
        _n("Mul", ["dct", "g"], ["di"]),
        _n("Mul", ["dct", "i"], ["dg"]),
        _n("Mul", ["dct", "c_prev"], ["df"]),
        _n("Mul", ["dct", "f"], ["dc_out"]),
        # through the activations: σ' = s(1 − s), tanh' = 1 − t²
        _n("Sub", ["one", "i"], ["i1"]),
        _n("Mul", ["i", "i1"], ["si"]),
        _n("Mul", ["di", "si"], ["dzi"]),
        _n("Sub", ["one", "f"], ["f1"]),
        _n("Mul", ["f", "f1"], ["sf"]),
        _n("Mul", ["df", "sf"], ["dzf"]),
        _n("Mul", ["g", "g"], ["g2"]),
        _n("Sub", ["one", "g2"], ["tg"]),
        _n("Mul", ["dg", "tg"], ["dzg"]),
        _n("Sub", ["one", "o"], ["o1"]),
        _n("Mul", ["o", "o1"], ["so"]),
        _n("Mul", ["do", "so"], ["dzo"]),
        _n("Concat", ["dzi", "dzf", "dzg", "dzo"], ["dz"], axis=1),
        # dh_{t-1} = dz · W_hh
        _n("MatMul", ["dz", "lstm_1.weight_hh"], ["dh_out"]),
    ]
    nh = [n, H]
    state_in = [_vi("dh", nh), _vi("dc", nh)]
    state_out = [_vi("dh_out", nh), _vi("dc_out", nh)]
    scan_in = [_vi(s, nh) for s in ("h_prev", "c_prev", "i", "f", "g", "o", "tc")]
    if accumulate:
        nodes += [
            _n("Gemm", ["dz", "h_prev", "gw_hh"], ["gw_hh_out"], transA=1),
            _n("Gemm", ["dz", "x_t", "gw_ih"], ["gw_ih_out"], transA=1),
            _n("ReduceSum", ["dz", "axis0"], ["db_t"], keepdims=0),
            _n("Add", ["gb", "db_t"], ["gb_out"]),
        ]
        state_in += [_vi("gw_ih", [4 * H, F]), _vi("gw_hh", [4 * H, H]), _vi("gb", [4 * H])]
        state_out += [
            _vi("gw_ih_out", [4 * H, F]),
            _vi("gw_hh_out", [4 * H, H]),
            _vi("gb_out", [4 * H]),
        ]
        scan_in.append(_vi("x_t", [n, F]))
        scan_out = []
    else:
        nodes.append(_n("Identity", ["dz"], ["dz_t"]))
        scan_out = [_vi("dz_t", [n, 4 * H])]
    return helper.make_graph(nodes, "lstm_backward_step", state_in + scan_in, state_out + scan_out)


def scan_step(n: int, accumulate: bool) -> onnx.ModelProto:
    """The training step (loss, SGD-updated parameters) of batch `n` built around two Scans."""
    zeros_nh = np.zeros((n, H), np.float32)
    inits = [
        _const("zeros_nh", zeros_nh),
        _const("one", np.array(1.0, np.float32)),
        _const("lr", np.array(LR, np.float32)),
        _const("inv_n", np.array(1.0 / n, np.float32)),
        _const("axis0", np.array([0], np.int64)),
        _const("axis1", np.array([1], np.int64)),
        _const("onehot_values", np.array([0.0, 1.0], np.float32)),
        _const("depth", np.array(C, np.int64)),
        _const("rows_4h", np.array([T * n, 4 * H], np.int64)),
        _const("rows_h", np.array([T * n, H], np.int64)),
        _const("rows_f", np.array([T * n, F], np.int64)),
    ]
    nodes = [
        # forward: every step's input projection at once, then the recurrence
        _n("Transpose", ["image"], ["x_tnf"], perm=[1, 0, 2]),
        _n("Add", ["lstm_1.bias_ih", "lstm_1.bias_hh"], ["b"]),
        _n("Transpose", ["lstm_1.weight_ih"], ["w_ih_t"], perm=[1, 0]),
        _n("MatMul", ["x_tnf", "w_ih_t"], ["xw"]),
        _n("Add", ["xw", "b"], ["xp_all"]),
        _n(
            "Scan",
            ["zeros_nh", "zeros_nh", "xp_all"],
            ["h_last", "c_last", "H_prev", "C_prev", "I", "Fg", "G", "O", "TC"],
            num_scan_inputs=1,
            body=_forward_body(n),
        ),
        # head and mean cross-entropy
        _n("Gemm", ["h_last", "dense_1.weight", "dense_1.bias"], ["logits"], transB=1),
        _n("LogSoftmax", ["logits"], ["logp"], axis=1),
        _n("Unsqueeze", ["label", "axis1"], ["label_col"]),
        _n("GatherElements", ["logp", "label_col"], ["picked"], axis=1),
        _n("ReduceMean", ["picked"], ["mean_picked"], keepdims=0),
        _n("Neg", ["mean_picked"], ["loss"]),
        # dL/dlogits = (softmax − onehot) / n
        _n("Exp", ["logp"], ["p"]),
        _n("OneHot", ["label", "depth", "onehot_values"], ["onehot"], axis=-1),
        _n("Sub", ["p", "onehot"], ["p_y"]),
        _n("Mul", ["p_y", "inv_n"], ["dlogits"]),
        _n("Gemm", ["dlogits", "h_last"], ["g_dense_w"], transA=1),
        _n("ReduceSum", ["dlogits", "axis0"], ["g_dense_b"], keepdims=0),
        _n("MatMul", ["dlogits", "dense_1.weight"], ["dh_last"]),
    ]
    saved = ["H_prev", "C_prev", "I", "Fg", "G", "O", "TC"]
    if accumulate:
        inits += [
            _const("zeros_ih", np.zeros((4 * H, F), np.float32)),
            _const("zeros_hh", np.zeros((4 * H, H), np.float32)),
            _const("zeros_b", np.zeros((4 * H,), np.float32)),
        ]
        nodes.append(
            _n(
                "Scan",
                ["dh_last", "zeros_nh", "zeros_ih", "zeros_hh", "zeros_b", *saved, "x_tnf"],
                ["dh0", "dc0", "g_w_ih", "g_w_hh", "g_b"],
                num_scan_inputs=8,
                scan_input_directions=[1] * 8,
                body=_backward_body(n, accumulate=True),
            )
        )
    else:
        nodes += [
            _n(
                "Scan",
                ["dh_last", "zeros_nh", *saved],
                ["dh0", "dc0", "DZ"],
                num_scan_inputs=7,
                scan_input_directions=[1] * 7,
                scan_output_directions=[1],
                body=_backward_body(n, accumulate=False),
            ),
            # the weight gradients over all T·n rows at once
            _n("Reshape", ["DZ", "rows_4h"], ["dz_rows"]),
            _n("Reshape", ["H_prev", "rows_h"], ["h_rows"]),
            _n("Reshape", ["x_tnf", "rows_f"], ["x_rows"]),
            _n("Gemm", ["dz_rows", "x_rows"], ["g_w_ih"], transA=1),
            _n("Gemm", ["dz_rows", "h_rows"], ["g_w_hh"], transA=1),
            _n("ReduceSum", ["dz_rows", "axis0"], ["g_b"], keepdims=0),
        ]
    grads = {
        "lstm_1.weight_ih": "g_w_ih",
        "lstm_1.weight_hh": "g_w_hh",
        "lstm_1.bias_ih": "g_b",
        "lstm_1.bias_hh": "g_b",
        "dense_1.weight": "g_dense_w",
        "dense_1.bias": "g_dense_b",
    }
    for p, g in grads.items():
        nodes += [_n("Mul", [g, "lr"], [f"{p}.delta"]), _n("Sub", [p, f"{p}.delta"], [f"{p}.next"])]
    graph = helper.make_graph(
        nodes,
        "digits_lstm_scan_step",
        [_vi(p, SHAPES[p]) for p in PARAMS]
        + [_vi("image", [n, T, F]), _vi("label", [n], TensorProto.INT64)],
        [_vi("loss", [])] + [_vi(f"{p}.next", SHAPES[p]) for p in PARAMS],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------- dslc's unrolled step


def dslc_step(batch: int):
    """(step model, initial state) of dslc's unrolled step for the same network."""
    from dslc.check import check_source
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_train_step, initial_state, optimizer_state

    model = check_source(SOURCE, "scan_vs_unrolled.nn")
    graph = to_onnx(build_train_step(model, batch=batch, total_steps=10**6))
    return graph, {**initial_state(model, 0), **optimizer_state(model)}


# ---------------------------------------------------------------- running and checking


class Runner:
    """A step model with pre-bound IOBindings; every `<x>.next` output feeds `x` next step."""

    def __init__(self, model: onnx.ModelProto, state: dict, feeds: dict, threads: int) -> None:
        import onnxruntime as ort

        from dslc.runtime.session import make_session

        self.sess = make_session(model, "cpu", threads)
        outs = [o.name for o in self.sess.get_outputs()]
        names = [i.name for i in self.sess.get_inputs()]
        self.state_names = [n for n in names if f"{n}.next" in outs]
        self.sets = [{n: np.array(state[n], copy=True) for n in self.state_names} for _ in range(2)]
        self.loss = np.zeros((), np.float32)
        self.keep = dict(feeds)
        if "seed" in names:
            self.keep["seed"] = np.array(0, np.int64)
        val = ort.OrtValue.ortvalue_from_numpy
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            b = self.sess.io_binding()
            for n in self.state_names:
                b.bind_ortvalue_input(n, val(self.sets[src][n]))
                b.bind_ortvalue_output(f"{n}.next", val(self.sets[dst][n]))
            for n, a in self.keep.items():
                b.bind_ortvalue_input(n, val(a))
            for o in outs:
                if o == "loss":
                    b.bind_ortvalue_output(o, val(self.loss))
                elif not o.endswith(".next"):
                    b.bind_output(o, "cpu")
            self.bindings.append(b)
        self.cur = 0

    def step(self, _: int = 0) -> None:
        self.sess.run_with_iobinding(self.bindings[self.cur])
        self.cur ^= 1

    def params(self) -> dict[str, np.ndarray]:
        """The parameters after the last step (the set it wrote)."""
        return {p: self.sets[self.cur][p] for p in PARAMS}


def torch_step(state: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and SGD-updated parameters of one step through torch.nn.LSTM and autograd."""
    import torch

    lstm = torch.nn.LSTM(F, H, batch_first=True)
    head = torch.nn.Linear(H, C)
    mods = {"lstm_1": lstm, "dense_1": head}
    with torch.no_grad():
        for mname, mod in mods.items():
            for pname, p in mod.named_parameters():
                p.copy_(torch.from_numpy(state[f"{mname}.{pname.replace('_l0', '')}"]))
    _, (h_n, _) = lstm(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(head(h_n[0]), torch.from_numpy(y))
    loss.backward()
    out = {}
    for mname, mod in mods.items():
        for pname, p in mod.named_parameters():
            out[f"{mname}.{pname.replace('_l0', '')}"] = (p - LR * p.grad).detach().numpy()
    return loss.item(), out


def verify(batch: int, x: np.ndarray, y: np.ndarray, state: dict, unrolled) -> None:
    """One step of each Scan variant against torch.autograd and dslc's unrolled step.

    Prints the largest absolute difference of the loss and of the gradients,
    recovered from the updated parameters as (p − p.next) / lr.
    """
    ref_loss, ref = torch_step(state, x, y)
    ref_grads = _grads(state, ref)
    scale = max(float(np.max(np.abs(g))) for g in ref_grads.values())
    dslc = Runner(unrolled, state, {"image": x, "label": y}, 1)
    dslc.step()
    dslc_grads = _grads(state, dslc.params())
    print(
        f"one SGD step at batch {batch} (loss {ref_loss:.6f}, largest |gradient| {scale:.3g}): "
        "max |difference| of loss, gradients"
    )
    print(
        f"  {'dslc unrolled':<17} vs torch {abs(float(dslc.loss) - ref_loss):.1e}, "
        f"{_worst(dslc_grads, ref_grads):.1e}"
    )
    for name, accumulate in (("scan, accumulate", True), ("scan, hoisted", False)):
        r = Runner(scan_step(batch, accumulate), state, {"image": x, "label": y}, 1)
        r.step()
        grads = _grads(state, r.params())
        print(
            f"  {name:<17} vs torch {abs(float(r.loss) - ref_loss):.1e}, "
            f"{_worst(grads, ref_grads):.1e}; vs dslc "
            f"{abs(float(r.loss) - float(dslc.loss)):.1e}, {_worst(grads, dslc_grads):.1e}"
        )


def _grads(state: dict, updated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {p: (state[p].astype(np.float64) - updated[p].astype(np.float64)) / LR for p in PARAMS}


def _worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[p] - b[p]))) for p in PARAMS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per variant and batch")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    args = ap.parse_args()

    import onnxruntime

    flat, labels = digits_arrays()
    rows = []
    for batch in args.batches:
        x = np.ascontiguousarray(flat[:batch].reshape(batch, T, F))
        y = np.ascontiguousarray(labels[:batch])
        unrolled, state = dslc_step(batch)
        verify(batch, x, y, state, unrolled)
        variants = {
            "dslc unrolled": unrolled,
            "scan, accumulate": scan_step(batch, True),
            "scan, hoisted": scan_step(batch, False),
        }
        runners = {
            name: Runner(model, state, {"image": x, "label": y}, args.threads)
            for name, model in variants.items()
        }
        best = dict.fromkeys(variants, 0.0)
        for _ in range(args.rounds):  # interleaved, so a slow spell hits every variant
            for name, r in runners.items():
                best[name] = max(best[name], time_loop(r.step, args.seconds / args.rounds))
        rows += [(batch, n, len(m.graph.node), best[n]) for n, m in variants.items()]

    print(
        f"\ndigits LSTM h64 x 8 steps, SGD, {args.threads} intra-op thread(s) — "
        f"{platform.machine()}, onnxruntime {onnxruntime.__version__}"
    )
    print("| batch | step graph | top-level nodes | steps/s | samples/s | vs unrolled |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    base = {}
    for batch, name, nodes, rate in rows:
        base.setdefault(batch, rate)
        print(
            f"| {batch} | {name} | {nodes} | {rate:,.0f} | {rate * batch:,.0f} | "
            f"{rate / base[batch]:.2f}× |"
        )


if __name__ == "__main__":
    main()
