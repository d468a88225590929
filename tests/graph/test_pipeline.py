from __future__ import annotations

import json
import shutil
import warnings

import pandas as pd
import pytest

from shopgraph.graph.pipeline import build_run, load_run_tables
from shopgraph.graph.run import RunDir
from shopgraph.graph.synthetic import generate_shop
from shopgraph.ui.cli import main


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop") / "shop"
    generate_shop(out, n_users=300, seed=0)
    return out


def test_build_then_inspect_json(shop, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["build", "--data", str(shop), "--out", str(run_dir), "--no-text", "--no-image",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    run = RunDir(run_dir)
    run.verify()
    manifest = run.manifest
    assert manifest["data_fingerprint"] and manifest["versions"]["torch"]
    assert {"graph.pt", "tables/events.parquet", "tables/items.parquet", "validation.json"} <= set(manifest["files"])
    capsys.readouterr()
    assert main(["inspect", "--run", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"nodes", "edges", "features", "split"}
    assert summary["nodes"]["user"] == 300
    assert summary["edges"]["user,uses,device"] > 0 and summary["edges"]["device,rev_uses,user"] > 0
    assert summary["features"]["user"] > 0
    assert summary["split"]["train"] > summary["split"]["test"] > 0
    tables = load_run_tables(run)
    assert len(tables.events) == summary["edges"]["user,view,item"] + summary["edges"]["user,cart,item"] + \
        summary["edges"]["user,purchase,item"]


def test_build_refuses_to_clobber_and_fails_atomically(shop, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build_run(shop, run_dir, use_text=False, use_image=False)
    (run_dir / "manifest.json").write_text("{}")  # a previous run: --overwrite may replace it
    with pytest.raises(ValueError, match=r"events.event_type: no events of type 'review', the type shopgraph build "
                                         r"recommends \(found: 'view' [\d,]+, 'cart' [\d,]+, 'purchase' [\d,]+\); build "
                                         r"with --target set to one of the types found"):
        build_run(shop, run_dir, target="review", use_text=False, use_image=False, overwrite=True)
    # the failed build left the old folder as it was and no temporary folder behind
    assert (run_dir / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "parent"])
def test_build_overwrite_never_replaces_the_tables_folder(shop, tmp_path, capsys, where):
    data = tmp_path / "shop"
    shutil.copytree(shop, data)
    out = data if where == "same" else tmp_path
    before = _snapshot(data)
    code = main(["build", "--data", str(data), "--out", str(out), "--overwrite", "--no-text", "--no-image"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"out: '{out}' is or holds the tables folder" in err and "Traceback" not in err
    assert _snapshot(data) == before


def test_build_overwrite_replaces_only_a_previous_run(shop, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["build", "--data", str(shop), "--out", str(mine), "--overwrite", "--no-text", "--no-image"]) == 1
    assert "out: '" + str(mine) + "' is not a previous run folder (no manifest.json)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["build", "--data", str(shop), "--out", str(afile), "--no-text", "--no-image"]) == 1
    assert f"out: expected a run folder (got the file '{afile}')" in capsys.readouterr().err
    assert afile.read_text() == "x"
    # a previous run is replaced
    run_dir = tmp_path / "run"
    args = ["build", "--data", str(shop), "--out", str(run_dir), "--no-text", "--no-image",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    (run_dir / "stray.txt").write_text("old run")
    assert main([*args, "--overwrite"]) == 0
    assert not (run_dir / "stray.txt").exists()
    RunDir(run_dir).verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine", "run"]  # no temporary or old folder left
    # --out a link to a run: the run it points at is replaced and the link kept, nothing left beside either
    link = tmp_path / "latest"
    link.symlink_to(run_dir, target_is_directory=True)
    (run_dir / "stray.txt").write_text("old run")
    assert main(["build", "--data", str(shop), "--out", str(link), "--no-text", "--no-image",
                 "--cache-dir", str(tmp_path / "cache"), "--overwrite"]) == 0
    assert link.is_symlink() and link.resolve() == run_dir.resolve()
    assert not (run_dir / "stray.txt").exists()
    RunDir(link).verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "latest", "mine", "run"]


def test_rebuilding_a_run_keeps_the_items_changed_while_it_was_served(shop, tmp_path):
    from shopgraph.retrieval.catalogue import CatalogueJournal

    run_dir = tmp_path / "run"
    build_run(shop, run_dir, use_text=False, use_image=False, cache_dir=tmp_path / "cache")
    journal = CatalogueJournal(run_dir)
    image = journal.save_image(b"\x89PNG not really", "png")
    with journal.locked():
        journal.append({"op": "remove", "item_id": "i000001", "at": "2026-12-06T00:00:00Z"})
        journal.append({"op": "remove", "item_id": "no such item", "at": "2026-12-06T00:00:01Z"})
    history = journal.path.read_bytes()
    assert journal.compact({"i000001"}).archive  # the second line goes; generation 0 is kept in the history
    kept = journal.path.read_bytes()
    build_run(shop, run_dir, use_text=False, use_image=False, cache_dir=tmp_path / "cache", overwrite=True)
    assert (run_dir / "catalogue.jsonl").read_bytes() == kept
    assert (run_dir / "catalogue_history" / "catalogue.0.jsonl").read_bytes() == history
    assert (run_dir / image).read_bytes() == b"\x89PNG not really"
    RunDir(run_dir).verify()
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == ["run"]  # no temporary or old folder left


def test_build_reports_bad_tables(tmp_path, capsys):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "users.csv").write_text("user_id\nu1\n")
    (data / "items.csv").write_text("title\nshoe\n")
    (data / "events.csv").write_text("user_id,item_id,event_type\nu1,i1,purchase\n")
    assert main(["build", "--data", str(data), "--out", str(tmp_path / "run"), "--no-text", "--no-image"]) == 1
    assert "missing required column 'item_id'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["one_time", "one_purchase"])
def test_build_refuses_data_with_nothing_to_train_on(shop, tmp_path, capsys, case):
    data = tmp_path / "shop"
    shutil.copytree(shop, data)
    events = pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False)
    if case == "one_time":
        events["timestamp"] = "2024-01-01T00:00:00Z"
    else:
        purchases = events.index[events["event_type"] == "purchase"]
        events = events.drop(purchases[1:])
    events.to_csv(data / "events.csv", index=False)
    out = tmp_path / "run"
    assert main(["build", "--data", str(data), "--out", str(out), "--no-text", "--no-image"]) == 1
    err = capsys.readouterr().err
    assert "shopgraph build: error: target: no 'purchase' events left to train on (train 0, " in err
    assert "needs 'purchase' events at several different times" in err
    assert not out.exists()


def test_build_warns_when_a_split_has_few_target_events(shop, tmp_path, caplog):
    """Five purchases build (3 / 1 / 1), but nothing learnt or measured on them means much: said."""
    import logging

    data = tmp_path / "shop"
    shutil.copytree(shop, data)
    events = pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False)
    purchases = events.index[events["event_type"] == "purchase"]
    events.drop(purchases[5:]).to_csv(data / "events.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="shopgraph.graph.pipeline"):
        build_run(data, tmp_path / "run", use_text=False, use_image=False)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("target: few")]
    assert len(warned) == 1 and "'purchase' events in train " in warned[0] and "(under 50)" in warned[0], warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shopgraph.graph.pipeline"):
        build_run(shop, tmp_path / "whole", use_text=False, use_image=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("target: few")]


def test_cli_build_prints_each_repair_once(shop, tmp_path, capfd):
    data = tmp_path / "shop"
    shutil.copytree(shop, data)
    events = pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False)
    events.loc[3, "user_id"] = "ghost"
    events.to_csv(data / "events.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["build", "--data", str(data), "--out", str(tmp_path / "run"), "--no-text", "--no-image",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capfd.readouterr()
    message = "events.user_id: 1 of "
    assert f"  repaired: {message}" in out and (out + err).count(message) == 1
    assert not [w for w in caught if message in str(w.message)]  # not again as a UserWarning


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_what_is_renamed_into_place_gets_the_mode_of_an_ordinary_new_file(shop, tmp_path, mask):
    """Temp files are made 0600 and temp folders 0700; renamed as they are, a server or a colleague
    running as another user could not read the run folder, its files or an export."""
    import os
    import stat

    from shopgraph.graph.files import umask
    from shopgraph.graph.run import atomic_write

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(mask)
    try:
        assert umask() == mask
        atomic_write(tmp_path / "export.csv", lambda p: p.write_text("user_id\n"))
        (tmp_path / "plain.csv").write_text("user_id\n")
        assert mode(tmp_path / "export.csv") == mode(tmp_path / "plain.csv") == 0o666 & ~mask
        build_run(shop, tmp_path / "run", use_text=False, use_image=False, cache_dir=tmp_path / "cache")
        (tmp_path / "plain").mkdir()
        assert mode(tmp_path / "run") == mode(tmp_path / "plain") == 0o777 & ~mask
        assert mode(tmp_path / "run" / "graph.pt") == 0o666 & ~mask
        generate_shop(tmp_path / "shop", n_users=100, seed=1)
        assert mode(tmp_path / "shop") == 0o777 & ~mask
    finally:
        os.umask(old)


@pytest.mark.parametrize("flags, message", [
    (["--text-model", "nowhere"], "--text-model: nowhere does not exist"),
    (["--image-model", "nowhere"], "--image-model: nowhere does not exist"),
    (["--cache-dir", "FILE"], "--cache-dir: FILE is a file; give a folder"),
])
def test_build_flags_are_named_in_their_errors(shop, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    assert main(["build", "--data", str(shop), "--out", "run", *flags]) == 1
    assert f"shopgraph build: error: {message}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["build", "--data", "d", "--out", "o", "--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295"),
    (["train", "--run", "r", "--seed", "99999999999999999999"], "argument --seed: expected an integer from 0 to "),
    (["generate", "--out", "o", "--seed", "x"], "argument --seed: expected an integer from 0 to "),
    (["generate", "--out", "o", "--users", "50"], "argument --users: expected an integer >= 100 (got '50')"),
    (["demo", "--users", "50"], "argument --users: expected an integer >= 100 (got '50')"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
