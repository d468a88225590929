"""featurize: features on a copy of the graph, in graph order, cached, with an honest report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from shopgraph.encoders.featurize import featurize
from shopgraph.graph.build import build_graph
from shopgraph.graph.schema import ShopTables
from tests.conftest import make_tables
from tests.encoders.test_image import circles, make_tiny_vit, stripes
from tests.encoders.test_text import make_tiny_bert


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return make_tiny_bert(root / "bert"), make_tiny_vit(root / "vit")


def shop(root: Path) -> ShopTables:
    """30 items: text on all but two, images of several kinds (good, grayscale, broken, missing, none)."""
    tables = make_tables(root=root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for k in range(4):
        stripes(k).save(root / "img" / f"s{k}.jpg")
        circles(k).save(root / "img" / f"c{k}.png")
    circles(9).convert("L").save(root / "img" / "gray.png")
    (root / "img" / "broken.jpg").write_text("not an image")
    cycle = [f"img/s{k}.jpg" for k in range(4)] + [f"img/c{k}.png" for k in range(4)] + [
        "img/gray.png", "img/broken.jpg", "img/missing.jpg", "",
    ]
    tables.items["image"] = [cycle[k % len(cycle)] for k in range(len(tables.items))]
    tables.items["title"] = [f"red shoes {k}" if k % 2 else f"laptop charger {k}" for k in range(len(tables.items))]
    tables.items.loc[[3, 17], ["title", "category", "description"]] = ""
    return tables


def _featurize(data, tables, models, cache, **kwargs):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return featurize(data, tables, text_model=models[0], image_model=models[1], cache_dir=cache,
                         device="cpu", progress=False, **kwargs)


def _graph(tables: ShopTables):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_graph(tables)


def test_features_names_flags_and_report(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    res = _featurize(data, tables, models, tmp_path / "cache")
    out, report = res.data, res.report
    n_items = len(tables.items)
    item = out["item"]
    assert item.x.dtype == torch.float32 and item.x.shape[0] == n_items
    assert len(item.feature_names) == item.x.shape[1] == report["dims"]["item"]
    assert item.feature_names[:2] == ["text_0", "text_1"] and "has_text" in item.feature_names
    g = report["groups"]["item"]
    assert g["text"] == [0, 16] and g["has_text"] == [16, 17] and g["image"] == [17, 33] and g["has_image"] == [33, 34]
    # missing text: zero block and flag 0; present text: the normalised embedding
    has_text = item.x[:, 16].bool()
    assert has_text.tolist() == [k not in (3, 17) for k in range(n_items)]
    assert torch.all(item.x[~has_text, :16] == 0)
    torch.testing.assert_close(item.x[:, :16], item.text_emb)
    assert torch.allclose(item.text_emb[has_text].norm(dim=1), torch.ones(int(has_text.sum())), atol=1e-5)
    assert item.has_text.tolist() == has_text.tolist()
    # images: every 12 items: 8 good + gray encoded; broken, missing and none are absent
    has_image = item.x[:, 33].bool()
    assert has_image.tolist() == [k % 12 < 9 for k in range(n_items)]
    assert torch.all(item.image_emb[~has_image] == 0)
    torch.testing.assert_close(item.x[:, 17:33], item.image_emb)
    img = report["image"]
    n_kind = [sum(1 for k in range(n_items) if k % 12 == j) for j in range(12)]
    assert img["problems"] == {
        "converted_grayscale": n_kind[8], "not_an_image": n_kind[9], "missing": n_kind[10], "no_image": n_kind[11],
    }
    assert img["first_problem"]["missing"].endswith("img/missing.jpg")
    assert img["with_image"] == int(has_image.sum())
    assert report["text"]["missing"] == 2
    # behaviour blocks and names
    assert out["item"].feature_names[34:] == report["behaviour_names"]["item"]
    for nt in ("user", "device"):
        assert out[nt].x.shape == (int(data[nt].num_nodes), len(out[nt].feature_names))
        assert out[nt].x.dtype == torch.float32
    json.dumps(report)  # JSON-serialisable
    assert set(report["seconds"]) == {"behaviour", "text", "image"}


def test_input_graph_is_not_modified(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    before = {nt: set(data[nt].keys()) for nt in data.node_types}
    _featurize(data, tables, models, tmp_path / "cache")
    assert {nt: set(data[nt].keys()) for nt in data.node_types} == before
    assert "x" not in data["item"]


def test_second_build_is_all_cache_hits_and_identical(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    first = _featurize(data, tables, models, tmp_path / "cache")
    second = _featurize(data, tables, models, tmp_path / "cache")
    assert first.report["text"]["cache_misses"] == 28 and second.report["text"]["cache_misses"] == 0
    assert second.report["text"]["cache_hits"] == 28
    n_files = first.report["image"]["cache_misses"]
    broken = first.report["image"]["problems"]["not_an_image"]
    assert second.report["image"]["cache_misses"] == broken  # bad files are retried, good ones cached
    assert second.report["image"]["cache_hits"] == n_files - broken
    for nt in ("user", "item", "device"):
        torch.testing.assert_close(first.data[nt].x, second.data[nt].x, atol=1e-6, rtol=0)
    # one changed title re-encodes only that text
    tables.items.loc[5, "title"] = "blue cotton shirt"
    third = _featurize(data, tables, models, tmp_path / "cache")
    assert (third.report["text"]["cache_hits"], third.report["text"]["cache_misses"]) == (27, 1)
    changed = [k for k in range(len(tables.items)) if not torch.equal(third.data["item"].text_emb[k], first.data["item"].text_emb[k])]
    assert changed == [5]


def test_rows_follow_graph_ids(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    a = _featurize(data, tables, models, tmp_path / "cache")
    permuted = ShopTables(users=tables.users, items=tables.items.iloc[::-1].reset_index(drop=True),
                          devices=tables.devices, events=tables.events, labels=tables.labels, root=tables.root)
    b = _featurize(data, permuted, models, tmp_path / "cache")
    torch.testing.assert_close(a.data["item"].x, b.data["item"].x, atol=1e-6, rtol=0)


def test_text_and_image_can_be_switched_off(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    res = _featurize(data, tables, models, tmp_path / "cache", use_text=False, use_image=False)
    item = res.data["item"]
    assert item.feature_names == res.report["behaviour_names"]["item"]
    assert "text_emb" not in item and "image_emb" not in item
    assert "text" not in res.report and "image" not in res.report
    res = _featurize(data, tables, models, tmp_path / "cache", use_image=False)
    assert res.data["item"].x.shape[1] == 17 + len(res.report["behaviour_names"]["item"])


def test_items_missing_from_tables(models: tuple[Path, Path], tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    fewer = ShopTables(users=tables.users, items=tables.items.iloc[2:].reset_index(drop=True), devices=tables.devices,
                       events=tables.events, labels=tables.labels, root=tables.root)
    with pytest.raises(ValueError, match=r"tables.items: 2 of 30 graph items are not in the table \(first: 'i000'\)"):
        _featurize(data, fewer, models, tmp_path / "cache")


@pytest.mark.slow
def test_real_models_end_to_end(tmp_path: Path) -> None:
    tables = shop(tmp_path / "shop")
    data = _graph(tables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = featurize(data, tables, cache_dir=tmp_path / "cache", progress=False)
    item = res.data["item"]
    assert item.text_emb.shape == (30, 384) and item.image_emb.shape == (30, 1280)
    assert res.report["text"]["model"].startswith("all-MiniLM-L6-v2@")
    assert res.report["image"]["model"].startswith("efficientnet-lite0@")
    # items with the same title pattern are closer in text space than across patterns
    t = item.text_emb
    assert float(t[1] @ t[5]) > float(t[1] @ t[2])
