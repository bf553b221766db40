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
    """Steps per second of `step(i)`, measured over about `seconds` after a warm-up."""
    for i in range(warmup):
        step(i)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(20):
            step(count)
            count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


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
