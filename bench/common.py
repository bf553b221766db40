"""Shared pieces of the benchmarks: data, timing loop, thread settings and the result table."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import numpy as np


def digits_arrays(copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The built-in digits: float32 [n, 64] pixels in [0, 1], int64 labels, tiled `copies` times."""
    from dslc.runtime.data import _digits

    flat = _digits()
    x = np.ascontiguousarray(np.tile(flat.x.reshape(len(flat.x), -1), (copies, 1)), np.float32)
    y = np.ascontiguousarray(np.tile(flat.y, copies), np.int64)
    return x, y


def time_loop(step: Callable[[int], None], seconds: float, warmup: int = 20) -> float:
    """Steps per second of `step(i)`: the best of short windows spread over about `seconds`.

    The best window, as timeit reports, is the least disturbed by other work on the machine.
    """
    for i in range(warmup):
        step(i)
    best, count, start = 0.0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0, n = time.perf_counter(), 0
        while n < 10 or time.perf_counter() - t0 < 0.05:
            step(count)
            count += 1
            n += 1
        best = max(best, n / (time.perf_counter() - t0))
    return best


def dslc_rate(model, state: dict, arrays: dict, batch: int, threads: int, seconds: float) -> float:
    """Samples per second of dslc's training step for `model`, driven by its runtime."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_train_step
    from dslc.runtime.session import StepRunner

    graph = to_onnx(build_train_step(model, batch=batch, total_steps=10**6))
    runner = StepRunner({batch: graph}, state, threads=threads)
    n = len(next(iter(arrays.values())))
    order = np.arange(n)

    def one(i: int) -> None:
        start = (i * batch) % (n - batch)
        runner.step_indices(arrays, order[start : start + batch])

    return time_loop(one, seconds) * batch


def torch_sgd_rate(net, x: np.ndarray, y: np.ndarray, batch: int, seconds: float) -> float:
    """Samples per second of PyTorch eager training `net` with cross-entropy and SGD momentum."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    n = len(x)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one(i: int) -> None:
        start = (i * batch) % (n - batch)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(tx[start : start + batch]), ty[start : start + batch])
        loss.backward()
        opt.step()

    return time_loop(one, seconds) * batch


def torch_threads(threads: int) -> None:
    """Give PyTorch the same intra-op thread count as ONNX Runtime."""
    import torch

    torch.set_num_threads(threads)


def print_table(title: str, rows: Sequence[tuple[int, int, float, float]]) -> None:
    """Print batch, threads, dslc and PyTorch samples/s and their ratio as a Markdown table."""
    import onnxruntime
    import torch

    print(f"\n{title} — {platform.machine()}, onnxruntime {onnxruntime.__version__}, "
          f"torch {torch.__version__}")
    print("| batch | threads | dslc samples/s | PyTorch eager samples/s | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for batch, threads, ours, theirs in rows:
        print(f"| {batch} | {threads} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}× |")
