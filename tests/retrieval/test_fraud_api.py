"""The fraud router's contract and error paths, on a small app over a fake run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shopgraph.graph.explain import Explanation
from shopgraph.graph.rings import SCHEMA_VERSION, FraudCases, Ring, RingDetector, known_fraud, rings_run
from shopgraph.retrieval.api import _install_error_handlers
from shopgraph.retrieval.fraud_api import fraud_router
from tests.graph.test_rings import make_run


def _api() -> FastAPI:
    """An app with the API's error answers (``{"error": ..., "detail": ...}``), which the checks of
    ``tests/retrieval/conftest.py`` hold every error answer to."""
    app = FastAPI(title="ShopGraph API")
    _install_error_handlers(app)
    return app


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> FraudCases:
    run_dir = make_run(tmp_path_factory.mktemp("fraud") / "run")
    rings_run(run_dir, top=3, detector=RingDetector(hub_threshold=10))
    return FraudCases.from_run(run_dir)


@pytest.fixture(scope="module")
def client(cases: FraudCases) -> TestClient:
    app = _api()
    app.include_router(fraud_router(cases.rings, explain=cases.explain, timeline=cases.timeline, labels=cases.labels,
                                    has_user=cases.has_user, hint=cases.user_hint, threshold=cases.threshold,
                                    device_accounts=cases.device_accounts, max_top=50))
    return TestClient(app, raise_server_exceptions=False)


def test_rings_ranked_and_typed(client: TestClient, cases: FraudCases) -> None:
    r = client.get("/fraud/rings")
    assert r.status_code == 200
    body = r.json()
    assert body["schema_version"] == SCHEMA_VERSION and body["total"] == 3 and body["count"] == 3
    assert [x["ring_id"] for x in body["rings"]] == ["R0001", "R0002", "R0003"]
    assert [x["rank"] for x in body["rings"]] == [1, 2, 3]
    first = body["rings"][0]
    assert first["members"] == cases.ring("R0001").members
    assert first["evidence"]["size"] == len(first["members"])
    assert first["evidence"]["mode"] == "gnn+behaviour+structure"
    assert body["rings"][2]["members"][0] == "h0"  # the household ranks last
    r = client.get("/fraud/rings", params={"top": 2})
    assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["total"] == 3
    # each ring says how many members are known fraud, and how many of those labels were trained on
    for x in body["rings"]:
        labels = cases.labels(x["members"])
        assert (x["known_fraud"], x["known_fraud_trained_on"]) == known_fraud(labels)
        assert x["known_fraud"] == sum(1 for label, _ in labels.values() if label)
    assert any(x["known_fraud"] for x in body["rings"])


def test_rings_of_one_account(client: TestClient, cases: FraudCases) -> None:
    ring = cases.ring("R0002")
    r = client.get("/fraud/rings", params={"user_id": ring.members[0]})
    assert r.status_code == 200
    body = r.json()
    assert [(x["ring_id"], x["rank"]) for x in body["rings"]] == [(x.ring_id, int(x.ring_id[1:]))
                                                                  for x in cases.rings_of(ring.members[0])]
    assert body["total"] == body["count"] == len(cases.rings_of(ring.members[0])) >= 1
    members = {m for x in cases.rings() for m in x.members}
    loner = next(str(u) for u in cases.data["user"].ids if str(u) not in members)
    r = client.get("/fraud/rings", params={"user_id": loner})
    assert r.status_code == 200 and r.json()["rings"] == [] and r.json()["total"] == 0
    r = client.get("/fraud/rings", params={"user_id": "nobody"})
    assert r.status_code == 404 and r.json()["detail"] == "user_id: unknown user 'nobody'"
    r = client.get("/fraud/rings", params={"user_id": ring.members[0].upper()})  # typed in another case
    assert r.status_code == 404 and r.json()["detail"] == (
        f"user_id: unknown user '{ring.members[0].upper()}' (did you mean '{ring.members[0]}'? ids are "
        "case-sensitive)")
    r = client.get("/fraud/rings", params={"user_id": " "})
    assert r.status_code == 422 and "user_id: expected a non-empty value" in r.json()["detail"]


@pytest.mark.parametrize("top", ["0", "-1", "51", "many"])
def test_rings_top_out_of_range_is_422(client: TestClient, top: str) -> None:
    r = client.get("/fraud/rings", params={"top": top})
    assert r.status_code == 422


def test_ring_case_with_timeline(client: TestClient, cases: FraudCases) -> None:
    r = client.get("/fraud/ring/R0002")
    assert r.status_code == 200
    body = r.json()
    ring = cases.ring("R0002")
    assert body["ring_id"] == "R0002" and body["rank"] == 2 and body["members"] == ring.members
    assert body["schema_version"] == SCHEMA_VERSION
    assert len(body["timeline"]) == len(cases.timeline("R0002"))
    times = [e["timestamp"] for e in body["timeline"]]
    assert times == sorted(times)
    assert set(body["timeline"][0]) == {"timestamp", "time", "user_id", "event_type", "item_id", "title",
                                        "category", "amount", "device_id", "shared_device"}
    labels = cases.labels(ring.members)
    assert list(body["member_labels"]) == ring.members
    assert {u: (v["label"], v["label_in_training"]) for u, v in body["member_labels"].items()} == labels
    # each member's verdict at the validation threshold, as /fraud/score gives it (no held-out scores here)
    assert cases.threshold is not None
    assert {u: v["flagged"] for u, v in body["member_labels"].items()} == {
        u: ring.member_scores[u] >= cases.threshold for u in ring.members}
    assert {v["held_out_flagged"] for v in body["member_labels"].values()} == {None}
    # no held-out scores: each member's prediction is its score
    assert {u: v["predicted_flagged"] for u, v in body["member_labels"].items()} == {
        u: v["flagged"] for u, v in body["member_labels"].items()}


def test_a_ring_id_in_any_case_is_that_ring(client: TestClient) -> None:
    """As the demo's Ring box and FraudCases.ring take it: "r0002" is R0002 (no other id folds the same)."""
    exact, lower = client.get("/fraud/ring/R0002"), client.get("/fraud/ring/r0002")
    assert lower.status_code == 200 and lower.json() == exact.json() and lower.json()["ring_id"] == "R0002"


@pytest.mark.parametrize(("typed", "odd"), [
    ("R000２", "'２' is U+FF12 FULLWIDTH DIGIT TWO"), ("Ｒ0002", "'Ｒ' is U+FF32"), ("R0002\u200b", "U+200B"),
    ("r000２", "'２' is U+FF12"),  # another case is no difference for a ring id: the digit is named
    ("R２", "'２' is U+FF12"), ("２", "'２' is U+FF12"),  # a rank written short, with a look-alike digit
])
def test_a_ring_id_that_looks_like_one_is_refused_naming_it(client: TestClient, typed: str, odd: str) -> None:
    """As for users and devices: an id with a look-alike character is not taken for the ring (a
    full-width digit was, silently), and the error names the ring it looks like and how it differs."""
    r = client.get(f"/fraud/ring/{typed}")
    assert r.status_code == 404 and r.json()["error"] == "unknown_ring" and r.json()["ids"] == [typed]
    assert "did you mean 'R0002'?" in r.json()["detail"] and odd in r.json()["detail"], r.json()


def test_a_mistyped_fraud_path_names_the_fraud_route_it_is_close_to(client: TestClient) -> None:
    """The fraud routes come in through an included router, which FastAPI keeps behind one entry of
    the app's routes: they are named all the same (they were left out, /fraud/case/ pointed at
    /fraud/score), and a wrong method on them says which are allowed."""
    for path, named in (("/fraud/rings/R0001", "/fraud/ring/R0001"), ("/fraud/case/", "/fraud/case/{ring_id}"),
                        ("/fraud/devices/d1", "/fraud/device/d1"), ("/fraud/ring", "/fraud/rings")):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "no_route", (path, r.json())
        assert f"did you mean {named}?" in r.json()["detail"], (path, r.json())
    r = client.post("/fraud/rings")
    assert r.status_code == 405 and r.json()["detail"].endswith("(allowed: GET)") and r.headers["allow"] == "GET"


def test_unknown_ring_is_404_naming_it(client: TestClient) -> None:
    r = client.get("/fraud/ring/R9999")
    assert r.status_code == 404 and r.json()["error"] == "unknown_ring"
    assert r.json()["detail"] == "ring_id: unknown ring 'R9999' (3 rings known; ring ids look like R0001)"
    r = _app().get("/fraud/ring/R0002")
    assert r.status_code == 404 and r.json()["detail"] == "ring_id: unknown ring 'R0002' (1 ring known; ring ids " \
                                                           "look like R0001)"


def test_explain_user(client: TestClient, cases: FraudCases) -> None:
    r = client.get("/fraud/explain", params={"user_id": "ra2"})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "ra2" and body["method"] == "behaviour_zscore"  # the fake run has no model
    assert 0 < body["score"] < 1 and len(body["features"]) == 5
    assert {n["node_id"] for n in body["neighbours"]} <= {"dA1", "dA2"}
    assert (body["label"], body["label_in_training"]) == cases.labels(["ra2"])["ra2"]
    # each feature by its column and in the words /fraud/score uses; each device with the accounts on it
    from shopgraph.graph.wording import reason_in_words

    assert all(f["reason"] == reason_in_words(f["name"]).text for f in body["features"])
    (da1,) = [n for n in body["neighbours"] if n["node_id"] == "dA1"]
    assert da1["others"] == ["ra0", "ra1", "ra3", "ra4"] and da1["attribution"] == 4
    assert body["neighbours_total"] == len(body["neighbours"])
    assert body["base_value"] is None and body["unlisted_attribution"] is None  # z-scores: nothing adds up
    r = _app(explain=cases.explain).get("/fraud/explain", params={"user_id": "ra2"})
    assert r.status_code == 200 and r.json()["label"] is None and r.json()["label_in_training"] is None


def test_explain_errors(client: TestClient, cases: FraudCases) -> None:
    r = client.get("/fraud/explain", params={"user_id": "nobody"})
    assert r.status_code == 404 and r.json()["detail"] == "user_id: unknown user 'nobody'"
    user = str(cases.data["user"].ids[0])
    r = client.get("/fraud/explain", params={"user_id": user.upper()})
    assert r.status_code == 404 and r.json()["detail"].endswith(f"(did you mean '{user}'? ids are case-sensitive)")
    assert client.get("/fraud/explain").status_code == 422
    r = client.get("/fraud/explain", params={"user_id": ""})
    assert r.status_code == 422 and r.json()["detail"] == "user_id: expected a non-empty value (got '')"
    r = client.get("/fraud/explain", params={"user_id": "ra2", "top": "3"})
    assert r.status_code == 422 and r.json()["detail"] == "top: unknown parameter (expected user_id)"


@pytest.mark.parametrize("query, message", [
    ("top=5.0", "top: expected an integer between 1 and 50 (got '5.0')"),
    ("top=2&top=3", "top: given more than once (expected one value)"),
    ("n=2", "n: unknown parameter (expected top, user_id)"),
    ("user_id=a&user_id=b", "user_id: given more than once (expected one value)"),
])
def test_rings_query_is_strict(client: TestClient, query: str, message: str) -> None:
    r = client.get("/fraud/rings?" + query)
    assert r.status_code == 422 and r.json()["detail"] == message


def test_fraud_openapi_lists_the_errors_as_they_are(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, codes in (("/fraud/rings", {"422"}), ("/fraud/ring/{ring_id}", {"404", "422"}),
                        ("/fraud/explain", {"404", "422", "503"}), ("/fraud/case/{ring_id}", {"404", "422", "503"})):
        responses = spec["paths"][path]["get"]["responses"]
        assert codes <= set(responses)
        for code in codes:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, code)


def _app(**kwargs: object) -> TestClient:
    app = _api()
    rings = [Ring("R0001", ["a", "b", "c"], 0.7, ["d1"], {"a": 0.9, "b": 0.5, "c": 0.1},
                  {"size": 3, "median_account_age_days": float("nan"), "unexpected": object()})]
    app.include_router(fraud_router(lambda: rings, **kwargs))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def test_missing_capabilities_and_odd_evidence_never_500() -> None:
    client = _app()
    r = client.get("/fraud/rings")
    assert r.status_code == 200
    ev = r.json()["rings"][0]["evidence"]
    assert ev["size"] == 3 and ev["median_account_age_days"] is None and "unexpected" not in ev
    assert r.json()["rings"][0]["known_fraud"] is None  # no labels given
    r = client.get("/fraud/ring/R0001")
    assert r.status_code == 200 and r.json()["timeline"] is None and r.json()["member_labels"] is None
    r = client.get("/fraud/explain", params={"user_id": "a"})
    assert r.status_code == 503 and "not available" in r.json()["detail"]


def test_explain_value_error_is_422() -> None:
    def bad(user_id: str) -> Explanation:
        raise ValueError(f"user_id: features missing for {user_id!r}")

    r = _app(explain=bad).get("/fraud/explain", params={"user_id": "a"})
    assert r.status_code == 422 and "features missing for 'a'" in r.json()["detail"]


def test_router_rejects_bad_max_top() -> None:
    with pytest.raises(ValueError, match=r"max_top: expected a positive integer \(got 0\)"):
        fraud_router(lambda: [], max_top=0)


def test_cases_from_run_without_stored_rings(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", with_prob=False)
    cases = FraudCases.from_run(run_dir, detector=RingDetector(hub_threshold=10))
    assert cases.model is None and cases.fraud_prob is None
    assert [r.ring_id for r in cases.rings()] == ["R0001", "R0002", "R0003"]
    with pytest.raises(KeyError, match="unknown ring_id 'R0042'"):
        cases.ring("R0042")
    assert cases.explain("h1").score is None


def test_a_ring_whose_members_have_no_labels_keeps_its_case(caplog: pytest.LogCaptureFixture) -> None:
    def labels(users: object) -> dict[str, tuple[bool | None, bool]]:
        raise KeyError("unknown user_id 'a'")

    r = _app(labels=labels).get("/fraud/ring/R0001")
    assert r.status_code == 200 and r.json()["member_labels"] is None and r.json()["members"] == ["a", "b", "c"]
    assert "member labels left out" in caplog.text


def test_ring_cases_and_explanations_give_the_trained_on_members_held_out_scores(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", held_out=True)
    rings_run(run_dir, top=3, detector=RingDetector(hub_threshold=10))
    cases = FraudCases.from_run(run_dir)
    looked_up: list[list[str]] = []

    def held_out(ids: Sequence[str]) -> dict[str, float | None]:
        looked_up.append(list(ids))
        return cases.held_out(ids)

    app = _api()
    app.include_router(fraud_router(cases.rings, explain=cases.explain, labels=cases.labels, held_out=held_out,
                                    threshold=cases.threshold))
    client = TestClient(app, raise_server_exceptions=False)
    client.get(f"/fraud/ring/{cases.rings()[0].ring_id}")
    assert len(looked_up) == 1  # a ring's case looks its members' held-out scores up once
    seen = 0
    listed = {r["ring_id"]: r for r in client.get("/fraud/rings", params={"top": 100}).json()["rings"]}
    for ring in cases.rings():
        body = client.get(f"/fraud/ring/{ring.ring_id}").json()
        held = cases.held_out(ring.members)
        assert {u: m["held_out_probability"] for u, m in body["member_labels"].items()} == pytest.approx(held)
        # flagged: the members' predictions (a trained-on one's held-out score) at or above the threshold
        assert body["flagged"] == listed[ring.ring_id]["flagged"] == cases.flagged(ring) is not None
        # ... each member's verdict named: the ones the count counts, listed in the list's answer too
        assert body["flagged"] == sum(m["predicted_flagged"] for m in body["member_labels"].values())
        prediction = {u: held[u] if held[u] is not None else ring.member_scores[u] for u in ring.members}
        assert body["flagged_members"] == listed[ring.ring_id]["flagged_members"] == sorted(
            (u for u in ring.members if body["member_labels"][u]["predicted_flagged"]), key=lambda u: -prediction[u])
        assert {u: m["predicted_flagged"] for u, m in body["member_labels"].items()} == {
            u: (held[u] if held[u] is not None else ring.member_scores[u]) >= cases.threshold for u in ring.members}
        assert body["evidence"]["predicted_mean"] == pytest.approx(ring.evidence["predicted_mean"])
        seen += sum(h is not None for h in held.values())
        for user in ring.members[:2]:
            ex = client.get("/fraud/explain", params={"user_id": user}).json()
            assert ex["held_out_probability"] == pytest.approx(held[user])
    assert seen
    # a router without held-out scores gives null
    app = _api()
    app.include_router(fraud_router(cases.rings, labels=cases.labels))
    body = TestClient(app).get(f"/fraud/ring/{cases.rings()[0].ring_id}").json()
    assert {m["held_out_probability"] for m in body["member_labels"].values()} == {None}
    assert body["flagged"] is None and body["flagged_members"] is None  # no threshold given


def test_a_user_id_with_surrounding_spaces_names_the_stored_account(client: TestClient, cases: FraudCases) -> None:
    member = cases.ring("R0002").members[0]
    plain = client.get("/fraud/rings", params={"user_id": member}).json()
    assert client.get("/fraud/rings", params={"user_id": f" {member} "}).json() == plain
    r = client.get("/fraud/explain", params={"user_id": f"{member} "})
    assert r.status_code == 200 and r.json()["user_id"] == member
    r = client.get("/fraud/explain", params={"user_id": " nobody "})
    assert r.status_code == 404 and r.json()["detail"] == "user_id: unknown user ' nobody '"
    r = client.get("/fraud/rings", params={"user_id": " nobody "})
    assert r.status_code == 404 and r.json()["detail"] == "user_id: unknown user ' nobody '"
    r = client.get("/fraud/ring/%20r0002%20")  # ring ids too, in any case
    assert r.status_code == 200 and r.json()["ring_id"] == "R0002"
    assert cases.ring(" R0002 ").ring_id == "R0002"


def test_explain_names_the_accounts_an_account_outside_any_ring_is_tied_to(client: TestClient) -> None:
    """u000 shares the shop's Wi-Fi kiosk with 11 accounts; the kiosk is a hub, left out of the rings,
    so /fraud/rings has nothing for u000: /fraud/explain names them (the first 10, the count whole)."""
    assert client.get("/fraud/rings", params={"user_id": "u000"}).json()["total"] == 0
    body = client.get("/fraud/explain", params={"user_id": "u000"}).json()
    (wifi,) = [n for n in body["neighbours"] if n["node_id"] == "d_wifi"]
    assert wifi["attribution"] == 11 and wifi["others"] == [f"u{k:03d}" for k in range(1, 11)]
    assert body["neighbours_total"] == 2


def test_explain_says_when_its_device_list_is_cut() -> None:
    from shopgraph.graph.explain import NeighbourAttribution

    devices = [NeighbourAttribution("device", f"d{k}", 6.0 - k, ("u1",)) for k in range(5)]
    client = _app(explain=lambda u: Explanation(u, 0.5, "behaviour_zscore", [], devices, neighbours_total=6))
    body = client.get("/fraud/explain", params={"user_id": "x"}).json()
    assert len(body["neighbours"]) == 5 and body["neighbours_total"] == 6
    assert body["neighbours"][0]["others"] == ["u1"]


def test_served_tree_explanation_adds_up_over_http(tmp_path: Path) -> None:
    """With the served trees, base_value + the listed contributions + unlisted_attribution is the
    log-odds of the served score: a client can check what /fraud/explain says it explains."""
    import math

    from tests.graph.test_explain import _run_serving_trees

    run, data, prob = _run_serving_trees(tmp_path)
    cases = FraudCases.from_run(run.path)
    assert cases.served is not None
    app = _api()
    app.include_router(fraud_router(cases.rings, explain=cases.explain))
    client = TestClient(app, raise_server_exceptions=False)
    for user in ("ra1", "u000", "h0"):
        body = client.get("/fraud/explain", params={"user_id": user}).json()
        assert body["method"] == "tree_shap+shared_identifiers" and body["base_value"] is not None
        total = body["base_value"] + sum(f["attribution"] for f in body["features"]) + body["unlisted_attribution"]
        assert total == pytest.approx(math.log(body["score"] / (1 - body["score"])), abs=1e-5)
        assert body["score"] == pytest.approx(float(prob[list(data["user"].ids).index(user)]), abs=1e-5)


def test_a_device_lists_every_account_on_it(client: TestClient, cases: FraudCases) -> None:
    """An explanation names the first ten accounts on a shared device: /fraud/device/{id} lists them
    all, the first to use it first, each with its activity there, label, score and verdicts."""
    ev = cases.tables.events
    counts = ev[ev["device_id"] != ""].groupby("device_id")["user_id"].nunique().sort_values(ascending=False)
    device = str(counts.index[0])
    r = client.get(f"/fraud/device/{device}")
    assert r.status_code == 200, r.text
    body = r.json()
    users = ev[ev["device_id"] == device]
    assert body["device_id"] == device and body["count"] == counts.iloc[0] == len(body["accounts"])
    assert {a["user_id"] for a in body["accounts"]} == set(users["user_id"])
    firsts = [a["first_seen"] for a in body["accounts"]]
    assert firsts == sorted(firsts)
    for a in body["accounts"]:
        mine = users[users["user_id"] == a["user_id"]]
        assert a["events"] == len(mine) and a["first_seen"] == int(mine["timestamp"].min())
        # the same times in UTC, as a ring's timeline writes them
        for key in ("first_seen", "last_seen"):
            assert a[f"{key}_time"] == pd.Timestamp(a[key], unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        assert a["purchases"] == int((mine["event_type"] == "purchase").sum())
        assert (a["label"], a["label_in_training"]) == cases.labels([a["user_id"]])[a["user_id"]]
        assert a["flagged"] == (a["probability"] >= cases.threshold)
        # the verdict on its prediction, as a ring's members have it
        trained = a["label_in_training"] and a["held_out_probability"] is not None
        assert a["probability_is"] == ("fitted to its label" if a["label_in_training"] else "prediction")
        assert a["predicted_flagged"] == (a["held_out_flagged"] if trained else a["flagged"])
    assert client.get(f"/fraud/device/%20{device}%20").json()["count"] == body["count"]  # spaces aside
    r = client.get("/fraud/device/nope")
    assert r.status_code == 404 and r.json() == {"error": "unknown_device", "detail": "device_id: unknown device 'nope'",
                                                 "ids": ["nope"]}
    r = client.get(f"/fraud/device/{device.upper()}")  # ids are case-sensitive: the known one is named
    assert r.status_code == 404 and f"did you mean '{device}'" in r.json()["detail"]
    assert client.get(f"/fraud/device/{device}", params={"x": "1"}).status_code == 422


def test_device_lookups_without_tables_are_a_503() -> None:
    app = _api()
    app.include_router(fraud_router(lambda: []))
    r = TestClient(app).get("/fraud/device/d1")
    assert r.status_code == 503 and "device lookups are not available" in r.json()["detail"]


def test_a_trained_on_accounts_explanation_carries_the_held_out_one() -> None:
    """The verdict that makes a trained-on account a lead is its held-out one: /fraud/explain gives
    its explanation (the fold's trees) beside the served score's, with both verdicts."""
    from shopgraph.graph.explain import Explanation, FeatureAttribution

    served = Explanation("u1", 0.1, "tree_shap+shared_identifiers", [FeatureAttribution("night_share", -1.0, -0.8)],
                         [], base=-1.4, unlisted=0.0)
    held = Explanation("u1", 0.45, "tree_shap+shared_identifiers", [FeatureAttribution("night_share", 1.2, 0.9)],
                       [], base=-1.4, unlisted=0.3)
    app = _api()
    app.include_router(fraud_router(lambda: [], explain=lambda u: served, labels=lambda ids: {u: (False, True) for u in ids},
                                    held_out=lambda ids: {u: 0.45 for u in ids}, explain_held_out=lambda u: held,
                                    threshold=0.3, value_words=lambda u: lambda name, value: {"night_share": "share of nights: 25%"}.get(name)))
    body = TestClient(app).get("/fraud/explain", params={"user_id": "u1"}).json()
    # the account's own values as /fraud/score's reasons read them, not in standard deviations
    assert body["features"][0]["value_in_words"] == body["held_out"]["features"][0]["value_in_words"] == (
        "share of nights: 25%")
    assert body["threshold"] == 0.3 and body["flagged"] is False and body["held_out_flagged"] is True
    assert body["held_out"]["score"] == 0.45 and body["held_out"]["base_value"] == -1.4
    assert body["held_out"]["features"][0]["attribution"] == 0.9 and body["held_out"]["unlisted_attribution"] == 0.3
    app = _api()
    app.include_router(fraud_router(lambda: [], explain=lambda u: served))  # no held-out score: no block
    body = TestClient(app).get("/fraud/explain", params={"user_id": "u1"}).json()
    assert body["held_out"] is None and body["threshold"] is None and body["flagged"] is None


def test_a_rings_case_file_over_http_is_the_exported_one(tmp_path: Path) -> None:
    """GET /fraud/case/{ring_id}: the case document `shopgraph rings --export` writes, for a case
    management tool that cannot read the server's disk, with the same `source` (the run and its files'
    checksums), so that a case saved from the API can be traced."""
    import json

    run_dir = make_run(tmp_path / "run", held_out=True)
    rings_run(run_dir, top=2, export=tmp_path / "cases", detector=RingDetector(hub_threshold=10))
    cases = FraudCases.from_run(run_dir)
    app = _api()
    app.include_router(fraud_router(cases.rings, case=cases.case))
    client = TestClient(app, raise_server_exceptions=False)
    for ring in cases.rings()[:2]:
        r = client.get(f"/fraud/case/{ring.ring_id.lower()}")  # in any case, as /fraud/ring takes it
        assert r.status_code == 200
        file = tmp_path / "cases" / "cases" / f"{ring.ring_id}.json"
        exported = json.loads(file.read_text())
        # the same document, its source too: the run and the checksums of the files it is made from
        assert exported["source"]["made_from"]["rings/rings.json"] and r.json() == exported
        assert r.content == file.read_bytes()  # byte for byte: a case saved from the API is the exported file
        assert r.headers["content-type"] == "application/json"
    r = client.get("/fraud/case/R9999")
    assert r.status_code == 404 and r.json()["detail"] == (
        f"ring_id: unknown ring 'R9999' ({len(cases.rings())} rings known; ring ids look like R0001)")
    assert client.get("/fraud/case/R0001", params={"x": "1"}).status_code == 422
    app = _api()
    app.include_router(fraud_router(cases.rings))  # no case files on this server
    r = TestClient(app).get("/fraud/case/R0001")
    assert r.status_code == 503 and "case files are not available" in r.json()["detail"]
