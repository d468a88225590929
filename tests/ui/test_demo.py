"""`shopgraph demo`'s preparation: every stage runs once, then is reused."""

from __future__ import annotations

import pytest

from shopgraph.graph.run import RunDir
from shopgraph.ui.demo import prepare


@pytest.mark.slow
def test_prepare_runs_every_stage_then_reuses_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOPGRAPH_CACHE", str(tmp_path / "cache"))
    run_path = prepare(tmp_path / "work", users=200, seed=1)
    run = RunDir(run_path)
    run.verify()
    for rel in ("graph.pt", "embeddings.safetensors", "metrics.json", "index/gnn_items.json", "rings/rings.json"):
        assert run.has(rel), rel
    assert (tmp_path / "work" / "cases_200_1" / "rings.json").is_file()
    first = capsys.readouterr().out
    assert "reusing" not in first
    files_before = dict(run.manifest["files"])
    assert prepare(tmp_path / "work", users=200, seed=1) == run_path
    second = capsys.readouterr().out
    assert second.count("already done, reusing it") == 6
    assert run.manifest["files"] == files_before


def test_prepare_rebuilds_a_damaged_run(tmp_path, monkeypatch):
    from shopgraph.ui import demo

    calls: list[str] = []
    monkeypatch.setattr(demo, "_run_ok", lambda path: False)
    monkeypatch.setattr(demo, "_step", lambda name, done, action: calls.append(f"{name.split()[0]}:{done}"))
    monkeypatch.setattr(demo, "RunDir", lambda path: type("R", (), {"has": staticmethod(lambda rel: True)})())
    demo.prepare(tmp_path, users=100)
    # a run folder that fails its checksums is rebuilt, and every later stage redone
    assert calls[1:] == ["build:False", "train:False", "evaluate:False", "build:False", "find:False"]
