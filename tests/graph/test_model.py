from __future__ import annotations

import warnings

import pytest
import torch
from torch_geometric.data import HeteroData

from shopgraph.graph.build import build_graph, message_passing_graph
from shopgraph.graph.model import CONVS, ModelConfig, ShopGNN
from tests.conftest import make_tables


def _graph(seed: int = 0) -> HeteroData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(make_tables(seed=seed))
    g = torch.Generator().manual_seed(seed)
    data["user"].x = torch.randn(data["user"].num_nodes, 5, generator=g)
    data["item"].x = torch.randn(data["item"].num_nodes, 7, generator=g)
    return data  # devices stay featureless: they must get id embeddings


def _model(data: HeteroData, conv: str = "sage", seed: int = 0, **kw: object) -> ShopGNN:
    torch.manual_seed(seed)
    return ShopGNN(ModelConfig.from_data(data, conv=conv, hidden=16, **kw)).eval()  # type: ignore[arg-type]


def _no_edges(data: HeteroData) -> HeteroData:
    out = data.clone()
    for et in out.edge_types:
        out[et].edge_index = torch.empty(2, 0, dtype=torch.long)
    return out


@pytest.mark.parametrize("conv", CONVS)
def test_output_shapes(conv: str) -> None:
    data = _graph()
    model = _model(data, conv)
    out = model(message_passing_graph(data, "train"))
    for nt in ("user", "item", "device"):
        assert out.emb[nt].shape == (data[nt].num_nodes, 16)
        assert torch.isfinite(out.emb[nt]).all()
    assert out.fraud_logit is not None and out.fraud_logit.shape == (data["user"].num_nodes,)
    scores = model.score(out.emb["user"][:4], out.emb["item"])
    assert scores.shape == (4, data["item"].num_nodes)
    torch.testing.assert_close(scores[1, 3], out.emb["user"][1] @ out.emb["item"][3])


def test_feature_and_id_choices() -> None:
    data = _graph()
    config = ModelConfig.from_data(data, id_embeddings=["item"], feature_types=["item"])
    assert config.in_dims == {"user": 0, "item": 7, "device": 0}
    assert config.id_embeddings == ["item"]
    # users and devices start from a learned constant and are described by their neighbourhood
    model = ShopGNN(config).eval()
    emb = model.embed(message_passing_graph(data, "train"))
    assert emb["user"].std(0).mean() > 0  # different neighbourhoods, different embeddings
    isolated = model.embed(_no_edges(data))
    torch.testing.assert_close(isolated["user"][0], isolated["user"][1])  # nothing tells them apart


@pytest.mark.parametrize("conv", CONVS)
def test_determinism_under_seed(conv: str) -> None:
    data = message_passing_graph(_graph(), "train")
    a = _model(data, conv, seed=3).embed(data)
    b = _model(data, conv, seed=3).embed(data)
    c = _model(data, conv, seed=4).embed(data)
    for nt in a:
        assert torch.equal(a[nt], b[nt])
    assert not torch.allclose(a["item"], c["item"])


@pytest.mark.parametrize("conv", CONVS)
def test_invariant_to_edge_order(conv: str) -> None:
    data = message_passing_graph(_graph(), "train")
    model = _model(data, conv)
    shuffled = data.clone()
    g = torch.Generator().manual_seed(1)
    for et in shuffled.edge_types:
        perm = torch.randperm(shuffled[et].edge_index.size(1), generator=g)
        for key in ("edge_index", "time", "split"):  # an edge's attributes move with it
            if key in shuffled[et]:
                v = shuffled[et][key]
                shuffled[et][key] = v[:, perm] if key == "edge_index" else v[perm]
    a, b = model.embed(data), model.embed(shuffled)
    for nt in a:
        torch.testing.assert_close(a[nt], b[nt], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", CONVS)
def test_inductive_pass_on_edgeless_graph(conv: str) -> None:
    data = _graph()
    model = _model(data, conv)
    empty = model.embed(_no_edges(data))
    assert empty["item"].shape == (data["item"].num_nodes, 16)
    assert torch.isfinite(empty["item"]).all()
    # an item isolated inside a full graph is embedded exactly as in the edgeless graph
    isolated = data.clone()
    for et in isolated.edge_types:
        ei = isolated[et].edge_index
        touches = torch.zeros(ei.size(1), dtype=torch.bool)
        if et[0] == "item":
            touches |= ei[0] == 0
        if et[2] == "item":
            touches |= ei[1] == 0
        isolated[et].edge_index = ei[:, ~touches]
        if "time" in isolated[et]:
            isolated[et].time = isolated[et].time[~touches]
    full = model.embed(isolated)
    torch.testing.assert_close(full["item"][0], empty["item"][0], atol=1e-5, rtol=1e-5)
    # a graph that lacks some edge types altogether behaves as if they were empty
    partial = HeteroData()
    for nt in data.node_types:
        partial[nt].num_nodes = data[nt].num_nodes
        if "x" in data[nt]:
            partial[nt].x = data[nt].x
    torch.testing.assert_close(model.embed(partial)["item"], empty["item"])


def test_new_items_beyond_the_id_table_use_features_only() -> None:
    data = _graph()
    model = _model(data)
    grown = _no_edges(data)
    n = data["item"].num_nodes
    grown["item"].x = torch.cat([data["item"].x, data["item"].x[:2]])
    grown["item"].num_nodes = n + 2
    emb = model.embed(grown)["item"]
    assert emb.shape == (n + 2, 16) and torch.isfinite(emb).all()


def test_one_type_graph() -> None:
    data = HeteroData()
    data["node"].num_nodes = 12
    data["node", "to", "node"].edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    model = ShopGNN(ModelConfig.from_data(data, hidden=8, conv="sage"))
    emb = model.embed(data)
    assert emb["node"].shape == (12, 8)
    assert model(data).fraud_logit is None
    assert model.fraud_logit(emb["node"]).shape == (12,)


def test_config_json_round_trip() -> None:
    config = ModelConfig.from_data(_graph(), conv="gatv2", hidden=16, layers=3)
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert again.metadata == config.metadata


def test_bad_inputs() -> None:
    data = _graph()
    with pytest.raises(ValueError, match="conv: expected one of .*got 'gcn'"):
        ModelConfig.from_data(data, conv="gcn")
    with pytest.raises(ValueError, match="hidden: must be divisible by heads"):
        ModelConfig.from_data(data, conv="gatv2", hidden=15, heads=2)
    model = _model(data)
    bad = data.clone()
    bad["item"].x = torch.randn(data["item"].num_nodes, 3)
    with pytest.raises(ValueError, match=r"data\['item'\].x: expected 7 features \(got 3\)"):
        model.embed(bad)
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_json('{"node_types": [], "edge_types": [], "in_dims": {}, "num_nodes": {}, "bogus": 1}')


def test_lightgcn_propagation_matches_the_formula() -> None:
    """Sparse propagation == sum_j x_j / sqrt(deg_out(j) deg_in(i)), repeated edges with multiplicity."""
    from shopgraph.graph.model import LightGCNConv

    g = torch.Generator().manual_seed(3)
    et = ("item", "to", "user")
    ei = torch.stack([torch.randint(0, 9, (40,), generator=g), torch.randint(0, 6, (40,), generator=g)])
    ei = torch.cat([ei, ei[:, :5]], 1)  # five repeated edges
    x = {"item": torch.randn(9, 4, generator=g, requires_grad=True), "user": torch.zeros(6, 4)}
    out = LightGCNConv([et])(x, {et: ei})["user"]
    deg_s = torch.bincount(ei[0], minlength=9).float()
    deg_d = torch.bincount(ei[1], minlength=6).float()
    want = torch.zeros(6, 4)
    for s, d in ei.T.tolist():
        want[d] += x["item"][s].detach() / (deg_s[s] * deg_d[d]).sqrt()
    assert torch.allclose(out, want, atol=1e-6)
    out.sum().backward()  # gradients reach the source embeddings
    assert x["item"].grad is not None and torch.allclose(x["item"].grad.sum(1), 4 * torch.zeros(9).index_add(
        0, ei[0], (deg_s[ei[0]] * deg_d[ei[1]]).rsqrt()))


def test_user_mlp_config() -> None:
    data = _graph()
    with pytest.raises(ValueError, match=r"user_mlp: expected >= 0 \(got -1\)"):
        ModelConfig.from_data(data, conv="history", hidden=16, user_mlp=-1)
    plain = _model(data, "history")
    bent = _model(data, "history", user_mlp=8)
    g = message_passing_graph(data, "train")
    assert not hasattr(plain, "user_mlp") and hasattr(bent, "user_mlp")
    with torch.no_grad():
        emb = bent.embed(g)
    assert emb["user"].shape == (data["user"].num_nodes, 16) and torch.isfinite(emb["user"]).all()
    assert torch.all(emb["user"][:, -1] == 1.0)  # the constant column that carries the item bias
    cfg = ModelConfig.from_json(bent.config.to_json())
    assert cfg.user_mlp == 8


def test_item_counts_read_popularity_from_the_graph() -> None:
    data = _graph()
    model = _model(data, "history", item_counts=True)
    g = message_passing_graph(data, "train")
    for et in g.edge_types:  # item 0 loses every event
        if et[0] == "user" and et[2] == "item":
            keep = g[et].edge_index[1] != 0
            g[et].edge_index = g[et].edge_index[:, keep]
            if "time" in g[et]:
                g[et].time = g[et].time[keep]
    with torch.no_grad():
        with_edges = model.embed(g)["item"][:, -1]
        bare = model.embed(_no_edges(g))["item"][:, -1]
    seen = torch.zeros(data["item"].num_nodes, dtype=torch.bool)
    for et in g.edge_types:
        if et[0] == "user" and et[2] == "item":
            seen[g[et].edge_index[1]] = True
    assert seen.any() and (~seen).any()
    # the bias column grows by log(1 + decayed count) for items with events, and only for them
    assert torch.all(with_edges[seen] > bare[seen])
    assert torch.allclose(with_edges[~seen], bare[~seen])
    plain = _model(data, "history")
    assert not hasattr(plain, "item_event_weight")


def test_weighted_sum_matches_index_add_and_its_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    from shopgraph.graph import model as model_mod

    monkeypatch.setattr(model_mod._WeightedSum, "CHUNK", 7)  # several chunks, one partial
    g = torch.Generator().manual_seed(5)
    src = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    idx, dst = torch.randint(0, 6, (30,), generator=g), torch.randint(0, 4, (30,), generator=g)
    w = torch.rand(30, dtype=torch.float64, generator=g, requires_grad=True)
    out = model_mod.weighted_sum(src, idx, dst, w, 4)
    want = torch.zeros(4, 3, dtype=torch.float64).index_add(0, dst, src[idx] * w.unsqueeze(1))
    assert torch.allclose(out, want)
    assert torch.autograd.gradcheck(lambda s, ww: model_mod.weighted_sum(s, idx, dst, ww, 4), (src, w))


def test_fraud_norm_keeps_the_fraud_head_alive_on_large_embeddings() -> None:
    data = _graph()
    big = torch.randn(50, 16, generator=torch.Generator().manual_seed(0)) * 1000.0
    normed = _model(data, "history", fraud_norm=True)
    assert isinstance(normed.fraud_head[0], torch.nn.LayerNorm)
    with torch.no_grad():
        logits = normed.fraud_logit(big)
    assert logits.std() > 1e-3 and logits.abs().max() < 100  # varied, on a sane scale
    assert not isinstance(_model(data, "history").fraud_head[0], torch.nn.LayerNorm)  # old layout loads


def _revisit_reference(model: ShopGNN, g: HeteroData) -> torch.Tensor:
    """The revisit formula of ``ShopGNN.revisit_scores``, written out per event, dense ``[U, I]``."""
    n_users, n_items = g["user"].num_nodes, g["item"].num_nodes
    ets = [et for et in model.history_types if et in g.edge_types]
    ref = max(int(g[et].time.max()) for et in ets if g[et].time.numel())
    total = torch.zeros(n_users, n_items, dtype=torch.float64)
    for k, et in enumerate(model.history_types):
        if et not in g.edge_types:
            continue
        for (u, i), t in zip(g[et].edge_index.T.tolist(), g[et].time.tolist()):
            age = max(ref - t, 0) / 86400.0
            for j, tau in enumerate(model.config.time_scales):
                w = torch.nn.functional.softplus(model.revisit_weight[k, j]).double()
                total[u, i] += w * torch.exp(torch.tensor(-age / tau, dtype=torch.float64))
    return model.revisit_log_scale.exp().double() * torch.log1p(total)


def test_revisit_term_matches_its_formula_and_only_covers_pairs_with_events() -> None:
    data = _graph()
    model = _model(data, "history", revisit=True)
    with torch.no_grad():  # distinct weights per type and time scale, so a mix-up shows
        model.revisit_weight.copy_(torch.linspace(-1.0, 1.0, model.revisit_weight.numel()).view_as(model.revisit_weight))
    g = message_passing_graph(data, "train")
    with torch.no_grad():
        rv = model.revisit_scores(g)
    assert rv is not None
    want = _revisit_reference(model, g)
    n_users, n_items = data["user"].num_nodes, data["item"].num_nodes
    dense = rv.rows(torch.arange(n_users), n_items)
    assert torch.allclose(dense.double(), want, atol=1e-5)
    assert int((want > 0).sum()) == rv.value.numel()  # one entry per pair with events, none elsewhere
    keys = rv.pairs[0] * n_items + rv.pairs[1]
    assert torch.all(keys[1:] > keys[:-1])  # sorted by user, then item, no repeats
    # rows() of a repeated, unsorted batch and at() for arbitrary (user, item) cells agree with it
    users = torch.tensor([3, 0, 3, 7])
    assert torch.equal(rv.rows(users, n_items), dense[users])
    items = torch.randint(0, n_items, (4, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(rv.at(users, items, n_items), dense[users.unsqueeze(1), items])
    shared = torch.tensor([4, 0, 4, n_items - 1])  # negatives shared by the batch, with a repeat
    assert torch.equal(rv.cols(users, shared, n_items), dense[users][:, shared])


def test_revisit_term_is_trainable_and_enters_the_purchase_score() -> None:
    from shopgraph.graph.model import purchase_scores

    data = _graph()
    model = _model(data, "history", revisit=True).train()
    g = message_passing_graph(data, "train")
    rv = model.revisit_scores(g)
    assert rv is not None
    users = torch.arange(data["user"].num_nodes)
    rv.rows(users, data["item"].num_nodes).sum().backward()
    assert model.revisit_weight.grad is not None and model.revisit_weight.grad.abs().sum() > 0
    assert model.revisit_log_scale.grad is not None and model.revisit_log_scale.grad != 0
    with torch.no_grad():
        emb, rv = model.embed(g), model.revisit_scores(g)
    assert rv is not None
    dot = ShopGNN.score(emb["user"], emb["item"])
    full = purchase_scores(emb["user"], emb["item"], rv)(users)
    assert torch.allclose(full, dot + rv.rows(users, data["item"].num_nodes))
    assert torch.equal(purchase_scores(emb["user"], emb["item"])(users), dot)


def test_revisit_config() -> None:
    data = _graph()
    assert _model(data, "history").revisit_scores(message_passing_graph(data, "train")) is None
    with pytest.raises(ValueError, match=r"revisit, item_counts, user_mlp, groups, consider, knn_rank: options of the 'history' tower"):
        ModelConfig.from_data(data, conv="sage", hidden=16, revisit=True)
    model = _model(data, "history", revisit=True)
    assert ModelConfig.from_json(model.config.to_json()).revisit is True
    with torch.no_grad():  # a graph without user→item events has no revisit pairs
        rv = model.revisit_scores(_no_edges(data))
    assert rv is not None and rv.value.numel() == 0 and rv.pairs.shape == (2, 0)
    assert torch.equal(rv.rows(torch.tensor([0, 1]), 5), torch.zeros(2, 5))


def _group_channel_reference(model: ShopGNN, g: HeteroData, w: float) -> torch.Tensor:
    """``w * sd_u * mix_u[g(i)] * share_i / max_j(...)``, counted here independently of the model."""
    n_users, n_items = g["user"].num_nodes, g["item"].num_nodes
    group = g["item"].group
    n_groups = int(group.max()) + 1
    counts = torch.zeros(n_users, n_groups)
    item_n = torch.ones(n_items)
    for et in g.edge_types:
        if et[0] == "user" and et[2] == "item":
            for u, i in g[et].edge_index.T.tolist():
                counts[u, group[i]] += 1
                item_n[i] += 1
    share = item_n / torch.stack([item_n[group == k].sum() for k in range(n_groups)])[group]
    prior = counts.sum(0) / counts.sum()
    mix = (counts + 2 * prior) / (counts.sum(1, keepdim=True) + 2)
    plug = mix[:, group] * share
    model.group_weight.fill_(0.0)
    base = model.embed(g)
    sd = (base["user"] @ base["item"].T).std(1)  # the spread of the user's scores without the channel
    return w * sd.unsqueeze(1) * plug / plug.max(1, keepdim=True).values


@torch.no_grad()
def test_group_mix_channel_adds_the_plug_in_score_to_the_dot_product() -> None:
    data = _graph()
    assert data["item"].group_names == ["books", "electronics", "shoes"]
    model = _model(data, "history", groups=3)
    g = message_passing_graph(data, "train")
    want = _group_channel_reference(model, g, 2.5)
    model.group_weight.fill_(0.0)
    off = model.embed(g)
    model.group_weight.fill_(2.5)
    on = model.embed(g)
    assert on["user"].shape == (data["user"].num_nodes, 16 + 3)
    assert torch.all(on["user"][:, -1] == 1.0)  # the bias column stays last (the auxiliary loss swaps it)
    got = on["user"] @ on["item"].T - off["user"] @ off["item"].T
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    # the channel is a ranking device: the fraud head and the hybrid trees never see it
    torch.testing.assert_close(model.fraud_input(on["user"]), model.fraud_input(off["user"]))
    assert model.fraud_input(on["user"]).shape == (data["user"].num_nodes, 16)


@torch.no_grad()
def test_group_mix_channel_off_changes_nothing() -> None:
    data = _graph()
    g = message_passing_graph(data, "train")
    plain, grouped = _model(data, "history"), _model(data, "history", groups=3)  # same seed, same weights
    a, b = plain(g), grouped(g)
    torch.testing.assert_close(a.emb["user"] @ a.emb["item"].T, b.emb["user"] @ b.emb["item"].T)
    torch.testing.assert_close(a.fraud_logit, b.fraud_logit)
    # without item groups (the inductive pass of a new item) the channel is all zeros
    grouped.group_weight.fill_(4.0)
    bare = _no_edges(data)
    del bare["item"].group
    assert torch.all(grouped.embed(bare)["item"][:, 15:18] == 0)


def test_group_mix_config_and_bad_groups() -> None:
    data = _graph()
    with pytest.raises(ValueError, match=r"groups: expected >= 0 \(got -1\)"):
        ModelConfig.from_data(data, conv="history", hidden=16, groups=-1)
    with pytest.raises(ValueError, match=r"groups, consider, knn_rank: options of the 'history' tower"):
        ModelConfig.from_data(data, conv="sage", hidden=16, groups=3)
    model = _model(data, "history", groups=2)
    assert ModelConfig.from_json(model.config.to_json()).groups == 2
    with pytest.raises(ValueError, match=r"data\['item'\]\.group: expected groups in \[0, 2\) as in training"):
        model.embed(data)
    bad = data.clone()
    bad["item"].group = bad["item"].group[:3]
    with pytest.raises(ValueError, match=r"data\['item'\]\.group: expected one integer group per item"):
        _model(data, "history", groups=3).embed(bad)


def _consider_reference(model: ShopGNN, g: HeteroData, grouped: bool) -> torch.Tensor:
    """The consideration-set score of :class:`ModelConfig` ``consider``, dense ``[U, I]``, counted
    here per event and written out from its definition (zero where the user has no events)."""
    n_users, n_items = g["user"].num_nodes, g["item"].num_nodes
    group = g["item"].group if grouped else torch.zeros(n_items, dtype=torch.long)
    n_groups = int(group.max()) + 1
    n = torch.zeros(n_users, n_items, dtype=torch.float64)
    for et in g.edge_types:
        if et[0] == "user" and et[2] == "item":
            for u, i in g[et].edge_index.T.tolist():
                n[u, i] += 1
    total = n.sum(1, keepdim=True)
    item_n = 1 + n.sum(0)
    in_group = torch.stack([n[:, group == k].sum(1) for k in range(n_groups)], 1)
    prior = in_group.sum(0) / in_group.sum()
    mix = (in_group + 2 * prior) / (total + 2)
    share_i = item_n / torch.stack([item_n[group == k].sum() for k in range(n_groups)])[group]
    p = mix[:, group] * share_i  # the background: the user's groups, then the group's items
    s, m, w = float(model.consider_share), float(model.consider_size), float(model.consider_weight)
    a, b = (1 - s) * p, s / m
    prior_in = 1 - (1 - p) ** m  # one of m draws from the background
    log_odds = torch.log(prior_in / (1 - prior_in)) + n * torch.log((a + b) / a) - total * b
    weight = float(model.group_weight) if model.config.groups else 0.0
    if model.config.groups:
        model.group_weight.fill_(0.0)
    base = model.embed(g)
    if model.config.groups:
        model.group_weight.fill_(weight)
    sd = (base["user"] @ base["item"].T).double().std(1, keepdim=True)  # without the channel's columns
    return torch.where(n > 0, w * sd * b * torch.sigmoid(log_odds) / p.max(1, keepdim=True).values, 0.0)


@torch.no_grad()
@pytest.mark.parametrize("groups", [3, 0])
def test_consider_score_adds_its_formula_to_the_revisit_term(groups: int) -> None:
    data = _graph()
    g = message_passing_graph(data, "train")
    plain = _model(data, "history", revisit=True, groups=groups)
    model = _model(data, "history", revisit=True, groups=groups, consider=True)  # same seed, same weights
    if groups:
        plain.group_weight.fill_(1.5)
        model.group_weight.fill_(1.5)  # the channel on: the spread is still read without it
    n_users, n_items = data["user"].num_nodes, data["item"].num_nodes
    users = torch.arange(n_users)
    off, learned = model.revisit_scores(g), plain.revisit_scores(g)
    assert off is not None and learned is not None
    assert torch.equal(off.value, learned.value)  # weight 0 (all of training) changes nothing
    model.consider_weight.fill_(3.0)
    model.consider_share.fill_(0.3)
    model.consider_size.fill_(5.0)
    on = model.revisit_scores(g)
    assert on is not None and torch.equal(on.pairs, learned.pairs)  # the same sparse pairs: still exact in FAISS
    got = on.rows(users, n_items) - learned.rows(users, n_items)
    want = _consider_reference(model, g, grouped=bool(groups))
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-3)
    # a caller's embeddings give the same values as the model's own pass
    again = model.revisit_scores(g, model.embed(g))
    assert again is not None
    torch.testing.assert_close(again.value, on.value)
    # more returns to the same item raise its probability of being in the set
    from shopgraph.graph.model import consider_probability

    p, total = torch.full((3,), 0.01), torch.full((3,), 20.0)
    prob = consider_probability(p, torch.tensor([1.0, 2.0, 4.0]), total, 0.25, 6.0)
    assert torch.all(prob[1:] > prob[:-1]) and float(prob[-1]) > 0.9


def test_consider_config() -> None:
    data = _graph()
    with pytest.raises(ValueError, match=r"consider: the consideration-set score is part of the revisit term"):
        ModelConfig.from_data(data, conv="history", hidden=16, consider=True)
    with pytest.raises(ValueError, match=r"revisit, item_counts, user_mlp, groups, consider, knn_rank: options of the 'history'"):
        ModelConfig.from_data(data, conv="sage", hidden=16, consider=True)
    model = _model(data, "history", revisit=True, consider=True)
    assert ModelConfig.from_json(model.config.to_json()).consider is True
    raw = model.config.to_json().replace('"consider": true,', "")
    assert ModelConfig.from_json(raw).consider is False  # run folders from before it load without it
    with torch.no_grad():
        model.consider_weight.fill_(2.0)
        rv = model.revisit_scores(_no_edges(data))  # no events: no pairs, nothing to score
    assert rv is not None and rv.value.numel() == 0


@torch.no_grad()
def test_item_knn_channel_adds_a_low_rank_itemknn_score() -> None:
    data = _graph()
    g = message_passing_graph(data, "train")
    model = _model(data, "history", groups=3, knn_rank=4)
    n_users, n_items = data["user"].num_nodes, data["item"].num_nodes
    gen = torch.Generator().manual_seed(3)
    model.knn_in.copy_(torch.randn(n_items, 4, generator=gen))
    model.knn_out.copy_(torch.randn(n_items, 4, generator=gen))
    off = model.embed(g)
    assert torch.all(off["user"][:, model.knn_columns] == 0)  # weight 0 (all of training): no change
    model.knn_weight.fill_(0.7)
    on = model.embed(g)
    assert on["user"].shape == (n_users, 16 + 3 + 4) and torch.all(on["user"][:, -1] == 1.0)
    # reference: h_u (distinct items with events, binary) @ A, scored against B, in units of spread
    h = torch.zeros(n_users, n_items, dtype=torch.float64)
    for et in g.edge_types:
        if et[0] == "user" and et[2] == "item":
            h[g[et].edge_index[0], g[et].edge_index[1]] = 1.0
    knn = h @ model.knn_in.double() @ model.knn_out.double().T
    tower = (off["user"] @ off["item"].T).double()  # both channels off
    has = h.sum(1, keepdim=True) > 0
    want = torch.where(has, 0.7 * tower.std(1, keepdim=True) * knn / knn.std(1, keepdim=True).clamp(min=1e-12), 0.0)
    got = (on["user"] @ on["item"].T - off["user"] @ off["item"].T).double()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    # a ranking device: the fraud head never sees it
    torch.testing.assert_close(model.fraud_input(on["user"]), model.fraud_input(off["user"]))
    assert model.fraud_input(on["user"]).shape == (n_users, 16)
    # no events (the inductive pass): no user factors; an item past the tables has no factors
    assert torch.all(model.embed(_no_edges(data))["user"][:, model.knn_columns] == 0)
    grown = g.clone()
    grown["item"].n_id = torch.arange(n_items) + 1  # the last row is past the tables
    assert torch.all(model.embed(grown)["item"][-1, model.knn_columns] == 0)
    assert torch.all(model.embed(grown)["item"][0, model.knn_columns] == 0.7 * model.knn_out[1])


def test_item_knn_config() -> None:
    data = _graph()
    with pytest.raises(ValueError, match=r"knn_rank: expected 0 <= knn_rank <= the number of items"):
        ModelConfig.from_data(data, conv="history", hidden=16, knn_rank=-1)
    with pytest.raises(ValueError, match=r"knn_rank: expected 0 <= knn_rank <= the number of items \(30\) \(got 31\)"):
        ModelConfig.from_data(data, conv="history", hidden=16, knn_rank=31)
    model = _model(data, "history", knn_rank=5)
    assert ModelConfig.from_json(model.config.to_json()).knn_rank == 5
    assert model.knn_columns == slice(15, 20) and model.group_columns == slice(15, 15)
