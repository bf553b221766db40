"""Character text data, token-id validation and `dslc sample`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dslc.check import check_source
from dslc.check.model import CallValue
from dslc.cli import main
from dslc.errors import DslcError
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import load_dataset, split
from dslc.runtime.text import decode, encode, vocabulary, windows

TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n" * 4

MODEL = """
model Chars {{
    input  chars: int[T]
    target next:  int[T]
    h      = chars -> Embedding({num}, 8) -> GRU(16, return_sequences = true)
    logits = h -> head: Dense({num})
    output probs = softmax(logits)
    loss cross_entropy(logits, next)
}}
train {{
    data       = text("corpus.txt", seq_len = 8)
    validation = 0.25
    epochs     = 2
    batch_size = 4
    optimizer  = Adam(lr = 0.01)
}}
"""


def test_vocabulary_is_the_sorted_set_of_characters() -> None:
    vocab = vocabulary(TEXT)
    assert vocab == "".join(sorted(set(TEXT)))
    ids = encode(TEXT, vocab)
    assert ids.dtype == np.int64 and ids.max() == len(vocab) - 1
    assert decode(ids, vocab) == TEXT
    with pytest.raises(DslcError, match="outside the vocabulary"):
        encode("the cat!", vocab)


def test_windows_shift_targets_by_one_character() -> None:
    ids = np.arange(20)
    x, y = windows(ids, 6)
    assert x.shape == y.shape == (3, 6)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x.reshape(-1), np.arange(18))


def _write(tmp_path, num: int = 16):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    path = tmp_path / "chars.nn"
    path.write_text(MODEL.format(num=num), encoding="utf-8")
    return path


def test_text_dataset_binds_character_windows(tmp_path) -> None:
    path = _write(tmp_path)
    model = check_source(path.read_text(), str(path))
    ds = load_dataset(model.train.data, model, str(tmp_path))
    vocab = vocabulary(TEXT)
    assert json.loads(ds.meta["vocab"]) == vocab
    n = (len(TEXT) - 1) // 8
    assert ds.arrays["chars"].shape == ds.arrays["next"].shape == (n, 8)
    assert decode(ds.arrays["chars"][0], vocab) == TEXT[:8]
    assert decode(ds.arrays["next"][0], vocab) == TEXT[1:9]
    train, val = split(ds, 0.25, 0)
    assert val is not None and len(train) + len(val) == n
    assert train.meta == ds.meta


def test_text_larger_than_the_embedding_is_refused(tmp_path) -> None:
    path = _write(tmp_path, num=8)  # the text has 15 distinct characters
    model = check_source(path.read_text(), str(path))
    with pytest.raises(DslcError, match="has 15 distinct characters, but the Embedding"):
        load_dataset(model.train.data, model, str(tmp_path))


@pytest.mark.parametrize("bad", [10, -1])
def test_out_of_range_token_ids_are_refused_not_clamped(tmp_path, bad: int) -> None:
    model = check_source("""
model Tok {
    input  ids: int[T]
    target y: float[4]
    v = ids -> Embedding(10, 4) -> mean(axis = 0)
    output v
    loss mse(v, y)
}
""", "tok.nn")
    ids = np.array([[1, 2, 3], [4, bad, 5]])
    np.savez(tmp_path / "d.npz", ids=ids, y=np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(DslcError, match=f"token id {bad} in example 1 is out of range"):
        load_dataset(str(tmp_path / "d.npz"), model, str(tmp_path))
    ids[1, 1] = 9
    np.savez(tmp_path / "ok.npz", ids=ids, y=np.zeros((2, 4), dtype=np.float32))
    assert load_dataset(str(tmp_path / "ok.npz"), model, str(tmp_path)).arrays["ids"].max() == 9


def test_train_stores_the_vocabulary_and_sample_inverts_it(tmp_path, capsys) -> None:
    path = _write(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet", "--steps", "4"]) == 0
    _, meta = load_checkpoint(str(run / "last.safetensors"))
    vocab = vocabulary(TEXT)
    assert json.loads(meta["vocab"]) == vocab
    capsys.readouterr()
    args = ["sample", str(path), "--checkpoint", str(run / "last.safetensors"),
            "--prime", "the ", "--length", "30", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out.rstrip("\n")
    assert first.startswith("the ") and len(first) == 34
    assert set(first) <= set(vocab)
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") == first  # the seed fixes the draw


def test_sample_refuses_characters_outside_the_vocabulary(tmp_path, capsys) -> None:
    path = _write(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet", "--steps", "1"]) == 0
    capsys.readouterr()
    code = main(["sample", str(path), "--checkpoint", str(run / "last.safetensors"),
                 "--prime", "THE"])
    assert code == 1
    assert "outside the vocabulary" in capsys.readouterr().err


def test_text_call_value_path_resolves_against_the_model_folder(tmp_path) -> None:
    path = _write(tmp_path)
    model = check_source(path.read_text(), str(path))
    spec = CallValue("text", ("corpus.txt",), (("seq_len", 5),))
    ds = load_dataset(spec, model, str(tmp_path))
    assert ds.arrays["chars"].shape[1] == 5


def test_next_distribution_reads_probabilities_and_logits_alike() -> None:
    from dslc.runtime.text import _next_distribution

    logits = np.array([2.0, 0.5, -1.0])
    probs = np.exp(logits) / np.exp(logits).sum()
    from_logits = _next_distribution(logits, 0.5, probabilities=False)
    from_probs = _next_distribution(probs, 0.5, probabilities=True)
    np.testing.assert_allclose(from_logits, from_probs, rtol=1e-12)
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    np.testing.assert_allclose(from_logits, expected, rtol=1e-12)
