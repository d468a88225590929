"""Behaviour features: exact values on a hand-made shop, and no leakage from later periods."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopgraph.encoders.behaviour import STD_FLOOR, behaviour_features
from shopgraph.graph.build import build_graph
from shopgraph.graph.load import load_tables
from shopgraph.graph.schema import ShopTables
from tests.conftest import make_tables

H = 3_600
D = 86_400
T0 = 1_700_006_400  # midnight UTC


def hand_shop() -> ShopTables:
    users = pd.DataFrame({
        "user_id": ["u0", "u1", "u2", "u3"],
        "created_at": [T0 - 10 * D, T0 - 100 * D, T0 + 25 * D, np.nan],
    })
    items = pd.DataFrame({
        "item_id": ["i0", "i1", "i2"], "title": ["a", "b", "c"], "description": ["", "", ""],
        "category": ["Electronics", "books", "gift cards"], "price": [10.0, np.nan, 100.0], "image": ["", "", ""],
    })
    devices = pd.DataFrame({"device_id": ["d0", "d1", "d2"]})
    rows = [  # user, item, type, time, device, amount
        ("u0", "i0", "view", T0 + 1 * H, "d0", np.nan),
        ("u0", "i0", "purchase", T0 + 2 * H, "d0", 10.0),
        ("u0", "i2", "purchase", T0 + 10 * H, "d0", 100.0),
        ("u1", "i1", "view", T0 + 12 * H, "d0", np.nan),
        ("u1", "i1", "purchase", T0 + 13 * H, "d1", 20.0),
        ("u2", "i2", "purchase", T0 + 3 * D + 8 * H, "d2", 50.0),
        ("u2", "i0", "purchase", T0 + 5 * D + 8 * H, "d2", np.nan),
        # later periods: 5 purchases from T0 + 20 days (the validation cut) and a night view
        *[("u3", f"i{k % 3}", "purchase", T0 + 20 * D + k * H, "d2", 999.0) for k in range(5)],
        ("u0", "i1", "view", T0 + 21 * D + 3 * H, "d1", np.nan),
    ]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "device_id", "amount"])
    events["timestamp"] = events["timestamp"].astype(np.int64)
    return ShopTables(users=users, items=items, devices=devices, events=events, labels=None, root=Path("."))


def standardised(raw: list[float]) -> np.ndarray:
    v = np.asarray(raw, dtype=np.float64)
    known = np.isfinite(v)
    out = np.zeros_like(v)
    out[known] = (v[known] - v[known].mean()) / max(v[known].std(), STD_FLOOR)
    return out


def _build(tables: ShopTables, **kwargs: float):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_graph(tables, **kwargs)  # type: ignore[arg-type]


def column(feats, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return feats.x[:, feats.names.index(name)]


def test_hand_computed_values() -> None:
    tables = hand_shop()
    data = _build(tables, val_frac=0.2, test_frac=0.2)
    assert data.split_times[0] == T0 + 20 * D
    b = behaviour_features(tables, data)
    log = np.log1p
    expected_user = {
        "log_account_age_days": standardised([log(30.0), log(120.0), 0.0, np.nan]),
        "has_account_age": np.array([1, 1, 1, 0]),
        "log_n_events": standardised([log(3), log(2), log(2), 0]),
        "log_n_purchase": standardised([log(2), log(1), log(2), 0]),
        "log_n_view": standardised([log(1), log(1), 0, 0]),
        "log_amount_mean": standardised([log(55), log(20), log(50), 0]),
        "log_amount_max": standardised([log(100), log(20), log(50), 0]),
        "log_amount_sum": standardised([log(110), log(20), log(50), 0]),
        "night_share": standardised([2 / 3, 0, 0, 0]),
        "log_purchases_last_24h": standardised([log(2), log(1), log(1), 0]),
        "high_risk_purchase_share": standardised([1.0, 0.0, 1.0, 0.0]),
        "log_n_devices": standardised([log(1), log(2), log(1), 0]),
        "log_max_accounts_per_device": standardised([log(2), log(2), log(1), 0]),
    }
    assert set(b.user.names) == set(expected_user)
    for name, want in expected_user.items():
        np.testing.assert_allclose(column(b.user, name), want, atol=1e-5, err_msg=name)
    expected_device = {
        "log_n_accounts": standardised([log(2), log(1), log(1)]),
        "log_n_accounts_created": standardised([log(2), 0, log(1)]),
        "log_n_events": standardised([log(4), log(1), log(2)]),
    }
    assert b.device.names == list(expected_device)
    for name, want in expected_device.items():
        np.testing.assert_allclose(column(b.device, name), want, atol=1e-5, err_msg=name)
    expected_item = {
        "log_n_events": standardised([log(3), log(2), log(2)]),
        "log_n_purchase": standardised([log(2), log(1), log(2)]),
        "log_n_view": standardised([log(1), log(1), 0]),
        "log_n_users": standardised([log(2), log(1), log(2)]),
        "log_price": standardised([log(11), np.nan, log(101)]),
        "has_price": np.array([1, 0, 1]),
        "item_category=Electronics": np.array([1, 0, 0]),
        "item_category=books": np.array([0, 1, 0]),
        "item_category=gift cards": np.array([0, 0, 1]),
    }
    assert set(b.item.names) == set(expected_item)
    for name, want in expected_item.items():
        np.testing.assert_allclose(column(b.item, name), want, atol=1e-5, err_msg=name)
    for feats in b:
        assert feats.x.dtype == np.float32 and np.isfinite(feats.x).all()
        assert feats.x.shape[1] == len(feats.names)


def test_rows_follow_graph_ids_not_table_order() -> None:
    tables = hand_shop()
    data = _build(tables, val_frac=0.2, test_frac=0.2)
    shuffled = ShopTables(
        users=tables.users.iloc[::-1].reset_index(drop=True), items=tables.items.iloc[[2, 0, 1]].reset_index(drop=True),
        devices=tables.devices, events=tables.events, labels=None, root=tables.root,
    )
    a, b = behaviour_features(tables, data), behaviour_features(shuffled, data)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.x, fb.x)


def test_later_periods_do_not_change_any_feature() -> None:
    tables = make_tables(n_users=60, n_items=40, n_events=900, seed=3)
    data = _build(tables)
    base = behaviour_features(tables, data)
    ev = tables.events.copy()
    later = data.event_split.numpy() > 0
    rng = np.random.default_rng(1)
    # change every field of val/test events except their type and time (which define the periods) ...
    ev.loc[later, "amount"] = ev.loc[later, "amount"] * 3 + 1
    ev.loc[later, "device_id"] = rng.choice(tables.devices["device_id"], int(later.sum()))
    ev.loc[later, "item_id"] = rng.choice(tables.items["item_id"], int(later.sum()))
    ev.loc[later, "user_id"] = rng.choice(tables.users["user_id"], int(later.sum()))
    non_target_later = later & (ev["event_type"] != "purchase").to_numpy()
    ev.loc[non_target_later, "event_type"] = "wishlist"  # a type never seen in training
    # ... and add more val/test events, at night, on one shared device
    t_val = int(data.split_times[0])
    extra = pd.DataFrame({
        "user_id": tables.users["user_id"].to_numpy()[:30], "item_id": tables.items["item_id"].to_numpy()[:30],
        "event_type": ["view"] * 15 + ["refund"] * 15,
        "timestamp": (t_val - t_val % D + D + 2 * H + np.arange(30)).astype(np.int64),
        "device_id": ["d000"] * 30, "amount": np.full(30, 5_000.0),
    })
    changed = ShopTables(users=tables.users, items=tables.items, devices=tables.devices,
                         events=pd.concat([ev, extra], ignore_index=True), labels=tables.labels, root=tables.root)
    data2 = _build(changed)
    assert data2.split_times == data.split_times
    assert int((data2.event_split == 0).sum()) == int((data.event_split == 0).sum())
    after = behaviour_features(changed, data2)
    for nt in ("user", "item", "device"):
        assert getattr(after, nt).names == getattr(base, nt).names, nt
        np.testing.assert_array_equal(getattr(after, nt).x, getattr(base, nt).x, err_msg=nt)
    # the check can fail: the same change made to the training period does move features
    ev_train = tables.events.copy()
    ev_train.loc[~later, "amount"] = ev_train.loc[~later, "amount"] * 3 + 1
    moved = ShopTables(users=tables.users, items=tables.items, devices=tables.devices, events=ev_train,
                       labels=tables.labels, root=tables.root)
    assert not np.array_equal(behaviour_features(moved, _build(moved)).user.x, base.user.x)


def test_standardised_columns_have_zero_mean_unit_std() -> None:
    tables = make_tables(seed=5)
    b = behaviour_features(tables, _build(tables))
    for feats in b:
        for j, name in enumerate(feats.names):
            col = feats.x[:, j]
            if name.startswith("has_") or "=" in name:  # 0/1 flags, one-hot columns
                assert set(np.unique(col)) <= {0.0, 1.0}
            elif col.std() > 0:
                assert abs(col.mean()) < 1e-4 and abs(col.std() - 1) < 1e-3, name


def test_without_timestamps_or_amounts() -> None:
    tables = make_tables(timestamps=False, seed=2)
    tables.events = tables.events.drop(columns=["amount"])
    tables.users["score"] = np.arange(len(tables.users), dtype=np.float64)  # the shop's own user columns
    tables.users["country"] = ["DE", "FR", ""] * (len(tables.users) // 3) + ["DE"] * (len(tables.users) % 3)
    tables.users["free_text"] = [f"note {k}" for k in range(len(tables.users))]  # too many values: left out
    tables.devices["os"] = "android"
    data = _build(tables)
    assert data.split_kind == "random"
    b = behaviour_features(tables, data)
    assert np.all(column(b.user, "has_account_age") == 0)
    assert np.all(column(b.user, "night_share") == 0)
    assert np.all(column(b.user, "log_amount_sum") == 0)
    np.testing.assert_allclose(column(b.user, "user_score"), standardised(list(range(len(tables.users)))), atol=1e-5)
    np.testing.assert_array_equal(column(b.user, "user_country=DE"), (tables.users["country"] == "DE").to_numpy())
    assert "user_country=" not in b.user.names and not any(n.startswith("user_free_text") for n in b.user.names)
    assert np.all(column(b.device, "device_os=android") == 1)
    assert np.isfinite(b.user.x).all()


def test_tables_that_do_not_match_the_graph() -> None:
    tables = make_tables()
    data = _build(tables)
    other = make_tables(n_events=50)
    with pytest.raises(ValueError, match="events do not match the graph"):
        behaviour_features(other, data)


def test_left_out_table_columns_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    # was logged at DEBUG only: a shop's column vanished from the features without a word
    tables = make_tables(seed=3)
    tables.users["country"] = ["DE", "FR"] * (len(tables.users) // 2)  # one-hot: the warning still names users
    tables.users["free_text"] = [f"note {k}" for k in range(len(tables.users))]
    tables.devices["nothing"] = ""
    data = _build(tables)
    with caplog.at_level(logging.WARNING, logger="shopgraph.encoders.behaviour"):
        b = behaviour_features(tables, data)
    assert ("users.free_text: 40 distinct text values, more than the 32 one-hot encoded; "
            "the column is left out of the features") in caplog.text
    assert "devices.nothing: no values; the column is left out of the features" in caplog.text
    assert not any(n.startswith(("user_free_text", "device_nothing")) for n in b.user.names + b.device.names)


def test_loaded_number_column_with_a_bad_value_stays_a_feature(tmp_path: Path) -> None:
    # a 40-user shop's age column with one "abc": features had no user_age, and nothing said so
    shop = make_tables(seed=4)
    age = [str(20 + k) for k in range(len(shop.users))]
    age[6] = "abc"
    shop.users["age"] = age
    for name in ("users", "items", "devices", "events", "labels"):
        getattr(shop, name).to_csv(tmp_path / f"{name}.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables, report = load_tables(tmp_path)
    said = "users.age: 1 of 40 values are not numbers (first: 'abc', row 7); set those 1 to NaN"
    assert said in [i.message for i in report.issues] and said in [str(w.message) for w in caught]
    b = behaviour_features(tables, _build(tables))
    known = np.array([20.0 + k for k in range(40) if k != 6])
    expected = np.zeros(40)  # the bad value becomes unknown: the mean, 0 after standardising
    expected[np.arange(40) != 6] = (known - known.mean()) / known.std()
    np.testing.assert_allclose(column(b.user, "user_age"), expected, atol=1e-5)


def test_a_mean_over_the_items_an_account_used_is_told_in_the_items_own_unit(tmp_path: Path) -> None:
    """"items put in the cart: average number of cart adds": the items' cart adds, typical over the
    items the account carted (the neighbour mean the fraud scorer read, back in counts by the items'
    own scale), not the account's cart-add column's scale, nor "over the other accounts"."""
    from shopgraph.encoders.behaviour import feature_facts
    from shopgraph.encoders.featurize import featurize
    from shopgraph.graph.baselines import (
        hetero_neighbor_feature_names,
        hetero_neighbor_features,
        message_passing_graph,
    )
    from shopgraph.graph.build import train_events

    tables = make_tables(seed=5)
    data = featurize(_build(tables), tables, use_text=False, use_image=False, cache_dir=tmp_path).data
    facts = feature_facts(tables, data)
    assert "log_n_cart" in facts.node_scales["item"] and "log_n_accounts" in facts.node_scales["device"]
    names = hetero_neighbor_feature_names(data)
    x = hetero_neighbor_features(data, split="test")
    j = names.index("items via cart: mean log_n_cart")
    # by hand: each item's cart adds in the training period; their mean of log1p over the distinct
    # items the account carted, as the graph the scorer reads has its carts
    train = train_events(tables, data)
    item_carts = train[train["event_type"] == "cart"].groupby("item_id").size()
    edges = message_passing_graph(data, "test")[("user", "cart", "item")].edge_index
    item_ids = np.asarray(data["item"].ids)
    checked = 0
    for u in sorted(set(edges[0].tolist())):
        carted = sorted(set(edges[1][edges[0] == u].tolist()))
        counts = item_carts.reindex(item_ids[carted]).fillna(0.0).to_numpy()
        typical = float(np.expm1(np.log1p(counts).mean()))
        assert facts.value(names[j], float(x[u, j]), u) == (
            f"{typical:,.0f} (typical, over the items it put in the cart)"), (u, counts)
        checked += 1
    assert checked
