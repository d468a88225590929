"""Metrics against slow brute-force references and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from shopgraph.graph.metrics import choose_threshold, fraud_metrics, ranking_metrics, ranking_metrics_many


def _brute_force(
    scores: torch.Tensor, exclude: torch.Tensor, test: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    """One user at a time, with Python sets and sorted lists."""
    num_items = scores.size(1)
    test_sets: dict[int, set[int]] = {}
    for u, i in test.t().tolist():
        test_sets.setdefault(u, set()).add(i)
    excl: dict[int, set[int]] = {}
    for u, i in exclude.t().tolist():
        excl.setdefault(u, set()).add(i)
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hit")}
    shown: set[int] = set()
    for u, rel in test_sets.items():
        ranked = sorted(
            (i for i in range(num_items) if i not in excl.get(u, set())),
            key=lambda i: -float(scores[u, i]),
        )
        for k in ks:
            top = ranked[:k]
            hits = [1.0 if i in rel else 0.0 for i in top]
            out[f"recall@{k}"] += sum(hits) / len(rel)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
            out[f"ndcg@{k}"] += dcg / idcg
            out[f"hit@{k}"] += float(sum(hits) > 0)
        shown.update(ranked[: max(ks)])
    n = len(test_sets)
    res = {key: v / n for key, v in out.items()}
    res[f"coverage@{max(ks)}"] = len(shown) / num_items
    res["users"] = float(n)
    return res


@pytest.mark.parametrize("batch_size", [1, 4, 1024])
def test_many_rankings_at_once_are_each_ranking_alone(batch_size: int) -> None:
    """The calibrations rank validation once per setting from one shared dot product: each
    ranking's metrics must be those it gets alone (coverage too), and a scorer that gives another
    number of rankings than asked is refused."""
    g = torch.Generator().manual_seed(7)
    n_users, n_items = 11, 30
    variants = [torch.rand(n_users, n_items, generator=g) for _ in range(3)]
    perm = torch.randperm(n_users * n_items, generator=g)
    exclude = torch.stack([perm[:90] // n_items, perm[:90] % n_items])
    test = torch.stack([perm[90:140] // n_items, perm[90:140] % n_items])

    def many(users: torch.Tensor):
        for v in variants:
            yield v[users]

    got = ranking_metrics_many(many, 3, exclude, test, n_items, ks=(5, 10), batch_size=batch_size)
    assert got == [ranking_metrics(lambda u, v=v: v[u], exclude, test, n_items, ks=(5, 10), batch_size=batch_size)
                   for v in variants]
    assert len({g_["coverage@10"] for g_ in got}) > 1  # the variants differ, so sharing would show
    with pytest.raises(ValueError, match="score_fn: gave 3 rankings of a batch, expected 4"):
        ranking_metrics_many(many, 4, exclude, test, n_items)
    with pytest.raises(ValueError, match="score_fn: gave more than the 2 rankings asked for"):
        ranking_metrics_many(many, 2, exclude, test, n_items)
    with pytest.raises(ValueError, match="n: expected a positive number of rankings"):
        ranking_metrics_many(many, 0, exclude, test, n_items)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 3, 1024])
@pytest.mark.parametrize("ks", [(1, 5), (10, 20), (30, 50)])
def test_ranking_matches_brute_force(seed: int, batch_size: int, ks: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    n_users, n_items = 13, 40
    scores = torch.rand(n_users, n_items, generator=g)
    # disjoint exclude / test pairs drawn from a random permutation of all pairs
    perm = torch.randperm(n_users * n_items, generator=g)
    excl_keys, test_keys = perm[:150], perm[150:200]
    exclude = torch.stack([excl_keys // n_items, excl_keys % n_items])
    test = torch.stack([test_keys // n_items, test_keys % n_items])
    got = ranking_metrics(lambda u: scores[u], exclude, test, n_items, ks=ks, batch_size=batch_size)
    want = _brute_force(scores, exclude, test, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("batch_size", [1, 4, 1024])
def test_per_user_recalls_and_their_paired_difference(batch_size: int) -> None:
    """Each evaluated user's recall at the largest K, in user order, averages to the recall the
    metrics give; the paired difference of two rankings is the difference of their recalls, with
    the standard error of the per-user differences."""
    from shopgraph.graph.metrics import paired_difference

    g = torch.Generator().manual_seed(3)
    n_users, n_items = 11, 30
    a, b = torch.rand(n_users, n_items, generator=g), torch.rand(n_users, n_items, generator=g)
    perm = torch.randperm(n_users * n_items, generator=g)
    exclude = torch.stack([perm[:60] // n_items, perm[:60] % n_items])
    test = torch.stack([perm[60:110] // n_items, perm[60:110] % n_items])
    ra: list[np.ndarray] = []
    rb: list[np.ndarray] = []
    ma = ranking_metrics(lambda u: a[u], exclude, test, n_items, ks=(5, 10), batch_size=batch_size, per_user=ra)
    mb = ranking_metrics(lambda u: b[u], exclude, test, n_items, ks=(5, 10), batch_size=batch_size, per_user=rb)
    (pa,), (pb,) = ra, rb
    assert pa.shape == (int(torch.unique(test[0]).numel()),) and pa.mean() == pytest.approx(ma["recall@10"])
    for k, u in enumerate(torch.unique(test[0]).tolist()):  # in user order, each its own recall
        row = a[u].clone()
        row[exclude[1][exclude[0] == u]] = float("-inf")
        wanted = set(test[1][test[0] == u].tolist())
        assert pa[k] == pytest.approx(len(wanted & set(torch.topk(row, 10).indices.tolist())) / len(wanted))
    pair = paired_difference(pa, pb)
    assert pair["difference"] == pytest.approx(ma["recall@10"] - mb["recall@10"], abs=1e-12)
    assert pair["se"] == pytest.approx(np.std(pa - pb, ddof=1) / math.sqrt(pa.size))
    with pytest.raises(ValueError, match="per-user values of the same users"):
        paired_difference(pa, pb[:-1])


def test_exclusion_changes_ranking() -> None:
    # user 0 scores item 0 highest; it is excluded, so the test item 1 moves to rank 1
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
    test = torch.tensor([[0], [1]])
    without = ranking_metrics(lambda u: scores[u], torch.empty(2, 0, dtype=torch.long), test, 4, ks=(1,))
    with_ex = ranking_metrics(lambda u: scores[u], torch.tensor([[0], [0]]), test, 4, ks=(1,))
    assert without["recall@1"] == 0.0
    assert with_ex["recall@1"] == 1.0
    assert with_ex["ndcg@1"] == 1.0
    assert with_ex["coverage@1"] == 0.25


def test_recall_uses_lightgcn_denominator() -> None:
    # 3 test items, K = 1, one hit -> recall 1/3 (not 1/min(K, 3) = 1)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.0, 0.5]])
    test = torch.tensor([[0, 0, 0], [0, 1, 2]])
    m = ranking_metrics(lambda u: scores[u], torch.empty(2, 0, dtype=torch.long), test, 5, ks=(1,))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["hit@1"] == 1.0 and m["ndcg@1"] == 1.0


def test_ranking_only_users_with_test_pairs_and_duplicates() -> None:
    scores = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
    test = torch.tensor([[3, 3, 1], [2, 2, 4]])  # duplicate pair (3, 2)
    seen: list[int] = []

    def fn(u: torch.Tensor) -> torch.Tensor:
        seen.extend(u.tolist())
        return scores[u]

    m = ranking_metrics(fn, torch.empty(2, 0, dtype=torch.long), test, 6, ks=(6,))
    assert sorted(seen) == [1, 3]
    assert m["users"] == 2.0 and m["recall@6"] == 1.0


def test_ranking_errors() -> None:
    scores = torch.rand(3, 4)
    ok_test = torch.tensor([[0], [1]])
    none = torch.empty(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="test_pairs: expected shape"):
        ranking_metrics(lambda u: scores[u], none, torch.tensor([0, 1]), 4, ks=(2,))
    with pytest.raises(ValueError, match=r"test_pairs: 1 of 1 pairs .* outside \[0, 4\)"):
        ranking_metrics(lambda u: scores[u], none, torch.tensor([[0], [9]]), 4, ks=(2,))
    with pytest.raises(ValueError, match=r"ks: expected positive cut-offs \(got \[0\]\)"):
        ranking_metrics(lambda u: scores[u], none, ok_test, 4, ks=(0,))
    with pytest.raises(ValueError, match="test_pairs: no pairs"):
        ranking_metrics(lambda u: scores[u], none, none, 4, ks=(2,))
    with pytest.raises(ValueError, match=r"score_fn: expected a tensor of shape \[1, 4\]"):
        ranking_metrics(lambda u: scores[u][:, :3], none, ok_test, 4, ks=(2,))
    nan = torch.full((3, 4), float("nan"))
    with pytest.raises(ValueError, match="score_fn: returned NaN"):
        ranking_metrics(lambda u: nan[u], none, ok_test, 4, ks=(2,))


@pytest.mark.parametrize("seed", [0, 1])
def test_fraud_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.2).astype(np.int64)
    prob = np.clip(0.3 * y + rng.random(300) * 0.8, 0, 1)
    t = choose_threshold(y, prob)
    m = fraud_metrics(y, prob, threshold=t)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, prob))
    assert m["auprc"] == pytest.approx(average_precision_score(y, prob))
    assert m["f1"] == pytest.approx(f1_score(y, prob >= t))
    k = int(y.sum())
    assert m["rec@k"] == pytest.approx(y[np.argsort(-prob)[:k]].sum() / k)
    assert m["threshold"] == t
    # the chosen threshold maximises F1 over all candidate thresholds
    best = max(f1_score(y, prob >= c) for c in np.unique(prob))
    assert m["f1"] == pytest.approx(best)


def test_fraud_metrics_default_threshold() -> None:
    y = np.array([0, 0, 1, 1])
    m = fraud_metrics(y, np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["threshold"] == 0.5
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["rec@k"] == 0.5


def test_fraud_errors() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        fraud_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="a single class"):
        fraud_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN scores"):
        fraud_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="expected 0/1 labels"):
        fraud_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="y_val: a single class"):
        choose_threshold(np.array([1, 1]), np.array([0.1, 0.2]))
