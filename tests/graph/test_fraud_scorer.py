from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import hetero_neighbor_features
from shopgraph.graph.build import build_graph, message_passing_graph
from shopgraph.graph.fraud_scorer import (
    CANDIDATES,
    RankAverageHead,
    choose_candidate,
    evaluate_fraud_candidates,
    fit_candidates,
    fraud_probabilities,
    rank_average_scores,
    rank_normalise,
    select_fraud_scorer,
)
from shopgraph.graph.model import ModelConfig, ShopGNN
from shopgraph.graph.train import FraudScorer, embed_graph, lean_graph
from tests.conftest import make_tables

CPU = torch.device("cpu")


def _graph(seed: int = 0) -> HeteroData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(make_tables(n_users=80, n_items=25, n_events=1000, seed=seed))
    g = torch.Generator().manual_seed(seed)
    data["user"].x = torch.randn(data["user"].num_nodes, 5, generator=g)
    data["item"].x = torch.randn(data["item"].num_nodes, 7, generator=g)
    return data


@pytest.fixture(scope="module")
def setup() -> tuple[ShopGNN, HeteroData, dict[str, Tensor], dict[str, Tensor]]:
    data = _graph()
    torch.manual_seed(0)
    model = ShopGNN(ModelConfig.from_data(data, hidden=16)).eval()
    train_emb = embed_graph(model, lean_graph(message_passing_graph(data, "train")), CPU)
    test_emb = embed_graph(model, lean_graph(message_passing_graph(data, "test")), CPU)
    return model, data, train_emb, test_emb


def _check_probs(p: Tensor, n: int) -> None:
    assert p.shape == (n,)
    assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


@pytest.mark.parametrize("kind", CANDIDATES)
def test_each_candidate_fits_and_scores(setup: tuple, kind: str) -> None:
    model, data, train_emb, test_emb = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0, candidates=(kind,))
    assert scorer.kind == kind and set(scorer.candidates) == {kind}
    assert scorer.val_auprc == scorer.candidates[kind] and np.isfinite(scorer.threshold)
    assert (scorer.head is None) == (kind == "gnn_head")
    n = int(data["user"].num_nodes)
    for emb, split in ((train_emb, "train"), (test_emb, "test"), (train_emb, None)):
        _check_probs(fraud_probabilities(model, scorer, data, emb["user"], split), n)


def test_selection_takes_the_best_validation_candidate(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0)
    assert set(scorer.candidates) == set(CANDIDATES)
    assert scorer.val_auprc == scorer.candidates[scorer.kind]
    best = max(scorer.candidates.values())
    # the argmax, or a robust candidate preferred within the tie-break margin
    assert scorer.kind in ("graph_trees", "rank_average") or scorer.val_auprc == best


def test_choose_candidate_rule() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(360)].astype(int)
    noise = rng.random(y.size)
    perfect, useless = y + 0.1 * noise, noise
    kind, scores = choose_candidate(y, {"gnn_head": useless, "hybrid": perfect})
    assert kind == "hybrid" and scores["hybrid"] == 1.0
    # graph_trees far below the best: the best wins
    assert choose_candidate(y, {"hybrid": perfect, "graph_trees": useless})[0] == "hybrid"
    # graph_trees a hair below the best (well within one bootstrap SE): graph_trees wins
    close = perfect.copy()
    close[np.flatnonzero(y == 0)[0]] = 1.05  # one negative ranked among the positives
    kind, scores = choose_candidate(y, {"hybrid": perfect, "graph_trees": close})
    assert scores["graph_trees"] < scores["hybrid"] and kind == "graph_trees"
    assert choose_candidate(y, {"hybrid": perfect, "graph_trees": close}, tie_break=False)[0] == "hybrid"
    assert choose_candidate(y, {"gnn_head": useless, "hybrid": perfect}, metric="auroc")[0] == "hybrid"
    # graph_trees as the best is never displaced by the less robust rank_average
    assert choose_candidate(y, {"graph_trees": perfect, "rank_average": close})[0] == "graph_trees"
    assert choose_candidate(y, {"hybrid": perfect, "rank_average": close})[0] == "rank_average"


def test_selection_is_deterministic_under_a_seed(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    a = select_fraud_scorer(model, data, train_emb, seed=3)
    b = select_fraud_scorer(model, data, train_emb, seed=3)
    assert (a.kind, a.threshold, a.candidates) == (b.kind, b.threshold, b.candidates)
    pa = fraud_probabilities(model, a, data, train_emb["user"], None)
    pb = fraud_probabilities(model, b, data, train_emb["user"], None)
    assert torch.equal(pa, pb)


def test_serving_uses_every_edge(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, candidates=("graph_trees",))
    serving = fraud_probabilities(model, scorer, data, train_emb["user"], None).numpy()
    expected = scorer.head.predict_proba(hetero_neighbor_features(lean_graph(data), "user"))
    np.testing.assert_allclose(serving, expected, rtol=1e-6)
    train_view = fraud_probabilities(model, scorer, data, train_emb["user"], "train").numpy()
    assert not np.allclose(serving, train_view)  # later edges change the neighbour features


def test_rank_average_serving_matches_selection(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, candidates=("rank_average",))
    assert isinstance(scorer.head, RankAverageHead)
    assert set(scorer.head.reference) == {"gnn_head", "graph_trees"}
    again = fraud_probabilities(model, scorer, data, train_emb["user"], "train").numpy()
    feats = hetero_neighbor_features(data, "user", "train")
    y = data["user"].y.numpy()
    tr, va = (np.flatnonzero(data["user"][f"{s}_mask"].numpy() & (y >= 0)) for s in ("train", "val"))
    with torch.no_grad():
        gnn = torch.sigmoid(model.fraud_logit(train_emb["user"])).numpy()
    fits = fit_candidates(y, tr, va, gnn, None, feats, candidates=("rank_average",))
    assert set(fits.probs) == {"rank_average"}
    np.testing.assert_allclose(again, fits.probs["rank_average"], rtol=1e-6)


def test_rank_normalise() -> None:
    ref = np.array([0.1, 0.2, 0.2, 0.9])
    np.testing.assert_allclose(rank_normalise(np.array([0.0, 0.2, 0.5, 1.0]), ref), [0.0, 0.5, 0.75, 1.0])
    both = rank_average_scores({"a": np.array([0.9]), "b": np.array([0.0])}, {"a": ref, "b": ref})
    np.testing.assert_allclose(both, [(0.875 + 0.0) / 2])


def test_evaluate_fraud_candidates(setup: tuple) -> None:
    model, data, train_emb, test_emb = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0)
    out = evaluate_fraud_candidates(model, data, train_emb, test_emb, scorer, seed=0)
    assert list(out)[0] == scorer.kind and set(out) == set(scorer.candidates)
    assert out[scorer.kind].metrics["threshold"] == scorer.threshold
    n_test = int((data["user"].test_mask & (data["user"].y >= 0)).sum())
    for ev in out.values():
        assert ev.prob.shape == ev.y_true.shape == (n_test,)
        assert 0 <= ev.metrics["auprc"] <= 1
    # the serving kind's test scores are fraud_probabilities on the test view
    te = (data["user"].test_mask & (data["user"].y >= 0)).numpy()
    direct = fraud_probabilities(model, scorer, data, test_emb["user"], "test").numpy()[te]
    np.testing.assert_allclose(out[scorer.kind].prob, direct, rtol=1e-6)


def test_no_usable_labels(setup: tuple) -> None:
    model, data, train_emb, test_emb = setup
    unlabelled = data.clone()
    unlabelled["user"].y = torch.full_like(data["user"].y, -1)
    scorer = select_fraud_scorer(model, unlabelled, train_emb)
    assert scorer.kind == "none" and scorer.candidates == {} and scorer.head is None
    assert torch.isnan(fraud_probabilities(model, scorer, unlabelled, train_emb["user"], None)).all()
    assert evaluate_fraud_candidates(model, unlabelled, train_emb, test_emb, scorer) == {}


def test_without_user_features_only_the_gnn_head(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    bare = data.clone()
    del bare["user"].x
    scorer = select_fraud_scorer(model, bare, train_emb)
    assert set(scorer.candidates) == {"gnn_head"} and scorer.kind == "gnn_head"


def test_errors(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    with pytest.raises(ValueError, match="candidates: expected a non-empty subset"):
        select_fraud_scorer(model, data, train_emb, candidates=("magic",))
    with pytest.raises(ValueError, match=r"train_emb\['user'\]: expected shape"):
        select_fraud_scorer(model, data, {"user": train_emb["user"][:5]})
    with pytest.raises(ValueError, match="scorer.kind: expected"):
        fraud_probabilities(model, FraudScorer("magic", 0.5, 0.5, {}, None), data, train_emb["user"])
    with pytest.raises(ValueError, match="scorer.head: a 'hybrid' scorer needs"):
        fraud_probabilities(model, FraudScorer("hybrid", 0.5, 0.5, {}, None), data, train_emb["user"])
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="metric: expected one of"):
        choose_candidate(y, {"gnn_head": np.ones(4)}, metric="f1")
    with pytest.raises(ValueError, match="val_probs: no candidates"):
        choose_candidate(y, {})
    with pytest.raises(ValueError, match="reference: expected a non-empty"):
        rank_normalise(np.ones(3), np.array([]))
    with pytest.raises(ValueError, match="neighbor_features: expected a 2-D array with 4 rows"):
        fit_candidates(y, np.arange(2), np.arange(2, 4), np.ones(4), None, np.ones((3, 2)))
