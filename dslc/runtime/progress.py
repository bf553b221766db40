"""A Keras-like progress bar on stderr: epoch, bar, step/total, loss, samples/s.

On a terminal the bar redraws in place at most ~10 times a second; otherwise
(a pipe, a log file, a notebook capture) only one plain line per epoch is written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

_WIDTH = 24
_INTERVAL = 0.1


def format_metrics(values: Mapping[str, float]) -> str:
    """`loss: 0.1234 - accuracy: 0.9500` in the given order."""
    return " - ".join(f"{k}: {_fmt(v)}" for k, v in values.items())


def _fmt(v: float) -> str:
    if v != v or abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:.4f}"


class Progress:
    """Reports training progress; silent when `enabled` is False."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._last = 0.0
        self._epoch = 0
        self._epochs = 0
        self._total = 0
        self._start = 0.0

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None:
        """Begin epoch `epoch` (1-based) of `epochs`, with `total` steps in it."""
        self._epoch, self._epochs, self._total = epoch, epochs, total
        self._start = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, loss: float, samples: int) -> None:
        """`done` steps of the epoch finished, running mean `loss`, `samples` seen this epoch."""
        if not (self.enabled and self.tty):
            return
        now = time.perf_counter()
        if now - self._last < _INTERVAL and done < self._total:
            return
        self._last = now
        rate = samples / max(now - self._start, 1e-9)
        self.stream.write(
            "\r" + self._bar(done) + f" - loss: {_fmt(loss)} - {rate:,.0f} samples/s\x1b[K"
        )
        self.stream.flush()

    def end_epoch(
        self, done: int, values: Mapping[str, float], seconds: float, rate: float
    ) -> None:
        """Finish the epoch's line with its metrics."""
        if not self.enabled:
            return
        line = (
            f"{self._bar(done)} - {format_metrics(values)} - {seconds:.1f}s - {rate:,.0f} samples/s"
        )
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _bar(self, done: int) -> str:
        total = max(self._total, 1)
        head = f"Epoch {self._epoch}/{self._epochs}"
        if not self.tty:
            return f"{head} - {done}/{self._total}"
        filled = min(_WIDTH, int(_WIDTH * done / total))
        arrow = ">" if filled < _WIDTH else ""
        bar = "=" * max(filled - (1 if arrow else 0), 0) + arrow
        return f"{head} [{bar:<{_WIDTH}}] {done}/{self._total}"
