"""FAISS item indexes: exact for small catalogues, tuned IVF above, one code path on CPU and GPU.

:class:`ItemIndex` is an sklearn-style estimator around one FAISS index wrapped in an
``IndexIDMap`` (ids are item node indices), so items can be added and removed without a rebuild.
The index type follows the catalogue size: ``Flat`` (exact) up to ``flat_max`` vectors, above it
``IVF{4*sqrt(N)},Flat`` whose ``nprobe`` is raised step by step on a held-out query sample until
recall@10 against exact search reaches ``target_recall``; the recall reached is measured at build
time and written next to the index.

:func:`index_run` builds the three indexes of a run folder (``docs/ARCHITECTURE.md``,
"Retrieval artifacts"): ``gnn_items``, ``text_items`` and ``image_items``, plus
``gnn_items_cosine`` (the item GNN embeddings under cosine, for item-to-item similarity).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

try:
    import faiss
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "FAISS is not installed: `pip install 'shopgraph[cpu]'` (faiss-cpu) or, on a GPU machine, "
        "`pip install 'shopgraph[gpu]'` (faiss-gpu) — one of the two, never both"
    ) from exc
import numpy as np

from shopgraph.graph.run import RunDir, atomic_write

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("ip", "cosine", "l2")
FLAT_MAX = 50_000
INDEX_DIR = "index"
INDEX_STAGE = "shopgraph index"  # the command that writes INDEX_DIR
INDEX_NAMES: tuple[str, ...] = ("gnn_items", "gnn_items_cosine", "text_items", "image_items")
# nprobe / efSearch candidates, tried in order until the recall target is met.
_NPROBES: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                             1536, 2048, 4096, 8192)
_EFSEARCH: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


class SearchResult(NamedTuple):
    """Nearest neighbours of a batch of queries.

    Attributes:
        ids: ``int64 [Q, k]`` item ids, best first; ``-1`` pads rows with fewer than k hits.
        scores: ``float32 [Q, k]`` similarities, higher is better (inner product for ``"ip"`` and
            ``"cosine"``, negative squared distance for ``"l2"``); ``-inf`` where the id is ``-1``.
    """

    ids: np.ndarray
    scores: np.ndarray


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _as_matrix(vectors: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(vectors), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array [N, D] (got shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns, the index's dimension (got {arr.shape[1]})")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name}: {int(bad.sum()):,} of {len(arr):,} rows hold NaN or inf (first: row {int(np.flatnonzero(bad)[0])})"
        )
    return arr


def _as_ids(ids: Any, n: int | None, name: str = "ids") -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(ids)).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids (got dtype {arr.dtype})")
    arr = arr.astype(np.int64)
    if n is not None and arr.size != n:
        raise ValueError(f"{name}: expected {n:,} ids, one per vector (got {arr.size:,})")
    if (arr < 0).any():
        raise ValueError(f"{name}: ids must be >= 0 (got {int(arr[arr < 0][0])})")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{name}: {int((counts > 1).sum()):,} ids occur more than once (first: {int(uniq[counts > 1][0])})"
        )
    return arr


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k found in the approximate top-k.

    Args:
        found: ``int64 [Q, >=k]`` approximate ids.
        exact: ``int64 [Q, >=k]`` exact ids (``-1`` padding is ignored).
        k: cut-off.
    """
    hits, total = 0, 0
    for f, e in zip(found[:, :k], exact[:, :k]):
        e = e[e >= 0]
        hits += int(np.isin(e, f).sum())
        total += e.size
    return hits / total if total else 1.0


def _drop_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    """``ids [Q, k(+1)]`` without each row's own id, cut to k columns."""
    if self_ids is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, self_ids)):
        kept = row[row != own][:k]
        out[r, : kept.size] = kept
    return out


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU (0 on faiss-cpu builds)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ItemIndex:
    """Nearest-item search over an id-mapped FAISS index.

    Args:
        metric: ``"ip"`` (inner product, what the GNN's purchase score uses), ``"cosine"``
            (vectors are L2-normalised on the way in, then inner product) or ``"l2"``.
        factory: a FAISS factory string (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``); ``None``
            chooses by size: ``Flat`` up to ``flat_max`` vectors, else ``IVF{4*sqrt(N)},Flat``.
        target_recall: recall@10 vs exact that ``nprobe`` / ``efSearch`` is tuned up to.
        use_gpu: search on GPU; ``None`` means when :func:`gpu_available`. The CPU index stays
            the master copy (add, remove, save); a GPU copy serves searches.
        flat_max: largest catalogue served by the exact index when ``factory`` is ``None``.
        n_tune: size of the held-out query sample used to tune and measure recall.
        seed: seeds the query sample and the training subsample.

    Fitted attributes: ``index_`` (the CPU ``faiss.IndexIDMap``), ``factory_``, ``dim_``,
    ``params_`` (``{"nprobe": n}``, ``{"efSearch": n}`` or ``{}``), ``recall_at_10_``,
    ``removed_`` (ids masked at search time for index types that cannot delete, e.g. HNSW).
    """

    def __init__(
        self,
        metric: str = "ip",
        factory: str | None = None,
        target_recall: float = 0.95,
        use_gpu: bool | None = None,
        *,
        flat_max: int = FLAT_MAX,
        n_tune: int = 1000,
        seed: int = 0,
    ) -> None:
        self.metric = metric
        self.factory = factory
        self.target_recall = target_recall
        self.use_gpu = use_gpu
        self.flat_max = flat_max
        self.n_tune = n_tune
        self.seed = seed
        self._gpu_index: Any = None
        self._gpu_res: Any = None
        self._id_bound: int | None = None  # >= every id ever added (None: not computed yet)

    # -- helpers --------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {', '.join(METRICS)} (got {self.metric!r})")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall: expected a value in (0, 1] (got {self.target_recall})")

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("ItemIndex: not fitted; call fit(vectors, ids) or ItemIndex.load(dir, name)")

    def _prep(self, vectors: Any, name: str, dim: int | None) -> np.ndarray:
        x = _as_matrix(vectors, name, dim)
        return _normalise(x) if self.metric == "cosine" else x

    def _choose_factory(self, n: int) -> str:
        if self.factory:
            return self.factory
        if n <= self.flat_max:
            return "Flat"
        return f"IVF{max(1, int(4 * math.sqrt(n)))},Flat"

    def _search_params(self, params: dict[str, int] | None = None) -> Any:
        params = self.params_ if params is None else params
        sel = None
        if self.removed_.size:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.removed_))
        if "nprobe" in params:
            p: Any = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))  # type: ignore[call-arg]
        elif "efSearch" in params:
            p = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))  # type: ignore[attr-defined]
        elif sel is not None:
            p = faiss.SearchParameters()
        else:
            return None
        if sel is not None:
            p.sel = sel
            p._sel_ref = sel  # keep the selector alive as long as the parameters
        return p

    def _searcher(self) -> Any:
        want_gpu = gpu_available() if self.use_gpu is None else self.use_gpu
        if not want_gpu:
            return self.index_
        if self._gpu_index is None:
            if not gpu_available():
                raise RuntimeError("use_gpu=True but this FAISS build sees no GPU (pip install faiss-gpu "
                                   "instead of faiss-cpu on a GPU machine)")
            try:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index_)
            except RuntimeError as exc:  # e.g. HNSW has no GPU version: search on CPU
                logger.warning("FAISS %s has no GPU version (%s); searching on CPU", self.factory_, exc)
                self._gpu_index = self.index_
        return self._gpu_index

    def _raw_search(self, x: np.ndarray, k: int, params: dict[str, int] | None = None) -> np.ndarray:
        _, ids = self._searcher().search(x, k, params=self._search_params(params))
        return np.asarray(ids)

    def _tune(self, x: np.ndarray, queries: np.ndarray, self_ids: np.ndarray | None) -> None:
        """Raise nprobe / efSearch until recall@10 vs exact >= target_recall on ``queries``.

        ``self_ids`` [Q] (when the queries are indexed vectors) are left out of both result lists,
        so each sampled vector is a held-out query rather than one that trivially finds itself.
        """
        k = min(10, len(x))
        extra = 0 if self_ids is None else 1
        exact = faiss.IndexFlat(x.shape[1], _faiss_metric(self.metric))
        exact.add(x)
        _, truth = exact.search(queries, k + extra)
        # Exact ids are positions in x; map them to the caller's ids.
        truth = _drop_self(np.where(truth >= 0, self._fit_ids[np.maximum(truth, 0)], -1), self_ids, k)
        inner = faiss.downcast_index(self.index_.index)
        if isinstance(inner, faiss.IndexIVF):
            name, grid = "nprobe", [n for n in _NPROBES if n < inner.nlist] + [int(inner.nlist)]
        elif isinstance(inner, faiss.IndexHNSW):
            name, grid = "efSearch", list(_EFSEARCH)
        else:
            self.params_ = {}
            found = _drop_self(self._raw_search(queries, k + extra, {}), self_ids, k)
            self.recall_at_10_ = recall_at_k(found, truth, k)
            return
        recall = 0.0
        for value in grid:
            found = _drop_self(self._raw_search(queries, k + extra, {name: value}), self_ids, k)
            recall = recall_at_k(found, truth, k)
            logger.debug("tune %s=%d: recall@10 %.4f", name, value, recall)
            if recall >= self.target_recall:
                break
        self.params_ = {name: int(value)}
        self.recall_at_10_ = recall
        if recall < self.target_recall:
            logger.warning("%s: recall@10 %.3f < target %.3f even at %s=%d",
                           self.factory_, recall, self.target_recall, name, value)

    # -- estimator API --------------------------------------------------------------------------
    def fit(self, vectors: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None = None) -> ItemIndex:
        """Build the index over ``vectors`` and tune its search parameters.

        Args:
            vectors: ``float32 [N, D]`` item vectors.
            ids: ``int64 [N]`` unique non-negative ids (item node indices).
            queries: ``float32 [Q, D]`` a sample of real queries for tuning (for ``gnn_items``, user
                embeddings); default: ``n_tune`` vectors drawn from ``vectors``.

        Returns:
            ``self``.
        """
        self._check_params()
        x = self._prep(vectors, "vectors", None)
        if len(x) == 0:
            raise ValueError("vectors: expected at least one vector (got 0 rows)")
        self._fit_ids = _as_ids(ids, len(x))
        d = x.shape[1]
        factory = self._choose_factory(len(x))
        t0 = time.perf_counter()
        try:
            inner = faiss.index_factory(d, factory, _faiss_metric(self.metric))
        except RuntimeError as exc:
            raise ValueError(f"factory: FAISS cannot build {factory!r} ({str(exc).splitlines()[0]})") from exc
        index = inner if isinstance(inner, faiss.IndexIDMap) else faiss.IndexIDMap(inner)
        index.own_fields = False
        self._inner_ref = inner  # the IDMap does not own its sub-index; keep it alive
        if not index.is_trained:
            rng = np.random.default_rng(self.seed)
            ivf = faiss.try_extract_index_ivf(inner)
            n_train = min(len(x), 40 * int(ivf.nlist)) if ivf is not None else len(x)
            if ivf is not None and len(x) < int(ivf.nlist):
                raise ValueError(f"factory: {factory!r} needs at least {ivf.nlist} vectors to train (got {len(x)})")
            sample = x if n_train >= len(x) else x[np.sort(rng.choice(len(x), n_train, replace=False))]
            index.train(sample)
        index.add_with_ids(x, self._fit_ids)
        self.index_ = index
        self._id_bound = None
        self.factory_ = factory
        self.dim_ = d
        self.removed_ = np.zeros(0, dtype=np.int64)
        self._gpu_index = None
        t_build = time.perf_counter() - t0

        self_ids: np.ndarray | None = None
        if queries is None:
            rng = np.random.default_rng(self.seed + 1)
            rows = np.sort(rng.choice(len(x), min(self.n_tune, len(x)), replace=False))
            q, self_ids = x[rows], self._fit_ids[rows]
        else:
            q = self._prep(queries, "queries", d)
            if len(q) > self.n_tune:
                q = q[np.random.default_rng(self.seed + 1).choice(len(q), self.n_tune, replace=False)]
        if factory == "Flat":
            # Exact by construction; nothing to tune.
            self.params_, self.recall_at_10_ = {}, 1.0
        else:
            self._tune(x, q, self_ids)
        del self._fit_ids
        logger.info("index %s (%s, %d x %d): built in %.1fs, recall@10 vs exact %.4f %s",
                    factory, self.metric, len(x), d, t_build, self.recall_at_10_, self.params_)
        return self

    @property
    def count(self) -> int:
        """Number of searchable vectors."""
        self._check_fitted()
        return int(self.index_.ntotal) - int(self.removed_.size)

    def ids(self) -> np.ndarray:
        """``int64 [count]`` the searchable ids, in insertion order."""
        self._check_fitted()
        all_ids = faiss.vector_to_array(self.index_.id_map).astype(np.int64)
        return all_ids[~np.isin(all_ids, self.removed_)] if self.removed_.size else all_ids

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """The ``k`` best items for each query.

        Args:
            queries: ``float32 [Q, D]`` (a single ``[D]`` vector is taken as one query).
            k: neighbours per query, ``>= 1``.

        Returns:
            :class:`SearchResult` with ``ids`` and ``scores`` of shape ``[Q, k]``.
        """
        self._check_fitted()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k: expected an integer >= 1 (got {k!r})")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        x = self._prep(q, "queries", self.dim_)
        dist, ids = self._searcher().search(x, int(k), params=self._search_params())
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(dist, dtype=np.float32)
        if self.metric == "l2":
            scores = -scores
        scores[ids < 0] = -np.inf
        return SearchResult(ids, scores)

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, as_given: bool = False) -> ItemIndex:
        """Insert vectors under new ids (no retraining; IVF assigns them to the trained lists).

        ``as_given``: a ``"cosine"`` index takes the vectors as they are, not scaled to length 1:
        a vector shorter than 1 scores its cosines times its length (the service's items added
        at run time, whose direction is a mean of others': ``ShopService._new_item_embeddings``).

        Raises:
            ValueError: an id is already in the index.
        """
        self._check_fitted()
        x = _as_matrix(vectors, "vectors", self.dim_) if as_given else self._prep(vectors, "vectors", self.dim_)
        new = _as_ids(ids, len(x))
        if self._id_bound is None:
            present = faiss.vector_to_array(self.index_.id_map)
            self._id_bound = int(present.max()) if present.size else -1
        # ids above every id ever added cannot clash (the service adds each new item at the next
        # position): only others are looked up, a pass over all ids (about 3 ms at 1M ids)
        if new.size and int(new.min()) <= self._id_bound:
            present = faiss.vector_to_array(self.index_.id_map)
            clash = new[np.isin(new, present)]
            if clash.size:
                raise ValueError(f"ids: {clash.size:,} ids are already in the index (first: {int(clash[0])})")
        self.index_.add_with_ids(x, new)
        if new.size:
            self._id_bound = max(self._id_bound, int(new.max()))
        self._gpu_index = None
        return self

    def remove(self, ids: np.ndarray) -> int:
        """Delete ids from the index.

        Returns:
            How many were removed.

        Raises:
            ValueError: an id is not in the index.
        """
        self._check_fitted()
        gone = _as_ids(ids, None)
        present = self.ids()
        missing = gone[~np.isin(gone, present)]
        if missing.size:
            raise ValueError(f"ids: {missing.size:,} ids are not in the index (first: {int(missing[0])})")
        try:
            removed = int(self.index_.remove_ids(gone))  # type: ignore[arg-type]  # SWIG stubs miss the array form
        except RuntimeError:
            # Index types without deletion (HNSW): mask the ids at search time instead.
            self.removed_ = np.union1d(self.removed_, gone).astype(np.int64)
            removed = int(gone.size)
        self._gpu_index = None
        return removed

    # -- persistence ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``<name>.json`` record written next to the index."""
        self._check_fitted()
        return {
            "factory": self.factory_,
            "metric": self.metric,
            "dim": int(self.dim_),
            "count": self.count,
            "recall_at_10_vs_exact": float(self.recall_at_10_),
            "params": dict(self.params_),
            "target_recall": float(self.target_recall),
            "removed": [int(v) for v in self.removed_],
        }

    def save(self, directory: str | Path, name: str, *, run: RunDir | None = None,
             made_from: dict[str, str | None] | None = None) -> Path:
        """Write ``<directory>/<name>.faiss`` and ``<name>.json`` atomically.

        Args:
            directory: target folder; with ``run``, a folder relative to the run folder.
            name: file stem, e.g. ``"gnn_items"``.
            run: write through this :class:`RunDir` (atomic and recorded in its manifest).
            made_from: with ``run``, :meth:`RunDir.sources` of the files the vectors came from:
                the index is refused as stale once one of them changes (``shopgraph index`` again).

        Returns:
            Path of the ``.faiss`` file.
        """
        self._check_fitted()
        info_text = json.dumps(self.info(), indent=2, sort_keys=True) + "\n"

        def write_index(path: Path) -> None:
            faiss.write_index(self.index_, str(path))

        if run is not None:
            rel = Path(directory)
            lineage: dict[str, Any] = {"made_from": made_from, "stage": INDEX_STAGE} if made_from else {}
            target = run.write_with(str(rel / f"{name}.faiss"), write_index, **lineage)
            run.write_text(str(rel / f"{name}.json"), info_text, **lineage)
            return target
        folder = Path(directory)
        atomic_write(folder / f"{name}.faiss", write_index)
        atomic_write(folder / f"{name}.json", lambda p: p.write_text(info_text, encoding="utf-8"))
        return folder / f"{name}.faiss"

    @classmethod
    def load(cls, directory: str | Path, name: str, *, run: RunDir | None = None,
             use_gpu: bool | None = None) -> ItemIndex:
        """Read an index written by :meth:`save`.

        Args:
            directory: the folder; with ``run``, relative to the run folder (checksums verified).
            name: file stem.
            run: read through this :class:`RunDir`, checking each file against the manifest.
            use_gpu: as in the constructor.
        """
        if run is not None:
            faiss_path = run.path_of(str(Path(directory) / f"{name}.faiss"))
            json_path = run.path_of(str(Path(directory) / f"{name}.json"))
        else:
            faiss_path = Path(directory) / f"{name}.faiss"
            json_path = Path(directory) / f"{name}.json"
            for p in (faiss_path, json_path):
                if not p.is_file():
                    raise FileNotFoundError(f"index {name!r}: {p} does not exist")
        info = json.loads(json_path.read_text(encoding="utf-8"))
        self = cls(metric=info["metric"], factory=info["factory"],
                   target_recall=float(info.get("target_recall", 0.95)), use_gpu=use_gpu)
        index = faiss.read_index(str(faiss_path))
        if not isinstance(index, faiss.IndexIDMap):
            raise ValueError(f"index {name!r}: {faiss_path} is not an id-mapped FAISS index")
        if index.d != int(info["dim"]):
            raise ValueError(f"index {name!r}: dimension {index.d} does not match {json_path} ({info['dim']})")
        self.index_ = index
        self._id_bound = None
        self.factory_ = info["factory"]
        self.dim_ = int(info["dim"])
        self.params_ = {k: int(v) for k, v in info.get("params", {}).items()}
        self.recall_at_10_ = float(info["recall_at_10_vs_exact"])
        self.removed_ = np.asarray(info.get("removed", []), dtype=np.int64)
        return self


# -- run folder ---------------------------------------------------------------------------------
def _content_rows(emb: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows that hold a content embedding (finite and non-zero), and the matrix."""
    x = np.asarray(emb.detach().cpu().numpy() if hasattr(emb, "detach") else emb, dtype=np.float32)
    ok = np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)
    return x, np.flatnonzero(ok).astype(np.int64)


def load_embeddings(run: RunDir) -> dict[str, np.ndarray]:
    """``RUN/embeddings.safetensors`` as numpy arrays (checksum verified)."""
    from safetensors.numpy import load_file

    return dict(load_file(str(run.path_of("embeddings.safetensors"))))


def index_run(run_dir: str | Path, *, use_gpu: bool | None = None) -> dict[str, dict[str, Any]]:
    """Build ``gnn_items``, ``gnn_items_cosine``, ``text_items`` and ``image_items`` into ``RUN/index/``.

    ``gnn_items`` indexes the item GNN embeddings (inner product, tuned on the user embeddings as
    queries: user -> item recommendations); ``gnn_items_cosine`` the same vectors under cosine, for
    item -> item similarity (inner product there favours large-norm, popular items: on a 2,000-item
    synthetic run the top-10 inner-product neighbours shared the query's category 17% of the time
    and covered 214 distinct items, cosine 56% and 1,396); ``text_items`` / ``image_items`` index ``data["item"].text_emb`` / ``.image_emb``
    (cosine) for the items that have one. A content index is skipped (and said so) when the graph
    has no such embedding.

    Args:
        run_dir: a run folder with ``graph.pt`` and ``embeddings.safetensors``.
        use_gpu: as in :class:`ItemIndex`.

    Returns:
        ``{name: info}`` for each index written (the contents of its ``.json``).
    """
    run = RunDir(run_dir)
    from_embeddings = run.sources("graph.pt", "embeddings.safetensors")  # before reading: what the indexes
    from_graph = {"graph.pt": from_embeddings["graph.pt"]}  # are made from (content indexes: the graph's)
    data = run.load_graph()
    emb = load_embeddings(run)
    if "item" not in emb:
        raise ValueError(f"run folder {run.path}: embeddings.safetensors has no 'item' tensor "
                         f"(found: {', '.join(sorted(emb)) or 'none'})")
    n_items = int(data["item"].num_nodes)
    items = np.asarray(emb["item"], dtype=np.float32)
    if items.shape[0] != n_items:
        raise ValueError(f"embeddings.safetensors: 'item' has {items.shape[0]:,} rows, the graph "
                         f"{n_items:,} items; re-run `shopgraph train`")
    out: dict[str, dict[str, Any]] = {}
    users = np.asarray(emb["user"], dtype=np.float32) if "user" in emb else None
    gnn = ItemIndex("ip", use_gpu=use_gpu).fit(items, np.arange(n_items, dtype=np.int64), queries=users)
    gnn.save(INDEX_DIR, "gnn_items", run=run, made_from=from_embeddings)
    out["gnn_items"] = gnn.info()
    cos = ItemIndex("cosine", use_gpu=use_gpu).fit(items, np.arange(n_items, dtype=np.int64))
    cos.save(INDEX_DIR, "gnn_items_cosine", run=run, made_from=from_embeddings)
    out["gnn_items_cosine"] = cos.info()
    for name, attr in (("text_items", "text_emb"), ("image_items", "image_emb")):
        if attr not in data["item"]:
            logger.info("%s: the graph has no item %s; not built", name, attr)
            continue
        x, rows = _content_rows(data["item"][attr])
        if rows.size == 0:
            logger.info("%s: no item has a %s; not built", name, attr)
            continue
        index = ItemIndex("cosine", use_gpu=use_gpu).fit(x[rows], rows)
        index.save(INDEX_DIR, name, run=run, made_from=from_graph)
        out[name] = index.info()
    run.update(config={"index": {name: {"factory": v["factory"], "count": v["count"]} for name, v in out.items()}})
    return out


def cli_index(args: argparse.Namespace) -> int:
    """``shopgraph index --run RUN``."""
    t0 = time.perf_counter()
    result = index_run(args.run)
    for name, info in result.items():
        print(f"{name}: {info['factory']} ({info['metric']}), {info['count']:,} x {info['dim']}, "
              f"recall@10 vs exact {info['recall_at_10_vs_exact']:.4f} {info['params'] or ''}".rstrip())
    print(f"indexes written to {Path(args.run) / INDEX_DIR} in {time.perf_counter() - t0:.1f}s")
    return 0
