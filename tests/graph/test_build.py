from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from shopgraph.graph.build import (
    build_graph,
    id_index,
    message_passing_graph,
    target_pairs,
    train_events,
)
from tests.conftest import make_tables


def test_node_and_edge_types(tiny_tables):
    data = build_graph(tiny_tables)
    data.validate()
    assert set(data.node_types) == {"user", "item", "device"}
    rels = {et[1] for et in data.edge_types}
    assert {"view", "cart", "purchase", "uses", "rev_view", "rev_purchase", "rev_uses"} <= rels
    n_events = sum(data["user", r, "item"].edge_index.size(1) for r in ("view", "cart", "purchase"))
    assert n_events == len(tiny_tables.events)
    assert data.split_kind == "temporal"


def test_id_round_trip(tiny_tables):
    data = build_graph(tiny_tables)
    for nt, col, frame in (("user", "user_id", tiny_tables.users), ("item", "item_id", tiny_tables.items)):
        index = id_index(data, nt)
        assert [data[nt].ids[index[k]] for k in frame[col]] == frame[col].tolist()
    ei = data["user", "purchase", "item"].edge_index
    ev = tiny_tables.events[tiny_tables.events.event_type == "purchase"]
    assert [data["user"].ids[k] for k in ei[0].tolist()] == ev.user_id.tolist()
    assert [data["item"].ids[k] for k in ei[1].tolist()] == ev.item_id.tolist()


def test_temporal_split_has_no_leakage(tiny_tables):
    data = build_graph(tiny_tables)
    t_val, t_test = data.split_times
    for split, cut in (("train", t_val), ("val", t_val), ("test", t_test)):
        mp = message_passing_graph(data, split)
        for et in mp.edge_types:
            if "time" in mp[et]:
                assert int(mp[et].time.max()) < cut, (split, et)
    # supervision pairs of val/test never appear in the message-passing graph used to predict them
    for split in ("val", "test"):
        pairs = target_pairs(data, split)
        mp = message_passing_graph(data, split)
        seen = set()
        for et in mp.edge_types:
            if et[0] == "user" and et[2] == "item":
                seen |= set(map(tuple, mp[et].edge_index.t().tolist()))
        held = set(map(tuple, pairs.t().tolist()))
        # a held-out pair may be visible only through an event that happened before the cut
        for u, i in held & seen:
            ev = tiny_tables.events
            t = ev[(ev.user_id == data["user"].ids[u]) & (ev.item_id == data["item"].ids[i])].timestamp
            assert int(t.min()) < (t_val if split == "val" else t_test)
    # features may only use training-period events
    assert int(train_events(tiny_tables, data).timestamp.max()) < t_val


def test_random_split_without_timestamps_hides_held_out_pairs():
    tables = make_tables(timestamps=False)
    with pytest.warns(UserWarning, match="no timestamps"):
        data = build_graph(tables, seed=3)
    assert data.split_kind == "random"
    mp = message_passing_graph(data, "val")
    seen = set()
    for et in mp.edge_types:
        if et[0] == "user" and et[2] == "item":
            seen |= set(map(tuple, mp[et].edge_index.t().tolist()))
    for split in ("val", "test"):
        held = set(map(tuple, target_pairs(data, split).t().tolist()))
        assert held and not (held & seen)
    again = build_graph(tables, seed=3)
    assert torch.equal(again.event_split, data.event_split)


def test_fraud_masks_stratified_and_seeded(tiny_tables):
    data = build_graph(tiny_tables, seed=1)
    y = data["user"].y
    masks = [data["user"][m] for m in ("train_mask", "val_mask", "test_mask")]
    assert int(sum(m.long() for m in masks).max()) == 1
    assert all(int(y[m].sum()) >= 1 for m in masks)
    again = build_graph(tiny_tables, seed=1)
    assert torch.equal(again["user"].train_mask, data["user"].train_mask)
    assert data["user"].ring_id.max().item() == 1 and data.ring_names == ["ring_a", "ring_b"]


def test_uses_edges_are_distinct_pairs(tiny_tables):
    data = build_graph(tiny_tables)
    ei = data["user", "uses", "device"].edge_index
    pairs = set(map(tuple, ei.t().tolist()))
    assert len(pairs) == ei.size(1)
    expected = set(zip(tiny_tables.events.user_id, tiny_tables.events.device_id))
    assert len(expected) == ei.size(1)


def test_errors_name_the_problem(tiny_tables):
    with pytest.raises(ValueError, match=r"target: no events of type 'review'.*found: cart, purchase, view"):
        build_graph(tiny_tables, target="review")
    bad = make_tables()
    bad.events.loc[5, "user_id"] = "ghost"
    with pytest.raises(ValueError, match=r"events.user_id: 1 of 600 values are unknown ids \(first: 'ghost', row 6\)"):
        build_graph(bad)
    with pytest.raises(ValueError, match="val_frac and test_frac"):
        build_graph(tiny_tables, val_frac=0.6, test_frac=0.5)
    with pytest.raises(ValueError, match="split: expected"):
        message_passing_graph(build_graph(tiny_tables), "later")  # type: ignore[arg-type]


def test_invariant_to_nothing_but_inputs(tiny_tables):
    a, b = build_graph(tiny_tables), build_graph(tiny_tables)
    for et in a.edge_types:
        assert torch.equal(a[et].edge_index, b[et].edge_index)
    assert np.array_equal(a.event_split.numpy(), b.event_split.numpy())


def test_item_groups_are_the_categories(tiny_tables):
    data = build_graph(tiny_tables)
    names = data["item"].group_names
    assert names == sorted(set(tiny_tables.items["category"]))
    assert [names[g] for g in data["item"].group.tolist()] == tiny_tables.items["category"].tolist()
    # a missing category is a group of its own (""), never dropped
    items = tiny_tables.items.copy()
    items.loc[[0, 3], "category"] = None
    data = build_graph(dataclasses.replace(tiny_tables, items=items))
    assert data["item"].group_names[0] == "" and data["item"].group[[0, 3]].tolist() == [0, 0]
    assert int((data["item"].group == 0).sum()) == 2
    # no category column: no groups (the model's group-mix channel is then off)
    data = build_graph(dataclasses.replace(tiny_tables, items=tiny_tables.items.drop(columns="category")))
    assert "group" not in data["item"]
