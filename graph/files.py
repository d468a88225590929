"""File modes for what is written through a temp file or folder and then renamed into place.

Kept apart from :mod:`shopgraph.graph.run` (which imports torch) so that ``shopgraph generate``
stays light.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def umask() -> int:
    """The process's umask, read from ``/proc`` where there is one (setting it to learn it, the only
    portable way, would briefly change it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: Path, *, folder: bool = False) -> None:
    """Give a temp file or folder the mode an ordinary one gets under the umask (``mkstemp`` makes
    0600 files and ``mkdtemp`` 0700 folders, which the rename would keep: a server or a colleague
    running as another user could not read the run, the case files or the export)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def through_link(out: Path) -> Path:
    """Where an output folder given as ``out`` is written: a symbolic link's target (the link is
    kept and then points at the new folder), else ``out`` itself. Resolve before making the
    temporary folder beside it, so that the rename stays on the target's file system."""
    return out.resolve() if out.is_symlink() else out


def existing_ancestor(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists (``None`` when none does): where a check
    that an output can be written looks for a file in the way."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def listed_names(names: list[str], at_most: int = 5) -> str:
    """``'a', 'b' and 3 more``: the file names a refusal names."""
    more = f" and {len(names) - at_most} more" if len(names) > at_most else ""
    return ", ".join(repr(n) for n in names[:at_most]) + more
