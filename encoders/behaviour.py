"""Behaviour statistics per node, from training-period events only.

Every statistic reads ``shopgraph.graph.build.train_events(tables, data)`` (the split-0 rows of
``tables.events``) plus static table columns (``users.created_at``, ``items.price``,
``items.category``), so nothing from the validation or test periods reaches a feature; the event
types that become columns are those seen in training, so even a new event type appearing later
leaves the feature set unchanged. ``tests/encoders/test_behaviour.py`` checks this.

The shop's own static table columns are added (numeric ones as they are, categorical ones with at
most ``MAX_CATEGORIES`` values one-hot; a column left out is logged as a warning, and
``shopgraph.graph.load`` reports it in the validation report too). Counts and amounts are ``log1p``-scaled, then every non-flag column is standardised with the mean
and standard deviation over the nodes of its type (std floored, so constant columns become 0);
unknown values (no account creation time, no price) become the mean (0 after standardising) and
a ``has_*`` flag says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import pandas as pd
from torch_geometric.data import HeteroData

from shopgraph.graph.build import train_events
from shopgraph.graph.schema import HIGH_RISK_CATEGORIES, MAX_CATEGORIES, ShopTables
from shopgraph.graph.wording import FeatureFacts

logger = logging.getLogger(__name__)

STD_FLOOR = 1e-3
DAY = 86_400
NIGHT_HOURS = (0, 6)  # [start, end) in UTC


class NodeFeatures(NamedTuple):
    """Features of one node type: ``x`` float32 ``[N, F]`` and ``names`` (``F`` strings);
    ``scales``: ``{name: (a, b)}`` with ``x == a * raw + b`` for each standardised column (not the
    0/1 flags), so a value the scorer read goes back to the column's unit."""

    x: np.ndarray
    names: list[str]
    scales: Mapping[str, tuple[float, float]] = MappingProxyType({})


class BehaviourFeatures(NamedTuple):
    """Behaviour features of the three node types."""

    user: NodeFeatures
    item: NodeFeatures
    device: NodeFeatures


def _standardise(columns: dict[str, np.ndarray], n: int, flags: set[str] | None = None) -> NodeFeatures:
    """Stack columns into ``[n, F]``; standardise all but 0/1 flags (``has_*`` and ``flags``), NaN -> 0."""
    names = list(columns)
    flags = flags or set()
    x = np.zeros((n, len(names)), dtype=np.float32)
    scales: dict[str, tuple[float, float]] = {}
    for j, name in enumerate(names):
        v = np.asarray(columns[name], dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"feature {name!r}: expected {n} values (got shape {v.shape})")
        if name.startswith("has_") or name in flags:
            x[:, j] = np.nan_to_num(v, nan=0.0)
            continue
        known = np.isfinite(v)
        if known.any():
            mean = float(v[known].mean())
            std = max(float(v[known].std()), STD_FLOOR)
            x[known, j] = (v[known] - mean) / std
            scales[name] = (1.0 / std, -mean / std)
    return NodeFeatures(x, names, MappingProxyType(scales))


def _table_extras(
    table: pd.DataFrame, id_col: str, ids: pd.Index, prefix: str, skip: tuple[str, ...],
    table_name: str = "", *, level: int = logging.WARNING,
) -> tuple[dict[str, np.ndarray], set[str]]:
    """The shop's own static columns: numeric ones as they are, categorical ones one-hot.

    Categorical columns with more than ``MAX_CATEGORIES`` distinct values (free text, ids), or with
    no value, are left out, logged at ``level`` naming ``<table_name>.<column>``.
    (``load_tables`` has already turned columns of numbers with a few bad values into numbers.)
    Returns ``(columns, names of the one-hot flags)``, rows in ``ids`` order.
    """
    cols: dict[str, np.ndarray] = {}
    flags: set[str] = set()
    frame = table.drop_duplicates(id_col).set_index(id_col).reindex(ids)
    for col in frame.columns:
        if col in skip:
            continue
        series = frame[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            cols[f"{prefix}{col}"] = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            continue
        text = series.fillna("").astype(str).str.strip()
        values = sorted(v for v in pd.unique(text) if v)
        if not values or len(values) > MAX_CATEGORIES:
            why = (f"{len(values):,} distinct text values, more than the {MAX_CATEGORIES} one-hot encoded"
                   if values else "no values")
            logger.log(level, "%s.%s: %s; the column is left out of the features",
                       table_name or prefix.rstrip("_"), col, why)
            continue
        for v in values:
            name = f"{prefix}{col}={v}"
            cols[name] = (text == v).to_numpy(dtype=np.float64)
            flags.add(name)
    return cols, flags


def _count(index: pd.Index, keys: pd.Series) -> np.ndarray:
    return keys.value_counts().reindex(index, fill_value=0).to_numpy(dtype=np.float64)


def _train_cut(data: HeteroData, events: pd.DataFrame) -> float | None:
    """The time features are measured at: the start of the validation period."""
    times = getattr(data, "split_times", None)
    if times:
        return float(times[0])
    if "timestamp" in events.columns and len(events):
        return float(events["timestamp"].max()) + 1.0
    return None


def user_features(tables: ShopTables, data: HeteroData, events: pd.DataFrame | None = None) -> NodeFeatures:
    """Per-user behaviour statistics (see module docstring), rows in ``data["user"].ids`` order.

    Args:
        tables: the tables the graph was built from.
        data: the graph from ``build_graph(tables)``.
        events: the training-period events; computed with ``train_events`` when ``None``.

    Returns:
        ``NodeFeatures(x float32 [U, F], names)``.
    """
    cols, flags = user_feature_columns(tables, data, events)
    return _standardise(cols, len(data["user"].ids), flags)


def user_feature_columns(
    tables: ShopTables, data: HeteroData, events: pd.DataFrame | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """The columns of :func:`user_features` before standardising: ``({name: float64 [U]}, names of
    the one-hot flags)``, so that explanations can show the raw values (``expm1`` of a ``log_``
    column is the count or amount itself, e.g. the account age in days)."""
    ev = train_events(tables, data) if events is None else events
    ids = pd.Index(data["user"].ids)
    n = len(ids)
    target = str(getattr(data, "target", "purchase"))
    has_time = "timestamp" in ev.columns
    cut = _train_cut(data, ev)
    cols: dict[str, np.ndarray] = {}

    # account age at the train cut (days); unknown without a creation time or timestamps
    created = tables.users.set_index("user_id")["created_at"] if "created_at" in tables.users.columns else None
    if created is not None and cut is not None:
        c = pd.to_numeric(created, errors="coerce").reindex(ids).to_numpy(dtype=np.float64)
        age = np.clip((cut - c) / DAY, 0.0, None)  # created after the cut: age 0, not negative
    else:
        age = np.full(n, np.nan)
    cols["log_account_age_days"] = np.log1p(age)
    cols["has_account_age"] = np.isfinite(age).astype(np.float64)

    cols["log_n_events"] = np.log1p(_count(ids, ev["user_id"]))
    for et in sorted(map(str, pd.unique(ev["event_type"]))):
        cols[f"log_n_{et}"] = np.log1p(_count(ids, ev.loc[ev["event_type"] == et, "user_id"]))

    purchases = ev[ev["event_type"] == target]
    amount_stats = np.zeros((n, 3))
    if "amount" in ev.columns and len(purchases):
        amt = purchases[["user_id"]].assign(a=pd.to_numeric(purchases["amount"], errors="coerce").clip(lower=0))
        g = amt.dropna(subset=["a"]).groupby("user_id")["a"].agg(["mean", "max", "sum"]).reindex(ids)
        amount_stats = np.nan_to_num(g.to_numpy(dtype=np.float64), nan=0.0)
    cols["log_amount_mean"] = np.log1p(amount_stats[:, 0])
    cols["log_amount_max"] = np.log1p(amount_stats[:, 1])
    cols["log_amount_sum"] = np.log1p(amount_stats[:, 2])

    night = np.zeros(n)
    last24 = np.zeros(n)
    if has_time and len(ev):
        hour = (ev["timestamp"].to_numpy(dtype=np.int64) % DAY) // 3600
        is_night = (hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])
        night = (
            pd.Series(is_night, index=ev.index).groupby(ev["user_id"]).mean().reindex(ids).fillna(0.0).to_numpy()
        )
        if len(purchases):
            last = ev.groupby("user_id")["timestamp"].max()
            t = purchases["timestamp"].to_numpy(dtype=np.int64)
            recent = t >= last.reindex(purchases["user_id"]).to_numpy(dtype=np.int64) - DAY
            last24 = _count(ids, purchases.loc[recent, "user_id"])
    cols["night_share"] = night
    cols["log_purchases_last_24h"] = np.log1p(last24)

    risky = np.zeros(n)
    if len(purchases) and "category" in tables.items.columns:
        cat = tables.items.set_index("item_id")["category"].astype(str).str.strip().str.lower()
        hr = cat.isin(HIGH_RISK_CATEGORIES).reindex(purchases["item_id"]).fillna(False).to_numpy(dtype=bool)
        risky = pd.Series(hr, index=purchases.index).groupby(purchases["user_id"]).mean().reindex(ids)
        risky = risky.fillna(0.0).to_numpy(dtype=np.float64)
    cols["high_risk_purchase_share"] = risky

    n_dev = np.zeros(n)
    max_shared = np.zeros(n)
    if "device_id" in ev.columns:
        pairs = ev.loc[ev["device_id"] != "", ["user_id", "device_id"]].drop_duplicates()
        if len(pairs):
            n_dev = _count(ids, pairs["user_id"])
            accounts = pairs.groupby("device_id")["user_id"].nunique()
            shared = pairs.assign(k=accounts.reindex(pairs["device_id"]).to_numpy())
            max_shared = shared.groupby("user_id")["k"].max().reindex(ids).fillna(0).to_numpy(dtype=np.float64)
    cols["log_n_devices"] = np.log1p(n_dev)
    cols["log_max_accounts_per_device"] = np.log1p(max_shared)

    # the shop's own user columns (country, signup channel, scores ...)
    extras, flags = _table_extras(tables.users, "user_id", ids, "user_", ("created_at",), "users")
    cols.update(extras)
    return cols, flags


def device_features(tables: ShopTables, data: HeteroData, events: pd.DataFrame | None = None) -> NodeFeatures:
    """Per-device statistics: accounts using it, accounts created on it, events on it (log1p).

    The devices table's own columns (``os``, ``kind`` ...) are added, categorical ones one-hot.

    An account counts as created on a device when its first training-period event (by time, or
    row order without timestamps) used that device.

    Returns:
        ``NodeFeatures(x float32 [V, F], names)``, rows in ``data["device"].ids`` order.
    """
    ev = train_events(tables, data) if events is None else events
    ids = pd.Index(data["device"].ids)
    n = len(ids)
    users = np.zeros(n)
    created = np.zeros(n)
    n_events = np.zeros(n)
    if "device_id" in ev.columns and len(ev):
        with_dev = ev[ev["device_id"] != ""]
        n_events = _count(ids, with_dev["device_id"])
        users = with_dev.groupby("device_id")["user_id"].nunique().reindex(ids).fillna(0).to_numpy(dtype=np.float64)
        ordered = ev.sort_values("timestamp", kind="stable") if "timestamp" in ev.columns else ev
        first = ordered.drop_duplicates("user_id", keep="first")
        created = _count(ids, first.loc[first["device_id"] != "", "device_id"])
    cols = {"log_n_accounts": np.log1p(users), "log_n_accounts_created": np.log1p(created), "log_n_events": np.log1p(n_events)}
    extras, flags = _table_extras(tables.devices, "device_id", ids, "device_", (), "devices")  # os, kind ...
    cols.update(extras)
    return _standardise(cols, n, flags)


def item_features(tables: ShopTables, data: HeteroData, events: pd.DataFrame | None = None) -> NodeFeatures:
    """Per-item popularity (log1p counts per training event type, distinct users), price, category one-hot.

    Returns:
        ``NodeFeatures(x float32 [I, F], names)``, rows in ``data["item"].ids`` order.
    """
    ev = train_events(tables, data) if events is None else events
    ids = pd.Index(data["item"].ids)
    n = len(ids)
    cols: dict[str, np.ndarray] = {"log_n_events": np.log1p(_count(ids, ev["item_id"]))}
    for et in sorted(map(str, pd.unique(ev["event_type"]))):
        cols[f"log_n_{et}"] = np.log1p(_count(ids, ev.loc[ev["event_type"] == et, "item_id"]))
    cols["log_n_users"] = np.log1p(
        ev.groupby("item_id")["user_id"].nunique().reindex(ids).fillna(0).to_numpy(dtype=np.float64)
    )
    if "price" in tables.items.columns:
        price = pd.to_numeric(tables.items.set_index("item_id")["price"], errors="coerce").reindex(ids)
        p = price.to_numpy(dtype=np.float64)
    else:
        p = np.full(n, np.nan)
    cols["log_price"] = np.log1p(np.clip(p, 0.0, None))
    cols["has_price"] = np.isfinite(p).astype(np.float64)
    # category one-hot (the text block has it too, but text may be switched off); a shop with more
    # categories than MAX_CATEGORIES keeps them in the text block only: logged at INFO, no data problem
    extras, flags = _table_extras(tables.items[["item_id", "category"]] if "category" in tables.items.columns
                                  else tables.items[["item_id"]], "item_id", ids, "item_", (), "items",
                                  level=logging.INFO)
    cols.update(extras)
    return _standardise(cols, n, flags)


def behaviour_features(tables: ShopTables, data: HeteroData) -> BehaviourFeatures:
    """Behaviour features of users, items and devices from the training period.

    Args:
        tables: the tables ``data`` was built from (``build_graph(tables)``).
        data: the graph; its ``event_split`` selects the training events.

    Returns:
        ``BehaviourFeatures(user, item, device)``, each ``NodeFeatures(x float32 [N, F], names)``.
    """
    ev = train_events(tables, data)
    logger.info("behaviour features from %d of %d events (training period)", len(ev), len(tables.events))
    return BehaviourFeatures(
        user=user_features(tables, data, ev),
        item=item_features(tables, data, ev),
        device=device_features(tables, data, ev),
    )


def affine_fit(raw: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    """``(a, b)`` with ``x == a * raw + b`` (to 1e-3) over the rows, or ``None`` when no such map fits."""
    if raw.size < 2 or np.ptp(raw) < 1e-12:
        return None
    a, b = np.polyfit(raw, x, 1)
    if np.abs(a * raw + b - x).max() > 1e-3:
        return None
    return float(a), float(b)


def features_as_of(data: HeteroData) -> str | None:
    """The date (``YYYY-MM-DD``, UTC) the behaviour features are measured at: the end of the
    training period (``data.split_times[0]``); ``None`` for a graph without a time split."""
    times = getattr(data, "split_times", None)
    return time.strftime("%Y-%m-%d", time.gmtime(float(times[0]))) if times else None


def activity_until(data: HeteroData) -> str | None:
    """The date (``YYYY-MM-DD``, UTC) of the graph's last timed event: the fraud scorer's columns
    counted over the graph (the accounts sharing a device and their labels, purchases right after
    viewing or carting, event counts) read every event up to it, where the account's own behaviour
    columns (:func:`features_as_of`) stop at the end of the training period; ``None`` untimed."""
    last = [float(data[et].time.max()) for et in data.edge_types if "time" in data[et] and data[et].time.numel()]
    return time.strftime("%Y-%m-%d", time.gmtime(max(last))) if last else None


def feature_facts(tables: ShopTables, data: HeteroData) -> FeatureFacts:
    """The user columns of :func:`user_feature_columns` that reproduce the graph's
    ``data["user"].x`` (the others are left out: a graph built otherwise), with the map of each
    standardised one, as :class:`shopgraph.graph.wording.FeatureFacts` words them."""
    as_of = features_as_of(data)
    if "x" not in data["user"] or "feature_names" not in data["user"]:
        return FeatureFacts(as_of=as_of)
    ev = train_events(tables, data)  # once, for the users' columns and the items' and devices' scales
    cols, flags = user_feature_columns(tables, data, ev)
    x = np.asarray(data["user"].x, dtype=np.float64)
    raw: dict[str, np.ndarray] = {}
    scales: dict[str, tuple[float, float]] = {}
    for j, name in enumerate(data["user"].feature_names):
        column = cols.get(name)
        if column is None or column.shape != (x.shape[0],):
            continue
        v = np.asarray(column, dtype=np.float64)
        known = np.isfinite(v)
        if name.startswith("has_") or name in flags:
            if np.allclose(np.nan_to_num(v, nan=0.0), x[:, j], atol=1e-4):
                raw[name] = v
            continue
        fit = affine_fit(v[known], x[known, j]) if known.sum() >= 2 else None
        if fit is not None and fit[0] > 0:
            raw[name], scales[name] = v, fit
    node_scales = {nt: _graph_scales(features(tables, data, ev), data, nt)
                   for nt, features in (("item", item_features), ("device", device_features))}
    return FeatureFacts(raw, scales, as_of, node_scales=node_scales)


def _graph_scales(features: NodeFeatures, data: HeteroData, node_type: str) -> dict[str, tuple[float, float]]:
    """``features.scales`` of the columns ``data[node_type].x`` holds as ``features`` has them (the
    others left out: a graph built otherwise)."""
    if node_type not in data.node_types or "x" not in data[node_type]:
        return {}
    names = list(getattr(data[node_type], "feature_names", None) or [])
    x = np.asarray(data[node_type].x, dtype=np.float64)
    where = {name: j for j, name in enumerate(names)}
    return {name: fit for j, name in enumerate(features.names)
            if (fit := features.scales.get(name)) is not None and name in where
            and x.shape[0] == features.x.shape[0] and np.allclose(features.x[:, j], x[:, where[name]], atol=1e-4)}
