"""Tests for graph/load.py: every validation path, on tiny tables written to tmp_path."""

from __future__ import annotations

import gzip
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shopgraph.graph.load import (
    LoadResult,
    ValidationIssue,
    ValidationReport,
    load_tables,
    validate_tables,
)
from shopgraph.ui.cli import main


def _frames() -> dict[str, pd.DataFrame]:
    """A clean little shop: 4 users, 3 items, 2 devices, 8 events, 4 labels."""
    users = pd.DataFrame({
        "user_id": ["007", "u1", "u2", "u3"],
        "created_at": ["2024-01-01T00:00:00Z", "1700000000", "", "2023-06-01"],
        "age": [31, 45, 22, 60],
    })
    items = pd.DataFrame({
        "item_id": ["0001", "i1", "i2"],
        "title": ["red shoe", "blue book", None],
        "category": ["shoes", "books", "electronics"],
        "price": [10.5, 3.0, None],
    })
    devices = pd.DataFrame({"device_id": ["d0", "d1"], "os": ["ios", "android"]})
    events = pd.DataFrame({
        "user_id": ["007", "u1", "u1", "u2", "u2", "u3", "u3", "007"],
        "item_id": ["0001", "i1", "i2", "0001", "i1", "i2", "i1", "i2"],
        "event_type": ["view", "purchase", "view", "purchase", "view", "purchase", "view", "purchase"],
        "timestamp": [1_700_000_000 + 60 * k for k in range(8)],
        "device_id": ["d0", "d1", "d1", "", "d0", "d1", "d0", "d0"],
        "amount": [None, 3.0, None, 10.5, None, 7.0, None, 7.0],
    })
    labels = pd.DataFrame({
        "user_id": ["007", "u1", "u2", "u3"],
        "is_fraud": [1, 0, 0, 1],
        "ring_id": ["r1", "", "", "r1"],
    })
    return {"users": users, "items": items, "devices": devices, "events": events, "labels": labels}


def _write(root: Path, frames: dict[str, pd.DataFrame], fmt: str = "csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        if fmt == "csv":
            df.to_csv(root / f"{name}.csv", index=False)
        else:
            df.to_parquet(root / f"{name}.parquet", index=False)
    return root


def _issue(report: ValidationReport, kind: str, column: str | None = None) -> ValidationIssue:
    found = [i for i in report.issues if i.kind == kind and (column is None or i.column == column)]
    assert len(found) == 1, f"expected one {kind} issue, got {report.issues}"
    return found[0]


def _load_quiet(root: Path) -> LoadResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tables(root)


# --------------------------------------------------------------------------------------- clean


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_clean_folder_has_no_issues_and_normalised_dtypes(tmp_path: Path, fmt: str) -> None:
    root = _write(tmp_path / "shop", _frames(), fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder warns about nothing
        tables, report = load_tables(root)
    assert report.issues == []
    assert not report.has_fatal
    assert report.counts == {"users": 4, "items": 3, "devices": 2, "events": 8, "labels": 4}
    assert tables.root == root
    # ids stay text ("007", "0001")
    assert tables.users["user_id"].tolist() == ["007", "u1", "u2", "u3"]
    assert tables.items["item_id"].tolist()[0] == "0001"
    for df, col in [(tables.users, "user_id"), (tables.items, "item_id"), (tables.devices, "device_id"),
                    (tables.events, "user_id"), (tables.events, "item_id"), (tables.events, "event_type"),
                    (tables.events, "device_id"), (tables.items, "title"), (tables.items, "image"),
                    (tables.labels, "user_id"), (tables.labels, "ring_id")]:
        assert pd.api.types.is_string_dtype(df[col]), col
        assert not df[col].isna().any(), col
    assert tables.users["created_at"].dtype == np.float64
    assert tables.users["created_at"].iloc[0] == 1_704_067_200.0
    assert np.isnan(tables.users["created_at"].iloc[2])
    assert tables.users["age"].tolist() == [31, 45, 22, 60]  # extra columns kept
    assert tables.items["title"].tolist() == ["red shoe", "blue book", ""]
    assert tables.items["description"].tolist() == ["", "", ""]
    assert tables.items["image"].tolist() == ["", "", ""]
    assert tables.items["price"].dtype == np.float64 and np.isnan(tables.items["price"].iloc[2])
    assert tables.events["timestamp"].dtype == np.int64
    assert tables.events["timestamp"].tolist() == [1_700_000_000 + 60 * k for k in range(8)]
    assert tables.events["device_id"].tolist()[3] == ""
    assert tables.events["amount"].dtype == np.float64
    assert tables.has_timestamps
    assert tables.labels is not None
    assert tables.labels["is_fraud"].dtype == np.int64
    assert tables.labels["ring_id"].tolist() == ["r1", "", "", "r1"]
    assert tables.devices["os"].tolist() == ["ios", "android"]
    assert "no problems found" in report.format()
    json.dumps(report.to_dict())


def test_csv_and_parquet_load_identically(tmp_path: Path) -> None:
    a = _load_quiet(_write(tmp_path / "a", _frames(), "csv")).tables
    b = _load_quiet(_write(tmp_path / "b", _frames(), "parquet")).tables
    for name in ("users", "items", "devices", "events", "labels"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=False)
        for col in getattr(a, name).columns:
            assert getattr(a, name)[col].dtype.kind == getattr(b, name)[col].dtype.kind, (name, col)


def test_all_digit_ids_in_csv_stay_text(tmp_path: Path) -> None:
    frames = _frames()
    digits = {"007": "007", "u1": "010", "u2": "0100", "u3": "1e3"}
    frames["users"]["user_id"] = frames["users"]["user_id"].map(digits)
    frames["events"]["user_id"] = frames["events"]["user_id"].map(digits)
    frames["labels"]["user_id"] = frames["labels"]["user_id"].map(digits)
    frames["devices"]["device_id"] = ["00", "01"]
    frames["events"]["device_id"] = ["00", "01", "01", "", "00", "01", "00", "00"]
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert report.issues == []
    assert tables.users["user_id"].tolist() == ["007", "010", "0100", "1e3"]
    assert tables.events["user_id"].tolist()[:2] == ["007", "010"]
    assert tables.devices["device_id"].tolist() == ["00", "01"]


def test_integer_ids_in_parquet_become_text(tmp_path: Path) -> None:
    frames = _frames()
    frames["users"]["user_id"] = [7, 1, 2, 3]
    frames["events"]["user_id"] = [7, 1, 1, 2, 2, 3, 3, 7]
    frames["labels"]["user_id"] = [7.0, 1.0, 2.0, 3.0]  # floats that are whole numbers
    frames["items"]["item_id"] = frames["items"]["item_id"].astype("string[pyarrow]")
    frames["devices"]["device_id"] = [1e300, 2.5]  # not whole numbers that fit an int: printed as floats
    frames["events"]["device_id"] = [1e300, 2.5, 2.5, None, 1e300, 2.5, 1e300, 1e300]
    tables, report = _load_quiet(_write(tmp_path / "shop", frames, "parquet"))
    assert report.issues == []
    assert tables.users["user_id"].tolist() == ["7", "1", "2", "3"]
    assert tables.items["item_id"].dtype == tables.users["user_id"].dtype
    assert tables.devices["device_id"].tolist() == ["1e+300", "2.5"]
    assert tables.events["device_id"].tolist()[:4] == ["1e+300", "2.5", "2.5", ""]
    assert tables.labels is not None and tables.labels["user_id"].tolist() == ["7", "1", "2", "3"]


def test_missing_optional_tables(tmp_path: Path) -> None:
    frames = _frames()
    del frames["devices"], frames["labels"]
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert tables.labels is None
    # devices come from events.device_id, reported as info only
    assert sorted(tables.devices["device_id"]) == ["d0", "d1"]
    info = _issue(report, "added_devices")
    assert info.severity == "info" and not info.fatal
    assert info.message == "events.device_id: 2 device ids appear only in events (first: 'd0', row 1); " \
                           "added those 2 to devices"
    assert [i.severity for i in report.issues] == ["info"]


def test_devices_only_in_events_are_added(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"].loc[6, "device_id"] = "d9"
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert tables.devices["device_id"].tolist() == ["d0", "d1", "d9"]
    assert report.counts["devices"] == 3
    assert _issue(report, "added_devices").first_row == 7


def test_no_timestamp_column(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"] = frames["events"].drop(columns="timestamp")
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert report.issues == []
    assert not tables.has_timestamps


# --------------------------------------------------------------------------------------- fatal


def _fatal(root: Path, pattern: str) -> ValidationReport:
    """load_tables raises listing the pattern; validate_tables reports it without raising."""
    with pytest.raises(ValueError, match=pattern):
        load_tables(root)
    report = validate_tables(root)
    assert report.has_fatal
    return report


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tables folder not found"):
        validate_tables(tmp_path / "nope")
    (tmp_path / "f.csv").write_text("x\n")
    with pytest.raises(ValueError, match="expected a folder of tables"):
        load_tables(tmp_path / "f.csv")


def test_missing_required_table(tmp_path: Path) -> None:
    frames = _frames()
    del frames["items"]
    report = _fatal(_write(tmp_path / "shop", frames), r"items: missing required table \(expected items\.csv, "
                                                       r"items\.csv\.gz or items\.parquet in .*shop\)$")
    issue = _issue(report, "missing_table")
    assert issue.table == "items" and issue.fatal


def test_both_formats_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    _frames()["items"].to_parquet(root / "items.parquet")
    _fatal(root, r"items: both items\.csv and items\.parquet are present")


def test_missing_required_column_is_fatal(tmp_path: Path) -> None:
    frames = _frames()
    frames["items"] = frames["items"].drop(columns="item_id")
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"items: missing required column 'item_id' \(found: title, category, price\)")
    assert _issue(report, "missing_column").column == "item_id"


def test_every_fatal_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    frames = _frames()
    frames["items"] = frames["items"].drop(columns="item_id")
    frames["users"].loc[2, "user_id"] = "007"
    frames["labels"].loc[1, "is_fraud"] = 2
    root = _write(tmp_path / "shop", frames)
    with pytest.raises(ValueError, match=r"3 fatal problem") as err:
        load_tables(root)
    text = str(err.value)
    assert "'item_id'" in text and "users.user_id" in text and "labels.is_fraud" in text


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_duplicate_ids_are_fatal(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    frames["users"].loc[3, "user_id"] = "u1"
    report = _fatal(_write(tmp_path / "shop", frames, fmt),
                    r"users\.user_id: 1 of 4 rows repeat an id with other values \(first: 'u1', row 4, "
                    r"already at row 2\)")
    issue = _issue(report, "duplicate_id")
    assert (issue.count, issue.total, issue.first_row, issue.first_value) == (1, 4, 4, "u1")


@pytest.mark.parametrize("table,column", [("items", "item_id"), ("devices", "device_id")])
def test_duplicate_item_and_device_ids_are_fatal(tmp_path: Path, table: str, column: str) -> None:
    frames = _frames()
    repeat = frames[table].iloc[[0]].copy()
    repeat.iloc[0, 1] = "other"  # the same id with another value: which row is right is unknown
    frames[table] = pd.concat([frames[table], repeat], ignore_index=True)
    n = len(frames[table])
    _fatal(_write(tmp_path / "shop", frames), rf"{table}\.{column}: 1 of {n} rows repeat an id with other values "
                                              rf".*row {n}, already at row 1\)")


@pytest.mark.parametrize("header", ["item_id,price,title,price", "item_id, price,title,price "])
def test_a_column_named_twice_is_fatal(tmp_path: Path, header: str) -> None:
    # pandas would read an exact repeat as "price.1" and one with spaces as a second "price"
    root = _write(tmp_path / "shop", _frames())
    (root / "items.csv").write_text(f"{header}\ni1,3,book,4\n0001,5,shoe,6\ni2,1,pen,1\n")
    report = _fatal(root, r"items\.price: the header of items\.csv names this column 2 times \(columns 2, 4, "
                          r"counting from 1; leading and trailing spaces ignored\); keep one")
    issue = _issue(report, "duplicate_column")
    assert (issue.table, issue.column) == ("items", "price")


@pytest.mark.parametrize("folder", [False, True])
def test_a_parquet_column_named_twice_is_fatal(tmp_path: Path, folder: bool) -> None:
    """pyarrow's dataset reader refused such a file with 'Multiple matches for FieldRef.Name(price)'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _write(tmp_path / "shop", _frames(), "parquet")
    items = pq.read_table(root / "items.parquet")
    twice = pa.table(items.columns + [items.column("price")], names=items.column_names + ["price"])
    (root / "items.parquet").unlink()
    if folder:  # a Spark-style folder: the part files and a _SUCCESS marker; only the second repeats
        (root / "items.parquet").mkdir()
        (root / "items.parquet" / "_SUCCESS").write_bytes(b"")
        pq.write_table(items, root / "items.parquet" / "part-00000.parquet")
        pq.write_table(twice, root / "items.parquet" / "part-00001.parquet")
    else:
        pq.write_table(twice, root / "items.parquet")
    at = f"{items.column_names.index('price') + 1}, {len(items.column_names) + 1}"
    report = _fatal(root, rf"items\.price: the schema of items\.parquet names this column 2 times \(columns {at}, "
                          r"counting from 1; leading and trailing spaces ignored\); keep one")
    assert _issue(report, "duplicate_column").column == "price"


def test_corrupt_file_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames(), "parquet")
    (root / "events.parquet").write_bytes(b"this is not parquet")
    report = _fatal(root, r"events: could not read events\.parquet \(")
    assert _issue(report, "unreadable").table == "events"


def test_ragged_csv_is_fatal_naming_its_rows(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text("user_id,created_at\nu1,1\nu2,2,3,4\n")
    report = _fatal(root, r"users: 1 row of users\.csv does not have the header's 2 values: line 3 has 4 "
                          r"\('u2,2,3,4'\); a value that holds a comma must be in double quotes")
    issue = _issue(report, "ragged_rows")
    assert (issue.table, issue.count, issue.first_row, issue.first_value) == ("users", 1, 2, "u2,2,3,4")


@pytest.mark.parametrize("gz", [False, True])
def test_every_ragged_row_is_counted_and_the_first_five_named(tmp_path: Path, gz: bool) -> None:
    root = _write(tmp_path / "shop", _frames())
    rows = [f"u{k},{k}" for k in range(40)]
    for k in (3, 9, 10, 20, 30, 31, 38):  # too many or too few values; one row quoted: its comma is a value's
        rows[k] = f"u{k},{k},extra" if k % 2 else f"u{k}"
    rows[5] = 'u5,"5,5"'
    text = "user_id,created_at\n\n" + "\n".join(rows) + "\n"  # a blank line: lines and rows differ by one
    (root / "users.csv").unlink()
    if gz:
        (root / "users.csv.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (root / "users.csv").write_text(text)
    name = "users.csv.gz" if gz else "users.csv"
    report = _fatal(root, rf"users: 7 rows of {name.replace('.', '[.]')} do not have the header's 2 values: line 6 has 3 "
                          r"\('u3,3,extra'\); line 12 has 3 .*; line 23 has 1 \('u20'\); line 33 has 1 \('u30'\); and 2 more; a value")
    issue = _issue(report, "ragged_rows")
    assert issue.count == 7 and issue.first_row == 5 and "line 7" not in issue.message  # the quoted row is fine


@pytest.mark.parametrize("header,row", [("name,user_id", "Jos\xe9,u1"), ("user_id,name", "u1,Jos\xe9")])
def test_non_utf8_csv_is_fatal(tmp_path: Path, header: str, row: str) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_bytes(f"{header}\n{row}\n".encode("latin-1"))
    _fatal(root, r"users: could not read users\.csv \(.*(UTF8|UTF-8)")


def test_empty_file_and_empty_table_are_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text("")
    _fatal(root, r"users: users\.csv is empty \(no header and no rows\)")
    (root / "users.csv").write_text("user_id,created_at\n")
    _fatal(root, r"users: table has no rows")


def test_labels_not_binary_is_fatal(tmp_path: Path) -> None:
    frames = _frames()
    frames["labels"]["is_fraud"] = ["0", "1", "yes", ""]
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"labels\.is_fraud: 2 of 4 values are not 0/1 \(first: 'yes', row 3\)")
    assert _issue(report, "not_binary").count == 2


def test_conflicting_labels_fatal_and_repeated_labels_dropped(tmp_path: Path) -> None:
    frames = _frames()
    extra = pd.DataFrame({"user_id": ["u1", "u3"], "is_fraud": [1, 1], "ring_id": ["", "r1"]})
    frames["labels"] = pd.concat([frames["labels"], extra], ignore_index=True)
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"labels\.user_id: 1 of 6 labels contradict an earlier label of the same user "
                    r"\(first: 'u1', row 5\)")
    assert _issue(report, "duplicate_label").first_value == "u3"


def test_events_empty_after_repairs_is_fatal(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["user_id"] = "ghost"
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"events: no rows left after repairs \(all 8 rows dropped")
    assert _issue(report, "unknown_id", "user_id").count == 8
    # the timestamps were fine: no "the column is empty" about the events dropped for other reasons
    assert not [i for i in report.issues if i.column == "timestamp"]


def test_non_utf8_csv_names_the_line_and_column(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "items.csv").write_bytes("item_id,title\ni1,book\ni2,Caf\xe9\n".encode("latin-1"))
    report = _fatal(root, r"items: could not read items\.csv \(line 3, column 'title' is not valid UTF-8 text; "
                          r"save the file as UTF-8\)")
    assert _issue(report, "unreadable").table == "items"
    (root / "items.csv").write_text("item_id,title\ni1,book\n", encoding="utf-16")
    _fatal(root, r"items: could not read items\.csv \(it is UTF-16 text: it starts with a UTF-16 byte-order mark; "
                 r"save the file as UTF-8\)")


# --------------------------------------------------------------------------------------- repairs


def _repaired(root: Path) -> LoadResult:
    """load_tables succeeds, warns about each repair, and every repair is non-fatal."""
    with pytest.warns(UserWarning):
        result = load_tables(root)
    assert not result.report.has_fatal
    return result


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unknown_users_and_items_in_events_are_dropped(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    frames["events"].loc[2, "user_id"] = "ghost"
    frames["events"].loc[5, "user_id"] = "ghost2"
    frames["events"].loc[6, "item_id"] = "nope"
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    u = _issue(report, "unknown_id", "user_id")
    assert u.message == "events.user_id: 2 of 8 events reference unknown users (first: 'ghost', row 3); " \
                        "dropped those 2 events"
    i = _issue(report, "unknown_id", "item_id")
    assert (i.count, i.first_row, i.first_value, i.action) == (1, 7, "nope", "dropped those 1 events")
    assert len(tables.events) == 5 and report.counts["events"] == 5
    assert tables.events.index.tolist() == list(range(5))
    # file order kept
    assert tables.events["timestamp"].is_monotonic_increasing


def test_missing_ids_are_dropped_in_every_table(tmp_path: Path) -> None:
    frames = _frames()
    frames["users"].loc[4] = [None, "", 1]  # a user row without id
    frames["items"].loc[3] = ["  ", "x", "y", 1.0]
    frames["devices"].loc[2] = [None, "ios"]
    frames["events"].loc[1, "item_id"] = None
    frames["labels"].loc[4] = [None, 0, ""]
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    msgs = {(i.table, i.column): i.message for i in report.issues if i.kind == "missing_id"}
    assert msgs[("users", "user_id")] == "users.user_id: 1 of 5 values are missing (first: row 5); " \
                                         "dropped those 1 users"
    assert msgs[("items", "item_id")].startswith("items.item_id: 1 of 4 values are missing (first: row 4)")
    assert msgs[("devices", "device_id")].startswith("devices.device_id: 1 of 3 values are missing (first: row 3)")
    assert msgs[("events", "item_id")] == "events.item_id: 1 of 8 values are missing (first: row 2); " \
                                          "dropped those 1 events"
    assert msgs[("labels", "user_id")].endswith("dropped those 1 labels")
    assert report.counts == {"users": 4, "items": 3, "devices": 2, "events": 7, "labels": 4}


def test_ids_are_stripped_and_reported(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"].loc[0, "user_id"] = " 007 "
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    issue = _issue(report, "whitespace", "user_id")
    assert issue.message.startswith("events.user_id: 1 of 8 values had leading/trailing spaces "
                                    "(first: ' 007 ', row 1)")
    assert tables.events["user_id"].iloc[0] == "007"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_iso_and_epoch_timestamps(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    frames["events"]["timestamp"] = [
        "2024-01-01T00:00:00Z", "1704067260", "2024-01-01T01:02:00+01:00", "2024-01-01 00:03:00",
        "2024-01-01", "1704067500.9", "1704067560", "2024-01-01T00:07:00.250Z",
    ]
    tables, report = _load_quiet(_write(tmp_path / "shop", frames, fmt))
    assert report.issues == []
    assert tables.events["timestamp"].tolist() == [
        1704067200, 1704067260, 1704067320, 1704067380, 1704067200, 1704067500, 1704067560, 1704067620,
    ]


def test_datetime_typed_parquet_timestamps(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["timestamp"] = pd.to_datetime(frames["events"]["timestamp"], unit="s")
    tables, report = _load_quiet(_write(tmp_path / "shop", frames, "parquet"))
    assert report.issues == []
    assert tables.events["timestamp"].tolist() == [1_700_000_000 + 60 * k for k in range(8)]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unparsable_and_missing_timestamps_drop_events(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    ts = frames["events"]["timestamp"].astype(str).tolist()
    ts[3], ts[5], ts[6] = "yesterday", "", "2024-13-45"
    frames["events"]["timestamp"] = ts
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    bad = _issue(report, "unparsable", "timestamp")
    assert bad.message == "events.timestamp: 2 of 8 values could not be parsed as ISO-8601 or epoch " \
                          "seconds (first: 'yesterday', row 4); dropped those 2 events"
    missing = _issue(report, "missing_value", "timestamp")
    assert (missing.count, missing.first_row) == (1, 6)
    assert len(tables.events) == 5 and tables.events["timestamp"].dtype == np.int64


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_out_of_range_times_are_named_like_unparsable_ones(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    ts = frames["events"]["timestamp"].astype(str).tolist()
    ts[2], ts[4], ts[6] = "9999-12-31", "0001-01-01T00:00:00Z", "1e20"  # 1e20 overflowed int64 before
    frames["events"]["timestamp"] = ts
    frames["users"]["created_at"] = ["2024-01-01", "9999-12-31 23:59:59", "", "1700000000"]
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    far = _issue(report, "out_of_range", "timestamp")
    assert far.message == ("events.timestamp: 3 of 8 values are out of range (dates must lie between 1677-09-22 "
                           "and 2262-04-10, epoch seconds below 9.2e18) (first: '9999-12-31', row 3); "
                           "dropped those 3 events")
    assert not [i for i in report.issues if i.kind in ("unparsable", "epoch_milliseconds", "missing_value")
                and i.column == "timestamp"]
    assert tables.events["timestamp"].tolist() == [1_700_000_000 + 60 * k for k in (0, 1, 3, 5, 7)]
    created = _issue(report, "out_of_range", "created_at")
    assert (created.first_row, created.first_value, created.action) == (2, "9999-12-31 23:59:59", "set those 1 to NaN")
    assert np.isnan(tables.users["created_at"].iloc[1]) and tables.users["created_at"].iloc[3] == 1_700_000_000


def test_out_of_range_datetime_typed_parquet_times(tmp_path: Path) -> None:
    frames = _frames()
    stamps = pd.to_datetime(frames["events"]["timestamp"], unit="s").astype("datetime64[s]")
    stamps.iloc[1] = pd.Timestamp("9999-12-31").as_unit("s")
    frames["events"]["timestamp"] = stamps
    tables, report = _repaired(_write(tmp_path / "shop", frames, "parquet"))
    assert _issue(report, "out_of_range", "timestamp").first_row == 2
    assert len(tables.events) == 7


def test_entirely_empty_timestamp_column_is_absent(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["timestamp"] = ""
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    issue = _issue(report, "empty_column", "timestamp")
    assert issue.severity == "warning"
    assert "events.timestamp: the column is empty; treated as absent" in issue.message
    assert not tables.has_timestamps and len(tables.events) == 8


def test_millisecond_epochs_are_read_as_milliseconds_when_all_are(tmp_path: Path) -> None:
    """A whole column after the year 5000 as seconds is in milliseconds: read so (repaired), since
    as seconds every time window and the temporal split would be 1,000 times too wide."""
    frames = _frames()
    seconds = frames["events"]["timestamp"].copy()
    frames["events"]["timestamp"] = seconds * 1000 + 999  # the milliseconds within the second dropped
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    issue = _issue(report, "epoch_milliseconds")
    assert issue.severity == "repaired" and issue.count == 8
    assert issue.message.endswith("all of them: epoch milliseconds (first: "
                                  f"'{seconds.iloc[0] * 1000 + 999}', row 1); read them as milliseconds (divided by "
                                  "1,000)")
    assert tables.events["timestamp"].tolist() == seconds.tolist()
    # some of them only: a guess, kept as given with a warning
    frames["events"].loc[0, "timestamp"] = seconds.iloc[0]
    tables, report = _repaired(_write(tmp_path / "shop2", frames))
    assert _issue(report, "epoch_milliseconds").severity == "warning" and _issue(report, "epoch_milliseconds").count == 7
    assert tables.events["timestamp"].iloc[1] == seconds.iloc[1] * 1000 + 999


def test_unparsable_created_at_set_to_nan(tmp_path: Path) -> None:
    frames = _frames()
    frames["users"].loc[1, "created_at"] = "last spring"
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "unparsable", "created_at").message == (
        "users.created_at: 1 of 4 values could not be parsed as ISO-8601 or epoch seconds "
        "(first: 'last spring', row 2); set those 1 to NaN")
    assert np.isnan(tables.users["created_at"].iloc[1])
    assert len(tables.users) == 4


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_prices_and_amounts_set_to_nan(tmp_path: Path, fmt: str) -> None:
    frames = _frames()
    frames["items"]["price"] = ["10.5", "-3", "abc"]
    frames["events"]["amount"] = ["", "3", "x", "-1", "", "7", "", "-2"]
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    assert _issue(report, "not_numeric", "price").message == \
        "items.price: 1 of 3 prices are not numbers (first: 'abc', row 3); set those 1 to NaN"
    assert _issue(report, "negative", "price").message == \
        "items.price: 1 of 3 prices are negative (first: '-3', row 2); set those 1 to NaN"
    neg = _issue(report, "negative", "amount")
    assert (neg.count, neg.first_row, neg.first_value) == (2, 4, "-1")
    assert _issue(report, "not_numeric", "amount").first_row == 3
    assert tables.items["price"].tolist()[0] == 10.5 and tables.items["price"].isna().sum() == 2
    assert tables.events["amount"].dtype == np.float64
    assert tables.events["amount"].notna().sum() == 2


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_blank_event_type_dropped_and_case_and_spaces_normalised(tmp_path: Path, fmt: str) -> None:
    # "Purchase" and "View" passed validate and build then refused: "no events of type 'purchase'
    # (found: Purchase, View, cart)"
    frames = _frames()
    frames["events"]["event_type"] = [" View ", "purchase", "  ", "Purchase", "view", None, "VIEW", "purchase "]
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    issue = _issue(report, "missing_value", "event_type")
    assert issue.message == "events.event_type: 2 of 8 values are blank (first: row 3); dropped those 2 events"
    assert _issue(report, "whitespace", "event_type").message == (
        "events.event_type: 2 of 8 values had leading/trailing spaces (first: ' View ', row 1); stripped them")
    assert _issue(report, "event_type_case").message == (
        "events.event_type: 3 of 8 values are not in lower case (first: 'View', row 1); lower-cased them "
        "(View -> view, Purchase -> purchase, VIEW -> view): event types are matched ignoring case")
    assert tables.events["event_type"].tolist() == ["view", "purchase", "purchase", "view", "view", "purchase"]
    assert pd.api.types.is_string_dtype(tables.events["event_type"])


def test_labels_for_unknown_users_dropped(tmp_path: Path) -> None:
    frames = _frames()
    frames["labels"].loc[2, "user_id"] = "stranger"
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "unknown_id", "user_id").message == (
        "labels.user_id: 1 of 4 labels name unknown users (first: 'stranger', row 3); dropped those 1 labels")
    assert tables.labels is not None and len(tables.labels) == 3


# --------------------------------------------------------------------------------------- images


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def test_images_checked_and_bad_ones_cleared(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    frames = _frames()
    items = pd.DataFrame({
        "item_id": [f"i{k}" for k in range(6)],
        "image": ["img/ok.png", "img/gone.png", "img/fake.png", "../outside.png", "/etc/hosts", ""],
    })
    frames["items"] = items
    frames["events"]["item_id"] = [f"i{k % 6}" for k in range(8)]
    _write(root, frames)
    _png(root / "img" / "ok.png")
    (root / "img" / "fake.png").write_text("not an image")
    _png(tmp_path / "outside.png")  # exists, but outside the folder
    tables, report = _repaired(root)
    assert _issue(report, "image_outside_folder").message == (
        "items.image: 2 of 6 image paths point outside the tables folder (first: '../outside.png', row 4); "
        'set those 2 to ""')
    assert _issue(report, "image_missing").message == (
        "items.image: 1 of 6 image files do not exist (first: 'img/gone.png', row 2); set those 1 to \"\"")
    assert _issue(report, "image_unreadable").message == (
        "items.image: 1 of 6 image files are not readable images (first: 'img/fake.png', row 3); "
        'set those 1 to ""')
    assert tables.items["image"].tolist() == ["img/ok.png", "", "", "", "", ""]
    assert tables.image_path("img/ok.png") == root / "img" / "ok.png"


def test_truncated_png_is_not_readable(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    frames = _frames()
    frames["items"]["image"] = ["a.png", "b.png", ""]
    _write(root, frames)
    _png(root / "a.png")
    _png(root / "b.png")
    data = (root / "b.png").read_bytes()
    (root / "b.png").write_bytes(data[: len(data) // 2])
    _, report = _repaired(root)
    assert _issue(report, "image_unreadable").first_value == "b.png"


def test_truncated_jpeg_is_not_readable(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    frames = _frames()
    frames["items"]["image"] = ["a.jpg", "b.jpg", ""]
    _write(root, frames)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / name, "JPEG")
    data = (root / "b.jpg").read_bytes()
    (root / "b.jpg").write_bytes(data[: len(data) // 2])  # Pillow's verify() alone passes it
    tables, report = _repaired(root)
    issue = _issue(report, "image_unreadable")
    assert (issue.count, issue.first_value) == (1, "b.jpg")
    assert tables.items["image"].tolist() == ["a.jpg", "", ""]


@pytest.mark.slow
def test_image_check_is_fast(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    n = 3000
    (root / "img").mkdir(parents=True)
    _png(root / "img" / "0.png")
    data = (root / "img" / "0.png").read_bytes()
    for k in range(n):
        (root / "img" / f"{k}.png").write_bytes(data)
    frames = _frames()
    frames["items"] = pd.DataFrame({"item_id": [f"i{k}" for k in range(n)],
                                    "image": [f"img/{k}.png" for k in range(n)]})
    frames["events"]["item_id"] = [f"i{k}" for k in range(8)]
    _write(root, frames)
    start = time.perf_counter()
    _, report = _load_quiet(root)
    elapsed = time.perf_counter() - start
    assert report.issues == []
    # measured ~60 us per image (40,000 in ~2.5 s); 2 ms leaves room for a loaded machine
    assert elapsed < n * 2e-3, f"{n} images took {elapsed:.1f} s"


# --------------------------------------------------------------------------------------- report


def test_report_format_and_json(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"].loc[2, "user_id"] = "ghost"
    report = validate_tables(_write(tmp_path / "shop", frames))
    text = report.format()
    lines = text.splitlines()
    assert lines[0] == f"tables folder: {tmp_path / 'shop'}"
    assert lines[1].split()[0] == "REPAIRED" and "events.user_id" in lines[1]
    assert lines[-1].startswith("summary: 0 fatal, 1 repaired, 0 warning(s), 0 info; rows after loading: "
                                "users 4, items 3, devices 2, events 7, labels 4; loadable")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["has_fatal"] is False and data["counts"]["events"] == 7
    assert data["issues"][0]["first_row"] == 3 and data["issues"][0]["first_value"] == "ghost"
    assert data["files"]["events"] == "events.csv"


def test_issue_rejects_inconsistent_severity() -> None:
    with pytest.raises(ValueError, match="severity"):
        ValidationIssue("users", None, "x", 0, 0, None, None, True, "none", "m", "repaired")


# --------------------------------------------------------------------------------------- CLI


def test_cli_validate_fatal_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = _frames()
    frames["items"] = frames["items"].drop(columns="item_id")
    root = _write(tmp_path / "shop", frames)
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FATAL" in out and "items: missing required column 'item_id'" in out
    assert "NOT loadable" in out


def test_cli_validate_repairs_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = _frames()
    frames["events"].loc[[1, 4], "user_id"] = "ghost"
    ts = frames["events"]["timestamp"].astype(str).tolist()
    ts[6] = "yesterday"
    frames["events"]["timestamp"] = ts
    root = _write(tmp_path / "shop", frames)
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "events.user_id: 2 of 8 events reference unknown users (first: 'ghost', row 2); " \
           "dropped those 2 events" in out
    assert "events.timestamp: 1 of 8 values could not be parsed as ISO-8601 or epoch seconds " \
           "(first: 'yesterday', row 7); dropped those 1 events" in out
    assert "events 5" in out and "; loadable" in out

    assert main(["validate", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["repaired"] == 2 and data["counts"]["events"] == 5


def test_cli_validate_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a usage error, exit 2 as argparse's: exit 1 means "the tables have fatal problems"
    assert main(["validate", str(tmp_path / "nope")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"shopgraph validate: error: data: tables folder not found (got '{tmp_path / 'nope'}')\n"
    assert captured.out == ""
    (tmp_path / "file.csv").write_text("x\n")
    assert main(["validate", str(tmp_path / "file.csv")]) == 2
    assert "data: expected a folder of tables (got a file" in capsys.readouterr().err


def test_cli_validate_json_with_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `validate --json /nope` printed a plain-text error and no JSON, exit 1
    nope = tmp_path / "nope"
    assert main(["validate", "--json", str(nope)]) == 2
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    message = f"data: tables folder not found (got '{nope}')"
    assert data == {"error": message, "root": str(nope), "has_fatal": True}
    assert captured.err == f"shopgraph validate: error: {message}\n"
    # a path that looks like the report's file, given as if --json took it: the message says it does not
    out = tmp_path / "report.json"
    assert main(["validate", "--json", str(out)]) == 2
    message = (f"data: tables folder not found (got '{out}'); note that --json takes no path: it prints the "
               "report as JSON on standard output (save it with: shopgraph validate FOLDER --json > report.json)")
    assert json.loads(capsys.readouterr().out)["error"] == message


# ------------------------------------------------------------------- missing-value words are text


def test_missing_value_words_are_ids_and_text(tmp_path: Path) -> None:
    # pandas reads NA, null, None, NaN, n/a ... as missing: "users.user_id: 3 of 4 values are missing"
    frames = _frames()
    words = {"007": "NA", "u1": "null", "u2": "None", "u3": "NaN"}
    for name in ("users", "events", "labels"):
        frames[name]["user_id"] = frames[name]["user_id"].map(words)
    frames["items"]["item_id"] = ["n/a", "i1", "i2"]
    frames["events"]["item_id"] = frames["events"]["item_id"].replace({"0001": "n/a"})
    frames["devices"]["device_id"] = ["NA", "null"]
    frames["events"]["device_id"] = frames["events"]["device_id"].replace({"d0": "NA", "d1": "null"})
    frames["items"]["title"] = ["NA", "None", None]
    frames["items"]["category"] = ["null", "books", "N/A"]
    frames["events"]["event_type"] = frames["events"]["event_type"].replace({"view": "null"})
    frames["labels"]["ring_id"] = ["None", "", "", "None"]
    frames["devices"]["os"] = ["NA", "android"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tables, report = load_tables(_write(tmp_path / "shop", frames))
    assert report.issues == []
    assert tables.users["user_id"].tolist() == ["NA", "null", "None", "NaN"]
    assert tables.items["item_id"].tolist() == ["n/a", "i1", "i2"]
    assert tables.devices["device_id"].tolist() == ["NA", "null"]
    assert tables.events["user_id"].tolist()[:2] == ["NA", "null"] and len(tables.events) == 8
    assert tables.events["item_id"].iloc[0] == "n/a" and tables.events["device_id"].iloc[0] == "NA"
    assert tables.events["event_type"].tolist()[:3] == ["null", "purchase", "null"]
    assert tables.items["title"].tolist() == ["NA", "None", ""]  # only the empty cell is missing
    assert tables.items["category"].tolist() == ["null", "books", "N/A"]
    assert tables.labels is not None and tables.labels["ring_id"].tolist() == ["None", "", "", "None"]
    assert tables.devices["os"].tolist() == ["NA", "android"]


def test_missing_value_words_in_numbers_and_times_are_reported(tmp_path: Path) -> None:
    frames = _frames()
    frames["items"]["price"] = ["10.5", "NA", ""]
    frames["users"]["created_at"] = ["2024-01-01", "null", "", "2023-06-01"]
    ts = frames["events"]["timestamp"].astype(str).tolist()
    ts[2] = "N/A"
    frames["events"]["timestamp"] = ts
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "not_numeric", "price").message == \
        "items.price: 1 of 3 prices are not numbers (first: 'NA', row 2); set those 1 to NaN"
    created = _issue(report, "unparsable", "created_at")
    assert (created.count, created.first_value, created.first_row) == (1, "null", 2)
    stamp = _issue(report, "unparsable", "timestamp")
    assert (stamp.count, stamp.first_value, stamp.first_row) == (1, "N/A", 3)
    assert np.isnan(tables.items["price"].iloc[1]) and len(tables.events) == 7


# ------------------------------------------------------------------------------ table file forms


def _spark_parquet(folder: Path, df: pd.DataFrame) -> None:
    """``df`` as Spark writes it: a folder of part files, with _SUCCESS and .crc files beside them."""
    folder.mkdir()
    half = len(df) // 2
    df.iloc[:half].to_parquet(folder / "part-00000-x.snappy.parquet", index=False)
    df.iloc[half:].to_parquet(folder / "part-00001-x.snappy.parquet", index=False)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000-x.snappy.parquet.crc").write_bytes(b"\x00crc")


@pytest.mark.parametrize("form", ["labels.CSV", "Labels.csv", "labels.csv.gz", "LABELS.CSV.GZ",
                                  "labels.PARQUET", "labels.parquet/"])
def test_optional_table_in_other_file_forms_is_read(tmp_path: Path, form: str) -> None:
    # these were skipped without a word: "0 fatal ... loadable", and fraud ran without labels
    frames = _frames()
    labels = frames.pop("labels")
    root = _write(tmp_path / "shop", frames)
    if form.endswith("/"):
        _spark_parquet(root / form.rstrip("/"), labels)
    elif form.lower().endswith(".parquet"):
        labels.to_parquet(root / form, index=False)
    else:
        labels.to_csv(root / form, index=False, compression="gzip" if form.lower().endswith(".gz") else None)
    tables, report = _load_quiet(root)
    assert report.issues == []
    assert report.files["labels"] == form.rstrip("/")
    assert tables.labels is not None
    assert tables.labels["user_id"].tolist() == ["007", "u1", "u2", "u3"]
    assert tables.labels["is_fraud"].tolist() == [1, 0, 0, 1]


def test_required_tables_as_parquet_folder_and_csv_gz(tmp_path: Path) -> None:
    frames = _frames()
    root = _write(tmp_path / "shop", {"items": frames["items"], "devices": frames["devices"]})
    _spark_parquet(root / "users.parquet", frames["users"])
    frames["events"].to_csv(root / "events.csv.gz", index=False, compression="gzip")
    frames["labels"].to_csv(root / "labels.csv.gz", index=False, compression="gzip")
    tables, report = _load_quiet(root)
    assert report.issues == []
    plain = _load_quiet(_write(tmp_path / "plain", frames)).tables
    for name in ("users", "events", "labels"):
        pd.testing.assert_frame_equal(getattr(tables, name), getattr(plain, name), check_dtype=False)
    # row numbers count the Parquet folder's records in part-file order, the .csv.gz's decompressed lines
    (root / "events.csv.gz").unlink()
    bad = frames["events"].copy()
    bad.loc[5, "user_id"] = "ghost"
    bad.to_csv(root / "events.csv.gz", index=False, compression="gzip")
    frames["users"].loc[3, "user_id"] = "u1"
    (root / "users.parquet" / "part-00001-x.snappy.parquet").unlink()
    frames["users"].iloc[2:].to_parquet(root / "users.parquet" / "part-00001-x.snappy.parquet", index=False)
    report = validate_tables(root)
    assert _issue(report, "duplicate_id").message.startswith("users.user_id: 1 of 4 rows repeat an id with other "
                                                             "values (first: 'u1', row 4, already at row 2)")


def test_unreadable_gzip_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "labels.csv").unlink()
    (root / "labels.csv.gz").write_bytes(b"not gzip at all")
    _fatal(root, r"labels: could not read labels\.csv\.gz \(")


@pytest.mark.parametrize("entry,says", [
    ("label.csv", "labels: label.csv is not read: the table must be named labels.csv, labels.csv.gz or "
                  "labels.parquet; rename it to labels.csv if it holds the labels table; the shop is loaded "
                  "without labels"),
    ("fraud_labels.parquet", "labels: fraud_labels.parquet is not read: the table must be named labels.csv, "
                             "labels.csv.gz or labels.parquet; rename it to labels.parquet if it holds the labels "
                             "table; the shop is loaded without labels"),
    ("labels.xlsx", "labels: labels.xlsx is not read: a table is read from labels.csv, labels.csv.gz or "
                    "labels.parquet; save it as labels.csv or labels.parquet; the shop is loaded without labels"),
    ("labels.csv/", "labels: labels.csv is a folder, not read: a folder is read only as Parquet "
                    "(labels.parquet); write one file labels.csv or a Parquet folder; the shop is loaded "
                    "without labels"),
    ("device.csv", "devices: device.csv is not read: the table must be named devices.csv, devices.csv.gz or "
                   "devices.parquet; rename it to devices.csv if it holds the devices table; the shop is loaded "
                   "without devices"),
])
def test_optional_table_not_read_is_a_warning(tmp_path: Path, entry: str, says: str) -> None:
    frames = _frames()
    table = "devices" if entry.startswith("device") else "labels"
    df = frames.pop(table)
    root = _write(tmp_path / "shop", frames)
    if entry.endswith("/"):
        (root / entry).mkdir()
        df.to_csv(root / entry / "part-00000.csv", index=False)
    else:
        (root / entry).write_bytes(b"x")
    tables, report = _repaired(root)
    issue = _issue(report, "not_read")
    assert (issue.severity, issue.table, issue.message) == ("warning", table, says)
    assert getattr(tables, table) is None or table == "devices"


@pytest.mark.parametrize("entry,says", [
    ("users.csv/", r"users: missing required table \(expected users\.csv, users\.csv\.gz or users\.parquet in "
                   r".*\); users\.csv is a folder, not read: a folder is read only as Parquet \(users\.parquet\)"),
    ("user.csv", r"users: missing required table \(.*\); user\.csv is not read: the table must be named "
                 r"users\.csv, users\.csv\.gz or users\.parquet; rename it to users\.csv if it holds the users table"),
])
def test_required_table_not_read_is_fatal_and_says_why(tmp_path: Path, entry: str, says: str) -> None:
    frames = _frames()
    users = frames.pop("users")
    root = _write(tmp_path / "shop", frames)
    if entry.endswith("/"):
        (root / entry).mkdir()
        users.to_csv(root / entry / "part-00000.csv", index=False)
    else:
        users.to_csv(root / entry, index=False)
    report = _fatal(root, says)
    assert _issue(report, "missing_table").table == "users"


def test_two_readable_forms_of_a_table_are_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    _frames()["labels"].to_csv(root / "Labels.csv.gz", index=False, compression="gzip")
    _fatal(root, r"labels: both Labels\.csv\.gz and labels\.csv are present in .*; keep only one")


# ------------------------------------------------------------------------- the shop's own columns


def _forty_users(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The shop's 4 users and 36 more (40 in all), no extra columns yet."""
    more = [f"x{k:02d}" for k in range(36)]
    return pd.DataFrame({"user_id": frames["users"]["user_id"].tolist() + more,
                         "created_at": frames["users"]["created_at"].tolist() + [""] * 36})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_extra_column_of_numbers_with_a_bad_value_is_reported(tmp_path: Path, fmt: str) -> None:
    # was read as text, and the features left out a column of 40 distinct "values" without a word
    frames = _frames()
    users = _forty_users(frames)
    age = [str(20 + k) for k in range(40)]
    age[6] = "abc"
    users["age"] = age
    height = [str(150 + k) for k in range(40)]
    for k in (1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23):  # R's NA: 12 missing words
        height[k] = "NA"
    users["height"] = height
    visits = [str(k) for k in range(40)]
    visits[2] = ""  # an int column with a blank could not be read at all ("cannot convert NA to integer")
    users["visits"] = visits
    frames["users"] = users
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    assert _issue(report, "not_numeric", "age").message == \
        "users.age: 1 of 40 values are not numbers (first: 'abc', row 7); set those 1 to NaN"
    assert _issue(report, "not_numeric", "height").message == \
        "users.height: 12 of 40 values are not numbers (first: 'NA', row 2); set those 12 to NaN"
    assert tables.users["age"].dtype == np.float64 and np.isnan(tables.users["age"].iloc[6])
    assert tables.users["age"].iloc[0] == 20.0 and tables.users["height"].isna().sum() == 12
    assert np.isnan(tables.users["visits"].iloc[2]) and tables.users["visits"].iloc[3] == 3
    assert not [i for i in report.issues if i.column == "visits"]


def test_extra_columns_left_out_of_the_features_are_reported(tmp_path: Path) -> None:
    frames = _frames()
    users = _forty_users(frames)
    users["note"] = [f"note {k}" for k in range(40)]
    users["score"] = [str(k) if k % 2 else f"s{k}" for k in range(40)]
    users["nothing"] = ""
    users["tier"] = ["gold", "1", "2", "3"] * 10  # a few values: one-hot, not reported
    frames["users"] = users
    frames["devices"]["serial"] = ["", ""]
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    note = _issue(report, "not_used", "note")
    assert note.severity == "warning" and note.message == (
        "users.note: the column has 40 distinct text values, more than the 32 one-hot encoded; "
        "the column is kept in the table but left out of the features")
    assert _issue(report, "not_used", "score").message == (
        "users.score: 20 of 40 values are not numbers (first: 's0', row 1), too many for a column of numbers, "
        "and it has 40 distinct values, more than the 32 one-hot encoded; the column is kept in the table but "
        "left out of the features")
    assert _issue(report, "empty_column", "nothing").message == \
        "users.nothing: the column has no values; it adds nothing to the features"
    assert _issue(report, "empty_column", "serial").table == "devices"
    assert not [i for i in report.issues if i.column == "tier"]
    assert tables.users["note"].tolist()[:2] == ["note 0", "note 1"]  # kept in the table
    assert "users.note" in validate_tables(tmp_path / "shop").format()


# --------------------------------------------------------------------- Parquet ids and booleans


def _without_pandas_metadata(root: Path) -> Path:
    """Rewrite every Parquet file of ``root`` as Spark or pyarrow write them: no pandas metadata."""
    for file in root.glob("*.parquet"):
        pq.write_table(pq.read_table(file).replace_schema_metadata(None), file)
    return root


@pytest.mark.parametrize("spark", [False, True])
def test_parquet_int64_ids_with_a_null_stay_exact(tmp_path: Path, spark: bool) -> None:
    # with a null, int64 ids were read as float64: 9007199254740993 became ...992, every event dropped
    big = 9_007_199_254_740_993
    ids = {"007": big, "u1": big + 2, "u2": big + 4, "u3": 5}
    frames = _frames()
    frames["users"]["user_id"] = frames["users"]["user_id"].map(ids).astype("Int64")
    events = frames["events"]["user_id"].map(ids).astype("Int64")
    events[3] = pd.NA
    frames["events"]["user_id"] = events
    frames["labels"]["user_id"] = pd.array([big, big + 2, None, 5], dtype="Int64")
    root = _write(tmp_path / "shop", frames, "parquet")
    tables, report = _repaired(_without_pandas_metadata(root) if spark else root)
    assert tables.users["user_id"].tolist() == [str(big), str(big + 2), str(big + 4), "5"]
    assert tables.events["user_id"].tolist()[:3] == [str(big), str(big + 2), str(big + 2)]
    assert [(i.table, i.kind, i.first_row) for i in report.issues] == [
        ("labels", "missing_id", 3), ("events", "missing_id", 4)]
    assert len(tables.events) == 7
    assert tables.labels is not None and tables.labels["user_id"].tolist() == [str(big), str(big + 2), "5"]


@pytest.mark.parametrize("spark", [False, True])
def test_parquet_boolean_labels_with_a_null(tmp_path: Path, spark: bool) -> None:
    # every label was rejected: "3 of 3 values are not 0/1 (first: 'True')"
    frames = _frames()
    frames["labels"]["is_fraud"] = pd.array([True, False, False, True], dtype="boolean")
    root = _write(tmp_path / "ok", frames, "parquet")
    tables, report = _load_quiet(_without_pandas_metadata(root) if spark else root)
    assert report.issues == [] and tables.labels is not None
    assert tables.labels["is_fraud"].tolist() == [1, 0, 0, 1]
    frames["labels"]["is_fraud"] = pd.array([True, None, False, True], dtype="boolean")
    root = _write(tmp_path / "null", frames, "parquet")
    report = _fatal(_without_pandas_metadata(root) if spark else root,
                    r"labels\.is_fraud: 1 of 4 values are not 0/1 \(first: row 2\); labels must be 0 or 1")
    assert _issue(report, "not_binary").first_value is None


# ------------------------------------------------------------------------------- time units


def test_created_at_in_milliseconds_is_flagged(tmp_path: Path) -> None:
    frames = _frames()
    frames["users"]["created_at"] = ["1700000000000", "1700000100000", "", "2023-06-01"]
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "epoch_milliseconds", "created_at").message == (
        "users.created_at: 2 of 4 values lie after year 5000 as epoch seconds (milliseconds?) "
        "(first: '1700000000000', row 1); kept as given; if they are milliseconds, divide them by 1,000")
    assert tables.users["created_at"].iloc[0] == 1_700_000_000_000


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_yyyymmdd_numbers_are_flagged(tmp_path: Path, fmt: str) -> None:
    # were taken as epoch seconds (1970) without a word
    frames = _frames()
    frames["events"]["timestamp"] = [20230201 + k for k in range(8)]
    frames["users"]["created_at"] = [20230101.0, 20230102.0, np.nan, 20230103.0]
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    assert _issue(report, "yyyymmdd", "timestamp").message == (
        "events.timestamp: 8 of 8 values look like yyyymmdd dates, not epoch seconds (first: '20230201', row 1); "
        "kept as epoch seconds (1970-1973); write dates as ISO-8601, e.g. 2023-02-01")
    created = _issue(report, "yyyymmdd", "created_at")
    assert (created.severity, created.count, created.first_row) == ("warning", 3, 1)
    assert tables.events["timestamp"].iloc[0] == 20230201


def test_seconds_that_are_no_dates_are_not_flagged(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["timestamp"] = [20231399 + 1000 * k for k in range(8)]  # month 13: seconds, not dates
    frames["users"]["created_at"] = ["2024-01-01", "1971-08-23", "", "20231301"]
    _, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert report.issues == []


# ------------------------------------------------------------------- unnamed columns, blank lines, quotes


def test_empty_unnamed_trailing_columns_are_dropped(tmp_path: Path) -> None:
    # a spreadsheet export's empty trailing columns were fatal ("users.: ... names this column 2 times")
    root = _write(tmp_path / "shop", _frames())
    rows = "".join(f"{u},2024-01-01T00:00:00,,\n" for u in ("007", "u1", "u2", "u3"))
    (root / "users.csv").write_text("user_id,created_at,,\n" + rows)
    (root / "items.csv").write_text("item_id,,title\n0001,,shoe\ni1, ,book\ni2,,pen\n")  # also inside
    tables, report = _load_quiet(root)
    assert not report.has_fatal
    users = [i for i in report.issues if i.table == "users"]
    assert [(i.severity, i.kind, i.message) for i in users] == [
        ("info", "unnamed_empty_column",
         "users.csv: 2 columns without a name and without values dropped (columns 3, 4)")]
    items = next(i for i in report.issues if i.table == "items")
    assert items.message == "items.csv: 1 column without a name and without values dropped (column 2)"
    assert tables.users.columns.tolist() == ["user_id", "created_at"]
    assert tables.users["created_at"].tolist() == [1_704_067_200.0] * 4
    assert "" not in tables.items.columns and tables.items["title"].tolist() == ["shoe", "book", "pen"]


def test_unnamed_column_with_values_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text("user_id,created_at,,\n007,2024-01-01T00:00:00,,\nu1,2024-01-01T00:00:00,x,\n"
                                    "u2,,,\nu3,,y,\n")
    report = _fatal(root, r"users\.csv: column 3 has no name but holds values \(first: 'x', row 2\); "
                          r"name it or remove it")
    issue = _issue(report, "unnamed_column")
    assert (issue.table, issue.column, issue.count, issue.first_row, issue.first_value) == ("users", None, 2, 2, "x")
    assert _issue(report, "unnamed_empty_column").message == (
        "users.csv: 1 column without a name and without values dropped (column 4)")
    assert not [i for i in report.issues if i.kind == "duplicate_column"]


def test_unnamed_parquet_column(tmp_path: Path) -> None:
    frames = _frames()
    frames["users"][""] = None
    root = _write(tmp_path / "shop", frames, "parquet")
    tables, report = _load_quiet(root)
    assert [i.message for i in report.issues] == [
        "users.parquet: 1 column without a name and without values dropped (column 4)"]
    assert tables.users.columns.tolist() == ["user_id", "created_at", "age"]
    frames["users"][""] = [None, "x", None, None]
    _fatal(_write(tmp_path / "bad", frames, "parquet"),
           r"users\.parquet: column 4 has no name but holds values \(first: 'x', row 2\)")


@pytest.mark.parametrize("newline,gz", [("\n", False), ("\r\n", False), ("\n", True)])
def test_blank_lines_do_not_shift_row_numbers(tmp_path: Path, newline: str, gz: bool) -> None:
    # pyarrow skips blank lines: "row 3" was the third non-blank row, line 7 of the file here
    frames = _frames()
    frames["events"].loc[2, "user_id"] = "ghost"
    root = _write(tmp_path / "shop", frames)
    lines = (root / "events.csv").read_text().splitlines()
    text = newline.join([lines[0], lines[1], "", lines[2], "", "", *lines[3:], "", ""])
    (root / "events.csv").unlink()
    path = root / ("events.csv.gz" if gz else "events.csv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    # blank lines before the header too: skipped, and the header still found (ids stay text)
    (root / "users.csv").write_text("\n\n" + (root / "users.csv").read_text())
    tables, report = _load_quiet(root)
    unknown = _issue(report, "unknown_id", "user_id")
    assert unknown.message == ("events.user_id: 1 of 8 events reference unknown users (first: 'ghost', row 6); "
                               "dropped those 1 events")
    assert unknown.first_row == 6
    blank = [i for i in report.issues if i.kind == "blank_lines"]
    assert [(i.table, i.severity, i.count) for i in blank] == [("users", "info", 2), ("events", "info", 4)]
    assert blank[1].message == (f"events: {path.name} has 4 blank lines (first: line 3); skipped, and counted "
                                "in the row numbers as a spreadsheet shows them")
    assert tables.users["user_id"].tolist() == ["007", "u1", "u2", "u3"]
    assert tables.events["user_id"].tolist()[:2] == ["007", "u1"]
    assert tables.events["timestamp"].tolist() == [1_700_000_000 + 60 * k for k in range(8) if k != 2]


def test_rows_with_quoted_line_breaks_and_blank_lines(tmp_path: Path) -> None:
    # a value spanning lines is one row (as a spreadsheet shows it); a blank line is a row too
    root = _write(tmp_path / "shop", _frames())
    (root / "items.csv").write_text('item_id,title,description,price\n0001,shoe,"red\n\nand warm",10.5\n\n'
                                    "i1,book,,-3\ni2,pen,,abc\n")
    tables, report = _load_quiet(root)
    assert _issue(report, "negative").message == (
        "items.price: 1 of 3 prices are negative (first: '-3', row 3); set those 1 to NaN")
    assert _issue(report, "not_numeric").first_row == 4
    assert tables.items["description"].tolist() == ["red\n\nand warm", "", ""]
    assert not [i for i in report.issues if i.kind == "unclosed_quote"]


def test_unclosed_quote_to_the_end_of_the_file_is_fatal(tmp_path: Path) -> None:
    # the quote swallowed users u1..u3 into 007's created_at: reported only as unknown users
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text('user_id,created_at\n007,"2024-01-01\nu1,2024-01-02\nu2,\nu3,2023-06-01\n')
    report = _fatal(root, r'users\.created_at: an unclosed quote \(\"\) on line 2 of users\.csv merged lines 2 to 5 '
                          r"\(the end of the file\) into one value")
    issue = _issue(report, "unclosed_quote")
    assert issue.message == (
        'users.created_at: an unclosed quote (") on line 2 of users.csv merged lines 2 to 5 (the end of the file) '
        "into one value (first: '2024-01-01\\nu1,2024-01-02\\nu2,\\n"
        "u3,2023-06-01\\n', row 1); close the quote or remove it")
    assert (issue.table, issue.column, issue.first_row) == ("users", "created_at", 1)


def test_unclosed_quote_closed_by_a_later_quote_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    lines = (root / "events.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",purchase,", ',"purchase,')  # line 3 opens a quote ...
    lines[5] = lines[5].replace(",view,", ',"view",')  # ... closed on line 6
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    issue = _issue(_fatal(root, r"unclosed quote"), "unclosed_quote")
    assert issue.message.startswith('events.event_type: an unclosed quote (") on line 3 of events.csv merged '
                                    "lines 3 to 6 into one value (first: 'purchase,")
    assert issue.first_row == 2


def test_unclosed_quote_that_breaks_parsing_is_named(tmp_path: Path) -> None:
    # a quote in the first column leaves the row short: pyarrow's "Expected 2 columns, got 1"
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text('user_id,created_at\n007,1\n"u1,2\nu2,3\nu3,4\n')
    issue = _issue(_fatal(root, r'users\.user_id: an unclosed quote \(\"\) on line 3 of users\.csv merged '
                                r"lines 3 to 5"), "unclosed_quote")
    assert issue.kind == "unclosed_quote"
    assert not [i for i in validate_tables(root).issues if i.kind == "unreadable"]


def _big_events(frames: dict[str, pd.DataFrame], n: int = 40_000) -> pd.DataFrame:
    """Over 1 MB of events: more than one of pyarrow's blocks."""
    ev = frames["events"]
    return pd.concat([ev] * (n // len(ev)), ignore_index=True)


def test_unclosed_quote_in_a_large_file_is_fatal(tmp_path: Path) -> None:
    # pyarrow dropped the rest of its 1 MB block without a word (25,000 events here)
    frames = _frames()
    frames["events"] = _big_events(frames)
    root = _write(tmp_path / "shop", frames)
    lines = (root / "events.csv").read_text().splitlines()
    assert ",purchase," in lines[10]
    lines[10] = lines[10].replace(",purchase,", ',"purchase,')
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    issue = _issue(_fatal(root, r"unclosed quote"), "unclosed_quote")
    assert issue.message.startswith('events.event_type: an unclosed quote (") on line 11 of events.csv merged '
                                    "lines 11 to 40001 (the end of the file) into one value (first: 'purchase,")


def test_quoted_line_breaks_in_a_large_file_load(tmp_path: Path) -> None:
    # a value with quoted line breaks straddling pyarrow's 1 MB blocks failed to parse
    frames = _frames()
    n = 30_000
    frames["items"] = pd.DataFrame({
        "item_id": ["0001", "i1", "i2", *(f"x{k}" for k in range(n))],
        "description": [f"line one, of {k}\nline two\n\nline four" for k in range(n + 3)],
        "price": 1.0,
    })
    root = _write(tmp_path / "shop", frames)
    assert (root / "items.csv").stat().st_size > 1 << 20
    tables, report = _load_quiet(root)
    assert report.issues == []
    assert len(tables.items) == n + 3
    assert tables.items["description"].iloc[-1] == f"line one, of {n + 2}\nline two\n\nline four"


def test_free_text_holding_whole_rows_is_a_warning(tmp_path: Path) -> None:
    # an unclosed quote in a title closed by the next quote: items i1 and i2 vanished into the title
    root = _write(tmp_path / "shop", _frames())
    (root / "items.csv").write_text('item_id,title,category,price\n0001,"red shoe,shoes,10\ni1,book,books,3\n'
                                    'i2,"pen",office,1\n')
    report = validate_tables(root)
    issue = _issue(report, "unclosed_quote")
    assert (issue.severity, issue.column, issue.first_row) == ("warning", "title", 1)
    assert report.counts["items"] == 1
    # the events of the two items that vanished are 6 of 8: the tables no longer fit together
    assert [(i.kind, i.column, i.count) for i in report.fatal][0] == ("unknown_id", "item_id", 6)
    assert issue.message.startswith("items.title: a quoted value on lines 2 to 4 of items.csv holds lines that "
                                    'look like whole rows: probably an unclosed quote (") on line 2 merged them')
