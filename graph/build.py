"""Tables -> one ``HeteroData`` carrier, with a leak-free split.

The graph holds one edge per event, each tagged with the period it falls into (``.split``:
0 train, 1 val, 2 test). Models never read those edges directly: they ask
:func:`message_passing_graph` for the edges visible when predicting a split and
:func:`target_pairs` for the supervision pairs of a split. That is the single place where
leakage is prevented, and ``tests/graph/test_build.py`` checks it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.schema import REV_PREFIX, USES, ShopTables

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
EdgeType = tuple[str, str, str]


def _indexer(ids: pd.Series, values: pd.Series, what: str) -> np.ndarray:
    """Map external ids to node indices; raise naming the first unknown id."""
    idx = pd.Index(ids).get_indexer(values)
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        raise ValueError(
            f"{what}: {bad.size:,} of {len(values):,} values are unknown ids "
            f"(first: {values.iloc[bad[0]]!r}, row {bad[0] + 1}); run `shopgraph validate` to repair"
        )
    return idx.astype(np.int64)


def _temporal_split(
    events: pd.DataFrame, is_target: np.ndarray, val_frac: float, test_frac: float
) -> tuple[np.ndarray, list[int]]:
    times = events["timestamp"].to_numpy(dtype=np.int64)
    target_times = times[is_target]
    # Cuts at quantiles of the *target* events' times, so val and test each hold about
    # val_frac / test_frac of the purchases; every other event falls into the period it is in.
    t_val = int(np.quantile(target_times, 1.0 - val_frac - test_frac, method="lower"))
    t_test = int(np.quantile(target_times, 1.0 - test_frac, method="lower"))
    if t_test <= t_val:
        t_test = t_val + 1
    split = np.zeros(len(events), dtype=np.uint8)
    split[times >= t_val] = 1
    split[times >= t_test] = 2
    return split, [t_val, t_test]


def _random_split(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    is_target: np.ndarray,
    num_items: int,
    val_frac: float,
    test_frac: float,
    seed: int,
) -> np.ndarray:
    """Seeded per-user split of the distinct target pairs; other events follow their pair."""
    pair_key = user_idx * num_items + item_idx
    target_keys = np.unique(pair_key[is_target])
    rng = np.random.default_rng(seed)
    shuffled = target_keys[rng.permutation(target_keys.size)]
    users = shuffled // num_items
    order = np.argsort(users, kind="stable")
    shuffled, users = shuffled[order], users[order]
    # position of each pair within its user's shuffled list, and the user's pair count
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    counts = np.diff(np.r_[starts, users.size])
    pos = np.arange(users.size) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    n_test = np.floor(n * test_frac + 0.5).astype(np.int64)
    n_val = np.floor(n * val_frac + 0.5).astype(np.int64)
    # keep at least one training pair per user
    n_val = np.minimum(n_val, np.maximum(n - 1 - n_test, 0))
    n_test = np.minimum(n_test, n - 1)
    pair_split = np.zeros(users.size, dtype=np.uint8)
    pair_split[pos < n_test + n_val] = 1
    pair_split[pos < n_test] = 2
    lookup = pd.Series(pair_split, index=shuffled)
    split = lookup.reindex(pair_key).fillna(0).to_numpy(dtype=np.uint8)
    return split


def event_split(
    tables: ShopTables,
    *,
    target: str = "purchase",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, str, list[int]]:
    """The period (0 train, 1 val, 2 test) of every row of ``tables.events``.

    Returns:
        ``(split [E] uint8, kind, split_times)`` where kind is ``"temporal"`` (then split_times is
        ``[t_val, t_test]``) or ``"random"`` (split_times is empty).
    """
    if not 0.0 <= val_frac < 1.0 or not 0.0 < test_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise ValueError(
            f"val_frac and test_frac: expected fractions with 0 < val+test < 1 (got {val_frac}, {test_frac})"
        )
    events = tables.events
    types = events["event_type"].to_numpy()
    is_target = types == target
    if not is_target.any():
        found = ", ".join(sorted(map(str, pd.unique(types))))
        raise ValueError(f"target: no events of type {target!r} in events.event_type (found: {found})")
    if tables.has_timestamps:
        split, times = _temporal_split(events, is_target, val_frac, test_frac)
        return split, "temporal", times
    users = _indexer(tables.users["user_id"], events["user_id"], "events.user_id")
    items = _indexer(tables.items["item_id"], events["item_id"], "events.item_id")
    split = _random_split(users, items, is_target, len(tables.items), val_frac, test_frac, seed)
    return split, "random", []


def _stratified_masks(y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = [np.zeros(y.size, dtype=bool) for _ in range(3)]
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(idx.size)]
        n_train = int(round(idx.size * fractions[0]))
        n_val = int(round(idx.size * fractions[1]))
        masks[0][idx[:n_train]] = True
        masks[1][idx[n_train : n_train + n_val]] = True
        masks[2][idx[n_train + n_val :]] = True
    return masks


def _set_edges(
    data: HeteroData, edge_type: EdgeType, src: np.ndarray, dst: np.ndarray, split: np.ndarray,
    time: np.ndarray | None,
) -> None:
    rev: EdgeType = (edge_type[2], REV_PREFIX + edge_type[1], edge_type[0])
    for et, (a, b) in ((edge_type, (src, dst)), (rev, (dst, src))):
        store = data[et]
        store.edge_index = torch.from_numpy(np.stack([a, b]).astype(np.int64))
        store.split = torch.from_numpy(split.astype(np.uint8))
        if time is not None:
            store.time = torch.from_numpy(time.astype(np.int64))


def build_graph(
    tables: ShopTables,
    *,
    target: str = "purchase",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    label_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> HeteroData:
    """Build the user–item–device graph from validated tables.

    Args:
        tables: loaded, validated tables (:func:`shopgraph.graph.load.load_tables`).
        target: the event type to recommend; its events are split into train/val/test.
        val_frac, test_frac: shares of target events in the validation and test periods.
        label_fractions: train/val/test shares of labelled users (stratified by class).
        seed: seeds the random split (no timestamps) and the fraud masks.

    Returns:
        A ``HeteroData`` as described in ``docs/ARCHITECTURE.md``.
    """
    users, items, devices, events = tables.users, tables.items, tables.devices, tables.events
    if len(events) == 0:
        raise ValueError("events: the table is empty; nothing to build a graph from")
    u = _indexer(users["user_id"], events["user_id"], "events.user_id")
    i = _indexer(items["item_id"], events["item_id"], "events.item_id")
    split, kind, split_times = event_split(
        tables, target=target, val_frac=val_frac, test_frac=test_frac, seed=seed
    )
    times = events["timestamp"].to_numpy(dtype=np.int64) if tables.has_timestamps else None

    data = HeteroData()
    data["user"].ids = users["user_id"].tolist()
    data["user"].num_nodes = len(users)
    data["item"].ids = items["item_id"].tolist()
    data["item"].num_nodes = len(items)
    if "category" in items.columns:
        # item groups for the model's group-mix channel; items without a category share one group ""
        codes, names = pd.factorize(items["category"].fillna("").astype(str), sort=True)
        data["item"].group = torch.from_numpy(codes.astype(np.int64))
        data["item"].group_names = [str(n) for n in names]
    data["device"].ids = devices["device_id"].tolist()
    data["device"].num_nodes = len(devices)

    etypes = events["event_type"].to_numpy()
    for et in sorted(pd.unique(etypes)):
        m = etypes == et
        _set_edges(data, ("user", str(et), "item"), u[m], i[m], split[m], None if times is None else times[m])

    # user -- uses -- device: one edge per distinct pair; its time/split are those of first use.
    dev_col = events["device_id"].to_numpy() if "device_id" in events.columns else None
    if dev_col is not None:
        has_dev = dev_col != ""
        if has_dev.any():
            d = _indexer(devices["device_id"], events["device_id"][has_dev], "events.device_id")
            frame = pd.DataFrame({"u": u[has_dev], "d": d, "split": split[has_dev]})
            if times is not None:
                frame["time"] = times[has_dev]
            agg = frame.groupby(["u", "d"], sort=True).min()
            pairs = np.asarray(agg.index.to_list(), dtype=np.int64).reshape(-1, 2)
            _set_edges(
                data, ("user", USES, "device"), pairs[:, 0], pairs[:, 1],
                agg["split"].to_numpy(), agg["time"].to_numpy() if times is not None else None,
            )

    # fraud labels
    y = np.full(len(users), -1, dtype=np.int64)
    ring = np.full(len(users), -1, dtype=np.int64)
    ring_names: list[str] = []
    if tables.labels is not None and len(tables.labels):
        lab_u = _indexer(users["user_id"], tables.labels["user_id"], "labels.user_id")
        y[lab_u] = tables.labels["is_fraud"].to_numpy(dtype=np.int64)
        if "ring_id" in tables.labels.columns:
            ring_col = tables.labels["ring_id"].fillna("").astype(str).to_numpy()
            has_ring = ring_col != ""
            ring_names = sorted(set(ring_col[has_ring].tolist()))
            codes = pd.Index(ring_names).get_indexer(ring_col[has_ring])
            ring[lab_u[has_ring]] = codes
    masks = _stratified_masks(y, label_fractions, seed)
    data["user"].y = torch.from_numpy(y)
    data["user"].train_mask = torch.from_numpy(masks[0])
    data["user"].val_mask = torch.from_numpy(masks[1])
    data["user"].test_mask = torch.from_numpy(masks[2])
    data["user"].ring_id = torch.from_numpy(ring)
    data.ring_names = ring_names

    data.target = target
    data.split_kind = kind
    data.split_times = split_times
    data.event_split = torch.from_numpy(split)
    if kind == "random":
        warnings.warn(
            "events have no timestamps: using a seeded per-user random split of the target pairs",
            stacklevel=2,
        )
    for name in ("train", "val", "test"):
        if target_pairs(data, name).size(1) == 0:  # type: ignore[arg-type]
            warnings.warn(f"the {name} split of {target!r} has no new (user, item) pairs", stacklevel=2)
    logger.info(
        "graph: %d users, %d items, %d devices, %d events (%s split)",
        len(users), len(items), len(devices), len(events), kind,
    )
    return data


def target_edge_type(data: HeteroData) -> EdgeType:
    return ("user", str(data.target), "item")


def id_index(data: HeteroData, node_type: str) -> dict[str, int]:
    """External id -> node index for ``node_type``."""
    return {k: n for n, k in enumerate(data[node_type].ids)}


def _limit(split: Split) -> int:
    if split not in SPLIT_CODES:
        raise ValueError(f"split: expected 'train', 'val' or 'test' (got {split!r})")
    # Predicting val sees train-period edges only; predicting test also sees the val period.
    return {"train": 0, "val": 0, "test": 1}[split]


def message_passing_graph(data: HeteroData, split: Split = "train") -> HeteroData:
    """A copy of ``data`` holding only the edges visible when predicting ``split``."""
    limit = _limit(split)
    out = copy.copy(data)
    for et in data.edge_types:
        store = data[et]
        if "split" not in store:
            continue
        keep = store.split <= limit
        new = out[et]
        for key in ("edge_index", "time", "split", "edge_attr"):
            if key in store:
                value = store[key]
                new[key] = value[:, keep] if key == "edge_index" else value[keep]
    return out


def target_pairs(data: HeteroData, split: Split, *, new_only: bool = True) -> Tensor:
    """Distinct (user, item) target pairs of one split, ``LongTensor[2, P]``, sorted.

    Args:
        data: the full graph from :func:`build_graph`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        new_only: for val/test, drop pairs already seen as targets in an earlier period
            (a re-purchase of a known item cannot be ranked when seen items are excluded).
    """
    code = SPLIT_CODES.get(split)
    if code is None:
        raise ValueError(f"split: expected 'train', 'val' or 'test' (got {split!r})")
    store = data[target_edge_type(data)]
    ei, sp = store.edge_index, store.split
    num_items = int(data["item"].num_nodes)
    keys = ei[0] * num_items + ei[1]
    mine = torch.unique(keys[sp == code])
    if new_only and code > 0:
        earlier = torch.unique(keys[sp < code])
        mine = mine[~torch.isin(mine, earlier)]
    return torch.stack([mine // num_items, mine % num_items])


def visible_test_pairs(data: HeteroData) -> Tensor:
    """Target pairs a model may know when predicting test (train + val periods), ``[2, P]``."""
    return torch.unique(torch.cat([target_pairs(data, "train"), target_pairs(data, "val", new_only=False)], 1), dim=1)


def event_clock(data: HeteroData) -> int | None:
    """The time event ages are measured from (the ``history`` tower's decay): ``data.reference_time``
    when set (a subgraph carries the clock of the graph it was cut from, :func:`induced_subgraph`),
    else the latest time of the graph's user→item events; None when they carry no times."""
    clock = getattr(data, "reference_time", None)
    if clock is not None:
        return int(clock)
    times = [data[et].time for et in data.edge_types
             if et[0] == "user" and et[2] == "item" and "time" in data[et] and data[et].time.numel()]
    return max(int(t.max()) for t in times) if times else None


def induced_subgraph(data: HeteroData, nodes: Mapping[str, Tensor | None],
                     edge_types: list[EdgeType] | None = None) -> HeteroData:
    """The subgraph of ``data`` on the given nodes, with every edge among them.

    Args:
        data: the graph.
        nodes: per node type, the distinct node indices to keep, in their new order (``n_id``
            on the subgraph: id embeddings are looked up by it); None keeps every node of that
            type as it is (its tensors are shared, not copied). Node types not named keep no nodes.
        edge_types: the edge types to carry (default: all); an edge is kept when both ends are.

    Node and edge tensors with one row per node or edge (``x``, ``group``, ``time``, ...) are
    sliced along; the graph's clock (:func:`event_clock`) travels as ``reference_time``, so
    time-decayed embeddings of the kept nodes do not change.
    """
    sub = HeteroData()
    remap: dict[str, Tensor | None] = {}
    # indices live where the graph does (a training graph may sit on the GPU)
    device = next((data[et].edge_index.device for et in data.edge_types), torch.device("cpu"))
    for nt in data.node_types:
        store = data[nt]
        n = int(store.num_nodes)
        idx = nodes[nt] if nt in nodes else torch.empty(0, dtype=torch.long)
        if idx is None:
            for key, value in store.items():
                sub[nt][key] = value
            sub[nt].num_nodes = n
            remap[nt] = None
            continue
        idx = idx.to(device=device, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"nodes[{nt!r}]: expected indices in [0, {n}) (got {int(idx.min())}..{int(idx.max())})")
        new = torch.full((n,), -1, dtype=torch.long, device=device)
        new[idx] = torch.arange(idx.numel(), device=device)
        if int((new >= 0).sum()) != idx.numel():
            raise ValueError(f"nodes[{nt!r}]: expected distinct indices (got repeats)")
        remap[nt] = new
        sub[nt].num_nodes = idx.numel()
        sub[nt].n_id = idx
        for key, value in store.items():
            if key != "n_id" and isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == n:
                sub[nt][key] = value[idx.to(value.device)]
    for et in data.edge_types if edge_types is None else edge_types:
        if et not in data.edge_types:
            continue
        src, _, dst = et
        store = data[et]
        ei = store.edge_index
        mask = torch.ones(ei.size(1), dtype=torch.bool, device=ei.device)
        ends = [ei[0], ei[1]]
        for k, nt in enumerate((src, dst)):
            r = remap[nt]
            if r is not None:
                mask &= r[ei[k]] >= 0
        for k, nt in enumerate((src, dst)):
            r = remap[nt]
            ends[k] = ei[k][mask] if r is None else r[ei[k][mask]]
        n_edges = ei.size(1)
        sub[et].edge_index = torch.stack(ends)
        for key, value in store.items():
            if key != "edge_index" and isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == n_edges:
                sub[et][key] = value[mask]
    clock = event_clock(data)
    if clock is not None:
        sub.reference_time = clock
    return sub


def train_events(tables: ShopTables, data: HeteroData) -> pd.DataFrame:
    """The rows of ``tables.events`` in the training period (what features may use)."""
    split = data.event_split
    if len(tables.events) != int(split.numel()):
        raise ValueError(
            f"tables: {len(tables.events):,} events do not match the graph's {int(split.numel()):,}; "
            "build the graph from these tables"
        )
    return tables.events[split.numpy() == 0]
