"""What compressing answers costs the server and saves on the wire (thirty-first session).

The API compresses an answer of 1 KB or more (``GZIP_MIN_BYTES``) for a client that sends
``Accept-Encoding: gzip``, at zlib level ``GZIP_LEVEL``. This loads a run once and asks, in one
process (Starlette's test client: no network, so the times are the server's work, compression
included), each route below with ``Accept-Encoding: identity`` and with ``gzip``, call by call
taking turns: the p50 milliseconds of each way, their ratio, and the answer's bytes each way.

Usage::

    python bench/bench_gzip.py --run RUN [--repeats 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import machine_line, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run folder (the demo's: demo_data/run_5000_0)")
    ap.add_argument("--repeats", type=int, default=40, help="calls of each way for each route")
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from shopgraph.retrieval.api import GZIP_LEVEL, GZIP_MIN_BYTES, create_app
    from shopgraph.retrieval.service import ShopService

    service = ShopService.from_run(args.run)
    users = service.user_ids[:100]
    items = service.item_ids[:3]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET /recommend k=10", "GET", {"url": "/recommend", "params": {"user_id": users[0], "k": 10}}),
        ("GET /recommend k=100", "GET", {"url": "/recommend", "params": {"user_id": users[0], "k": 100}}),
        ("POST /recommend/cold, 3 items, k=20", "POST",
         {"url": "/recommend/cold", "json": {"item_ids": items, "k": 20}}),
        ("POST /recommend/batch, 100 users, k=100", "POST",
         {"url": "/recommend/batch", "json": {"user_ids": users, "k": 100}}),
        ("GET /healthz", "GET", {"url": "/healthz"}),
    ]
    rows = []
    with TestClient(create_app(service, demo=False)) as client:
        for name, method, kw in calls:
            times: dict[str, list[float]] = {"identity": [], "gzip": []}
            size: dict[str, int] = {}
            for _ in range(args.repeats):
                for way in ("identity", "gzip"):
                    t = time.perf_counter()
                    r = client.request(method, headers={"accept-encoding": way}, **kw)
                    times[way].append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    size[way] = r.num_bytes_downloaded  # as sent: compressed when gzip
            p50 = {way: statistics.median(v) * 1e3 for way, v in times.items()}
            rows.append([name, f"{p50['identity']:.2f}", f"{p50['gzip']:.2f}", f"{p50['gzip'] / p50['identity']:.2f}x",
                         f"{size['identity']:,}", f"{size['gzip']:,}", f"{size['identity'] / size['gzip']:.1f}x"])
    print(machine_line())
    print(f"\ngzip from {GZIP_MIN_BYTES:,} bytes at level {GZIP_LEVEL}; {args.repeats} calls each way, taking turns\n")
    print(markdown_table(["route", "p50 ms, identity", "p50 ms, gzip", "ratio", "bytes, identity", "bytes, gzip",
                          "smaller"], rows))


if __name__ == "__main__":
    main()
