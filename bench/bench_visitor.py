"""A visitor the model does not know, timed beside a known shopper's recommendations in one process.

Usage::

    make demo                      # or build + train + index a run of your own
    python bench/bench_visitor.py --run demo_data/run_5000_0 [--calls 300] [--k 10]

Times, call by call and in turns (so that noise hits every row alike), the Python API behind
each route a shop's pages use:

* ``recommend`` (``GET /recommend``): a known shopper, the baseline every ratio is against;
* ``popular`` (``GET /recommend/popular``): a first visit, nothing viewed yet;
* ``popular`` of one category with a cart of 5 items left out;
* ``recommend_for_items`` (``POST /recommend/cold``) from 3 viewed items;
* the same with a category and a cart of 5 items left out (``exclude``);
* ``recommend_for_text`` from a few words, with and without a category.

Printed: p50 and p99 milliseconds of each and the p50 ratio to ``recommend``. The users, items,
categories and words are drawn at random (seeded) from the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table  # noqa: E402

WORDS = ("red running shoes", "wireless headphones", "gift card", "kitchen knife set", "winter jacket",
         "board game for kids", "face serum", "desk lamp")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("demo_data/run_5000_0"))
    ap.add_argument("--calls", type=int, default=300, help="calls of each kind (default 300)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.calls < 10:
        ap.error(f"--calls: expected at least 10 (got {args.calls})")

    from shopgraph.retrieval.service import ShopService

    service = ShopService.from_run(args.run)
    service.warm_up()
    rng = np.random.default_rng(args.seed)
    users, items = service.user_ids, [i for i in service.item_ids if service.has_item(i)]
    categories = sorted({c for c in service.categories if c})
    k = args.k

    def pick(pool: list[str], n: int) -> list[str]:
        return [pool[j] for j in rng.choice(len(pool), size=n, replace=False)]

    kinds: dict[str, Callable[[], object]] = {
        "recommend (known shopper)": lambda: service.recommend(pick(users, 1)[0], k),
        "popular (first visit)": lambda: service.popular(k),
        "popular, a category, a cart of 5": lambda: service.popular(
            k, category=categories[int(rng.integers(len(categories)))], exclude=pick(items, 5)),
        "recommend_for_items (3 viewed)": lambda: service.recommend_for_items(pick(items, 3), k),
        "recommend_for_items, a category, a cart of 5": lambda: service.recommend_for_items(
            pick(items, 3), k, category=categories[int(rng.integers(len(categories)))], exclude=pick(items, 5)),
        "recommend_for_text": lambda: service.recommend_for_text(WORDS[int(rng.integers(len(WORDS)))], k),
        "recommend_for_text, a category": lambda: service.recommend_for_text(
            WORDS[int(rng.integers(len(WORDS)))], k, category=categories[int(rng.integers(len(categories)))]),
    }
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(args.calls):  # in turns: each round calls every kind once
        for name, call in kinds.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1e3)

    base = float(np.percentile(times["recommend (known shopper)"], 50))
    rows = [[name, f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
             f"{np.percentile(ms, 50) / base:.2f}"] for name, ms in times.items()]
    print(f"{machine_line()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"run {args.run}: {len(users):,} users, {len(items):,} served items, {len(categories)} categories; "
          f"{args.calls:,} calls of each kind, k={k}, in turns\n")
    print(markdown_table(["call", "p50 ms", "p99 ms", "p50 / recommend"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
