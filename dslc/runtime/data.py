"""Datasets: loading `.npz`, `.csv`, IDX (MNIST) files and the built-in `digits`, bound to a model.

A dataset is bound to a checked model's declared inputs and targets: every array
is keyed by the declaration's name, has the examples on its first axis, the
declared per-example shape and the declared dtype (float32 or int64). Anything
wrong with a user's data is a one-line `DslcError` naming the file, the key
and the problem. See docs/data.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from dslc.check.model import CallValue, CheckedModel, Declared
from dslc.errors import DslcError

BUILTIN = ("digits",)


@dataclass(frozen=True)
class Dataset:
    """Arrays keyed by input/target name, examples on the first axis, and where they came from."""

    name: str
    arrays: dict[str, np.ndarray]
    source: str
    meta: dict[str, str] = field(default_factory=dict)  # e.g. a text dataset's `vocab`

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 0

    def take(self, index: np.ndarray, name: str | None = None) -> Dataset:
        """The examples at `index`, in that order."""
        return Dataset(
            name or self.name,
            {k: np.ascontiguousarray(v[index]) for k, v in self.arrays.items()},
            self.source,
            dict(self.meta),
        )


# ---------------------------------------------------------------- entry points


def load_dataset(spec: str | CallValue, model: CheckedModel, base_dir: str) -> Dataset:
    """Load `spec` (a path, `a.idx,b.idx`, `digits`, `text(...)`) and bind it to `model`.

    Relative paths resolve against `base_dir` (the .nn file's folder), then the
    current directory.
    """
    if isinstance(spec, CallValue):
        if spec.name != "text":
            raise DslcError(f"unknown dataset kind `{spec.name}`", spec.span)
        kw = spec.kw()
        path = str(kw.get("path", spec.args[0] if spec.args else ""))
        return _load_text(_resolve(path, base_dir), int(kw.get("seq_len", 64)), model)
    spec = spec.strip()
    if spec in BUILTIN:
        return _bind_flat(_digits(), model, "digits")
    if "," in spec:
        parts = [_resolve(p.strip(), base_dir) for p in spec.split(",") if p.strip()]
        if len(parts) != 2:
            raise DslcError(f"{spec}: expected two IDX files `images,labels`")
        return _bind_flat(_read_idx_pair(parts[0], parts[1]), model, spec)
    path = _resolve(spec, base_dir)
    if os.path.isdir(path):
        images, labels = _idx_folder(path)
        return _bind_flat(_read_idx_pair(images, labels), model, path)
    lower = path.lower()
    if lower.endswith(".npz"):
        names = [d.name for d in (*model.inputs, *model.targets)]
        arrays, keys = _read_npz(path, names)
        return _bind_named(arrays, model, path, keys)
    if lower.endswith(".csv") or lower.endswith(".csv.gz"):
        return _load_csv(path, model)
    if lower.endswith(".txt"):
        return _load_text(path, _text_seq_len(model), model)
    if _is_idx_name(lower):
        images = _read_idx(path)
        return _bind_flat(_FlatData(images, None, path, path), model, path)
    raise DslcError(
        f"{spec}: unknown dataset format",
        hint="use a .npz, .csv or IDX (.idx, -ubyte) file, a folder of MNIST files, or `digits`",
    )


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split off a validation fraction with a seeded permutation; `(train, None)` for 0."""
    if not 0.0 <= fraction < 1.0:
        raise DslcError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(dataset)
    if fraction == 0.0:
        return dataset, None
    if n < 2:
        raise DslcError(
            f"{dataset.source}: {n} example(s) are too few to split off validation data"
        )
    n_val = validation_count(n, fraction)
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted within each part so that `shuffle = false` still walks the data in file order.
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return dataset.take(train_idx, dataset.name), dataset.take(val_idx, dataset.name + ":val")


def validation_count(n: int, fraction: float) -> int:
    """How many of `n` examples a validation fraction splits off: round(f·n), in [1, n − 1]."""
    return min(max(int(round(n * fraction)), 1), n - 1)


def symbolic_dims(dataset: Dataset, model: CheckedModel) -> dict[str, int]:
    """Sizes of the symbolic dimensions (`T`) as the dataset fixes them."""
    dims: dict[str, int] = {}
    for decl in (*model.inputs, *model.targets):
        arr = dataset.arrays.get(decl.name)
        if arr is None:
            continue
        for d, size in zip(decl.type.shape, arr.shape[1:], strict=False):
            if isinstance(d, str):
                if dims.setdefault(d, int(size)) != size:
                    raise DslcError(
                        f"{dataset.source}: `{decl.name}` gives dimension {d} = {size}, "
                        f"another array gives {dims[d]}"
                    )
    return dims


# ---------------------------------------------------------------- paths


def model_dir(model: CheckedModel) -> str:
    """The folder relative dataset paths are looked up in first: the `.nn` file's."""
    return os.path.dirname(os.path.abspath(model.file)) if model.file else os.getcwd()


def _resolve(spec: str, base_dir: str) -> str:
    path = os.path.expanduser(spec)
    if os.path.isabs(path):
        if os.path.exists(path):
            return path
        raise DslcError(f"{spec}: dataset not found")
    for root in (base_dir, os.getcwd()):
        cand = os.path.join(root, path)
        if os.path.exists(cand):
            return cand
    raise DslcError(
        f"{spec}: dataset not found",
        hint=f"relative paths are looked up in {base_dir or '.'} (the .nn file's folder), "
        "then the current directory",
    )


def _is_idx_name(lower: str) -> bool:
    base = lower[:-3] if lower.endswith(".gz") else lower
    return base.endswith(".idx") or base.endswith("-ubyte") or ".idx" in os.path.basename(base)


_IDX_NAMES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def _idx_folder(path: str) -> tuple[str, str]:
    def find(stem: str) -> str | None:
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem + ".idx"):
            cand = os.path.join(path, name)
            if os.path.isfile(cand):
                return cand
        return None

    for images, labels in _IDX_NAMES:
        i, lab = find(images), find(labels)
        if i and lab:
            return i, lab
    raise DslcError(
        f"{path}: folder holds no MNIST-style IDX files",
        hint="expected train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally .gz)",
    )


# ---------------------------------------------------------------- readers


@dataclass(frozen=True)
class _FlatData:
    """Data without names: one input array and optionally one label array (digits, IDX)."""

    x: np.ndarray
    y: np.ndarray | None
    x_source: str
    y_source: str | None


def _digits() -> _FlatData:
    raw = resources.files("dslc.runtime").joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float64)
    x = (table[:, :64] / 16.0).astype(np.float32)
    y = table[:, 64].astype(np.int64)
    return _FlatData(x, y, "digits", "digits")


def _open_maybe_gz(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DslcError(f"{path}: cannot read ({e.strerror})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DslcError(f"{path}: corrupt gzip data ({e})") from None
    return data


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str) -> np.ndarray:
    """An IDX array; unsigned-byte data of rank > 1 (images) is scaled to [0, 1] float32."""
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DslcError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DslcError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape))
    if len(data) - header < count * dtype.itemsize:
        raise DslcError(
            f"{path}: IDX file holds fewer values than its header declares {list(shape)}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    if ndim > 1 and data[2] == 0x08:
        return (arr.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    return arr.astype(arr.dtype.newbyteorder("="))


def _read_idx_pair(images: str, labels: str) -> _FlatData:
    x = _read_idx(images)
    y = _read_idx(labels)
    if y.ndim != 1:
        raise DslcError(f"{labels}: expected a rank-1 IDX label file, got shape {list(y.shape)}")
    return _FlatData(x, y.astype(np.int64), images, labels)


def _read_npz(path: str, names: list[str]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The arrays of `names` that a .npz file holds, and all its keys.

    Only those arrays are read: other keys are ignored, even ones that could not be
    loaded without pickle (an object array of class names, say).
    """
    if not zipfile.is_zipfile(path):
        raise DslcError(
            f"{path}: cannot read .npz file (not a zip archive)",
            hint="write it with np.savez(path, name=array, ...)",
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for key in names:
                if key not in z.files:
                    continue
                try:
                    out[key] = z[key]
                except ValueError:
                    raise DslcError(
                        f"{path}: key `{key}`: object arrays are not supported",
                        hint="save numeric arrays, e.g. np.asarray(x, dtype=np.float32)",
                    ) from None
            return out, tuple(z.files)
    except DslcError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DslcError(f"{path}: cannot read .npz file ({e})") from None


def _load_csv(path: str, model: CheckedModel) -> Dataset:
    text = _open_maybe_gz(path).decode("utf-8-sig", errors="replace")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise DslcError(f"{path}: empty CSV file")
    header = [c.strip() for c in rows[0]]
    has_header = not all(_is_number(c) for c in header)
    body = rows[1:] if has_header else rows
    if not body:
        raise DslcError(f"{path}: the dataset is empty (no data rows)")
    width = len(header)
    table = np.empty((len(body), width), dtype=np.float64)
    for i, row in enumerate(body):
        line = i + (2 if has_header else 1)
        if len(row) != width:
            raise DslcError(f"{path}:{line}: expected {width} columns, got {len(row)}")
        try:
            table[i] = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not _is_number(c))
            raise DslcError(f"{path}:{line}: not a number: {bad.strip()!r}") from None
    columns = {name: j for j, name in enumerate(header)} if has_header else {}
    return _bind_named(_csv_columns(table, columns, model, path), model, path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_columns(
    table: np.ndarray, columns: dict[str, int], model: CheckedModel, path: str
) -> dict[str, np.ndarray]:
    decls = (*model.inputs, *model.targets)
    wanted = {d.name: _column_names(d, path) for d in decls}
    named = {d: [c for c in cols if c in columns] for d, cols in wanted.items()}
    if not any(named.values()):
        return _csv_fallback(table, model, path)
    out: dict[str, np.ndarray] = {}
    for decl in decls:
        cols = wanted[decl.name]
        missing = [c for c in cols if c not in columns]
        if missing:
            raise DslcError(
                f"{path}: key `{decl.name}`: missing column `{missing[0]}`"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                hint=_csv_hint(decl),
            )
        block = table[:, [columns[c] for c in cols]]
        out[decl.name] = block.reshape((table.shape[0], *_fixed_shape(decl, path)))
    return out


def _column_names(decl: Declared, path: str) -> list[str]:
    size = int(np.prod(_fixed_shape(decl, path)))
    return [decl.name] if size == 1 else [f"{decl.name}.{i}" for i in range(size)]


def _csv_hint(decl: Declared) -> str:
    size = int(np.prod([d for d in decl.type.shape if isinstance(d, int)] or [1]))
    if size == 1:
        return f"a per-example scalar `{decl.name}` is the column named `{decl.name}`"
    return (
        f"`{decl.name}` of type {decl.type} takes columns {decl.name}.0 ... {decl.name}.{size - 1}"
    )


def _fixed_shape(decl: Declared, path: str) -> tuple[int, ...]:
    if any(isinstance(d, str) for d in decl.type.shape):
        raise DslcError(
            f"{path}: key `{decl.name}`: CSV cannot hold {decl.type} (symbolic dimensions)",
            hint="use a .npz file for variable-size data",
        )
    return tuple(int(d) for d in decl.type.shape)


def _csv_fallback(table: np.ndarray, model: CheckedModel, path: str) -> dict[str, np.ndarray]:
    # No column names match: a plain numeric table is `inputs..., target` when that is unambiguous.
    n = table.shape[0]
    if len(model.inputs) == 1 and len(model.targets) <= 1:
        x_decl = model.inputs[0]
        x_cols = table.shape[1] - len(model.targets)
        want = int(np.prod(_fixed_shape(x_decl, path)))
        if x_cols != want:
            raise DslcError(
                f"{path}: key `{x_decl.name}`: expected {want} input column(s) "
                f"for {x_decl.type}, got {x_cols}",
                hint=_csv_hint(x_decl),
            )
        out = {x_decl.name: table[:, :x_cols].reshape((n, *_fixed_shape(x_decl, path)))}
        if model.targets:
            t_decl = model.targets[0]
            t_shape = _fixed_shape(t_decl, path)
            if int(np.prod(t_shape)) != 1:
                raise DslcError(
                    f"{path}: key `{t_decl.name}`: the header names no model input or target",
                    hint=_csv_hint(t_decl),
                )
            out[t_decl.name] = table[:, -1].reshape((n, *t_shape))
        return out
    first = (*model.inputs, *model.targets)[0]
    raise DslcError(
        f"{path}: the header names none of the model's inputs or targets",
        hint=_csv_hint(first),
    )


def _text_seq_len(model: CheckedModel) -> int:
    """The window length for a `.txt` file given with --data: the train block's, else T, else 64."""
    data = model.train.data
    if isinstance(data, CallValue) and data.name == "text":
        return int(data.kw().get("seq_len", 64))
    shape = model.inputs[0].type.shape if model.inputs else ()
    return shape[0] if len(shape) == 1 and isinstance(shape[0], int) else 64


def _load_text(path: str, seq_len: int, model: CheckedModel) -> Dataset:
    """Character windows of a text file (dslc/runtime/text.py, docs/sequences.md)."""
    from dslc.runtime.text import load_text

    return load_text(path, seq_len, model)


# ---------------------------------------------------------------- binding and validation


def _bind_flat(flat: _FlatData, model: CheckedModel, name: str) -> Dataset:
    """Bind an unnamed (x, y) pair to a model with one input and at most one int target."""
    if len(model.inputs) != 1 or len(model.targets) > 1:
        raise DslcError(
            f"{flat.x_source}: this dataset binds to a model with one input and at most one "
            f"target; model {model.name} has {len(model.inputs)} input(s) "
            f"and {len(model.targets)} target(s)"
        )
    x_decl = model.inputs[0]
    n = flat.x.shape[0]
    per = int(np.prod(flat.x.shape[1:]))
    shape = tuple(x_decl.type.shape)
    if any(isinstance(d, str) for d in shape) or int(np.prod(shape)) != per:
        raise DslcError(
            f"{flat.x_source}: key `{x_decl.name}`: expected {x_decl.type}, "
            f"but each example has {per} values {list(flat.x.shape[1:])}",
            hint=f"declare the input with {per} values, e.g. float[{per}]",
        )
    # _conform: the declared dtype too (pixels are floats; an `int` input must refuse them).
    arrays = {x_decl.name: _conform(flat.x.reshape((n, *shape)), x_decl, flat.x_source)}
    if model.targets:
        t_decl = model.targets[0]
        if flat.y is None:
            raise DslcError(
                f"{flat.x_source}: key `{t_decl.name}`: no labels for the model's target"
            )
        if t_decl.type.dtype != "int64" or t_decl.type.shape not in ((), (1,)):
            raise DslcError(
                f"{flat.y_source}: key `{t_decl.name}`: expected the target to be int[] "
                f"(class labels), the model declares {t_decl.type}"
            )
        arrays[t_decl.name] = flat.y.reshape((flat.y.shape[0], *t_decl.type.shape))
    source = (
        flat.x_source
        if flat.y_source in (None, flat.x_source)
        else f"{flat.x_source},{flat.y_source}"
    )
    return _validate(Dataset(name, arrays, source), model, {k: source for k in arrays})


def _bind_named(
    raw: Mapping[str, np.ndarray],
    model: CheckedModel,
    path: str,
    keys: tuple[str, ...] | None = None,
) -> Dataset:
    """Bind arrays named after the declarations; `keys` are all the file's keys, for errors."""
    arrays: dict[str, np.ndarray] = {}
    for decl in (*model.inputs, *model.targets):
        if decl.name not in raw:
            have = ", ".join(sorted(raw if keys is None else keys)) or "none"
            raise DslcError(
                f"{path}: missing key `{decl.name}` (the file has: {have})",
                hint=f"store one array per input/target name, e.g. np.savez(f, {decl.name}=...)",
            )
        arrays[decl.name] = _conform(raw[decl.name], decl, path)
    return _validate(
        Dataset(os.path.basename(path), arrays, path), model, {k: path for k in arrays}
    )


def _conform(arr: np.ndarray, decl: Declared, path: str) -> np.ndarray:
    """Check dtype and per-example shape, converting to the declared dtype."""
    key = f"{path}: key `{decl.name}`"
    if arr.dtype == object:
        raise DslcError(f"{key}: object arrays are not supported")
    if arr.ndim == 0:
        raise DslcError(f"{key}: expected an array with examples on the first axis, got a scalar")
    kind = arr.dtype.kind
    if decl.type.dtype == "int64":
        if kind in "iub":
            arr = arr.astype(np.int64)
        elif kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DslcError(f"{key}: expected int values for {decl.type}, got dtype {arr.dtype}")
    else:
        if kind not in "iubf":
            raise DslcError(f"{key}: expected float values for {decl.type}, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
    want = tuple(decl.type.shape)
    got = arr.shape[1:]
    if not _shape_matches(want, got):
        fixed = [d for d in want if isinstance(d, int)]
        if (
            len(fixed) == len(want)
            and int(np.prod(want)) == int(np.prod(got))
            and _only_unit_dims(want, got)
        ):
            # [N] for int[1], [N, 1] for float[]: differ only by size-1 axes.
            return np.ascontiguousarray(arr.reshape((arr.shape[0], *want)))
        raise DslcError(
            f"{key}: wrong per-example shape: expected {list(want)} ({decl.type}), got {list(got)}"
        )
    return np.ascontiguousarray(arr)


def _shape_matches(want: tuple, got: tuple) -> bool:
    if len(want) != len(got):
        return False
    return all(isinstance(w, str) or w == g for w, g in zip(want, got, strict=True))


def _only_unit_dims(want: tuple, got: tuple) -> bool:
    return [d for d in want if d != 1] == [d for d in got if d != 1]


def _validate(ds: Dataset, model: CheckedModel, sources: dict[str, str]) -> Dataset:
    """Lengths agree, nothing empty, floats finite, labels in range of the classes."""
    lengths = {k: v.shape[0] for k, v in ds.arrays.items()}
    if any(n == 0 for n in lengths.values()):
        key = next(k for k, n in lengths.items() if n == 0)
        raise DslcError(f"{sources[key]}: key `{key}`: the dataset is empty")
    if len(set(lengths.values())) > 1:
        (k0, n0), *rest = lengths.items()
        k1, n1 = next((k, n) for k, n in rest if n != n0)
        raise DslcError(
            f"{ds.source}: keys `{k0}` and `{k1}` have different lengths ({n0} vs {n1} examples)"
        )
    for key, arr in ds.arrays.items():
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
            if bad.any():
                raise DslcError(
                    f"{sources[key]}: key `{key}`: NaN or Inf in example {int(np.argmax(bad))}"
                )
    for key, count in label_classes(model).items():
        found = _out_of_range(ds.arrays.get(key), count)
        if found is not None:
            row, value = found
            raise DslcError(
                f"{sources[key]}: key `{key}`: label {value} in example {row} is out of range "
                f"for {count} classes (0..{count - 1})"
            )
    for key, count in embedding_sizes(model).items():
        found = _out_of_range(ds.arrays.get(key), count)
        if found is not None:
            row, value = found
            raise DslcError(
                f"{sources[key]}: key `{key}`: token id {value} in example {row} is out of range "
                f"for an Embedding of {count} entries (0..{count - 1})",
                hint="make the Embedding's `num` larger than the largest id",
            )
    return ds


def _out_of_range(arr: np.ndarray | None, count: int) -> tuple[int, int] | None:
    """(example, value) of the first int id outside 0..count-1, else None (floats unchecked)."""
    if arr is None or arr.dtype.kind not in "iu":
        return None
    flat = arr.reshape(arr.shape[0], -1)
    bad_mask = (flat < 0) | (flat >= count)
    bad = bad_mask.any(axis=1)
    if not bad.any():
        return None
    row = int(np.argmax(bad))
    return row, int(flat[row][bad_mask[row]][0])


def embedding_sizes(model: CheckedModel) -> dict[str, int]:
    """Table sizes of the Embeddings that read an int input directly, by input name."""
    out: dict[str, int] = {}
    for node in model.nodes:
        if node.op != "layer" or not node.inputs:
            continue
        layer = model.layers[node.attrs["layer"]]
        src = model.nodes[node.inputs[0]]
        if layer.kind == "Embedding" and src.op == "input":
            name = src.attrs.get("name")
            out[name] = min(out.get(name, layer.args["num"]), int(layer.args["num"]))
    return out


_LABEL_FNS = ("cross_entropy", "nll", "accuracy", "top_k_accuracy")


def label_classes(model: CheckedModel) -> dict[str, int]:
    """Class counts of int targets, read off the logits of the losses/metrics that use them."""
    out: dict[str, int] = {}
    for node in model.nodes:
        if node.op != "fn" or node.attrs.get("name") not in _LABEL_FNS or len(node.inputs) < 2:
            continue
        logits, labels = model.nodes[node.inputs[0]], model.nodes[node.inputs[1]]
        if labels.op != "target" or labels.type.dtype != "int64":
            continue
        lshape, yshape = tuple(logits.type.shape), tuple(labels.type.shape)
        # Only the unambiguous layout: logits [..., C] with labels [...].
        if len(lshape) == len(yshape) + 1 and lshape[:-1] == yshape and isinstance(lshape[-1], int):
            name = labels.attrs.get("name")
            out[name] = min(out.get(name, lshape[-1]), lshape[-1])
    return out
