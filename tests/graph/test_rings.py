"""Ring detection, scoring, evaluation and case export on handcrafted shops."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch_geometric.data import HeteroData

from shopgraph.graph import rings as rings_mod
from shopgraph.graph.build import build_graph
from shopgraph.graph.pipeline import save_tables
from shopgraph.graph.rings import (
    CASE_VERSION,
    RINGS_FILE,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    FraudCases,
    Hub,
    Ring,
    RingDetector,
    case_markdown,
    evaluate_rings,
    export_cases,
    exported_ring,
    identifier_links,
    known_fraud,
    load_rings,
    rings_run,
)
from shopgraph.graph.run import RunDir
from shopgraph.graph.schema import ShopTables
from shopgraph.graph.train import HELD_OUT_KEY

T0 = 1_700_000_000
DAY = 86_400


def ring_tables(seed: int = 0, *, hub_users: int = 12) -> ShopTables:
    """A shop with two planted rings, a household, a hub device and ordinary users.

    * ring_a: 8 young accounts on devices dA1 (ra0-ra4) and dA2 (ra3-ra7), bursts of electronics;
    * ring_b: 4 young accounts on dB1, bursts of gift cards;
    * household: 3 old accounts h0-h2 on dH1 (plus their own devices), ordinary baskets;
    * ``hub_users`` ordinary accounts also use the shop's Wi-Fi kiosk ``d_wifi``.
    """
    rng = np.random.default_rng(seed)
    normal = [f"u{k:03d}" for k in range(80)]
    ring_a = [f"ra{k}" for k in range(8)]
    ring_b = [f"rb{k}" for k in range(4)]
    house = [f"h{k}" for k in range(3)]
    users = normal + ring_a + ring_b + house
    created = {u: float(rng.integers(T0 - 900 * DAY, T0 - 200 * DAY)) for u in normal + house}
    created.update({u: float(T0 + 40 * DAY - int(rng.integers(1, 4)) * DAY) for u in ring_a + ring_b})
    cats = ["books", "shoes", "kitchen", "electronics", "gift cards"]
    items = pd.DataFrame({
        "item_id": [f"i{k:03d}" for k in range(50)],
        "title": [f"item {k}" for k in range(50)],
        "description": [""] * 50,
        "category": [cats[k % 5] for k in range(50)],
        "price": rng.uniform(5, 500, 50),
        "image": [""] * 50,
    })
    by_cat = {c: items.loc[items["category"] == c, "item_id"].tolist() for c in cats}
    rows: list[dict[str, Any]] = []

    def add(user: str, device: str, n: int, t_lo: int, t_hi: int, pool: list[str], buy_share: float) -> None:
        for _ in range(n):
            rows.append({
                "user_id": user, "item_id": str(rng.choice(pool)),
                "event_type": "purchase" if rng.random() < buy_share else "view",
                "timestamp": int(rng.integers(t_lo, t_hi)), "device_id": device,
                "amount": float(rng.uniform(5, 80)),
            })

    everyday = by_cat["books"] + by_cat["shoes"] + by_cat["kitchen"] + by_cat["electronics"][:2]
    for k, u in enumerate(normal):
        add(u, f"d_{u}", 12, T0, T0 + 90 * DAY, everyday, 0.3)
        if k < hub_users:
            add(u, "d_wifi", 2, T0, T0 + 90 * DAY, everyday, 0.3)
    for u in house:
        add(u, f"d_{u}", 8, T0, T0 + 90 * DAY, everyday, 0.3)
        add(u, "dH1", 4, T0, T0 + 90 * DAY, everyday, 0.3)
    for k, u in enumerate(ring_a):
        dev = "dA1" if k < 3 else ("dA2" if k > 4 else ["dA1", "dA2"][k % 2])
        add(u, dev, 15, T0 + 40 * DAY, T0 + 41 * DAY, by_cat["electronics"], 0.9)
        if k in (3, 4):  # the bridge accounts use both ring devices
            add(u, "dA1" if dev == "dA2" else "dA2", 3, T0 + 40 * DAY, T0 + 41 * DAY, by_cat["electronics"], 0.9)
    for u in ring_b:
        add(u, "dB1", 12, T0 + 60 * DAY, T0 + 61 * DAY, by_cat["gift cards"], 0.9)
    events = pd.DataFrame(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)
    events = events[["user_id", "item_id", "event_type", "timestamp", "device_id", "amount"]]
    devices = pd.DataFrame({"device_id": sorted(events["device_id"].unique())})
    ring_col = ["ring_a" if u in ring_a else "ring_b" if u in ring_b else "" for u in users]
    labels = pd.DataFrame({"user_id": users, "is_fraud": [int(r != "") for r in ring_col], "ring_id": ring_col})
    return ShopTables(
        users=pd.DataFrame({"user_id": users, "created_at": [created[u] for u in users]}),
        items=items, devices=devices, events=events, labels=labels, root=Path("."),
    )


def planted_prob(data: HeteroData, seed: int = 0) -> np.ndarray:
    """A stand-in GNN: ring members high, everyone else low."""
    rng = np.random.default_rng(seed)
    ring = data["user"].ring_id.numpy() >= 0
    return np.where(ring, rng.uniform(0.8, 0.95, ring.size), rng.uniform(0.01, 0.1, ring.size))


@pytest.fixture(scope="module")
def shop() -> tuple[ShopTables, HeteroData]:
    tables = ring_tables()
    return tables, build_graph(tables)


def _members(rings: list[Ring]) -> list[set[str]]:
    return [set(r.members) for r in rings]


def test_detector_finds_rings_household_and_reports_hub(shop: tuple[ShopTables, HeteroData]) -> None:
    tables, data = shop
    det = RingDetector(hub_threshold=10).fit(data, planted_prob(data), tables)
    found = _members(det.rings_)
    assert {f"ra{k}" for k in range(8)} in found
    assert {f"rb{k}" for k in range(4)} in found
    assert {"h0", "h1", "h2"} in found
    # the Wi-Fi kiosk joins 12 ordinary users: a hub, reported and not used for linking
    assert det.hub_devices_ == [Hub("device", "d_wifi", 12)]
    assert len(det.rings_) == 3
    assert [r.ring_id for r in det.rings_] == ["R0001", "R0002", "R0003"]
    ring_a = next(r for r in det.rings_ if "ra0" in r.members)
    assert ring_a.shared_devices == ["dA1", "dA2"]
    assert ring_a.evidence["size"] == 8 and ring_a.evidence["shared_device_count"] == 2
    assert ring_a.evidence["gnn_max"] >= ring_a.evidence["gnn_mean"] > 0.8
    assert ring_a.evidence["median_account_age_days"] < 5
    assert ring_a.evidence["high_risk_share"] == 1.0
    assert set(ring_a.member_scores) == set(ring_a.members)


def test_hub_below_threshold_links_everyone(shop: tuple[ShopTables, HeteroData]) -> None:
    tables, data = shop
    det = RingDetector(hub_threshold=50).fit(data, planted_prob(data), tables)
    assert det.hub_devices_ == []
    assert any(len(r.members) == 12 and "u000" in r.members for r in det.rings_)


@pytest.mark.parametrize("with_prob", [True, False])
def test_fraud_rings_rank_above_household(shop: tuple[ShopTables, HeteroData], with_prob: bool) -> None:
    tables, data = shop
    det = RingDetector(hub_threshold=10).fit(data, planted_prob(data) if with_prob else None, tables)
    order = [r.members[0] for r in det.rings_]
    assert order.index("h0") == 2, order
    house = det.rings_[2]
    assert house.score < 0.5 < min(r.score for r in det.rings_[:2])
    assert det.mode_ == ("gnn+behaviour+structure" if with_prob else "behaviour+structure")


def test_structure_only_baseline_cannot_separate_small_ring(shop: tuple[ShopTables, HeteroData]) -> None:
    tables, data = shop
    det = RingDetector(hub_threshold=10, use_behaviour=False).fit(data, None, tables)
    assert det.mode_ == "structure"
    by_first = {r.members[0]: r for r in det.rings_}
    # 3 accounts on one device vs 4 on one device: structure alone only sees size and density
    assert by_first["h0"].score < by_first["rb0"].score
    assert set(by_first["ra0"].evidence["score_terms"]) == {"size", "density"}


def _two_cliques() -> HeteroData:
    """50 users: two groups of 25, each on its own device pair, joined by one shared device."""
    data = HeteroData()
    data["user"].ids = [f"u{k:02d}" for k in range(50)]
    data["user"].num_nodes = 50
    data["item"].ids = ["i0"]
    data["item"].num_nodes = 1
    data["device"].ids = ["dL1", "dL2", "dR1", "dR2", "bridge"]
    data["device"].num_nodes = 5
    src, dst = [], []
    for u in range(50):
        left = u < 25
        src += [u, u]
        dst += [0, 1] if left else [2, 3]
    src += [24, 25]
    dst += [4, 4]
    ei = torch.tensor([src, dst])
    data["user", "uses", "device"].edge_index = ei
    data["device", "rev_uses", "user"].edge_index = ei.flip(0)
    data["user", "purchase", "item"].edge_index = torch.tensor([[0], [0]])
    data["item", "rev_purchase", "user"].edge_index = torch.tensor([[0], [0]])
    data["user"].ring_id = torch.tensor([0] * 25 + [1] * 25)
    data.ring_names = ["left", "right"]
    data.target = "purchase"
    return data


def test_louvain_splits_large_component_deterministically() -> None:
    data = _two_cliques()
    a = RingDetector(max_component=40, seed=3).fit(data, None, None)
    b = RingDetector(max_component=40, seed=3).fit(data, None, None)
    assert [r.members for r in a.rings_] == [r.members for r in b.rings_]
    assert sorted(len(r.members) for r in a.rings_) == [25, 25]
    assert {frozenset(r.members) for r in a.rings_} == {
        frozenset(f"u{k:02d}" for k in range(25)), frozenset(f"u{k:02d}" for k in range(25, 50))}
    whole = RingDetector(max_component=50).fit(data, None, None)
    assert [len(r.members) for r in whole.rings_] == [50]


def test_identifier_links_are_generic() -> None:
    data = _two_cliques()
    data["card"].ids = ["c0"]
    data["card"].num_nodes = 1
    data["card", "pays", "user"].edge_index = torch.tensor([[0, 0, 0], [0, 30, 40]])
    links = identifier_links(data)
    assert set(links["node_type"]) == {"device", "card"}
    det = RingDetector(max_component=60).fit(data, None, None)
    ring = det.rings_[0]
    assert ring.evidence["shared_identifiers"]["card"] == ["c0"]


def test_evaluate_rings_counts_found_and_precision() -> None:
    data = _two_cliques()
    left = [f"u{k:02d}" for k in range(25)]
    right = [f"u{k:02d}" for k in range(25, 50)]
    perfect = [Ring("R0001", left, 0.9, []), Ring("R0002", right, 0.8, [])]
    res = evaluate_rings(perfect, data)
    assert res["ring_recall"] == 1.0 and res["precision"] == 1.0 and math.isclose(res["ari"], 1.0)
    # a ring covering only a third of "right" does not find it; a decoy ranked first costs precision
    partial = [Ring("R0001", ["x1", "x2", "x3"], 0.95, []), Ring("R0002", left, 0.9, []),
               Ring("R0003", right[:8], 0.5, [])]
    res = evaluate_rings(partial, data)
    assert res["found"] == 1 and res["ring_recall"] == 0.5
    assert res["precision"] == 0.5 and res["top"] == 2
    assert res["matches"] == {"left": "R0002"}
    assert res["ari"] < 1.0


def test_detector_input_errors(shop: tuple[ShopTables, HeteroData]) -> None:
    tables, data = shop
    with pytest.raises(ValueError, match=r"fraud_prob: expected one probability per user, shape \[95\] \(got 3\)"):
        RingDetector().fit(data, np.zeros(3), tables)
    bad = np.zeros(95)
    bad[5] = 1.5
    with pytest.raises(ValueError, match=r"fraud_prob: 1 of 95 .*first: 1.5, user index 5"):
        RingDetector().fit(data, bad, tables)
    with pytest.raises(ValueError, match=r"max_component: expected >= min_size=5 \(got 4\)"):
        RingDetector(min_size=5, max_component=4).fit(data, None, tables)
    with pytest.raises(ValueError, match=r"hub_threshold: expected an integer >= 2 \(got 1\)"):
        RingDetector(hub_threshold=1).fit(data, None, tables)
    with pytest.raises(TypeError, match="data: expected a torch_geometric HeteroData"):
        RingDetector().fit({}, None, tables)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not fitted"):
        RingDetector().top(3)


# -- run folder and export -----------------------------------------------------------------------
def make_run(path: Path, *, with_prob: bool = True, features: int = 6, seed: int = 0, held_out: bool = False) -> Path:
    """A fake-but-valid run folder: graph with random user features, tables, fraud_prob (and with
    ``held_out`` held-out scores of the labelled training users: 0.001 × their position)."""
    tables = ring_tables(seed)
    data = build_graph(tables)
    gen = torch.Generator().manual_seed(seed)
    for nt in data.node_types:
        data[nt].x = torch.randn(int(data[nt].num_nodes), features, generator=gen)
        data[nt].feature_names = [f"{nt}_f{k}" for k in range(features)]
    run = RunDir(path, create=True)
    run.save_graph(data)
    save_tables(run, tables)
    if with_prob:
        tensors = {"fraud_prob": torch.from_numpy(planted_prob(data, seed)).float()}
        if held_out:
            users = data["user"]
            trained = users.train_mask & (users.y >= 0)
            tensors[HELD_OUT_KEY] = torch.where(trained, 0.001 * torch.arange(int(users.num_nodes)),
                                                torch.tensor(float("nan"))).float()
        run.write_with("embeddings.safetensors", lambda p: save_file(tensors, str(p)))
        run.write_json("fraud.json", {"kind": "gnn", "threshold": THRESHOLD})
    return path


THRESHOLD = 0.3  # make_run's validation threshold


# The documented case-file schema (docs/fraud_rings.md): key -> type(s).
NUM = (int, float)
OPT_NUM = (int, float, type(None))
RINGS_JSON = {"schema_version": str, "mode": str, "params": dict, "hub_devices": list, "rings": list}
RING_KEYS = {"ring_id": str, "members": list, "score": float, "shared_devices": list, "member_scores": dict,
             "evidence": dict}
EVIDENCE_KEYS = {
    "size": int, "shared_device_count": int, "shared_identifier_count": int, "shared_identifiers": dict,
    "accounts_per_identifier": NUM, "median_account_age_days": OPT_NUM, "purchase_velocity": OPT_NUM,
    "high_risk_share": OPT_NUM, "n_purchases": (int, type(None)), "purchase_amount": OPT_NUM,
    "gnn_mean": OPT_NUM, "gnn_max": OPT_NUM, "predicted_mean": OPT_NUM, "predicted_max": OPT_NUM,
    "score_terms": dict, "mode": str,
}
CASE_KEYS = {"schema_version": str, "case_version": int, "source": (dict, type(None)), "threshold": OPT_NUM,
             "flagged": (int, type(None)), "known_fraud": (int, type(None)), "known_fraud_trained_on": (int, type(None)),
             "features_as_of": (str, type(None)), "activity_until": (str, type(None)),
             "ring_id": str, "score": float, "members": list, "shared_devices": list,
             "shared_identifiers": dict, "evidence": dict, "evidence_edges": list, "timeline": list,
             "explanations": dict}
OPT_BOOL = (bool, type(None))
MEMBER_KEYS = {"user_id": str, "score": OPT_NUM, "flagged": OPT_BOOL, "label": OPT_BOOL, "label_in_training": bool,
               "held_out_probability": OPT_NUM, "held_out_flagged": OPT_BOOL, "predicted_flagged": OPT_BOOL,
               "created_at": OPT_NUM, "days_to_first_activity": OPT_NUM, "n_purchases": int, "purchase_amount": NUM,
               "purchase_velocity": OPT_NUM, "high_risk_share": OPT_NUM}
EDGE_KEYS = {"user_id": str, "node_type": str, "node_id": str, "first_seen": (int, type(None)), "shared": bool}
EVENT_KEYS = {"timestamp": (int, type(None)), "time": str, "user_id": str, "event_type": str, "item_id": str,
              "title": str, "category": str, "amount": OPT_NUM, "device_id": str, "shared_device": bool}
EXPLANATION_KEYS = {"user_id": str, "score": OPT_NUM, "method": str, "features": list, "neighbours": list,
                    "base_value": OPT_NUM, "unlisted_attribution": OPT_NUM, "neighbours_total": (int, type(None))}
CSV_COLUMNS = ["ring_id", "timestamp", "time", "user_id", "member_score", "member_served_flagged", "member_label",
               "member_held_out_probability", "member_held_out_flagged", "member_predicted_flagged", "event_type",
               "item_id", "title", "category", "amount", "device_id", "shared_device"]


def check_keys(obj: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    assert set(obj) == set(spec), f"{where}: keys {sorted(obj)} != {sorted(spec)}"
    for key, typ in spec.items():
        value = obj[key]
        if typ is OPT_BOOL:
            ok = value is None or isinstance(value, bool)
        else:
            ok = isinstance(value, bool) if typ is bool else isinstance(value, typ) and not isinstance(value, bool)
        assert ok, f"{where}.{key}: {type(value).__name__} is not {typ}"


def test_rings_run_stores_and_exports_documented_schema(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "export"
    top = rings_run(run_dir, top=2, export=out, detector=RingDetector(hub_threshold=10))
    assert [r.ring_id for r in top] == ["R0001", "R0002"]
    stored = load_rings(run_dir)
    assert len(stored) == 3 and stored[:2] == top
    RunDir(run_dir).verify()

    doc = json.loads((out / "rings.json").read_text())
    check_keys(doc, {**RINGS_JSON, "source": dict, "case_version": int}, "rings.json")
    manifest = RunDir(run_dir).manifest["files"]
    assert doc["source"]["run"] == str(run_dir.resolve())
    made_from = doc["source"]["made_from"]
    assert made_from["graph.pt"] == manifest["graph.pt"] and made_from["rings/rings.json"] == manifest["rings/rings.json"]
    assert made_from["model/model.safetensors"] is None  # the fake run has no model
    assert all(exported_ring(out, r) for r in top)
    assert not exported_ring(out, stored[2])  # ranked third: not in a top-2 export
    assert doc["schema_version"] == SCHEMA_VERSION and doc["mode"] == "gnn+behaviour+structure"
    assert doc["hub_devices"] == [{"node_type": "device", "node_id": "d_wifi", "n_users": 12}]
    assert len(doc["rings"]) == 2
    for raw in doc["rings"]:
        check_keys(raw, RING_KEYS, "ring")
        check_keys(raw["evidence"], EVIDENCE_KEYS, "evidence")
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["R0001.csv", "R0001.json", "R0001.md", "R0002.csv", "R0002.json", "R0002.md"]
    # the overview an analyst opens first: a ring a row, as the case files give them
    overview = pd.read_csv(out / "rings.csv", dtype={"member_ids": str, "flagged_member_ids": str})
    assert list(overview.columns) == SUMMARY_COLUMNS and overview["ring_id"].tolist() == ["R0001", "R0002"]
    for row in overview.itertuples(index=False):
        case = json.loads((out / "cases" / f"{row.ring_id}.json").read_text())
        assert row.members == len(case["members"]) and row.flagged == case["flagged"]
        assert row.member_ids.split(" ") == [m["user_id"] for m in case["members"]]
        assert str(row.flagged_member_ids or "").split() == [m["user_id"] for m in case["members"]
                                                              if m["predicted_flagged"]]
        assert row.predicted_mean == pytest.approx(case["evidence"]["predicted_mean"], abs=1e-4)  # 4 decimals
        assert row.median_days_to_first_activity == pytest.approx(case["evidence"]["median_account_age_days"], abs=1e-4)
        # the page a person reads and forwards: the case in words, every member, the most likely fraud first
        page = (out / "cases" / f"{row.ring_id}.md").read_text()
        assert page == case_markdown(case) and page.startswith(f"# Fraud ring {row.ring_id}\n")
        assert f"**Flagged**: {case['flagged']} of the {len(case['members'])} members at the validation threshold" in page
        assert f"Ring score {case['score']:.3f}" in page and str(run_dir.resolve()) in page
        rows = [line.split(" | ")[0].removeprefix("| ") for line in page.splitlines()
                if line.startswith("| ") and not line.startswith("| account")]
        predicted = {m["user_id"]: m["held_out_probability"] if m["held_out_probability"] is not None else m["score"]
                     for m in case["members"]}
        assert rows == sorted(predicted, key=lambda u: -predicted[u])
        for user, ex in case["explanations"].items():  # each explained member's strongest reason, in words
            top_reason = max(ex["features"], key=lambda f: abs(f["attribution"]))
            assert f"### {user}" in page and top_reason["reason"] in page
    # an investigator other than the one who exported can read it, as any new folder (not mkdtemp's 0700)
    from shopgraph.graph.files import umask

    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask()
    for ring in top:
        case = json.loads((out / "cases" / f"{ring.ring_id}.json").read_text())
        check_keys(case, CASE_KEYS, "case")
        assert case["ring_id"] == ring.ring_id and {m["user_id"] for m in case["members"]} == set(ring.members)
        # one case file forwarded on its own says what it is, where it comes from and where the line is
        assert case["case_version"] == CASE_VERSION and case["source"] == doc["source"]
        assert case["threshold"] == THRESHOLD == FraudCases.from_run(run_dir).threshold
        split = RunDir(run_dir).load_graph().split_times[0]  # when the features (the reasons' account age) are as of
        assert case["features_as_of"] == time.strftime("%Y-%m-%d", time.gmtime(float(split)))
        # ... and what is counted over the graph (shared devices, quick purchases) up to the last event
        graph = RunDir(run_dir).load_graph()
        last = max(float(graph[et].time.max()) for et in graph.edge_types if "time" in graph[et])
        assert case["activity_until"] == time.strftime("%Y-%m-%d", time.gmtime(last)) > case["features_as_of"]
        labels = FraudCases.from_run(run_dir).labels(ring.members)
        # the ring at a glance, as /fraud/rings gives it, and the members most likely fraud first
        assert (case["known_fraud"], case["known_fraud_trained_on"]) == known_fraud(labels)
        assert case["flagged"] == FraudCases.from_run(run_dir).flagged(ring)
        scores = [m["score"] if m["held_out_probability"] is None else m["held_out_probability"] for m in case["members"]]
        assert scores == sorted(scores, reverse=True)
        for m in case["members"]:
            check_keys(m, MEMBER_KEYS, "member")
            assert (m["label"], m["label_in_training"]) == labels[m["user_id"]]
            assert m["flagged"] == (m["score"] >= THRESHOLD) and m["held_out_flagged"] is None  # no held-out scores
        assert {m["flagged"] for m in case["members"]} <= {True, False}
        assert case["evidence_edges"] and all(e["node_type"] == "device" for e in case["evidence_edges"])
        for e in case["evidence_edges"]:
            check_keys(e, EDGE_KEYS, "edge")
        assert {e["node_id"] for e in case["evidence_edges"] if e["shared"]} == set(ring.shared_devices)
        times = [e["timestamp"] for e in case["timeline"]]
        assert times == sorted(times) and len(times) > 0
        for e in case["timeline"]:
            check_keys(e, EVENT_KEYS, "event")
        assert len(case["explanations"]) == 3
        for ex in case["explanations"].values():
            check_keys(ex, EXPLANATION_KEYS, "explanation")
            assert ex["method"] == "behaviour_zscore"  # the fake run has no model
        csv = pd.read_csv(out / "cases" / f"{ring.ring_id}.csv")
        assert list(csv.columns) == CSV_COLUMNS and len(csv) == len(case["timeline"])
        assert set(csv["user_id"]) <= set(ring.members)
        words = {m["user_id"]: {None: "", True: "fraud", False: "legitimate"}[m["label"]]
                 + (" (trained on)" if m["label_in_training"] else "") for m in case["members"]}
        assert csv["member_label"].fillna("").tolist() == [words[u] for u in csv["user_id"]]
        assert (csv["member_label"].fillna("") != "").any()
        flagged = {m["user_id"]: m["flagged"] for m in case["members"]}
        assert csv["member_served_flagged"].tolist() == [flagged[u] for u in csv["user_id"]]
        assert csv["member_held_out_flagged"].isna().all()
    # a second export replaces the first one
    rings_run(run_dir, top=1, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["R0001.csv", "R0001.json", "R0001.md"]
    # a ring recomputed since (here: another member score) is not the exported one
    changed = dataclasses.replace(top[0], member_scores={**top[0].member_scores, top[0].members[0]: 0.5})
    assert exported_ring(out, top[0]) and not exported_ring(out, changed)
    assert not exported_ring(tmp_path / "nowhere", top[0])
    # an export of older case files (before the members' labels) is not handed out as this ring's
    doc = json.loads((out / "rings.json").read_text())
    del doc["case_version"]
    (out / "rings.json").write_text(json.dumps(doc))
    assert not exported_ring(out, top[0])


def test_rings_run_without_fraud_prob(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", with_prob=False)
    top = rings_run(run_dir, top=5, export=tmp_path / "export", detector=RingDetector(hub_threshold=10))
    assert top[-1].members[0] == "h0"
    assert top[0].evidence["gnn_mean"] is None and top[0].evidence["mode"] == "behaviour+structure"
    # no scorer: the members' labels are given, none as trained on
    users = RunDir(run_dir).load_graph()["user"]
    label_of = {str(u): int(v) for u, v in zip(users.ids, users.y.tolist())}
    members = [m for r in top for m in json.loads((tmp_path / "export" / "cases" / f"{r.ring_id}.json")
                                                   .read_text())["members"]]
    assert members and not any(m["label_in_training"] for m in members)
    assert all(m["flagged"] is None and m["held_out_flagged"] is None for m in members)  # no scorer, no verdict
    assert [m["label"] for m in members] == [None if label_of[m["user_id"]] < 0 else bool(label_of[m["user_id"]])
                                            for m in members]


def test_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "export"
    calls = {"n": 0}
    real = rings_mod.case_file

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(rings_mod, "case_file", failing)
    with pytest.raises(OSError, match="disk full"):
        rings_run(run_dir, top=3, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "run"] == []
    # a previous complete export survives a failed one untouched
    monkeypatch.setattr(rings_mod, "case_file", real)
    rings_run(run_dir, top=3, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)
    before = sorted(p.name for p in (out / "cases").iterdir())
    calls["n"] = 0
    monkeypatch.setattr(rings_mod, "case_file", failing)
    with pytest.raises(OSError):
        rings_run(run_dir, top=3, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)
    assert sorted(p.name for p in (out / "cases").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]


def test_export_refuses_foreign_folder(tmp_path: Path, shop: tuple[ShopTables, HeteroData]) -> None:
    tables, data = shop
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a previous rings export"):
        export_cases([], data, tables, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_rings_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run")
    assert main(["rings", "--run", str(run_dir), "--top", "2", "--export", str(tmp_path / "cases")]) == 0
    out = capsys.readouterr().out
    assert "R0001" in out and "R0002" in out and "R0003" not in out
    assert (tmp_path / "cases" / "cases" / "R0002.json").is_file()
    assert f"exported 2 rings to {tmp_path / 'cases'}: rings.csv, a ring a row (a spreadsheet opens it)" in out
    assert (tmp_path / "cases" / "rings.csv").is_file()
    # each ring's members labelled fraud in the shop's data, of its size; every column explained
    header, *rows = [line for line in out.splitlines() if line.startswith(("ring ", "R0"))]
    assert header.split()[:8] == ["ring", "score", "size", "devices", "fraud", "flagged", "known", "trained"]
    rings = {r.ring_id: r for r in load_rings(run_dir)}
    data = RunDir(run_dir).load_graph()
    y = dict(zip(map(str, data["user"].ids), data["user"].y.tolist()))
    in_training = dict(zip(map(str, data["user"].ids), data["user"].train_mask.tolist()))
    for row in rows:
        ring = rings[row.split()[0]]
        known = [m for m in ring.members if y[m] == 1]
        flagged = sum(p >= THRESHOLD for p in ring.member_scores.values())  # no held-out scores in this run
        assert row.split()[4] == f"{ring.evidence['predicted_mean']:.2f}"
        assert row.split()[5] == f"{flagged}/{len(ring.members)}"
        assert row.split()[6] == f"{len(known)}/{len(ring.members)}"
        assert row.split()[7] == str(sum(in_training[m] for m in known))
        # the members named first are the likeliest fraud (by prediction), not the first ids
        likeliest = sorted(ring.members, key=lambda u: (-ring.member_scores[u], u))[:4]
        assert row.split("  ")[-1].strip().split(", ")[:len(likeliest)] == likeliest
    assert "known: members the shop's data labels fraud, of all members; trained: how many of those labels" in out
    assert "score: what ranks the rings, in [0, 1]" in out and "not a probability" in out
    assert "risk: their median share of purchase amount in high-risk categories" in out
    assert f"flagged: members whose prediction is at or above the validation threshold {THRESHOLD:.3f}" in out
    assert "this run has" not in out  # --top 2 of more
    assert main(["rings", "--run", str(run_dir), "--top", "100000"]) == 0
    assert f"(--top 100,000: this run has {len(rings)} rings, all listed)" in capsys.readouterr().out
    assert main(["rings", "--run", str(run_dir), "--overwrite"]) == 1  # nothing to overwrite: said, not ignored
    assert "--overwrite: only with --export DIR" in capsys.readouterr().err


def test_chosen_rings_are_listed_and_exported_on_their_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An investigator forwards the 3rd and the 1st ring without exporting the ones between them:
    --ring, repeatable, in rank order; unknown ids are all named and nothing is written."""
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "cases"
    assert main(["rings", "--run", str(run_dir), "--ring", "R0003", "--ring", " r0001 ", "--ring", "R0003",
                 "--export", str(out)]) == 0
    said = capsys.readouterr().out
    listed = [line.split()[0] for line in said.splitlines() if line.startswith("R0")]
    assert listed == ["R0001", "R0003"] and "this run has" not in said
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["R0001.csv", "R0001.json", "R0001.md", "R0003.csv", "R0003.json", "R0003.md"]
    assert [r["ring_id"] for r in json.loads((out / "rings.json").read_text())["rings"]] == ["R0001", "R0003"]
    before = _snapshot(run_dir)
    assert main(["rings", "--run", str(run_dir), "--ring", "R0001", "--ring", "R9999", "--ring", "X",
                 "--export", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "--ring: unknown rings 'R9999', 'X' (" in err and "ring ids look like R0001); nothing was written" in err
    assert _snapshot(run_dir) == before and not (tmp_path / "other").exists()
    with pytest.raises(SystemExit):  # the top N or chosen rings, not both
        main(["rings", "--run", str(run_dir), "--ring", "R0001", "--top", "3"])
    assert rings_run(run_dir, ring_ids=["R0002"])[0].ring_id == "R0002"


def test_a_re_export_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An earlier export is replaced only when asked, as `shopgraph score --out` is: an export of
    the top 5 into a folder holding the top 20 would delete 15 cases."""
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "cases"
    assert main(["rings", "--run", str(run_dir), "--top", "2", "--export", str(out)]) == 0
    before = _snapshot(out)
    assert main(["rings", "--run", str(run_dir), "--top", "1", "--export", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--export: {out} holds an earlier export of 2 rings; pass --overwrite to replace it" in err
    assert _snapshot(out) == before
    assert main(["rings", "--run", str(run_dir), "--top", "1", "--export", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["R0001.csv", "R0001.json", "R0001.md"]


@pytest.mark.slow
def test_planted_rings_in_synthetic_shop(tmp_path: Path) -> None:
    """The product target on the default synthetic shop, without any trained model (no labels
    used): ring recall >= 0.9 and precision >= 0.8 among the top reported rings; the
    structure-only baseline is clearly worse at precision."""
    import warnings

    from shopgraph.graph.load import load_tables
    from shopgraph.graph.synthetic import generate_shop

    generate_shop(tmp_path / "shop", n_users=5000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = load_tables(tmp_path / "shop").tables
        data = build_graph(tables)
    scored = evaluate_rings(RingDetector().fit(data, None, tables).rings_, data)
    baseline = evaluate_rings(RingDetector(use_behaviour=False).fit(data, None, tables).rings_, data)
    assert scored["planted"] >= 10
    assert scored["ring_recall"] >= 0.9 and scored["precision"] >= 0.8, scored
    assert baseline["precision"] < scored["precision"] - 0.2, baseline


def test_export_explains_with_the_run_model(tmp_path: Path) -> None:
    """With RUN/model/ present, case explanations come from the GNN (integrated gradients)."""
    train = pytest.importorskip("shopgraph.graph.train", reason="graph/train.py not available")
    model_mod = pytest.importorskip("shopgraph.graph.model", reason="graph/model.py not available")
    run_dir = make_run(tmp_path / "run")
    run = RunDir(run_dir)
    data = run.load_graph()
    torch.manual_seed(0)
    model = model_mod.ShopGNN(model_mod.ModelConfig.from_data(data, hidden=8, layers=1))
    staging = tmp_path / "model"
    train.save_model(model, staging)
    for name in ("config.json", "model.safetensors"):
        run.write_bytes(f"model/{name}", (staging / name).read_bytes())
    out = tmp_path / "export"
    rings_run(run_dir, top=1, export=out, detector=RingDetector(hub_threshold=10), explain_members=2)
    case = json.loads((out / "cases" / "R0001.json").read_text())
    assert len(case["explanations"]) == 2
    for ex in case["explanations"].values():
        assert ex["method"] == "integrated_gradients+occlusion" and 0 < ex["score"] < 1
        assert len(ex["features"]) == 5 and ex["features"][0]["name"].startswith("user_f")
        assert ex["neighbours"] and ex["neighbours"][0]["node_type"] in {"device", "item"}


def test_ring_lookup_any_case_and_a_long_id_cut(shop: tuple[ShopTables, HeteroData]) -> None:
    from shopgraph.graph.rings import FraudCases

    tables, data = shop
    rings = RingDetector(hub_threshold=10).fit(data, planted_prob(data), tables).rings_
    cases = FraudCases(rings, data, tables)
    first = rings[0].ring_id
    assert cases.ring(first.lower()) is cases.ring(first)  # "r0001" is R0001
    # a rank written without its zeros, as people type it: R2, 2, r002 are R0002 (no other id looks so)
    assert cases.ring("R2") is cases.ring("2") is cases.ring(" r002 ") is cases.ring("R0002")
    with pytest.raises(KeyError, match="unknown ring_id 'R99999'"):
        cases.ring("R99999")
    with pytest.raises(KeyError) as caught:
        cases.ring("R" * 100_000)
    message = str(caught.value.args[0])
    assert len(message) < 200 and "100,000 characters" in message and message.startswith("unknown ring_id 'RRR")
    assert f"ring ids look like {first}" in message
    # two ids the same up to case: each is found as written, neither by another case
    twins = [dataclasses.replace(rings[0], ring_id="Ab"), dataclasses.replace(rings[1], ring_id="aB")]
    both = FraudCases(twins, data, tables)
    assert both.ring("Ab").ring_id == "Ab" and both.ring("aB").ring_id == "aB"
    with pytest.raises(KeyError, match="unknown ring_id 'ab'"):
        both.ring("ab")
    with pytest.raises(KeyError, match=r"unknown ring_id 'R1' \(no rings known\)"):
        FraudCases([], data, tables).ring("R1")


# -- runs trained without a fraud scorer, and where an export may go ------------------------------
def _add_model(run_dir: Path, seed: int = 0) -> None:
    """An (untrained) ShopGNN in RUN/model/, as `shopgraph train` writes it."""
    train = pytest.importorskip("shopgraph.graph.train", reason="graph/train.py not available")
    model_mod = pytest.importorskip("shopgraph.graph.model", reason="graph/model.py not available")
    run = RunDir(run_dir)
    torch.manual_seed(seed)
    model = model_mod.ShopGNN(model_mod.ModelConfig.from_data(run.load_graph(), hidden=8, layers=1))
    staging = run_dir.parent / f"{run_dir.name}-model"
    train.save_model(model, staging)
    for name in ("config.json", "model.safetensors"):
        run.write_bytes(f"model/{name}", (staging / name).read_bytes())


def test_a_run_trained_without_a_fraud_scorer_ranks_rings_on_behaviour(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A shop without fraud labels trains the scorer ``none`` and stores an all-NaN fraud_prob:
    rings then have no fraud probabilities (behaviour+structure, one log line says so), and the
    never-trained fraud head explains nothing (behaviour z-scores)."""
    from shopgraph.graph.rings import FraudCases

    run_dir = make_run(tmp_path / "run", with_prob=False)
    _add_model(run_dir)
    run = RunDir(run_dir)
    n = int(run.load_graph()["user"].num_nodes)
    run.write_with("embeddings.safetensors",
                   lambda p: save_file({"fraud_prob": torch.full((n,), float("nan"))}, str(p)))
    run.write_json("fraud.json", {"kind": "none", "threshold": None, "val_auprc": None, "candidates": {}})
    out = tmp_path / "export"
    with caplog.at_level("INFO", logger="shopgraph.graph.rings"):
        top = rings_run(run_dir, top=2, export=out, detector=RingDetector(hub_threshold=10))
    said = [r.getMessage() for r in caplog.records if "without a fraud scorer" in r.getMessage()]
    assert len(said) == 1 and "ranked on behaviour and structure" in said[0]
    assert top[0].evidence["mode"] == "behaviour+structure" and top[0].evidence["gnn_mean"] is None
    assert {m[:2] for r in top for m in r.members} == {"ra", "rb"}  # the planted rings, on behaviour alone
    doc = json.loads((out / "rings.json").read_text())
    assert doc["mode"] == "behaviour+structure"
    case = json.loads((out / "cases" / "R0001.json").read_text())
    assert case["explanations"] and all(ex["method"] == "behaviour_zscore" for ex in case["explanations"].values())
    cases = FraudCases.from_run(run_dir)
    assert cases.fraud_prob is None and cases.model is None
    assert cases.explain(top[0].members[0]).method == "behaviour_zscore"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_into_the_run_s_own_folders_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--export RUN/rings`` looked like a previous export (it holds rings.json): the export
    swapped the run's own folder and the run failed its checksums. Refused now, with the run
    folder, a folder holding it, a link into it; a refused export leaves the run as it was."""
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run")
    rings_run(run_dir, top=2, detector=RingDetector(hub_threshold=10))
    (tmp_path / "link").symlink_to(run_dir / "rings")
    before = _snapshot(run_dir)
    for export, why in ((run_dir / "rings", f"is inside the run folder {run_dir}, in its own 'rings'"),
                        (run_dir, f"is the run folder {run_dir}"), (tmp_path, f"holds the run folder {run_dir}"),
                        (tmp_path / "link", "is inside the run folder"),
                        (run_dir / "model" / "x", f"is inside the run folder {run_dir}, in its own 'model'")):
        with pytest.raises(ValueError, match=re.escape(f"--export: {export} {why}")):
            rings_run(run_dir, top=2, export=export, detector=RingDetector(hub_threshold=10))
        assert _snapshot(run_dir) == before
    RunDir(run_dir).verify()
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == (run_dir / "rings").resolve()
    # a file where the folder (or one above it) should be: named, with --export, in one line
    (tmp_path / "afile").write_text("x")
    for export in ("afile/sub", "afile"):
        assert main(["rings", "--run", str(run_dir), "--export", str(tmp_path / export)]) == 1
        err = capsys.readouterr().err
        assert err.strip() == f"shopgraph rings: error: --export: {tmp_path / 'afile'} is a file, not a folder" + (
            f" (got {tmp_path / export})" if export != "afile" else "")
    # a foreign folder: refused before rings/rings.json is rewritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["rings", "--run", str(run_dir), "--top", "1", "--export", str(tmp_path / "mine")]) == 1
    assert "--export: " in capsys.readouterr().err
    assert _snapshot(run_dir) == before and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # RUN/cases, where `shopgraph demo` exports, is none of the run's own folders
    rings_run(run_dir, top=1, export=run_dir / "cases", detector=RingDetector(hub_threshold=10))
    assert (run_dir / "cases" / "cases" / "R0001.json").is_file()
    RunDir(run_dir).verify()


def test_a_re_export_keeps_files_added_to_the_export_folder(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An export replaces its whole folder: one holding anything an export does not write (notes,
    evidence added since) is refused, naming the first few, and nothing is deleted."""
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "export"
    rings_run(run_dir, top=2, export=out, detector=RingDetector(hub_threshold=10))
    rings_run(run_dir, top=1, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)  # a re-export
    (out / "notes.txt").write_text("mine")
    (out / "evidence").mkdir()
    (out / "evidence" / "photo.txt").write_text("photo")
    (out / "cases" / "R0001-notes.txt").write_text("case notes")
    (out / "cases" / "R0002.json").write_text("{}")  # not a case of this export (it has R0001 only)
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"export: .* holds 'evidence', 'notes.txt', 'cases/R0001-notes.txt', "
                                              r"'cases/R0002.json', which a rings export does not write"):
        export_cases([], RunDir(run_dir).load_graph(), ring_tables(), out)
    assert main(["rings", "--run", str(run_dir), "--top", "1", "--export", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--export: {out} holds 'evidence', 'notes.txt'" in err
    assert _snapshot(out) == before
    for extra in ("notes.txt", "evidence/photo.txt", "cases/R0001-notes.txt", "cases/R0002.json"):
        (out / extra).unlink()
    (out / "evidence").rmdir()
    rings_run(run_dir, top=2, export=out, detector=RingDetector(hub_threshold=10), overwrite=True)
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["R0001.csv", "R0001.json", "R0001.md", "R0002.csv", "R0002.json", "R0002.md"]


def test_cases_give_each_member_its_label_and_whether_the_scorer_trained_on_it(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    cases = FraudCases.from_run(run_dir, detector=RingDetector(hub_threshold=10))
    users = cases.data["user"]
    ids = [str(u) for u in users.ids]
    got = cases.labels(ids)
    assert list(got) == ids
    y, train = users.y.tolist(), users.train_mask.tolist()
    assert [label for label, _ in got.values()] == [None if v < 0 else bool(v) for v in y]
    assert [t for _, t in got.values()] == [bool(m and v >= 0) for v, m in zip(y, train)]
    assert any(t for _, t in got.values()) and any(label is not None and not t for label, t in got.values())
    with pytest.raises(KeyError, match="unknown user_id 'nobody'"):
        cases.labels([ids[0], "nobody"])
    no_scorer = FraudCases.from_run(make_run(tmp_path / "bare", with_prob=False),
                                    detector=RingDetector(hub_threshold=10))
    assert not any(t for _, t in no_scorer.labels(ids).values())  # no scorer was fitted on any label


def test_rings_are_ranked_on_the_members_predictions_not_on_scores_fitted_to_their_labels(tmp_path: Path) -> None:
    """A member the scorer was trained on counts in its ring's score by its held-out score (its
    served one is fitted to its label): rings holding leads are not ranked below those the training
    data already knows. The served scores stay in ``gnn_mean``/``gnn_max``, and the flagged count
    is that of the predictions, in the CLI, on the server and in the demo alike."""
    run_dir = make_run(tmp_path / "run", held_out=True)
    cases = FraudCases.from_run(run_dir, detector=RingDetector(hub_threshold=10))
    ids = [str(u) for u in cases.data["user"].ids]
    held = cases.held_out(ids)
    seen = 0
    for ring in cases.rings():
        predicted = [held[u] if held[u] is not None else ring.member_scores[u] for u in ring.members]
        assert cases.predictions(ring) == pytest.approx(dict(zip(ring.members, predicted, strict=True)))
        assert ring.evidence["score_terms"]["gnn"] == pytest.approx(np.mean(predicted))
        assert ring.evidence["predicted_mean"] == pytest.approx(np.mean(predicted))
        assert ring.evidence["predicted_max"] == pytest.approx(max(predicted))
        assert ring.evidence["gnn_mean"] == pytest.approx(np.mean([ring.member_scores[u] for u in ring.members]))
        assert cases.flagged(ring) == sum(p >= THRESHOLD for p in predicted)
        seen += any(held[u] is not None for u in ring.members)
    assert seen  # rings with trained-on members
    # without held-out scores the predictions are the served scores
    plain = FraudCases.from_run(make_run(tmp_path / "plain"), detector=RingDetector(hub_threshold=10))
    for ring in plain.rings():
        assert ring.evidence["predicted_mean"] == ring.evidence["gnn_mean"]
    # damaged held-out scores are named
    with pytest.raises(ValueError, match="has 3 values for the graph's"):
        RingDetector(hub_threshold=10).fit(cases.data, cases.fraud_prob, cases.tables, held_out=np.zeros(3))


def test_cases_and_case_files_give_the_trained_on_members_held_out_scores(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", held_out=True)
    cases = FraudCases.from_run(run_dir, detector=RingDetector(hub_threshold=10))
    ids = [str(u) for u in cases.data["user"].ids]
    held, labels = cases.held_out(ids), cases.labels(ids)
    assert [h is not None for h in held.values()] == [trained for _, trained in labels.values()]
    assert all(h == pytest.approx(0.001 * ids.index(u)) for u, h in held.items() if h is not None)
    with pytest.raises(KeyError, match="unknown user_id 'nobody'"):
        cases.held_out([ids[0], "nobody"])
    out = tmp_path / "cases"
    top = rings_run(run_dir, top=3, export=out, detector=RingDetector(hub_threshold=10))
    seen = 0
    for ring in top:
        csv = pd.read_csv(out / "cases" / f"{ring.ring_id}.csv", dtype={"user_id": str})
        assert csv["member_held_out_probability"].fillna(-1).tolist() == [
            -1 if held[u] is None else pytest.approx(held[u]) for u in csv["user_id"]]
        assert csv["member_held_out_flagged"].astype(object).where(csv["member_held_out_flagged"].notna(), None
                                                                   ).tolist() == [
            None if held[u] is None else bool(held[u] >= THRESHOLD) for u in csv["user_id"]]
        case = json.loads((out / "cases" / f"{ring.ring_id}.json").read_text())
        # the ring's "flagged" counts its members' verdicts on their predictions, named per member
        assert case["flagged"] == sum(bool(m["predicted_flagged"]) for m in case["members"])
        for m in case["members"]:
            prediction = held[m["user_id"]] if held[m["user_id"]] is not None else m["score"]
            assert m["predicted_flagged"] == (prediction >= THRESHOLD)
            assert csv.loc[csv["user_id"] == m["user_id"], "member_predicted_flagged"].eq(m["predicted_flagged"]).all()
        for m in case["members"]:
            check_keys(m, MEMBER_KEYS, "member")
            assert m["held_out_probability"] == pytest.approx(held[m["user_id"]]) if held[m["user_id"]] is not None \
                else m["held_out_probability"] is None
            seen += m["held_out_probability"] is not None
    assert seen  # some members were trained on
    # a run without held-out scores gives none
    plain = FraudCases.from_run(make_run(tmp_path / "plain"), detector=RingDetector(hub_threshold=10))
    assert plain.held_out_prob is None and set(plain.held_out(ids).values()) == {None}
    # damaged ones are named, before anything is written
    run = RunDir(run_dir)
    tensors = load_file(str(run_dir / "embeddings.safetensors"))
    for bad, message in ((tensors[HELD_OUT_KEY][:5], "fraud_prob_held_out has 5 values for the graph's"),
                         (tensors[HELD_OUT_KEY] * 0 + 2.0, "values outside \\[0, 1\\]")):
        run.write_with("embeddings.safetensors", lambda p, b=bad: save_file({**tensors, HELD_OUT_KEY: b}, str(p)))
        with pytest.raises(ValueError, match=message):
            FraudCases.from_run(run_dir, detector=RingDetector(hub_threshold=10))
        before = _snapshot(run_dir)
        with pytest.raises(ValueError, match=message):
            rings_run(run_dir, top=3, export=tmp_path / "again", detector=RingDetector(hub_threshold=10))
        assert _snapshot(run_dir) == before and not (tmp_path / "again").exists()


def test_cases_find_the_rings_an_account_is_in(tmp_path: Path) -> None:
    cases = FraudCases.from_run(make_run(tmp_path / "run"), detector=RingDetector(hub_threshold=10))
    rings = cases.rings()
    assert rings
    for ring in rings:
        for member in ring.members:
            assert ring in cases.rings_of(member)
    members = {m for r in rings for m in r.members}
    loner = next(str(u) for u in cases.data["user"].ids if str(u) not in members)
    assert cases.rings_of(loner) == [] and cases.has_user(loner)
    assert not cases.has_user("nobody") and not cases.has_user(None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown user_id 'nobody'"):
        cases.rings_of("nobody")


def test_listing_rings_again_reads_the_stored_rings_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`shopgraph rings` rewrote RUN/rings/rings.json (and the manifest) on every listing, while
    servers may be reading them. Now a current file found with the same parameters is read, not
    detected again: the listing and a case export from it are those of a fresh detection, and the
    run is untouched; other parameters, or a file computed from an earlier graph, are detected anew."""
    from shopgraph.ui.cli import main

    run_dir = make_run(tmp_path / "run", held_out=True)
    assert main(["rings", "--run", str(run_dir), "--top", "3", "--export", str(tmp_path / "first")]) == 0
    first = capsys.readouterr().out
    stamps = {rel: (run_dir / rel).stat().st_mtime_ns for rel in (RINGS_FILE, "manifest.json")}
    before = _snapshot(run_dir)
    assert main(["rings", "--run", str(run_dir), "--top", "3", "--export", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out == first.replace(str(tmp_path / "first"), str(tmp_path / "again"))
    assert _snapshot(tmp_path / "again") == _snapshot(tmp_path / "first")
    assert _snapshot(run_dir) == before
    assert {rel: (run_dir / rel).stat().st_mtime_ns for rel in stamps} == stamps
    # another detector's rings are stored; the default listing then detects (and stores) its own again
    rings_run(run_dir, top=2, detector=RingDetector(hub_threshold=10))
    assert json.loads((run_dir / RINGS_FILE).read_text())["params"]["hub_threshold"] == 10
    assert main(["rings", "--run", str(run_dir), "--top", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == first.splitlines()[:4]
    assert _snapshot(run_dir) == before
    # new scores (`shopgraph train` again) leave rings.json stale: the rings are ranked again, not read
    tensors = load_file(str(run_dir / "embeddings.safetensors"))
    tensors["fraud_prob"] = 1.0 - tensors["fraud_prob"]
    RunDir(run_dir).write_with("embeddings.safetensors", lambda p: save_file(tensors, str(p)))
    assert "rerun `shopgraph rings" in str(RunDir(run_dir).stale(RINGS_FILE))
    assert main(["rings", "--run", str(run_dir), "--top", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[1:4] != first.splitlines()[1:4]
    assert RunDir(run_dir).fresh(RINGS_FILE)


def test_purchase_velocity_counts_from_the_first_visit_to_the_last_purchase() -> None:
    """A single purchase ten days after an account's first view is slow (0.1 a day), not one a day as
    when the span ran from the first purchase to the last (households of occasional buyers read as
    fast as a burst of fraud); five purchases within an hour of a first view are 5 a day (the span
    is at least a day); no purchase is 0."""
    from shopgraph.graph.rings import user_behaviour

    tables = ring_tables()
    users = ["slow", "burst", "none"]
    events = pd.DataFrame([
        {"user_id": "slow", "item_id": "i000", "event_type": "view", "timestamp": T0, "device_id": "dS"},
        {"user_id": "slow", "item_id": "i000", "event_type": "purchase", "timestamp": T0 + 10 * DAY, "device_id": "dS"},
        *({"user_id": "burst", "item_id": f"i00{k}", "event_type": "view" if k == 0 else "purchase",
           "timestamp": T0 + 600 * k, "device_id": "dB"} for k in range(6)),
        {"user_id": "none", "item_id": "i001", "event_type": "view", "timestamp": T0, "device_id": "dN"},
    ])
    shop = dataclasses.replace(tables, events=events.assign(amount=10.0))
    behaviour = user_behaviour(shop, users)
    assert behaviour.velocity.tolist() == pytest.approx([0.1, 5.0, 0.0])
    assert behaviour.n_purchases.tolist() == [1, 5, 0]
