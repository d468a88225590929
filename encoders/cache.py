"""On-disk embedding cache keyed by (model name, sha256 of the content).

One SQLite file (stdlib ``sqlite3``) in WAL mode with a busy timeout: concurrent builds (threads
or processes) serialise their writes, readers never see a half-written row, and a write that is
interrupted (killed process, power loss) rolls back to the last committed transaction. One row per
``(model, key)``; the vector is a float32 blob.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (model, key)
) WITHOUT ROWID
"""
_CHUNK = 500  # keys per SELECT (well under SQLite's variable limit)


def default_cache_dir() -> Path:
    """``$SHOPGRAPH_CACHE`` when set, else ``~/.cache/shopgraph``."""
    env = os.environ.get("SHOPGRAPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shopgraph"


def text_key(text: str) -> str:
    """Cache key of a text: sha256 of its UTF-8 bytes (hex)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str (got {type(text).__name__})")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_key(path: Path) -> str | None:
    """Cache key of a file: sha256 of its bytes (hex), or ``None`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


# Top-level files of a checkpoint folder that ``transformers``' ``from_pretrained`` loaders read
# (AutoModel, AutoTokenizer, AutoImageProcessor): config, weights (``model.safetensors``,
# ``pytorch_model.bin``, their shards and index), tokenizer (``tokenizer.json``, ``vocab.txt``,
# ``merges.txt``, sentencepiece ``*.model`` ...) and processor files. Sub-folders (sentence-transformers'
# ``1_Pooling``, ``onnx/``) and other frameworks' weights (``tf_model.h5``) are not read by them.
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken")


# Recorded beside an encoder's model name in ``RUN/features.json`` (``model_scheme``): names of this
# scheme carry a digest of the weights (:func:`checkpoint_digest`; EfficientNet: the .pth file's
# sha256), so equal names mean equal weights. Runs built before record no scheme; their names
# (a digest of config.json only) cannot tell a retrained checkpoint from the one they were built with.
MODEL_NAME_SCHEME = "weights-v1"


def checkpoint_digest(folder: Path) -> str:
    """Content digest of a Hugging Face checkpoint folder: 12 hex digits of a sha256 over the name,
    size and sha256 of every top-level file with a :data:`CHECKPOINT_SUFFIXES` suffix (README files
    left out), in name order.

    It changes whenever the weights, config, tokenizer or processor files do, and not with the
    folder's location (a copy elsewhere has the same digest). Symlinks are followed. Reads every
    byte of the weights: about 0.07 s for MiniLM's 91 MB ``model.safetensors`` (sha256, page cache
    warm), so an encoder computes it once.
    """
    digest = hashlib.sha256(b"shopgraph-checkpoint-v1\0")
    files = sorted(
        f for f in folder.iterdir()
        if f.suffix in CHECKPOINT_SUFFIXES and not f.name.lower().startswith("readme") and f.is_file()
    )
    for f in files:
        content = file_key(f)
        if content is None:
            raise OSError(f"model_path: cannot read {str(f)!r} to identify the checkpoint")
        digest.update(f"{f.name}\0{f.stat().st_size}\0{content}\n".encode())
    return digest.hexdigest()[:12]


class EmbeddingCache:
    """Float32 vectors on disk, keyed by ``(model, key)``.

    Args:
        directory: folder holding ``embeddings.sqlite`` (created when absent); ``None`` for
            :func:`default_cache_dir`.
        timeout: seconds a writer waits for another writer's lock before raising.

    Safe to share between threads (one connection behind a lock) and between processes (SQLite
    locking, WAL journal).
    """

    def __init__(self, directory: Path | str | None = None, *, timeout: float = 60.0) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"directory: expected a folder (got a file: {str(self.directory)!r})")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "embeddings.sqlite"
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a crash may lose the last transactions but never corrupts the file.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        """Close the connection (the object is unusable afterwards)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
            # instead of one failing with "database is locked" on upgrade.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` for ``model``: ``{key: float32 [D]}`` (absent keys left out)."""
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a non-empty string (got {model!r})")
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, dim, vec FROM embeddings WHERE model = ? AND key IN ({marks})",
                    [model, *chunk],
                ).fetchall()
                for key, dim, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.size != dim:  # cannot happen through put_many; skip rather than trust
                        logger.warning("cache row %s/%s has %d values, expected %d; ignored", model, key, vec.size, dim)
                        continue
                    found[key] = vec.copy()
        return found

    def put_many(self, model: str, items: Mapping[str, np.ndarray]) -> int:
        """Store vectors for ``model`` in one transaction (replacing existing ones).

        Args:
            model: the encoder's stable name (``TextEncoder.model_name`` ...).
            items: ``{key: vector [D]}``; every vector finite, one-dimensional.

        Returns:
            The number of rows written.
        """
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a non-empty string (got {model!r})")
        rows: list[tuple[str, str, int, bytes]] = []
        for key, value in items.items():
            vec = np.asarray(value, dtype=np.float32)
            if vec.ndim != 1 or not np.isfinite(vec).all():
                raise ValueError(
                    f"items: expected finite one-dimensional vectors (got shape {vec.shape} "
                    f"with {int((~np.isfinite(vec)).sum())} non-finite values for key {key!r})"
                )
            rows.append((model, str(key), int(vec.size), vec.tobytes()))
        if not rows:
            return 0
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (model, key, dim, vec) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def count(self, model: str | None = None) -> int:
        """Rows stored (for one model, or all)."""
        with self._lock:
            if model is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", (model,)).fetchone()[0])


class CachedEncoding(NamedTuple):
    """Result of :func:`cached_encode`: ``embeddings`` float32 ``[N, D]``, cache ``hits`` and ``misses``."""

    embeddings: np.ndarray
    hits: int
    misses: int


def cached_encode(
    cache: EmbeddingCache | None,
    model_name: str,
    keys: Sequence[str],
    compute_missing: Callable[[list[int]], np.ndarray],
) -> CachedEncoding:
    """Embeddings for ``keys``, reading the cache and computing only what it lacks.

    Args:
        cache: the cache, or ``None`` to compute everything.
        model_name: the encoder's stable name.
        keys: ``N`` content keys (repeats are computed once).
        compute_missing: given positions into ``keys`` (one per distinct missing key), returns
            their vectors, ``float32 [len(positions), D]``. Rows that are all zero mean "could not
            be encoded" (a bad image): they are returned but not cached.

    Returns:
        ``CachedEncoding(embeddings [N, D], hits, misses)``; hits and misses count rows of ``keys``.
        With nothing cached and nothing to compute (``N == 0``), ``D`` is 0.
    """
    keys = list(keys)
    found = cache.get_many(model_name, keys) if cache is not None else {}
    first: dict[str, int] = {}
    for pos, key in enumerate(keys):
        if key not in found and key not in first:
            first[key] = pos
    computed: dict[str, np.ndarray] = {}
    if first:
        positions = list(first.values())
        vectors = np.asarray(compute_missing(positions), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(positions):
            raise ValueError(
                f"compute_missing: expected an array [{len(positions)}, D] (got shape {vectors.shape})"
            )
        computed = {keys[p]: vectors[j] for j, p in enumerate(positions)}
        storable = {k: v for k, v in computed.items() if np.any(v != 0)}
        if cache is not None and storable:
            cache.put_many(model_name, storable)
    dims = {v.size for v in found.values()} | {v.size for v in computed.values()}
    if len(dims) > 1:
        raise ValueError(
            f"model_name {model_name!r}: cached and computed vectors differ in width (got {sorted(dims)}); "
            "the model name must change whenever the model does"
        )
    dim = dims.pop() if dims else 0
    out = np.zeros((len(keys), dim), dtype=np.float32)
    hits = 0
    for pos, key in enumerate(keys):
        if key in found:
            out[pos] = found[key]
            hits += 1
        else:
            out[pos] = computed[key]
    return CachedEncoding(out, hits, len(keys) - hits)
