"""Run records: `run.json`, the copy of the `.nn` file and `metrics.jsonl` in a RUN folder.

`run.json` holds what is needed to repeat a run: the resolved settings
(command-line overrides applied), sha256 digests of the model file, of the
data files and of the data arrays as trained on, the versions of dslc, onnx,
onnxruntime and numpy, the device, the seed and the command line.
`metrics.jsonl` is appended one line per epoch and fsynced; on `--resume` the
lines written after the checkpoint (a run killed between the two writes) are
dropped, so no epoch appears twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dslc.runtime.checkpoint import write_atomic

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of named arrays: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{list(arr.shape)}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def data_files(sources: Sequence[str]) -> dict[str, str]:
    """sha256 of each data file behind the datasets' sources (`a.idx,b.idx` names two)."""
    out: dict[str, str] = {}
    for source in sources:
        for part in source.split(","):
            path = part.strip()
            if path and os.path.isfile(path) and path not in out:
                out[path] = sha256_file(path)
    return out


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    import onnx
    import onnxruntime

    from dslc import __version__

    return {
        "dslc": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_run_record(
    run_dir: str,
    model_file: str | None,
    settings: Mapping[str, Any],
    data_digests: Mapping[str, str],
    *,
    data_sources: Sequence[str] = (),
    device: str,
    command: Sequence[str] | None,
    resume: bool,
) -> dict[str, Any]:
    """Write (or, on resume, extend) RUN/run.json and copy the `.nn` file into RUN."""
    path = os.path.join(run_dir, RUN_JSON)
    cmd = list(command) if command is not None else [sys.executable, *sys.argv]
    if resume and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        if record:
            record.setdefault("resumed", []).append({"command": cmd, "device": device})
            write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
            return record
    record = {
        "model_file": os.path.basename(model_file) if model_file else None,
        "model_sha256": sha256_file(model_file)
        if model_file and os.path.isfile(model_file)
        else None,
        "data_sha256": dict(data_digests),
        "data_files": data_files(data_sources),
        "settings": dict(settings),
        "seed": settings.get("seed"),
        "device": device,
        "versions": versions(),
        "command": cmd,
        "cwd": os.getcwd(),
    }
    if model_file and os.path.isfile(model_file):
        dest = os.path.join(run_dir, os.path.basename(model_file))
        if os.path.abspath(dest) != os.path.abspath(model_file):
            shutil.copyfile(model_file, dest)
    write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    return record


def append_metrics(path: str, record: Mapping[str, Any]) -> None:
    """Append one JSON line and fsync it, so a later checkpoint never runs ahead of it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a torn last line (a killed write) is skipped."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def truncate_metrics(path: str, step: int) -> list[dict[str, Any]]:
    """Keep only the lines written up to a checkpoint taken at `step`; returns them."""
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    if os.path.isfile(path):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept
