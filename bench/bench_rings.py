"""Ring detection on planted rings: scored detector vs the structure-only baseline.

Usage::

    shopgraph generate --out /tmp/shop --users 5000 --seed 0
    shopgraph build --data /tmp/shop --out /tmp/run --no-image
    shopgraph train --run /tmp/run                      # optional: adds the GNN rows
    python bench/bench_rings.py --run /tmp/run          # or: --data /tmp/shop (no run folder)

Prints one row per scoring mode: planted rings, reported candidates, ring recall, precision
among the top reported rings (top = number of planted rings), adjusted Rand index over the top
rings and over all candidates, and the fit time. ``--json`` prints the rows as JSON.

Caveat on the GNN rows: ``fraud_prob`` in ``RUN/embeddings.safetensors`` is the serving scorer's
output for *every* user, including the 60 % whose labels trained it, so those rows are optimistic
(the GNN has seen most ring members' labels). The "held-out" row replaces each trained-on account's
score by its held-out one (``fraud_prob_held_out``: scored by the fold of the scorer that did not
see its label), so no member's own label reaches its score; ring mates' labels still do, through
the ring features, as they would for a new account of a known ring. The behaviour+structure row
uses no labels at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shopgraph.graph.rings import RingDetector, evaluate_rings, load_fraud_prob, load_held_out


def _load(args: argparse.Namespace) -> tuple[Any, Any, np.ndarray | None, np.ndarray | None]:
    """``(graph, tables, served fraud_prob or None, fraud_prob with held-out scores for trained-on
    accounts or None)``."""
    if args.run is not None:
        from shopgraph.graph.pipeline import load_run_tables
        from shopgraph.graph.run import RunDir

        run = RunDir(args.run)
        data, prob = run.load_graph(), load_fraud_prob(run)
        held = None if prob is None else load_held_out(run, int(data["user"].num_nodes))
        honest = None if held is None or prob is None else np.where(np.isfinite(held), held, prob)
        return data, load_run_tables(run), prob, honest
    from shopgraph.graph.build import build_graph
    from shopgraph.graph.load import load_tables

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = load_tables(args.data).tables
        return build_graph(tables), tables, None, None


def _row(name: str, det: RingDetector, data: Any, prob: np.ndarray | None, tables: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    det.fit(data, prob, tables)
    seconds = time.perf_counter() - t0
    res = evaluate_rings(det.rings_, data)
    return {"mode": name, "planted": res["planted"], "reported": res["reported"], "found": res["found"],
            "ring_recall": res["ring_recall"], "precision@top": res["precision"], "ari@top": res["ari"],
            "ari_all": res["ari_all"], "hubs": len(det.hub_devices_), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder (graph, tables, optional fraud_prob)")
    src.add_argument("--data", type=Path, help="tables folder (structure + behaviour only)")
    parser.add_argument("--hub-threshold", type=int, default=50)
    parser.add_argument("--max-component", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    data, tables, prob, honest = _load(args)
    kw = {"hub_threshold": args.hub_threshold, "max_component": args.max_component, "seed": args.seed}
    rows = [
        _row("structure (baseline)", RingDetector(**kw, use_behaviour=False), data, None, tables),
        _row("behaviour+structure", RingDetector(**kw), data, None, tables),
    ]
    if prob is not None:
        rows.append(_row("gnn+behaviour+structure", RingDetector(**kw), data, prob, tables))
        rows.append(_row("gnn only (+structure)", RingDetector(**kw, use_behaviour=False), data, prob, tables))
    if honest is not None:
        rows.append(_row("gnn held-out+behav+struct", RingDetector(**kw), data, honest, tables))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'mode':26} {'planted':>7} {'reported':>8} {'found':>5} {'recall':>6} {'prec@top':>8} "
          f"{'ARI@top':>7} {'ARI_all':>7} {'hubs':>4} {'fit_s':>6}")
    for r in rows:
        print(f"{r['mode']:26} {r['planted']:7d} {r['reported']:8d} {r['found']:5d} {r['ring_recall']:6.3f} "
              f"{r['precision@top']:8.3f} {r['ari@top']:7.3f} {r['ari_all']:7.3f} {r['hubs']:4d} {r['seconds']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
