"""FAISS item index benchmark: the index ShopGraph builds vs exact search, at 20k / 200k / 1M items.

For each catalogue size it builds :class:`shopgraph.retrieval.index.ItemIndex` the way
``shopgraph index`` does (``Flat`` up to 50k items, else ``IVF{4*sqrt(N)},Flat`` with ``nprobe``
tuned to recall@10 >= 0.95) and an exact ``Flat`` baseline on the same vectors, then measures on
fresh queries from the same distribution:

- build seconds (training, adding, tuning),
- single-query latency p50 / p99 (sequential one-vector searches, k=10: the API's hot path),
- batch throughput (one call with all queries, queries per second),
- recall@10 against the exact baseline.

Vectors: dim 64, a mixture of Gaussian clusters (item embeddings cluster by category and taste;
uniform random vectors are the worst case for IVF and unlike real embeddings).

    nice python bench/bench_faiss.py                  # 20k, 200k, 1M (about 3-5 minutes on 2 cores)
    nice python bench/bench_faiss.py --sizes 20000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import faiss
import numpy as np
from common import markdown_table

from shopgraph.retrieval.index import ItemIndex, gpu_available, recall_at_k


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """``n`` vectors: a random centre plus Gaussian noise, in float32 blocks (bounded memory)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        pick = rng.integers(0, len(centres), stop - start)
        out[start:stop] = centres[pick] + spread * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def latency(index: ItemIndex, queries: np.ndarray, n: int, k: int = 10) -> tuple[float, float]:
    times = []
    for q in queries[:n]:
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def qps(index: ItemIndex, queries: np.ndarray, k: int = 10) -> float:
    t0 = time.perf_counter()
    index.search(queries, k)
    return len(queries) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000, help="fresh queries for recall and throughput")
    p.add_argument("--single", type=int, default=500, help="sequential single-query searches for latency")
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (default 1)")
    p.add_argument("--metric", default="ip", choices=["ip", "cosine", "l2"])
    p.add_argument("--spread", type=float, default=1.0,
                   help="noise std around the 1,000 unit-variance centres (larger: harder for IVF)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
    print(f"# FAISS item index benchmark\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{platform.node()}; {os.cpu_count()} CPUs visible, FAISS threads {args.threads}; "
          f"faiss {faiss.__version__} ({'GPU' if gpu_available() else 'CPU'}); python {platform.python_version()}; "
          f"dim {args.dim}, metric {args.metric}, 1,000 clusters with noise std {args.spread}, {args.queries} fresh queries, k=10, "
          f"{args.single} sequential single queries\n", flush=True)
    rows = []
    for n in args.sizes:
        x = clustered(n, args.dim, rng, centres, args.spread)
        q = clustered(args.queries, args.dim, rng, centres, args.spread)
        t0 = time.perf_counter()
        exact = ItemIndex(args.metric, factory="Flat").fit(x, np.arange(n))
        t_exact = time.perf_counter() - t0
        truth = exact.search(q, 10).ids
        t0 = time.perf_counter()
        auto = ItemIndex(args.metric).fit(x, np.arange(n))
        t_auto = time.perf_counter() - t0
        for label, index, build in (("exact Flat (baseline)", exact, t_exact), ("ShopGraph auto", auto, t_auto)):
            # exact search at 1M costs ~10-30 ms per query: fewer sequential samples keep the run bounded
            n_single = args.single if (index.factory_ != "Flat" or n <= 200_000) else min(args.single, 200)
            p50, p99 = latency(index, q, n_single)
            rows.append([f"{n:,}", label, index.factory_, str(index.params_ or "-"), f"{build:.1f}",
                         f"{p50:.3f}", f"{p99:.3f}", f"{qps(index, q):,.0f}",
                         f"{recall_at_k(index.search(q, 10).ids, truth):.4f}",
                         f"{index.recall_at_10_:.4f}"])
            print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr, flush=True)
        del x, exact, auto
    header = ["items", "index", "factory", "params", "build s", "p50 ms", "p99 ms", "batch QPS",
              "recall@10 (fresh queries)", "recall@10 at build"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
