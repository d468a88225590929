"""The serving fraud scorer: several candidates, one chosen on validation.

Candidates (all fitted on train-mask users, with embeddings and neighbour features of the
train-period graph, early-stopped and compared on the validation users):

* ``gnn_head``: ShopGNN's own fraud head, ``sigmoid(model.fraud_logit(emb))``;
* ``hybrid``: boosted trees (:class:`HybridFraudHead`) on GNN embeddings ⊕
  :func:`hetero_neighbor_features`;
* ``graph_trees``: the same trees on :func:`hetero_neighbor_features` alone, without the GNN
  (the XGB-Graph protocol on the product's own neighbour features);
* ``rank_average``: the mean of the rank-normalised ``gnn_head`` and ``graph_trees`` scores. Ranks
  are taken against fixed reference distributions (each part's scores of every user at
  selection time), stored in the head, so serving normalises new scores the same way.

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
from shopgraph.graph.train import FraudScorer, fraud_labels, lean_graph

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


# -- product wiring -------------------------------------------------------------------------------
def _param_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gnn_prob(model: ShopGNN, user_emb: Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.fraud_logit(user_emb.to(_param_device(model)))).float().cpu().numpy()


def _neighbor_features(data: HeteroData, split: Split | None) -> np.ndarray:
    from shopgraph.graph.baselines import hetero_neighbor_features

    if split is None:  # edges without .split are always visible: the whole history
        return hetero_neighbor_features(lean_graph(data), "user")
    return hetero_neighbor_features(data, "user", split)


def _fit_product(
    model: ShopGNN, data: HeteroData, train_emb: dict[str, Tensor], seed: int, candidates: Sequence[str],
) -> tuple[CandidateFits, np.ndarray, dict[str, Tensor]] | None:
    names = _check_candidates(candidates)
    if "user" not in data.node_types:
        raise ValueError(f"data: no 'user' node type (got {sorted(data.node_types)})")
    if "user" not in train_emb:
        raise ValueError(f"train_emb: expected a 'user' entry (got {sorted(train_emb)})")
    n = int(data["user"].num_nodes)
    if train_emb["user"].dim() != 2 or train_emb["user"].size(0) != n:
        raise ValueError(f"train_emb['user']: expected shape [{n}, D] (got {list(train_emb['user'].shape)})")
    y, masks = fraud_labels(data)
    tr, va = masks["train"], masks["val"]
    if not (int(tr.sum()) and int(va.sum()) and len(torch.unique(y[tr])) == 2 and len(torch.unique(y[va])) == 2):
        logger.warning("fraud: no usable labels (need both classes in train and val); no fraud scorer")
        return None
    feats = _neighbor_features(data, "train") if "x" in data["user"] else None
    fits = fit_candidates(
        y.numpy(), np.flatnonzero(tr.numpy()), np.flatnonzero(va.numpy()), _gnn_prob(model, train_emb["user"]),
        train_emb["user"].detach().float().cpu().numpy(), feats, candidates=names, seed=seed,
    )
    return fits, y.numpy(), masks


def select_fraud_scorer(
    model: ShopGNN, data: HeteroData, train_emb: dict[str, Tensor], seed: int = 0,
    candidates: Sequence[str] = CANDIDATES,
) -> FraudScorer:
    """Fit the candidates and pick the serving fraud scorer on validation AUPRC (module doc).

    Args:
        model: the trained model (its fraud head is ``gnn_head``).
        data: the full graph with ``data["user"].y`` and train/val/test masks (y < 0: unlabelled).
        train_emb: embeddings from the train-period graph, ``{"user": [U, D], ...}``.
        seed: tree and bootstrap seed.
        candidates: names from :data:`CANDIDATES`.

    Returns:
        :class:`FraudScorer`: ``kind`` one of the candidates (``"none"`` without usable labels),
        the max-F1 validation threshold, the validation AUPRC of every fitted candidate, and the
        ``head`` :func:`fraud_probabilities` needs.
    """
    from shopgraph.graph.metrics import choose_threshold

    fitted = _fit_product(model, data, train_emb, seed, candidates)
    if fitted is None:
        return FraudScorer("none", float("nan"), float("nan"), {}, None)
    fits, y, masks = fitted
    va = masks["val"].numpy()
    kept = [k for k in _check_candidates(candidates) if k in fits.probs]
    kind, scores = choose_candidate(y[va], {k: fits.probs[k][va] for k in kept}, seed=seed)
    threshold = float(choose_threshold(y[va], fits.probs[kind][va]))
    logger.info("fraud: validation AUPRC %s -> serving %s (threshold %.4f)",
                ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), kind, threshold)
    return FraudScorer(kind, threshold, scores[kind], scores, fits.heads[kind])


def fraud_probabilities(
    model: ShopGNN, scorer: FraudScorer, data: HeteroData, user_emb: Tensor, split: Split | None = None
) -> Tensor:
    """Fraud probabilities ``[U]`` of the chosen scorer (in ``[0, 1]``; NaN for kind ``"none"``).

    Args:
        model: the trained model (for the GNN head).
        scorer: from :func:`select_fraud_scorer`.
        data: the full graph.
        user_emb: ``[U, D]`` user embeddings computed on the graph visible for ``split``.
        split: visibility of the neighbour features (``None``: every edge, for serving).
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
    feats = _neighbor_features(data, split)
    if kind == "graph_trees":
        prob = scorer.head.predict_proba(feats)
    elif kind == "hybrid":
        emb = user_emb.detach().float().cpu().numpy()
        prob = scorer.head.predict_proba(np.concatenate([emb, feats], axis=1))
    else:
        head: RankAverageHead = scorer.head
        parts = {"gnn_head": _gnn_prob(model, user_emb), "graph_trees": head.trees.predict_proba(feats)}
        prob = rank_average_scores(parts, head.reference)
    return torch.as_tensor(np.asarray(prob), dtype=torch.float32)


def evaluate_fraud_candidates(
    model: ShopGNN, data: HeteroData, train_emb: dict[str, Tensor], test_emb: dict[str, Tensor],
    scorer: FraudScorer, seed: int = 0,
) -> dict[str, CandidateEvaluation]:
    """Test metrics of the serving kind and of every other candidate in ``scorer.candidates``.

    All candidates are refitted (deterministic under ``seed``) on train users with
    ``train_emb``, then score test users with ``test_emb`` and test-visible neighbour features.
    The serving kind (``scorer.kind``) is thresholded at ``scorer.threshold``; the others at
    their own max-F1 validation threshold.

    Args:
        model: the trained model.
        data: the full graph with labels and masks.
        train_emb: ``{"user": [U, D]}`` from the train-period graph.
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
    fitted = _fit_product(model, data, train_emb, seed, names)
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
        sc = FraudScorer(kind, float("nan"), float("nan"), {}, fits.heads[kind])
        prob = fraud_probabilities(model, sc, data, test_emb["user"], "test").numpy().astype(np.float64)[te]
        threshold = scorer.threshold if kind == scorer.kind else choose_threshold(y[va], fits.probs[kind][va])
        out[kind] = CandidateEvaluation(fraud_metrics(y[te], prob, threshold), y[te], prob)
    return out
