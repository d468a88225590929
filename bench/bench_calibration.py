"""The calibrations' validation rankings: one ranking per setting (before) against all the settings
of a calibration from one dot product per batch of users (``ranking_metrics_many``, now).

Loads a trained run folder (its served model and graph), then times, one after the other in this
process, the old way and the product's way of scoring validation for: the revisit multipliers,
the consideration-set settings, the group-mix weights and the item-neighbour weights at the
model's rank. The old way is kept here as it was (commit 0a3e910's ``graph/train.py``) as the
baseline. Prints each time, the ratio, and whether the recalls and the choices agree.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_calibration.py --run RUN [--rounds 1]
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import markdown_table

from shopgraph.graph import train as T
from shopgraph.graph.build import message_passing_graph, target_pairs
from shopgraph.graph.metrics import ranking_metrics
from shopgraph.graph.model import Revisit, ShopGNN, purchase_scores
from shopgraph.graph.run import RunDir


class Old:
    """Commit 0a3e910's calibration rankings: a dot product and a dense revisit term per setting."""

    def __init__(self, graph: Any, data: Any, train_pairs: torch.Tensor, val_pairs: torch.Tensor) -> None:
        self.graph, self.data, self.tp, self.vp = graph, data, train_pairs, val_pairs
        self.n_items = int(data["item"].num_nodes)
        self.dev = torch.device("cpu")

    def revisit_recalls(self, emb: dict[str, torch.Tensor], revisit: Revisit | None,
                        multipliers: tuple[float, ...]) -> dict[float, float]:
        out = {}
        for m in multipliers:
            rv = None if revisit is None else Revisit(revisit.pairs, revisit.value * m)
            out[m] = float(ranking_metrics(purchase_scores(emb["user"], emb["item"], rv), self.tp, self.vp,
                                           self.n_items, ks=(20,))["recall@20"])
        return out

    def channel(self, model: ShopGNN, weight: torch.nn.Parameter, cols: slice,
                weights: tuple[float, ...]) -> dict[str, float]:
        weight.fill_(1.0)
        emb = T.embed_graph(model, self.graph, self.dev)
        rv = T.revisit_graph(model, self.graph, self.dev, emb)
        channel = emb["item"][:, cols].clone()
        out = {}
        for w in weights:
            emb["item"][:, cols] = w * channel
            out[f"{w:g}"] = self.revisit_recalls(emb, rv, (1.0,))[1.0]
        weight.fill_(max(weights, key=lambda w: (out[f"{w:g}"], -w)))
        return out

    def consider(self, model: ShopGNN) -> dict[str, float]:
        emb = T.embed_graph(model, self.graph, self.dev)
        model.consider_weight.fill_(0.0)
        learned = T.revisit_graph(model, self.graph, self.dev, emb)
        assert learned is not None
        out = {"off": self.revisit_recalls(emb, learned, (1.0,))[1.0]}
        model.consider_weight.fill_(1.0)
        for share, size in T.CONSIDER_SETS:
            model.consider_share.fill_(share)
            model.consider_size.fill_(size)
            rv = T.revisit_graph(model, self.graph, self.dev, emb)
            assert rv is not None
            term = rv.value - learned.value
            for m in T.CONSIDER_REVISIT_MULTIPLIERS:
                for w in T.CONSIDER_WEIGHTS:
                    combined = Revisit(learned.pairs, m * learned.value + w * term)
                    out[T.consider_setting_name(share, size, m, w)] = self.revisit_recalls(emb, combined, (1.0,))[1.0]
        return out


def timed(f: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``f(*args)`` and the seconds it took."""
    t0 = time.perf_counter()
    result = f(*args)
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained run folder")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the comparison (1..10)")
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        p.error("--rounds: 1..10")
    run = RunDir(args.run)
    data = run.load_graph()
    model = T.load_model(run.path_of("model/model.safetensors").parent, "cpu")
    graph = T.lean_graph(message_passing_graph(data, "train"))
    tp, vp = target_pairs(data, "train"), target_pairs(data, "val")
    if vp.size(1) == 0:
        p.error(f"--run: {args.run} has no validation pairs to rank")
    dev = torch.device("cpu")
    old = Old(graph, data, tp, vp)
    emb = T.embed_graph(model, graph, dev)
    rv = T.revisit_graph(model, graph, dev, emb)
    rows = []
    for _ in range(args.rounds):
        if rv is not None:
            a, ta = timed(old.revisit_recalls, emb, rv, T.REVISIT_MULTIPLIERS)
            b, tb = timed(T._revisit_recalls, emb, rv, data, tp, vp, T.REVISIT_MULTIPLIERS)
            rows.append([f"revisit term, {len(a)} multipliers", ta, tb, "identical" if a == b else "DIFFERENT"])
        if model.config.consider:
            m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
            a, ta = timed(old.consider, m1)
            b, tb = timed(T.calibrate_consider, m2, graph, data, tp, vp, dev)
            rows.append([f"consideration set, {len(a) - 1} settings and off", ta, tb, "identical" if a == b else "DIFFERENT"])
        channels = [("group-mix", "group_weight", "group_columns", T.GROUP_WEIGHTS, model.config.groups),
                    (f"item-neighbour rank {model.config.knn_rank}", "knn_weight", "knn_columns", T.ITEM_KNN_WEIGHTS,
                     model.config.knn_rank)]
        for name, weight, cols, weights, present in channels:
            if not present:
                continue
            m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
            a, ta = timed(old.channel, m1, getattr(m1, weight), getattr(m1, cols), weights)
            b, tb = timed(T.choose_channel_weight, m2, name, getattr(m2, weight), getattr(m2, cols), weights, graph,
                          data, tp, vp, dev)
            diff = max(abs(a[k] - b[k]) for k in a)
            same = float(getattr(m1, weight)) == float(getattr(m2, weight))
            rows.append([f"{name}, {len(weights)} weights", ta, tb,
                         f"largest recall difference {diff:.1e}; {'the same' if same else 'ANOTHER'} weight "
                         f"({float(getattr(m2, weight)):g})"])
    print(f"# Calibration rankings, {args.run}: {int(vp.size(1)):,} validation pairs, {old.n_items:,} items\n\n"
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.node()}; "
          f"{torch.get_num_threads()} threads\n")
    print(markdown_table(["calibration", "one ranking per setting s", "one dot product s", "ratio", "result"],
                         [[n, f"{ta:.1f}", f"{tb:.1f}", f"{ta / tb:.2f}×", r] for n, ta, tb, r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
