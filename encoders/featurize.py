"""Put node features on the graph: item text and image embeddings, behaviour statistics.

``featurize(data, tables)`` returns a copy of ``data`` with, for every node type, ``x`` float32
``[N, F]`` and ``feature_names`` (``F`` strings):

- ``item``: text embedding ⊕ ``has_text`` ⊕ image embedding ⊕ ``has_image`` ⊕ item statistics.
  Missing text or images are absent, not invented: a zero block and a 0 flag.
- ``user`` and ``device``: their behaviour statistics (:mod:`shopgraph.encoders.behaviour`).

It also stores the raw L2-normalised content embeddings ``data["item"].text_emb`` /
``.image_emb`` (zero rows where absent) with bool ``has_text`` / ``has_image``, for content search.
Embeddings go through the on-disk :class:`~shopgraph.encoders.cache.EmbeddingCache`, so a
rebuild over unchanged data encodes nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from shopgraph.encoders.behaviour import behaviour_features
from shopgraph.encoders.cache import MODEL_NAME_SCHEME, EmbeddingCache, cached_encode, file_key, text_key
from shopgraph.encoders.device import available_cpus
from shopgraph.encoders.image import ImageEncoder
from shopgraph.encoders.text import TextEncoder, item_text
from shopgraph.graph.schema import ShopTables

logger = logging.getLogger(__name__)


class FeaturizeResult(NamedTuple):
    """``data``: the featurized copy of the graph; ``report``: a JSON-serialisable summary."""

    data: HeteroData
    report: dict[str, Any]


def _items_in_graph_order(data: HeteroData, tables: ShopTables) -> pd.DataFrame:
    ids = list(data["item"].ids)
    items = tables.items.drop_duplicates("item_id").set_index("item_id")
    unknown = [i for i in ids if i not in items.index]
    if unknown:
        raise ValueError(
            f"tables.items: {len(unknown):,} of {len(ids):,} graph items are not in the table "
            f"(first: {unknown[0]!r}); build the graph from these tables"
        )
    return items.reindex(ids)


def _column(items: pd.DataFrame, name: str) -> list[str]:
    if name not in items.columns:
        return [""] * len(items)
    return items[name].fillna("").astype(str).tolist()


def _text_block(
    items: pd.DataFrame, model: str | Path | None, cache: EmbeddingCache, device: str | None, progress: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    texts = [
        item_text(t, c, d)
        for t, c, d in zip(_column(items, "title"), _column(items, "category"), _column(items, "description"))
    ]
    has = np.array([bool(t) for t in texts])
    encoder = TextEncoder(model, device=device)
    emb = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    present = [t for t in texts if t]
    res = cached_encode(
        cache, encoder.model_name, [text_key(t) for t in present],
        lambda pos: encoder.encode([present[p] for p in pos], progress=progress),
    )
    if present:
        emb[has] = res.embeddings
    report = {
        "model": encoder.model_name, "model_scheme": MODEL_NAME_SCHEME, "dim": int(encoder.dim), "items": len(texts),
        "with_text": int(has.sum()),
        "missing": int((~has).sum()), "cache_hits": res.hits, "cache_misses": res.misses,
    }
    return emb, has, report


def _image_block(
    items: pd.DataFrame, tables: ShopTables, model: str | Path | None, cache: EmbeddingCache,
    device: str | None, progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    paths = [tables.image_path(rel) for rel in _column(items, "image")]
    # A decoding worker only pays off with cores to spare: on a 2-core machine it measured ~30% more
    # CPU per image than decoding in-process (bench/bench_encoders.py).
    cpus = available_cpus()
    encoder = ImageEncoder(model, device=device, num_workers=0 if cpus <= 2 else min(4, cpus // 2))
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    keys: list[str | None] = []
    for p in paths:
        key = file_key(p) if p is not None else None
        keys.append(key)
        if key is None:  # nothing to encode: classify without touching the model
            kind = "no_image" if p is None else ("missing" if not p.exists() else "unreadable")
            counts[kind] += 1
            first.setdefault(kind, "" if p is None else str(p))
    readable = [k for k, key in enumerate(keys) if key is not None]
    rows_per_key = Counter(keys[k] for k in readable)  # one file may be the image of several items

    def compute(pos: list[int]) -> np.ndarray:
        files = [paths[readable[p]] for p in pos]
        enc = encoder.encode(files, progress=progress)
        for p, file, kinds in zip(pos, files, enc.kinds):
            for kind in kinds:
                counts[kind] += rows_per_key[keys[readable[p]]]
                first.setdefault(kind, str(file))
        return enc.embeddings

    res = cached_encode(cache, encoder.model_name, [keys[k] or "" for k in readable], compute)
    emb = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    if readable:
        emb[readable] = res.embeddings
    has = np.linalg.norm(emb, axis=1) > 0
    report = {
        "model": encoder.model_name, "model_scheme": MODEL_NAME_SCHEME, "dim": int(encoder.dim), "items": len(paths),
        "with_image": int(has.sum()), "without_image": int((~has).sum()),
        "problems": dict(sorted(counts.items())), "first_problem": dict(sorted(first.items())),
        "cache_hits": res.hits, "cache_misses": res.misses,
        "note": "conversions (grayscale, CMYK, ...) are counted for files encoded in this run, not cache hits",
    }
    return emb, has, report


def featurize(
    data: HeteroData,
    tables: ShopTables,
    *,
    use_text: bool = True,
    use_image: bool = True,
    text_model: str | Path | None = None,
    image_model: str | Path | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> FeaturizeResult:
    """Encode node features onto a copy of ``data``.

    Args:
        data: the graph from ``build_graph(tables)`` (not modified).
        tables: the tables it was built from (item text, image paths, events).
        use_text: encode item text (title, category, description).
        use_image: encode item images.
        text_model: a local BERT-family checkpoint folder (``None``: bundled all-MiniLM-L6-v2).
        image_model: a local vision checkpoint (``None``: bundled EfficientNet-Lite0).
        cache_dir: embedding cache folder (``None``: ``$SHOPGRAPH_CACHE`` or ``~/.cache/shopgraph``).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when present).
        progress: show progress bars while encoding.

    Returns:
        ``FeaturizeResult(data, report)``: ``data[nt].x`` float32 ``[N_nt, F_nt]`` and
        ``data[nt].feature_names`` for ``user``, ``item``, ``device``; ``data["item"].text_emb``
        ``[I, D_text]`` / ``.image_emb`` ``[I, D_image]`` and bool ``has_text`` / ``has_image`` ``[I]``
        when enabled. ``report`` holds dims, name groups (``[start, stop)`` column ranges), text
        and image statistics, cache hits/misses and seconds per stage.
    """
    for nt in ("user", "item", "device"):
        if nt not in data.node_types or "ids" not in data[nt]:
            raise ValueError(f"data: expected node type {nt!r} with .ids, as built by build_graph (got {data.node_types})")
    out = copy.copy(data)  # shallow: new stores, so setting attributes leaves `data` untouched
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {}

    t0 = time.perf_counter()
    behaviour = behaviour_features(tables, data)
    seconds["behaviour"] = time.perf_counter() - t0

    items = _items_in_graph_order(data, tables)
    blocks: list[tuple[str, np.ndarray, list[str]]] = []
    cache = EmbeddingCache(cache_dir) if (use_text or use_image) else None
    try:
        if use_text and cache is not None:
            t0 = time.perf_counter()
            emb, has, report["text"] = _text_block(items, text_model, cache, device, progress)
            seconds["text"] = time.perf_counter() - t0
            blocks.append(("text", emb, [f"text_{k}" for k in range(emb.shape[1])]))
            blocks.append(("has_text", has[:, None].astype(np.float32), ["has_text"]))
            out["item"].text_emb = torch.from_numpy(emb)
            out["item"].has_text = torch.from_numpy(has)
        if use_image and cache is not None:
            t0 = time.perf_counter()
            emb, has, report["image"] = _image_block(items, tables, image_model, cache, device, progress)
            seconds["image"] = time.perf_counter() - t0
            blocks.append(("image", emb, [f"image_{k}" for k in range(emb.shape[1])]))
            blocks.append(("has_image", has[:, None].astype(np.float32), ["has_image"]))
            out["item"].image_emb = torch.from_numpy(emb)
            out["item"].has_image = torch.from_numpy(has)
    finally:
        if cache is not None:
            cache.close()
    blocks.append(("behaviour", behaviour.item.x, behaviour.item.names))

    groups: dict[str, dict[str, list[int]]] = {}
    dims: dict[str, int] = {}
    per_type = {
        "item": blocks,
        "user": [("behaviour", behaviour.user.x, behaviour.user.names)],
        "device": [("behaviour", behaviour.device.x, behaviour.device.names)],
    }
    for nt, parts in per_type.items():
        n = int(data[nt].num_nodes)
        start = 0
        groups[nt] = {}
        for group, values, _ in parts:
            if values.shape[0] != n:
                raise ValueError(f"{nt} features {group!r}: expected {n} rows (got {values.shape[0]})")
            groups[nt][group] = [start, start + values.shape[1]]
            start += values.shape[1]
        x = np.concatenate([v for _, v, _ in parts], axis=1).astype(np.float32) if parts else np.zeros((n, 0))
        out[nt].x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out[nt].feature_names = [name for _, _, names in parts for name in names]
        dims[nt] = int(x.shape[1])
    report["dims"] = dims
    report["groups"] = groups
    report["behaviour_names"] = {
        "user": behaviour.user.names, "item": behaviour.item.names, "device": behaviour.device.names,
    }
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    logger.info("features: %s", ", ".join(f"{nt} {d}" for nt, d in dims.items()))
    return FeaturizeResult(out, report)
