"""The catalogue journal: items added and removed at run time, kept in the run folder.

:meth:`ShopService.add_item <shopgraph.retrieval.service.ShopService.add_item>` and ``remove_item``
change the served catalogue without retraining. Each change is appended to ``RUN/catalogue.jsonl``
(one JSON object a line, carrying its own sha256, fsynced) *before* it is applied in memory, so a
change that returned is on disk, and a crash part way leaves at most an incomplete last line that
is never applied (the call it belonged to never returned); the next append cuts it off, with a
warning. Every service over the run replays the journal when it starts and picks up what other
processes (uvicorn workers) appended since, so they all serve the same catalogue.

An ``add`` line keeps what the item needs to be embedded again: its text fields, its price, the
encoders' vectors (base64 float32, with the names of the encoders that made them, so a run rebuilt
with other encoders re-encodes instead of mixing vector spaces) and its image, copied to
``RUN/added_images/<sha256>.<ext>``. The model's embedding is not stored: it is recomputed from
these with the run's current model, so the items follow a retrained model. An ``add_batch`` line
(``ShopService.add_items``) holds several such adds under ``items``, a ``remove_batch`` line
(``ShopService.remove_items``) several removals under ``item_ids``: one line, so a batch is on
disk whole or not at all; readers see it as its adds or removals, one after the other.

*Compaction* (:meth:`CatalogueJournal.compact`, ``shopgraph catalogue --run RUN --compact``)
keeps only the lines that still change what is served: an item added and later removed, an add
of an id the run's tables hold now, a removal of an id they lack and a second add of one id all
go (but for the last item added and removed of a category no other line or trained item has: a
category stays known once added, and services started after the compaction must know it too).
The journal is replaced by a new *generation* whose first line says what it was made from, and
the one before is kept, byte for byte, as ``RUN/catalogue_history/catalogue.<generation>.jsonl``:
a running service that had not read all of it yet reads the rest there, then goes on in the new
one, so services never need a restart and nothing is lost.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shopgraph.graph.messages import shown
from shopgraph.graph.run import atomic_write

logger = logging.getLogger(__name__)

JOURNAL = "catalogue.jsonl"
IMAGES = "added_images"
HISTORY = "catalogue_history"
VERSION = 1
_OPS = ("add", "remove", "add_batch", "remove_batch")
_BATCHES = {"add_batch": ("add", "items"), "remove_batch": ("remove", "item_ids")}  # op -> (its entries' op, field)
_HEADER_OP = "compacted"
# a compaction's first line names the items added at run time and removed since whose lines it
# dropped (REMOVED_IDS); follow hands them to a service that starts reading as one change of this op,
# so that it knows those ids as removed ones (a visitor's list may still hold them), as services
# that read the dropped lines do
REMOVED_IDS = "removed_ids"
REMOVED_OP = "removed_since"
_HEADER_FIELDS = ("generation", "kept", "kept_bytes", "from_lines", "from_bytes")
_DROPPED = ("cancelled", "superseded", "not applied")  # why compaction drops a line (Compaction.dropped)
HISTORY_KEEP_S = 600.0  # prune_history keeps generations compacted away more recently than this
_ADD_FIELDS = {"title": str, "category": str, "description": str, "image": str, "text_model": str,
               "image_model": str, "at": str}


class CatalogueError(ValueError):
    """A line of ``RUN/catalogue.jsonl`` that cannot be read (named by file and line)."""


def encode_vector(vec: np.ndarray | None) -> str | None:
    """A float32 vector as base64 of its little-endian bytes (``None`` stays ``None``)."""
    if vec is None:
        return None
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").reshape(-1).tobytes()).decode("ascii")


def decode_vector(text: str | None) -> np.ndarray | None:
    """The inverse of :func:`encode_vector`."""
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f4").astype(np.float32)


def _canonical(entry: dict[str, Any]) -> str:
    """The one JSON form of an entry: what is written, and what its sha256 is taken over."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "sha256"}).encode()).hexdigest()


def _line(entry: dict[str, Any]) -> bytes:
    """One journal line: ``entry`` stamped with the UTC time as ``at`` (unless it has one), the
    format version and its sha256."""
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry, "v": VERSION}
    line["sha256"] = _digest(line)
    return (_canonical(line) + "\n").encode()


def _fsync_dir(path: Path) -> None:
    """Make a folder's new or renamed names survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _net(entries: list[dict[str, Any]], trained_ids: set[str], trained_categories: set[str] | frozenset[str] = frozenset(),
         forgotten_before: Sequence[str] = ()) -> tuple[list[int], dict[str, int], int, int, int, set[str]]:
    """Which of ``entries`` (in order) still change what a service over tables holding
    ``trained_ids`` (of ``trained_categories``) serves, replaying them as
    :class:`~shopgraph.retrieval.service.ShopService` does: ``(indices kept, lines dropped by
    reason, ids added, trained ids removed, trained ids restored, ids forgotten)`` (a trained id
    removed and added again is restored: neither added nor removed; ids forgotten: added at run
    time and removed since, not served at the end, whose lines all go, and those an earlier
    compaction forgot (``forgotten_before``) unless served again or trained now: a compaction's
    first line names them, :data:`REMOVED_IDS`). A category stays known to a service once
    an item of it was added (a filter on it is an empty list, not "unknown category"): of the adds
    removed again, the last one of each category that neither the trained items nor a kept add
    has is kept with its removal, so that services started later know the category too."""
    dropped = dict.fromkeys(_DROPPED, 0)
    cancelled: list[tuple[int, int]] = []  # (add, the removal that cancelled it)
    # id -> (served now, the add that made it served, the removal of its trained item)
    state: dict[str, tuple[bool, int | None, int | None]] = {}
    for n, entry in enumerate(entries):
        item_id = entry["item_id"]
        served, added, removed = state.get(item_id, (item_id in trained_ids, None, None))
        if entry["op"] == "add":
            if not served:
                served, added = True, n
            else:  # the trained item is served (a rebuilt run), or the id was added before
                dropped["superseded" if added is None else "not applied"] += 1
        elif not served:  # a removal of an id the tables lack (a rebuilt run)
            dropped["superseded"] += 1
        elif added is not None:  # an added item removed again: neither line is needed (but see categories below)
            cancelled.append((added, n))
            served, added = False, None
            dropped["cancelled"] += 2
        else:
            served, removed = False, n
        state[item_id] = (served, added, removed)
    keep = [n for _, added, removed in state.values() for n in (added, removed) if n is not None]
    known = set(trained_categories) | {str(entries[n].get("category", "")) for n in keep if entries[n]["op"] == "add"}
    only = {str(entries[a].get("category", "")): (a, r) for a, r in cancelled}  # the last pair of each category
    for category, pair in only.items():
        if category and category not in known:
            keep += pair
            dropped["cancelled"] -= 2
    keep.sort()
    kept = set(keep)
    dropped_ids = {str(entries[a]["item_id"]) for a, _ in cancelled if a not in kept}
    forgotten = (dropped_ids | set(forgotten_before)) - trained_ids
    forgotten -= {item_id for item_id, (served, _, _) in state.items() if served}
    # a trained item removed and added again is restored (ShopService._restore): neither added nor
    # removed, as the service counts it; both lines are kept (the add carries what was sent)
    return (keep, dropped, sum(added is not None and removed is None for _, added, removed in state.values()),
            sum(removed is not None and added is None for _, added, removed in state.values()),
            sum(removed is not None and added is not None for _, added, removed in state.values()), forgotten)


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` when it is a well-formed journal object; a :class:`CatalogueError` naming ``where``
    and what is wrong otherwise."""
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: expected a JSON object (got {type(entry).__name__})")
    if entry.get("sha256") != _digest(entry):
        raise CatalogueError(f"{where}: its sha256 does not match its content (the line was changed or damaged)")
    if entry.get("v") != VERSION:
        raise CatalogueError(f"{where}: journal format {entry.get('v')!r}, this version reads {VERSION}")
    if entry.get("op") == _HEADER_OP:
        for name in _HEADER_FIELDS:
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CatalogueError(f"{where}: {name} must be an integer >= 0 (got {value!r})")
        removed = entry.get(REMOVED_IDS, [])  # (absent in a journal compacted before they were kept)
        if not isinstance(removed, list) or not all(isinstance(i, str) and i for i in removed):
            raise CatalogueError(f"{where}: {REMOVED_IDS} must be a list of item ids (got {shown(removed)})")
        return entry
    if entry.get("op") not in _OPS:
        raise CatalogueError(f"{where}: op must be one of {', '.join(_OPS)} (got {entry.get('op')!r})")
    if entry["op"] in _BATCHES:
        return entry  # its entries are checked as they are read out (_batch_entries)
    if not isinstance(entry.get("item_id"), str) or not entry["item_id"]:
        raise CatalogueError(f"{where}: item_id must be a non-empty string (got {entry.get('item_id')!r})")
    if entry["op"] == "add":
        for name, kind in _ADD_FIELDS.items():
            if not isinstance(entry.get(name), kind):
                raise CatalogueError(f"{where}: {name} must be a string (got {entry.get(name)!r})")
        price = entry.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, int | float)):
            raise CatalogueError(f"{where}: price must be a number or null (got {price!r})")
        for name in ("text_vec", "image_vec"):
            try:
                decode_vector(entry.get(name))
            except (AttributeError, ValueError) as exc:
                raise CatalogueError(f"{where}: {name} is not base64 float32 ({exc})") from None
    return entry


def _batch_entries(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """The checked entries of a batch line (``add_batch``: ``items``, each an add's fields;
    ``remove_batch``: ``item_ids``), each as a whole ``add`` or ``remove`` line would hold it (its
    own ``v`` and ``sha256``, the line's ``at``), with where it is (``<where>, item <n>``)."""
    op, field = _BATCHES[entry["op"]]
    values = entry.get(field)
    if not isinstance(values, list) or not values:
        raise CatalogueError(f"{where}: {field} must be a non-empty list (got {values!r:.60})")
    if not isinstance(entry.get("at"), str):
        raise CatalogueError(f"{where}: at must be a string (got {entry.get('at')!r})")
    out, seen = [], set()
    for n, value in enumerate(values, 1):
        here = f"{where}, item {n}"
        if op == "remove":
            value = {"item_id": value}
        elif not isinstance(value, dict):
            raise CatalogueError(f"{here}: expected a JSON object (got {type(value).__name__})")
        elif {"op", "at", "v", "sha256"} & value.keys():
            raise CatalogueError(f"{here}: op, at, v and sha256 belong to the line, not to an item")
        one = {"op": op, "at": entry["at"], **value, "v": VERSION}
        one["sha256"] = _digest(one)
        _check_entry(one, here)
        if one["item_id"] in seen:
            raise CatalogueError(f"{here}: item_id {one['item_id']!r} is in the batch twice")
        seen.add(one["item_id"])
        out.append((here, one))
    return out


TAIL_BYTES = 4096  # the last bytes applied a service keeps, to see a line before them change length


@dataclass(frozen=True)
class JournalPosition:
    """How far a service has applied the journal: the file's generation, the bytes and lines of it
    applied, and its inode (``0``: no file read yet), by which a replaced journal is noticed; its
    modification time when last read or written (a line edited in place changes it, the size
    perhaps not), and the sha256 of the bytes applied (``digest``, a running ``hashlib`` object),
    by which a change to a line already applied is noticed (:meth:`CatalogueJournal.follow`, when
    the file was replaced or changed without growing)."""

    generation: int = 0
    offset: int = 0
    line: int = 0
    ino: int = 0
    mtime_ns: int = 0
    digest: Any = field(default=None, compare=False, repr=False)
    tail: bytes = field(default=b"", compare=False, repr=False)  # the last TAIL_BYTES applied, as they were

    def stamp(self) -> tuple[int, int, int]:
        """What :meth:`CatalogueJournal.stat` says of the journal when nothing changed it since."""
        return self.ino, self.offset, self.mtime_ns


@dataclass
class Compaction:
    """What :meth:`CatalogueJournal.compact` found in the journal, and what it kept.

    ``dropped`` counts lines by why they no longer change what is served: ``cancelled`` (an item
    added and later removed: both lines), ``superseded`` (an add of an id the run's tables hold, a
    removal of an id they lack) and ``not applied`` (a second add of an id already added).
    """

    generation: int
    lines: int
    bytes: int
    kept: int
    net_added: int
    net_removed: int
    dropped: dict[str, int] = field(default_factory=dict)
    incomplete: int = 0  # bytes of an unfinished last line (never applied), left out too
    archive: str | None = None  # where the journal read is kept, when a new generation was written
    net_restored: int = 0  # trained items removed and added again (served again, with what was sent)

    @property
    def changed(self) -> bool:
        """Whether compacting would write anything (lines to drop, or an unfinished line)."""
        return bool(sum(self.dropped.values()) or self.incomplete)


@dataclass
class Pruned:
    """What :meth:`CatalogueJournal.prune_history` deleted."""

    generations: list[int]
    bytes: int
    images: int = 0
    image_bytes: int = 0


class CatalogueJournal:
    """The append-only journal of one run folder (``RUN/catalogue.jsonl``).

    Args:
        run_path: the run folder.
    """

    def __init__(self, run_path: str | Path) -> None:
        # absolute: image paths handed out must not depend on the working directory (or be
        # joined to the shop's tables folder, as relative item image paths are)
        self.run_path = Path(run_path).absolute()
        self.path = self.run_path / JOURNAL
        self._lock_path = self.run_path / ".catalogue.lock"

    def stat(self) -> tuple[int, int, int]:
        """The journal's ``(inode, bytes, modification time in ns)`` now (``(0, 0, 0)`` before the
        first change): a service compares it with its :meth:`JournalPosition.stamp` to learn,
        without reading the file, whether anything wrote to it since."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0, 0, 0
        return st.st_ino, st.st_size, st.st_mtime_ns

    def size(self) -> int:
        """Bytes in the journal now (0 before the first change)."""
        return self.stat()[1]

    def history(self) -> dict[int, Path]:
        """The compacted generations kept in ``RUN/catalogue_history/``, by generation."""
        files = {}
        for path in (self.run_path / HISTORY).glob("catalogue.*.jsonl"):
            number = path.name.split(".")[1]
            if number.isdigit():
                files[int(number)] = path
        return files

    def archive_path(self, generation: int) -> Path:
        """Where generation ``generation`` of the journal is kept once it has been compacted."""
        return self.run_path / HISTORY / f"catalogue.{generation}.jsonl"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the journal's exclusive lock (across processes) for a read-check-append."""
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read(self, offset: int = 0, line: int = 0) -> tuple[list[dict[str, Any]], int, int, int]:
        """The complete changes in the journal after byte ``offset`` (which ends line ``line``); a
        compacted journal's first line, which says what it was made from, is checked and skipped.

        Returns:
            ``(entries, new_offset, new_line, incomplete)``: ``incomplete`` is the number of bytes
            of a last line without its newline (being written, or cut off by a crash), which is
            not returned and not passed.

        Raises:
            CatalogueError: a complete line that is not a well-formed entry, or a journal shorter
                than ``offset``.
        """
        f = self._open(offset)
        if f is None:
            return [], 0, 0, 0
        with f:
            found, end, line, incomplete = self._scan(f, offset, line, str(self.path))
        return [entry for _, entry, _ in found], end, line, incomplete

    def follow(self, pos: JournalPosition,
               verify: bool = False) -> tuple[list[tuple[str, dict[str, Any]]], JournalPosition, int]:
        """The changes after ``pos``, each with where it is (file and line), across compactions:
        when the journal was compacted since, the rest of each generation ``pos`` had not finished
        is read from ``RUN/catalogue_history/`` first, then the new journal after the lines that
        stand for the old one.

        ``verify``: read the bytes ``pos`` applied again and check them against its sha256 whatever
        the file looks like (otherwise only when it looks changed other than by an append).

        Returns:
            ``(changes, new_position, incomplete)`` (``incomplete`` as in :meth:`read`).

        Raises:
            CatalogueError: a damaged line, or a journal cut, replaced by an older generation, or
                compacted with the history ``pos`` needs gone.
        """
        f = self._open(pos.offset)
        if f is None:
            return [], pos, 0
        with f:
            st = os.fstat(f.fileno())
            generation, start, start_line = self._header(f, str(self.path))
            found: list[tuple[str, dict[str, Any], bytes]] = []
            applied = None  # a running sha256 of the bytes pos applied, once checked
            if pos.ino and generation == pos.generation and pos.digest is not None:
                # read again when asked (before a write, a fault's second look, now and then), and for a
                # file replaced, changed without growing (a line edited in place) or whose last bytes
                # applied moved (a line edited to another length, then grown); one that grew past them as
                # they were was appended to, and costs a look no more than its new lines
                replaced = st.st_ino != pos.ino or (st.st_size <= pos.offset and st.st_mtime_ns != pos.mtime_ns)
                # (the last bytes applied, where they were: a line before them edited to another length moves them)
                check = verify or replaced or self._tail_of(f, pos.offset) != pos.tail
                applied = self._check_applied(f, pos) if check else pos.digest
            if pos.ino == 0:  # nothing read yet: the journal as it stands now says it all
                pos = JournalPosition(generation)
                header = self._header_entry(f, str(self.path))[0]
                if header and header.get(REMOVED_IDS):  # what the compactions forgot, as one change first
                    found.append((f"{self.path}: line 1", {"op": REMOVED_OP, "item_ids": list(header[REMOVED_IDS])},
                                  b""))
            elif generation < pos.generation:
                raise CatalogueError(f"{self.path}: generation {generation}, older than generation "
                                     f"{pos.generation} already applied (replaced by an older copy?); restart the "
                                     "service to serve what it holds")
            elif generation > pos.generation:
                offset, line = pos.offset, pos.line
                for g in range(pos.generation, generation):
                    path = self.archive_path(g)
                    try:
                        old = open(path, "rb")
                    except FileNotFoundError:
                        raise CatalogueError(f"{path}: missing; the journal was compacted to generation "
                                             f"{generation} before this service had read all of generation {g}; "
                                             "restart the service to serve what it holds") from None
                    with old:
                        if g > pos.generation:
                            _, offset, line = self._header(old, str(path))
                        found += self._scan(old, offset, line, str(path))[0]
                pos = JournalPosition(generation, start, start_line)
            got, end, line, incomplete = self._scan(f, pos.offset, pos.line, str(self.path))
            digest = self._digest_of(f, end, applied, pos.offset)
            tail = self._tail_of(f, end)
        return ([(where, entry) for where, entry, _ in found + got],
                JournalPosition(generation, end, line, st.st_ino, st.st_mtime_ns, digest, tail), incomplete)

    def tail(self, end: int) -> bytes:
        """The journal's last :data:`TAIL_BYTES` before byte ``end`` (a position's ``tail``)."""
        with open(self.path, "rb") as f:
            return self._tail_of(f, end)

    @staticmethod
    def _tail_of(f: BinaryIO, end: int) -> bytes:
        start = max(0, end - TAIL_BYTES)
        f.seek(start)
        return f.read(end - start)

    @staticmethod
    def _digest_of(f: BinaryIO, size: int, start: Any = None, offset: int = 0) -> Any:
        """A running sha256 of the first ``size`` bytes of the open file ``f``; ``start``: that of its
        first ``offset`` bytes, carried on (else the file is read from its start)."""
        digest, offset = (start.copy(), offset) if start is not None else (hashlib.sha256(), 0)
        f.seek(offset)
        left = size - offset
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        return digest

    def _check_applied(self, f: BinaryIO, pos: JournalPosition) -> Any:
        """The running sha256 of the bytes ``pos`` applied, as the file has them now; ``None`` for a
        file cut shorter (which :meth:`_scan` names). ``CatalogueError`` when they are not those
        applied: a line edited in place, or the journal replaced by another file of the same
        generation (what a service serves was read from the lines as they were, and a restart would
        read them as they are)."""
        if os.fstat(f.fileno()).st_size < pos.offset:
            return None
        now = self._digest_of(f, pos.offset)
        if now.digest() == pos.digest.digest():
            return now
        raise CatalogueError(f"{self.path}: lines 1 to {pos.line:,}, which this service has applied, were changed "
                             "since (edited in place, or the file replaced); nothing is written on top of them. "
                             "Put the journal back as it was, or check it (`shopgraph catalogue --run RUN` "
                             "names a damaged line) and restart the service to serve what it holds")

    def _open(self, applied: int) -> BinaryIO | None:
        """The journal open for reading; ``None`` before the first change. A journal removed after
        ``applied`` of its bytes were applied is a :class:`CatalogueError`."""
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            if applied:
                raise CatalogueError(f"{self.path}: removed, after {applied:,} bytes of it were applied; restart "
                                     "the service to serve what it holds") from None
            return None

    @staticmethod
    def _header(f: BinaryIO, where: str) -> tuple[int, int, int]:
        """``(generation, offset, line)`` of the open journal file ``f``: offset and line end the
        lines that stand for the generation before it (0 for a journal never compacted)."""
        entry, size = CatalogueJournal._header_entry(f, where)
        if entry is None:
            return 0, 0, 0
        return entry["generation"], size + entry["kept_bytes"], 1 + entry["kept"]

    @staticmethod
    def _header_entry(f: BinaryIO, where: str) -> tuple[dict[str, Any] | None, int]:
        """The checked first line of the open journal file ``f`` when a compaction wrote it
        (``None`` otherwise), and its length in bytes."""
        f.seek(0)
        first = f.readline()
        try:
            entry = json.loads(first) if first.endswith(b"\n") else None
        except ValueError:
            entry = None  # a damaged first line: reading the changes names it
        if not isinstance(entry, dict) or entry.get("op") != _HEADER_OP:
            return None, 0
        return _check_entry(entry, f"{where}: line 1"), len(first)

    @staticmethod
    def _scan(f: BinaryIO, offset: int, line: int,
              where: str) -> tuple[list[tuple[str, dict[str, Any], bytes]], int, int, int]:
        """The complete changes of the open journal file ``f`` after ``offset`` (which ends line
        ``line``), each with where it is and its bytes; then as :meth:`read`."""
        size = os.fstat(f.fileno()).st_size
        if size < offset:
            raise CatalogueError(f"{where}: {size:,} bytes, shorter than the {offset:,} already applied (it was "
                                 f"replaced, cut or removed); restart the service to serve what it holds")
        f.seek(offset)
        payload = f.read()
        end = payload.rfind(b"\n") + 1
        found = []
        for raw in payload[:end].split(b"\n")[:-1]:
            line += 1
            if not raw.strip():  # a blank line (one added by hand) holds no change: skipped, still counted
                continue
            here = f"{where}: line {line}"
            try:
                entry = json.loads(raw)
            except ValueError as exc:
                raise CatalogueError(f"{here}: not valid JSON ({exc})") from None
            _check_entry(entry, here)
            if entry["op"] == _HEADER_OP:
                if line != 1:
                    raise CatalogueError(f"{here}: a compaction's first line, not first")
                continue
            if entry["op"] in _BATCHES:  # its entries, each as its own line (a compaction writes them so)
                found += [(at, one, (_canonical(one) + "\n").encode()) for at, one in _batch_entries(entry, here)]
                continue
            found.append((here, entry, raw + b"\n"))
        return found, offset + end, line, len(payload) - end

    def append(self, entry: dict[str, Any], digest: Any = None) -> int:
        """Write ``entry`` (with its sha256, and the UTC time as ``at`` unless it has one) as the
        journal's last line and fsync it; call under :meth:`locked`. An incomplete last line left
        by a crash is cut off first (logged). ``digest``: a running sha256 of the journal's bytes
        before the line (:attr:`JournalPosition.digest`), updated with the line.

        Returns:
            The journal's size after the line.
        """
        data = _line(entry)
        if digest is not None:
            digest.update(data)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            keep = self._complete_prefix(fd, size)
            if keep < size:
                logger.warning("%s: cut off an incomplete last line (%d bytes) left by a change that was "
                               "interrupted before it returned", self.path, size - keep)
                os.ftruncate(fd, keep)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            end = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if created:  # the new name must survive a crash too
            _fsync_dir(self.run_path)
        return end

    def compact(self, trained_ids: set[str], *, dry_run: bool = False,
                trained_categories: set[str] | frozenset[str] = frozenset()) -> Compaction:
        """Keep only the changes that still change what is served over a run whose tables hold
        ``trained_ids`` of ``trained_categories`` (see :class:`Compaction` for what goes; without
        the categories, one added item removed again is kept for each category added at all).

        The journal read is kept as ``RUN/catalogue_history/catalogue.<generation>.jsonl`` (a hard
        link: the same bytes) and replaced, atomically, by the next generation: a first line that
        says what it was made from, then the kept lines unchanged. Services over the run follow
        it without a restart (:meth:`follow`). Nothing is written when nothing would be dropped
        or with ``dry_run``.

        Raises:
            CatalogueError: a damaged line (nothing is written), or a history file of this
                generation that is another file.
        """
        with self.locked():
            try:
                f = open(self.path, "rb")
            except FileNotFoundError:
                return Compaction(0, 0, 0, 0, 0, 0, dict.fromkeys(_DROPPED, 0))
            with f:
                size = os.fstat(f.fileno()).st_size
                generation = self._header(f, str(self.path))[0]
                before = self._header_entry(f, str(self.path))[0]
                found, _, _, incomplete = self._scan(f, 0, 0, str(self.path))
            keep, dropped, net_added, net_removed, net_restored, forgotten = _net(
                [entry for _, entry, _ in found], trained_ids, trained_categories,
                before.get(REMOVED_IDS, []) if before else [])
            report = Compaction(generation, len(found), size, len(keep), net_added, net_removed, dropped, incomplete,
                                net_restored=net_restored)
            if dry_run or not report.changed:
                return report
            archive = self.archive_path(generation)
            archive.parent.mkdir(exist_ok=True)
            if not archive.exists():
                os.link(self.path, archive)
                _fsync_dir(archive.parent)
            elif not os.path.samefile(archive, self.path):  # a compaction interrupted before its swap left the link
                raise CatalogueError(f"{archive}: already there and not the journal being compacted; nothing was "
                                     "changed (move it away to compact)")
            body = b"".join(found[i][2] for i in keep)
            header = _line({"op": _HEADER_OP, "generation": generation + 1, "kept": len(keep), "kept_bytes": len(body),
                            "from_lines": len(found), "from_bytes": size, "dropped": dropped,
                            REMOVED_IDS: sorted(forgotten)})
            atomic_write(self.path, lambda p: p.write_bytes(header + body))
            _fsync_dir(self.run_path)
            report.archive = str(archive)
            logger.info("compacted %s: generation %d, %d of %d changes kept (dropped: %s); generation %d kept as %s",
                        self.path, generation + 1, len(keep), len(found),
                        ", ".join(f"{n} {why}" for why, n in dropped.items()), generation, archive)
            return report

    @staticmethod
    def _complete_prefix(fd: int, size: int) -> int:
        """The length of the file's complete lines (up to and including its last newline)."""
        pos = size
        while pos > 0:
            start = max(0, pos - (1 << 16))
            chunk = os.pread(fd, pos - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
        return 0

    def prune_history(self, older_than_s: float = HISTORY_KEEP_S) -> Pruned:
        """Delete the compacted generations in ``RUN/catalogue_history/`` that were compacted away
        at least ``older_than_s`` seconds ago, and the images in ``RUN/added_images/`` that no
        line left names (items added and removed again, or replaced).

        A running service reads a generation it had not finished from the history (:meth:`follow`),
        and every service looks at the journal every ``catalogue_sync_s`` (1 s by default), so a
        generation compacted away minutes ago is needed only by a service that was stopped
        (``SIGSTOP``) or hung meanwhile; that one reports the missing file in ``/healthz`` and
        serves what it has until restarted.

        Raises:
            CatalogueError: a damaged line in the journal or a generation kept (nothing is deleted).
        """
        if older_than_s < 0:
            raise ValueError(f"older_than_s: expected >= 0 seconds (got {older_than_s!r})")
        with self.locked():
            files = self.history()
            current = self._generation_of(self.path)
            now = time.time()
            pruned: list[int] = []
            for g in sorted(files):
                if g >= current[0]:
                    break
                # compacted away when generation g + 1 was written (the journal's time, if that
                # one is gone too: later, so never too early)
                at = self._generation_of(files[g + 1])[1] if g + 1 in files and g + 1 < current[0] else current[1]
                if at is None or now - at < older_than_s:
                    break  # generations are compacted away in order: the later ones are younger
                pruned.append(g)
            named = set()
            for path in [self.path, *(files[g] for g in files if g not in pruned)]:
                with open(path, "rb") as f:
                    named |= {entry["image"] for _, entry, _ in self._scan(f, 0, 0, str(path))[0]
                              if entry["op"] == "add" and entry["image"]}
            report = Pruned(pruned, sum(files[g].stat().st_size for g in pruned))
            for g in pruned:
                files[g].unlink()
            images = self.run_path / IMAGES
            for image in sorted(images.iterdir()) if images.is_dir() else []:
                if image.is_file() and not image.name.startswith(".") and f"{IMAGES}/{image.name}" not in named:
                    report.images += 1
                    report.image_bytes += image.stat().st_size
                    image.unlink()
            if pruned or report.images:
                logger.info("%s: deleted generations %s of the journal (%d bytes) and %d images no line names "
                            "(%d bytes)", self.run_path, pruned, report.bytes, report.images, report.image_bytes)
            return report

    def _generation_of(self, path: Path) -> tuple[int, float | None]:
        """The generation of a journal file and when it was written by a compaction (Unix time;
        ``None`` for generation 0, which no compaction wrote)."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return 0, None
        with f:
            entry = self._header_entry(f, str(path))[0]
        if entry is None:
            return 0, None
        return entry["generation"], float(calendar.timegm(time.strptime(entry["at"], "%Y-%m-%dT%H:%M:%SZ")))

    def save_image(self, payload: bytes, ext: str) -> str:
        """Keep an added item's image as ``RUN/added_images/<sha256>.<ext>`` (written atomically;
        the same bytes are stored once) and return that path relative to the run folder."""
        rel = f"{IMAGES}/{hashlib.sha256(payload).hexdigest()}.{ext}"
        path = self.run_path / rel
        if not path.is_file() or path.stat().st_size != len(payload):
            atomic_write(path, lambda p: p.write_bytes(payload))
        return rel


def cli_catalogue(args: Any) -> int:
    """``shopgraph catalogue --run RUN [--compact] [--prune-history] [--json]``: what the run's
    journal holds; with ``--compact`` keep only what still changes the served catalogue; with
    ``--prune-history`` delete the generations compacted away at least 10 minutes ago and the
    images no line names."""
    from dataclasses import asdict

    from shopgraph.graph.run import RunDir

    run = RunDir(args.run)
    journal = CatalogueJournal(run.path)
    exists = journal.path.is_file()
    report = None
    if exists:
        from shopgraph.graph.pipeline import load_run_tables

        trained = set(run.load_graph()["item"].ids)
        items = load_run_tables(run).items
        categories = {str(c) for i, c in zip(items["item_id"], items.get("category", [""] * len(items)))
                      if i in trained and isinstance(c, str)}
        report = journal.compact(trained, dry_run=not args.compact, trained_categories=categories)
    pruned = journal.prune_history() if exists and args.prune_history else None
    if args.json:
        print(json.dumps({"journal": str(journal.path) if exists else None,
                          **(asdict(report) | {"changed": report.changed} if report else {}),
                          **({"pruned": asdict(pruned)} if pruned else {})}))
        return 0
    if report is None:
        print(f"{run.path}: no catalogue journal (no item was added or removed at run time)")
        return 0
    def n(count: int, noun: str) -> str:
        return f"{count:,} {noun}" + ("" if count == 1 else "s")

    why = {"cancelled": "items added, then removed", "superseded": "the run's tables hold the added ids "
           "and lack the removed ones", "not applied": "ids added a second time"}
    print(f"{journal.path}: generation {report.generation}, {n(report.lines, 'change')}, {n(report.bytes, 'byte')}")
    restored = f", {n(report.net_restored, 'trained item')} restored" if report.net_restored else ""
    print(f"  served: {n(report.net_added, 'item')} added, {n(report.net_removed, 'trained item')} removed{restored} "
          f"({n(report.kept, 'change')})")
    gone = [f"{count:,} {reason} ({why[reason]})" for reason, count in report.dropped.items() if count]
    if report.incomplete:
        gone.append(f"an unfinished last line of {n(report.incomplete, 'byte')} (never applied)")
    print(f"  no longer needed: {'; '.join(gone) if gone else 'nothing'}")
    if report.archive:
        print(f"compacted: generation {report.generation + 1} keeps {n(report.kept, 'change')}; generation "
              f"{report.generation} is kept as {report.archive} (running services follow without a restart)")
    elif report.changed:
        print(f"run `shopgraph catalogue --run {args.run} --compact` to keep only the {n(report.kept, 'change')} "
              "still needed")
    if pruned is not None:
        print(f"history: deleted {n(len(pruned.generations), 'generation')} ({n(pruned.bytes, 'byte')}) and "
              f"{n(pruned.images, 'image')} no line names ({n(pruned.image_bytes, 'byte')}); kept "
              f"{n(len(journal.history()), 'generation')} compacted away less than {HISTORY_KEEP_S / 60:g} minutes ago")
    return 0
