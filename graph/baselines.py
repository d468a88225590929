"""Strong, honest baselines for both heads.

Purchase (user → item ranking), sklearn-style ``fit(train_pairs, num_users, num_items) -> self``
and ``score(users) -> FloatTensor[B, num_items]``:

* :class:`Popularity` — training-pair count per item.
* :class:`ItemKNN` — item–item cosine with shrinkage, top-``neighbors`` per item, sparse; can
  also see other interaction types (views, carts) through ``extra_pairs``.
* :class:`EASE` — Steck (2019) closed-form linear autoencoder; dense ``I × I``, so refuses
  catalogues above ``max_items``.
* :class:`BPRMF` — matrix factorisation trained with the BPR loss (not LightGCN).
* :class:`ContentKNN` — user profile = mean of the consumed items' L2-normalised content vectors,
  items scored by cosine to the profile.

:func:`purchase_baselines` fits them all on what is visible for a split and evaluates them with
:func:`shopgraph.graph.metrics.ranking_metrics`.

Fraud (user classification), ``fit(X, y, X_val=None, y_val=None) -> self`` and
``predict_proba(X) -> ndarray[N]``:

* :func:`neighbor_mean_features` (one node type) and :func:`hetero_neighbor_features` (the shop)
  build "own ⊕ neighbourhood" feature tables; boosted trees on them (:class:`XGBGraphFraud`,
  "XGB-Graph") are the strongest simple fraud baseline on Tolokers and Reddit.
* :class:`LogRegFraud`, :class:`XGBGraphFraud`, :class:`HybridFraudHead` (the same trees on GNN
  user embeddings ⊕ neighbour features, see :func:`hybrid_features`).

:func:`fraud_baselines` trains them on ``train_mask``, picks the threshold on ``val_mask`` and
reports :func:`shopgraph.graph.metrics.fraud_metrics` on ``test_mask``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.build import (
    Split,
    message_passing_graph,
    target_edge_type,
    target_pairs,
    visible_test_pairs,
)
from shopgraph.graph.metrics import (
    check_binary_labels,
    check_pairs,
    choose_threshold,
    fraud_metrics,
    ranking_metrics,
)
from shopgraph.graph.model import gather_add

logger = logging.getLogger(__name__)

__all__ = [
    "Popularity", "ItemKNN", "EASE", "BPRMF", "ContentKNN", "RevisitBonus", "purchase_baselines",
    "neighbor_mean_features", "hetero_neighbor_features", "hybrid_features",
    "LogRegFraud", "XGBGraphFraud", "HybridFraudHead", "FraudBaselineRun", "fraud_baselines", "fraud_baseline_runs",
]


# ----------------------------------------------------------------------------------------------
# purchase baselines
# ----------------------------------------------------------------------------------------------


def _check_pairs(pairs: Tensor, name: str, num_users: int, num_items: int) -> Tensor:
    return check_pairs(pairs, name, num_items, num_users)


def _check_sizes(num_users: int, num_items: int) -> None:
    if num_users <= 0 or num_items <= 0:
        raise ValueError(f"num_users, num_items: expected positive counts (got {num_users}, {num_items})")


def _binary_matrix(pairs: Tensor, num_users: int, num_items: int) -> sp.csr_matrix:
    """Distinct (user, item) pairs as a 0/1 CSR matrix ``[U, I]`` (float32)."""
    keys = np.unique(pairs[0].numpy() * num_items + pairs[1].numpy())
    rows, cols = keys // num_items, keys % num_items
    return sp.csr_matrix(
        (np.ones(keys.size, dtype=np.float32), (rows, cols)), shape=(num_users, num_items)
    )


class _PurchaseBaseline:
    """Shared ``score`` input checks and the not-fitted error."""

    num_users_: int
    num_items_: int

    def _check_fitted(self) -> None:
        if not hasattr(self, "num_items_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(train_pairs, num_users, num_items) first"
            )

    def _check_users(self, users: Tensor) -> Tensor:
        self._check_fitted()
        if not isinstance(users, Tensor) or users.dim() != 1:
            got = list(users.shape) if isinstance(users, Tensor) else type(users).__name__
            raise ValueError(f"users: expected a LongTensor[B] of user indices (got {got})")
        users = users.long().cpu()
        bad = torch.nonzero((users < 0) | (users >= self.num_users_)).flatten()
        if bad.numel():
            raise ValueError(
                f"users: {bad.numel():,} indices outside [0, {self.num_users_}) "
                f"(first: {int(users[bad[0]])} at position {int(bad[0])})"
            )
        return users


class Popularity(_PurchaseBaseline):
    """Scores every item by its number of distinct training buyers (same list for every user)."""

    def fit(self, train_pairs: Tensor, num_users: int, num_items: int) -> Popularity:
        """Count buyers per item.

        Args:
            train_pairs: ``LongTensor[2, P]`` (user, item) pairs.
            num_users: number of users ``U``.
            num_items: number of items ``I``.
        """
        _check_sizes(num_users, num_items)
        pairs = _check_pairs(train_pairs, "train_pairs", num_users, num_items)
        pairs = torch.unique(pairs, dim=1)
        self.counts_ = torch.bincount(pairs[1], minlength=num_items).float()
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items]."""
        users = self._check_users(users)
        return self.counts_.unsqueeze(0).expand(users.numel(), -1).clone()


class ItemKNN(_PurchaseBaseline):
    """Item-based nearest neighbours with shrunk cosine similarity.

    ``sim(i, j) = <r_i, r_j> / (|r_i| |r_j| + shrink)`` over the user columns of the
    interaction matrix; each item keeps its ``neighbors`` most similar items, and a user's score
    for ``j`` is ``Σ_i r_ui · sim(i, j)`` over kept neighbours. Computed in item chunks, so
    memory stays at ``chunk × I`` dense plus the sparse result.

    Args:
        neighbors: neighbours kept per item.
        shrink: shrinkage added to the cosine denominator (damps pairs with little support).
        chunk: items per block when computing similarities.
    """

    def __init__(self, neighbors: int = 200, shrink: float = 100.0, chunk: int = 1024) -> None:
        self.neighbors = neighbors
        self.shrink = shrink
        self.chunk = chunk

    def fit(
        self,
        train_pairs: Tensor,
        num_users: int,
        num_items: int,
        extra_pairs: Tensor | None = None,
        extra_weight: float = 0.5,
    ) -> ItemKNN:
        """Build the sparse item–item neighbour matrix.

        Args:
            train_pairs: ``LongTensor[2, P]`` target (e.g. purchase) pairs, weight 1.
            num_users: number of users ``U``.
            num_items: number of items ``I``.
            extra_pairs: optional ``LongTensor[2, Q]`` other interactions (views, carts) of the
                same period; a pair only seen here gets weight ``extra_weight``.
            extra_weight: weight of extra-only pairs, in ``(0, 1]``.
        """
        if self.neighbors <= 0 or self.shrink < 0 or self.chunk <= 0:
            raise ValueError(
                f"ItemKNN: expected neighbors > 0, shrink >= 0, chunk > 0 "
                f"(got {self.neighbors}, {self.shrink}, {self.chunk})"
            )
        _check_sizes(num_users, num_items)
        pairs = _check_pairs(train_pairs, "train_pairs", num_users, num_items)
        r = _binary_matrix(pairs, num_users, num_items)
        if extra_pairs is not None:
            if not 0.0 < extra_weight <= 1.0:
                raise ValueError(f"extra_weight: expected a weight in (0, 1] (got {extra_weight})")
            extra = _check_pairs(extra_pairs, "extra_pairs", num_users, num_items)
            r = r.maximum(_binary_matrix(extra, num_users, num_items) * np.float32(extra_weight)).tocsr()
        rt = r.T.tocsr()  # [I, U]
        norms = np.sqrt(np.asarray(r.multiply(r).sum(0)).ravel()).astype(np.float32)  # [I]
        k = min(self.neighbors, num_items - 1)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for s in range(0, num_items, self.chunk):
            e = min(s + self.chunk, num_items)
            co = torch.from_numpy((rt[s:e] @ r).toarray())  # [c, I] co-occurrence
            denom = torch.from_numpy(norms[s:e, None] * norms[None, :] + np.float32(self.shrink))
            sim = co / denom.clamp(min=1e-12)
            sim[torch.arange(e - s), torch.arange(s, e)] = 0.0  # an item is not its own neighbour
            if k <= 0:
                continue
            v, j = torch.topk(sim, k, dim=1)
            keep = v > 0
            rows.append(torch.arange(s, e).unsqueeze(1).expand(-1, k)[keep].numpy())
            cols.append(j[keep].numpy())
            vals.append(v[keep].numpy())
        w = sp.csr_matrix(
            (np.concatenate(vals) if vals else np.zeros(0, np.float32),
             (np.concatenate(rows) if rows else np.zeros(0, np.int64),
              np.concatenate(cols) if cols else np.zeros(0, np.int64))),
            shape=(num_items, num_items), dtype=np.float32,
        )
        self.user_items_ = r
        self.similarity_ = w
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items]."""
        users = self._check_users(users)
        out = (self.user_items_[users.numpy()] @ self.similarity_).toarray()
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class EASE(_PurchaseBaseline):
    """EASE (Steck, 2019): ``B = I - P · diag(1 / diag(P))`` with ``P = (XᵀX + λI)⁻¹``.

    Needs two dense ``I × I`` matrices, so catalogues above ``max_items`` are refused.

    Args:
        lam: L2 regularisation λ.
        max_items: largest catalogue accepted.
    """

    def __init__(self, lam: float = 100.0, max_items: int = 20000) -> None:
        self.lam = lam
        self.max_items = max_items

    def fit(self, train_pairs: Tensor, num_users: int, num_items: int) -> EASE:
        """Solve for the item–item weight matrix.

        Args:
            train_pairs: ``LongTensor[2, P]`` (user, item) pairs.
            num_users: number of users ``U``.
            num_items: number of items ``I``.
        """
        _check_sizes(num_users, num_items)
        if num_items > self.max_items:
            gb = 2 * num_items**2 * 4 / 1e9
            raise ValueError(
                f"num_items: EASE needs two dense {num_items:,} x {num_items:,} matrices (about {gb:.1f} GB); "
                f"the catalogue exceeds max_items={self.max_items:,} (got {num_items:,} items)"
            )
        if self.lam <= 0:
            raise ValueError(f"lam: expected a positive regularisation (got {self.lam})")
        pairs = _check_pairs(train_pairs, "train_pairs", num_users, num_items)
        x = _binary_matrix(pairs, num_users, num_items)
        # float64 where it is cheap; float32 keeps big catalogues inside memory
        dtype = torch.float64 if num_items <= 5000 else torch.float32
        g = torch.from_numpy((x.T @ x).toarray()).to(dtype)
        g.diagonal().add_(self.lam)
        p = torch.linalg.inv(g)
        del g
        b = p / (-p.diagonal()).unsqueeze(0)
        b.diagonal().zero_()
        self.weights_ = b.float()
        self.user_items_ = x
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items]."""
        users = self._check_users(users)
        xu = torch.from_numpy(self.user_items_[users.numpy()].toarray())
        return xu @ self.weights_


class BPRMF(_PurchaseBaseline):
    """Matrix factorisation trained with the BPR pairwise loss (uniform negative sampling, Adam).

    Args:
        dim: embedding size.
        epochs: passes over the training pairs.
        lr: Adam learning rate.
        batch_size: positive pairs per step.
        reg: L2 penalty on the embeddings used in a batch.
        seed: seeds initialisation and sampling.
    """

    def __init__(
        self, dim: int = 64, epochs: int = 30, lr: float = 5e-3, batch_size: int = 2048,
        reg: float = 1e-4, seed: int = 0,
    ) -> None:
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.reg = reg
        self.seed = seed

    def fit(self, train_pairs: Tensor, num_users: int, num_items: int) -> BPRMF:
        """Train the user and item embeddings.

        Args:
            train_pairs: ``LongTensor[2, P]`` (user, item) pairs.
            num_users: number of users ``U``.
            num_items: number of items ``I``.
        """
        if self.dim <= 0 or self.epochs < 0 or self.lr <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"BPRMF: expected dim > 0, epochs >= 0, lr > 0, batch_size > 0 "
                f"(got {self.dim}, {self.epochs}, {self.lr}, {self.batch_size})"
            )
        _check_sizes(num_users, num_items)
        pairs = torch.unique(_check_pairs(train_pairs, "train_pairs", num_users, num_items), dim=1)
        gen = torch.Generator().manual_seed(self.seed)
        user = torch.nn.Parameter(torch.randn(num_users, self.dim, generator=gen) * 0.1)
        item = torch.nn.Parameter(torch.randn(num_items, self.dim, generator=gen) * 0.1)
        opt = torch.optim.Adam([user, item], lr=self.lr)
        n = pairs.size(1)
        self.loss_history_: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                u, i = pairs[0, idx], pairs[1, idx]
                j = torch.randint(0, num_items, (idx.numel(),), generator=gen)
                eu, ei, ej = user[u], item[i], item[j]
                diff = (eu * ei).sum(1) - (eu * ej).sum(1)
                loss = -F.logsigmoid(diff).mean() + self.reg * (
                    eu.pow(2).sum() + ei.pow(2).sum() + ej.pow(2).sum()
                ) / idx.numel()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            self.loss_history_.append(total / max(n, 1))
        self.user_emb_ = user.detach().clone()
        self.item_emb_ = item.detach().clone()
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items] (inner products)."""
        users = self._check_users(users)
        return self.user_emb_[users] @ self.item_emb_.T


class ContentKNN(_PurchaseBaseline):
    """Content-based scores: cosine between items and the mean of the user's items' vectors.

    Args:
        item_features: ``FloatTensor[I, D]`` content vectors (e.g. text or image embeddings).
    """

    def __init__(self, item_features: Tensor) -> None:
        self.item_features = item_features

    def fit(self, train_pairs: Tensor, num_users: int, num_items: int) -> ContentKNN:
        """Build user profiles.

        Args:
            train_pairs: ``LongTensor[2, P]`` (user, item) pairs.
            num_users: number of users ``U``.
            num_items: number of items ``I`` (must equal ``item_features.size(0)``).
        """
        _check_sizes(num_users, num_items)
        feats = self.item_features
        if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.size(0) != num_items:
            got = list(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ValueError(f"item_features: expected a FloatTensor[{num_items}, D] (got {got})")
        pairs = torch.unique(_check_pairs(train_pairs, "train_pairs", num_users, num_items), dim=1)
        items = F.normalize(feats.detach().float().cpu(), dim=1)
        profile = gather_add(items, pairs[1], pairs[0], num_users)
        # the mean's direction equals the sum's, so normalising the sum gives the same cosine
        self.profiles_ = F.normalize(profile, dim=1)
        self.items_ = items
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items] (cosine; 0 for users without items)."""
        users = self._check_users(users)
        return self.profiles_[users] @ self.items_.T


class RevisitBonus(_PurchaseBaseline):
    """ItemKNN on every event type plus a bonus for the items the user already viewed or carted:
    the simple-method counterpart of ShopGNN's revisit term, so the report compares like with like.

    ``score(u, i) = knn(u, i) + bonus · max_j knn(u, j) · log(1 + n_ui)``, ``n_ui`` the user's
    visible non-target events on ``i`` (repeats count). ``bonus=1`` was chosen on validation
    Recall@20 of the 5,000-user shop among 0.25, 1 and 4 (``bench/bench_shop_estimators.py``).

    Args:
        bonus: weight of the revisit bonus, >= 0.
    """

    def __init__(self, bonus: float = 1.0) -> None:
        if not bonus >= 0:
            raise ValueError(f"bonus: expected >= 0 (got {bonus})")
        self.bonus = bonus
        self.knn = ItemKNN()

    def fit(self, train_pairs: Tensor, num_users: int, num_items: int, events: Tensor) -> RevisitBonus:
        """Fit ItemKNN on ``train_pairs`` ∪ the distinct ``events`` pairs, and count ``events``.

        Args:
            train_pairs: ``LongTensor[2, P]`` target pairs.
            num_users, num_items: sizes.
            events: ``LongTensor[2, E]`` (user, item) of every visible non-target event.
        """
        events = _check_pairs(events, "events", num_users, num_items)
        self.knn.fit(train_pairs, num_users, num_items, extra_pairs=_distinct_pairs(events) if events.numel() else None)
        ones = np.ones(events.size(1), dtype=np.float32)
        counts = sp.csr_matrix((ones, (events[0].numpy(), events[1].numpy())), shape=(num_users, num_items))
        counts.sum_duplicates()
        counts.data = np.log1p(counts.data)
        self.log_counts_ = counts
        self.num_users_, self.num_items_ = num_users, num_items
        return self

    def score(self, users: Tensor) -> Tensor:
        """``users`` LongTensor[B] → FloatTensor[B, num_items]."""
        users = self._check_users(users)
        base = self.knn.score(users)
        top = base.max(1, keepdim=True).values.clamp(min=1e-9)
        return base + self.bonus * top * torch.from_numpy(self.log_counts_[users.numpy()].toarray())


def _interaction_events(data: HeteroData, split: Split) -> Tensor:
    """(user, item) of every non-target user→item event visible for ``split`` (repeats kept)."""
    g = message_passing_graph(data, split)
    target = target_edge_type(data)
    chunks = [g[et].edge_index for et in g.edge_types if et[0] == "user" and et[2] == "item" and et != target]
    return torch.cat(chunks, dim=1) if chunks else torch.empty(2, 0, dtype=torch.long)


def _distinct_pairs(pairs: Tensor) -> Tensor:
    """``pairs [2, P]`` without repeats (sorted)."""
    return torch.unique(pairs, dim=1) if pairs.numel() else pairs


def _extra_interaction_pairs(data: HeteroData, split: Split) -> Tensor:
    """Distinct (user, item) pairs of every non-target user→item event type visible for ``split``."""
    return _distinct_pairs(_interaction_events(data, split))


def item_neighbours(data: HeteroData, split: Split = "val") -> ItemKNN:
    """``itemknn_all_events`` fitted on what is visible for ``split``: the target pairs before it
    (weight 1) and the distinct pairs of every other user→item event type (weight 0.5)."""
    visible = visible_test_pairs(data) if split == "test" else target_pairs(data, "train")
    extra = _extra_interaction_pairs(data, split)
    return ItemKNN().fit(visible, int(data["user"].num_nodes), int(data["item"].num_nodes),
                         extra_pairs=extra if extra.size(1) else None)


def purchase_baselines(
    data: HeteroData, *, split: Split = "test", item_content: Tensor | None = None,
    bpr_epochs: int = 30, per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Fit and evaluate every purchase baseline for one split.

    The baselines see exactly what a model may see when predicting ``split``: for ``"test"`` the
    target pairs of train and val (``target_pairs(data, "train")`` ∪ ``target_pairs(data, "val",
    new_only=False)``), for ``"val"`` the train pairs. Those pairs are excluded from the ranking,
    and the metrics are computed on ``target_pairs(data, split)`` (new pairs only).

    ``itemknn_all_events`` additionally sees the other event types (views, carts, ...) of the
    visible periods (:func:`message_passing_graph`), as the GNN does; ``itemknn_revisit`` adds to
    it a bonus for the items the user viewed or carted (:class:`RevisitBonus`), as the GNN's
    revisit term does. ``ease`` is skipped (with a
    log line) when the catalogue is too large; ``content_knn`` runs only when ``item_content``
    is given.

    Args:
        data: the full graph from :func:`shopgraph.graph.build.build_graph`.
        split: ``"val"`` or ``"test"``.
        item_content: optional ``FloatTensor[I, D]`` item content vectors for ``content_knn``.
        bpr_epochs: training epochs of ``bpr_mf``.
        per_user: a dict that receives each baseline's per-user recall at 20 (by name, the users
            in increasing index order: :func:`shopgraph.graph.metrics.ranking_metrics`'s).

    Returns:
        ``{name: {metric: value, ..., "seconds": fit + evaluation time}}``.
    """
    if split == "test":
        visible = visible_test_pairs(data)
    elif split == "val":
        visible = target_pairs(data, "train")
    else:
        raise ValueError(f"split: expected 'val' or 'test' (got {split!r})")
    test = target_pairs(data, split)
    if test.size(1) == 0:
        raise ValueError(f"split: the {split} period has no new target pairs to evaluate")
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    events = _interaction_events(data, split)
    extra = _distinct_pairs(events)

    models: dict[str, tuple[Any, dict[str, Any]]] = {
        "popularity": (Popularity(), {}),
        "itemknn": (ItemKNN(), {}),
    }
    if extra.size(1):
        models["itemknn_all_events"] = (ItemKNN(), {"extra_pairs": extra})
        models["itemknn_revisit"] = (RevisitBonus(), {"events": events})
    models["ease"] = (EASE(), {})
    models["bpr_mf"] = (BPRMF(epochs=bpr_epochs), {})
    if item_content is not None:
        models["content_knn"] = (ContentKNN(item_content), {})

    results: dict[str, dict[str, float]] = {}
    for name, (model, kwargs) in models.items():
        start = time.perf_counter()
        try:
            model.fit(visible, num_users, num_items, **kwargs)
        except ValueError as err:
            if name != "ease":
                raise
            logger.info("purchase_baselines: skipping ease (%s)", err)
            continue
        recalls: list[np.ndarray] = []
        metrics = ranking_metrics(model.score, visible, test, num_items, per_user=recalls)
        if per_user is not None:
            per_user[name] = recalls[0]
        metrics["seconds"] = time.perf_counter() - start
        results[name] = metrics
        logger.info("purchase baseline %s: recall@20 %.4f (%.1f s)", name, metrics["recall@20"], metrics["seconds"])
    return results


# ----------------------------------------------------------------------------------------------
# fraud features
# ----------------------------------------------------------------------------------------------


def _mean_aggregate(h: Tensor, src: Tensor, dst: Tensor, num_dst: int) -> Tensor:
    """Mean of ``h[src]`` at each ``dst`` node (0 for nodes without incoming edges)."""
    out = gather_add(h, src, dst, num_dst)
    deg = torch.bincount(dst, minlength=num_dst).clamp(min=1).to(h.dtype)
    return out / deg.unsqueeze(1)


def neighbor_mean_features(x: Tensor, edge_index: Tensor, hops: int = 2) -> Tensor:
    """Own features followed by 1..``hops``-hop neighbour means, on one node type.

    ``mean_1 = A_mean x``, ``mean_2 = A_mean mean_1``, ... with messages flowing ``src → dst``
    (PyG convention); pass both directions for an undirected graph. Nodes without neighbours
    get zeros.

    Args:
        x: ``FloatTensor[N, F]`` node features.
        edge_index: ``LongTensor[2, E]``.
        hops: number of neighbour means.

    Returns:
        ``FloatTensor[N, F * (hops + 1)]``: ``[x, mean_1, ..., mean_hops]``.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x: expected a FloatTensor[N, F] (got {getattr(x, 'shape', type(x).__name__)})")
    if hops < 0:
        raise ValueError(f"hops: expected a non-negative integer (got {hops})")
    n = x.size(0)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E] (got {list(edge_index.shape)})")
    ei = edge_index.long().cpu()
    bad = torch.nonzero(((ei < 0) | (ei >= n)).any(0)).flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"edge_index: {bad.numel():,} of {ei.size(1):,} edges have a node outside [0, {n}) "
            f"(first: column {k}, ({int(ei[0, k])}, {int(ei[1, k])}))"
        )
    h = x.detach().float().cpu()
    outs = [h]
    for _ in range(hops):
        h = _mean_aggregate(h, ei[0], ei[1], n)
        outs.append(h)
    return torch.cat(outs, dim=1)


def hetero_neighbor_features(data: HeteroData, node_type: str = "user", split: Split = "test") -> np.ndarray:
    """Own features ⊕ neighbourhood summaries for every node of ``node_type``.

    Uses only the edges visible for ``split`` (:func:`message_passing_graph`). For each edge type
    ``(node_type, rel, other)`` (sorted), with ``A`` the distinct-pair adjacency:

    * ``log1p`` of the number of edges (events) and of distinct neighbours;
    * the mean of the distinct neighbours' features (when ``data[other].x`` exists);
    * the 2-hop meta-path ``node_type → other → node_type`` (e.g. user–device–user): the mean
      over neighbours of their mean ``node_type`` features (self included, as in
      :func:`neighbor_mean_features`); the mean of ``node_type`` features over all such paths
      that do not return to the node itself, computed in O(E) as
      ``(A (Aᵀ x) − deg·x) / (A deg_other − deg)``; and ``log1p`` of the number of those paths.

    Args:
        data: a graph whose ``data[node_type].x`` is set (edge types without ``.split`` are
            always visible, so a one-type benchmark graph works too).
        node_type: the node type to describe.
        split: visibility (``"train"``, ``"val"`` or ``"test"``).

    Returns:
        ``float32 ndarray[N, F']``.
    """
    if node_type not in data.node_types:
        raise ValueError(f"node_type: expected one of {sorted(data.node_types)} (got {node_type!r})")
    if "x" not in data[node_type]:
        raise ValueError(f"data[{node_type!r}].x: missing; run the encoders (featurize) first")
    g = message_passing_graph(data, split)
    x = data[node_type].x.detach().float().cpu()
    n = x.size(0)
    parts: list[Tensor] = [x]
    for et in sorted(et for et in g.edge_types if et[0] == node_type):
        other = et[2]
        n_other = int(data[other].num_nodes)
        ei = g[et].edge_index.long().cpu()
        parts.append(torch.log1p(torch.bincount(ei[0], minlength=n).float()).unsqueeze(1))
        pairs = torch.unique(ei, dim=1)
        src, dst = pairs[0], pairs[1]
        deg = torch.bincount(src, minlength=n).float()
        parts.append(torch.log1p(deg).unsqueeze(1))
        if "x" in data[other]:
            xo = data[other].x.detach().float().cpu()
            parts.append(_mean_aggregate(xo, dst, src, n))
        # 2-hop back to node_type: the mean of the neighbours' means (self included; on a
        # one-type graph this is neighbor_mean_features' second hop) ...
        parts.append(_mean_aggregate(_mean_aggregate(x, src, dst, n_other), dst, src, n))
        # ... and the mean over meta-paths, excluding the trivial return to the node itself
        deg_o = torch.bincount(dst, minlength=n_other).float()
        col_sum = gather_add(x, src, dst, n_other)  # [n_other, F]
        path_sum = gather_add(col_sum, dst, src, n) - deg.unsqueeze(1) * x
        path_cnt = torch.zeros(n).index_add_(0, src, deg_o[dst]) - deg
        path_cnt = path_cnt.clamp(min=0)
        parts.append(path_sum / path_cnt.clamp(min=1).unsqueeze(1))
        parts.append(torch.log1p(path_cnt).unsqueeze(1))
    return torch.cat(parts, dim=1).numpy()  # float32 already: no copy


def node_feature_names(data: HeteroData, node_type: str) -> list[str]:
    """``data[node_type].feature_names`` (from ``featurize``), or ``f0 … f{F-1}`` without them."""
    width = int(data[node_type].x.size(1))
    names = list(getattr(data[node_type], "feature_names", None) or [])
    return names if len(names) == width else [f"f{k}" for k in range(width)]


def hetero_neighbor_feature_names(data: HeteroData, node_type: str = "user") -> list[str]:
    """Names of :func:`hetero_neighbor_features`' columns, in order (they do not depend on the split).

    For the user features ``f``, and each edge type ``(user, rel, other)``: ``f``; ``rel events
    (log count)``; ``distinct others via rel (log count)``; ``others via rel: mean g`` for each of
    the other type's features ``g``; ``users sharing an other via rel: mean f (self included)``;
    ``other users sharing an other via rel: mean f``; ``other users via rel others (log count of
    paths)``.
    """
    if node_type not in data.node_types:
        raise ValueError(f"node_type: expected one of {sorted(data.node_types)} (got {node_type!r})")
    if "x" not in data[node_type]:
        raise ValueError(f"data[{node_type!r}].x: missing; run the encoders (featurize) first")
    own = node_feature_names(data, node_type)
    names = list(own)
    for _, rel, other in sorted(et for et in data.edge_types if et[0] == node_type):
        names += [f"{rel} events (log count)", f"distinct {other}s via {rel} (log count)"]
        if "x" in data[other]:
            names += [f"{other}s via {rel}: mean {g}" for g in node_feature_names(data, other)]
        names += [f"{node_type}s sharing a {other} via {rel}: mean {f} (self included)" for f in own]
        names += [f"other {node_type}s sharing a {other} via {rel}: mean {f}" for f in own]
        names.append(f"other {node_type}s via {rel} {other}s (log count of paths)")
    return names


def hybrid_features(data: HeteroData, user_emb: Tensor, *, node_type: str = "user", split: Split = "test") -> np.ndarray:
    """GNN embeddings ⊕ :func:`hetero_neighbor_features` for :class:`HybridFraudHead`.

    Args:
        data: the graph (see :func:`hetero_neighbor_features`).
        user_emb: ``FloatTensor[N, D]`` GNN embeddings of ``node_type``.
        node_type: the node type.
        split: visibility of the neighbour features.

    Returns:
        ``float32 ndarray[N, D + F']``.
    """
    n = int(data[node_type].num_nodes)
    if not isinstance(user_emb, Tensor) or user_emb.dim() != 2 or user_emb.size(0) != n:
        got = list(user_emb.shape) if isinstance(user_emb, Tensor) else type(user_emb).__name__
        raise ValueError(f"user_emb: expected a FloatTensor[{n}, D] (got {got})")
    emb = user_emb.detach().float().cpu().numpy()
    return np.concatenate([emb, hetero_neighbor_features(data, node_type, split)], axis=1)


# ----------------------------------------------------------------------------------------------
# fraud models
# ----------------------------------------------------------------------------------------------


def _check_X(X: np.ndarray, name: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, F] (got shape {X.shape})")
    return X


def _check_y(y: np.ndarray, n: int, name: str = "y", x_name: str = "X") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected {n:,} labels matching {x_name} (got shape {y.shape})")
    return check_binary_labels(y, name)


class _FraudModel:
    """Shared predict-time checks; subclasses implement ``fit`` and ``_predict``."""

    n_features_in_: int

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> _FraudModel:
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Fraud probability ``[N]`` for ``X [N, F]``."""
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")
        X = _check_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} features (got {X.shape[1]})")
        return np.asarray(self._predict(X), dtype=np.float64)


class LogRegFraud(_FraudModel):
    """Standardised, class-balanced logistic regression.

    Args:
        C: inverse regularisation strength.
        max_iter: solver iterations.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> LogRegFraud:
        """Fit on ``X [N, F]``, ``y [N]`` (0/1). ``X_val``/``y_val`` are accepted and unused."""
        X = _check_X(X)
        yy = _check_y(y, X.shape[0])
        if np.isnan(X).any():
            raise ValueError(f"X: {int(np.isnan(X).sum()):,} NaN values; logistic regression needs complete features")
        self.model_: Pipeline = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced"),
        )
        self.model_.fit(X, yy)
        self.n_features_in_ = X.shape[1]
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)[:, 1]


class XGBGraphFraud(_FraudModel):
    """Gradient-boosted trees (xgboost, ``hist``) — "XGB-Graph" when fed neighbour features.

    Class imbalance: ``scale_pos_weight = #neg / #pos`` when ``balance`` is true. Early stopping on
    ``(X_val, y_val)`` when given, otherwise on a stratified ``validation_fraction`` of the
    training rows (when both classes have at least 5 rows there), otherwise ``n_estimators`` rounds.

    Args:
        n_estimators: maximum boosting rounds.
        learning_rate, max_depth, subsample, colsample_bytree, min_child_weight: tree settings.
        early_stopping_rounds: patience of early stopping.
        eval_metric: ``"auc"`` or ``"aucpr"`` (early stopping criterion).
        balance: re-weight positives by ``#neg / #pos``.
        validation_fraction: internal hold-out when no validation set is given.
        n_jobs: threads.
        seed: random seed.
    """

    def __init__(
        self, n_estimators: int = 1000, learning_rate: float = 0.05, max_depth: int = 6,
        subsample: float = 0.8, colsample_bytree: float = 0.8, min_child_weight: float = 1.0,
        early_stopping_rounds: int = 50, eval_metric: str = "aucpr", balance: bool = False,
        validation_fraction: float = 0.15, n_jobs: int = 2, seed: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.early_stopping_rounds = early_stopping_rounds
        self.eval_metric = eval_metric
        self.balance = balance
        self.validation_fraction = validation_fraction
        self.n_jobs = n_jobs
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> XGBGraphFraud:
        """Fit on ``X [N, F]``, ``y [N]`` (0/1), early-stopping on ``(X_val, y_val)`` when given."""
        from xgboost import XGBClassifier

        if self.eval_metric not in ("auc", "aucpr"):
            raise ValueError(f"eval_metric: expected 'auc' or 'aucpr' (got {self.eval_metric!r})")
        X = _check_X(X)
        yy = _check_y(y, X.shape[0])
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val, y_val: give both or neither")
        eval_set: list[tuple[np.ndarray, np.ndarray]] | None = None
        if X_val is not None and y_val is not None:
            Xv = _check_X(X_val, "X_val")
            yv = _check_y(y_val, Xv.shape[0], "y_val", "X_val")
            if Xv.shape[1] != X.shape[1]:
                raise ValueError(f"X_val: expected {X.shape[1]} features like X (got {Xv.shape[1]})")
            eval_set = [(Xv, yv)]
        elif self.validation_fraction > 0 and min(np.bincount(yy)) * self.validation_fraction >= 5:
            X, Xv, yy, yv = train_test_split(
                X, yy, test_size=self.validation_fraction, stratify=yy, random_state=self.seed
            )
            eval_set = [(Xv, yv)]
        pos = max(int(yy.sum()), 1)
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, max_depth=self.max_depth,
            subsample=self.subsample, colsample_bytree=self.colsample_bytree,
            min_child_weight=self.min_child_weight, tree_method="hist", n_jobs=self.n_jobs,
            random_state=self.seed, eval_metric=self.eval_metric,
            scale_pos_weight=(yy.size - pos) / pos if self.balance else 1.0,
            early_stopping_rounds=self.early_stopping_rounds if eval_set is not None else None,
        )
        self.model_.fit(X, yy, eval_set=eval_set, verbose=False)
        self.best_iteration_ = (
            int(self.model_.best_iteration) if eval_set is not None else self.n_estimators - 1
        )
        self.n_features_in_ = X.shape[1]
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        # xgboost's sklearn wrapper predicts with the best (early-stopped) iteration
        return self.model_.predict_proba(X)[:, 1]

    def booster_bytes(self) -> bytes:
        """The fitted trees up to the best (early-stopped) round as an xgboost UBJSON model
        (``xgboost.Booster().load_model(bytearray(...))`` reads it back; it predicts what
        :meth:`predict_proba` does)."""
        if not hasattr(self, "model_"):
            raise ValueError("booster_bytes: fit the model first")
        booster = self.model_.get_booster()[: self.best_iteration_ + 1]
        return bytes(booster.save_raw("ubj"))


class HybridFraudHead(XGBGraphFraud):
    """The same boosted trees, meant for :func:`hybrid_features` (GNN embeddings ⊕ neighbour
    features): the trees can use the GNN where it helps and the explicit neighbourhood statistics
    where it does not."""


class FraudBaselineRun(NamedTuple):
    """One fraud baseline's test result: ``metrics`` (:func:`fraud_metrics` and ``seconds``), and
    the test users' labels and probabilities (for precision-recall curves)."""

    metrics: dict[str, float]
    y_true: np.ndarray
    prob: np.ndarray


def fraud_baselines(data: HeteroData, *, split: Split = "test") -> dict[str, dict[str, float]]:
    """Logistic regression and boosted trees on own features, and XGB-Graph on neighbour features.

    Trained on ``data["user"].train_mask``, early-stopped and thresholded (max F1) on
    ``val_mask``, evaluated on ``test_mask``. Features: ``data["user"].x`` and
    :func:`hetero_neighbor_features` with the edges visible for ``split``.

    Returns:
        ``{"logreg" | "xgb" | "xgb_graph": {fraud_metrics..., "seconds"}}``.
    """
    return {name: run.metrics for name, run in fraud_baseline_runs(data, split=split).items()}


def fraud_baseline_runs(data: HeteroData, *, split: Split = "test") -> dict[str, FraudBaselineRun]:
    """:func:`fraud_baselines` with each baseline's test probabilities (:class:`FraudBaselineRun`)."""
    store = data["user"]
    for key in ("x", "y", "train_mask", "val_mask", "test_mask"):
        if key not in store:
            raise ValueError(f"data['user'].{key}: missing (fraud baselines need features, labels and masks)")
    y = store.y.cpu().numpy()
    masks = {k: store[f"{k}_mask"].cpu().numpy().astype(bool) for k in ("train", "val", "test")}
    for k, m in masks.items():
        labels = y[m]
        if labels.size == 0 or np.unique(labels).size < 2 or (labels < 0).any():
            raise ValueError(
                f"data['user'].{k}_mask: expected labelled users of both classes "
                f"(got {labels.size} users, {int((labels == 1).sum())} positive)"
            )
    own = store.x.detach().float().cpu().numpy()
    graph = hetero_neighbor_features(data, "user", split)
    setups: dict[str, tuple[_FraudModel, np.ndarray]] = {
        "logreg": (LogRegFraud(), own),
        "xgb": (XGBGraphFraud(), own),
        "xgb_graph": (XGBGraphFraud(), graph),
    }
    results: dict[str, FraudBaselineRun] = {}
    tr, va, te = masks["train"], masks["val"], masks["test"]
    for name, (model, X) in setups.items():
        start = time.perf_counter()
        model.fit(X[tr], y[tr], X[va], y[va])
        threshold = choose_threshold(y[va], model.predict_proba(X[va]))
        prob = np.asarray(model.predict_proba(X[te]))
        metrics = fraud_metrics(y[te], prob, threshold)
        metrics["seconds"] = time.perf_counter() - start
        results[name] = FraudBaselineRun(metrics, y[te], prob)
        logger.info("fraud baseline %s: auprc %.4f auroc %.4f", name, metrics["auprc"], metrics["auroc"])
    return results
