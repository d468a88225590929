"""Loading a shop's tables: this checkout's ``graph/load.py`` against the one of an earlier commit.

Usage::

    shopgraph generate --out /tmp/shop100k --users 100000
    python bench/bench_load.py --shop /tmp/shop100k --base c6cc775 [--rounds 5]

The earlier loader is read from git (``git show BASE:graph/load.py``) into a module of its own; both
run :func:`load_tables` on the same folder, alternated ``--rounds`` times in this one process (the
first call of each warms the file cache and is not timed). Prints each time, the medians and their
ratio (this checkout / base).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import machine_line

from shopgraph.graph import load as current

ROOT = Path(__file__).resolve().parents[1]


def base_loader(rev: str) -> object:
    """``graph/load.py`` as it was at ``rev``, imported as the module ``base_load``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:graph/load.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-load-")) / "base_load.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_load"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shop", type=Path, required=True, help="a tables folder (e.g. from shopgraph generate)")
    ap.add_argument("--base", required=True, help="the commit whose loader is the baseline")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(machine_line())
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")  # the loaders warn about each repair; the times are what counts here
    loaders = {"base": base_loader(args.base), "this": current}
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for module in loaders.values():
        module.load_tables(args.shop)  # type: ignore[attr-defined]
    for _ in range(args.rounds):
        for name, module in loaders.items():
            t0 = time.perf_counter()
            module.load_tables(args.shop)  # type: ignore[attr-defined]
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:5s} {' '.join(f'{t:.2f}' for t in ts)} s; median {statistics.median(ts):.2f} s")
    print(f"ratio this / base ({args.base}): {statistics.median(times['this']) / statistics.median(times['base']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
