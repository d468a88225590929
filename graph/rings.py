"""Fraud rings: accounts tied by shared devices (or any other shared identifier), found, scored,
ranked and exported as case files.

Detection (:class:`RingDetector`)::

    identifier nodes = every node type other than ``user`` and ``item`` linked to users
                       (``device`` in the shop schema; ``card``, ``ip``, ... when the data has them)
    hubs             = identifiers shared by more than ``hub_threshold`` users (a shop's office
                       Wi-Fi, a kiosk): left out of the linking and reported in ``hub_devices_``
    user graph       = users joined when they share a non-hub identifier, weight = shared count
    candidates       = connected components with at least ``min_size`` users; a component larger
                       than ``max_component`` is split by Louvain (networkx, seeded)

Scoring: every candidate gets terms in [0, 1] and the score is their weighted mean over the
terms that are available (a missing term is dropped and the weights renormalised)::

    gnn       = mean of the members' predicted fraud probabilities                (weight 0.50)
    young     = 1 - ECDF_users(median member account age at first activity)       (weight 0.10)
    velocity  = ECDF_users(median member purchases a day, first event to last buy) (weight 0.10)
    high_risk = ECDF_users(median member high-risk share of purchase amount)      (weight 0.10)
    size      = 1 - exp(-(n - 2) / 4)          n = members                         (weight 0.10)
    density   = 1 - exp(-(n / s - 1) / 3)      s = shared identifiers              (weight 0.10)

``ECDF_users(v)`` is the mid-rank share of all users whose own value is below ``v``, so the
behaviour terms are scale-free (a shop of cheap books and one of laptops score alike). A member
the scorer was trained on is predicted by its held-out score (``held_out``: the scorer refitted
without its label), as the demo and a lead list judge it: its served score is fitted to its label,
and would rank the rings the training data already knows above those holding new leads. Without
``fraud_prob`` the ``gnn`` term is absent; with ``use_behaviour=False`` too, the score is
structure only (``size`` and ``density``): that is the baseline. Households (2-4 people on one
device, old accounts, ordinary baskets) get low behaviour and GNN terms and rank low.

See ``docs/fraud_rings.md`` for the case-file schema.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import networkx as nx
import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from shopgraph.graph.files import as_created, existing_ancestor, listed_names, through_link
from shopgraph.graph.messages import did_you_mean, known_ids, plural, shown
from shopgraph.graph.run import RunDir, swap_in
from shopgraph.graph.schema import HIGH_RISK_CATEGORIES, REV_PREFIX, ShopTables
from shopgraph.graph.wording import FeatureFacts, ValueWords, label_words

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
# what the case files of an export hold, recorded in its rings.json (``case_version``): 2 added the
# members' ``label`` and ``label_in_training``, 3 their ``held_out_probability``, 4 each explained
# feature's worded ``reason`` and each shared identifier's ``others`` (the accounts on it), 5 a share of
# labelled fraud among co-users none of whom is labelled named so (graph.wording.NONE_LABELLED), not 0 %,
# an explanation's ``score`` the served probability to the digit (not the trees' own float64 sum), and
# each explained feature's ``value_in_words``, 6 the validation ``threshold``, the ``case_version`` and
# the export's ``source`` in each case file, each member's ``flagged`` and ``held_out_flagged`` (CSV:
# ``member_flagged``, ``member_held_out_flagged``), ``days_to_first_activity`` for what was
# ``account_age_days`` (days from sign-up to the first event, not the fraud reasons' account age), and
# the reasons' wording of graph.wording (no quick purchase, no co-user, the account age's date), 7
# ``value_in_words`` from the accounts' raw values (graph.wording.FeatureFacts: an account's age and
# the average age of the accounts on its devices in days, not in standard deviations; a "quick
# purchases" reason's items named), and ``activity_until``: the date the columns counted over the
# graph (shared devices and their accounts' labels, quick purchases) read events up to; the ring's
# ``flagged``, ``known_fraud`` and ``known_fraud_trained_on``, members in order of prediction; 8 each
# member's ``predicted_flagged`` (CSV: ``member_predicted_flagged``), the verdict the ring's ``flagged``
# counts (its held-out score's for a trained-on member: its ``flagged`` judges a score fitted to its
# label; in the CSV ``member_served_flagged``, was ``member_flagged``), the reasons about an account's
# own purchase timing worded "over all activity" and those about its own behaviour "in the training
# period", ``fraud.json`` (the threshold) among the files its ``source`` records, and
# ``purchase_velocity`` counted from a member's first event (was: its first purchase); 9 an average
# over the items (devices) a member used worded in the items' own unit and as such ("15 (typical, over
# the items it put in the cart)"; was: read with the account column's scale, "over the other accounts").
# An export of another version is never handed out as a ring's case files (:func:`exported_ring`); the
# demo writes them afresh.
CASE_VERSION = 9
RINGS_FILE = "rings/rings.json"
# the model files whose checksums a case export records, when the run has them
EXPORT_MODEL_FILES = ("model/config.json", "model/model.safetensors", "fraud_trees.ubj", "fraud.json")
DAY = 86_400.0
# Weights of the score terms (see the module docstring); renormalised over the available terms.
WEIGHTS: dict[str, float] = {
    "gnn": 0.5, "young": 0.1, "velocity": 0.1, "high_risk": 0.1, "size": 0.1, "density": 0.1,
}
BEHAVIOUR_TERMS: tuple[str, ...] = ("young", "velocity", "high_risk")
STRUCTURE_TERMS: tuple[str, ...] = ("size", "density")
_NOT_IDENTIFIERS = frozenset({"user", "item"})


class Hub(NamedTuple):
    """An identifier left out of ring linking because too many users share it."""

    node_type: str
    node_id: str
    n_users: int


@dataclass
class Ring:
    """One candidate fraud ring.

    Attributes:
        ring_id: ``"R0001"`` for the top-ranked ring, ``"R0002"`` next, ... (stable for one fit).
        members: user ids, sorted.
        score: ring score in [0, 1] (module docstring).
        shared_devices: device ids used by at least two members, sorted.
        member_scores: user id -> member score (GNN fraud probability when available; otherwise
            the mean of the member's behaviour terms; structure only: the share of the ring's shared
            identifiers the member uses).
        evidence: the numbers behind the score (``docs/fraud_rings.md`` lists every key).
    """

    ring_id: str
    members: list[str]
    score: float
    shared_devices: list[str]
    member_scores: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Ring:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming a missing key."""
        missing = [k for k in ("ring_id", "members", "score", "shared_devices") if k not in raw]
        if missing:
            raise ValueError(f"ring: missing keys {missing} (got keys {sorted(raw)})")
        return cls(
            ring_id=str(raw["ring_id"]), members=[str(m) for m in raw["members"]], score=float(raw["score"]),
            shared_devices=[str(d) for d in raw["shared_devices"]],
            member_scores=dict(sorted(((str(k), float(v)) for k, v in raw.get("member_scores", {}).items()),
                                      key=lambda kv: (-kv[1], kv[0]))),
            evidence=dict(raw.get("evidence", {})),
        )


# -- per-user behaviour ---------------------------------------------------------------------------
class UserBehaviour(NamedTuple):
    """Per-user behaviour statistics, arrays aligned with ``data["user"].ids`` (NaN = unknown)."""

    age_days: np.ndarray  # [U] account age at the user's first event, days
    velocity: np.ndarray  # [U] target events a day from the first event to the last one (at least a day)
    high_risk: np.ndarray  # [U] share of purchase amount in HIGH_RISK_CATEGORIES
    n_purchases: np.ndarray  # [U] target events
    amount: np.ndarray  # [U] total purchase amount


def user_behaviour(tables: ShopTables, user_ids: Sequence[str], target: str = "purchase") -> UserBehaviour:
    """Behaviour statistics of every user from the tables (all periods: rings are served on all history).

    Args:
        tables: normalised tables.
        user_ids: the users, in node order (``data["user"].ids``), length U.
        target: the purchase event type.

    Returns:
        :class:`UserBehaviour` with arrays of shape ``[U]``.
    """
    index = pd.Index(list(user_ids))
    n = len(index)
    events = tables.events
    age = np.full(n, np.nan)
    velocity = np.full(n, np.nan)
    high_risk = np.full(n, np.nan)
    n_purchases = np.zeros(n)
    amount = np.zeros(n)
    if len(events) == 0:
        return UserBehaviour(age, velocity, high_risk, n_purchases, amount)
    urow = index.get_indexer(events["user_id"])
    known = urow >= 0
    has_time = tables.has_timestamps
    if has_time and "created_at" in tables.users.columns:
        first = pd.Series(events["timestamp"].to_numpy(dtype=np.float64)[known]).groupby(urow[known]).min()
        created = pd.Series(tables.users["created_at"].to_numpy(dtype=np.float64),
                            index=tables.users["user_id"]).reindex(index).to_numpy()
        age[first.index.to_numpy()] = (first.to_numpy() - created[first.index.to_numpy()]) / DAY
    buys = (events["event_type"].to_numpy() == target) & known
    if buys.any():
        rows = urow[buys]
        items = tables.items.set_index("item_id")
        item_id = events["item_id"].to_numpy()[buys]
        cat = items["category"].reindex(item_id).fillna("").astype(str).str.lower().to_numpy() \
            if "category" in items.columns else np.full(rows.size, "")
        amt = events["amount"].to_numpy(dtype=np.float64)[buys] if "amount" in events.columns \
            else np.full(rows.size, np.nan)
        if "price" in items.columns:
            price = items["price"].reindex(item_id).to_numpy(dtype=np.float64)
            amt = np.where(np.isfinite(amt), amt, price)
        weight = np.where(np.isfinite(amt), amt, 1.0)
        risky = np.isin(cat, list(HIGH_RISK_CATEGORIES))
        frame = pd.DataFrame({"u": rows, "w": weight, "r": weight * risky, "one": 1.0,
                              "a": np.where(np.isfinite(amt), amt, 0.0)})
        if has_time:
            frame["t"] = events["timestamp"].to_numpy(dtype=np.float64)[buys]
        agg = frame.groupby("u").agg(w=("w", "sum"), r=("r", "sum"), k=("one", "sum"), a=("a", "sum"),
                                     **({"t0": ("t", "min"), "t1": ("t", "max")} if has_time else {}))
        u = agg.index.to_numpy()
        n_purchases[u] = agg["k"].to_numpy()
        amount[u] = agg["a"].to_numpy()
        high_risk[u] = np.where(agg["w"] > 0, agg["r"] / agg["w"].where(agg["w"] > 0, 1.0), 0.0)
        if has_time:
            # from the account's first event of any kind (a view, a sign-up's first look) to its last
            # purchase: a single purchase weeks after the first visit is slow, not "one a day"
            start = pd.Series(events["timestamp"].to_numpy(dtype=np.float64)[known]).groupby(urow[known]).min()
            t0 = np.minimum(start.reindex(u).to_numpy(), agg["t0"].to_numpy())
            span = np.maximum((agg["t1"].to_numpy() - t0) / DAY, 1.0)
            velocity[:] = 0.0
            velocity[u] = agg["k"].to_numpy() / span
    elif has_time:
        velocity[:] = 0.0
    # users with no purchase: share undefined, but "no high-risk purchase" is the honest reading
    high_risk[np.isnan(high_risk)] = 0.0
    return UserBehaviour(age, velocity, high_risk, n_purchases, amount)


def _ecdf(population: np.ndarray, value: float) -> float:
    """Mid-rank share of ``population`` (finite values only) below ``value``; NaN if undefined."""
    pop = np.sort(population[np.isfinite(population)])
    if pop.size == 0 or not math.isfinite(value):
        return float("nan")
    lo = np.searchsorted(pop, value, side="left")
    hi = np.searchsorted(pop, value, side="right")
    return float((lo + hi) / 2.0 / pop.size)


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


# -- linking --------------------------------------------------------------------------------------
def identifier_links(data: HeteroData) -> pd.DataFrame:
    """Distinct (user, identifier) pairs of every relation joining users to a non-item node type.

    Identifier types are found from ``data.edge_types``: any ``(user, rel, X)`` or ``(X, rel, user)``
    with ``X`` not ``user``/``item`` and ``rel`` not a reverse (``rev_...``) relation, so a shop with
    cards or IP addresses as node types links through them too.

    Returns:
        Frame with columns ``user`` (node index), ``node_type``, ``node`` (node index).
    """
    parts: list[pd.DataFrame] = []
    for src, rel, dst in data.edge_types:
        if rel.startswith(REV_PREFIX) and (dst, rel[len(REV_PREFIX):], src) in data.edge_types:
            continue
        ei = data[(src, rel, dst)].edge_index
        if src == "user" and dst not in _NOT_IDENTIFIERS:
            nt, u, v = dst, ei[0], ei[1]
        elif dst == "user" and src not in _NOT_IDENTIFIERS:
            nt, u, v = src, ei[1], ei[0]
        else:
            continue
        parts.append(pd.DataFrame({"user": u.numpy(), "node_type": nt, "node": v.numpy()}))
    if not parts:
        return pd.DataFrame({"user": np.zeros(0, np.int64), "node_type": np.zeros(0, str), "node": np.zeros(0, np.int64)})
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True)


def _check_inputs(data: HeteroData, fraud_prob: np.ndarray | None) -> np.ndarray | None:
    if not isinstance(data, HeteroData):
        raise TypeError(f"data: expected a torch_geometric HeteroData (got {type(data).__name__})")
    if "user" not in data.node_types or "ids" not in data["user"]:
        raise ValueError(f"data: expected a 'user' node type with .ids (got node types {data.node_types})")
    n_users = len(data["user"].ids)
    if fraud_prob is None:
        return None
    if isinstance(fraud_prob, torch.Tensor):
        fraud_prob = fraud_prob.detach().cpu().numpy()
    prob = np.asarray(fraud_prob, dtype=np.float64).reshape(-1)
    if prob.size != n_users:
        raise ValueError(f"fraud_prob: expected one probability per user, shape [{n_users}] (got {prob.size})")
    bad = np.flatnonzero(~np.isfinite(prob) | (prob < 0) | (prob > 1))
    if bad.size:
        raise ValueError(
            f"fraud_prob: {bad.size} of {prob.size} values are not probabilities in [0, 1] "
            f"(first: {float(prob[bad[0]])!r}, user index {int(bad[0])})"
        )
    return prob


class RingDetector:
    """Find fraud rings through shared identifiers and rank them (sklearn-style).

    Args:
        hub_threshold: an identifier shared by more users than this is a hub: left out, reported.
        min_size: smallest ring reported (users).
        max_component: components larger than this are split by Louvain.
        seed: seeds Louvain.
        use_behaviour: include the behaviour terms (``young``, ``velocity``, ``high_risk``); with
            ``fraud_prob=None`` and ``use_behaviour=False`` the score is structure only (the baseline).
        resolution: Louvain resolution (higher gives smaller communities).
    """

    def __init__(
        self, hub_threshold: int = 50, min_size: int = 3, max_component: int = 40, seed: int = 0,
        *, use_behaviour: bool = True, resolution: float = 1.0,
    ) -> None:
        self.hub_threshold = hub_threshold
        self.min_size = min_size
        self.max_component = max_component
        self.seed = seed
        self.use_behaviour = use_behaviour
        self.resolution = resolution

    def _validate_params(self) -> None:
        for name in ("hub_threshold", "min_size", "max_component"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name}: expected an integer >= 2 (got {value!r})")
        if self.max_component < self.min_size:
            raise ValueError(
                f"max_component: expected >= min_size={self.min_size} (got {self.max_component})"
            )

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, data: HeteroData, fraud_prob: np.ndarray | None, tables: ShopTables | None,
            held_out: np.ndarray | None = None) -> RingDetector:
        """Detect, score and rank rings.

        Args:
            data: the shop graph (``build_graph`` output; features not needed).
            fraud_prob: the served fraud probability per user, ``[U]`` in node order, or ``None``.
            tables: the normalised tables (behaviour terms); ``None`` drops the behaviour terms.
            held_out: ``[U]`` the held-out scores of the accounts the scorer was trained on (NaN for
                the others; :func:`load_held_out`), which stand for their served ones in the ``gnn``
                term and ``predicted_mean``/``predicted_max``; ``None``: the served scores.

        Returns:
            ``self``, with ``rings_`` (ranked), ``hub_devices_``, ``mode_`` and ``n_candidates_``.
        """
        self._validate_params()
        prob = _check_inputs(data, fraud_prob)
        predicted = prob
        if prob is not None and held_out is not None:
            from shopgraph.graph.fraud_scorer import check_held_out

            held = check_held_out(np.asarray(held_out, dtype=np.float64), prob.size)
            predicted = np.where(np.isfinite(held), held, prob)
        user_ids: list[str] = [str(u) for u in data["user"].ids]
        links = identifier_links(data)
        id_names = {nt: [str(v) for v in data[nt].ids] if "ids" in data[nt] else
                    [str(k) for k in range(int(data[nt].num_nodes))] for nt in set(links["node_type"])}

        # hubs: identifiers with more users than the threshold
        counts = links.groupby(["node_type", "node"]).size().rename("n").reset_index()
        hub_rows = counts[counts["n"] > self.hub_threshold].sort_values(["n", "node_type", "node"],
                                                                        ascending=[False, True, True])
        self.hub_devices_: list[Hub] = [
            Hub(str(r.node_type), id_names[str(r.node_type)][int(r.node)], int(r.n)) for r in hub_rows.itertuples()
        ]
        if self.hub_devices_:
            logger.info("rings: %d hub identifiers left out (largest: %s %s with %d users)",
                        len(self.hub_devices_), *self.hub_devices_[0])
        shared = counts[(counts["n"] >= 2) & (counts["n"] <= self.hub_threshold)]
        links = links.merge(shared[["node_type", "node"]], on=["node_type", "node"])

        graph = nx.Graph()
        for (_, _), group in links.sort_values(["node_type", "node", "user"]).groupby(["node_type", "node"], sort=True):
            members = group["user"].to_numpy()
            for a in range(members.size):
                for b in range(a + 1, members.size):
                    u, v = int(members[a]), int(members[b])
                    w = graph.get_edge_data(u, v, {"weight": 0})["weight"]
                    graph.add_edge(u, v, weight=w + 1)

        groups: list[list[int]] = []
        for comp in sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0]):
            if len(comp) > self.max_component:
                sub = graph.subgraph(comp)
                parts = nx.community.louvain_communities(sub, weight="weight", seed=self.seed,
                                                         resolution=self.resolution)
                groups.extend(sorted((sorted(p) for p in parts), key=lambda c: c[0]))
            else:
                groups.append(comp)
        groups = [g for g in groups if len(g) >= self.min_size]
        self.n_candidates_ = len(groups)

        behaviour = user_behaviour(tables, user_ids, str(getattr(data, "target", "purchase"))) \
            if tables is not None and self.use_behaviour else None
        self.mode_ = "+".join(
            (["gnn"] if prob is not None else []) + (["behaviour"] if behaviour is not None else []) + ["structure"]
        )
        link_sets = links.groupby("user")
        user_links: dict[int, list[tuple[str, int]]] = {
            int(u): list(zip(g["node_type"].tolist(), g["node"].tolist())) for u, g in link_sets
        }
        scored = [self._score(g, user_ids, id_names, user_links, prob, behaviour, predicted) for g in groups]
        scored.sort(key=lambda r: (-r.score, -len(r.members), r.members[0]))
        for rank, ring in enumerate(scored, start=1):
            ring.ring_id = f"R{rank:04d}"
        self.rings_: list[Ring] = scored
        logger.info("rings: %d candidates (mode %s)", len(scored), self.mode_)
        return self

    def _score(
        self, group: list[int], user_ids: list[str], id_names: dict[str, list[str]],
        user_links: dict[int, list[tuple[str, int]]], prob: np.ndarray | None, behaviour: UserBehaviour | None,
        predicted: np.ndarray | None = None,
    ) -> Ring:
        members = np.asarray(group, dtype=np.int64)
        n = members.size
        # identifiers used by at least two members
        use: dict[tuple[str, int], int] = {}
        for u in group:
            for key in user_links.get(u, []):
                use[key] = use.get(key, 0) + 1
        shared = sorted(k for k, c in use.items() if c >= 2)
        shared_ids: dict[str, list[str]] = {}
        for nt, v in shared:
            shared_ids.setdefault(nt, []).append(id_names[nt][v])
        shared_ids = {nt: sorted(v) for nt, v in sorted(shared_ids.items())}
        s = max(len(shared), 1)
        terms: dict[str, float] = {
            "size": 1.0 - math.exp(-(n - 2) / 4.0),
            "density": 1.0 - math.exp(-max(n / s - 1.0, 0.0) / 3.0),
        }
        evidence: dict[str, Any] = {
            "size": int(n), "shared_device_count": len(shared_ids.get("device", [])),
            "shared_identifier_count": len(shared), "shared_identifiers": shared_ids,
            "accounts_per_identifier": n / s,
            "median_account_age_days": None, "purchase_velocity": None, "high_risk_share": None,
            "n_purchases": None, "purchase_amount": None,
            "gnn_mean": None, "gnn_max": None, "predicted_mean": None, "predicted_max": None,
        }
        member_scores: dict[str, float]
        shared_set = set(shared)
        if prob is not None:
            p, q = prob[members], (prob if predicted is None else predicted)[members]
            terms["gnn"] = float(q.mean())  # predictions: a trained-on member's held-out score
            evidence["gnn_mean"], evidence["gnn_max"] = float(p.mean()), float(p.max())
            evidence["predicted_mean"], evidence["predicted_max"] = float(q.mean()), float(q.max())
            member_scores = {user_ids[u]: float(prob[u]) for u in group}
        else:
            member_scores = {
                user_ids[u]: sum(1 for k in user_links.get(u, []) if k in shared_set) / s for u in group
            }
        if behaviour is not None:
            age, vel, risk = (_median(a[members]) for a in (behaviour.age_days, behaviour.velocity, behaviour.high_risk))
            evidence.update(
                median_account_age_days=_none_if_nan(age), purchase_velocity=_none_if_nan(vel),
                high_risk_share=_none_if_nan(risk), n_purchases=int(behaviour.n_purchases[members].sum()),
                purchase_amount=float(behaviour.amount[members].sum()),
            )
            young = 1.0 - _ecdf(behaviour.age_days, age) if math.isfinite(age) else float("nan")
            for name, value in (("young", young), ("velocity", _ecdf(behaviour.velocity, vel)),
                                ("high_risk", _ecdf(behaviour.high_risk, risk))):
                if math.isfinite(value):
                    terms[name] = value
            if prob is None:
                per_member: dict[str, float] = {}
                for u in group:
                    vals = [1.0 - _ecdf(behaviour.age_days, float(behaviour.age_days[u])),
                            _ecdf(behaviour.velocity, float(behaviour.velocity[u])),
                            _ecdf(behaviour.high_risk, float(behaviour.high_risk[u]))]
                    finite = [v for v in vals if math.isfinite(v)]
                    per_member[user_ids[u]] = float(np.mean(finite)) if finite else 0.0
                member_scores = per_member
        total = sum(WEIGHTS[k] for k in terms)
        score = sum(WEIGHTS[k] * v for k, v in terms.items()) / total
        evidence["score_terms"] = {k: float(terms[k]) for k in WEIGHTS if k in terms}
        evidence["mode"] = "+".join(
            (["gnn"] if prob is not None else []) + (["behaviour"] if behaviour is not None else []) + ["structure"]
        )
        return Ring(
            ring_id="", members=[user_ids[u] for u in group], score=float(score),
            shared_devices=shared_ids.get("device", []),
            member_scores=dict(sorted(member_scores.items(), key=lambda kv: (-kv[1], kv[0]))),
            evidence=evidence,
        )

    def _require_fitted(self) -> None:
        if not hasattr(self, "rings_"):
            raise RuntimeError("RingDetector: not fitted yet; call fit(data, fraud_prob, tables) first")

    def top(self, k: int) -> list[Ring]:
        """The ``k`` highest-ranked rings."""
        self._require_fitted()
        if k < 1:
            raise ValueError(f"k: expected a positive integer (got {k})")
        return self.rings_[:k]


# -- evaluation -----------------------------------------------------------------------------------
def evaluate_rings(rings: Sequence[Ring], data: HeteroData, *, top: int | None = None) -> dict[str, Any]:
    """Compare reported rings with the planted ones (``data["user"].ring_id``, ``data.ring_names``).

    A planted ring P is *found* by a reported ring R when ``|R ∩ P| >= |P| / 2`` and
    ``|R ∩ P| >= |R| / 2``. ``ring_recall`` = found planted rings / planted rings (any reported
    ring may find one); ``precision`` = share of the ``top`` highest-ranked reported rings that find
    a planted ring (``top`` defaults to the number of planted rings). ``ari`` is sklearn's adjusted
    Rand index between planted and reported ring memberships over the users in any planted ring or
    any of the ``top`` reported rings (users outside a ring are singletons on that side);
    ``ari_all`` is the same over all reported rings.

    Args:
        rings: ranked reported rings.
        data: the graph with ground-truth ``ring_id`` (evaluation only).
        top: how many reported rings count for precision and ``ari``.

    Returns:
        ``{"planted", "reported", "top", "found", "ring_recall", "precision", "ari", "ari_all",
        "matches": {planted name: ring_id}}``.
    """
    from sklearn.metrics import adjusted_rand_score

    if "ring_id" not in data["user"]:
        raise ValueError("data['user'].ring_id: missing; the graph has no ground-truth rings")
    ids = [str(u) for u in data["user"].ids]
    truth = data["user"].ring_id.numpy()
    names = list(getattr(data, "ring_names", []) or [])
    planted: dict[str, set[str]] = {}
    for k in np.unique(truth[truth >= 0]):
        name = names[int(k)] if int(k) < len(names) else str(int(k))
        planted[name] = {ids[u] for u in np.flatnonzero(truth == k)}
    k_top = len(planted) if top is None else int(top)
    if k_top < 0:
        raise ValueError(f"top: expected a non-negative integer (got {top})")

    def matches(r: Ring, p: set[str]) -> bool:
        inter = len(p.intersection(r.members))
        return inter > 0 and 2 * inter >= len(p) and 2 * inter >= len(r.members)

    found: dict[str, str] = {}
    for name, members in planted.items():
        for r in rings:
            if matches(r, members):
                found[name] = r.ring_id
                break
    top_rings = list(rings[:k_top])
    hits = sum(1 for r in top_rings if any(matches(r, p) for p in planted.values()))

    def ari(chosen: Sequence[Ring]) -> float:
        users = sorted(set().union(*planted.values(), *(set(r.members) for r in chosen)))
        if len(users) < 2:
            return float("nan")
        true_of = {u: f"P:{n}" for n, ms in planted.items() for u in ms}
        pred_of = {u: f"R:{r.ring_id}" for r in chosen for u in r.members}
        return float(adjusted_rand_score([true_of.get(u, f"S:{u}") for u in users],
                                         [pred_of.get(u, f"S:{u}") for u in users]))

    return {
        "planted": len(planted), "reported": len(rings), "top": k_top, "found": len(found),
        "ring_recall": len(found) / len(planted) if planted else float("nan"),
        "precision": hits / len(top_rings) if top_rings else float("nan"),
        "ari": ari(top_rings), "ari_all": ari(list(rings)), "matches": found,
    }


# -- run folder, export and CLI -------------------------------------------------------------------
def load_fraud_prob(run: RunDir) -> np.ndarray | None:
    """``fraud_prob`` [U] from ``RUN/embeddings.safetensors``, or ``None`` when the run has none,
    or was trained without a fraud scorer (:func:`_load_fraud_scores`)."""
    return _load_fraud_scores(run)[0]


def _load_fraud_scores(run: RunDir) -> tuple[np.ndarray | None, bool]:
    """``(fraud_prob [U] or None, trained without a fraud scorer)``. A run trained on a shop
    without usable fraud labels has the scorer ``none`` and stores an all-NaN ``fraud_prob``: it
    has no fraud probabilities (rings are ranked on behaviour and structure), and its GNN's fraud
    head was never trained, so nothing should be explained with it either (one log line says so)."""
    rel = "embeddings.safetensors"
    if not run.has(rel):
        return None, False
    from safetensors.torch import load_file

    tensors = load_file(str(run.path_of(rel)))
    if "fraud_prob" not in tensors:
        logger.warning("%s has no fraud_prob tensor; ranking rings without GNN scores", rel)
        return None, False
    prob = tensors["fraud_prob"].float().numpy().astype(np.float64)
    if prob.size and bool(np.isnan(prob).all()):
        logger.info("run %s was trained without a fraud scorer (no usable fraud labels): no fraud probabilities, "
                    "so rings are ranked on behaviour and structure and members explained by behaviour z-scores",
                    run.path)
        return None, True
    return prob, False


def load_threshold(run: RunDir) -> float | None:
    """The served scorer's validation threshold (``RUN/fraud.json``), or ``None`` for a run without
    a fraud scorer (as :class:`shopgraph.retrieval.service.ShopService` reads it: 0.5 when unsaid)."""
    if not run.has("fraud.json"):
        return None
    info = run.read_json("fraud.json")
    threshold = info.get("threshold", 0.5)
    if info.get("kind", "none") == "none" or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        return None
    return float(threshold)


def load_held_out(run: RunDir, n_users: int) -> np.ndarray | None:
    """The training accounts' held-out fraud scores ``[U]`` (NaN for the other accounts) from
    ``RUN/embeddings.safetensors``, or ``None`` when the run has none (trained before they were
    stored, with ``--held-out-folds 0``, or serving another scorer than ``graph_trees``);
    ``ValueError`` naming the problem when they are not ``n_users`` values in ``[0, 1]``
    (:func:`shopgraph.graph.fraud_scorer.check_held_out`)."""
    from shopgraph.graph.fraud_scorer import check_held_out
    from shopgraph.graph.train import HELD_OUT_KEY

    rel = "embeddings.safetensors"
    if not run.has(rel):
        return None
    from safetensors import safe_open

    with safe_open(str(run.path_of(rel)), framework="pt") as f:
        if HELD_OUT_KEY not in f.keys():
            return None
        held = check_held_out(f.get_tensor(HELD_OUT_KEY).float().numpy(), n_users)
    return None if not np.isfinite(held).any() else held


def member_predictions(ring: Ring, positions: dict[str, int], held_out: np.ndarray | None) -> dict[str, float]:
    """Each member's fraud probability as a lead list and the demo judge the account: for a member
    the scorer was trained on, its held-out score (its served one is fitted to its label), else its
    member score; members without a score are left out. Only probabilities for a ring ranked with
    fraud scores (``evidence["gnn_mean"]`` set; otherwise member scores are behaviour or structure)."""
    return predicted(ring, _members_held_out(ring, positions, held_out))


def predicted(ring: Ring, held: Mapping[str, float | None]) -> dict[str, float]:
    """:func:`member_predictions` from the members' held-out scores by id (``None``: none)."""
    return {u: float(h) if (h := held.get(u)) is not None else float(p) for u, p in ring.member_scores.items()}


def flagged_members(ring: Ring, positions: dict[str, int], held_out: np.ndarray | None,
                    threshold: float | None) -> int | None:
    """How many members' predictions (:func:`member_predictions`) are at or above ``threshold``;
    ``None`` without a threshold or for a ring ranked without fraud scores."""
    return count_flagged(ring, _members_held_out(ring, positions, held_out), threshold)


def count_flagged(ring: Ring, held: Mapping[str, float | None], threshold: float | None) -> int | None:
    """:func:`flagged_members` from the members' held-out scores by id (as
    :meth:`FraudCases.held_out` gives them; the HTTP router has only those)."""
    ids = flagged_ids(ring, held, threshold)
    return None if ids is None else len(ids)


def flagged_ids(ring: Ring, held: Mapping[str, float | None], threshold: float | None) -> list[str] | None:
    """The members :func:`count_flagged` counts, the most likely fraud first (as the case files list
    members); ``None`` without a threshold or for a ring ranked without fraud scores."""
    if threshold is None or not math.isfinite(threshold) or ring.evidence.get("gnn_mean") is None:
        return None
    prediction = predicted(ring, held)
    flagged = [u for u in ring.members if prediction.get(u, -math.inf) >= threshold]
    return sorted(flagged, key=lambda u: -prediction[u])


def _members_held_out(ring: Ring, positions: dict[str, int], held_out: np.ndarray | None) -> dict[str, float | None]:
    """The ring members' held-out scores by id (``None``: not trained on, or not a known account)."""
    return {u: _held_out_of(held_out, positions[u]) if u in positions else None for u in ring.members}


def _held_out_of(held_out: np.ndarray | None, u: int) -> float | None:
    """Account ``u``'s held-out score, or ``None`` (none stored, or not an account the scorer was trained on)."""
    if held_out is None:
        return None
    value = float(held_out[u])
    return value if math.isfinite(value) else None


def _hubs_json(hubs: Sequence[Hub]) -> list[dict[str, Any]]:
    return [h._asdict() for h in hubs]


def rings_payload(rings: Sequence[Ring], hubs: Sequence[Hub], mode: str, params: dict[str, Any],
                  source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``rings.json`` document (``docs/fraud_rings.md``); ``source``: where the rings came
    from (a case export records the run folder and the checksums of the files it read)."""
    doc = {
        "schema_version": SCHEMA_VERSION, "mode": mode, "params": params,
        "hub_devices": _hubs_json(hubs), "rings": [r.to_dict() for r in rings],
    }
    if source is not None:
        doc["source"] = source
    return doc


def _export_problem(out: Path, overwrite: bool = True) -> str | None:
    """Why ``out`` cannot take a case export (:func:`export_cases` replaces the whole folder), or
    None: it is a file or below one, it holds something other than a previous export, or a
    previous export with files added since (an export does not write them, and would delete them),
    or, without ``overwrite``, any previous export."""
    folder = existing_ancestor(out)
    if folder is not None and not folder.is_dir():
        return f"{folder} is a file, not a folder" + ("" if folder == out else f" (got {out})")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    doc = _export_doc(out)
    if doc is None:
        return f"{out} exists and is not a previous rings export; choose another folder"
    listed = doc.get("rings")
    rings: list[Any] = listed if isinstance(listed, list) else []
    ids = {str(r["ring_id"]) for r in rings if isinstance(r, dict) and "ring_id" in r}
    written = {f"{ring_id}.{ext}" for ring_id in ids for ext in ("json", "csv", "md")}
    others = [p.name for p in sorted(out.iterdir()) if p.name not in ("rings.json", SUMMARY_CSV, "cases")]
    cases = out / "cases"
    if cases.is_dir() and not cases.is_symlink():
        others += [f"cases/{p.name}" for p in sorted(cases.iterdir()) if p.name not in written or not p.is_file()]
    elif cases.exists() or cases.is_symlink():
        others.append("cases")
    if not others:
        if overwrite:
            return None
        return (f"{out} holds an earlier export of {plural(len(ids), 'ring')}; pass --overwrite to replace it, "
                "or choose another folder")
    return (f"{out} holds {listed_names(others)}, which a rings export does not write (a new export replaces the whole "
            "folder); choose another folder, or move them out first")


def _export_doc(folder: Path) -> dict[str, Any] | None:
    """``folder/rings.json`` when the folder holds a rings export (a JSON object with a
    ``schema_version``), else None."""
    try:
        doc = json.loads((folder / "rings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "schema_version" in doc else None


def exported_ring(export: str | Path, ring: Ring) -> bool:
    """Whether the case export folder ``export`` holds case files of exactly ``ring``: its
    ``rings.json`` lists a ring with the same id whose members, scores and evidence equal
    ``ring``'s, and both ``cases/<ring_id>.json`` and ``.csv`` are there. A ring recomputed since
    the export (new members, a retrained model's scores) does not match, so its old case files
    are never handed out under its id."""
    folder = Path(export)
    if not all((folder / "cases" / f"{ring.ring_id}.{ext}").is_file() for ext in ("json", "csv")):
        return False
    doc = _export_doc(folder)
    if doc is None or not _current_export(doc):  # ... an export of older case files (no members' labels) neither
        return False
    current = json.dumps(_jsonable(ring.to_dict()), sort_keys=True)
    return any(isinstance(r, dict) and r.get("ring_id") == ring.ring_id and json.dumps(r, sort_keys=True) == current
               for r in doc.get("rings", []))


def find_ring(rings: Sequence[Ring], ring_id: str) -> int | None:
    """The position in ``rings`` of the ring ``ring_id`` names: the ring of that id (surrounding
    spaces aside), else the one ring whose id is the same up to case (``"r0001"``, as people type
    it), else, for a rank written without the zeros (``"R35"``, ``"35"``), the ring ``R0035`` of
    the ranked ids; ``None`` when there is none, or several the same up to case."""
    key = ring_id.strip()
    exact = next((k for k, r in enumerate(rings) if r.ring_id == key), None)
    if exact is not None:
        return exact
    folded = [k for k, r in enumerate(rings) if r.ring_id.casefold() == key.casefold()]
    if len(folded) == 1:
        return folded[0]
    rank = re.fullmatch(r"[Rr]?0*([0-9]{1,9})", key)  # ASCII digits: a full-width one is a look-alike (ring_hint)
    if not folded and rank is not None:
        canonical = f"R{int(rank[1]):04d}"
        return next((k for k, r in enumerate(rings) if r.ring_id == canonical), None)
    return None


def ring_hint(rings: Sequence[Ring], ring_id: str) -> str:
    """What an unknown ring id's error adds when it looks like one ring id (a full-width digit, a
    Cyrillic letter pasted from a document: ``Р0016``): `` (did you mean 'R0016'? ...)``, as for
    users and devices; ``""`` otherwise (:func:`~shopgraph.graph.messages.did_you_mean`)."""
    if not isinstance(ring_id, str):
        return ""
    key = ring_id.strip()
    # in capitals: ring ids are matched in any case, so the character to name is the look-alike one
    hint = did_you_mean({r.ring_id: k for k, r in enumerate(rings)}, key.upper())
    if hint:
        return hint
    # a rank written short with a look-alike digit (R3５, ３５): the ring its plain form names
    plain = unicodedata.normalize("NFKC", key)
    at = find_ring(rings, plain) if plain != key else None
    if at is None:
        return ""
    odd = next((ch for ch in key if unicodedata.normalize("NFKC", ch) != ch), None)
    which = f", and {odd!r} is U+{ord(odd):04X} {unicodedata.name(odd, 'an unnamed character')}" if odd else ""
    return f" (did you mean {shown(rings[at].ring_id)}? ring ids are written in plain letters and digits{which})"


def known_fraud(labels: dict[str, tuple[bool | None, bool]]) -> tuple[int, int]:
    """``(members labelled fraud in the shop's data, how many of those labels the scorer was trained
    on)`` of :meth:`FraudCases.labels`' answer for a ring's members."""
    fraud = [trained for label, trained in labels.values() if label]
    return len(fraud), sum(fraud)


def export_current(export: str | Path) -> bool:
    """Whether ``export`` holds a case export whose case files are of this version
    (``case_version``: :data:`CASE_VERSION`), so that nothing need write them again."""
    return _current_export(_export_doc(Path(export)))


def _current_export(doc: dict[str, Any] | None) -> bool:
    """Whether an export's ``rings.json`` (``None``: none) is of this schema and case version."""
    return doc is not None and doc["schema_version"] == SCHEMA_VERSION and doc.get("case_version") == CASE_VERSION


def rings_by_member(rings: Sequence[Ring]) -> dict[str, list[Ring]]:
    """``user_id ->`` the rings of ``rings`` that account is a member of, in the order given (ranked
    rings: its best-ranked first)."""
    member_of: dict[str, list[Ring]] = {}
    for ring in rings:
        for member in ring.members:
            member_of.setdefault(member, []).append(ring)
    return member_of


def load_rings(run_dir: str | Path) -> list[Ring]:
    """The ranked rings stored by :func:`rings_run` in ``RUN/rings/rings.json``."""
    raw = RunDir(run_dir).read_json(RINGS_FILE)
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{RINGS_FILE}: schema_version {SCHEMA_VERSION!r} expected (got {raw.get('schema_version')!r}); "
            "rerun `shopgraph rings`"
        )
    return [Ring.from_dict(r) for r in raw["rings"]]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _jsonable(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


CASE_SUMMARY_REASONS = 5  # reasons given for each explained member in a case's Markdown summary


def case_markdown(doc: Mapping[str, Any]) -> str:
    """A case file (:func:`case_file`'s document) as a page a person reads and forwards: what ties
    the ring, how many members are flagged and labelled, the members with their predictions (the
    most likely fraud first), why the explained members were flagged, and where it comes from. A
    function of the document alone, so the export's ``cases/<ring_id>.md`` and the demo's say the
    same as the JSON beside them."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    ring_id = str(doc.get("ring_id", ""))
    members = [m for m in doc.get("members", []) if isinstance(m, dict)]

    def prediction(m: Mapping[str, Any]) -> float:
        held = m.get("held_out_probability")
        value = held if held is not None else m.get("score")
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else -1.0

    ordered = sorted(members, key=lambda m: -prediction(m))
    shared = {str(kind): [str(i) for i in ids] for kind, ids in (doc.get("shared_identifiers") or {}).items() if ids}
    devices = [i for ids in shared.values() for i in ids]
    evidence = doc.get("evidence") or {}
    threshold = doc.get("threshold")
    lines = [f"# Fraud ring {ring_id}", ""]
    ties = ("sharing " + " and ".join(plural(len(ids), kind) for kind, ids in shared.items()) if shared
            else "sharing no device")
    lines.append(f"**{plural(len(members), 'account')} {ties}**" + (f": {', '.join(devices)}" if devices else "")
                 + f". Ring score {float(doc.get('score') or 0.0):.3f} (0 to 1; rings are ranked by it, the most "
                   "suspicious first).")
    lines.append("")
    flagged = doc.get("flagged")
    if flagged is not None and isinstance(threshold, int | float):
        lines.append(f"- **Flagged**: {flagged} of the {len(members)} members at the validation threshold "
                     f"{threshold:.3f} (for an account the scorer was trained on, its score with its label held out)")
    else:
        lines.append("- **Flagged**: not judged (the run has no fraud scorer)")
    known, trained = doc.get("known_fraud"), doc.get("known_fraud_trained_on")
    if known is not None:
        lines.append(f"- **Labelled fraud** in the shop's data: {known}"
                     + (f" ({trained} of them in the scorer's training labels)" if trained else ""))
    typical = []
    if isinstance(evidence.get("median_account_age_days"), int | float):
        typical.append(f"{evidence['median_account_age_days']:.1f} days from sign-up to first activity (median)")
    if isinstance(evidence.get("purchase_velocity"), int | float):
        typical.append(f"{evidence['purchase_velocity']:.2f} purchases a day since first visit")
    if isinstance(evidence.get("high_risk_share"), int | float):
        typical.append(f"{evidence['high_risk_share']:.0%} of purchases in high-risk categories")
    if typical:
        lines.append("- **Typical member**: " + "; ".join(typical))
    if isinstance(evidence.get("n_purchases"), int | float):
        amount = evidence.get("purchase_amount")
        lines.append(f"- **Purchases**: {int(evidence['n_purchases']):,}"
                     + (f", {amount:,.2f} in all" if isinstance(amount, int | float) else ""))
    if doc.get("features_as_of") or doc.get("activity_until"):
        lines.append(f"- **Dates**: features as of {doc.get('features_as_of') or '-'}; activity up to "
                     f"{doc.get('activity_until') or '-'}")
    lines += ["", "## Members, the most likely fraud first", "",
              "| account | fraud probability | flagged | label | purchases |", "|---|---:|---|---|---:|"]
    for m in ordered:
        p = prediction(m)
        verdict = m.get("predicted_flagged")
        lines.append(f"| {cell(m.get('user_id'))} | {'' if p < 0 else f'{p:.3f}'} | "
                     f"{'' if verdict is None else 'yes' if verdict else 'no'} | "
                     f"{cell(label_words(m.get('label'), bool(m.get('label_in_training'))))} | "
                     f"{m.get('n_purchases', '')} |")
    explained = doc.get("explanations") or {}
    if explained:
        lines += ["", "## Why the most likely fraud members score so", ""]
        by_user = {m.get("user_id"): m for m in members}
        for user in sorted(explained, key=lambda u: -prediction(by_user.get(u, {}))):
            ex = explained[user] or {}
            held = ex.get("held_out") or None
            basis = held or ex
            score = basis.get("score")
            lines.append(f"### {cell(user)}" + (f" ({score:.3f}" + (", its label held out)" if held else ")")
                                                if isinstance(score, int | float) else ""))
            features = [f for f in basis.get("features", []) if isinstance(f, dict)]
            for f in sorted(features, key=lambda f: -abs(float(f.get("attribution") or 0.0)))[:CASE_SUMMARY_REASONS]:
                a = float(f.get("attribution") or 0.0)
                value = f.get("value_in_words")
                lines.append(f"- {cell(f.get('reason') or f.get('name'))}" + (f": {cell(value)}" if value else "")
                             + f" ({'raises' if a > 0 else 'lowers'} the score, {a:+.2f} log-odds)")
            lines.append("")
    lines += ["## Where it comes from", ""]
    source = doc.get("source") or {}
    if source.get("run"):
        lines.append(f"- Run folder: `{source['run']}`")
    for name, digest in sorted((source.get("made_from") or {}).items()):
        lines.append(f"- `{name}`: sha256 {str(digest)[:16]}…" if digest else f"- `{name}`: absent")
    timeline = doc.get("timeline") or []
    lines.append(f"- The whole case: `{ring_id}.json` (every member's evidence, {plural(len(timeline), 'event')} of "
                 f"timeline, the evidence edges) and `{ring_id}.csv` (the timeline, an event a row)")
    return "\n".join(lines).rstrip() + "\n"


def json_text(obj: Any) -> str:
    """``obj`` as an export writes it (``rings.json``, a case file): indented, keys sorted, no NaN,
    ending in a newline. ``GET /fraud/case/{ring_id}`` answers the same text, so that a case saved
    from the API is the exported file byte for byte."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _dump(path: Path, obj: Any) -> str:
    """Write ``obj`` as :func:`json_text` and fsync it; the text written."""
    text = json_text(obj)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return text


def case_file(
    ring: Ring, data: HeteroData, tables: ShopTables, explanations: dict[str, Any] | None = None,
    fraud_prob: np.ndarray | None = None, held_out: np.ndarray | None = None, threshold: float | None = None,
    source: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The JSON case document and the CSV timeline of one ring (``docs/fraud_rings.md``);
    ``fraud_prob``: the served probabilities (``None``: no scorer), for the members' labels;
    ``held_out``: the run's held-out scores (:func:`load_held_out`), for the members the scorer
    was trained on; ``threshold``: the validation threshold (:func:`load_threshold`), for the
    members' verdicts; ``source``: where the export comes from (as ``rings.json`` records it), so
    that one case file forwarded on its own can be traced."""
    from shopgraph.graph.explain import evidence_edges, ring_timeline
    from shopgraph.graph.fraud_scorer import account_labels

    timeline = ring_timeline(ring, tables)
    edges = evidence_edges(ring, data)
    behaviour = user_behaviour(tables, ring.members, str(getattr(data, "target", "purchase")))
    created = tables.users.set_index("user_id")["created_at"] if "created_at" in tables.users.columns else None
    labels, in_training = account_labels(data, fraud_prob)
    index = {str(u): n for n, u in enumerate(data["user"].ids)}
    def at_or_above(score: float | None) -> bool | None:
        return None if threshold is None or score is None or not math.isfinite(score) else bool(score >= threshold)

    held_of = _members_held_out(ring, index, held_out)
    prediction = predicted(ring, held_of)  # a trained-on member's held-out score, else its served one
    scored = ring.evidence.get("gnn_mean") is not None  # ranked with fraud scores (as count_flagged)
    members = []
    for k, user in enumerate(ring.members):
        u = index[user]
        held = _held_out_of(held_out, u) if in_training[u] else None
        members.append({
            "user_id": user, "score": ring.member_scores.get(user),
            "flagged": at_or_above(ring.member_scores.get(user) if fraud_prob is not None else None),
            "label": None if labels[u] < 0 else bool(labels[u]), "label_in_training": bool(in_training[u]),
            "held_out_probability": held, "held_out_flagged": at_or_above(held),
            # the verdict on its prediction (held-out where trained on), the one the ring's "flagged" counts
            "predicted_flagged": at_or_above(prediction.get(user)) if scored else None,
            "created_at": _none_if_nan(float(created.get(user, np.nan))) if created is not None else None,
            "days_to_first_activity": _none_if_nan(float(behaviour.age_days[k])),
            "n_purchases": int(behaviour.n_purchases[k]), "purchase_amount": float(behaviour.amount[k]),
            "purchase_velocity": _none_if_nan(float(behaviour.velocity[k])),
            "high_risk_share": _none_if_nan(float(behaviour.high_risk[k])),
        })
    # the most likely fraud first, by prediction (a trained-on member's held-out score), as the
    # explanations choose them and the demo's members table lists them
    members.sort(key=lambda m: (-prediction.get(str(m["user_id"]), -1.0), str(m["user_id"])))
    rows = [index[u] for u in ring.members]
    labelled = bool((labels >= 0).any())  # the shop gives labels at all (as /fraud/rings: 0 of none)
    fraud = int((labels[rows] == 1).sum()) if labelled else None
    trained_on = int(((labels[rows] == 1) & in_training[rows]).sum()) if labelled else None
    from shopgraph.encoders.behaviour import activity_until, features_as_of

    doc = {
        "schema_version": SCHEMA_VERSION, "case_version": CASE_VERSION, "source": source, "threshold": threshold,
        # the account's own behaviour (and the reasons' account age) as of the training period's end;
        # what is counted over the graph (shared devices, quick purchases) up to the last event
        "features_as_of": features_as_of(data), "activity_until": activity_until(data),
        "ring_id": ring.ring_id, "score": ring.score,
        # the ring at a glance, as /fraud/rings and `shopgraph rings` give it: a case file forwarded on
        # its own says how many members are flagged (by prediction) and known, not only member by member
        "flagged": count_flagged(ring, held_of, threshold),
        "known_fraud": fraud, "known_fraud_trained_on": trained_on,
        "members": members, "shared_devices": list(ring.shared_devices),
        "shared_identifiers": ring.evidence.get("shared_identifiers", {"device": list(ring.shared_devices)}),
        "evidence": ring.evidence,
        "evidence_edges": edges.to_dict(orient="records"),
        "timeline": timeline.to_dict(orient="records"),
        "explanations": explanations or {},
    }
    return doc, timeline


SUMMARY_CSV = "rings.csv"  # an export's overview, a ring a row, as `shopgraph rings` lists them
SUMMARY_COLUMNS = ["ring_id", "score", "members", "flagged", "known_fraud", "known_fraud_trained_on",
                   "shared_devices", "predicted_mean", "median_days_to_first_activity", "purchase_velocity",
                   "high_risk_share", "member_ids", "flagged_member_ids", "shared_device_ids"]
# the evidence a summary column reads (the evidence's "account age" is days from sign-up to the first
# event, which the case files' members call days_to_first_activity: the fraud reasons' account age is another)
_SUMMARY_EVIDENCE = {"predicted_mean": "predicted_mean", "median_days_to_first_activity": "median_account_age_days",
                     "purchase_velocity": "purchase_velocity", "high_risk_share": "high_risk_share"}


def _summary_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A case file's ring as a row of the export's ``rings.csv`` (ids joined by spaces: none holds
    one, as the loader strips them; members the most likely fraud first, as the case file has them)."""
    evidence = doc.get("evidence", {})
    members = doc.get("members", [])
    def rounded(value: Any) -> Any:  # a spreadsheet's digits, not a float's seventeen
        return round(value, 4) if isinstance(value, float) else value

    return {"ring_id": doc["ring_id"], "score": rounded(doc["score"]), "members": len(members),
            "flagged": doc.get("flagged"), "known_fraud": doc.get("known_fraud"),
            "known_fraud_trained_on": doc.get("known_fraud_trained_on"), "shared_devices": len(doc.get("shared_devices", [])),
            **{column: rounded(evidence.get(key)) for column, key in _SUMMARY_EVIDENCE.items()},
            "member_ids": " ".join(m["user_id"] for m in members),
            "flagged_member_ids": " ".join(m["user_id"] for m in members if m.get("predicted_flagged")),
            "shared_device_ids": " ".join(doc.get("shared_devices", []))}


def export_cases(
    rings: Sequence[Ring], data: HeteroData, tables: ShopTables, out: str | Path, *,
    hubs: Sequence[Hub] = (), mode: str = "", params: dict[str, Any] | None = None,
    explanations: dict[str, dict[str, Any]] | None = None, source: dict[str, Any] | None = None,
    fraud_prob: np.ndarray | None = None, held_out: np.ndarray | None = None, threshold: float | None = None,
) -> Path:
    """Write ``out/rings.json``, ``out/rings.csv`` (a ring a row: the overview a spreadsheet opens) and
    ``out/cases/<ring_id>.{json,csv,md}`` (the case, its timeline, and a page a person reads:
    :func:`case_markdown`) atomically.

    Everything is written into a temporary sibling folder which is renamed to ``out`` only when
    complete; a failure removes it and leaves any previous export untouched. An existing ``out``
    is replaced only when it is a previous export (it holds ``rings.json`` with a
    ``schema_version``) holding nothing but what an export writes (``rings.json`` and the case
    files of the rings it lists); any other non-empty folder, a previous export with files added
    since, or a file on the way raises ``FileExistsError`` naming them.

    Args:
        rings: the rings to export, ranked.
        data, tables: the shop graph and tables (timelines, evidence edges).
        out: the export folder.
        hubs, mode, params: recorded in ``rings.json``.
        explanations: ``{ring_id: {user_id: explanation dict}}`` written into each case.
        source: provenance recorded in ``rings.json`` (``rings_run``: the run folder and the
            checksums of its graph, embeddings, rings and model files).
        fraud_prob: the served fraud probabilities (``None``: the run has no scorer), for the
            members' labels (:func:`case_file`).
        held_out: the run's held-out scores of its training accounts (:func:`load_held_out`), or
            ``None``.
        threshold: the validation threshold (:func:`load_threshold`), for the members' verdicts,
            or ``None`` (no scorer: every verdict null).

    Returns:
        ``out``.
    """
    out = Path(out)
    out = Path(through_link(out))  # a link to an export: the folder it points at is replaced, the link kept
    problem = _export_problem(out)
    if problem is not None:
        raise FileExistsError(f"export: {problem}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".exporting", dir=out.parent))
    try:
        as_created(tmp, folder=True)
        (tmp / "cases").mkdir()
        _dump(tmp / "rings.json", {**rings_payload(rings, hubs, mode, params or {}, source),
                                   "case_version": CASE_VERSION})
        summary: list[dict[str, Any]] = []
        for ring in rings:
            doc, timeline = case_file(ring, data, tables, (explanations or {}).get(ring.ring_id), fraud_prob,
                                      held_out, threshold, source)
            written = _dump(tmp / "cases" / f"{ring.ring_id}.json", doc)  # the page from that very JSON
            (tmp / "cases" / f"{ring.ring_id}.md").write_text(case_markdown(json.loads(written)), encoding="utf-8")
            summary.append(_summary_row(doc))
            csv = timeline.copy()
            csv.insert(0, "ring_id", ring.ring_id)
            csv.insert(csv.columns.get_loc("user_id") + 1, "member_score",
                       csv["user_id"].map(ring.member_scores).astype(float))
            # the member's label as the case JSON gives it, in words a spreadsheet filter can use
            words = {m["user_id"]: label_words(m["label"], m["label_in_training"]) for m in doc["members"]}
            csv.insert(csv.columns.get_loc("member_score") + 1, "member_label", csv["user_id"].map(words).fillna(""))
            held = {m["user_id"]: m["held_out_probability"] for m in doc["members"]}
            csv.insert(csv.columns.get_loc("member_label") + 1, "member_held_out_probability",
                       csv["user_id"].map(held).astype(float))  # empty for the members not trained on
            # each verdict after its score; empty where there is none (no scorer, not trained on)
            for column, key, after in (("member_served_flagged", "flagged", "member_score"),
                                       ("member_held_out_flagged", "held_out_flagged", "member_held_out_probability"),
                                       ("member_predicted_flagged", "predicted_flagged", "member_held_out_flagged")):
                verdicts = {m["user_id"]: m[key] for m in doc["members"]}
                csv.insert(csv.columns.get_loc(after) + 1, column, csv["user_id"].map(verdicts).astype("boolean"))
            csv.to_csv(tmp / "cases" / f"{ring.ring_id}.csv", index=False)
        pd.DataFrame(summary, columns=SUMMARY_COLUMNS).to_csv(tmp / SUMMARY_CSV, index=False)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def rings_run(
    run_dir: str | Path, top: int = 20, export: Path | None = None, *, detector: RingDetector | None = None,
    explain_members: int = 3, overwrite: bool = False, ring_ids: Sequence[str] = (),
) -> list[Ring]:
    """Detect and rank rings for a run folder; store them and optionally export case files.

    Stores every ranked ring in ``RUN/rings/rings.json`` (without ``detector``, a current file found
    with the default parameters is read instead: neither detected again nor rewritten, so listing
    rings leaves the run as it was); with ``export`` writes the top ``top``
    rings as case files (:func:`export_cases`) including explanations of each ring's
    ``explain_members`` highest-scored members (GNN attributions when ``RUN/model/`` loads,
    behaviour z-scores otherwise).

    Args:
        run_dir: the run folder.
        top: how many rings to return and export.
        export: case export folder, or ``None``; checked before anything is written
            (:func:`check_export`: never the run's own folders).
        overwrite: replace an earlier export in ``export`` (without it, one is refused).
        detector: a configured, unfitted :class:`RingDetector`, fitted now (default parameters
            otherwise).
        explain_members: members explained per exported ring.
        ring_ids: these rings instead of the top ``top`` (in rank order, each once; matched as
            :func:`find_ring` matches them: spaces aside, in any case), to forward a few chosen
            cases; ``ValueError`` naming every unknown one, before anything is written.

    Returns:
        The ``top`` highest-ranked rings, or those of ``ring_ids``.
    """
    return _rings_run(run_dir, top, export, detector, explain_members, overwrite, ring_ids).chosen


class _RingsRun(NamedTuple):
    """What :func:`_rings_run` found and read: ``shopgraph rings`` counts the members' labels on it."""

    chosen: list[Ring]  # the top rings, or those asked for
    data: HeteroData  # the run's graph
    prob: np.ndarray | None  # the served fraud probabilities (None: the run has none)
    total: int  # how many rings were found
    held_out: np.ndarray | None  # the trained-on accounts' held-out scores (None: the run has none)


def _rings_run(run_dir: str | Path, top: int, export: Path | None, detector: RingDetector | None,
               explain_members: int, overwrite: bool, ring_ids: Sequence[str] = ()) -> _RingsRun:
    """:func:`rings_run`, with the graph and fraud probabilities it loaded and how many rings there are."""
    if top < 1:
        raise ValueError(f"top: expected a positive integer (got {top})")
    from shopgraph.graph.pipeline import load_run_tables

    run = RunDir(run_dir)
    if export is not None:  # before anything is written: a refused export leaves the run as it was
        check_export(run, export, overwrite=overwrite)
    made_from = run.sources("graph.pt", optional=("embeddings.safetensors",))
    data = run.load_graph()
    tables = load_run_tables(run)
    prob, no_scorer = _load_fraud_scores(run)
    held_out = load_held_out(run, int(data["user"].num_nodes)) if prob is not None else None
    det = detector or RingDetector()
    params = _params(det)
    stored = None if detector is not None else _stored(run, params)
    if stored is None:
        det.fit(data, prob, tables, held_out)
        rings, hubs, mode = det.rings_, det.hub_devices_, det.mode_
    else:  # what an earlier `shopgraph rings` stored from these very files, with these parameters
        rings, hubs, mode = stored
    chosen = _chosen(rings, top, ring_ids)
    if export is not None:  # read (and check) what the explanations need before anything is written
        from shopgraph.graph.explain import (
            explain_ring_members,
            load_held_out_explainer,
            load_model,
            load_served_explainer,
        )

        model = None if no_scorer else load_model(run)
        served = load_served_explainer(run, data, model, prob)
        held_out_explainer = load_held_out_explainer(run, data, held_out)
        threshold = load_threshold(run) if prob is not None else None
        facts = _feature_facts(tables, data)
    if stored is None:
        run.write_json(RINGS_FILE, _jsonable(rings_payload(rings, hubs, mode, params)),
                       made_from=made_from, stage="shopgraph rings")
    if export is not None:
        explanations = {
            r.ring_id: explain_ring_members(r, data, model, k=explain_members, fraud_prob=prob, served=served,
                                            held_out=held_out_explainer, facts=facts)
            for r in chosen
        }
        source = {"run": str(run.path.resolve()),
                  "made_from": {**made_from, **run.sources(RINGS_FILE, optional=EXPORT_MODEL_FILES)}}
        export_cases(chosen, data, tables, export, hubs=hubs, mode=mode, params=params,
                     explanations=explanations, source=source, fraud_prob=prob, held_out=held_out,
                     threshold=threshold)
    return _RingsRun(chosen, data, prob, len(rings), held_out)


def _params(detector: RingDetector) -> dict[str, Any]:
    """The detector's parameters, as ``rings.json`` records them."""
    return {k: getattr(detector, k) for k in ("hub_threshold", "min_size", "max_component", "seed",
                                              "use_behaviour", "resolution")}


def _stored(run: RunDir, params: dict[str, Any]) -> tuple[list[Ring], list[Hub], str] | None:
    """``(rings, hubs, mode)`` of ``RUN/rings/rings.json`` when it is current (computed from the
    run's present graph and scores, :meth:`RunDir.fresh`), of this schema and found with ``params``
    (detection is seeded: fitting again would find the same rings), else None: listing or exporting
    rings then reads them instead of detecting them again and rewriting the file."""
    if not run.fresh(RINGS_FILE):
        return None
    doc = run.read_json(RINGS_FILE)
    if doc.get("schema_version") != SCHEMA_VERSION or doc.get("params") != _jsonable(params):
        return None
    hubs = [Hub(str(h["node_type"]), str(h["node_id"]), int(h["n_users"])) for h in doc.get("hub_devices", [])]
    return [Ring.from_dict(r) for r in doc["rings"]], hubs, str(doc["mode"])


def _feature_facts(tables: ShopTables, data: HeteroData) -> FeatureFacts:
    """:func:`shopgraph.encoders.behaviour.feature_facts` (or none when the tables do not give the
    graph's user columns: the standardised values are then worded), with the items each account
    bought right after viewing or carting them named, as ``/fraud/score``'s reasons name them."""
    from shopgraph.encoders.behaviour import feature_facts, features_as_of
    from shopgraph.graph.explain import _node_ids
    from shopgraph.graph.fraud_scorer import quick_purchases

    try:
        facts = feature_facts(tables, data)
    except (KeyError, ValueError) as exc:
        logger.warning("explanations without raw values: %s", exc)
        facts = FeatureFacts(as_of=features_as_of(data))
    ids = _node_ids(data, "item")
    items = tables.items.drop_duplicates("item_id").set_index("item_id").reindex(ids)

    def column(name: str) -> list[str]:
        return ([""] * len(ids) if name not in items.columns
                else ["" if pd.isna(v) else str(v) for v in items[name].tolist()])

    quick, titles, categories = quick_purchases(data), column("title"), column("category")
    facts.quick = lambda u: quick.named(u, ids, titles, categories)
    return facts


def _chosen(rings: Sequence[Ring], top: int, ring_ids: Sequence[str]) -> list[Ring]:
    """The first ``top`` of ``rings``, or those ``ring_ids`` name (in rank order, each once);
    ``ValueError`` naming every id that names none."""
    if not ring_ids:
        return list(rings[:top])
    found = {ring_id: find_ring(rings, ring_id) for ring_id in ring_ids}
    unknown = [ring_id for ring_id, at in found.items() if at is None]
    if unknown:
        raise ValueError(f"--ring: unknown {'ring' if len(unknown) == 1 else 'rings'} "
                         f"{', '.join(shown(r) + ring_hint(rings, r) for r in unknown)} "
                         f"({known_ids(len(rings), 'ring', rings[0].ring_id if rings else None)}); nothing was written")
    return [rings[at] for at in sorted({at for at in found.values() if at is not None})]


def check_export(run: RunDir, export: str | Path, *, overwrite: bool = True) -> None:
    """Refuse a case export folder (``--export``) before anything is computed or written: one that
    would replace the run's own files (the run folder, a folder holding it, or one of its own
    folders such as ``rings/``: an export replaces its folder whole), or that
    :func:`export_cases` would refuse (a file, a folder that is not a previous export or holds
    files an export does not write), or, without ``overwrite``, an earlier export.
    ``RUN/cases`` (what ``shopgraph demo`` writes) is fine."""
    target = through_link(Path(export))
    clash = run.replaced_by(target)
    if clash is not None:
        raise ValueError(f"--export: {export} {clash}; a case export replaces the folder it is written to, "
                         "so choose a folder outside the run's own files")
    problem = _export_problem(target, overwrite)
    if problem is not None:
        raise FileExistsError(f"--export: {problem}")


def cli_rings(args: argparse.Namespace) -> int:
    """``shopgraph rings --run RUN [--top N] [--export DIR [--overwrite]]``."""
    from shopgraph.graph.fraud_scorer import account_labels

    if args.overwrite and args.export is None:  # it replaces an export: without one it would do nothing, unsaid
        raise ValueError("--overwrite: only with --export DIR (it replaces an earlier case export there)")
    rings, data, prob, total, held_out = _rings_run(args.run, args.top, args.export, None, 3, args.overwrite,
                                                    args.ring or ())
    labels, trained = account_labels(data, prob)  # trained: labels a scorer was fitted on
    position = {str(u): n for n, u in enumerate(data["user"].ids)}
    threshold = load_threshold(RunDir(args.run)) if prob is not None else None
    print(f"{'ring':6} {'score':>6} {'size':>4} {'devices':>7} {'fraud':>5} {'flagged':>7} {'known':>7} {'trained':>7} "
          f"{'age_d':>7} {'vel/d':>6} {'risk':>5}  members")
    for r in rings:
        ev = r.evidence

        def fmt(key: str, spec: str, ev: dict[str, Any] = ev) -> str:
            value = ev.get(key)
            return format(value, spec) if value is not None else "-"

        known = [position[m] for m in r.members if m in position and labels[position[m]] == 1]
        fitted = int(sum(bool(trained[u]) for u in known))
        held_of = _members_held_out(r, position, held_out)
        prediction = predicted(r, held_of)  # the likeliest fraud named first
        order = sorted(r.members, key=lambda u: (-prediction.get(u, -1.0), u))
        head = ", ".join(order[:4]) + (f", +{len(order) - 4}" if len(order) > 4 else "")
        flagged = count_flagged(r, held_of, threshold)
        print(f"{r.ring_id:6} {r.score:6.3f} {len(r.members):4d} {len(r.shared_devices):7d} "
              f"{fmt('predicted_mean', '.2f'):>5} {'-' if flagged is None else f'{flagged}/{len(r.members)}':>7} "
              f"{f'{len(known)}/{len(r.members)}':>7} {fitted:7d} {fmt('median_account_age_days', '.1f'):>7} "
              f"{fmt('purchase_velocity', '.2f'):>6} {fmt('high_risk_share', '.2f'):>5}  {head}")
    print("score: what ranks the rings, in [0, 1]: a weighted mean of fraud (half of it), how young, fast-buying "
          "and high-risk the members are, how many they are and how tightly they share devices; not a probability "
          "(a household of ordinary accounts on one device scores about 0.3); size: members; devices: devices used "
          "by at least two of them; "
          "fraud: the members' mean predicted fraud probability (a member the scorer was trained on: its held-out "
          "score, the scorer refitted without its label, as `score --leads` and the demo judge it); flagged: "
          "members whose prediction is at or above the validation threshold"
          f"{f' {threshold:.3f}' if threshold is not None else ''}; known: members the shop's data labels "
          "fraud, of all members; trained: how many of those labels the scorer was trained on; age_d: their median "
          "days from sign-up to first activity; vel/d: their median purchases a day from first visit to last "
          "purchase; risk: their median share of purchase amount in high-risk categories; members: the likeliest "
          "fraud first (by prediction)")
    if not args.ring and args.top > total:
        print(f"(--top {args.top:,}: this run has {plural(total, 'ring')}, all listed)")
    if args.export is not None:
        print(f"exported {plural(len(rings), 'ring')} to {args.export}: rings.csv, a ring a row (a spreadsheet opens "
              f"it), rings.json, the same for a program, and in cases/ each ring's summary to read and forward (.md), "
              f"its case file (.json) and its timeline (.csv)")
    return 0


class FraudCases:
    """The fraud side of a run, loaded once, for the service and the HTTP router.

    Args:
        rings: ranked rings.
        data: the shop graph (with user features for explanations).
        tables: the normalised tables (timelines).
        model: the trained GNN, or ``None`` (explanations fall back to behaviour z-scores).
        fraud_prob: ``[U]`` the served fraud probabilities, or ``None``.
        served: a :class:`shopgraph.graph.explain.ServedTreeExplainer` when the run serves boosted
            trees: explanations then attribute the served score; else they attribute the GNN's.
        held_out: ``[U]`` the training accounts' held-out fraud scores (:func:`load_held_out`), or ``None``.
        threshold: the served scorer's validation threshold (:func:`load_threshold`), or ``None``.
        held_out_explainer: a :class:`shopgraph.graph.explain.HeldOutExplainer` of ``held_out``
            (:func:`shopgraph.graph.explain.load_held_out_explainer`), or ``None``.
    """

    def __init__(
        self, rings: Sequence[Ring], data: HeteroData, tables: ShopTables, model: Any = None,
        fraud_prob: np.ndarray | None = None, served: Any = None, held_out: np.ndarray | None = None,
        threshold: float | None = None, held_out_explainer: Any = None, source: dict[str, Any] | None = None,
    ) -> None:
        self._rings = list(rings)
        self.source = source  # where the rings come from, as a case file records it (case_file's source)
        self.data = data
        self.tables = tables
        self.model = model
        self.fraud_prob = fraud_prob
        self.served = served
        self.held_out_prob = held_out
        self.threshold = threshold if fraud_prob is not None else None
        self.held_out_explainer = held_out_explainer
        self._user_index = {str(u): n for n, u in enumerate(data["user"].ids)}
        self._explained: dict[str, Any] = {}
        self._labels: tuple[np.ndarray, np.ndarray] | None = None
        self._member_of: dict[str, list[Ring]] | None = None
        self._device_rows: dict[str, np.ndarray] | None = None  # device_accounts: each device's event rows
        self._facts: FeatureFacts | None = None

    @property
    def facts(self) -> FeatureFacts:
        """The users' behaviour features before standardising (computed on first use, about a
        second on the demo shop), so that explanations give an account's values as people read them
        (:class:`shopgraph.graph.wording.FeatureFacts`); empty for a graph built otherwise."""
        if self._facts is None:
            self._facts = _feature_facts(self.tables, self.data)
        return self._facts

    def value_words(self, user_id: str) -> ValueWords:
        """A feature's value as people read it for ``user_id``, from the feature's name and the value
        the scorer read (:meth:`shopgraph.graph.wording.FeatureFacts.value`); ``KeyError`` for an
        unknown account."""
        u = self._position(user_id)
        facts = self.facts
        return lambda name, value: facts.value(name, value, u)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, detector: RingDetector | None = None) -> FraudCases:
        """Load a run; rings come from ``RUN/rings/rings.json`` when stored, else are detected now."""
        from shopgraph.graph.explain import load_held_out_explainer, load_model, load_served_explainer
        from shopgraph.graph.pipeline import load_run_tables

        run = RunDir(run_dir)
        stored = run.has(RINGS_FILE) and detector is None
        # the checksums of what the cases are made from, taken before it is read (as an export records them)
        made_from = run.sources("graph.pt", optional=("embeddings.safetensors", *((RINGS_FILE,) if stored else ()),
                                                      *EXPORT_MODEL_FILES))
        data = run.load_graph()
        tables = load_run_tables(run)
        prob, no_scorer = _load_fraud_scores(run)
        held_out = load_held_out(run, int(data["user"].num_nodes))
        if stored:
            rings = load_rings(run_dir)
        else:
            rings = (detector or RingDetector()).fit(data, prob, tables, held_out).rings_
        model = None if no_scorer else load_model(run)  # no scorer: the GNN's fraud head was never trained
        return cls(rings, data, tables, model, prob, load_served_explainer(run, data, model, prob), held_out,
                   load_threshold(run), load_held_out_explainer(run, data, held_out),
                   source={"run": str(run.path.resolve()), "made_from": made_from})

    def rings(self, top: int | None = None) -> list[Ring]:
        """The ranked rings (the first ``top`` when given)."""
        return list(self._rings if top is None else self._rings[:top])

    def ring(self, ring_id: str) -> Ring:
        """One ring, by its id (``"R0001"``; surrounding spaces aside), in any case (``"r0001"``) when
        no other ring id is the same up to case; ``KeyError`` naming the id (cut, when long) and what
        ids look like."""
        at = find_ring(self._rings, ring_id) if isinstance(ring_id, str) else None
        if at is None:
            known = known_ids(len(self._rings), "ring", self._rings[0].ring_id if self._rings else None)
            raise KeyError(f"unknown ring_id {shown(ring_id)}{ring_hint(self._rings, ring_id)} ({known})")
        return self._rings[at]

    def has_user(self, user_id: str) -> bool:
        """Whether ``user_id`` is an account of the run."""
        return isinstance(user_id, str) and user_id in self._user_index

    def user_hint(self, user_id: str) -> str:
        """`` (did you mean 'u000858'? ...)`` for an unknown id that is an account's in another
        case (:func:`shopgraph.graph.messages.did_you_mean`), else ``""``."""
        return did_you_mean(self._user_index, user_id.strip()) if isinstance(user_id, str) else ""

    def rings_of(self, user_id: str) -> list[Ring]:
        """The rings ``user_id`` is a member of, ranked (empty: none); ``KeyError`` naming an unknown id."""
        if not self.has_user(user_id):
            raise KeyError(f"unknown user_id {shown(user_id)}")
        if self._member_of is None:  # built whole before it is shared: another thread never sees it half-built
            self._member_of = rings_by_member(self._rings)
        return list(self._member_of.get(user_id, []))

    def labels(self, user_ids: Sequence[str]) -> dict[str, tuple[bool | None, bool]]:
        """``{user_id: (label, label_in_training)}`` for known users: the fraud label in the shop's
        data (``None``: unlabelled) and whether the served scorer was fitted on it
        (:func:`shopgraph.graph.fraud_scorer.account_labels`); ``KeyError`` naming an unknown id."""
        labels, in_training = self._account_labels()
        out: dict[str, tuple[bool | None, bool]] = {}
        for user in user_ids:
            u = self._position(user)
            out[user] = (None if labels[u] < 0 else bool(labels[u]), bool(in_training[u]))
        return out

    def held_out(self, user_ids: Sequence[str]) -> dict[str, float | None]:
        """``{user_id: held-out score}`` for known users: the score of an account the scorer was
        trained on, from trees refitted without its label (``None`` for the other accounts, and
        for all in a run without them); ``KeyError`` naming an unknown id."""
        _, in_training = self._account_labels()
        out: dict[str, float | None] = {}
        for user in user_ids:
            u = self._position(user)
            out[user] = _held_out_of(self.held_out_prob, u) if in_training[u] else None
        return out

    def predictions(self, ring: Ring) -> dict[str, float]:
        """The members' fraud probabilities as the Fraud tab and a lead list judge them
        (:func:`member_predictions`: a trained-on member's held-out score)."""
        return member_predictions(ring, self._user_index, self.held_out_prob)

    def flagged(self, ring: Ring) -> int | None:
        """How many members' predictions are at or above the validation threshold
        (:func:`flagged_members`; ``None`` without a scorer)."""
        return flagged_members(ring, self._user_index, self.held_out_prob, self.threshold)

    def _position(self, user_id: str) -> int:
        """The node index of a known user; ``KeyError`` naming an unknown id."""
        if user_id not in self._user_index:
            raise KeyError(f"unknown user_id {shown(user_id)}")
        return self._user_index[user_id]

    def _account_labels(self) -> tuple[np.ndarray, np.ndarray]:
        from shopgraph.graph.fraud_scorer import account_labels

        if self._labels is None:
            self._labels = account_labels(self.data, self.fraud_prob)
        return self._labels

    def device_accounts(self, device_id: str) -> pd.DataFrame:
        """Every account that used a device, first user first: ``user_id, first_seen, last_seen``
        (epoch seconds; null when the events are untimed), ``events``, ``purchases``, ``label``,
        ``label_in_training``, ``probability`` (served; NaN without a scorer), ``held_out_probability``
        (NaN unless trained on): the whole list an explanation's ten ``others`` are the start of.
        ``KeyError`` naming an unknown device (one of the devices table, or of the events)."""
        if not isinstance(device_id, str):
            raise KeyError(f"unknown device {shown(device_id)}")
        if self._device_rows is None:  # built whole before it is shared, as rings_of's index
            ev = self.tables.events
            used = ev["device_id"] != "" if "device_id" in ev.columns else np.zeros(len(ev), dtype=bool)
            self._device_rows = {str(d): rows for d, rows in ev[used].groupby("device_id").indices.items()} \
                if used.any() else {}
        rows = self._device_rows.get(device_id)
        if rows is None:
            known = self.tables.devices is not None and device_id in set(self.tables.devices["device_id"])
            raise KeyError(f"{'no account used device' if known else 'unknown device'} {shown(device_id)}"
                           f"{'' if known else did_you_mean(self._device_rows, device_id)}")
        target = str(getattr(self.data, "target", "purchase"))
        ev = self.tables.events.iloc[np.sort(rows)]
        by = ev.groupby("user_id", sort=False)
        table = pd.DataFrame({"events": by.size(),
                              "purchases": by["event_type"].apply(lambda t: int((t == target).sum()))})
        if "timestamp" in ev.columns:
            table["first_seen"], table["last_seen"] = by["timestamp"].min(), by["timestamp"].max()
        else:
            table["first_seen"] = table["last_seen"] = None
        table = table.reset_index().rename(columns={"index": "user_id"})
        users = [str(u) for u in table["user_id"]]
        known_users = [u for u in users if u in self._user_index]
        labels, held = self.labels(known_users), self.held_out(known_users)
        table["label"] = [labels[u][0] if u in labels else None for u in users]
        table["label_in_training"] = [bool(labels[u][1]) if u in labels else False for u in users]
        prob = self.fraud_prob
        table["probability"] = [float(prob[self._user_index[u]]) if prob is not None and u in self._user_index
                                else float("nan") for u in users]
        held_of = [held.get(u) for u in users]
        table["held_out_probability"] = [float("nan") if h is None else float(h) for h in held_of]
        order = table["first_seen"].astype(float).fillna(np.inf) if "timestamp" in ev.columns else None
        if order is not None:
            table = table.iloc[np.argsort(order.to_numpy(), kind="stable")]
        return table[["user_id", "first_seen", "last_seen", "events", "purchases", "label", "label_in_training",
                      "probability", "held_out_probability"]].reset_index(drop=True)

    def explain_held_out(self, user_id: str) -> Any:
        """Why a trained-on account's held-out score is what it is (its fold's trees:
        :func:`shopgraph.graph.explain.held_out_explanation`), or ``None`` for an account without one
        (not trained on, a run without held-out trees, or trees that do not reproduce it);
        ``KeyError`` naming an unknown id."""
        from shopgraph.graph.explain import held_out_explanation

        u = self._position(user_id)
        held = self.held_out([user_id])[user_id]
        got = self.held_out_explainer.contributions(u) if self.held_out_explainer is not None else None
        return None if held is None or got is None else held_out_explanation(user_id, held, *got)

    def case(self, ring_id: str, explain_members: int = 3) -> dict[str, Any]:
        """The ring's case document, as ``shopgraph rings --export`` writes ``cases/<ring_id>.json``
        (:func:`case_file`: its members, evidence, timeline and its ``explain_members`` most likely
        fraud members explained), JSON-ready (NaN as ``None``), with ``source`` the run it was loaded
        from and the checksums of the files read (``None`` for cases not loaded from a run folder), so
        that a case file saved from the demo or the API can be traced as an export's can.
        ``KeyError`` naming an unknown ring (:meth:`ring`)."""
        from shopgraph.graph.explain import explain_ring_members

        ring = self.ring(ring_id)
        explained = explain_ring_members(ring, self.data, self.model, k=explain_members, fraud_prob=self.fraud_prob,
                                         served=self.served, held_out=self.held_out_explainer, facts=self.facts)
        doc, _ = case_file(ring, self.data, self.tables, explained, self.fraud_prob, self.held_out_prob,
                           self.threshold, self.source)
        return dict(_jsonable(doc))

    def timeline(self, ring_id: str) -> pd.DataFrame:
        """The ring's events in time order (:func:`shopgraph.graph.explain.ring_timeline`)."""
        from shopgraph.graph.explain import ring_timeline

        return ring_timeline(self.ring(ring_id), self.tables)

    def explain(self, user_id: str) -> Any:
        """Explanation of one user's fraud score (cached); ``KeyError`` naming the id when unknown."""
        from shopgraph.graph.explain import explain_user

        if user_id not in self._user_index:
            raise KeyError(f"unknown user_id {user_id!r}")
        if user_id not in self._explained:
            index = self._user_index[user_id]
            self._explained[user_id] = (
                self.served.explain(self.data, index) if self.served is not None
                else explain_user(self.model, self.data, index, fraud_prob=self.fraud_prob))
        return self._explained[user_id]
