"""Dense-network training speed: dslc's generated ONNX step against PyTorch eager, side by side.

Both train the same 64-128-128-10 MLP on the built-in digits with SGD
(momentum 0.9), from the same initial parameters, on the same batches, with
the same number of intra-op threads. Prints samples/s and the ratio per batch
size. Run: `python bench/bench_mlp.py [--seconds S] [--batches 32,256,1024]
[--threads T]` (T = 0, the default, uses dslc's default thread count per batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import digits_arrays, dslc_rate, print_table, torch_sgd_rate, torch_threads  # noqa: E402

from dslc.check import check_source  # noqa: E402
from dslc.lower import initial_state, optimizer_state  # noqa: E402
from dslc.runtime.session import default_threads  # noqa: E402

MODEL = """
model BenchMLP {
    input  x: float[64]
    target y: int[]
    logits = x -> Dense(128) -> relu -> Dense(128) -> relu -> Dense(10)
    loss cross_entropy(logits, y)
}
train { optimizer = SGD(lr = 0.01, momentum = 0.9) }
"""


def torch_rate(state, x, y, batch: int, threads: int, seconds: float) -> float:
    """Samples per second of the same model in PyTorch eager."""
    import torch

    torch_threads(threads)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    with torch.no_grad():
        for i, name in zip((0, 2, 4), ("dense_1", "dense_2", "dense_3"), strict=True):
            net[i].weight.copy_(torch.from_numpy(state[f"{name}.weight"]))
            net[i].bias.copy_(torch.from_numpy(state[f"{name}.bias"]))
    return torch_sgd_rate(net, x, y, batch, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="32,256,1024")
    ap.add_argument("--threads", type=int, default=0, help="0: dslc's default for the batch")
    args = ap.parse_args()
    model = check_source(MODEL, "bench_mlp.nn")
    state = {**initial_state(model, 0), **optimizer_state(model)}
    x, y = digits_arrays(copies=4)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        threads = args.threads or default_threads(batch)
        ours = dslc_rate(model, state, {"x": x, "y": y}, batch, threads,
                         args.seconds)
        theirs = torch_rate(state, x, y, batch, threads, args.seconds)
        rows.append((batch, threads, ours, theirs))
        time.sleep(0.1)
    print_table("MLP 64-128-128-10, SGD momentum", rows)


if __name__ == "__main__":
    main()
