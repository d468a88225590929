"""Benchmark the synthetic shop generator: wall time and peak memory per size.

Each size runs in a fresh Python subprocess (so imports and peak RSS are its own); the peak RSS
comes from ``os.wait4`` on that child. Prints a markdown table.

    .venv/bin/python bench/bench_generate.py                 # 5,000 and 100,000 users
    .venv/bin/python bench/bench_generate.py --users 300 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys
from pathlib import Path
from shopgraph.graph.synthetic import generate_shop
s = generate_shop(Path(sys.argv[1]), n_users=int(sys.argv[2]), seed=int(sys.argv[3]))
print(json.dumps(s._asdict()))
"""


def _du_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def run_one(n_users: int, seed: int, workdir: Path) -> dict[str, float]:
    """Generate ``n_users`` in a fresh subprocess; return its summary, wall time and peak RSS."""
    out = workdir / f"shop_{n_users}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(n_users), str(seed)],
                            stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stdout = proc.stdout.read() if proc.stdout is not None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"generator failed for {n_users} users (exit {proc.returncode})")
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    summary["wall"] = wall
    summary["rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    summary["disk_mb"] = _du_mb(out)
    shutil.rmtree(out, ignore_errors=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[5000, 100_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_generate_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.users:
        r = run_one(n, args.seed, workdir)
        rows.append(r)
        print(f"done {n:,} users in {r['wall']:.1f} s", file=sys.stderr)
    print(f"cpu count {os.cpu_count()}, seed {args.seed}\n")
    print("| users | items | devices | events | fraud users | rings | seconds (generate) | seconds (process) "
          "| peak RSS MB | disk MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['users']:,} | {r['items']:,} | {r['devices']:,} | {r['events']:,} | {r['fraud_users']:,} "
              f"| {r['rings']:,} | {r['seconds']:.1f} | {r['wall']:.1f} | {r['rss_mb']:.0f} | {r['disk_mb']:.0f} |")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
