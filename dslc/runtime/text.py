"""Character-level text data and sampling (docs/sequences.md).

`text("file.txt", seq_len = L)` reads the file as UTF-8 and cuts it into
non-overlapping windows of L characters: the input is characters [i, i+L),
the target the next characters [i+1, i+L+1), both `int[L]` ids. The
vocabulary is the sorted set of characters in the file; character k of the
vocabulary has id k. Training stores the vocabulary in the checkpoint's
metadata (key `vocab`, a JSON string) so that `dslc sample` can turn ids back
into text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from dslc.check.model import CheckedModel
from dslc.errors import DslcError

VOCAB_KEY = "vocab"


def read_text(path: str) -> str:
    """The file's text (UTF-8, a gzip file is unpacked), with a one-line error on failure."""
    from dslc.runtime.data import _open_maybe_gz

    try:
        return _open_maybe_gz(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DslcError(f"{path}: not UTF-8 text (byte {e.start})") from None


def vocabulary(text: str) -> str:
    """The sorted set of the characters in `text`: id k is character k."""
    return "".join(sorted(set(text)))


def encode(text: str, vocab: str, what: str = "text") -> np.ndarray:
    """Character ids (int64) of `text` under `vocab`; a character outside it is an error."""
    index = {ch: k for k, ch in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing:
        raise DslcError(
            f"{what} holds {len(missing)} character(s) outside the vocabulary, e.g. {missing[0]!r}",
            hint=f"the vocabulary is the {len(vocab)} characters of the training text",
        )
    return np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))


def decode(ids: np.ndarray, vocab: str) -> str:
    """The text of character ids."""
    return "".join(vocab[int(k)] for k in np.asarray(ids).reshape(-1))


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (input, next-character target) windows of `seq_len` ids each."""
    count = (len(ids) - 1) // seq_len
    x = ids[: count * seq_len].reshape(count, seq_len)
    y = ids[1 : count * seq_len + 1].reshape(count, seq_len)
    return x, y


def load_text(path: str, seq_len: int, model: CheckedModel):
    """A text file as a Dataset bound to a model with one `int[T]` input and target."""
    from dslc.runtime.data import Dataset, _bind_named

    if seq_len < 1:
        raise DslcError(f"{path}: seq_len must be at least 1, got {seq_len}")
    if len(model.inputs) != 1 or len(model.targets) > 1:
        raise DslcError(
            f"{path}: a text dataset binds to a model with one input and at most one target; "
            f"model {model.name} has {len(model.inputs)} and {len(model.targets)}"
        )
    for decl in (*model.inputs, *model.targets):
        if decl.type.dtype != "int64" or len(decl.type.shape) != 1:
            raise DslcError(
                f"{path}: key `{decl.name}`: a text dataset gives int[T] character ids, "
                f"the model declares {decl.type}"
            )
    text = read_text(path)
    vocab = vocabulary(text)
    _check_vocab_fits(path, len(vocab), model)
    ids = encode(text, vocab, path)
    if len(ids) < seq_len + 1:
        raise DslcError(
            f"{path}: the text holds {len(ids)} characters, too few for one window "
            f"of seq_len = {seq_len}"
        )
    x, y = windows(ids, seq_len)
    raw = {model.inputs[0].name: x}
    if model.targets:
        raw[model.targets[0].name] = y
    ds = _bind_named(raw, model, path)
    return Dataset(ds.name, ds.arrays, ds.source, {VOCAB_KEY: json.dumps(vocab)})


def _check_vocab_fits(path: str, size: int, model: CheckedModel) -> None:
    """The model's Embedding and class count must cover every character id."""
    from dslc.runtime.data import embedding_sizes, label_classes

    limits = [(f"the Embedding reading `{k}` has {n} entries", n)
              for k, n in embedding_sizes(model).items()]
    limits += [(f"the target `{k}` has {n} classes", n) for k, n in label_classes(model).items()]
    for what, n in limits:
        if size > n:
            raise DslcError(
                f"{path}: the text has {size} distinct characters, but {what}",
                hint=f"size the model for a vocabulary of {size} (e.g. Embedding({size}, ...) "
                f"and Dense({size}) logits)",
            )


# ---------------------------------------------------------------- sampling


def checkpoint_vocab(meta: Mapping[str, str]) -> str | None:
    """The vocabulary a checkpoint's metadata records, if any."""
    raw = meta.get(VOCAB_KEY)
    return json.loads(raw) if raw else None


def _next_distribution(out: np.ndarray, temperature: float, probabilities: bool) -> np.ndarray:
    """The next-character distribution from the last step's probabilities or logits."""
    v = out.astype(np.float64)
    if probabilities:
        v = np.log(np.maximum(v, 1e-30))  # back to logits, so the temperature applies
    v = v / temperature
    v = np.exp(v - v.max())
    return v / v.sum()


def sample_text(
    session,
    vocab: str,
    *,
    input_name: str,
    output_name: str,
    context: int,
    prime: str,
    length: int,
    temperature: float,
    seed: int,
    probabilities: bool = False,
) -> str:
    """`length` characters after `prime`, each drawn from the model's next-character output.

    The model sees the last `context` characters (its training window) each step,
    from a zero state, as in training.
    """
    if temperature <= 0:
        raise DslcError(f"--temperature must be positive, got {temperature}")
    rng = np.random.default_rng(seed)
    ids = list(encode(prime, vocab, "--prime"))
    for _ in range(length):
        window = np.asarray(ids[-context:], dtype=np.int64)[None, :]
        (out,) = session.run([output_name], {input_name: window})
        if out.ndim != 3 or out.shape[-1] < len(vocab):
            raise DslcError(
                f"output `{output_name}` has shape {list(out.shape[1:])} per example, expected "
                f"[T, C] with C >= {len(vocab)} (a score per character of the vocabulary)"
            )
        # Classes past the vocabulary (a model sized with room to spare) are never drawn.
        p = _next_distribution(out[0, -1, : len(vocab)], temperature, probabilities)
        ids.append(int(rng.choice(len(p), p=p)))
    return decode(np.asarray(ids), vocab)


def sample(
    model: CheckedModel,
    checkpoint: str,
    *,
    prime: str | None = None,
    length: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
    data: str | None = None,
) -> str:
    """Text from a trained character model: `prime`, then `length` sampled characters.

    The vocabulary comes from the checkpoint's metadata; a checkpoint without one
    falls back to the text file of `data` or of the train block.
    """
    from dslc.api import _inference, checkpoint_state
    from dslc.check.model import CallValue
    from dslc.emit_onnx import to_onnx
    from dslc.runtime.checkpoint import load_checkpoint
    from dslc.runtime.data import _resolve, _text_seq_len, model_dir
    from dslc.runtime.session import make_session

    if length < 0:
        raise DslcError(f"--length must be at least 0, got {length}")
    if len(model.inputs) != 1 or model.inputs[0].type.dtype != "int64" or len(
            model.inputs[0].type.shape) != 1:
        raise DslcError(f"model {model.name} does not read one int[T] input of character ids")
    _, meta = load_checkpoint(checkpoint)
    vocab = checkpoint_vocab(meta)
    if vocab is None:
        spec = data or model.train.data
        if isinstance(spec, CallValue):
            spec = str(spec.kw().get("path", spec.args[0] if spec.args else ""))
        vocab = vocabulary(read_text(_resolve(str(spec), model_dir(model))))
    graph, params = _inference(model, checkpoint_state(model, checkpoint))
    outputs = [v for v in graph.outputs if v.dtype.startswith("float") and v.rank == 3]
    if not outputs:
        raise DslcError(f"model {model.name} has no [T, classes] output to sample from")
    session = make_session(to_onnx(graph, params), "cpu", 1)
    if prime is None:
        prime = vocab[int(np.random.default_rng(seed).integers(len(vocab)))]
    if not prime:
        raise DslcError("--prime must not be empty")
    return sample_text(
        session, vocab, input_name=model.inputs[0].name, output_name=outputs[0].name,
        context=_text_seq_len(model), prime=prime, length=length, temperature=temperature,
        seed=seed, probabilities=_is_softmax_output(model, outputs[0].name),
    )


def _is_softmax_output(model: CheckedModel, name: str) -> bool:
    """Whether the output `name` is declared as `softmax(...)`: probabilities, not logits."""
    node_id = dict(model.outputs).get(name)
    if node_id is None:
        return False
    node = model.nodes[node_id]
    return node.op == "fn" and node.attrs.get("name") == "softmax"
