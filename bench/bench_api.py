"""HTTP API latency and throughput on loopback: `shopgraph serve` with 1 and N workers.

Builds (or takes with ``--run``) a run folder, starts ``shopgraph serve`` on 127.0.0.1 in a
child process, and drives it with a bounded load generator:

1. 1,000 sequential ``GET /recommend`` calls over one keep-alive connection (random known users,
   k=10): latency p50 / p99 / max as the client sees it;
2. a concurrent burst: ``--clients`` threads, ``--burst`` requests in all: throughput and p50 / p99;
3. ``POST /recommend/cold`` for a visitor with 3 random items, alternated call by call with
   ``GET /recommend`` on one connection (``--sequential`` of each): p50 / p99 and the ratio.
4. batches: the same ``--batch`` random users asked one call each (``GET /recommend``, ``GET
   /fraud/score``) and in one call (``POST /recommend/batch``, ``POST /fraud/score/batch``, with and
   without reasons), the two ways taking turns for ``--rounds`` rounds on one connection:
   milliseconds per user and the ratio;
5. a liveness probe (``GET /healthz``) alone and during the largest batch answer (1,000 users at
   k=100), and the time to refuse a batch over the 100,000-result cap.

Everything is loopback-only and bounded in count and time; the server is stopped at the end.
The default run folder is synthetic (5,000 users, 20,000 items, 64-d clustered embeddings, no
text or image index): it measures the serving path, not model quality.

    nice python bench/bench_api.py                 # workers 1 and 2
    nice python bench/bench_api.py --run RUN --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table


def synthetic_run(folder: Path, n_users: int, n_items: int, n_events: int, dim: int = 64, seed: int = 0) -> Path:
    """A valid run folder with random (clustered) embeddings and a gnn_items index."""
    import pandas as pd
    from safetensors.numpy import save_file

    from shopgraph.graph.build import build_graph
    from shopgraph.graph.run import RunDir
    from shopgraph.graph.schema import ShopTables
    from shopgraph.retrieval.index import index_run

    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": [f"u{k}" for k in range(n_users)],
                          "created_at": np.full(n_users, 1.6e9)})
    cats = np.array(["electronics", "books", "shoes", "garden", "toys", "beauty"])
    items = pd.DataFrame({
        "item_id": [f"i{k}" for k in range(n_items)], "title": [f"item {k}" for k in range(n_items)],
        "description": "", "category": cats[rng.integers(0, len(cats), n_items)],
        "price": rng.uniform(1, 100, n_items), "image": "",
    })
    devices = pd.DataFrame({"device_id": [f"d{k}" for k in range(n_users)]})
    ev_u = rng.integers(0, n_users, n_events)
    events = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[ev_u],
        "item_id": items["item_id"].to_numpy()[np.minimum(rng.zipf(1.3, n_events) - 1, n_items - 1)],
        "event_type": rng.choice(["view", "cart", "purchase"], n_events, p=[0.7, 0.15, 0.15]),
        "timestamp": np.sort(rng.integers(1_700_000_000, 1_710_000_000, n_events)),
        "device_id": devices["device_id"].to_numpy()[ev_u],
        "amount": rng.uniform(1, 100, n_events),
    })
    tables = ShopTables(users=users, items=items, devices=devices, events=events, labels=None, root=folder)
    data = build_graph(tables, seed=seed)
    run = RunDir(folder / "run", create=True)
    run.save_graph(data)
    for name in ("users", "items", "devices", "events"):
        frame = getattr(tables, name)
        run.write_with(f"tables/{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    emb = {
        "user": (centres[rng.integers(0, 200, n_users)] + rng.standard_normal((n_users, dim))).astype(np.float32),
        "item": (centres[rng.integers(0, 200, n_items)] + rng.standard_normal((n_items, dim))).astype(np.float32),
        "device": rng.standard_normal((n_users, dim)).astype(np.float32),
        "fraud_prob": rng.uniform(0, 1, n_users).astype(np.float32),
    }
    run.write_with("embeddings.safetensors", lambda p: save_file(emb, str(p)))
    run.write_json("fraud.json", {"kind": "synthetic", "threshold": 0.9})
    index_run(run.path)
    return run.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server at {url} not ready after {timeout:.0f}s")


def sequential(url: str, users: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    import httpx

    times = []
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for _ in range(50):  # warm-up
            client.get("/recommend", params={"user_id": users[int(rng.integers(len(users)))], "k": 10})
        for _ in range(n):
            user = users[int(rng.integers(len(users)))]
            t0 = time.perf_counter()
            r = client.get("/recommend", params={"user_id": user, "k": 10})
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"/recommend answered {r.status_code}: {r.text[:200]}")
    return np.array(times) * 1000


def side_by_side(url: str, users: list[str], items: list[str], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds of ``n`` ``GET /recommend`` and ``n`` ``POST /recommend/cold`` (3 random
    items) calls, alternated on one keep-alive connection."""
    import httpx

    known: list[float] = []
    cold: list[float] = []
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for step in range(2 * (n + 50)):
            if step % 2 == 0:
                t0 = time.perf_counter()
                r = client.get("/recommend", params={"user_id": users[int(rng.integers(len(users)))], "k": 10})
                out = known
            else:
                seeds = [items[int(i)] for i in rng.integers(len(items), size=3)]
                t0 = time.perf_counter()
                r = client.post("/recommend/cold", json={"item_ids": seeds, "k": 10})
                out = cold
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"{r.request.url.path} answered {r.status_code}: {r.text[:200]}")
            if step >= 100:  # the first 50 of each warm up
                out.append(elapsed)
    return np.array(known) * 1000, np.array(cold) * 1000


BATCH_WAYS = (  # (what, one call per user, one call for the batch)
    ("recommend, k=10", ("/recommend", {"k": 10}), ("/recommend/batch", {"k": 10})),
    ("fraud score with reasons", ("/fraud/score", {}), ("/fraud/score/batch", {"reasons": True})),
    ("fraud score without reasons", ("/fraud/score", {}), ("/fraud/score/batch", {"reasons": False})),
)


def batches(url: str, users: list[str], batch: int, rounds: int,
            rng: np.random.Generator) -> dict[str, tuple[list[float], list[float]]]:
    """Per way of :data:`BATCH_WAYS`, the milliseconds per user of ``rounds`` rounds of ``batch``
    random users asked one call each and then in one call (the order swapped every round; one
    warm-up round first). Each batch answer is checked against the one-by-one answers."""
    import httpx

    out: dict[str, tuple[list[float], list[float]]] = {what: ([], []) for what, _, _ in BATCH_WAYS}
    with httpx.Client(base_url=url, timeout=120.0) as client:

        def ok(r: httpx.Response) -> Any:
            if r.status_code != 200:
                raise RuntimeError(f"{r.request.url.path} answered {r.status_code}: {r.text[:200]}")
            return r.json()

        for step in range(rounds + 1):
            ids = [users[int(i)] for i in rng.integers(len(users), size=batch)]
            for what, (one_path, one_params), (many_path, many_body) in BATCH_WAYS:
                times = {}
                for way in ((0, 1) if step % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    if way == 0:
                        single = [ok(client.get(one_path, params={"user_id": u, **one_params})) for u in ids]
                    else:
                        many = ok(client.post(many_path, json={"user_ids": ids, **many_body}))
                    times[way] = (time.perf_counter() - t0) * 1000 / batch
                listed = many["results"] if "results" in many else many["scores"]
                if many_body.get("reasons") is False:
                    single = [{**s, "reasons": [], "held_out_reasons": []} for s in single]
                if listed != single:
                    a, b = next((a, b) for a, b in zip(listed, single) if a != b)
                    diff = {key: (a.get(key), b.get(key)) for key in set(a) | set(b) if a.get(key) != b.get(key)}
                    raise RuntimeError(f"{many_path} did not answer as {one_path} one user at a time: {diff}")
                if step > 0:
                    out[what][0].append(times[0])
                    out[what][1].append(times[1])
    return out


def probe_during_batch(url: str, users: list[str], rng: np.random.Generator) -> dict[str, float]:
    """A liveness probe's latency (``GET /healthz`` every 10 ms on its own connection) alone, and
    while one ``POST /recommend/batch`` of 1,000 users at k=100 (the largest answer a batch gives,
    100,000 items) runs; and how fast the same batch at k=1000 (a million) is refused."""
    import httpx

    ids = [users[int(i)] for i in rng.integers(len(users), size=1000)]
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=120.0) as probe, httpx.Client(base_url=url, timeout=120.0) as big:
        def probe_ms() -> float:
            t0 = time.perf_counter()
            if probe.get("/healthz").status_code != 200:
                raise RuntimeError("/healthz did not answer 200")
            return (time.perf_counter() - t0) * 1000

        alone = [probe_ms() for _ in range(50)]
        done = threading.Event()
        answer: dict[str, Any] = {}

        def ask() -> None:
            t0 = time.perf_counter()
            r = big.post("/recommend/batch", json={"user_ids": ids, "k": 100})
            answer.update(status=r.status_code, bytes=len(r.content), s=time.perf_counter() - t0)
            done.set()

        thread = threading.Thread(target=ask)
        thread.start()
        during = []
        while not done.is_set():
            during.append(probe_ms())
            time.sleep(0.01)
        thread.join()
        if answer["status"] != 200:
            raise RuntimeError(f"/recommend/batch at k=100 answered {answer['status']}")
        t0 = time.perf_counter()
        refused = big.post("/recommend/batch", json={"user_ids": ids, "k": 1000})
        out["refused_ms"] = (time.perf_counter() - t0) * 1000
        if refused.status_code != 422:
            raise RuntimeError(f"/recommend/batch at k=1000 answered {refused.status_code}, not 422")
    out.update(alone_p50=float(np.median(alone)), alone_max=float(np.max(alone)),
               during_p50=float(np.median(during)), during_max=float(np.max(during)), probes=len(during),
               batch_s=answer["s"], batch_mb=answer["bytes"] / 2**20)
    return out


def burst(url: str, users: list[str], total: int, clients: int, seed: int) -> tuple[float, np.ndarray, int]:
    import httpx

    per = total // clients
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def worker(c: int) -> None:
        rng = np.random.default_rng(seed + c)
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for _ in range(per):
                t0 = time.perf_counter()
                try:
                    r = client.get("/recommend", params={"user_id": users[int(rng.integers(len(users)))], "k": 10})
                    errors[c] += r.status_code != 200
                except httpx.HTTPError:
                    errors[c] += 1
                lat[c].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    flat = np.array([x for xs in lat for x in xs]) * 1000
    return len(flat) / wall, flat, sum(errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="serve this run folder (default: a synthetic one)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sequential", type=int, default=1000)
    p.add_argument("--burst", type=int, default=2000, help="requests in the concurrent burst")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads in the burst")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=200, help="users per batch call (1..1000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the batch comparison")
    args = p.parse_args(argv)
    if min(args.sequential, args.burst, args.clients) < 1 or args.burst > 100_000 or args.sequential > 100_000:
        p.error("--sequential and --burst: 1..100000; --clients >= 1")
    if not 1 <= args.batch <= 1000 or not 1 <= args.rounds <= 100:
        p.error("--batch: 1..1000; --rounds: 1..100")

    with tempfile.TemporaryDirectory(prefix="shopgraph-bench-api-") as tmp:
        if args.run is None:
            t0 = time.perf_counter()
            run = synthetic_run(Path(tmp), args.users, args.items, args.events)
            print(f"synthetic run: {args.users:,} users, {args.items:,} items, {args.events:,} events "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        else:
            run = args.run
        from shopgraph.graph.run import RunDir

        data = RunDir(run).load_graph()
        users = list(data["user"].ids)
        from shopgraph.retrieval.service import ShopService

        served = ShopService.from_run(run, fraud_reasons=False)  # the catalogue as served (its journal applied)
        items = [i for i in served.item_ids if served.has_item(i)]
        del served
        rows = []
        cold_rows = []
        batch_rows = []
        probe_rows = []
        for workers in args.workers:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            cmd = [sys.executable, "-m", "shopgraph.ui.cli", "serve", "--run", str(run), "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(workers)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ready(url, proc)
                rng = np.random.default_rng(workers)
                seq = sequential(url, users, args.sequential, rng)
                tput, lat, errors = burst(url, users, args.burst, args.clients, seed=workers)
                known, cold = side_by_side(url, users, items, args.sequential, rng)
                by_way = batches(url, users, args.batch, args.rounds, rng)
                probed = probe_during_batch(url, users, rng)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            rows.append([str(workers), f"{np.percentile(seq, 50):.2f}", f"{np.percentile(seq, 99):.2f}",
                         f"{seq.max():.1f}", f"{tput:,.0f}", f"{np.percentile(lat, 50):.2f}",
                         f"{np.percentile(lat, 99):.2f}", str(errors)])
            print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr, flush=True)
            cold_rows.append([str(workers), f"{np.percentile(known, 50):.2f}", f"{np.percentile(known, 99):.2f}",
                              f"{np.percentile(cold, 50):.2f}", f"{np.percentile(cold, 99):.2f}",
                              f"{np.percentile(cold, 50) / np.percentile(known, 50):.2f}"])
            probe_rows.append([str(workers), f"{probed['alone_p50']:.2f}", f"{probed['alone_max']:.1f}",
                               f"{probed['batch_s']:.2f} s, {probed['batch_mb']:.1f} MB",
                               f"{probed['during_p50']:.2f}", f"{probed['during_max']:.1f}", str(probed["probes"]),
                               f"{probed['during_max'] / probed['alone_p50']:.0f}×", f"{probed['refused_ms']:.1f}"])
            for what, (single, many) in by_way.items():
                batch_rows.append([str(workers), what, f"{np.median(single):.3f}", f"{np.median(many):.3f}",
                                   f"{np.median(single) / np.median(many):.1f}×"])
    print(f"# HTTP API benchmark (/recommend, k=10, loopback)\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{platform.node()}; {os.cpu_count()} CPUs visible; python {platform.python_version()}; "
          f"{args.sequential:,} sequential calls on one keep-alive connection; burst of {args.burst:,} calls "
          f"from {args.clients} client threads (clients share the machine with the server)\n")
    header = ["workers", "seq p50 ms", "seq p99 ms", "seq max ms", "burst req/s", "burst p50 ms",
              "burst p99 ms", "errors"]
    print(markdown_table(header, rows))
    print(f"\n/recommend/cold (3 random items, k=10) alternated with /recommend, {args.sequential:,} calls "
          "of each on one keep-alive connection\n")
    print(markdown_table(["workers", "/recommend p50 ms", "p99 ms", "/recommend/cold p50 ms", "p99 ms",
                          "cold p50 / recommend p50"], cold_rows))
    print(f"\nBatches of {args.batch} random users, one call per user against one call for the batch, "
          f"taking turns on one keep-alive connection, median of {args.rounds} rounds (ms per user)\n")
    print(markdown_table(["workers", "what", "one call per user", "one call per batch", "ratio"], batch_rows))
    print("\nA liveness probe (GET /healthz every 10 ms) alone and while one POST /recommend/batch of 1,000 users "
          "at k=100 runs (100,000 results, the most a batch answers); the same batch at k=1000 is refused (422)\n")
    print(markdown_table(["workers", "probe alone p50 ms", "alone max ms", "the batch", "probe during p50 ms",
                          "during max ms", "probes during", "during max ÷ alone p50", "k=1000 refused in ms"],
                         probe_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
