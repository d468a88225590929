"""Gowalla (LightGCN's split) as purchase prediction: full ranking, Recall@20 / NDCG@20.

LightGCN conventions (``shopgraph.graph.metrics.ranking_metrics``): every item is ranked for every
test user, the user's training items excluded, ``recall@K = hits / |test items|``. Runs, in one
process: popularity, ItemKNN (cosine, 200 neighbours, shrink 100) and ShopGNN with learnable id
embeddings (no features) and weight-free LightGCN propagation (``conv="lightgcn"``, 3 layers,
dim 64), trained for a wall-clock budget (``--budget-min``) on a CPU; the table says how many
epochs that bought. There is no validation split in this data: the GNN is evaluated once, after
its budget (no test-set model selection). EASE is not run (two 41k² float32 matrices, 13 GB peak):
its measured number is quoted.

    OMP_WAIT_POLICY=PASSIVE nice python bench/bench_gowalla.py [--budget-min 15] [--loss softmax|bpr] [--json out.json]

On a shared, oversubscribed CPU set ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of
spinning): on the 2-core shared machine the Reddit run took 95 s with it and about 15 minutes
per split without it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import DATA_ROOT, machine_line, markdown_table
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import ItemKNN, Popularity
from shopgraph.graph.metrics import ranking_metrics
from shopgraph.graph.model import ModelConfig, ShopGNN

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
        print(f"epoch {epoch:3d} | steps {steps:5d} | loss {last_loss:.4f} | {time.perf_counter() - start:6.0f}s",
              flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        emb = model.embed(data)
    stats = {"epochs": seen / n, "steps": float(steps), "train_seconds": seconds, "last_loss": last_loss}
    return model, emb, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=15.0, help="GNN training wall-clock budget (minutes)")
    ap.add_argument("--loss", choices=("softmax", "bpr"), default="softmax")
    ap.add_argument("--batch", type=int, default=16384, help="positive pairs per step (one propagation each)")
    ap.add_argument("--negatives", type=int, default=2048, help="shared negatives per step (softmax)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--reg", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    root = DATA_ROOT / "gowalla"
    train, test = read_lists(root / "train.txt"), read_lists(root / "test.txt")
    num_users = int(max(train[0].max(), test[0].max())) + 1
    num_items = int(max(train[1].max(), test[1].max())) + 1
    print(f"gowalla: {num_users:,} users, {num_items:,} items, {train.size(1):,} train / {test.size(1):,} test",
          flush=True)
    results: dict[str, dict[str, float]] = {}

    def evaluate(name: str, score_fn: object, fit_seconds: float) -> None:
        t0 = time.perf_counter()
        m = ranking_metrics(score_fn, train, test, num_items, ks=(20,), batch_size=512)  # type: ignore[arg-type]
        m["fit_seconds"] = fit_seconds
        m["eval_seconds"] = time.perf_counter() - t0
        results[name] = m
        print(f"{name}: recall@20 {m['recall@20']:.4f} ndcg@20 {m['ndcg@20']:.4f} "
              f"(fit {fit_seconds:.0f}s, eval {m['eval_seconds']:.0f}s)", flush=True)

    data = bipartite_graph(train, num_users, num_items)
    _, emb, stats = train_gnn(
        data, train, budget_s=args.budget_min * 60, loss=args.loss, batch=args.batch, negatives=args.negatives,
        lr=args.lr, temperature=args.temperature, reg=args.reg, seed=args.seed,
    )
    user_emb, item_emb = emb["user"], emb["item"]
    evaluate("shopgnn_lightgcn", lambda u: ShopGNN.score(user_emb[u], item_emb), stats["train_seconds"])
    results["shopgnn_lightgcn"].update(stats)

    if not args.skip_baselines:
        for name, model in (("popularity", Popularity()), ("itemknn", ItemKNN(neighbors=200, shrink=100))):
            t0 = time.perf_counter()
            model.fit(train, num_users, num_items)
            evaluate(name, model.score, time.perf_counter() - t0)

    refs = {k: v for k, v in results.items() if k in ("popularity", "itemknn")}
    header = ["method", "Recall@20", "NDCG@20"] + [f"ratio to {k} (R@20)" for k in refs] + ["fit s", "note"]
    rows = []
    for name, m in results.items():
        note = ""
        if name == "shopgnn_lightgcn":
            note = (f"{args.loss} loss, {stats['epochs']:.1f} epochs ({int(stats['steps'])} steps of {args.batch}) "
                    f"in a {args.budget_min:g}-min budget")
        rows.append([name, f"{m['recall@20']:.4f}", f"{m['ndcg@20']:.4f}"]
                    + [f"{m['recall@20'] / r['recall@20']:.2f}" for r in refs.values()]
                    + [f"{m['fit_seconds']:.0f}", note])
    for name, (rec, ndcg) in PUBLISHED.items():
        rows.append([name, f"{rec:.4f}", "–" if np.isnan(ndcg) else f"{ndcg:.4f}"]
                    + [f"{rec / r['recall@20']:.2f}" for r in refs.values()] + ["–", "quoted, not run here"])
    print()
    print("## Gowalla (LightGCN split, full ranking, train items excluded)")
    print()
    print(markdown_table(header, rows))
    print()
    print(f"- {machine_line()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
