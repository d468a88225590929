"""Why is this account (or ring) flagged? Attributions for the GNN fraud score and ring timelines.

Explainer choice. PyG 2.8.1's ``torch_geometric.explain`` offers, for heterogeneous graphs,
``CaptumExplainer`` (needs the ``captum`` package, which is not a dependency here), and
``GNNExplainer`` / ``PGExplainer`` (learned soft masks: an optimisation per explanation,
stochastic, and their edge masks reach only models whose convolutions are ``MessagePassing``
modules inside a ``ModuleDict`` keyed by edge type). We use two model-agnostic methods that need
only ``model.embed(data)`` and ``model.fraud_logit(user_emb)`` and are exact in the sense that
matters to an investigator:

* features: **integrated gradients** (Sundararajan et al., 2017) of the user's fraud logit with
  respect to the user's own feature vector, from the baseline "average user" (the mean feature
  vector) in ``steps`` midpoint steps; attributions sum to ``logit(x) - logit(baseline)``
  (completeness, up to the Riemann error).
* neighbours: **occlusion** of each direct neighbour (device, item, any other linked node): the
  change of the fraud logit when every edge between the user and that neighbour (both
  directions) is removed. A positive value means the neighbour pushes the score towards fraud.

Without a model (``model=None``) the method is ``"behaviour_zscore"``: feature attributions are
the user's z-scores against all users, and neighbours are the user's shared identifiers with the
number of other accounts on each.

The served scorer. When a run serves boosted trees (``fraud.json`` kind ``graph_trees`` or
``hybrid``: on the synthetic shops they beat the GNN head), the score an investigator sees comes
from those trees, not from the GNN head. :class:`ServedTreeExplainer` explains *that* score:
**TreeSHAP** contributions (Lundberg et al., 2020; xgboost's ``pred_contribs``), which add up
exactly to the trees' log-odds, of the user's own features, neighbourhood means and ring
columns (``fraud_scorer.product_feature_table``), with the user's shared identifiers as
evidence (method ``"tree_shap+shared_identifiers"``). The trees are the ones ``shopgraph
train`` served (``RUN/fraud_trees.ubj``); they are used only when they reproduce the run's
stored fraud probabilities.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.build import induced_subgraph
from shopgraph.graph.model import GATHER_CHUNK_VALUES
from shopgraph.graph.run import ChecksumError, StaleFileError
from shopgraph.graph.schema import ShopTables
from shopgraph.graph.train import TREE_KINDS
from shopgraph.graph.wording import (
    NO_QUICK_BUYS,
    NOBODY_SUFFIX,
    NONE_LABELLED,
    QUICK_ITEM_REASON,
    SHARE_LABELLED,
    SHARING_MEAN,
    FeatureFacts,
    ValueWords,
)

if TYPE_CHECKING:
    from shopgraph.graph.rings import Ring
    from shopgraph.graph.run import RunDir

logger = logging.getLogger(__name__)

_NOT_IDENTIFIERS = frozenset({"user", "item"})
MAX_OTHERS = 10  # other accounts named per shared identifier (NeighbourAttribution.others); the count is whole
TOP_K = 5  # features and neighbours an explanation lists by default (/fraud/explain, the case files, the demo)


class FraudModel(Protocol):
    """What an explained model provides (``ShopGNN`` does)."""

    def embed(self, data: HeteroData) -> dict[str, Tensor]: ...

    def fraud_logit(self, user_emb: Tensor) -> Tensor: ...


class FeatureAttribution(NamedTuple):
    name: str
    value: float  # the user's feature value
    attribution: float


class NeighbourAttribution(NamedTuple):
    """A neighbour of the explained user.

    Attributes:
        node_type, node_id: the neighbour (a device, an item, ...).
        attribution: for the shared identifiers of ``tree_shap+shared_identifiers`` and
            ``behaviour_zscore``, how many *other* accounts use it (a count); for occlusion, the
            change of the fraud log-odds when its edges are removed.
        others: the ids of those other accounts, sorted, the first :data:`MAX_OTHERS` of them
            (``attribution`` says how many there are in all); ``()`` for occlusion.
    """

    node_type: str
    node_id: str
    attribution: float
    others: tuple[str, ...] = ()


class Explanation(NamedTuple):
    """Why a user scores as they do.

    Attributes:
        user_id: the explained user.
        score: the model's fraud probability (``None`` without a model).
        method: ``"integrated_gradients+occlusion"`` (the GNN head), ``"behaviour_zscore+occlusion"``
            (a GNN that reads no user features), ``"behaviour_zscore"`` (no model) or
            ``"tree_shap+shared_identifiers"`` (the served trees, :class:`ServedTreeExplainer`).
        features: top features by absolute attribution.
        neighbours: top neighbours by absolute attribution (the shared identifiers: the most
            shared first).
        base: the served trees' base value (log-odds where every account starts, before any
            fact: with every feature's contribution it makes the log-odds of ``score``);
            ``None`` for the other methods.
        unlisted: the served trees' contributions of every feature not in ``features``, summed
            (``base + sum(features) + unlisted`` is the log-odds of ``score``); ``None`` for the
            other methods.
        neighbours_total: how many neighbours there were to list before the cut to ``top_k``
            (the user's identifiers; for occlusion, the neighbours occluded), so that a list
            shorter than this is known to be cut.
        neighbour_types: the node types of all of them, sorted (``("device",)``), so that a cut
            list is worded by what was cut.

    :meth:`to_dict` (the case files' explanations) gives ``user_id``, ``score``, ``method``,
    ``features`` (each with its worded ``reason``, :func:`feature_dict`), ``neighbours`` (each
    with its ``others``), ``base_value``, ``unlisted_attribution`` and ``neighbours_total``.
    """

    user_id: str
    score: float | None
    method: str
    features: list[FeatureAttribution]
    neighbours: list[NeighbourAttribution]
    base: float | None = None
    unlisted: float | None = None
    neighbours_total: int | None = None
    neighbour_types: tuple[str, ...] = ()

    def to_dict(self, words: ValueWords | None = None) -> dict[str, Any]:
        """As JSON writes it; ``words``: as :func:`feature_dict` takes it."""
        return {
            "user_id": self.user_id, "score": self.score, "method": self.method,
            "features": [feature_dict(f, words) for f in self.features],
            "neighbours": [{**n._asdict(), "others": list(n.others)} for n in self.neighbours],
            # as /fraud/explain names them: the sums that make the listed contributions the score's
            # (written as JSON by graph.rings, which turns a NaN into null as it does the score's)
            "base_value": self.base, "unlisted_attribution": self.unlisted,
            "neighbours_total": self.neighbours_total,
        }


def held_out_explanation(user_id: str, score: float, contributions: Sequence[FeatureAttribution], base: float,
                         top_k: int = TOP_K) -> Explanation:
    """The explanation of a trained-on account's held-out score from its fold's trees' contributions
    (:meth:`HeldOutExplainer.contributions`): its ``top_k`` largest, their base value and what the
    others add. Its ``neighbours`` are empty: the shared identifiers are the same facts as for the
    served score."""
    items = sorted((FeatureAttribution(*f) for f in contributions), key=lambda f: -abs(f.attribution))
    return Explanation(user_id, score, "tree_shap+shared_identifiers", items[:top_k], [], base,
                       unlisted=float(sum(f.attribution for f in items[top_k:])))


def feature_dict(feature: FeatureAttribution, words: ValueWords | None = None) -> dict[str, Any]:
    """``{name, reason, value, value_in_words, attribution}``: the feature's column name (or group of
    columns) as the scorer knows it, and in the words the served fraud reasons use for it
    (:func:`shopgraph.graph.wording.reason_in_words`, e.g. ``quick purchases: mean item image
    features (87 columns together; value: their norm)`` -> ``items bought right after viewing or
    carting them: what they are, judged from their pictures``), and its value as the scorer read
    it and as people read it (:func:`shopgraph.graph.wording.value_in_words`: ``8`` for a log
    count of 2.197, ``1.4 SD below average``, ``100%``; ``""`` when it means nothing to a reader),
    or as ``words`` gives it from the feature's name and value where it gives one (the account's
    raw values, :meth:`shopgraph.graph.wording.FeatureFacts.value`: ``14 days``, not ``1.8 SD below
    average``)."""
    from shopgraph.graph.wording import reason_in_words, value_in_words

    reading = reason_in_words(feature.name)
    shown = words(feature.name, float(feature.value)) if words is not None else None
    return {"name": feature.name, "reason": reading.text, "value": feature.value,
            "value_in_words": shown or value_in_words(reading, float(feature.value)),
            "attribution": feature.attribution}


def _check_user(data: HeteroData, user_index: int) -> int:
    if not isinstance(data, HeteroData):
        raise TypeError(f"data: expected a torch_geometric HeteroData (got {type(data).__name__})")
    if "user" not in data.node_types:
        raise ValueError(f"data: no 'user' node type (got {data.node_types})")
    n = int(data["user"].num_nodes)
    if isinstance(user_index, bool) or not isinstance(user_index, (int, np.integer)):
        raise TypeError(f"user_index: expected an int (got {type(user_index).__name__})")
    if not 0 <= int(user_index) < n:
        raise ValueError(f"user_index: expected 0 <= user_index < {n} (got {user_index})")
    return int(user_index)


def _node_ids(data: HeteroData, node_type: str) -> list[str]:
    store = data[node_type]
    return [str(v) for v in store.ids] if "ids" in store else [str(k) for k in range(int(store.num_nodes))]


def direct_neighbours(data: HeteroData, user_index: int) -> list[tuple[str, int, int]]:
    """Direct neighbours of a user: ``(node_type, node_index, edge count)``, sorted.

    Identifier neighbours (non-item, non-user types) come first, then the rest by edge count.
    """
    counts: dict[tuple[str, int], int] = {}
    for src, rel, dst in data.edge_types:
        ei = data[(src, rel, dst)].edge_index
        if src == "user":
            nbr = ei[1][ei[0] == user_index]
            nt = dst
        elif dst == "user":
            continue  # reverses carry the same pairs; counting one direction avoids doubles
        else:
            continue
        if nt == "user":
            nbr = nbr[nbr != user_index]
        for v in nbr.tolist():
            counts[(nt, v)] = counts.get((nt, v), 0) + 1
    # graphs with only (X, rel, user) edges
    if not counts:
        for src, _rel, dst in data.edge_types:
            if dst == "user" and src != "user":
                ei = data[(src, _rel, dst)].edge_index
                for v in ei[0][ei[1] == user_index].tolist():
                    counts[(src, v)] = counts.get((src, v), 0) + 1
    return sorted(((nt, v, c) for (nt, v), c in counts.items()),
                  key=lambda t: (t[0] in _NOT_IDENTIFIERS, -t[2], t[0], t[1]))


def _without_pair(data: HeteroData, user_index: int, node_type: str, node_index: int) -> HeteroData:
    """A shallow copy of ``data`` without any edge between the user and one neighbour."""
    out = copy.copy(data)
    for et in data.edge_types:
        src, _, dst = et
        if {src, dst} != {"user", node_type}:
            continue
        store = data[et]
        ei = store.edge_index
        drop = torch.zeros(ei.size(1), dtype=torch.bool)
        if src == "user" and dst == node_type:
            drop |= (ei[0] == user_index) & (ei[1] == node_index)
        if dst == "user" and src == node_type:
            drop |= (ei[1] == user_index) & (ei[0] == node_index)
        if not bool(drop.any()):
            continue
        keep = ~drop
        new = out[et]
        n_edges = ei.size(1)
        for key, value in store.items():
            if key == "edge_index":
                new[key] = value[:, keep]
            elif isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == n_edges:
                new[key] = value[keep]
    return out


def _with_user_row(data: HeteroData, user_index: int, row: Tensor) -> HeteroData:
    out = copy.copy(data)
    x = data["user"].x
    out["user"].x = torch.cat([x[:user_index], row.unsqueeze(0).to(x.dtype), x[user_index + 1:]])
    return out


def _logit(model: FraudModel, data: HeteroData, user_index: int) -> Tensor:
    emb = model.embed(data)["user"]
    return model.fraud_logit(emb[user_index: user_index + 1]).reshape(-1)[0]


class _Sub(NamedTuple):
    data: HeteroData
    user_index: int  # the user's index inside ``data``
    n_id: dict[str, Tensor]  # node type -> original node indices [N_sub]


def computation_subgraph(data: HeteroData, user_index: int, hops: int) -> _Sub:
    """The nodes within ``hops`` message-passing steps of a user, with every edge among them.

    For a ``hops``-layer message-passing GNN the user's output on this node-induced subgraph
    equals its output on the full graph (every edge into a node within ``hops - 1`` steps is kept),
    except for layers that normalise by degrees of the outermost nodes (LightGCN), which
    :func:`explain_user` detects and then falls back to the full graph. Each node type carries
    ``n_id`` (its original indices) so id embeddings are looked up correctly, and the subgraph
    carries the full graph's clock as ``reference_time`` (:func:`~shopgraph.graph.build.event_clock`),
    from which time-decayed models measure event ages (:func:`~shopgraph.graph.build.induced_subgraph`).
    """
    user_index = _check_user(data, user_index)
    keep: dict[str, Tensor] = {nt: torch.zeros(int(data[nt].num_nodes), dtype=torch.bool) for nt in data.node_types}
    keep["user"][user_index] = True
    for _ in range(hops):
        new = {nt: m.clone() for nt, m in keep.items()}
        for src, rel, dst in data.edge_types:
            ei = data[(src, rel, dst)].edge_index
            new[src][ei[0][keep[dst][ei[1]]]] = True
        keep = new
    n_id = {nt: torch.nonzero(m).flatten() for nt, m in keep.items()}
    sub = induced_subgraph(data, n_id)
    return _Sub(sub, int(torch.searchsorted(n_id["user"], user_index)), n_id)


def _same_logit(logit: float, reference: float, slack: float = 0.0) -> bool:
    """Whether two fraud logits agree: within 1e-4 of ``reference`` (relative above 1), plus ``slack``."""
    return abs(logit - reference) <= 1e-4 * max(1.0, abs(reference)) + slack


def _reproduces(logit: float, prob: float) -> bool:
    """Whether ``logit`` is the log-odds of the stored probability ``prob`` (float32 storage:
    its rounding, ~6e-8 of ``prob``, is allowed for on top of :func:`_same_logit`)."""
    if not 0.0 < prob < 1.0 or not math.isfinite(logit):
        return False
    return _same_logit(math.log(prob) - math.log1p(-prob), logit, slack=1e-7 / (prob * (1.0 - prob)))


def _model_hops(model: FraudModel) -> int | None:
    """The hops a user's fraud logit reads: ``model.fraud_hops`` (ShopGNN), else ``config.layers``."""
    hops = getattr(model, "fraud_hops", None)
    if hops is None:
        hops = getattr(getattr(model, "config", None), "layers", None)
    return int(hops) if isinstance(hops, int) and hops >= 0 else None


def integrated_gradients(
    model: FraudModel, data: HeteroData, user_index: int, *, steps: int = 16, baseline: Tensor | None = None,
) -> Tensor:
    """Integrated gradients of the user's fraud logit w.r.t. the user's own features.

    Args:
        model: provides ``embed`` and ``fraud_logit``.
        data: the graph with ``data["user"].x`` ``[U, F]``.
        user_index: the user's node index.
        steps: midpoint Riemann steps.
        baseline: ``[F]``; default the mean user feature vector.

    Returns:
        ``[F]`` attributions; they sum to about ``logit(x) - logit(baseline)``.
    """
    user_index = _check_user(data, user_index)
    if "x" not in data["user"]:
        raise ValueError("data['user'].x: missing; integrated gradients need user features")
    if steps < 1:
        raise ValueError(f"steps: expected a positive integer (got {steps})")
    x = data["user"].x.float()
    base = x.mean(0) if baseline is None else baseline.float()
    if base.shape != x[user_index].shape:
        raise ValueError(f"baseline: expected shape [{x.size(1)}] (got {list(base.shape)})")
    diff = x[user_index] - base
    total = torch.zeros_like(diff)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        row = (base + alpha * diff).detach().requires_grad_(True)
        logit = _logit(model, _with_user_row(data, user_index, row), user_index)
        # allow_unused: a model may not read user features at all (the GNN's default); then every
        # attribution is zero and explain_user falls back to behaviour z-scores for the features.
        (grad,) = torch.autograd.grad(logit, row, allow_unused=True)
        if grad is not None:
            total += grad
    return (diff * total / steps).detach()


def explain_user(
    model: FraudModel | None, data: HeteroData, user_index: int, feature_names: Sequence[str] | None = None,
    *, top_k: int = TOP_K, steps: int = 16, max_neighbours: int = 32, fraud_prob: np.ndarray | None = None,
    use_subgraph: bool = True,
) -> Explanation:
    """Explain one user's fraud score.

    Args:
        model: the trained GNN (``embed`` + ``fraud_logit``), or ``None`` for the behaviour fallback.
        data: the graph with user features ``data["user"].x`` ``[U, F]``.
        user_index: the user's node index.
        feature_names: names of the ``F`` user features (default ``data["user"].feature_names``).
        top_k: how many features and neighbours to return.
        steps: integrated-gradient steps.
        max_neighbours: at most this many direct neighbours are occluded (identifiers first, then the
            most frequent items).
        fraud_prob: ``[U]`` served scores. Without a model they are reported as ``score``; with one,
            a user's score there that the computation subgraph reproduces spares the forward pass
            over the whole graph (a served score that is not the model's is simply not reproduced).
        use_subgraph: compute on the user's ``model.config.layers``-hop computation subgraph
            (:func:`computation_subgraph`) when it reproduces the full-graph logit; much faster on a
            large shop, same result.

    Returns:
        :class:`Explanation`.
    """
    user_index = _check_user(data, user_index)
    if top_k < 1:
        raise ValueError(f"top_k: expected a positive integer (got {top_k})")
    user_id = _node_ids(data, "user")[user_index]
    has_x = "x" in data["user"]
    names = list(feature_names) if feature_names is not None else list(getattr(data["user"], "feature_names", []) or [])
    if has_x:
        n_feat = int(data["user"].x.size(1))
        if not names:
            names = [f"f{k}" for k in range(n_feat)]
        if len(names) != n_feat:
            raise ValueError(f"feature_names: expected {n_feat} names (got {len(names)})")
    if model is None:
        return _zscore_explanation(data, user_index, user_id, names, direct_neighbours(data, user_index),
                                   top_k, fraud_prob)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # type: ignore[attr-defined]
    try:
        # Work on the user's computation subgraph when the model says how many layers it has and
        # the subgraph reproduces the full-graph logit; the full graph otherwise.
        work, wu = data, user_index
        nid: dict[str, Tensor] | None = None
        with torch.no_grad():
            hops = _model_hops(model) if use_subgraph else None
            sub = computation_subgraph(data, user_index, hops) if hops is not None else None
            local = None if sub is None else float(_logit(model, sub.data, sub.user_index))
            known = None if fraud_prob is None else float(fraud_prob[user_index])
            if local is not None and known is not None and _reproduces(local, known):
                full = local  # the served score is this model's, and the subgraph gives it
            else:
                full = float(_logit(model, data, user_index))
            if sub is not None and local is not None:  # local is None exactly when sub is
                if _same_logit(local, full):
                    work, wu, nid = sub.data, sub.user_index, sub.n_id
                else:
                    logger.debug("computation subgraph does not reproduce the logit; using the full graph")
        features: list[FeatureAttribution] = []
        feature_method = "integrated_gradients"
        if has_x:
            attr = integrated_gradients(model, work, wu, steps=steps, baseline=data["user"].x.float().mean(0))
            if bool((attr == 0).all()):
                # The model does not read user features: say so and show what stands out instead.
                fallback = _zscore_explanation(data, user_index, user_id, names, [], top_k, fraud_prob)
                features, feature_method = list(fallback.features), "behaviour_zscore"
            else:
                xu = data["user"].x[user_index].float()
                order = torch.argsort(attr.abs(), descending=True, stable=True)[:top_k].tolist()
                features = [FeatureAttribution(names[k], float(xu[k]), float(attr[k])) for k in order]
        scored: list[NeighbourAttribution] = []
        with torch.no_grad():
            for nt, v, _ in direct_neighbours(work, wu)[:max_neighbours]:
                delta = full - float(_logit(model, _without_pair(work, wu, nt, v), wu))
                original = v if nid is None else int(nid[nt][v])
                scored.append(NeighbourAttribution(nt, _node_ids(data, nt)[original], delta))
        scored.sort(key=lambda a: (-abs(a.attribution), a.node_type, a.node_id))
    finally:
        if was_training and hasattr(model, "train"):
            model.train()  # type: ignore[attr-defined]
    return Explanation(user_id, 1.0 / (1.0 + math.exp(-full)), f"{feature_method}+occlusion",
                       features, scored[:top_k], neighbours_total=len(scored),
                       neighbour_types=tuple(sorted({nb.node_type for nb in scored})))


def _zscore_explanation(
    data: HeteroData, user_index: int, user_id: str, names: list[str], nbrs: list[tuple[str, int, int]],
    top_k: int, fraud_prob: np.ndarray | None,
) -> Explanation:
    features: list[FeatureAttribution] = []
    if "x" in data["user"]:
        x = data["user"].x.float()
        mu, sd = x.mean(0), x.std(0, unbiased=False)
        z = torch.where(sd > 0, (x[user_index] - mu) / sd.clamp_min(1e-12), torch.zeros_like(mu))
        order = torch.argsort(z.abs(), descending=True, stable=True)[:top_k].tolist()
        features = [FeatureAttribution(names[k], float(x[user_index, k]), float(z[k])) for k in order]
    score = float(fraud_prob[user_index]) if fraud_prob is not None else None
    identifiers = _shared_identifiers(data, user_index, nbrs)
    return Explanation(user_id, score, "behaviour_zscore", features, identifiers[:top_k],
                       neighbours_total=len(identifiers),
                       neighbour_types=tuple(sorted({nb.node_type for nb in identifiers})))


def _shared_identifiers(data: HeteroData, user_index: int,
                        nbrs: list[tuple[str, int, int]]) -> list[NeighbourAttribution]:
    """The user's identifiers (devices, …) among ``nbrs``, each with the number of *other* accounts
    linked to it as its attribution and the first :data:`MAX_OTHERS` of their ids; most shared
    first."""
    users = _node_ids(data, "user")
    neighbours: list[NeighbourAttribution] = []
    for nt, v, _ in nbrs:
        if nt in _NOT_IDENTIFIERS:
            continue
        linked: set[int] = set()
        for src, _rel, dst in data.edge_types:
            if src == "user" and dst == nt:
                ei = data[(src, _rel, dst)].edge_index
                linked.update(ei[0][ei[1] == v].tolist())
        linked.discard(user_index)
        others = sorted(users[o] for o in linked)
        neighbours.append(NeighbourAttribution(nt, _node_ids(data, nt)[v], float(len(others)),
                                               tuple(others[:MAX_OTHERS])))
    neighbours.sort(key=lambda a: (-a.attribution, a.node_type, a.node_id))
    return neighbours


class ServedTreeExplainer:
    """Explains the served boosted-tree fraud scorer of a run (module docstring).

    Args:
        booster: the served trees (``xgboost.Booster``, early-stopped rounds only).
        kind: ``"graph_trees"`` or ``"hybrid"``.
        features: ``[U, F]`` the serving feature table the trees score (for ``hybrid`` the GNN
            embedding columns first).
        names: the ``F`` column names.
        embedding_columns: how many leading columns are GNN embedding dimensions (``hybrid``).

    Columns that are dimensions of one embedding — the GNN's, or a text or image encoder's
    (``text_<k>``, ``image_<k>`` under one prefix, e.g. ``quick purchases: mean item image_148``)
    — mean nothing one by one: their contributions are reported summed, as one reason
    (``… image features (n columns together; value: their norm)``). TreeSHAP values add, so the
    reasons still add up to the score.

    Only the columns some tree splits on (and the embedding columns) are kept: the others never
    change a prediction or a contribution (TreeSHAP gives them 0), and on a shop with image
    features they are most of the table (the demo run's trees split on 341 of its 7,045 columns).

    An account that shares no device (or no item of a relation: ``other users via <rel> <other>s
    (log count of paths)`` is 0) has no one else to average over: its ``users sharing a <other>
    via <rel>: mean f (self included)`` column is its own ``f``, and its ``other users sharing …:
    mean f`` columns hold 0 for nobody. Reported under those names, they would speak of other
    accounts that do not exist (and count its own ``f`` twice), so for that account the first
    are added to its own ``f`` (one fact, one reason) and the second are reported together as
    ``other users sharing a <other> via <rel>: none`` ("no other account on the same devices");
    an account with no such link at all (no device) has both added to that one. The sums are
    unchanged, so the reasons still add up to the score (:meth:`contributions`).

    Likewise the share of labelled fraud among an account's labelled co-users is 0 when it has no
    co-user, or none of them has a label: for such an account that reason is reported as
    ``accounts sharing a device (or other identifier): none``, or ``…: none of them labelled in
    the training data`` (no value), not as a share of 0 %. And an account that bought nothing right
    after viewing or carting it has its ``quick purchases: mean item …`` reasons (means over no
    item) reported together as ``quick purchases: none`` ("no purchase made right after viewing or
    carting the item"), not as what those items are.
    """

    def __init__(self, booster: Any, kind: str, features: np.ndarray, names: Sequence[str],
                 embedding_columns: int = 0) -> None:
        if kind not in TREE_KINDS:
            raise ValueError(f"kind: expected one of {TREE_KINDS} (got {kind!r})")
        if features.ndim != 2 or len(names) != features.shape[1]:
            raise ValueError(f"names: expected {features.shape[1] if features.ndim == 2 else '?'} column names "
                             f"(got {len(names)})")
        if int(booster.num_features()) != features.shape[1]:
            raise ValueError(f"the served trees read {int(booster.num_features())} features, the run's "
                             f"feature table has {features.shape[1]}; retrain the run")
        split_on = {int(key[1:]) for key in booster.get_score(importance_type="weight")}  # keys "f<column>"
        self.booster = booster
        self.kind = kind
        self.width = int(features.shape[1])
        self.embedding_columns = int(embedding_columns)
        self.columns = np.array(sorted(split_on | set(range(self.embedding_columns))), dtype=np.int64)
        self.table = np.ascontiguousarray(features[:, self.columns], dtype=np.float32)
        self.names = [names[k] for k in self.columns]
        self.reasons = _reason_groups(self.names, set(range(self.embedding_columns)))
        self._alone, self._folds = _self_only_columns(self.reasons, features, names)
        self._unlabelled = _unlabelled_shares(self.reasons, features, names)
        self._quickless = _without_quick_buys(self.reasons, features, names)
        self._nobody = _nobody_counts(self.reasons, features, names)
        # the probabilities the run serves (stored at training, float32), which the trees reproduce
        # within 1e-4 (from_run checks): explain() reports the served score, not its own float64 sum
        self.served: np.ndarray | None = None

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the full-width table (columns no tree reads are 0)."""
        out = np.zeros((stop - start, self.width), dtype=np.float32)
        out[:, self.columns] = self.table[start:stop]
        return out

    def probabilities(self, chunk: int | None = None) -> np.ndarray:
        """``[U]`` the trees' fraud probabilities for every user, ``chunk`` full-width rows at a
        time (None: ``GATHER_CHUNK_VALUES`` values, 16 MB, as the feature tables are gathered)."""
        import xgboost as xgb

        n = self.table.shape[0]
        chunk = chunk or max(1, GATHER_CHUNK_VALUES // max(1, self.width))
        margin = np.concatenate([self.booster.predict(xgb.DMatrix(self._rows(a, min(a + chunk, n))), output_margin=True)
                                 for a in range(0, n, chunk)]) if n else np.zeros(0)
        return np.asarray(1.0 / (1.0 + np.exp(-margin.astype(np.float64))))

    def explain(self, data: HeteroData, user_index: int, *, top_k: int = TOP_K) -> Explanation:
        """The user's top ``top_k`` feature contributions to the trees' log-odds (they sum, with
        the trees' base value, to the log-odds of ``score``) and most-shared identifiers."""
        user_index = _check_user(data, user_index)
        if top_k < 1:
            raise ValueError(f"top_k: expected a positive integer (got {top_k})")
        items, base = self.contributions(user_index)
        margin = base + sum(f.attribution for f in items)
        items.sort(key=lambda f: -abs(f.attribution))  # stable: ties keep the column order
        identifiers = _shared_identifiers(data, user_index, direct_neighbours(data, user_index))
        score = float(self.served[user_index]) if self.served is not None else 1.0 / (1.0 + math.exp(-margin))
        return Explanation(_node_ids(data, "user")[user_index], score,
                           "tree_shap+shared_identifiers", items[:top_k], identifiers[:top_k], base,
                           unlisted=float(sum(f.attribution for f in items[top_k:])),
                           neighbours_total=len(identifiers),
                           neighbour_types=tuple(sorted({nb.node_type for nb in identifiers})))

    def contributions(self, user_index: int) -> tuple[list[FeatureAttribution], float]:
        """Every reason's TreeSHAP contribution to the trees' log-odds for one user (node index),
        in column order, and the trees' base value: ``base + sum(contributions)`` is the log-odds."""
        import xgboost as xgb

        contrib = self.booster.predict(xgb.DMatrix(self._rows(user_index, user_index + 1)),
                                       pred_contribs=True)[0].astype(np.float64)
        per_column, values = contrib[:-1][self.columns], self.table[user_index].astype(np.float64)
        items = [FeatureAttribution(name, float(values[cols[0]]) if single else float(np.linalg.norm(values[cols])),
                                    float(per_column[cols].sum()))
                 for name, cols, single in self.reasons]
        for r, renamed in self._unlabelled.items():
            name = next((to.name for to in renamed if to.who[user_index]), None)
            if name is not None:
                items[r] = items[r]._replace(name=name)
        return self._fold_self_only(items, user_index), float(contrib[-1])  # the last entry is the base value

    def _fold_self_only(self, items: list[FeatureAttribution], user_index: int) -> list[FeatureAttribution]:
        """``items`` with the neighbourhood means over nobody else (class docstring) folded into
        the account's own feature, or into one ``… : none`` reason; other reasons as they are."""
        moved: dict[int, tuple[str, float]] = {}  # reason position -> (reason it joins, that reason's value)
        if self._quickless is not None and self._quickless[0][user_index]:
            moved.update((r, (NO_QUICK_BUYS, 0.0)) for r in self._quickless[1])
        for alone, positions, target in self._nobody:  # no co-user: its counts of them are one fact, "none"
            if alone[user_index]:
                moved.update((r, (target, 0.0)) for r in positions)
        for r, (kind, key, own) in self._folds.items():
            alone, unlinked = self._alone[key]
            if not alone[user_index]:
                continue
            if kind == "self" and not unlinked[user_index]:
                moved[r] = (own, items[r].value)  # the mean over itself alone: its own value
            else:
                moved[r] = (_nobody(key), 0.0)
        if not moved:
            return items
        # no co-user on any identifier says there is none on a device: one reason, not the same fact twice
        # ("no other accounts sharing a device (or other identifier)" beside "no other account on the same
        # devices")
        anyone = next((t for t, _ in moved.values() if t.endswith(NOBODY_SUFFIX) and t.startswith(_ANY_IDENTIFIER)),
                      None)
        if anyone is not None:  # and so none on a device, nor one that bought within 2 h on a device...
            devices = _nobody(("uses", "device"))

            def implied(target: str) -> bool:
                return target == devices or (target != anyone and target.endswith(NOBODY_SUFFIX)
                                             and target.startswith(_ANY_DEVICE))

            moved = {r: ((anyone, 0.0) if implied(target) else (target, value)) for r, (target, value) in moved.items()}
        total: dict[str, float] = {}
        for r, (target, _) in moved.items():
            total[target] = total.get(target, 0.0) + items[r].attribution
        existing = {item.name for r, item in enumerate(items) if r not in moved}
        out: list[FeatureAttribution] = []
        for r, item in enumerate(items):
            if r in moved:  # a reason not reported otherwise is reported where its first column was
                target, value = moved[r]
                if target not in existing:
                    out.append(FeatureAttribution(target, value, total[target]))
                    existing.add(target)
            elif item.name in total:  # its own feature: the means over itself alone join it
                out.append(item._replace(attribution=item.attribution + total[item.name]))
            else:
                out.append(item)
        return out

    @classmethod
    def from_run(cls, run: RunDir, data: HeteroData, model: FraudModel | None,
                 fraud_prob: np.ndarray | None) -> ServedTreeExplainer | None:
        """The explainer of a run's served trees, or ``None`` when the run does not serve trees
        (or has no ``fraud_trees.ubj``: trained before it was written).

        Raises:
            ValueError: naming the file, when the trees cannot be read or do not reproduce the
                run's stored fraud probabilities (``fraud_prob``) within 1e-4;
                :class:`~shopgraph.graph.run.ChecksumError` or
                :class:`~shopgraph.graph.run.StaleFileError` (both ``ValueError``) when a file it
                reads does not match its checksum or was left by an earlier training.
        """
        info = run.read_json("fraud.json") if run.has("fraud.json") else {}
        kind, rel = info.get("kind"), info.get("trees_file")
        if kind not in TREE_KINDS or not rel or not run.has(str(rel)):
            return None
        if fraud_prob is None:
            raise ValueError(f"{rel}: the run has no stored fraud probabilities to check the trees against")
        from shopgraph.graph.fraud_scorer import product_feature_table

        booster = _read_booster(run, str(rel))
        feats, names = product_feature_table(data, None)
        embedding_columns = 0
        if kind == "hybrid":
            emb = _serving_fraud_input(run, model, int(data["user"].num_nodes))
            embedding_columns = emb.shape[1]
            feats = np.concatenate([emb, feats], axis=1)
            names = [f"GNN embedding [{k}]" for k in range(embedding_columns)] + names
        explainer = cls(booster, str(kind), feats, names, embedding_columns)
        gap = float(np.max(np.abs(explainer.probabilities() - np.asarray(fraud_prob, dtype=np.float64))))
        if not gap <= 1e-4:
            raise ValueError(f"{rel}: the trees do not reproduce the run's served fraud probabilities "
                             f"(largest difference {gap:.3g}); retrain the run")
        explainer.served = np.asarray(fraud_prob, dtype=np.float64)  # what every other output says, to the digit
        return explainer


_EMBEDDING_COLUMN = re.compile(r"^(?P<prefix>.*?)(?P<kind>text|image)_\d+$")


# the ring columns' co-users on every identifier (graph.fraud_scorer.ring_column_text), devices among them
_ANY_IDENTIFIER = "accounts sharing a device (or other identifier)"
_ANY_DEVICE = "accounts sharing a device"  # the ring columns about some of them ("... that bought within 2 h ...")


def _nobody(key: tuple[str, str]) -> str:
    """The reason for the means over other accounts of an account that has none: ``other users
    sharing a device via uses: none`` (``graph.wording``: "no other account on the same devices")."""
    rel, other = key
    return f"other users sharing a {other} via {rel}: none"


def _self_only_columns(
    reasons: Sequence[tuple[str, np.ndarray, bool]], features: np.ndarray, names: Sequence[str],
) -> tuple[dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], dict[int, tuple[str, tuple[str, str], str]]]:
    """Which users share nothing, and which reasons then speak of nobody (:class:`ServedTreeExplainer`).

    Returns:
        ``{(rel, other): (alone [U], unlinked [U])}``: the users no other user shares an
        ``other`` with through ``rel`` (its path count is 0), and those with no such link at all
        (its distinct count is 0; all ``False`` when the table has no such column); and
        ``{reason position: ("self" | "others", (rel, other), own feature name)}`` for the kept
        single-column user-sharing means whose path count the table has.
    """
    column = {name: k for k, name in enumerate(names)}
    alone: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    folds: dict[int, tuple[str, tuple[str, str], str]] = {}
    for r, (name, _, single) in enumerate(reasons):
        m = SHARING_MEAN.match(name) if single else None  # graph.baselines' user-sharing means, as worded
        if m is None or not (m["self"] or m["others"]):
            continue
        kind = "self" if m["self"] else "others"
        key = (m["rel"], m["other"])
        if key not in alone:
            paths = column.get(f"other users via {key[0]} {key[1]}s (log count of paths)")
            if paths is None:
                continue  # not the baselines' layout: nothing says who shares what
            links = column.get(f"distinct {key[1]}s via {key[0]} (log count)")
            unlinked = features[:, links] <= 0 if links is not None else np.zeros(features.shape[0], bool)
            alone[key] = (np.asarray(features[:, paths] <= 0), np.asarray(unlinked))
        folds[r] = (kind, key, m["f"])
    return alone, folds


class _Renamed(NamedTuple):
    """Who a reason is renamed for (a mask over users) and its name for them."""

    who: np.ndarray
    name: str


def _unlabelled_shares(reasons: Sequence[tuple[str, np.ndarray, bool]], features: np.ndarray,
                       names: Sequence[str]) -> dict[int, list[_Renamed]]:
    """``{reason position: renamings, first that applies wins}`` for the kept ring columns that give
    the share of labelled fraud among an account's labelled co-users
    (``graph.fraud_scorer.ring_column_text``), for whom that share is 0 of nothing: the accounts
    with no co-user at all (the table's count of them is 0: ``accounts sharing a device (or other
    identifier): none``), then those none of whose co-users has a label (the fraud and legitimate
    counts are both 0: ``…: none of them labelled in the training data``), as
    :class:`ServedTreeExplainer` says. Columns whose counts the table lacks are left out."""
    column = {name: k for k, name in enumerate(names)}
    out: dict[int, list[_Renamed]] = {}
    for r, (name, _, single) in enumerate(reasons):
        if not single or SHARE_LABELLED not in name:
            continue
        base, _, where = name.partition(SHARE_LABELLED)
        found = [column.get(f"{base}, labelled {kind} {where} (log count)") for kind in ("fraud", "legitimate")]
        counts = [k for k in found if k is not None]
        if len(counts) < len(found):
            continue
        renamed = []
        everyone = column.get(f"{base} (log count)")
        if everyone is not None:
            renamed.append(_Renamed(np.asarray(features[:, everyone]) <= 0, f"{base}{NOBODY_SUFFIX}"))
        renamed.append(_Renamed(np.all(np.asarray(features[:, counts]) <= 0, axis=1), f"{base}{NONE_LABELLED}{where}"))
        out[r] = renamed
    return out


def _nobody_counts(reasons: Sequence[tuple[str, np.ndarray, bool]], features: np.ndarray,
                   names: Sequence[str]) -> list[tuple[np.ndarray, list[int], str]]:
    """``[(alone [U], reason positions, name)]``: for each kind of co-user the ring columns count
    (``accounts sharing a device (or other identifier)``), the accounts that have none (the table's
    count of them is 0), the kept reasons about them (that count, how many are labelled fraud or
    legitimate, the share labelled fraud), and the one reason they make for such an account
    (``…: none``): "labelled fraud: 0" beside "none" read as co-users that are clean."""
    column = {name: k for k, name in enumerate(names)}
    kept = {name: r for r, (name, _, single) in enumerate(reasons) if single}
    out = []
    for name in names:
        if SHARE_LABELLED not in name:
            continue
        base, _, where = name.partition(SHARE_LABELLED)
        everyone = column.get(f"{base} (log count)")
        if everyone is None:
            continue
        about = [f"{base} (log count)", f"{base}, labelled fraud {where} (log count)",
                 f"{base}, labelled legitimate {where} (log count)", name]
        positions = [kept[a] for a in about if a in kept]
        if positions:
            out.append((np.asarray(features[:, everyone]) <= 0, positions, f"{base}{NOBODY_SUFFIX}"))
    return out


def _without_quick_buys(reasons: Sequence[tuple[str, np.ndarray, bool]], features: np.ndarray,
                        names: Sequence[str]) -> tuple[np.ndarray, list[int]] | None:
    """``(none [U], reason positions)``: the accounts that bought nothing right after viewing or
    carting it (the table's quick purchase count is 0), and the kept reasons about such purchases:
    those that describe the items so bought (``quick purchases: mean item …``), which for those
    accounts describe nothing (their means over no item are 0), and the quick purchases' count,
    share, burst and hours, which all say the same "none" (a share of 0 % of an account that bought
    nothing at all is 0 of nothing); ``None`` when the table has no such count or reasons."""
    from shopgraph.graph.fraud_scorer import ring_column_text

    count = {name: k for k, name in enumerate(names)}.get(ring_column_text("quick_buys"))
    same = {ring_column_text(c) for c in ("quick_buys", "quick_buy_share", "quick_burst", "quick_hour_share")}
    positions = [r for r, (name, _, single) in enumerate(reasons)
                 if name.startswith(QUICK_ITEM_REASON) or (single and name in same)]
    if count is None or not positions:
        return None
    return np.asarray(features[:, count]) <= 0, positions


def _reason_groups(names: Sequence[str], embedding: set[int]) -> list[tuple[str, np.ndarray, bool]]:
    """``(reason name, column positions, is a single column)`` for the kept columns ``names``: the
    GNN embedding's columns (positions ``embedding``) and each prefix's text / image encoder
    columns grouped (in the order of their first column), every other column alone."""
    groups: dict[str | int, list[int]] = {}  # a group's name, or a lone column's position
    for k, name in enumerate(names):
        m = _EMBEDDING_COLUMN.match(name)
        key: str | int = "GNN embedding" if k in embedding else f"{m['prefix']}{m['kind']} features" if m else k
        groups.setdefault(key, []).append(k)
    return [(names[cols[0]], np.array(cols), True) if isinstance(key, int)
            else (f"{key} ({len(cols)} columns together; value: their norm)", np.array(cols), False)
            for key, cols in groups.items()]


def load_served_explainer(run: RunDir, data: HeteroData, model: FraudModel | None,
                          fraud_prob: np.ndarray | None) -> ServedTreeExplainer | None:
    """:meth:`ServedTreeExplainer.from_run`, or ``None`` with a warning naming the problem when the
    stored trees cannot be used (they do not reproduce the served probabilities, or cannot be
    read: explanations then attribute the GNN's score, as they say).

    Raises:
        ChecksumError, StaleFileError: a file the explainer reads (``fraud.json``, the trees, the
            embeddings) is damaged, or left by an earlier training: that is the run to fix
            (the message names the file and says to rerun ``shopgraph train``), not a reason to
            explain another scorer's score.
    """
    try:
        return ServedTreeExplainer.from_run(run, data, model, fraud_prob)
    except (ChecksumError, StaleFileError):
        raise
    except ValueError as exc:
        logger.warning("run %s: %s; explanations attribute the GNN's fraud score instead", run.path, exc)
        return None


def _read_booster(run: RunDir, rel: str) -> Any:
    """The xgboost trees stored at ``rel`` in the run, or ``ValueError`` naming the file when they
    cannot be read (not a model, or the file itself unreadable)."""
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(run.path_of(rel).read_bytes()))
    except (xgb.core.XGBoostError, OSError) as exc:
        raise ValueError(f"{rel}: not a readable xgboost model ({str(exc).splitlines()[0]})") from exc
    return booster


class HeldOutExplainer:
    """Explains the held-out fraud scores of a run's training accounts (``shopgraph train``'s
    cross-fitting, :func:`shopgraph.graph.fraud_scorer.held_out_fit`): an account's score comes
    from the trees of its fold, fitted without the fold's labels, on a feature table where those
    labels are hidden too; its reasons are the TreeSHAP contributions of those trees on that table.

    The folds' tables are built together when the first account is explained (one pass over the
    neighbour features and one over the ring features per fold: 2 s on the demo shop), each
    keeping its own accounts' rows and the columns its trees split on; the graph is let go then.
    A fold whose table cannot be built (trees of an older feature layout) gives no reasons, with
    one warning, and the scores are served as they are.

    Args:
        data: the run's graph.
        boosters: ``{fold: xgboost.Booster}``.
        fold: ``[U]`` each training account's fold (-1 for the others).
        held_out: ``[U]`` the stored held-out scores (an account's contributions are given only
            when its fold's trees reproduce its score).
    """

    def __init__(self, data: HeteroData, boosters: dict[int, Any], fold: np.ndarray, held_out: np.ndarray) -> None:
        import threading

        self.data: HeteroData | None = data
        self.boosters = dict(boosters)
        self.fold = np.asarray(fold, dtype=np.int64).reshape(-1)
        self.held_out = np.asarray(held_out, dtype=np.float64).reshape(-1)
        self._explainers: dict[int, tuple[ServedTreeExplainer, dict[int, int]]] | None = None
        self._lock = threading.Lock()

    def _built(self) -> dict[int, tuple[ServedTreeExplainer, dict[int, int]]]:
        """Every fold's explainer and the row of each of its accounts, built on first use."""
        built = self._explainers
        if built is not None:
            return built
        with self._lock:  # once, whichever thread asks first
            if self._explainers is None:
                from shopgraph.graph.fraud_scorer import _neighbour_table, held_out_table

                assert self.data is not None
                out: dict[int, tuple[ServedTreeExplainer, dict[int, int]]] = {}
                neighbours = _neighbour_table(self.data, None)
                for k, booster in self.boosters.items():
                    rows = np.flatnonzero(self.fold == k)
                    try:
                        table, names = held_out_table(self.data, self.fold, k, neighbours, rows)
                        explainer = ServedTreeExplainer(booster, "graph_trees", table, names)
                    except (ValueError, MemoryError) as exc:
                        logger.warning("held-out trees of fold %d cannot be explained (%s); its accounts' held-out "
                                       "scores are served without reasons", k, exc)
                        continue
                    out[k] = (explainer, {int(u): n for n, u in enumerate(rows)})
                self._explainers = out
                self.data = None  # the tables are built: the graph is not needed any more
            return self._explainers

    def contributions(self, user_index: int) -> tuple[list[FeatureAttribution], float] | None:
        """Every reason's contribution to the log-odds of the account's held-out score, and the
        trees' base value, as :meth:`ServedTreeExplainer.contributions`; ``None`` for an account
        without a held-out score, whose fold's trees are missing or could not be explained, or do
        not reproduce its score (within 1e-4)."""
        k = int(self.fold[user_index])
        held = float(self.held_out[user_index])
        if k < 0 or k not in self.boosters or not math.isfinite(held):
            return None
        found = self._built().get(k)
        if found is None:
            return None
        explainer, row = found
        items, base = explainer.contributions(row[user_index])
        margin = base + sum(f.attribution for f in items)
        if abs(1.0 / (1.0 + math.exp(-margin)) - held) > 1e-4:
            logger.warning("held-out trees of fold %d do not reproduce user %d's held-out score (%.6f); no reasons",
                           k, user_index, held)
            return None
        return items, base

    @classmethod
    def from_run(cls, run: RunDir, data: HeteroData, held_out: np.ndarray | None) -> HeldOutExplainer | None:
        """The explainer of a run's held-out scores, or ``None`` when the run has none or no trees
        for them (``fraud.json``'s ``held_out.trees_files``: trained before they were stored).

        Raises:
            ValueError: naming the file, when a fold's trees are missing or cannot be read, or the
                stored folds are not one per user; :class:`~shopgraph.graph.run.ChecksumError` or
                :class:`~shopgraph.graph.run.StaleFileError` (both ``ValueError``) when a file it
                reads does not match its checksum or was left by an earlier training.
        """
        info = run.read_json("fraud.json") if run.has("fraud.json") else {}
        held_info = info.get("held_out")
        files = held_info.get("trees_files") if isinstance(held_info, dict) else None
        if held_out is None or not files or not np.isfinite(np.asarray(held_out, dtype=np.float64)).any():
            return None
        from safetensors import safe_open

        from shopgraph.graph.train import HELD_OUT_FOLD_KEY

        boosters: dict[int, Any] = {}
        for key, rel in files.items():
            if not run.has(str(rel)):
                raise ValueError(f"{rel}: the held-out trees fraud.json names are missing; retrain the run")
            boosters[int(key)] = _read_booster(run, str(rel))
        rel = "embeddings.safetensors"
        with safe_open(str(run.path_of(rel)), framework="pt") as f:
            if HELD_OUT_FOLD_KEY not in f.keys():
                raise ValueError(f"{rel}: no {HELD_OUT_FOLD_KEY} tensor for the held-out trees; retrain the run")
            fold = f.get_tensor(HELD_OUT_FOLD_KEY).long().numpy().reshape(-1)
        n = int(data["user"].num_nodes)
        if fold.size != n or (fold < -1).any():
            raise ValueError(f"{rel}: {HELD_OUT_FOLD_KEY} is not one fold (or -1) per user of the graph's {n:,}; "
                             "retrain the run")
        return cls(data, boosters, fold, np.asarray(held_out, dtype=np.float64))


def load_held_out_explainer(run: RunDir, data: HeteroData, held_out: np.ndarray | None) -> HeldOutExplainer | None:
    """:meth:`HeldOutExplainer.from_run`, or ``None`` with a warning naming the problem when the
    stored trees cannot be used: missing, unreadable, damaged or left by an earlier training (the
    held-out scores are then served without reasons; the served scores and their reasons are not
    touched)."""
    try:
        return HeldOutExplainer.from_run(run, data, held_out)
    except (ValueError, FileNotFoundError) as exc:  # damaged or stale files too: the scores still serve
        logger.warning("run %s: %s; the held-out fraud scores are served without reasons", run.path, exc)
        return None


def _serving_fraud_input(run: RunDir, model: FraudModel | None, n_users: int) -> np.ndarray:
    """``[U, D]`` the hybrid trees' GNN columns: the model's fraud input of the serving user
    embeddings stored in ``RUN/embeddings.safetensors``."""
    from safetensors.torch import load_file

    if model is None or not hasattr(model, "fraud_input"):
        raise ValueError("fraud.json: a 'hybrid' scorer needs the run's model (model/) to explain")
    user = load_file(str(run.path_of("embeddings.safetensors")))["user"]
    if user.size(0) != n_users:
        raise ValueError(f"embeddings.safetensors: {user.size(0)} user rows, the graph has {n_users}")
    with torch.no_grad():
        return np.asarray(model.fraud_input(user).float().numpy(), dtype=np.float32)


def explain_ring_members(
    ring: Ring, data: HeteroData, model: FraudModel | None, *, k: int = 3, fraud_prob: np.ndarray | None = None,
    served: ServedTreeExplainer | None = None, held_out: HeldOutExplainer | None = None,
    facts: FeatureFacts | None = None,
) -> dict[str, dict[str, Any]]:
    """Explanations (as dicts) of the ``k`` members of a ring most likely fraud: of the served
    trees' score when ``served`` is given, else of the GNN's (:func:`explain_user`). With
    ``held_out``, a member the scorer was trained on is ranked by its held-out score (its served one
    is fitted to its label) and its explanation carries a ``held_out`` one too (that score's, from
    its fold's trees: the verdict the demo and a lead list give it). ``facts``: the members' raw
    feature values, for each feature's ``value_in_words`` (:func:`feature_dict`)."""
    index = {u: n for n, u in enumerate(_node_ids(data, "user"))}
    predicted = dict(ring.member_scores)
    if held_out is not None:
        predicted.update({u: float(held_out.held_out[index[u]]) for u in predicted
                          if u in index and math.isfinite(float(held_out.held_out[index[u]]))})
    ranked = sorted(predicted.items(), key=lambda kv: (-kv[1], kv[0]))
    chosen = [u for u, _ in ranked][:k] if ranked else ring.members[:k]

    def explain(u: str) -> dict[str, Any]:
        n = index[u]
        words = None if facts is None else lambda name, value: facts.value(name, value, n)
        out = (served.explain(data, n) if served is not None
               else explain_user(model, data, n, fraud_prob=fraud_prob)).to_dict(words)
        got = held_out.contributions(n) if held_out is not None else None
        if held_out is not None and got is not None:
            held = held_out_explanation(u, float(held_out.held_out[n]), *got).to_dict(words)
            out["held_out"] = {key: held[key] for key in ("score", "features", "base_value", "unlisted_attribution")}
        return out

    return {u: explain(u) for u in chosen if u in index}


def ring_timeline(ring: Ring, tables: ShopTables) -> pd.DataFrame:
    """The ring members' events in time order, with item titles, categories, amounts and devices.

    Args:
        ring: the ring.
        tables: the normalised tables.

    Returns:
        Frame with columns ``timestamp`` (int epoch seconds, or ``None`` without timestamps),
        ``time`` (ISO-8601 UTC, "" without timestamps), ``user_id``, ``event_type``, ``item_id``,
        ``title``, ``category``, ``amount`` (float, NaN when unknown), ``device_id`` and
        ``shared_device`` (bool: the device is one of the ring's shared devices). Sorted by time,
        ties and untimed data in file order.
    """
    ev = tables.events
    mine = ev[ev["user_id"].isin(set(ring.members))]
    items = tables.items.set_index("item_id")
    out = pd.DataFrame({
        "timestamp": mine["timestamp"].astype("int64") if tables.has_timestamps else None,
        "user_id": mine["user_id"].astype(str), "event_type": mine["event_type"].astype(str),
        "item_id": mine["item_id"].astype(str),
    })
    for col in ("title", "category"):
        out[col] = (items[col].reindex(out["item_id"]).fillna("").astype(str).to_numpy()
                    if col in items.columns else "")
    out["amount"] = (mine["amount"].astype(float).to_numpy() if "amount" in mine.columns
                     else np.full(len(mine), np.nan))
    out["device_id"] = mine["device_id"].astype(str).to_numpy() if "device_id" in mine.columns else ""
    out["shared_device"] = out["device_id"].isin(set(ring.shared_devices)) & (out["device_id"] != "")
    if tables.has_timestamps:
        out = out.sort_values("timestamp", kind="stable")
        out.insert(1, "time", pd.to_datetime(out["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    else:
        out["timestamp"] = None
        out.insert(1, "time", "")
    return out.reset_index(drop=True)


def evidence_edges(ring: Ring, data: HeteroData) -> pd.DataFrame:
    """The ring's user–identifier edges (user–device in the shop schema).

    Returns:
        Frame with columns ``user_id``, ``node_type``, ``node_id``, ``first_seen`` (epoch seconds of
        first use, or ``None``) and ``shared`` (the identifier is used by at least two members),
        sorted by node type, node id and user.
    """
    index = {u: n for n, u in enumerate(_node_ids(data, "user"))}
    members = torch.tensor([index[u] for u in ring.members if u in index], dtype=torch.long)
    rows: list[dict[str, Any]] = []
    for src, rel, dst in data.edge_types:
        if src != "user" or dst in _NOT_IDENTIFIERS:
            continue
        store = data[(src, rel, dst)]
        ei = store.edge_index
        sel = torch.isin(ei[0], members)
        ids = _node_ids(data, dst)
        times = store.time[sel].tolist() if "time" in store else [None] * int(sel.sum())
        users = _node_ids(data, "user")
        for u, v, t in zip(ei[0][sel].tolist(), ei[1][sel].tolist(), times):
            rows.append({"user_id": users[u], "node_type": dst, "node_id": ids[v],
                         "first_seen": None if t is None else int(t)})
    frame = pd.DataFrame(rows, columns=["user_id", "node_type", "node_id", "first_seen"])
    if len(frame):
        frame = frame.groupby(["user_id", "node_type", "node_id"], as_index=False, sort=False).agg(
            first_seen=("first_seen", lambda s: None if s.isna().all() else int(s.min())))
        n_users = frame.groupby(["node_type", "node_id"])["user_id"].transform("nunique")
        frame["shared"] = n_users >= 2
        frame = frame.sort_values(["node_type", "node_id", "user_id"]).reset_index(drop=True)
    else:
        frame["shared"] = pd.Series(dtype=bool)
    frame["first_seen"] = frame["first_seen"].astype(object)
    return frame


def load_model(run: RunDir) -> FraudModel | None:
    """The trained ``ShopGNN`` of a run (``RUN/model/config.json`` + ``model.safetensors``), or ``None``.

    Returns ``None`` (and logs why) when the run has no model or ``shopgraph.graph.model`` is not
    available; explanations then fall back to behaviour z-scores.
    """
    if not (run.has("model/config.json") and run.has("model/model.safetensors")):
        logger.info("run %s has no model/; explanations use behaviour z-scores", run.path)
        return None
    try:
        from shopgraph.graph.train import load_model as load_trained
    except ImportError as exc:
        logger.warning("cannot import the model (%s); explanations use behaviour z-scores", exc)
        return None
    run.path_of("model/config.json")  # checksums verified before anything is read
    folder = run.path_of("model/model.safetensors").parent
    model: FraudModel = load_trained(folder, "cpu")
    return model
