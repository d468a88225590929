"""The run folder: every artifact a server needs, written atomically and checksummed.

Every file goes through :meth:`RunDir.write_with` (temp file in the same folder, fsync, rename)
and is recorded with its sha256 in ``manifest.json``. Readers call :meth:`RunDir.path_of`, which
checks the recorded checksum before handing out the path, so a torn or tampered file is an error
naming the file, never a silent wrong answer.

A file computed from others (the FAISS indexes from ``embeddings.safetensors``, ``metrics.json``
from the model, ...) is written with ``made_from`` (:meth:`RunDir.sources`, read before its inputs
are): the manifest keeps the inputs' checksums and the command that writes it, and once one of
those inputs has been rewritten (``shopgraph train`` again) reading the file is a
:class:`StaleFileError` naming the command to rerun, never an answer from a model that is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import HeteroData

from shopgraph.graph.files import as_created

MANIFEST = "manifest.json"
GRAPH_FILE = "graph.pt"
_PACKAGES = ("shopgraph", "torch", "torch-geometric", "transformers", "faiss-cpu", "faiss-gpu", "numpy",
             "pandas", "gradio")


# The command that writes each file (or folder of files) of a run, named when one is missing.
_WRITTEN_BY: tuple[tuple[str, str], ...] = (
    ("model/", "shopgraph train"), ("embeddings.safetensors", "shopgraph train"), ("fraud.json", "shopgraph train"),
    ("fraud_trees.ubj", "shopgraph train"), ("fraud_held_out/", "shopgraph train"), ("index/", "shopgraph index"),
    ("metrics.json", "shopgraph evaluate"), ("report.md", "shopgraph evaluate"), ("plots/", "shopgraph evaluate"),
    ("rings/", "shopgraph rings"),
)


def _writer(rel: str) -> str | None:
    """The command that writes the run file ``rel`` (:data:`_WRITTEN_BY`), or None."""
    return next((cmd for prefix, cmd in _WRITTEN_BY
                 if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix))), None)


def _not_recorded(path: Path, rel: str) -> FileNotFoundError:
    """A run folder lacks ``rel``: the error names the command that writes it, where one does."""
    cmd = _writer(rel)
    hint = f" (run `{cmd} --run {path}` first)" if cmd else ""
    return FileNotFoundError(f"run folder {path}: no {rel!r} recorded in {MANIFEST}{hint}")


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``. An existing ``out`` is moved aside, not deleted,
    until the new one is in place, so a failure part way never leaves neither. ``out`` must not be
    a symbolic link (:func:`through_link` first): renaming the link would replace the link, not
    the folder, and leave the old folder where it was."""
    if out.is_symlink():
        raise ValueError(f"out: {out} is a symbolic link; replace its target {out.resolve()} instead")
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class StaleFileError(ValueError):
    """A recorded file was computed from an input that has been rewritten or removed since."""


class ChecksumError(ValueError):
    """A recorded file no longer matches the checksum recorded when it was written (torn, damaged
    or changed by hand)."""


def _rewrite_hint(path: Path, rel: str) -> str:
    """``; rerun `CMD --run PATH``` naming the command that writes ``rel``, where one does."""
    cmd = _writer(rel)
    return f"; rerun `{cmd} --run {path}`" if cmd else ""


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with the shape of a parsed ``manifest.json``, or None."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object (got {type(manifest).__name__})"
    for key in ("files", "config"):
        if key not in manifest:
            return f"no {key!r} entry"
        if not isinstance(manifest[key], dict):
            return f"{key!r} is not a JSON object (got {type(manifest[key]).__name__})"
    bad = next((rel for rel, digest in manifest["files"].items() if not isinstance(digest, str)), None)
    if bad is not None:
        return f"'files' records no checksum for {bad!r} (got {repr(manifest['files'][bad])[:60]})"
    lineage = manifest.get("made_from", {})
    if not isinstance(lineage, dict):
        return f"'made_from' is not a JSON object (got {type(lineage).__name__})"
    for rel, entry in lineage.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("stage"), str)
                and isinstance(entry.get("inputs"), dict)):
            return f"'made_from' of {rel!r} is not an object with a 'stage' and 'inputs'"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def atomic_write(path: Path, writer: Callable[[Path], object]) -> None:
    """Call ``writer(tmp)`` on a temp path beside ``path``, fsync it, then rename into place (with the
    mode an ordinary new file gets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        as_created(tmp)
        writer(tmp)
        # again: a writer may replace the temp file by a new one (safetensors' save_file does),
        # which has its own mode (0600)
        as_created(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunDir:
    """A run folder and its manifest.

    Args:
        path: the folder. It must exist (and hold a manifest) unless ``create=True``.
        create: start a new run folder here; fails on a non-empty folder unless ``overwrite``.
        overwrite: with ``create``, remove whatever the folder holds first.
    """

    def __init__(self, path: str | Path, *, create: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        if create:
            if self.path.exists() and any(self.path.iterdir()):
                if not overwrite:
                    raise FileExistsError(
                        f"run folder {self.path} exists and is not empty; pass --overwrite to replace it"
                    )
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_manifest({
                "shopgraph_version": package_versions().get("shopgraph", "unknown"),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": package_versions(),
                "config": {},
                "data_fingerprint": None,
                "files": {},
            })
        elif not (self.path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"run folder {self.path}: no {MANIFEST} (run `shopgraph build --data DIR --out {self.path}` first)"
            )

    # -- manifest -------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json``; a damaged one (not JSON, or not the shape this class
        writes) is a ``ValueError`` naming the file and what is wrong with it."""
        try:
            with open(self.path / MANIFEST, encoding="utf-8") as f:
                result: dict[str, Any] = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(f"not valid JSON ({exc})") from None
        problem = _manifest_problem(result)
        if problem is not None:
            raise self._damaged(problem)
        return result

    def _damaged(self, problem: str) -> ValueError:
        return ValueError(f"run folder {self.path}: {MANIFEST} is damaged: {problem}; it cannot be repaired, "
                          f"rebuild the run (`shopgraph build --data DIR --out {self.path} --overwrite`)")

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(self.path / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the manifest under an exclusive lock (stages may run concurrently)."""
        with open(self.path / ".manifest.lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                manifest = self.manifest
                yield manifest
                self._write_manifest(manifest)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(self, **fields: Any) -> None:
        """Merge top-level fields (``config`` is merged key by key) into the manifest."""
        with self._locked() as manifest:
            for key, value in fields.items():
                if key == "config" and isinstance(value, Mapping):
                    manifest.setdefault("config", {}).update(value)
                else:
                    manifest[key] = value

    def sources(self, *rels: str, optional: tuple[str, ...] = ()) -> dict[str, str | None]:
        """``{rel: recorded checksum}`` of the files a stage is about to read: pass it as
        ``made_from`` when writing what it computes from them (taken *before* reading, so that a
        file rewritten meanwhile leaves the output stale, not wrongly fresh). ``optional`` files
        the stage uses when they are there map to None when they are not: the output is then stale
        once one is written."""
        files = self.manifest["files"]
        for rel in rels:
            if rel not in files:
                raise _not_recorded(self.path, rel)
        return {rel: files.get(rel) for rel in (*rels, *optional)}

    # -- writing --------------------------------------------------------------------------------
    def write_with(self, rel: str, writer: Callable[[Path], object], *,
                   made_from: Mapping[str, str | None] | None = None, stage: str = "") -> Path:
        """Write ``rel`` atomically through ``writer(tmp_path)`` and record its checksum.

        ``made_from``: :meth:`sources` of the files it was computed from, and ``stage`` the command
        that writes it (``"shopgraph index"``): :meth:`path_of` refuses it once one of them changes.
        """
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"rel: expected a path inside the run folder (got {rel!r})")
        if made_from and not stage:
            raise ValueError(f"stage: the command that writes {rel!r} (needed with made_from)")
        target = self.path / rel
        atomic_write(target, writer)
        digest = sha256_file(target)
        with self._locked() as manifest:
            manifest["files"][rel] = digest
            lineage = manifest.setdefault("made_from", {})
            if made_from:
                lineage[rel] = {"stage": stage, "inputs": dict(made_from)}
            else:
                lineage.pop(rel, None)
        return target

    def write_bytes(self, rel: str, payload: bytes, *, made_from: Mapping[str, str | None] | None = None,
                    stage: str = "") -> Path:
        """:meth:`write_with` of ``payload``."""
        return self.write_with(rel, lambda p: p.write_bytes(payload), made_from=made_from, stage=stage)

    def write_text(self, rel: str, text: str, *, made_from: Mapping[str, str | None] | None = None,
                   stage: str = "") -> Path:
        """:meth:`write_with` of ``text`` (UTF-8)."""
        return self.write_with(rel, lambda p: p.write_text(text, encoding="utf-8"), made_from=made_from, stage=stage)

    def write_json(self, rel: str, obj: Any, *, made_from: Mapping[str, str | None] | None = None,
                   stage: str = "") -> Path:
        """:meth:`write_with` of ``obj`` as indented JSON with sorted keys."""
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n",
                               made_from=made_from, stage=stage)

    def save_graph(self, data: HeteroData, rel: str = GRAPH_FILE) -> Path:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        return self.write_bytes(rel, buffer.getvalue())

    def forget(self, rel: str) -> None:
        """Stop recording ``rel`` (the file itself is left alone)."""
        if rel not in self.manifest["files"]:
            return
        with self._locked() as manifest:
            manifest["files"].pop(rel, None)
            manifest.get("made_from", {}).pop(rel, None)

    def replaced_by(self, folder: str | Path) -> str | None:
        """Why writing a whole folder at ``folder`` (one that replaces what is there, as a case
        export does) would take this run's own files with it, or None: ``folder`` is the run
        folder, holds it, or is in it under one of the run's own names (a recorded file's first
        folder, ``rings/``, ``model/``, ...). Paths are compared resolved (links followed)."""
        root, target = self.path.resolve(), Path(folder).resolve()
        if target == root:
            return f"is the run folder {self.path}"
        if root.is_relative_to(target):
            return f"holds the run folder {self.path}"
        if not target.is_relative_to(root):
            return None
        first = target.relative_to(root).parts[0]
        own = ({Path(rel).parts[0] for rel in self.manifest["files"]}
               | {prefix.rstrip("/") for prefix, _ in _WRITTEN_BY} | {MANIFEST, ".manifest.lock"})
        return f"is inside the run folder {self.path}, in its own {first!r}" if first in own else None

    # -- reading --------------------------------------------------------------------------------
    def has(self, rel: str) -> bool:
        return rel in self.manifest["files"] and (self.path / rel).is_file()

    @staticmethod
    def _stale(manifest: Mapping[str, Any], rel: str, path: Path) -> str | None:
        entry = manifest.get("made_from", {}).get(rel)
        if not entry:
            return None
        files = manifest["files"]
        for source, digest in entry["inputs"].items():
            if files.get(source) != digest:
                what = (f"without {source!r} (written since)" if digest is None else
                        f"from an earlier {source!r} ({'rewritten' if source in files else 'removed'} since)")
                return f"{rel!r} was computed {what}: rerun `{entry['stage']} --run {path}`"
        return None

    def stale(self, rel: str) -> str | None:
        """Why ``rel`` is out of date (one of the files it was computed from has changed since it
        was written, and the command that brings it up to date), or None."""
        return self._stale(self.manifest, rel, self.path)

    def fresh(self, rel: str) -> bool:
        """``rel`` is recorded, present and not :meth:`stale` (one read of the manifest)."""
        manifest = self.manifest
        return (rel in manifest["files"] and (self.path / rel).is_file()
                and self._stale(manifest, rel, self.path) is None)

    def path_of(self, rel: str, *, verify: bool = True, current: bool = True) -> Path:
        """Path of a recorded file, after checking its checksum (``verify``) and that it is not
        :meth:`stale` (``current``; :class:`StaleFileError`)."""
        manifest = self.manifest
        files = manifest["files"]
        if rel not in files:
            raise _not_recorded(self.path, rel)
        target = self.path / rel
        if not target.is_file():
            raise FileNotFoundError(f"run folder {self.path}: {rel!r} is recorded but missing")
        if verify and sha256_file(target) != files[rel]:
            raise ChecksumError(f"run folder {self.path}: {rel!r} does not match its checksum in {MANIFEST} "
                                f"(damaged or changed since it was written){_rewrite_hint(self.path, rel)}")
        if current and (reason := self._stale(manifest, rel, self.path)):
            raise StaleFileError(f"run folder {self.path}: {reason}")
        return target

    def read_json(self, rel: str) -> Any:
        with open(self.path_of(rel), encoding="utf-8") as f:
            return json.load(f)

    def load_graph(self, rel: str = GRAPH_FILE) -> HeteroData:
        # weights_only=False is safe here: the file is ours and its checksum was just verified.
        data: HeteroData = torch.load(self.path_of(rel), weights_only=False)
        return data

    def verify(self) -> None:
        """Check every recorded file against its checksum; raise ``ValueError`` naming the first
        bad one (a stale file is intact: :meth:`stale` says which are)."""
        for rel in sorted(self.manifest["files"]):
            self.path_of(rel, current=False)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
