"""``shopgraph demo``: the whole path on the embedded synthetic shop, then the app.

Every stage is skipped when its output already exists in the work folder (and the run folder's
checksums hold), so a second ``make demo`` is ready in seconds.
"""

from __future__ import annotations

import argparse
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from shopgraph.graph.run import RunDir

logger = logging.getLogger(__name__)


def _step(name: str, done: bool, action: Callable[[], object]) -> None:
    if done:
        print(f"[demo] {name}: already done, reusing it")
        return
    print(f"[demo] {name} ...", flush=True)
    t0 = time.perf_counter()
    action()
    print(f"[demo] {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)


def _run_ok(run_path: Path) -> bool:
    """A complete run folder whose files all match their checksums."""
    try:
        run = RunDir(run_path)
        run.verify()
        return run.has("graph.pt")
    except (FileNotFoundError, ValueError):
        return False


def prepare(workdir: Path, *, users: int = 5000, seed: int = 0) -> Path:
    """Generate, build, train, evaluate, index and find rings; return the run folder."""
    from shopgraph.graph.evaluate import evaluate_run
    from shopgraph.graph.pipeline import build_run
    from shopgraph.graph.rings import export_current, rings_run
    from shopgraph.graph.synthetic import generate_shop
    from shopgraph.graph.train import train_run
    from shopgraph.retrieval.index import index_run

    workdir = Path(workdir)
    shop = workdir / f"shop_{users}_{seed}"
    run_path = workdir / f"run_{users}_{seed}"
    _step(f"generate the synthetic shop ({users:,} users) into {shop}", (shop / "events.csv").is_file(),
          lambda: generate_shop(shop, n_users=users, seed=seed))
    built = _run_ok(run_path)
    _step(f"build the graph and encode features into {run_path}", built,
          lambda: build_run(shop, run_path, seed=seed, overwrite=True))
    run = RunDir(run_path)
    _step("train the GNN", built and run.fresh("embeddings.safetensors") and run.fresh("fraud.json"),
          lambda: train_run(run_path))
    # a stage's output is reused only while what it was computed from is unchanged (RunDir.fresh)
    _step("evaluate against the baselines", built and run.fresh("metrics.json"), lambda: evaluate_run(run_path))
    _step("build the FAISS indexes", built and run.fresh("index/gnn_items.json"), lambda: index_run(run_path))
    # ... and the case export only while its case files are of the current version (export_current)
    _step("find fraud rings and export their case files",
          built and run.fresh("rings/rings.json") and export_current(run_path / "cases"),
          lambda: rings_run(run_path, export=run_path / "cases", overwrite=True))
    return run_path


def cli_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.no_serve:
        run_path = prepare(args.workdir, users=args.users)
        print(f"[demo] ready in {time.perf_counter() - t0:.1f}s (run folder {run_path})")
        return 0
    from shopgraph.retrieval.api import listen

    # the port first: one in use is an error now, not after minutes of preparing
    sock = listen(args.host, args.port)
    try:
        run_path = prepare(args.workdir, users=args.users)
        print(f"[demo] ready in {time.perf_counter() - t0:.1f}s (run folder {run_path})")
        _serve_demo(run_path, args.host, sock)
    finally:
        sock.close()
    return 0


def _serve_demo(run_path: Path, host: str, sock: socket.socket) -> None:
    import uvicorn
    from fastapi.responses import RedirectResponse

    from shopgraph.retrieval.api import create_app
    from shopgraph.retrieval.service import ShopService

    print("[demo] loading the service and the app ...", flush=True)
    service = ShopService.from_run(run_path)
    app = create_app(service)
    service.warm_up()  # the first visitor's search and fraud score do not wait for the encoders
    app.add_api_route("/", lambda: RedirectResponse("/demo/"), include_in_schema=False)
    port = sock.getsockname()[1]
    # the socket is bound already: this address is ours
    print(f"[demo] open http://{host}:{port}/demo/  (HTTP API docs: http://{host}:{port}/docs)", flush=True)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
