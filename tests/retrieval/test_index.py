from __future__ import annotations

import json

import numpy as np
import pytest

from shopgraph.graph.run import RunDir
from shopgraph.retrieval.index import ItemIndex, recall_at_k


def _brute(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _clustered(n: int, d: int, seed: int, n_centres: int = 100) -> np.ndarray:
    centres = np.random.default_rng(0).normal(size=(n_centres, d))  # one distribution, fresh draws
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, n_centres, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_flat_agrees_exactly_with_brute_force(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(25, 16)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) * 7 + 3  # ids are not positions
    index = ItemIndex(metric).fit(x, ids)
    assert index.factory_ == "Flat" and index.recall_at_10_ == 1.0 and index.count == 300
    res = index.search(q, 10)
    order, scores = _brute(x.astype(np.float64), q.astype(np.float64), 10, metric)
    np.testing.assert_array_equal(res.ids, ids[order])
    np.testing.assert_allclose(res.scores, scores, rtol=1e-4, atol=1e-3)
    assert res.ids.dtype == np.int64 and res.scores.shape == (25, 10)


def test_fewer_items_than_k_pads_with_minus_one_and_minus_inf():
    x = np.eye(3, dtype=np.float32)
    res = ItemIndex("ip").fit(x, np.array([10, 11, 12])).search(x[:1], 5)
    assert res.ids[0, :3].tolist()[0] == 10
    assert res.ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(res.scores[0, 3:]).all() and np.isfinite(res.scores[0, :3]).all()


@pytest.mark.parametrize("factory", [None, "HNSW32"])
def test_approximate_index_reaches_target_recall_on_fresh_queries(factory):
    x = _clustered(60_000, 32, seed=2)
    q = _clustered(500, 32, seed=3)  # fresh draws, not the tuning sample
    index = ItemIndex("ip", factory=factory).fit(x, np.arange(len(x)))
    if factory is None:
        assert index.factory_.startswith("IVF") and "nprobe" in index.params_
        assert index.params_["nprobe"] < int(index.factory_[3:].split(",")[0])  # tuned, not exhaustive
    else:
        assert "efSearch" in index.params_
    assert index.recall_at_10_ >= 0.95
    exact = ItemIndex("ip", factory="Flat").fit(x, np.arange(len(x)))
    assert recall_at_k(index.search(q, 10).ids, exact.search(q, 10).ids) >= 0.95


def test_small_catalogue_is_exact_and_large_one_is_not():
    x = _clustered(2_000, 8, seed=4)
    assert ItemIndex().fit(x, np.arange(2_000)).factory_ == "Flat"
    index = ItemIndex(flat_max=1_000).fit(x, np.arange(2_000))
    assert index.factory_ == f"IVF{int(4 * np.sqrt(2_000))},Flat"


def test_a_cosine_index_takes_vectors_as_given_when_asked():
    """``add(..., as_given=True)``: a vector shorter than 1 scores its cosines times its length
    (what the service gives items added at run time); without it, every vector is scaled to 1."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    index = ItemIndex("cosine", factory="Flat").fit(x, np.arange(50))
    short = (0.5 * x[7] / np.linalg.norm(x[7]))[None, :]
    index.add(short, np.array([50]), as_given=True)
    index.add(short, np.array([51]))
    res = index.search(x[7:8], 52)
    score = dict(zip(res.ids[0].tolist(), res.scores[0].tolist()))
    assert [score[7], score[51], score[50]] == pytest.approx([1.0, 1.0, 0.5], abs=1e-5)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_add_and_remove_without_rebuild(factory):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(800, 8)).astype(np.float32)
    index = ItemIndex("l2", factory=factory, target_recall=1.0).fit(x[:700], np.arange(700))
    index.add(x[700:], np.arange(700, 800))
    assert index.count == 800
    res = index.search(x[750:760], 1)
    assert res.ids[:, 0].tolist() == list(range(750, 760))
    assert index.remove(np.array([750, 751, 3])) == 3
    assert index.count == 797
    res = index.search(x[[750, 751, 3]], 20)
    assert not np.isin([750, 751, 3], res.ids).any()
    assert set(index.ids().tolist()) == set(range(800)) - {750, 751, 3}
    with pytest.raises(ValueError, match=r"ids: 1 ids are already in the index \(first: 5\)"):
        index.add(x[:1], np.array([5]))
    with pytest.raises(ValueError, match=r"ids: 1 ids are not in the index \(first: 750\)"):
        index.remove(np.array([750]))
    # ids past every id added so far skip the lookup; the next add of the same id is still refused
    index.add(x[:2], np.array([900, 901]))
    with pytest.raises(ValueError, match=r"ids: 1 ids are already in the index \(first: 901\)"):
        index.add(x[:2], np.array([901, 902]))
    assert index.count == 799 and 902 not in index.ids()


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_save_load_round_trip(tmp_path, factory):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 12)).astype(np.float32)
    index = ItemIndex("cosine", factory=factory).fit(x, np.arange(500) + 1000)
    index.remove(np.array([1000]))
    run = RunDir(tmp_path / "run", create=True)
    index.save("index", "demo", run=run)
    info = json.loads((tmp_path / "run/index/demo.json").read_text())
    assert {"factory", "metric", "dim", "count", "recall_at_10_vs_exact", "params"} <= set(info)
    assert info["count"] == 499 and info["dim"] == 12 and info["metric"] == "cosine"
    assert "index/demo.faiss" in run.manifest["files"]
    again = ItemIndex.load("index", "demo", run=RunDir(tmp_path / "run"))
    q = rng.normal(size=(10, 12)).astype(np.float32)
    a, b = index.search(q, 5), again.search(q, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert again.params_ == index.params_ and again.count == 499
    # plain folder, no run
    index.save(tmp_path / "plain", "x")
    assert ItemIndex.load(tmp_path / "plain", "x").count == 499
    # a tampered file is refused by the run folder
    (tmp_path / "run/index/demo.json").write_text("{}")
    with pytest.raises(ValueError, match="does not match its checksum"):
        ItemIndex.load("index", "demo", run=RunDir(tmp_path / "run"))


def test_bad_inputs_are_named():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="metric: expected one of"):
        ItemIndex("dot").fit(x, np.arange(4))
    with pytest.raises(ValueError, match=r"ids: expected 4 ids, one per vector \(got 3\)"):
        ItemIndex().fit(x, np.arange(3))
    with pytest.raises(ValueError, match=r"ids: 1 ids occur more than once \(first: 1\)"):
        ItemIndex().fit(x, np.array([0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"vectors: 1 of 4 rows hold NaN or inf \(first: row 2\)"):
        bad = x.copy()
        bad[2, 1] = np.nan
        ItemIndex().fit(bad, np.arange(4))
    with pytest.raises(ValueError, match="vectors: expected a 2-d array"):
        ItemIndex().fit(np.ones(4), np.arange(4))
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemIndex().search(x, 1)
    index = ItemIndex().fit(x, np.arange(4))
    with pytest.raises(ValueError, match=r"queries: expected 3 columns, the index's dimension \(got 2\)"):
        index.search(np.ones((1, 2)), 1)
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1 \(got 0\)"):
        index.search(x, 0)
    with pytest.raises(ValueError, match="factory: FAISS cannot build 'Nonsense12'"):
        ItemIndex(factory="Nonsense12").fit(x, np.arange(4))


def test_index_run_and_cli_write_every_index(tmp_path, tmp_path_factory, capsys):
    import argparse
    import shutil

    from shopgraph.retrieval.index import INDEX_NAMES, cli_index
    from tests.retrieval.test_service import shared_run

    run_path = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), run_path)
    assert cli_index(argparse.Namespace(run=run_path)) == 0
    out = capsys.readouterr().out
    run = RunDir(run_path)
    run.verify()
    for name in INDEX_NAMES:
        assert name in out
        info = run.read_json(f"index/{name}.json")
        assert info["count"] == (24 if name == "image_items" else 30)  # every 5th item has no image
        index = ItemIndex.load("index", name, run=run)
        assert index.count == info["count"]
    assert run.read_json("index/gnn_items.json")["metric"] == "ip"
    assert run.read_json("index/text_items.json")["dim"] == 384
    assert run.read_json("index/image_items.json")["dim"] == 1280
    assert sorted(ItemIndex.load("index", "image_items", run=run).ids().tolist()) == [
        k for k in range(30) if k % 5 != 4]
