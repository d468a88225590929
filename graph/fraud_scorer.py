"""The serving fraud scorer: several candidates, one chosen on validation.

Candidates (fitted on train-mask users, early-stopped on the validation users):

* ``gnn_head``: ShopGNN's own fraud head, ``sigmoid(model.fraud_logit(emb))``;
* ``hybrid``: boosted trees (:class:`HybridFraudHead`) on GNN embeddings ⊕
  :func:`product_features`;
* ``graph_trees``: the same trees on :func:`product_features` alone, without the GNN;
* ``rank_average``: the mean of the rank-normalised ``gnn_head`` and ``graph_trees`` scores. Ranks
  are taken against fixed reference distributions (each part's scores of every user at
  fitting time), stored in the head, so serving normalises new scores the same way.

:func:`product_features` = :func:`hetero_neighbor_features` (own features, neighbour means,
2-hop meta-path means: the XGB-Graph table) ⊕ :func:`ring_features` (co-users through shared
devices and how synchronised they are, the users' own burst and quick-funnel timing, and how
many co-users carry a known training label).

Views. Features and embeddings always come from one view of the graph, the same for fitting and
scoring, as a deployment would do at its scoring time (everything known up to then; labels of
training users only, never those of the users being scored):

* selection (``shopgraph train``): the train period; validation users are scored on it;
* serving (``fraud_probabilities(..., split=None)``): the chosen kind is refitted on every edge;
* test evaluation (:func:`evaluate_fraud_candidates`): every candidate is refitted on the
  test-visible graph (train + validation periods), which is what ``baselines.fraud_baselines``
  gives XGB-Graph.

Selection rule (:func:`choose_candidate`): the best validation AUPRC, except that when a more
robust candidate (order :data:`ROBUST_ORDER`: ``graph_trees``, then ``rank_average``) is within
one bootstrap standard error of the best (paired bootstrap of the AUPRC difference over
validation users, 200 seeded resamples), that candidate is taken instead; ``graph_trees`` as
the best is never displaced. The tie-break only matters on small, noisy validation
sets (Reddit: about 70 validation positives); see ``bench/`` for the measured effect.

The GNN-free candidates need ``data["user"].x``; without user features only ``gnn_head`` is
tried. Without both classes in train and val no scorer is fitted (kind ``"none"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.build import Split
from shopgraph.graph.model import ShopGNN
from shopgraph.graph.schema import REV_PREFIX
from shopgraph.graph.train import FraudScorer, fraud_labels, lean_graph
from shopgraph.graph.wording import QUICK_ITEM_REASON, WHOLE_HISTORY

logger = logging.getLogger(__name__)

CANDIDATES = ("gnn_head", "hybrid", "graph_trees", "rank_average")
ROBUST_ORDER = ("graph_trees", "rank_average")  # tie-break preference, most robust first
RANK_PARTS = ("gnn_head", "graph_trees")
BOOTSTRAP = 200
METRICS = ("auprc", "auroc")
_NEEDS_FEATURES = ("hybrid", "graph_trees", "rank_average")


class RankAverageHead(NamedTuple):
    """What ``rank_average`` needs at serving time."""

    trees: Any  # the fitted graph_trees model (XGBGraphFraud)
    reference: dict[str, np.ndarray]  # part -> sorted reference scores [R]


class CandidateFits(NamedTuple):
    """Every fitted candidate of one selection."""

    probs: dict[str, np.ndarray]  # name -> [N] scores of every node
    heads: dict[str, Any]  # name -> what fraud_probabilities needs (None for gnn_head)


class CandidateEvaluation(NamedTuple):
    """Test-period result of one candidate (:func:`evaluate_fraud_candidates`)."""

    metrics: dict[str, float]  # fraud_metrics at the validation-chosen threshold
    y_true: np.ndarray  # [T] test labels
    prob: np.ndarray  # [T] test scores


# -- array-level core (shared by the product and bench/) ------------------------------------------
def rank_normalise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mid-rank of each score within a sorted reference distribution, in ``[0, 1]``.

    Args:
        scores: ``[N]`` scores to normalise.
        reference: ``[R]`` sorted reference scores (R >= 1).

    Returns:
        ``float64 [N]``: ``(#ref < s + #ref <= s) / (2 R)``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"reference: expected a non-empty 1-D array (got shape {ref.shape})")
    s = np.asarray(scores, dtype=np.float64)
    lo = np.searchsorted(ref, s, side="left")
    hi = np.searchsorted(ref, s, side="right")
    return (lo + hi) / (2.0 * ref.size)


def rank_average_scores(parts: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over ``reference``'s parts of :func:`rank_normalise` of ``parts[name]``.

    Args:
        parts: name -> ``[N]`` scores (every name of ``reference`` must be present).
        reference: name -> ``[R]`` sorted reference scores.

    Returns:
        ``float64 [N]`` in ``[0, 1]``.
    """
    missing = sorted(set(reference) - set(parts))
    if missing:
        raise ValueError(f"parts: missing scores for {missing} (have {sorted(parts)})")
    return np.mean([rank_normalise(parts[k], reference[k]) for k in sorted(reference)], axis=0)


def _check_candidates(candidates: Sequence[str]) -> tuple[str, ...]:
    names = tuple(candidates)
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"candidates: expected a non-empty subset of {CANDIDATES} (got {names})")
    return names


def fit_candidates(
    y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, gnn_prob: np.ndarray,
    embeddings: np.ndarray | None, neighbor_features: np.ndarray | None, *,
    candidates: Sequence[str] = CANDIDATES, seed: int = 0, eval_metric: str = "aucpr",
) -> CandidateFits:
    """Fit every candidate on ``train_idx`` (trees early-stopped on ``val_idx``) and score all nodes.

    Args:
        y: ``[N]`` labels (0/1 on ``train_idx`` and ``val_idx``).
        train_idx, val_idx: ``[n]`` node indices.
        gnn_prob: ``[N]`` GNN fraud-head probabilities.
        embeddings: ``[N, D]`` GNN embeddings (for ``hybrid``), or None.
        neighbor_features: ``[N, F]`` :func:`hetero_neighbor_features`, or None (then only
            ``gnn_head`` is fitted).
        candidates: names from :data:`CANDIDATES`.
        seed: tree seed.
        eval_metric: early-stopping metric of the trees (``"aucpr"`` or ``"auc"``).

    Returns:
        :class:`CandidateFits` for the candidates that could be fitted.
    """
    from shopgraph.graph.baselines import HybridFraudHead, XGBGraphFraud

    names = _check_candidates(candidates)
    n = int(np.asarray(gnn_prob).shape[0])
    for arr, name in ((embeddings, "embeddings"), (neighbor_features, "neighbor_features")):
        if arr is not None and (np.ndim(arr) != 2 or np.shape(arr)[0] != n):
            raise ValueError(f"{name}: expected a 2-D array with {n:,} rows like gnn_prob (got shape {np.shape(arr)})")
    yy = np.asarray(y)
    probs: dict[str, np.ndarray] = {}
    heads: dict[str, Any] = {}
    if "gnn_head" in names or "rank_average" in names:
        probs["gnn_head"], heads["gnn_head"] = np.asarray(gnn_prob, dtype=np.float64), None
    if neighbor_features is None:
        skipped = [c for c in names if c in _NEEDS_FEATURES]
        if skipped:
            logger.info("fraud: no user features; candidates %s are not tried", skipped)
    else:
        feats = np.asarray(neighbor_features, dtype=np.float32)
        if "graph_trees" in names or "rank_average" in names:
            trees = XGBGraphFraud(eval_metric=eval_metric, seed=seed).fit(
                feats[train_idx], yy[train_idx], feats[val_idx], yy[val_idx])
            probs["graph_trees"], heads["graph_trees"] = trees.predict_proba(feats), trees
        if "rank_average" in names:
            ref = {k: np.sort(probs[k]) for k in RANK_PARTS}
            probs["rank_average"] = rank_average_scores({k: probs[k] for k in RANK_PARTS}, ref)
            heads["rank_average"] = RankAverageHead(heads["graph_trees"], ref)
        if "hybrid" in names:
            if embeddings is None:
                logger.info("fraud: no embeddings given; the hybrid head is not tried")
            else:
                hyb = np.concatenate([np.asarray(embeddings, dtype=np.float32), feats], axis=1)
                head = HybridFraudHead(eval_metric=eval_metric, seed=seed).fit(
                    hyb[train_idx], yy[train_idx], hyb[val_idx], yy[val_idx])
                probs["hybrid"], heads["hybrid"] = head.predict_proba(hyb), head
    keep = [c for c in names if c in probs]
    return CandidateFits({k: probs[k] for k in keep}, {k: heads[k] for k in keep})


def choose_candidate(
    y_val: np.ndarray, val_probs: dict[str, np.ndarray], *, metric: str = "auprc", seed: int = 0,
    tie_break: bool = True, n_boot: int = BOOTSTRAP,
) -> tuple[str, dict[str, float]]:
    """The serving candidate by validation ``metric``, with the robust tie-break of the module doc.

    Args:
        y_val: ``[V]`` 0/1 validation labels (both classes).
        val_probs: name -> ``[V]`` validation scores.
        metric: ``"auprc"`` (the product) or ``"auroc"``.
        seed: seeds the bootstrap.
        tie_break: apply the one-standard-error preference for :data:`ROBUST_ORDER`.
        n_boot: bootstrap resamples.

    Returns:
        ``(name, {name: validation metric})``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from shopgraph.graph.metrics import fraud_metrics

    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS} (got {metric!r})")
    if not val_probs:
        raise ValueError("val_probs: no candidates to choose from (got an empty dict)")
    yv = np.asarray(y_val)
    scores = {k: float(fraud_metrics(yv, p)[metric]) for k, p in val_probs.items()}
    best = max(scores, key=lambda k: scores[k])  # first of equals, in the given order
    if not tie_break:
        return best, scores
    # only candidates more robust than the best one can take its place
    more_robust = ROBUST_ORDER[: ROBUST_ORDER.index(best)] if best in ROBUST_ORDER else ROBUST_ORDER
    rivals = [c for c in more_robust if c in scores]
    if not rivals:
        return best, scores
    score_fn = average_precision_score if metric == "auprc" else roc_auc_score
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {c: [] for c in rivals}
    for _ in range(n_boot):
        idx = rng.integers(0, yv.size, yv.size)
        yb = yv[idx]
        if yb.min() == yb.max():
            continue
        b = float(score_fn(yb, val_probs[best][idx]))
        for c in rivals:
            diffs[c].append(b - float(score_fn(yb, val_probs[c][idx])))
    for c in rivals:
        se = float(np.std(diffs[c])) if len(diffs[c]) > 1 else 0.0
        if scores[best] - scores[c] <= se:
            logger.info("fraud: %s is within one bootstrap SE (%.4f) of %s on validation; preferring it", c, se, best)
            return c, scores
    return best, scores


# -- ring features: co-users through shared identifiers, their timing and their known labels ------
HOUR = 3600.0
BUY_WINDOW_S = 2 * HOUR  # ring members buy within ~1.5 h of a burst start
FIRST_USE_WINDOW_S = 6 * HOUR  # ring members take up a ring device in the same burst
MAX_OFFSET = 256  # close_pairs: rows compared either side, bounds the cost of crowded windows
HUB_THRESHOLD = 50  # identifiers with more users are hubs (an office PC), as in graph.rings
QUICK_FUNNEL_S = 120.0  # burst buys follow their cart within 15-90 s; session buys 20-900 s
_NOT_IDENTIFIERS = frozenset({"user", "item"})


class RingFeatures(NamedTuple):
    """Ring features of every user (:func:`ring_features`)."""

    x: np.ndarray  # float32 [U, F]
    names: list[str]  # F column names


def close_pairs(
    group: np.ndarray, time: np.ndarray, who: np.ndarray, window: float, *, max_offset: int = MAX_OFFSET,
) -> np.ndarray:
    """Distinct ordered pairs ``(a, b)``, ``a != b``, of ``who`` values that share a ``group`` value
    with times at most ``window`` apart.

    Rows are sorted by ``(group, time)``; offset ``k`` pairs row ``i`` with row ``i + k``, and
    offsets grow until no row has a partner that close in the same group (closeness only shrinks
    with ``k``) or up to ``max_offset``, so the cost is ``O(rows × min(densest window,
    max_offset))``: in a window crowded with more rows than that (a flash sale), each row is
    paired with its ``max_offset`` nearest rows in time order on either side only.

    Args:
        group: ``[R]`` int group of each row (a device, an item).
        time: ``[R]`` event times (seconds).
        who: ``[R]`` int actor of each row (a user), ``>= 0``.
        window: the largest time difference, ``>= 0``.
        max_offset: the most rows either side a row is compared with, ``>= 1``.

    Returns:
        ``int64 [2, P]``: both directions of every close pair, sorted, without duplicates.
    """
    g, t, w = (np.asarray(a).reshape(-1) for a in (group, time, who))
    if not (g.size == t.size == w.size):
        raise ValueError(f"group, time, who: expected equal lengths (got {g.size}, {t.size}, {w.size})")
    if not np.isfinite(window) or window < 0:
        raise ValueError(f"window: expected a finite number >= 0 (got {window})")
    if max_offset < 1:
        raise ValueError(f"max_offset: expected an integer >= 1 (got {max_offset})")
    if g.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    tf = t.astype(np.float64)
    if not np.isfinite(tf).all():
        k = int(np.flatnonzero(~np.isfinite(tf))[0])
        raise ValueError(f"time: {int((~np.isfinite(tf)).sum())} non-finite values (first: row {k}, {t[k].item()!r})")
    wi = w.astype(np.int64)
    if (wi < 0).any():
        k = int(np.flatnonzero(wi < 0)[0])
        raise ValueError(f"who: expected ids >= 0 (got {int(wi[k])} at row {k})")
    order = np.lexsort((tf, g))
    g, tf, wi = g[order], tf[order], wi[order]
    n_who = int(wi.max()) + 1
    keys: list[np.ndarray] = []
    for k in range(1, min(g.size, max_offset + 1)):
        ok = (g[k:] == g[:-k]) & (tf[k:] - tf[:-k] <= window)
        if not ok.any():
            break
        a, b = wi[:-k][ok], wi[k:][ok]
        diff = a != b
        a, b = a[diff], b[diff]
        keys.append(np.unique(np.concatenate([a * n_who + b, b * n_who + a])))
    if not keys:
        return np.zeros((2, 0), dtype=np.int64)
    uniq = np.unique(np.concatenate(keys))
    return np.stack([uniq // n_who, uniq % n_who])


def _pair_counts(pairs: np.ndarray, n: int, known: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per first element of ``pairs [2, P]``: partners, and partners known fraud / known legit."""
    out: dict[str, np.ndarray] = {"n": np.bincount(pairs[0], minlength=n).astype(np.float64)}
    if known is not None:
        other = known[pairs[1]]
        out["fraud"] = np.bincount(pairs[0], weights=(other == 1).astype(np.float64), minlength=n)
        out["legit"] = np.bincount(pairs[0], weights=(other == 0).astype(np.float64), minlength=n)
    return out


def max_in_window(owner: np.ndarray, time: np.ndarray, window: float, n: int) -> np.ndarray:
    """Per owner, the largest number of its events inside any ``window`` (0 without events).

    Args:
        owner: ``[R]`` int owner of each event, in ``[0, n)``.
        time: ``[R]`` event times (seconds).
        window: seconds, ``>= 0``.
        n: number of owners.

    Returns:
        ``float64 [n]``.
    """
    o, t = np.asarray(owner).reshape(-1).astype(np.int64), np.asarray(time).reshape(-1).astype(np.float64)
    if o.size != t.size:
        raise ValueError(f"owner, time: expected equal lengths (got {o.size}, {t.size})")
    if not np.isfinite(window) or window < 0:
        raise ValueError(f"window: expected a finite number >= 0 (got {window})")
    out = np.zeros(n)
    if o.size == 0:
        return out
    if o.min() < 0 or o.max() >= n:
        raise ValueError(f"owner: expected ids in [0, {n}) (got {o.min()}..{o.max()})")
    order = np.lexsort((t, o))
    o, t = o[order], t[order]
    # the last event of the same owner within `window` after each event
    end = np.searchsorted(o, o, side="right")
    idx = np.arange(o.size)
    lo, hi = idx.copy(), end - 1
    while True:  # binary search per row for the last j in [i, end) with t[j] <= t[i] + window
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi + 1) // 2
        ok = t[np.where(active, mid, idx)] <= t + window
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)
    np.maximum.at(out, o, (lo - idx + 1).astype(np.float64))
    return out


def _quick_buys(g: HeteroData, target: tuple[str, str, str], quick_funnel: float) -> np.ndarray | None:
    """``bool [E]`` over the target events of ``g``: those within ``quick_funnel`` seconds of the
    latest earlier event of the same (user, item) pair of another type (a cart, a view); ``None``
    when ``g`` has no such timed events."""
    bei = g[target].edge_index.long().cpu().numpy()
    bt = g[target].time.cpu().numpy().astype(np.int64)
    n_items = int(g[target[2]].num_nodes)
    prior = [et for et in g.edge_types if et[0] == target[0] and et[2] == target[2] and et != target
             and not et[1].startswith(REV_PREFIX) and "time" in g[et]]
    if not prior or bt.size == 0:
        return None
    pe = np.concatenate([g[et].edge_index.long().cpu().numpy() for et in prior], axis=1)
    pt = np.concatenate([g[et].time.cpu().numpy().astype(np.int64) for et in prior])
    t0 = min(int(bt.min()), int(pt.min()) if pt.size else int(bt.min()))
    span = max(int(bt.max()), int(pt.max()) if pt.size else 0) - t0 + 1
    pk = np.sort((pe[0] * n_items + pe[1]) * span + (pt - t0))
    bk = (bei[0] * n_items + bei[1]) * span + (bt - t0)
    pos = np.searchsorted(pk, bk, side="right") - 1
    same = (pos >= 0) & (pk[np.maximum(pos, 0)] // span == bk // span)
    gap = np.where(same, bk - pk[np.maximum(pos, 0)], np.iinfo(np.int64).max)
    return np.asarray(gap <= quick_funnel)


class QuickPurchases(NamedTuple):
    """Per user, the items it bought right after viewing or carting them (:func:`quick_purchases`):
    ``first[u]`` the latest :data:`QUICK_FIRST` of them (item node indices, -1 past the end) and
    ``total[u]`` how many distinct items in all."""

    first: np.ndarray  # int64 [U, QUICK_FIRST]
    total: np.ndarray  # int64 [U]

    def items(self, u: int) -> list[int]:
        """User ``u``'s latest quick-bought items, at most :data:`QUICK_FIRST`."""
        if not 0 <= u < len(self.total):  # an account added since (none are, yet): no quick buys known
            return []
        row = self.first[u]
        return [int(i) for i in row[row >= 0]]

    def named(self, u: int, item_ids: Sequence[str], titles: Sequence[str], categories: Sequence[str]) -> str:
        """User ``u``'s quick-bought items as a "quick purchases" reason names them, so that they can
        be looked at: the latest first, with their titles and categories (what the pictures are
        judged against), and how many more (``i000123 'gift card' (gift cards), i000045 'drone'
        (electronics) and 2 more``); ``""`` for an account that bought none so."""
        items = self.items(u)
        if not items:
            return ""

        def title(i: int) -> str:
            text = " ".join(str(titles[i]).split())
            return f"'{text if len(text) <= 48 else text[:47] + '…'}'" if text else "(no title)"

        named = ", ".join(f"{item_ids[i]} {title(i)}" + (f" ({categories[i]})" if categories[i] else "")
                          for i in items)
        more = int(self.total[u]) - len(items)
        return named + (f" and {more:,} more" if more > 0 else "")


QUICK_FIRST = 3  # quick-bought items kept per user (QuickPurchases.first): what a reason names


def quick_purchases(data: HeteroData, quick_funnel: float = QUICK_FUNNEL_S) -> QuickPurchases:
    """The items each user bought within ``quick_funnel`` seconds of viewing or carting them, over
    every event of ``data`` (what the served feature table's ``quick_*`` columns read,
    :func:`product_feature_table` with no split): the latest :data:`QUICK_FIRST` distinct ones and
    how many distinct ones in all, the items behind a "quick purchases: mean item …" reason. Sorts
    and ``np.unique`` over the quick buys: no loop over users or events."""
    n = int(data["user"].num_nodes)
    out = QuickPurchases(np.full((n, QUICK_FIRST), -1, dtype=np.int64), np.zeros(n, dtype=np.int64))
    target = ("user", str(getattr(data, "target", "purchase")), "item")
    if target not in data.edge_types or "time" not in data[target]:
        return out
    quick = _quick_buys(data, target, quick_funnel)
    if quick is None or not quick.any():
        return out
    users, items = data[target].edge_index.long().cpu().numpy()[:, quick]
    times = data[target].time.cpu().numpy().astype(np.int64)[quick]
    order = np.lexsort((-times, items, users))  # by (user, item), the latest buy first
    users, items, times = users[order], items[order], times[order]
    first = np.ones(len(users), dtype=bool)
    first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])  # each (user, item) once: its latest
    users, items, times = users[first], items[first], times[first]
    order = np.lexsort((items, -times, users))  # by user, then latest first (ties by item)
    users, items = users[order], items[order]
    start = np.searchsorted(users, np.arange(n))
    rank = np.arange(len(users)) - start[users]  # position within the user's list
    keep = rank < QUICK_FIRST
    out.first[users[keep], rank[keep]] = items[keep]
    out.total[:] = np.bincount(users, minlength=n)
    return out


def _own_timing(g: HeteroData, target: tuple[str, str, str], n: int, buy_window: float,
                quick_funnel: float) -> dict[str, np.ndarray]:
    """Per-user timing of the visible target events (bursts, quick funnels); see ring_features."""
    bei = g[target].edge_index.long().cpu().numpy()
    bt = g[target].time.cpu().numpy().astype(np.int64)
    cols = {"own_burst": np.log1p(max_in_window(bei[0], bt, buy_window, n))}
    quick = _quick_buys(g, target, quick_funnel)
    if quick is None:
        return cols
    n_buy = np.bincount(bei[0], minlength=n).astype(np.float64)
    n_quick = np.bincount(bei[0], weights=quick.astype(np.float64), minlength=n)
    cols["quick_buys"] = np.log1p(n_quick)
    cols["quick_buy_share"] = n_quick / np.maximum(n_buy, 1.0)
    cols["quick_burst"] = np.log1p(max_in_window(bei[0][quick], bt[quick], buy_window, n))
    # how unusual the hour (UTC) of the quick buys is for this shop: the share of all visible
    # target events in that hour, averaged over the user's quick buys (0 without quick buys)
    hour = (bt // 3600) % 24
    hour_share = np.bincount(hour, minlength=24) / max(bt.size, 1)
    cols["quick_hour_share"] = np.bincount(bei[0], weights=np.where(quick, hour_share[hour], 0.0),
                                           minlength=n) / np.maximum(n_quick, 1.0)
    # what the quick buys are: the mean features of the items bought that way (0 without)
    if "x" in g[target[2]]:
        xi = g[target[2]].x.detach().float().cpu().numpy().astype(np.float64)
        sums = np.zeros((n, xi.shape[1]))
        np.add.at(sums, bei[0][quick], xi[bei[1][quick]])
        sums /= np.maximum(n_quick, 1.0)[:, None]  # the means, in place: [U, F] is large with image features
        for j in range(xi.shape[1]):
            cols[f"quick_item_x{j}"] = sums[:, j]
    return cols


def _visible(data: HeteroData, split: Split | None) -> HeteroData:
    from shopgraph.graph.build import message_passing_graph

    return data if split is None else message_passing_graph(data, split)


def ring_features(
    data: HeteroData, split: Split | None = None, *, known: np.ndarray | None = None,
    buy_window: float = BUY_WINDOW_S, first_use_window: float = FIRST_USE_WINDOW_S,
    quick_funnel: float = QUICK_FUNNEL_S, hub_threshold: int = HUB_THRESHOLD,
) -> RingFeatures:
    """Per user: co-users through shared identifiers (devices), how synchronised they are, and
    how many of them carry a known label.

    What the synthetic shop plants (``docs/synthetic_shop.md``): ring members share 1–4 devices,
    take them up in the same burst and buy within about 1.5 h of each other, often the same
    listed items; households and public devices also share devices, but at unrelated times.
    Mean-aggregated neighbour features blur those apart; these columns count them directly.
    With ``E`` the edges visible for ``split`` (``None``: every edge), for each user ``u``:

    * ``co_users``: distinct other users sharing an identifier with ``u``;
    * ``co_first_use_sync``: those whose first use of a shared identifier is within
      ``first_use_window`` of ``u``'s own first use of it;
    * ``co_buy_sync``: co-users with a target event (purchase) within ``buy_window`` of one of
      ``u``'s (on any device);
    * ``co_item_sync``: users (shared identifier or not) who bought an item ``u`` bought within
      ``buy_window`` of ``u``;
    * with ``known``: for each of these partner sets, the partners known to be fraud and known
      legit, and the fraud share among the known ones (0 when none is known);
    * ``own_burst``: ``u``'s largest number of target events within any ``buy_window``;
    * ``quick_buys``, ``quick_buy_share``, ``quick_burst``: target events that follow the latest
      earlier event of the same (user, item) pair of another type (the cart, the view) within
      ``quick_funnel`` seconds (the scripted view → cart → buy of a burst), their share of
      ``u``'s target events, and the largest number of them within any ``buy_window``.

    Counts are ``log1p``. The timing columns need edge times (``.time``): ``co_first_use_sync``
    those of the identifier edges, the others those of the target edges; columns whose times are
    missing are left out (the same ones for every view of one graph).

    Args:
        data: the shop graph (``user`` nodes, ``(user, rel, identifier)`` edges, the target edge
            type ``(user, data.target, item)``).
        split: edge visibility (``"train"``, ``"val"``, ``"test"`` or ``None`` for every edge).
        known: ``[U]`` int labels known at scoring time: 1 fraud, 0 legit, -1 unknown (pass the
            training users' labels only; never the users being scored).
        buy_window, first_use_window, quick_funnel: seconds, ``> 0``.
        hub_threshold: identifiers linked to more users than this (an office PC, a kiosk) are
            left out of the co-user columns, as :class:`graph.rings.RingDetector` leaves them out.

    Returns:
        :class:`RingFeatures` with ``x`` float32 ``[U, F]`` and the ``F`` column names.
    """
    if not isinstance(data, HeteroData) or "user" not in data.node_types:
        got = sorted(data.node_types) if isinstance(data, HeteroData) else type(data).__name__
        raise ValueError(f"data: expected a HeteroData with a 'user' node type (got {got})")
    for name, value in (("buy_window", buy_window), ("first_use_window", first_use_window),
                        ("quick_funnel", quick_funnel)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected seconds > 0 (got {value})")
    if hub_threshold < 1:
        raise ValueError(f"hub_threshold: expected an integer >= 1 (got {hub_threshold})")
    n = int(data["user"].num_nodes)
    kn: np.ndarray | None = None
    if known is not None:
        kn = np.asarray(known)
        if kn.shape != (n,):
            raise ValueError(f"known: expected [{n}] labels, one per user (got shape {kn.shape})")
        bad = ~np.isin(kn, (-1, 0, 1))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"known: expected 1, 0 or -1 (unknown); {int(bad.sum())} other values (first: {kn[k].item()!r} at user {k})")
        kn = kn.astype(np.int64)
    g = _visible(data, split)
    id_types = sorted(et for et in g.edge_types if et[0] == "user" and et[2] not in _NOT_IDENTIFIERS
                      and not et[1].startswith(REV_PREFIX))
    target = ("user", str(getattr(data, "target", "purchase")), "item")
    id_timed = all("time" in g[et] for et in id_types)
    buy_timed = target in g.edge_types and "time" in g[target]

    # (user, identifier) rows over every identifier type, identifier ids offset per type
    uid, gid, first = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float64)]
    offset = 0
    for et in id_types:
        ei = g[et].edge_index.long().cpu().numpy()
        uid.append(ei[0])
        gid.append(ei[1] + offset)
        first.append(g[et].time.cpu().numpy().astype(np.float64) if id_timed else np.zeros(ei.shape[1]))
        offset += int(data[et[2]].num_nodes)
    u_id, g_id, t_first = np.concatenate(uid), np.concatenate(gid), np.concatenate(first)
    if u_id.size and (u_id.min() < 0 or u_id.max() >= n):
        raise ValueError(f"data: identifier edges name users outside [0, {n}) (got {u_id.min()}..{u_id.max()})")
    pairs_ug = np.unique(np.stack([g_id, u_id]), axis=1) if u_id.size else np.zeros((2, 0), np.int64)
    hub = np.bincount(pairs_ug[0], minlength=offset) > hub_threshold
    if hub.any():
        keep = ~hub[g_id]
        logger.info("fraud features: %d identifiers with more than %d users left out as hubs",
                    int(hub.sum()), hub_threshold)
        u_id, g_id, t_first = u_id[keep], g_id[keep], t_first[keep]
    sets: dict[str, np.ndarray] = {"co_users": close_pairs(g_id, np.zeros(u_id.size), u_id, 0.0)}
    own: dict[str, np.ndarray] = {}
    if id_timed:
        sets["co_first_use_sync"] = close_pairs(g_id, t_first, u_id, first_use_window)
    if buy_timed:
        bei = g[target].edge_index.long().cpu().numpy()
        bt = g[target].time.cpu().numpy().astype(np.float64)
        if bei.size and (bei[0].min() < 0 or bei[0].max() >= n):
            raise ValueError(f"data[{target}]: edges name users outside [0, {n}) (got {bei[0].min()}..{bei[0].max()})")
        # every target event of a user, repeated on each identifier the user is linked to
        order = np.argsort(bei[0], kind="stable")
        bu, btime = bei[0][order], bt[order]
        starts = np.searchsorted(bu, np.arange(n + 1))
        reps = np.diff(starts)[u_id]
        rows = np.repeat(np.arange(u_id.size), reps)
        within = np.arange(rows.size) - np.repeat(np.cumsum(reps) - reps, reps)
        ev = starts[u_id][rows] + within
        sets["co_buy_sync"] = close_pairs(g_id[rows], btime[ev], u_id[rows], buy_window)
        sets["co_item_sync"] = close_pairs(bei[1], bt, bei[0], buy_window)
        own = _own_timing(g, target, n, buy_window, quick_funnel)
    cols: dict[str, np.ndarray] = {}
    for name, pairs in sets.items():
        c = _pair_counts(pairs, n, kn)
        cols[name] = np.log1p(c["n"])
        if kn is not None:
            cols[f"{name}_known_fraud"] = np.log1p(c["fraud"])
            cols[f"{name}_known_legit"] = np.log1p(c["legit"])
            cols[f"{name}_fraud_share"] = c["fraud"] / np.maximum(c["fraud"] + c["legit"], 1.0)
    cols.update(own)
    x = np.empty((n, len(cols)), np.float32)  # filled a column at a time: no float64 [U, F] copy
    for j, column in enumerate(cols.values()):
        x[:, j] = column
    return RingFeatures(x, list(cols))


# -- product wiring -------------------------------------------------------------------------------
def _param_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gnn_prob(model: ShopGNN, user_emb: Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.fraud_logit(user_emb.to(_param_device(model)))).float().cpu().numpy()


def known_labels(data: HeteroData) -> np.ndarray:
    """``[U]`` labels a scorer may read as features: the training users' 0/1, -1 for everyone else.

    Validation and test users are always -1 here, so a label feature never carries the label
    of a user being early-stopped on or scored.
    """
    y, masks = fraud_labels(data)
    return np.where(masks["train"].numpy(), y.numpy(), -1).astype(np.int64)


def account_labels(data: HeteroData, fraud_prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's fraud label as investigators should see it beside a score.

    Args:
        data: the run's graph (``data["user"].y``, -1: unlabelled; ``train_mask``, all false
            when absent).
        fraud_prob: ``[U]`` the served fraud probabilities, or ``None``; a run serves a fraud
            scorer when some of them are finite (a run without one stores NaN).

    Returns:
        ``int8 [U]``: the label in the shop's data (1 fraud, 0 legitimate, -1 unlabelled), and
        ``bool [U]``: whether the served scorer was fitted on that label (a labelled user of the
        training period), so that the user's probability is fitted to it rather than predicted.
    """
    users = data["user"]
    n = int(users.num_nodes)
    if "y" not in users:
        return np.full(n, -1, np.int8), np.zeros(n, bool)
    y = users.y.detach().cpu().numpy().astype(np.int64).reshape(-1)
    labels = np.where(y >= 0, np.minimum(y, 1), -1).astype(np.int8)
    train = (users.train_mask.detach().cpu().numpy().astype(bool).reshape(-1) if "train_mask" in users
             else np.zeros(n, bool))
    scored = fraud_prob is not None and bool(np.isfinite(np.asarray(fraud_prob, dtype=np.float64)).any())
    return labels, train & (labels >= 0) & scored


def product_features(data: HeteroData, split: Split | None) -> np.ndarray:
    """The GNN-free feature table of the product's trees: :func:`hetero_neighbor_features` ⊕
    :func:`ring_features` (with :func:`known_labels`), on the edges visible for ``split``.

    Args:
        data: the full graph with ``data["user"].x``, labels and masks.
        split: visibility (``None``: every edge, for serving).

    Returns:
        ``float32 [U, F]``.
    """
    return product_feature_table(data, split)[0]


def _span(seconds: float) -> str:
    """``7200`` -> ``"2 h"``, ``120`` -> ``"2 min"``."""
    return f"{seconds / HOUR:g} h" if seconds >= HOUR else f"{seconds / 60:g} min"


_RING_TEXT: dict[str, str] = {  # ring_features' columns in words (at the default windows, as the product uses them)
    "co_users": "accounts sharing a device (or other identifier)",
    "co_first_use_sync": f"accounts that took up a shared device within {_span(FIRST_USE_WINDOW_S)} of this one",
    "co_buy_sync": f"accounts sharing a device that bought within {_span(BUY_WINDOW_S)} of this one",
    "co_item_sync": f"accounts that bought an item this one bought within {_span(BUY_WINDOW_S)} of it",
    "own_burst": f"most purchases within {_span(BUY_WINDOW_S)}{WHOLE_HISTORY} (log count)",
    "quick_buys": (f"purchases within {_span(QUICK_FUNNEL_S)} of carting or viewing the item{WHOLE_HISTORY} "
                   "(log count)"),
    "quick_buy_share": (f"share of purchases made within {_span(QUICK_FUNNEL_S)} of carting or viewing the "
                        f"item{WHOLE_HISTORY}"),
    "quick_burst": f"most such quick purchases within {_span(BUY_WINDOW_S)}{WHOLE_HISTORY} (log count)",
    "quick_hour_share": f"how busy the hours of the quick purchases are{WHOLE_HISTORY} (share of all purchases)",
}
# "known" is a training label (known_labels): said so, as a ring's "known fraud" counts every fraud label
_RING_SUFFIX: dict[str, str] = {"": " (log count)", "_known_fraud": ", labelled fraud in the training data (log count)",
                                "_known_legit": ", labelled legitimate in the training data (log count)",
                                "_fraud_share": ": share labelled fraud among those labelled in the training data"}


# the held-out trees of an account's fold count the labels of the other folds only (held_out_known):
# their label columns say so, so that the held-out reasons never give another number for the served
# reasons' "labelled fraud in the training data"
HELD_OUT_LABELS = "in the training data outside this account's fold"


def ring_column_text(name: str, *, held_out: bool = False) -> str:
    """A :func:`ring_features` column name in words (the name itself when it has none);
    ``held_out``: as the held-out trees of a fold read it (:func:`held_out_table`: the training
    labels of the account's own fold hidden, :data:`HELD_OUT_LABELS`)."""
    if name in _RING_TEXT and not name.startswith("co_"):
        return _RING_TEXT[name]
    for suffix in sorted(_RING_SUFFIX, key=len, reverse=True):
        base = name[: len(name) - len(suffix)] if suffix else name
        if name.endswith(suffix) and base in _RING_TEXT:
            text = _RING_SUFFIX[suffix]
            return _RING_TEXT[base] + (text.replace("in the training data", HELD_OUT_LABELS) if held_out else text)
    return name


def _neighbour_table(data: HeteroData, split: Split | None) -> np.ndarray:
    """:func:`hetero_neighbor_features` of the users on the edges visible for ``split``."""
    from shopgraph.graph.baselines import hetero_neighbor_features

    if split is None:  # edges without .split are always visible: the whole history
        return hetero_neighbor_features(lean_graph(data), "user")
    return hetero_neighbor_features(data, "user", split)


def product_feature_table(data: HeteroData, split: Split | None) -> tuple[np.ndarray, list[str]]:
    """:func:`product_features` and the ``F`` names of its columns, for explanations: the user's
    own features and ``hetero_neighbor_feature_names``, then the ring columns in words
    (:func:`ring_column_text`; ``quick_item_x{j}`` after the item feature ``j``)."""
    neigh = _neighbour_table(data, split)
    known = known_labels(data) if "y" in data["user"] else None
    ring = ring_features(data, split, known=known)
    return np.concatenate([neigh, ring.x], axis=1), _product_names(data, ring.names)


def _product_names(data: HeteroData, ring_names: Sequence[str], *, held_out: bool = False) -> list[str]:
    """The column names of a product feature table whose ring columns are ``ring_names``
    (``held_out``: of a fold's held-out table, :func:`ring_column_text`)."""
    from shopgraph.graph.baselines import hetero_neighbor_feature_names, node_feature_names

    items = node_feature_names(data, "item") if "item" in data.node_types and "x" in data["item"] else []
    worded = [f"{QUICK_ITEM_REASON}{items[int(n[len('quick_item_x'):])]}"
              if n.startswith("quick_item_x") and items else ring_column_text(n, held_out=held_out)
              for n in ring_names]
    return hetero_neighbor_feature_names(data, "user") + worded


def _fit_product(
    model: ShopGNN, data: HeteroData, emb: dict[str, Tensor], seed: int, candidates: Sequence[str],
    view: Split | None, emb_name: str,
) -> tuple[CandidateFits, np.ndarray, dict[str, Tensor]] | None:
    """Fit ``candidates`` on train users with features and embeddings (``emb_name``, for errors)
    of one view of the graph."""
    names = _check_candidates(candidates)
    if "user" not in data.node_types:
        raise ValueError(f"data: no 'user' node type (got {sorted(data.node_types)})")
    if "user" not in emb:
        raise ValueError(f"{emb_name}: expected a 'user' entry (got {sorted(emb)})")
    n = int(data["user"].num_nodes)
    if emb["user"].dim() != 2 or emb["user"].size(0) != n:
        raise ValueError(f"{emb_name}['user']: expected shape [{n}, D] (got {list(emb['user'].shape)})")
    y, masks = fraud_labels(data)
    tr, va = masks["train"], masks["val"]
    if not (int(tr.sum()) and int(va.sum()) and len(torch.unique(y[tr])) == 2 and len(torch.unique(y[va])) == 2):
        logger.warning("fraud: no usable labels (need both classes in train and val); no fraud scorer")
        return None
    feats = product_features(data, view) if "x" in data["user"] else None
    fits = fit_candidates(
        y.numpy(), np.flatnonzero(tr.numpy()), np.flatnonzero(va.numpy()), _gnn_prob(model, emb["user"]),
        model.fraud_input(emb["user"]).detach().float().cpu().numpy(), feats, candidates=names, seed=seed,
    )
    return fits, y.numpy(), masks


def _embed_view(model: ShopGNN, data: HeteroData, view: Split | None) -> dict[str, Tensor]:
    from shopgraph.graph.build import message_passing_graph
    from shopgraph.graph.train import embed_graph

    graph = lean_graph(data if view is None else message_passing_graph(data, view))
    dev = _param_device(model)
    return embed_graph(model, graph.to(dev), dev)


def select_fraud_scorer(
    model: ShopGNN, data: HeteroData, train_emb: dict[str, Tensor], seed: int = 0,
    candidates: Sequence[str] = CANDIDATES, serving_emb: dict[str, Tensor] | None = None,
) -> FraudScorer:
    """Pick the serving fraud scorer on validation AUPRC (module doc), then refit it for serving.

    Selection fits every candidate on train users with the train-period view (features and
    ``train_emb``) and compares them on validation users seen the same way. The chosen kind is
    then refitted on the serving view (every edge; ``serving_emb``, computed on the full graph
    when not given), so that serving scores come from trees fitted on the features they are
    applied to, and the decision threshold is chosen (max F1 on the validation users) on those
    serving scores: a threshold read off one fit's probabilities does not carry to another's
    (on five synthetic shops the selection fit's and the serving fit's differed by up to 4×).

    Args:
        model: the trained model (its fraud head is ``gnn_head``).
        data: the full graph with ``data["user"].y`` and train/val/test masks (y < 0: unlabelled).
        train_emb: embeddings from the train-period graph, ``{"user": [U, D], ...}``.
        seed: tree and bootstrap seed.
        candidates: names from :data:`CANDIDATES`.
        serving_emb: embeddings from the full graph, ``{"user": [U, D]}`` (only read by the ``gnn_head``,
            ``hybrid`` and ``rank_average`` refits).

    Returns:
        :class:`FraudScorer`: ``kind`` one of the candidates (``"none"`` without usable labels),
        the max-F1 validation threshold of the serving scores, the validation AUPRC of every
        fitted candidate (selection fit), and the serving ``head`` :func:`fraud_probabilities`
        needs.
    """
    from shopgraph.graph.metrics import choose_threshold

    fitted = _fit_product(model, data, train_emb, seed, candidates, "train", "train_emb")
    if fitted is None:
        return FraudScorer("none", float("nan"), float("nan"), {}, None)
    fits, y, masks = fitted
    va = masks["val"].numpy()
    kept = [k for k in _check_candidates(candidates) if k in fits.probs]
    kind, scores = choose_candidate(y[va], {k: fits.probs[k][va] for k in kept}, seed=seed)
    if serving_emb is None:
        serving_emb = _embed_view(model, data, None) if kind in ("gnn_head", "hybrid", "rank_average") else train_emb
    serving = _fit_product(model, data, serving_emb, seed, (kind,), None, "serving_emb")
    if serving is None or kind not in serving[0].heads:  # cannot happen: the same labels fitted above
        raise ValueError(f"data: the {kind!r} scorer could not be refitted on the serving view")
    head = serving[0].heads[kind]
    threshold = float(choose_threshold(y[va], serving[0].probs[kind][va]))
    logger.info("fraud: validation AUPRC %s -> serving %s (threshold %.4f on the serving scores)",
                ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), kind, threshold)
    return FraudScorer(kind, threshold, scores[kind], scores, head)


def fraud_probabilities(
    model: ShopGNN, scorer: FraudScorer, data: HeteroData, user_emb: Tensor, split: Split | None = None
) -> Tensor:
    """Fraud probabilities ``[U]`` of the chosen scorer (in ``[0, 1]``; NaN for kind ``"none"``).

    Args:
        model: the trained model (for the GNN head).
        scorer: from :func:`select_fraud_scorer`.
        data: the full graph.
        user_emb: ``[U, D]`` user embeddings computed on the graph visible for ``split``.
        split: visibility of the features (``None``: every edge, for serving).
    """
    kind = scorer.kind
    if kind == "none":
        return torch.full((user_emb.size(0),), float("nan"))
    if kind not in CANDIDATES:
        raise ValueError(f"scorer.kind: expected 'none' or one of {CANDIDATES} (got {kind!r})")
    if kind == "gnn_head":
        return torch.as_tensor(_gnn_prob(model, user_emb), dtype=torch.float32)
    if scorer.head is None:
        raise ValueError(f"scorer.head: a {kind!r} scorer needs its fitted head (got None)")
    feats = product_features(data, split)
    if kind == "graph_trees":
        prob = scorer.head.predict_proba(feats)
    elif kind == "hybrid":
        emb = model.fraud_input(user_emb).detach().float().cpu().numpy()
        prob = scorer.head.predict_proba(np.concatenate([emb, feats], axis=1))
    else:
        head: RankAverageHead = scorer.head
        parts = {"gnn_head": _gnn_prob(model, user_emb), "graph_trees": head.trees.predict_proba(feats)}
        prob = rank_average_scores(parts, head.reference)
    return torch.as_tensor(np.asarray(prob), dtype=torch.float32)


HELD_OUT_FOLDS = 5


def held_out_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """``int64 [n]``: the fold of each of ``n`` accounts, a seeded permutation dealt round-robin.

    It never reads a label, so that an account's fold (and with it every other account's) does
    not depend on its own label; folds differ in size by at most one.
    """
    if folds < 2:
        raise ValueError(f"folds: expected an integer >= 2 (got {folds})")
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return out


def check_held_out(values: Any, n_users: int) -> np.ndarray:
    """A run's stored held-out scores (``embeddings.safetensors`` ``fraud_prob_held_out``) as
    ``float64 [U]``, or ``ValueError`` naming what is wrong: not one per user, or a finite value
    outside ``[0, 1]`` (NaN: an account without one)."""
    from shopgraph.graph.train import HELD_OUT_KEY

    held = np.asarray(values, dtype=np.float64).reshape(-1)
    if held.size != n_users:
        raise ValueError(f"embeddings: {HELD_OUT_KEY} has {held.size:,} values for the graph's {n_users:,} users; "
                         "re-run `shopgraph train`")
    bad = np.isfinite(held) & ((held < 0) | (held > 1))
    if bad.any():
        raise ValueError(f"embeddings: {HELD_OUT_KEY} has {int(bad.sum()):,} values outside [0, 1] "
                         f"(first: user {int(np.flatnonzero(bad)[0])}); re-run `shopgraph train`")
    return held


def _refit_trees(head: Any, rounds: int, seed: int) -> Any:
    """Unfitted trees with ``head``'s settings that boost exactly ``rounds`` rounds."""
    from shopgraph.graph.baselines import XGBGraphFraud

    return XGBGraphFraud(
        n_estimators=rounds, learning_rate=head.learning_rate, max_depth=head.max_depth,
        subsample=head.subsample, colsample_bytree=head.colsample_bytree,
        min_child_weight=head.min_child_weight, eval_metric=head.eval_metric, balance=head.balance,
        validation_fraction=0.0, n_jobs=head.n_jobs, seed=seed,
    )


class HeldOutFit(NamedTuple):
    """What :func:`held_out_fit` gives: the scores, each account's fold, and each fold's trees."""

    prob: np.ndarray  # float64 [U]: held-out scores, NaN for the accounts without one
    fold: np.ndarray  # int64 [U]: the fold of each training account, -1 for the others
    trees: list[bytes | None]  # per fold: its trees (XGBGraphFraud.booster_bytes), None when not fitted


def held_out_known(data: HeteroData, fold: np.ndarray, k: int) -> np.ndarray:
    """:func:`known_labels` with fold ``k``'s labels hidden (-1): what fold ``k``'s trees read."""
    known = known_labels(data)
    known[np.asarray(fold) == k] = -1
    return known


def held_out_table(data: HeteroData, fold: np.ndarray, k: int, neighbours: np.ndarray | None = None,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The feature table fold ``k``'s trees were fitted and scored on (:func:`product_features` on
    every edge, fold ``k``'s labels hidden from the known-label counts) and its column names, for
    explanations (the known-label columns named as counting the training labels outside the
    account's fold, :data:`HELD_OUT_LABELS`: they are not the served table's counts);
    ``neighbours``: the table's neighbour part when already computed (the same for every fold);
    ``rows``: only these users' rows (all when ``None``)."""
    ring = ring_features(data, None, known=held_out_known(data, fold, k))
    neigh, x = _neighbour_table(data, None) if neighbours is None else neighbours, ring.x
    if rows is not None:
        neigh, x = neigh[rows], x[rows]
    return np.concatenate([neigh, x], axis=1), _product_names(data, ring.names, held_out=True)


def held_out_probabilities(
    data: HeteroData, scorer: FraudScorer, *, folds: int = HELD_OUT_FOLDS, seed: int = 0,
) -> np.ndarray:
    """:func:`held_out_fit`'s scores."""
    return held_out_fit(data, scorer, folds=folds, seed=seed).prob


def held_out_fit(
    data: HeteroData, scorer: FraudScorer, *, folds: int = HELD_OUT_FOLDS, seed: int = 0,
) -> HeldOutFit:
    """The served scorer's fraud probabilities of its training accounts with their own labels
    held out (cross-fitting), with the folds and trees behind them (for explanations).

    The served ``graph_trees`` are fitted on the training accounts' labels, so their scores of
    those accounts are fitted to the labels rather than predicted (on the demo shop every trained-on
    fraudster is flagged). Here the training accounts are dealt into ``folds`` folds
    (:func:`held_out_folds`); for each fold the trees are refitted with the served trees' settings
    and number of rounds (no early stopping) on the other folds' accounts, with the feature table
    recomputed as if the fold's labels were unknown (:func:`ring_features`' known-label counts),
    and score the fold's accounts. An account's held-out score therefore reads its label neither as
    a training row, nor in a co-user count, nor in the choice of folds. Two settings do come from
    the served fit, which saw every training label, this account's too: the number of rounds
    (early-stopped on the validation accounts) and the threshold the score is compared with (the
    served one, max F1 on the validation accounts) — one label among thousands behind a setting,
    as cross-fitting usually reuses tuned settings; early-stopping every fold on the validation
    accounts instead took 1.8× as long (BENCHMARKS.md).

    Args:
        data: the full graph with ``data["user"].x``, labels and masks.
        scorer: the serving scorer (:func:`select_fraud_scorer`'s, with its fitted ``head``).
        folds: number of folds, ``>= 2``.
        seed: fold and tree seed.

    Returns:
        :class:`HeldOutFit`: ``prob``, the held-out probability of each labelled training account,
        NaN for every other account, and NaN for all when the served kind is not ``graph_trees``
        (the GNN behind the other kinds was trained on every label: refitting the trees alone
        would not hold an account's label out) or there are fewer training accounts than folds (a
        fold whose other folds lack one class is left NaN, with a warning); ``fold``, each
        training account's fold (-1 for the others, and for all without held-out scores);
        ``trees``, each fold's trees (``None`` for a fold left NaN).
    """
    from shopgraph.graph.baselines import XGBGraphFraud

    if folds < 2:
        raise ValueError(f"folds: expected an integer >= 2 (got {folds})")
    n = int(data["user"].num_nodes)
    out, fold_of = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    trees_of: list[bytes | None] = [None] * folds
    if scorer.kind != "graph_trees":
        return HeldOutFit(out, fold_of, trees_of)
    head = scorer.head
    if not isinstance(head, XGBGraphFraud) or not hasattr(head, "best_iteration_"):
        raise ValueError(f"scorer.head: a 'graph_trees' scorer needs its fitted trees (got {type(head).__name__})")
    y, masks = fraud_labels(data)
    yy, train = y.numpy(), np.flatnonzero(masks["train"].numpy())
    if train.size < folds:
        logger.warning("fraud: %d training accounts, fewer than %d folds; no held-out scores", train.size, folds)
        return HeldOutFit(out, fold_of, trees_of)
    fold_of[train] = held_out_folds(train.size, folds, seed)
    neigh = _neighbour_table(data, None)
    width = neigh.shape[1]
    feats: np.ndarray | None = None  # one table: the neighbour columns copied once, the ring columns per fold
    for k in range(folds):
        held, rest = np.flatnonzero(fold_of == k), train[fold_of[train] != k]
        if np.unique(yy[rest]).size < 2:
            logger.warning("fraud: the accounts outside held-out fold %d have one class; its %d accounts get no "
                           "held-out score", k, held.size)
            continue
        ring = ring_features(data, None, known=held_out_known(data, fold_of, k)).x  # the same columns every fold
        if feats is None:
            feats = np.empty((n, width + ring.shape[1]), dtype=np.float32)
            feats[:, :width] = neigh
        feats[:, width:] = ring
        trees = _refit_trees(head, head.best_iteration_ + 1, seed).fit(feats[rest], yy[rest])
        out[held] = trees.predict_proba(feats[held])
        trees_of[k] = trees.booster_bytes()
    return HeldOutFit(out, fold_of, trees_of)


def evaluate_fraud_candidates(
    model: ShopGNN, data: HeteroData, test_emb: dict[str, Tensor], scorer: FraudScorer, seed: int = 0,
) -> dict[str, CandidateEvaluation]:
    """Test metrics of the serving kind and of every other candidate in ``scorer.candidates``.

    Each candidate is refitted (deterministic under ``seed``) as a deployment at the test cut
    would fit it: on the training users' labels, with the features and embeddings (``test_emb``)
    of the test-visible graph (train + validation periods), early-stopped on validation users
    seen the same way, then applied to the test users of that same view. That is exactly what
    ``baselines.fraud_baselines`` gives XGB-Graph; no test label is read. Each candidate, the
    serving kind included, is thresholded at the max-F1 threshold of its own scores on the
    validation users of that view, as the deployment would choose it (and as XGB-Graph's is).

    Args:
        model: the trained model.
        data: the full graph with labels and masks.
        test_emb: ``{"user": [U, D]}`` from the test-period message-passing graph.
        scorer: the serving scorer (e.g. ``select_fraud_scorer``'s, or one rebuilt from
            ``fraud.json`` with ``_replace(kind=..., threshold=...)``).
        seed: tree and bootstrap seed (the one used at training).

    Returns:
        ``{name: CandidateEvaluation}``, the serving kind first; ``{}`` for kind ``"none"``.
    """
    from shopgraph.graph.metrics import choose_threshold, fraud_metrics

    if scorer.kind == "none":
        return {}
    names = [scorer.kind] + [k for k in scorer.candidates if k != scorer.kind]
    _check_candidates(names)
    fitted = _fit_product(model, data, test_emb, seed, names, "test", "test_emb")
    if fitted is None:
        raise ValueError(f"data: scorer.kind is {scorer.kind!r} but the graph has no usable fraud labels")
    fits, y, masks = fitted
    te, va = masks["test"].numpy(), masks["val"].numpy()
    if not te.any() or np.unique(y[te]).size < 2:
        raise ValueError(f"data['user'].test_mask: expected labelled test users of both classes (got {int(te.sum())})")
    out: dict[str, CandidateEvaluation] = {}
    for kind in names:
        if kind not in fits.probs:
            logger.warning("fraud: candidate %s could not be refitted; not evaluated", kind)
            continue
        prob = fits.probs[kind][te]
        threshold = float(choose_threshold(y[va], fits.probs[kind][va]))
        out[kind] = CandidateEvaluation(fraud_metrics(y[te], prob, threshold), y[te], prob)
    return out
