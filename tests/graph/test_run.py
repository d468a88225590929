from __future__ import annotations

import pytest
import torch

from shopgraph.graph.build import build_graph
from shopgraph.graph.run import RunDir


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
