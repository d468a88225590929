"""Evaluate a trained run on the test period against the baselines; write metrics and a report.

Purchase: full ranking over the whole catalogue with message passing on
``message_passing_graph(data, "test")`` (train + val periods); each user's train and val target
items are excluded; the relevant items are ``target_pairs(data, "test")``. The baselines see the
same pairs (``baselines.purchase_baselines``) and the same harness (``metrics.ranking_metrics``).

Fraud: the serving scorer of ``fraud.json`` (a ``graph.fraud_scorer`` candidate) on ``test_mask`` users,
thresholded at the validation-chosen threshold; baselines from ``baselines.fraud_baselines``.

Writes ``RUN/metrics.json`` (shape in ``docs/ARCHITECTURE.md``), ``RUN/report.md`` and PNG plots
under ``RUN/plots/``.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.build import message_passing_graph, target_pairs, visible_test_pairs
from shopgraph.graph.fraud_scorer import evaluate_fraud_candidates
from shopgraph.graph.metrics import paired_difference
from shopgraph.graph.model import ShopGNN, purchase_scores
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import (
    MODEL_DIR,
    FraudScorer,
    embed_graph,
    lean_graph,
    load_model,
    resolve_device,
    revisit_graph,
)
from shopgraph.graph.wording import FRAUD_SCORER_NAMES

logger = logging.getLogger(__name__)

PURCHASE_KEYS = ("recall@10", "ndcg@10", "hit@10", "recall@20", "ndcg@20", "hit@20", "coverage@20")
FRAUD_KEYS = ("auroc", "auprc", "rec@k", "precision", "recall", "threshold")
EVALUATE_STAGE = "shopgraph evaluate"  # the command that writes metrics.json, report.md and plots/


def _model_kind(model: ShopGNN) -> str:
    """``shopgnn-<conv>`` with ``+revisit``, ``+groupmix``, ``+itemknn`` and ``+consider`` for the
    score terms in use (the last three only when calibration kept a weight above 0)."""
    kind = f"shopgnn-{model.config.conv}" + ("+revisit" if model.config.revisit else "")
    if model.config.groups and float(model.group_weight) > 0:
        kind += "+groupmix"
    if model.config.knn_rank and float(model.knn_weight) > 0:
        kind += "+itemknn"
    if model.config.consider and float(model.consider_weight) > 0:
        kind += "+consider"
    return kind


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _plots(run: RunDir, history: dict[str, Any], pr: dict[str, tuple[np.ndarray, np.ndarray]],
           made_from: dict[str, str | None]) -> list[str]:
    """Training curves and test precision–recall curves; returns the written relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    written: list[str] = []
    epochs = history.get("epochs", [])
    if epochs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        x = [e["epoch"] for e in epochs]
        for key in ("loss", "rank_loss", "fraud_loss"):
            axes[0].plot(x, [e[key] for e in epochs], label=key)
        axes[0].set_xlabel("epoch")
        axes[0].set_title("training loss")
        axes[0].legend()
        for key in ("val_recall@20", "val_auprc"):
            pts = [(e["epoch"], e[key]) for e in epochs if key in e]
            if pts:
                axes[1].plot(*zip(*pts), marker="o", ms=3, label=key)
        if history.get("best_epoch"):
            axes[1].axvline(history["best_epoch"], color="grey", ls="--", lw=1, label="best epoch")
        axes[1].set_xlabel("epoch")
        axes[1].set_title("validation")
        axes[1].legend()
        run.write_bytes("plots/training.png", _png(fig), made_from=made_from, stage=EVALUATE_STAGE)
        plt.close(fig)
        written.append("plots/training.png")
    if pr:
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, (y, p) in pr.items():
            precision, recall, _ = precision_recall_curve(y, p)
            ax.plot(recall, precision, label=name)
        ax.axhline(float(np.mean(next(iter(pr.values()))[0])), color="grey", ls=":", lw=1, label="base rate")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("fraud, test users")
        ax.legend(fontsize="small")
        run.write_bytes("plots/fraud_pr.png", _png(fig), made_from=made_from, stage=EVALUATE_STAGE)
        plt.close(fig)
        written.append("plots/fraud_pr.png")
    return written


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _report(metrics: dict[str, Any], data: HeteroData, history: dict[str, Any], fraud_info: dict[str, Any],
            candidates: dict[str, dict[str, float]], plots: list[str], n_test: int) -> str:
    lines = ["# ShopGraph evaluation report", ""]
    split_line = f"Split: **{data.split_kind}**"
    if data.split_kind == "temporal":
        split_line += f" (cut times {list(data.split_times)}; train < val < test in time)"
    else:
        split_line += " (no timestamps: a seeded per-user random split of the target pairs)"
    lines += [split_line, "",
              f"Graph: {int(data['user'].num_nodes):,} users, {int(data['item'].num_nodes):,} items, "
              f"{int(data['device'].num_nodes) if 'device' in data.node_types else 0:,} devices; "
              f"{n_test:,} test pairs of {data.target!r}.",
              f"Training: best epoch {history.get('best_epoch')} of {len(history.get('epochs', []))}, "
              f"{_fmt(history.get('epoch_seconds'))} s per epoch.", ""]
    p = metrics["purchase"]
    rows = {"GNN (" + p["gnn"]["kind"] + ")": p["gnn"], **p["baselines"]}
    best_base = max((v["recall@20"] for v in p["baselines"].values()), default=float("nan"))
    lines += ["## Purchase (test, full ranking, train+val items excluded)", "",
              "| model | " + " | ".join(PURCHASE_KEYS) + " | Recall@20 / best baseline |",
              "|---|" + "---|" * (len(PURCHASE_KEYS) + 1)]
    for name, m in rows.items():
        ratio = m["recall@20"] / best_base if best_base and best_base > 0 else float("nan")
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in PURCHASE_KEYS) + f" | {_fmt(ratio)} |")
    f = metrics["fraud"]
    lines += ["", "## Fraud (test users)", ""]
    if f["gnn"].get("kind") == "none":
        lines.append("No usable fraud labels: not evaluated.")
    else:
        best_f = max((v["auprc"] for v in f["baselines"].values()), default=float("nan"))
        lines += [f"Serving scorer: **{f['gnn']['kind']}** (validation AUPRC {_fmt(fraud_info.get('val_auprc'))}; "
                  f"candidates {', '.join(f'{k} {_fmt(v)}' for k, v in fraud_info.get('candidates', {}).items())}). "
                  f"Serving threshold {_fmt(fraud_info.get('threshold'))} (max F1 on the validation users' "
                  "serving scores). In the table every scorer is refitted at the test cut and thresholded at "
                  "the max F1 of its own validation scores.", "",
                  "| model | " + " | ".join(FRAUD_KEYS) + " | AUPRC / best baseline |",
                  "|---|" + "---|" * (len(FRAUD_KEYS) + 1)]
        frows = {f"served scorer ({f['gnn']['kind']})": f["gnn"],
                 **{f"candidate ({k})": v for k, v in candidates.items() if k != f["gnn"]["kind"]},
                 **f["baselines"]}
        for name, m in frows.items():
            ratio = m["auprc"] / best_f if best_f and best_f > 0 else float("nan")
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in FRAUD_KEYS) + f" | {_fmt(ratio)} |")
        held = fraud_info.get("held_out")
        if isinstance(held, dict):
            lines += ["", f"The served scorer was fitted on the labels of {fraud_info.get('train_users')} training "
                      "accounts, so its scores of them are fitted rather than predicted. Refitted without their "
                      f"labels ({held.get('folds')} folds; the service gives these as `held_out_probability`), it "
                      f"scores the {held.get('accounts')} that got a held-out score at AUPRC "
                      f"{_fmt(held.get('auprc'))}, AUROC {_fmt(held.get('auroc'))}, and at the serving threshold "
                      f"finds {_fmt(held.get('recall'))} of their frauds at precision {_fmt(held.get('precision'))}."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def gnn_purchase_test(model: ShopGNN, data: HeteroData, dev: torch.device,
                      per_user: list[np.ndarray] | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The model's test-period purchase ranking, as ``shopgraph evaluate`` reports it: embeddings
    (and revisit term) from the graph of train + val events, every item ranked, each user's
    train + val purchases excluded, metrics on the new test pairs.

    Returns:
        ``(test-graph embeddings {node type: [N, D]}, ranking metrics)``; ``per_user`` receives
        the per-user recalls at 20 (:func:`shopgraph.graph.metrics.ranking_metrics`).
    """
    from shopgraph.graph.metrics import ranking_metrics

    test_graph = lean_graph(message_passing_graph(data, "test")).to(dev)
    test_emb = embed_graph(model, test_graph, dev)
    exclude, test = visible_test_pairs(data), target_pairs(data, "test")
    if test.size(1) == 0:
        raise ValueError(f"data: the test period has no new {data.target!r} pairs to evaluate")
    scores = purchase_scores(test_emb["user"], test_emb["item"], revisit_graph(model, test_graph, dev, test_emb))
    return test_emb, ranking_metrics(scores, exclude, test, int(data["item"].num_nodes), per_user=per_user)


def evaluate_run(run_dir: str, *, baselines: bool = True, device: str | None = None) -> dict[str, Any]:
    """Evaluate the trained model of a run folder on the test period.

    Args:
        run_dir: a run folder after ``shopgraph train``.
        baselines: also fit and evaluate the purchase and fraud baselines.
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when present).

    Returns:
        The metrics dict written to ``RUN/metrics.json``.
    """
    run = RunDir(run_dir)
    inputs = ("graph.pt", f"{MODEL_DIR}/model.safetensors", f"{MODEL_DIR}/config.json", "fraud.json")
    for rel in inputs:
        if not run.has(rel):
            raise FileNotFoundError(f"run folder {run.path}: no {rel} (run `shopgraph train --run {run.path}` first)")
    made_from = run.sources(*inputs)  # before reading them: what the metrics describe
    dev = resolve_device(device)
    run.path_of(f"{MODEL_DIR}/model.safetensors")  # checksum check before loading
    run.path_of(f"{MODEL_DIR}/config.json")
    model = load_model(run.path / MODEL_DIR, dev)
    data = run.load_graph()
    fraud_info = run.read_json("fraud.json")
    history = run.read_json(f"{MODEL_DIR}/history.json") if run.has(f"{MODEL_DIR}/history.json") else {}

    # purchase: message passing on train + val, rank everything, exclude train + val items
    ours: list[np.ndarray] = []
    test_emb, rm = gnn_purchase_test(model, data, dev, per_user=ours)
    test = target_pairs(data, "test")
    purchase: dict[str, Any] = {"gnn": {"kind": _model_kind(model), **{k: rm[k] for k in PURCHASE_KEYS}},
                                "baselines": {},
                                # what the numbers are measured on: a reader weighs a difference by them
                                "test": {"users": int(torch.unique(test[0]).numel()), "purchases": int(test.size(1))}}
    if baselines:
        from shopgraph.graph.baselines import purchase_baselines

        content = data["item"].x if "x" in data["item"] else None
        theirs: dict[str, np.ndarray] = {}
        purchase["baselines"] = purchase_baselines(data, split="test", item_content=content, per_user=theirs)
        if purchase["baselines"] and purchase["test"]["users"] >= 2:
            # the lead over the best baseline, user by user: how much of it a test set this size leaves to chance
            best = max(purchase["baselines"], key=lambda name: purchase["baselines"][name]["recall@20"])
            purchase["test"]["vs_best"] = {"baseline": best, "metric": "recall@20",
                                           **paired_difference(ours[0], theirs[best])}

    # fraud: refit the (deterministic) scorer selection, then score test users on the test graph
    fraud: dict[str, Any] = {"gnn": {"kind": "none"}, "baselines": {}}
    candidates: dict[str, dict[str, float]] = {}
    pr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if fraud_info.get("kind", "none") != "none":
        # refit every candidate training compared (deterministic under the seed); serve fraud.json's
        scorer = FraudScorer(fraud_info["kind"], float(fraud_info["threshold"]), float(fraud_info.get("val_auprc", "nan")),
                             dict(fraud_info.get("candidates", {})), None)
        evals = evaluate_fraud_candidates(model, data, test_emb, scorer, seed=int(fraud_info.get("seed", 0)))
        for kind, ev in evals.items():  # the serving kind first; each at its own validation threshold
            candidates[kind] = {k: ev.metrics[k] for k in FRAUD_KEYS}
        if scorer.kind in evals:
            fraud["gnn"] = {"kind": scorer.kind, **candidates[scorer.kind]}
            # the plot's curves are the rows of the fraud table people read (the served scorer under
            # the demo's name for it, then the baselines); the other candidates are in report.md's table
            served = evals[scorer.kind]
            pr[FRAUD_SCORER_NAMES.get(scorer.kind, scorer.kind)] = (served.y_true, served.prob)
            fraud["test"] = {"accounts": int(served.y_true.size), "fraud": int(np.asarray(served.y_true).sum())}
        if baselines and "x" in data["user"]:
            from shopgraph.graph.baselines import fraud_baseline_runs

            runs = fraud_baseline_runs(data, split="test")
            fraud["baselines"] = {name: r.metrics for name, r in runs.items()}
            pr |= {name: (r.y_true, r.prob) for name, r in runs.items()}

    metrics = {"purchase": purchase, "fraud": fraud}
    run.write_json("metrics.json", metrics, made_from=made_from, stage=EVALUATE_STAGE)
    plots = _plots(run, history, pr, made_from)
    run.write_text("report.md", _report(metrics, data, history, fraud_info, candidates, plots, int(test.size(1))),
                   made_from=made_from, stage=EVALUATE_STAGE)
    logger.info("evaluate: GNN recall@20 %.4f; fraud %s auprc %s", purchase["gnn"]["recall@20"],
                fraud["gnn"].get("kind"), _fmt(fraud["gnn"].get("auprc")))
    return metrics


def cli_evaluate(args: argparse.Namespace) -> int:
    """``shopgraph evaluate --run RUN``: print the comparison table and where the report is."""
    metrics = evaluate_run(args.run)
    p, f = metrics["purchase"], metrics["fraud"]
    print(f"purchase recall@20  GNN {p['gnn']['recall@20']:.4f}  " + "  ".join(
        f"{k} {v['recall@20']:.4f}" for k, v in p["baselines"].items()))
    if f["gnn"].get("kind") != "none":
        print(f"fraud auprc  GNN ({f['gnn']['kind']}) {f['gnn']['auprc']:.4f}  " + "  ".join(
            f"{k} {v['auprc']:.4f}" for k, v in f["baselines"].items()))
    print(f"metrics: {Path(args.run) / 'metrics.json'}")
    print(f"report: {Path(args.run) / 'report.md'}")
    return 0
