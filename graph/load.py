"""Reading a shop's tables folder, validating it, and repairing what can be repaired.

A folder holds ``users``, ``items`` and ``events`` (required) and ``devices`` and ``labels``
(optional), each as ``<name>.csv``, ``<name>.csv.gz`` or ``<name>.parquet`` (a file, or a folder
of Parquet files as Spark writes it), the name matched ignoring case. :func:`load_tables` returns the
normalised :class:`~shopgraph.graph.schema.ShopTables` (dtypes as in ``docs/ARCHITECTURE.md``)
together with a :class:`ValidationReport`; :func:`validate_tables` only builds the report and
never raises for data problems. Every check, what is fatal and how each repair is made are
documented for users in ``docs/input_tables.md``.

Conventions used in every message:

* ``row`` is the 1-based data row number of the file as read (the header is not counted; row 1
  is the first line under the header, i.e. spreadsheet row 2; for Parquet, row 1 is the first
  record), always of the original file, whatever was dropped before. Blank lines of a CSV file
  are skipped but counted, as a spreadsheet shows them (pyarrow skips them: the rows are mapped
  back by :func:`_csv_layout`, only for a file whose line count is not its row count plus one),
  and a value with quoted line breaks is one row; ``line`` is a line of the file (header line 1).
* ``total`` (the "of N") is the number of rows read from that table's file.
* Each dropped row is counted once, by the first check it fails, in the documented order.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import difflib
import gzip
import io
import json
import logging
import os
import posixpath
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from PIL import Image

from shopgraph.graph.schema import (
    MAX_CATEGORIES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    REQUIRED_TABLES,
    TABLE_NAMES,
    ShopTables,
)

logger = logging.getLogger(__name__)

Severity = Literal["fatal", "repaired", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("fatal", "repaired", "warning", "info")

# Columns read as text from CSV (ids stay "007"; numbers and times are parsed here so that
# every unparsable value can be counted and named). Only an empty cell is missing: "NA", "null",
# "None" ... are text (an id, a title), and in a column of numbers they are reported as not numbers.
# Other columns are left to pyarrow's inference, except in the tables whose extra columns become
# features (users, devices): those are read as text and typed by _extra_columns, so that one odd
# value is reported instead of failing or silently turning the column into text.
_TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    name: REQUIRED_COLUMNS[name] + OPTIONAL_COLUMNS[name] for name in TABLE_NAMES
}
_FEATURE_TABLES: tuple[str, ...] = ("users", "devices")
# Columns whose values never span lines (ids, times, numbers, paths): a line break in one is an
# unclosed quote that merged the lines after it into the value (free text may hold line breaks).
_ONE_LINE_COLUMNS: dict[str, frozenset[str]] = {
    name: frozenset(_TEXT_COLUMNS[name]) - {"title", "description", "category"} for name in TABLE_NAMES
}
_ID_COLUMN: dict[str, str] = {"users": "user_id", "items": "item_id", "devices": "device_id"}
# Id and id-like text columns: a Parquet integer column here is read as its exact digits (int64 ids
# with a null would otherwise become float64 and lose digits beyond 2**53).
_EXACT_TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "items": ("item_id",),
    "devices": ("device_id",),
    "events": ("user_id", "item_id", "device_id", "event_type"),
    "labels": ("user_id", "ring_id"),
}
# The file forms a table is read from (the name matched ignoring case); a "<name>.parquet" folder
# is read as one Parquet dataset.
_FORMATS: tuple[str, ...] = (".csv", ".csv.gz", ".parquet")
# Words that mean "missing" in exports (R's NA, SQL's NULL ...). They are text in ids and text
# columns; they only stop a shop's extra column from counting as "not numbers" when deciding
# whether it is a column of numbers (they are then reported with the other non-numbers).
_MISSING_WORDS: frozenset[str] = frozenset(
    {"na", "n/a", "#n/a", "nan", "null", "none", "nil", "<na>", "-", "?", "missing"}
)
# A shop's extra column with at most this share of non-numbers (missing words not counted) is a
# column of numbers with a few bad values; with more it is text.
_MOSTLY_NUMBERS: float = 0.1
_TEXT_ITEM_COLUMNS: tuple[str, ...] = ("title", "description", "category")
# Epoch values above this are far in the future as seconds (year 5138): likely milliseconds.
_EPOCH_MS_HINT: float = 1e11
# Times out of range: dates pandas cannot hold as datetimes (1677-09-21 .. 2262-04-11; sentinels
# such as 9999-12-31 or 0001-01-01), epoch seconds that do not fit the int64 column.
_DATE_MIN: float = pd.Timestamp.min.value / 1e9
_DATE_MAX: float = pd.Timestamp.max.value / 1e9
_EPOCH_MAX: float = 2.0**63
TIME_RANGE_TEXT = "values are out of range (dates must lie between 1677-09-22 and 2262-04-10, epoch seconds below 9.2e18)"
# A zone written as a word after an ISO time, as BigQuery's CSV export writes it
# ("2025-10-03 00:21:10 UTC"): read as +00:00. Tried only on the values ISO-8601 alone rejects.
_UTC_WORD: str = r"\s*(?:UTC|GMT)$"
# pyarrow reads a CSV file in blocks of 1 MB, and a row must fit in one: a longer row (a few MB of
# HTML in one description) is read again with blocks this many times larger, up to _MAX_BLOCK.
# Only a file that failed is read again, so the common file costs nothing more.
_BLOCK_GROWTH: int = 4
_MAX_BLOCK: int = 64 << 20
# Events dropped for unknown users or items: up to this share of the file's rows is a repair (a few
# deleted accounts or items); more means the tables do not fit together (ids written differently).
_MAX_UNKNOWN_SHARE: float = 0.5
# Separators other than the comma that exports use: a header holding one names the file's format.
_OTHER_DELIMITERS: dict[str, str] = {";": "semicolons (;)", "\t": "tabs", "|": "pipes (|)"}
# An items.image value that is a URL (https://, s3://, ...): images are never fetched.
_URL: str = r"^[A-Za-z][A-Za-z0-9+.\-]*://"


@dataclass(frozen=True)
class ValidationIssue:
    """One finding of the validation: a fatal problem, a repair made, a warning or an info note.

    Attributes:
        table: table name (``"users"``, ``"items"``, ``"devices"``, ``"events"``, ``"labels"``).
        column: the column concerned, or ``None`` for table-level findings.
        kind: machine-readable kind (``"missing_table"``, ``"unknown_id"``, ``"unparsable"``, ...).
        count: number of rows (or values) concerned.
        total: rows read from the table's file (0 when it could not be read).
        first_row: 1-based data row number (header excluded) of the first offending row, or ``None``.
        first_value: the first offending value as text, or ``None`` (blank values, table-level).
        fatal: true when the tables cannot be loaded.
        action: what was done (``"dropped rows"``, ``"set to NaN"``, ``"none"`` for fatal ones, ...).
        message: one human-readable line naming table, column, count and first row.
        severity: ``"fatal"``, ``"repaired"``, ``"warning"`` or ``"info"`` (``fatal`` iff ``"fatal"``).
    """

    table: str
    column: str | None
    kind: str
    count: int
    total: int
    first_row: int | None
    first_value: str | None
    fatal: bool
    action: str
    message: str
    severity: Severity = "repaired"

    def __post_init__(self) -> None:
        if self.fatal != (self.severity == "fatal"):
            raise ValueError(
                f"severity: fatal={self.fatal} contradicts severity {self.severity!r} (got {self.message!r})"
            )


@dataclass
class ValidationReport:
    """Everything found while reading a tables folder.

    Attributes:
        root: the folder that was read.
        issues: findings, in the order the checks ran.
        counts: rows per table after loading and repairs (absent tables are missing from the dict).
        files: the file each table was read from, relative to ``root``.
    """

    root: Path
    issues: list[ValidationIssue] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def has_fatal(self) -> bool:
        """True when at least one issue is fatal (the tables cannot be loaded)."""
        return any(issue.fatal for issue in self.issues)

    @property
    def fatal(self) -> list[ValidationIssue]:
        """The fatal issues only."""
        return [issue for issue in self.issues if issue.fatal]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: root, files, counts, has_fatal, per-severity totals, issues."""
        return {
            "root": str(self.root),
            "files": dict(self.files),
            "counts": dict(self.counts),
            "has_fatal": self.has_fatal,
            "summary": {sev: sum(i.severity == sev for i in self.issues) for sev in SEVERITIES},
            "issues": [asdict(issue) for issue in self.issues],
        }

    def format(self) -> str:
        """Human-readable report: a header, one line per issue, and a summary line."""
        lines = [f"tables folder: {self.root}"]
        for issue in self.issues:
            lines.append(f"  {issue.severity.upper():<8}  {issue.message}")
        rows = ", ".join(f"{name} {self.counts[name]:,}" for name in TABLE_NAMES if name in self.counts)
        n = {sev: sum(i.severity == sev for i in self.issues) for sev in SEVERITIES}
        if not self.issues:
            verdict = "no problems found"
        else:
            verdict = (
                f"{n['fatal']} fatal, {n['repaired']} repaired, {n['warning']} warning(s), {n['info']} info"
            )
        outcome = "NOT loadable: fix the fatal problems above" if self.has_fatal else "loadable"
        lines.append(f"summary: {verdict}; rows after loading: {rows or 'none'}; {outcome}")
        return "\n".join(lines)


class LoadResult(NamedTuple):
    """What :func:`load_tables` returns."""

    tables: ShopTables
    report: ValidationReport


# ---------------------------------------------------------------------------------------------
# helpers


class _Collector:
    """Accumulates issues; builds the house-style messages."""

    def __init__(self) -> None:
        self.issues: list[ValidationIssue] = []

    def add(
        self,
        severity: Severity,
        table: str,
        column: str | None,
        kind: str,
        message: str,
        *,
        count: int = 0,
        total: int = 0,
        first_row: int | None = None,
        first_value: Any = None,
        action: str = "none",
    ) -> None:
        value = None if first_value is None else str(first_value)
        issue = ValidationIssue(
            table=table, column=column, kind=kind, count=int(count), total=int(total),
            first_row=first_row, first_value=value, fatal=severity == "fatal", action=action,
            message=message, severity=severity,
        )
        self.issues.append(issue)
        # DEBUG only: the report carries every issue, the CLI prints it, and load_tables warns
        # about each repair; logging each again would print everything twice.
        logger.debug("%s: %s", severity, message)

    def rows(
        self,
        severity: Severity,
        table: str,
        column: str,
        kind: str,
        bad: pd.Series,
        values: pd.Series | None,
        total: int,
        what: str,
        action: str,
    ) -> None:
        """Add an issue about the rows where ``bad`` (aligned boolean mask) is true, if any.

        The message reads ``"<table>.<column>: <count> of <total> <what> (first: <value>, row <r>); <action>"``.
        """
        mask = bad.to_numpy(dtype=bool)
        count = int(mask.sum())
        if not count:
            return
        pos = int(np.argmax(mask))
        first_row = int(bad.index[pos]) + 1
        first_value = None if values is None else values.iloc[pos]
        if first_value is not None and not (np.ndim(first_value) == 0 and pd.isna(first_value)):
            where = f"first: {str(first_value)!r}, row {first_row}"
        else:
            first_value = None
            where = f"first: row {first_row}"
        self.add(
            severity, table, column, kind,
            f"{table}.{column}: {count:,} of {total:,} {what} ({where}); {action.format(n=count)}",
            count=count, total=total, first_row=first_row, first_value=first_value,
            action=action.format(n=count),
        )


def _as_text(series: pd.Series) -> pd.Series:
    """Any column -> ``str`` dtype with NaN for missing; integral floats print without ``.0``."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("str")
    if pd.api.types.is_float_dtype(series):
        vals = series.to_numpy(dtype=np.float64)
        finite = np.isfinite(vals)
        safe = np.where(finite, vals, 0.0)
        if np.array_equal(finite & (safe == np.floor(safe)) & (np.abs(safe) < 2.0**53), finite):
            out = series.astype("Int64").astype("str")
            return out.where(series.notna())
    if pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
        return series
    out = series.astype("str")
    return out.where(series.notna())


def _blank(text: pd.Series) -> pd.Series:
    """True where a text value is missing or only whitespace."""
    return text.isna() | (text.str.strip() == "")


def _found(columns: Iterable[str], limit: int = 12) -> str:
    cols = list(columns)
    shown = ", ".join(cols[:limit])
    return (shown + ", ...") if len(cols) > limit else (shown or "no columns")


def _epoch_seconds(dt: pd.Series) -> pd.Series:
    """Zoned datetimes of any resolution -> float64 epoch seconds (NaN for NaT).

    Microseconds, not pandas' default nanoseconds: the dates nanoseconds cannot hold (9999-12-31)
    are then counted by the range check instead of raising.
    """
    us = dt.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    secs = us.astype(np.int64) / 1e6
    return pd.Series(np.where(np.isnat(us), np.nan, secs), index=dt.index, dtype=np.float64)


def _parse_times(raw: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Parse ISO-8601 strings or epoch seconds -> (float64 epoch seconds, NaN where unparsable).

    An ISO time may end in the zone as a word, ``UTC`` or ``GMT`` (``2025-10-03 00:21:10 UTC``, as
    BigQuery exports it), read as ``+00:00``.

    Returns:
        The parsed seconds (float64; NaN where missing, unparsable or out of range), a boolean
        mask of values present but unparsable, and one of values parsed but out of range
        (:data:`TIME_RANGE_TEXT`: dates pandas cannot hold, epoch seconds too large for int64).
        Naive ISO times are taken as UTC; zoned ones are converted to UTC.
    """
    present = raw.notna()
    no = pd.Series(False, index=raw.index)
    if pd.api.types.is_datetime64_any_dtype(raw):
        dt = raw if getattr(raw.dt, "tz", None) is not None else raw.dt.tz_localize("UTC")
        secs = _epoch_seconds(dt)
        far = secs.notna() & ((secs < _DATE_MIN) | (secs > _DATE_MAX))
        return np.floor(secs.where(~far)), no, far
    far = no.copy()
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        secs = raw.astype(np.float64)
    else:
        text = _as_text(raw).str.strip()
        present = present & (text != "")
        secs = pd.to_numeric(text, errors="coerce").astype(np.float64)
        rest = present & secs.isna()
        if rest.any():
            given = text[rest]
            if given.iloc[:100].str.contains(_UTC_WORD, case=False, regex=True).any():
                # a column written so (BigQuery): the word replaced first, or every value would be
                # parsed twice (2 M values: 5.2 s instead of 1.9 s)
                given = given.str.replace(_UTC_WORD, "+00:00", regex=True, case=False)
            dt = pd.to_datetime(given, format="ISO8601", utc=True, errors="coerce")
            if dt.isna().any():  # "2025-10-03 00:21:10 UTC" (BigQuery) among others: the zone as a word
                again = given[dt.isna()]
                zoned = again.str.replace(_UTC_WORD, "+00:00", regex=True, case=False)
                worded = zoned != again
                if worded.any():
                    dt = dt.astype("datetime64[us, UTC]")
                    dt.loc[worded[worded].index] = pd.to_datetime(
                        zoned[worded], format="ISO8601", utc=True, errors="coerce").astype("datetime64[us, UTC]")
            iso = _epoch_seconds(dt)
            far.loc[rest] = (iso < _DATE_MIN) | (iso > _DATE_MAX)
            secs.loc[rest] = iso
    far = far | (np.isfinite(secs) & (np.abs(secs) >= _EPOCH_MAX))
    secs = secs.where(np.isfinite(secs) & ~far)
    return np.floor(secs), present & secs.isna() & ~far, far


def _parse_nonneg(
    df: pd.DataFrame, table: str, column: str, total: int, out: _Collector, what: str
) -> None:
    """``df[column]`` -> float64; non-numbers (and infinities) and negatives become NaN, counted."""
    raw = df[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        vals = raw.astype(np.float64)
        present = raw.notna()
    else:
        text = _as_text(raw).str.strip()
        present = text.notna() & (text != "")
        vals = pd.to_numeric(text, errors="coerce").astype(np.float64)
    not_number = present & ~np.isfinite(vals)
    out.rows("repaired", table, column, "not_numeric", not_number, raw, total,
             f"{what} are not numbers", "set those {n} to NaN")
    negative = vals < 0
    out.rows("repaired", table, column, "negative", negative, raw, total,
             f"{what} are negative", "set those {n} to NaN")
    df[column] = vals.where(~negative & ~not_number).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# reading


def _expected(name: str) -> str:
    """``"items.csv, items.csv.gz or items.parquet"``: the file names a table is read from."""
    forms = [f"{name}{ext}" for ext in _FORMATS]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def _table_form(name: str, entry: str) -> str | None:
    """The extension of ``entry`` when it names table ``name`` in a form that is read, else None."""
    low = entry.lower()
    return next((ext for ext in _FORMATS if low == name + ext), None)


def _near_name(name: str, entry: str) -> bool:
    """True when ``entry`` (a file or folder name) looks meant as table ``name`` but is not named so:
    ``label.csv``, ``Fraud_Labels.parquet``, ``labels.xlsx``, ``labels.csv.zip``, a ``labels`` folder."""
    stem = entry.lower().split(".", 1)[0]
    if stem == name:
        return True
    words = [w for w in "".join(c if c.isalnum() else " " for c in stem).split() if w]
    return name in words or name[:-1] in words or difflib.SequenceMatcher(None, stem, name).ratio() >= 0.8


def _locate(root: Path, name: str, entries: list[str], out: _Collector) -> Path | None:
    """The file (or Parquet folder) table ``name`` is read from, or ``None`` (reported).

    ``<name>.csv``, ``<name>.csv.gz`` or ``<name>.parquet`` (a file, or a folder of Parquet files
    such as Spark writes), matched ignoring case. More than one is fatal. When none exists, entries
    that look meant as the table (another extension, a CSV folder, a near name such as
    ``label.csv``) are named in the report: fatal for a required table, a warning for an optional
    one, which is then not loaded.
    """
    usable: list[str] = []
    unread: list[str] = []  # entries named like the table but not in a form that is read
    broken: list[str] = []  # symbolic links named like the table whose target does not exist
    for entry in entries:
        form = _table_form(name, entry)
        is_dir = (root / entry).is_dir()
        if form is not None and ((root / entry).is_file() or (is_dir and form == ".parquet")):
            usable.append(entry)
        elif form is not None and (root / entry).is_symlink() and not (root / entry).exists():
            broken.append(f"{entry} is a broken link: it points to {os.readlink(root / entry)!r}, which does "
                          "not exist; fix the link or put the file itself in the folder")
        elif form is not None and is_dir:
            unread.append(f"{entry} is a folder, not read: a folder is read only as Parquet ({name}.parquet); "
                          f"write one file {name}{form} or a Parquet folder")
    if len(usable) > 1:
        listed = (f"both {usable[0]} and {usable[1]} are" if len(usable) == 2
                  else ", ".join(usable[:-1]) + f" and {usable[-1]} are all")
        out.add("fatal", name, None, "both_formats", f"{name}: {listed} present in {root}; keep only one")
        return None
    if usable:
        return root / usable[0]
    if broken:
        text = "; ".join(broken)
        if name in REQUIRED_TABLES:
            out.add("fatal", name, None, "broken_link", f"{name}: {text}")
        else:
            out.add("warning", name, None, "broken_link", f"{name}: {text}; the shop is loaded without {name}",
                    action="table not loaded")
        return None
    for entry in entries:
        if _table_form(name, entry) is not None or not _near_name(name, entry):
            continue
        if any(_table_form(other, entry) is not None for other in TABLE_NAMES):
            continue  # another table's file (users.csv is no near miss of "user")
        low = entry.lower()
        if low.split(".", 1)[0] == name:
            unread.append(f"{entry} is not read: a table is read from {_expected(name)}; "
                          f"save it as {name}.csv or {name}.parquet")
        else:
            ext = next((e for e in sorted(_FORMATS, key=len, reverse=True) if low.endswith(e)), None)
            fix = f"rename it to {name}{ext}" if ext else f"save it as {name}.csv or {name}.parquet"
            unread.append(f"{entry} is not read: the table must be named {_expected(name)}; "
                          f"{fix} if it holds the {name} table")
    found = "".join(f"; {text}" for text in unread)
    if name in REQUIRED_TABLES:
        out.add("fatal", name, None, "missing_table",
                f"{name}: missing required table (expected {_expected(name)} in {root}){found}")
    elif unread:
        out.add("warning", name, None, "not_read",
                f"{name}: {found[2:]}; the shop is loaded without {name}", action="table not loaded")
    return None


def _open_bytes(file: Path) -> IO[bytes]:
    """The bytes of a table file, decompressed for ``.csv.gz``."""
    if file.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(file, "rb"))
    return open(file, "rb")


class _Scan(NamedTuple):
    """What one pass over a CSV file's bytes found (:func:`_scan_bytes`)."""

    problem: str | None  # why it is not UTF-8 text (the first offending line and column), or None
    lines: int  # lines (``\n`` counted; a last line without one counted too)
    quoted: bool  # it holds a quote character (only then can a value span lines)


def _scan_bytes(file: Path) -> _Scan:
    """One pass over a CSV file's bytes: is it UTF-8 text, how many lines, any quote?

    A file with as many lines as records (header included) has no blank line and no value spanning
    lines: its row numbers need no mapping (see :func:`_csv_layout`). Counting costs a few
    milliseconds per 30 MB (numpy; ``bytes.count`` is three times slower).
    """
    with _open_bytes(file) as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return _Scan("it is UTF-16 text: it starts with a UTF-16 byte-order mark; save the file as UTF-8",
                         0, False)
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines, last, quoted = 0, b"\n", False
        try:  # the common case, a chunk at a time; the lines are looked at only when it fails
            for chunk in iter(lambda: f.read(1 << 20), b""):
                decoder.decode(chunk)
                lines += int(np.count_nonzero(np.frombuffer(chunk, dtype=np.uint8) == 10))
                quoted = quoted or b'"' in chunk
                last = chunk[-1:]
            decoder.decode(b"", final=True)
            return _Scan(None, lines + (last != b"\n"), quoted)
        except UnicodeDecodeError:
            f.seek(0)
        header: list[str] | None = None
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError:
                cells = next(csv.reader([raw.decode("utf-8", errors="replace")]), [])
                bad = next((k for k, cell in enumerate(cells) if "\ufffd" in cell), None)
                where = ""
                if bad is not None and header is not None and bad < len(header):
                    where = f", column {header[bad].strip()!r}"
                return _Scan(f"line {line}{where} is not valid UTF-8 text; save the file as UTF-8", 0, False)
            if header is None:
                header = next(csv.reader([text]), [])
    return _Scan(None, 0, False)


def _open_text(file: Path) -> IO[str]:
    """A CSV file as text (``.csv.gz`` decompressed; byte-order mark dropped; line ends as written)."""
    if file.name.lower().endswith(".gz"):
        return cast(IO[str], gzip.open(file, "rt", encoding="utf-8-sig", errors="replace", newline=""))
    return open(file, encoding="utf-8-sig", errors="replace", newline="")


class _Head(NamedTuple):
    """The start of a CSV file (:func:`_csv_head`)."""

    header: list[str]  # the column names as written (repeats kept)
    line: int  # the file line the header ends on
    sep: str | None  # the separator an Excel "sep=X" first line names (that line is not the header)


def _csv_head(file: Path) -> _Head:
    """The column names of a CSV file's first record, and Excel's ``sep=,`` hint line if line 1 is one.

    Blank lines before the header are skipped, as pyarrow does. Excel writes ``sep=,`` (or ``sep=;``)
    as line 1 of a CSV file to tell itself the separator; the header is then the next record.
    """
    with _open_text(file) as f:
        reader = csv.reader(f)
        sep = None
        for rec in reader:
            if not rec:
                continue
            text = ",".join(rec)
            if reader.line_num == 1 and sep is None and len(text) == 5 and text[:4].lower() == "sep=":
                sep = text[4]
                continue
            return _Head(rec, reader.line_num, sep)
    return _Head([], 0, sep)


def _other_delimiter(header: list[str], required: tuple[str, ...]) -> str | None:
    """The separator (``;``, tab, ``|``) a header seems written with, when it lacks the required
    columns: the header split at it names a required column, or it is one name holding it."""
    if any(col.strip() in required for col in header):
        return None
    line = ",".join(header)
    for sep in _OTHER_DELIMITERS:
        if sep not in line:
            continue
        names = {part.strip().strip('"') for part in line.split(sep)}
        if names & set(required) or len(header) == 1:
            return sep
    return None


def _line_breaks(text: str) -> int:
    """How many line breaks (``\r\n``, ``\n`` or ``\r``) ``text`` holds."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


class _Merged(NamedTuple):
    """A value holding line breaks where none belongs (see :func:`_csv_layout`)."""

    row: int  # its row number (blank lines counted)
    column: int  # 0-based position in the header
    first_line: int  # the file line its (unclosed) quote opened on
    last_line: int  # the file line it ends on
    value: str
    to_eof: bool  # the quote is never closed: the value runs to the end of the file
    sure: bool  # an id/time/number column or the end of the file (fatal); else rows inside (warning)


RAGGED_SHOWN = 5  # rows of the wrong width named in the message


class _CsvLayout(NamedTuple):
    """Where a CSV file's records lie, from one pass of Python's csv reader (see :func:`_csv_layout`)."""

    rows: np.ndarray  # per data record (blank lines skipped): its row number, blank lines counted
    blank_lines: int  # blank lines skipped (before the header too)
    first_blank: int | None  # the file line of the first
    merged: list[_Merged]  # values that swallowed lines, in file order
    ragged: list[tuple[int, int, str, int]]  # the first RAGGED_SHOWN records not of the header's width:
    #                                          (first line, values, their text joined by commas, row)
    n_ragged: int  # how many records are not of the header's width
    n_trailing: int  # of those, how many have one value more than the header, an empty last one


def _looks_merged(value: str, one_line: set[int], width: int) -> bool:
    """True when a multi-line value of free text holds a whole row of the file: a line inside it
    that splits into ``width`` fields whose ids, times and numbers (``one_line`` positions) are
    single words, at least one of them given. Lines of a description with line breaks do not, as
    a rule; the rows an unclosed quote swallowed do."""
    parts = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for part in parts[1:-1]:  # the last one is cut by the quote that closed the value
        fields = next(csv.reader([part]), [])
        if len(fields) != width:
            continue
        words = [fields[k].strip() for k in one_line]
        if any(words) and not any(len(word.split()) > 1 for word in words):
            return True
    return False


def _numbered_records(file: Path, skip: int = 0) -> Iterator[tuple[list[str], int, int, int]]:
    """A CSV file's records through Python's csv reader (no field size limit), numbered as the
    report numbers rows: ``(record, row, first line, last line)`` for each record under the header
    and ``([], row, first line, last line)`` for each blank one, anywhere. ``row`` counts every
    record under the header, blank lines included, as a spreadsheet shows them (a value with
    quoted line breaks is one row); the first ``skip`` records (Excel's ``sep=,`` line) come before
    the header and are not rows. ``csv.Error`` passes to the caller."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a merged value may be as long as the file
    try:
        with _open_text(file) as f:
            reader = csv.reader(f)
            seen_header, row, line = False, 0, 0
            for rec in reader:
                start, line = line + 1, reader.line_num
                if not rec:
                    row += seen_header
                    yield rec, row, start, line
                elif skip:
                    skip -= 1
                elif not seen_header:
                    seen_header = True
                else:
                    row += 1
                    yield rec, row, start, line
    finally:
        csv.field_size_limit(limit)


def _csv_layout(file: Path, one_line: set[int], width: int, skip: int = 0) -> _CsvLayout | None:
    """Map a CSV file's records to row numbers and find the values an unclosed quote merged.

    Only called when the file's line count is not its record count plus one (blank lines, quoted
    line breaks, an unclosed quote) or when pyarrow could not parse it: it costs a pass of Python's
    csv reader, which splits records as pyarrow does. ``row`` counts every record under the header,
    blank lines included, as a spreadsheet shows them (a value with quoted line breaks is one row).

    An unclosed quote swallows the lines after it into one value, up to the next quote or the end
    of the file. Found: a line break in a column that never holds one (``one_line``: 0-based header
    positions of ids, times, numbers, paths) and a quote still open at the end of the file (sure);
    a value of free text whose lines look like whole rows of ``width`` fields (probably). Records
    of another width than ``width`` are counted, the first :data:`RAGGED_SHOWN` kept. The first
    ``skip`` records (Excel's ``sep=,`` line) come before the header and are not rows
    (:func:`_numbered_records`). ``None`` when Python's reader fails on the file (the rows are then
    numbered as pyarrow read them).
    """
    rows: list[int] = []
    merged: list[_Merged] = []
    ragged: list[tuple[int, int, str, int]] = []
    n_ragged = n_trailing = 0
    blank, first_blank = 0, None
    line = 0
    last: tuple[list[str], int, int] | None = None  # the last record, its row and first line
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the last record's check below reads a merged value whole too
    try:
        for rec, row, start, line in _numbered_records(file, skip):
            if not rec:
                blank += 1
                first_blank = first_blank or start
                continue
            rows.append(row)
            last = (rec, row, start)
            if len(rec) != width:
                n_ragged += 1
                n_trailing += len(rec) == width + 1 and not rec[-1].strip()
                if len(ragged) < RAGGED_SHOWN:
                    ragged.append((start, len(rec), ",".join(rec), row))
            if line > start:  # the record spans lines: which values hold the breaks
                at = start
                for k, value in enumerate(rec):
                    n = _line_breaks(value)
                    if n and (k in one_line or _looks_merged(value, one_line, width)):
                        merged.append(_Merged(row, k, at, min(at + n, line), value, False, k in one_line))
                    at += n
        if last is not None and line > last[2]:
            rec, last_row, start = last
            with _open_text(file) as f:  # is the last record's last quote ever closed?
                text = "".join(part for k, part in enumerate(f, start=1) if k >= start)
            try:
                list(csv.reader(io.StringIO(text, newline=""), strict=True))
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    k = len(rec) - 1
                    at = start + sum(_line_breaks(v) for v in rec[:k])
                    merged = [m for m in merged if (m.row, m.column) != (last_row, k)]
                    merged.append(_Merged(last_row, k, at, line, rec[k], True, True))
    except csv.Error as exc:
        logger.debug("%s: rows not mapped to lines (%s)", file, exc)
        return None
    finally:
        csv.field_size_limit(limit)
    return _CsvLayout(np.asarray(rows, dtype=np.int64), blank, first_blank, merged, ragged, n_ragged, n_trailing)


def _report_merged(
    layout: _CsvLayout, file: Path, name: str, header: list[str], total: int, out: _Collector
) -> bool:
    """Report the values an unclosed quote merged lines into, one issue per column: fatal
    ``unclosed_quote`` where sure, a warning where probable. True when any is fatal."""
    by_column: dict[tuple[bool, int], list[_Merged]] = {}
    for m in layout.merged:
        by_column.setdefault((m.sure, m.column), []).append(m)
    for (sure, k), found in sorted(by_column.items(), key=lambda kv: (not kv[0][0], kv[1][0].first_line)):
        first = found[0]
        col = header[k].strip() if k < len(header) else None
        where = f"{name}.{col}" if col else f"{name} (column {k + 1})"
        shown = _cut(first.value)
        eof = " (the end of the file)" if first.to_eof else ""
        what = f"(first: {shown!r}, row {first.row})"
        if len(found) > 1:
            what = f"({len(found):,} values; first: {shown!r}, row {first.row})"
        lines = f"lines {first.first_line} to {first.last_line}{eof}"
        if sure:
            out.add("fatal", name, col, "unclosed_quote",
                    f'{where}: an unclosed quote (") on line {first.first_line} of {file.name} merged '
                    f"{lines} into one value {what}; close the quote or remove it",
                    count=len(found), total=total, first_row=first.row, first_value=shown)
        else:
            action = "kept as read"
            out.add("warning", name, col, "unclosed_quote",
                    f'{where}: a quoted value on {lines} of {file.name} holds lines that look like whole '
                    f'rows: probably an unclosed quote (") on line {first.first_line} merged them into one '
                    f"value {what}; {action}: close the quote if so",
                    count=len(found), total=total, first_row=first.row, first_value=shown, action=action)
    return any(sure for sure, _ in by_column)


def _report_ragged(layout: _CsvLayout, file: Path, name: str, width: int, out: _Collector) -> bool:
    """Record a fatal issue naming the rows of ``file`` whose number of values is not the header's
    ``width`` (by line, with what they hold), as :func:`_csv_layout` found them (Python's csv
    reader splits records as pyarrow does); ``False`` when every row has ``width`` values."""
    bad, n = layout.ragged, layout.n_ragged
    if not bad:
        return False
    named = "; ".join(f"line {line} has {values} ({_cut(text)!r})" for line, values, text, _ in bad)
    more = f"; and {n - len(bad):,} more" if n > len(bad) else ""
    if layout.n_trailing == n:
        advice = (f"{'each ends' if n > 1 else 'it ends'} in a comma with nothing after it (a trailing comma, one "
                  "empty value more than the header names): remove the trailing comma"
                  f"{'s' if n > 1 else ''}")
    else:
        advice = "a value that holds a comma must be in double quotes"
    out.add("fatal", name, None, "ragged_rows",
            f"{name}: {n:,} row{'s' if n > 1 else ''} of {file.name} {'do' if n > 1 else 'does'} not have the "
            f"header's {width} values: {named}{more}; {advice}",
            count=n, first_row=bad[0][3], first_value=bad[0][2])
    return True


def _longest_value(file: Path, header: list[str], skip: int) -> tuple[int, str, int, str]:
    """The longest value of a CSV file: ``(row, column name, length in characters, its start)``.

    Rows are numbered as :func:`_csv_layout` does (blank lines counted). Only called when a row is
    too long for pyarrow's largest block: a pass of Python's csv reader over the file.
    """
    best = (0, "", -1, "")
    for rec, row, _, _ in _numbered_records(file, skip):
        if not rec:
            continue
        k = max(range(len(rec)), key=lambda j: len(rec[j]))
        if len(rec[k]) > best[2]:
            col = header[k].strip() if k < len(header) else f"column {k + 1}"
            best = (row, col, len(rec[k]), rec[k][:40])
    return best


def _cut(text: str, most: int = 60) -> str:
    """``text`` for a message, at most ``most`` characters: a longer one cut, ending in ``...``."""
    return text if len(text) <= most else text[:most - 3] + "..."


def _read_csv(
    file: Path, name: str, header: list[str], quoted: bool = True, *, skip: int = 0,
    names: list[str] | None = None, block_size: int | None = None,
) -> pd.DataFrame:
    """A CSV file (``.csv.gz`` decompressed) -> frame; only an empty cell is missing.

    The table's own columns (all columns of ``users`` and ``devices``) are read as text; the others
    are left to pyarrow's type inference. In a file with quotes (``quoted``), quoted line breaks
    are read as part of the value also where a value straddles pyarrow's 1 MB blocks: without
    ``newlines_in_values`` such a value failed to parse, and an unclosed quote silently dropped the
    rest of its block. That option costs about half the read time, so a file without any quote is
    read without it.

    ``skip`` lines are skipped before the header (Excel's ``sep=,`` line); with ``names`` the
    columns are named so and the first ``skip`` lines (the header's included) are skipped instead.
    ``block_size`` is pyarrow's (default 1 MB): a row must fit in one block.
    """
    text = set(_TEXT_COLUMNS[name])
    types = {raw: pa.string() for raw in (names or header) if name in _FEATURE_TABLES or raw.strip() in text}
    convert = pa_csv.ConvertOptions(
        column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True,
    )
    parse = pa_csv.ParseOptions(newlines_in_values=quoted)
    read = pa_csv.ReadOptions(skip_rows=skip, column_names=names)
    if block_size is not None:
        read.block_size = block_size
    gz = file.name.lower().endswith(".gz")
    with pa.input_stream(str(file), compression="gzip" if gz else None) as stream:
        table = pa_csv.read_csv(stream, read_options=read, convert_options=convert, parse_options=parse)
    # columns with no value at all are typed null by pyarrow: float64 NaN, as pandas reads them
    for k, typ in enumerate(table.schema.types):
        if pa.types.is_null(typ):
            table = table.set_column(k, table.schema.field(k).name, table.column(k).cast(pa.float64()))
    # one chunk a column, as pandas' own pyarrow reader gives: the reader's ~1 MB blocks would stay
    # chunks of every string column, and each string operation on them (the id checks) 4x slower
    return table.combine_chunks().to_pandas()


def _straddles(exc: BaseException) -> bool:
    """True for pyarrow's error about a row longer than its block ("straddling object ...")."""
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)


def _read_csv_sized(
    file: Path, name: str, header: list[str], quoted: bool, *, skip: int = 0, names: list[str] | None = None,
) -> pd.DataFrame:
    """:func:`_read_csv`, read again with larger blocks (up to :data:`_MAX_BLOCK`) while a row is
    longer than a block. A file whose rows fit is read once, with pyarrow's default blocks."""
    block: int | None = None
    while True:
        try:
            return _read_csv(file, name, header, quoted, skip=skip, names=names, block_size=block)
        except pa.ArrowInvalid as exc:
            current = block or pa_csv.ReadOptions().block_size
            if not _straddles(exc) or current >= _MAX_BLOCK:
                raise
            block = min(_MAX_BLOCK, current * _BLOCK_GROWTH)
            logger.debug("%s: a row is longer than pyarrow's block; reading again with %d MB blocks",
                         file, block >> 20)


class _NoParts(Exception):
    """A Parquet folder without part files (what it holds instead in ``args[0]``)."""


def _read_parquet(file: Path, name: str) -> pd.DataFrame:
    """A Parquet file, or a folder of Parquet files read as one dataset (Spark's ``part-*`` files in
    name order; files starting with ``_`` or ``.``, such as ``_SUCCESS``, skipped) -> frame.

    Integer id columns are read as their exact decimal digits (``9007199254740993`` stays so even
    with a null in the column, where pandas would go through float64).
    """
    parts = [file] if not file.is_dir() else [
        p for p in sorted(file.rglob("*")) if p.is_file()
        and not any(part.startswith(("_", ".")) for part in p.relative_to(file).parts)]
    if not parts:  # pyarrow reads such a folder as a table without columns
        raise _NoParts(sorted(str(p.relative_to(file)) for p in file.rglob("*")))
    for part in parts:  # each file's schema (its footer only): a folder's dataset reads one and may drop a repeat
        names = pq.read_schema(part).names
        if len(set(names)) < len(names):
            # pyarrow's dataset reader refuses a repeated column name with a message about FieldRefs:
            # read that file as it is, so that :func:`_read`'s header check names the column
            return pq.ParquetFile(part).read().to_pandas()
    table = pq.read_table(file)
    df = table.to_pandas()
    for column in table.schema:
        if (column.name.strip() in _EXACT_TEXT_COLUMNS[name] and pa.types.is_integer(column.type)
                and list(df.columns).count(column.name) == 1):
            df[column.name] = table.column(column.name).cast(pa.string()).to_pandas().to_numpy()
    return df


def _read(file: Path, name: str, out: _Collector) -> pd.DataFrame | None:
    """Read one table file (or Parquet folder); on failure record a fatal issue and return ``None``.

    The frame's index is the row number minus 1 (:func:`_csv_layout`: blank lines counted).
    """
    is_csv = _table_form(name, file.name) != ".parquet"
    header: list[str] = []
    layout: _CsvLayout | None = None
    trailing = False  # every data row ends in an empty value the header does not name
    try:
        if is_csv:
            with _open_bytes(file) as f:
                empty = not f.read(1)
            if empty:
                out.add("fatal", name, None, "empty_file",
                        f"{name}: {file.name} is empty (no header and no rows)")
                return None
            scan = _scan_bytes(file)
            if scan.problem is not None:
                out.add("fatal", name, None, "unreadable",
                        f"{name}: could not read {file.name} ({scan.problem})")
                return None
            head = _csv_head(file)
            header, skip = head.header, int(head.sep is not None)
            if head.sep is not None and head.sep != ",":
                what = _OTHER_DELIMITERS.get(head.sep, repr(head.sep))
                out.add("fatal", name, None, "wrong_delimiter",
                        f"{name}: line 1 of {file.name} is {'sep=' + head.sep!r}, Excel's note that values are "
                        f"separated by {what}; a table is read with commas between values: save it as "
                        "comma-separated CSV")
                return None
            if head.sep is not None:
                out.add("repaired", name, None, "excel_sep_line",
                        f"{name}: line 1 of {file.name} is 'sep=,', Excel's note on the separator, not the header; "
                        f"skipped it (the header is line {head.line})", count=1, action="skipped the line")
            sep = _other_delimiter(header, REQUIRED_COLUMNS[name])
            if sep is not None:
                out.add("fatal", name, None, "wrong_delimiter",
                        f"{name}: {file.name} seems to use {_OTHER_DELIMITERS[sep]} between values, not commas "
                        f"(header: {_cut(','.join(header))!r}); save it as comma-separated CSV")
                return None
            one_line = {k for k, col in enumerate(header) if col.strip() in _ONE_LINE_COLUMNS[name]}
            try:
                df = _read_csv_sized(file, name, header, scan.quoted, skip=skip)
            except Exception as exc:
                # an unclosed quote often ends in a parse error (a row with too few columns): say so
                layout = _csv_layout(file, one_line, len(header), skip)
                if layout is not None and _report_merged(layout, file, name, header, 0, out):
                    return None
                if (layout is not None and len(layout.rows) and layout.n_trailing == len(layout.rows)
                        and not _straddles(exc)):
                    # every data row ends in a comma: an empty column the header does not name
                    trailing = True
                    names = [*header, "\x00trailing"]
                    df = _read_csv_sized(file, name, header, scan.quoted, skip=head.line, names=names)
                    df = df.drop(columns="\x00trailing")
                # else: rows of the wrong width, named, from the same pass over the file
                elif layout is not None and _report_ragged(layout, file, name, len(header), out):
                    return None
                elif _straddles(exc):
                    row, col, size, start = _longest_value(file, header, skip)
                    out.add("fatal", name, col, "value_too_large",
                            f"{name}.{col}: the value in row {row} of {file.name} is {size:,} characters long "
                            f"(first: {start + '...'!r}); a row may hold at most {_MAX_BLOCK >> 20} MB: "
                            "shorten the value or leave it out", count=1, first_row=row, first_value=start)
                    return None
                else:
                    raise
            if scan.lines != len(df) + 1 + skip:  # blank lines or values spanning lines: map rows to the file
                layout = layout or _csv_layout(file, one_line, len(header), skip)
                if layout is not None and _report_merged(layout, file, name, header, len(df), out):
                    return None
            if trailing:
                n = len(df)
                line, first = (layout.ragged[0][0], layout.ragged[0][3]) if layout is not None else (0, 1)
                out.add("repaired", name, None, "trailing_comma",
                        f"{name}: every data row of {file.name} ends in a comma (one empty value more than the "
                        f"header's {len(header)} names; first: line {line}); dropped those {n:,} empty values",
                        count=n, total=n, first_row=first, action=f"dropped those {n:,} empty values")
        else:
            try:
                df = _read_parquet(file, name)
            except _NoParts as none:
                found = list(none.args[0])
                held = f"it holds only {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}" if found \
                    else "it is empty"
                out.add("fatal", name, None, "no_part_files",
                        f"{name}: the folder {file.name} has no Parquet part files ({held}); the job that wrote "
                        "it wrote no data, or its part-*.parquet files were not copied")
                return None
    except Exception as exc:  # any parser/IO error means the same thing to the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out.add("fatal", name, None, "unreadable",
                f"{name}: could not read {file.name} ({type(exc).__name__}: {detail[:200]})")
        return None
    if is_csv:
        # pyarrow turns non-UTF-8 cells of inferred columns into bytes instead of failing.
        for col in df.columns[[pd.api.types.is_object_dtype(t) for t in df.dtypes]]:
            if df[col].map(lambda v: isinstance(v, bytes)).any():
                out.add("fatal", name, str(col).strip(), "unreadable",
                        f"{name}: could not read {file.name} (column {str(col).strip()!r} is not valid "
                        "UTF-8 text; save the file as UTF-8)")
                return None
    # Parquet may carry an index; row numbers are always positions in the file ...
    df = df.reset_index(drop=True)
    if layout is not None and len(layout.rows) != len(df):
        logger.debug("%s: %d records found, pyarrow read %d; rows not mapped", file, len(layout.rows), len(df))
    elif layout is not None:
        df.index = pd.Index(layout.rows - 1)  # ... and count a CSV file's blank lines
        if layout.blank_lines:
            n = layout.blank_lines
            out.add("info", name, None, "blank_lines",
                    f"{name}: {file.name} has {n:,} blank line{'s' if n > 1 else ''} (first: line "
                    f"{layout.first_blank}); skipped, and counted in the row numbers as a spreadsheet "
                    "shows them", count=n, total=len(df), action="skipped")
    df = _unnamed_columns(df, file, name, out)
    if df is None:
        return None
    # The header as written (a name may repeat, or differ only in surrounding spaces).
    names = [str(col).strip() for col in df.columns]
    for col in dict.fromkeys(c for k, c in enumerate(names) if c in names[:k]):
        at = [k + 1 for k, c in enumerate(names) if c == col]
        out.add("fatal", name, col, "duplicate_column",
                f"{name}.{col}: the {'header' if is_csv else 'schema'} of {file.name} names this column "
                f"{len(at)} times (columns "
                f"{', '.join(map(str, at))}, counting from 1; leading and trailing spaces ignored); keep one")
    if len(set(names)) < len(names):
        return None
    df.columns = names
    return df


def _unnamed_columns(df: pd.DataFrame, file: Path, name: str, out: _Collector) -> pd.DataFrame | None:
    """Drop columns without a name (blank header cell) that hold no value, reported (info): the
    empty trailing columns of a spreadsheet export. One that holds a value is fatal (``None``)."""
    names = [str(col).strip() for col in df.columns]
    empty: list[int] = []
    holding = False
    for k in (k for k, col in enumerate(names) if col == ""):
        text = _as_text(df.iloc[:, k])
        present = ~_blank(text)
        if not present.any():
            empty.append(k)
            continue
        holding = True
        pos = int(np.argmax(present.to_numpy(dtype=bool)))
        row, value = int(df.index[pos]) + 1, str(text.iloc[pos])
        out.add("fatal", name, None, "unnamed_column",
                f"{file.name}: column {k + 1} has no name but holds values (first: {value!r}, row {row}); "
                "name it or remove it", count=int(present.sum()), total=len(df), first_row=row,
                first_value=value)
    if empty:
        n = len(empty)
        cols = f"column{'s' if n > 1 else ''} {', '.join(str(k + 1) for k in empty)}"
        action = "dropped the column" + ("s" if n > 1 else "")
        out.add("info", name, None, "unnamed_empty_column",
                f"{file.name}: {n} column{'s' if n > 1 else ''} without a name and without values dropped "
                f"({cols})", count=n, total=len(df), action=action)
        df = df.iloc[:, [k for k in range(len(names)) if k not in set(empty)]]
    return None if holding else df


# ---------------------------------------------------------------------------------------------
# per-column and per-table checks


def _clean_ids(
    df: pd.DataFrame, table: str, column: str, total: int, out: _Collector, unit: str,
    *, drop_missing: bool = True,
) -> pd.DataFrame:
    """Normalise an id column to stripped text; drop (and count) rows where it is blank."""
    text = _as_text(df[column])
    stripped = text.str.strip()
    missing = stripped.isna() | (stripped == "")
    out.rows("repaired", table, column, "whitespace", ~missing & (stripped != text), text, total,
             "values had leading/trailing spaces", "stripped them")
    if drop_missing:
        out.rows("repaired", table, column, "missing_id", missing, None, total,
                 "values are missing", "dropped those {n} " + unit)
        df = df.loc[~missing].copy()
        df[column] = stripped[~missing].astype("str")
    else:
        df[column] = stripped.fillna("").astype("str")
    return df


def _nested_key(value: Any) -> Any:
    """A Parquet list, struct or map value as a hashable value equal only to an equal one: every
    element kept (``repr`` of a numpy array elides all but the ends of a long one, so two arrays
    differing in the middle would compare equal); other values as they are."""
    if isinstance(value, np.ndarray):
        return ("array", tuple(_nested_key(v) for v in value.ravel().tolist()), value.shape)
    if isinstance(value, dict):
        return ("map", tuple(sorted(((str(k), _nested_key(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_nested_key(v) for v in value))
    if isinstance(value, set):
        return ("set", tuple(sorted(map(repr, value))))
    return value


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the values pandas cannot hash or compare (a Parquet list, struct or map column's
    arrays and dicts) as hashable keys of their whole content (:func:`_nested_key`), so that whole
    rows can be compared."""
    cols = {}
    for col in df.columns:
        series = df[col]
        if pd.api.types.is_object_dtype(series) and series.map(
                lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray))).any():
            series = series.map(_nested_key)
        cols[col] = series
    return pd.DataFrame(cols, index=df.index)


def _may_repeat(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A cheap superset of the rows equal to another row: those whose ``columns`` hash alike.

    The values' codes are folded into one uint64 per row (wrapping: unequal rows may collide,
    equal ones never differ), and a sort finds the keys held more than once. Costs a few tenths of
    a second for two million events, where comparing every column of every row takes seconds.
    """
    key = np.zeros(len(df), dtype=np.uint64)
    for col in columns:
        values = df[col]
        if pd.api.types.is_integer_dtype(values):
            codes = values.to_numpy(dtype=np.int64).view(np.uint64)
        else:
            codes = pd.factorize(values, use_na_sentinel=False)[0].astype(np.uint64)
        key = key * np.uint64(0x9E3779B97F4A7C15) + codes
    ordered = np.sort(key)
    held = ordered[1:][ordered[1:] == ordered[:-1]]
    if not held.size:
        return np.zeros(len(df), dtype=bool)
    return pd.Series(key).isin(np.unique(held)).to_numpy(dtype=bool)


def _repeats(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Rows equal in every column to an earlier row: ``(mask, position of that earlier row)``."""
    group = _hashable(df).groupby(list(df.columns), dropna=False, sort=False).ngroup().to_numpy()
    first = np.full(int(group.max()) + 1 if len(group) else 0, -1, dtype=np.int64)
    order = np.arange(len(group))
    first[group[::-1]] = order[::-1]  # the earliest row of each group
    earlier = first[group]
    return pd.Series(earlier != order, index=df.index), pd.Series(earlier, index=df.index)


def _drop_repeated_rows(df: pd.DataFrame, table: str, column: str, total: int, out: _Collector) -> pd.DataFrame:
    """Drop (repaired) rows of ``users`` / ``items`` / ``devices`` equal in every column to an earlier
    row with the same id: the same record exported twice. Rows that share an id but differ are left
    to :func:`_check_unique` (fatal). Only rows whose id repeats are compared."""
    shared = df[column].duplicated(keep=False)
    if not shared.any():
        return df
    same, earlier = _repeats(df.loc[shared])
    if not same.any():
        return df
    count = int(same.sum())
    pos = int(np.argmax(same.to_numpy()))
    sub = df.loc[shared]
    row, first = int(sub.index[pos]) + 1, int(sub.index[int(earlier.iloc[pos])]) + 1
    value = sub[column].iloc[pos]
    action = f"dropped those {count:,} repeats"
    out.add("repaired", table, column, "duplicate_row",
            f"{table}.{column}: {count:,} of {total:,} rows repeat an earlier row exactly, every column the same "
            f"(first: {value!r}, row {row}, same as row {first}); {action}",
            count=count, total=total, first_row=row, first_value=value, action=action)
    return df.drop(index=same[same].index)


def _check_unique(df: pd.DataFrame, table: str, column: str, total: int, out: _Collector) -> None:
    dup = df[column].duplicated(keep="first")
    if not dup.any():
        return
    count = int(dup.sum())
    pos = int(np.argmax(dup.to_numpy()))
    value = df[column].iloc[pos]
    first_seen = int(df.index[int(np.argmax((df[column] == value).to_numpy()))]) + 1
    row = int(df.index[pos]) + 1
    out.add("fatal", table, column, "duplicate_id",
            f"{table}.{column}: {count:,} of {total:,} rows repeat an id with other values (first: {value!r}, "
            f"row {row}, already at row {first_seen}); ids must be unique",
            count=count, total=total, first_row=row, first_value=value)


def _check_not_empty(df: pd.DataFrame, table: str, total: int, out: _Collector) -> bool:
    if len(df):
        return True
    if total == 0:
        out.add("fatal", table, None, "empty_table", f"{table}: table has no rows")
    else:
        out.add("fatal", table, None, "empty_after_repairs",
                f"{table}: no rows left after repairs (all {total:,} rows dropped; see the issues above)",
                count=total, total=total)
    return False


def _check_images(items: pd.DataFrame, root: Path, total: int, out: _Collector) -> None:
    """Clear (set to "") image paths that escape the folder, are missing, or are not images."""
    paths = items["image"]
    url = paths.str.contains(_URL, regex=True)
    out.rows("repaired", "items", "image", "image_url", url, paths, total,
             "image values are URLs", 'set those {n} to "": URLs are not downloaded; an image must be a file '
             "in the tables folder, given by its path relative to the folder (e.g. img/123.jpg)")
    items.loc[url, "image"] = ""
    paths = items["image"]
    given = paths != ""
    if not given.any():
        return
    norm = paths[given].map(lambda p: posixpath.normpath(p.replace("\\", "/")))
    escapes = norm.map(
        lambda p: p.startswith("/") or p == ".." or p.startswith("../") or (len(p) > 1 and p[1] == ":")
    ).astype(bool)
    escapes_full = pd.Series(False, index=items.index)
    escapes_full[escapes.index] = escapes
    out.rows("repaired", "items", "image", "image_outside_folder", escapes_full, paths, total,
             "image paths point outside the tables folder", 'set those {n} to ""')

    # Each distinct file is checked once; the PIL check reads the header and verify()s it (a JPEG
    # is also decoded at 1/8 scale), which costs well under a millisecond for a small image.
    candidates = norm[~escapes]
    status: dict[str, str] = {}
    for rel in pd.unique(candidates.to_numpy()):
        full = os.path.join(root, rel)
        if not os.path.isfile(full):
            status[rel] = "missing"
            continue
        try:
            with Image.open(full) as img:
                jpeg = img.format == "JPEG"
                img.verify()
            if jpeg:  # verify() reads no JPEG data: decode it (at 1/8 scale, cheap) to catch a truncated file
                with Image.open(full) as img:
                    img.draft("RGB", (1, 1))
                    img.load()
            status[rel] = "ok"
        except Exception:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
            status[rel] = "not_image"
    state = pd.Series("ok", index=items.index)
    state[candidates.index] = candidates.map(status)
    out.rows("repaired", "items", "image", "image_missing", state == "missing", paths, total,
             "image files do not exist", 'set those {n} to ""')
    out.rows("repaired", "items", "image", "image_unreadable", state == "not_image", paths, total,
             "image files are not readable images", 'set those {n} to ""')
    bad = escapes_full | (state != "ok")
    items.loc[bad, "image"] = ""


def _yyyymmdd(secs: pd.Series, raw: pd.Series) -> pd.Series:
    """True where an epoch value (``secs``, parsed from ``raw``) was an 8-digit whole number that
    reads as a date (``20230201``: 1970-08-23 as seconds).

    Only when every such number in the column is a date from 1900 to 2100: seconds counted from
    some other origin also hold numbers that are no dates (``20231399``), and are not flagged.
    """
    out = pd.Series(False, index=raw.index)
    near = ((secs >= 1e7) & (secs < 1e8)).to_numpy(dtype=bool)  # 1970-04-26 .. 1973-03-03
    if not near.any() or pd.api.types.is_datetime64_any_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return out
    given = raw[near]
    if pd.api.types.is_numeric_dtype(given):
        vals = given.astype(np.float64)
        eight = vals == np.floor(vals)
    else:  # text: digits only, not an ISO date of 1971 (rows are few here: only values in range)
        text = _as_text(given).str.strip()
        eight = text.str.fullmatch(r"\d{8}(\.0*)?").fillna(False).astype(bool)
        vals = pd.to_numeric(text.where(eight), errors="coerce").astype(np.float64)
    if not eight.any():
        return out
    dates = pd.to_datetime(vals[eight].astype(np.int64).astype(str), format="%Y%m%d", errors="coerce")
    if not (dates.notna() & (dates.dt.year >= 1900) & (dates.dt.year <= 2100)).all():
        return out
    out.loc[eight[eight].index] = True
    return out


def _check_time_units(
    secs: pd.Series, raw: pd.Series, table: str, column: str, total: int, out: _Collector
) -> pd.Series:
    """``secs``, read in milliseconds when every one of them lies after the year 5000 as epoch
    seconds (repaired ``epoch_milliseconds``: a whole column so far out is in milliseconds, and as
    seconds it would break every time window, account age and temporal split); else as given, with
    a warning about epoch values in a likely wrong unit (``epoch_milliseconds`` for some of them,
    ``yyyymmdd``: dates written as 8-digit numbers, 1970-1973 as seconds): a guess about only some
    values could move times silently."""
    ms = secs > _EPOCH_MS_HINT
    given = secs.notna()
    if given.any() and bool(ms[given].all()):
        out.rows("repaired", table, column, "epoch_milliseconds", ms, raw, total,
                 "values lie after year 5000 as epoch seconds, all of them: epoch milliseconds",
                 "read them as milliseconds (divided by 1,000)")
        return np.floor(secs / 1000.0)
    out.rows("warning", table, column, "epoch_milliseconds", ms, raw, total,
             "values lie after year 5000 as epoch seconds (milliseconds?)",
             "kept as given; if they are milliseconds, divide them by 1,000")
    out.rows("warning", table, column, "yyyymmdd", _yyyymmdd(secs, raw), raw, total,
             "values look like yyyymmdd dates, not epoch seconds",
             "kept as epoch seconds (1970-1973); write dates as ISO-8601, e.g. 2023-02-01")
    return secs


def _nested_columns(df: pd.DataFrame, table: str, total: int, out: _Collector) -> pd.DataFrame:
    """Drop (warning) the shop's own columns of ``users`` / ``devices`` that hold lists, structs or
    maps (Parquet nested types) instead of single values: as features they would be one-hot text
    of each whole list (``"['a' 'b']"``), meaningless."""
    known = set(REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table])
    nested = []
    for col in [c for c in df.columns if c not in known and pd.api.types.is_object_dtype(df[c])]:
        given = df[col].dropna()
        if len(given) and isinstance(given.iloc[0], (list, tuple, dict, set, np.ndarray)):
            nested.append(col)
    for col in nested:
        kind = "maps or structs" if isinstance(df[col].dropna().iloc[0], dict) else "lists"
        action = "dropped the column"
        out.add("warning", table, col, "nested_column",
                f"{table}.{col}: the column holds {kind}, several values in each row, not one; {action}, so it "
                "is left out of the features (flatten it into columns of single values to use it)",
                count=int(df[col].notna().sum()), total=total, action=action)
    return df.drop(columns=nested)


def _extra_columns(df: pd.DataFrame, table: str, total: int, out: _Collector) -> None:
    """Type the shop's own columns of ``users`` / ``devices`` as the features use them; report the rest.

    Number and boolean columns (Parquet) are used as they are. A text column (every CSV column) of
    numbers only, blanks allowed, becomes numbers (int64 when whole and complete, else float64), and
    one of ``true``/``false`` only becomes bool. A column whose non-blank values are nearly all
    numbers (at most :data:`_MOSTLY_NUMBERS` others, missing words such as ``NA`` not counted)
    becomes float64 too, the other values NaN (``not_numeric``, repaired). Other text is one-hot
    encoded by the features when it has at most ``MAX_CATEGORIES`` distinct values; with more, or
    with no value at all, the column stays in the table but adds nothing to the features (warning).
    """
    known = set(REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table])
    for col in [c for c in df.columns if c not in known]:
        raw = df[col]
        typed = pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw)
        text = None if typed else _as_text(raw).str.strip()
        present = raw.notna() if text is None else ~_blank(text)
        if not present.any():
            out.add("warning", table, col, "empty_column",
                    f"{table}.{col}: the column has no values; it adds nothing to the features",
                    total=total, action="column ignored")
            continue
        if text is None:
            continue  # numbers or booleans: used as they are
        low = text.str.lower()
        if present.all() and low.isin(["true", "false"]).all():
            df[col] = (low == "true").to_numpy(dtype=bool)
            continue
        nums = pd.to_numeric(text.where(present), errors="coerce").astype(np.float64)
        number = present & np.isfinite(nums)
        not_number = present & ~number
        if not not_number.any():
            whole = bool(number.all() and (nums == np.floor(nums)).all() and (nums.abs() < 2.0**53).all())
            df[col] = nums.astype(np.int64) if whole else nums
            continue
        n_other = int((not_number & ~low.isin(_MISSING_WORDS)).sum())
        n_number = int(number.sum())
        if n_number and n_other <= _MOSTLY_NUMBERS * (n_number + n_other):
            out.rows("repaired", table, col, "not_numeric", not_number, raw, total,
                     "values are not numbers", "set those {n} to NaN")
            df[col] = nums.where(number)
            continue
        distinct = int(text[present].nunique())
        if distinct <= MAX_CATEGORIES:
            continue  # a category column: one-hot encoded
        why = f"more than the {MAX_CATEGORIES} one-hot encoded"
        action = "the column is kept in the table but left out of the features"
        if n_number:
            mask = not_number.to_numpy(dtype=bool)
            pos = int(np.argmax(mask))
            row, value = int(df.index[pos]) + 1, str(raw.iloc[pos])
            out.add("warning", table, col, "not_used",
                    f"{table}.{col}: {int(mask.sum()):,} of {total:,} values are not numbers (first: {value!r}, "
                    f"row {row}), too many for a column of numbers, and it has {distinct:,} distinct values, "
                    f"{why}; {action}",
                    count=int(mask.sum()), total=total, first_row=row, first_value=value, action=action)
        else:
            out.add("warning", table, col, "not_used",
                    f"{table}.{col}: the column has {distinct:,} distinct text values, {why}; {action}",
                    count=int(present.sum()), total=total, action=action)


def _users(df: pd.DataFrame, total: int, out: _Collector) -> pd.DataFrame:
    df = _clean_ids(df, "users", "user_id", total, out, "users")
    df = _nested_columns(df, "users", total, out)
    df = _drop_repeated_rows(df, "users", "user_id", total, out)
    _check_unique(df, "users", "user_id", total, out)
    if "created_at" in df.columns:
        secs, bad, far = _parse_times(df["created_at"])
        out.rows("repaired", "users", "created_at", "unparsable", bad, df["created_at"], total,
                 "values could not be parsed as ISO-8601 or epoch seconds", "set those {n} to NaN")
        out.rows("repaired", "users", "created_at", "out_of_range", far, df["created_at"], total,
                 TIME_RANGE_TEXT, "set those {n} to NaN")
        secs = _check_time_units(secs, df["created_at"], "users", "created_at", total, out)
        df["created_at"] = secs.astype(np.float64)
    else:
        df["created_at"] = np.nan
    _extra_columns(df, "users", total, out)
    return df


def _items(df: pd.DataFrame, root: Path, total: int, out: _Collector) -> pd.DataFrame:
    df = _clean_ids(df, "items", "item_id", total, out, "items")
    df = _drop_repeated_rows(df, "items", "item_id", total, out)
    _check_unique(df, "items", "item_id", total, out)
    for col in _TEXT_ITEM_COLUMNS:
        df[col] = _as_text(df[col]).fillna("").astype("str") if col in df.columns else ""
    if "price" in df.columns:
        _parse_nonneg(df, "items", "price", total, out, "prices")
    else:
        df["price"] = np.nan
    if "image" in df.columns:
        df["image"] = _as_text(df["image"]).str.strip().fillna("").astype("str")
        _check_images(df, root, total, out)
    else:
        df["image"] = ""
    for col in (*_TEXT_ITEM_COLUMNS, "image"):
        df[col] = df[col].astype("str")
    return df


def _devices(df: pd.DataFrame, total: int, out: _Collector) -> pd.DataFrame:
    df = _clean_ids(df, "devices", "device_id", total, out, "devices")
    df = _nested_columns(df, "devices", total, out)
    df = _drop_repeated_rows(df, "devices", "device_id", total, out)
    _check_unique(df, "devices", "device_id", total, out)
    _extra_columns(df, "devices", total, out)
    return df


def _labels(df: pd.DataFrame, total: int, out: _Collector) -> pd.DataFrame:
    df = _clean_ids(df, "labels", "user_id", total, out, "labels")
    raw = df["is_fraud"]
    # Parquet booleans; with a null they arrive as objects (True, False, None), and the null is a
    # missing label, reported below like a blank one.
    booleans = pd.api.types.is_object_dtype(raw) and raw.notna().any() and bool(
        raw.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all())
    if pd.api.types.is_bool_dtype(raw) or booleans:
        vals = raw.astype("boolean").astype(np.float64)
    else:  # 0/1, 0.0/1.0, or true/false in any case (a CSV export of a boolean column)
        text = _as_text(raw).str.strip()
        low = text.str.lower()
        vals = pd.to_numeric(text.where(~low.isin(["true", "false"])), errors="coerce").astype(np.float64)
        vals = vals.mask(low == "true", 1.0).mask(low == "false", 0.0)
    bad = ~vals.isin([0.0, 1.0])
    out.rows("fatal", "labels", "is_fraud", "not_binary", bad, raw, total,
             "values are not 0/1", "labels must be 0 or 1")
    df["is_fraud"] = vals.where(~bad, 0).astype(np.int64)
    if "ring_id" in df.columns:
        df["ring_id"] = _as_text(df["ring_id"]).str.strip().fillna("").astype("str")
    else:
        df["ring_id"] = ""
    if not bad.any():
        dup = df["user_id"].duplicated(keep="first")
        conflict = dup & (df.groupby("user_id")["is_fraud"].transform("nunique") > 1)
        out.rows("fatal", "labels", "user_id", "conflicting_labels", conflict, df["user_id"], total,
                 "labels contradict an earlier label of the same user", "labels must agree")
        repeat = dup & ~conflict
        out.rows("repaired", "labels", "user_id", "duplicate_label", repeat, df["user_id"], total,
                 "labels repeat an earlier label of the same user", "dropped those {n} repeats")
        df = df.loc[~repeat]
    return df


def _events(
    df: pd.DataFrame,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    total: int,
    out: _Collector,
) -> pd.DataFrame:
    """Events checks, in order: missing ids, blank event_type, unknown users/items, timestamps;
    then exact repeats."""
    df = _clean_ids(df, "events", "user_id", total, out, "events")
    df = _clean_ids(df, "events", "item_id", total, out, "events")
    # event_type is trimmed and lower-cased: "Purchase", "purchase " and "PURCHASE" are one edge
    # type, and the one `shopgraph build` recommends by default ("purchase"). Done on the few
    # distinct values (factorised), not on each of millions of rows.
    etype = _as_text(df["event_type"])
    codes, uniques = pd.factorize(etype)
    given = np.asarray(uniques, dtype=object)
    stripped = np.array([v.strip() for v in given] + [""], dtype=object)  # [-1]: a missing value
    lower = np.array([v.lower() for v in stripped], dtype=object)
    index = df.index

    def per_row(flags: list[bool]) -> pd.Series:
        return pd.Series(np.asarray(flags + [False], dtype=bool)[codes], index=index)

    blank = per_row([not v for v in stripped[:-1]]) | pd.Series(codes < 0, index=index)
    out.rows("repaired", "events", "event_type", "missing_value", blank, None, total,
             "values are blank", "dropped those {n} events")
    out.rows("repaired", "events", "event_type", "whitespace", per_row([bool(b) and a != b for a, b in zip(given, stripped)]),
             etype, total, "values had leading/trailing spaces", "stripped them")
    changed = [bool(a) and a != b for a, b in zip(stripped[:-1], lower)]
    if any(changed):
        variants = [v for v, c in zip(stripped, changed) if c]
        shown = ", ".join(f"{v} -> {v.lower()}" for v in variants[:5]) + (", ..." if len(variants) > 5 else "")
        out.rows("repaired", "events", "event_type", "event_type_case", per_row(changed),
                 pd.Series(stripped[codes], index=index), total, "values are not in lower case",
                 f"lower-cased them ({shown}): event types are matched ignoring case")
    names, renumber = np.unique(lower, return_inverse=True)
    kept = ~blank.to_numpy()
    if not kept.all():  # a take of every column: only when some rows go (0.2 s for 3 M events)
        df = df.loc[kept]
    df = df.assign(event_type=pd.array(names, dtype="str")[renumber[codes[kept]]])

    base = df  # unknown ids are judged on the same events for users and items
    for col, ref, unit in (("user_id", users, "users"), ("item_id", items, "items")):
        if ref is None:
            continue
        known = ref[_ID_COLUMN[unit]]
        unknown = ~base[col].isin(known)
        fatal = _id_mismatch(base, unknown, col, known, unit, total, out)
        unknown = unknown.loc[df.index] if len(df) != len(base) else unknown
        if not fatal:
            out.rows("repaired", "events", col, "unknown_id", unknown, df[col], total,
                     f"events reference unknown {unit}", "dropped those {n} events")
        df = df.loc[~unknown]

    if "timestamp" in df.columns:
        raw = df["timestamp"]
        if len(df) and _blank(_as_text(raw)).all():  # not when earlier checks dropped every event
            out.add("warning", "events", "timestamp", "empty_column",
                    "events.timestamp: the column is empty; treated as absent (no timestamps: "
                    "random split instead of temporal)", total=total, action="column ignored")
            df = df.drop(columns="timestamp")
        else:
            secs, bad, far = _parse_times(raw)
            missing = secs.isna() & ~bad & ~far
            out.rows("repaired", "events", "timestamp", "missing_value", missing, None, total,
                     "values are missing", "dropped those {n} events")
            out.rows("repaired", "events", "timestamp", "unparsable", bad, raw, total,
                     "values could not be parsed as ISO-8601 or epoch seconds", "dropped those {n} events")
            out.rows("repaired", "events", "timestamp", "out_of_range", far, raw, total,
                     TIME_RANGE_TEXT, "dropped those {n} events")
            keep = secs.notna()
            df = df.loc[keep].copy()
            secs = secs[keep]
            secs = _check_time_units(secs, raw[keep], "events", "timestamp", total, out)
            df["timestamp"] = secs.astype(np.int64)

    if "device_id" in df.columns:
        df = _clean_ids(df, "events", "device_id", total, out, "events", drop_missing=False)
    else:
        df["device_id"] = ""
    if "amount" in df.columns:
        _parse_nonneg(df, "events", "amount", total, out, "amounts")
    else:
        df["amount"] = np.nan
    return _repeated_events(df, total, out)


def _examples(values: pd.Series, most: int = 3) -> str:
    """``'a', 'b', 'c'``: the first ``most`` distinct values, quoted."""
    return ", ".join(repr(str(v)) for v in pd.unique(values.to_numpy())[:most])


def _id_mismatch(
    events: pd.DataFrame, unknown: pd.Series, col: str, known: pd.Series, unit: str, total: int, out: _Collector,
) -> bool:
    """Fatal (``unknown_id``) when more than :data:`_MAX_UNKNOWN_SHARE` of the file's events name a
    user (item) the table does not have (``unknown``, aligned with ``events``): the two tables do
    not fit together, typically because their ids are written differently (``000239`` against
    ``u000239``). The message shows examples of both side by side. True when so; a smaller share
    is left to the repair."""
    count = int(unknown.sum())
    if not count or count <= _MAX_UNKNOWN_SHARE * total:
        return False
    pos = int(np.argmax(unknown.to_numpy()))
    row, value = int(events.index[pos]) + 1, str(events[col].iloc[pos])
    key = _ID_COLUMN[unit]
    hint = ""
    for example in pd.unique(events.loc[unknown, col].to_numpy())[:3]:
        # one known id holding the unknown one, or held by it: a prefix or suffix added or lost
        near = known[known.str.contains(str(example), regex=False)] if len(str(example)) > 1 else known[:0]
        if not len(near):
            near = known[known.map(lambda k, e=str(example): len(k) > 1 and k in e).astype(bool)]
        if len(near):
            hint = (f"; {unit}.{key} has {str(near.iloc[0])!r} where events.{col} has {str(example)!r}: "
                    "the ids seem to differ by a prefix or suffix")
            break
    out.add("fatal", "events", col, "unknown_id",
            f"events.{col}: {count:,} of {total:,} events reference unknown {unit} (first: {value!r}, row {row}), "
            f"more than half, so the tables do not fit together: events.{col} has ids such as "
            f"{_examples(events.loc[unknown, col])}, {unit}.{key} has {_examples(known)}{hint}; write the same "
            "ids in both", count=count, total=total, first_row=row, first_value=value)
    return True


def _repeated_events(df: pd.DataFrame, total: int, out: _Collector) -> pd.DataFrame:
    """Events equal in every column to an earlier event (the file's extra columns included).

    With times of day (a timestamp column whose times are not all midnight), an event repeated
    to the second, with the same device and amount, is the same event exported twice: dropped,
    repaired. Without them (no timestamps, or dates only), the same user can view or buy the same
    item twice in a day: kept, noted (info).
    """
    if len(df) < 2:
        return df
    # items and times: fewer distinct ids to hash than users (0.2 s against 0.5 s on 3.3 M events),
    # and fewer rows that share both (a user's view, cart and purchase often share a second)
    may = _may_repeat(df, ["item_id", "timestamp" if "timestamp" in df.columns else "user_id"])
    if not may.any():
        return df
    sub = df.iloc[np.flatnonzero(may)]
    same_sub, earlier = _repeats(sub)
    if not same_sub.any():
        return df
    keep = np.ones(len(df), dtype=bool)
    keep[np.flatnonzero(may)[same_sub.to_numpy(dtype=bool)]] = False
    count = int(same_sub.sum())
    pos = int(np.argmax(same_sub.to_numpy()))
    row, first = int(sub.index[pos]) + 1, int(sub.index[int(earlier.iloc[pos])]) + 1
    timed = "timestamp" in df.columns and bool((df["timestamp"] % 86400 != 0).any())
    where = f"first: row {row}, same as row {first}"
    if timed:
        action = f"dropped those {count:,} repeats"
        out.add("repaired", "events", None, "duplicate_event",
                f"events: {count:,} of {total:,} events repeat an earlier event exactly, to the second ({where}); "
                f"{action} (an event exported twice)", count=count, total=total, first_row=row, action=action)
        return df.iloc[np.flatnonzero(keep)]
    action = "kept"
    why = "events have no timestamps" if "timestamp" not in df.columns else "timestamps are dates only"
    out.add("info", "events", None, "duplicate_event",
            f"events: {count:,} of {total:,} events repeat an earlier event exactly ({where}); kept: the {why}, "
            "so a repeat may be a second view or purchase on the same day", count=count, total=total,
            first_row=row, action=action)
    return df


def _check_target(events: pd.DataFrame, target: str, total: int, out: _Collector) -> None:
    """Fatal (``no_target_events``) when no event is of type ``target``, the event type
    ``shopgraph build`` recommends (``purchase`` unless ``--target`` says otherwise); the types
    found are named with their counts."""
    types = events["event_type"]
    if (types == target).any():
        return
    counts = types.value_counts()
    found = ", ".join(f"{t!r} {n:,}" for t, n in counts.head(8).items()) + (", ..." if len(counts) > 8 else "")
    note = " (event types are lower-cased when loaded: give the target in lower case)" \
        if target != target.lower() else ""
    out.add("fatal", "events", "event_type", "no_target_events",
            f"events.event_type: no events of type {target!r}, the type shopgraph build recommends{note} "
            f"(found: {found}); "
            + (f"name the purchases {target!r} in event_type, or build with --target set to one of the types found"
               if target == "purchase" else "build with --target set to one of the types found"),
            count=0, total=total)


def _check_fraud_labels(labels: pd.DataFrame, total: int, file: str, out: _Collector) -> None:
    """Warn when the labels (after repairs) lack a class: the fraud scorer needs users labelled 1
    (fraud) and users labelled 0, and without them the run has no fraud scorer."""
    n = len(labels)
    fraud = int((labels["is_fraud"] == 1).sum())
    why = "the fraud scorer cannot be trained without fraud labels (is_fraud = 1) and is left out"
    if total == 0:
        text = f"labels: {file} has no rows; {why}"
    elif n == 0:
        text = f"labels: no label is left after the repairs above (all {total:,} dropped); {why}"
    elif fraud == 0:
        text = f"labels: none of the {n:,} labels is fraud (is_fraud = 1); {why}"
    elif fraud == n:
        text = (f"labels: all {n:,} labels are fraud (is_fraud = 1), none 0; the fraud scorer cannot be trained "
                "without users labelled 0 (not fraud) and is left out")
    else:
        return
    out.add("warning", "labels", "is_fraud", "no_fraud_labels" if fraud == 0 else "no_clean_labels", text,
            count=n, total=total, action="none")


def _add_event_devices(
    devices: pd.DataFrame | None, events: pd.DataFrame, total: int, out: _Collector
) -> pd.DataFrame:
    """Add (info) devices that appear only in ``events.device_id``."""
    if devices is None:
        devices = pd.DataFrame({"device_id": pd.Series([], dtype="str")})
    used = events["device_id"]
    new = (used != "") & ~used.isin(devices["device_id"])
    first_new = ~used.duplicated() & new
    if first_new.any():
        count = int(first_new.sum())
        pos = int(np.argmax(first_new.to_numpy()))
        value, row = str(used.iloc[pos]), int(used.index[pos]) + 1
        out.add("info", "events", "device_id", "added_devices",
                f"events.device_id: {count:,} device ids appear only in events (first: {value!r}, "
                f"row {row}); added those {count:,} to devices",
                count=count, total=total, first_row=row, first_value=value,
                action=f"added those {count:,} to devices")
        added = pd.DataFrame({"device_id": used[first_new].astype("str").to_numpy()})
        devices = pd.concat([devices, added], ignore_index=True)
    return devices


# ---------------------------------------------------------------------------------------------
# public API


def _run(path: str | Path, target: str | None = None) -> tuple[ShopTables | None, ValidationReport]:
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data: tables folder not found (got '{root}')")
    if not root.is_dir():
        raise ValueError(f"data: expected a folder of tables (got a file: '{root}')")
    out = _Collector()
    report = ValidationReport(root=root)
    raw: dict[str, pd.DataFrame] = {}
    totals: dict[str, int] = {}
    entries = sorted(os.listdir(root))
    for name in TABLE_NAMES:
        file = _locate(root, name, entries, out)
        if file is None:
            continue
        report.files[name] = file.name
        df = _read(file, name, out)
        if df is None:
            continue
        totals[name] = len(df)
        missing = [col for col in REQUIRED_COLUMNS[name] if col not in df.columns]
        for col in missing:
            out.add("fatal", name, col, "missing_column",
                    f"{name}: missing required column {col!r} (found: {_found(df.columns)})",
                    total=len(df))
        if missing:
            continue
        if len(df) == 0 and name in REQUIRED_TABLES:
            _check_not_empty(df, name, 0, out)
            continue
        raw[name] = df

    frames: dict[str, pd.DataFrame] = {}
    if "users" in raw:
        frames["users"] = _users(raw["users"], totals["users"], out)
        _check_not_empty(frames["users"], "users", totals["users"], out)
    if "items" in raw:
        frames["items"] = _items(raw["items"], root, totals["items"], out)
        _check_not_empty(frames["items"], "items", totals["items"], out)
    if "devices" in raw:
        frames["devices"] = _devices(raw["devices"], totals["devices"], out)
    if "labels" in raw:
        labels = _labels(raw["labels"], totals["labels"], out)
        if "users" in frames:
            unknown = ~labels["user_id"].isin(frames["users"]["user_id"])
            out.rows("repaired", "labels", "user_id", "unknown_id", unknown, labels["user_id"],
                     totals["labels"], "labels name unknown users", "dropped those {n} labels")
            labels = labels.loc[~unknown]
        if not any(i.fatal for i in out.issues if i.table == "labels"):
            _check_fraud_labels(labels, totals["labels"], report.files["labels"], out)
        frames["labels"] = labels
    if "events" in raw:
        events = _events(raw["events"], frames.get("users"), frames.get("items"), totals["events"], out)
        frames["events"] = events
        if _check_not_empty(events, "events", totals["events"], out):
            frames["devices"] = _add_event_devices(frames.get("devices"), events, totals["events"], out)
            if target is not None and not any(i.fatal for i in out.issues if i.table == "events"):
                _check_target(events, target, totals["events"], out)

    for name, df in frames.items():
        frames[name] = df.reset_index(drop=True)
        report.counts[name] = len(df)
    report.issues = out.issues
    if report.has_fatal:
        return None, report
    tables = ShopTables(
        users=frames["users"], items=frames["items"],
        devices=frames.get("devices", pd.DataFrame({"device_id": pd.Series([], dtype="str")})),
        events=frames["events"], labels=frames.get("labels"), root=root,
    )
    report.counts.setdefault("devices", len(tables.devices))
    return tables, report


def validate_tables(path: str | Path, *, target: str | None = "purchase") -> ValidationReport:
    """Check a tables folder and collect every problem, without raising for data problems.

    Args:
        path: folder holding ``users``, ``items``, ``events`` (and optionally ``devices``,
            ``labels``) as ``.csv``, ``.csv.gz`` or ``.parquet`` (file or folder).
        target: the event type ``shopgraph build`` will recommend (its ``--target``, default
            ``purchase``): no event of that type is fatal (``no_target_events``). ``None`` skips
            that check.

    Returns:
        The report: every fatal problem, repair, warning and info note, and rows per table.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the path is a file, not a folder.
    """
    return _run(path, target)[1]


def load_tables(path: str | Path, *, target: str | None = None) -> LoadResult:
    """Read, validate and normalise a shop's tables folder.

    Repairs are made as documented in ``docs/input_tables.md`` and each one is counted in the
    report and warned about once (``warnings.warn``). The frames have the dtypes listed in
    ``docs/ARCHITECTURE.md`` (ids ``str``, ``events.timestamp`` int64 epoch seconds, ...).

    Args:
        path: folder holding ``users``, ``items``, ``events`` (and optionally ``devices``,
            ``labels``) as ``.csv``, ``.csv.gz`` or ``.parquet`` (file or folder).
        target: an event type the events must hold (the one a build recommends), checked as
            :func:`validate_tables` does; ``None`` (the default) skips that check, for callers that
            check their own target.

    Returns:
        ``LoadResult(tables, report)``.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the path is not a folder, or the data has fatal problems; the message lists
            every fatal problem, one per line.
    """
    tables, report = _run(path, target)
    if tables is None:
        problems = report.fatal
        lines = "\n".join(f"  - {issue.message}" for issue in problems)
        raise ValueError(
            f"tables in '{report.root}' cannot be loaded: {len(problems)} fatal problem(s)\n{lines}"
        )
    for issue in report.issues:
        if issue.severity in ("repaired", "warning"):
            warnings.warn(issue.message, stacklevel=2)
    logger.info(
        "loaded %s: %s; %d issue(s) repaired or noted",
        report.root, ", ".join(f"{name} {count:,}" for name, count in report.counts.items()),
        len(report.issues),
    )
    return LoadResult(tables=tables, report=report)


def _data_problem(data: Path) -> str | None:
    """Why the DATA argument of ``shopgraph validate`` is no tables folder, or ``None``."""
    if not data.exists():
        link = ", a broken link" if data.is_symlink() else ""
        return f"data: tables folder not found (got '{data}'{link})"
    if not data.is_dir():
        return f"data: expected a folder of tables (got a file: '{data}')"
    try:
        os.listdir(data)
    except OSError as exc:
        return f"data: the tables folder cannot be read (got '{data}': {exc.strerror or exc})"
    return None


def cli_validate(args: argparse.Namespace) -> int:
    """``shopgraph validate DATA [--json]``: print the report; exit 1 on fatal problems, else 0.

    A DATA that is no readable folder is a usage error, as argparse reports one: one line on
    stderr, exit 2 (so that 1 keeps meaning "the tables have fatal problems"); with ``--json``
    stdout also gets ``{"error": ...}``, so that a script reading it always gets JSON. ``--json``
    takes no value: a path after it is DATA, and the message says so when that path is missing.

    Args:
        args: ``args.data`` (Path, the tables folder), ``args.json`` (bool, print JSON) and, if the
            command line has it, ``args.target`` (the build's target event type, default ``purchase``).

    Returns:
        The exit code: 2 when DATA is no readable folder, 1 when the report has a fatal problem,
        0 otherwise.
    """
    as_json = bool(getattr(args, "json", False))
    problem = _data_problem(Path(args.data))
    if problem is not None:
        if as_json and not Path(args.data).exists() and Path(args.data).suffix.lower() == ".json":  # an output file?
            problem += ("; note that --json takes no path: it prints the report as JSON on standard output "
                        "(save it with: shopgraph validate FOLDER --json > report.json)")
        if as_json:
            print(json.dumps({"error": problem, "root": str(args.data), "has_fatal": True}))
        print(f"shopgraph validate: error: {problem}", file=sys.stderr)
        return 2
    report = validate_tables(args.data, target=getattr(args, "target", "purchase"))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 1 if report.has_fatal else 0
