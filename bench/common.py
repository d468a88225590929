"""Shared helpers of the public-data benchmarks (bench/bench_*.py).

Run a benchmark as ``python bench/bench_tolokers.py``; the scripts import this file as
``common`` (the script's folder is on ``sys.path``). Data are read in place from
``../shared/data`` (never copied into the repository).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.metrics import fraud_metrics
from shopgraph.graph.model import ModelConfig, ShopGNN

DATA_ROOT = Path(os.environ.get("SHOPGRAPH_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NODE = "node"
EDGE = (NODE, "to", NODE)


def machine_line() -> str:
    """One line naming the machine, the software and the UTC time."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    return (
        f"{now}; {platform.node()}; {cpu}; {os.cpu_count()} CPUs visible, torch threads "
        f"{torch.get_num_threads()}; python {platform.python_version()}, torch {torch.__version__}"
    )


def write_json(path: str | None, obj: object) -> None:
    """Dump a benchmark's raw results to ``path`` (``--json``); nothing when ``path`` is None."""
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)


def shop_run(seed: int, workdir: Path, *, users: int, epochs: int | None,
             train: dict[str, object] | None = None, encoders: bool = False) -> tuple[Path, dict[str, float]]:
    """A trained run folder of the synthetic shop ``seed``: ``generate_shop``, ``build_run``
    without the text and image encoders (``shopgraph build --no-text --no-image``; with them, in
    ``run_<seed>_encoders``, when ``encoders``) and ``train_run`` with the default
    ``TrainConfig`` (``shopgraph train``; ``train``: other settings), each step skipped when
    ``workdir`` already holds its output (so benches can share a workdir).

    Returns:
        ``(run folder, {"generate" | "build" | "train": seconds})``.
    """
    from shopgraph.graph.pipeline import build_run
    from shopgraph.graph.run import RunDir
    from shopgraph.graph.synthetic import generate_shop
    from shopgraph.graph.train import train_run

    seconds: dict[str, float] = {}
    shop, run_path = workdir / f"shop_{seed}", workdir / (f"run_{seed}_encoders" if encoders else f"run_{seed}")
    t0 = time.perf_counter()
    if not (shop / "labels.csv").is_file():
        generate_shop(shop, n_users=users, seed=seed, overwrite=True)
    seconds["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (run_path / "graph.pt").is_file():
        build_run(shop, run_path, seed=seed, use_text=encoders, use_image=encoders, overwrite=True)
    seconds["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not RunDir(run_path).has("fraud.json"):
        # the held-out fraud scores serve investigators, not what the benches measure: left out of "train" seconds
        overrides: dict[str, object] = {"held_out_folds": 0, **(train or {}), "seed": seed}
        if epochs is not None:
            overrides["epochs"] = epochs
        train_run(run_path, device="cpu", **overrides)
    seconds["train"] = time.perf_counter() - t0
    return run_path, seconds


def train_overrides(ap: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, object]:
    """``--train KEY=JSON ...`` as TrainConfig overrides (``ap.error`` on a malformed one)."""
    train: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            train[key] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep or not key:
            ap.error(f"--train: expected KEY=JSON such as item_counts=true (got {item!r})")
    return train


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values * scale``."""
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def one_type_graph(x: Tensor, edge_index: Tensor) -> HeteroData:
    """A one-node-type ``HeteroData``: ``data["node"].x`` and edge type ``("node", "to", "node")``.

    Args:
        x: ``FloatTensor[N, F]``.
        edge_index: ``LongTensor[2, E]``, already containing both directions where undirected.
    """
    data = HeteroData()
    data[NODE].x = x.float()
    data[NODE].num_nodes = x.size(0)
    data[EDGE].edge_index = edge_index.long()
    return data


def symmetrize(edge_index: Tensor) -> Tensor:
    """Both directions of every edge, duplicates and self-loops removed, ``LongTensor[2, E']``."""
    ei = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    ei = ei[:, ei[0] != ei[1]]
    return torch.unique(ei, dim=1)


def standardize(x: Tensor) -> Tensor:
    """Column z-scores (unsupervised, over all nodes); constant columns become 0."""
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True)
    return (x - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))


class GNNFraudResult(NamedTuple):
    """A trained one-type fraud GNN."""

    prob: np.ndarray  # [N] fraud probabilities of the best-validation model
    emb: Tensor  # [N, D] its node embeddings
    best_epoch: int
    epochs_run: int
    seconds: float


def sparse_view(data: HeteroData) -> HeteroData:
    """The same one-type graph with a ``torch_sparse.SparseTensor`` (``adj_t``) as ``edge_index``.

    PyG convolutions then use sparse-dense matmul instead of gathering an ``[E, D]`` message
    tensor: several times faster on dense graphs like Tolokers (1M directed edges). Falls back
    to the edge list when torch-sparse is missing.
    """
    try:
        from torch_sparse import SparseTensor
    except ImportError:
        return data
    ei = data[EDGE].edge_index
    n = int(data[NODE].num_nodes)
    out = HeteroData()
    out[NODE].x = data[NODE].x
    out[NODE].num_nodes = n
    out[EDGE].edge_index = SparseTensor(row=ei[1], col=ei[0], sparse_sizes=(n, n))
    return out


def train_gnn_fraud(
    data: HeteroData, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, metric: str,
    conv: str = "sage", hidden: int = 64, layers: int = 2, dropout: float = 0.2, lr: float = 0.01,
    weight_decay: float = 1e-4, epochs: int = 150, eval_every: int = 5, patience: int = 6, seed: int = 0,
) -> GNNFraudResult:
    """Full-batch node classification with :class:`ShopGNN` and its ``fraud_logit`` head.

    Transductive (all edges visible, labels of ``train_idx`` only), class-weighted BCE, AdamW,
    model selection on the validation ``metric`` (``"auroc"`` or ``"auprc"``) every
    ``eval_every`` epochs, stopping after ``patience`` evaluations without improvement. No id
    embeddings: the nodes have features, and ids would only memorise the training labels.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig.from_data(data, id_embeddings=[], conv=conv, hidden=hidden, layers=layers, dropout=dropout)
    model = ShopGNN(cfg)
    graph = sparse_view(data) if conv in ("sage", "gatv2") else data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    yt = torch.as_tensor(y, dtype=torch.float32)
    tr = torch.as_tensor(train_idx)
    pos = float(yt[tr].sum())
    pos_weight = torch.tensor((tr.numel() - pos) / max(pos, 1.0))
    best, best_epoch, best_state, bad = -np.inf, 0, None, 0
    start = time.perf_counter()
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        logit = model.fraud_logit(model.embed(graph)[NODE])
        loss = F.binary_cross_entropy_with_logits(logit[tr], yt[tr], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % eval_every and epoch != epochs:
            continue
        model.eval()
        with torch.no_grad():
            prob = torch.sigmoid(model.fraud_logit(model.embed(graph)[NODE])).numpy()
        score = fraud_metrics(y[val_idx], prob[val_idx])[metric]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        emb = model.embed(graph)[NODE]
        prob = torch.sigmoid(model.fraud_logit(emb)).numpy()
    return GNNFraudResult(prob.astype(np.float64), emb, best_epoch, epoch, time.perf_counter() - start)


FRAUD_METHODS = (
    "logreg", "xgb", "xgb_graph", "graph_trees", "gnn", "hybrid", "ensemble", "product_old", "product_all",
    "product_argmax", "product",
)
# selections among this file's own fits, on the benchmark's metric
PRODUCT_POOLS = {"product_old": ("gnn", "hybrid"), "product_all": ("gnn", "hybrid", "graph_trees", "ensemble")}
# selections by shopgraph.graph.fraud_scorer itself (its own tree fits, AUPRC selection)
MODULE_RULES = {"product": True, "product_argmax": False}  # name -> tie_break
CANDIDATES = ("gnn", "hybrid", "graph_trees", "ensemble")
MODULE_NAMES = {"gnn_head": "gnn", "hybrid": "hybrid", "graph_trees": "graph_trees", "rank_average": "ensemble"}


def rank_average(*probs: np.ndarray) -> np.ndarray:
    """Mean of the scores' normalised ranks in ``[0, 1]`` (scale-free blend of scorers)."""
    from scipy.stats import rankdata

    return np.mean([(rankdata(p) - 1) / max(p.size - 1, 1) for p in probs], axis=0)


def run_fraud_benchmark(
    x: Tensor, edge_index: Tensor, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *, metric: str, gnn: dict[str, object] | None = None, gnn_splits: int | None = None, log: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Every fraud method on every split of a one-type graph, in this process.

    Methods: ``logreg`` and ``xgb`` on own features; ``xgb_graph`` = boosted trees on
    :func:`neighbor_mean_features` (own ⊕ 1-hop ⊕ 2-hop means, the reference "XGB-Graph");
    ``graph_trees`` = the same trees on the product's :func:`hetero_neighbor_features` (what
    ``fraud_baselines`` calls xgb_graph on a shop); ``gnn`` = :class:`ShopGNN` fraud head;
    ``hybrid`` = :class:`HybridFraudHead` on :func:`hybrid_features` (GNN embeddings ⊕
    neighbour features); ``ensemble`` = rank average of ``gnn`` and ``graph_trees``;
    ``product_old`` = whichever of ``gnn`` / ``hybrid`` has the better validation ``metric`` on
    that split (the rule ``graph.train.select_fraud_scorer`` applied before
    ``graph.fraud_scorer``); ``product_all`` = the best of ``gnn`` / ``hybrid`` / ``graph_trees``
    / ``ensemble`` on validation ``metric``; ``product`` = exactly the product's rule,
    :func:`shopgraph.graph.fraud_scorer.fit_candidates` + ``choose_candidate`` (trees
    early-stopped on AUPRC, selection on validation AUPRC with the one-bootstrap-SE preference
    for graph_trees / rank_average) given this split's GNN; ``product_argmax`` = the same
    without the tie-break.

    Args:
        x: ``FloatTensor[N, F]`` raw node features.
        edge_index: ``LongTensor[2, E]`` with both directions.
        y: ``[N]`` 0/1 labels.
        splits: ``(train_idx, val_idx, test_idx)`` per split.
        metric: ``"auroc"`` or ``"auprc"``: early stopping and selection.
        gnn: keyword arguments for :func:`train_gnn_fraud`.
        gnn_splits: run the GNN-based methods on the first ``gnn_splits`` splits only (CPU
            budget); the feature baselines always run on every split.

    Returns:
        ``{method: {"split": [...], "test_auroc": [...], "test_auprc": [...], "val": [...],
        "seconds": [...], "chosen": [...] (products only)}}``.
    """
    from shopgraph.graph.baselines import (
        HybridFraudHead,
        LogRegFraud,
        XGBGraphFraud,
        hetero_neighbor_features,
        hybrid_features,
        neighbor_mean_features,
    )
    from shopgraph.graph.fraud_scorer import choose_candidate, fit_candidates

    xgb_metric = "auc" if metric == "auroc" else "aucpr"
    data = one_type_graph(standardize(x), edge_index)
    own = x.numpy().astype(np.float32)
    t0 = time.perf_counter()
    graph_feats = neighbor_mean_features(x, edge_index, hops=2).numpy()
    feat_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    product_feats = hetero_neighbor_features(one_type_graph(x, edge_index), NODE)
    product_feat_seconds = time.perf_counter() - t0
    out: dict[str, dict[str, list[float]]] = {
        m: {"split": [], "test_auroc": [], "test_auprc": [], "val": [], "seconds": []} for m in FRAUD_METHODS
    }
    for name in (*PRODUCT_POOLS, *MODULE_RULES):
        out[name]["chosen"] = []

    def record(name: str, prob: np.ndarray, tr: np.ndarray, va: np.ndarray, te: np.ndarray, sec: float) -> None:
        test = fraud_metrics(y[te], prob[te])
        out[name]["split"].append(float(k))
        out[name]["test_auroc"].append(test["auroc"])
        out[name]["test_auprc"].append(test["auprc"])
        out[name]["val"].append(fraud_metrics(y[va], prob[va])[metric])
        out[name]["seconds"].append(sec)

    for k, (tr, va, te) in enumerate(splits):
        probs: dict[str, np.ndarray] = {}
        for name, model, feats, extra in (
            ("logreg", LogRegFraud(), own, 0.0),
            ("xgb", XGBGraphFraud(eval_metric=xgb_metric), own, 0.0),
            ("xgb_graph", XGBGraphFraud(eval_metric=xgb_metric), graph_feats, feat_seconds),
            ("graph_trees", XGBGraphFraud(eval_metric=xgb_metric), product_feats, product_feat_seconds),
        ):
            t0 = time.perf_counter()
            model.fit(feats[tr], y[tr], feats[va], y[va])
            probs[name] = model.predict_proba(feats)
            record(name, probs[name], tr, va, te, time.perf_counter() - t0 + extra)
        if gnn_splits is not None and k >= gnn_splits:
            if log:
                print(f"split {k}: " + ", ".join(
                    f"{m} {out[m]['test_' + metric][-1] * 100:.2f}" for m in FRAUD_METHODS[:4]), flush=True)
            continue
        res = train_gnn_fraud(data, y, tr, va, metric=metric, seed=k, **(gnn or {}))  # type: ignore[arg-type]
        record("gnn", res.prob, tr, va, te, res.seconds)
        t0 = time.perf_counter()
        hyb = hybrid_features(data, res.emb, node_type=NODE)
        head = HybridFraudHead(eval_metric=xgb_metric, seed=k).fit(hyb[tr], y[tr], hyb[va], y[va])
        hprob = head.predict_proba(hyb)
        record("hybrid", hprob, tr, va, te, time.perf_counter() - t0 + res.seconds)
        probs.update(gnn=res.prob, hybrid=hprob, ensemble=rank_average(res.prob, probs["graph_trees"]))
        record("ensemble", probs["ensemble"], tr, va, te, out["gnn"]["seconds"][-1] + out["graph_trees"]["seconds"][-1])
        for name, pool in PRODUCT_POOLS.items():
            pick = max(pool, key=lambda m: out[m]["val"][-1])
            # every candidate is fitted; hybrid's time already includes the GNN's
            record(name, probs[pick], tr, va, te, sum(out[m]["seconds"][-1] for m in pool if m in ("hybrid", "graph_trees")))
            out[name]["chosen"].append(float(CANDIDATES.index(pick)))
        t0 = time.perf_counter()
        fits = fit_candidates(y, tr, va, res.prob, res.emb.detach().numpy(), product_feats, seed=k)
        fit_seconds = time.perf_counter() - t0 + res.seconds + product_feat_seconds
        for name, tie_break in MODULE_RULES.items():
            pick, _ = choose_candidate(y[va], {c: p[va] for c, p in fits.probs.items()}, seed=k, tie_break=tie_break)
            record(name, fits.probs[pick], tr, va, te, fit_seconds)
            out[name]["chosen"].append(float(CANDIDATES.index(MODULE_NAMES[pick])))
        if log:
            print(
                f"split {k}: " + ", ".join(
                    f"{m} {out[m]['test_' + metric][-1] * 100:.2f}" for m in FRAUD_METHODS
                ) + f" | gnn best epoch {res.best_epoch}/{res.epochs_run} ({res.seconds:.0f}s)",
                flush=True,
            )
    return out


def fraud_table(results: dict[str, dict[str, list[float]]], *, ref: str = "xgb_graph", key: str) -> str:
    """Markdown table of :func:`run_fraud_benchmark` results.

    The ratio compares each method with ``ref`` on ``key`` over the splits that method ran on, so
    a method run on fewer splits is still compared like with like.
    """
    ref_by_split = dict(zip(results[ref]["split"], results[ref][key]))
    rows = []
    for m in FRAUD_METHODS:
        r = results[m]
        if not r["split"]:
            continue
        base = float(np.mean([ref_by_split[s] for s in r["split"]]))
        note = ""
        if m in PRODUCT_POOLS or m in MODULE_RULES:
            counts = [int(sum(1 for c in r["chosen"] if int(c) == k)) for k in range(len(CANDIDATES))]
            note = "val-selected: " + ", ".join(f"{p} {c}x" for p, c in zip(CANDIDATES, counts) if c)
        rows.append([
            m, str(len(r["split"])), mean_std(r["test_auroc"]), mean_std(r["test_auprc"]),
            f"{np.mean(r[key]) / base:.3f}", f"{np.mean(r['seconds']):.1f}", note,
        ])
    return markdown_table(
        ["method", "splits", "test AUROC (%)", "test AUPRC (%)",
         f"ratio to {ref} ({key.replace('test_', '')}, same splits)", "seconds / split", "note"], rows,
    )


def print_fraud_report(results: dict[str, dict[str, list[float]]], *, title: str, key: str, published: str,
                       start: float, json_path: str | None) -> None:
    """Print one fraud benchmark's markdown table with its provenance; optionally dump the raw results."""
    print()
    print(f"## {title}")
    print()
    print(fraud_table(results, key=key))
    print()
    print(f"- {published}")
    print(f"- total {time.perf_counter() - start:.0f} s; {machine_line()}")
    write_json(json_path, results)


def fraud_bench_parser(description: str | None, splits: int) -> argparse.ArgumentParser:
    """The command-line options shared by the fraud benchmarks (Tolokers, Reddit)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=splits)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--patience", type=int, default=6, help="evaluations (every 5 epochs) without improvement")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--conv", default="sage")
    ap.add_argument("--gnn-splits", type=int, default=None, help="GNN methods on the first N splits only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the raw per-split results here")
    return ap
