"""EmbeddingCache and cached_encode: hits, misses, concurrency, interrupted writes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shopgraph.encoders.cache import (
    EmbeddingCache,
    cached_encode,
    checkpoint_digest,
    default_cache_dir,
    file_key,
    text_key,
)

MODEL = "tiny@abc/max8"


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


class CountingEncoder:
    """Deterministic fake encoder (a hash of the text) that records what it was asked to encode."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([_vec(int(text_key(t)[:8], 16)) for t in texts])


def _encode(cache: EmbeddingCache, texts: list[str], enc: CountingEncoder):  # type: ignore[no-untyped-def]
    keys = [text_key(t) for t in texts]
    return cached_encode(cache, MODEL, keys, lambda pos: enc([texts[p] for p in pos]))


def test_put_get_roundtrip(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path) as cache:
        assert cache.put_many(MODEL, {"a": _vec(0), "b": _vec(1)}) == 2
        got = cache.get_many(MODEL, ["a", "b", "c"])
        assert set(got) == {"a", "b"}
        np.testing.assert_array_equal(got["a"], _vec(0))
        assert got["a"].dtype == np.float32
        assert cache.get_many("other-model", ["a"]) == {}
        assert cache.count() == 2 and cache.count(MODEL) == 2
    # persisted on disk
    with EmbeddingCache(tmp_path) as again:
        np.testing.assert_array_equal(again.get_many(MODEL, ["b"])["b"], _vec(1))


def test_many_keys_are_chunked(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path) as cache:
        items = {f"k{i}": _vec(i, 4) for i in range(1_234)}
        cache.put_many(MODEL, items)
        got = cache.get_many(MODEL, list(items))
        assert len(got) == 1_234
        np.testing.assert_array_equal(got["k1000"], items["k1000"])


def test_second_encode_is_all_hits_and_a_change_reencodes_only_it(tmp_path: Path) -> None:
    texts = [f"item number {i}" for i in range(20)]
    enc = CountingEncoder()
    with EmbeddingCache(tmp_path) as cache:
        first = _encode(cache, texts, enc)
        assert (first.hits, first.misses) == (0, 20)
        second = _encode(cache, texts, enc)
        assert (second.hits, second.misses) == (20, 0)
        np.testing.assert_array_equal(first.embeddings, second.embeddings)
        assert len(enc.calls) == 1
        texts[7] = "a changed title"
        third = _encode(cache, texts, enc)
        assert (third.hits, third.misses) == (19, 1)
        assert enc.calls[-1] == ["a changed title"]
        np.testing.assert_array_equal(third.embeddings[7], enc(["a changed title"])[0])


def test_repeated_keys_are_computed_once(tmp_path: Path) -> None:
    enc = CountingEncoder()
    with EmbeddingCache(tmp_path) as cache:
        res = _encode(cache, ["x", "y", "x", "x"], enc)
    assert enc.calls == [["x", "y"]]
    assert (res.hits, res.misses) == (0, 4)
    np.testing.assert_array_equal(res.embeddings[0], res.embeddings[3])


def test_zero_rows_are_returned_but_not_cached(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path) as cache:
        res = cached_encode(cache, MODEL, ["good", "bad"], lambda pos: np.stack([_vec(0), np.zeros(8, np.float32)]))
        assert np.all(res.embeddings[1] == 0)
        assert set(cache.get_many(MODEL, ["good", "bad"])) == {"good"}


def test_without_cache_everything_is_computed() -> None:
    enc = CountingEncoder()
    res = cached_encode(None, MODEL, [text_key("a"), text_key("b")], lambda pos: enc(["a", "b"]))
    assert (res.hits, res.misses) == (0, 2) and res.embeddings.shape == (2, 8)
    empty = cached_encode(None, MODEL, [], lambda pos: np.zeros((0, 8)))
    assert empty.embeddings.shape == (0, 0)


def test_errors(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path) as cache:
        with pytest.raises(ValueError, match=r"items: expected finite one-dimensional vectors \(got shape \(8,\) with 1"):
            bad = _vec(0)
            bad[3] = np.nan
            cache.put_many(MODEL, {"a": bad})
        with pytest.raises(ValueError, match="model: expected a non-empty string"):
            cache.get_many("", ["a"])
        with pytest.raises(ValueError, match=r"compute_missing: expected an array \[2, D\] \(got shape \(1, 8\)\)"):
            cached_encode(cache, MODEL, ["p", "q"], lambda pos: np.zeros((1, 8)))
        cache.put_many(MODEL, {"p": _vec(0)})
        with pytest.raises(ValueError, match=r"differ in width \(got \[4, 8\]\)"):
            cached_encode(cache, MODEL, ["p", "q"], lambda pos: _vec(1, 4)[None, :])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="directory: expected a folder"):
        EmbeddingCache(tmp_path / "afile")


def test_keys(tmp_path: Path) -> None:
    assert text_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert file_key(tmp_path / "f.bin") == text_key("abc")
    assert file_key(tmp_path / "missing.bin") is None
    with pytest.raises(TypeError, match="text: expected str"):
        text_key(None)  # type: ignore[arg-type]


def test_default_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPGRAPH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SHOPGRAPH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "shopgraph"


def _writer(directory: str, worker: int, rounds: int) -> None:
    cache = EmbeddingCache(Path(directory))
    for r in range(rounds):
        # each worker writes its own keys plus a shared key everyone overwrites
        cache.put_many(MODEL, {f"w{worker}-{r}-{i}": _vec(worker * 10_000 + r * 100 + i) for i in range(20)}
                       | {"shared": _vec(7)})
    cache.close()


def test_concurrent_processes_and_threads_do_not_corrupt(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_writer, args=(str(tmp_path), 3 + w, 15)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with EmbeddingCache(tmp_path) as cache:
        assert cache.count(MODEL) == 5 * 15 * 20 + 1
        got = cache.get_many(MODEL, [f"w{w}-{r}-{i}" for w in range(5) for r in range(15) for i in range(20)])
        for w in range(5):
            np.testing.assert_array_equal(got[f"w{w}-3-5"], _vec(w * 10_000 + 305))
        np.testing.assert_array_equal(cache.get_many(MODEL, ["shared"])["shared"], _vec(7))
    assert sqlite3.connect(tmp_path / "embeddings.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)


_KILLED_WRITER = """
import sys, numpy as np
from pathlib import Path
from shopgraph.encoders.cache import EmbeddingCache
cache = EmbeddingCache(Path(sys.argv[1]))
r = 0
while True:  # large transactions, forever, until killed
    cache.put_many("m", {f"{r}-{i}": np.full(256, r, np.float32) for i in range(2000)})
    r += 1
    print(r, flush=True)
"""


def test_interrupted_write_leaves_a_readable_cache(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # at least one transaction committed
    time.sleep(0.05)  # now (most likely) in the middle of another
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with EmbeddingCache(tmp_path) as cache:
        n = cache.count("m")
        assert n > 0 and n % 2000 == 0  # whole transactions only
        rounds = n // 2000
        got = cache.get_many("m", [f"{r}-{i}" for r in range(rounds) for i in (0, 1999)])
        assert len(got) == 2 * rounds
        np.testing.assert_array_equal(got[f"{rounds - 1}-1999"], np.full(256, rounds - 1, np.float32))
        cache.put_many("m", {"after": _vec(0)})  # still writable
    assert sqlite3.connect(tmp_path / "embeddings.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _checkpoint(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "tokenizer.json").write_text('{"vocab": ["a"]}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_checkpoint_digest_tracks_weights_not_location(tmp_path: Path) -> None:
    a = checkpoint_digest(_checkpoint(tmp_path / "v1" / "m", b"weights one"))
    assert checkpoint_digest(_checkpoint(tmp_path / "moved" / "elsewhere" / "m", b"weights one")) == a
    assert checkpoint_digest(_checkpoint(tmp_path / "v2" / "m", b"weights two")) != a
    # pytorch_model.bin (read when there is no safetensors file), tokenizer and config files count
    for name in ("pytorch_model.bin", "vocab.txt", "special_tokens_map.json", "spiece.model"):
        other = _checkpoint(tmp_path / name / "m", b"weights one")
        (other / name).write_bytes(b"x")
        assert checkpoint_digest(other) != a, name
    renamed = _checkpoint(tmp_path / "renamed" / "m", b"weights one")
    (renamed / "model.safetensors").rename(renamed / "pytorch_model.bin")
    assert checkpoint_digest(renamed) != a
    # files the loaders never read do not
    docs = _checkpoint(tmp_path / "docs" / "m", b"weights one")
    (docs / "README.md").write_text("notes")
    (docs / ".gitattributes").write_text("*.bin lfs")
    (docs / "1_Pooling").mkdir()
    (docs / "1_Pooling" / "config.json").write_text("{}")
    assert checkpoint_digest(docs) == a


def test_checkpoint_digest_follows_symlinks(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "src" / "m", b"weights one")
    linked = tmp_path / "linked" / "m"
    linked.mkdir(parents=True)
    for f in src.iterdir():
        (linked / f.name).symlink_to(f)
    assert checkpoint_digest(linked) == checkpoint_digest(src)
