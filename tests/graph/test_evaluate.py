from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from shopgraph.graph.build import build_graph
from shopgraph.graph.evaluate import FRAUD_KEYS, PURCHASE_KEYS, evaluate_run
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import load_model, train_run
from tests.conftest import make_tables

FAST = {"epochs": 6, "eval_every": 2, "hidden": 16, "num_negatives": 8}


def _graph(timestamps: bool = True) -> HeteroData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(make_tables(n_users=60, n_items=25, n_events=900, timestamps=timestamps))
    g = torch.Generator().manual_seed(0)
    data["user"].x = torch.randn(data["user"].num_nodes, 5, generator=g)
    data["item"].x = torch.randn(data["item"].num_nodes, 7, generator=g)
    return data


def _trained_run(path: Path, data: HeteroData) -> Path:
    run = RunDir(path, create=True)
    run.save_graph(data)
    train_run(path, **FAST)
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = _trained_run(tmp_path_factory.mktemp("eval") / "run", _graph())
    return path, evaluate_run(str(path))


def test_metrics_json_has_the_documented_shape(evaluated: tuple[Path, dict]) -> None:
    path, metrics = evaluated
    on_disk = json.loads((path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(on_disk) == {"purchase", "fraud"}
    assert set(on_disk["purchase"]) == {"gnn", "baselines", "test"}
    # what the metrics are measured on: the test period's purchases and the users who made them
    from shopgraph.graph.build import target_pairs
    from shopgraph.graph.run import RunDir

    test = target_pairs(RunDir(path).load_graph(), "test")  # distinct (user, item) pairs new to the user
    versus = on_disk["purchase"]["test"].pop("vs_best")  # the lead over the best baseline, user by user
    baselines = on_disk["purchase"]["baselines"]
    assert baselines[versus["baseline"]]["recall@20"] == max(m["recall@20"] for m in baselines.values())
    assert versus["metric"] == "recall@20" and versus["se"] > 0
    assert versus["difference"] == pytest.approx(
        on_disk["purchase"]["gnn"]["recall@20"] - baselines[versus["baseline"]]["recall@20"], abs=1e-9)
    assert on_disk["purchase"]["test"] == {"users": int(torch.unique(test[0]).numel()), "purchases": int(test.size(1))}
    gnn = on_disk["purchase"]["gnn"]
    model = load_model(path / "model")  # the calibrated weights name the terms that serve
    terms = [("+groupmix", model.group_weight), ("+itemknn", model.knn_weight), ("+consider", model.consider_weight)]
    assert set(gnn) == {"kind", *PURCHASE_KEYS}
    assert gnn["kind"] == "shopgnn-history+revisit" + "".join(name for name, w in terms if float(w) > 0)
    assert all(0.0 <= gnn[k] <= 1.0 for k in PURCHASE_KEYS)
    assert {"popularity", "itemknn", "ease", "bpr_mf"} <= set(on_disk["purchase"]["baselines"])
    for m in on_disk["purchase"]["baselines"].values():
        assert set(PURCHASE_KEYS) <= set(m)
    fraud = on_disk["fraud"]
    assert set(fraud["gnn"]) == {"kind", *FRAUD_KEYS}
    fraud_json = json.loads((path / "fraud.json").read_text())
    assert fraud["gnn"]["kind"] == fraud_json["kind"]
    assert 0.0 <= fraud["gnn"]["threshold"] <= 1.0 and 0.0 <= fraud_json["threshold"] <= 1.0
    assert {"logreg", "xgb_graph"} <= set(fraud["baselines"])
    for m in fraud["baselines"].values():
        assert set(FRAUD_KEYS) <= set(m)


def test_report_and_plots(evaluated: tuple[Path, dict]) -> None:
    path, metrics = evaluated
    run = RunDir(path)
    run.verify()
    report = (path / "report.md").read_text()
    assert "Split: **temporal**" in report
    assert f"| GNN ({metrics['purchase']['gnn']['kind']}) |" in report and "| itemknn |" in report and "| xgb_graph |" in report
    assert "best baseline" in report
    for rel in ("plots/training.png", "plots/fraud_pr.png"):
        assert run.has(rel)
        assert (path / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({rel})" in report


def test_report_states_the_held_out_scores_of_the_trained_on_accounts(evaluated: tuple[Path, dict]) -> None:
    from shopgraph.graph.evaluate import _report

    path, metrics = evaluated
    info = json.loads((path / "fraud.json").read_text())
    assert ("Refitted without their labels" in (path / "report.md").read_text()) == ("held_out" in info)
    info["held_out"] = {"folds": 5, "accounts": 30, "auprc": 0.5, "auroc": 0.75, "recall": 0.25, "precision": 0.125}
    info["train_users"] = 36  # a fold with one class left out gets no held-out scores
    text = _report(metrics, _graph(), {}, info, {}, [], 10)
    assert "fitted on the labels of 36 training accounts" in text and "(5 folds;" in text
    assert "scores the 30 that got a held-out score at" in text
    assert "AUPRC 0.5000, AUROC 0.7500" in text and "finds 0.2500 of their frauds at precision 0.1250" in text
    del info["held_out"]
    assert "Refitted" not in _report(metrics, _graph(), {}, info, {}, [], 10)


def test_random_split_is_stated(tmp_path: Path) -> None:
    path = _trained_run(tmp_path / "run", _graph(timestamps=False))
    metrics = evaluate_run(str(path), baselines=False)
    assert metrics["purchase"]["baselines"] == {} and metrics["fraud"]["baselines"] == {}
    assert "Split: **random**" in (path / "report.md").read_text()


def test_evaluate_needs_a_trained_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", create=True)
    run.save_graph(_graph())
    with pytest.raises(FileNotFoundError, match="no model/model.safetensors .*shopgraph train"):
        evaluate_run(str(run.path))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        evaluate_run(str(tmp_path / "missing"))


def test_the_precision_recall_plot_draws_the_fraud_table_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plot's curves are the models the fraud table lists, under the names it gives them."""
    import shopgraph.graph.evaluate as evaluate
    from shopgraph.graph.metrics import fraud_metrics
    from shopgraph.graph.wording import FRAUD_SCORER_NAMES

    drawn: dict = {}
    real = evaluate._plots

    def spy(run, history, pr, made_from):  # type: ignore[no-untyped-def]
        drawn.update(pr)
        return real(run, history, pr, made_from)

    monkeypatch.setattr(evaluate, "_plots", spy)
    path = _trained_run(tmp_path / "run", _graph())
    metrics = evaluate_run(str(path))
    fraud = metrics["fraud"]
    served = FRAUD_SCORER_NAMES[fraud["gnn"]["kind"]]
    assert list(drawn) == [served, *fraud["baselines"]]
    y_served = drawn[served][0]
    assert fraud["test"] == {"accounts": len(y_served), "fraud": int(sum(y_served))} and 0 < fraud["test"]["fraud"]
    for name, row in [(served, fraud["gnn"]), *fraud["baselines"].items()]:
        y, prob = drawn[name]
        assert fraud_metrics(y, prob, row["threshold"])["auprc"] == pytest.approx(row["auprc"])

