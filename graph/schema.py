"""The input schema: five tables, their required and optional columns, and the loaded form.

See ``docs/ARCHITECTURE.md`` for the normalised dtypes every frame has after
:func:`shopgraph.graph.load.load_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

TABLE_NAMES: tuple[str, ...] = ("users", "items", "devices", "events", "labels")
REQUIRED_TABLES: tuple[str, ...] = ("users", "items", "events")
OPTIONAL_TABLES: tuple[str, ...] = ("devices", "labels")

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "items": ("item_id",),
    "devices": ("device_id",),
    "events": ("user_id", "item_id", "event_type"),
    "labels": ("user_id", "is_fraud"),
}

OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("created_at",),
    "items": ("title", "description", "category", "price", "image"),
    "devices": (),
    "events": ("timestamp", "device_id", "amount"),
    "labels": ("ring_id",),
}

# The shop's own text columns (``users``, ``devices``) with at most this many distinct values are
# one-hot encoded as features; with more (free text, ids) they are left out of the features, and
# the loader reports it (``docs/input_tables.md``).
MAX_CATEGORIES: int = 32

# Categories treated as high-risk (resaleable) by behaviour features and ring scoring.
HIGH_RISK_CATEGORIES: frozenset[str] = frozenset({"electronics", "gift cards", "gift_cards", "giftcards"})

NODE_TYPES: tuple[str, ...] = ("user", "item", "device")
USES: str = "uses"
REV_PREFIX: str = "rev_"


@dataclass
class ShopTables:
    """A shop's tables after loading and validation (normalised dtypes).

    Attributes:
        users: one row per user, ``user_id`` unique.
        items: one row per item, ``item_id`` unique.
        devices: one row per device, ``device_id`` unique (includes devices seen only in events).
        events: one row per event, every id known.
        labels: fraud labels, or ``None`` when the shop has none.
        root: the folder the tables were read from; item images resolve against it.
    """

    users: pd.DataFrame
    items: pd.DataFrame
    devices: pd.DataFrame
    events: pd.DataFrame
    labels: pd.DataFrame | None
    root: Path

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.events.columns

    def image_path(self, relative: str) -> Path | None:
        """Absolute path of an item image, or ``None`` when the item has none."""
        return (self.root / relative) if relative else None
