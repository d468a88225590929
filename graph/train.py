"""Training ShopGNN: purchase ranking + fraud classification, early stopping, resumable.

The only views of the graph training reads are ``message_passing_graph(data, "train")`` (the edges
the model may aggregate) and ``target_pairs(data, "train" | "val")`` (supervision and early
stopping). Test data is never touched here.

One code path for CPU and GPU: the device is chosen once, bf16 autocast on CUDA, a
``contextlib.nullcontext()`` elsewhere. Full-batch by default (one pass over the whole train
graph per step, cheap for shops of a few thousand users); mini-batches on request: batches of
users for the ``history`` tower (exact, no extra dependency), neighbour-sampled batches with
``LinkNeighborLoader`` for the message-passing convs when torch-sparse or pyg-lib is installed.

Artifacts (through :class:`~shopgraph.graph.run.RunDir`): ``model/model.safetensors``,
``model/config.json``, ``model/train_config.json``, ``model/history.json``,
``model/train_state.pt`` (optimizer/epoch/RNG checkpoint for ``--resume``; not in the manifest: it
carries its own checksum, :func:`_save_state`), ``embeddings.safetensors`` and ``fraud.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.typing import EdgeType
from tqdm.auto import tqdm

from shopgraph.graph.build import induced_subgraph, message_passing_graph, target_edge_type, target_pairs
from shopgraph.graph.model import CONVS, ModelConfig, Revisit, ShopGNN, sparse_block
from shopgraph.graph.run import RunDir, atomic_write

if TYPE_CHECKING:
    from shopgraph.graph.baselines import ItemKNN

logger = logging.getLogger(__name__)

try:  # neighbour sampling needs pyg-lib or torch-sparse
    import torch_geometric.typing as _pyg_typing

    WITH_SAMPLING: bool = bool(_pyg_typing.WITH_PYG_LIB or _pyg_typing.WITH_TORCH_SPARSE)
except ImportError:  # pragma: no cover
    WITH_SAMPLING = False

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
TRAIN_STAGE = "shopgraph train"  # the command that writes model/, embeddings.safetensors and fraud.json
TREES_FILE = "fraud_trees.ubj"  # the served fraud trees (run folder), when boosted trees serve
HELD_OUT_KEY = "fraud_prob_held_out"  # embeddings.safetensors: training accounts' held-out fraud scores
HELD_OUT_FOLD_KEY = "fraud_held_out_fold"  # embeddings.safetensors: each training account's fold (-1: none)
HELD_OUT_TREES = "fraud_held_out/fold{k}.ubj"  # the trees behind fold k's held-out scores (run folder)
TREE_KINDS: tuple[str, ...] = ("graph_trees", "hybrid")  # the fraud scorers that are boosted trees
RANK_LOSSES = ("softmax", "bpr")
SUPERVISION = ("auto", "temporal", "disjoint", "all")
NEGATIVES = ("uniform", "popularity", "hard")
FRAUD_LOSSES = ("bce", "focal")
DAY_SECONDS = 86400.0
# Defaults of the settings left at None, per conv family (chosen on validation Recall@20 of the
# 5,000-user synthetic shop; see TrainConfig).
CONV_DEFAULTS: dict[str, dict[str, Any]] = {
    "history": {"hidden": 256, "dropout": 0.0, "weight_decay": 1.0, "num_negatives": 0, "temperature": 64.0,
                "horizon_days": 7.0, "cuts_per_step": 3, "user_mlp": 256, "item_counts": False,
                "revisit": True, "aux_weight": 1.0},
    "gnn": {"hidden": 64, "dropout": 0.3, "weight_decay": 0.05, "num_negatives": 512, "temperature": 4.0,
            "horizon_days": 0.0, "cuts_per_step": 1, "user_mlp": 0, "item_counts": False,
            "revisit": False, "aux_weight": 0.0},
}


@dataclass
class TrainConfig:
    """Training settings (saved as ``RUN/model/train_config.json``).

    Attributes:
        epochs: maximum epochs (an epoch is one full-batch step, or one pass over one view's
            pairs in mini-batch mode).
        lr, weight_decay: AdamW settings.
        conv, hidden, layers, dropout, heads, user_mlp, item_counts, revisit, id_embeddings: the model
            (see ``ModelConfig``);
            ``id_embeddings=None`` gives every node type but users an id embedding.
        feature_types: node types whose ``.x`` the model reads; None: every type but users (see
            :meth:`model_config` for why).
        rank_loss: ``"softmax"`` (sampled softmax over the positive and ``num_negatives``
            negatives; ``num_negatives=0`` uses the whole catalogue) or ``"bpr"``.
        negatives: ``"uniform"``, ``"popularity"`` (degree^0.75, logQ-corrected) or ``"hard"``
            (the highest-scored of 4x as many uniform candidates).
        num_negatives: negatives per positive pair.
        temperature: softmax temperature on the dot-product scores.
        batch_pairs: positive pairs per full-batch step (0: all train pairs).
        supervision: how full-batch steps split the train period into edges to aggregate and
            pairs to predict. ``"temporal"``: each step draws a cut time at a random quantile
            (within ``cut_range``) of the train purchases, passes messages over the events before
            it and predicts the new pairs after it, exactly the task evaluated (and the one that
            uses "viewed before, bought later"). ``"disjoint"``: a random ``disjoint_ratio`` of
            the train pairs is predicted with all of their events removed. ``"all"``: predict
            every train pair from a graph that contains it (transductive; overfits). ``"auto"``:
            temporal when edges carry times, else disjoint.
        cut_range, disjoint_ratio: see ``supervision``.
        horizon_days: temporal supervision predicts only the new pairs within this many days
            after the cut (0: up to the end of the train period), matching the length of the
            evaluated periods.
        cuts_per_step: temporal cuts (each with its own pass and loss, averaged) per step.
        aux_weight: weight of the auxiliary ranking loss of temporal supervision: after each cut,
            the user's new (user, item) pairs of the *other* user→item event types within the
            horizon (the items they will view or cart next, not bought then), ranked against the
            whole catalogue with the same user and item embeddings, but an item bias of its own
            (views are not purchases: cheap items are viewed and bought at different rates). It
            gives the item embeddings about four times as many supervised pairs as purchases
            alone (measured on the 5,000-user shop: ~8,000 against ~2,000 per cut). 0 turns it
            off; it needs temporal supervision, and in mini-batch mode the history tower.
        aux_pairs: at most this many auxiliary pairs per cut (sampled afresh each cut). 4096 of the
            5,000-user shop's ~8,000 was as good as all of them on validation (two shops: 0.2724 /
            0.3040 against 0.2690 / 0.3020 with 8192, 0.2710 / 0.3007 with 2048) and cheaper.

    Settings left at None take the defaults of the conv family (:data:`CONV_DEFAULTS`): the
    ``history`` tower (default) was tuned on validation Recall@20 of the 5,000-user shop with
    hidden 256, a full-catalogue softmax at temperature 64, no dropout, AdamW weight decay 1.0, 7-day
    horizons, 3 cuts per step and a 256-wide user MLP (validation Recall@20 0.231 without it, 0.243
    with it; ``item_counts`` 0.241, so it stays off), the revisit term (0.273 with it, calibrated,
    see :func:`calibrate_revisit`) and the auxiliary loss on the next views and carts at weight 1
    (validation up on each of five shops, 0.2714 -> 0.2901 on average; weight 3: better on one of
    two shops); the message-passing convs keep the settings tuned for them.
        fraud_loss: ``"bce"`` (class-weighted) or ``"focal"``.
        focal_gamma: focusing parameter of the focal loss.
        rank_weight, fraud_weight: weights of the two losses.
        group_mix: the ``history`` tower's group-mix channel (``ModelConfig.groups``: "popular
            items of the groups the user shops most", over ``data["item"].group``, the item
            categories), its weight chosen on validation after training
            (:func:`calibrate_group_mix`). None: on for the history tower when the items have
            groups (a ``category`` column), else off; True where it cannot be is an error.
        consider: the ``history`` tower's consideration-set score on the items a user keeps coming
            back to (``ModelConfig.consider``), its weights chosen on validation after training
            (:func:`calibrate_consider`). None: on whenever the revisit term is; True without it
            is an error.
        item_knn: rank of the ``history`` tower's item-neighbour channel (``ModelConfig.knn_rank``:
            ItemKNN's similarities as a low-rank part of the dot product), fitted and weighted on
            validation after training (:func:`calibrate_item_knn`). None: the rank is chosen with
            the weight on validation among :func:`item_knn_ranks` (those of
            :data:`ITEM_KNN_RANKS` at most half the catalogue; measured: 64, 128 and 256 score the
            same on the 2,000-item shop, 2048 beats 256 on Gowalla's 41,000 items), 0: off.
        fraud_detach: the fraud loss trains the fraud head only, not the shared trunk. Embeddings
            shaped by the train labels separate the train users perfectly and mislead the hybrid
            trees fitted on them (measured on the 5,000-user shop: hybrid validation AUPRC 0.47 with a
            label-shaped trunk, 0.69 with a detached head).
        eval_every: epochs between validation passes; None: 5 for full-batch steps, 1 in
            mini-batch mode (an epoch is many steps there: on the 100,000-user shop validation
            peaked by the 3rd epoch and the 5th was already past it); patience: validation passes
            without improvement before stopping (0 disables early stopping).
        mini_batch: train on batches instead of the whole graph per step; None (the default):
            the history tower trains in mini-batches when one full-batch step's full-catalogue
            softmax would not fit (train pairs x items above :data:`FULL_SOFTMAX_MAX`: a
            full-batch step then falls back to sampled negatives and learns slowly — on the
            100,000-user shop 3 mini-batch epochs matched 60 full-batch ones), full-batch
            otherwise (the 5,000-user shop), and the message-passing convs full-batch. Each epoch draws one
            view of the training period as a full-batch step does (``supervision``: for
            ``temporal`` one cut, the events before it aggregated, the new pairs after it
            predicted) and steps through its pairs in batches. The ``history`` tower batches
            *users*: a user's vector reads only their own events, so a batch holds the users of
            about ``batch_size`` predicted pairs with every event of theirs before the cut, their
            auxiliary pairs, and the whole catalogue, and its embeddings equal the full graph's
            rows (:func:`user_batch_graph`); the fraud head steps through the training users in
            batches of ``batch_size`` alongside. No sampling library is needed. The
            message-passing convs sample neighbourhoods instead (``LinkNeighborLoader``; needs
            torch-sparse or pyg-lib; no auxiliary loss there).
        batch_size: predicted pairs per mini-batch (and training users per fraud batch).
        num_neighbors: neighbours sampled per hop and edge type (message-passing convs).
        held_out_folds: folds of the training accounts' held-out fraud scores
            (:func:`shopgraph.graph.fraud_scorer.held_out_probabilities`: the served trees refitted
            without each fold's labels, so that an account the scorer was trained on also gets a
            score that did not see its label); 0: none (its time: 75 s on the demo shop's 3,000
            training accounts, against 26 s for the served fit).
        seed: seeds everything.
        checkpoint_every: epochs between resume checkpoints (when a checkpoint folder is given).
    """

    epochs: int = 300
    lr: float = 0.01
    weight_decay: float | None = None
    conv: str = "history"
    hidden: int | None = None
    layers: int = 2
    dropout: float | None = None
    heads: int = 2
    user_mlp: int | None = None
    item_counts: bool | None = None
    revisit: bool | None = None
    group_mix: bool | None = None
    consider: bool | None = None
    item_knn: int | None = None
    id_embeddings: list[str] | None = None
    feature_types: list[str] | None = None
    rank_loss: str = "softmax"
    negatives: str = "uniform"
    num_negatives: int | None = None
    temperature: float | None = None
    batch_pairs: int = 0
    supervision: str = "auto"
    cut_range: list[float] = field(default_factory=lambda: [0.5, 0.95])
    horizon_days: float | None = None
    cuts_per_step: int | None = None
    aux_weight: float | None = None
    aux_pairs: int = 4096
    disjoint_ratio: float = 0.3
    fraud_loss: str = "bce"
    focal_gamma: float = 2.0
    rank_weight: float = 1.0
    fraud_weight: float = 1.0
    fraud_detach: bool = True
    eval_every: int | None = None
    patience: int = 10
    mini_batch: bool | None = None
    batch_size: int = 1024
    num_neighbors: list[int] = field(default_factory=lambda: [10, 10])
    held_out_folds: int = 5
    seed: int = 0
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.conv in CONVS:
            for name, value in CONV_DEFAULTS["history" if self.conv == "history" else "gnn"].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        checks = [
            ("conv", self.conv, CONVS), ("rank_loss", self.rank_loss, RANK_LOSSES),
            ("negatives", self.negatives, NEGATIVES), ("fraud_loss", self.fraud_loss, FRAUD_LOSSES),
            ("supervision", self.supervision, SUPERVISION),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)} (got {value!r})")
        for name in ("epochs", "eval_every", "batch_size", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer (got {getattr(self, name)})")
        if (self.num_negatives or 0) < 0 or self.batch_pairs < 0 or self.patience < 0:
            raise ValueError(
                f"num_negatives, batch_pairs, patience: expected >= 0 "
                f"(got {self.num_negatives}, {self.batch_pairs}, {self.patience})"
            )
        if self.held_out_folds < 0 or self.held_out_folds == 1:
            raise ValueError(f"held_out_folds: expected 0 (none) or an integer >= 2 (got {self.held_out_folds})")
        if self.horizon_days is not None and self.horizon_days < 0:
            raise ValueError(f"horizon_days: expected >= 0 (got {self.horizon_days})")
        if self.aux_weight is not None and not self.aux_weight >= 0:
            raise ValueError(f"aux_weight: expected >= 0 (got {self.aux_weight})")
        if self.aux_pairs <= 0:
            raise ValueError(f"aux_pairs: expected a positive integer (got {self.aux_pairs})")
        if self.cuts_per_step is not None and self.cuts_per_step <= 0:
            raise ValueError(f"cuts_per_step: expected a positive integer (got {self.cuts_per_step})")
        if self.group_mix and self.conv != "history":
            raise ValueError(f"group_mix: an option of the history tower (got conv={self.conv!r})")
        if self.item_knn is not None and (self.item_knn < 0 or (self.item_knn and self.conv != "history")):
            raise ValueError(f"item_knn: a rank >= 0 of the history tower's item-neighbour channel "
                             f"(got {self.item_knn} with conv={self.conv!r})")
        if self.consider and not self.revisit:
            raise ValueError(f"consider: part of the history tower's revisit term (got consider=True with "
                             f"conv={self.conv!r}, revisit={self.revisit})")
        if self.mini_batch and self.conv != "history" and (self.aux_weight or 0.0) > 0:
            raise ValueError(f"aux_weight: the auxiliary loss is not part of neighbour-sampled mini-batches "
                             f"(got aux_weight={self.aux_weight} with mini_batch and conv={self.conv!r}); "
                             "set aux_weight to 0, or train the history tower")
        if self.mini_batch and self.conv == "history" and self.item_counts:
            raise ValueError("item_counts: counts every user's events on an item, which a batch of users does "
                             "not hold (got item_counts=True with mini_batch); train full-batch or turn it off")
        if len(self.cut_range) != 2 or not 0.0 < self.cut_range[0] <= self.cut_range[1] < 1.0:
            raise ValueError(f"cut_range: expected [lo, hi] with 0 < lo <= hi < 1 (got {self.cut_range})")
        if not 0.0 < self.disjoint_ratio < 1.0:
            raise ValueError(f"disjoint_ratio: expected 0 < ratio < 1 (got {self.disjoint_ratio})")
        if self.lr <= 0 or (self.temperature or 0.0) <= 0:
            raise ValueError(f"lr, temperature: expected > 0 (got {self.lr}, {self.temperature})")

    def model_config(self, data: HeteroData) -> ModelConfig:
        ids = self.id_embeddings
        if ids is None:
            # Users are described by their history, not by a free vector: a user id embedding
            # memorises the train labels and the train pairs.
            ids = [nt for nt in data.node_types if nt != "user"]
        feats = self.feature_types
        if feats is None:
            # User behaviour statistics summarise the whole train period, so inside a temporal
            # training step they reveal what happens after the cut (measured on the 5,000-user
            # shop: val Recall@20 plateaus at 0.10 with them, climbs past 0.14 without). They
            # still reach the fraud scorer through the hybrid head's features.
            feats = [nt for nt in data.node_types if nt != "user"]
        return ModelConfig.from_data(
            data, id_embeddings=ids, feature_types=feats, conv=self.conv, hidden=int(self.hidden or 64),
            layers=self.layers, dropout=float(self.dropout or 0.0), heads=self.heads,
            user_mlp=int(self.user_mlp or 0), item_counts=bool(self.item_counts), fraud_norm=True,
            revisit=bool(self.revisit), groups=self._groups(data),
            consider=bool(self.revisit) and self.consider is not False, knn_rank=self._knn_rank(data),
        )

    def _knn_rank(self, data: HeteroData) -> int:
        """Rank of the item-neighbour channel (0: off); see ``item_knn``."""
        if self.conv != "history":
            return 0
        n_items = int(data["item"].num_nodes) if "item" in data.node_types else 0
        if self.item_knn is not None:
            if self.item_knn > n_items:
                raise ValueError(f"item_knn: rank {self.item_knn} above the {n_items} items")
            return self.item_knn
        return item_knn_ranks(n_items)[0] if n_items >= 2 else 0

    def knn_ranks(self, data: HeteroData) -> tuple[int, ...]:
        """The item-neighbour ranks :func:`calibrate_item_knn` tries: the fixed ``item_knn``, or
        :func:`item_knn_ranks` when it is None (the model is trained at the first, the smallest)."""
        rank = self._knn_rank(data)
        if not rank or self.item_knn is not None:
            return (rank,) if rank else ()
        return item_knn_ranks(int(data["item"].num_nodes))

    def _groups(self, data: HeteroData) -> int:
        """Number of item groups for the group-mix channel (0: off); see ``group_mix``."""
        has = "item" in data.node_types and "group" in data["item"] and data["item"].group.numel() > 0
        if self.group_mix and not has:
            raise ValueError("group_mix: the items have no groups (data['item'].group: build from an items "
                             "table with a 'category' column), or set group_mix to false")
        if self.group_mix is False or self.conv != "history" or not has:
            return 0
        return int(data["item"].group.max()) + 1

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"overrides: unknown training settings {unknown} (known: {sorted(known)})")
        return cls(**raw)


class FraudScorer(NamedTuple):
    """The serving fraud scorer chosen on validation AUPRC."""

    kind: str  # one of graph.fraud_scorer.CANDIDATES, or "none" (no labels)
    threshold: float
    val_auprc: float
    candidates: dict[str, float]  # kind -> validation AUPRC
    head: Any  # what graph.fraud_scorer.fraud_probabilities needs (None for gnn_head)


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    model: ShopGNN
    model_config: ModelConfig
    config: TrainConfig
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    embeddings: dict[str, Tensor]  # serving embeddings from the full graph, {nt: [N, D]}
    revisit: Revisit | None  # the serving revisit term from the full graph (None: the model has none)
    fraud: FraudScorer
    fraud_prob: Tensor  # [U] serving fraud probabilities (NaN when no labels)
    fraud_prob_held_out: Tensor  # [U] training accounts' scores with their labels held out (NaN elsewhere)
    held_out_fold: Tensor  # [U] int64: each training account's held-out fold (-1 for the others)
    held_out_trees: list[bytes | None]  # per fold: the trees behind its held-out scores (None: not fitted)
    epoch_seconds: float  # mean wall time of a training epoch
    mini_batch: bool  # trained in mini-batches (uses_mini_batch), else full-batch steps
    revisit_calibration: dict[str, float]  # val Recall@20 per revisit multiplier (calibrate_revisit)
    group_mix_calibration: dict[str, float]  # val Recall@20 per group-mix weight (calibrate_group_mix)
    consider_calibration: dict[str, float]  # val Recall@20 per consideration-set setting (calibrate_consider)
    item_knn_calibration: dict[str, float]  # val Recall@20 per item-neighbour rank and weight (calibrate_item_knn)


# -- device ---------------------------------------------------------------------------------------
def resolve_device(device: str | None = None) -> torch.device:
    """``cuda`` when present (or asked for), else ``cpu``; an unavailable ``cuda`` is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "expected 'cpu', 'cuda' or 'cuda:N' (N a GPU number), or no --device for cuda when present"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own message is about its parser ("Expected one of ...")
        raise ValueError(f"device: {expected} (got {device!r})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {expected} (got {device!r})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: CUDA is not available on this machine (got {device!r}); use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0 "
                         f"(got {device!r})")
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, a no-op elsewhere (the same code path on both)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- data views -----------------------------------------------------------------------------------
def lean_graph(data: HeteroData) -> HeteroData:
    """Only what the model reads (``x``, node counts, ``edge_index``) plus edge ``time``: faster,
    and samplable."""
    out = HeteroData()
    for nt in data.node_types:
        out[nt].num_nodes = int(data[nt].num_nodes)
        if "x" in data[nt]:
            out[nt].x = data[nt].x.float()
        if "group" in data[nt]:
            out[nt].group = data[nt].group
    for et in data.edge_types:
        for key in ("edge_index", "time"):
            if key in data[et]:
                out[et][key] = data[et][key]
    return out


def fraud_labels(data: HeteroData) -> tuple[Tensor, dict[str, Tensor]]:
    """``y [U]`` and the train/val/test user masks restricted to labelled users (y >= 0)."""
    user = data["user"] if "user" in data.node_types else None
    if user is None or "y" not in user:
        n = int(user.num_nodes) if user is not None else 0
        empty = torch.zeros(n, dtype=torch.bool)
        return torch.full((n,), -1, dtype=torch.long), {"train": empty, "val": empty, "test": empty}
    y = user.y.long()
    masks = {s: user[f"{s}_mask"].bool() & (y >= 0) for s in ("train", "val", "test")}
    return y, masks


class _EpochView(NamedTuple):
    graph: HeteroData  # the edges to aggregate this step
    pairs: Tensor  # [2, P] the pairs to predict this step
    known: Tensor  # [2, K] target pairs visible in ``graph`` (never ranked, as at evaluation)
    aux: Tensor | None = None  # [2, A] new non-target pairs after a temporal cut (views, carts, ...)


def supervision_kind(config: TrainConfig, train_graph: HeteroData, target_et: tuple[str, str, str]) -> str:
    """The supervision actually used (``auto`` resolved; temporal needs edge times)."""
    has_time = "time" in train_graph[target_et]
    if config.supervision == "temporal" and not has_time:
        raise ValueError("supervision: 'temporal' needs edge times (the data has no timestamps); use 'disjoint'")
    if config.supervision == "auto":
        return "temporal" if has_time else "disjoint"
    return config.supervision


def epoch_view(
    kind: str, config: TrainConfig, graph: HeteroData, target_et: tuple[str, str, str], num_items: int,
    gen: torch.Generator,
) -> _EpochView:
    """Split the train-period graph into aggregated edges and predicted pairs for one step.

    Args:
        kind: ``"temporal"``, ``"disjoint"`` or ``"all"`` (see :class:`TrainConfig`).
        config: for ``cut_range`` / ``disjoint_ratio``.
        graph: the train-period graph (``message_passing_graph(data, "train")``, with ``.time``
            on the edges for ``temporal``).
        target_et: the target edge type.
        num_items: catalogue size (pair keys are ``user * num_items + item``).
        gen: sampling generator.
    """
    store = graph[target_et]
    ei = store.edge_index
    keys = ei[0] * num_items + ei[1]
    if kind == "all":
        distinct = torch.unique(keys)
        pairs = torch.stack([distinct // num_items, distinct % num_items])
        return _EpochView(graph, pairs, pairs[:, :0])
    out = copy.copy(graph)
    aux: Tensor | None = None
    if kind == "temporal":
        lo, hi = config.cut_range
        q = lo + (hi - lo) * float(torch.rand((), generator=gen))
        times = store.time.double()
        cut = float(torch.quantile(times, q))
        kept = {et: graph[et].time < cut for et in graph.edge_types if "time" in graph[et]}
        before = torch.unique(keys[kept[target_et]])
        later = ~kept[target_et]
        if config.horizon_days:
            later &= store.time < cut + float(config.horizon_days) * DAY_SECONDS
        after = torch.unique(keys[later])
        predict = after[~torch.isin(after, before)]
        for et, keep in kept.items():
            out[et].edge_index = graph[et].edge_index[:, keep]
            out[et].time = graph[et].time[keep]
        if (config.aux_weight or 0.0) > 0:
            aux = _aux_pairs(graph, target_et, num_items, cut, config.horizon_days or 0.0, after, kept)
    else:  # disjoint: hide every event of the predicted pairs
        distinct = torch.unique(keys)
        n = max(1, int(round(config.disjoint_ratio * distinct.numel())))
        predict = torch.sort(distinct[torch.randperm(distinct.numel(), generator=gen)[:n]]).values
        src_t, _, dst_t = target_et
        for et in graph.edge_types:
            e = graph[et].edge_index
            if (et[0], et[2]) == (src_t, dst_t):
                k = e[0] * num_items + e[1]
            elif (et[0], et[2]) == (dst_t, src_t):
                k = e[1] * num_items + e[0]
            else:
                continue
            keep = ~torch.isin(k, predict)
            out[et].edge_index = e[:, keep]
            if "time" in graph[et]:
                out[et].time = graph[et].time[keep]
        before = distinct[~torch.isin(distinct, predict)]
    return _EpochView(out, torch.stack([predict // num_items, predict % num_items]),
                      torch.stack([before // num_items, before % num_items]),
                      aux)


def _aux_pairs(graph: HeteroData, target_et: tuple[str, str, str], num_items: int, cut: float,
               horizon_days: float, target_after: Tensor, before_cut: dict[EdgeType, Tensor]) -> Tensor:
    """The auxiliary targets of one temporal cut (``TrainConfig.aux_weight``): ``[2, A]`` distinct
    (user, item) pairs of the non-target user→item event types in ``[cut, cut + horizon)``
    (to the end when ``horizon_days`` is 0), new to the user before the cut in every event type,
    and not among the target pairs of the same window (``target_after``, keys ``u * I + i``:
    those are the main loss's positives). ``before_cut``: ``time < cut`` of every timed edge
    type (:func:`epoch_view` computed it)."""
    src_t, _, dst_t = target_et
    seen: list[Tensor] = []
    later: list[Tensor] = []
    for et, before in before_cut.items():
        if (et[0], et[2]) != (src_t, dst_t):
            continue
        store = graph[et]
        k = store.edge_index[0] * num_items + store.edge_index[1]
        seen.append(k[before])
        if et != target_et:
            window = ~before
            if horizon_days:
                window &= store.time < cut + horizon_days * DAY_SECONDS
            later.append(k[window])
    if not later:
        return torch.empty(2, 0, dtype=torch.long, device=target_after.device)
    keys = torch.unique(torch.cat(later))
    keys = keys[~torch.isin(keys, torch.cat(seen)) & ~torch.isin(keys, target_after)]
    return torch.stack([keys // num_items, keys % num_items])


# -- losses ---------------------------------------------------------------------------------------
def _shared_negatives(cfg: TrainConfig, num_items: int, pop: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """``K`` negatives shared by every positive of the step (scored with one matmul), and the
    logQ correction ``[K]`` for popularity sampling (None for uniform)."""
    k = int(cfg.num_negatives or 0)
    if cfg.negatives == "popularity":
        q = pop.pow(0.75)
        q = q / q.sum()
        neg = torch.multinomial(q, k, replacement=True, generator=gen)
        return neg, q.log()[neg]
    return torch.randint(num_items, (k,), generator=gen), None


# Most logits one full-catalogue softmax step may hold ([pairs, items], float32: 200 MB, a few
# times that with gradients); above it the loss samples shared negatives instead.
FULL_SOFTMAX_MAX = 50_000_000
_WARNED_FULL_SOFTMAX: set[int] = set()


def _warn_full_softmax_once(pairs: int, items: int, k: int) -> None:
    if items not in _WARNED_FULL_SOFTMAX:
        _WARNED_FULL_SOFTMAX.add(items)
        logger.warning("full-catalogue softmax over %d pairs x %d items is too large; sampling about %d "
                       "shared negatives per step instead", pairs, items, k)


def rank_loss(
    cfg: TrainConfig, user_emb: Tensor, item_emb: Tensor, pairs: Tensor, pop: Tensor, gen: torch.Generator,
    known: Tensor | None = None, revisit: Revisit | None = None,
) -> Tensor:
    """Ranking loss of the positive ``pairs [2, P]`` (local indices into the two embeddings).

    ``softmax`` scores each positive against ``num_negatives`` negatives shared by the whole step
    (uniform or popularity-sampled with logQ correction; the whole catalogue when
    ``num_negatives`` is 0) or, for ``hard``, against the top-scored of ``4 * num_negatives``
    uniform candidates per positive. ``bpr`` averages ``softplus(neg - pos)`` over the same
    negatives. A sampled negative that happens to be the positive is masked out.

    Args:
        cfg: loss settings.
        user_emb: ``[U, D]``; item_emb: ``[I, D]``.
        pairs: ``LongTensor[2, P]`` of (user, item) positives.
        pop: ``[I]`` item popularity (train pair counts) for popularity negatives.
        gen: the sampling generator (its state is checkpointed).
        known: optional ``[2, K]`` (user, item) pairs the user already has; with the whole
            catalogue as negatives they are left out of each user's softmax, as they are left
            out of the evaluated and served rankings.
        revisit: the model's revisit term on the same graph (added to positives and negatives).
    """
    users, items = pairs[0], pairs[1]
    dev = user_emb.device
    u = user_emb[users].float()
    pos = (u * item_emb[items].float()).sum(-1, keepdim=True)  # [P, 1]
    num_items = item_emb.size(0)
    if revisit is not None:
        pos = pos + revisit.at(users, items.unsqueeze(1), num_items).float()
    log_q: Tensor | None = None
    if cfg.num_negatives == 0 and len(users) * num_items > FULL_SOFTMAX_MAX:
        # [P, I] logits would not fit (100,000 users x 40,000 items needed > 22 GB): fall back to
        # as many shared uniform negatives as fit in the same budget.
        k = int(min(num_items - 1, max(256, FULL_SOFTMAX_MAX // max(len(users), 1))))
        _warn_full_softmax_once(len(users), num_items, k)
        cfg = dataclasses.replace(cfg, num_negatives=k, negatives="uniform")
    if cfg.num_negatives == 0:  # the whole catalogue
        neg_items = torch.arange(num_items, device=dev).expand(len(users), -1)
        neg = ShopGNN.score(u, item_emb.float())
        if revisit is not None:
            neg = neg + revisit.rows(users, num_items).float()
        if known is not None and known.numel():
            kn = known.to(dev)
            mask = sparse_block(kn, torch.ones(kn.size(1), dtype=torch.bool, device=dev), users,
                                torch.arange(num_items, device=dev), num_items)
            neg = neg.masked_fill(mask, float("-inf"))
    elif cfg.negatives == "hard":
        cand = torch.randint(num_items, (len(users), 4 * int(cfg.num_negatives or 0)), generator=gen).to(dev)
        with torch.no_grad():
            top = (u.unsqueeze(1) * item_emb[cand].float()).sum(-1).topk(int(cfg.num_negatives or 0), dim=1).indices
        neg_items = cand.gather(1, top)
        neg = (u.unsqueeze(1) * item_emb[neg_items].float()).sum(-1)
        if revisit is not None:
            neg = neg + revisit.at(users, neg_items, num_items).float()
    else:
        shared, q = _shared_negatives(cfg, num_items, pop, gen)
        shared = shared.to(dev)
        neg_items = shared.expand(len(users), -1)
        neg = ShopGNN.score(u, item_emb[shared].float())
        if revisit is not None:
            neg = neg + revisit.cols(users, shared, num_items).float()
        log_q = None if q is None else q.to(dev)
    if log_q is not None and cfg.rank_loss == "softmax":
        neg = neg - log_q
    neg = neg.masked_fill(neg_items == items.unsqueeze(1), float("-inf"))  # [P, K]
    if cfg.rank_loss == "bpr":
        finite = torch.isfinite(neg)
        return (F.softplus(neg - pos) * finite).sum() / finite.sum().clamp(min=1)
    logits = torch.cat([pos, neg], 1) / float(cfg.temperature or 1.0)
    return F.cross_entropy(logits, torch.zeros(len(users), dtype=torch.long, device=dev))


def fraud_loss(cfg: TrainConfig, logit: Tensor, y: Tensor, pos_weight: float) -> Tensor:
    """Imbalance-aware fraud loss on labelled users: class-weighted BCE, or focal loss."""
    y = y.float()
    if cfg.fraud_loss == "focal":
        p = torch.sigmoid(logit)
        ce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        alpha = pos_weight / (1.0 + pos_weight)  # the positive class's share of the weight
        a_t = alpha * y + (1 - alpha) * (1 - y)
        return (a_t * (1 - p_t).pow(cfg.focal_gamma) * ce).mean() * 2.0
    w = torch.tensor(pos_weight, device=logit.device)
    return F.binary_cross_entropy_with_logits(logit, y, pos_weight=w)


# -- validation -----------------------------------------------------------------------------------
@torch.no_grad()
def embed_graph(model: ShopGNN, graph: HeteroData, device: torch.device) -> dict[str, Tensor]:
    """Eval-mode embeddings of every node of ``graph`` (float32, on CPU)."""
    model.eval()
    with autocast(device):
        emb = model.embed(graph)
    return {nt: e.float().cpu() for nt, e in emb.items()}


@torch.no_grad()
def revisit_graph(model: ShopGNN, graph: HeteroData, device: torch.device,
                  emb: dict[str, Tensor] | None = None) -> Revisit | None:
    """Eval-mode revisit term of ``graph`` (float32, on CPU), None when the model has none;
    ``emb``: the model's embeddings of ``graph`` when the caller has them (:func:`embed_graph`)."""
    model.eval()
    with autocast(device):
        rv = model.revisit_scores(graph, emb)
    return None if rv is None else rv.detach_cpu()


def validation_scores(
    model: ShopGNN, emb: dict[str, Tensor], data: HeteroData, train_pairs: Tensor, val_pairs: Tensor,
    y: Tensor, val_mask: Tensor, revisit: Revisit | None = None,
) -> dict[str, float]:
    """Val Recall@20 (train items excluded) and val fraud AUPRC from train-graph embeddings.

    With a revisit term (the train graph's), Recall@20 is the best over
    :data:`REVISIT_SELECT_MULTIPLIERS` of its scale (``val_revisit_multiplier``): epochs are
    chosen for the ranking they give once calibrated (:func:`calibrate_revisit`).
    """
    from shopgraph.graph.metrics import fraud_metrics

    out: dict[str, float] = {}
    if val_pairs.size(1):
        recalls = _revisit_recalls(emb, revisit, data, train_pairs, val_pairs,
                                   REVISIT_SELECT_MULTIPLIERS if revisit is not None else (1.0,))
        best = max(recalls, key=lambda m: (recalls[m], -m))
        out["val_recall@20"] = recalls[best]
        if revisit is not None:
            out["val_revisit_multiplier"] = best
    if int(val_mask.sum()) and len(torch.unique(y[val_mask])) == 2:
        with torch.no_grad():
            prob = torch.sigmoid(model.fraud_logit(emb["user"][val_mask].to(_param_device(model)))).float().cpu()
        out["val_auprc"] = float(fraud_metrics(y[val_mask].numpy(), prob.numpy())["auprc"])
    return out


def _revisit_recalls(
    emb: dict[str, Tensor], revisit: Revisit | None, data: HeteroData, train_pairs: Tensor, val_pairs: Tensor,
    multipliers: tuple[float, ...],
) -> dict[float, float]:
    """Val Recall@20 of ``dot + multiplier * revisit`` for each multiplier."""
    terms = [None if revisit is None else Revisit(revisit.pairs, revisit.value * m) for m in multipliers]
    return dict(zip(multipliers, _recalls(emb, terms, data, train_pairs, val_pairs)))


def _batch_cells(pairs: Tensor, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(row, col, at)``: where the (user, item) ``pairs`` (sorted by user, as :class:`Revisit`
    keeps them) of ``users`` fall in a ``[len(users), I]`` block (row ``b`` is ``users[b]``), and
    which pairs they are."""
    users = users.to(pairs.device)
    start = torch.searchsorted(pairs[0], users)
    counts = torch.searchsorted(pairs[0], users, right=True) - start
    row = torch.repeat_interleave(torch.arange(users.numel(), device=pairs.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    at = torch.repeat_interleave(start, counts) + torch.arange(row.numel(), device=pairs.device) - first
    return row, pairs[1][at], at


def _plus_revisit(dot: Tensor, rv: Revisit, users: Tensor, cells: dict[int, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """``dot + rv.rows(users)`` (a new tensor) without the dense ``[B, I]`` rows: the same sums where
    a pair is (the pairs are distinct), ``dot`` itself elsewhere. ``cells``: this batch's
    :func:`_batch_cells` by revisit pairs, filled as needed (revisit terms that share their pairs
    find them once a batch)."""
    if id(rv.pairs) not in cells:
        cells[id(rv.pairs)] = _batch_cells(rv.pairs, users)
    row, col, at = cells[id(rv.pairs)]
    return dot.index_put((row, col), rv.value[at].to(dot.dtype), accumulate=True)


def _recalls(
    emb: dict[str, Tensor], revisits: Sequence[Revisit | None], data: HeteroData, train_pairs: Tensor,
    val_pairs: Tensor,
) -> list[float]:
    """Val Recall@20 of ``dot + revisit`` (:func:`purchase_scores`, the same numbers) for each of
    ``revisits``, from one dot product per batch of users for all of them."""
    from shopgraph.graph.metrics import ranking_metrics_many

    n_items = int(data["item"].num_nodes)

    def scores(users: Tensor) -> Iterator[Tensor]:
        dot = ShopGNN.score(emb["user"][users], emb["item"])
        cells: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        for rv in revisits:
            yield dot if rv is None else _plus_revisit(dot, rv, users, cells)

    return [float(m["recall@20"]) for m in ranking_metrics_many(scores, len(revisits), train_pairs, val_pairs,
                                                                n_items, ks=(20,))]


REVISIT_MULTIPLIERS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
REVISIT_SELECT_MULTIPLIERS: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)  # at each validation pass


@torch.no_grad()
def calibrate_revisit(
    model: ShopGNN, emb: dict[str, Tensor], graph: HeteroData, data: HeteroData, train_pairs: Tensor,
    val_pairs: Tensor, device: torch.device,
) -> dict[str, float]:
    """Scale the revisit term for the top of the ranking, chosen on validation Recall@20.

    The softmax loss weighs the whole catalogue: it sets the revisit term's shape (event types,
    time decay) but keeps it small, because the ~20 items a user already viewed would take
    probability mass from the ~85 % of purchases that are new items. A top-20 list has room
    for them: on the 5,000-user shop the loss settles at about 1/16 of the scale that
    maximises validation Recall@20 (x16: 0.239 -> 0.273). So after training, the multiplier in
    :data:`REVISIT_MULTIPLIERS` with the best validation Recall@20 (the smallest on a tie) is
    folded into the model's revisit scale. Never looks at test.

    Args:
        emb: the model's eval-mode embeddings of ``graph`` (:func:`embed_graph`; the revisit
            scale does not change them).
        graph: the train-period graph the validation pairs are predicted from.

    Returns:
        ``{str(multiplier): val Recall@20}`` for every multiplier tried (empty when the model has
        no revisit term or there are no validation pairs).
    """
    if not model.config.revisit or val_pairs.size(1) == 0:
        return {}
    rv = revisit_graph(model, graph, device)
    assert rv is not None
    recalls = _revisit_recalls(emb, rv, data, train_pairs, val_pairs, REVISIT_MULTIPLIERS)
    out = {f"{m:g}": r for m, r in recalls.items()}
    best = max(REVISIT_MULTIPLIERS, key=lambda m: (out[f"{m:g}"], -m))
    model.revisit_log_scale.add_(math.log(best))
    logger.info("revisit term: multiplier %g (val recall@20 %.4f; x1: %.4f)", best, out[f"{best:g}"], out["1"])
    return out


GROUP_WEIGHTS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def calibrate_group_mix(
    model: ShopGNN, graph: HeteroData, data: HeteroData, train_pairs: Tensor, val_pairs: Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Choose the weight of the group-mix channel (``ModelConfig.groups``) on validation.

    Training leaves the weight at 0 (the channel is a fixed function of the graph's counts, not
    learned). Afterwards each weight of :data:`GROUP_WEIGHTS` is tried on top of the calibrated
    revisit term, and the one with the best validation Recall@20 (the smallest on a tie, so 0
    when the channel does not help) is kept in ``model.group_weight``. Never looks at test.

    Args:
        graph: the train-period graph the validation pairs are predicted from.

    Returns:
        ``{str(weight): val Recall@20}`` for every weight tried (empty when the model has no
        channel or there are no validation pairs).
    """
    if not model.config.groups or val_pairs.size(1) == 0:
        return {}
    return choose_channel_weight(model, "group-mix channel", model.group_weight, model.group_columns, GROUP_WEIGHTS,
                                  graph, data, train_pairs, val_pairs, device)


def choose_channel_weight(
    model: ShopGNN, name: str, weight: torch.nn.Parameter, cols: slice, weights: tuple[float, ...],
    graph: HeteroData, data: HeteroData, train_pairs: Tensor, val_pairs: Tensor, device: torch.device,
) -> dict[str, float]:
    """Score validation with an embedding channel (item columns ``cols``, linear in ``weight``) at
    each of ``weights`` (0 first), keep the best (the smallest on a tie) in ``weight``, and return
    ``{str(weight): val Recall@20}``. One embedding pass, and per batch of users one dot product of
    the other columns and one of the channel's, combined for each weight (the weights' scores are
    the model's up to float rounding).
    ``val_pairs`` are ranked from ``graph``, ``train_pairs`` excluded; ``data`` gives the item
    count."""
    from shopgraph.graph.metrics import ranking_metrics_many

    weight.fill_(1.0)
    emb = embed_graph(model, graph, device)
    rv = revisit_graph(model, graph, device, emb)
    n_items = int(data["item"].num_nodes)
    inside = torch.zeros(emb["item"].size(1), dtype=torch.bool)
    inside[cols] = True
    user_rest, item_rest = emb["user"][:, ~inside], emb["item"][:, ~inside]
    user_channel, channel = emb["user"][:, inside], emb["item"][:, inside]

    def scores(users: Tensor) -> Iterator[Tensor]:
        # the other columns' dot product (and the revisit term) once a batch; the channel's dot
        # product once, scaled by each weight (as the model's dot product would, up to rounding)
        rest = ShopGNN.score(user_rest[users], item_rest)
        if rv is not None:
            rest = _plus_revisit(rest, rv, users, {})
        chan = ShopGNN.score(user_channel[users], channel)
        for w in weights:
            yield rest if w == 0 else torch.add(rest, chan, alpha=w)

    recalls = ranking_metrics_many(scores, len(weights), train_pairs, val_pairs, n_items, ks=(20,))
    out = {f"{w:g}": float(m["recall@20"]) for w, m in zip(weights, recalls)}
    best = max(weights, key=lambda w: (out[f"{w:g}"], -w))
    weight.fill_(best)
    logger.info("%s: weight %g (val recall@20 %.4f; off: %.4f)", name, best, out[f"{best:g}"], out["0"])
    return out


ITEM_KNN_RANKS: tuple[int, ...] = (64, 256, 1024, 2048)
ITEM_KNN_WEIGHTS: tuple[float, ...] = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)


def item_knn_ranks(n_items: int) -> tuple[int, ...]:
    """The item-neighbour ranks to try for a catalogue of ``n_items``: those of
    :data:`ITEM_KNN_RANKS` at most half the catalogue, or half the catalogue alone when it is
    smaller than the first (``()`` below 2 items)."""
    cap = n_items // 2
    return tuple(r for r in ITEM_KNN_RANKS if r <= cap) or ((cap,) if cap else ())


def item_knn_setting_name(rank: int, weight: float) -> str:
    """The key of a setting in :func:`calibrate_item_knn`'s result (``history.json``)."""
    return f"rank={rank} weight={weight:g}"


def with_knn_rank(model: ShopGNN, rank: int) -> ShopGNN:
    """The trained model with an item-neighbour channel of ``rank``: the model itself when it has
    that rank, else a copy (every other parameter copied, factors and weight 0, on the model's
    device, in eval mode)."""
    if rank == model.config.knn_rank:
        return model
    out = ShopGNN(dataclasses.replace(model.config, knn_rank=rank))
    missing, unexpected = out.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("knn_")}, strict=False)
    if unexpected or any(not k.startswith("knn_") for k in missing):
        raise RuntimeError(f"with_knn_rank: parameters do not carry over (missing {missing}, unexpected {unexpected})")
    return out.to(next(model.parameters()).device).eval()


@torch.no_grad()
def item_knn_svd(knn: ItemKNN, rank: int) -> tuple[Tensor, Tensor]:
    """The rank-``rank`` truncated SVD of a fitted ItemKNN's neighbour matrix, ``S ≈ (U Σ) Vᵀ``,
    as ``(U Σ, V)`` (``[items, rank]`` each, float32; seeded, so the same ItemKNN gives the same
    factors). Its first ``r`` columns are the factors of rank ``r``, so one SVD at the largest rank
    serves every smaller one.

    scikit-learn's randomized SVD (10 oversamples, 4 LU-normalised power iterations): 4.2x faster
    than ``torch.svd_lowrank`` with the same settings at the same singular values (measured; the
    rank-2048 SVD of a 40,000-item catalogue was most of ``shopgraph train``'s rank search), and the
    same demo-shop choice and scores."""
    from sklearn.utils.extmath import randomized_svd

    sim = knn.similarity_.tocsr().astype(np.float32)
    k = min(rank, min(sim.shape))
    left, sv, right_t = randomized_svd(sim, k, n_oversamples=min(10, min(sim.shape) - k), n_iter=4,
                                       random_state=0)
    return torch.from_numpy(left * sv).float(), torch.from_numpy(np.ascontiguousarray(right_t.T)).float()


@torch.no_grad()
def set_item_knn_factors(model: ShopGNN, knn: ItemKNN, factors: tuple[Tensor, Tensor] | None = None) -> None:
    """Store the model's item-neighbour factors: the first ``knn_rank`` columns of ``factors``
    (:func:`item_knn_svd` of ``knn`` at a rank at least the model's), or, when None, the rank-
    ``knn_rank`` SVD of ``knn`` (``knn_in = U Σ``, ``knn_out = V``). The channel's weight is
    left as it is."""
    rank = model.config.knn_rank
    if not rank:
        raise ValueError("set_item_knn_factors: the model has no item-neighbour channel (knn_rank 0)")
    shape = knn.similarity_.shape
    if shape != (model.knn_in.size(0),) * 2:
        raise ValueError(f"set_item_knn_factors: ItemKNN over {shape[0]} items, the model has "
                         f"{model.knn_in.size(0)}")
    left, right = factors if factors is not None else item_knn_svd(knn, rank)
    if left.shape != right.shape or left.size(0) != shape[0] or left.size(1) < rank:
        raise ValueError(f"set_item_knn_factors: factors of shape {list(left.shape)} and {list(right.shape)} "
                         f"for rank {rank} over {shape[0]} items")
    model.knn_in.copy_(left[:, :rank].to(model.knn_in.device))
    model.knn_out.copy_(right[:, :rank].to(model.knn_out.device))


@torch.no_grad()
def choose_item_knn(
    model: ShopGNN, knn: ItemKNN, ranks: tuple[int, ...], graph: HeteroData, data: HeteroData, train_pairs: Tensor,
    val_pairs: Tensor, device: torch.device,
) -> tuple[ShopGNN, dict[str, float]]:
    """Try the item-neighbour channel at each of ``ranks`` (the leading columns of one
    :func:`item_knn_svd` of ``knn`` at the largest, each weight of :data:`ITEM_KNN_WEIGHTS` scored by
    :func:`choose_channel_weight`) and return the model with the best (rank, weight) on
    validation Recall@20 — the smallest rank on a tie, so the first when the channel does not help
    — and ``{item_knn_setting_name(rank, weight): val Recall@20}``. ``model`` is changed only
    when its own rank is among ``ranks``; the others are copies (:func:`with_knn_rank`)."""
    if not ranks:
        raise ValueError("choose_item_knn: no ranks to try")
    out: dict[str, float] = {}
    best: tuple[float, ShopGNN] | None = None
    factors = item_knn_svd(knn, max(ranks))  # one SVD: its leading columns are every smaller rank's
    for rank in sorted(set(ranks)):
        candidate = with_knn_rank(model, rank)
        set_item_knn_factors(candidate, knn, factors)
        recalls = choose_channel_weight(candidate, f"item-neighbour channel, rank {rank}", candidate.knn_weight,
                                        candidate.knn_columns, ITEM_KNN_WEIGHTS, graph, data, train_pairs,
                                        val_pairs, device)
        out.update({item_knn_setting_name(rank, float(w)): r for w, r in recalls.items()})
        if best is None or max(recalls.values()) > best[0]:
            best = (max(recalls.values()), candidate)
    assert best is not None
    chosen = best[1]
    logger.info("item-neighbour channel: rank %d, weight %g (val recall@20 %.4f)", chosen.config.knn_rank,
                float(chosen.knn_weight), best[0])
    return chosen, out


@torch.no_grad()
def calibrate_item_knn(
    model: ShopGNN, graph: HeteroData, data: HeteroData, train_pairs: Tensor, val_pairs: Tensor,
    device: torch.device, ranks: tuple[int, ...] | None = None,
) -> tuple[ShopGNN, dict[str, float]]:
    """Fit the item-neighbour channel (``ModelConfig.knn_rank``) and choose its rank and weight on
    validation.

    ``itemknn_all_events`` (:func:`graph.baselines.item_neighbours`: shrunk cosine over the train
    purchases and the training period's other events, 200 neighbours an item) is factored by a
    truncated SVD, ``S ≈ (U Σ) Vᵀ``, into ``knn_in = U Σ`` and ``knn_out = V`` (``[items, rank]``;
    seeded, so the same run gives the same factors), at each of ``ranks`` (None: the model's own).
    Then each weight of :data:`ITEM_KNN_WEIGHTS` is tried on top of the calibrated revisit term
    (with the consideration-set score) and group-mix channel, and the rank and weight with the best
    validation Recall@20 are kept (:func:`choose_item_knn`: the smallest on a tie, so weight 0
    when the channel does not help). Never looks at test; the factors come from the training
    period only.

    Returns:
        The model to serve (``model`` itself, or a copy at another rank) and
        ``{item_knn_setting_name(rank, weight): val Recall@20}`` for every setting tried (empty,
        ``model`` unchanged, when it has no channel or there are no validation pairs).
    """
    from shopgraph.graph.baselines import item_neighbours

    if not model.config.knn_rank or val_pairs.size(1) == 0:
        return model, {}
    return choose_item_knn(model, item_neighbours(data, "val"), ranks or (model.config.knn_rank,), graph, data,
                           train_pairs, val_pairs, device)


CONSIDER_SETS: tuple[tuple[float, float], ...] = ((0.15, 4.0), (0.25, 6.0), (0.35, 10.0))  # (share, size)
CONSIDER_WEIGHTS: tuple[float, ...] = (8.0, 16.0, 32.0)
CONSIDER_REVISIT_MULTIPLIERS: tuple[float, ...] = (0.125, 0.5)  # of the learned revisit score next to it


def consider_setting_name(share: float, size: float, multiplier: float, weight: float) -> str:
    """The key of a setting in :func:`calibrate_consider`'s result (``history.json``)."""
    return f"share={share:g} size={size:g} revisit_x={multiplier:g} weight={weight:g}"


@torch.no_grad()
def calibrate_consider(
    model: ShopGNN, graph: HeteroData, data: HeteroData, train_pairs: Tensor, val_pairs: Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Choose the consideration-set score's settings (``ModelConfig.consider``) on validation.

    Training leaves its weight at 0. Afterwards, on top of the calibrated revisit term and
    group-mix channel (before the item-neighbour channel), every ``(share, size)`` of
    :data:`CONSIDER_SETS` with every weight of :data:`CONSIDER_WEIGHTS` is tried, the learned
    revisit score beside it scaled by each of :data:`CONSIDER_REVISIT_MULTIPLIERS` (the new score
    takes over part of what it did), against
    ``"off"`` (the model as it was). The setting with the best validation Recall@20 is kept
    (``"off"`` on a tie): weight, share and size in the model, the multiplier folded into the
    revisit scale. Never looks at test. 19 rankings, from one dot product per batch of users.

    Args:
        graph: the train-period graph the validation pairs are predicted from.

    Returns:
        ``{"off": recall, consider_setting_name(...): recall, ...}`` (empty when the model has no
        consideration-set score or there are no validation pairs).
    """
    if not model.config.consider or val_pairs.size(1) == 0:
        return {}
    emb = embed_graph(model, graph, device)
    model.consider_weight.fill_(0.0)
    learned = revisit_graph(model, graph, device, emb)
    assert learned is not None
    settings: list[tuple[float, float, float, float]] = []
    terms: list[Revisit | None] = [learned]
    model.consider_weight.fill_(1.0)
    for share, size in CONSIDER_SETS:
        model.consider_share.fill_(share)
        model.consider_size.fill_(size)
        rv = revisit_graph(model, graph, device, emb)
        assert rv is not None and torch.equal(rv.pairs, learned.pairs)
        term = rv.value - learned.value
        for m in CONSIDER_REVISIT_MULTIPLIERS:
            for w in CONSIDER_WEIGHTS:
                settings.append((share, size, m, w))
                terms.append(Revisit(learned.pairs, m * learned.value + w * term))
    recalls = _recalls(emb, terms, data, train_pairs, val_pairs)  # one dot product a batch for all of them
    out = {"off": recalls[0]}
    best: tuple[float, float, float, float] | None = None
    best_recall = out["off"]
    for setting, recall in zip(settings, recalls[1:]):
        out[consider_setting_name(*setting)] = recall
        if recall > best_recall:
            best, best_recall = setting, recall
    if best is None:
        model.consider_weight.fill_(0.0)
        logger.info("consideration-set score: off (val recall@20 %.4f)", out["off"])
        return out
    share, size, m, w = best
    model.consider_share.fill_(share)
    model.consider_size.fill_(size)
    model.consider_weight.fill_(w)
    model.revisit_log_scale.add_(math.log(m))
    logger.info("consideration-set score: %s (val recall@20 %.4f; off: %.4f)",
                consider_setting_name(share, size, m, w), best_recall, out["off"])
    return out


def _param_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class _Front:
    """Pareto front of validation points (val Recall@20, val fraud AUPRC) with their weights.

    Ranking and fraud peak at different epochs, and their scales differ; keeping every
    non-dominated checkpoint lets training stop only when *neither* head improves (``bad``
    counts validation passes without a new front point) and then pick the checkpoint with the
    best sum of the two metrics, each divided by its best value on the front.
    """

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.bad = 0

    def add(self, epoch: int, scores: dict[str, float], model: torch.nn.Module) -> None:
        p = (scores.get("val_recall@20", 0.0), scores.get("val_auprc", 0.0))
        if any(q["p"][0] >= p[0] and q["p"][1] >= p[1] for q in self.points):
            self.bad += 1  # dominated by (or equal to) an earlier checkpoint
            return
        self.points = [q for q in self.points if not (p[0] >= q["p"][0] and p[1] >= q["p"][1])]
        self.points.append({"epoch": epoch, "p": p, "state": _state_dict_cpu(model)})
        self.bad = 0

    def best(self) -> tuple[dict[str, Any], float] | None:
        if not self.points:
            return None
        tops = [max(q["p"][i] for q in self.points) for i in (0, 1)]

        def score(q: dict[str, Any]) -> float:
            return sum(q["p"][i] / tops[i] for i in (0, 1) if tops[i] > 0)

        chosen = max(self.points, key=lambda q: (score(q), q["epoch"]))
        return chosen, score(chosen)


# -- checkpoints ----------------------------------------------------------------------------------
def _state_dict_cpu(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_model(model: ShopGNN, folder: Path) -> None:
    """``folder/model.safetensors`` + ``folder/config.json`` (atomic writes)."""
    tensors = {k: v.contiguous() for k, v in _state_dict_cpu(model).items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, str(p)))
    text = model.config.to_json()
    atomic_write(folder / "config.json", lambda p: p.write_text(text, encoding="utf-8"))


def load_model(folder: Path, device: str | torch.device = "cpu") -> ShopGNN:
    """Rebuild a :class:`ShopGNN` from ``folder/config.json`` and ``folder/model.safetensors``."""
    config_path, weights = Path(folder) / "config.json", Path(folder) / "model.safetensors"
    for p in (config_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"model folder {folder}: no {p.name} (train the run first)")
    model = ShopGNN(ModelConfig.from_json(config_path.read_text(encoding="utf-8")))
    state = load_file(str(weights))
    want, got = set(model.state_dict()), set(state)
    if want != got:
        missing, unexpected = sorted(want - got), sorted(got - want)
        raise ValueError(
            f"model folder {folder}: retrain this run (model layout changed: {len(missing)} missing "
            f"parameters {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"model folder {folder}: retrain this run (model layout changed: {err})") from err
    return model.to(device).eval()


# The resume checkpoint is one line ``STATE_MAGIC sha256=<hex of the rest>`` and then ``torch.save``'s
# bytes: the checksum travels in the same atomic write, so a damaged file (a flipped byte, a copy
# cut short) is refused rather than resumed, and no interruption leaves a file and its checksum apart.
STATE_MAGIC = b"shopgraph-train-state/1"
_STATE_KEYS = ("epoch", "model", "optimizer", "torch_rng", "gen_rng", "history", "front", "train_config")


def _to_cpu(obj: Any) -> Any:
    """A copy of ``obj`` (an optimizer's ``state_dict()``) with every tensor copied to the CPU: the
    checkpoint then resumes on any machine (the optimizer moves its state to the parameters' device
    when it loads it)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    payload = STATE_MAGIC + b" sha256=" + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body
    atomic_write(path, lambda p: p.write_bytes(payload))


def _load_state(path: Path) -> dict[str, Any]:
    """The resume checkpoint written by :func:`_save_state`, its checksum checked, tensors on the
    CPU (``map_location``: one saved on a GPU resumes on a machine without one); a ``ValueError``
    naming the file when it is damaged or not a checkpoint."""
    fix = "train without --resume (a new training replaces it), or delete it"
    raw = path.read_bytes()
    head, newline, body = raw.partition(b"\n")
    magic, _, digest = head.partition(b" sha256=")
    if not newline or magic != STATE_MAGIC or len(digest) != 64:
        raise ValueError(f"resume: {path} is not a resume checkpoint with a checksum (damaged, or written by an "
                         f"older shopgraph); {fix}")
    if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
        raise ValueError(f"resume: {path} does not match its checksum (damaged or cut short); {fix}")
    try:
        # weights_only=False is safe here: the file is ours and its checksum was just verified.
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; the message names the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"resume: {path} cannot be read ({type(exc).__name__}: {first}); {fix}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"resume: {path} is not a resume checkpoint (no {missing}); {fix}")
    result: dict[str, Any] = state
    return result


# -- training -------------------------------------------------------------------------------------
def _log_epoch(line: str) -> None:
    logger.info(line)


def _mini_batches(
    cfg: TrainConfig, link_graph: HeteroData, fraud_graph: HeteroData, et: tuple[str, str, str], pairs: Tensor,
    train_users: Tensor,
) -> Iterator[tuple[HeteroData, HeteroData | None]]:
    """One epoch of (link batch, fraud batch) pairs from neighbour sampling: the links ``pairs``
    are predicted from neighbourhoods sampled in ``link_graph`` (the epoch's view: for temporal
    supervision only the events before its cut), the fraud batches from ``fraud_graph`` (the whole
    train period, as at evaluation)."""
    from torch_geometric.loader import LinkNeighborLoader, NeighborLoader
    from torch_geometric.sampler import NegativeSampling

    neighbors = {e: list(cfg.num_neighbors) for e in fraud_graph.edge_types}  # the view keeps every edge type
    links = LinkNeighborLoader(
        link_graph, num_neighbors=neighbors, edge_label_index=(et, pairs), batch_size=cfg.batch_size,
        shuffle=True, neg_sampling=NegativeSampling("triplet", amount=max(int(cfg.num_negatives or 0), 1)),
    )
    fraud_iter: Iterator[HeteroData] | None = None
    if train_users.numel():
        nodes = NeighborLoader(fraud_graph, num_neighbors=neighbors, input_nodes=("user", train_users),
                               batch_size=cfg.batch_size, shuffle=True)
        fraud_iter = iter(nodes)
    for batch in links:
        fb = None
        if fraud_iter is not None:
            fb = next(fraud_iter, None)
            if fb is None:
                fraud_iter = iter(nodes)
                fb = next(fraud_iter)
        yield batch, fb


def _mini_batch_view(
    kind: str, config: TrainConfig, graph: HeteroData, target_et: tuple[str, str, str], num_items: int,
    gen: torch.Generator, tries: int = 10,
) -> _EpochView:
    """The epoch's supervision for mini-batch training: one :func:`epoch_view` (a temporal cut, a
    disjoint hold-out, or everything for ``"all"``) whose pairs the link batches predict. A view
    without pairs (a cut with no new purchases within the horizon) is drawn again, ``tries`` times
    at most, then refused naming the settings to change."""
    for _ in range(tries):
        view = epoch_view(kind, config, graph, target_et, num_items, gen)
        if view.pairs.size(1):
            return view
    raise ValueError(f"supervision: {tries} {kind} views of the training period had no new {target_et[1]!r} pairs "
                     f"to predict (cut_range={config.cut_range}, horizon_days={config.horizon_days}); widen "
                     "them or use supervision='all'")


def user_batch_graph(graph: HeteroData, users: Tensor) -> HeteroData:
    """What the ``history`` tower reads to embed ``users``: their own user→item events.

    Users are numbered ``0..B-1`` in the order of ``users`` (``n_id``: their indices in
    ``graph``), every item is kept with all of its attributes, other node types are left empty
    (the tower does not read them), and the graph's clock (:func:`~shopgraph.graph.build.event_clock`)
    travels along, so event ages, and with them the user and item embeddings and
    the revisit term of these users, equal the rows of a pass over the whole ``graph`` — for
    what training fits: the calibrated parts that read every user's events (the group-mix and
    item-neighbour channels, the consideration-set score, ``item_counts``) are off in training.

    Args:
        graph: a graph with ``user`` and ``item`` nodes (a training view, or the train graph).
        users: ``LongTensor[B]`` distinct user indices of ``graph``.
    """
    edge_types = [et for et in graph.edge_types if et[0] == "user" and et[2] == "item"]
    return induced_subgraph(graph, {"user": users, "item": None}, edge_types)


def _user_batch(graph: HeteroData, users: Tensor, pairs: Tensor, known: Tensor,
                aux: Tensor | None) -> tuple[HeteroData, Tensor, Tensor, Tensor | None]:
    """:func:`user_batch_graph` of ``users``, and the predicted, known and auxiliary ``[2, P]`` pairs
    of those users with the users numbered as there (on the device of ``users``)."""
    local = torch.full((int(graph["user"].num_nodes),), -1, dtype=torch.long, device=users.device)
    local[users] = torch.arange(users.numel(), device=users.device)

    def of_batch(p: Tensor) -> Tensor:
        p = p.to(users.device)
        keep = local[p[0]] >= 0
        return torch.stack([local[p[0][keep]], p[1][keep]])

    return user_batch_graph(graph, users), of_batch(pairs), of_batch(known), None if aux is None else of_batch(aux)


def _user_batches(pairs: Tensor, aux: Tensor | None, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """The users of one view's ``pairs`` (and ``aux`` pairs), shuffled and split into
    ``ceil(P / batch_size)`` batches of about equal numbers of pairs (main and auxiliary)."""
    both = pairs[0] if aux is None or not aux.numel() else torch.cat([pairs[0], aux[0]])
    users, count = torch.unique(both, return_counts=True)
    order = torch.randperm(users.numel(), generator=gen)
    users, count = users[order], count[order]
    n_batches = max(1, math.ceil(pairs.size(1) / batch_size))
    total = int(count.sum())
    which = (torch.cumsum(count, 0) - 1) * n_batches // max(total, 1)
    return [b for b in (users[which == k] for k in range(n_batches)) if b.numel()]


def _history_mini_batch_epoch(
    model: ShopGNN, opt: torch.optim.Optimizer, config: TrainConfig, view: _EpochView, train_graph: HeteroData,
    pop: Tensor, gen: torch.Generator, aux_bias: Tensor | None, fraud: tuple[Tensor, Tensor, float] | None,
    dev: torch.device,
) -> list[tuple[float, float, float]]:
    """One mini-batch epoch of the ``history`` tower over one ``view`` (:class:`TrainConfig`
    ``mini_batch``): per batch of users, the ranking loss of their predicted pairs (and of their
    auxiliary pairs when ``aux_bias`` is given) from their own events before the cut, and the fraud
    loss of one share of the training users (``fraud = (labels, train users, positive weight)``)
    from their whole training-period events. Returns ``(rank, fraud, aux)`` losses per step."""
    aux_all = view.aux if aux_bias is not None else None
    if aux_all is not None and aux_all.size(1) > config.aux_pairs:
        aux_all = aux_all[:, torch.randperm(aux_all.size(1), generator=gen)[: config.aux_pairs]]
    batches = _user_batches(view.pairs, aux_all, config.batch_size, gen)
    fraud_chunks: list[Tensor] = []
    if fraud is not None:
        tr_users = fraud[1]
        fraud_chunks = list(torch.tensor_split(tr_users[torch.randperm(tr_users.numel(), generator=gen)], len(batches)))
    zero = torch.zeros((), device=dev)
    out: list[tuple[float, float, float]] = []
    for k, users in enumerate(batches):
        sub, pairs, known, aux = _user_batch(view.graph, users, view.pairs, view.known, aux_all)
        sub, pairs = sub.to(dev), pairs.to(dev)
        with autocast(dev):
            emb = model.embed(sub)
            lr_, la, lf = zero, zero, zero
            if pairs.size(1):
                lr_ = rank_loss(config, emb["user"], emb["item"], pairs, pop, gen, known, model.revisit_scores(sub))
            if aux is not None and aux_bias is not None and aux.size(1):
                la = rank_loss(config, *_aux_embeddings(model, emb, aux_bias), aux.to(dev), pop, gen)
            if fraud is not None and fraud_chunks[k].numel():
                chunk = fraud_chunks[k]
                fsub = user_batch_graph(train_graph, chunk).to(dev)
                with torch.no_grad() if config.fraud_detach else contextlib.nullcontext():
                    f_emb = model.embed(fsub)["user"]
                lf = fraud_loss(config, model.fraud_logit(f_emb).float(), fraud[0][chunk].to(dev), fraud[2])
            loss = config.rank_weight * (lr_ + float(config.aux_weight or 0.0) * la) + config.fraud_weight * lf
        if loss.requires_grad:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append((float(lr_.detach()), float(lf.detach()), float(la.detach())))
    return out


def _aux_embeddings(model: ShopGNN, emb: dict[str, Tensor], aux_bias: Tensor) -> tuple[Tensor, Tensor]:
    """User and item embeddings for the auxiliary loss: the model's, with the item bias replaced
    by ``aux_bias [I]`` (the ``history`` tower's last column is its bias, against a constant 1 in
    the user's) or, for the message-passing convs, appended as a column against a constant 1."""
    user, item = emb["user"], emb["item"]
    bias = aux_bias.unsqueeze(1).to(item.dtype)
    if model.config.conv == "history":
        return user, torch.cat([item[:, :-1], bias], 1)
    ones = torch.ones(user.size(0), 1, device=user.device, dtype=user.dtype)
    return torch.cat([user, ones], 1), torch.cat([item, bias], 1)


def uses_mini_batch(config: TrainConfig, n_train_pairs: int, num_items: int) -> bool:
    """Whether :func:`train` steps through mini-batches: ``config.mini_batch`` when set, else
    (``None``) for the ``history`` tower without ``item_counts`` when a full-batch step's
    full-catalogue softmax (every train pair against every item) exceeds
    :data:`FULL_SOFTMAX_MAX` logits."""
    if config.mini_batch is not None:
        return config.mini_batch
    if config.conv != "history" or config.item_counts or (config.num_negatives or 0) > 0:
        return False
    return n_train_pairs * num_items > FULL_SOFTMAX_MAX


def _check_sampling() -> None:
    if not WITH_SAMPLING:
        raise ImportError(
            "mini_batch: neighbour sampling needs torch-sparse or pyg-lib; "
            "`pip install torch-sparse` (or pyg-lib) for your torch version, or train full-batch"
        )


def train(
    data: HeteroData,
    config: TrainConfig,
    *,
    device: str | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train :class:`ShopGNN` on ``data`` and pick the serving fraud scorer.

    Args:
        data: the full graph from ``build_graph`` with features (``.x``) where available.
        config: training settings.
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when present).
        checkpoint_dir: folder for the resume checkpoint (``train_state.pt``), written every
            ``config.checkpoint_every`` epochs.
        resume: continue from ``checkpoint_dir/train_state.pt``; the result equals that of an
            uninterrupted run with the same config. Refused (``ValueError`` naming the file) when
            the checkpoint is damaged (its checksum), made with other settings (compared as they
            resolve on ``data``: no batching flag equals the mode it chooses), or already past
            ``config.epochs``.

    Returns:
        A :class:`TrainResult` with the best model (by the validation criterion), the history,
        serving embeddings from the full graph and the chosen fraud scorer.
    """
    if not isinstance(data, HeteroData):
        raise TypeError(f"data: expected a HeteroData (got {type(data).__name__})")
    for nt in ("user", "item"):
        if nt not in data.node_types:
            raise ValueError(f"data: expected node types 'user' and 'item' (got {data.node_types})")
    if target_edge_type(data) not in data.edge_types:
        raise ValueError(f"data: no target edge type {target_edge_type(data)} (got {data.edge_types})")
    train_pairs = target_pairs(data, "train")
    num_items = int(data["item"].num_nodes)
    mini_batch = uses_mini_batch(config, train_pairs.size(1), num_items)
    if mini_batch and config.conv != "history":
        _check_sampling()
    eval_every = config.eval_every if config.eval_every is not None else 1 if mini_batch else 5
    if mini_batch and config.mini_batch is None:
        logger.info("mini-batch training: a full-batch step over %d train pairs x %d items would sample "
                    "negatives; training in batches of users (--full-batch to override)", train_pairs.size(1), num_items)
    if resume and checkpoint_dir is None:
        raise ValueError("resume: needs checkpoint_dir (got None)")
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    train_graph = lean_graph(message_passing_graph(data, "train"))
    target_et = target_edge_type(data)
    val_pairs = target_pairs(data, "val")
    if train_pairs.size(1) == 0:
        raise ValueError(f"data: no training pairs of the target {data.target!r}")
    pop = torch.bincount(train_pairs[1], minlength=num_items).float() + 1.0
    y, masks = fraud_labels(data)
    tr_users = masks["train"].nonzero().view(-1)
    n_pos = int((y[tr_users] == 1).sum())
    n_neg = int((y[tr_users] == 0).sum())
    use_fraud = n_pos > 0 and n_neg > 0 and config.fraud_weight > 0
    pos_weight = n_neg / max(n_pos, 1)

    model_config = config.model_config(data)
    model = ShopGNN(model_config).to(dev)
    # The revisit term's few weights are a calibration, not a representation: weight decay (1.0
    # for the history tower) pulls its scale toward exp(0) = 1 against the data (20 -> 8 on the
    # 5,000-user shop).
    no_decay = [p for n, p in model.named_parameters() if n.startswith("revisit_")]
    # The auxiliary loss's item bias is a training-only parameter (not part of the model): like
    # the revisit weights it is exempt from weight decay (as measured).
    aux_bias = torch.nn.Parameter(torch.zeros(num_items, device=dev))
    use_aux = (config.aux_weight or 0.0) > 0
    if use_aux:
        no_decay.append(aux_bias)
    decay = [p for n, p in model.named_parameters() if not n.startswith("revisit_")]
    groups = [{"params": decay}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=float(config.weight_decay or 0.0))
    gpu_graph = train_graph.to(dev)
    sup_kind = supervision_kind(config, train_graph, target_et)
    if use_aux and sup_kind != "temporal":
        logger.info("aux_weight: the auxiliary loss needs temporal supervision (edge times); off with %s "
                    "supervision", sup_kind)
    y_dev, tr_dev = y.to(dev), tr_users.to(dev)

    history: list[dict[str, float]] = []
    front = _Front()
    start_epoch = 1
    state_path = checkpoint_dir / STATE_FILE if checkpoint_dir is not None else None
    if resume:
        assert state_path is not None
        if not state_path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {state_path} (train without --resume first)")
        state = _load_state(state_path)
        # settings that only act after the epochs (how many epochs, the held-out fraud scores) may differ
        after = ("epochs", "held_out_folds")
        saved = {k: v for k, v in dict(state["train_config"]).items() if k not in after}
        now = {k: v for k, v in dataclasses.asdict(config).items() if k not in after}
        # settings left to their default compare as what they resolve to on this graph, on both
        # sides: no batching flag is --full-batch where full-batch is the default, and the reverse
        auto_mini_batch = uses_mini_batch(dataclasses.replace(config, mini_batch=None), train_pairs.size(1), num_items)
        for side in (saved, now):
            side["mini_batch"] = auto_mini_batch if side.get("mini_batch") is None else side["mini_batch"]
        if (saved.get("eval_every") is None) != (now.get("eval_every") is None):  # both None: the same rule
            for side in (saved, now):
                side["eval_every"] = (1 if side["mini_batch"] else 5) if side.get("eval_every") is None \
                    else side["eval_every"]
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            raise ValueError(f"resume: the checkpoint was made with different settings {diff}; "
                             "train without --resume")
        if int(state["epoch"]) > config.epochs:
            raise ValueError(f"resume: the checkpoint at {state_path} is after epoch {int(state['epoch'])}, past the "
                             f"{config.epochs} epochs asked for; resume with --epochs {int(state['epoch'])} or more, "
                             "or train without --resume")
        missing = sorted(set(model.state_dict()) - set(state["model"]))
        unexpected = sorted(set(state["model"]) - set(model.state_dict()))
        if missing or unexpected:  # e.g. a checkpoint of an older model layout
            raise ValueError(f"resume: the checkpoint at {state_path} does not fit this model (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}); train without --resume")
        model.load_state_dict(state["model"])
        if "aux_bias" in state:
            with torch.no_grad():
                aux_bias.copy_(state["aux_bias"].to(dev))
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["gen_rng"])
        history, front = state["history"], state["front"]
        start_epoch = state["epoch"] + 1
        logger.info("resume: continuing after epoch %d", state["epoch"])

    epoch_times: list[float] = [h["seconds"] for h in history]
    stopped = front.bad >= config.patience > 0
    bar = tqdm(range(start_epoch, config.epochs + 1), desc="train", disable=None, leave=False,
               initial=start_epoch - 1, total=config.epochs)
    for epoch in bar:
        if stopped:
            break
        t0 = time.perf_counter()
        model.train()
        losses: list[tuple[float, float]] = []
        aux_losses: list[float] = []
        if mini_batch and config.conv == "history":
            view = _mini_batch_view(sup_kind, config, train_graph, target_et, num_items, gen)
            step_losses = _history_mini_batch_epoch(model, opt, config, view, train_graph, pop, gen, aux_bias if use_aux
                                                    else None, (y, tr_users, pos_weight) if use_fraud else None, dev)
            losses.extend((a, b) for a, b, _ in step_losses)
            aux_losses.extend(c for _, _, c in step_losses)
        elif mini_batch:
            view = _mini_batch_view(sup_kind, config, train_graph, target_et, num_items, gen)
            for batch, fb in _mini_batches(config, view.graph, train_graph, target_et, view.pairs, tr_users):
                batch = batch.to(dev)
                with autocast(dev):
                    emb = model.embed(batch)
                    src = batch[target_et[0]].src_index
                    pos, neg = batch[target_et[2]].dst_pos_index, batch[target_et[2]].dst_neg_index
                    u = emb["user"][src].float()
                    s_pos = (u * emb["item"][pos].float()).sum(-1, keepdim=True)
                    s_neg = (u.unsqueeze(1) * emb["item"][neg.view(len(src), -1)].float()).sum(-1)
                    if config.rank_loss == "bpr":
                        lr_ = F.softplus(s_neg - s_pos).mean()
                    else:
                        logits = torch.cat([s_pos, s_neg], 1) / float(config.temperature or 1.0)
                        lr_ = F.cross_entropy(logits, torch.zeros(len(src), dtype=torch.long, device=dev))
                    lf = torch.zeros((), device=dev)
                    if use_fraud and fb is not None:
                        fb = fb.to(dev)
                        seeds = fb["user"].batch_size
                        gid = fb["user"].n_id[:seeds]
                        fb_emb = model.embed(fb)["user"][:seeds]
                        if config.fraud_detach:
                            fb_emb = fb_emb.detach()
                        lf = fraud_loss(config, model.fraud_logit(fb_emb).float(), y_dev[gid], pos_weight)
                    loss = config.rank_weight * lr_ + config.fraud_weight * lf
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append((float(lr_.detach()), float(lf.detach())))
        else:
            n_cuts = int(config.cuts_per_step or 1) if sup_kind != "all" else 1
            with autocast(dev):
                lr_ = torch.zeros((), device=dev)
                la = torch.zeros((), device=dev)
                for _ in range(n_cuts):
                    view = epoch_view(sup_kind, config, gpu_graph, target_et, num_items, gen)
                    pairs = view.pairs.to(dev)
                    if pairs.size(1) == 0:
                        continue
                    if config.batch_pairs and pairs.size(1) > config.batch_pairs:
                        pick = torch.randperm(pairs.size(1), generator=gen)[: config.batch_pairs].to(dev)
                        pairs = pairs[:, pick]
                    aux = None
                    if view.aux is not None and view.aux.size(1):
                        aux = view.aux.to(dev)
                        if aux.size(1) > config.aux_pairs:
                            aux = aux[:, torch.randperm(aux.size(1), generator=gen)[: config.aux_pairs].to(dev)]
                    graph, known = view.graph, view.known
                    if config.conv == "history":
                        # the loss reads only the users with pairs, and the tower embeds each user from
                        # their own events: embed those users alone (the same rows, a fraction of the work)
                        users = torch.unique(pairs[0] if aux is None else torch.cat([pairs[0], aux[0]]))
                        graph, pairs, known, aux = _user_batch(graph, users, pairs, known, aux)
                    emb = model.embed(graph)
                    lr_ = lr_ + rank_loss(config, emb["user"], emb["item"], pairs, pop, gen, known,
                                          model.revisit_scores(graph)) / n_cuts
                    if aux is not None:
                        la = la + rank_loss(config, *_aux_embeddings(model, emb, aux_bias), aux, pop, gen) / n_cuts
                lf = torch.zeros((), device=dev)
                if use_fraud:
                    # fraud is predicted from the whole train-period graph, as at evaluation
                    if config.fraud_detach:
                        with torch.no_grad():
                            user_emb = model.embed(gpu_graph)["user"]
                    else:
                        user_emb = model.embed(gpu_graph)["user"]
                    lf = fraud_loss(config, model.fraud_logit(user_emb[tr_dev]).float(), y_dev[tr_dev], pos_weight)
                loss = config.rank_weight * (lr_ + float(config.aux_weight or 0.0) * la) + config.fraud_weight * lf
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append((float(lr_.detach()), float(lf.detach())))
            aux_losses.append(float(la.detach()))
        seconds = time.perf_counter() - t0
        epoch_times.append(seconds)
        rec: dict[str, float] = {
            "epoch": float(epoch), "seconds": seconds,
            "rank_loss": float(np.mean([a for a, _ in losses])),
            "fraud_loss": float(np.mean([b for _, b in losses])),
        }
        rec["loss"] = config.rank_weight * rec["rank_loss"] + config.fraud_weight * rec["fraud_loss"]
        if use_aux and aux_losses:
            rec["aux_loss"] = float(np.mean(aux_losses))
            rec["loss"] += config.rank_weight * float(config.aux_weight or 0.0) * rec["aux_loss"]
        if epoch % eval_every == 0 or epoch == config.epochs:
            emb_val = embed_graph(model, gpu_graph, dev)
            rec.update(validation_scores(model, emb_val, data, train_pairs, val_pairs, y, masks["val"],
                                         revisit_graph(model, gpu_graph, dev)))
            # with a detached fraud head the trunk serves ranking only: select it on ranking
            crit = {"val_recall@20": rec["val_recall@20"]} if config.fraud_detach and "val_recall@20" in rec else rec
            front.add(epoch, crit, model)
            stopped = front.bad >= config.patience > 0
        history.append(rec)
        _log_epoch(
            f"epoch {epoch:4d} | loss {rec['loss']:.4f} | rank {rec['rank_loss']:.4f} | "
            f"fraud {rec['fraud_loss']:.4f} | val recall@20 {_measured(rec, 'val_recall@20', eval_every)} | "
            f"val auprc {_measured(rec, 'val_auprc', eval_every)} | {seconds:.2f}s"
        )
        if state_path is not None and (epoch % config.checkpoint_every == 0 or stopped or epoch == config.epochs):
            _save_state(state_path, {
                "epoch": epoch, "model": _state_dict_cpu(model), "optimizer": _to_cpu(opt.state_dict()),
                "torch_rng": torch.get_rng_state(), "gen_rng": gen.get_state(), "history": history,
                "front": front, "train_config": dataclasses.asdict(config), "aux_bias": aux_bias.detach().cpu(),
            })
        if stopped:
            logger.info("early stop at epoch %d: no validation improvement in %d passes", epoch, config.patience)
    bar.close()

    chosen = front.best()
    best_epoch, best_score = (chosen[0]["epoch"], chosen[1]) if chosen else (len(history), float("nan"))
    if chosen is not None:  # else never validated: keep the last weights
        model.load_state_dict(chosen[0]["state"])
    logger.info("best epoch %d (of %d; %d checkpoints on the validation front)", best_epoch, len(history),
                len(front.points))
    model.eval()
    from shopgraph.graph.fraud_scorer import (  # imports this module
        HeldOutFit,
        fraud_probabilities,
        held_out_fit,
        select_fraud_scorer,
    )

    train_emb = embed_graph(model, gpu_graph, dev)  # for the fraud scorer: no calibration changes the columns it reads
    calibration = calibrate_revisit(model, train_emb, gpu_graph, data, train_pairs, val_pairs, dev)
    group_calibration = calibrate_group_mix(model, gpu_graph, data, train_pairs, val_pairs, dev)
    consider_calibration = calibrate_consider(model, gpu_graph, data, train_pairs, val_pairs, dev)
    model, knn_calibration = calibrate_item_knn(model, gpu_graph, data, train_pairs, val_pairs, dev,
                                                config.knn_ranks(data))
    if model.config.knn_rank != model_config.knn_rank:
        # another rank won: the served model is a copy whose embeddings are wider, and it reads its
        # columns by its own layout; the tower's columns (all the fraud scorer uses) are the same
        train_emb = embed_graph(model, gpu_graph, dev)
    model_config = model.config  # the chosen item-neighbour rank
    serving_graph = lean_graph(data).to(dev)
    serving = embed_graph(model, serving_graph, dev)
    scorer = select_fraud_scorer(model, data, train_emb, seed=config.seed, serving_emb=serving)
    fraud_prob = fraud_probabilities(model, scorer, data, serving["user"], None)
    n_users = int(fraud_prob.numel())
    held_out = HeldOutFit(np.full(n_users, np.nan), np.full(n_users, -1, dtype=np.int64), [])
    if config.held_out_folds:
        held_out = held_out_fit(data, scorer, folds=config.held_out_folds, seed=config.seed)
    return TrainResult(
        model=model, model_config=model_config, config=config, history=history,
        best_epoch=int(best_epoch), best_score=float(best_score), embeddings=serving,
        revisit=revisit_graph(model, serving_graph, dev, serving), fraud=scorer,
        fraud_prob=fraud_prob, fraud_prob_held_out=torch.as_tensor(held_out.prob, dtype=torch.float32),
        held_out_fold=torch.as_tensor(held_out.fold, dtype=torch.int64), held_out_trees=list(held_out.trees),
        epoch_seconds=float(np.mean(epoch_times)) if epoch_times else 0.0, mini_batch=mini_batch,
        revisit_calibration=calibration, group_mix_calibration=group_calibration,
        consider_calibration=consider_calibration, item_knn_calibration=knn_calibration,
    )


# -- run folder -----------------------------------------------------------------------------------
def json_number(value: Any) -> Any:
    """``value`` for a JSON document: a float that is not finite (NaN: no fraud labels, so no
    threshold) becomes None, written ``null`` (JSON has no NaN); anything else is unchanged."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def train_run(run_dir: str | Path, *, device: str | None = None, resume: bool = False, **overrides: Any) -> TrainResult:
    """Train the GNN of a run folder and write its artifacts.

    Args:
        run_dir: a run folder with ``graph.pt`` (``shopgraph build``).
        device: ``"cuda"``, ``"cpu"`` or None.
        resume: continue from ``RUN/model/train_state.pt``.
        **overrides: :class:`TrainConfig` fields (``epochs=50``, ``conv="gatv2"``, ...).

    Writes ``model/model.safetensors``, ``model/config.json``, ``model/train_config.json``,
    ``model/history.json``, ``model/train_state.pt`` (not recorded in the manifest),
    ``embeddings.safetensors`` (``user``, ``item``,
    ``device`` embeddings, ``fraud_prob``, ``fraud_prob_held_out`` (the training accounts' scores
    with their own labels held out, NaN for the others; ``fraud.json``'s ``held_out`` gives their
    metrics at the serving threshold and the files of each fold's trees, ``fraud_held_out/``),
    ``fraud_held_out_fold`` (each training account's fold, -1 for the others), and ``revisit_index`` / ``revisit_value`` when the model
    has a revisit term), ``fraud.json``, and ``fraud_trees.ubj`` (the served trees, named in
    ``fraud.json``'s ``trees_file``) when the serving fraud scorer is boosted trees (without fraud
    labels the scorer is ``none``: ``fraud_prob`` is NaN, and ``fraud.json``'s ``threshold`` and
    ``val_auprc`` are ``null``, JSON having no NaN). Each is recorded
    as made from ``model/model.safetensors`` (written first): one left by an earlier training is
    stale (:class:`~shopgraph.graph.run.StaleFileError`, "rerun `shopgraph train`") once it changes.
    """
    run = RunDir(run_dir)
    if not run.has("graph.pt"):
        raise FileNotFoundError(f"run folder {run.path}: no graph.pt (run `shopgraph build` first)")
    config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    resolve_device(device)  # a bad --device is an error before the graph is loaded
    data = run.load_graph()
    # The resume checkpoint is rewritten during training, outside the manifest's commits: it is not
    # recorded (runs trained before recorded it), so an interrupted training leaves `verify` passing.
    run.forget(f"{MODEL_DIR}/{STATE_FILE}")
    result = train(data, config, device=device, checkpoint_dir=run.path / MODEL_DIR, resume=resume)

    tensors = {k: v.contiguous() for k, v in _state_dict_cpu(result.model).items()}
    run.write_with(f"{MODEL_DIR}/model.safetensors", lambda p: save_file(tensors, str(p)))
    # Everything else this command writes belongs to these weights: should a write below fail (a
    # full disk), the files of the earlier training it leaves are stale, never served with them.
    made_from = run.sources(f"{MODEL_DIR}/model.safetensors")
    run.write_text(f"{MODEL_DIR}/config.json", result.model_config.to_json(), made_from=made_from, stage=TRAIN_STAGE)
    run.write_json(f"{MODEL_DIR}/train_config.json", dataclasses.asdict(config), made_from=made_from,
                   stage=TRAIN_STAGE)
    run.write_json(f"{MODEL_DIR}/history.json", {
        "best_epoch": result.best_epoch, "best_score": result.best_score,
        "epoch_seconds": result.epoch_seconds, "mini_batch": result.mini_batch, "epochs": result.history,
        "revisit_calibration": result.revisit_calibration,
        "group_mix_calibration": result.group_mix_calibration,
        "consider_calibration": result.consider_calibration,
        "item_knn_calibration": result.item_knn_calibration,
    }, made_from=made_from, stage=TRAIN_STAGE)
    emb: dict[str, Tensor] = {
        nt: result.embeddings[nt].contiguous() for nt in ("user", "item", "device") if nt in result.embeddings
    }
    emb["fraud_prob"] = result.fraud_prob.float().contiguous()
    emb[HELD_OUT_KEY] = result.fraud_prob_held_out.float().contiguous()
    emb[HELD_OUT_FOLD_KEY] = result.held_out_fold.long().contiguous()
    if result.revisit is not None:  # the sparse revisit term: (user, item) pairs and their scores
        emb["revisit_index"] = result.revisit.pairs.contiguous()
        emb["revisit_value"] = result.revisit.value.float().contiguous()
    run.write_with("embeddings.safetensors", lambda p: save_file(emb, str(p)), made_from=made_from, stage=TRAIN_STAGE)
    y, masks = fraud_labels(data)
    fraud_info: dict[str, Any] = {  # no scorer (no labels): threshold and AUPRC are null, read back as NaN
        "kind": result.fraud.kind, "threshold": json_number(result.fraud.threshold),
        "val_auprc": json_number(result.fraud.val_auprc),
        "candidates": {k: json_number(v) for k, v in result.fraud.candidates.items()}, "seed": config.seed,
        "labelled_users": int((y >= 0).sum()), "train_users": int(masks["train"].sum()),
    }
    held_out = result.fraud_prob_held_out.double().numpy()
    scored = np.isfinite(held_out)
    files: dict[str, str] = {}  # fold -> its trees, for explanations of the held-out scores
    if scored.any() and np.unique(y.numpy()[scored]).size == 2:  # how well the scorer predicts labels it did not see
        from shopgraph.graph.metrics import fraud_metrics

        fraud_info["held_out"] = {"folds": config.held_out_folds, "accounts": int(scored.sum()), **{
            k: json_number(v) for k, v in fraud_metrics(y.numpy()[scored], held_out[scored],
                                                        result.fraud.threshold).items()}}
        for k, trees in enumerate(result.held_out_trees):
            if trees is not None:
                files[str(k)] = HELD_OUT_TREES.format(k=k)
                run.write_bytes(files[str(k)], trees, made_from=made_from, stage=TRAIN_STAGE)
        fraud_info["held_out"]["trees_files"] = files
    for rel in [r for r in run.manifest["files"] if r.startswith("fraud_held_out/") and r not in files.values()]:
        run.forget(rel)  # an earlier training's fold trees: not this run's any more
        run.path.joinpath(rel).unlink(missing_ok=True)
    if result.fraud.kind in TREE_KINDS:  # the served trees, for explanations of their scores
        run.write_bytes(TREES_FILE, result.fraud.head.booster_bytes(), made_from=made_from, stage=TRAIN_STAGE)
        fraud_info["trees_file"] = TREES_FILE
    run.write_json("fraud.json", fraud_info, made_from=made_from, stage=TRAIN_STAGE)
    run.update(config={"train": dataclasses.asdict(config)})
    return result


def _written(run: RunDir) -> list[str]:
    """The run files a training wrote (relative paths): the model, the embeddings, fraud.json and
    the trees it names (the served ones, each fold's held-out ones)."""
    fraud: dict[str, Any] = run.read_json("fraud.json") if run.has("fraud.json") else {}
    held: dict[str, Any] = fraud["held_out"] if isinstance(fraud.get("held_out"), dict) else {}
    folds: dict[str, Any] = held["trees_files"] if isinstance(held.get("trees_files"), dict) else {}
    return ([MODEL_DIR, "embeddings.safetensors", "fraud.json"] + ([str(fraud["trees_file"])] if fraud.get("trees_file")
            else []) + [str(folds[k]) for k in sorted(folds, key=int)])


def _measured(rec: dict[str, float], key: str, every: int) -> str:
    """An epoch line's validation value: ``-`` on the epochs between validations (not ``nan``,
    which reads as a failure), ``n/a`` when a validation cannot measure it (no fraud labels)."""
    if key in rec and not math.isnan(rec[key]):
        return f"{rec[key]:.4f}"
    if any(name.startswith("val_") for name in rec):
        return "n/a"
    return f"- (every {every} epochs)" if every > 1 else "-"


def cli_train(args: argparse.Namespace) -> int:
    """``shopgraph train --run RUN [--epochs N] [--device D] [--seed S] [--conv C]
    [--mini-batch | --full-batch] [--batch-size B] [--item-knn-rank R] [--held-out-folds K] [--resume]``."""
    if args.batch_size is not None and args.full_batch:
        raise ValueError(f"--batch-size: sets the size of mini-batches (got --batch-size {args.batch_size} "
                         "with --full-batch)")
    overrides: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed, "conv": args.conv,
                                 "mini_batch": True if args.mini_batch else False if args.full_batch else None,
                                 "batch_size": args.batch_size,
                                 "item_knn": args.item_knn_rank, "held_out_folds": args.held_out_folds}
    result = train_run(args.run, device=args.device, resume=args.resume, **overrides)
    at_best = [h for h in result.history if int(h["epoch"]) == result.best_epoch]
    last = at_best[0] if at_best else {}
    summary = {
        "run": str(args.run), "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "epoch_seconds": round(result.epoch_seconds, 4), "mini_batch": result.mini_batch,
        "best_val_recall@20": last.get("val_recall@20"), "best_val_auprc": last.get("val_auprc"), "fraud_scorer": result.fraud.kind,
        "fraud_val_auprc": result.fraud.val_auprc, "fraud_threshold": result.fraud.threshold,
        "item_knn_rank": result.model.config.knn_rank,
        "served_vector_width": int(result.embeddings["item"].size(1)) if "item" in result.embeddings else None,
        "wrote": [str(Path(args.run) / rel) for rel in _written(RunDir(args.run))],
        "next": f"shopgraph evaluate --run {args.run}",
    }
    # valid JSON: what is not a number (no fraud labels: no threshold) is null
    print(json.dumps({k: json_number(v) for k, v in summary.items()}, indent=2, allow_nan=False))
    return 0
