from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.build import build_graph, message_passing_graph
from shopgraph.graph.fraud_scorer import (
    CANDIDATES,
    RankAverageHead,
    account_labels,
    choose_candidate,
    close_pairs,
    evaluate_fraud_candidates,
    fit_candidates,
    fraud_probabilities,
    held_out_fit,
    held_out_folds,
    held_out_known,
    held_out_probabilities,
    held_out_table,
    known_labels,
    max_in_window,
    product_features,
    rank_average_scores,
    rank_normalise,
    ring_features,
    select_fraud_scorer,
)
from shopgraph.graph.metrics import choose_threshold
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
    # the threshold is the max-F1 one of the scores it is applied to: the serving scores
    # (full graph) of the validation users, not the selection fit's train-period ones
    serving = fraud_probabilities(model, scorer, data, embed_graph(model, lean_graph(data), CPU)["user"], None)
    y, _, va, _ = _masks(data)
    assert scorer.threshold == pytest.approx(choose_threshold(y[va], serving.numpy()[va]), rel=1e-5)


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


def _masks(data: HeteroData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    y = data["user"].y.numpy()
    tr, va, te = (np.flatnonzero(data["user"][f"{s}_mask"].numpy() & (y >= 0)) for s in ("train", "val", "test"))
    return y, tr, va, te


def _gnn(model: ShopGNN, emb: dict[str, Tensor]) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.fraud_logit(emb["user"])).numpy()


def test_serving_uses_every_edge(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, candidates=("graph_trees",))
    serving = fraud_probabilities(model, scorer, data, train_emb["user"], None).numpy()
    full = product_features(data, None)
    np.testing.assert_allclose(serving, scorer.head.predict_proba(full), rtol=1e-6)
    # the serving head is fitted on the serving view (every edge), not on the train period
    y, tr, va, _ = _masks(data)
    refit = fit_candidates(y, tr, va, _gnn(model, train_emb), None, full, candidates=("graph_trees",))
    np.testing.assert_allclose(serving, refit.probs["graph_trees"], rtol=1e-6)
    train_view = fraud_probabilities(model, scorer, data, train_emb["user"], "train").numpy()
    assert not np.allclose(serving, train_view)  # later edges change the neighbour features


def test_product_feature_table_names_every_column(setup: tuple) -> None:
    from shopgraph.graph.baselines import hetero_neighbor_feature_names, hetero_neighbor_features
    from shopgraph.graph.fraud_scorer import product_feature_table, ring_column_text

    _, data, _, _ = setup
    table, names = product_feature_table(data, None)
    np.testing.assert_array_equal(table, product_features(data, None))
    assert len(names) == table.shape[1] and len(set(names)) == len(names)
    own = hetero_neighbor_feature_names(data, "user")
    assert len(own) == hetero_neighbor_features(data, "user", "test").shape[1] and names[: len(own)] == own
    assert names[0] == (list(getattr(data["user"], "feature_names", None) or []) or ["f0"])[0]
    assert ring_column_text("co_buy_sync_known_fraud") == (
        "accounts sharing a device that bought within 2 h of this one, labelled fraud in the training data (log count)")
    assert ring_column_text("quick_buy_share").startswith("share of purchases")
    assert ring_column_text("something_else") == "something_else"


def test_held_out_tables_name_their_label_counts_for_the_labels_they_count(setup: tuple) -> None:
    """A fold's held-out trees count the labels of the other folds only: their label columns say so
    (and are read as such by the served reasons), so that an investigator never reads "labelled
    fraud in the training data: 10" beside the served "…: 17" for the same account. The other
    columns keep the served table's names."""
    from shopgraph.graph.fraud_scorer import HELD_OUT_LABELS, product_feature_table, ring_column_text
    from shopgraph.graph.wording import cites_training_labels, describe_user_feature

    _, data, _, _ = setup
    _, tr, _, _ = _masks(data)
    fold = np.full(int(data["user"].num_nodes), -1)
    fold[tr] = np.arange(len(tr)) % 2
    _, served = product_feature_table(data, None)
    table, held = held_out_table(data, fold, 0)
    assert len(held) == len(served) == table.shape[1]
    changed = [(a, b) for a, b in zip(served, held, strict=True) if a != b]
    assert changed and all(" labelled " in a for a, _ in changed)
    assert all(b == a.replace("in the training data", HELD_OUT_LABELS) for a, b in changed)
    assert not any("in the training data" in a and HELD_OUT_LABELS not in b for a, b in zip(served, held, strict=True))
    name = ring_column_text("co_users_known_fraud", held_out=True)
    assert name == ("accounts sharing a device (or other identifier), labelled fraud in the training data outside this "
                    "account's fold (log count)")
    assert describe_user_feature(name, None, float(np.log1p(10))) == (
        "accounts sharing a device (or other identifier), labelled fraud in the training data outside this account's "
        "fold: 10")
    share = ring_column_text("co_users_fraud_share", held_out=True)
    assert describe_user_feature(share, None, 1.0) == (
        "accounts sharing a device (or other identifier): share labelled fraud among those labelled in the training "
        "data outside this account's fold: 100%")
    # every label column, served or held out, is told apart as counting other accounts' labels
    assert all(cites_training_labels(n) for pair in changed for n in pair)


def test_rank_average_serving_matches_a_serving_view_fit(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    serving_emb = embed_graph(model, lean_graph(data), CPU)
    scorer = select_fraud_scorer(model, data, train_emb, candidates=("rank_average",), serving_emb=serving_emb)
    assert isinstance(scorer.head, RankAverageHead)
    assert set(scorer.head.reference) == {"gnn_head", "graph_trees"}
    again = fraud_probabilities(model, scorer, data, serving_emb["user"], None).numpy()
    y, tr, va, _ = _masks(data)
    fits = fit_candidates(y, tr, va, _gnn(model, serving_emb), None, product_features(data, None),
                          candidates=("rank_average",))
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
    out = evaluate_fraud_candidates(model, data, test_emb, scorer, seed=0)
    assert list(out)[0] == scorer.kind and set(out) == set(scorer.candidates)
    n_test = int((data["user"].test_mask & (data["user"].y >= 0)).sum())
    for ev in out.values():
        assert ev.prob.shape == ev.y_true.shape == (n_test,)
        assert 0 <= ev.metrics["auprc"] <= 1
    # every candidate is refitted on the test-visible view (features and test embeddings), as
    # the baselines are: train labels, validation early stopping, test users of the same view
    y, tr, va, te = _masks(data)
    fits = fit_candidates(y, tr, va, _gnn(model, test_emb), test_emb["user"].numpy(),
                          product_features(data, "test"), candidates=list(out), seed=0)
    for kind, ev in out.items():
        np.testing.assert_allclose(ev.prob, fits.probs[kind][te], rtol=1e-6)
        # each thresholded at the max F1 of its own validation scores in that view
        assert ev.metrics["threshold"] == pytest.approx(choose_threshold(y[va], fits.probs[kind][va]), rel=1e-9)


def test_evaluation_reads_no_test_label(setup: tuple) -> None:
    model, data, train_emb, test_emb = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0)
    before = evaluate_fraud_candidates(model, data, test_emb, scorer, seed=0)
    flipped = data.clone()
    te = (data["user"].test_mask & (data["user"].y >= 0))
    flipped["user"].y = torch.where(te, 1 - data["user"].y, data["user"].y)
    after = evaluate_fraud_candidates(model, flipped, test_emb, scorer, seed=0)
    for kind in before:
        np.testing.assert_array_equal(before[kind].prob, after[kind].prob)
        np.testing.assert_array_equal(after[kind].y_true, 1 - before[kind].y_true)


def test_no_usable_labels(setup: tuple) -> None:
    model, data, train_emb, test_emb = setup
    unlabelled = data.clone()
    unlabelled["user"].y = torch.full_like(data["user"].y, -1)
    scorer = select_fraud_scorer(model, unlabelled, train_emb)
    assert scorer.kind == "none" and scorer.candidates == {} and scorer.head is None
    assert torch.isnan(fraud_probabilities(model, scorer, unlabelled, train_emb["user"], None)).all()
    assert evaluate_fraud_candidates(model, unlabelled, test_emb, scorer) == {}


def test_without_user_features_only_the_gnn_head(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    bare = data.clone()
    del bare["user"].x
    scorer = select_fraud_scorer(model, bare, train_emb, serving_emb=train_emb)
    assert set(scorer.candidates) == {"gnn_head"} and scorer.kind == "gnn_head"
    with pytest.raises(ValueError, match=r"serving_emb\['user'\]: expected shape"):
        select_fraud_scorer(model, bare, train_emb, serving_emb={"user": train_emb["user"][:5]})


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


# -- held-out scores of the training accounts ------------------------------------------------------
def test_held_out_scores_cover_exactly_the_trained_on_accounts(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0, candidates=("graph_trees",))
    held = held_out_probabilities(data, scorer, seed=0)
    y, tr, _, _ = _masks(data)
    n = int(data["user"].num_nodes)
    assert held.shape == (n,) and np.isfinite(held).sum() == tr.size
    assert np.isfinite(held[tr]).all() and ((held[tr] >= 0) & (held[tr] <= 1)).all()
    assert account_labels(data, np.ones(n))[1].tolist() == np.isfinite(held).tolist()
    # not the served (fitted) scores: those of a fit that saw every training label
    served = fraud_probabilities(model, scorer, data, train_emb["user"], None).numpy()
    assert not np.allclose(held[tr], served[tr], atol=1e-3)
    np.testing.assert_array_equal(held, held_out_probabilities(data, scorer, seed=0))  # seeded


def test_held_out_score_reads_its_own_label_in_no_row_and_no_co_user_count(setup: tuple) -> None:
    """Given the served trees' settings (their rounds and threshold come from a fit that saw every
    training label; ``held_out_probabilities`` says so), the held-out score of an account does not
    move when its label flips."""
    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0, candidates=("graph_trees",))
    before = held_out_probabilities(data, scorer, seed=0)
    _, tr, _, _ = _masks(data)
    for u in tr[:3]:  # its label flipped: it is in no training row and no co-user count of its own fold
        flipped = data.clone()
        flipped["user"].y = data["user"].y.clone()
        flipped["user"].y[u] = 1 - flipped["user"].y[u]
        after = held_out_probabilities(flipped, scorer, seed=0)
        assert after[u] == before[u]
        assert not np.array_equal(np.nan_to_num(after), np.nan_to_num(before))  # the other folds did read it


def test_held_out_scores_only_for_graph_trees_and_enough_accounts(setup: tuple) -> None:
    model, data, train_emb, _ = setup
    n = int(data["user"].num_nodes)
    for kind in ("gnn_head", "hybrid", "rank_average"):  # the GNN behind them saw every label
        scorer = select_fraud_scorer(model, data, train_emb, seed=0, candidates=(kind,))
        assert np.isnan(held_out_probabilities(data, scorer)).all()
    assert np.isnan(held_out_probabilities(data, FraudScorer("none", float("nan"), float("nan"), {}, None))).all()
    trees = select_fraud_scorer(model, data, train_emb, seed=0, candidates=("graph_trees",))
    assert np.isnan(held_out_probabilities(data, trees, folds=n + 1)).all()  # more folds than accounts
    with pytest.raises(ValueError, match="folds: expected an integer >= 2"):
        held_out_probabilities(data, trees, folds=1)
    with pytest.raises(ValueError, match="scorer.head: a 'graph_trees' scorer needs its fitted trees"):
        held_out_probabilities(data, trees._replace(head=None))


def test_each_folds_trees_give_its_accounts_held_out_scores_on_its_table(setup: tuple) -> None:
    import xgboost as xgb

    model, data, train_emb, _ = setup
    scorer = select_fraud_scorer(model, data, train_emb, seed=0, candidates=("graph_trees",))
    fit = held_out_fit(data, scorer, seed=0)
    _, tr, _, _ = _masks(data)
    assert (np.flatnonzero(fit.fold >= 0) == tr).all() and all(t is not None for t in fit.trees)
    np.testing.assert_array_equal(fit.prob, held_out_probabilities(data, scorer, seed=0))
    known = known_labels(data)
    for k, raw in enumerate(fit.trees):
        # the fold's labels hidden, every other training label kept: the table its trees read
        hidden = held_out_known(data, fit.fold, k)
        assert (hidden[fit.fold == k] == -1).all() and (hidden[fit.fold != k] == known[fit.fold != k]).all()
        ring = ring_features(data, None, known=hidden).x
        assert not np.array_equal(ring, ring_features(data, None, known=known).x)  # the masking shows
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        table, names = held_out_table(data, fit.fold, k)
        np.testing.assert_array_equal(table[:, -ring.shape[1]:], ring)
        assert len(names) == table.shape[1] == product_features(data, None).shape[1]
        mine = np.flatnonzero(fit.fold == k)
        np.testing.assert_allclose(booster.predict(xgb.DMatrix(table[mine])), fit.prob[mine], atol=1e-6)


def test_held_out_folds_are_balanced_seeded_and_label_blind() -> None:
    fold = held_out_folds(23, 5, seed=1)
    assert sorted(np.bincount(fold).tolist()) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(fold, held_out_folds(23, 5, seed=1))
    assert not np.array_equal(fold, held_out_folds(23, 5, seed=2))
    with pytest.raises(ValueError, match="folds: expected an integer >= 2"):
        held_out_folds(10, 1, seed=0)


# -- ring features ---------------------------------------------------------------------------------
H = 3600


def _ring_graph(*, timed: bool = True) -> HeteroData:
    """Six users, three devices, five items; times in seconds, periods in ``.split``.

    Users 0, 1, 2: a ring on device 0 (first use within 30 min), quick buys within 40 min.
    Users 3, 4: a household on device 1, first use 10 days apart, buys days apart.
    User 5: alone on device 2; its only purchase lies in the test period (split 2).
    """
    data = HeteroData()
    data["user"].num_nodes = 6
    data["user"].x = torch.zeros(6, 2)
    data["item"].num_nodes = 5
    data["device"].num_nodes = 3
    data.target = "purchase"
    uses = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 2]])
    uses_t = torch.tensor([0, 600, 1800, 0, 10 * 24 * H, 0])
    buys = torch.tensor([[0, 0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, 2, 3]])
    buys_t = torch.tensor([1000, 1500, 1100, 2400, 5 * 24 * H + 12 * H, 9 * 24 * H + 12 * H, 30 * 24 * H])
    buys_s = torch.tensor([0, 0, 0, 0, 0, 0, 2])
    # a cart 60 s before each ring buy, 600 s before the household's (user 5: no cart)
    carts = buys[:, :6]
    carts_t = buys_t[:6] - torch.tensor([60, 60, 60, 60, 600, 600])
    for et, ei, t, sp in ((("user", "uses", "device"), uses, uses_t, torch.zeros(6, dtype=torch.uint8)),
                          (("user", "purchase", "item"), buys, buys_t, buys_s.to(torch.uint8)),
                          (("user", "cart", "item"), carts, carts_t, torch.zeros(6, dtype=torch.uint8))):
        data[et].edge_index = ei
        data[et].split = sp
        if timed:
            data[et].time = t
    return data


def _col(rf: object, name: str) -> np.ndarray:
    return np.expm1(rf.x[:, rf.names.index(name)])  # type: ignore[attr-defined]


def test_ring_features_separate_a_ring_from_a_household() -> None:
    data = _ring_graph()
    rf = ring_features(data, "test")
    assert rf.x.shape == (6, len(rf.names)) and rf.x.dtype == np.float32
    np.testing.assert_allclose(_col(rf, "co_users"), [2, 2, 2, 1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "co_first_use_sync"), [2, 2, 2, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "co_buy_sync"), [2, 2, 2, 0, 0, 0], atol=1e-5)
    # item 0: users 0 and 1 within 100 s; item 1: users 0 and 2 within 900 s; item 2: 4 days apart
    np.testing.assert_allclose(_col(rf, "co_item_sync"), [2, 1, 1, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "own_burst"), [2, 1, 1, 1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "quick_buys"), [2, 1, 1, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(rf.x[:, rf.names.index("quick_buy_share")], [1, 1, 1, 0, 0, 0])
    # 4 of the 6 visible buys fall in hour 0 UTC, all ring quick buys among them
    np.testing.assert_allclose(rf.x[:, rf.names.index("quick_hour_share")], [4 / 6, 4 / 6, 4 / 6, 0, 0, 0])
    assert not any(n.startswith("quick_item_x") for n in rf.names)  # items without features
    data["item"].x = torch.arange(10, dtype=torch.float32).view(5, 2)
    rf = ring_features(data, "test")
    # user 0 bought items 0 and 1 quickly: the mean of their features
    np.testing.assert_allclose(rf.x[:, rf.names.index("quick_item_x1")], [2, 1, 3, 0, 0, 0])


def test_quick_purchases_name_the_items_behind_the_quick_item_columns() -> None:
    """The items a "quick purchases: mean item …" reason averages, per user, latest first, each
    once, over every event (the served table has no split): user 0 bought items 1 then 0 right
    after carting them; users 3 and 4 carted 10 minutes before buying (not quick); user 5 never
    carted."""
    from shopgraph.graph.fraud_scorer import quick_purchases

    def lists(q) -> list[list[int]]:
        return [q.items(u) for u in range(len(q.total))]

    data = _ring_graph()
    quick = quick_purchases(data)
    assert lists(quick) == [[1, 0], [0], [1], [], [], []] and quick.total.tolist() == [2, 1, 1, 0, 0, 0]
    # a second quick buy of the same item is named once, at its latest; a user with no cart stays empty
    buys = data[("user", "purchase", "item")]
    buys.edge_index = torch.cat([buys.edge_index, torch.tensor([[0], [0]])], dim=1)
    buys.time = torch.cat([buys.time, torch.tensor([1600])])
    data[("user", "cart", "item")].edge_index = torch.cat([data[("user", "cart", "item")].edge_index,
                                                          torch.tensor([[0], [0]])], dim=1)
    data[("user", "cart", "item")].time = torch.cat([data[("user", "cart", "item")].time, torch.tensor([1590])])
    quick = quick_purchases(data)
    assert lists(quick)[0] == [0, 1] and quick.total[0] == 2
    assert lists(quick_purchases(_ring_graph(timed=False))) == [[] for _ in range(6)]
    # more than three: the latest three kept, all counted
    many = _ring_graph()
    items = torch.arange(5)
    many[("user", "purchase", "item")].edge_index = torch.stack([torch.zeros(5, dtype=torch.long), items])
    many[("user", "purchase", "item")].time = 1000 + 100 * items
    many[("user", "purchase", "item")].split = torch.zeros(5, dtype=torch.uint8)
    many[("user", "cart", "item")].edge_index = torch.stack([torch.zeros(5, dtype=torch.long), items])
    many[("user", "cart", "item")].time = 990 + 100 * items
    many[("user", "cart", "item")].split = torch.zeros(5, dtype=torch.uint8)
    quick = quick_purchases(many)
    assert quick.items(0) == [4, 3, 2] and quick.total[0] == 5


def test_ring_features_leave_hubs_out() -> None:
    rf = ring_features(_ring_graph(), "test", hub_threshold=2)  # device 0 has 3 users: a hub
    np.testing.assert_allclose(_col(rf, "co_users"), [0, 0, 0, 1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "co_buy_sync"), 0, atol=1e-5)
    np.testing.assert_allclose(_col(rf, "co_item_sync"), [2, 1, 1, 0, 0, 0], atol=1e-5)  # not via devices


def test_ring_features_see_only_the_visible_edges() -> None:
    data = _ring_graph()
    test_view, every_edge = ring_features(data, "test"), ring_features(data, None)
    assert test_view.names == every_edge.names
    # user 5's purchase is in the test period: invisible when scoring test, visible when serving
    assert _col(test_view, "own_burst")[5] == 0 and _col(every_edge, "own_burst")[5] == pytest.approx(1)
    # changing an edge of the test period changes nothing in the test view
    later = data.clone()
    later["user", "purchase", "item"].time = data["user", "purchase", "item"].time.clone()
    later["user", "purchase", "item"].time[-1] = 1200  # user 5 now "buys" within the ring's hour
    np.testing.assert_array_equal(ring_features(later, "test").x, test_view.x)


def test_ring_features_label_columns_use_known_labels_only() -> None:
    data = _ring_graph()
    known = np.array([1, -1, 0, 0, -1, -1])
    rf = ring_features(data, "test", known=known)
    np.testing.assert_allclose(_col(rf, "co_users_known_fraud"), [0, 1, 1, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(_col(rf, "co_users_known_legit"), [1, 1, 0, 0, 1, 0], atol=1e-5)
    np.testing.assert_allclose(rf.x[:, rf.names.index("co_users_fraud_share")], [0, 0.5, 1, 0, 0, 0])
    # a user's own label never reaches its own row
    flipped = known.copy()
    flipped[0] = 0
    rf2 = ring_features(data, "test", known=flipped)
    np.testing.assert_array_equal(rf2.x[0], rf.x[0])


def test_product_features_read_only_training_labels(setup: tuple) -> None:
    _, data, _, _ = setup
    known = known_labels(data)
    y, tr, _, _ = _masks(data)
    assert (known[tr] == y[tr]).all() and (np.delete(known, tr) == -1).all()
    base = product_features(data, "test")
    flipped = data.clone()
    not_train = ~data["user"].train_mask & (data["user"].y >= 0)
    flipped["user"].y = torch.where(not_train, 1 - data["user"].y, data["user"].y)
    np.testing.assert_array_equal(product_features(flipped, "test"), base)


def test_ring_features_without_times() -> None:
    rf = ring_features(_ring_graph(timed=False), "test")
    assert rf.names == ["co_users"]
    np.testing.assert_allclose(_col(rf, "co_users"), [2, 2, 2, 1, 1, 0], atol=1e-5)


def test_ring_features_errors() -> None:
    data = _ring_graph()
    with pytest.raises(ValueError, match="data: expected a HeteroData with a 'user' node type"):
        ring_features(HeteroData(), "test")
    with pytest.raises(ValueError, match=r"known: expected \[6\] labels"):
        ring_features(data, "test", known=np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="known: expected 1, 0 or -1.*first: 2 at user 3"):
        ring_features(data, "test", known=np.array([0, 0, 0, 2, 0, 0]))
    with pytest.raises(ValueError, match=r"buy_window: expected seconds > 0 \(got 0"):
        ring_features(data, "test", buy_window=0)
    with pytest.raises(ValueError, match=r"hub_threshold: expected an integer >= 1 \(got 0"):
        ring_features(data, "test", hub_threshold=0)
    with pytest.raises(ValueError, match="split: expected"):
        ring_features(data, "later")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_close_pairs_and_max_in_window_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = 40
    group, who = rng.integers(0, 3, r), rng.integers(0, 6, r)
    t = rng.integers(0, 100, r).astype(float)
    window = float(rng.integers(0, 20))
    expected = sorted({(int(who[i]), int(who[j])) for i in range(r) for j in range(r)
                       if group[i] == group[j] and abs(t[i] - t[j]) <= window and who[i] != who[j]})
    assert [tuple(p) for p in close_pairs(group, t, who, window).T.tolist()] == expected
    most = np.zeros(6)
    for i in range(r):
        most[who[i]] = max(most[who[i]], int(((who == who[i]) & (t >= t[i]) & (t <= t[i] + window)).sum()))
    np.testing.assert_array_equal(max_in_window(who, t, window, 6), most)


def test_close_pairs_and_max_in_window_errors() -> None:
    assert close_pairs(np.array([]), np.array([]), np.array([]), 1.0).shape == (2, 0)
    assert (max_in_window(np.array([], dtype=int), np.array([]), 1.0, 3) == 0).all()
    with pytest.raises(ValueError, match="group, time, who: expected equal lengths"):
        close_pairs(np.zeros(3), np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"window: expected a finite number >= 0 \(got -1"):
        close_pairs(np.zeros(3), np.zeros(3), np.zeros(3), -1.0)
    with pytest.raises(ValueError, match=r"time: 1 non-finite values \(first: row 1"):
        close_pairs(np.zeros(3), np.array([0.0, np.nan, 1.0]), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"max_offset: expected an integer >= 1 \(got 0"):
        close_pairs(np.zeros(3), np.zeros(3), np.zeros(3), 1.0, max_offset=0)
    # a crowded window: each row meets only its max_offset nearest rows on either side
    crowd = close_pairs(np.zeros(6), np.arange(6.0), np.arange(6), 10.0, max_offset=1)
    assert [tuple(p) for p in crowd.T.tolist()] == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 4),
                                                    (4, 3), (4, 5), (5, 4)]
    with pytest.raises(ValueError, match="who: expected ids >= 0"):
        close_pairs(np.zeros(2), np.zeros(2), np.array([0, -3]), 1.0)
    with pytest.raises(ValueError, match=r"owner: expected ids in \[0, 2\)"):
        max_in_window(np.array([0, 5]), np.zeros(2), 1.0, 2)
    with pytest.raises(ValueError, match="owner, time: expected equal lengths"):
        max_in_window(np.array([0]), np.zeros(2), 1.0, 2)


def test_account_labels_mark_the_labels_the_scorer_was_fitted_on() -> None:
    data = HeteroData()
    data["user"].ids = ["a", "b", "c", "d", "e"]
    data["user"].num_nodes = 5
    data["user"].y = torch.tensor([1, 0, -1, 1, -1])
    data["user"].train_mask = torch.tensor([True, True, True, False, False])
    data["user"].val_mask = torch.tensor([False, False, False, True, False])
    data["user"].test_mask = torch.tensor([False, False, False, False, True])
    prob = np.array([0.9, 0.1, 0.5, 0.7, 0.2])
    labels, in_training = account_labels(data, prob)
    assert labels.tolist() == [1, 0, -1, 1, -1]
    assert in_training.tolist() == [True, True, False, False, False]  # unlabelled: nothing was fitted on it
    # no scorer (no probabilities, or the all-NaN ones a run without a scorer stores): none trained on
    assert not account_labels(data, None)[1].any()
    assert not account_labels(data, np.full(5, np.nan))[1].any()
    del data["user"].train_mask  # no split: no label was trained on
    assert account_labels(data, prob)[0].tolist() == [1, 0, -1, 1, -1] and not account_labels(data, prob)[1].any()
    del data["user"].y
    labels, in_training = account_labels(data, prob)
    assert (labels == -1).all() and not in_training.any()
