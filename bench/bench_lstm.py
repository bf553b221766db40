"""The digits LSTM (h64 over 8 rows of 8 pixels): dslc's runtime against PyTorch eager.

Both train examples/digits_lstm.nn's network (LSTM(64) -> Dense(10), cross-entropy,
Adam with clip_norm = 1) on the built-in digits from the same initial
parameters, on the same batches, with the same number of threads. Reports
training samples/s and the ratio dslc / PyTorch at each batch size.

    python bench/bench_lstm.py [--batches 32 256] [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "examples", "digits_lstm.nn")


def _data(model):
    from dslc.runtime.data import load_dataset

    ds = load_dataset("digits", model, os.path.dirname(MODEL))
    return ds.arrays["rows"], ds.arrays["label"]


def _orders(n: int, batch: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    """`steps` index batches of full size, walking seeded permutations epoch by epoch."""
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out += [perm[k:k + batch] for k in range(0, n - batch + 1, batch)]
        epoch += 1
    return out[:steps]


def bench_dslc(model, x, y, batch: int, orders, threads: int) -> tuple[float, float]:
    """(samples/s, last loss) of dslc's step runner."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_train_step, initial_state, optimizer_state
    from dslc.runtime.session import StepRunner

    graph = build_train_step(model, batch=batch, total_steps=len(orders))
    state = {**initial_state(model, 0), **optimizer_state(model)}
    runner = StepRunner({batch: to_onnx(graph).SerializeToString()}, state, threads=threads)
    arrays = {"rows": x, "label": y}
    warm = 10
    for idx in orders[:warm]:
        runner.step_indices(arrays, idx)
    t0 = time.perf_counter()
    for idx in orders[warm:]:
        out = runner.step_indices(arrays, idx)
    dt = time.perf_counter() - t0
    return batch * (len(orders) - warm) / dt, out["loss"]


def bench_torch(model, x, y, batch: int, orders, threads: int) -> tuple[float, float]:
    """(samples/s, last loss) of the same training in PyTorch eager."""
    import torch

    from dslc.lower import initial_state

    torch.set_num_threads(threads)
    init = initial_state(model, 0)
    lstm = torch.nn.LSTM(8, 64, batch_first=True)
    head = torch.nn.Linear(64, 10)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.from_numpy(init["lstm_1." + name.replace("_l0", "")]))
        head.weight.copy_(torch.from_numpy(init["head.weight"]))
        head.bias.copy_(torch.from_numpy(init["head.bias"]))
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step(idx: np.ndarray) -> float:
        i = torch.from_numpy(idx)
        _, (h_n, _) = lstm(xt[i])
        loss = torch.nn.functional.cross_entropy(head(h_n[0]), yt[i])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    warm = 10
    for idx in orders[:warm]:
        step(idx)
    t0 = time.perf_counter()
    for idx in orders[warm:]:
        loss = step(idx)
    dt = time.perf_counter() - t0
    return batch * (len(orders) - warm) / dt, loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from dslc.check import check_file

    model = check_file(MODEL)
    x, y = _data(model)
    rows = []
    for batch in args.batches:
        steps = args.steps if batch < 128 else max(60, args.steps // 4)
        orders = _orders(len(x), batch, steps)
        d_sps, d_loss = bench_dslc(model, x, y, batch, orders, args.threads)
        t_sps, t_loss = bench_torch(model, x, y, batch, orders, args.threads)
        rows.append({"batch": batch, "steps": steps, "dslc_samples_per_s": round(d_sps),
                     "torch_samples_per_s": round(t_sps), "ratio": round(d_sps / t_sps, 2),
                     "dslc_last_loss": round(d_loss, 4), "torch_last_loss": round(t_loss, 4)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"digits LSTM h64 x 8 steps, Adam + clip_norm, {args.threads} thread(s)")
    print(f"{'batch':>5} {'dslc/s':>9} {'torch/s':>9} {'ratio':>6} {'loss dslc':>9} {'torch':>7}")
    for r in rows:
        print(f"{r['batch']:>5} {r['dslc_samples_per_s']:>9} {r['torch_samples_per_s']:>9} "
              f"{r['ratio']:>6} {r['dslc_last_loss']:>9} {r['torch_last_loss']:>7}")


if __name__ == "__main__":
    main()
