"""Latent-free estimators on a built shop run: how far simple counting gets, on val and test.

The oracle bench (``bench_oracle.py``) says where the synthetic shop's purchase signal is: each
user's category mix, taste and consideration set. This script measures estimators of the first
part that need no hidden state, next to ``itemknn_all_events``, on both evaluated periods with
the protocol of ``shopgraph evaluate`` (new pairs only; for ``val`` the train pairs are visible
and excluded, for ``test`` train + val):

* ``plug-in``: ``mix_hat[u, cat(i)] × share(i)``, where ``mix_hat`` is the user's category mix
  counted from every visible user→item event (views, carts, purchases), smoothed toward the
  population's mix with a prior weight of ``a`` events, and ``share(i)`` the item's share of its
  category's visible events;
* ``blend``: ``knn / max(knn) + w · plugin / max(plugin)`` per user;
* ``+ revisit bonus``: each of the above (``itemknn_all_events``, ``plug-in a=2``, ``blend w=3``)
  plus ``b · max(score) · log(1 + n_ui)`` per user, ``n_ui`` the user's visible views and carts
  of item ``i``: the simple-method counterpart of ShopGNN's revisit term (items already looked
  at and not bought are often bought later).

The prior ``a``, the blend weight ``w`` and the bonus ``b`` are printed for a small grid on both
periods: choose on ``val``. The run must have been built with item statistics (``item_category=*`` columns of
``features.json``: every ``shopgraph build``).

    OMP_WAIT_POLICY=PASSIVE nice python bench/bench_shop_estimators.py --run RUN
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine_line, markdown_table
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph.baselines import ItemKNN, _distinct_pairs, _interaction_events
from shopgraph.graph.build import Split, message_passing_graph, target_pairs, visible_test_pairs
from shopgraph.graph.metrics import ranking_metrics
from shopgraph.graph.run import RunDir


def item_categories(run: Path, x: Tensor) -> Tensor:
    """Category index per item from the ``item_category=*`` statistics columns (the last block of ``x``)."""
    names = json.loads((run / "features.json").read_text(encoding="utf-8"))["behaviour_names"]["item"]
    cols = [k for k, n in enumerate(names) if n.startswith("item_category=")]
    if not cols:
        raise ValueError(f"{run}/features.json: no item_category=* statistics (got {names[:5]} ...)")
    stats = x[:, -len(names):]
    return stats[:, cols].argmax(1)


def evaluate_split(data: HeteroData, split: Split, cat: Tensor) -> dict[str, float]:
    """Recall@20 of every estimator on ``split`` (``"val"`` or ``"test"``)."""
    num_users, num_items, n_cat = int(data["user"].num_nodes), int(data["item"].num_nodes), int(cat.max()) + 1
    g = message_passing_graph(data, split)
    visible = visible_test_pairs(data) if split == "test" else target_pairs(data, "train")
    test = target_pairs(data, split)
    events = _interaction_events(data, split)  # the visible non-target events, repeats kept
    knn = ItemKNN().fit(visible, num_users, num_items, extra_pairs=_distinct_pairs(events))
    ets = [et for et in g.edge_types if et[0] == "user" and et[2] == "item"]
    ev_u = torch.cat([g[et].edge_index[0] for et in ets])
    ev_i = torch.cat([g[et].edge_index[1] for et in ets])
    counts = torch.zeros(num_users, n_cat).index_put_((ev_u, cat[ev_i]), torch.ones(ev_u.numel()), accumulate=True)
    pop = torch.zeros(num_items).index_add_(0, ev_i, torch.ones(ev_i.numel()))
    share = pop / torch.zeros(n_cat).index_add_(0, cat, pop)[cat].clamp(min=1.0)
    prior = counts.sum(0) / counts.sum()
    seen = torch.zeros(num_users, num_items).index_put_(  # visible non-target events per (user, item)
        (events[0], events[1]), torch.ones(events.size(1)), accumulate=True)

    def smoothed(a: float) -> Tensor:
        return (counts + a * prior) / (counts.sum(1, keepdim=True) + a)

    def plugin(u: Tensor, mix: Tensor) -> Tensor:
        return mix[u][:, cat] * share

    def blend(u: Tensor, w: float) -> Tensor:
        k, p = knn.score(u), plugin(u, smoothed(2.0))
        return k / (k.max(1, keepdim=True).values + 1e-9) + w * p / p.max(1, keepdim=True).values

    scorers: dict[str, Callable[[Tensor], Tensor]] = {"itemknn_all_events": knn.score}
    for a in (1.0, 2.0, 5.0):
        scorers[f"plug-in, prior a={a:g}"] = functools.partial(plugin, mix=smoothed(a))
    for w in (0.3, 1.0, 3.0):
        scorers[f"blend: itemknn_all_events + {w:g} × plug-in (a=2)"] = functools.partial(blend, w=w)

    def bonus(u: Tensor, fn: Callable[[Tensor], Tensor], b: float) -> Tensor:
        s = fn(u)
        return s + b * s.max(1, keepdim=True).values.clamp(min=1e-9) * torch.log1p(seen[u])

    bases = {"itemknn_all_events": knn.score, "plug-in (a=2)": functools.partial(plugin, mix=smoothed(2.0)),
             "blend (w=3)": functools.partial(blend, w=3.0)}
    for name, fn in bases.items():
        for b in (0.25, 1.0, 4.0):
            scorers[f"{name} + revisit bonus b={b:g}"] = functools.partial(bonus, fn=fn, b=b)
    out: dict[str, float] = {}
    for name, fn in scorers.items():
        out[name] = ranking_metrics(fn, visible, test, num_items, ks=(20,))["recall@20"]
        print(f"{split} {name}: recall@20 {out[name]:.4f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a built run folder (shopgraph build)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    data = RunDir(args.run).load_graph()
    cat = item_categories(args.run, data["item"].x)
    val, test = evaluate_split(data, "val", cat), evaluate_split(data, "test", cat)
    ref = test["itemknn_all_events"]
    table = [[name, f"{val[name]:.4f}", f"{test[name]:.4f}", f"{test[name] / ref:.3f}"] for name in val]
    print()
    print(markdown_table(["estimator", "val Recall@20", "test Recall@20", "test ÷ itemknn_all_events"], table))
    print()
    print(f"- {time.perf_counter() - t_start:.0f} s; {machine_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
