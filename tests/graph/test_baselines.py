"""Purchase and fraud baselines: shapes, handcrafted cases, brute-force agreement, error paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import (
    BPRMF,
    EASE,
    ContentKNN,
    HybridFraudHead,
    ItemKNN,
    LogRegFraud,
    Popularity,
    XGBGraphFraud,
    fraud_baselines,
    hetero_neighbor_features,
    hybrid_features,
    neighbor_mean_features,
    purchase_baselines,
)
from shopgraph.graph.build import build_graph
from tests.conftest import make_tables

FACTORIES: dict[str, Callable[[], Any]] = {
    "popularity": Popularity,
    "itemknn": lambda: ItemKNN(neighbors=5, shrink=1.0),
    "ease": lambda: EASE(lam=1.0),
    "bpr_mf": lambda: BPRMF(dim=8, epochs=3, batch_size=16),
    "content_knn": lambda: ContentKNN(torch.randn(12, 5, generator=torch.Generator().manual_seed(0))),
}


def _random_pairs(n_users: int, n_items: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n_users, (n,), generator=g), torch.randint(0, n_items, (n,), generator=g)])


def _co_purchase_case() -> torch.Tensor:
    """Users 0-5 buy items 0 and 1 together; users 6-9 buy unrelated pairs; user 10 bought only 0."""
    pairs = [(u, 0) for u in range(6)] + [(u, 1) for u in range(6)]
    pairs += [(6, 2), (6, 3), (7, 4), (7, 5), (8, 6), (8, 7), (9, 2), (9, 8), (10, 0)]
    # item 9 is the most popular item, bought alone, so popularity would pick it
    pairs += [(u, 9) for u in range(11, 19)]
    return torch.tensor(pairs).t()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_score_shape_and_finite(name: str) -> None:
    model = FACTORIES[name]().fit(_random_pairs(7, 12, 40), 7, 12)
    users = torch.tensor([0, 3, 6, 3])
    scores = model.score(users)
    assert scores.shape == (4, 12) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    # the same user always gets the same scores
    assert torch.equal(scores[1], scores[3])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_unfitted_and_bad_users(name: str) -> None:
    model = FACTORIES[name]()
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        model.score(torch.tensor([0]))
    model.fit(_random_pairs(7, 12, 40), 7, 12)
    with pytest.raises(ValueError, match=r"users: 1 indices outside \[0, 7\) \(first: 9"):
        model.score(torch.tensor([0, 9]))


@pytest.mark.parametrize("model", [ItemKNN(neighbors=3, shrink=0.0), ItemKNN(), EASE(lam=1.0)])
def test_co_purchased_item_ranked_first(model: Any) -> None:
    model.fit(_co_purchase_case(), 19, 10)
    scores = model.score(torch.tensor([10]))[0]
    scores[0] = float("-inf")  # the item the user already has
    assert int(scores.argmax()) == 1
    assert int(Popularity().fit(_co_purchase_case(), 19, 10).score(torch.tensor([10]))[0].argmax()) == 9


def test_itemknn_matches_brute_force_similarity() -> None:
    pairs = _random_pairs(20, 9, 70, seed=3)
    k, shrink = 3, 2.0
    model = ItemKNN(neighbors=k, shrink=shrink, chunk=4).fit(pairs, 20, 9)
    r = torch.zeros(20, 9)
    r[pairs[0], pairs[1]] = 1.0
    norms = r.norm(dim=0)
    sim = (r.T @ r) / (norms[:, None] * norms[None, :] + shrink)
    sim.fill_diagonal_(0.0)
    w = torch.zeros(9, 9)
    for i in range(9):
        top = torch.topk(sim[i], k).indices
        w[i, top] = sim[i, top]
    w[w < 0] = 0
    assert torch.allclose(torch.from_numpy(model.similarity_.toarray()), w, atol=1e-6)
    users = torch.arange(20)
    assert torch.allclose(model.score(users), r @ w, atol=1e-5)


def test_itemknn_extra_pairs_reach_view_only_users() -> None:
    buys = _co_purchase_case()
    views = torch.tensor([[19], [0]])  # user 19 bought nothing, viewed item 0
    plain = ItemKNN().fit(buys, 20, 10)
    assert float(plain.score(torch.tensor([19])).abs().sum()) == 0.0
    both = ItemKNN().fit(buys, 20, 10, extra_pairs=views, extra_weight=0.3)
    s = both.score(torch.tensor([19]))[0]
    s[0] = float("-inf")
    assert int(s.argmax()) == 1
    assert float(both.user_items_[19, 0]) == pytest.approx(0.3)
    assert float(both.user_items_[10, 0]) == 1.0  # a purchase keeps weight 1
    with pytest.raises(ValueError, match=r"extra_weight: expected a weight in \(0, 1\] \(got 2"):
        ItemKNN().fit(buys, 20, 10, extra_pairs=views, extra_weight=2.0)


def test_revisit_bonus_adds_log_counts_scaled_by_the_users_top_score() -> None:
    from shopgraph.graph.baselines import RevisitBonus

    buys = _co_purchase_case()
    views = torch.tensor([[3, 3, 3, 4], [5, 5, 6, 7]])  # user 3 viewed item 5 twice and item 6 once
    model = RevisitBonus(bonus=0.5).fit(buys, 20, 10, events=views)
    knn = ItemKNN().fit(buys, 20, 10, extra_pairs=torch.unique(views, dim=1))
    users = torch.tensor([3, 4, 0])
    base = knn.score(users)
    counts = torch.zeros(3, 10)
    counts[0, 5], counts[0, 6], counts[1, 7] = 2.0, 1.0, 1.0
    want = base + 0.5 * base.max(1, keepdim=True).values.clamp(min=1e-9) * torch.log1p(counts)
    assert torch.allclose(model.score(users), want, atol=1e-6)
    assert not torch.allclose(model.score(users), base)
    with pytest.raises(ValueError, match=r"bonus: expected >= 0 \(got -1"):
        RevisitBonus(bonus=-1.0)
    with pytest.raises(ValueError, match=r"events: 1 of 1 pairs have a user or item outside"):
        RevisitBonus().fit(buys, 20, 10, events=torch.tensor([[25], [0]]))


def test_ease_matches_closed_form() -> None:
    pairs = _random_pairs(15, 6, 40, seed=1)
    x = np.zeros((15, 6))
    x[pairs[0].numpy(), pairs[1].numpy()] = 1
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(6))
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0)
    model = EASE(lam=5.0).fit(pairs, 15, 6)
    assert np.allclose(model.weights_.numpy(), b, atol=1e-5)
    assert np.allclose(model.score(torch.arange(15)).numpy(), x @ b, atol=1e-4)


def test_ease_refuses_large_catalogue() -> None:
    with pytest.raises(ValueError, match=r"exceeds max_items=10 \(got 12 items\)"):
        EASE(max_items=10).fit(_random_pairs(7, 12, 40), 7, 12)


def test_content_knn_is_cosine_to_mean_profile() -> None:
    feats = torch.randn(12, 5, generator=torch.Generator().manual_seed(2))
    pairs = torch.tensor([[0, 0, 1], [3, 4, 7]])
    model = ContentKNN(feats).fit(pairs, 2, 12)
    unit = torch.nn.functional.normalize(feats, dim=1)
    profile = (unit[3] + unit[4]) / 2
    want = torch.nn.functional.cosine_similarity(profile.unsqueeze(0), feats, dim=1)
    assert torch.allclose(model.score(torch.tensor([0]))[0], want, atol=1e-5)
    with pytest.raises(ValueError, match=r"item_features: expected a FloatTensor\[13, D\] \(got \[12, 5\]\)"):
        ContentKNN(feats).fit(pairs, 2, 13)


def test_bprmf_learns_and_is_deterministic() -> None:
    pairs = _co_purchase_case()
    a = BPRMF(dim=8, epochs=40, lr=0.05, batch_size=8, seed=1).fit(pairs, 19, 10)
    b = BPRMF(dim=8, epochs=40, lr=0.05, batch_size=8, seed=1).fit(pairs, 19, 10)
    assert torch.equal(a.score(torch.arange(19)), b.score(torch.arange(19)))
    assert a.loss_history_[-1] < 0.5 * a.loss_history_[0]


def test_fit_errors() -> None:
    with pytest.raises(ValueError, match=r"train_pairs: 1 of 2 pairs have a user or item outside num_users=3, num_items=4"):
        Popularity().fit(torch.tensor([[0, 5], [1, 1]]), 3, 4)
    with pytest.raises(ValueError, match=r"train_pairs: expected shape \[2, P\] \(got \[3\]\)"):
        ItemKNN().fit(torch.tensor([0, 1, 2]), 3, 4)
    with pytest.raises(ValueError, match="num_users, num_items: expected positive counts"):
        BPRMF().fit(torch.tensor([[0], [0]]), 0, 4)


@pytest.fixture(scope="module")
def shop() -> HeteroData:
    data = build_graph(make_tables(n_users=60, n_items=30, n_events=900))
    g = torch.Generator().manual_seed(0)
    y = data["user"].y
    x = torch.randn(60, 4, generator=g)
    x[:, 0] += 2.0 * (y == 1).float()  # one informative feature
    data["user"].x = x
    data["item"].x = torch.randn(30, 3, generator=g)
    data["device"].x = torch.randn(int(data["device"].num_nodes), 2, generator=g)
    return data


@pytest.mark.parametrize("split", ["val", "test"])
def test_purchase_baselines_on_shop(shop: HeteroData, split: str) -> None:
    content = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    res = purchase_baselines(shop, split=split, item_content=content, bpr_epochs=2)  # type: ignore[arg-type]
    assert set(res) == {"popularity", "itemknn", "itemknn_all_events", "itemknn_revisit", "ease", "bpr_mf",
                        "content_knn"}
    for metrics in res.values():
        assert 0.0 <= metrics["recall@20"] <= 1.0 and 0.0 <= metrics["ndcg@10"] <= 1.0
        assert metrics["users"] > 0 and metrics["seconds"] >= 0.0
    with pytest.raises(ValueError, match="split: expected 'val' or 'test'"):
        purchase_baselines(shop, split="train")


def test_neighbor_mean_features_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g)
    ei = torch.tensor([[0, 1, 2, 3, 3, 5], [1, 2, 1, 1, 4, 4]])
    out = neighbor_mean_features(x, ei, hops=2)
    assert out.shape == (6, 9)

    def agg(h: torch.Tensor) -> torch.Tensor:
        res = torch.zeros_like(h)
        for v in range(6):
            srcs = [s for s, d in ei.t().tolist() if d == v]
            if srcs:
                res[v] = h[srcs].mean(0)
        return res

    m1 = agg(x)
    assert torch.allclose(out[:, :3], x)
    assert torch.allclose(out[:, 3:6], m1, atol=1e-6)
    assert torch.allclose(out[:, 6:], agg(m1), atol=1e-6)
    with pytest.raises(ValueError, match=r"edge_index: 1 of 1 edges have a node outside \[0, 6\) \(first: column 0, \(0, 6\)\)"):
        neighbor_mean_features(x, torch.tensor([[0], [6]]))


def _device_graph() -> HeteroData:
    """Users 0,1,2 share device 0; user 3 alone on device 1. Edge (3, 0) is in the test period."""
    data = HeteroData()
    data["user"].x = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    data["user"].num_nodes = 4
    data["device"].num_nodes = 2
    ei = torch.tensor([[0, 1, 2, 3, 3], [0, 0, 0, 1, 0]])
    data["user", "uses", "device"].edge_index = ei
    data["user", "uses", "device"].split = torch.tensor([0, 0, 0, 0, 2], dtype=torch.uint8)
    data["device", "rev_uses", "user"].edge_index = ei.flip(0)
    data["device", "rev_uses", "user"].split = torch.tensor([0, 0, 0, 0, 2], dtype=torch.uint8)
    return data


def test_hetero_neighbor_features_meta_path_and_no_leak() -> None:
    data = _device_graph()
    feats = hetero_neighbor_features(data, "user", "test")  # sees splits 0 and 1 only
    # columns: x, log1p(events), log1p(distinct devices), mean of device means,
    # user-device-user path mean (self excluded), log1p(paths)
    assert feats.shape == (4, 6)
    assert feats[0, 3] == pytest.approx((1.0 + 2.0 + 4.0) / 3)
    assert feats[0, 4] == pytest.approx((2.0 + 4.0) / 2)
    assert feats[0, 5] == pytest.approx(np.log1p(2))
    assert feats[3, 3] == 8.0  # alone on its device: the mean of means is itself
    assert feats[3, 4] == 0.0 and feats[3, 5] == 0.0  # no other user; the test edge is hidden
    data["user", "uses", "device"].split[4] = 1  # now visible when predicting test
    feats2 = hetero_neighbor_features(data, "user", "test")
    assert feats2[3, 3] == pytest.approx((8.0 + (1.0 + 2.0 + 4.0 + 8.0) / 4) / 2)
    assert feats2[3, 4] == pytest.approx((1.0 + 2.0 + 4.0) / 3)
    assert feats2[0, 4] == pytest.approx((2.0 + 4.0 + 8.0) / 3)
    with pytest.raises(ValueError, match=r"data\['device'\].x: missing"):
        hetero_neighbor_features(data, "device")


def test_one_type_features_contain_neighbor_means() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    ei = torch.randint(0, 8, (2, 20), generator=g)
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)
    data = HeteroData()
    data["node"].x = x
    data["node", "to", "node"].edge_index = ei
    feats = hetero_neighbor_features(data, "node")
    ref = neighbor_mean_features(x, ei, hops=2).numpy()
    # x | log1p(edges) | log1p(neighbours) | 1-hop mean | 2-hop mean of means | path mean | log1p(paths)
    assert np.allclose(feats[:, :3], ref[:, :3])
    assert np.allclose(feats[:, 5:8], ref[:, 3:6], atol=1e-6)
    assert np.allclose(feats[:, 8:11], ref[:, 6:9], atol=1e-6)


def test_neighbour_sums_are_gathered_in_chunks_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    import shopgraph.graph.model as model_mod

    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 7, generator=g)
    src, dst = torch.randint(0, 50, (1000,), generator=g), torch.randint(0, 30, (1000,), generator=g)
    whole = torch.zeros(30, 7).index_add_(0, dst, h[src])
    monkeypatch.setattr(model_mod, "GATHER_CHUNK_VALUES", 7 * 64)  # 64 edges at a time: 16 chunks
    assert torch.equal(model_mod.gather_add(h, src, dst, 30), whole)
    monkeypatch.setattr(model_mod, "GATHER_CHUNK_VALUES", 1)  # one edge at a time
    assert torch.equal(model_mod.gather_add(h, src, dst, 30), whole)
    assert torch.equal(model_mod.gather_add(h, src[:0], dst[:0], 30), torch.zeros(30, 7))  # no edges


def test_hybrid_features_shape(shop: HeteroData) -> None:
    emb = torch.randn(60, 7)
    feats = hybrid_features(shop, emb)
    assert feats.shape == (60, 7 + hetero_neighbor_features(shop).shape[1])
    with pytest.raises(ValueError, match=r"user_emb: expected a FloatTensor\[60, D\] \(got \[5, 7\]\)"):
        hybrid_features(shop, emb[:5])


@pytest.mark.parametrize("cls", [LogRegFraud, XGBGraphFraud, HybridFraudHead])
def test_fraud_models_learn_and_errors(cls: type) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(np.int64)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    X[:, 1] += 2.5 * y
    model = cls()
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        model.predict_proba(X)
    model.fit(X[:300], y[:300])
    prob = model.predict_proba(X[300:])
    assert prob.shape == (100,) and ((prob >= 0) & (prob <= 1)).all()
    assert roc_auc_score(y[300:], prob) > 0.9
    with pytest.raises(ValueError, match=r"X: expected 5 features \(got 4\)"):
        model.predict_proba(X[:, :4])
    with pytest.raises(ValueError, match="y: a single class"):
        cls().fit(X, np.zeros(400, dtype=np.int64))
    with pytest.raises(ValueError, match=r"y: expected 10 labels matching X \(got shape \(400,\)\)"):
        cls().fit(X[:10], y)


def test_xgb_early_stopping_on_validation() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(600) < 0.3).astype(np.int64)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    X[:, 0] += y
    m = XGBGraphFraud(n_estimators=500, early_stopping_rounds=10).fit(X[:400], y[:400], X[400:], y[400:])
    assert m.best_iteration_ < 499
    with pytest.raises(ValueError, match="X_val, y_val: give both or neither"):
        XGBGraphFraud().fit(X, y, X_val=X)


def test_fraud_baselines_on_shop(shop: HeteroData) -> None:
    res = fraud_baselines(shop)
    assert set(res) == {"logreg", "xgb", "xgb_graph"}
    for metrics in res.values():
        assert {"auroc", "auprc", "rec@k", "precision", "recall", "f1", "threshold", "seconds"} <= set(metrics)
        assert 0.0 <= metrics["auroc"] <= 1.0
    bare = shop.clone()
    del bare["user"].x
    with pytest.raises(ValueError, match=r"data\['user'\].x: missing"):
        fraud_baselines(bare)
