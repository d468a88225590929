"""Tests for graph/load.py on tables as shops export them: large values, ids of another format,
event types in another case, BigQuery times, other separators, spreadsheet leftovers, re-exported
rows, nested Parquet columns. Each test names what the loader did before the fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shopgraph.graph import load
from shopgraph.graph.load import load_tables, validate_tables
from shopgraph.ui.cli import main
from tests.graph.test_load import _fatal, _frames, _issue, _load_quiet, _repaired, _write

# --------------------------------------------------------------------------------------- large values


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None]]:
    """Record each pyarrow read of a CSV file: (file name, block size; None for pyarrow's default)."""
    calls: list[tuple[str, int | None]] = []
    read = load._read_csv

    def counted(file: Path, *args: Any, **kwargs: Any) -> pd.DataFrame:
        calls.append((file.name, kwargs.get("block_size")))
        return read(file, *args, **kwargs)

    monkeypatch.setattr(load, "_read_csv", counted)
    return calls


@pytest.mark.parametrize("quoted", [False, True])
def test_a_value_of_a_few_megabytes_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quoted: bool) -> None:
    # "could not read items.csv (ArrowInvalid: straddling object straddles two block boundaries)"
    frames = _frames()
    html = "<p>" + "x" * 3_000_000 + ("</p>, with a comma" if quoted else "</p>")
    frames["items"]["description"] = ["short", html, ""]
    root = _write(tmp_path / "shop", frames)
    calls = _reads(monkeypatch)
    tables, report = _load_quiet(root)
    assert report.issues == []
    assert tables.items["description"].tolist() == ["short", html, ""]
    # only the file that failed is read again, with larger blocks; the others once, as before
    assert [c for c in calls if c[0] == "items.csv"] == [("items.csv", None), ("items.csv", 4 << 20)]
    assert all(block is None for name, block in calls if name != "items.csv")


def test_a_value_larger_than_the_largest_block_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "_MAX_BLOCK", 1 << 20)  # instead of writing a file of over 64 MB
    frames = _frames()
    frames["items"]["description"] = ["short", "", "<p>" + "y" * 3_000_000]
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"items\.description: the value in row 3 of items\.csv is 3,000,003 characters long "
                    r"\(first: '<p>yyy.*\.\.\.'\); a row may hold at most 1 MB: shorten the value or leave it out")
    issue = _issue(report, "value_too_large")
    assert (issue.table, issue.column, issue.first_row) == ("items", "description", 3)
    assert not [i for i in report.issues if i.kind == "unreadable"]


# --------------------------------------------------------------------------------------- unknown ids


def test_events_with_ids_of_another_format_are_fatal(tmp_path: Path) -> None:
    # "9,368 of 9,381 events reference unknown users ... dropped", "loadable", and then build failed
    # with "no events of type 'purchase'"
    frames = _frames()
    frames["users"]["user_id"] = "x" + frames["users"]["user_id"]
    frames["labels"]["user_id"] = "x" + frames["labels"]["user_id"]
    frames["events"].loc[1, "user_id"] = "xu1"  # one event of the right form
    report = _fatal(_write(tmp_path / "shop", frames), r"events\.user_id: 7 of 8 events reference unknown users")
    issue = _issue(report, "unknown_id", "user_id")
    assert issue.message == (
        "events.user_id: 7 of 8 events reference unknown users (first: '007', row 1), more than half, so the "
        "tables do not fit together: events.user_id has ids such as '007', 'u1', 'u2', users.user_id has "
        "'x007', 'xu1', 'xu2'; users.user_id has 'x007' where events.user_id has '007': the ids seem to differ by "
        "a prefix or suffix; write the same ids in both")
    assert (issue.count, issue.total, issue.first_row) == (7, 8, 1)
    with pytest.raises(ValueError) as err:
        load_tables(tmp_path / "shop")
    assert "no events of type" not in str(err.value)


def test_items_of_another_format_are_fatal_too(tmp_path: Path) -> None:
    frames = _frames()
    frames["items"]["item_id"] = ["SKU-0001", "SKU-i1", "SKU-i2"]
    report = _fatal(_write(tmp_path / "shop", frames), r"events\.item_id: 8 of 8 events reference unknown items")
    assert "items.item_id has 'SKU-0001' where events.item_id has '0001'" in _issue(report, "unknown_id").message
    assert not [i for i in report.issues if i.column == "user_id"]  # the users fit: judged on every event


@pytest.mark.parametrize("unknown,fatal", [(1, False), (4, False), (5, True)])
def test_a_few_unknown_ids_stay_a_repair(tmp_path: Path, unknown: int, fatal: bool) -> None:
    frames = _frames()
    frames["events"].loc[: unknown - 1, "user_id"] = [f"gone{k}" for k in range(unknown)]
    report = validate_tables(_write(tmp_path / "shop", frames))
    issue = _issue(report, "unknown_id", "user_id")
    assert (issue.count, issue.fatal) == (unknown, fatal)
    assert issue.severity == ("fatal" if fatal else "repaired")
    if not fatal:
        assert issue.message == (f"events.user_id: {unknown} of 8 events reference unknown users (first: 'gone0', "
                                 f"row 1); dropped those {unknown} events")


# --------------------------------------------------------------------------------------- event types


def test_no_event_of_the_target_type_is_fatal_in_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # validate said "loadable"; build then refused: "target: no events of type 'purchase'"
    frames = _frames()
    frames["events"]["event_type"] = frames["events"]["event_type"].replace({"purchase": "order"})
    root = _write(tmp_path / "shop", frames)
    report = validate_tables(root)
    issue = _issue(report, "no_target_events")
    assert issue.fatal and issue.message == (
        "events.event_type: no events of type 'purchase', the type shopgraph build recommends (found: 'view' 4, "
        "'order' 4); name the purchases 'purchase' in event_type, or build with --target set to one of the types "
        "found")
    assert main(["validate", str(root)]) == 1
    assert "no events of type 'purchase'" in capsys.readouterr().out
    assert main(["validate", str(root), "--target", "order"]) == 0  # validate checks the target build is given
    capsys.readouterr()
    # build says it with the loading report, before anything is encoded, and writes no run
    assert main(["build", "--data", str(root), "--out", str(tmp_path / "run"), "--no-text", "--no-image"]) == 1
    assert "no events of type 'purchase'" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # another target: checked as asked; none: not checked (load_tables, whose caller checks its own target)
    assert not validate_tables(root, target="order").has_fatal
    assert not validate_tables(root, target=None).has_fatal
    assert len(_load_quiet(root).tables.events) == 8
    note = _issue(validate_tables(root, target="Order"), "no_target_events").message
    assert "(event types are lower-cased when loaded: give the target in lower case)" in note


def test_purchase_in_another_case_is_the_target(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["event_type"] = frames["events"]["event_type"].str.capitalize()
    report = validate_tables(_write(tmp_path / "shop", frames))
    assert not report.has_fatal
    assert [i.kind for i in report.issues] == ["event_type_case"]


# --------------------------------------------------------------------------------------- export formats


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bigquery_utc_times_are_read(tmp_path: Path, fmt: str) -> None:
    # every "2025-10-03 00:21:10 UTC" was dropped as unparsable
    frames = _frames()
    frames["events"]["timestamp"] = [
        "2024-01-01 00:00:00 UTC", "2024-01-01 00:01:00.750 UTC", "2024-01-01T00:02:00 UTC", "2024-01-01 00:03:00utc",
        "2024-01-01 00:04:00 GMT", "2024-01-01 00:05:00", "1704067560", "2024-01-01 00:07:00 UTC",
    ]
    frames["users"]["created_at"] = ["2024-01-01 00:00:00 UTC", "", "2023-06-01 12:00:00 UTC", "9999-12-31 00:00:00 UTC"]
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    assert [(i.kind, i.column) for i in report.issues] == [("out_of_range", "created_at")]
    assert tables.events["timestamp"].tolist() == [1_704_067_200 + 60 * k for k in range(8)]
    assert tables.users["created_at"].tolist()[:1] == [1_704_067_200.0]
    assert tables.users["created_at"].iloc[2] == 1_685_620_800.0


def test_words_after_a_time_other_than_utc_are_still_unparsable(tmp_path: Path) -> None:
    frames = _frames()
    frames["events"]["timestamp"] = frames["events"]["timestamp"].astype(str)
    frames["events"].loc[2, "timestamp"] = "2024-01-01 00:00:00 CEST"
    _, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "unparsable", "timestamp").first_value == "2024-01-01 00:00:00 CEST"


def test_true_false_labels_in_csv_are_accepted(tmp_path: Path) -> None:
    # "labels.is_fraud: 4 of 4 values are not 0/1 (first: 'true', row 1)", although Parquet booleans passed
    frames = _frames()
    frames["labels"]["is_fraud"] = ["true", "False", " FALSE ", "True"]
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert report.issues == []
    assert tables.labels is not None and tables.labels["is_fraud"].tolist() == [1, 0, 0, 1]


# --------------------------------------------------------------------------------------- fraud labels


@pytest.mark.parametrize("case,kind,says", [
    ("zeros", "no_fraud_labels", "labels: none of the 4 labels is fraud (is_fraud = 1); the fraud scorer cannot "
                                 "be trained without fraud labels (is_fraud = 1) and is left out"),
    ("header", "no_fraud_labels", "labels: labels.csv has no rows; the fraud scorer cannot be trained without "
                                  "fraud labels (is_fraud = 1) and is left out"),
    ("strangers", "no_fraud_labels", "labels: no label is left after the repairs above (all 4 dropped); the fraud "
                                     "scorer cannot be trained"),
    ("ones", "no_clean_labels", "labels: all 4 labels are fraud (is_fraud = 1), none 0; the fraud scorer cannot "
                                "be trained without users labelled 0 (not fraud) and is left out"),
])
def test_labels_without_both_classes_are_a_warning(tmp_path: Path, case: str, kind: str, says: str) -> None:
    # validate reported nothing; the run then had no fraud scorer
    frames = _frames()
    labels = frames["labels"]
    if case == "zeros":
        labels["is_fraud"] = 0
    elif case == "header":
        frames["labels"] = labels.iloc[:0]
    elif case == "strangers":
        labels["user_id"] = ["x1", "x2", "x3", "x4"]
    else:
        labels["is_fraud"] = 1
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    issue = _issue(report, kind)
    assert issue.severity == "warning" and issue.message.startswith(says)
    assert tables.labels is not None


# --------------------------------------------------------------------------------------- separators


@pytest.mark.parametrize("sep,says", [(";", "semicolons (;)"), ("\t", "tabs"), ("|", "pipes (|)")])
def test_another_separator_is_named(tmp_path: Path, sep: str, says: str) -> None:
    # "missing required column 'user_id' (found: user_id;created_at;age)"; with decimal commas
    # ("3,5") the rows were "ragged" instead
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text(sep.join(["user_id", "created_at", "score"]) + "\n"
                                    + sep.join(["u1", "2024-01-01", "3,5"]) + "\n")
    report = _fatal(root, rf"users: users\.csv seems to use {re.escape(says)} between values, not commas")
    issue = _issue(report, "wrong_delimiter")
    assert issue.message == (f"users: users.csv seems to use {says} between values, not commas (header: "
                             f"{sep.join(['user_id', 'created_at', 'score'])!r}); save it as comma-separated CSV")
    assert not [i for i in report.issues if i.kind in ("missing_column", "ragged_rows")]


def test_a_separator_inside_a_column_name_is_no_other_separator(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "devices.csv").write_text("device_id,os;version\nd0,ios;17\nd1,android;14\n")
    tables, report = _load_quiet(root)
    assert not report.has_fatal and tables.devices["os;version"].tolist() == ["ios;17", "android;14"]


# --------------------------------------------------------------------------------------- spreadsheet leftovers


def test_a_trailing_comma_on_every_row_is_repaired(tmp_path: Path) -> None:
    # "2 rows of users.csv do not have the header's 3 values ...; a value that holds a comma must be in
    # double quotes"
    frames = _frames()
    root = _write(tmp_path / "shop", frames)
    lines = (root / "users.csv").read_text().splitlines()
    (root / "users.csv").write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    tables, report = _repaired(root)
    issue = _issue(report, "trailing_comma")
    assert issue.message == ("users: every data row of users.csv ends in a comma (one empty value more than the "
                             "header's 3 names; first: line 2); dropped those 4 empty values")
    plain = _load_quiet(_write(tmp_path / "plain", frames)).tables
    pd.testing.assert_frame_equal(tables.users, plain.users)


def test_a_trailing_comma_on_some_rows_is_named(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").write_text("user_id,created_at\n007,1\nu1,2,\nu2,3,\nu3,4\n")
    report = _fatal(root, r"users: 2 rows of users\.csv do not have the header's 2 values: line 3 has 3 \('u1,2,'\); "
                          r"line 4 has 3 \('u2,3,'\); each ends in a comma with nothing after it \(a trailing comma, "
                          r"one empty value more than the header names\): remove the trailing commas")
    assert "double quotes" not in _issue(report, "ragged_rows").message


def test_excel_sep_line_is_skipped(tmp_path: Path) -> None:
    # "sep=," was read as the header: "missing required column 'item_id' (found: sep=)"
    frames = _frames()
    frames["events"].loc[2, "user_id"] = "ghost"
    root = _write(tmp_path / "shop", frames)
    for name in ("items", "events"):
        (root / f"{name}.csv").write_text("sep=,\n" + (root / f"{name}.csv").read_text())
    tables, report = _repaired(root)
    sep = [i for i in report.issues if i.kind == "excel_sep_line"]
    assert [i.message for i in sep] == [
        f"{name}: line 1 of {name}.csv is 'sep=,', Excel's note on the separator, not the header; skipped it "
        "(the header is line 2)" for name in ("items", "events")]
    # row 1 is still the first line under the header
    assert _issue(report, "unknown_id", "user_id").first_row == 3
    assert tables.items["item_id"].tolist() == ["0001", "i1", "i2"]
    assert len(tables.events) == 7


def test_excel_sep_line_naming_another_separator_is_fatal(tmp_path: Path) -> None:
    root = _write(tmp_path / "shop", _frames())
    (root / "items.csv").write_text("sep=;\nitem_id;title\n0001;shoe\n")
    _fatal(root, r"items: line 1 of items\.csv is 'sep=;', Excel's note that values are separated by semicolons "
                 r"\(;\); a table is read with commas between values: save it as comma-separated CSV")


# --------------------------------------------------------------------------------------- messages


def test_a_broken_link_is_named(tmp_path: Path) -> None:
    # "users: missing required table (expected users.csv, ...)" for a users.csv that was there, as a link
    root = _write(tmp_path / "shop", _frames())
    (root / "users.csv").unlink()
    os.symlink(tmp_path / "moved" / "users.csv", root / "users.csv")
    (root / "labels.csv").unlink()
    os.symlink(tmp_path / "moved" / "labels.csv", root / "labels.csv")
    report = _fatal(root, rf"users: users\.csv is a broken link: it points to '{re.escape(str(tmp_path))}/moved/"
                          r"users\.csv', which does not exist; fix the link or put the file itself in the folder")
    kinds = {(i.table, i.kind, i.severity) for i in report.issues}
    assert ("users", "broken_link", "fatal") in kinds and ("labels", "broken_link", "warning") in kinds
    assert not [i for i in report.issues if i.kind == "missing_table"]


@pytest.mark.parametrize("marker", [True, False])
def test_a_parquet_folder_without_part_files_is_named(tmp_path: Path, marker: bool) -> None:
    # "users: missing required column 'user_id' (found: no columns)"
    frames = _frames()
    root = _write(tmp_path / "shop", {k: v for k, v in frames.items() if k != "users"})
    (root / "users.parquet").mkdir()
    if marker:
        (root / "users.parquet" / "_SUCCESS").write_bytes(b"")
    held = "it holds only _SUCCESS" if marker else "it is empty"
    report = _fatal(root, rf"users: the folder users\.parquet has no Parquet part files \({held}\); the job that "
                          r"wrote it wrote no data, or its part-\*\.parquet files were not copied")
    assert not [i for i in report.issues if i.kind == "missing_column"]


def test_image_urls_are_named_as_urls(tmp_path: Path) -> None:
    # "items.image: 2 of 3 image files do not exist (first: 'https://...')"
    frames = _frames()
    frames["items"]["image"] = ["https://cdn.example.com/a.jpg", "s3://bucket/b.png", ""]
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    assert _issue(report, "image_url").message == (
        "items.image: 2 of 3 image values are URLs (first: 'https://cdn.example.com/a.jpg', row 1); set those 2 "
        'to "": URLs are not downloaded; an image must be a file in the tables folder, given by its path relative '
        "to the folder (e.g. img/123.jpg)")
    assert not [i for i in report.issues if i.kind == "image_missing"]
    assert tables.items["image"].tolist() == ["", "", ""]


# --------------------------------------------------------------------------------------- repeated rows


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("table,column", [("users", "user_id"), ("items", "item_id"), ("devices", "device_id")])
def test_rows_exported_twice_are_dropped(tmp_path: Path, fmt: str, table: str, column: str) -> None:
    # identical rows were fatal "duplicate_id" (labels' repeats were already repaired)
    frames = _frames()
    first = frames[table].iloc[0][column]
    frames[table] = pd.concat([frames[table], frames[table].iloc[[0, 1]]], ignore_index=True)
    n = len(frames[table])
    tables, report = _repaired(_write(tmp_path / "shop", frames, fmt))
    issue = _issue(report, "duplicate_row")
    assert issue.message == (f"{table}.{column}: 2 of {n} rows repeat an earlier row exactly, every column the "
                             f"same (first: {first!r}, row {n - 1}, same as row 1); dropped those 2 repeats")
    assert getattr(tables, table)[column].tolist() == frames[table][column].tolist()[:-2]
    assert report.counts[table] == n - 2


def test_a_repeated_id_with_other_values_stays_fatal_beside_exact_repeats(tmp_path: Path) -> None:
    frames = _frames()
    users = frames["users"]
    other = users.iloc[[2]].assign(age=99)
    frames["users"] = pd.concat([users, users.iloc[[1]], other], ignore_index=True)
    report = _fatal(_write(tmp_path / "shop", frames),
                    r"users\.user_id: 1 of 6 rows repeat an id with other values \(first: 'u2', row 6, already at "
                    r"row 3\)")
    assert _issue(report, "duplicate_row").count == 1


def test_events_exported_twice_are_dropped(tmp_path: Path) -> None:
    # were kept silently: a purchase exported twice counted twice in every feature
    frames = _frames()
    events = frames["events"]
    frames["events"] = pd.concat([events, events.iloc[[3, 1, 3]]], ignore_index=True)
    tables, report = _repaired(_write(tmp_path / "shop", frames))
    issue = _issue(report, "duplicate_event")
    assert issue.severity == "repaired" and issue.message == (
        "events: 3 of 11 events repeat an earlier event exactly, to the second (first: row 9, same as row 4); "
        "dropped those 3 repeats (an event exported twice)")
    pd.testing.assert_frame_equal(tables.events, _load_quiet(_write(tmp_path / "plain", _frames())).tables.events)


def test_events_that_differ_in_an_extra_column_are_no_repeats(tmp_path: Path) -> None:
    frames = _frames()
    events = frames["events"].assign(order_id=[f"o{k}" for k in range(8)])
    twice = events.iloc[[1]].assign(order_id="o99")  # the same purchase at the same second: another order
    frames["events"] = pd.concat([events, twice], ignore_index=True)
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    assert report.issues == [] and len(tables.events) == 9


@pytest.mark.parametrize("times", ["dates", "none"])
def test_repeated_events_without_times_of_day_are_kept(tmp_path: Path, times: str) -> None:
    frames = _frames()
    events = frames["events"]
    if times == "dates":
        events["timestamp"] = "2024-01-01"
    else:
        events = events.drop(columns="timestamp")
    frames["events"] = pd.concat([events, events.iloc[[1]]], ignore_index=True)
    tables, report = _load_quiet(_write(tmp_path / "shop", frames))
    issue = _issue(report, "duplicate_event")
    why = "timestamps are dates only" if times == "dates" else "events have no timestamps"
    assert (issue.severity, issue.action) == ("info", "kept")
    assert issue.message == (f"events: 1 of 9 events repeat an earlier event exactly (first: row 9, same as row 2); "
                             f"kept: the {why}, so a repeat may be a second view or purchase on the same day")
    assert len(tables.events) == 9


# --------------------------------------------------------------------------------------- nested Parquet columns


def test_list_and_struct_columns_are_left_out_with_a_warning(tmp_path: Path) -> None:
    # became features: user_tags=['a' 'b'] one-hot encoded
    frames = _frames()
    root = _write(tmp_path / "shop", frames, "parquet")
    users = pq.read_table(root / "users.parquet")
    users = users.append_column("user_tags", pa.array([["a", "b"], [], None, ["c"]], pa.list_(pa.string())))
    users = users.append_column("address", pa.array([{"city": "x"}, {"city": "y"}, None, {"city": "x"}]))
    pq.write_table(users, root / "users.parquet")
    devices = pq.read_table(root / "devices.parquet")
    pq.write_table(devices.append_column("apps", pa.array([[1, 2], [3]], pa.list_(pa.int64()))),
                   root / "devices.parquet")
    # an items list column (kept, unused) does not break the comparison of repeated rows
    items = pq.read_table(root / "items.parquet")
    items = items.append_column("tags", pa.array([["x"], ["y"], []], pa.list_(pa.string())))
    pq.write_table(pa.concat_tables([items, items.slice(0, 1)]), root / "items.parquet")
    tables, report = _repaired(root)
    nested = {(i.table, i.column): i for i in report.issues if i.kind == "nested_column"}
    assert set(nested) == {("users", "user_tags"), ("users", "address"), ("devices", "apps")}
    assert nested[("users", "user_tags")].message == (
        "users.user_tags: the column holds lists, several values in each row, not one; dropped the column, so it is "
        "left out of the features (flatten it into columns of single values to use it)")
    assert "holds maps or structs" in nested[("users", "address")].message
    assert nested[("users", "user_tags")].severity == "warning"
    assert tables.users.columns.tolist() == ["user_id", "created_at", "age"]
    assert "apps" not in tables.devices.columns
    assert _issue(report, "duplicate_row").table == "items" and len(tables.items) == 3


def test_rows_differing_deep_in_a_long_list_are_not_repeats(tmp_path: Path) -> None:
    """Two items rows that differ only at element 1,000 of a 2,000-element list are two records
    with one id (fatal), not one record exported twice: the comparison reads every element (the
    text of a numpy array elides its middle)."""
    frames = _frames()
    frames["items"]["emb"] = [list(range(2000)) for _ in range(len(frames["items"]))]
    other = frames["items"].iloc[[1]].copy()
    changed = list(range(2000))
    changed[1000] = -1
    other["emb"] = [changed]
    frames["items"] = pd.concat([frames["items"], other], ignore_index=True)
    report = validate_tables(_write(tmp_path / "shop", frames, "parquet"))
    assert report.has_fatal and _issue(report, "duplicate_id").table == "items"
    assert not [i for i in report.issues if i.kind == "duplicate_row"]
    frames["items"].at[len(frames["items"]) - 1, "emb"] = list(range(2000))  # now the same: a repeat
    report = validate_tables(_write(tmp_path / "same", frames, "parquet"))
    assert not report.has_fatal and _issue(report, "duplicate_row").count == 1


def test_report_json_holds_the_new_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = _frames()
    frames["events"]["event_type"] = frames["events"]["event_type"].str.upper()
    root = _write(tmp_path / "shop", frames)
    assert main(["validate", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [i["kind"] for i in data["issues"]] == ["event_type_case"]
    assert data["issues"][0]["count"] == 8 and data["issues"][0]["first_value"] == "VIEW"
