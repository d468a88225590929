from __future__ import annotations

import copy
import io
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor
from torch_geometric.data import HeteroData

from shopgraph.graph import train as train_mod
from shopgraph.graph.build import build_graph, message_passing_graph
from shopgraph.graph.evaluate import _model_kind, evaluate_run
from shopgraph.graph.model import ShopGNN
from shopgraph.graph.run import RunDir
from shopgraph.graph.train import (
    WITH_SAMPLING,
    TrainConfig,
    embed_graph,
    fraud_labels,
    lean_graph,
    load_model,
    rank_loss,
    save_model,
    train,
    train_run,
)
from tests.conftest import make_tables

FAST = {"epochs": 6, "eval_every": 2, "hidden": 16, "num_negatives": 8}


def _graph(seed: int = 0, **kw: object) -> HeteroData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(make_tables(n_users=60, n_items=25, n_events=900, seed=seed, **kw))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    data["user"].x = torch.randn(data["user"].num_nodes, 5, generator=g)
    data["item"].x = torch.randn(data["item"].num_nodes, 7, generator=g)
    return data


@pytest.fixture(scope="module")
def data() -> HeteroData:
    return _graph()


def _run(tmp_path: Path, data: HeteroData) -> Path:
    run = RunDir(tmp_path / "run", create=True)
    run.save_graph(data)
    return run.path


@pytest.mark.parametrize("conv", ["history", "sage"])
def test_training_reduces_loss(data: HeteroData, conv: str) -> None:
    result = train(data, TrainConfig(epochs=40, eval_every=10, conv=conv, hidden=16, num_negatives=8,
                                     temperature=1.0, fraud_weight=0.5))
    first, last = result.history[0], result.history[-1]
    assert last["rank_loss"] < first["rank_loss"] * 0.9
    assert last["fraud_loss"] < first["fraud_loss"]
    assert 0 < result.best_epoch <= 40
    # the history tower adds the group-mix channel: one column per item category (3 here)
    width = 16 + 3 + 12 if conv == "history" else 16  # + the group-mix and item-neighbour channels (25 items: rank 12)
    assert result.embeddings["item"].shape == (data["item"].num_nodes, width)
    assert result.fraud_prob.shape == (data["user"].num_nodes,)
    assert set(result.fraud.candidates) == {"gnn_head", "hybrid", "graph_trees", "rank_average"}
    assert result.fraud.kind in result.fraud.candidates
    # the tie-break may prefer a more robust candidate within one standard error of the best
    assert result.fraud.val_auprc == result.fraud.candidates[result.fraud.kind]


def test_history_defaults_and_errors() -> None:
    cfg = TrainConfig()
    assert cfg.conv == "history"
    assert (cfg.hidden, cfg.num_negatives, cfg.temperature, cfg.horizon_days, cfg.cuts_per_step) == (256, 0, 64.0, 7.0, 3)
    assert (cfg.user_mlp, cfg.item_counts, cfg.revisit) == (256, False, True)
    sage = TrainConfig(conv="sage")
    assert (sage.user_mlp, sage.item_counts, sage.revisit) == (0, False, False)
    assert (sage.hidden, sage.num_negatives, sage.temperature, sage.dropout) == (64, 512, 4.0, 0.3)
    assert TrainConfig(conv="sage", hidden=32).hidden == 32  # an explicit value wins
    assert TrainConfig(mini_batch=True).aux_weight == 1.0  # the history tower batches users, aux loss and all
    with pytest.raises(ValueError, match=r"item_counts: counts every user's events on an item.*turn it off"):
        TrainConfig(mini_batch=True, item_counts=True)
    with pytest.raises(ValueError, match=r"held_out_folds: expected 0 \(none\) or an integer >= 2 \(got 1\)"):
        TrainConfig(held_out_folds=1)
    with pytest.raises(ValueError, match="horizon_days: expected >= 0 .got -1"):
        TrainConfig(horizon_days=-1)
    assert (cfg.aux_weight, sage.aux_weight) == (1.0, 0.0)
    with pytest.raises(ValueError, match=r"aux_weight: expected >= 0 \(got -1"):
        TrainConfig(aux_weight=-1)
    with pytest.raises(ValueError, match=r"aux_weight: expected >= 0 \(got nan"):
        TrainConfig(aux_weight=float("nan"))
    with pytest.raises(ValueError, match=r"aux_pairs: expected a positive integer \(got 0"):
        TrainConfig(aux_pairs=0)
    with pytest.raises(ValueError, match="aux_weight: the auxiliary loss is not part of neighbour-sampled"):
        TrainConfig(conv="sage", mini_batch=True, aux_weight=0.5)


def test_full_softmax_leaves_known_items_out() -> None:
    cfg = TrainConfig(num_negatives=0, temperature=1.0)
    user = torch.tensor([[1.0, 0.0]])
    item = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0]])
    pairs = torch.tensor([[0], [0]])
    gen = torch.Generator().manual_seed(0)
    pop = torch.ones(3)
    plain = rank_loss(cfg, user, item, pairs, pop, gen)
    masked = rank_loss(cfg, user, item, pairs, pop, gen, known=torch.tensor([[0], [1]]))
    # item 1 (score 10) dominates the softmax unless the user already has it
    assert plain > 8.0
    torch.testing.assert_close(masked, -torch.log_softmax(torch.tensor([1.0, 0.0]), 0)[0])


def test_full_softmax_too_large_samples_shared_negatives(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # 100,000 users x 40,000 items ran out of 24 GB with [pairs, items] logits
    monkeypatch.setattr(train_mod, "FULL_SOFTMAX_MAX", 1_000)
    monkeypatch.setattr(train_mod, "_WARNED_FULL_SOFTMAX", set())
    cfg = TrainConfig(num_negatives=0, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    user, item = torch.randn(50, 4), torch.randn(300, 4)
    pairs = torch.stack([torch.arange(50), torch.randint(300, (50,), generator=gen)])
    with caplog.at_level("WARNING"):
        loss = rank_loss(cfg, user, item, pairs, torch.ones(300), gen)
    assert torch.isfinite(loss)
    assert "sampling about 256 shared negatives" in caplog.text
    full = rank_loss(TrainConfig(num_negatives=0, temperature=1.0), user[:2], item[:3], pairs[:, :2] % 3,
                     torch.ones(3), gen)
    assert torch.isfinite(full)  # small problems keep the exact full-catalogue loss


def test_new_models_normalise_the_fraud_head_input(data: HeteroData) -> None:
    assert TrainConfig().model_config(data).fraud_norm
    assert TrainConfig(conv="sage").model_config(data).fraud_norm


def test_seeded_runs_are_identical(data: HeteroData) -> None:
    a = train(data, TrainConfig(**FAST, seed=1))  # type: ignore[arg-type]
    b = train(data, TrainConfig(**FAST, seed=1))  # type: ignore[arg-type]
    c = train(data, TrainConfig(**FAST, seed=2))  # type: ignore[arg-type]
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert torch.equal(a.embeddings["user"], b.embeddings["user"])
    assert not torch.equal(a.embeddings["user"], c.embeddings["user"])


@pytest.mark.parametrize("options", [
    {"rank_loss": "bpr"}, {"negatives": "popularity"}, {"negatives": "hard"}, {"num_negatives": 0},
    {"fraud_loss": "focal"}, {"conv": "gatv2"}, {"conv": "hgt"}, {"conv": "lightgcn"}, {"batch_pairs": 50},
])
def test_loss_and_conv_options_train(data: HeteroData, options: dict[str, object]) -> None:
    cfg = {**FAST, **options}
    result = train(data, TrainConfig(**cfg))  # type: ignore[arg-type]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_checkpoint_round_trip(tmp_path: Path, data: HeteroData) -> None:
    result = train(data, TrainConfig(**FAST))  # type: ignore[arg-type]
    save_model(result.model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config == result.model.config
    graph = lean_graph(data)
    a = embed_graph(result.model, graph, torch.device("cpu"))
    b = embed_graph(again, graph, torch.device("cpu"))
    for nt in a:
        assert torch.equal(a[nt], b[nt])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "nothing")
    # weights of another layout (e.g. a run trained before the history tower): a clear error
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    del weights["item_bias"]
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"retrain this run \(model layout changed: 1 missing parameters \['item_bias'\]"):
        load_model(tmp_path / "m")


class _Interrupt(Exception):
    pass


def _interrupted_after_epoch_3(data: HeteroData, cfg: TrainConfig, folder: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Train with checkpoints in ``folder``, interrupted right after epoch 3's line."""
    real_log = train_mod._log_epoch

    def crash_after_epoch_3(line: str) -> None:
        real_log(line)
        if line.startswith("epoch    3 "):
            raise _Interrupt

    with monkeypatch.context() as patched:
        patched.setattr(train_mod, "_log_epoch", crash_after_epoch_3)
        with pytest.raises(_Interrupt):
            train(data, cfg, checkpoint_dir=folder)


def test_resume_after_interruption_equals_uninterrupted(
    tmp_path: Path, data: HeteroData, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(**FAST, seed=5)  # type: ignore[arg-type]
    full = train(data, cfg, checkpoint_dir=tmp_path / "a")
    _interrupted_after_epoch_3(data, cfg, tmp_path / "b", monkeypatch)
    saved = train_mod._load_state(tmp_path / "b" / train_mod.STATE_FILE)
    assert saved["epoch"] == 2  # epoch 3 was interrupted before its checkpoint
    resumed = train(data, cfg, checkpoint_dir=tmp_path / "b", resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.best_epoch == full.best_epoch
    for nt in full.embeddings:
        assert torch.equal(resumed.embeddings[nt], full.embeddings[nt])

    with pytest.raises(ValueError, match=r"different settings \['lr'\]"):
        train(data, TrainConfig(**FAST, seed=5, lr=0.5), checkpoint_dir=tmp_path / "b", resume=True)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(data, cfg, checkpoint_dir=tmp_path / "empty", resume=True)
    # a checkpoint written when mini_batch defaulted to False resumes under today's default (None,
    # which resolves to full-batch on this graph); asking for mini-batches is a different setting
    older = train_mod._load_state(tmp_path / "b" / train_mod.STATE_FILE)
    assert older["train_config"]["mini_batch"] is None
    older["train_config"]["mini_batch"] = False
    train_mod._save_state(tmp_path / "b" / train_mod.STATE_FILE, older)
    with pytest.raises(ValueError, match=r"different settings \['mini_batch'\]"):
        train(data, TrainConfig(**FAST, seed=5, mini_batch=True), checkpoint_dir=tmp_path / "b", resume=True)  # type: ignore[arg-type]
    again = train(data, cfg, checkpoint_dir=tmp_path / "b", resume=True)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in full.history]
    # a checkpoint of an older model layout (here: without the consideration-set weights)
    saved = train_mod._load_state(tmp_path / "b" / train_mod.STATE_FILE)
    saved["model"] = {k: v for k, v in saved["model"].items() if not k.startswith("consider_")}
    train_mod._save_state(tmp_path / "b" / train_mod.STATE_FILE, saved)
    with pytest.raises(ValueError, match=r"resume: the checkpoint at .* does not fit this model \(.*consider_"):
        train(data, cfg, checkpoint_dir=tmp_path / "b", resume=True)


@pytest.mark.skipif(not WITH_SAMPLING, reason="mini-batch training needs torch-sparse or pyg-lib")
def test_mini_batch_path_runs(data: HeteroData) -> None:
    result = train(data, TrainConfig(**FAST, conv="sage", mini_batch=True, batch_size=64, num_neighbors=[5, 5]))  # type: ignore[arg-type]
    assert len(result.history) == 6
    assert result.history[-1]["rank_loss"] < result.history[0]["rank_loss"]
    assert result.embeddings["user"].shape == (data["user"].num_nodes, 16)


@pytest.mark.skipif(not WITH_SAMPLING, reason="mini-batch training needs torch-sparse or pyg-lib")
@pytest.mark.parametrize("supervision", ["temporal", "all"])
def test_mini_batches_predict_what_their_graph_hides(data: HeteroData, monkeypatch: pytest.MonkeyPatch,
                                                     supervision: str) -> None:
    seen: list[tuple[HeteroData, HeteroData, Tensor]] = []
    real = train_mod._mini_batches

    def spy(cfg, link_graph, fraud_graph, et, pairs, users):  # type: ignore[no-untyped-def]
        seen.append((link_graph, fraud_graph, pairs))
        return real(cfg, link_graph, fraud_graph, et, pairs, users)

    monkeypatch.setattr(train_mod, "_mini_batches", spy)
    train(data, TrainConfig(**{**FAST, "epochs": 2, "eval_every": 2}, conv="sage", mini_batch=True,  # type: ignore[arg-type]
                            batch_size=64, num_neighbors=[5, 5], supervision=supervision))
    assert len(seen) == 2  # one view per epoch
    et = ("user", "purchase", "item")
    n = data["item"].num_nodes
    full = message_passing_graph(data, "train")
    for link_graph, fraud_graph, pairs in seen:
        assert fraud_graph[et].edge_index.size(1) == full[et].edge_index.size(1)  # fraud: the whole period
        known = set((link_graph[et].edge_index[0] * n + link_graph[et].edge_index[1]).tolist())
        predicted = set((pairs[0] * n + pairs[1]).tolist())
        if supervision == "all":
            assert predicted == known == set((full[et].edge_index[0] * n + full[et].edge_index[1]).tolist())
            continue
        # temporal: every sampled edge precedes every predicted purchase, none of which was visible
        first_after = min(int(t) for (u, i), t in zip(full[et].edge_index.T.tolist(), full[et].time.tolist())
                          if u * n + i in predicted and u * n + i not in known)
        last_visible = max(int(link_graph[e].time.max()) for e in link_graph.edge_types if link_graph[e].time.numel())
        assert predicted and not predicted & known and last_visible < first_after
    if supervision == "temporal":  # a new cut each epoch
        assert seen[0][2].shape != seen[1][2].shape or not torch.equal(seen[0][2], seen[1][2])


def test_mini_batch_view_without_pairs_is_refused(data: HeteroData) -> None:
    graph = lean_graph(message_passing_graph(data, "train"))
    cfg = TrainConfig(conv="sage", supervision="temporal", horizon_days=1e-9, cut_range=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"supervision: 10 temporal views of the training period had no new "
                                         r"'purchase' pairs to predict .*horizon_days=1e-09"):
        train_mod._mini_batch_view("temporal", cfg, graph, ("user", "purchase", "item"), data["item"].num_nodes,
                                   torch.Generator().manual_seed(0))


def test_mini_batch_without_sampling_says_what_to_install(data: HeteroData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod, "WITH_SAMPLING", False)
    with pytest.raises(ImportError, match="pip install torch-sparse"):
        train(data, TrainConfig(**FAST, conv="sage", mini_batch=True))  # type: ignore[arg-type]


def test_user_batch_graph_embeds_users_as_the_whole_graph_does(data: HeteroData) -> None:
    graph = lean_graph(message_passing_graph(data, "train"))
    model = ShopGNN(TrainConfig(**FAST).model_config(data)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():  # non-trivial trained weights; the calibrated ones stay 0 in training
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        full = model.embed(graph)
        users = torch.tensor([7, 0, 31, 12])
        sub = train_mod.user_batch_graph(graph, users)
        part = model.embed(sub)
        full_rev, part_rev = model.revisit_scores(graph), model.revisit_scores(sub)
    assert sub["user"].num_nodes == 4 and torch.equal(sub["user"].n_id, users)
    assert sub["item"].num_nodes == data["item"].num_nodes and sub["device"].num_nodes == 0
    torch.testing.assert_close(part["user"], full["user"][users])
    torch.testing.assert_close(part["item"], full["item"])
    assert full_rev is not None and part_rev is not None
    n = data["item"].num_nodes
    torch.testing.assert_close(part_rev.rows(torch.arange(4), n), full_rev.rows(users, n))
    # the clock travels: a batch of users whose last event is early still measures ages from the graph's end
    assert sub.reference_time == max(int(graph[et].time.max()) for et in graph.edge_types if et[0] == "user"
                                     and et[2] == "item")
    with pytest.raises(ValueError, match=r"nodes\['user'\]: expected indices in \[0, 60\) \(got 0..60\)"):
        train_mod.user_batch_graph(graph, torch.tensor([0, 60]))
    with pytest.raises(ValueError, match=r"nodes\['user'\]: expected distinct indices"):
        train_mod.user_batch_graph(graph, torch.tensor([3, 3]))
    assert sub["item"].x is graph["item"].x  # the catalogue is shared, not copied per batch


def test_user_batches_cover_every_user_once() -> None:
    gen = torch.Generator().manual_seed(0)
    pairs = torch.tensor([[0, 0, 1, 2, 3, 3, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8]])
    aux = torch.tensor([[4, 5, 0], [1, 1, 9]])
    batches = train_mod._user_batches(pairs, aux, 3, gen)
    assert len(batches) == 3  # ceil(8 predicted pairs / 3)
    assert sorted(torch.cat(batches).tolist()) == [0, 1, 2, 3, 4, 5]
    assert train_mod._user_batches(pairs, None, 100, gen)[0].numel() == 5


@pytest.mark.parametrize("sampling", [True, False])
def test_history_mini_batch_trains_without_a_sampling_library(data: HeteroData, monkeypatch: pytest.MonkeyPatch,
                                                              sampling: bool) -> None:
    monkeypatch.setattr(train_mod, "WITH_SAMPLING", sampling)
    seen: list[int] = []
    real = train_mod._history_mini_batch_epoch

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        seen.append(len(out))
        return out

    monkeypatch.setattr(train_mod, "_history_mini_batch_epoch", spy)
    cfg = TrainConfig(**{**FAST, "epochs": 30, "eval_every": 10}, mini_batch=True, batch_size=8,  # type: ignore[arg-type]
                      temperature=1.0, cuts_per_step=1)
    result = train(data, cfg)
    assert len(seen) == 30 and max(seen) > 1  # several user batches per epoch
    first, last = result.history[0], result.history[-1]
    assert last["rank_loss"] < first["rank_loss"] and "aux_loss" in last
    assert result.embeddings["user"].shape[0] == data["user"].num_nodes
    again = train(data, cfg)  # seeded: the same batches, the same model
    torch.testing.assert_close(again.embeddings["user"], result.embeddings["user"])


def test_train_run_writes_artifacts(tmp_path: Path, data: HeteroData) -> None:
    path = _run(tmp_path, data)
    result = train_run(path, **FAST)
    run = RunDir(path)
    run.verify()
    for rel in ("model/model.safetensors", "model/config.json", "model/history.json",
                "embeddings.safetensors", "fraud.json"):
        assert run.has(rel), rel
    # the resume checkpoint is there but not recorded: it is rewritten outside the manifest
    assert (path / "model" / "train_state.pt").is_file() and not run.has("model/train_state.pt")
    emb = load_file(str(path / "embeddings.safetensors"))
    assert emb["user"].shape == (data["user"].num_nodes, 16 + 3 + 12)  # + the group-mix and item-neighbour channels
    assert emb["item"].shape == (data["item"].num_nodes, 16 + 3 + 12)
    assert emb["device"].shape == (data["device"].num_nodes, 16)
    assert emb["fraud_prob"].shape == (data["user"].num_nodes,)
    assert ((emb["fraud_prob"] >= 0) & (emb["fraud_prob"] <= 1)).all()
    assert torch.equal(emb["item"], result.embeddings["item"])
    # the revisit term on the full graph: the pairs with user→item events of any period
    assert result.revisit is not None
    assert torch.equal(emb["revisit_index"], result.revisit.pairs)
    assert torch.equal(emb["revisit_value"], result.revisit.value)
    pairs = torch.cat([data[et].edge_index for et in data.edge_types if et[0] == "user" and et[2] == "item"], 1)
    assert torch.equal(emb["revisit_index"], torch.unique(pairs, dim=1))
    history = json.loads((path / "model" / "history.json").read_text())
    assert set(history["revisit_calibration"]) == {f"{m:g}" for m in train_mod.REVISIT_MULTIPLIERS}
    assert set(history["group_mix_calibration"]) == {f"{w:g}" for w in train_mod.GROUP_WEIGHTS}
    assert history["consider_calibration"] == pytest.approx(result.consider_calibration)
    fraud = json.loads((path / "fraud.json").read_text())
    assert fraud["kind"] == result.fraud.kind and 0 <= fraud["threshold"] <= 1
    model = load_model(path / "model")
    assert float(model.group_weight) == float(result.model.group_weight)  # the calibrated weight is saved
    for name in ("consider_weight", "consider_share", "consider_size", "revisit_log_scale"):
        assert float(getattr(model, name).detach()) == float(getattr(result.model, name).detach()), name
    assert model.config == result.model_config
    # the serving pass sees every period; the train-period view gives different embeddings
    train_view = embed_graph(model, lean_graph(message_passing_graph(data, "train")), torch.device("cpu"))
    assert not torch.allclose(emb["user"], train_view["user"])


def test_train_run_stores_the_trained_on_accounts_held_out_scores(
        tmp_path: Path, data: HeteroData, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.metrics import average_precision_score

    from shopgraph.graph import fraud_scorer
    from shopgraph.graph.pipeline import save_tables

    real = fraud_scorer.choose_candidate  # the served kind pinned to graph_trees, the one with held-out scores
    monkeypatch.setattr(fraud_scorer, "choose_candidate",
                        lambda y, probs, **kw: ("graph_trees", real(y, probs, **kw)[1]))
    path = _run(tmp_path, data)
    with warnings.catch_warnings():  # the tables of `data` (_graph), for the service below
        warnings.simplefilter("ignore")
        save_tables(RunDir(path), make_tables(n_users=60, n_items=25, n_events=900, seed=0))
    result = train_run(path, **FAST)
    assert result.fraud.kind == "graph_trees"
    held = load_file(str(path / "embeddings.safetensors"))[train_mod.HELD_OUT_KEY]
    y, masks = fraud_labels(data)
    train_users = masks["train"]
    assert torch.isfinite(held).tolist() == train_users.tolist()
    torch.testing.assert_close(held, result.fraud_prob_held_out, rtol=0, atol=0, equal_nan=True)
    info = json.loads((path / "fraud.json").read_text())["held_out"]
    assert info["folds"] == 5 and info["accounts"] == int(train_users.sum())
    assert info["threshold"] == pytest.approx(result.fraud.threshold)
    assert info["auprc"] == pytest.approx(average_precision_score(y[train_users].numpy(), held[train_users].numpy()))
    # each fold's trees are stored, and they give (and explain) each account's held-out score
    fold = load_file(str(path / "embeddings.safetensors"))[train_mod.HELD_OUT_FOLD_KEY]
    assert ((fold >= 0) == train_users).all() and set(fold[train_users].tolist()) == set(range(5))
    assert sorted(info["trees_files"]) == ["0", "1", "2", "3", "4"]
    from shopgraph.graph.explain import HeldOutExplainer
    from shopgraph.retrieval.index import index_run
    from shopgraph.retrieval.service import ShopService

    explainer = HeldOutExplainer.from_run(RunDir(path), data, held.double().numpy())
    assert explainer is not None
    for u in torch.nonzero(train_users).flatten()[:12].tolist():
        got = explainer.contributions(u)
        assert got is not None
        margin = got[1] + sum(f.attribution for f in got[0])
        assert 1.0 / (1.0 + math.exp(-margin)) == pytest.approx(float(held[u]), abs=1e-4)
    assert explainer.contributions(int(torch.nonzero(~train_users).flatten()[0])) is None
    index_run(path)
    service = ShopService.from_run(path, catalogue_follow=False)
    scores = service.score_users(service.user_ids, reasons=True)
    assert all(bool(s.held_out_reasons) == (s.held_out_probability is not None) for s in scores)
    assert any(r.endswith(" log-odds)") for s in scores for r in s.held_out_reasons)
    for s in scores:  # the reasons for the held-out verdict: what raised a flagged score, what lowered another
        if s.held_out_probability is not None:
            signs = {r.rsplit("(", 1)[1][0] for r in s.held_out_reasons if r.endswith(" log-odds)")}
            assert signs <= ({"+"} if s.held_out_probability >= s.threshold else {"-"})
    # a fold's trees missing: the service still loads, and says why there are no held-out reasons
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "fraud_held_out" / "fold2.ubj").unlink()
    damaged = ShopService.from_run(broken, catalogue_follow=False)
    trained = next(s for s in scores if s.held_out_probability is not None)
    got = damaged.score_user(trained.user_id)
    assert got.probability == trained.probability and got.held_out_probability == trained.held_out_probability
    assert got.held_out_reasons[0].startswith("no attribution of the held-out score is available here")
    # trees of another feature layout: those accounts get no reasons, the others do
    explainer = HeldOutExplainer.from_run(RunDir(path), data, held.double().numpy())
    assert explainer is not None
    wider = data.clone()
    wider["user"].x = torch.cat([data["user"].x, data["user"].x[:, :1]], 1)
    explainer.data = wider
    assert explainer.contributions(int(torch.nonzero(train_users).flatten()[0])) is None
    # none asked for: all NaN, fraud.json says nothing of them, and a retraining in place forgets the old trees
    train_run(path, held_out_folds=0, **FAST)
    assert not (path / "fraud_held_out" / "fold0.ubj").exists()
    assert not any(r.startswith("fraud_held_out/") for r in RunDir(path).manifest["files"])
    RunDir(path).verify()
    other = _run(tmp_path / "none", data)
    result = train_run(other, held_out_folds=0, **FAST)
    assert torch.isnan(load_file(str(other / "embeddings.safetensors"))[train_mod.HELD_OUT_KEY]).all()
    assert "held_out" not in json.loads((other / "fraud.json").read_text())


def test_train_run_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        train_run(tmp_path)
    RunDir(tmp_path / "empty", create=True)
    with pytest.raises(FileNotFoundError, match="no graph.pt"):
        train_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="conv: expected one of sage, gatv2, hgt, lightgcn, history .got 'gcn'."):
        TrainConfig(conv="gcn")
    with pytest.raises(ValueError, match=r"unknown training settings \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="device: CUDA is not available"):
        if torch.cuda.is_available():
            raise ValueError("device: CUDA is not available (skipped: this machine has CUDA)")
        train_mod.resolve_device("cuda")
    for bad in ("gpu", "", "cuda:x", "mps"):
        with pytest.raises(ValueError, match=rf"device: expected 'cpu', 'cuda' or 'cuda:N' .* \(got '{bad}'\)"):
            train_mod.resolve_device(bad)
    assert train_mod.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="resume: needs checkpoint_dir"):
        train(_graph(), TrainConfig(**FAST), resume=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["temporal", "disjoint"])
def test_epoch_view_hides_what_it_predicts(data: HeteroData, kind: str) -> None:
    graph = lean_graph(message_passing_graph(data, "train"))
    et = ("user", "purchase", "item")
    n = data["item"].num_nodes
    cfg = TrainConfig(supervision=kind)
    view = train_mod.epoch_view(kind, cfg, graph, et, n, torch.Generator().manual_seed(0))
    assert view.pairs.size(1) > 0
    predicted = set(map(tuple, view.pairs.t().tolist()))
    for e in view.graph.edge_types:
        ei = view.graph[e].edge_index
        if e[0] == "user" and e[2] == "item":
            seen = set(map(tuple, ei.t().tolist()))
        elif e[0] == "item" and e[2] == "user":
            seen = set(map(tuple, ei.flip(0).t().tolist()))
        else:
            continue
        if kind == "disjoint" or e[1] in ("purchase", "rev_purchase"):
            assert not predicted & seen, e
    if kind == "temporal":  # everything aggregated happened before everything predicted
        cut = max(int(view.graph[e].time.max()) for e in view.graph.edge_types if view.graph[e].time.numel())
        store = graph[et]
        keys = store.edge_index[0] * n + store.edge_index[1]
        first: dict[int, int] = {}
        for k, t in zip(keys.tolist(), store.time.tolist()):
            first[k] = min(t, first.get(k, t))
        assert all(first[u * n + i] > cut for u, i in predicted)


def test_aux_pairs_are_the_next_new_views_and_carts(data: HeteroData) -> None:
    graph = lean_graph(message_passing_graph(data, "train"))
    et = ("user", "purchase", "item")
    n = data["item"].num_nodes
    for cfg in (TrainConfig(), TrainConfig(horizon_days=0.0)):  # 7-day window; to the end of training
        view = train_mod.epoch_view("temporal", cfg, graph, et, n, torch.Generator().manual_seed(1))
        # the cut epoch_view drew: the same quantile of the purchase times from the same generator
        q = float(torch.rand((), generator=torch.Generator().manual_seed(1)))
        lo, hi = cfg.cut_range
        cut = float(torch.quantile(graph[et].time.double(), lo + (hi - lo) * q))
        assert max(int(view.graph[e].time.max()) for e in view.graph.edge_types if view.graph[e].time.numel()) < cut
        end = cut + 7 * 86400 if cfg.horizon_days else float("inf")
        seen: set[int] = set()
        later: set[int] = set()
        bought_later: set[int] = set()
        for e in graph.edge_types:
            if e[0] != "user" or e[2] != "item":
                continue
            st = graph[e]
            for (u, i), t in zip(st.edge_index.t().tolist(), st.time.tolist()):
                if t < cut:
                    seen.add(u * n + i)
                elif t < end:
                    (bought_later if e == et else later).add(u * n + i)
        assert view.aux is not None
        got = {u * n + i for u, i in view.aux.t().tolist()}
        assert got == later - seen - bought_later and got
    off = train_mod.epoch_view("temporal", TrainConfig(aux_weight=0.0), graph, et, n, torch.Generator().manual_seed(1))
    assert off.aux is None
    disjoint = train_mod.epoch_view("disjoint", TrainConfig(), graph, et, n, torch.Generator().manual_seed(1))
    assert disjoint.aux is None


def test_aux_loss_trains_and_is_recorded(data: HeteroData) -> None:
    on = train(data, TrainConfig(**FAST, seed=2))  # type: ignore[arg-type]
    off = train(data, TrainConfig(**FAST, seed=2, aux_weight=0.0))  # type: ignore[arg-type]
    assert all(h["aux_loss"] > 0 for h in on.history)
    assert all("aux_loss" not in h for h in off.history)
    for h in on.history:
        assert h["loss"] == pytest.approx(h["rank_loss"] + h["aux_loss"] + h["fraud_loss"])
    # the purchase scores of the served model differ: the auxiliary loss shaped the embeddings
    assert not torch.allclose(on.embeddings["item"], off.embeddings["item"])
    # the message-passing convs get the auxiliary bias as an extra column
    sage = train(data, TrainConfig(**FAST, conv="sage", aux_weight=1.0))  # type: ignore[arg-type]
    assert all(h["aux_loss"] > 0 for h in sage.history)


def test_aux_loss_with_purchases_only() -> None:
    tables = make_tables(n_users=60, n_items=25, n_events=900, seed=0)
    tables.events = tables.events[tables.events["event_type"] == "purchase"].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(tables)
    result = train(data, TrainConfig(**FAST))  # type: ignore[arg-type]
    # nothing else to predict: the auxiliary loss stays at zero and training runs as without it
    assert all(h["aux_loss"] == 0.0 for h in result.history)
    assert len(result.history) == 6


def test_temporal_supervision_needs_times() -> None:
    data = _graph(timestamps=False)
    with pytest.raises(ValueError, match="supervision: 'temporal' needs edge times"):
        train(data, TrainConfig(**FAST, supervision="temporal"))  # type: ignore[arg-type]
    result = train(data, TrainConfig(**FAST))  # type: ignore[arg-type]  # auto -> disjoint
    assert len(result.history) == 6


def test_validation_front_keeps_non_dominated_checkpoints() -> None:
    model = torch.nn.Linear(2, 1)
    front = train_mod._Front()
    front.add(5, {"val_recall@20": 0.10, "val_auprc": 0.50}, model)
    front.add(10, {"val_recall@20": 0.08, "val_auprc": 0.40}, model)  # dominated
    assert front.bad == 1 and len(front.points) == 1
    front.add(15, {"val_recall@20": 0.20, "val_auprc": 0.45}, model)  # trades fraud for ranking
    front.add(20, {"val_recall@20": 0.21, "val_auprc": 0.60}, model)  # dominates both
    assert front.bad == 0 and [p["epoch"] for p in front.points] == [20]
    front.add(25, {"val_recall@20": 0.30, "val_auprc": 0.30}, model)
    chosen = front.best()
    assert chosen is not None
    # 0.21/0.30 + 0.60/0.60 = 1.70 beats 0.30/0.30 + 0.30/0.60 = 1.50
    assert chosen[0]["epoch"] == 20 and chosen[1] == pytest.approx(1.7)


def test_rank_loss_adds_the_revisit_term_to_every_score() -> None:
    from shopgraph.graph.model import Revisit

    user, item = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    pairs = torch.tensor([[0, 1], [1, 2]])
    rv = Revisit(torch.tensor([[0, 1], [1, 0]]), torch.tensor([2.0, 3.0]))  # (user 0, item 1), (user 1, item 0)
    gen, pop = torch.Generator().manual_seed(0), torch.ones(3)
    dense = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    logits = user @ item.T + dense
    want = torch.nn.functional.cross_entropy(logits[pairs[0]], pairs[1])
    full = TrainConfig(num_negatives=0, temperature=1.0)
    torch.testing.assert_close(rank_loss(full, user, item, pairs, pop, gen, revisit=rv), want)
    assert not torch.isclose(rank_loss(full, user, item, pairs, pop, gen), want)
    # sampled negatives read the same term at the sampled cells (all 3 items, uniform: every one)
    for negatives in ("uniform", "hard"):
        cfg = TrainConfig(num_negatives=2, temperature=1.0, negatives=negatives)
        loss = rank_loss(cfg, user, item, pairs, pop, torch.Generator().manual_seed(0), revisit=rv)
        assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def fast_result(data: HeteroData) -> train_mod.TrainResult:
    """The default history model trained with FAST settings (read, never changed, by the tests)."""
    return train(data, TrainConfig(**FAST))  # type: ignore[arg-type]


def _val_recall_as_kept(model: ShopGNN, data: HeteroData) -> float:
    """Validation Recall@20 of the model as it stands (calibrated revisit term and group-mix weight)."""
    g = lean_graph(message_passing_graph(data, "train"))
    dev = torch.device("cpu")
    return train_mod._revisit_recalls(embed_graph(model, g, dev), train_mod.revisit_graph(model, g, dev), data,
                                      train_mod.target_pairs(data, "train"), train_mod.target_pairs(data, "val"),
                                      (1.0,))[1.0]


def test_calibration_picks_the_best_validation_multiplier(data: HeteroData, fast_result: train_mod.TrainResult) -> None:
    result = fast_result
    calib = result.revisit_calibration
    assert set(calib) == {f"{m:g}" for m in train_mod.REVISIT_MULTIPLIERS}
    best = max(train_mod.REVISIT_MULTIPLIERS, key=lambda m: (calib[f"{m:g}"], -m))
    # folded into the model: the next calibration, re-scoring validation with the model so far
    # (group-mix weight 0), measures that recall
    assert result.group_mix_calibration["0"] == pytest.approx(calib[f"{best:g}"])
    assert "val_revisit_multiplier" in [k for h in result.history for k in h]
    plain = train(data, TrainConfig(**{**FAST, "revisit": False}))  # type: ignore[arg-type]
    assert plain.revisit is None and plain.revisit_calibration == {}


def test_group_mix_weight_is_chosen_on_validation(data: HeteroData, fast_result: train_mod.TrainResult) -> None:
    result = fast_result
    calib = result.group_mix_calibration
    assert result.model.config.groups == 3 and set(calib) == {f"{w:g}" for w in train_mod.GROUP_WEIGHTS}
    best = max(train_mod.GROUP_WEIGHTS, key=lambda w: (calib[f"{w:g}"], -w))
    assert float(result.model.group_weight) == best
    # the kept channel scores validation as the calibration measured: the consideration-set
    # calibration's "off" re-scores the model so far
    assert result.consider_calibration["off"] == pytest.approx(calib[f"{best:g}"])
    # weight 0 is the model without the channel: the same recall as the calibrated revisit term alone
    assert calib["0"] == pytest.approx(max(result.revisit_calibration.values()))
    off = train(data, TrainConfig(**{**FAST, "group_mix": False}))  # type: ignore[arg-type]
    assert off.model.config.groups == 0 and off.group_mix_calibration == {}
    assert off.embeddings["item"].shape == (data["item"].num_nodes, 16 + 12)


def test_consider_setting_is_chosen_on_validation(data: HeteroData, fast_result: train_mod.TrainResult) -> None:
    result = fast_result
    calib = result.consider_calibration
    model = result.model
    names = {train_mod.consider_setting_name(s, n, m, w) for s, n in train_mod.CONSIDER_SETS
             for m in train_mod.CONSIDER_REVISIT_MULTIPLIERS for w in train_mod.CONSIDER_WEIGHTS}
    assert model.config.consider and set(calib) == names | {"off"}
    kept = max(calib, key=lambda k: (calib[k], k == "off"))  # "off" on a tie
    if kept == "off":
        assert float(model.consider_weight) == 0.0
    else:
        s, n, m, w = (float(kv.split("=")[1]) for kv in kept.split())
        assert (float(model.consider_share), float(model.consider_size), float(model.consider_weight)) == \
            pytest.approx((s, n, w))
    # the kept setting scores validation as the calibration measured: the item-neighbour
    # calibration's weight 0 re-scores the model so far
    rank = result.model.config.knn_rank
    assert result.item_knn_calibration[train_mod.item_knn_setting_name(rank, 0.0)] == pytest.approx(calib[kept])
    assert ("+consider" in _model_kind(model)) == (kept != "off")
    off = train(data, TrainConfig(**{**FAST, "consider": False}))  # type: ignore[arg-type]
    assert not off.model.config.consider and off.consider_calibration == {}
    assert not hasattr(off.model, "consider_weight")


def _unsaturated() -> tuple[HeteroData, ShopGNN]:
    """A graph where validation Recall@20 is not saturated (120 items) and an untrained default
    history model for it (channels and scores still off)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_graph(make_tables(n_users=300, n_items=120, n_events=6000, seed=0))
    data["item"].x = torch.randn(data["item"].num_nodes, 7, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return data, ShopGNN(TrainConfig(hidden=16).model_config(data)).eval()


def test_item_knn_channel_is_fitted_and_weighted_on_validation(fast_result: train_mod.TrainResult,
                                                               data: HeteroData) -> None:
    from shopgraph.graph.baselines import item_neighbours

    big, model = _unsaturated()
    assert model.config.knn_rank == 60  # at most half the catalogue: ITEM_KNN_RANKS start at 64
    assert TrainConfig().knn_ranks(big) == (60,)
    g = lean_graph(message_passing_graph(big, "train"))
    kept, calib = train_mod.calibrate_item_knn(model, g, big, train_mod.target_pairs(big, "train"),
                                               train_mod.target_pairs(big, "val"), torch.device("cpu"))
    assert kept is model  # one rank: the model itself is fitted
    name = train_mod.item_knn_setting_name
    assert set(calib) == {name(60, w) for w in train_mod.ITEM_KNN_WEIGHTS}
    best = max(train_mod.ITEM_KNN_WEIGHTS, key=lambda w: (calib[name(60, w)], -w))
    assert float(model.knn_weight) == best
    assert len(set(calib.values())) > 2  # the channel moves the ranking
    # the kept weight and another one score validation, through the model's own code, as recorded
    for w in {best, 0.5}:
        forced = copy.deepcopy(model)
        with torch.no_grad():
            forced.knn_weight.fill_(w)
        assert _val_recall_as_kept(forced, big) == pytest.approx(calib[name(60, w)]), w
    # the factors are the truncated SVD of ItemKNN's similarities: the best rank-r error
    sim = torch.from_numpy(item_neighbours(big, "val").similarity_.toarray())
    approx = model.knn_in @ model.knn_out.T
    tail = torch.linalg.svdvals(sim)[model.config.knn_rank:]
    assert float((sim - approx).norm()) == pytest.approx(float(tail.norm()), rel=0.05)
    # in the training pipeline: the last calibration; the kept model scores validation as measured
    result = fast_result
    knn = result.item_knn_calibration
    rank = result.model.config.knn_rank
    assert rank == 12 and set(knn) == {name(12, w) for w in train_mod.ITEM_KNN_WEIGHTS}  # 25 items
    kept_w = max(train_mod.ITEM_KNN_WEIGHTS, key=lambda w: (knn[name(12, w)], -w))
    assert float(result.model.knn_weight) == kept_w
    assert _val_recall_as_kept(result.model, data) == pytest.approx(knn[name(12, kept_w)])
    off = train(data, TrainConfig(**{**FAST, "item_knn": 0}))  # type: ignore[arg-type]
    assert off.model.config.knn_rank == 0 and off.item_knn_calibration == {}
    assert not hasattr(off.model, "knn_weight")
    knn_fit = item_neighbours(big, "val")
    with pytest.raises(ValueError, match=r"set_item_knn_factors: the model has no item-neighbour channel"):
        train_mod.set_item_knn_factors(off.model, knn_fit)
    with pytest.raises(ValueError, match=r"set_item_knn_factors: ItemKNN over 120 items, the model has 25"):
        train_mod.set_item_knn_factors(copy.deepcopy(result.model), knn_fit)


def test_item_knn_ranks_follow_the_catalogue() -> None:
    assert train_mod.item_knn_ranks(41_000) == (64, 256, 1024, 2048)
    assert train_mod.item_knn_ranks(2_000) == (64, 256)  # the demo shop
    assert train_mod.item_knn_ranks(200) == (64,)
    assert train_mod.item_knn_ranks(120) == (60,)
    assert train_mod.item_knn_ranks(1) == ()
    big, _ = _unsaturated()
    assert TrainConfig(item_knn=8).knn_ranks(big) == (8,)  # a fixed rank is not searched
    assert TrainConfig(item_knn=0).knn_ranks(big) == ()
    assert TrainConfig(conv="sage").knn_ranks(big) == ()


def test_item_knn_rank_is_chosen_with_the_weight_on_validation() -> None:
    from shopgraph.graph.baselines import item_neighbours

    big, model = _unsaturated()
    g = lean_graph(message_passing_graph(big, "train"))
    train_pairs, val_pairs = train_mod.target_pairs(big, "train"), train_mod.target_pairs(big, "val")
    small = train_mod.with_knn_rank(model, 2)
    assert small.config.knn_rank == 2 and small is not model
    kept, calib = train_mod.calibrate_item_knn(small, g, big, train_pairs, val_pairs, torch.device("cpu"),
                                               ranks=(40, 2, 10))
    name = train_mod.item_knn_setting_name
    settings = [(r, w) for r in (2, 10, 40) for w in train_mod.ITEM_KNN_WEIGHTS]
    assert set(calib) == {name(r, w) for r, w in settings}
    best_r, best_w = max(settings, key=lambda rw: (calib[name(*rw)], -rw[0], -rw[1]))  # smallest on a tie
    assert (kept.config.knn_rank, float(kept.knn_weight)) == (best_r, best_w)
    assert len({calib[name(r, 1.0)] for r in (2, 10, 40)}) > 1  # the rank matters here
    assert _val_recall_as_kept(kept, big) == pytest.approx(calib[name(best_r, best_w)])
    # the factors are the leading columns of one SVD at the largest rank
    knn_fit = item_neighbours(big, "val")
    left, right = train_mod.item_knn_svd(knn_fit, 40)
    assert torch.equal(kept.knn_in, left[:, :best_r]) and torch.equal(kept.knn_out, right[:, :best_r])
    with pytest.raises(ValueError, match=r"set_item_knn_factors: factors of shape \[120, 1\] and \[120, 1\] "
                                         r"for rank 2 over 120 items"):
        train_mod.set_item_knn_factors(small, knn_fit, (left[:, :1], right[:, :1]))
    # every other parameter carried over: with the channel off the copies score as the model does
    off = copy.deepcopy(kept)
    with torch.no_grad():
        off.knn_weight.fill_(0.0)
    assert _val_recall_as_kept(off, big) == pytest.approx(_val_recall_as_kept(model, big))
    with pytest.raises(ValueError, match=r"choose_item_knn: no ranks to try"):
        train_mod.choose_item_knn(model, item_neighbours(big, "val"), (), g, big, train_pairs, val_pairs,
                                  torch.device("cpu"))


def test_train_run_saves_the_chosen_item_knn_rank(tmp_path: Path, data: HeteroData,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod, "ITEM_KNN_RANKS", (2, 4, 8))  # 25 items: all three at most half
    path = _run(tmp_path, data)
    result = train_run(path, **FAST)
    name = train_mod.item_knn_setting_name
    assert {k.split()[0] for k in result.item_knn_calibration} == {"rank=2", "rank=4", "rank=8"}
    rank, weight = result.model.config.knn_rank, float(result.model.knn_weight)
    assert result.item_knn_calibration[name(rank, weight)] == max(result.item_knn_calibration.values())
    assert result.model_config == result.model.config
    history = json.loads((path / "model" / "history.json").read_text())
    assert history["item_knn_calibration"] == pytest.approx(result.item_knn_calibration)
    loaded = load_model(path / "model", torch.device("cpu"))  # the saved config has the chosen rank
    assert loaded.config.knn_rank == rank and float(loaded.knn_weight) == weight
    emb = load_file(str(path / "embeddings.safetensors"))
    assert emb["item"].shape == (25, 16 + 3 + rank)


def test_train_serves_a_larger_item_knn_rank_when_validation_picks_it(tmp_path: Path, data: HeteroData,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The model trains at the smallest rank; when validation picks a larger one the served model is
    a copy with wider embeddings, and everything after the calibration (fraud scorer, serving
    embeddings, artifacts) must use the copy's layout (a 5,000-user shop that chose rank 256
    crashed in the fraud scorer, reading rank-64 embeddings with the rank-256 model's columns)."""
    monkeypatch.setattr(train_mod, "ITEM_KNN_RANKS", (2, 8))
    chosen: list[float] = []

    def pick_the_largest(model, knn, ranks, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(model, knn, ranks, *args, **kwargs)[1]
        forced = train_mod.with_knn_rank(model, max(ranks))
        train_mod.set_item_knn_factors(forced, knn)
        with torch.no_grad():
            forced.knn_weight.fill_(0.5)
        chosen.append(max(ranks))
        return forced, out

    original = train_mod.choose_item_knn
    monkeypatch.setattr(train_mod, "choose_item_knn", pick_the_largest)
    path = _run(tmp_path, data)
    result = train_run(path, **FAST)
    assert chosen == [8] and result.model.config.knn_rank == 8 and result.model_config.knn_rank == 8
    assert result.fraud.kind != "none"  # the fraud scorer was fitted on embeddings of the served layout
    emb = load_file(str(path / "embeddings.safetensors"))
    assert emb["item"].shape == (25, 16 + 3 + 8) and emb["user"].shape[1] == 16 + 3 + 8
    loaded = load_model(path / "model", torch.device("cpu"))
    assert loaded.config.knn_rank == 8 and float(loaded.knn_weight) == 0.5
    metrics = evaluate_run(str(path), baselines=False)
    assert 0.0 <= metrics["purchase"]["gnn"]["recall@20"] <= 1.0 and metrics["fraud"]["gnn"]["kind"] == result.fraud.kind


def test_item_knn_where_it_cannot_be_is_an_error(data: HeteroData) -> None:
    with pytest.raises(ValueError, match=r"item_knn: a rank >= 0 of the history tower's item-neighbour channel"):
        TrainConfig(conv="sage", item_knn=8)
    with pytest.raises(ValueError, match=r"item_knn: a rank >= 0"):
        TrainConfig(item_knn=-1)
    with pytest.raises(ValueError, match=r"item_knn: rank 99 above the 25 items"):
        TrainConfig(item_knn=99).model_config(data)


def test_calibrate_consider_keeps_the_setting_it_measured() -> None:
    """On a graph where validation is not saturated (an untrained model, 120 items), the kept
    setting and another one score validation, through the model's own code, as recorded."""
    data, fresh = _unsaturated()
    model = copy.deepcopy(fresh)
    g = lean_graph(message_passing_graph(data, "train"))
    calib = train_mod.calibrate_consider(model, g, data, train_mod.target_pairs(data, "train"),
                                         train_mod.target_pairs(data, "val"), torch.device("cpu"))
    kept = max(calib, key=lambda k: (calib[k], k == "off"))
    assert kept != "off" and calib[kept] > calib["off"]  # it helps here, so the model changed
    assert _val_recall_as_kept(model, data) == pytest.approx(calib[kept])
    assert _val_recall_as_kept(fresh, data) == pytest.approx(calib["off"])
    for name in (kept, train_mod.consider_setting_name(0.35, 10.0, 0.125, 32.0)):
        share, size, multiplier, weight = (float(kv.split("=")[1]) for kv in name.split())
        forced = copy.deepcopy(fresh)
        with torch.no_grad():
            forced.consider_weight.fill_(weight)
            forced.consider_share.fill_(share)
            forced.consider_size.fill_(size)
            forced.revisit_log_scale.add_(math.log(multiplier))
        assert _val_recall_as_kept(forced, data) == pytest.approx(calib[name]), name


def test_consider_where_it_cannot_be_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"consider: part of the history tower's revisit term"):
        TrainConfig(revisit=False, consider=True)
    with pytest.raises(ValueError, match=r"consider: part of the history tower's revisit term"):
        TrainConfig(conv="sage", consider=True)


def test_group_mix_where_it_cannot_be_is_an_error(data: HeteroData) -> None:
    with pytest.raises(ValueError, match=r"group_mix: an option of the history tower \(got conv='sage'\)"):
        TrainConfig(conv="sage", group_mix=True)
    bare = data.clone()
    del bare["item"].group
    with pytest.raises(ValueError, match=r"group_mix: the items have no groups"):
        train(bare, TrainConfig(**{**FAST, "group_mix": True}))  # type: ignore[arg-type]
    assert train(bare, TrainConfig(**FAST)).model.config.groups == 0  # type: ignore[arg-type]


def test_cli_train_fixes_the_item_knn_rank_and_names_a_bad_one(tmp_path: Path, data: HeteroData,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    before = sorted(p.name for p in path.rglob("*"))
    # above the catalogue (25 items): one clear line, nothing written
    assert main(["train", "--run", str(path), "--epochs", "2", "--item-knn-rank", "99"]) == 1
    assert "item_knn: rank 99 above the 25 items" in capsys.readouterr().err
    assert sorted(p.name for p in path.rglob("*")) == before
    with pytest.raises(SystemExit):
        main(["train", "--run", str(path), "--item-knn-rank", "-1"])
    assert "--item-knn-rank: expected an integer >= 0 (got '-1')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--run", str(path), "--conv", "sage", "--item-knn-rank", "x"])
    assert "expected an integer >= 0 (got 'x')" in capsys.readouterr().err
    for bad in ("0", "two"):  # a positive count: the same one line, not argparse's "invalid ... value"
        with pytest.raises(SystemExit):
            main(["train", "--run", str(path), "--epochs", bad])
        assert f"argument --epochs: expected a positive integer (got '{bad}')" in capsys.readouterr().err
    assert sorted(p.name for p in path.rglob("*")) == before
    assert main(["train", "--run", str(path), "--epochs", "2", "--item-knn-rank", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["item_knn_rank"] == 4 and out["served_vector_width"] == 256 + 3 + 4  # tower (default hidden), group mix, channel
    assert load_model(path / "model", torch.device("cpu")).config.knn_rank == 4
    saved = json.loads((path / "model" / "history.json").read_text())["item_knn_calibration"]
    assert {k.split()[0] for k in saved} == {"rank=4"}


def test_cli_train_mini_batch_of_the_history_tower(tmp_path: Path, data: HeteroData, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from shopgraph.ui.cli import main

    monkeypatch.setattr(train_mod, "WITH_SAMPLING", False)  # not needed by the history tower's batches
    path = _run(tmp_path, data)
    before = sorted(p.name for p in path.rglob("*"))
    assert main(["train", "--run", str(path), "--epochs", "2", "--full-batch", "--batch-size", "16"]) == 1
    assert "--batch-size: sets the size of mini-batches (got --batch-size 16 with --full-batch)" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--run", str(path), "--mini-batch", "--batch-size", "0"])
    assert "argument --batch-size: expected a positive integer (got '0')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--run", str(path), "--mini-batch", "--full-batch"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert sorted(p.name for p in path.rglob("*")) == before
    assert main(["train", "--run", str(path), "--epochs", "2", "--mini-batch", "--batch-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["mini_batch"] is True
    saved = json.loads((path / "model" / "train_config.json").read_text())
    assert (saved["conv"], saved["mini_batch"], saved["batch_size"], saved["aux_weight"]) == ("history", True, 16, 1.0)
    RunDir(path).verify()
    assert main(["train", "--run", str(path), "--epochs", "2"]) == 0  # a small shop: full-batch by default
    assert json.loads(capsys.readouterr().out)["mini_batch"] is False
    assert json.loads((path / "model" / "history.json").read_text())["mini_batch"] is False


def test_the_history_tower_switches_to_mini_batches_where_a_full_softmax_would_not_fit(
        data: HeteroData, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = train_mod.FULL_SOFTMAX_MAX
    assert not train_mod.uses_mini_batch(TrainConfig(), limit // 100, 100)
    assert train_mod.uses_mini_batch(TrainConfig(), limit // 100 + 1, 100)
    assert train_mod.uses_mini_batch(TrainConfig(mini_batch=True), 1, 100)
    assert not train_mod.uses_mini_batch(TrainConfig(mini_batch=False), 10 * limit, 100)
    for other in (TrainConfig(conv="sage"), TrainConfig(item_counts=True), TrainConfig(num_negatives=64)):
        assert not train_mod.uses_mini_batch(other, 10 * limit, 100)  # no user batches for these
    # this graph's 25 items x its train pairs, with the limit lowered below it: trains in batches
    monkeypatch.setattr(train_mod, "FULL_SOFTMAX_MAX", 10)
    result = train(data, TrainConfig(**{**FAST, "epochs": 2, "num_negatives": 0}))  # type: ignore[arg-type]
    assert result.mini_batch and result.config.mini_batch is None


def test_a_retrain_that_fails_half_way_leaves_the_earlier_files_stale_not_mixed(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from shopgraph.graph.run import StaleFileError
    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    assert main(["train", "--run", str(path), "--epochs", "2"]) == 0
    weights = (path / "model" / "model.safetensors").read_bytes()
    write_with = RunDir.write_with

    def full(self: RunDir, rel: str, *args: Any, **kw: Any) -> Path:
        if rel == "embeddings.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_with(self, rel, *args, **kw)

    monkeypatch.setattr(RunDir, "write_with", full)
    assert main(["train", "--run", str(path), "--epochs", "2", "--seed", "1"]) == 1
    monkeypatch.undo()
    assert (path / "model" / "model.safetensors").read_bytes() != weights  # the new weights are in
    run = RunDir(path)
    run.verify()  # every file intact, but the earlier training's outputs are not these weights'
    for rel in ("embeddings.safetensors", "fraud.json"):
        assert not run.fresh(rel)
        with pytest.raises(StaleFileError, match=rf"{rel}' was computed from an earlier 'model/model.safetensors'"
                                                 r" \(rewritten since\): rerun `shopgraph train --run"):
            run.path_of(rel)
    capsys.readouterr()
    assert main(["index", "--run", str(path)]) == 1
    assert "rerun `shopgraph train --run" in capsys.readouterr().err
    assert main(["train", "--run", str(path), "--epochs", "2", "--seed", "1"]) == 0
    assert run.fresh("embeddings.safetensors") and run.fresh("fraud.json")


def test_an_interrupted_retrain_leaves_the_run_verifiable_and_resumable(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from shopgraph.ui.cli import main
    from shopgraph.ui.demo import _run_ok

    path = _run(tmp_path, data)
    assert main(["train", "--run", str(path), "--epochs", "2"]) == 0
    # as runs trained before recorded it
    RunDir(path).write_bytes("model/train_state.pt", (path / "model" / "train_state.pt").read_bytes())
    save_state = train_mod._save_state

    def then_ctrl_c(state_path: Path, state: dict[str, Any]) -> None:
        save_state(state_path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_state", then_ctrl_c)
    assert main(["train", "--run", str(path), "--epochs", "4", "--seed", "1"]) == 130
    assert capsys.readouterr().err.strip() == "shopgraph train: interrupted"  # one line, no traceback
    monkeypatch.undo()
    assert train_mod._load_state(path / "model" / "train_state.pt")["epoch"] == 1  # a new checkpoint
    RunDir(path).verify()
    assert _run_ok(path)  # `shopgraph demo` would not rebuild the run
    assert main(["train", "--run", str(path), "--epochs", "4", "--seed", "1", "--resume"]) == 0
    RunDir(path).verify()


@pytest.mark.parametrize("device", ["gpu", ""])
def test_cli_train_refuses_an_unknown_device_in_one_line(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str], device: str) -> None:
    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    assert main(["train", "--run", str(path), "--device", device]) == 1
    err = capsys.readouterr().err
    assert "shopgraph train: error: device: expected 'cpu', 'cuda' or 'cuda:N'" in err and f"(got '{device}')" in err
    assert not (path / "model").exists()


def test_cli_train_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    state = path / "model" / "train_state.pt"
    assert main(["train", "--run", str(path), "--epochs", "2"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def full(self: Path, payload: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # the next checkpoint cannot be written
    assert main(["train", "--run", str(path), "--epochs", "4", "--resume"]) == 1
    assert "shopgraph train: error: [Errno 28] No space left on device" in capsys.readouterr().err
    # nothing half-written: every file as it was, no temp file left beside them
    assert {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    assert train_mod._load_state(state)["epoch"] == 2
    assert main(["train", "--run", str(path), "--epochs", "4", "--resume"]) == 0
    history = json.loads((path / "model" / "history.json").read_text())
    assert [int(h["epoch"]) for h in history["epochs"]] == [1, 2, 3, 4]


# -- the resume checkpoint, file modes, shops without fraud labels --------------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "no_checksum"])
def test_a_damaged_resume_checkpoint_is_refused_in_one_line(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    """Not a checkpoint, cut short, one byte flipped (which unpickles fine and resumed silently), or
    one without a checksum (a bare torch.save, as before): one line naming the file and what to do,
    and the run as it was."""
    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    assert main(["train", "--run", str(path), "--epochs", "2"]) == 0
    state = path / "model" / train_mod.STATE_FILE
    raw = state.read_bytes()
    if damage == "garbage":
        state.write_bytes(b"\x00not a checkpoint")
    elif damage == "truncated":
        state.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0x01
        state.write_bytes(bytes(flipped))
    else:
        state.write_bytes(raw.partition(b"\n")[2])  # torch.save's bytes alone
        assert torch.load(state, weights_only=False)["epoch"] == 2  # a checkpoint, but not one to trust
    capsys.readouterr()
    before = _files(path)
    assert main(["train", "--run", str(path), "--epochs", "4", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"shopgraph train: error: resume: {state} ")
    assert err.strip().endswith("train without --resume (a new training replaces it), or delete it")
    assert _files(path) == before


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(
        tmp_path: Path, data: HeteroData, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose tensors were saved on a GPU (here: tagged so while saving) loads onto the
    CPU (map_location), and the run goes on as if never interrupted; checkpoints now keep the
    optimizer state on the CPU."""
    import torch.serialization

    cfg = TrainConfig(**FAST, seed=5)  # type: ignore[arg-type]
    full = train(data, cfg, checkpoint_dir=tmp_path / "a")
    _interrupted_after_epoch_3(data, cfg, tmp_path / "b", monkeypatch)
    path = tmp_path / "b" / train_mod.STATE_FILE
    state = train_mod._load_state(path)
    assert state["optimizer"]["state"] and all(
        v.device.type == "cpu" for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, Tensor))
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        train_mod._save_state(path, state)
    if not torch.cuda.is_available():  # what a CPU-only machine made of it before
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(io.BytesIO(path.read_bytes().partition(b"\n")[2]), weights_only=False)
    resumed = train(data, cfg, checkpoint_dir=tmp_path / "b", resume=True, device="cpu")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for nt in full.embeddings:
        assert torch.equal(resumed.embeddings[nt], full.embeddings[nt])


def test_resume_refuses_fewer_epochs_than_done_and_compares_batching_as_resolved(
        tmp_path: Path, data: HeteroData, capsys: pytest.CaptureFixture[str]) -> None:
    from shopgraph.ui.cli import main

    path = _run(tmp_path, data)
    assert main(["train", "--run", str(path), "--epochs", "4"]) == 0  # no batching flag: full-batch here
    capsys.readouterr()
    before = _files(path)
    assert main(["train", "--run", str(path), "--epochs", "2", "--resume"]) == 1
    state = path / "model" / train_mod.STATE_FILE
    assert capsys.readouterr().err.strip() == (
        f"shopgraph train: error: resume: the checkpoint at {state} is after epoch 4, past the 2 epochs asked "
        "for; resume with --epochs 4 or more, or train without --resume")
    assert _files(path) == before
    # --full-batch is what no flag resolved to: the same settings, both ways round
    assert main(["train", "--run", str(path), "--epochs", "5", "--resume", "--full-batch"]) == 0
    assert main(["train", "--run", str(path), "--epochs", "6", "--resume"]) == 0
    history = json.loads((path / "model" / "history.json").read_text())
    assert [int(h["epoch"]) for h in history["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert json.loads((path / "model" / "train_config.json").read_text())["epochs"] == 6
    capsys.readouterr()
    assert main(["train", "--run", str(path), "--epochs", "7", "--resume", "--mini-batch"]) == 1
    assert "resume: the checkpoint was made with different settings ['mini_batch']" in capsys.readouterr().err
    # the held-out fraud scores are computed after the epochs: another fold count resumes, and so does a
    # checkpoint saved before the setting existed
    assert main(["train", "--run", str(path), "--epochs", "7", "--resume", "--held-out-folds", "0"]) == 0
    state_doc = train_mod._load_state(state)
    del state_doc["train_config"]["held_out_folds"]
    train_mod._save_state(state, state_doc)
    assert main(["train", "--run", str(path), "--epochs", "8", "--resume"]) == 0


def test_train_run_writes_every_file_with_the_umask_mode(tmp_path: Path, data: HeteroData) -> None:
    """model.safetensors and embeddings.safetensors too (safetensors replaces the temp file by one
    of mode 0600): a server running as another user reads the run."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        path = _run(tmp_path, data)
        train_run(path, **FAST)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(path)): stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*") if p.is_file()}
    assert "model/model.safetensors" in modes and "embeddings.safetensors" in modes
    assert {rel: mode for rel, mode in modes.items() if mode != 0o640} == {}


def test_a_shop_without_fraud_labels_writes_valid_json_serves_and_finds_rings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """No labels.csv: the fraud scorer is ``none``; fraud.json and train's summary are valid JSON
    (null, not NaN), the service reads the null threshold as NaN (nobody flagged), and rings rank
    without fraud probabilities (they used to refuse the all-NaN fraud_prob)."""
    from shopgraph.graph.synthetic import generate_shop
    from shopgraph.retrieval.service import ShopService
    from shopgraph.ui.cli import main

    def strict(text: str) -> Any:
        def refuse(name: str) -> None:
            raise ValueError(f"not JSON: {name}")

        return json.loads(text, parse_constant=refuse)

    generate_shop(tmp_path / "shop", n_users=100, seed=0)
    (tmp_path / "shop" / "labels.csv").unlink()
    run = tmp_path / "run"
    assert main(["build", "--data", str(tmp_path / "shop"), "--out", str(run), "--no-text", "--no-image",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="shopgraph.graph.train"):
        assert main(["train", "--run", str(run), "--epochs", "3"]) == 0
    summary = strict(capsys.readouterr().out)
    assert summary["fraud_scorer"] == "none"
    assert summary["wrote"] == [str(run / "model"), str(run / "embeddings.safetensors"), str(run / "fraud.json")]
    assert summary["next"] == f"shopgraph evaluate --run {run}"
    # no label: validation AUPRC cannot be measured, which the epoch lines say rather than "nan"
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert any("val recall@20 0." in line and "val auprc n/a" in line for line in epochs), epochs
    assert all("nan" not in line for line in epochs), epochs
    assert summary["fraud_threshold"] is None and summary["fraud_val_auprc"] is None
    fraud = strict((run / "fraud.json").read_text())
    assert fraud["kind"] == "none" and fraud["threshold"] is None and fraud["val_auprc"] is None
    assert main(["index", "--run", str(run)]) == 0
    service = ShopService.from_run(run, catalogue_follow=False)
    assert math.isnan(service.fraud_threshold)
    score = service.score_user(service.user_ids[0])
    assert math.isnan(score.probability) and math.isnan(score.threshold) and not score.flagged
    capsys.readouterr()
    assert main(["rings", "--run", str(run), "--export", str(tmp_path / "cases")]) == 0
    out = capsys.readouterr()
    assert "error" not in out.err and "R0001" in out.out
    assert strict((tmp_path / "cases" / "rings.json").read_text())["mode"] == "behaviour+structure"
    RunDir(run).verify()
