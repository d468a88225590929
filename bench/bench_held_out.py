"""What the trained-on accounts' held-out fraud scores cost and say, on a run's graph.

Usage::

    make demo                      # or build + train a run of your own
    python bench/bench_held_out.py --run demo_data/run_5000_0 [--folds 5]

The served ``graph_trees`` are fitted on the training accounts' labels, so their scores of those
accounts are fitted, not predicted. ``shopgraph train`` also stores the accounts' held-out scores
(``graph.fraud_scorer.held_out_probabilities``: the trees refitted on label-blind folds with the
fold's labels hidden from the features). This script refits the serving trees as training does
(train accounts, early-stopped on the validation accounts, every edge visible), then, in the same
process:

* times the held-out scores against that serving fit (the ratio is their extra cost);
* compares the training accounts' fitted and held-out scores with the validation accounts'
  (AUPRC, and the share of frauds flagged at the serving threshold): held-out scores of the
  training accounts should look like the validation accounts' scores, fitted ones do not;
* with ``--truth LABELS_CSV`` (the ``labels.csv`` of the same shop generated without
  ``--label-noise``): a label audit. Among the training accounts whose labels were flipped by the
  noise, how well do the fitted and the held-out scores tell a wrong label from a right one
  (AUROC, and how many wrong ones are among the accounts whose score disagrees with their label
  most)? Fitted scores follow the labels they were fitted to; held-out scores never saw them;
* with ``--preselect``, the shortcut this design rejects: refitting the folds only on the columns
  the served trees split on (fast, but those columns were chosen with every label, so the held-out
  scores come out too good).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine_line

from shopgraph.graph import fraud_scorer as fs
from shopgraph.graph.baselines import XGBGraphFraud
from shopgraph.graph.metrics import choose_threshold, fraud_metrics
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import FraudScorer, fraud_labels


def _row(name: str, y: np.ndarray, p: np.ndarray, threshold: float) -> str:
    m = fraud_metrics(y, p, threshold)
    return (f"| {name} | {y.size:,} | {int(y.sum())} | {m['auprc']:.4f} | {m['auroc']:.4f} | {m['recall']:.4f} | "
            f"{m['precision']:.4f} |")


def _label_audit(data: object, truth_csv: str, y: np.ndarray, tr: np.ndarray, served: np.ndarray,
                 held: np.ndarray, threshold: float) -> None:
    """How the fitted and held-out scores single out the training accounts whose labels are wrong."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    truth = pd.read_csv(truth_csv, dtype={"user_id": str}).set_index("user_id")["is_fraud"]
    ids = [str(u) for u in data["user"].ids]  # type: ignore[index]
    true_y = truth.reindex([ids[u] for u in tr]).to_numpy()
    if np.isnan(true_y.astype(float)).any():
        raise SystemExit(f"--truth: {truth_csv} lacks some of the run's training accounts")
    wrong = true_y.astype(int) != y[tr]
    print(f"\nlabel audit: {int(wrong.sum())} of the {tr.size:,} training accounts carry a wrong label "
          f"({int((wrong & (y[tr] == 1)).sum())} labelled fraud, {int((wrong & (y[tr] == 0)).sum())} labelled "
          "legitimate)\n")
    print("| accounts labelled | wrong labels | scores | AUROC (wrong vs right label) | wrong among the N most at "
          "odds | contradicted at the threshold: wrong labels | right labels |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for label in (1, 0):
        mine = y[tr] == label
        n_wrong = int((wrong & mine).sum())
        if n_wrong == 0 or n_wrong == int(mine.sum()):
            continue
        for name, p in (("fitted (served)", served[tr]), ("held out", held[tr])):
            odds = -p[mine] if label == 1 else p[mine]  # at odds with the label: low for fraud, high for legit
            top = np.argsort(-odds, kind="stable")[:n_wrong]
            against = p[mine] < threshold if label == 1 else p[mine] >= threshold
            print(f"| {'fraud' if label else 'legitimate'} | {n_wrong} | {name} | "
                  f"{roc_auc_score(wrong[mine], odds):.4f} | {int(wrong[mine][top].sum())} of {n_wrong} | "
                  f"{int((against & wrong[mine]).sum())} of {n_wrong} | "
                  f"{int((against & ~wrong[mine]).sum())} of {int((~wrong[mine]).sum()):,} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a built run folder with fraud labels and user features")
    ap.add_argument("--folds", type=int, default=fs.HELD_OUT_FOLDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preselect", action="store_true", help="also time the rejected column-preselection shortcut")
    ap.add_argument("--truth", default=None, help="labels.csv of the same shop without label noise (a label audit)")
    args = ap.parse_args()

    data = RunDir(args.run).load_graph()
    y_t, masks = fraud_labels(data)
    y = y_t.numpy()
    tr, va = np.flatnonzero(masks["train"].numpy()), np.flatnonzero(masks["val"].numpy())
    feats = fs.product_features(data, None)
    t0 = time.perf_counter()
    head = XGBGraphFraud(seed=args.seed).fit(feats[tr], y[tr], feats[va], y[va])
    serving_s = time.perf_counter() - t0
    served = head.predict_proba(feats)
    threshold = float(choose_threshold(y[va], served[va]))
    scorer = FraudScorer("graph_trees", threshold, float("nan"), {}, head)
    t0 = time.perf_counter()
    held = fs.held_out_probabilities(data, scorer, folds=args.folds, seed=args.seed)
    held_s = time.perf_counter() - t0

    print(machine_line())
    print(f"run {args.run}: {int(data['user'].num_nodes):,} users, {feats.shape[1]:,} feature columns, "
          f"{tr.size:,} training and {va.size:,} validation accounts; serving trees {head.best_iteration_ + 1} rounds")
    print(f"serving fit {serving_s:.1f} s; held-out scores ({args.folds} folds) {held_s:.1f} s "
          f"= {held_s / serving_s:.2f}x the serving fit")
    print(f"\nat the serving threshold {threshold:.4f}:\n")
    print("| scores | accounts | frauds | AUPRC | AUROC | frauds flagged | precision |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(_row("training accounts, fitted (served)", y[tr], served[tr], threshold))
    print(_row(f"training accounts, held out ({args.folds} folds)", y[tr], held[tr], threshold))
    print(_row("validation accounts (never trained on)", y[va], served[va], threshold))
    flagged_legit = int(((held[tr] >= threshold) & (y[tr] == 0)).sum())
    print(f"\nlabelled legitimate but flagged with their labels held out: {flagged_legit} "
          f"(fitted: {int(((served[tr] >= threshold) & (y[tr] == 0)).sum())})")

    if args.truth:
        _label_audit(data, args.truth, y, tr, served, held, threshold)
    if args.preselect:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(head.booster_bytes()))
        cols = np.array(sorted(int(k[1:]) for k in booster.get_score(importance_type="weight")))
        fold = fs.held_out_folds(tr.size, args.folds, args.seed)
        known = fs.known_labels(data)
        neigh = fs._neighbour_table(data, None)
        shortcut = np.full(y.size, np.nan)
        t0 = time.perf_counter()
        for k in range(args.folds):
            held_k, rest = tr[fold == k], tr[fold != k]
            masked = known.copy()
            masked[held_k] = -1
            f_k = np.concatenate([neigh, fs.ring_features(data, None, known=masked).x], axis=1)[:, cols]
            trees = fs._refit_trees(head, head.best_iteration_ + 1, args.seed).fit(f_k[rest], y[rest])
            shortcut[held_k] = trees.predict_proba(f_k[held_k])
        short_s = time.perf_counter() - t0
        print(f"\nrejected shortcut, folds refitted on the {cols.size} columns the served trees split on: "
              f"{short_s:.1f} s = {short_s / held_s:.2f}x the held-out scores' time")
        print(_row("training accounts, held out on preselected columns", y[tr], shortcut[tr], threshold))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
