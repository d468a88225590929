"""Changing the catalogue in batches: ``ShopService.add_items`` (``POST /items/batch``) and
``remove_items`` (``POST /items/remove``) against ``add_item`` (``POST /items``) and
``remove_item`` one item at a time, side by side in one run.

Usage::

    make demo                      # or build + train + index a run of your own
    python bench/bench_batches.py --run demo_data/run_5000_0 [--items 512] [--batches 16 64 256] [--http]

The run folder is copied to a temporary folder once per way of changing it, so that each service
writes its own copy's journal (``RUN/catalogue.jsonl``), as a served run does.

1. Adds: the titles, categories, descriptions, prices and every other image of ``--items``
   existing items, under new ids. The items go in chunks of the largest batch size; in each chunk
   every way adds the same items, the order of the ways rotated from chunk to chunk: one by one,
   then ``add_items`` in batches of each size. Printed: milliseconds an item (the chunks' time over
   their items), items a second and the ratio to one by one, and checks that every way serves the
   same items with the same embeddings (within 1e-5) as the one-by-one service, also after a
   restart (a fresh service replaying each copy's journal).
2. With ``--http``: the same over loopback against ``shopgraph serve`` (one server per copy, one
   worker, a keep-alive connection each): ``POST /items`` per item (JSON, or multipart with the
   image file) against ``POST /items/batch`` in batches of ``--http-batch``.
3. Removals of ``--items`` trained items: ``remove_item`` one by one against ``remove_items`` in
   batches of the largest size, chunk by chunk alternated, with a check that both serve the same
   catalogue, also after a restart.
4. The indexes' part of a removal at a large catalogue: ``ItemIndex.remove`` of ``--index-removes``
   ids from a Flat index of ``--index-ids`` 64-d vectors, one call an id (as ``remove_item``
   does, once per index) against one call for all (``remove_items``).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_line, markdown_table

from shopgraph.retrieval.service import ShopService

ONE = "add_item, one by one"


def _items(service: ShopService, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` existing items' fields under new ids; every other one with its image (a path)."""
    picks = rng.choice(service._n_trained, size=min(n, service._n_trained), replace=False)
    items = []
    for k, i in enumerate(picks):
        info = service.item_info(service.item_ids[int(i)])
        image = info["image"] if k % 2 == 0 and info["image"] and Path(info["image"]).is_file() else None
        items.append({"item_id": f"bench-batch-{k}", "title": info["title"], "category": info["category"],
                      "description": info["description"], "price": info["price"], "image": image})
    return items


def _served(service: ShopService, ids: list[str]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    fields = [tuple(service.item_info(i)[f] for f in ("title", "category", "description", "price")) for i in ids]
    return np.stack([service.item_emb[service._item_pos[i]] for i in ids]), fields


def _differs(a: tuple[np.ndarray, list[tuple[Any, ...]]], b: tuple[np.ndarray, list[tuple[Any, ...]]]) -> float:
    """Largest embedding difference, or infinity where the items' fields differ."""
    return float(np.abs(a[0] - b[0]).max()) if a[1] == b[1] else float("inf")


def _take_turns(ways: dict[str, Callable[[list[Any]], Any]], things: list[Any], chunk: int) -> dict[str, float]:
    """Seconds each way took to apply ``things``, ``chunk`` at a time, the order of the ways
    rotated from chunk to chunk (alternated, for two)."""
    seconds = dict.fromkeys(ways, 0.0)
    names = list(ways)
    for c, start in enumerate(range(0, len(things), chunk)):
        part = things[start:start + chunk]
        for name in names[c % len(names):] + names[:c % len(names)]:
            t0 = time.perf_counter()
            ways[name](part)
            seconds[name] += time.perf_counter() - t0
        print(f"  chunk {c + 1}: {', '.join(f'{n} {t:.1f} s' for n, t in seconds.items())}", file=sys.stderr,
              flush=True)
    return seconds


def _in_batches(change: Callable[[list[Any]], Any], size: int) -> Callable[[list[Any]], None]:
    def apply(part: list[Any]) -> None:
        for start in range(0, len(part), size):
            change(part[start:start + size])

    return apply


def _python(copies: dict[str, Path], items: list[dict[str, Any]], sizes: list[int]) -> dict[str, float]:
    services = {name: ShopService.from_run(path, fraud_reasons=False) for name, path in copies.items()}
    warm = items[0]  # the encoders' first call is slow; warm every service up on the same item
    for k, svc in enumerate(services.values()):
        svc.add_item(f"warm-{k}", warm["title"], category=warm["category"], image=warm["image"])
    one, *batched = services.values()
    ways: dict[str, Callable[[list[Any]], Any]] = {ONE: lambda part: [one.add_item(**item) for item in part]}
    for name, svc, size in zip(list(services)[1:], batched, sizes):
        ways[name] = _in_batches(svc.add_items, size)
    seconds = _take_turns(ways, items, max(sizes))
    ids = [item["item_id"] for item in items]
    reference = _served(services[ONE], ids)
    worst = max(_differs(_served(svc, ids), reference) for svc in services.values())
    for path in copies.values():  # a restart replays each journal
        worst = max(worst, _differs(_served(ShopService.from_run(path, fraud_reasons=False), ids), reference))
    seconds["largest difference"] = worst
    return seconds


def _created(response: Any) -> None:
    if response.status_code != 201:
        raise RuntimeError(f"{response.request.url.path} answered {response.status_code}: {response.text[:200]}")


def _post_one(client: Any, body: dict[str, Any]) -> Any:
    """``POST /items`` as a client would: JSON, or multipart with the image file."""
    if "image_base64" not in body:
        return client.post("/items", json=body)
    form = {k: "" if v is None else str(v) for k, v in body.items() if k != "image_base64"}
    return client.post("/items", data=form, files={"image": ("image", base64.b64decode(body["image_base64"]))})


def _http(copies: dict[str, Path], items: list[dict[str, Any]], size: int) -> dict[str, float]:
    import httpx
    from bench_api import free_port, wait_ready

    bodies = []
    for item in items:
        body = {k: v for k, v in item.items() if k != "image"}
        if item["image"]:
            body["image_base64"] = base64.b64encode(Path(item["image"]).read_bytes()).decode("ascii")
        bodies.append(body)
    procs, clients = {}, {}
    try:
        for name, path in copies.items():
            port = free_port()
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "shopgraph.ui.cli", "serve", "--run", str(path), "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_ready(f"http://127.0.0.1:{port}", procs[name])
            clients[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)
        for k, client in enumerate(clients.values()):  # warm-up
            _post_one(client, dict(bodies[0], item_id=f"warm-{k}")).raise_for_status()
        (one_name, one), (batch_name, batch) = clients.items()
        seconds = _take_turns({one_name: lambda part: [_created(_post_one(one, body)) for body in part],
                               batch_name: lambda part: _created(batch.post("/items/batch", json={"items": part}))},
                              bodies, size)
    finally:
        for client in clients.values():
            client.close()
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ids = [item["item_id"] for item in items]
    served = [_served(ShopService.from_run(path, fraud_reasons=False), ids) for path in copies.values()]
    seconds["largest difference"] = max(_differs(s, served[0]) for s in served)
    return seconds


def _removals(copies: dict[str, Path], ids: list[str], size: int) -> tuple[dict[str, float], bool]:
    """Seconds each way took to remove ``ids`` (one by one, or ``remove_items`` in batches of
    ``size``), and whether both serve the same catalogue, also after a restart."""
    services = {name: ShopService.from_run(path, fraud_reasons=False) for name, path in copies.items()}
    (one_name, one), (batch_name, batch) = services.items()
    seconds = _take_turns({one_name: lambda part: [one.remove_item(item_id) for item_id in part],
                           batch_name: batch.remove_items}, ids, size)

    def served(svc: ShopService) -> list[str]:
        return [i for i in svc.item_ids if svc.has_item(i)]

    first = served(one)
    same = all(served(svc) == first for svc in services.values()) and all(
        served(ShopService.from_run(path, fraud_reasons=False)) == first for path in copies.values())
    return seconds, same and not any(i in first for i in ids)


def _index_removals(n_ids: int, n_removes: int, rng: np.random.Generator) -> dict[str, float]:
    """Milliseconds an id for ``ItemIndex.remove`` one id a call against all ids in one call."""
    from shopgraph.retrieval.index import ItemIndex

    vectors = rng.random((n_ids, 64), dtype=np.float32)
    gone = rng.choice(n_ids, size=2 * n_removes, replace=False).astype(np.int64)
    index = ItemIndex("ip", factory="Flat").fit(vectors, np.arange(n_ids, dtype=np.int64))
    del vectors
    t0 = time.perf_counter()
    for i in gone[:n_removes]:
        index.remove(np.array([i]))
    one = (time.perf_counter() - t0) / n_removes * 1e3
    t0 = time.perf_counter()
    index.remove(gone[n_removes:])
    together = (time.perf_counter() - t0) / n_removes * 1e3
    assert index.count == n_ids - 2 * n_removes
    return {"one id a call (remove_item)": one, "all in one call (remove_items)": together}


def _table(seconds: dict[str, float], n: int) -> str:
    base = next(iter(seconds.values()))  # the first way: one by one
    rows = [[name, f"{s / n * 1e3:.3f}", f"{n / s:.0f}", f"{base / s:.2f}"]
            for name, s in seconds.items() if name != "largest difference"]
    return markdown_table(["way", "ms an item", "items a second", "vs one by one"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (after `shopgraph index`)")
    ap.add_argument("--items", type=int, default=512, help="items added by each way (default 512)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256], help="add_items batch sizes")
    ap.add_argument("--http", action="store_true", help="also over HTTP (POST /items against POST /items/batch)")
    ap.add_argument("--http-batch", type=int, default=64, help="POST /items/batch size (default 64)")
    ap.add_argument("--index-ids", type=int, default=1_000_000, help="ids in step 4's index (default 1000000)")
    ap.add_argument("--index-removes", type=int, default=200, help="ids step 4 removes each way (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from shopgraph.retrieval.service import MAX_BATCH

    if args.items < 1 or not all(1 <= b <= MAX_BATCH for b in [*args.batches, args.http_batch]):
        ap.error(f"--items must be at least 1 and every batch size 1 to {MAX_BATCH:,}")
    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        ap.error(f"--run {run}: not a run folder (no manifest.json)")
    print(machine_line(), flush=True)
    sizes = sorted(set(args.batches))
    with tempfile.TemporaryDirectory(prefix="bench-batches-") as tmp:
        ignore = shutil.ignore_patterns("catalogue.jsonl", "catalogue_history", "added_images")

        def copies(names: list[str], tag: str) -> dict[str, Path]:
            out = {}
            for k, name in enumerate(names):
                out[name] = Path(tmp) / f"{tag}{k}"
                shutil.copytree(run, out[name], ignore=ignore)
            return out

        source = ShopService.from_run(run, catalogue=False, fraud_reasons=False)
        items = _items(source, args.items, np.random.default_rng(args.seed))
        del source
        n = len(items)
        names = [ONE, *(f"add_items, batches of {b}" for b in sizes)]
        seconds = _python(copies(names, "py"), items, sizes)
        print(f"\nPython API: {n} items per way ({sum(1 for i in items if i['image'])} with an image), chunks of "
              f"{max(sizes)} alternated\n")
        print(_table(seconds, n))
        same = seconds["largest difference"] < 1e-5
        print(f"\nsame items and embeddings as one by one, also after a restart: {same} "
              f"(largest difference {seconds['largest difference']:.1e})")
        if args.http:
            for path in Path(tmp).glob("py*"):
                shutil.rmtree(path)
            http_names = ["POST /items, one by one", f"POST /items/batch, {args.http_batch} a request"]
            http = _http(copies(http_names, "http"), items, args.http_batch)
            print(f"\nHTTP (loopback, one worker each): {n} items per way, alternated a batch at a time\n")
            print(_table(http, n))
            http_same = http["largest difference"] < 1e-5
            print(f"\nsame items and embeddings after a restart: {http_same} "
                  f"(largest difference {http['largest difference']:.1e})")
            same = same and http_same
        for path in Path(tmp).iterdir():
            shutil.rmtree(path)
        rng = np.random.default_rng(args.seed + 1)
        source = ShopService.from_run(run, catalogue=False, fraud_reasons=False)
        ids = [source.item_ids[int(i)] for i in rng.choice(source._n_trained, size=min(n, source._n_trained - 1),
                                                             replace=False)]
        del source
        removal_names = ["remove_item, one by one", f"remove_items, batches of {max(sizes)}"]
        removal, removal_same = _removals(copies(removal_names, "rm"), ids, max(sizes))
        print(f"\nPython API: {len(ids)} trained items removed per way, batches alternated\n")
        print(_table(removal, len(ids)))
        print(f"\nthe same catalogue served by both, also after a restart: {removal_same}")
        same = same and removal_same
    index_ms = _index_removals(args.index_ids, args.index_removes, np.random.default_rng(args.seed))
    rows = [[name, f"{ms:.3f}", f"{next(iter(index_ms.values())) / ms:.1f}"] for name, ms in index_ms.items()]
    print(f"\nItemIndex.remove of {args.index_removes:,} ids from a Flat index of {args.index_ids:,} 64-d vectors\n")
    print(markdown_table(["way", "ms an id", "vs one id a call"], rows))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
