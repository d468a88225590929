"""Purchases on the 5,000-user synthetic shop over several seeds: the GNN against the baselines.

Per seed ``s``: the same trained run folder as ``bench_shop_fraud.py`` (``common.shop_run``:
``generate_shop(seed=s)``, ``build_run`` without the text and image encoders (with them:
``--encoders``), ``train_run`` with the
default :class:`TrainConfig`; a shared ``--workdir`` reuses what is there), then the purchase part
of ``shopgraph evaluate`` with the same library calls (``graph.evaluate.gnn_purchase_test``,
``graph.baselines.purchase_baselines``) on test, and the baselines on validation too. The GNN's
validation Recall@20 is the one training chose it by (``model/history.json``: the best of
``item_knn_calibration``, ``consider_calibration``, ``group_mix_calibration`` or
``revisit_calibration``, or the best epoch's ``val_recall@20``).

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 nice python bench/bench_shop_purchase.py \\
        [--seeds 0 1 2 3 4] [--users 5000] [--epochs N] [--train KEY=JSON ...]
        [--encoders] [--workdir DIR --keep] [--json out.json]

Prints one line per seed and a markdown table of validation and test Recall@20 of the GNN,
``itemknn_all_events`` and ``itemknn_revisit``, with the GNN's ratio to each, and the means.

It also measures a score-level ensemble that is *not* the product's scorer: each user's GNN
scores (dot product + revisit term) and ``itemknn_revisit`` scores, min-max scaled per user,
``gnn + w · knn``, with ``w`` in :data:`ENSEMBLE_WEIGHTS` picked on validation Recall@20 (the
validation view: train-period graph, train pairs excluded). Its per-user scaling and the ItemKNN
part are not an inner product, so FAISS could not serve it exactly; it is here to measure what the
two signals give together.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine_line, markdown_table, shop_run, train_overrides, write_json
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import RevisitBonus, _interaction_events, purchase_baselines
from shopgraph.graph.build import Split, message_passing_graph, target_pairs, visible_test_pairs
from shopgraph.graph.evaluate import gnn_purchase_test
from shopgraph.graph.metrics import ranking_metrics
from shopgraph.graph.model import ShopGNN, purchase_scores
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import MODEL_DIR, embed_graph, lean_graph, load_model, revisit_graph

REFERENCES = ("itemknn_all_events", "itemknn_revisit")
ENSEMBLE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def _min_max(scores: Tensor) -> Tensor:
    lo = scores.min(1, keepdim=True).values
    span = (scores.max(1, keepdim=True).values - lo).clamp(min=1e-9)
    return (scores - lo) / span


def ensemble_recall(model: ShopGNN, data: HeteroData, split: Split) -> dict[float, float]:
    """Recall@20 on ``split`` of ``min_max(gnn) + w · min_max(itemknn_revisit)`` for each ``w``."""
    cpu = torch.device("cpu")
    graph = lean_graph(message_passing_graph(data, split))
    emb = embed_graph(model, graph, cpu)
    gnn = purchase_scores(emb["user"], emb["item"], revisit_graph(model, graph, cpu, emb))
    exclude = visible_test_pairs(data) if split == "test" else target_pairs(data, "train")
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    knn = RevisitBonus().fit(exclude, num_users, num_items, _interaction_events(data, split))

    def scorer(w: float) -> Any:
        return lambda users: _min_max(gnn(users)) + w * _min_max(knn.score(users))

    pairs = target_pairs(data, split)
    return {w: ranking_metrics(scorer(w), exclude, pairs, num_items, ks=(20,))["recall@20"]
            for w in ENSEMBLE_WEIGHTS}


def gnn_val_recall(history: dict[str, Any]) -> float:
    """The validation Recall@20 training selected the served model by (the last calibration:
    item-neighbour weight, else consideration-set score, else group-mix weight, else revisit scale,
    else the best epoch's)."""
    calib = (history.get("item_knn_calibration") or history.get("consider_calibration")
             or history.get("group_mix_calibration") or history.get("revisit_calibration") or {})
    if calib:
        return float(max(calib.values()))
    best = [h for h in history.get("epochs", []) if int(h["epoch"]) == int(history.get("best_epoch", -1))]
    return float(best[0].get("val_recall@20", float("nan"))) if best else float("nan")


def run_seed(seed: int, workdir: Path, *, users: int, epochs: int | None,
             train: dict[str, Any] | None = None, encoders: bool = False) -> dict[str, Any]:
    """Recall@20 on val and test of the GNN and every purchase baseline for one seed."""
    run_path, seconds = shop_run(seed, workdir, users=users, epochs=epochs, train=train, encoders=encoders)
    run = RunDir(run_path)
    t0 = time.perf_counter()
    model = load_model(run.path / MODEL_DIR, torch.device("cpu"))
    data = run.load_graph()
    _, gnn = gnn_purchase_test(model, data, torch.device("cpu"))
    seconds["gnn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = {k: v["recall@20"] for k, v in purchase_baselines(data, split="val").items()}
    test = {k: v["recall@20"] for k, v in purchase_baselines(data, split="test").items()}
    seconds["baselines"] = time.perf_counter() - t0
    val["gnn"] = gnn_val_recall(run.read_json(f"{MODEL_DIR}/history.json"))
    test["gnn"] = float(gnn["recall@20"])
    t0 = time.perf_counter()
    ens_val, ens_test = ensemble_recall(model, data, "val"), ensemble_recall(model, data, "test")
    w = max(ENSEMBLE_WEIGHTS, key=lambda k: ens_val[k])
    val["ensemble"], test["ensemble"] = ens_val[w], ens_test[w]
    seconds["ensemble"] = time.perf_counter() - t0
    return {"seed": seed, "val": val, "test": test, "test_users": int(gnn["users"]),
            "ensemble_weight": w, "seconds": seconds}


def report(results: list[dict[str, Any]]) -> str:
    """One row per seed and a mean row: val / test Recall@20 and the GNN's test ratios."""
    rows = []
    for r in results:
        v, t = r["val"], r["test"]
        rows.append([str(r["seed"]), f"{v['gnn']:.4f} / {t['gnn']:.4f}"]
                    + [f"{v[n]:.4f} / {t[n]:.4f}" for n in REFERENCES]
                    + [f"{t['gnn'] / t[n]:.3f}" for n in REFERENCES]
                    + [f"{v['ensemble']:.4f} / {t['ensemble']:.4f} (w {r['ensemble_weight']:g})",
                       f"{t['ensemble'] / t['itemknn_revisit']:.3f}"])

    def mean(split: str, name: str) -> float:
        return float(np.mean([r[split][name] for r in results]))

    def mean_sd(num: str, den: str) -> str:
        x = np.array([r["test"][num] / r["test"][den] for r in results])
        return f"{x.mean():.3f} ± {x.std(ddof=1) if x.size > 1 else 0.0:.3f}"

    rows.append(["mean", f"{mean('val', 'gnn'):.4f} / {mean('test', 'gnn'):.4f}"]
                + [f"{mean('val', n):.4f} / {mean('test', n):.4f}" for n in REFERENCES]
                + [mean_sd("gnn", n) for n in REFERENCES]
                + [f"{mean('val', 'ensemble'):.4f} / {mean('test', 'ensemble'):.4f}",
                   mean_sd("ensemble", "itemknn_revisit")])
    header = (["seed", "GNN val / test"] + [f"{n} val / test" for n in REFERENCES]
              + [f"GNN ÷ {n} (test)" for n in REFERENCES]
              + ["ensemble GNN + itemknn_revisit val / test", "ensemble ÷ itemknn_revisit (test)"])
    return markdown_table(header, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs (default: its own)")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=JSON",
                    help="TrainConfig settings for runs trained here, e.g. item_counts=true hidden=128 "
                         "(run folders already trained in --workdir are reused as they are)")
    ap.add_argument("--encoders", action="store_true",
                    help="build with the text and image encoders (shopgraph build's default) instead of without")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep shops and run folders here (reused when present)")
    ap.add_argument("--keep", action="store_true", help="do not delete --workdir afterwards")
    ap.add_argument("--json", default=None, help="also write the raw per-seed results here")
    args = ap.parse_args()
    if args.users < 100:
        ap.error(f"--users: expected at least 100 (got {args.users})")
    train = train_overrides(ap, args.train)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_shop_purchase_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results = []
    try:
        for seed in args.seeds:
            r = run_seed(seed, workdir, users=args.users, epochs=args.epochs, train=train, encoders=args.encoders)
            results.append(r)
            t, v = r["test"], r["val"]
            print(f"seed {seed}: test R@20 gnn {t['gnn']:.4f} (val {v['gnn']:.4f}) | "
                  + " | ".join(f"{n} {t[n]:.4f} (val {v[n]:.4f}) ratio {t['gnn'] / t[n]:.3f}" for n in REFERENCES)
                  + f" | ensemble {t['ensemble']:.4f} (val {v['ensemble']:.4f}, w {r['ensemble_weight']:g})"
                  + " | " + " ".join(f"{k} {s:.0f}s" for k, s in r["seconds"].items()), flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n## Purchases on the {args.users:,}-user synthetic shop, seeds {args.seeds} (Recall@20)\n")
    print(report(results))
    print(f"\n- total {time.perf_counter() - t_start:.0f} s; {machine_line()}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
