"""Checkpoints: safetensors files of parameters, buffers, optimiser slots and the step.

Keys: parameter and buffer full names (LANGUAGE.md §6, PyTorch layouts),
optimiser slots `opt.<param>.<slot>`, `step` (int64, shape []). Metadata
(str -> str): `format`, `model`, `epoch`, `position`, `best`, ... See docs/cli.md.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping

import ml_dtypes  # noqa: F401 - teaches numpy bfloat16 (an onnx dependency): torch's bf16 loads
import numpy as np
from safetensors import SafetensorError, safe_open

from dslc.check.model import CheckedModel
from dslc.errors import DslcError

FORMAT = "dslc-checkpoint-1"
_TORCH_RNN = re.compile(r"^((?:weight|bias)_(?:ih|hh))_l0(_reverse)?$")  # torch's layer-0 names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def save_checkpoint(
    path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Write a safetensors checkpoint atomically: temp file in the same folder, fsync, rename.

    The folder is fsynced after the rename too, so that the new name survives a
    power cut; a process killed at any moment leaves either the old or the new file.
    """
    meta = {"format": FORMAT, **{str(k): str(v) for k, v in metadata.items()}}
    write_atomic(path, serialize(tensors, meta))


def fsync_dir(folder: str) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync the folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a run's files are as readable as any
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "bool": "BOOL", "bfloat16": "BF16",
}  # fmt: skip


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of `tensors` (in the given order) with `metadata`, deterministically.

    Written here rather than by `safetensors.numpy.save`, whose header orders the
    metadata by a hash map: the same checkpoint must give the same bytes.
    """
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    chunks, offset = [], 0
    for name, value in tensors.items():
        arr = _contiguous(value)
        dtype = _ST_DTYPES.get(arr.dtype.name)
        if dtype is None:
            raise DslcError(f"cannot store `{name}` of dtype {arr.dtype} in a checkpoint")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _contiguous(v: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array (`step`) into shape [1].
    v = np.asarray(v)
    return v if v.flags.c_contiguous else v.copy(order="C")


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors checkpoint."""
    if not os.path.isfile(path):
        raise DslcError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        # TypeError: a dtype numpy does not know (ml_dtypes registers bfloat16, see above).
        raise DslcError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    return tensors, meta


def model_state(
    model: CheckedModel, tensors: Mapping[str, np.ndarray], path: str
) -> dict[str, np.ndarray]:
    """The parameters and buffers of `model` taken from a checkpoint, checking names and shapes.

    Optimiser slots and `step` are ignored (they belong to `--resume`); buffers
    the checkpoint lacks keep their initial values, parameters must be present.
    """
    specs = {p.name: p for p in model.params()}
    tensors = _from_torch_names(tensors, specs)
    state_keys = [k for k in tensors if not _is_training_key(k)]
    unexpected = [k for k in state_keys if k not in specs]
    missing = [n for n, p in specs.items() if p.trainable and n not in tensors]
    if missing:
        raise DslcError(
            f"{path}: checkpoint has no parameter `{missing[0]}`"
            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""),
            hint=_hint(unexpected),
        )
    if unexpected:
        raise DslcError(
            f"{path}: checkpoint has `{unexpected[0]}`, which model {model.name} does not have"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    out: dict[str, np.ndarray] = {}
    for name in state_keys:
        spec, arr = specs[name], tensors[name]
        if tuple(arr.shape) != tuple(spec.shape):
            raise DslcError(
                f"{path}: `{name}` has shape {list(arr.shape)} in the checkpoint, "
                f"model {model.name} expects {list(spec.shape)}"
            )
        out[name] = _as_float32(arr, name, path)
    return out


def _as_float32(arr: np.ndarray, name: str, path: str) -> np.ndarray:
    """A parameter or buffer as the float32 the graphs take (float64, float16, bfloat16, ints)."""
    try:
        return np.asarray(arr, dtype=np.float32)
    except (TypeError, ValueError):
        raise DslcError(f"{path}: `{name}` has dtype {arr.dtype}, not a number type") from None


def _from_torch_names(
    tensors: Mapping[str, np.ndarray], specs: Mapping[str, object]
) -> dict[str, np.ndarray]:
    """A PyTorch state_dict's extra names mapped onto the model's (`--init` from torch).

    BatchNorm's `num_batches_tracked` counter has no use here and is dropped;
    torch's single-layer recurrent names `weight_ih_l0` (`_l0_reverse`) are
    LANGUAGE.md §6's `weight_ih` (`_reverse`). A key that already names a model
    tensor, or that has no such counterpart, is kept as it is.
    """
    out: dict[str, np.ndarray] = {}
    for key, arr in tensors.items():
        if key in specs:
            out[key] = arr
            continue
        prefix, _, last = key.rpartition(".")
        if last == "num_batches_tracked" and f"{prefix}.running_mean" in specs:
            continue
        alias = prefix + "." + _TORCH_RNN.sub(r"\1\2", last)
        out[alias if alias in specs and alias not in tensors else key] = arr
    return out


def _is_training_key(key: str) -> bool:
    return key.startswith("opt.") or key in ("step", "seed")


def _hint(unexpected: list[str]) -> str | None:
    if not unexpected:
        return None
    return (
        "the checkpoint's names are: "
        + ", ".join(unexpected[:5])
        + (" ..." if len(unexpected) > 5 else "")
    )


def load_init(path: str, model: CheckedModel) -> dict[str, np.ndarray]:
    """`--init CKPT`: the model's parameters (and buffers where present) from a checkpoint."""
    tensors, _ = load_checkpoint(path)
    return model_state(model, tensors, path)
