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
these with the run's current model, so the items follow a retrained model.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shopgraph.graph.run import atomic_write

logger = logging.getLogger(__name__)

JOURNAL = "catalogue.jsonl"
IMAGES = "added_images"
VERSION = 1
_OPS = ("add", "remove")
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


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` when it is a well-formed journal object; a :class:`CatalogueError` naming ``where``
    and what is wrong otherwise."""
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: expected a JSON object (got {type(entry).__name__})")
    if entry.get("sha256") != _digest(entry):
        raise CatalogueError(f"{where}: its sha256 does not match its content (the line was changed or damaged)")
    if entry.get("v") != VERSION:
        raise CatalogueError(f"{where}: journal format {entry.get('v')!r}, this version reads {VERSION}")
    if entry.get("op") not in _OPS:
        raise CatalogueError(f"{where}: op must be one of {', '.join(_OPS)} (got {entry.get('op')!r})")
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

    def size(self) -> int:
        """Bytes in the journal now (0 before the first change)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

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
        """The complete entries after byte ``offset`` (which ends line ``line``).

        Returns:
            ``(entries, new_offset, new_line, incomplete)``: ``incomplete`` is the number of bytes
            of a last line without its newline (being written, or cut off by a crash), which is
            not returned and not passed.

        Raises:
            CatalogueError: a complete line that is not a well-formed entry, or a journal shorter
                than ``offset``.
        """
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                payload = f.read()
        except FileNotFoundError:
            size, payload = 0, b""
        if size < offset:
            raise CatalogueError(f"{self.path}: {size:,} bytes, shorter than the {offset:,} already applied (it was "
                                 f"replaced, cut or removed); restart the service to serve what it holds")
        end = payload.rfind(b"\n") + 1
        entries = []
        for raw in payload[:end].split(b"\n")[:-1]:
            line += 1
            where = f"{self.path}: line {line}"
            try:
                entry = json.loads(raw)
            except ValueError as exc:
                raise CatalogueError(f"{where}: not valid JSON ({exc})") from None
            entries.append(_check_entry(entry, where))
        return entries, offset + end, line, len(payload) - end

    def append(self, entry: dict[str, Any]) -> int:
        """Write ``entry`` (with its sha256, and the UTC time as ``at`` unless it has one) as the
        journal's last line and fsync it; call under :meth:`locked`. An incomplete last line left
        by a crash is cut off first (logged).

        Returns:
            The journal's size after the line.
        """
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry, "v": VERSION}
        line["sha256"] = _digest(line)
        data = (_canonical(line) + "\n").encode()
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
            dir_fd = os.open(self.run_path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return end

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

    def save_image(self, payload: bytes, ext: str) -> str:
        """Keep an added item's image as ``RUN/added_images/<sha256>.<ext>`` (written atomically;
        the same bytes are stored once) and return that path relative to the run folder."""
        rel = f"{IMAGES}/{hashlib.sha256(payload).hexdigest()}.{ext}"
        path = self.run_path / rel
        if not path.is_file() or path.stat().st_size != len(payload):
            atomic_write(path, lambda p: p.write_bytes(payload))
        return rel
