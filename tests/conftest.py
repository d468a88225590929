"""Shared tiny, seeded fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopgraph.graph.schema import ShopTables


def make_tables(
    n_users: int = 40, n_items: int = 30, n_events: int = 600, *, timestamps: bool = True, seed: int = 0,
    root: Path | None = None,
) -> ShopTables:
    """A tiny normalised shop: three event types, devices, labels with two rings."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({
        "user_id": [f"u{k:03d}" for k in range(n_users)],
        "created_at": rng.integers(1_600_000_000, 1_700_000_000, n_users).astype(np.float64),
    })
    cats = np.array(["electronics", "books", "shoes"])
    items = pd.DataFrame({
        "item_id": [f"i{k:03d}" for k in range(n_items)],
        "title": [f"item {k}" for k in range(n_items)],
        "description": ["" for _ in range(n_items)],
        "category": cats[rng.integers(0, 3, n_items)],
        "price": rng.uniform(1, 100, n_items),
        "image": ["" for _ in range(n_items)],
    })
    devices = pd.DataFrame({"device_id": [f"d{k:03d}" for k in range(n_users // 2)]})
    ev_u = rng.integers(0, n_users, n_events)
    events = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[ev_u],
        "item_id": items["item_id"].to_numpy()[rng.integers(0, n_items, n_events)],
        "event_type": rng.choice(["view", "cart", "purchase"], n_events, p=[0.6, 0.2, 0.2]),
        "device_id": devices["device_id"].to_numpy()[ev_u // 2],
        "amount": rng.uniform(1, 100, n_events),
    })
    if timestamps:
        events.insert(3, "timestamp", np.sort(rng.integers(1_700_000_000, 1_707_776_000, n_events)))
    is_fraud = np.zeros(n_users, dtype=np.int64)
    is_fraud[:8] = 1
    ring = np.array([""] * n_users, dtype=object)
    ring[:4] = "ring_a"
    ring[4:7] = "ring_b"
    labels = pd.DataFrame({"user_id": users["user_id"], "is_fraud": is_fraud, "ring_id": ring.astype(str)})
    return ShopTables(users=users, items=items, devices=devices, events=events, labels=labels,
                      root=root or Path("."))


@pytest.fixture
def tiny_tables() -> ShopTables:
    return make_tables()
