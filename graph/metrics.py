"""Evaluation metrics shared by training, evaluation, baselines and benchmarks.

Purchase (link prediction) uses *full ranking*: every item is scored for every evaluated user,
the user's already-known items (``exclude_pairs``) are removed, and the top-K list is compared
with the user's held-out items. The conventions are LightGCN's (He et al., 2020) so numbers on the
public Gowalla split compare to the published ones:

* ``recall@K = |top-K ∩ test| / |test|`` (not divided by ``min(K, |test|)``), averaged over users;
* ``ndcg@K`` with binary gains, ``DCG = Σ_{r<K} hit_r / log2(r + 2)`` and the ideal DCG of
  ``min(K, |test|)`` hits at the top;
* ``hit@K`` = share of users with at least one test item in the top K;
* ``coverage@K`` (largest K only) = share of the catalogue that appears in any user's top-K list.

Fraud uses threshold-free AUROC / AUPRC (average precision), ``rec@k`` with K the number of
positives (the share of fraudsters found if an analyst reviews exactly as many accounts as there
are fraudsters), and precision / recall / F1 at a threshold chosen on validation data by
:func:`choose_threshold`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["ranking_metrics", "ranking_metrics_many", "fraud_metrics", "choose_threshold"]


def check_pairs(pairs: Tensor, name: str, num_items: int, num_users: int | None = None) -> Tensor:
    """Validate (user, item) pairs ``LongTensor[2, P]`` and return them as int64 on the CPU.

    Users must be non-negative (and below ``num_users`` when given), items in ``[0, num_items)``.
    """
    if not isinstance(pairs, Tensor):
        raise TypeError(f"{name}: expected a LongTensor[2, P] (got {type(pairs).__name__})")
    if pairs.dim() != 2 or pairs.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, P] (got {list(pairs.shape)})")
    if pairs.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected an integer tensor (got {pairs.dtype})")
    pairs = pairs.long().cpu()
    if pairs.numel():
        bad_user = pairs[0] < 0 if num_users is None else (pairs[0] < 0) | (pairs[0] >= num_users)
        bad = torch.nonzero(bad_user | (pairs[1] < 0) | (pairs[1] >= num_items)).flatten()
        if bad.numel():
            k = int(bad[0])
            bounds = (f"a negative user or an item outside [0, {num_items})" if num_users is None
                      else f"a user or item outside num_users={num_users}, num_items={num_items}")
            raise ValueError(
                f"{name}: {bad.numel():,} of {pairs.size(1):,} pairs have {bounds} "
                f"(first: column {k}, ({int(pairs[0, k])}, {int(pairs[1, k])}))"
            )
    return pairs


def _csr_for(users: Tensor, pairs: Tensor, pos_of_user: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Group ``pairs`` by the position of their user in ``users``.

    Returns ``(row [Q], item [Q], offsets [len(users) + 1])``: the pairs whose user is evaluated,
    sorted by that user's position, with CSR offsets so batch ``[s, e)`` is
    ``offsets[s]:offsets[e]``.
    """
    u = pairs[0]
    in_range = u < pos_of_user.numel()
    row = torch.full_like(u, -1)
    row[in_range] = pos_of_user[u[in_range]]
    keep = row >= 0
    row, item = row[keep], pairs[1][keep]
    order = torch.argsort(row, stable=True)
    row, item = row[order], item[order]
    counts = torch.bincount(row, minlength=users.numel())
    offsets = torch.zeros(users.numel() + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return row, item, offsets


def ranking_metrics(
    score_fn: Callable[[Tensor], Tensor],
    exclude_pairs: Tensor,
    test_pairs: Tensor,
    num_items: int,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    per_user: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Full-ranking top-K metrics (LightGCN conventions; see the module docstring).

    Every user with at least one test pair is evaluated once. Items in ``exclude_pairs`` for that
    user get score ``-inf`` and can never count as hits or as coverage (if a test item is also
    excluded it still counts in the recall denominator, as in LightGCN; a warning is logged).

    Args:
        score_fn: maps ``LongTensor[B]`` user indices to ``FloatTensor[B, num_items]`` scores
            (any device; the metric follows the scores' device).
        exclude_pairs: ``LongTensor[2, P]`` (user, item) pairs removed from each user's ranking,
            e.g. the training items.
        test_pairs: ``LongTensor[2, T]`` held-out (user, item) pairs; duplicates are ignored.
        num_items: size of the catalogue (second dimension of the scores).
        ks: cut-offs, e.g. ``(10, 20)``; a K above ``num_items`` ranks the whole catalogue.
        batch_size: users scored per call of ``score_fn``.
        per_user: a list that receives each evaluated user's recall at the largest K (float64
            ``[users]``, the users in increasing index order), so that two rankings of the same
            test can be compared user by user (:func:`paired_difference`); ``None``: not kept.

    Returns:
        ``{"recall@K", "ndcg@K", "hit@K"}`` for every K, ``"coverage@<max K>"`` and ``"users"``
        (number of evaluated users). All values are floats.
    """
    return ranking_metrics_many(lambda users: (score_fn(users),), 1, exclude_pairs, test_pairs, num_items, ks,
                                batch_size, per_user)[0]


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``{"difference", "se"}``: the mean of ``a - b`` over the same users (per-user recalls of two
    rankings, :func:`ranking_metrics`'s ``per_user``) and its standard error, which says how much of
    a difference between two rows of a table a test set of this size leaves to chance."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"a, b: expected per-user values of the same users, at least 2 (got {a.shape}, {b.shape})")
    diff = a - b
    return {"difference": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(diff.size))}


def ranking_metrics_many(
    scores_fn: Callable[[Tensor], Iterable[Tensor]],
    n: int,
    exclude_pairs: Tensor,
    test_pairs: Tensor,
    num_items: int,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    per_user: list[np.ndarray] | None = None,
) -> list[dict[str, float]]:
    """:func:`ranking_metrics` of ``n`` rankings of the same users at once: ``scores_fn(users)``
    yields the ``n`` score matrices of a batch, one after the other (a generator keeps one in
    memory at a time). Rankings that share most of their work (one dot product, then a different
    revisit term or channel weight each) compute it once per batch instead of once per ranking;
    the test and excluded pairs of a batch are gathered once for all of them; ``per_user`` receives
    the ``n`` rankings' per-user recalls at the largest K, as :func:`ranking_metrics`'s."""
    if num_items <= 0:
        raise ValueError(f"num_items: expected a positive count (got {num_items})")
    ks = [int(k) for k in ks]
    if not ks or any(k <= 0 for k in ks):
        raise ValueError(f"ks: expected positive cut-offs (got {list(ks)})")
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer (got {batch_size})")
    if n <= 0:
        raise ValueError(f"n: expected a positive number of rankings (got {n})")
    test = check_pairs(test_pairs, "test_pairs", num_items)
    excl = check_pairs(exclude_pairs, "exclude_pairs", num_items)
    if test.size(1) == 0:
        raise ValueError("test_pairs: no pairs to evaluate (got shape [2, 0])")
    # distinct test pairs only: a repeated pair is one relevant item, not two
    test = torch.unique(test, dim=1)
    users = torch.unique(test[0])
    pos_of_user = torch.full((int(users.max()) + 1,), -1, dtype=torch.long)
    pos_of_user[users] = torch.arange(users.numel())
    t_row, t_item, t_off = _csr_for(users, test, pos_of_user)
    e_row, e_item, e_off = _csr_for(users, excl, pos_of_user)

    max_k = max(ks)
    n_test = torch.bincount(t_row, minlength=users.numel()).double()
    # ideal DCG for min(K, |test|) hits at the top: prefix sums of the discounts
    discounts = 1.0 / torch.log2(torch.arange(max_k, dtype=torch.float64) + 2.0)
    idcg_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(discounts, 0)])
    sums = [{f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hit")} for _ in range(n)]
    recalls = [np.zeros(users.numel(), dtype=np.float64) for _ in range(n)] if per_user is not None else []
    shown = [torch.zeros(num_items, dtype=torch.bool) for _ in range(n)]
    overlap = 0

    for s in range(0, users.numel(), batch_size):
        e = min(s + batch_size, users.numel())
        batch = users[s:e]
        targets: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}  # per device: target, excluded rows, items
        got = 0
        for v, scores in enumerate(scores_fn(batch)):
            got += 1
            if v >= n:
                raise ValueError(f"score_fn: gave more than the {n} rankings asked for")
            if not isinstance(scores, Tensor) or scores.shape != (e - s, num_items):
                shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                raise ValueError(f"score_fn: expected a tensor of shape [{e - s}, {num_items}] (got {shape})")
            if not scores.is_floating_point():
                raise TypeError(f"score_fn: expected floating-point scores (got {scores.dtype})")
            dev = scores.device
            scores = scores.detach().float().clone()
            if torch.isnan(scores).any():
                bad = int(torch.isnan(scores).any(1).nonzero()[0, 0])
                raise ValueError(f"score_fn: returned NaN scores (first: user {int(batch[bad])})")
            if dev not in targets:
                target = torch.zeros(e - s, num_items, dtype=torch.bool, device=dev)
                tr = (t_row[t_off[s] : t_off[e]] - s).to(dev)
                target[tr, t_item[t_off[s] : t_off[e]].to(dev)] = True
                er = (e_row[e_off[s] : e_off[e]] - s).to(dev)
                ei = e_item[e_off[s] : e_off[e]].to(dev)
                if ei.numel() and not targets:
                    overlap += int(target[er, ei].sum())
                targets[dev] = (target, er, ei)
            target, er, ei = targets[dev]
            if ei.numel():
                scores[er, ei] = float("-inf")
            top_val, top_idx = torch.topk(scores, min(max_k, num_items), dim=1)
            valid = top_val > float("-inf")  # fewer than K rankable items: pad positions never count
            hits = (target.gather(1, top_idx) & valid).double().cpu()  # [B, min(max_k, num_items)]
            if hits.size(1) < max_k:  # K larger than the catalogue: the missing ranks are misses
                hits = torch.nn.functional.pad(hits, (0, max_k - hits.size(1)))
            shown[v][top_idx[valid].cpu()] = True
            nt = n_test[s:e]
            if recalls:
                recalls[v][s:e] = (hits[:, :max_k].sum(1) / nt).numpy()
            for k in ks:
                h = hits[:, :k]
                sums[v][f"recall@{k}"] += float((h.sum(1) / nt).sum())
                dcg = (h * discounts[:k]).sum(1)
                idcg = idcg_prefix[torch.clamp(nt, max=k).long()]
                sums[v][f"ndcg@{k}"] += float((dcg / idcg).sum())
                sums[v][f"hit@{k}"] += float((h.sum(1) > 0).double().sum())
        if got != n:
            raise ValueError(f"score_fn: gave {got} rankings of a batch, expected {n}")

    if per_user is not None:
        per_user.extend(recalls)
    if overlap:
        logger.warning("ranking_metrics: %d test pairs are also excluded; they count as misses", overlap)
    n_users = users.numel()
    out = []
    for v in range(n):
        metrics = {name: total / n_users for name, total in sums[v].items()}
        metrics[f"coverage@{max_k}"] = float(shown[v].sum()) / num_items
        metrics["users"] = float(n_users)
        out.append(metrics)
    return out


def _check_binary(y_true: np.ndarray, prob: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"{names[0]}, {names[1]}: expected 1-D arrays (got shapes {y.shape} and {p.shape})")
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"{names[0]}, {names[1]}: length mismatch (got {y.shape[0]:,} labels and {p.shape[0]:,} scores)"
        )
    if y.size == 0:
        raise ValueError(f"{names[0]}: no samples (got an empty array)")
    if np.isnan(p).any():
        bad = int(np.flatnonzero(np.isnan(p))[0])
        raise ValueError(f"{names[1]}: {int(np.isnan(p).sum()):,} NaN scores (first at index {bad})")
    if y.dtype.kind == "f" and np.isnan(y).any():
        bad = int(np.flatnonzero(np.isnan(y))[0])
        raise ValueError(f"{names[0]}: {int(np.isnan(y).sum()):,} NaN labels (first at index {bad})")
    return check_binary_labels(y, names[0], "AUROC/AUPRC need both classes"), p


def check_binary_labels(y: np.ndarray, name: str, why: str = "need both classes") -> np.ndarray:
    """0/1 labels with both classes present, as int64; ``why`` ends the single-class message."""
    not01 = ~np.isin(y, (0, 1))
    if not01.any():
        bad = int(np.flatnonzero(not01)[0])
        raise ValueError(f"{name}: expected 0/1 labels (got {y[bad]!r} at index {bad})")
    y = np.asarray(y).astype(np.int64)
    if np.unique(y).size < 2:
        raise ValueError(f"{name}: a single class (all {int(y[0])}, {y.size:,} samples); {why}")
    return y


def choose_threshold(y_val: np.ndarray, prob_val: np.ndarray) -> float:
    """The score threshold with the highest F1 on validation data.

    Args:
        y_val: ``[N]`` 0/1 labels.
        prob_val: ``[N]`` scores (higher = more likely fraud).

    Returns:
        The threshold ``t``; predict fraud where ``prob >= t``.
    """
    y, p = _check_binary(y_val, prob_val, ("y_val", "prob_val"))
    precision, recall, thresholds = precision_recall_curve(y, p)
    # the last (precision, recall) point has no threshold
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def fraud_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Binary fraud-detection metrics.

    Args:
        y_true: ``[N]`` 0/1 labels (both classes present).
        prob: ``[N]`` scores or probabilities, higher = more likely fraud.
        threshold: decision threshold (``prob >= threshold`` is fraud); ``None`` uses 0.5. Pass
            :func:`choose_threshold` on validation data for an honest operating point.

    Returns:
        ``{"auroc", "auprc", "rec@k", "precision", "recall", "f1", "threshold"}``; ``rec@k`` is
        the recall among the top-K scores with K the number of positives.
    """
    y, p = _check_binary(y_true, prob, ("y_true", "prob"))
    t = 0.5 if threshold is None else float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold: expected a finite number (got {threshold})")
    n_pos = int(y.sum())
    top = np.argsort(-p, kind="stable")[:n_pos]
    pred = p >= t
    tp = int((pred & (y == 1)).sum())
    n_pred = int(pred.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_pos
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "auroc": float(roc_auc_score(y, p)),
        "auprc": float(average_precision_score(y, p)),
        "rec@k": float(y[top].sum()) / n_pos,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "threshold": t,
    }
