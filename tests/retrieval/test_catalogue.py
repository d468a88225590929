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


def test_blank_lines_added_by_hand_are_skipped_and_still_counted(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    with journal.locked():
        journal.append(_add("a"))
        journal.append(_add("b"))
    first, second = journal.path.read_bytes().splitlines(keepends=True)
    journal.path.write_bytes(b"\n" + first + b"  \r\n\n" + second)
    entries, end, lines, incomplete = journal.read()
    assert [e["item_id"] for e in entries] == ["a", "b"] and (end, lines, incomplete) == (journal.size(), 5, 0)
    journal.path.write_bytes(b"\n" + first + b"\n" + second[:-5] + b"\n")
    with pytest.raises(CatalogueError, match="line 4: not valid JSON"):  # a damaged line is named as an editor counts
        journal.read()


def _signed(entry: dict[str, object]) -> bytes:
    from shopgraph.retrieval.catalogue import _digest

    entry = {"v": 1, **entry}
    entry["sha256"] = _digest(entry)
    return (json.dumps(entry) + "\n").encode()


@pytest.mark.parametrize(("change", "message"), [
    ({"op": "rename"}, "op must be one of add, remove, add_batch, remove_batch \\(got 'rename'\\)"),
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
    journal.path.write_bytes(b"")
    with pytest.raises(CatalogueError, match=f"0 bytes, shorter than the {end:,} already applied"):
        journal.read(end, 1)
    journal.path.unlink()
    with pytest.raises(CatalogueError, match=f"catalogue.jsonl: removed, after {end:,} bytes of it were applied"):
        journal.read(end, 1)
    assert journal.read() == ([], 0, 0, 0)


# -- compaction ---------------------------------------------------------------------------------
def _remove(item_id: str) -> dict[str, object]:
    return {"op": "remove", "item_id": item_id, "at": "2026-12-06T00:00:00Z"}


def _write(journal: CatalogueJournal, *entries: dict[str, object]) -> None:
    with journal.locked():
        for entry in entries:
            journal.append(entry)


def _served(entries: list[dict[str, object]], trained: set[str]) -> dict[str, object]:
    """The ids served after replaying ``entries`` over ``trained`` as the service does, each with the
    title of the add that serves it (``None``: the trained item)."""
    served: dict[str, object] = dict.fromkeys(trained)
    for e in entries:
        item_id = str(e["item_id"])
        if e["op"] == "add" and item_id not in served:
            served[item_id] = e["title"]
        elif e["op"] == "remove":
            served.pop(item_id, None)
    return served


def test_compaction_keeps_only_what_changes_the_served_catalogue(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    trained = {"t1", "t2", "t3"}
    _write(journal, _add("a"), _add("b"), _remove("a"), _remove("t1"), _add("t2"), _remove("ghost"),
           _add("b"), _remove("t3"), _add("t3"), _add("c"), _remove("c"), _add("c"))
    before = journal.path.read_bytes()
    lines = before.splitlines(keepends=True)
    dry = journal.compact(trained, dry_run=True)
    assert journal.path.read_bytes() == before and not (tmp_path / "catalogue_history").exists()
    assert (dry.generation, dry.lines, dry.bytes, dry.kept, dry.archive) == (0, 12, len(before), 5, None)
    assert dry.dropped == {"cancelled": 4, "superseded": 2, "not applied": 1} and dry.changed
    # added b and c; removed t1; t3 removed and added again is restored (ShopService._restore): neither
    assert (dry.net_added, dry.net_removed, dry.net_restored) == (2, 1, 1)

    done = journal.compact(trained)
    assert done.archive == str(tmp_path / "catalogue_history" / "catalogue.0.jsonl")
    assert Path(done.archive).read_bytes() == before  # the generation before, byte for byte
    header, *kept = journal.path.read_bytes().splitlines(keepends=True)
    assert kept == [lines[i] for i in (1, 3, 7, 8, 11)]  # b, -t1, -t3, t3, c: unchanged, in order
    assert json.loads(header)["generation"] == 1 and json.loads(header)["dropped"] == done.dropped
    entries, end, line, _ = journal.read()
    assert [(e["op"], e["item_id"]) for e in entries] == [("add", "b"), ("remove", "t1"), ("remove", "t3"),
                                                          ("add", "t3"), ("add", "c")]
    assert (end, line) == (journal.size(), 6)
    assert _served(entries, trained) == _served([json.loads(x) for x in lines], trained)
    assert sorted(_served(entries, trained)) == ["b", "c", "t2", "t3"]
    again = journal.compact(trained)  # nothing more to drop: nothing written
    assert not again.changed and again.generation == 1 and again.archive is None
    assert not journal.archive_path(1).exists()


def test_compaction_matches_a_full_replay_on_random_journals(tmp_path: Path):
    rng = np.random.default_rng(7)
    trained = {f"t{i}" for i in range(4)}
    for case in range(40):
        journal = CatalogueJournal(tmp_path / str(case))
        journal.run_path.mkdir()
        ids = [f"t{i}" for i in range(4)] + [f"n{i}" for i in range(4)]
        entries = [_add(str(i)) | {"title": f"version {n}"} if rng.random() < 0.5 else _remove(str(i))
                   for n, i in enumerate(rng.choice(ids, size=15))]
        _write(journal, *entries)
        journal.compact(trained)
        assert _served(journal.read()[0], trained) == _served(entries, trained), case


def test_a_service_behind_follows_the_journal_across_compactions(tmp_path: Path):
    from shopgraph.retrieval.catalogue import REMOVED_OP, JournalPosition

    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"), _add("b"))
    seen, pos, _ = journal.follow(JournalPosition())
    assert [e["item_id"] for _, e in seen] == ["a", "b"] and pos.line == 2
    _write(journal, _remove("a"), _add("c"))  # written by others; this reader has not read them
    assert journal.compact(set()).archive  # generation 1: b, c
    _write(journal, _add("d"), _remove("b"))
    assert journal.compact(set()).archive  # generation 2: c, d
    _write(journal, _add("e"))
    seen, pos2, _ = journal.follow(pos)
    # the rest of generation 0 from the history, generation 1's own changes, then generation 2's
    assert [(where.rsplit("/", 1)[1], e["op"], e["item_id"]) for where, e in seen] == [
        ("catalogue.0.jsonl: line 3", "remove", "a"), ("catalogue.0.jsonl: line 4", "add", "c"),
        ("catalogue.1.jsonl: line 4", "add", "d"), ("catalogue.1.jsonl: line 5", "remove", "b"),
        ("catalogue.jsonl: line 4", "add", "e")]
    assert (pos2.generation, pos2.offset, pos2.line) == (2, journal.size(), 4)
    assert journal.follow(pos2)[0] == []
    fresh, pos3, _ = journal.follow(JournalPosition())  # a service starting now reads the journal alone,
    # after what the compactions dropped of the items added and removed since: their ids, as one change
    assert fresh[0][1] == {"op": REMOVED_OP, "item_ids": ["a", "b"]}
    assert [e["item_id"] for _, e in fresh[1:]] == ["c", "d", "e"] and pos3 == pos2


def test_following_without_the_history_it_needs_is_an_error_naming_it(tmp_path: Path):
    from shopgraph.retrieval.catalogue import JournalPosition

    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"))
    _, pos, _ = journal.follow(JournalPosition())
    _write(journal, _remove("a"))
    journal.compact(set(), trained_categories={"toys"})  # (else a's add is kept: the only one of "toys")
    journal.archive_path(0).unlink()
    with pytest.raises(CatalogueError, match=r"catalogue_history/catalogue.0.jsonl: missing; the journal was "
                                             r"compacted to generation 1 before this service had read all of"):
        journal.follow(pos)
    older = JournalPosition(5, 10, 1, pos.ino)
    with pytest.raises(CatalogueError, match="generation 1, older than generation 5 already applied"):
        journal.follow(older)


def test_a_damaged_journal_is_not_compacted(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"), _remove("a"))
    damaged = journal.path.read_bytes().replace(b'"toys"', b'"tools"')
    journal.path.write_bytes(damaged)
    with pytest.raises(CatalogueError, match="line 1: its sha256 does not match"):
        journal.compact(set())
    assert journal.path.read_bytes() == damaged and not (tmp_path / "catalogue_history").exists()


def test_compaction_drops_an_unfinished_line_and_resumes_an_interrupted_one(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"))
    with open(journal.path, "ab") as f:
        f.write(b'{"op":"add"')
    # a compaction that stopped after keeping the generation in the history (a hard link)
    journal.archive_path(0).parent.mkdir()
    import os

    os.link(journal.path, journal.archive_path(0))
    report = journal.compact(set())
    assert report.incomplete == 11 and report.kept == 1 and report.archive
    assert [e["item_id"] for e in journal.read()[0]] == ["a"] and journal.read()[3] == 0
    # a history file that is not this journal is never overwritten
    _write(journal, _add("b"), _remove("b"))
    journal.archive_path(1).write_bytes(b"something else\n")
    before = journal.path.read_bytes()
    with pytest.raises(CatalogueError, match=r"catalogue.1.jsonl: already there and not the journal being "
                                             r"compacted; nothing was changed"):
        journal.compact(set())
    assert journal.path.read_bytes() == before


def test_pruning_deletes_old_generations_and_the_images_no_line_names(tmp_path: Path, monkeypatch):
    import time

    from shopgraph.retrieval import catalogue

    journal = CatalogueJournal(tmp_path)
    gone, kept, recent = (journal.save_image(f"image {k}".encode(), "png") for k in range(3))
    _write(journal, _add("a") | {"image": gone}, _add("b") | {"image": kept}, _remove("a"))
    journal.compact(set())  # generation 1: b
    _write(journal, _add("c") | {"image": recent}, _remove("c"))
    assert journal.prune_history().generations == []  # compacted just now: a service may still read them
    journal.compact(set())  # generation 2: b; generation 1 (which names `recent`) kept in the history
    later = time.time() + catalogue.HISTORY_KEEP_S + 60
    monkeypatch.setattr(catalogue.time, "time", lambda: later)
    _write(journal, _add("d") | {"image": gone})  # the same bytes again, after the compaction
    report = journal.prune_history()
    assert report.generations == [0, 1] and report.bytes > 0
    assert not (tmp_path / "catalogue_history" / "catalogue.0.jsonl").exists()
    assert not (tmp_path / "catalogue_history" / "catalogue.1.jsonl").exists()
    assert (report.images, report.image_bytes) == (1, len(b"image 2"))  # `recent`: named by generation 1 alone
    assert sorted(p.name for p in (tmp_path / "added_images").iterdir()) == sorted(
        Path(rel).name for rel in (gone, kept))
    assert [e["item_id"] for e in journal.read()[0]] == ["b", "d"]  # the journal itself is untouched
    assert journal.prune_history() == catalogue.Pruned([], 0)  # nothing more to delete
    with pytest.raises(ValueError, match=r"older_than_s: expected >= 0 seconds \(got -1\)"):
        journal.prune_history(-1)


# -- batches (ShopService.add_items, remove_items) ------------------------------------------------
def _batch(*item_ids: str, at: str = "2026-12-06T00:00:02Z") -> dict[str, object]:
    fields = {k: v for k, v in _add("x").items() if k not in ("op", "at", "item_id")}
    return {"op": "add_batch", "at": at, "items": [{**fields, "item_id": i, "title": f"title {i}"} for i in item_ids]}


def _remove_batch(*item_ids: str) -> dict[str, object]:
    return {"op": "remove_batch", "at": "2026-12-06T00:00:03Z", "item_ids": list(item_ids)}


def test_a_batch_is_one_line_read_as_its_changes(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"), _batch("b", "c", "d"), _remove("c"), _remove_batch("a", "d"))
    assert journal.path.read_bytes().count(b"\n") == 4
    entries, _, lines, _ = journal.read()
    assert [(e["op"], e["item_id"]) for e in entries] == [("add", "a"), ("add", "b"), ("add", "c"), ("add", "d"),
                                                          ("remove", "c"), ("remove", "a"), ("remove", "d")]
    assert lines == 4
    # each change of a batch reads as a whole line would: the line's time, its own checksum
    assert entries[2] == json.loads(_signed({**_add("c"), "at": "2026-12-06T00:00:02Z"}))
    assert entries[6] == json.loads(_signed({**_remove("d"), "at": "2026-12-06T00:00:03Z"}))
    from shopgraph.retrieval.catalogue import JournalPosition

    where = [w.split(": ", 1)[1] for w, _ in journal.follow(JournalPosition())[0]]
    assert where == ["line 1", "line 2, item 1", "line 2, item 2", "line 2, item 3", "line 3", "line 4, item 1",
                     "line 4, item 2"]


def test_a_batch_cut_off_by_a_crash_is_not_read_at_all(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    _write(journal, _add("a"), _batch("b", "c"))
    whole = journal.path.read_bytes()
    journal.path.write_bytes(whole[:-40])  # the batch's line, all but its end
    entries, _, lines, incomplete = journal.read()
    assert [e["item_id"] for e in entries] == ["a"] and lines == 1 and incomplete > 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b | {"items": []}, r"line 1: items must be a non-empty list"),
    (lambda b: b | {"items": "b"}, r"line 1: items must be a non-empty list"),
    (lambda b: b | {"at": 5}, r"line 1: at must be a string"),
    (lambda b: b | {"items": [b["items"][0], 7]}, r"line 1, item 2: expected a JSON object \(got int\)"),
    (lambda b: b | {"items": [b["items"][0], {**b["items"][1], "price": "3"}]},
     r"line 1, item 2: price must be a number or null \(got '3'\)"),
    (lambda b: b | {"items": [{**b["items"][0], "op": "remove"}]}, r"line 1, item 1: op, at, v and sha256 belong"),
    (lambda b: b | {"items": [b["items"][0], b["items"][0]]}, r"line 1, item 2: item_id 'b' is in the batch twice"),
    (lambda b: _remove_batch(), r"line 1: item_ids must be a non-empty list \(got \[\]\)"),
    (lambda b: _remove_batch("b", ""), r"line 1, item 2: item_id must be a non-empty string \(got ''\)"),
    (lambda b: _remove_batch("b", {"item_id": "c"}), r"line 1, item 2: item_id must be a non-empty string"),
    (lambda b: _remove_batch("b", "c", "b"), r"line 1, item 3: item_id 'b' is in the batch twice"),
])
def test_a_malformed_batch_is_refused_naming_its_item(tmp_path: Path, change, message):
    journal = CatalogueJournal(tmp_path)
    journal.path.write_bytes(_signed(change(_batch("b", "c"))))
    with pytest.raises(CatalogueError, match=message):
        journal.read()


def test_compaction_writes_batches_as_the_changes_still_needed(tmp_path: Path):
    journal = CatalogueJournal(tmp_path)
    trained = {"t1"}
    entries = [_batch("a", "b", "t1", "c"), _remove("b"), _add("d"), _remove_batch("d", "t2", "t3")]
    trained |= {"t2", "t3"}
    _write(journal, *entries)
    before = journal.read()[0]
    report = journal.compact(trained)
    assert (report.lines, report.kept, report.net_added) == (9, 4, 2)
    assert report.dropped == {"cancelled": 4, "superseded": 1, "not applied": 0}
    header, *kept = journal.path.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["op"] for line in kept] == ["add", "add", "remove", "remove"]
    assert json.loads(header)["kept_bytes"] == sum(map(len, kept))
    read = journal.read()[0]
    assert [e["item_id"] for e in read] == ["a", "c", "t2", "t3"]
    assert read == [before[i] for i in (0, 3, 7, 8)]  # the batches' changes, as they read before
    assert _served(read, trained) == _served(before, trained) == {"t1": None, "a": "title a", "c": "title c"}


def test_a_first_line_naming_removed_ids_wrongly_is_an_error_naming_it(tmp_path: Path):
    from shopgraph.retrieval.catalogue import REMOVED_IDS, JournalPosition, _line

    journal = CatalogueJournal(tmp_path)
    header = {"op": "compacted", "generation": 1, "kept": 0, "kept_bytes": 0, "from_lines": 2, "from_bytes": 10,
              "dropped": {}}
    for bad in ("a", ["a", 7], [""]):
        journal.path.write_bytes(_line({**header, REMOVED_IDS: bad}))
        with pytest.raises(CatalogueError, match=f"line 1: {REMOVED_IDS} must be a list of item ids"):
            journal.follow(JournalPosition())
    journal.path.write_bytes(_line(header))  # compacted before the ids were kept: read as none
    assert journal.follow(JournalPosition())[0] == []
