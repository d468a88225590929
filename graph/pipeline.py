"""``shopgraph build`` and ``shopgraph inspect``: tables folder -> run folder.

The run folder is assembled in a temporary sibling folder and renamed into place only when
every step succeeded, so an interrupted or failed build never leaves a half-written run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from torch_geometric.data import HeteroData

from shopgraph.graph.build import build_graph, target_pairs
from shopgraph.graph.files import as_created, through_link
from shopgraph.graph.run import MANIFEST, RunDir, swap_in
from shopgraph.graph.schema import TABLE_NAMES, ShopTables
from shopgraph.graph.synthetic import read_generated_note

logger = logging.getLogger(__name__)

TABLES_DIR = "tables"


class BuildSummary(NamedTuple):
    run_dir: Path
    seconds: dict[str, float]
    inspect: dict[str, Any]
    validation: dict[str, Any]


def data_fingerprint(folder: Path) -> str:
    """sha256 over the table files' bytes and the (path, size) list of the images folder.

    Image bytes are not hashed here (the embedding cache hashes each image it encodes); a
    changed image of the same size is caught there, not by the fingerprint.
    """
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.stem in TABLE_NAMES and path.suffix in (".csv", ".parquet"):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    images = folder / "images"
    if images.is_dir():
        for path in sorted(images.rglob("*")):
            if path.is_file():
                h.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
    return h.hexdigest()


def save_tables(run: RunDir, tables: ShopTables) -> None:
    """Write the normalised tables as Parquet (services read item metadata and events from here)."""
    frames: dict[str, pd.DataFrame | None] = {
        "users": tables.users, "items": tables.items, "devices": tables.devices,
        "events": tables.events, "labels": tables.labels,
    }
    for name, frame in frames.items():
        if frame is not None:
            run.write_with(f"{TABLES_DIR}/{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
    run.update(config={"tables_root": str(tables.root.resolve())})


def load_run_tables(run: RunDir) -> ShopTables:
    """The normalised tables saved by :func:`save_tables`."""
    frames: dict[str, pd.DataFrame | None] = {}
    for name in TABLE_NAMES:
        rel = f"{TABLES_DIR}/{name}.parquet"
        frames[name] = pd.read_parquet(run.path_of(rel)) if run.has(rel) else None
    for name in ("users", "items", "devices", "events"):
        if frames[name] is None:
            raise FileNotFoundError(f"run folder {run.path}: no {TABLES_DIR}/{name}.parquet")
    root = Path(run.manifest["config"].get("tables_root", "."))
    return ShopTables(
        users=frames["users"], items=frames["items"], devices=frames["devices"],  # type: ignore[arg-type]
        events=frames["events"], labels=frames["labels"], root=root,  # type: ignore[arg-type]
    )


def inspect_graph(data: HeteroData) -> dict[str, Any]:
    """Counts of nodes, edges, feature dims and target pairs per split."""
    return {
        "nodes": {nt: int(data[nt].num_nodes) for nt in data.node_types},
        "edges": {",".join(et): int(data[et].edge_index.size(1)) for et in data.edge_types},
        "features": {
            nt: int(data[nt].x.size(1)) if "x" in data[nt] else 0 for nt in data.node_types
        },
        "split": {s: int(target_pairs(data, s).size(1)) for s in ("train", "val", "test")},  # type: ignore[arg-type]
        "split_kind": str(data.split_kind),
        "target": str(data.target),
    }


def _check_out(data_dir: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse an ``out`` that a build must not replace: a file, the tables folder or one holding
    it, or (with ``overwrite``) a non-empty folder that is not a previous run."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: expected a run folder (got the file '{out}'); choose another --out")
    data, target = data_dir.resolve(), out.resolve()
    if data == target or target in data.parents:
        raise ValueError(
            f"out: '{out}' is or holds the tables folder '{data_dir}' (--data); a run folder must be "
            "somewhere else, or building would replace the input tables"
        )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"run folder {out} exists and is not empty; pass --overwrite to replace it")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(
                f"out: '{out}' is not a previous run folder (no {MANIFEST}); --overwrite only replaces a "
                "run folder, so choose another --out or empty it"
            )


FEW_TARGET_EVENTS = 50  # target events of a split under which build warns (_check_trainable)


def _check_trainable(data: HeteroData, target: str) -> None:
    """Refuse a graph whose split leaves no target events to train on (`shopgraph train` would fail)."""
    split = {s: int(target_pairs(data, s).size(1)) for s in ("train", "val", "test")}  # type: ignore[arg-type]
    if split["train"] > 0:
        few = [f"{s} {n:,}" for s, n in split.items() if n < FEW_TARGET_EVENTS]
        if few:  # buildable, but its metrics and early stopping rest on a handful of events
            logger.warning("target: few %r events in %s (under %d): the model learns little from them, and "
                           "validation and test metrics on so few are noise", target, ", ".join(few),
                           FEW_TARGET_EVENTS)
        return
    total = sum(split.values())
    counts = ", ".join(f"{s} {n:,}" for s, n in split.items())
    if data.split_kind == "temporal":
        why = (f"the split is by time (validation and test take the latest 20%) and the {total:,} "
               f"{target!r} events have too few distinct timestamps for any to come before those; training "
               f"needs {target!r} events at several different times")
    else:
        why = (f"the random split holds out users' {target!r} events for validation and testing and "
               f"{total:,} are too few to leave any; training needs more {target!r} events")
    raise ValueError(f"target: no {target!r} events left to train on ({counts}): {why}")


@contextlib.contextmanager
def _catalogue_carried(old: Path, new: Path) -> Iterator[None]:
    """Carry the items added and removed while ``old`` was served (``RUN/catalogue.jsonl``,
    ``RUN/added_images/`` and the journal's compacted generations in ``RUN/catalogue_history/``,
    :mod:`shopgraph.retrieval.catalogue`) into the rebuilt run ``new``, so a
    rebuild never drops them: its services replay them (adds of ids the new tables hold count as
    superseded). The journal's lock is held until the caller's swap is done, so a server still on
    the old run cannot append a change that the copy misses."""
    from shopgraph.retrieval.catalogue import HISTORY, IMAGES, JOURNAL, CatalogueJournal

    if not (old / JOURNAL).is_file():
        yield
        return
    with CatalogueJournal(old).locked():
        shutil.copy2(old / JOURNAL, new / JOURNAL)
        for folder in (IMAGES, HISTORY):
            if (old / folder).is_dir():
                shutil.copytree(old / folder, new / folder)
        logger.info("carried %s (%d bytes), its images and history into the rebuilt run", old / JOURNAL,
                    (new / JOURNAL).stat().st_size)
        yield


def build_run(
    data_dir: Path,
    out: Path,
    *,
    target: str = "purchase",
    seed: int = 0,
    use_text: bool = True,
    use_image: bool = True,
    text_model: str | None = None,
    image_model: str | None = None,
    cache_dir: Path | None = None,
    overwrite: bool = False,
) -> BuildSummary:
    """Validate the tables, encode features, build the graph and write the run folder.

    Args:
        data_dir: the shop's tables folder.
        out: the run folder to create (an existing non-empty one needs ``overwrite`` and must be a
            previous run folder; it may not be, or hold, ``data_dir``).
        target: event type to recommend.
        seed: seeds the random split (no timestamps) and the fraud masks.
        use_text, use_image: encode item text / images.
        text_model, image_model: local checkpoint folders (default: the bundled models).
        cache_dir: embedding cache folder.
        overwrite: replace an existing run folder (only once the new one is complete); the items
            added and removed while it was served (its catalogue journal) are carried over.

    Raises:
        FileExistsError: ``out`` is a file, or a non-empty folder without ``overwrite``, or one
            that is not a previous run folder.
        ValueError: ``out`` is or holds ``data_dir``; or the tables cannot be loaded.
    """
    from shopgraph.graph.load import load_tables

    out = through_link(Path(out))  # a link to a run: the run it points at is replaced, the link kept
    _check_out(Path(data_dir), out, overwrite=overwrite)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = load_tables(data_dir, target=target)  # no events of the target type: said with the loading report
    seconds["validate"] = time.perf_counter() - t0
    tables = loaded.tables

    t0 = time.perf_counter()
    data = build_graph(tables, target=target, seed=seed)
    seconds["graph"] = time.perf_counter() - t0
    _check_trainable(data, target)

    feature_report: dict[str, Any] = {}
    t0 = time.perf_counter()
    from shopgraph.encoders.featurize import featurize

    result = featurize(
        data, tables, use_text=use_text, use_image=use_image, text_model=text_model,
        image_model=image_model, cache_dir=cache_dir,
    )
    data, feature_report = result.data, result.report
    seconds["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        as_created(tmp, folder=True)
        run = RunDir(tmp, create=True, overwrite=True)
        run.save_graph(data)
        save_tables(run, tables)
        run.write_json("validation.json", loaded.report.to_dict())
        run.write_json("features.json", feature_report)
        summary = inspect_graph(data)
        run.update(
            data_fingerprint=data_fingerprint(Path(data_dir)),
            config={
                "data_dir": str(Path(data_dir).resolve()), "target": target, "seed": seed,
                # a shop `shopgraph generate` made up (its note), so that what serves the run can say so
                "generated": read_generated_note(Path(data_dir)),
                "use_text": use_text, "use_image": use_image, "text_model": text_model,
                "image_model": image_model, "split_kind": str(data.split_kind),
                "split_times": list(data.split_times),
                "feature_dims": summary["features"],
                "feature_names": {nt: list(data[nt].feature_names) for nt in data.node_types
                                  if "feature_names" in data[nt]},
            },
        )
        run.verify()
        _check_out(Path(data_dir), out, overwrite=overwrite)  # the folder may have changed meanwhile
        with _catalogue_carried(out, tmp):
            swap_in(tmp, out)  # the old run is moved aside, not deleted, until the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds["write"] = time.perf_counter() - t0
    return BuildSummary(out, seconds, summary, loaded.report.to_dict())


def _check_build_flags(args: argparse.Namespace) -> None:
    """The command line's paths, named by their flags before any work (the encoders' own checks
    name their arguments instead)."""
    for flag, value in (("--text-model", args.text_model), ("--image-model", args.image_model)):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag}: {value} does not exist; give the local folder of a checkpoint")
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise NotADirectoryError(f"--cache-dir: {args.cache_dir} is a file; give a folder (created when absent)")


def cli_build(args: argparse.Namespace) -> int:
    _check_build_flags(args)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_run(
            args.data, args.out, target=args.target, seed=args.seed, use_text=not args.no_text,
            use_image=not args.no_image, text_model=args.text_model, image_model=args.image_model,
            cache_dir=args.cache_dir, overwrite=args.overwrite,
        )
    issues = summary.validation.get("issues", [])
    for issue in issues:
        print(f"  {issue.get('severity', 'issue')}: {issue.get('message', issue)}")
    # load_tables warns about each repair, printed just above: only the other warnings are shown
    printed = {issue.get("message") for issue in issues}
    for w in caught:
        if str(w.message) not in printed:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    nodes = ", ".join(f"{n:,} {t}s" for t, n in summary.inspect["nodes"].items())
    feats = ", ".join(f"{t} {d}" for t, d in summary.inspect["features"].items())
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items())
    print(f"built {summary.run_dir}: {nodes}; feature dims: {feats}")
    print(f"split ({summary.inspect['split_kind']}): {summary.inspect['split']}; {steps}; "
          f"total {time.perf_counter() - t0:.1f}s")
    return 0


def cli_inspect(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    summary = inspect_graph(run.load_graph())
    if args.json:
        print(json.dumps({k: summary[k] for k in ("nodes", "edges", "features", "split")}))
    else:
        print(json.dumps(summary, indent=2))
    return 0
