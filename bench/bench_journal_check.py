"""What checking the catalogue journal's applied lines costs a service (thirtieth session).

A service keeps the sha256 of the journal bytes it has applied and, when the file's size, inode or
modification time changes (another process's change) and before every change it writes itself,
reads those bytes again to check that no line it applied was changed since (an in-place edit
would otherwise go unnoticed until a restart refused the journal). This times that look,
``CatalogueJournal.follow`` from a position with its digest, against the same look without the
check (``digest=None``: the lines after the position read, and the bytes applied hashed again
from the start, as when a service first reads a journal), and against reading only the new line
(``CatalogueJournal.read`` from the position: the work the look did before the check), side by
side in one process, for journals of 100 to ``--lines`` add lines of the demo run's size (an
added item's two content vectors and its embedding, base64).

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
            times: dict[str, list[float]] = {"checked": [], "unchecked": [], "new line only": []}
            for r in range(args.repeats):
                _, pos, _ = journal.follow(JournalPosition())
                with journal.locked():
                    journal.append(_entry(written, rng))  # another process's change
                    written += 1
                order = ["checked", "unchecked", "new line only"]
                for way in order[r % 3:] + order[:r % 3]:  # alternated
                    t = time.perf_counter()
                    if way == "checked":
                        got, _, _ = journal.follow(pos)
                    elif way == "unchecked":
                        got, _, _ = journal.follow(JournalPosition(pos.generation, pos.offset, pos.line, pos.ino,
                                                                   pos.mtime_ns, None))
                    else:
                        got = [("", e) for e in journal.read(pos.offset, pos.line)[0]]
                    times[way].append((time.perf_counter() - t) * 1e3)
                    assert len(got) == 1, (way, len(got))
            med = {way: statistics.median(v) for way, v in times.items()}
            rows.append([f"{written - 1:,}", f"{journal.size() / 2**20:,.1f}", f"{med['new line only']:.2f}",
                         f"{med['unchecked']:.2f}", f"{med['checked']:.2f}",
                         f"{med['checked'] / med['new line only']:.1f}×"])
            print(rows[-1], flush=True)
    print(markdown_table(["journal lines", "MB", "read the new line, ms (before)", "follow, digest from the start, ms",
                          "follow with the check, ms (now)", "now ÷ before"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
