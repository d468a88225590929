"""What keeping run-time catalogue changes costs: the journal (``RUN/catalogue.jsonl``) against
changes held in memory only, side by side in one process.

Usage::

    make demo                      # or build + train + index a run of your own
    python bench/bench_catalogue.py --run demo_data/run_5000_0 [--adds 200] [--calls 2000]

The run folder is copied to a temporary folder first (the journal is written into the copy).
Three services over the copy: ``memory`` (``catalogue=False``: the behaviour before the journal),
``journal`` (the default: it looks for other processes' changes at most once a second) and
``journal, every call`` (``catalogue_sync_s=0``: a file-size check on every call). Timed,
alternating between them:

1. ``recommend`` (k=10) for random known users: median and p99 microseconds, ratio to ``memory``;
2. ``add_item`` of ``--adds`` items (the titles, categories, prices and every other image of
   existing items, under new ids): milliseconds an item, ratio to ``memory`` (the journal adds a
   line, an fsync and the image copy);
3. ``ShopService.from_run`` of the copy with the journal of those adds against without it:
   seconds, and a check that the replayed items' embeddings equal the ones the adding service
   computed;
4. the per-item arrays an add extends (content vectors 1,280 + 384 wide, the 64-d embeddings
   twice, category and flags) at ``--large`` items, 200 appends: copying the whole arrays per
   add (``np.vstack``, before the sixteenth session) against the service's ``_Growable`` rows;
5. ``ItemIndex.add`` of one new id into a Flat index of ``--large`` * 10 ids, 100 adds each way,
   alternated: looking every existing id up (before) against the id bound (now);
6. compaction (``shopgraph catalogue --compact``): three quarters of the added items removed
   again, then ``from_run`` replaying that journal against replaying the compacted one (best of
   two each), the compaction's own time, and checks that a fresh service over the compacted
   journal and one that was behind (it follows into the new generation) serve the same items
   with the same embeddings as the service that made the changes;
7. an idle service's first call after another process added ``--adds`` / 4 items (5 rounds): a
   service that looks at the journal only when called (``catalogue_follow=False``, the behaviour
   before the seventeenth session) applies them inside that call; one that also looks in a
   background thread (the default) has applied them already (1.5 s after the adds).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_line, markdown_table

from shopgraph.retrieval.service import ShopService


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (after `shopgraph index`)")
    ap.add_argument("--adds", type=int, default=200, help="items added per service (default 200)")
    ap.add_argument("--calls", type=int, default=2000, help="recommend calls per service (default 2000)")
    ap.add_argument("--large", type=int, default=100_000, help="catalogue size for step 4 (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.adds < 1 or args.calls < 1:
        ap.error("--adds and --calls must be at least 1")
    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        ap.error(f"--run {run}: not a run folder (no manifest.json)")
    rng = np.random.default_rng(args.seed)
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("catalogue.jsonl", "added_images"))
        names = ("memory", "journal", "journal, every call")
        t0 = time.perf_counter()
        services = {"memory": ShopService.from_run(copy, catalogue=False, fraud_reasons=False)}
        load_plain = time.perf_counter() - t0
        services["journal"] = ShopService.from_run(copy, fraud_reasons=False)
        services["journal, every call"] = ShopService.from_run(copy, fraud_reasons=False, catalogue_sync_s=0.0)
        first = services["memory"]

        # 1. recommend, alternating services call by call
        users = [first.user_ids[i] for i in rng.integers(0, len(first.user_ids), args.calls)]
        for svc in services.values():  # warm-up
            for u in users[:50]:
                svc.recommend(u, 10)
        rec_us: dict[str, list[float]] = {n: [] for n in names}
        for u in users:
            for n in names:
                t = time.perf_counter()
                services[n].recommend(u, 10)
                rec_us[n].append((time.perf_counter() - t) * 1e6)

        # 2. add_item: the same items, under new ids, alternating memory and journal
        picks = rng.choice(first._n_trained, size=min(args.adds, first._n_trained), replace=False)
        add_ms: dict[str, list[float]] = {"memory": [], "journal": []}
        for k, i in enumerate(picks):
            info = first.item_info(first.item_ids[int(i)])
            image = info["image"] if k % 2 == 0 and info["image"] and Path(info["image"]).is_file() else None
            for n in add_ms:
                t = time.perf_counter()
                services[n].add_item(f"bench-new-{k}", info["title"], category=info["category"],
                                     description=info["description"], price=info["price"], image=image)
                add_ms[n].append((time.perf_counter() - t) * 1e3)

        # 3. start-up with the journal of those adds
        t0 = time.perf_counter()
        replayed = ShopService.from_run(copy, fraud_reasons=False)
        load_journal = time.perf_counter() - t0
        t0 = time.perf_counter()
        ShopService.from_run(copy, catalogue=False, fraud_reasons=False)
        load_plain_again = time.perf_counter() - t0
        writer = services["journal"]
        # replayed adds are embedded in one pass, the adding calls embedded one each: equal to
        # float32 rounding
        replay_diff = float(np.abs(replayed.item_emb - writer.item_emb).max())
        same = replayed.item_ids == writer.item_ids and replay_diff < 1e-4
        journal_bytes = (copy / "catalogue.jsonl").stat().st_size

        # 6. compaction: most added items removed again, then start-up before and after compacting
        from shopgraph.retrieval.catalogue import CatalogueJournal

        behind = ShopService.from_run(copy, fraud_reasons=False, catalogue_sync_s=3600.0)
        churn = [f"bench-new-{k}" for k in range(len(picks)) if k % 4]
        for item_id in churn:
            writer.remove_item(item_id)
        journal = CatalogueJournal(copy)
        churned_bytes = journal.size()

        def start_up() -> tuple[float, ShopService]:
            times, svc = [], None
            for _ in range(2):
                t0 = time.perf_counter()
                svc = ShopService.from_run(copy, fraud_reasons=False)
                times.append(time.perf_counter() - t0)
            assert svc is not None
            return min(times), svc

        load_churned, _ = start_up()
        t0 = time.perf_counter()
        report = journal.compact(set(writer.item_ids[:writer._n_trained]))
        compact_s = time.perf_counter() - t0
        compacted_bytes = journal.size()
        load_compacted, compacted = start_up()
        behind.sync_catalogue()

        def served(svc: ShopService) -> dict[str, np.ndarray]:
            return {i: svc.item_emb[p] for i, p in svc._item_pos.items()}

        def alike(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
            return a.keys() == b.keys() and all(np.allclose(a[i], b[i], rtol=1e-5, atol=1e-6) for i in a)

        same_after = alike(served(compacted), served(writer)) and alike(served(behind), served(writer))
        same = same and same_after

        # 7. an idle service's first call after another process's adds
        followers = {"looks when called (before)": ShopService.from_run(copy, fraud_reasons=False,
                                                                       catalogue_follow=False),
                     "looks in the background too (now)": ShopService.from_run(copy, fraud_reasons=False)}
        first_ms: dict[str, list[float]] = {n: [] for n in followers}
        batch = max(1, len(picks) // 4)
        for r in range(5):
            for k, i in enumerate(picks[:batch]):
                info = first.item_info(first.item_ids[int(i)])
                writer.add_item(f"bench-late-{r}-{k}", info["title"], category=info["category"], price=info["price"])
            time.sleep(1.5)
            user = users[r]
            for n in (list(followers) if r % 2 == 0 else list(followers)[::-1]):
                t = time.perf_counter()
                followers[n].recommend(user, 10)
                first_ms[n].append((time.perf_counter() - t) * 1e3)
        same = same and all(alike(served(f), served(writer)) for f in followers.values())

    # 4. the per-item arrays at a large catalogue: whole copies against growable rows
    from shopgraph.retrieval.service import _Growable

    widths = (1280, 384, 64, 64)
    arrays = [rng.random((args.large, w), dtype=np.float32) for w in widths]
    rows = [rng.random(w, dtype=np.float32) for w in widths]
    t0 = time.perf_counter()
    copied = list(arrays)
    for _ in range(200):
        copied = [np.vstack([a, r[None, :]]) for a, r in zip(copied, rows)]
    per_copy = (time.perf_counter() - t0) / 200 * 1e3
    del copied
    t0 = time.perf_counter()
    grown = [_Growable(a) for a in arrays]
    for _ in range(200):
        for g, r in zip(grown, rows):
            g.append(r)
    per_grow = (time.perf_counter() - t0) / 200 * 1e3
    assert all(np.array_equal(g.view[-1], r) and len(g.view) == args.large + 200 for g, r in zip(grown, rows))

    # 5. ItemIndex.add at ten times that many ids: the duplicate check
    import faiss

    from shopgraph.retrieval.index import ItemIndex

    n_ids = args.large * 10
    vectors = rng.random((n_ids, 64), dtype=np.float32)
    index = ItemIndex("ip", factory="Flat").fit(vectors[:16], np.arange(16, dtype=np.int64))
    index.add(vectors[16:], np.arange(16, n_ids, dtype=np.int64))
    one = vectors[:1]

    def add_looking_up(ids: np.ndarray) -> None:  # the check before the sixteenth session
        present = faiss.vector_to_array(index.index_.id_map)
        if np.isin(ids, present).any():
            raise AssertionError("clash")
        index.index_.add_with_ids(one, ids)

    index_ms: dict[str, list[float]] = {"look up every id (before)": [], "id bound (now)": []}
    for k in range(200):
        name = list(index_ms)[k % 2]
        new = np.array([n_ids + k], dtype=np.int64)
        t = time.perf_counter()
        if k % 2 == 0:
            add_looking_up(new)
        else:
            index.add(one, new)
        index_ms[name].append((time.perf_counter() - t) * 1e3)
    del vectors

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    base = statistics.median(rec_us["memory"])
    rows = [[n, f"{statistics.median(rec_us[n]):.0f}", f"{p(rec_us[n], 99):.0f}",
             f"{statistics.median(rec_us[n]) / base:.3f}"] for n in names]
    print(f"\n`recommend` (k=10), {args.calls:,} calls per service, alternated\n")
    print(markdown_table(["service", "median µs", "p99 µs", "median vs memory"], rows))
    base_add = statistics.median(add_ms["memory"])
    rows = [[n, f"{statistics.median(add_ms[n]):.1f}", f"{p(add_ms[n], 99):.1f}",
             f"{statistics.median(add_ms[n]) / base_add:.2f}"] for n in add_ms]
    print(f"\n`add_item`, {len(picks)} items per service (every other one with its image), alternated\n")
    print(markdown_table(["service", "median ms", "p99 ms", "median vs memory"], rows))
    plain = min(load_plain, load_plain_again)
    print(f"\n`from_run`: {plain:.2f} s without the journal, {load_journal:.2f} s replaying {len(picks)} adds "
          f"({journal_bytes / 2**20:.2f} MB journal; +{(load_journal - plain) / len(picks) * 1e3:.1f} ms an item); "
          f"replayed items identical to the adding service's, embeddings within {replay_diff:.1e}: {same}")
    print(f"\nper-item arrays at {args.large:,} items ({' + '.join(map(str, widths))} floats a row), 200 appends: "
          f"{per_copy:.1f} ms an item copying them whole (before), {per_grow:.3f} ms with growable rows (now), "
          f"{per_copy / per_grow:.0f}x")
    print(f"\ncompaction: {len(picks)} adds then {len(churn)} of them removed ({report.lines} lines, "
          f"{churned_bytes / 2**20:.2f} MB) -> {report.kept} lines ({compacted_bytes / 2**20:.2f} MB) in "
          f"{compact_s * 1e3:.0f} ms; `from_run` {load_churned:.2f} s replaying the whole journal, "
          f"{load_compacted:.2f} s the compacted one ({load_churned / load_compacted:.2f}x), "
          f"{plain:.2f} s without a journal; fresh, behind and writing services serve the same items and "
          f"embeddings: {same_after}")
    (before_name, before_ms), (now_name, now_ms) = first_ms.items()
    print(f"\nan idle service's first `recommend` after another process added {batch} items, 5 rounds: median "
          f"{statistics.median(before_ms):.1f} ms ({before_name}) against {statistics.median(now_ms):.2f} ms "
          f"({now_name}), {statistics.median(before_ms) / statistics.median(now_ms):.0f}x")
    before, now = (statistics.median(v) for v in index_ms.values())
    print(f"ItemIndex.add of one id at {n_ids:,} ids (Flat, 64-d), 100 each way alternated: median {before:.3f} ms "
          f"looking every id up (before), {now:.3f} ms with the id bound (now), {before / now:.0f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
