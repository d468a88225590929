"""The catalogue journal (retrieval/catalogue.py): append, read back, damage and interruption."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from shopgraph.retrieval.catalogue import CatalogueError, CatalogueJournal, decode_vector, encode_vector


def _add(item_id: str, vec: np.ndarray | None = None) -> dict[str, object]:
    return {"op": "add", "item_id": item_id, "title": f"title {item_id}", "category": "toys", "description": "",
            "price": 3.5, "image": "", "text_model": "bundled", "image_model": "bundled",
            "text_vec": encode_vector(vec), "image_vec": None, "at": "2026-12-06T00:00:00Z"}


def test_vectors_round_trip_exactly():
    vec = np.random.default_rng(0).normal(size=384).astype(np.float32)
    np.testing.assert_array_equal(decode_vector(encode_vector(vec)), vec)
    assert encode_vector(None) is None and decode_vector(None) is None


def test_appended_entries_read_back_in_order_and_from_an_offset(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    assert journal.read() == ([], 0, 0, 0) and journal.size() == 0
    with journal.locked():
        first = journal.append(_add("a", np.ones(4, np.float32)))
        journal.append({"op": "remove", "item_id": "a", "at": "2026-12-06T00:00:01Z"})
    entries, end, lines, incomplete = journal.read()
    assert [e["op"] for e in entries] == ["add", "remove"] and (end, lines, incomplete) == (journal.size(), 2, 0)
    np.testing.assert_array_equal(decode_vector(entries[0]["text_vec"]), np.ones(4, np.float32))
    later, end2, lines2, _ = journal.read(first, 1)
    assert [e["op"] for e in later] == ["remove"] and (end2, lines2) == (end, 2)
    assert journal.read(end, 2) == ([], end, 2, 0)


def test_an_unfinished_last_line_is_not_read_and_the_next_append_cuts_it_off(tmp_path: Path, caplog):
    journal = CatalogueJournal(tmp_path)
    with journal.locked():
        end = journal.append(_add("a"))
    with open(journal.path, "ab") as f:
        f.write(b'{"op":"add","item_id":"b","t')  # a crash part way through a write
    entries, offset, lines, incomplete = journal.read()
    assert [e["item_id"] for e in entries] == ["a"] and (offset, lines, incomplete) == (end, 1, 28)
    with caplog.at_level(logging.WARNING), journal.locked():
        journal.append(_add("c"))
    assert "cut off an incomplete last line (28 bytes)" in caplog.text
    assert [e["item_id"] for e in journal.read()[0]] == ["a", "c"]


def test_a_journal_that_is_only_an_unfinished_line_is_cut_to_nothing(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    journal.path.write_bytes(b'{"op":')
    assert journal.read() == ([], 0, 0, 6)
    with journal.locked():
        journal.append(_add("a"))
    assert [e["item_id"] for e in journal.read()[0]] == ["a"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda line: line.replace(b"title a", b"title b"), "line 2: its sha256 does not match its content"),
    (lambda line: line[:-5] + b"\n", "line 2: not valid JSON"),
    (lambda line: b"[1, 2]\n", "line 2: expected a JSON object \\(got list\\)"),
])
def test_a_damaged_line_is_an_error_naming_its_line(tmp_path: Path, damage, message):
    journal = CatalogueJournal(tmp_path)
    with journal.locked():
        journal.append(_add("z"))
        journal.append(_add("a"))
    lines = journal.path.read_bytes().splitlines(keepends=True)
    journal.path.write_bytes(lines[0] + damage(lines[1]))
    with pytest.raises(CatalogueError, match=message):
        journal.read()


def _signed(entry: dict[str, object]) -> bytes:
    from shopgraph.retrieval.catalogue import _digest

    entry = {"v": 1, **entry}
    entry["sha256"] = _digest(entry)
    return (json.dumps(entry) + "\n").encode()


@pytest.mark.parametrize(("change", "message"), [
    ({"op": "rename"}, "op must be one of add, remove \\(got 'rename'\\)"),
    ({"item_id": ""}, "item_id must be a non-empty string"),
    ({"title": 5}, "title must be a string \\(got 5\\)"),
    ({"price": "3"}, "price must be a number or null \\(got '3'\\)"),
    ({"text_vec": "not base64!"}, "text_vec is not base64 float32"),
    ({"v": 2}, "journal format 2, this version reads 1"),
])
def test_a_well_signed_but_malformed_entry_is_refused(tmp_path: Path, change, message):
    journal = CatalogueJournal(tmp_path)
    journal.path.write_bytes(_signed({**_add("a"), **change}))
    with pytest.raises(CatalogueError, match="line 1: " + message):
        journal.read()


def test_images_are_kept_once_by_content(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    rel = journal.save_image(b"\x89PNG fake", "png")
    assert rel.startswith("added_images/") and rel.endswith(".png")
    assert (tmp_path / rel).read_bytes() == b"\x89PNG fake"
    assert journal.save_image(b"\x89PNG fake", "png") == rel
    assert len(list((tmp_path / "added_images").iterdir())) == 1


def test_a_journal_shorter_than_what_was_applied_is_an_error(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    with journal.locked():
        end = journal.append(_add("a"))
    assert journal.read(end, 1) == ([], end, 1, 0)
    journal.path.unlink()
    with pytest.raises(CatalogueError, match=f"0 bytes, shorter than the {end:,} already applied"):
        journal.read(end, 1)
    assert journal.read() == ([], 0, 0, 0)
