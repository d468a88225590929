"""Explanations: faithfulness on a model whose answer is known, deletion test, fallback, timelines."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from shopgraph.graph.build import build_graph, id_index
from shopgraph.graph.explain import (
    Explanation,
    FeatureAttribution,
    computation_subgraph,
    direct_neighbours,
    evidence_edges,
    explain_user,
    integrated_gradients,
    ring_timeline,
)
from shopgraph.graph.rings import RingDetector
from tests.graph.test_rings import planted_prob, ring_tables

K = 3  # the one feature the planted model reads


class PlantedModel(nn.Module):
    """fraud logit(u) = 2 * tanh(x_u[K]) + 1.5 * sum over u's devices of device.x[:, 0].

    Only feature K of the user matters, and only devices with a non-zero first feature.
    """

    def embed(self, data: HeteroData) -> dict[str, Tensor]:
        x = data["user"].x
        ei = data["user", "uses", "device"].edge_index
        dev = torch.zeros(x.size(0), dtype=x.dtype).index_add(0, ei[0], data["device"].x[ei[1], 0])
        return {"user": torch.stack([torch.tanh(x[:, K]), dev], 1)}

    def fraud_logit(self, user_emb: Tensor) -> Tensor:
        return user_emb @ torch.tensor([2.0, 1.5])


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    tables = ring_tables()
    data = build_graph(tables)
    gen = torch.Generator().manual_seed(0)
    for nt in data.node_types:
        data[nt].x = torch.randn(int(data[nt].num_nodes), 8, generator=gen)
    data["user"].feature_names = [f"f{k}" for k in range(8)]
    # exactly one device carries signal: the ring's dA1
    data["device"].x[:, 0] = 0.0
    data["device"].x[id_index(data, "device")["dA1"], 0] = 2.0
    return data


def test_planted_feature_and_neighbour_rank_first(graph: HeteroData) -> None:
    u = id_index(graph, "user")["ra0"]
    ex = explain_user(PlantedModel(), graph, u, top_k=4)
    assert isinstance(ex, Explanation) and ex.method == "integrated_gradients+occlusion"
    assert ex.user_id == "ra0"
    assert ex.features[0].name == f"f{K}"
    assert abs(ex.features[0].attribution) > 0 and all(f.attribution == 0 for f in ex.features[1:])
    assert (ex.neighbours[0].node_type, ex.neighbours[0].node_id) == ("device", "dA1")
    # removing dA1 removes 1.5 * 2.0 from the logit
    assert ex.neighbours[0].attribution == pytest.approx(3.0, abs=1e-5)
    assert all(n.attribution == 0 for n in ex.neighbours[1:])
    logit = 2 * np.tanh(float(graph["user"].x[u, K])) + 3.0
    assert ex.score == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)


class DeviceOnlyModel(PlantedModel):
    """Reads no user feature at all (as the GNN by default): the logit comes from devices only."""

    def embed(self, data: HeteroData) -> dict[str, Tensor]:
        emb = super().embed(data)["user"]
        return {"user": torch.stack([torch.zeros_like(emb[:, 0]), emb[:, 1]], 1)}


def test_model_without_user_features_falls_back_to_zscores(graph: HeteroData) -> None:
    u = id_index(graph, "user")["ra0"]
    ex = explain_user(DeviceOnlyModel(), graph, u, top_k=3)
    assert ex.method == "behaviour_zscore+occlusion"
    x = graph["user"].x
    z = (x[u] - x.mean(0)) / x.std(0, unbiased=False)
    assert ex.features[0].name == f"f{int(z.abs().argmax())}"
    assert (ex.neighbours[0].node_type, ex.neighbours[0].node_id) == ("device", "dA1")


def test_integrated_gradients_completeness(graph: HeteroData) -> None:
    u = id_index(graph, "user")["u007"]
    model = PlantedModel()
    attr = integrated_gradients(model, graph, u, steps=64)
    x = graph["user"].x
    base = x.mean(0)
    expected = 2 * (np.tanh(float(x[u, K])) - np.tanh(float(base[K])))
    assert float(attr.sum()) == pytest.approx(expected, abs=1e-3)


def test_deletion_top_feature_matters_more_than_others() -> None:
    """On a random nonlinear GNN-like model: resetting the top-attributed feature to the baseline
    moves the logit more than resetting any other feature, on average over users."""
    torch.manual_seed(0)
    data = build_graph(ring_tables(1))
    data["user"].x = torch.randn(int(data["user"].num_nodes), 6) * torch.tensor([3.0, 0.2, 1.0, 0.5, 2.0, 0.1])
    data["device"].x = torch.randn(int(data["device"].num_nodes), 6)
    data["item"].x = torch.randn(int(data["item"].num_nodes), 6)

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 1))

        def embed(self, d: HeteroData) -> dict[str, Tensor]:
            ei = d["user", "uses", "device"].edge_index
            agg = torch.zeros(d["user"].x.size(0), 6).index_add(0, ei[0], d["device"].x[ei[1]])
            return {"user": torch.cat([d["user"].x, agg], 1)}

        def fraud_logit(self, e: Tensor) -> Tensor:
            return self.f(e).squeeze(-1)

    model = Mlp()
    base = data["user"].x.mean(0)
    wins = 0
    users = list(range(0, 90, 9))
    for u in users:
        ex = explain_user(model, data, u, top_k=6)
        order = [int(f.name[1:]) for f in ex.features]

        def change(k: int, u: int = u) -> float:
            d = copy.copy(data)
            x = data["user"].x.clone()
            x[u, k] = base[k]
            d["user"].x = x
            with torch.no_grad():
                return abs(float(model.fraud_logit(model.embed(d)["user"])[u] -
                                 model.fraud_logit(model.embed(data)["user"])[u]))

        top, rest = change(order[0]), [change(k) for k in order[1:]]
        wins += top >= max(rest)
    assert wins >= len(users) - 1, wins


@pytest.mark.parametrize("conv", ["sage", "lightgcn", "history"])
def test_shopgnn_explanation_subgraph_matches_full_graph(conv: str) -> None:
    model_mod = pytest.importorskip("shopgraph.graph.model", reason="graph/model.py not available")
    torch.manual_seed(0)
    data = build_graph(ring_tables())
    for nt in data.node_types:
        data[nt].x = torch.randn(int(data[nt].num_nodes), 5)
    config = model_mod.ModelConfig.from_data(data, hidden=16, layers=2, conv=conv)
    model = model_mod.ShopGNN(config)
    u = id_index(data, "user")["ra1"]
    if conv == "sage":  # the 2-hop subgraph is exact for a 2-layer mean-aggregating GNN
        sub = computation_subgraph(data, u, 2)
        assert sub.data["user"].num_nodes < data["user"].num_nodes
        model.eval()
        with torch.no_grad():
            full = model.fraud_logit(model.embed(data)["user"])[u]
            part = model.fraud_logit(model.embed(sub.data)["user"])[sub.user_index]
        assert float(part) == pytest.approx(float(full), abs=1e-5)
        model.train()
    if conv == "history":  # the fraud logit reads the user's own events only: a 1-hop subgraph
        assert model.fraud_hops == 1
        sub = computation_subgraph(data, u, 1)
        assert sub.data["user"].num_nodes == 1
        own = max(int(sub.data[et].time.max()) for et in sub.data.edge_types if sub.data[et].num_edges)
        assert own < sub.data.reference_time  # ages are measured from the full graph's clock
        model.eval()
        with torch.no_grad():
            # time-decayed event weights of different sizes per time scale
            model.event_weight.copy_(torch.linspace(-3.0, 3.0, model.event_weight.numel()).view_as(model.event_weight))
            full = model.fraud_logit(model.embed(data)["user"])[u]
            part = model.fraud_logit(model.embed(sub.data)["user"])[sub.user_index]
            del sub.data.reference_time  # without the clock the ages, and so the logit, change
            clockless = model.fraud_logit(model.embed(sub.data)["user"])[sub.user_index]
        assert float(part) == pytest.approx(float(full), abs=1e-5)
        assert abs(float(clockless) - float(full)) > 1e-4
        model.train()
    ex = explain_user(model, data, u, top_k=3, steps=4, max_neighbours=4)
    ref = explain_user(model, data, u, top_k=3, steps=4, max_neighbours=4, use_subgraph=False)
    # the history tower reads no user features: their attributions fall back to behaviour z-scores
    features = "behaviour_zscore" if conv == "history" else "integrated_gradients"
    assert ex.method == f"{features}+occlusion" and len(ex.features) == 3
    assert 0 < len(ex.neighbours) <= 3 and ex.score is not None and 0 < ex.score < 1
    assert [f.name for f in ex.features] == [f.name for f in ref.features]
    _same_attributions(ex, ref)
    # explained in eval mode (dropout off: deterministic), then the caller's mode is restored
    assert model.training is True


def _same_attributions(ex: Explanation, ref: Explanation) -> None:
    """The same features and neighbours, in the same order, with attributions within 1e-4."""
    assert [(f.name, f.value) for f in ex.features] == [(f.name, f.value) for f in ref.features]
    assert [(n.node_type, n.node_id, n.others) for n in ex.neighbours] == [
        (n.node_type, n.node_id, n.others) for n in ref.neighbours]
    assert [a.attribution for a in ex.features + ex.neighbours] == pytest.approx(  # type: ignore[operator]
        [a.attribution for a in ref.features + ref.neighbours], abs=1e-4)  # type: ignore[operator]


@pytest.mark.parametrize("conv", ["sage", "lightgcn"])
def test_served_scores_spare_the_full_graph_pass(conv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the model's own scores given, a user's computation subgraph that reproduces its score
    is used without a forward pass over the whole graph; scores that are not the model's (or a
    subgraph that does not reproduce them: LightGCN's degree normalisation) get the full pass,
    and the explanation is the same either way."""
    import shopgraph.graph.explain as explain_mod

    model_mod = pytest.importorskip("shopgraph.graph.model", reason="graph/model.py not available")
    torch.manual_seed(0)
    data = build_graph(ring_tables())
    for nt in data.node_types:
        data[nt].x = torch.randn(int(data[nt].num_nodes), 5)
    model = model_mod.ShopGNN(model_mod.ModelConfig.from_data(data, hidden=16, layers=2, conv=conv)).eval()
    with torch.no_grad():
        own = torch.sigmoid(model.fraud_logit(model.embed(data)["user"]).reshape(-1)).numpy()
    seen: list[int] = []
    real_logit = explain_mod._logit

    def counting(m, d, u):  # type: ignore[no-untyped-def]
        seen.append(int(d["user"].num_nodes))
        return real_logit(m, d, u)

    monkeypatch.setattr(explain_mod, "_logit", counting)
    everyone = int(data["user"].num_nodes)
    u = id_index(data, "user")["ra1"]
    ref = explain_user(model, data, u, top_k=3, steps=4, max_neighbours=4)
    assert everyone in seen
    for served, full_pass in ((own, conv == "lightgcn"), (np.full_like(own, 0.5), True)):
        seen.clear()
        ex = explain_user(model, data, u, top_k=3, steps=4, max_neighbours=4, fraud_prob=served)
        assert (everyone in seen) == full_pass, (conv, seen)
        assert ex.method == ref.method and ex.score == pytest.approx(ref.score, abs=1e-6)
        _same_attributions(ex, ref)


def test_zscore_fallback_without_model(graph: HeteroData) -> None:
    u = id_index(graph, "user")["ra3"]
    prob = planted_prob(graph)
    ex = explain_user(None, graph, u, top_k=3, fraud_prob=prob)
    assert ex.method == "behaviour_zscore" and ex.score == pytest.approx(prob[u])
    x = graph["user"].x
    z = (x[u] - x.mean(0)) / x.std(0, unbiased=False)
    assert ex.features[0].name == f"f{int(z.abs().argmax())}"
    assert ex.features[0].attribution == pytest.approx(float(z[z.abs().argmax()]), rel=1e-5)
    # ra3 uses dA1 (shared with 4 others) and dA2 (shared with 4 others); never its items
    assert {(n.node_type, n.node_id, n.attribution) for n in ex.neighbours} == {("device", "dA1", 4.0),
                                                                                ("device", "dA2", 4.0)}


def test_explain_errors(graph: HeteroData) -> None:
    with pytest.raises(ValueError, match=r"user_index: expected 0 <= user_index < 95 \(got 95\)"):
        explain_user(None, graph, 95)
    with pytest.raises(TypeError, match=r"user_index: expected an int \(got str\)"):
        explain_user(None, graph, "ra0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"feature_names: expected 8 names \(got 2\)"):
        explain_user(None, graph, 0, ["a", "b"])


def test_direct_neighbours_lists_devices_first(graph: HeteroData) -> None:
    u = id_index(graph, "user")["h1"]
    nbrs = direct_neighbours(graph, u)
    devices = [graph["device"].ids[v] for nt, v, _ in nbrs if nt == "device"]
    assert sorted(devices) == ["dH1", "d_h1"] and nbrs[0][0] == "device" and nbrs[1][0] == "device"


def test_ring_timeline_and_evidence_edges() -> None:
    tables = ring_tables()
    data = build_graph(tables)
    det = RingDetector(hub_threshold=10).fit(data, planted_prob(data), tables)
    ring = next(r for r in det.rings_ if "rb0" in r.members)
    tl = ring_timeline(ring, tables)
    assert list(tl.columns) == ["timestamp", "time", "user_id", "event_type", "item_id", "title", "category",
                                "amount", "device_id", "shared_device"]
    assert len(tl) == 48 and set(tl["user_id"]) == set(ring.members)
    assert tl["timestamp"].is_monotonic_increasing and tl["shared_device"].all()
    assert set(tl["category"]) == {"gift cards"}
    assert tl["time"].iloc[0].endswith("Z")
    edges = evidence_edges(ring, data)
    assert list(edges.columns) == ["user_id", "node_type", "node_id", "first_seen", "shared"]
    assert set(edges["node_id"]) == {"dB1"} and edges["shared"].all() and len(edges) == 4
    first = tables.events[tables.events["user_id"] == "rb0"]["timestamp"].min()
    assert edges.loc[edges["user_id"] == "rb0", "first_seen"].item() == first
    untimed = tables.events.drop(columns="timestamp")
    tables_nt = type(tables)(tables.users, tables.items, tables.devices, untimed, tables.labels, tables.root)
    tl2 = ring_timeline(ring, tables_nt)
    assert len(tl2) == 48 and tl2["timestamp"].isna().all() and (tl2["time"] == "").all()
    assert isinstance(tl2, pd.DataFrame)


# -- the served trees ---------------------------------------------------------------------------
def _planted_trees(graph: HeteroData) -> tuple[object, np.ndarray]:
    """Boosted trees fitted on a table whose column 2 decides the label, and that table."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud

    n = int(graph["user"].num_nodes)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(max(n, 200), 5)).astype(np.float32)
    y = (x[:, 2] > 0.3).astype(np.int64)
    trees = XGBGraphFraud(n_estimators=60, seed=0).fit(x, y)
    booster = xgb.Booster()
    booster.load_model(bytearray(trees.booster_bytes()))
    np.testing.assert_allclose(1 / (1 + np.exp(-booster.predict(xgb.DMatrix(x), output_margin=True))),
                               trees.predict_proba(x), atol=1e-6)  # the stored trees predict what served
    return booster, x[:n]


def test_served_tree_explainer_attributes_the_served_score(graph: HeteroData) -> None:
    from shopgraph.graph.explain import ServedTreeExplainer

    booster, x = _planted_trees(graph)
    names = ["a", "b", "planted", "d", "e"]
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    prob = explainer.probabilities()
    u = id_index(graph, "user")["ra1"]
    ex = explainer.explain(graph, u, top_k=5)
    assert ex.method == "tree_shap+shared_identifiers" and ex.user_id == "ra1"
    assert ex.score == pytest.approx(float(prob[u]), abs=1e-6)  # the served probability, not the GNN's
    assert [f.value for f in ex.features] == pytest.approx([float(x[u, names.index(f.name)]) for f in ex.features])
    assert ex.features[0].name == "planted"
    attributions = [abs(f.attribution) for f in ex.features]
    assert attributions == sorted(attributions, reverse=True)
    # every column's contribution plus the trees' base value is the score's log-odds
    xgb = pytest.importorskip("xgboost")
    base = float(booster.predict(xgb.DMatrix(x[u:u + 1]), pred_contribs=True)[0, -1])
    logit = base + sum(f.attribution for f in ex.features)
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(ex.score, abs=1e-5)
    # identifiers with how many other accounts share them: ra1 shares the ring's devices
    assert ex.neighbours and all(n.node_type == "device" for n in ex.neighbours)
    assert ex.neighbours[0].attribution >= 1


def test_served_tree_explainer_groups_hybrid_embedding_columns(graph: HeteroData) -> None:
    from shopgraph.graph.explain import ServedTreeExplainer

    booster, x = _planted_trees(graph)
    explainer = ServedTreeExplainer(booster, "hybrid", x, ["e0", "e1", "planted", "f1", "f2"], embedding_columns=2)
    u = id_index(graph, "user")["ra1"]
    ex = explainer.explain(graph, u, top_k=5)
    assert ex.features[0].name == "planted"
    (emb,) = [f for f in ex.features if f.name.startswith("GNN embedding (2 columns")]
    assert emb.value == pytest.approx(float(np.linalg.norm(x[u, :2])))
    assert ex.score == pytest.approx(float(explainer.probabilities()[u]), abs=1e-6)
    # only the columns some tree splits on are kept and reported (and the embedding's)
    assert {f.name for f in ex.features} <= {"GNN embedding (2 columns together; value: their norm)"} | set(
        explainer.names)
    assert "planted" in explainer.names and len(explainer.names) <= 5


def test_served_tree_explainer_rejects_mismatched_inputs(graph: HeteroData) -> None:
    from shopgraph.graph.explain import ServedTreeExplainer

    booster, x = _planted_trees(graph)
    with pytest.raises(ValueError, match="names: expected 5 column names"):
        ServedTreeExplainer(booster, "graph_trees", x, ["a"])
    with pytest.raises(ValueError, match="the served trees read 5 features"):
        ServedTreeExplainer(booster, "graph_trees", x[:, :4], list("abcd"))
    with pytest.raises(ValueError, match="kind: expected one of"):
        ServedTreeExplainer(booster, "gnn_head", x, list("abcde"))
    explainer = ServedTreeExplainer(booster, "graph_trees", x, list("abcde"))
    with pytest.raises(ValueError, match="top_k"):
        explainer.explain(graph, 0, top_k=0)


def test_reason_groups_join_the_columns_of_one_embedding() -> None:
    from shopgraph.graph.explain import _reason_groups

    names = ["GNN embedding [0]", "GNN embedding [1]", "co_users", "quick purchases: mean item image_4",
             "views: mean item text_0", "quick purchases: mean item image_9", "views: mean item text_7", "f3"]
    got = [(label, cols.tolist(), single) for label, cols, single in _reason_groups(names, {0, 1})]
    assert got == [
        ("GNN embedding (2 columns together; value: their norm)", [0, 1], False),
        ("co_users", [2], True),
        ("quick purchases: mean item image features (2 columns together; value: their norm)", [3, 5], False),
        ("views: mean item text features (2 columns together; value: their norm)", [4, 6], False),
        ("f3", [7], True),
    ]


# -- the served trees of a run folder -----------------------------------------------------------
def _run_serving_trees(tmp_path):  # type: ignore[no-untyped-def]
    """A run folder as `shopgraph train` leaves one that serves boosted trees: the model first,
    then the embeddings (with the trees' probabilities), fraud.json and the trees made from it."""
    xgb = pytest.importorskip("xgboost")
    from safetensors.torch import save_file

    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.explain import ServedTreeExplainer
    from shopgraph.graph.fraud_scorer import product_feature_table
    from shopgraph.graph.run import RunDir
    from tests.graph.test_rings import make_run

    run_dir = make_run(tmp_path / "run", with_prob=False)
    run = RunDir(run_dir)
    data = run.load_graph()
    x, names = product_feature_table(data, None)
    y = (np.arange(x.shape[0]) % 3 == 0).astype(np.int64)
    trees = XGBGraphFraud(n_estimators=5, seed=0).fit(x, y)
    run.write_bytes("model/model.safetensors", b"the weights")
    made_from = run.sources("model/model.safetensors")
    booster = xgb.Booster()
    booster.load_model(bytearray(trees.booster_bytes()))
    prob = torch.from_numpy(ServedTreeExplainer(booster, "graph_trees", x, names).probabilities()).float()
    run.write_with("embeddings.safetensors", lambda p: save_file({"fraud_prob": prob}, str(p)),
                   made_from=made_from, stage="shopgraph train")
    run.write_bytes("fraud_trees.ubj", trees.booster_bytes(), made_from=made_from, stage="shopgraph train")
    run.write_json("fraud.json", {"kind": "graph_trees", "threshold": 0.5, "trees_file": "fraud_trees.ubj"},
                   made_from=made_from, stage="shopgraph train")
    return run, data, prob.numpy().astype(np.float64)


@pytest.mark.parametrize("damage", ["trees_bytes", "fraud_json_bytes", "retrained"])
def test_a_damaged_or_stale_served_scorer_is_an_error_not_a_fallback(tmp_path, caplog, damage) -> None:  # type: ignore[no-untyped-def]
    """Trees (or fraud.json) that fail their checksum, or were left by an earlier training, are an
    error naming the file and `shopgraph train`: explanations of another scorer's score are never
    exported under the served one. Trees that only fail to reproduce the served probabilities keep
    the documented fallback (a warning; the GNN's attribution)."""
    from shopgraph.graph.explain import load_served_explainer
    from shopgraph.graph.rings import RingDetector, rings_run
    from shopgraph.graph.run import ChecksumError, StaleFileError

    run, data, prob = _run_serving_trees(tmp_path)
    served = load_served_explainer(run, data, None, prob)
    assert served is not None
    # its explanations give the served score to the digit, as /fraud/score does, not the trees' own sum
    assert all(served.explain(data, u).score == prob[u] for u in range(0, len(prob), max(1, len(prob) // 5)))
    if damage == "trees_bytes":
        raw = bytearray((run.path / "fraud_trees.ubj").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (run.path / "fraud_trees.ubj").write_bytes(bytes(raw))
        error, message = ChecksumError, r"'fraud_trees.ubj' does not match its checksum .*rerun `shopgraph train --run"
    elif damage == "fraud_json_bytes":
        (run.path / "fraud.json").write_text('{"kind": "graph_trees", "threshold": 0.1, "trees_file": "fraud_trees.ubj"}')
        error, message = ChecksumError, r"'fraud.json' does not match its checksum .*rerun `shopgraph train --run"
    else:  # another training wrote the weights since
        run.write_bytes("model/model.safetensors", b"other weights")
        error, message = StaleFileError, (r"'(fraud.json|embeddings.safetensors)' was computed from an earlier "
                                          r"'model/model.safetensors' \(rewritten since\): rerun `shopgraph train --run")
    with caplog.at_level("WARNING"), pytest.raises(error, match=message):
        load_served_explainer(run, data, None, prob)
    assert "explanations attribute the GNN's fraud score instead" not in caplog.text
    with pytest.raises(ValueError, match=message):
        rings_run(run.path, top=1, export=tmp_path / "export", detector=RingDetector(hub_threshold=10))
    assert not (tmp_path / "export").exists()


def test_trees_that_do_not_reproduce_the_served_probabilities_fall_back_with_a_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from shopgraph.graph.explain import load_served_explainer

    run, data, prob = _run_serving_trees(tmp_path)
    with caplog.at_level("WARNING"):
        assert load_served_explainer(run, data, None, np.clip(prob + 0.1, 0, 1)) is None
    assert "fraud_trees.ubj: the trees do not reproduce the run's served fraud probabilities" in caplog.text


# -- an account that shares nothing: no reason speaks of other accounts -------------------------
def _trees_on_sharing_columns(graph: HeteroData, rule: str) -> tuple[object, np.ndarray, list[str]]:
    """Trees on the product's real feature table of ``graph`` whose label reads the device-sharing
    means of feature f3, the table and its names: they split on the mean over the users on the
    same devices and the mean over the other users, with ``rule`` "own" on the user's own f3 too,
    with "others" not. User u021's row is made that of an account with no device at
    all (no link, no path, every mean 0)."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.fraud_scorer import product_feature_table

    x, names = product_feature_table(graph, None)
    x = x.copy()
    col = {n: k for k, n in enumerate(names)}
    unlinked = id_index(graph, "user")["u021"]
    for name, k in col.items():
        if "device" in name and ("sharing" in name or "paths" in name or name.startswith("distinct")):
            x[unlinked, k] = 0.0
    mean = x[:, col["users sharing a device via uses: mean f3 (self included)"]]
    others = x[:, col["other users sharing a device via uses: mean f3"]]
    y = ((mean > 0.0) & (others < 0.05)) if rule == "own" else ((mean > 0.0) ^ (others > 0.1))
    booster = xgb.Booster()
    booster.load_model(bytearray(XGBGraphFraud(n_estimators=40, seed=0).fit(x, y.astype(np.int64)).booster_bytes()))
    return booster, x, names


@pytest.mark.parametrize("rule", ["own", "others"])
def test_an_account_that_shares_no_device_is_not_told_of_other_accounts(graph: HeteroData, rule: str) -> None:
    """u020 uses only its own device: its "users sharing a device (self included)" means are its own
    values and its "other users sharing a device" means are 0 for nobody. Its reasons give the first
    as its own feature (both contributions together; a reason of its own when the trees never read
    the feature itself) and the second as "no other account on the same devices"; an account with
    no device at all has both there; an account that shares a device keeps the means as they are.
    The contributions still add up to the score."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.explain import ServedTreeExplainer
    from shopgraph.graph.wording import reason_in_words

    booster, x, names = _trees_on_sharing_columns(graph, rule)
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    mean_f3 = "users sharing a device via uses: mean f3 (self included)"
    assert {mean_f3, "other users sharing a device via uses: mean f3"} <= set(explainer.names)
    assert ("f3" in explainer.names) == (rule == "own")  # "others": f3 is a reason only through the mean
    index = id_index(graph, "user")
    probability = explainer.probabilities()

    def raw(u: int) -> dict[str, float]:  # every column's own TreeSHAP contribution
        contrib = booster.predict(xgb.DMatrix(x[u:u + 1]), pred_contribs=True)[0]  # type: ignore[attr-defined]
        return {name: float(contrib[k]) for k, name in enumerate(names)}

    def device_means(items: Sequence[FeatureAttribution]) -> dict[str, float]:
        return {f.name: f.attribution for f in items if "sharing a device via uses: mean" in f.name}

    for user, linked in (("u020", True), ("u021", False)):
        u = index[user]
        items, base = explainer.contributions(u)
        by_name = {f.name: f for f in items}
        assert len(by_name) == len(items) and not device_means(items), user  # each reason once; no means
        assert not any(reason_in_words(f.name).text.startswith(("accounts on the same devices",
                                                                "other accounts on the same devices")) for f in items)
        parts = raw(u)
        others = sum(c for n, c in parts.items() if n.startswith("other users sharing a device via uses: mean"))
        nobody = by_name.get("other users sharing a device via uses: none")
        if linked:  # the mean over itself alone is its own f3: one reason, both contributions
            assert by_name["f3"].attribution == pytest.approx(parts["f3"] + parts[mean_f3], abs=1e-5)
            assert by_name["f3"].value == pytest.approx(float(x[u, names.index("f3")]))
            expected = others
        else:  # no device: nothing was averaged, both kinds of means are "none"
            assert "f3" not in by_name or by_name["f3"].attribution == pytest.approx(parts["f3"], abs=1e-5)
            expected = others + sum(c for n, c in parts.items() if n.startswith("users sharing a device via uses"))
        assert nobody is not None and reason_in_words(nobody.name).text == "no other account on the same devices"
        assert nobody.attribution == pytest.approx(expected, abs=1e-5)
        margin = base + sum(f.attribution for f in items)
        assert 1 / (1 + np.exp(-margin)) == pytest.approx(float(probability[u]), abs=1e-6)
        ex = explainer.explain(graph, u, top_k=3)
        assert not device_means(ex.features) and all(n.attribution == 0 for n in ex.neighbours)
    # ra1 shares dA1 with four accounts: its means are over them, reported as they are
    shared = explainer.contributions(index["ra1"])[0]
    assert device_means(shared)[mean_f3] == pytest.approx(raw(index["ra1"])[mean_f3], abs=1e-6)
    assert "other users sharing a device via uses: none" not in {f.name for f in shared}


def test_self_only_columns_reads_the_baselines_layout(graph: HeteroData) -> None:
    """Every user-sharing mean of the product's table is recognised, with the path count that says
    who shares nothing: the names graph.baselines writes and the names graph.explain reads agree."""
    from shopgraph.graph.explain import _reason_groups, _self_only_columns
    from shopgraph.graph.fraud_scorer import product_feature_table

    x, names = product_feature_table(graph, None)
    reasons = _reason_groups(names, set())
    alone, folds = _self_only_columns(reasons, x, names)
    sharing = [k for k, n in enumerate(names) if " sharing a " in n and ": mean " in n]
    assert sharing and sorted(folds) == sharing
    assert set(alone) == {("purchase", "item"), ("view", "item"), ("uses", "device")}
    index = id_index(graph, "user")
    devices_alone, no_device = alone[("uses", "device")]
    assert devices_alone[index["u020"]] and not devices_alone[index["ra1"]] and not devices_alone[index["u000"]]
    assert not no_device.any()  # everyone here uses a device


def test_a_share_of_labelled_fraud_over_no_labelled_account_is_said_so(graph: HeteroData) -> None:
    """The ring columns' share of labelled fraud among an account's labelled co-users is 0 when it
    has no co-user, or none is labelled: found for every such column of the product's table (the
    served one and a fold's held-out one, whose label columns are named apart), and reported as
    "…: none" or "none of them labelled" with no value, never as a share of 0 %."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.explain import ServedTreeExplainer, _reason_groups, _unlabelled_shares
    from shopgraph.graph.fraud_scorer import held_out_table, product_feature_table
    from shopgraph.graph.wording import (
        NOBODY_SUFFIX,
        NONE_LABELLED,
        SHARE_LABELLED,
        describe_user_feature,
        in_words,
        reason_in_words,
        value_in_words,
    )

    fold = np.where(graph["user"].train_mask.numpy(), np.arange(graph["user"].num_nodes) % 2, -1)
    for x, names in (product_feature_table(graph, None), held_out_table(graph, fold, 0)):
        found = _unlabelled_shares(_reason_groups(names, set()), x, names)
        shares = [k for k, n in enumerate(names) if SHARE_LABELLED in n]
        assert shares and sorted(found) == shares
        for k, (alone, unlabelled) in found.items():
            base, _, where = names[k].partition(SHARE_LABELLED)
            counts = [names.index(f"{base}, labelled {kind} {where} (log count)") for kind in ("fraud", "legitimate")]
            np.testing.assert_array_equal(alone.who, x[:, names.index(f"{base} (log count)")] <= 0)
            np.testing.assert_array_equal(unlabelled.who, (x[:, counts] <= 0).all(axis=1))
            assert alone.who.any() and not alone.who.all()  # both kinds of account are there
            assert not (alone.who & ~unlabelled.who).any()  # no co-user: none labelled either
            assert np.all(x[unlabelled.who, k] == 0)
            assert alone.name == f"{base}{NOBODY_SUFFIX}" and unlabelled.name == f"{base}{NONE_LABELLED}{where}"
            for name in (alone.name, unlabelled.name):
                reading = reason_in_words(name)
                assert reading.unit == "none" and value_in_words(reading, 0.0) == ""
                # the HTTP reasons' words: not a plain user feature, so read as the column is worded
                assert describe_user_feature(name, None, 0.0) is None and in_words(name, 0.0) == reading.text
            assert reason_in_words(alone.name).text == "no other " + base
    # trees that read the share: an account with no co-user, or whose co-users have no label, is told so
    x, names = product_feature_table(graph, None)
    k = next(k for k, n in enumerate(names) if n.startswith("accounts sharing a device") and SHARE_LABELLED in n)
    y = (x[:, k] > 0.3).astype(np.int64)
    only = np.zeros_like(x)
    only[:, k] = x[:, k]  # the trees can split on nothing else
    booster = xgb.Booster()
    booster.load_model(bytearray(XGBGraphFraud(n_estimators=20, seed=0).fit(only, y).booster_bytes()))
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    assert names[k] in explainer.names
    alone, unlabelled = _unlabelled_shares(_reason_groups(names, set()), x, names)[k]
    nobody = "accounts sharing a device (or other identifier): none"
    told = f"accounts sharing a device (or other identifier){NONE_LABELLED}in the training data"
    for who, name in ((alone.who, nobody), (unlabelled.who & ~alone.who, told), (~unlabelled.who, names[k])):
        if who.any():
            items = {f.name for f in explainer.contributions(int(np.flatnonzero(who)[0]))[0]}
            assert name in items and not ({nobody, told, names[k]} - {name}) & items


def test_an_account_without_co_users_gets_one_reason_for_their_counts(graph: HeteroData) -> None:
    """Its count of co-users, of those labelled fraud or legitimate and their share labelled fraud are
    all about nobody: one reason, "no other accounts sharing a device (or other identifier)", their
    contributions summed ("labelled fraud: 0" beside "none" read as co-users that are clean)."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.explain import ServedTreeExplainer
    from shopgraph.graph.fraud_scorer import product_feature_table
    from shopgraph.graph.wording import SHARE_LABELLED

    x, names = product_feature_table(graph, None)
    share = next(n for n in names if n.startswith("accounts sharing a device") and SHARE_LABELLED in n)
    base, _, where = share.partition(SHARE_LABELLED)
    about = [f"{base} (log count)", f"{base}, labelled fraud {where} (log count)", share]
    cols = [names.index(a) for a in about]
    y = (x[:, cols[0]] > 0).astype(np.int64)
    only = np.zeros_like(x)
    only[:, cols] = x[:, cols] + np.random.default_rng(0).normal(0, 0.01, size=(len(x), len(cols)))
    booster = xgb.Booster()
    booster.load_model(bytearray(XGBGraphFraud(n_estimators=20, seed=0).fit(only, y).booster_bytes()))
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    alone = np.flatnonzero(x[:, cols[0]] <= 0)
    shares = np.flatnonzero(x[:, cols[0]] > 0)
    assert alone.size and shares.size
    for u, nobody in ((int(alone[0]), True), (int(shares[0]), False)):
        items, b = explainer.contributions(u)
        named = {f.name for f in items}
        assert (f"{base}: none" in named) == nobody and not (named & set(about)) == nobody
        assert b + sum(f.attribution for f in items) == pytest.approx(float(margin[u]), abs=1e-4)


def test_an_account_without_any_co_user_is_told_so_once(graph: HeteroData) -> None:
    """No co-user on any identifier, so none on a device either: one reason, "no other accounts sharing
    a device (or other identifier)", holding the device means' and the 2-hour co-buyers' contributions
    too (they were given beside it, "no other account on the same devices", "no other accounts sharing
    a device that bought within 2 h of this one": the same fact again); the contributions still add up."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.explain import ServedTreeExplainer
    from shopgraph.graph.fraud_scorer import product_feature_table

    x, names = product_feature_table(graph, None)
    x = x.copy()
    count = names.index("accounts sharing a device (or other identifier) (log count)")
    others = names.index("other users sharing a device via uses: mean f3")
    co_buy = names.index("accounts sharing a device that bought within 2 h of this one (log count)")
    alone = np.flatnonzero(x[:, count] <= 0)
    assert alone.size and (x[:, count] > 0).any()
    for k, name in enumerate(names):  # the accounts without co-users: nobody on their devices either
        if "device" in name and ("sharing" in name or "paths" in name):
            x[alone, k] = 0.0
    y = ((x[:, count] > 0) & ((x[:, others] > np.median(x[:, others])) | (x[:, co_buy] > 0))).astype(np.int64)
    only = np.zeros_like(x)
    only[:, [count, others, co_buy]] = x[:, [count, others, co_buy]]
    booster = xgb.Booster()
    booster.load_model(bytearray(XGBGraphFraud(n_estimators=20, seed=0).fit(only, y).booster_bytes()))
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    u = int(alone[0])
    items, base = explainer.contributions(u)
    named = [f.name for f in items]
    assert "accounts sharing a device (or other identifier): none" in named
    assert "other users sharing a device via uses: none" not in named and len(named) == len(set(named))
    # ... nor, apart, none of them that bought within 2 h (the same fact again)
    assert not [n for n in named if n.startswith("accounts sharing a device that bought")], named
    assert base + sum(f.attribution for f in items) == pytest.approx(float(margin[u]), abs=1e-4)


def test_an_account_without_quick_purchases_is_not_told_what_they_are(graph: HeteroData) -> None:
    """The means over the items an account bought right after viewing or carting them are 0 for an
    account that bought none so: their reasons are reported together as "no purchase made right
    after viewing or carting the item" (the contributions still add up), not as what those items are."""
    xgb = pytest.importorskip("xgboost")
    from shopgraph.graph.baselines import XGBGraphFraud
    from shopgraph.graph.explain import ServedTreeExplainer
    from shopgraph.graph.fraud_scorer import product_feature_table, ring_column_text
    from shopgraph.graph.wording import NO_QUICK_BUYS, QUICK_ITEM_REASON, reason_in_words

    x, names = product_feature_table(graph, None)
    quick = [k for k, n in enumerate(names) if n.startswith(QUICK_ITEM_REASON)]
    count = names.index(ring_column_text("quick_buys"))
    assert quick and np.all(x[np.ix_(x[:, count] <= 0, quick)] == 0)  # means over no item
    rng = np.random.default_rng(0)
    x = x.copy()  # this small shop has too few quick purchases: give every other account some
    x[::2, count] = np.log1p(2.0)
    x[::2, quick] = rng.normal(size=(len(x[::2]), len(quick)))
    none = x[:, count] <= 0
    y = (x[:, quick].sum(axis=1) > np.median(x[:, quick].sum(axis=1))).astype(np.int64)
    # the share of quick purchases says the same "none" (0 % of an account that bought nothing is 0 of nothing)
    share = names.index(ring_column_text("quick_buy_share"))
    x[::2, share] = rng.uniform(0.2, 1.0, size=len(x[::2]))
    x[1::2, share] = 0.0
    only = np.zeros_like(x)
    only[:, quick + [share]] = x[:, quick + [share]]
    y = ((x[:, quick].sum(axis=1) > np.median(x[:, quick].sum(axis=1))) | (x[:, share] > 0.6)).astype(np.int64)
    booster = xgb.Booster()
    booster.load_model(bytearray(XGBGraphFraud(n_estimators=20, seed=0).fit(only, y).booster_bytes()))
    explainer = ServedTreeExplainer(booster, "graph_trees", x, names)
    assert names[share] in explainer.names  # the trees read it
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    for u, bought in ((int(np.flatnonzero(none)[0]), False), (int(np.flatnonzero(~none)[0]), True)):
        items, base = explainer.contributions(u)
        found = [f.name for f in items if f.name in (NO_QUICK_BUYS, names[share]) or f.name.startswith(QUICK_ITEM_REASON)]
        assert (found == [NO_QUICK_BUYS]) != bought and (NO_QUICK_BUYS in found) != bought
        assert (names[share] in found) == bought
        assert base + sum(f.attribution for f in items) == pytest.approx(float(margin[u]), abs=1e-4)
    assert reason_in_words(NO_QUICK_BUYS).text == "no purchase made right after viewing or carting the item, over all activity"


def test_shared_identifiers_name_the_other_accounts_and_say_when_the_list_is_cut(graph: HeteroData) -> None:
    """A device's other accounts are named (the first MAX_OTHERS, sorted; the count is all of them),
    and an explanation says how many identifiers there were when it lists fewer."""
    from shopgraph.graph.explain import MAX_OTHERS, ServedTreeExplainer

    index = id_index(graph, "user")
    ex = explain_user(None, graph, index["ra1"])
    (da1,) = [n for n in ex.neighbours if n.node_id == "dA1"]
    assert da1.others == ("ra0", "ra2", "ra3", "ra4") and da1.attribution == 4
    # u000 also uses the Wi-Fi kiosk with 11 other accounts: 10 named, 11 counted
    ex = explain_user(None, graph, index["u000"])
    wifi = next(n for n in ex.neighbours if n.node_id == "d_wifi")
    assert wifi.attribution == 11 and len(wifi.others) == MAX_OTHERS == 10
    assert list(wifi.others) == sorted(f"u{k:03d}" for k in range(1, 12))[:10]
    assert ex.neighbours_total == 2 and len(ex.neighbours) == 2 and ex.neighbour_types == ("device",)
    cut = explain_user(None, graph, index["u000"], top_k=1)
    assert [n.node_id for n in cut.neighbours] == ["d_wifi"] and cut.neighbours_total == 2
    # the served trees' explanation too, and its case-file form
    booster, x = _planted_trees(graph)
    served = ServedTreeExplainer(booster, "graph_trees", x, ["a", "b", "planted", "d", "e"]).explain(
        graph, index["u000"], top_k=1)
    assert served.neighbours[0].others == wifi.others and served.neighbours_total == 2
    as_dict = served.to_dict()
    assert set(as_dict) == {"user_id", "score", "method", "features", "neighbours", "base_value",
                            "unlisted_attribution", "neighbours_total"}  # the case files' schema
    assert as_dict["neighbours"][0]["others"] == list(wifi.others)


def test_tree_explanation_adds_up_with_its_base_and_unlisted_contributions(graph: HeteroData) -> None:
    """base + the listed contributions + the unlisted ones is the score's log-odds, whatever top_k."""
    from shopgraph.graph.explain import ServedTreeExplainer

    booster, x = _planted_trees(graph)
    explainer = ServedTreeExplainer(booster, "graph_trees", x, ["a", "b", "planted", "d", "e"])
    u = id_index(graph, "user")["ra1"]
    for top_k in (1, 2, 5):
        ex = explainer.explain(graph, u, top_k=top_k)
        assert ex.base is not None and ex.unlisted is not None and ex.score is not None
        assert ex.base + sum(f.attribution for f in ex.features) + ex.unlisted == pytest.approx(
            np.log(ex.score / (1 - ex.score)), abs=1e-6)
    assert ex.unlisted == 0.0  # all five listed
    assert explain_user(None, graph, u).unlisted is None  # z-scores add up to nothing


def test_case_file_features_give_the_column_and_its_words(graph: HeteroData) -> None:
    from shopgraph.graph.explain import Explanation, FeatureAttribution

    ex = Explanation("u1", 0.9, "tree_shap+shared_identifiers", [
        FeatureAttribution("quick purchases: mean item image features (87 columns together; value: their norm)",
                           0.25, 1.8),
        FeatureAttribution("accounts sharing a device (or other identifier), labelled fraud in the training data "
                           "(log count)", float(np.log1p(8)), 2.96),
        FeatureAttribution("night_share", -1.4, 0.2)], [])
    norm, count, standardised = ex.to_dict()["features"]
    assert norm == {  # a norm of embedding columns means nothing to a reader: no value in words
        "name": "quick purchases: mean item image features (87 columns together; value: their norm)",
        "reason": "items bought right after viewing or carting them, over all activity: what they are, judged from their pictures",
        "value": 0.25, "value_in_words": "", "attribution": 1.8}
    assert (count["value_in_words"], standardised["value_in_words"]) == ("8", "1.4 SD below average")
