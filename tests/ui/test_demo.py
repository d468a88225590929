"""`shopgraph demo`'s preparation: every stage runs once, then is reused."""

from __future__ import annotations

import json

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
    # the case export sits in the run folder, where the app looks for it, and says where it came from
    export = json.loads((run_path / "cases" / "rings.json").read_text())
    assert export["source"]["run"] == str(run_path.resolve())
    assert export["source"]["made_from"]["rings/rings.json"] == run.manifest["files"]["rings/rings.json"]
    first = capsys.readouterr().out
    assert "reusing" not in first
    files_before = dict(run.manifest["files"])
    assert prepare(tmp_path / "work", users=200, seed=1) == run_path
    second = capsys.readouterr().out
    assert second.count("already done, reusing it") == 6
    assert run.manifest["files"] == files_before
    # an export of older case files (before the members' labels): only the rings stage runs again
    from shopgraph.graph.rings import export_current

    assert export_current(run_path / "cases")
    export["case_version"] = 1
    (run_path / "cases" / "rings.json").write_text(json.dumps(export))
    old_case = next((run_path / "cases" / "cases").glob("*.json"))
    case = json.loads(old_case.read_text())  # as version 1 wrote it: no labels
    case["members"] = [{k: v for k, v in m.items() if k not in ("label", "label_in_training")} for m in case["members"]]
    old_case.write_text(json.dumps(case))
    assert not export_current(run_path / "cases")
    prepare(tmp_path / "work", users=200, seed=1)
    redone = capsys.readouterr().out
    assert redone.count("already done, reusing it") == 5 and "find fraud rings and export their case files ..." in redone
    assert export_current(run_path / "cases")
    case = json.loads(old_case.read_text())
    assert all("label" in m for m in case["members"]) and case["explanations"]

    # trained again with another seed: what was computed from the old model is out of date, refused
    # by name where it is read, and redone (only that) by the next `shopgraph demo`
    from shopgraph.graph.run import StaleFileError
    from shopgraph.graph.train import train_run
    from shopgraph.retrieval.service import ShopService
    from shopgraph.ui.app import ERROR_PREFIX, model_view

    train_run(run_path, epochs=2, seed=7)
    assert run.manifest["files"]["embeddings.safetensors"] != files_before["embeddings.safetensors"]
    for rel, stage in (("metrics.json", "evaluate"), ("report.md", "evaluate"), ("index/gnn_items.faiss", "index"),
                       ("index/gnn_items_cosine.json", "index"), ("rings/rings.json", "rings")):
        assert f"rerun `shopgraph {stage} --run {run_path}`" in (run.stale(rel) or ""), rel
    assert run.fresh("index/text_items.faiss")  # made from the graph's text embeddings, unchanged
    with pytest.raises(StaleFileError, match=r"'index/gnn_items.faiss' was computed from an earlier "
                                             r"'embeddings.safetensors' \(rewritten since\): rerun `shopgraph index"):
        ShopService.from_run(run_path)
    view = model_view(run_path)
    assert view.status.startswith(ERROR_PREFIX) and "shopgraph evaluate --run" in view.status
    assert view.purchase.empty
    capsys.readouterr()
    prepare(tmp_path / "work", users=200, seed=1)
    third = capsys.readouterr().out
    assert third.count("already done, reusing it") == 3 and "[demo] train the GNN: already done" in third
    for rel in ("metrics.json", "report.md", "index/gnn_items.faiss", "rings/rings.json"):
        assert run.fresh(rel), rel
    ShopService.from_run(run_path)


def test_prepare_rebuilds_a_damaged_run(tmp_path, monkeypatch):
    from shopgraph.ui import demo

    calls: list[str] = []
    monkeypatch.setattr(demo, "_run_ok", lambda path: False)
    monkeypatch.setattr(demo, "_step", lambda name, done, action: calls.append(f"{name.split()[0]}:{done}"))
    monkeypatch.setattr(demo, "RunDir", lambda path: type("R", (), {"has": staticmethod(lambda rel: True),
                                                                    "fresh": staticmethod(lambda rel: True)})())
    demo.prepare(tmp_path, users=100)
    # a run folder that fails its checksums is rebuilt, and every later stage redone
    assert calls[1:] == ["build:False", "train:False", "evaluate:False", "build:False", "find:False"]
