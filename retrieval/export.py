"""Offline exports of a served run: every user's recommendations, every account's fraud score.

``shopgraph recommend --run RUN --out recs.csv`` writes the table a nightly job loads into a
mailing or a page cache (one row per user and rank); ``shopgraph score --run RUN --out
scores.csv`` writes the fraud scores an investigator sorts and filters (one row per account,
``--flagged-only`` for the work queue, ``--leads`` for the flagged accounts not yet known as fraud,
``--label-audit`` for the labels worth a second look).
Both answer exactly as the HTTP API does (the same :class:`~shopgraph.retrieval.service.ShopService`
calls, in batches of :data:`MAX_BATCH`), over the catalogue as served (the run's journal of items
added and removed at run time applied).

Input problems are found before anything is written: an output path with another extension, an
output file that exists (``--overwrite`` replaces it), a ``--users`` file that cannot be read,
holds no ids, has a table row without one (named by its line or row), or names ids the run does
not know (all of them named); blank lines of a plain list are skipped, and an id listed twice is
written once. The file appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shopgraph.graph.files import existing_ancestor
from shopgraph.graph.messages import plural
from shopgraph.graph.run import RunDir, atomic_write
from shopgraph.retrieval.service import (
    MAX_BATCH,
    MAX_BATCH_RESULTS,
    FraudScore,
    ShopService,
    UnknownIdError,
    check_k,
    listed_ids,
)

logger = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")  # the tables --users reads
OUT_FORMATS = (*FORMATS, ".json")  # ... and the exports --out writes (JSON: an array of row objects)
REASON_SEP = " | "  # between an account's reasons in one cell


def check_out(out: Path, *, overwrite: bool, run: Path | None = None, users: Path | None = None) -> Path:
    """``out`` if it can be written as an export (after checking that ``run`` is a run folder: a
    ``FileNotFoundError`` naming it): a ``.csv``, ``.parquet`` or ``.json`` path that is not a
    folder, whose parent is not a file, that is not inside the run folder ``run`` (an export
    must never replace one of the run's files), not the ``--users`` file it is made from (even
    with ``overwrite``: the list of ids would be lost) and, without ``overwrite``, not an existing file."""
    out = Path(out)
    if run is not None:  # a wrong --run first: "--out is inside the run folder" of a folder that is none misleads
        RunDir(run)
    if out.suffix.lower() not in OUT_FORMATS:
        raise ValueError(f"--out: expected a file ending in {', '.join(OUT_FORMATS[:-1])} or {OUT_FORMATS[-1]} "
                         f"(got {str(out)!r})")
    if out.is_dir():
        raise IsADirectoryError(f"--out: {out} is a folder; give a file path")
    blocking = existing_ancestor(out.absolute().parent)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(f"--out: {blocking} is a file, so {out} cannot be written; give a path in a folder")
    if run is not None and Path(run).resolve() in out.resolve().parents:
        raise ValueError(f"--out: {out} is inside the run folder {run}; write the export somewhere else "
                         "(it would replace or add to the run's own files)")
    if users is not None and out.exists() and Path(users).exists() and out.resolve() == Path(users).resolve():
        raise ValueError(f"--out: {out} is the --users file; write the export to another file (it would replace "
                         "the list of ids it is made from)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out: {out} exists; pass --overwrite to replace it")
    return out


def read_user_ids(path: Path) -> list[str]:
    """The user ids of a ``--users`` file, in its order, repeats kept: a ``.csv`` or ``.parquet``
    table's ``user_id`` column, or one id per line of any other file. Ids are stripped of surrounding
    spaces, as the shop's tables and the API store them (an export names each account by its stored
    id). A blank line of a plain list holds no id and is skipped (an editor's last empty line); a table
    row without an id is refused (named by its line or row: the row's other values name some
    account), as is a file with none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--users: {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        try:
            table = (pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig") if suffix == ".csv"
                     else pd.read_parquet(path))
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--users: {path} is not a readable {suffix[1:]} table ({exc})") from None
        if "user_id" not in table.columns:
            raise ValueError(f"--users: {path} has no user_id column (columns: "
                             f"{', '.join(map(str, table.columns[:20])) or 'none'})")
        # the header is line 1 of a CSV file; a Parquet table is counted by row
        ids = [None if pd.isna(v) else str(v) for v in table["user_id"].tolist()]
        where = (lambda k: _line(k + 1)) if suffix == ".csv" else (lambda k: f"row {k + 1}")
        return _checked_ids(path, ids, where)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first id
        except UnicodeDecodeError as exc:
            raise ValueError(f"--users: {path} is not UTF-8 text ({exc})") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and lines[0].strip().lower() == "user_id":
            raise ValueError(f"--users: {path}, line 1: 'user_id' is a column header, not an id; name the file "
                             ".csv to read it as a table, or remove that line")
        return _checked_ids(path, lines, _line)


def _line(k: int) -> str:
    return f"line {k + 1}"


def _checked_ids(path: Path, ids: Sequence[str | None], where: Callable[[int], str]) -> list[str]:
    if not ids:
        raise ValueError(f"--users: {path} holds no user ids")
    for k, value in enumerate(ids):
        if value is None or not value.strip():
            raise ValueError(f"--users: {path}, {where(k)}: empty user id")
    return [value.strip() for value in ids if value is not None]  # as the tables and the API store ids


def _once(user_ids: list[str]) -> tuple[list[str], str]:
    """``user_ids`` with each id once, in the order first given, and a note on the repeats (an
    export has one row per account, or one list per user; ``""`` when none was repeated)."""
    unique = list(dict.fromkeys(user_ids))
    repeats = len(user_ids) - len(unique)
    return unique, (f"; {plural(repeats, 'id')} listed more than once in --users, written once" if repeats else "")


def _known(service: ShopService, user_ids: list[str]) -> list[str]:
    unknown = [u for u in user_ids if not service.has_user(u)]
    if unknown:
        raise UnknownIdError(f"--users: {len(unknown):,} of the {plural(len(user_ids), 'id')} "
                             f"{'is not a user' if len(unknown) == 1 else 'are not users'} of this run "
                             f"(nothing was written): {listed_ids(unknown)}{service.user_ids_hint(unknown)}", "user",
                             unknown)
    return user_ids


def _chunks(values: list[str], k: int = 1) -> list[list[str]]:
    """``values`` in batches the service takes at ``k`` results each (:data:`MAX_BATCH` ids, and
    :data:`MAX_BATCH_RESULTS` results)."""
    size = max(1, min(MAX_BATCH, MAX_BATCH_RESULTS // k))
    return [values[j:j + size] for j in range(0, len(values), size)]


def recommendations_table(service: ShopService, user_ids: list[str], *, k: int = 10, exclude_seen: bool = True,
                          category: str | None = None) -> pd.DataFrame:
    """One row per user and rank: ``user_id, rank, item_id, title, score, reason`` (ranks from 1;
    fewer than ``k`` rows for a user when fewer items qualify)."""
    k = check_k(k)
    rows: dict[str, list[Any]] = {c: [] for c in ("user_id", "rank", "item_id", "title", "score", "reason")}
    for chunk in _chunks(_known(service, user_ids), k):
        for user, rec in zip(chunk, service.recommend_batch(chunk, k, exclude_seen, category)):
            n = len(rec.item_ids)
            rows["user_id"] += [user] * n
            rows["rank"] += list(range(1, n + 1))
            rows["item_id"] += rec.item_ids
            rows["title"] += rec.titles
            rows["score"] += rec.scores
            rows["reason"] += rec.reasons
    return pd.DataFrame(rows).astype({"rank": "int32", "score": "float64"})


def contradicts_label(score: FraudScore) -> bool:
    """Whether an account the scorer was trained on gets a held-out score that contradicts its
    label: labelled legitimate but at or above the threshold, or labelled fraud but below it."""
    held = score.held_out_probability
    return bool(score.label_in_training and score.label is not None and held is not None
                and (held >= score.threshold) != score.label)


def contradiction(held_out: float, threshold: float) -> float:
    """How far a held-out score is from the threshold in log-odds (the scale of the reasons), the
    order of ``--label-audit``: in probability a labelled fraud can be at most the threshold away
    from it, a legitimate account much further."""
    def log_odds(p: float) -> float:
        q = min(max(p, 1e-6), 1.0 - 1e-6)  # a score of 0 or 1 is some finite way out
        return math.log(q / (1.0 - q))

    return abs(log_odds(held_out) - log_odds(threshold))


def is_lead(score: FraudScore) -> bool:
    """Whether an account is a lead for an investigator: not already labelled fraud, and flagged by
    its served score or by its held-out one."""
    return score.label is not True and (score.flagged or bool(score.held_out_flagged))


def ring_ids(run: RunDir) -> dict[str, str] | None:
    """Each account's fraud ring (:func:`shopgraph.graph.rings.load_rings`): the best-ranked ring it is
    a member of, by user id; ``None`` when the run has no current rings (``shopgraph rings`` not run
    since the graph or the scores changed)."""
    from shopgraph.graph.rings import RINGS_FILE, load_rings, rings_by_member

    if not run.fresh(RINGS_FILE):
        return None
    return {user: rings[0].ring_id for user, rings in rings_by_member(load_rings(run.path)).items()}


def scores_table(service: ShopService, user_ids: list[str], *, reasons: bool = True,
                 flagged_only: bool = False, label_audit: bool = False, leads: bool = False,
                 as_lists: bool = False, rings: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per account: ``user_id, probability, threshold, flagged, probability_is, scorer, label,
    label_in_training, held_out_probability, held_out_flagged, ring_id, reasons, held_out_reasons``
    (``ring_id``: the best-ranked fraud ring the account is a member of, from ``rings``, :func:`ring_ids`;
    empty for an account in none, or without ``rings``)
    (``probability_is``: ``"prediction"``, or ``"fitted to its label"`` for an account the scorer
    was trained on, whose ``held_out_probability`` is the prediction;
    (``held_out_reasons``: the reasons for the held-out verdict, joined as ``reasons``; ``label``: the shop's
    ``is_fraud``, empty when unlabelled; ``label_in_training``: the scorer was fitted on it, and
    ``held_out_probability`` its score with that label held out and ``held_out_flagged`` that
    score at or above the threshold, both empty for the other accounts, :class:`FraudScore`;
    ``flagged`` and the reasons, joined by ``" | "`` and empty without ``reasons``, are those of
    the served ``probability``), in the order of ``user_ids``; ``flagged_only`` keeps the
    accounts at or above the threshold, the highest score first (a work queue); ``leads`` keeps the
    accounts not labelled fraud that their served or held-out score flags (:func:`is_lead`), the
    highest prediction first (the held-out score for an account the scorer was trained on, else the
    served one: the new leads, the known frauds left out), with two more columns after ``user_id``:
    ``lead_by`` (``served score``, or ``held-out score`` for an account only that one flags) and
    ``lead_reasons``, the reasons of that verdict; ``label_audit`` keeps those whose held-out score
    contradicts their label (:func:`contradicts_label`), the most contradicted first (``as_lists``: the
    reasons as lists, as JSON writes them, not joined into one text cell): the
    held-out score farthest from the threshold in log-odds, the scale of the reasons (in
    probability a labelled fraud can be at most the threshold away, a legitimate account far more).

    Raises:
        ValueError: ``label_audit`` on a run without held-out scores (nothing to audit with).
    """
    if label_audit and not np.isfinite(service.fraud_prob_held_out).any():
        raise ValueError("--label-audit: this run has no held-out scores (trained before they were stored, with "
                         "--held-out-folds 0, or serving another fraud scorer than graph_trees); retrain it with "
                         "`shopgraph train` to audit its labels")
    scores: list[FraudScore] = []
    for chunk in _chunks(_known(service, user_ids)):
        kept = [s for s in service.score_users(chunk, reasons=False)
                if (s.flagged or not flagged_only) and (contradicts_label(s) or not label_audit)
                and (is_lead(s) or not leads)]
        if reasons and kept:  # reasons cost per account: only for the rows kept
            kept = service.score_users([s.user_id for s in kept], reasons=True)
        scores += kept
    if label_audit:  # the most contradicted first, in log-odds (each has a held-out score: contradicts_label)
        scores.sort(key=lambda s: -contradiction(s.held_out_probability, s.threshold))
    elif leads:  # the most likely fraud first, by the prediction (a fitted score predicts nothing)
        scores.sort(key=lambda s: -s.prediction)
    elif flagged_only:  # a work queue: the highest score first (ties in the order given)
        scores.sort(key=lambda s: -s.probability)
    scorer = str(service.fraud.get("kind", "none"))
    ring_of = rings or {}
    rows = [(s.user_id, s.probability, s.threshold, s.flagged, s.probability_is,
             scorer, s.label, s.label_in_training, s.held_out_probability, s.held_out_flagged,
             ring_of.get(s.user_id, ""),
             *((list(s.reasons), list(s.held_out_reasons)) if as_lists
               else (REASON_SEP.join(s.reasons), REASON_SEP.join(s.held_out_reasons)))) for s in scores]
    columns = ["user_id", "probability", "threshold", "flagged", "probability_is", "scorer", "label",
               "label_in_training", "held_out_probability", "held_out_flagged", "ring_id", "reasons",
               "held_out_reasons"]
    table = pd.DataFrame(rows, columns=columns).astype({"probability": "float64", "threshold": "float64",
                                                        "flagged": "bool", "label": "boolean",
                                                        "label_in_training": "bool",
                                                        "held_out_probability": "float64",
                                                        "held_out_flagged": "boolean"})
    if leads:  # which verdict made each a lead, and its reasons first: the served ones may argue against it
        by_held = ~table["flagged"].to_numpy(dtype=bool)
        table.insert(1, "lead_by", np.where(by_held, "held-out score", "served score"))
        table.insert(2, "lead_reasons", table["held_out_reasons"].where(by_held, table["reasons"]))
    return table


def _json_rows(table: pd.DataFrame) -> str:
    """``table`` as a JSON array of row objects: missing values as null, numbers to every digit (as
    the CSV and the HTTP API give them: pandas' ``to_json`` keeps 10, so a diff against either saw
    changes that were not there), numpy scalars as plain JSON numbers and booleans."""
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"not JSON: {type(value).__name__}")

    return json.dumps(rows, indent=1, ensure_ascii=False, allow_nan=False, default=plain) + "\n"


def write_table(table: pd.DataFrame, out: Path) -> None:
    """``table`` to ``out`` (CSV, Parquet or JSON, an array of row objects, by its extension), whole
    or not at all. An error of the machine's (a folder without write permission, a full disk)
    names ``out``, not the temporary file beside it."""
    suffix = out.suffix.lower()
    try:
        if suffix == ".csv":
            atomic_write(out, lambda p: table.to_csv(p, index=False))
        elif suffix == ".json":  # missing values as null; text as written, not \u-escaped; every digit
            text = _json_rows(table)
            atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
        else:
            atomic_write(out, lambda p: table.to_parquet(p, index=False))
    except OSError as exc:
        raise OSError(f"--out: cannot write {out} ({exc.strerror or exc}); nothing was written") from exc


def _service(run: Path, *, fraud_reasons: bool) -> ShopService:
    return ShopService.from_run(run, fraud_reasons=fraud_reasons, catalogue_follow=False)


def _new_folder(out: Path) -> str:
    """What the message adds when writing ``out`` creates its folder (a typo in a folder name is seen)."""
    missing = existing_ancestor(out.absolute().parent)
    return "" if missing == out.absolute().parent else f" (created the folder {out.parent})"


def cli_recommend(args: argparse.Namespace) -> int:
    """``shopgraph recommend --run RUN --out FILE [--users FILE] [--k K] [--include-seen] [--category C]
    [--overwrite]``."""
    out = check_out(args.out, overwrite=args.overwrite, run=args.run, users=args.users)
    wanted, repeats = _once(read_user_ids(args.users)) if args.users is not None else (None, "")  # before the run
    t0 = time.perf_counter()
    service = _service(args.run, fraud_reasons=False)
    users = wanted if wanted is not None else list(service.user_ids)
    table = recommendations_table(service, users, k=args.k, exclude_seen=not args.include_seen,
                                  category=args.category)
    made = _new_folder(out)
    write_table(table, out)
    print(f"wrote {plural(len(table), 'recommendation')} for {plural(len(users), 'user')} (k={args.k}) to {out} in "
          f"{time.perf_counter() - t0:.1f}s{repeats}{made}")
    return 0


def _scorer_errors(run: RunDir, service: ShopService, users: list[str]) -> str:
    """For ``--label-audit``: how many contradictions the scorer's own errors would give among these
    trained-on accounts with every label right, at the miss and false-flag rates measured on the
    test accounts (``metrics.json``: labels never used in training); ``""`` without those metrics.
    A contradiction is a wrong label or a scorer error: the count says which to expect."""
    try:
        fraud = run.read_json("metrics.json").get("fraud", {})
    except (FileNotFoundError, ValueError) as exc:
        logger.info("--label-audit: no test error rates to compare with (%s)", exc)
        return ""
    served, test = fraud.get("gnn", {}), fraud.get("test", {})
    recall, precision = served.get("recall"), served.get("precision")
    accounts, frauds = test.get("accounts"), test.get("fraud")
    numbers = (recall, precision, accounts, frauds)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers) or not (
            0 < precision <= 1 and 0 <= recall <= 1 and 0 < frauds < accounts):
        return ""
    caught = recall * frauds
    missed, false_flags = 1.0 - recall, caught * (1.0 - precision) / precision / (accounts - frauds)
    trained = [s for chunk in _chunks(_known(service, users)) for s in service.score_users(chunk, reasons=False)
               if s.label_in_training and s.held_out_probability is not None]
    expected = sum(missed if s.label else false_flags for s in trained)
    about = (f"about {expected:,.0f} such contradiction{'' if round(expected) == 1 else 's'}" if expected >= 0.5
             else "fewer than one such contradiction")
    cut, served_cut = served.get("threshold"), service.fraud.get("threshold")
    at = (f"; `shopgraph evaluate` refits it at the test cut and thresholds it at {cut:.3f}, the best F1 of its own "
          f"validation scores, where the served scorer flags at {served_cut:.3f}" if isinstance(cut, int | float)
          and isinstance(served_cut, int | float) and math.isfinite(cut) and math.isfinite(served_cut) else "")
    return (f"On the test accounts the scorer misses {missed:.0%} of fraud and flags {false_flags:.1%} of legitimate "
            f"accounts (metrics.json{at}): that alone would give {about} among these "
            f"{plural(len(trained), 'trained-on account')} with every label right. Each is a wrong label or a scorer "
            "error: check it before changing the label.")


def cli_score(args: argparse.Namespace) -> int:
    """``shopgraph score --run RUN --out FILE [--users FILE] [--no-reasons] [--flagged-only | --leads |
    --label-audit] [--overwrite]``."""
    out = check_out(args.out, overwrite=args.overwrite, run=args.run, users=args.users)
    wanted, repeats = _once(read_user_ids(args.users)) if args.users is not None else (None, "")  # before the run
    t0 = time.perf_counter()
    run = RunDir(args.run)  # the scorer's kind first: a run without one is not loaded at all
    if run.has("fraud.json") and run.read_json("fraud.json").get("kind", "none") == "none":
        raise ValueError(f"--run: {args.run} has no fraud scorer, nothing was written: its training found no "
                         f"usable fraud labels (both classes are needed in the training and validation periods; "
                         f"`shopgraph validate` counts the labels)")
    service = _service(args.run, fraud_reasons=not args.no_reasons)
    users = wanted if wanted is not None else list(service.user_ids)
    if not args.no_reasons and service.reasons_per_account_model:
        logger.warning("this run's fraud scorer (%s) works out each account's reasons with the model (75-700 ms an "
                       "account): %d accounts may take a while; --no-reasons for scores only",
                       service.fraud.get("kind"), len(users))
    rings = ring_ids(run)
    table = scores_table(service, users, reasons=not args.no_reasons, flagged_only=args.flagged_only,
                         label_audit=args.label_audit, leads=args.leads, as_lists=out.suffix.lower() == ".json",
                         rings=rings)
    made = _new_folder(out)
    write_table(table, out)
    flagged = int(table["flagged"].sum())
    note = ""
    if args.label_audit:
        kept = (f"the {plural(len(table), 'account')} of {len(users):,} whose held-out score contradicts "
                f"{'its' if len(table) == 1 else 'their'} label")
        note = _scorer_errors(run, service, users)
    elif args.leads:
        held = int((table["held_out_flagged"].fillna(False) & ~table["flagged"]).sum())
        kept = (f"the {plural(len(table), 'lead')} of {plural(len(users), 'account')} (not labelled fraud, flagged by the "
                "served score or, for an account the scorer was trained on, by its held-out one), the most likely "
                "fraud first" + (f" ({held:,} flagged only with the label held out)" if held else ""))
    elif args.flagged_only:
        fitted = int(table["label_in_training"].sum())
        # the leads this queue cannot hold: accounts whose served score (fitted to a legitimate label)
        # is below the threshold, flagged with that label held out
        hidden = sum(not s.flagged and bool(s.held_out_flagged) and s.label is not True
                     for chunk in _chunks(_known(service, users)) for s in service.score_users(chunk, reasons=False))
        kept = (f"the {flagged:,} flagged of {plural(len(users), 'account')}, highest first"
                + (f" ({fitted:,} of them with a score fitted to the label the scorer was trained on: "
                   "probability_is says which; their held_out_probability is the prediction)" if fitted else ""))
        note = (f"Not in this file: {plural(hidden, 'more account')} not labelled fraud that only the held-out score "
                f"flags (the served score, fitted to a legitimate label, does not); `--leads` lists "
                f"{'it' if hidden == 1 else 'them'}." if hidden else "")
    else:
        kept = f"{plural(len(users), 'account')} ({flagged:,} flagged)"
    print(f"wrote the fraud scores of {kept} to {out} in {time.perf_counter() - t0:.1f}s{repeats}{made}")
    if rings is None:
        print(f"ring_id is empty: this run has no current fraud rings (`shopgraph rings --run {args.run}` finds "
              "them)")
    else:
        ringed = int((table["ring_id"] != "").sum())
        print(f"ring_id: {plural(ringed, 'account')} of the {len(table):,} written {'is' if ringed == 1 else 'are'} "
              f"in a fraud ring (`shopgraph rings --run {args.run} --ring ID --export DIR` exports a ring's case)")
    if note:
        print(note)
    return 0
