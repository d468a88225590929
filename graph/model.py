"""ShopGNN: one heterogeneous GNN with a purchase tower (dot product) and a fraud head.

Built only from ``data.metadata()`` and the per-type input sizes, so the same code runs on the
shop graph (user / item / device with several event types) and on one-type public graphs.

    h0[nt] = LayerNorm(Linear(x[nt]) + id_embedding[nt])      (either term may be absent)
    h_{l+1} = LayerNorm(h_l + Dropout(GELU(HeteroConv_l(h_l))))      (sage | gatv2 | hgt)
    h_{l+1} = sum over edge types of sym-normalised neighbour sums    (lightgcn: no weights)
    emb[nt] = mean(h_0 .. h_L)                                       (layer averaging, as LightGCN)

``conv="history"`` replaces message passing by a behaviour tower (a learned, low-rank ItemKNN):

    emb[item]   = [h0[item], b_item (+ log(1 + c_item))]    (b: a learned popularity bias; its mean
                                                             for new items; c: see item_counts)
    a_u         = s * sum_e w(e) h0[item(e)] / (1 + n_u)^0.5
    emb[user]   = [a_u (+ MLP(a_u)), 1]                     (the MLP: see user_mlp)
    w(e)        = sum_k softplus(a[type(e), k]) * exp(-age(e) / tau_k)
    c_item      = sum_e w'(e) over the item's events         (w': as w, its own weights)

over the user's user→item events ``e`` (views, carts, purchases) in the graph, ``age`` measured
from the latest event time of the graph (or from ``data.reference_time`` when set: a computation
subgraph keeps the clock of the graph it was cut from), ``tau_k`` fixed time scales (``time_scales``, days). The
item's own input embedding appears in the sum, so the dot product scores "items the user
already looked at" directly, and the appended constant/bias pair keeps the score a plain dot
product. Two optional channels, calibrated after training, sit between the free columns and the
bias/constant pair: the group-mix channel (``groups`` columns) and the item-neighbour channel
(``knn_rank`` columns) — see :class:`ModelConfig`. Other node types keep their input embeddings.

Purchase score = ``user_emb @ item_emb.T`` (so FAISS inner-product search returns exactly the
model's ranking), plus, for the ``history`` tower with ``revisit``, a learned sparse term on the
items each user already interacted with (:meth:`ShopGNN.revisit_scores`, with the
consideration-set score when ``consider`` is on): a search for the top
``k + (that user's revisit items)`` by inner product, with those items rescored, is still exact.
Fraud logit = MLP(user_emb).

Every edge type of the metadata is always passed to the convolutions, with an empty
``edge_index`` when the graph lacks it, so an isolated node gets the same embedding whether the
rest of the graph has edges or not: that is the inductive pass used for new items.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATv2Conv, HeteroConv, HGTConv, SAGEConv

from shopgraph.graph.build import event_clock

logger = logging.getLogger(__name__)

EdgeType = tuple[str, str, str]
CONVS: tuple[str, ...] = ("sage", "gatv2", "hgt", "lightgcn", "history")
DAY_SECONDS = 86400.0


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`ShopGNN` (saved as ``RUN/model/config.json``).

    Attributes:
        node_types: node types of the graph (``data.metadata()[0]``).
        edge_types: edge types of the graph (``data.metadata()[1]``).
        in_dims: input feature size per node type; 0 for a type whose ``.x`` is not used. A type
            with neither features nor an id embedding starts from a learned constant (the input
            LayerNorm's bias) and is described by its neighbourhood alone.
        num_nodes: node count per type (rows of the id embedding tables).
        id_embeddings: node types with a learnable id embedding (required for featureless types).
        conv: ``"sage"``, ``"gatv2"``, ``"hgt"``, ``"lightgcn"`` or ``"history"`` (the behaviour
            tower of the module docstring; ``layers`` is then unused).
        hidden: embedding size.
        layers: message-passing layers.
        dropout: dropout on features and messages.
        heads: attention heads for ``gatv2`` / ``hgt``.
        fraud_hidden: hidden size of the fraud MLP.
        time_scales: decay time scales in days of the ``history`` tower's event weights.
        user_mlp: hidden size of a residual MLP on the ``history`` tower's aggregated user
            vector (0: none). The aggregate is linear in the user's events, so a plain dot product
            can only score ``exp(linear counts)``; the MLP lets the user side bend counts into
            shares (a "30 % shoes, 5 % books" taste) while the score stays a dot product.
        fraud_norm: a LayerNorm in front of the fraud MLP. The purchase tower's user vectors can
            be large (the softmax wants dot products of hundreds); unnormalised, they drove every
            pre-activation of the fraud MLP into GELU's flat negative side and the head went
            constant (test AUROC 0.50 on the 5,000-user shop). On for new models
            (:meth:`TrainConfig.model_config`); off by default so older run folders still load.
        item_counts: the ``history`` tower's item bias adds ``log(1 + c_i)``, ``c_i`` the item's
            decayed, event-type-weighted event count in the graph it is given (the same weighting
            as users, its own learned weights): popularity read from the graph at prediction time
            instead of frozen into a learned per-item bias at training time.
        revisit: the ``history`` tower adds a learned *revisit* score to the dot product for the
            items the user already interacted with (see :meth:`ShopGNN.revisit_scores`). A
            low-dimensional dot product cannot single out "this exact item, viewed twice
            yesterday" among thousands of items, yet on the 5,000-user shop 19 % of the test
            purchases are of items the user had viewed before (and not bought). Off by default so
            older run folders still load; on for new ``history`` models (``TrainConfig``).
        groups: number of item groups (``data["item"].group``, the item categories of
            ``shopgraph build``) of the ``history`` tower's *group-mix channel*; 0 turns it off
            (and older run folders load without it). The channel adds ``groups`` columns to the
            user and item embeddings, so the score stays one dot product::

                channel(u, i) = w * sd_u * mix_u[g(i)] * share_i / max_j(mix_u[g(j)] * share_j)

            ``mix_u`` the user's share of events per group (smoothed toward the population's by 2
            events), ``share_i`` the item's share of its group's events (+1 each), both counted on
            the graph it is given, ``sd_u`` the spread of the user's dot products over the
            catalogue and ``w`` = ``group_weight``, a non-trained weight that
            ``calibrate_group_mix`` (graph/train.py) chooses on validation after training
            (0 leaves the ranking as it was). "Popular items of the groups you shop most", which
            the tower's log-linear score does not represent: on five 5,000-user shops it lifted
            validation Recall@20 0.2901 -> 0.3021 when added after training (BENCHMARKS.md).
        consider: the ``history`` tower's revisit term (needs ``revisit``) adds a *consideration-set*
            score to the items the user already had events on: the chance, given how often the
            user came back to the item, that it is one of the handful of items they are deciding
            between, turned into score units like the group-mix channel::

                consider(u, i) = w * sd_u * B * P(i in C_u | n_ui, N_u) / max_j p_u(j)
                log-odds P     = logit(1 - (1 - p_ui)^m) + n_ui * log((A + B) / A) - N_u * B
                A = (1 - s) * p_ui,   B = s / m,   p_ui = mix_u[g(i)] * share_i

            where a share ``s`` of a user's events go to a personal set ``C_u`` of ``m`` items
            (drawn like the rest) and the others to the background ``p_ui`` (the group-mix
            channel's "share of the user's groups times share of the group"; one group when the
            items have none), ``n_ui`` the user's events on ``i``, ``N_u`` all their events.
            ``w``, ``s`` and ``m`` are not trained: ``calibrate_consider`` (graph/train.py) picks
            them on validation after training (``w`` = 0: off). The items it scores are those of
            the sparse revisit term, so FAISS still serves the ranking exactly. Off by default so
            older run folders load; on for new ``history`` models (``TrainConfig``).
        knn_rank: rank of the ``history`` tower's *item-neighbour channel* (0: off): ItemKNN's
            item–item similarity ``S`` (``graph.baselines.ItemKNN`` on the training period, views
            and carts included) factored as ``S ≈ A Bᵀ`` (``[items, knn_rank]`` each, truncated
            SVD), appended as ``knn_rank`` columns on each side, after the group-mix channel and
            before the bias column::

                channel(u, i) = w * sd_u * (h_u A) · B_i / spread_j((h_u A) · B_j)

            ``h_u`` the user's distinct items in the graph given (binary), ``sd_u`` the spread of
            the user's own tower scores (as for the group-mix channel): a low-rank ItemKNN score
            whose spread over the catalogue is ``w`` times the tower's, still one dot product.
            ``A``, ``B`` and ``w`` are not trained: ``calibrate_item_knn`` (graph/train.py) fits
            them after training and picks the rank and ``w`` on validation (0: off). Off by
            default so older run folders load; on for new ``history`` models
            (``TrainConfig.item_knn``).
    """

    node_types: list[str]
    edge_types: list[EdgeType]
    in_dims: dict[str, int]
    num_nodes: dict[str, int]
    id_embeddings: list[str] = field(default_factory=list)
    conv: str = "sage"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    heads: int = 2
    fraud_hidden: int = 64
    time_scales: list[float] = field(default_factory=lambda: [0.25, 1.0, 4.0, 16.0, 64.0])
    user_mlp: int = 0
    item_counts: bool = False
    fraud_norm: bool = False
    revisit: bool = False
    groups: int = 0
    consider: bool = False
    knn_rank: int = 0

    def __post_init__(self) -> None:
        self.edge_types = [tuple(et) for et in self.edge_types]  # type: ignore[misc]
        if self.conv not in CONVS:
            raise ValueError(f"conv: expected one of {', '.join(CONVS)} (got {self.conv!r})")
        if self.hidden <= 0 or self.layers < 0:
            raise ValueError(f"hidden, layers: expected hidden > 0 and layers >= 0 (got {self.hidden}, {self.layers})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= dropout < 1 (got {self.dropout})")
        if self.user_mlp < 0:
            raise ValueError(f"user_mlp: expected >= 0 (got {self.user_mlp})")
        if self.conv in ("gatv2", "hgt") and self.hidden % self.heads:
            raise ValueError(f"hidden: must be divisible by heads={self.heads} for {self.conv} (got {self.hidden})")
        if self.conv == "history":
            if self.hidden < 2:
                raise ValueError(f"hidden: the history tower needs hidden >= 2 (got {self.hidden})")
            if not self.time_scales or any(t <= 0 for t in self.time_scales):
                raise ValueError(f"time_scales: expected positive day counts (got {self.time_scales})")
            if "user" not in self.node_types or "item" not in self.node_types:
                raise ValueError(f"conv: 'history' needs 'user' and 'item' node types (got {self.node_types})")
        elif self.revisit or self.item_counts or self.user_mlp or self.groups or self.consider or self.knn_rank:
            raise ValueError(f"revisit, item_counts, user_mlp, groups, consider, knn_rank: options of the 'history' tower "
                             f"(got conv={self.conv!r})")
        if self.groups < 0:
            raise ValueError(f"groups: expected >= 0 (got {self.groups})")
        if self.knn_rank < 0 or ("item" in self.num_nodes and self.knn_rank > self.num_nodes["item"]):
            raise ValueError(f"knn_rank: expected 0 <= knn_rank <= the number of items "
                             f"({self.num_nodes.get('item')}) (got {self.knn_rank})")
        if self.consider and not self.revisit:
            raise ValueError("consider: the consideration-set score is part of the revisit term "
                             "(got consider=True with revisit=False)")
        for nt in self.node_types:
            if nt not in self.in_dims or nt not in self.num_nodes:
                raise ValueError(f"in_dims, num_nodes: missing node type {nt!r}")
        for nt in self.id_embeddings:
            if nt not in self.node_types:
                raise ValueError(f"id_embeddings: unknown node type {nt!r} (got node types {self.node_types})")
        for et in self.edge_types:
            if et[0] not in self.node_types or et[2] not in self.node_types:
                raise ValueError(f"edge_types: {et} joins unknown node types (node types {self.node_types})")

    @property
    def metadata(self) -> tuple[list[str], list[EdgeType]]:
        return list(self.node_types), list(self.edge_types)

    @classmethod
    def from_data(
        cls, data: HeteroData, *, id_embeddings: list[str] | None = None, feature_types: list[str] | None = None,
        **kwargs: Any,
    ) -> ModelConfig:
        """Config for ``data``: metadata, input sizes from ``data[nt].x``, node counts.

        Args:
            data: the graph (any split view; only metadata, ``.x`` shapes and node counts are read).
            id_embeddings: node types given id embeddings; default every type.
            feature_types: node types whose ``.x`` the model reads; default every type that has
                one. A type without features or id embedding is described by its neighbourhood.
            **kwargs: the other :class:`ModelConfig` fields (conv, hidden, ...).
        """
        node_types, edge_types = data.metadata()
        use = set(node_types) if feature_types is None else set(feature_types)
        in_dims = {nt: int(data[nt].x.size(-1)) if "x" in data[nt] and nt in use else 0 for nt in node_types}
        num_nodes = {nt: int(data[nt].num_nodes) for nt in node_types}
        chosen = list(node_types) if id_embeddings is None else list(id_embeddings)
        return cls(node_types=list(node_types), edge_types=[tuple(e) for e in edge_types],  # type: ignore[misc]
                   in_dims=in_dims, num_nodes=num_nodes, id_embeddings=chosen, **kwargs)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"config.json: unknown fields {unknown} (expected a subset of {sorted(known)})")
        raw["edge_types"] = [tuple(et) for et in raw["edge_types"]]
        return cls(**raw)


def sparse_block(pairs: Tensor, values: Tensor, users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """The ``[len(users), len(items)]`` block of the sparse ``[U, I]`` matrix with entries
    ``values`` at ``pairs [2, N]`` (zeros elsewhere; a pair may repeat only with equal values,
    e.g. a bool mask), in one pass over the pairs.
    ``users`` and ``items`` may repeat. ``values`` may be any dtype (bool for masks)."""
    out_shape = (users.numel(), items.numel())
    if values.numel() == 0 or users.numel() == 0 or items.numel() == 0:
        return torch.zeros(out_shape, dtype=values.dtype, device=values.device)
    dev = pairs.device
    uniq_u, local_u = torch.unique(users.to(dev), return_inverse=True)
    uniq_i, local_i = torch.unique(items.to(dev), return_inverse=True)
    row_of = torch.full((int(max(int(uniq_u.max()), int(pairs[0].max()))) + 1,), -1, dtype=torch.long, device=dev)
    row_of[uniq_u] = torch.arange(uniq_u.numel(), device=dev)
    col_of = torch.full((max(num_items, int(uniq_i.max()) + 1),), -1, dtype=torch.long, device=dev)
    col_of[uniq_i] = torch.arange(uniq_i.numel(), device=dev)
    row, col = row_of[pairs[0]], col_of[pairs[1]]
    keep = (row >= 0) & (col >= 0)
    dense = torch.zeros(uniq_u.numel(), uniq_i.numel(), dtype=values.dtype, device=values.device)
    dense = dense.index_put((row[keep], col[keep]), values[keep])
    dense = dense[local_u]
    # the whole catalogue in order (rows(), the full softmax): no second [B, I] copy
    return dense if uniq_i.numel() == items.numel() and bool(torch.equal(uniq_i, items.to(dev))) else dense[:, local_i]


class Revisit(NamedTuple):
    """The revisit term (:meth:`ShopGNN.revisit_scores`) as a sparse ``[U, I]`` matrix.

    Attributes:
        pairs: ``LongTensor[2, N]`` distinct (user, item) pairs, sorted by user then item.
        value: ``FloatTensor[N]`` their revisit scores (differentiable in the model's weights).
    """

    pairs: Tensor
    value: Tensor

    def rows(self, users: Tensor, num_items: int) -> Tensor:
        """Dense ``[B, num_items]`` rows of ``users`` (zeros where a pair has no term)."""
        return self.cols(users, torch.arange(num_items, device=self.value.device), num_items)

    def cols(self, users: Tensor, items: Tensor, num_items: int) -> Tensor:
        """Dense ``[B, K]`` values at every ``(users[b], items[k])`` (zeros where a pair has no
        term; ``items`` may repeat): one pass over the stored pairs, for negatives shared by a
        whole batch."""
        return sparse_block(self.pairs, self.value, users, items, num_items)

    def at(self, users: Tensor, items: Tensor, num_items: int) -> Tensor:
        """Values at ``(users[b], items[b, j])``: ``[B, J]`` (zeros where a pair has no term)."""
        if self.value.numel() == 0:
            return torch.zeros(items.shape, dtype=self.value.dtype, device=items.device)
        keys = self.pairs[0] * num_items + self.pairs[1]  # sorted: pairs are sorted by user, then item
        query = users.to(keys.device).unsqueeze(1) * num_items + items.to(keys.device)
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        hit = keys[pos] == query
        return torch.where(hit, self.value[pos], torch.zeros((), dtype=self.value.dtype, device=keys.device))

    def detach_cpu(self) -> Revisit:
        return Revisit(self.pairs.detach().cpu(), self.value.detach().float().cpu())


def purchase_scores(user_emb: Tensor, item_emb: Tensor, revisit: Revisit | None = None) -> Callable[[Tensor], Tensor]:
    """``users [B] -> scores [B, I]``: ``user_emb[users] @ item_emb.T`` plus the revisit term
    when there is one: the model's full purchase ranking, as evaluated and served."""

    def score(users: Tensor) -> Tensor:
        s = ShopGNN.score(user_emb[users], item_emb)
        if revisit is not None:
            s = s + revisit.rows(users, item_emb.size(0)).to(s.dtype)
        return s

    return score


class ShopGNNOutput(NamedTuple):
    """What :meth:`ShopGNN.forward` returns."""

    emb: dict[str, Tensor]  # node type -> [N, hidden]
    fraud_logit: Tensor | None  # [U] when the graph has a "user" type


def _key(et: EdgeType) -> str:
    return "__".join(et)


class _WeightedSum(torch.autograd.Function):
    """``out[dst[e]] += weight[e] * src[idx[e]]`` over edges ``e``, in chunks of edges.

    The plain ``index_add(0, dst, src[idx] * weight[:, None])`` keeps two ``[E, D]`` tensors for
    the backward pass (3.4 GB each for 3.3 million events at D = 255); this keeps only the edge
    lists and recomputes the chunks, so memory stays ``O(E + chunk * D)``.
    """

    CHUNK = 262_144

    @staticmethod
    def forward(ctx: Any, src: Tensor, idx: Tensor, dst: Tensor, weight: Tensor, num_dst: int) -> Tensor:
        out = torch.zeros(num_dst, src.size(1), dtype=src.dtype, device=src.device)
        for s in range(0, idx.numel(), _WeightedSum.CHUNK):
            sl = slice(s, s + _WeightedSum.CHUNK)
            out.index_add_(0, dst[sl], src[idx[sl]] * weight[sl].unsqueeze(1).to(src.dtype))
        ctx.save_for_backward(src, idx, dst, weight)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, Tensor | None, None]:
        src, idx, dst, weight = ctx.saved_tensors
        grad_src = torch.zeros_like(src) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[3] else None
        for s in range(0, idx.numel(), _WeightedSum.CHUNK):
            sl = slice(s, s + _WeightedSum.CHUNK)
            g = grad[dst[sl]]
            if grad_src is not None:
                grad_src.index_add_(0, idx[sl], g * weight[sl].unsqueeze(1).to(g.dtype))
            if grad_w is not None:
                grad_w[sl] = (g * src[idx[sl]]).sum(1).to(grad_w.dtype)
        return grad_src, None, None, grad_w, None


def weighted_sum(src: Tensor, idx: Tensor, dst: Tensor, weight: Tensor, num_dst: int) -> Tensor:
    """``[num_dst, D]`` sums of ``weight[e] * src[idx[e]]`` at ``dst[e]`` (differentiable in ``src``
    and ``weight``), in ``O(E + chunk * D)`` memory; see :class:`_WeightedSum`."""
    out: Tensor = _WeightedSum.apply(src, idx, dst, weight, num_dst)
    return out


class LightGCNConv(nn.Module):
    """Weight-free propagation: for each edge type, ``sum_j x_j / sqrt(deg_out(j) deg_in(i))``,
    summed over the edge types that point at a node type (repeated edges count with multiplicity).

    Each edge type is one sparse-dense product with its normalised adjacency (``torch.sparse.mm``
    on a coalesced COO matrix): on Gowalla's 810,000 edges, 0.06 s forward and 0.04 s backward
    against 0.26 s and 0.55 s for the gather + ``index_add`` it replaced (2 CPU cores).
    """

    def __init__(self, edge_types: list[EdgeType]) -> None:
        super().__init__()
        self.edge_types = edge_types

    @staticmethod
    def adjacency(edge_index: Tensor, num_src: int, num_dst: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The normalised adjacency ``[num_dst, num_src]`` of one edge type (sparse COO, coalesced)."""
        src, dst = edge_index[0], edge_index[1]
        deg_s = torch.bincount(src, minlength=num_src).to(dtype)
        deg_d = torch.bincount(dst, minlength=num_dst).to(dtype)
        w = (deg_s[src] * deg_d[dst]).rsqrt()
        return torch.sparse_coo_tensor(torch.stack([dst, src]), w, (num_dst, num_src),
                                       check_invariants=False).coalesce()

    def forward(self, x: dict[str, Tensor], edge_index: dict[EdgeType, Tensor]) -> dict[str, Tensor]:
        out = {nt: torch.zeros_like(h) for nt, h in x.items()}
        for et in self.edge_types:
            src, _, dst = et
            ei = edge_index[et]
            if ei.numel() == 0:
                continue
            xs = x[src]
            adj = self.adjacency(ei, xs.size(0), out[dst].size(0))
            out[dst] = out[dst] + torch.sparse.mm(adj, xs.float()).to(xs.dtype)
        return out


class _GroupCounts(NamedTuple):
    """Event counts of a graph by item group: the background ``p_u(i) = mix[u, group[i]] * share[i]``
    of the group-mix channel and the consideration-set score (:class:`ModelConfig`)."""

    group: Tensor  # [I] each item's group
    mix: Tensor  # [U, G] the user's share of events per group, smoothed toward the population's by 2 events
    share: Tensor  # [I] the item's share of its group's events (+1 each)
    norm: Tensor  # [U] max_j p_u(j)
    events: Tensor  # [U] the user's event count


def _group_counts(group: Tensor, g_count: int, n_users: int, n_items: int, edges: list[Tensor]) -> _GroupCounts | None:
    """:class:`_GroupCounts` over the user→item ``edges`` (``[2, E]`` each); None without events."""
    device = group.device
    counts = torch.zeros(n_users, g_count, device=device)
    item_n = torch.ones(n_items, device=device)  # +1 each: an item without events keeps a share
    for ei in edges:
        counts.index_put_((ei[0], group[ei[1]]), torch.ones(ei.size(1), device=device), accumulate=True)
        item_n.index_add_(0, ei[1], torch.ones(ei.size(1), device=device))
    total = counts.sum(1)
    if float(total.sum()) == 0.0:
        return None
    group_n = torch.zeros(g_count, device=device).index_add_(0, group, item_n)
    share = item_n / group_n[group]
    prior = counts.sum(0) / total.sum()
    mix = (counts + 2.0 * prior) / (total.unsqueeze(1) + 2.0)
    top_share = torch.zeros(g_count, device=device).scatter_reduce_(0, group, share, "amax")
    norm = (mix * top_share).max(1).values.clamp(min=1e-12)
    return _GroupCounts(group, mix, share, norm, total)


GATHER_CHUNK_VALUES = 1 << 22  # values of h[src] gathered at a time by gather_add (16 MB of float32)


def gather_add(h: Tensor, src: Tensor, dst: Tensor, num_dst: int) -> Tensor:
    """``out[d] = Σ h[s]`` over the edges ``(s, d)``: ``index_add_`` of ``h[src]``, gathered a chunk
    of edges at a time so that the ``[E, F]`` gather never exists whole (the item-neighbour
    channel at rank 2048 on the 100,000-user shop: 15 GB; neighbour means of image features:
    gigabytes). Edges are added in order, so the sums are the same, bit for bit, as one
    ``index_add_``. On ``h``'s device; not differentiable in ``h`` beyond what ``index_add_`` is."""
    out = torch.zeros(num_dst, h.size(1), dtype=h.dtype, device=h.device)
    step = max(1, GATHER_CHUNK_VALUES // max(1, h.size(1)))
    for a in range(0, src.numel(), step):
        out.index_add_(0, dst[a:a + step], h[src[a:a + step]])
    return out


def _score_spread(user: Tensor, item: Tensor) -> Tensor:
    """``[U]``: the standard deviation of each user's dot products over the items, ``sqrt(u' Cov u)``."""
    u, v = user.float(), item.float()
    centred = v - v.mean(0)
    cov = centred.T @ centred / max(v.size(0) - 1, 1)
    return ((u @ cov) * u).sum(1).clamp(min=0.0).sqrt()


def consider_probability(p: Tensor, n: Tensor, total: Tensor, share: float, size: float) -> Tensor:
    """``P(i in C_u | n_ui, N_u)`` of the consideration-set score (:class:`ModelConfig` ``consider``):
    background ``p`` = ``p_u(i)``, ``n`` the user's events on the item, ``total`` all their events,
    ``share`` of events going to a set of ``size`` items."""
    a = (1.0 - share) * p + 1e-12
    b = share / size
    prior = (1.0 - (1.0 - p).clamp(min=1e-9) ** size).clamp(1e-9, 1.0 - 1e-9)
    return torch.sigmoid(torch.logit(prior) + n * torch.log((a + b) / a) - total * b)


class ShopGNN(nn.Module):
    """Heterogeneous GNN with a dot-product purchase tower and a fraud MLP head.

    Args:
        config: a :class:`ModelConfig` (``ModelConfig.from_data(data, conv=..., hidden=...)``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.proj = nn.ModuleDict({nt: nn.Linear(c.in_dims[nt], c.hidden) for nt in c.node_types if c.in_dims[nt] > 0})
        # N(0, 1) rows: on the same scale as the projected features, so neither drowns the other
        self.id_emb = nn.ModuleDict({nt: nn.Embedding(c.num_nodes[nt], c.hidden) for nt in c.id_embeddings})
        self.in_norm = nn.ModuleDict({nt: nn.LayerNorm(c.hidden) for nt in c.node_types})
        history = c.conv == "history"
        self.convs = nn.ModuleList([self._make_conv() for _ in range(0 if history else c.layers)])
        # LightGCN propagation is linear by design: no norms, no non-linearity.
        self.norms = nn.ModuleList([
            nn.ModuleDict({nt: nn.LayerNorm(c.hidden) for nt in c.node_types})
            for _ in range(c.layers if c.conv not in ("lightgcn", "history") else 0)
        ])
        self.history_types = [et for et in c.edge_types if et[0] == "user" and et[2] == "item"] if history else []
        if history:
            # item rows: hidden - 1 free dimensions + the popularity bias; users: the same + a constant 1
            self.item_bias = nn.Parameter(torch.zeros(c.num_nodes["item"]))
            self.event_weight = nn.Parameter(torch.zeros(len(self.history_types), len(c.time_scales)))
            self.user_log_scale = nn.Parameter(torch.zeros(()))
            if c.item_counts:
                self.item_event_weight = nn.Parameter(torch.zeros(len(self.history_types), len(c.time_scales)))
            if c.revisit:
                # softplus(0) per time scale, and exp(3) = 20 score units per log-event to start
                # with (a user's scores spread over ~100 units); training sets the shape, and
                # calibrate_revisit (graph/train.py) the final scale
                self.revisit_weight = nn.Parameter(torch.zeros(len(self.history_types), len(c.time_scales)))
                self.revisit_log_scale = nn.Parameter(torch.tensor(3.0))
            if c.groups > 0:
                # set by calibrate_group_mix after training, never by the optimiser
                self.group_weight = nn.Parameter(torch.zeros(()), requires_grad=False)
            if c.consider:
                # set by calibrate_consider after training, never by the optimiser (weight 0: off)
                self.consider_weight = nn.Parameter(torch.zeros(()), requires_grad=False)
                self.consider_share = nn.Parameter(torch.tensor(0.25), requires_grad=False)
                self.consider_size = nn.Parameter(torch.tensor(6.0), requires_grad=False)
            if c.knn_rank > 0:
                # fitted by calibrate_item_knn after training, never by the optimiser (weight 0: off)
                self.knn_in = nn.Parameter(torch.zeros(c.num_nodes["item"], c.knn_rank), requires_grad=False)
                self.knn_out = nn.Parameter(torch.zeros(c.num_nodes["item"], c.knn_rank), requires_grad=False)
                self.knn_weight = nn.Parameter(torch.zeros(()), requires_grad=False)
            if c.user_mlp > 0:
                d = c.hidden - 1
                self.user_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, c.user_mlp), nn.GELU(),
                                              nn.Linear(c.user_mlp, d))
        head: list[nn.Module] = [nn.LayerNorm(c.hidden)] if c.fraud_norm else []
        self.fraud_head = nn.Sequential(
            *head, nn.Linear(c.hidden, c.fraud_hidden), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(c.fraud_hidden, 1)
        )

    def _make_conv(self) -> nn.Module:
        c = self.config
        if c.conv == "lightgcn":
            return LightGCNConv(c.edge_types)
        if c.conv == "hgt":
            return HGTConv(c.hidden, c.hidden, c.metadata, heads=c.heads)
        convs: dict[EdgeType, nn.Module] = {}
        for et in c.edge_types:
            if c.conv == "sage":
                convs[et] = SAGEConv((c.hidden, c.hidden), c.hidden)
            else:
                convs[et] = GATv2Conv((c.hidden, c.hidden), c.hidden // c.heads, heads=c.heads,
                                      add_self_loops=False, dropout=c.dropout)
        return HeteroConv(convs, aggr="sum")  # type: ignore[arg-type]

    # -- embeddings -----------------------------------------------------------------------------
    def _check(self, data: HeteroData) -> None:
        node_types, edge_types = data.metadata()
        missing = [nt for nt in self.config.node_types if nt not in node_types]
        if missing:
            raise ValueError(f"data: node types {missing} of the model are missing (got {node_types})")
        unknown = [et for et in edge_types if tuple(et) not in set(self.config.edge_types)]
        if unknown:
            raise ValueError(f"data: edge types {unknown} are unknown to the model (model has {self.config.edge_types})")
        if self.config.groups and "group" in data["item"]:
            group = data["item"].group
            if group.dim() != 1 or group.numel() != int(data["item"].num_nodes) or group.is_floating_point():
                raise ValueError(f"data['item'].group: expected one integer group per item "
                                 f"({int(data['item'].num_nodes)}) (got {tuple(group.shape)} {group.dtype})")
            if group.numel() and (int(group.min()) < 0 or int(group.max()) >= self.config.groups):
                raise ValueError(f"data['item'].group: expected groups in [0, {self.config.groups}) as in training "
                                 f"(got {int(group.min())}..{int(group.max())}); rebuild and retrain")
        for nt in self.config.node_types:
            want = self.config.in_dims[nt]
            if want > 0:
                if "x" not in data[nt]:
                    raise ValueError(f"data[{nt!r}].x: the model expects {want} features (got none)")
                if data[nt].x.size(-1) != want:
                    raise ValueError(f"data[{nt!r}].x: expected {want} features (got {data[nt].x.size(-1)})")

    def input_embeddings(self, data: HeteroData) -> dict[str, Tensor]:
        """Layer-0 embeddings: LayerNorm(projected features + id embeddings), ``{nt: [N, hidden]}``.

        Nodes beyond the id table (new nodes) or graphs sampled with ``n_id`` are handled: the id
        embedding of node ``k`` is row ``n_id[k]``; rows past the table contribute zero.
        """
        c = self.config
        device = next(self.parameters()).device
        out: dict[str, Tensor] = {}
        for nt in c.node_types:
            n = int(data[nt].num_nodes)
            h = torch.zeros(n, c.hidden, device=device)
            if nt in self.proj:
                h = h + self.proj[nt](data[nt].x.to(device=device, dtype=torch.float32))
            if nt in self.id_emb:
                ids = data[nt].n_id.to(device) if "n_id" in data[nt] else torch.arange(n, device=device)
                known = ids < c.num_nodes[nt]
                rows = self.id_emb[nt](ids.clamp(max=c.num_nodes[nt] - 1))
                h = h + rows * known.unsqueeze(-1).to(rows.dtype)
            out[nt] = F.dropout(self.in_norm[nt](h), c.dropout, self.training)
        return out

    def _edge_index_dict(self, data: HeteroData, device: torch.device) -> dict[EdgeType, Tensor]:
        present = set(data.edge_types)
        out: dict[EdgeType, Tensor] = {}
        for et in self.config.edge_types:
            if et in present and "edge_index" in data[et]:
                out[et] = data[et].edge_index.to(device)
            else:
                out[et] = torch.empty(2, 0, dtype=torch.long, device=device)
        return out

    def embed(self, data: HeteroData) -> dict[str, Tensor]:
        """Node embeddings ``{node_type: [N, hidden]}`` from a pass over ``data``.

        Works on any graph with the model's metadata, including one with no edges (each node is
        then embedded from its own features and id: the inductive pass).
        """
        self._check(data)
        c = self.config
        x = self.input_embeddings(data)
        device = next(iter(x.values())).device
        if c.conv == "history":
            return self._history(data, x, device)
        edge_index = self._edge_index_dict(data, device)
        layers = [x]
        for i, conv in enumerate(self.convs):
            h = conv(x, edge_index)
            if c.conv == "lightgcn":
                x = {nt: h[nt] for nt in c.node_types}
            else:
                new: dict[str, Tensor] = {}
                for nt in c.node_types:
                    msg = h.get(nt)
                    upd = x[nt] if msg is None else x[nt] + F.dropout(F.gelu(msg), c.dropout, self.training)
                    norms: nn.ModuleDict = self.norms[i]  # type: ignore[assignment]
                    new[nt] = norms[nt](upd)
                x = new
            layers.append(x)
        return {nt: torch.stack([layer[nt] for layer in layers]).mean(0) for nt in c.node_types}

    def _events(self, data: HeteroData, device: torch.device) -> list[tuple[int, Tensor, Tensor]]:
        """``(type k, edge_index [2, E], decay [E, K])`` per user→item event type of ``data``:
        ``decay[e, k] = exp(-age(e) / tau_k)``, ages from the latest event time of the graph
        (``data.reference_time`` when set)."""
        present = set(data.edge_types)
        stores = [(k, data[et]) for k, et in enumerate(self.history_types)
                  if et in present and "edge_index" in data[et] and data[et].edge_index.numel()]
        clock = event_clock(data)
        ref = clock if clock is not None else 0
        scales = torch.tensor(self.config.time_scales, device=device)
        out: list[tuple[int, Tensor, Tensor]] = []
        for k, st in stores:
            ei = st.edge_index.to(device)
            if "time" in st:
                if st.time.numel() != ei.size(1):
                    raise ValueError(f"data[{self.history_types[k]}].time: expected one time per edge "
                                     f"({ei.size(1)}) (got {st.time.numel()})")
                age = (ref - st.time.to(device)).clamp(min=0).to(torch.float32) / DAY_SECONDS
            else:  # no timestamps: every event is "now"
                age = torch.zeros(ei.size(1), device=device)
            out.append((k, ei, torch.exp(-age.unsqueeze(1) / scales)))
        return out

    def _history(self, data: HeteroData, x: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        """The ``history`` tower (module docstring): users from their decayed event sums."""
        c = self.config
        d = c.hidden - 1
        item = x["item"][:, :d]
        n_users = int(data["user"].num_nodes)
        acc = torch.zeros(n_users, d, device=device, dtype=item.dtype)
        count = torch.zeros(n_users, device=device, dtype=item.dtype)
        item_count = torch.zeros(item.size(0), device=device, dtype=item.dtype)
        events = self._events(data, device)
        for k, ei, decay in events:
            w = decay @ F.softplus(self.event_weight[k])  # [E]
            acc = acc + weighted_sum(item, ei[1], ei[0], w, n_users)
            count = count.index_add(0, ei[0], torch.ones_like(w, dtype=item.dtype))
            if c.item_counts:
                wi = decay @ F.softplus(self.item_event_weight[k])
                item_count = item_count.index_add(0, ei[1], wi.to(item.dtype))
        user = acc / (1.0 + count).sqrt().unsqueeze(1) * self.user_log_scale.exp()
        if c.user_mlp > 0:
            user = user + self.user_mlp(user)
        out = dict(x)
        n_items = int(data["item"].num_nodes)
        ones = torch.ones(n_users, 1, device=device, dtype=user.dtype)
        ids = data["item"].n_id.to(device) if "n_id" in data["item"] else torch.arange(n_items, device=device)
        known = ids < c.num_nodes["item"]
        # an item past the table (added after training) gets the mean bias: no popularity yet
        bias = torch.where(known, self.item_bias[ids.clamp(max=c.num_nodes["item"] - 1)], self.item_bias.mean())
        if c.item_counts:
            bias = bias + torch.log1p(item_count)
        bias = bias.unsqueeze(1).to(item.dtype)
        users, items = [user], [item]
        if c.groups or c.knn_rank:
            edges = [ei for _, ei, _ in events]
            tower_user, tower_item = torch.cat([user, ones], 1), torch.cat([item, bias], 1)
            # the spread of the users' tower scores, shared by both channels; computed only when one
            # of them is on (never during training)
            spread = functools.cache(lambda: _score_spread(tower_user, tower_item))
            if c.groups:
                ch_user, ch_item = self._group_channel(data, edges, spread, n_users, n_items, device)
                users.append(ch_user.to(user.dtype))
                items.append(ch_item.to(item.dtype))
            if c.knn_rank:
                ch_user, ch_item = self._knn_channel(edges, spread, n_users, n_items, ids, known, device)
                users.append(ch_user.to(user.dtype))
                items.append(ch_item.to(item.dtype))
        out["user"] = torch.cat([*users, ones], 1)
        out["item"] = torch.cat([*items, bias], 1)
        return out

    @torch.no_grad()
    def _group_channel(self, data: HeteroData, edges: list[Tensor], spread: Callable[[], Tensor], n_users: int,
                       n_items: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The group-mix channel (:class:`ModelConfig` ``groups``): ``([U, G], [I, G])`` columns whose
        dot product is ``w * sd_u * mix_u[g(i)] * share_i / max_j(...)``; zeros when ``w`` is 0, the
        graph has no ``data["item"].group`` (the inductive pass of a new item) or no user→item events.
        ``edges``: the user→item edge indices of ``data`` (from :meth:`_events`); ``spread()``:
        ``sd_u`` from the tower's other columns. Not differentiated: ``w`` is set after training."""
        g_count = self.config.groups
        zeros = (torch.zeros(n_users, g_count, device=device), torch.zeros(n_items, g_count, device=device))
        if "group" not in data["item"] or float(self.group_weight) == 0.0:
            return zeros  # weight 0 (all of training): the columns add nothing, so skip the counting
        counts = _group_counts(data["item"].group.to(device), g_count, n_users, n_items, edges)
        if counts is None:
            return zeros
        ch_user = spread().unsqueeze(1) * counts.mix / counts.norm.unsqueeze(1)
        ch_item = self.group_weight * F.one_hot(counts.group, g_count).float() * counts.share.unsqueeze(1)
        return ch_user, ch_item

    @torch.no_grad()
    def _knn_channel(self, edges: list[Tensor], spread: Callable[[], Tensor], n_users: int, n_items: int,
                     ids: Tensor, known: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """The item-neighbour channel (:class:`ModelConfig` ``knn_rank``): ``([U, r], [I, r])``
        columns whose dot product is ``w * sd_u * (h_u A) · B_i / spread_j((h_u A) · B_j)``; zeros
        when ``w`` is 0 (all of training). ``ids``/``known``: the graph's item rows in the model's
        tables (an item past them has no factors: zero columns); ``spread()``: ``sd_u``."""
        c = self.config
        if float(self.knn_weight) == 0.0:
            return torch.zeros(n_users, c.knn_rank, device=device), torch.zeros(n_items, c.knn_rank, device=device)
        rows = ids.clamp(max=c.num_nodes["item"] - 1)
        mask = known.unsqueeze(1).float()
        a = self.knn_in[rows].float() * mask
        b = self.knn_out[rows].float() * mask
        if edges:  # h_u: the user's distinct items (1-D keys: unique(dim=1) is ~40x slower)
            keys = torch.unique(torch.cat([ei[0] * n_items + ei[1] for ei in edges]))
            factors = gather_add(a, keys % n_items, keys // n_items, n_users)
        else:
            factors = torch.zeros(n_users, c.knn_rank, device=device)
        # in units of the spread: the channel's scores spread over the items as the tower's do
        unit = factors / _score_spread(factors, b).unsqueeze(1).clamp(min=1e-12)
        ch_user = spread().unsqueeze(1) * unit
        return ch_user, self.knn_weight * b

    @property
    def group_columns(self) -> slice:
        """Where the group-mix channel sits in the history tower's embeddings (an empty slice
        without it): after the ``hidden - 1`` free columns, before the bias / constant column."""
        d = self.config.hidden - 1
        return slice(d, d + self.config.groups)

    @property
    def knn_columns(self) -> slice:
        """Where the item-neighbour channel sits (an empty slice without it): after the group-mix
        channel, before the bias / constant column."""
        start = self.config.hidden - 1 + self.config.groups
        return slice(start, start + self.config.knn_rank)

    def without_channels(self, emb: Tensor) -> Tensor:
        """User or item embeddings without the group-mix and item-neighbour channels' columns
        (the tower's own): ``[N, hidden]``."""
        start, stop = self.group_columns.start, self.knn_columns.stop
        if stop == start:
            return emb
        return torch.cat([emb[..., :start], emb[..., stop:]], -1)

    @property
    def fraud_hops(self) -> int:
        """How many hops of the graph around a user its fraud logit reads: the message-passing
        layers, or 1 for the history tower (the user's own events; the channels, which read the
        whole graph, are not part of :meth:`fraud_input`). An explanation computed on that
        computation subgraph equals the full graph's (:func:`shopgraph.graph.explain.explain_user`)."""
        return 1 if self.config.conv == "history" else self.config.layers

    def fraud_input(self, user_emb: Tensor) -> Tensor:
        """The columns of user embeddings that describe the user for fraud (every column but the
        channels', which are ranking devices): ``[U, hidden]``."""
        return self.without_channels(user_emb)

    def revisit_scores(self, data: HeteroData, emb: dict[str, Tensor] | None = None) -> Revisit | None:
        """The revisit term of every (user, item) pair with events in ``data``; None when the
        model has none (``config.revisit`` off).

            revisit(u, i) = exp(s) * log(1 + sum_e w(e))    over u's events e on item i
            w(e)          = sum_k softplus(r[type(e), k]) * exp(-age(e) / tau_k)

        (the tower's decay, its own learned weights ``r`` and scale ``s``), plus the
        consideration-set score when the model has one with a weight above 0 (:class:`ModelConfig`
        ``consider``). The purchase score of a pair is ``user_emb @ item_emb + revisit``
        (:func:`purchase_scores`); pairs without events get no revisit term, so a search for the
        top k by dot product over ``k`` plus the user's revisit items, rescored, is exact (what
        ``ShopService.recommend`` does).

        Args:
            data: the graph whose events are scored.
            emb: the model's embeddings of ``data``, when the caller has them (the
                consideration-set score reads the spread of each user's scores); else computed.
        """
        if not self.config.revisit:
            return None
        device = next(self.parameters()).device
        n_items = int(data["item"].num_nodes)
        keys: list[Tensor] = []
        weights: list[Tensor] = []
        edges: list[Tensor] = []
        for k, ei, decay in self._events(data, device):
            keys.append(ei[0] * n_items + ei[1])
            weights.append(decay @ F.softplus(self.revisit_weight[k]))
            edges.append(ei)
        if not keys:
            return Revisit(torch.empty(2, 0, dtype=torch.long, device=device), torch.zeros(0, device=device))
        pair, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        total = torch.zeros(pair.numel(), device=device).index_add(0, inverse, torch.cat(weights))
        value = self.revisit_log_scale.exp() * torch.log1p(total)
        pairs = torch.stack([pair // n_items, pair % n_items])
        if self.config.consider and float(self.consider_weight) != 0.0:
            n = torch.zeros(pair.numel(), device=device).index_add_(0, inverse, torch.ones(inverse.numel(), device=device))
            value = value + self._consider(data, edges, pairs, n, emb)
        return Revisit(pairs, value)

    @torch.no_grad()
    def _consider(self, data: HeteroData, edges: list[Tensor], pairs: Tensor, n: Tensor,
                  emb: dict[str, Tensor] | None) -> Tensor:
        """The consideration-set score (:class:`ModelConfig` ``consider``) of the revisit term's
        ``pairs [2, N]`` (from the user→item ``edges``), ``n [N]`` the user's events on each. Not
        differentiated: its weights are set after training."""
        c = self.config
        device = pairs.device
        n_users, n_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        if emb is None:
            emb = self.embed(data)
        # the spread of the tower's own columns, as the channel's
        user = self.without_channels(emb["user"].to(device))
        item = self.without_channels(emb["item"].to(device))
        has_groups = c.groups > 0 and "group" in data["item"]
        group = data["item"].group.to(device) if has_groups else torch.zeros(n_items, dtype=torch.long, device=device)
        counts = _group_counts(group, c.groups if has_groups else 1, n_users, n_items, edges)
        assert counts is not None  # the pairs come from these events
        u, i = pairs[0], pairs[1]
        p = counts.mix[u, counts.group[i]] * counts.share[i]
        share, size = float(self.consider_share), float(self.consider_size)
        prob = consider_probability(p, n, counts.events[u], share, size)
        spread = _score_spread(user, item)
        return self.consider_weight * spread[u] * (share / size) * prob / counts.norm[u]

    def forward(self, data: HeteroData) -> ShopGNNOutput:
        """Embeddings of every node, and the fraud logits of users when the graph has users.

        Args:
            data: a ``HeteroData`` with the model's metadata.

        Returns:
            ``ShopGNNOutput(emb={nt: [N, hidden]}, fraud_logit=[U] or None)``.
        """
        emb = self.embed(data)
        logit = self.fraud_logit(emb["user"]) if "user" in emb else None
        return ShopGNNOutput(emb, logit)

    # -- heads ----------------------------------------------------------------------------------
    @staticmethod
    def score(user_emb: Tensor, item_emb: Tensor) -> Tensor:
        """Purchase scores ``[B, I]`` = ``user_emb [B, D] @ item_emb [I, D].T``."""
        return user_emb @ item_emb.T

    def fraud_logit(self, user_emb: Tensor) -> Tensor:
        """Fraud logits ``[U]`` from user embeddings ``[U, D]``."""
        out: Tensor = self.fraud_head(self.fraud_input(user_emb)).squeeze(-1)
        return out
