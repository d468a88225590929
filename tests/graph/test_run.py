from __future__ import annotations

import pytest
import torch

from shopgraph.graph.build import build_graph
from shopgraph.graph.run import RunDir, StaleFileError


def test_write_records_checksums_and_round_trips(tmp_path, tiny_tables):
    run = RunDir(tmp_path / "run", create=True)
    run.write_json("metrics.json", {"a": 1})
    data = build_graph(tiny_tables)
    run.save_graph(data)
    assert set(run.manifest["files"]) == {"metrics.json", "graph.pt"}
    again = RunDir(tmp_path / "run")
    again.verify()
    assert again.read_json("metrics.json") == {"a": 1}
    loaded = again.load_graph()
    assert torch.equal(loaded["user", "purchase", "item"].edge_index, data["user", "purchase", "item"].edge_index)
    assert loaded["user"].ids == data["user"].ids
    run.update(config={"seed": 1})
    run.update(config={"target": "purchase"})
    assert again.manifest["config"] == {"seed": 1, "target": "purchase"}


def test_tampered_or_missing_files_are_named(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    path = run.write_text("report.md", "hello")
    path.write_text("changed")
    with pytest.raises(ValueError, match="'report.md' does not match its checksum"):
        run.verify()
    with pytest.raises(FileNotFoundError, match="no 'model.safetensors' recorded"):
        run.path_of("model.safetensors")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        RunDir(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="expected a path inside the run folder"):
        run.write_text("../escape.txt", "x")


def test_create_refuses_non_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        RunDir(tmp_path / "run", create=True)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    RunDir(tmp_path / "run", create=True, overwrite=True)
    assert not (tmp_path / "run" / "keep.txt").exists()


def test_interrupted_write_leaves_previous_file(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    run.write_text("a.txt", "old")

    def broken(path):
        path.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.write_with("a.txt", broken)
    assert (tmp_path / "run" / "a.txt").read_text() == "old"
    run.verify()
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_computed_from_a_rewritten_one_is_refused_as_stale(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    run.write_text("embeddings.safetensors", "model 1")
    run.write_text("graph.pt", "graph")
    made_from = run.sources("graph.pt", "embeddings.safetensors")
    run.write_text("index/gnn_items.faiss", "index of model 1", made_from=made_from, stage="shopgraph index")
    run.write_text("notes.txt", "no inputs")
    assert run.fresh("index/gnn_items.faiss") and run.stale("index/gnn_items.faiss") is None
    assert run.path_of("index/gnn_items.faiss").read_text() == "index of model 1"
    # the same bytes again (a retrain that reproduces the model) keep it current
    run.write_text("embeddings.safetensors", "model 1")
    assert run.fresh("index/gnn_items.faiss")
    # another model: the index is refused, naming what changed and the command to rerun
    run.write_text("embeddings.safetensors", "model 2")
    reason = f"'index/gnn_items.faiss' was computed from an earlier 'embeddings.safetensors' (rewritten since): " \
             f"rerun `shopgraph index --run {run.path}`"
    assert run.stale("index/gnn_items.faiss") == reason and not run.fresh("index/gnn_items.faiss")
    with pytest.raises(StaleFileError) as err:
        RunDir(run.path).path_of("index/gnn_items.faiss")
    assert str(err.value) == f"run folder {run.path}: {reason}" and isinstance(err.value, ValueError)
    run.verify()  # intact, only out of date: verify checks checksums
    assert run.path_of("index/gnn_items.faiss", current=False).read_text() == "index of model 1"
    assert run.fresh("notes.txt") and run.fresh("embeddings.safetensors")
    # rewriting it from the current inputs makes it current; rewriting it without inputs drops the record
    run.write_text("index/gnn_items.faiss", "index of model 2", made_from=run.sources("embeddings.safetensors"),
                   stage="shopgraph index")
    assert run.fresh("index/gnn_items.faiss")
    run.write_text("index/gnn_items.faiss", "hand-made")
    assert "index/gnn_items.faiss" not in run.manifest["made_from"]


def test_stale_when_an_optional_input_appears_and_inputs_must_be_recorded(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    run.write_text("graph.pt", "graph")
    made_from = run.sources("graph.pt", optional=("embeddings.safetensors",))
    assert made_from == {"graph.pt": run.manifest["files"]["graph.pt"], "embeddings.safetensors": None}
    run.write_json("rings/rings.json", [], made_from=made_from, stage="shopgraph rings")
    assert run.fresh("rings/rings.json")
    run.write_text("embeddings.safetensors", "scores")
    assert run.stale("rings/rings.json") == ("'rings/rings.json' was computed without 'embeddings.safetensors' "
                                             f"(written since): rerun `shopgraph rings --run {run.path}`")
    with pytest.raises(FileNotFoundError, match="no 'model/model.safetensors' recorded"):
        run.sources("graph.pt", "model/model.safetensors")
    with pytest.raises(ValueError, match="stage: the command that writes 'x.json'"):
        run.write_json("x.json", {}, made_from=made_from)
    assert not (run.path / "x.json").exists() and "x.json" not in run.manifest["files"]


@pytest.mark.parametrize("command", ["index", "serve"])
def test_a_stage_on_an_untrained_run_says_to_train_it(tmp_path, capsys, command):
    from shopgraph.graph.synthetic import generate_shop
    from shopgraph.ui.cli import main

    generate_shop(tmp_path / "shop", n_users=100, seed=0)
    run = tmp_path / "run"
    assert main(["build", "--data", str(tmp_path / "shop"), "--out", str(run), "--no-text", "--no-image",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main([command, "--run", str(run), *(["--port", "0"] if command == "serve" else [])]) == 1
    err = capsys.readouterr().err
    assert f"no 'embeddings.safetensors' recorded in manifest.json (run `shopgraph train --run {run}` first)" in err


def test_ctrl_c_while_the_command_loads_is_one_line(tmp_path, capsys, monkeypatch):
    """The command's modules (torch and friends) take seconds to import; Ctrl-C then is the same
    one line and status as during the work, not a traceback."""
    from shopgraph.ui import cli

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_resolve", interrupted)
    assert cli.main(["train", "--run", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "shopgraph train: interrupted"


@pytest.mark.parametrize(("text", "problem"), [
    ("", r"not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\)"),
    ('{"config": {}', r"not valid JSON \("),
    ("[1, 2]", r"expected a JSON object \(got list\)"),
    ('{"config": {}}', r"no 'files' entry"),
    ('{"files": {}}', r"no 'config' entry"),
    ('{"files": [], "config": {}}', r"'files' is not a JSON object \(got list\)"),
    ('{"files": {"graph.pt": 3}, "config": {}}', r"'files' records no checksum for 'graph.pt' \(got 3\)"),
    ('{"files": {}, "config": {}, "made_from": {"a": 1}}', r"'made_from' of 'a' is not an object"),
])
def test_a_damaged_manifest_is_one_error_naming_it(tmp_path, capsys, text, problem):
    """Not JSON, or JSON of another shape: a ValueError naming manifest.json and what is wrong
    (not a KeyError: 'files' from whichever stage reads it first), one line from the command."""
    from shopgraph.ui.cli import main

    run = RunDir(tmp_path / "run", create=True)
    run.write_text("report.md", "hello")
    (run.path / "manifest.json").write_text(text)
    message = rf"run folder {run.path}: manifest\.json is damaged: {problem}"
    for read in (lambda: run.manifest, lambda: run.has("report.md"), lambda: run.path_of("report.md"),
                 run.verify, lambda: run.write_text("x.txt", "x")):
        with pytest.raises(ValueError, match=message):
            read()
    for command in ("inspect", "rings"):
        assert main([command, "--run", str(run.path)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"shopgraph {command}: error: run folder {run.path}: manifest.json is damaged" in err


def test_a_checksum_mismatch_names_the_command_that_rewrites_the_file(tmp_path):
    from shopgraph.graph.run import ChecksumError

    run = RunDir(tmp_path / "run", create=True)
    run.write_text("fraud.json", "{}")
    run.write_text("notes.txt", "mine")
    (run.path / "fraud.json").write_text('{"kind": "other"}')
    (run.path / "notes.txt").write_text("changed")
    with pytest.raises(ChecksumError, match=r"'fraud.json' does not match its checksum in manifest.json \(damaged "
                                            rf"or changed since it was written\); rerun `shopgraph train --run {run.path}`"):
        run.path_of("fraud.json")
    with pytest.raises(ChecksumError, match=r"'notes.txt' does not match its checksum in manifest.json \(damaged "
                                            r"or changed since it was written\)$"):
        run.path_of("notes.txt")


@pytest.fixture
def umask_027():
    import os

    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_a_writer_that_replaces_its_temp_file_still_gets_the_umask_mode(tmp_path, umask_027):
    """safetensors' save_file writes a new file over the temp path (a new inode, mode 0600): the
    recorded file still gets the mode of any new file (a server running as another user reads it)."""
    import stat

    from safetensors.torch import save_file

    run = RunDir(tmp_path / "run", create=True)
    path = run.write_with("embeddings.safetensors", lambda p: save_file({"a": torch.zeros(2)}, str(p)))
    text = run.write_text("report.md", "hello")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(text.stat().st_mode) == 0o640


def test_replaced_by_names_the_run_s_own_folders(tmp_path):
    run = RunDir(tmp_path / "run", create=True)
    run.write_json("rings/rings.json", {"schema_version": "1.0"})
    run.write_text("tables/users.parquet", "x")
    assert run.replaced_by(tmp_path / "run") == f"is the run folder {run.path}"
    assert run.replaced_by(tmp_path / "run" / "." / "rings" / "..") == f"is the run folder {run.path}"
    assert run.replaced_by(tmp_path) == f"holds the run folder {run.path}"
    for own in ("rings", "tables", "model", "index", "rings/sub"):
        assert run.replaced_by(tmp_path / "run" / own) == \
            f"is inside the run folder {run.path}, in its own {own.split('/')[0]!r}"
    (tmp_path / "link").symlink_to(tmp_path / "run" / "rings")
    assert run.replaced_by(tmp_path / "link") is not None  # compared where the link leads
    assert run.replaced_by(tmp_path / "run" / "cases") is None  # what `shopgraph demo` exports into
    assert run.replaced_by(tmp_path / "elsewhere") is None
