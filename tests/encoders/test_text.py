"""TextEncoder on a tiny random BERT (fast) and, marked slow, on the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shopgraph.encoders.text import TextEncoder, item_text

WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "running", "shoes", "laptop",
    "charger", "book", "the", "a", "of", "cotton", "shirt", "gift", "card", "phone",
]


def make_tiny_bert(folder: Path, seed: int = 0, hidden: int = 16) -> Path:
    """Save a randomly initialised 1-layer BERT + a WordPiece tokenizer built from a vocab file."""
    import transformers
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(WORDS) + "\n")
    vocab = {w: k for k, w in enumerate(vocab_file.read_text().split())}
    fast = transformers.BertTokenizerFast  # type: ignore[attr-defined]  # an alias in transformers 5
    if int(transformers.__version__.split(".")[0]) >= 5:
        tokenizer = fast(vocab=vocab)
    else:  # pragma: no cover - transformers 4 reads the file
        tokenizer = fast(vocab_file=str(vocab_file))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


TEXTS = ["red shoes", "", "the blue book of a shirt a a a a a", "laptop charger", "gift card", "phone"]


def test_shapes_norms_and_dtype(tiny_bert: Path) -> None:
    enc = TextEncoder(tiny_bert, device="cpu")
    out = enc.encode(TEXTS)
    assert out.shape == (len(TEXTS), 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert enc.dim == 16
    assert enc.batch_size == 16  # the CPU default (64 on CUDA)


def test_model_is_loaded_lazily(tiny_bert: Path) -> None:
    enc = TextEncoder(tiny_bert)
    assert enc._model is None
    assert enc.dim == 16  # from config.json, still not loaded
    assert enc._model is None
    enc.encode(["red"])
    assert enc._model is not None


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_batching_and_length_sorting_do_not_change_results(tiny_bert: Path, batch_size: int) -> None:
    one_by_one = np.stack([TextEncoder(tiny_bert, batch_size=1).encode([t])[0] for t in TEXTS])
    batched = TextEncoder(tiny_bert, batch_size=batch_size).encode(TEXTS)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_order_is_restored(tiny_bert: Path) -> None:
    enc = TextEncoder(tiny_bert, batch_size=2)
    forward = enc.encode(TEXTS)
    backward = enc.encode(TEXTS[::-1])
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-5)
    # distinct texts give distinct rows (so a mix-up would be seen)
    assert not np.allclose(forward[0], forward[3])


def test_mean_pooling_matches_a_manual_computation(tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        hidden = model(**tok(["laptop charger"], return_tensors="pt")).last_hidden_state[0]
    expected = hidden.mean(0) / hidden.mean(0).norm()
    np.testing.assert_allclose(TextEncoder(tiny_bert).encode(["laptop charger"])[0], expected.numpy(), atol=1e-5)


def test_truncation_and_empty_input(tiny_bert: Path) -> None:
    enc = TextEncoder(tiny_bert, max_length=4)
    long = "red " * 200
    short = "red red"  # [CLS] red red [SEP] is exactly the 4 kept tokens of `long`
    np.testing.assert_allclose(enc.encode([long]), enc.encode([short]), atol=1e-5)
    assert enc.encode([]).shape == (0, 16)


def test_read_up_to_says_where_the_model_stops_reading(tiny_bert: Path) -> None:
    """A text longer than the window is cut (encode reads its start only): read_up_to says after how
    many characters, so that a search can say what it did not read; None when all is read."""
    enc = TextEncoder(tiny_bert, max_length=4)  # [CLS] + 2 tokens + [SEP]
    assert enc.read_up_to("red shoes") is None and enc.read_up_to("") is None
    long = "red laptop charger book"
    assert enc.read_up_to(long) == len("red laptop")
    np.testing.assert_allclose(enc.encode([long]), enc.encode([long[: enc.read_up_to(long)]]), atol=1e-5)


def test_model_name_is_stable_and_tracks_config_and_length(tiny_bert: Path, tmp_path: Path) -> None:
    a, b = TextEncoder(tiny_bert), TextEncoder(str(tiny_bert))
    assert a.model_name == b.model_name and a.model_name.startswith(tiny_bert.name + "@")
    assert TextEncoder(tiny_bert, max_length=32).model_name != a.model_name
    other = make_tiny_bert(tmp_path / tiny_bert.name, hidden=8)  # same folder name, other config
    assert TextEncoder(other).model_name != a.model_name


def _retrained(src: Path, dst: Path, seed: int) -> Path:
    """``src`` copied to ``dst`` with other weights: config.json and tokenizer files unchanged."""
    import shutil

    shutil.copytree(src, dst)
    other = make_tiny_bert(dst.parent / f"weights_{seed}", seed=seed)
    shutil.copy(other / "model.safetensors", dst / "model.safetensors")
    assert (dst / "config.json").read_bytes() == (src / "config.json").read_bytes()
    return dst


def test_model_name_tracks_the_weights_not_the_location(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    a = TextEncoder(tiny_bert)
    # fine-tuned: same config, same folder name, other weights
    tuned = _retrained(tiny_bert, tmp_path / "v2" / tiny_bert.name, seed=1)
    assert TextEncoder(tuned).model_name != a.model_name
    # retrained in place: a new encoder of the same folder sees the new weights
    moved = shutil.copytree(tiny_bert, tmp_path / "v3" / tiny_bert.name)
    before = TextEncoder(moved).model_name
    assert before == a.model_name  # the same checkpoint at another path: the same key
    shutil.copy(tuned / "model.safetensors", moved / "model.safetensors")
    assert TextEncoder(moved).model_name == TextEncoder(tuned).model_name != before
    # tokenizer files are part of the identity too
    retok = shutil.copytree(tiny_bert, tmp_path / "v4" / tiny_bert.name)
    (retok / "vocab.txt").write_text((retok / "vocab.txt").read_text().replace("laptop", "tablet"))
    (retok / "tokenizer.json").write_text((retok / "tokenizer.json").read_text().replace('"laptop"', '"tablet"'))
    assert TextEncoder(retok).model_name != a.model_name
    # files the loaders never read are not
    readme = shutil.copytree(tiny_bert, tmp_path / "v5" / tiny_bert.name)
    (readme / "README.md").write_text("notes")
    (readme / "1_Pooling").mkdir()
    (readme / "1_Pooling" / "config.json").write_text("{}")
    assert TextEncoder(readme).model_name == a.model_name


def test_retrained_checkpoint_never_reads_the_old_cached_vectors(tiny_bert: Path, tmp_path: Path) -> None:
    from shopgraph.encoders.cache import EmbeddingCache, cached_encode, text_key

    tuned = _retrained(tiny_bert, tmp_path / "v2" / tiny_bert.name, seed=1)
    texts = ["red shoes", "laptop charger"]
    keys = [text_key(t) for t in texts]
    with EmbeddingCache(tmp_path / "cache") as cache:
        old = TextEncoder(tiny_bert)
        first = cached_encode(cache, old.model_name, keys, lambda pos: old.encode([texts[p] for p in pos]))
        new = TextEncoder(tuned)
        second = cached_encode(cache, new.model_name, keys, lambda pos: new.encode([texts[p] for p in pos]))
        assert second.hits == 0 and second.misses == 2
        np.testing.assert_allclose(second.embeddings, new.encode(texts), atol=1e-5)
        assert not np.allclose(second.embeddings, first.embeddings, atol=1e-3)
        # a copy of the old checkpoint elsewhere reuses the old vectors
        import shutil

        copy = TextEncoder(shutil.copytree(tiny_bert, tmp_path / "elsewhere" / tiny_bert.name))
        third = cached_encode(cache, copy.model_name, keys, lambda pos: pytest.fail("should be cached"))
        assert third.hits == 2
        np.testing.assert_array_equal(third.embeddings, first.embeddings)


def test_model_name_digest_is_computed_once(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shopgraph.encoders.text as text_module

    calls: list[Path] = []
    real = text_module.checkpoint_digest
    monkeypatch.setattr(text_module, "checkpoint_digest", lambda folder: calls.append(folder) or real(folder))
    enc = TextEncoder(tiny_bert)
    assert calls == []  # not at construction: the service encodes queries without needing it
    assert enc.model_name == enc.model_name == TextEncoder(tiny_bert).model_name
    assert len(calls) == 2  # once per encoder


def test_default_model_name_is_readable() -> None:
    assert TextEncoder().model_name.startswith("all-MiniLM-L6-v2@")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size: expected a positive integer"),
        ({"max_length": 1}, "max_length: expected an integer >= 2"),
    ],
)
def test_bad_arguments(tiny_bert: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextEncoder(tiny_bert, **kwargs)  # type: ignore[arg-type]


def test_bad_model_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_path: expected a checkpoint folder"):
        TextEncoder(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        TextEncoder(tmp_path)


def test_bad_texts(tiny_bert: Path) -> None:
    enc = TextEncoder(tiny_bert)
    with pytest.raises(TypeError, match="got one str"):
        enc.encode("red shoes")
    with pytest.raises(TypeError, match=r"1 of 3 are not \(first: None, index 1\)"):
        enc.encode(["a", None, "b"])  # type: ignore[list-item]


def test_bad_device(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        TextEncoder(tiny_bert, device="tpu")


def test_item_text() -> None:
    assert item_text("Red shoes", "shoes", "Comfortable.") == "Red shoes. shoes. Comfortable."
    assert item_text("Red shoes", "", "  ") == "Red shoes"
    assert item_text("", "", "") == ""


@pytest.mark.slow
def test_real_model_captures_meaning() -> None:
    enc = TextEncoder()
    v = enc.encode(["red running shoes", "crimson sneakers", "laptop charger"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_device_helpers() -> None:
    import contextlib

    from shopgraph.encoders.device import autocast_context, limit_cpu_threads, select_device

    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(autocast_context(torch.device("cpu")), contextlib.nullcontext)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert limit_cpu_threads() == 1  # never raises the count
    finally:
        torch.set_num_threads(before)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA was requested but is not available"):
            select_device("cuda")
