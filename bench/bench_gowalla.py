"""Gowalla (LightGCN's split) as purchase prediction: full ranking, Recall@20 / NDCG@20.

LightGCN conventions (``shopgraph.graph.metrics.ranking_metrics``): every item is ranked for every
test user, the user's training items excluded, ``recall@K = hits / |test items|``. Runs, in one
process: popularity, ItemKNN (cosine, 200 neighbours, shrink 100) and ShopGNN with learnable item
id embeddings (no features), trained for a wall-clock budget (``--budget-min``, each model) on a
CPU; the table says how many epochs that bought. The models (``--models``):

* ``history`` — the product's default tower (``conv="history"``): a user is the scaled sum of
  the embeddings of the items in their history (one round of user <- item message passing), the
  score a dot product. Trained as the product trains without timestamps ("disjoint"
  supervision): each step takes a batch of users, hides a random ``--holdout`` share of each
  user's items from the graph and predicts them with a softmax over the whole catalogue (the
  user's visible items masked out, as they are at evaluation). After training, the product's
  item-neighbour channel (``--knn-ranks``: by default the ranks ``shopgraph train`` tries,
  ``graph.train.item_knn_ranks``, 64 to 2048 here; 0 turns it off): ItemKNN fitted on the pairs
  the tower trained on, factored at each rank, the rank and the weight chosen on the
  early-stopping pairs as the product chooses them on validation (``item_knn_channel``).
* ``lightgcn`` — 3 layers of weight-free LightGCN propagation over user and item id embeddings
  (sparse products), sampled softmax over shared negatives.

There is no validation split in this data. The settings were chosen on a validation carve-out of
the training pairs (``--val``: 10 % of each user's training items, seeded, become the "test"
pairs and are removed from training), never on the test pairs; the test run then evaluates once,
after the budget. On that carve-out, 6-minute budgets with one thread each, two runs at a time
(ItemKNN 0.1740 there): holdout 0.2 / lr 0.05 / hidden 128 0.1646, with a 256-wide user MLP
0.1636, lr 0.1 0.1644, holdout 0.5 0.1664 (the default). Without early stopping the tower
overfits after about 6 epochs (test 0.1251 after 15 minutes); it now early-stops on 5 % of the
training pairs held out of training, and dropout 0.25 on the item embeddings (the default) raised
the best early-stopping Recall@20 from 0.1669 to 0.1909 — chosen on those pairs, not on test. EASE is not run (two 41k² float32 matrices, 13 GB peak): its measured number
is quoted.

    OMP_WAIT_POLICY=PASSIVE nice python bench/bench_gowalla.py [--budget-min 15] [--models history,lightgcn]
        [--knn-ranks product] [--val] [--json out.json]

On a shared, oversubscribed CPU set ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of
spinning): on the 2-core shared machine the Reddit run took 95 s with it and about 15 minutes
per split without it.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import DATA_ROOT, machine_line, markdown_table, write_json
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import ItemKNN, Popularity
from shopgraph.graph.metrics import ranking_metrics
from shopgraph.graph.model import ModelConfig, ShopGNN
from shopgraph.graph.train import choose_item_knn, item_knn_ranks

PUBLISHED = {
    "LightGCN (paper)": (0.1830, 0.1554),
    "NGCF (paper)": (0.1570, 0.1327),
    "EASE λ=100 (measured here before, 13 GB, not rerun)": (0.1764, 0.1466),
    "ItemKNN (measured here before)": (0.1493, 0.1188),
    "LightGCN BPR, 15 min CPU (measured here before, 21 epochs)": (0.1329, float("nan")),
}


def read_lists(path: Path) -> Tensor:
    """``uid item item ...`` lines → ``LongTensor[2, P]``."""
    users: list[int] = []
    items: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            u = int(parts[0])
            users.extend([u] * (len(parts) - 1))
            items.extend(int(p) for p in parts[1:])
    return torch.tensor([users, items], dtype=torch.long)


def bipartite_graph(train: Tensor, num_users: int, num_items: int) -> HeteroData:
    data = HeteroData()
    data["user"].num_nodes = num_users
    data["item"].num_nodes = num_items
    data["user", "purchase", "item"].edge_index = train
    data["item", "rev_purchase", "user"].edge_index = train.flip(0)
    return data


class UserLists:
    """Each user's training items as CSR (``ptr [U + 1]``, ``items [P]``), for per-user batches."""

    def __init__(self, train: Tensor, num_users: int) -> None:
        order = torch.argsort(train[0], stable=True)
        self.items = train[1, order]
        self.ptr = torch.zeros(num_users + 1, dtype=torch.long)
        self.ptr[1:] = torch.cumsum(torch.bincount(train[0], minlength=num_users), 0)

    def count(self, users: Tensor) -> Tensor:
        return self.ptr[users + 1] - self.ptr[users]

    def edges(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """``(local_user [E], item [E])``: every training item of ``users``, users numbered 0..B-1."""
        cnt = self.count(users)
        first = torch.repeat_interleave(self.ptr[users], cnt)
        offset = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        return torch.repeat_interleave(torch.arange(users.numel()), cnt), self.items[first + offset]


def train_history(
    data: HeteroData, train: Tensor, *, budget_s: float, hidden: int, user_mlp: int, batch_users: int, holdout: float,
    lr: float, temperature: float, seed: int, stop_pairs: Tensor | None = None, eval_every: int = 3,
    patience: int = 3, dropout: float = 0.0,
) -> tuple[ShopGNN, dict[str, float]]:
    """The ``history`` tower with disjoint supervision (module docstring), for a wall-clock budget.
    Returns the model in eval mode (embed it on the graph to rank from) and its training stats.

    With ``stop_pairs`` (pairs held out of ``train`` and ``data``), Recall@20 on them is measured
    every ``eval_every`` epochs; the best weights are kept and training stops after ``patience``
    checks without improvement (or when the budget is spent).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig.from_data(data, id_embeddings=["item"], conv="history", hidden=hidden, dropout=dropout,
                                user_mlp=user_mlp)
    model = ShopGNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    lists = UserLists(train, num_users)
    trainable = torch.nonzero(lists.count(torch.arange(num_users)) >= 2).flatten()  # something left to see
    et = ("user", "purchase", "item")
    start = time.perf_counter()
    steps, epoch, seen = 0, 0, 0
    last_loss = float("nan")
    best: tuple[float, int, dict[str, Tensor]] | None = None
    bad = 0
    done = False
    while not done:
        epoch += 1
        order = trainable[torch.randperm(trainable.numel(), generator=gen)]
        for s in range(0, order.numel(), batch_users):
            users = order[s : s + batch_users]
            lu, items = lists.edges(users)
            hide = torch.rand(lu.numel(), generator=gen) < holdout
            step = HeteroData()
            step["user"].num_nodes = users.numel()
            step["item"].num_nodes = num_items
            step[et].edge_index = torch.stack([lu[~hide], items[~hide]])
            step["item", "rev_purchase", "user"].edge_index = torch.empty(2, 0, dtype=torch.long)
            model.train()
            emb = model.embed(step)
            logits = ShopGNN.score(emb["user"], emb["item"]) / temperature
            logits = logits.index_put((lu[~hide], items[~hide]), torch.tensor(float("-inf")))
            out = -torch.log_softmax(logits, 1)[lu[hide], items[hide]].mean()
            opt.zero_grad()
            out.backward()
            opt.step()
            steps += 1
            seen += users.numel()
            last_loss = float(out.detach())
            if time.perf_counter() - start > budget_s:
                done = True
                break
        note = ""
        if stop_pairs is not None and (epoch % eval_every == 0 or done):
            model.eval()
            with torch.no_grad():
                emb = model.embed(data)
            user_emb, item_emb = emb["user"], emb["item"]
            rec = ranking_metrics(lambda u, ue=user_emb, ie=item_emb: ShopGNN.score(ue[u], ie), train, stop_pairs,
                                  num_items,
                                  ks=(20,), batch_size=1024)["recall@20"]
            if best is None or rec > best[0]:
                best, bad = (rec, epoch, copy.deepcopy(model.state_dict())), 0
            else:
                bad += 1
                done = done or bad >= patience
            note = f" | early-stopping recall@20 {rec:.4f}"
        print(f"history epoch {epoch:3d} | steps {steps:5d} | loss {last_loss:.4f} | "
              f"{time.perf_counter() - start:6.0f}s{note}", flush=True)
    seconds = time.perf_counter() - start
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    stats = {"epochs": seen / max(trainable.numel(), 1), "steps": float(steps), "train_seconds": seconds,
             "last_loss": last_loss, "best_epoch": float(best[1]) if best else float(epoch),
             "stop_recall@20": best[0] if best else float("nan")}
    return model, stats


@torch.no_grad()
def item_knn_channel(model: ShopGNN, knn: ItemKNN, ranks: tuple[int, ...], fit_pairs: Tensor, stop_pairs: Tensor,
                     num_users: int, num_items: int) -> tuple[ShopGNN, dict[str, float]]:
    """The product's item-neighbour channel after training, chosen as ``shopgraph train`` chooses
    it (``graph.train.choose_item_knn``: ``knn``, ItemKNN on the pairs the tower trained on,
    factored at each rank, rank and weight by Recall@20), here on the early-stopping pairs.
    Returns the chosen model and ``{"rank=R weight=W": recall}``."""
    graph = bipartite_graph(fit_pairs, num_users, num_items)
    chosen, out = choose_item_knn(model, knn, ranks, graph, graph, fit_pairs, stop_pairs, torch.device("cpu"))
    for name, r in out.items():
        print(f"item-neighbour channel {name}: early-stopping recall@20 {r:.4f}", flush=True)
    return chosen, out


def train_gnn(
    data: HeteroData, train: Tensor, *, budget_s: float, loss: str, batch: int, negatives: int, lr: float,
    temperature: float, reg: float, seed: int,
) -> tuple[ShopGNN, dict[str, Tensor], dict[str, float]]:
    """Train until the wall-clock budget is spent (whole steps); returns model, embeddings, stats."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig.from_data(data, id_embeddings=["user", "item"], conv="lightgcn", hidden=64, layers=3,
                                dropout=0.0)
    model = ShopGNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    num_items = int(data["item"].num_nodes)
    n = train.size(1)
    start = time.perf_counter()
    steps, epoch, seen = 0, 0, 0
    last_loss = float("nan")
    done = False
    while not done:
        epoch += 1
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            u_idx, i_idx = train[0, idx], train[1, idx]
            model.train()
            emb = model.embed(data)
            u, i = emb["user"][u_idx], emb["item"][i_idx]
            pos = (u * i).sum(1)
            if loss == "bpr":
                j = torch.randint(0, num_items, (idx.numel(),), generator=gen)
                out = F.softplus((u * emb["item"][j]).sum(1) - pos).mean()
            else:  # sampled softmax over negatives shared by the batch (uniform: no logQ term)
                j = torch.randint(0, num_items, (negatives,), generator=gen)
                logits = torch.cat([pos.unsqueeze(1), u @ emb["item"][j].T], 1) / temperature
                out = F.cross_entropy(logits, torch.zeros(idx.numel(), dtype=torch.long))
            ego_u = model.id_emb["user"].weight[u_idx]
            ego_i = model.id_emb["item"].weight[i_idx]
            out = out + reg * (ego_u.pow(2).sum() + ego_i.pow(2).sum()) / idx.numel()
            opt.zero_grad()
            out.backward()
            opt.step()
            steps += 1
            seen += idx.numel()
            last_loss = float(out.detach())
            if time.perf_counter() - start > budget_s:
                done = True
                break
        print(f"lightgcn epoch {epoch:3d} | steps {steps:5d} | loss {last_loss:.4f} | {time.perf_counter() - start:6.0f}s",
              flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        emb = model.embed(data)
    stats = {"epochs": seen / n, "steps": float(steps), "train_seconds": seconds, "last_loss": last_loss}
    return model, emb, stats


def validation_carve(train: Tensor, share: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train', val)``: a seeded ``share`` of each user's training pairs becomes validation
    (users with fewer than 2 items keep theirs)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.rand(train.size(1), generator=gen) < share
    counts = torch.bincount(train[0])
    pick &= counts[train[0]] >= 2
    return train[:, ~pick], train[:, pick]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=15.0, help="training wall-clock budget per model (minutes)")
    ap.add_argument("--models", default="history", help="comma-separated: history, lightgcn")
    ap.add_argument("--val", action="store_true", help="evaluate on a 10%% validation carve-out of train (tuning)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    h = ap.add_argument_group("history tower")
    h.add_argument("--hidden", type=int, default=128)
    h.add_argument("--user-mlp", type=int, default=0, help="hidden size of the user-side MLP (0: none)")
    h.add_argument("--batch-users", type=int, default=512)
    h.add_argument("--holdout", type=float, default=0.5, help="share of each user's items predicted per step")
    h.add_argument("--history-lr", type=float, default=0.05)
    h.add_argument("--history-temperature", type=float, default=16.0)
    h.add_argument("--dropout", type=float, default=0.25, help="dropout on the item input embeddings")
    h.add_argument("--knn-ranks", default="product",
                   help="comma-separated ranks of the item-neighbour channel tried after training, rank and "
                        "weight chosen on the early-stopping pairs; 'product': the ranks `shopgraph train` "
                        "tries (graph.train.item_knn_ranks: 64,256,1024,2048 here); 0: off")
    g = ap.add_argument_group("lightgcn")
    g.add_argument("--loss", choices=("softmax", "bpr"), default="softmax")
    g.add_argument("--batch", type=int, default=16384, help="positive pairs per step (one propagation each)")
    g.add_argument("--negatives", type=int, default=2048, help="shared negatives per step (softmax)")
    g.add_argument("--lr", type=float, default=0.005)
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--reg", type=float, default=1e-4)
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"history", "lightgcn"})
    if unknown:
        ap.error(f"--models: unknown {unknown} (expected history and/or lightgcn)")
    torch.set_num_threads(args.threads)
    knn_ranks: tuple[int, ...] | None = None  # None: the product's, once the catalogue size is known
    if args.knn_ranks.strip() != "product":
        try:
            knn_ranks = tuple(sorted({int(r) for r in args.knn_ranks.split(",") if r.strip()} - {0}))
        except ValueError:
            ap.error(f"--knn-ranks: expected 'product' or comma-separated integers (got {args.knn_ranks!r})")
        if any(r < 0 for r in knn_ranks):
            ap.error(f"--knn-ranks: expected ranks >= 0 (got {args.knn_ranks!r})")

    root = DATA_ROOT / "gowalla"
    train, test = read_lists(root / "train.txt"), read_lists(root / "test.txt")
    num_users = int(max(train[0].max(), test[0].max())) + 1
    num_items = int(max(train[1].max(), test[1].max())) + 1
    if knn_ranks is None:
        knn_ranks = item_knn_ranks(num_items)
    split = "test"
    if args.val:
        train, test = validation_carve(train, 0.1, seed=1)
        split = "validation carve-out (10 % of train)"
    print(f"gowalla: {num_users:,} users, {num_items:,} items, {train.size(1):,} train / {test.size(1):,} "
          f"evaluated ({split})", flush=True)
    results: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}

    def evaluate(name: str, score_fn: object, fit_seconds: float) -> None:
        t0 = time.perf_counter()
        m = ranking_metrics(score_fn, train, test, num_items, ks=(20,), batch_size=512)  # type: ignore[arg-type]
        m["fit_seconds"] = fit_seconds
        m["eval_seconds"] = time.perf_counter() - t0
        results[name] = m
        print(f"{name}: recall@20 {m['recall@20']:.4f} ndcg@20 {m['ndcg@20']:.4f} "
              f"(fit {fit_seconds:.0f}s, eval {m['eval_seconds']:.0f}s)", flush=True)

    data = bipartite_graph(train, num_users, num_items)
    budget_s = args.budget_min * 60
    for name in models:
        if name == "history":
            # early stopping on 5 % of the training pairs, held out of training; the final user
            # vectors then read every training item (the model has no user parameters)
            fit_pairs, stop_pairs = validation_carve(train, 0.05, seed=2)
            model, stats = train_history(
                bipartite_graph(fit_pairs, num_users, num_items), fit_pairs, budget_s=budget_s, hidden=args.hidden,
                user_mlp=args.user_mlp, batch_users=args.batch_users, holdout=args.holdout, lr=args.history_lr,
                temperature=args.history_temperature, seed=args.seed, stop_pairs=stop_pairs, dropout=args.dropout,
            )
            knn_note = ""
            if knn_ranks:
                t0 = time.perf_counter()
                knn = ItemKNN(neighbors=200, shrink=100).fit(fit_pairs, num_users, num_items)
                model, recalls = item_knn_channel(model, knn, knn_ranks, fit_pairs, stop_pairs, num_users, num_items)
                stats.update({f"stop_recall@20_knn {setting}": r for setting, r in recalls.items()})
                best_stop = max(recalls.values())
                stats["knn_seconds"] = time.perf_counter() - t0
                weight = float(model.knn_weight) if model.config.knn_rank else 0.0
                stats["knn_rank"], stats["knn_weight"] = (float(model.config.knn_rank), weight) if weight else (0.0, 0.0)
                knn_note = (f"; item-neighbour channel rank {int(stats['knn_rank'])}, weight {stats['knn_weight']:g} "
                            f"of ranks {','.join(map(str, knn_ranks))} (early-stopping recall@20 "
                            f"{stats['stop_recall@20']:.4f} -> {best_stop:.4f}, {stats['knn_seconds']:.0f}s)")
            with torch.no_grad():
                emb = model.embed(data)
            key = "shopgnn_history"
            notes[key] = (f"history tower, hidden {args.hidden}, user MLP {args.user_mlp}, dropout {args.dropout:g}; "
                          f"{stats['epochs']:.1f} "
                          f"epochs ({int(stats['steps'])} steps of {args.batch_users} users) in "
                          f"{stats['train_seconds'] / 60:.1f} of {args.budget_min:g} min, best epoch "
                          f"{int(stats['best_epoch'])} on the early-stopping pairs{knn_note}")
        else:
            _, emb, stats = train_gnn(
                data, train, budget_s=budget_s, loss=args.loss, batch=args.batch, negatives=args.negatives,
                lr=args.lr, temperature=args.temperature, reg=args.reg, seed=args.seed,
            )
            key = "shopgnn_lightgcn"
            notes[key] = (f"LightGCN propagation, {args.loss} loss; {stats['epochs']:.1f} epochs "
                          f"({int(stats['steps'])} steps of {args.batch}) in {args.budget_min:g} min")
        user_emb, item_emb = emb["user"], emb["item"]
        evaluate(key, lambda u, ue=user_emb, ie=item_emb: ShopGNN.score(ue[u], ie), stats["train_seconds"])
        results[key].update(stats)

    if not args.skip_baselines:
        for name, model in (("popularity", Popularity()), ("itemknn", ItemKNN(neighbors=200, shrink=100))):
            t0 = time.perf_counter()
            model.fit(train, num_users, num_items)
            evaluate(name, model.score, time.perf_counter() - t0)

    refs = {k: v for k, v in results.items() if k in ("popularity", "itemknn")}
    header = ["method", "Recall@20", "NDCG@20"] + [f"ratio to {k} (R@20)" for k in refs] + ["fit s", "note"]
    rows = []
    for name, m in results.items():
        rows.append([name, f"{m['recall@20']:.4f}", f"{m['ndcg@20']:.4f}"]
                    + [f"{m['recall@20'] / r['recall@20']:.2f}" for r in refs.values()]
                    + [f"{m['fit_seconds']:.0f}", notes.get(name, "")])
    if not args.val:
        for name, (rec, ndcg) in PUBLISHED.items():
            rows.append([name, f"{rec:.4f}", "–" if np.isnan(ndcg) else f"{ndcg:.4f}"]
                        + [f"{rec / r['recall@20']:.2f}" for r in refs.values()] + ["–", "quoted, not run here"])
    print()
    print(f"## Gowalla (LightGCN split, full ranking, train items excluded; evaluated on: {split})")
    print()
    print(markdown_table(header, rows))
    print()
    print(f"- {machine_line()}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
