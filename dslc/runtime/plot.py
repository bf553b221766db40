"""`dslc plot RUN`: a PNG of loss and metrics per epoch, with no plotting library.

One panel per quantity (the loss, then each metric), the training curve in
blue and the validation curve in orange, y labels at the panel's range and x
labels at the first and last epoch. The PNG is written with zlib and struct;
text uses a 3x5 pixel font drawn at twice its size.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dslc.errors import DslcError

WIDTH, PANEL_H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 34, 30
SCALE = 2
TRAIN_RGB, VAL_RGB = (31, 119, 180), (255, 127, 14)
INK, FRAME, GRID = (40, 40, 40), (150, 150, 150), (228, 228, 228)

# Each glyph: five rows of three pixels, top to bottom.
# fmt: off
_FONT: dict[str, str] = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", "a": "010101111101101", "b": "110101110101110",
    "c": "011100100100011", "d": "110101101101110", "e": "111100110100111",
    "f": "111100110100100", "g": "011100101101011", "h": "101101111101101",
    "i": "111010010010111", "j": "001001001101010", "k": "101101110101101",
    "l": "100100100100111", "m": "101111111101101", "n": "110101101101101",
    "o": "010101101101010", "p": "110101110100100", "q": "010101101110011",
    "r": "110101110101101", "s": "011100010001110", "t": "111010010010010",
    "u": "101101101101111", "v": "101101101101010", "w": "101101111111101",
    "x": "101101010101101", "y": "101101010010010", "z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "_": "000000000000111",
    ":": "000010000010000", "/": "001001010100100", "+": "000010111010000",
    "(": "010100100100010", ")": "010001001001010", "=": "000111000111000",
    " ": "000000000000000",
}
# fmt: on


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as a PNG file."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError("expected an (H, W, 3) uint8 array")
    h, w, _ = pixels.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def text_width(text: str) -> int:
    """Width in pixels of `text` as `draw_text` draws it."""
    return len(text) * 4 * SCALE


def draw_text(img: np.ndarray, x: int, y: int, text: str, rgb: Sequence[int]) -> None:
    """Draw `text` with its top-left corner at (x, y); unknown characters draw as blanks."""
    for i, ch in enumerate(text.lower()):
        bits = _FONT.get(ch, _FONT[" "])
        for r in range(5):
            for c in range(3):
                if bits[r * 3 + c] == "1":
                    x0, y0 = x + (i * 4 + c) * SCALE, y + r * SCALE
                    img[max(y0, 0) : max(y0 + SCALE, 0), max(x0, 0) : max(x0 + SCALE, 0)] = rgb


def draw_line(
    img: np.ndarray, p: tuple[float, float], q: tuple[float, float], rgb: Sequence[int]
) -> None:
    """A two-pixel-wide line from p to q (x, y), clipped to the image."""
    n = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
    xs = np.rint(np.linspace(p[0], q[0], n)).astype(int)
    ys = np.rint(np.linspace(p[1], q[1], n)).astype(int)
    h, w, _ = img.shape
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xx, yy = xs + dx, ys + dy
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        img[yy[ok], xx[ok]] = rgb


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def per_epoch(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per epoch, in epoch order; for an epoch split by --steps, its last line."""
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for r in records:
        by_epoch[int(r["epoch"])] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def quantities(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The plotted quantities: `loss`, then each metric, as named in the records."""
    skip = {"epoch", "step", "lr", "time_s", "samples_per_s"}
    names: list[str] = []
    for r in records:
        for k in r:
            base = k[4:] if k.startswith("val_") else k
            if k not in skip and base not in names:
                names.append(base)
    return sorted(names, key=lambda n: (n != "loss", names.index(n)))


def _panel(img: np.ndarray, top: int, name: str, records: Sequence[Mapping[str, Any]]) -> None:
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = top + TOP, top + PANEL_H - BOTTOM
    epochs = [int(r["epoch"]) for r in records]
    series = [
        (label, rgb, [r.get(key) for r in records])
        for label, rgb, key in (("train", TRAIN_RGB, name), ("val", VAL_RGB, f"val_{name}"))
    ]
    series = [s for s in series if any(v is not None for v in s[2])]
    values = [v for _, _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    e0, e1 = min(epochs), max(epochs)
    span_e = max(e1 - e0, 1)

    def px(e: int, v: float) -> tuple[float, float]:
        return (
            x0 + (e - e0) / span_e * (x1 - x0),
            y1 - (v - lo) / (hi - lo) * (y1 - y0),
        )

    for k in range(5):
        y = int(round(y0 + k * (y1 - y0) / 4))
        img[y, x0:x1] = GRID
    img[y0:y1, x0] = img[y0:y1, x1 - 1] = FRAME
    img[y0, x0:x1] = img[y1 - 1, x0:x1] = FRAME
    draw_text(img, x0, top + 8, name, INK)
    x = x0 + text_width(name) + 24
    for label, rgb, _ in series:
        img[top + 12 : top + 14, x : x + 16] = rgb
        draw_text(img, x + 20, top + 8, label, rgb)
        x += 20 + text_width(label) + 20
    for v, y in ((hi, y0), ((lo + hi) / 2, (y0 + y1) / 2), (lo, y1 - 10)):
        t = _fmt(v)
        draw_text(img, x0 - 6 - text_width(t), int(y), t, INK)
    for e in sorted({e0, e1}):
        t = f"epoch {e}" if e == e0 else str(e)
        xe = int(px(e, lo)[0]) - (0 if e == e0 else text_width(t))
        draw_text(img, max(xe, x0), y1 + 8, t, INK)
    for _, rgb, vs in series:
        pts = [px(e, v) for e, v in zip(epochs, vs, strict=True) if v is not None]
        if len(pts) == 1:
            draw_line(img, (pts[0][0] - 2, pts[0][1]), (pts[0][0] + 2, pts[0][1]), rgb)
        for p, q in zip(pts, pts[1:], strict=False):
            draw_line(img, p, q, rgb)


def render(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The chart of a run's per-epoch records as an RGB array."""
    rows = per_epoch(records)
    if not rows:
        raise DslcError("the run has no epochs recorded yet (metrics.jsonl is empty)")
    names = quantities(rows)
    img = np.full((PANEL_H * len(names), WIDTH, 3), 255, dtype=np.uint8)
    for i, name in enumerate(names):
        _panel(img, i * PANEL_H, name, rows)
    return img
