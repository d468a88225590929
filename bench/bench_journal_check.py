"""What checking the catalogue journal's applied lines costs a service (thirtieth session).

A service keeps the sha256 of the journal bytes it has applied and their last 4 KiB. When another
process changed the file (and before every change it writes itself) it looks: a file that grew
past those last bytes, as they were, was appended to, and only the new lines are read and hashed
on; a file replaced, changed without growing, or whose last bytes moved (a line edited in place)
is read again from its start and checked against the sha256 (an edit would otherwise go unnoticed
until a restart refused the journal). This times, side by side in one process, for journals of
100 to ``--lines`` add lines of the demo run's size (an added item's two content vectors,
base64): reading only the new line (``CatalogueJournal.read`` from the position: the look before
the check), the look after another process's append (``follow``, now), and the look at a file
changed without growing (the whole check).

Usage::

    python bench/bench_journal_check.py [--lines 10000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_line, markdown_table

from shopgraph.retrieval.catalogue import CatalogueJournal, JournalPosition, encode_vector


def _entry(k: int, rng: np.random.Generator) -> dict[str, object]:
    """An add line as a service writes one for the demo run (its content vectors, 384 + 1,280 wide)."""
    return {"op": "add", "item_id": f"bench-{k}", "title": f"bench item {k}", "category": "books",
            "description": "", "price": 9.99, "image": "", "text_model": "bundled", "image_model": "bundled",
            "text_vec": encode_vector(rng.normal(size=384).astype(np.float32)),
            "image_vec": encode_vector(rng.normal(size=1280).astype(np.float32))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=10_000, help="the largest journal, in lines (default 10000)")
    ap.add_argument("--repeats", type=int, default=20, help="timed looks per size and way (default 20)")
    args = ap.parse_args()
    if args.lines < 100 or args.repeats < 1:
        ap.error("--lines must be at least 100 and --repeats at least 1")
    rng = np.random.default_rng(0)
    print(machine_line(), flush=True)
    sizes = [n for n in (100, 1_000, 10_000, 100_000) if n <= args.lines]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        journal = CatalogueJournal(Path(tmp))
        written = 0
        for size in sizes:
            with journal.locked():
                while written < size:
                    journal.append(_entry(written, rng))
                    written += 1
            times: dict[str, list[float]] = {"now": [], "whole check": [], "before": []}
            for r in range(args.repeats):
                _, pos, _ = journal.follow(JournalPosition())
                with journal.locked():
                    journal.append(_entry(written, rng))  # another process's change
                    written += 1
                now = journal.follow(pos)[1]  # as far as the file goes, to look at it as changed in place
                touched = JournalPosition(now.generation, now.offset, now.line, now.ino, now.mtime_ns - 1,
                                          now.digest, now.tail)
                order = ["now", "whole check", "before"]
                for way in order[r % 3:] + order[:r % 3]:  # alternated
                    t = time.perf_counter()
                    if way == "now":
                        got = journal.follow(pos)[0]
                    elif way == "whole check":
                        got = journal.follow(touched)[0]
                    else:
                        got = [("", e) for e in journal.read(pos.offset, pos.line)[0]]
                    times[way].append((time.perf_counter() - t) * 1e3)
                    assert len(got) == (0 if way == "whole check" else 1), (way, len(got))
            med = {way: statistics.median(v) for way, v in times.items()}
            rows.append([f"{written:,}", f"{journal.size() / 2**20:,.1f}", f"{med['before']:.2f}",
                         f"{med['now']:.2f}", f"{med['now'] / med['before']:.2f}×", f"{med['whole check']:.2f}"])
            print(rows[-1], flush=True)
    print(markdown_table(["journal lines", "MB", "read the new line, ms (before)", "look after an append, ms (now)",
                          "now ÷ before", "look at a file changed without growing (whole check), ms"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
