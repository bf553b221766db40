"""Convolutional-network training speed: dslc's generated ONNX step against PyTorch eager.

Both train the same digits CNN (1×8×8 → Conv2D(16, 3, same) → relu → MaxPool(2)
→ Conv2D(32, 3, same) → relu → MaxPool(2) → Dense(10)) with SGD (momentum 0.9),
from the same initial parameters, on the same batches, with the same number of
intra-op threads. Prints samples/s and the ratio per batch size.
Run: `python bench/bench_cnn.py [--seconds S] [--batches 32,256] [--threads T]
[--conv im2col|primitive]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from common import digits_arrays, dslc_rate, print_table, torch_sgd_rate, torch_threads  # noqa: E402

from dslc.check import check_source  # noqa: E402
from dslc.lower import initial_state, optimizer_state  # noqa: E402
from dslc.runtime.session import default_threads  # noqa: E402

MODEL = """
model BenchCNN {
    input  image: float[1, 8, 8]
    target label: int[]
    logits = image
        -> Conv2D(16, 3, padding = same) -> relu -> MaxPool(2)
        -> Conv2D(32, 3, padding = same) -> relu -> MaxPool(2)
        -> flatten -> Dense(10)
    loss cross_entropy(logits, label)
}
train { optimizer = SGD(lr = 0.01, momentum = 0.9) }
"""


def torch_net(state):
    """The same network in torch.nn, initialised from dslc's initial parameters."""
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 10),
    )
    with torch.no_grad():
        for i, name in zip((0, 3, 7), ("conv2d_1", "conv2d_2", "dense_1"), strict=True):
            net[i].weight.copy_(torch.from_numpy(state[f"{name}.weight"]))
            net[i].bias.copy_(torch.from_numpy(state[f"{name}.bias"]))
    return net


def torch_rate(state, x, y, batch: int, threads: int, seconds: float) -> float:
    """Samples per second of the same model in PyTorch eager."""

    torch_threads(threads)
    net = torch_net(state)
    return torch_sgd_rate(net, x, y, batch, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--threads", type=int, default=0, help="0: dslc's default for the batch")
    ap.add_argument("--conv", choices=("im2col", "primitive"), default="im2col",
                    help="dslc's convolution lowering (the default is im2col + GEMM)")
    args = ap.parse_args()
    import dslc.lower.conv

    dslc.lower.conv.IM2COL = args.conv == "im2col"
    model = check_source(MODEL, "bench_cnn.nn")
    state = {**initial_state(model, 0), **optimizer_state(model)}
    flat, y = digits_arrays(copies=4)
    x = np.ascontiguousarray(flat.reshape(-1, 1, 8, 8))
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        threads = args.threads or default_threads(batch)
        ours = dslc_rate(model, state, {"image": x, "label": y}, batch, threads,
                         args.seconds)
        theirs = torch_rate(state, x, y, batch, threads, args.seconds)
        rows.append((batch, threads, ours, theirs))
        time.sleep(0.1)
    print_table(f"CNN conv16-pool-conv32-pool-dense on 1×8×8, SGD momentum, {args.conv}", rows)


if __name__ == "__main__":
    main()
