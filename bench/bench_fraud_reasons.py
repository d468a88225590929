"""How long a fraud score's reasons take: per account, served trees vs the GNN's fraud head.

Usage::

    make demo                      # or build + train a run of your own
    python bench/bench_fraud_reasons.py --run demo_data/run_5000_0 [--users 20]

``ShopService.score_user`` gives each score up to three reasons. With boosted trees serving
(the demo's ``graph_trees``) they are TreeSHAP contributions, about a millisecond. When the GNN's
fraud head serves they are integrated gradients of it (``graph.explain.explain_user``), computed
per call. This script times that path on the run's graph for two models that read the users'
features (the run's own history tower with user features added, and a 2-layer SAGE model; both
untrained: the time does not depend on the weights), each way: with a forward pass over the whole
graph first (before the fifteenth session) and with the served scores given instead (now: the
user's computation subgraph is checked against them). Ratios are against the whole-graph pass,
timed in the same process, alternated over ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from common import machine_line

from shopgraph.graph.explain import explain_user
from shopgraph.graph.model import ModelConfig, ShopGNN
from shopgraph.graph.run import RunDir
from shopgraph.retrieval.service import ShopService, fraud_attribution_of


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (after `shopgraph index`)")
    ap.add_argument("--users", type=int, default=20, help="accounts timed per model and way (default 20)")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    torch.manual_seed(args.seed)
    run = RunDir(args.run)
    data = run.load_graph()
    if "x" not in data["user"]:
        raise SystemExit(f"--run: {args.run} has no user features; the GNN's reasons need them")
    t0 = time.perf_counter()
    service = ShopService.from_run(args.run)
    print(f"ShopService.from_run with the served scorer's reasons ({service.fraud.get('kind')}): "
          f"{time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(args.seed)
    users = rng.choice(int(data["user"].num_nodes), args.users, replace=False).tolist()
    ids = [service.user_ids[u] for u in users]
    t0 = time.perf_counter()
    service.score_users(ids)
    served_ms = (time.perf_counter() - t0) / len(ids) * 1e3
    print(f"score_users, served scorer's reasons: {served_ms:.1f} ms an account")

    n_features = int(data["user"].x.size(1))
    models: dict[str, ShopGNN] = {
        "2-layer SAGE": ShopGNN(ModelConfig.from_data(data, hidden=64, layers=2, conv="sage")),
    }
    if service.model is not None:
        own = service.model.config
        models = {"the run's history tower + user features":
                  ShopGNN(dataclasses.replace(own, in_dims={**own.in_dims, "user": n_features})), **models}
    print(f"{'model':42s} | whole-graph pass, ms | served scores, ms | ratio | score_users, ms an account")
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            prob = torch.sigmoid(model.fraud_logit(model.embed(data)["user"]).reshape(-1)).numpy()
        times: dict[str, list[float]] = {"full": [], "served": []}
        for _ in range(args.rounds):
            for way, given in (("full", None), ("served", prob)):
                t0 = time.perf_counter()
                for u in users:
                    explain_user(model, data, u, top_k=n_features, max_neighbours=0, fraud_prob=given)
                times[way].append((time.perf_counter() - t0) / len(users) * 1e3)
        service._fraud_attribution = fraud_attribution_of(run, data, model, {"kind": "gnn_head"}, prob)
        service.fraud_prob = prob
        t0 = time.perf_counter()
        service.score_users(ids)
        batch_ms = (time.perf_counter() - t0) / len(ids) * 1e3
        full, served = float(np.median(times["full"])), float(np.median(times["served"]))
        print(f"{name:42s} | {full:20.1f} | {served:17.1f} | {full / served:5.2f} | {batch_ms:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
