"""Items added at run time (``ShopService.add_item``): how well the served model ranks items it
never trained on, against the same items in a model that did.

Per seed ``s``: the synthetic shop ``generate_shop(seed=s)`` (5,000 users) loses a random
``--holdout`` share of its catalogue (seeded): their rows of ``items.csv`` and every event on them.
The shop without them is built, trained and indexed as ``make demo`` does (``build_run``,
``train_run`` with the default settings, ``index_run``; without the text and image encoders
unless ``--encoders``), served with ``ShopService.from_run``, and the held-out items are added
through ``add_item`` with their title, category, description and price (and image with
``--encoders``): the product's path for a new item, no retraining.

The test set: the full shop's test-period purchases (on or after the reduced run's test cut;
pairs not bought before, as ``shopgraph evaluate`` counts them) by users of the reduced run. Both
models score from the users' events before the test period (:class:`Scorer`: the dot product
and the revisit term, the visible purchases excluded). Three views:

- **among the new items**: each purchase of a held-out item ranks it among all held-out items by
  the dot product with the user (the ranking ``ShopService.recommend_new`` serves): Recall@10 —
  does the new item's embedding say *who* will buy it? Reference rows on the same pairs:
  ``random`` (10 / n), ``category share`` (the user's share of their training-period events in
  the item's category) and ``warm model (dot product)`` (the full shop's run,
  ``common.shop_run``, trained with those items; its users' histories include their views of
  them, so it is an upper reference);
- **the new items' purchases among all items**: Recall@20 over the whole catalogue with the new
  items in it — does a new item reach the lists it should? (and the warm model's);
- **all test purchases**: Recall@20, served (with the new items) and warm, and how many new items
  a top-20 list holds on average;
- **similar items**: a new item's 10 most similar items (cosine over the trained and the new
  items, as ``similar_items`` ranks them): how many are other new items, how many of its own
  category, and how many the warm model's 10 for the same item share; and a trained item's 10
  most similar: how many are new items, and how many the warm model's share (``similar_stats``).
  The served cosine rows (the neighbours' mean unit vector) are compared with the same vectors
  scaled to length 1, as served before, and with the inductive pass.

The served vectors (the mean of the trained items' vectors nearest in content, when the run has
text or image vectors) are compared throughout with the model's inductive pass alone (the
item's feature row, no edges), which ``add_item`` served before.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 nice python bench/bench_cold_items.py \\
        [--seeds 0] [--holdout 0.1] [--encoders] [--train KEY=JSON ...] [--workdir DIR --keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from common import machine_line, markdown_table, shop_run, train_overrides, write_json

from shopgraph.graph.build import message_passing_graph, visible_test_pairs
from shopgraph.graph.pipeline import build_run
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import MODEL_DIR, embed_graph, lean_graph, load_model, revisit_graph, train_run
from shopgraph.retrieval.index import index_run
from shopgraph.retrieval.service import ShopService

K_NEW, K_ALL = 10, 20


def reduced_shop(shop: Path, out: Path, held: set[str]) -> None:
    """Copy of the shop folder ``shop`` into ``out`` without the items ``held`` and their events
    (images linked, not copied)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("users.csv", "devices.csv", "labels.csv"):
        shutil.copyfile(shop / name, out / name)
    items = pd.read_csv(shop / "items.csv", dtype=str, keep_default_na=False)
    items[~items["item_id"].isin(held)].to_csv(out / "items.csv", index=False)
    events = pd.read_csv(shop / "events.csv", dtype=str, keep_default_na=False)
    events[~events["item_id"].isin(held)].to_csv(out / "events.csv", index=False)
    if (shop / "images").is_dir() and not (out / "images").exists():
        (out / "images").symlink_to((shop / "images").resolve())


def recall_among(scores: np.ndarray, truth: np.ndarray, k: int, rng: np.random.Generator) -> float:
    """Mean over rows of ``scores [P, n]`` of whether column ``truth[p]`` is in the row's top ``k``
    (ties broken at random)."""
    jitter = rng.random(scores.shape) * 1e-9 * (np.abs(scores).max() + 1.0)
    s = scores + jitter
    above = (s > s[np.arange(len(truth)), truth][:, None]).sum(1)
    return float((above < k).mean())


class Scorer:
    """A trained model's test-time scores for ``users`` (external ids) over every item of its
    graph, plus ``extra`` item embeddings (added items, ids ``extra_ids``): user embeddings and the
    revisit term from the events before the test period, the visible purchases at ``-inf``."""

    def __init__(self, model: Any, data: Any, users: list[str], extra: np.ndarray | None = None,
                 extra_ids: list[str] | None = None) -> None:
        cpu = torch.device("cpu")
        graph = lean_graph(message_passing_graph(data, "test"))
        emb = embed_graph(model, graph, cpu)
        pos = {u: k for k, u in enumerate(data["user"].ids)}
        idx = torch.tensor([pos[u] for u in users])
        n_items = int(data["item"].num_nodes)
        revisit = revisit_graph(model, graph, cpu, emb)
        dot = emb["user"][idx] @ emb["item"].T
        self.scores = (dot if revisit is None else dot + revisit.rows(idx, n_items)).float().numpy()
        self.dot = dot.float().numpy()
        seen = pd.DataFrame(visible_test_pairs(data).t().numpy(), columns=["u", "i"])
        hit = pd.DataFrame({"u": idx.numpy(), "r": np.arange(len(users))}).merge(seen, on="u")
        self.scores[hit["r"].to_numpy(), hit["i"].to_numpy()] = -np.inf
        self.item_ids = list(data["item"].ids)
        self.n_graph = n_items
        if extra is not None:
            added = emb["user"][idx].float().numpy() @ extra.T
            self.scores, self.dot = np.hstack([self.scores, added]), np.hstack([self.dot, added])
            self.item_ids += list(extra_ids or [])
        self.col = {i: k for k, i in enumerate(self.item_ids)}
        self.users = {u: k for k, u in enumerate(users)}
        self.top = np.argpartition(-self.scores, K_ALL, axis=1)[:, :K_ALL]

    def among(self, ids: list[str]) -> np.ndarray:
        """Dot-product scores ``[users, len(ids)]`` of these items (no revisit term: nobody has
        looked at a new item yet)."""
        return self.dot[:, [self.col[i] for i in ids]]

    def recall(self, pairs: pd.DataFrame, only: np.ndarray | None = None) -> float:
        """Recall@K_ALL of the ``(user_id, item_id)`` test ``pairs``, per user averaged (each user's
        hits over ``min(K, their pairs)``); ``only``: count these pairs alone."""
        chosen = pairs if only is None else pairs[only]
        out = []
        for u, group in chosen.groupby("user_id"):
            top = set(self.top[self.users[u]].tolist())
            hits = sum(self.col[i] in top for i in group["item_id"])
            out.append(hits / min(len(group), K_ALL))
        return float(np.mean(out)) if out else float("nan")

    def new_per_list(self) -> float:
        """Mean number of added items in a user's top K_ALL."""
        return float((self.top >= self.n_graph).sum(1).mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similar_stats(svc: ShopService, units: np.ndarray, new_pos: list[int], warm_emb: np.ndarray,
                  warm_ids: list[str], held_ids: list[str], k: int = 10) -> dict[str, float]:
    """What ``similar_items`` gives when the new items' cosine rows are ``units`` (the served
    rows, or another way's): cosine over the trained and the new items, every score the product
    of two rows (a new item's query direction is its row's), against the warm model (trained on
    all items, unit vectors) as the reference:

    - for the new items' own lists: the share of a top ``k`` that are other new items, of its
      own category, and the share of its top ``k`` among the trained items that the warm
      model's top ``k`` among the trained items holds (``warm_overlap``), and among all items
      (``warm_overlap_all``);
    - for the trained items' lists: the share of a top ``k`` that are new items (``trained_new_share``;
      the warm model's share beside it, ``warm_trained_new_share``) and the share the warm model's
      top ``k`` holds (``trained_warm_overlap``)."""
    n = svc._n_trained
    trained = _unit(np.asarray(svc.item_emb[:n]))
    queries = _unit(units)
    sim_new = queries @ units.T
    np.fill_diagonal(sim_new, -np.inf)
    top = np.argsort(-np.hstack([queries @ trained.T, sim_new]), axis=1)[:, :k]
    cats = np.array(list(svc.categories[:n]) + [svc.categories[i] for i in new_pos])
    own = np.array([svc.categories[i] for i in new_pos])
    warm_col = {i: c for c, i in enumerate(warm_ids)}
    warm = _unit(warm_emb[[warm_col[i] for i in list(svc.item_ids[:n]) + held_ids]])  # trained, then new
    ours = np.argsort(-(queries @ trained.T), axis=1)[:, :k]
    theirs = np.argsort(-(warm[n:] @ warm[:n].T), axis=1)[:, :k]
    warm_new = warm[n:] @ warm.T
    warm_new[np.arange(len(held_ids)), n + np.arange(len(held_ids))] = -np.inf
    theirs_all = np.argsort(-warm_new, axis=1)[:, :k]
    # the trained items' own lists, both models (each item itself left out)
    served_tr = np.hstack([trained @ trained.T, trained @ units.T])
    warm_tr = warm[:n] @ warm.T
    for m in (served_tr, warm_tr):
        m[np.arange(n), np.arange(n)] = -np.inf
    ours_tr, theirs_tr = (np.argsort(-m, axis=1)[:, :k] for m in (served_tr, warm_tr))

    def shared(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))

    return {"new_share": float((top >= n).mean()), "same_category": float((cats[top] == own[:, None]).mean()),
            "warm_overlap": shared(ours, theirs), "warm_overlap_all": shared(top, theirs_all),
            "trained_new_share": float((ours_tr >= n).mean()), "warm_trained_new_share": float((theirs_tr >= n).mean()),
            "trained_warm_overlap": shared(ours_tr, theirs_tr)}


def inductive_embeddings(svc: ShopService, table: pd.DataFrame, held_ids: list[str], shop: Path,
                         encoders: bool) -> np.ndarray:
    """The held-out items as the model's inductive pass alone embeds them (their feature rows, no
    edges): what ``add_item`` served before it took the trained items nearest in content."""
    from shopgraph.encoders.text import item_text

    rows = []
    for item_id in held_ids:
        row = table.loc[item_id]
        text = item_text(row["title"], row["category"], row["description"])
        text_vec = svc._encode_texts([text])[0] if "text_items" in svc.indexes else None
        image_vec = (svc._encode_image(str(shop / row["image"]))[0]
                     if encoders and row["image"] and "image_items" in svc.indexes else None)
        rows.append(svc._feature_row(text_vec, image_vec, float(row["price"]) if row["price"] else None, row["category"]))
    return svc._inductive_embeddings(np.stack(rows))


def one_seed(seed: int, workdir: Path, holdout: float, encoders: bool, train: dict[str, object]) -> dict[str, Any]:
    t0 = time.perf_counter()
    warm_run, _ = shop_run(seed, workdir, users=5000, epochs=None, train=train, encoders=encoders)
    shop = workdir / f"shop_{seed}"
    items = pd.read_csv(shop / "items.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(10_000 + seed)
    held_ids = sorted(items["item_id"].sample(frac=holdout, random_state=rng.integers(2**31)).tolist())
    held = set(held_ids)
    cold_dir = workdir / f"cold_{seed}{'_encoders' if encoders else ''}"
    run_path = cold_dir / "run"
    if not ((run_path / "manifest.json").is_file() and RunDir(run_path).has("index/gnn_items.faiss")):
        reduced_shop(shop, cold_dir / "shop", held)
        build_run(cold_dir / "shop", run_path, seed=seed, use_text=encoders, use_image=encoders, overwrite=True)
        train_run(run_path, device="cpu", **{**train, "seed": seed})
        index_run(run_path, use_gpu=False)
    seconds_run = time.perf_counter() - t0

    svc = ShopService.from_run(run_path, catalogue=False)  # reruns add the same items again
    table = items.set_index("item_id")
    t0 = time.perf_counter()
    new_pos = []
    for item_id in held_ids:
        row = table.loc[item_id]
        price = float(row["price"]) if row["price"] else None
        image = str(shop / row["image"]) if encoders and row["image"] else None
        new_pos.append(svc.add_item(item_id, row["title"], category=row["category"],
                                    description=row["description"], price=price, image=image))
    seconds_add = time.perf_counter() - t0

    data = RunDir(run_path).load_graph()
    t_val, t_test = (int(t) for t in data.split_times)
    events = pd.read_csv(shop / "events.csv", usecols=["user_id", "item_id", "event_type", "timestamp"])
    buys = events[(events["event_type"] == "purchase") & events["user_id"].map(svc.has_user)]
    bought_before = set(zip(buys.loc[buys["timestamp"] < t_test, "user_id"], buys.loc[buys["timestamp"] < t_test, "item_id"]))
    test = buys.loc[buys["timestamp"] >= t_test, ["user_id", "item_id"]].drop_duplicates()
    test = test[[p not in bought_before for p in zip(test["user_id"], test["item_id"])]]  # new pairs, as evaluated
    test = test.sort_values(["user_id", "item_id"]).reset_index(drop=True)
    users = sorted(test["user_id"].unique())
    is_new = test["item_id"].isin(held).to_numpy()

    # both models score every item for these users from their events before the test period, as
    # `shopgraph evaluate` does (the dot product and the revisit term; the visible purchases excluded)
    cold = Scorer(svc.model, data, users, extra=svc.item_emb[np.array(new_pos)], extra_ids=held_ids)
    warm = Scorer(load_model(Path(warm_run) / MODEL_DIR), RunDir(warm_run).load_graph(), users)
    col = {i: k for k, i in enumerate(held_ids)}
    new_pairs = test[is_new]
    truth = np.array([col[i] for i in new_pairs["item_id"]])
    rows = np.array([cold.users[u] for u in new_pairs["user_id"]])
    # the user's share of their training-period events in each held-out item's category (the
    # events the reduced shop has: none on the held-out items)
    cat = table["category"]
    ev_train = events[(events["timestamp"] < t_val) & ~events["item_id"].isin(held)]
    share = pd.crosstab(ev_train["user_id"], ev_train["item_id"].map(cat), normalize="index")
    cat_share = share.reindex(index=new_pairs["user_id"], columns=cat.loc[held_ids].to_numpy()).fillna(0.0).to_numpy()
    n_new = len(held_ids)
    # similar items: a new item's 10 most similar items (cosine, trained and new), against the warm
    # model's 10 most similar trained items for the same item
    warm_data = RunDir(warm_run).load_graph()
    warm_emb = embed_graph(load_model(Path(warm_run) / MODEL_DIR), lean_graph(message_passing_graph(warm_data, "test")),
                           torch.device("cpu"))["item"].float().numpy()
    warm_ids = list(warm_data["item"].ids)
    inductive = inductive_embeddings(svc, table, held_ids, shop, encoders)
    ways = {"served (add_item)": svc.item_emb[np.array(new_pos)], "model's inductive pass alone": inductive}
    cosine_rows = {"served (add_item)": np.asarray(svc._item_emb_n[np.array(new_pos)]),
                   "served vectors scaled to length 1": _unit(svc.item_emb[np.array(new_pos)]),
                   "model's inductive pass alone": _unit(inductive)}
    similar = {name: similar_stats(svc, rows, new_pos, warm_emb, warm_ids, held_ids) for name, rows in cosine_rows.items()}
    ranked = {name: recall_among(Scorer(svc.model, data, users, extra=vecs, extra_ids=held_ids).among(held_ids)[rows],
                                 truth, K_NEW, np.random.default_rng(seed)) for name, vecs in ways.items()}
    among = {
        **ranked,
        "warm model (dot product)": recall_among(warm.among(held_ids)[rows], truth, K_NEW, np.random.default_rng(seed)),
        "category share": recall_among(cat_share, truth, K_NEW, np.random.default_rng(seed)),
        "random": min(K_NEW, n_new) / n_new,
    }
    result = {
        "seed": seed, "held_out_items": n_new, "test_pairs": len(test), "new_item_pairs": int(is_new.sum()),
        f"recall@{K_NEW}_among_new": among,
        f"recall@{K_ALL}_new_items": {"served": cold.recall(test, is_new), "warm": warm.recall(test, is_new)},
        f"recall@{K_ALL}_all": {"served": cold.recall(test), "warm": warm.recall(test)},
        "new_items_per_list": cold.new_per_list(),
        "similar@10": similar,
        "seconds": {"run": round(seconds_run, 1), "add_items": round(seconds_add, 2)},
    }
    print(f"seed {seed}: {n_new} new items; test purchases {len(test)}, {int(is_new.sum())} of new items | "
          + f"R@{K_NEW} among new items: " + ", ".join(f"{k} {v:.4f}" for k, v in among.items())
          + f" | R@{K_ALL} of the new items' purchases: served {result[f'recall@{K_ALL}_new_items']['served']:.4f}, "
          + f"warm {result[f'recall@{K_ALL}_new_items']['warm']:.4f} | R@{K_ALL} of all: served "
          + f"{result[f'recall@{K_ALL}_all']['served']:.4f}, warm {result[f'recall@{K_ALL}_all']['warm']:.4f}"
          + f" | new items per top-{K_ALL} {result['new_items_per_list']:.2f}"
          + f" | add_item {seconds_add / n_new * 1000:.1f} ms an item", flush=True)
    for name, st in similar.items():
        print(f"  similar@10, {name}: a new item's list: new items {st['new_share']:.3f}, its own category "
              f"{st['same_category']:.3f}, shared with the warm model's {st['warm_overlap']:.3f} (trained items), "
              f"{st['warm_overlap_all']:.3f} (all); a trained item's list: new items {st['trained_new_share']:.3f} "
              f"(warm model {st['warm_trained_new_share']:.3f}), shared with the warm model's "
              f"{st['trained_warm_overlap']:.3f}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--holdout", type=float, default=0.1, help="share of the catalogue held out (default 0.1)")
    p.add_argument("--encoders", action="store_true", help="with the text and image encoders")
    p.add_argument("--workdir", type=Path, default=None, help="reuse / keep runs here (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--train", nargs="*", default=[], metavar="KEY=JSON",
                   help="TrainConfig settings for both runs, e.g. hidden=128 (runs already in --workdir are reused)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not 0 < args.holdout < 1:
        p.error(f"--holdout: expected a share between 0 and 1 (got {args.holdout})")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shopgraph-cold-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        results = [one_seed(s, workdir, args.holdout, args.encoders, train_overrides(p, args.train)) for s in args.seeds]
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    names = list(results[0][f"recall@{K_NEW}_among_new"])
    rows = [[str(r["seed"]), str(r["held_out_items"]), str(r["new_item_pairs"])]
            + [f"{r[f'recall@{K_NEW}_among_new'][n]:.4f}" for n in names]
            + [f"{r[f'recall@{K_ALL}_new_items'][w]:.4f}" for w in ("served", "warm")]
            + [f"{r[f'recall@{K_ALL}_all'][w]:.4f}" for w in ("served", "warm")] for r in results]
    print()
    print(markdown_table(["seed", "new items", "their test purchases"]
                         + [f"R@{K_NEW} among new: {n}" for n in names]
                         + [f"R@{K_ALL} of new items' purchases: {w}" for w in ("served", "warm model")]
                         + [f"R@{K_ALL} of all purchases: {w}" for w in ("served", "warm model")], rows))
    ways = list(results[0]["similar@10"])
    print()
    keys = {"new_share": "a new item's list: new items", "same_category": "its own category",
            "warm_overlap": "shared with warm (trained items)", "warm_overlap_all": "shared with warm (all)",
            "trained_new_share": "a trained item's list: new items", "trained_warm_overlap": "shared with warm"}
    print(markdown_table(["seed", "way"] + list(keys.values()) + ["warm model: a trained item's list: new items"],
                         [[str(r["seed"]), w] + [f"{r['similar@10'][w][key]:.3f}" for key in keys]
                          + [f"{r['similar@10'][w]['warm_trained_new_share']:.3f}"] for r in results for w in ways]))
    print(f"\n- total {time.perf_counter() - t0:.0f} s; {machine_line()}")
    write_json(args.json, {"results": results, "command": "bench_cold_items.py " + json.dumps(vars(args), default=str)})


if __name__ == "__main__":
    main()
