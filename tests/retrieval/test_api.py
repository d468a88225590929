from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shopgraph.retrieval.api import Metrics, create_app
from shopgraph.retrieval.params import ERROR_CODES
from shopgraph.retrieval.service import UnknownIdError
from tests.retrieval.test_service import load_service, shared_run, solid_png, with_held_out


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = load_service(shared_run(tmp_path_factory.getbasetemp()))
    app = create_app(service, demo=False, fraud_cases=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


def test_fraud_scores_give_a_trained_on_accounts_held_out_score(tmp_path_factory, tmp_path):
    service = load_service(shared_run(tmp_path_factory.getbasetemp()))
    train = [s.label_in_training for s in service.score_users(service.user_ids, reasons=False)]
    held = np.where(train, 0.25, np.nan)
    run = with_held_out(shared_run(tmp_path_factory.getbasetemp()), tmp_path / "run", held)
    with TestClient(create_app(load_service(run), demo=False, fraud_cases=False)) as c:
        trained, other = service.user_ids[train.index(True)], service.user_ids[train.index(False)]
        body = c.get("/fraud/score", params={"user_id": trained}).json()
        assert body["held_out_probability"] == 0.25 and body["probability_is"] == "fitted to its label"
        assert body["held_out_flagged"] is (0.25 >= body["threshold"])  # as `shopgraph score` writes it
        # this run stores no held-out trees: the reasons for the held-out verdict say so
        assert len(body["held_out_reasons"]) == 1 and body["held_out_reasons"][0].startswith(
            "no attribution of the held-out score is available here: the run's held-out trees are missing")
        body = c.get("/fraud/score", params={"user_id": other}).json()
        assert body["held_out_probability"] is None and body["held_out_reasons"] == []
        assert body["held_out_flagged"] is None and body["probability_is"] == "prediction"
        body = c.post("/fraud/score/batch", json={"user_ids": [other, trained], "reasons": False}).json()
        assert [s["held_out_probability"] for s in body["scores"]] == [None, 0.25]
        assert [s["probability_is"] for s in body["scores"]] == ["prediction", "fitted to its label"]


def test_ids_with_surrounding_spaces_are_the_stored_ones(client):
    r = client.get("/fraud/score", params={"user_id": " u002 "})
    assert r.status_code == 200 and r.json()["user_id"] == "u002"
    r = client.get("/recommend", params={"user_id": "u002 ", "k": 3})
    assert r.status_code == 200 and r.json()["items"] == client.get("/recommend", params={"user_id": "u002", "k": 3}).json()["items"]
    r = client.post("/fraud/score/batch", json={"user_ids": [" u002", "u017 "], "reasons": False})
    assert r.status_code == 200 and [s["user_id"] for s in r.json()["scores"]] == ["u002", "u017"]
    r = client.get("/fraud/score", params={"user_id": " nobody"})
    assert r.status_code == 404 and r.json()["detail"] == "user_id: unknown user ' nobody'"


def test_recommend_contract(client):
    r = client.get("/recommend", params={"user_id": "u001", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "u001" and body["k"] == 5 and len(body["items"]) == 5
    rec = client.service.recommend("u001", 5)
    assert [i["item_id"] for i in body["items"]] == rec.item_ids
    assert [i["score"] for i in body["items"]] == pytest.approx(rec.scores)
    assert set(body["items"][0]) == {"item_id", "title", "score", "reason"}
    r = client.get("/recommend", params={"user_id": "u001", "k": 3, "category": "books", "exclude_seen": "false"})
    assert r.status_code == 200
    assert all(client.service.categories[client.service.item_ids.index(i["item_id"])] == "books"
               for i in r.json()["items"])


def test_recommend_leaves_out_the_items_given_as_exclude(client):
    whole = client.service.recommend("u001", 6)
    r = client.get("/recommend", params=[("user_id", "u001"), ("k", "4"), ("exclude", whole.item_ids[0]),
                                         ("exclude", whole.item_ids[2])])
    assert r.status_code == 200, r.text
    assert [i["item_id"] for i in r.json()["items"]] == client.service.recommend(
        "u001", 4, exclude=[whole.item_ids[0], whole.item_ids[2]]).item_ids
    assert not {whole.item_ids[0], whole.item_ids[2]} & {i["item_id"] for i in r.json()["items"]}
    assert r.json()["exclude_not_served"] == []
    r = client.get("/recommend", params=[("user_id", "u001"), ("k", "4"), ("exclude", whole.item_ids[0]),
                                         ("exclude", "ghost"), ("exclude", " ghost ")])  # not served: nothing left out
    assert r.status_code == 200 and [i["item_id"] for i in r.json()["items"]] == whole.item_ids[1:5]
    assert r.json()["exclude_not_served"] == ["ghost"]  # ... and is said, once (spaces aside): a mistake is seen
    upper = whole.item_ids[0].upper()  # an id in another case leaves nothing out either
    r = client.get("/recommend", params=[("user_id", "u001"), ("k", "4"), ("exclude", upper), ("exclude", upper)])
    assert r.json()["exclude_not_served"] == [upper] and r.json()["items"][0]["item_id"] == whole.item_ids[0]
    r = client.get("/recommend", params=[("user_id", "u001"), ("exclude", "")])
    assert r.status_code == 422 and r.json()["detail"] == "exclude: expected a non-empty value (got '')"
    r = client.get("/recommend", params=[("user_id", "u001"), ("k", "3"), ("k", "4")])
    assert r.status_code == 422 and r.json()["detail"] == "k: given more than once (expected one value)"


def test_recommend_batch_takes_the_carts_its_limits_allow(client):
    """The batch allows 1,000 cart items a user and 100,000 in all: 100 users' carts of the demo's
    short ids are 1.1 MB of JSON, and were a 413 at the 1 MB limit of a list of ids (here the test
    run's 40 users, with ids long enough for 1.4 MB)."""
    users = client.service.user_ids
    carts = {u: [f"sku-{k:06d}-{'x' * 20}" for k in range(1000)] for u in users}
    r = client.post("/recommend/batch", json={"user_ids": users, "k": 1, "exclude": carts})
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["results"]) == len(users) and len(r.json()["results"][0]["exclude_not_served"]) == 1000


def test_recommend_batch_leaves_out_each_users_cart(client):
    cart = client.service.recommend("u001", 3).item_ids[:2]
    r = client.post("/recommend/batch", json={"user_ids": ["u001", "u002"], "k": 4, "exclude": {"u001": cart}})
    assert r.status_code == 200, r.text
    got = [[i["item_id"] for i in res["items"]] for res in r.json()["results"]]
    assert got == [client.service.recommend("u001", 4, exclude=cart).item_ids, client.service.recommend("u002", 4).item_ids]
    assert not set(cart) & set(got[0])
    assert [res["exclude_not_served"] for res in r.json()["results"]] == [[], []]
    r = client.post("/recommend/batch", json={"user_ids": ["u001", "u002"], "k": 4,
                                              "exclude": {"u001": cart, "u002": ["nope", cart[0]]}})
    assert [res["exclude_not_served"] for res in r.json()["results"]] == [[], ["nope"]]
    # ids and keys with stray spaces name the same users, as the service matches them
    r = client.post("/recommend/batch", json={"user_ids": [" u001", "u002"], "k": 4,
                                              "exclude": {"u001": cart, "u002 ": ["nope", cart[0]]}})
    assert [res["exclude_not_served"] for res in r.json()["results"]] == [[], ["nope"]]
    r = client.post("/recommend/batch", json={"user_ids": ["u001", "ghost"], "k": 4, "skip_unknown": True,
                                              "exclude": {"u001": cart, "ghost ": ["i001"]}})
    assert r.status_code == 200 and r.json()["unknown"] == ["ghost"], r.text
    for exclude, detail in (
            ({"u003": cart}, "exclude: 'u003' is not among user_ids (a user's items are left out only of that "
                             "user's answer)"),
            (cart, "exclude: expected a mapping from user id to a list of item ids, like {\"u001\": [\"i042\"]} "
                   "(got list)"),
            ({"u001": [1]}, "exclude.u001[0]: expected a string id (got int 1)"),
            ({"u001": ["i001", 2]}, "exclude.u001[1]: expected a string id (got int 2)")):
        r = client.post("/recommend/batch", json={"user_ids": ["u001", "u002"], "exclude": exclude})
        assert r.status_code == 422 and r.json()["detail"] == detail, r.text
    for body, detail in (  # a key given twice is named with where it is
            (b'{"user_ids": ["u001"], "exclude": {"u001": [], "u001": []}}',
             "exclude.u001: given more than once (expected one value)"),
            (b'{"user_ids": ["u 1"], "exclude": {"u 1": [], "u 1": []}}',  # not a plain name: quoted, as the service names its ids
             "exclude['u 1']: given more than once (expected one value)"),
            (b'{"user_ids": ["u001"], "user_ids": ["u002"]}', "user_ids: given more than once (expected one value)"),
            (b'[{"user_ids": ["u001"], "user_ids": ["u002"]}]', "body: expected a JSON object like "),
            (b'{"user_ids": ["u001"], "exclude": {"u001": ["i001"]}, "k": 2, "k": 3}',
             "k: given more than once (expected one value)")):
        r = client.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text


def test_similar_search_fraud_health(client):
    r = client.get("/similar", params={"item_id": "i003", "k": 4})
    assert r.status_code == 200 and r.json()["item_id"] == "i003"
    similar = client.service.similar_items("i003", 5).item_ids
    assert [i["item_id"] for i in r.json()["items"]] == similar[:4]
    # what is in the cart left out (an id not served is nothing to leave out): still k items
    r = client.get("/similar", params={"item_id": "i003", "k": 4, "exclude": [similar[0], similar[2], "gone"]})
    assert [i["item_id"] for i in r.json()["items"]] == [similar[1], similar[3], similar[4], *[
        i for i in client.service.similar_items("i003", 6).item_ids if i not in similar]][:4]
    assert [i["item_id"] for i in r.json()["items"]] == client.service.similar_items(
        "i003", 4, exclude=[similar[0], similar[2]]).item_ids
    assert r.json()["exclude_not_served"] == ["gone"]  # said, as /recommend says it
    r = client.post("/search", json={"text": "running shoes", "k": 3})
    assert r.status_code == 200
    assert r.json()["text"] == "running shoes" and r.json()["image"] is False and r.json()["text_cut_at"] is None
    assert [i["item_id"] for i in r.json()["items"]] == client.service.search(text="running shoes", k=3).item_ids
    # a text longer than the model reads: the answer says where it stopped reading, not silently
    long = "  " + "lorem " * 200 + "running shoes"
    for path, extra in (("/search", {}), ("/recommend/cold", {"n_seeds": 3})):
        r = client.post(path, json={"text": long, "k": 3, **extra})
        cut = r.json()["text_cut_at"]
        assert r.status_code == 200 and 2 < cut < len(long) - 100 and long[cut:].startswith(" lorem")
        assert r.json()["items"] == client.post(path, json={"text": long[:cut], "k": 3, **extra}).json()["items"]
    assert client.post("/recommend/cold", json={"text": "running shoes"}).json()["text_cut_at"] is None
    png = solid_png((210, 30, 30), seed=3)
    r = client.post("/search", files={"image": ("red.png", png, "image/png")}, data={"k": "4"})
    assert r.status_code == 200 and r.json()["image"] is True and len(r.json()["items"]) == 4
    assert [i["item_id"] for i in r.json()["items"]] == client.service.search(image=png, k=4).item_ids
    r = client.post("/search", files={"image": ("red.png", png, "image/png")}, data={"text": "boots", "k": "2"})
    assert r.status_code == 200 and r.json()["text"] == "boots" and len(r.json()["items"]) == 2
    # a browser's form: its file input left empty searches by the text, its text box left empty by the image
    r = client.post("/search", **_form(("image", "", b""), ("text", None, b"running shoes"), ("k", None, b"3")))
    assert r.status_code == 200 and r.json()["text"] == "running shoes" and r.json()["image"] is False
    assert [i["item_id"] for i in r.json()["items"]] == client.service.search(text="running shoes", k=3).item_ids
    r = client.post("/search", **_form(("image", "red.png", png), ("text", None, b""), ("k", None, b"4")))
    assert r.status_code == 200 and r.json()["text"] is None and r.json()["image"] is True
    assert [i["item_id"] for i in r.json()["items"]] == client.service.search(image=png, k=4).item_ids
    r = client.get("/fraud/score", params={"user_id": "u002"})
    assert r.status_code == 200
    body = r.json()
    s = client.service.score_user("u002")
    assert body["probability"] == pytest.approx(s.probability) and body["flagged"] == s.flagged
    assert body["threshold"] == pytest.approx(s.threshold) and body["scorer"] == "gnn" and body["reasons"]
    assert body["label"] == s.label and body["label_in_training"] == s.label_in_training
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["indexes"]["gnn_items"] == 30 and r.json()["users"] == 40
    assert set(r.json()["indexes"]) == {"gnn_items", "gnn_items_cosine", "text_items", "image_items"}


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/recommend", "/recommend/cold", "/recommend/batch", "/recommend/new", "/similar", "/similar/batch",
                 "/search",
                 "/items", "/items/{item_id}", "/images/{item_id}", "/fraud/score", "/fraud/score/batch", "/healthz", "/metrics"):
        assert path in spec["paths"]
    assert set(spec["paths"]["/items"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert set(spec["paths"]["/search"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    # the docs pages work offline: their scripts and styles are served here, not from a CDN (the
    # browser test checks that Swagger UI renders the schema)
    for url, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        page = client.get(url)
        assert page.status_code == 200 and "cdn" not in page.text.lower() and "googleapis" not in page.text
        for asset in assets:
            assert f"/docs-assets/{asset}" in page.text
            r = client.get(f"/docs-assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 10_000
            assert b"cdn.redoc.ly" not in r.content  # ReDoc's footer logo: an empty picture, not Redocly's CDN
    # the document speaks to integrators: no reStructuredText roles or names of the code's own functions
    import re

    assert not re.findall(r":(?:func|meth|class|data|attr):`", json.dumps(spec))
    # every error the routes answer is listed with the body they send ({"detail": str})
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, method, codes in (("/recommend", "get", {"404", "422"}), ("/similar", "get", {"404", "422"}),
                                ("/fraud/score", "get", {"404", "422"}), ("/healthz", "get", {"422"}),
                                ("/search", "post", {"400", "413", "415", "422", "503"}),
                                ("/recommend/cold", "post", {"404", "413", "415", "422", "503"}),
                                ("/recommend/batch", "post", {"404", "413", "415", "422"}),
                                ("/recommend/new", "get", {"404", "422"}), ("/recommend/popular", "get", {"422"}),
                                ("/similar/batch", "post", {"404", "413", "415", "422"}),
                                ("/fraud/score/batch", "post", {"404", "413", "415", "422"}),
                                ("/items", "post", {"400", "409", "413", "415", "422", "503"}),
                                ("/items/batch", "post", {"409", "413", "415", "422", "503"}),
                                ("/items/remove", "post", {"404", "413", "415", "422", "503"}),
                                ("/items/{item_id}", "delete", {"404", "422", "503"}),
                                ("/items/{item_id}", "get", {"404", "422"})):
        responses = spec["paths"][path][method]["responses"]
        assert {c for c in responses if c >= "400"} == codes, path  # those it answers, no others
        assert all(responses[c]["content"]["application/json"]["schema"] == error for c in codes), path
    # one error schema for the whole API (the fraud routes' too), and no codes a route cannot answer
    assert [name for name in spec["components"]["schemas"] if "ErrorOut" in name] == ["ErrorOut"]
    assert set(spec["paths"]["/items/{item_id}"]["delete"]["responses"]) == {"200", "404", "422", "503"}
    for path in ("/items", "/items/batch"):  # 201 an add, 200 a retry of one that went through
        assert {"200", "201"} <= set(spec["paths"][path]["post"]["responses"]), path
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["additionalProperties"] is False
    batch = spec["paths"]["/items/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["items"]["maxItems"] == 1000 and "$ref" not in json.dumps(batch)
    assert set(batch["properties"]["items"]["items"]["properties"]) == {
        "item_id", "title", "category", "description", "price", "image_base64"}
    # the 2,000-character limit of every text field, as the server enforces it, in JSON and in forms
    assert batch["properties"]["items"]["items"]["properties"]["item_id"]["maxLength"] == 2000
    form = spec["paths"]["/items"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert all(form[name]["maxLength"] == 2000 for name in ("item_id", "title", "category", "description"))
    form = spec["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["text"]["maxLength"] == 2000
    assert set(spec["paths"]["/images/{item_id}"]) == {"get", "head"}  # HEAD is served, so listed
    remove = spec["paths"]["/items/remove"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert remove["properties"]["item_ids"]["maxItems"] == 1000 and remove["required"] == ["item_ids"]
    for path, fields in (("/recommend/batch", {"user_ids", "k", "exclude_seen", "category", "exclude", "skip_unknown"}),
                         ("/fraud/score/batch", {"user_ids", "reasons", "skip_unknown"}),
                         ("/similar/batch", {"item_ids", "k", "skip_unknown"})):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        ids = "item_ids" if "item_ids" in fields else "user_ids"
        assert set(schema["properties"]) == fields and schema["required"] == [ids], path
        assert schema["properties"][ids]["maxItems"] == 1000 and schema["additionalProperties"] is False


_K = "k: expected an integer between 1 and 1000"
_PNG = solid_png((1, 2, 3))


def _png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


_THIN = _png(1, 3000)  # 99 bytes; resized whole to 256x768,000 it took ~580 MB
_THIN_SAID = "1x3000 is over the 20:1 aspect ratio limit (the longer side at most 20 times the shorter)"
_NESTED = "nested more than 32 levels deep"


def _deep(depth: int, key: str = "k", **fields: str) -> bytes:
    """A JSON object whose ``key`` is ``depth`` lists inside each other."""
    head = "".join(f'"{name}": "{value}", ' for name, value in fields.items())
    return ("{" + head + f'"{key}": ' + "[" * depth + "]" * depth + "}").encode()


def _raw_json(body: bytes | str) -> dict:
    """Request arguments sending ``body`` as it is (repeated keys, \\ud800 escapes reach the server)."""
    return {"content": body.encode() if isinstance(body, str) else body,
            "headers": {"content-type": "application/json"}}


def _form(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> dict:
    """A multipart body as a browser sends it: each part ``(name, filename or None, data)``."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def _raw_query(query: str) -> str:
    return "/recommend?" + query  # passed as it is, so repeated and odd parameters reach the server


def test_errors_name_what_went_wrong_by_a_code_a_program_can_branch_on(client):
    """An unknown account and an unknown item in its cart are both 404s; the ``error`` code tells
    them apart, so a client serves the visitor routes or drops the stale item without reading
    the sentence."""
    user, item = client.service.user_ids[0], client.service.item_ids[0]
    cases = [
        (client.get("/recommend", params={"user_id": "nobody"}), 404, "unknown_user"),
        (client.get("/recommend", params={"user_id": "U" + user[1:]}), 404, "unknown_user"),  # did-you-mean kept
        (client.post("/recommend/batch", json={"user_ids": [user, "nobody"]}), 404, "unknown_user"),
        (client.post("/recommend/cold", json={"item_ids": [item, "nope"]}), 404, "unknown_item"),
        (client.get("/similar", params={"item_id": "nope"}), 404, "unknown_item"),
        (client.post("/fraud/score/batch", json={"user_ids": ["nobody"]}), 404, "unknown_user"),
        (client.get("/recomend", params={"user_id": user}), 404, "no_route"),
        (client.get("/recommend/", params={"user_id": user}, follow_redirects=False), 404, "no_route"),
        (client.delete("/recommend"), 405, "method_not_allowed"),
        (client.get("/recommend", params={"user_id": user, "k": "0"}), 422, "invalid_value"),
        (client.post("/recommend/cold", content=b"{", headers={"content-type": "application/json"}), 422,
         "invalid_value"),
        (client.post("/recommend/cold", content=b"x", headers={"content-type": "text/plain"}), 415,
         "unsupported_media_type"),
        (client.post("/recommend/cold", content=b"x" * 70_000, headers={"content-type": "application/json"}), 413,
         "too_large"),
    ]
    for r, status, code in cases:
        assert (r.status_code, r.json()["error"]) == (status, code), r.json()
        assert r.json()["detail"] and set(r.json()) == {"error", "detail", *(["ids"] if status == 404 and
                                                                             code != "no_route" else [])}
    assert "did you mean" in cases[1][0].json()["detail"] and "visitor" in cases[0][0].json()["detail"]
    assert "did you mean /recommend?" in cases[7][0].json()["detail"]  # a trailing slash: no redirect
    # the ids an error is about, every one of them as given (the sentence names the first ten): a client
    # drops those from the visitor's cart and asks again, without reading the sentence
    assert [r.json().get("ids") for r, _, _ in cases[:6]] == [
        ["nobody"], ["U" + user[1:]], ["nobody"], ["nope"], ["nope"], ["nobody"]]
    cart = [item, *(f" x{n}" for n in range(12)), " x0"]
    r = client.post("/recommend/cold", json={"item_ids": cart})
    assert r.json()["ids"] == [f" x{n}" for n in range(12)] and "and 2 more" in r.json()["detail"]
    r = client.post("/recommend/cold", json={"item_ids": [i for i in cart if i not in r.json()["ids"]]})
    assert r.status_code == 200
    # the schema lists the codes, so a generated client gets them as an enum
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ErrorOut"]
    assert schema["required"] == ["error", "detail"] and "ids" in schema["properties"]
    assert schema["properties"]["error"]["enum"] == list(ERROR_CODES)



@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("get", "/recommend", {"params": {"user_id": "u999"}}, 404, "user_id: unknown user 'u999'"),
    # an id typed in another case: the one it is like named
    ("get", "/recommend", {"params": {"user_id": "U001"}}, 404,
     "user_id: unknown user 'U001' (did you mean 'u001'? ids are case-sensitive)"),
    ("get", "/similar", {"params": {"item_id": "I003"}}, 404, "item_id: unknown item 'I003' (did you mean 'i003'?"),
    # a letter of another script that looks like a Latin one (pasted from a document): named
    ("get", "/similar", {"params": {"item_id": "\u0456003"}}, 404,
     "item_id: unknown item '\u0456003' (did you mean 'i003'? ids must match exactly, and '\u0456' is U+0456 "
     "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I)"),
    ("get", "/recommend", {"params": {"user_id": "u\uff10\uff10\uff11"}}, 404,
     "(did you mean 'u001'? ids must match exactly, and '\uff10' is U+FF10 FULLWIDTH DIGIT ZERO)"),
    ("get", "/recommend", {"params": {"user_id": "u001", "k": 0}}, 422, _K + " (got '0')"),
    ("get", "/recommend", {"params": {"user_id": "u001", "k": 1001}}, 422, _K + " (got '1001')"),
    ("get", "/recommend", {"params": {"user_id": "u001", "k": "ten"}}, 422, _K + " (got 'ten')"),
    # k is digits only, the same everywhere: no float, exponent, underscore, sign or spaces
    ("get", _raw_query("user_id=u001&k=5.0"), {}, 422, _K + " (got '5.0')"),
    ("get", _raw_query("user_id=u001&k=1e2"), {}, 422, _K + " (got '1e2')"),
    ("get", _raw_query("user_id=u001&k=1_000"), {}, 422, _K + " (got '1_000')"),
    ("get", _raw_query("user_id=u001&k=%205"), {}, 422, _K + " (got ' 5')"),
    ("get", _raw_query("user_id=u001&k="), {}, 422, _K + " (got '')"),
    ("get", _raw_query("user_id=u001&k=99999999999999999999999"), {}, 422, _K + " (got '99999999999999999999999')"),
    ("get", "/recommend", {"params": {}}, 422, "user_id: required"),
    # %-escapes that are not UTF-8: the client's encoding named, not "unknown user '\ufffd'"
    ("get", _raw_query("user_id=%ED%A0%80"), {}, 422, "user_id: not valid UTF-8 (got b'\\xed\\xa0\\x80')"),
    ("get", _raw_query("user_id=u001&k=%FF"), {}, 422, "k: not valid UTF-8 (got b'\\xff')"),
    ("get", _raw_query("user_id=u001&%FFk=5"), {}, 422, "a parameter name: not valid UTF-8 (got b'\\xffk')"),
    ("get", _raw_query("user_id=u001&x=%FF"), {}, 422, "x: unknown parameter"),  # unknown, whatever its value
    ("get", _raw_query("user_id=caf%C3%A9"), {}, 404, "user_id: unknown user 'caf\u00e9'"),
    ("get", _raw_query("user_id="), {}, 422, "user_id: expected a non-empty value (got '')"),
    ("get", "/recommend", {"params": {"user_id": "u001", "category": "toys"}}, 422, "category: unknown category 'toys'"),
    ("get", _raw_query("user_id=u001&category="), {}, 422, "category: expected a non-empty value (got '')"),
    # unknown, misspelt and repeated parameters are refused, not ignored or last-wins
    ("get", _raw_query("user_id=u001&foo=bar"), {}, 422,
     "foo: unknown parameter (expected user_id, k, exclude_seen, category, exclude)"),
    ("get", _raw_query("user_id=u001&K=50"), {}, 422, "K: unknown parameter"),
    ("get", _raw_query("userid=u001"), {}, 422, "userid: unknown parameter"),
    ("get", _raw_query("user_id=u001&k=5&k=7"), {}, 422, "k: given more than once (expected one value)"),
    ("get", _raw_query("user_id=u001&user_id=u002"), {}, 422, "user_id: given more than once"),
    ("get", _raw_query("user_id=u001&exclude_seen=on"), {}, 422, "exclude_seen: expected true or false (got 'on')"),
    ("get", _raw_query("user_id=u001&exclude_seen="), {}, 422, "exclude_seen: expected true or false (got '')"),
    ("get", "/similar", {"params": {"item_id": "nope"}}, 404, "item_id: unknown item 'nope'"),
    ("get", "/similar", {"params": {"item_id": "i001", "k": 5000}}, 422, _K + " (got '5000')"),
    ("get", "/similar", {"params": {"item_id": "i001", "user_id": "u001"}}, 422,
     "user_id: unknown parameter (expected item_id, k, exclude)"),
    ("get", _raw_query("x").replace("/recommend?x", "/similar?item_id=i001&exclude="), {}, 422,
     "exclude: expected a non-empty value (got '')"),
    ("get", "/fraud/score", {"params": {"user_id": "x"}}, 404, "user_id: unknown user 'x'"),
    ("get", "/fraud/score", {"params": {"user_id": "u001", "k": "3"}}, 422, "k: unknown parameter (expected user_id)"),
    ("get", "/healthz", {"params": {"verbose": "1"}}, 422, "verbose: unknown parameter (expected none)"),
    # echoed values are cut, not repeated whole
    ("get", "/recommend", {"params": {"user_id": "x" * 5000}}, 404, "…' (5,000 characters)"),
    ("post", "/search", {"json": {"text": ""}}, 422, "text: expected a non-empty query (got '')"),
    # counted as sent, spaces included, as every text field and the schema's maxLength count
    ("post", "/search", {"json": {"text": " " * 10 + "s" * 1995}}, 422,
     "text: expected at most 2,000 characters (got 2,005)"),
    ("post", "/search", {"json": {"text": "shoes", "k": 0}}, 422, _K + " (got 0)"),
    ("post", "/search", {"json": {"text": "shoes", "k": True}}, 422, _K + " (got True)"),
    ("post", "/search", {"json": {"text": "shoes", "k": "5"}}, 422, _K + " (got '5')"),
    ("post", "/search", {"json": {"text": "shoes", "k": 5.0}}, 422, _K + " (got 5.0)"),
    ("post", "/search", {"json": {"text": "shoes", "kk": 5}}, 422, "kk: unknown field (expected text, k)"),
    ("post", "/search", {"json": {"text": 5}}, 422, "text: expected a string (got int 5)"),
    ("post", "/search", {"json": ["shoes"]}, 422, "body: expected a JSON object"),
    ("post", "/search", {"json": {"k": 3}}, 422, "text: required"),
    # a query of nothing one can see, or of nothing the text model knows, would match items at random
    ("post", "/search", {"json": {"text": "\u200b"}}, 422,
     "text: expected a query one can see (got '\\u200b': characters that show as nothing)"),
    ("post", "/search", {"json": {"text": "\U0001f600\U0001f45f"}}, 422,
     "text: the text model knows none of its words (got '\U0001f600\U0001f45f'), so it would match items at "
     "random; use words"),
    ("post", "/recommend/cold", {"json": {"text": "\U0001f600"}}, 422,
     "text: the text model knows none of its words (got '\U0001f600'), so it would match items at random; use words"),
    ("post", "/search", {"json": {"text": "x" * 70_000}}, 413, "body: over the 65,536-byte limit of a JSON query"),
    ("post", "/search?k=3", {"json": {"text": "shoes"}}, 422, "k: unknown parameter (expected none)"),
    ("post", "/search", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422,
     "body: expected a JSON object"),
    ("post", "/search", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "content-type: expected application/json or multipart/form-data (got 'text/plain')"),
    # a compressed body is said to be one, not reported as text that is not UTF-8
    ("post", "/search", {"content": gzip.compress(b'{"text": "shoes"}'),
                         "headers": {"content-type": "application/json", "content-encoding": "gzip"}}, 415,
     "content-encoding: compressed bodies are not supported (got 'gzip'); send the body uncompressed"),
    ("post", "/recommend/batch", {"json": {"user_ids": ["u001"]}, "headers": {"content-encoding": "br"}}, 415,
     "content-encoding: compressed bodies are not supported (got 'br'); send the body uncompressed"),
    ("post", "/search", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400,
     "body: not a readable multipart/form-data body"),
    # cut off before its closing boundary: a cut body, not a form without its last fields
    ("post", "/items", {"content": b'--zz\r\nContent-Disposition: form', "headers": {
        "content-type": "multipart/form-data; boundary=zz"}}, 400,
     "body: not a readable multipart/form-data body (it ends before its closing boundary: cut off?)"),
    ("post", "/search", {"content": b'--zz\r\nContent-Disposition: form-data; name="text"\r\n\r\nshoes\r\n', "headers": {
        "content-type": "multipart/form-data; boundary=zz"}}, 400,
     "body: not a readable multipart/form-data body (it ends before its closing boundary: cut off?)"),
    ("post", "/search", {"files": {"image": ("x.png", b"not an image", "image/png")}}, 422,
     "image: not a readable image (12 bytes; not a format the image library knows; starts with b'not an i')"),
    ("post", "/search", {"files": {"image": ("x.png", b"", "image/png")}}, 422, "image: the upload is empty"),
    # a browser's form with neither its text box nor its file input filled in
    ("post", "/search", _form(("image", "", b""), ("text", None, b"")), 422,
     "image, text: expected an image file, a text or both in the form (got neither; an empty file input or text "
     "box is none)"),
    ("post", "/search", _form(("k", None, b"3")), 422, "image, text: expected an image file, a text or both"),
    ("post", "/search", _form(("image", None, b"a text"), ("k", None, b"3")), 422,
     "image: expected a file, not a text field"),
    ("post", "/search", _form(("image", "", b""), ("text", "t.txt", b"shoes")), 422,
     "text: expected a text field, not a file"),
    ("post", "/search", _form(("image", "x.png", _PNG), ("k", None, b" 5")), 422, _K + " (got ' 5')"),
    # a text field that is not UTF-8 is named, not read as Latin-1 ('\xff\xfe' as 'ÿþ')
    ("post", "/search", _form(("text", None, b"\xff\xfe")), 422, "text: not valid UTF-8 (got b'\\xff\\xfe')"),
    ("post", "/search", {"files": {"other": ("x.png", b"abc", "image/png")}}, 422,
     "other: unknown form field (expected image, text, k)"),
    ("post", "/search", {"files": {"image": ("x.png", b"\x89PNG" + bytes(12 * 2**20), "image/png")}}, 413,
     "image: upload of 12.00 MB (12,583,"),
    ("post", "/search", {"files": {"image": ("x.png", b"\x89PNG" + bytes(10 * 2**20), "image/png")}}, 413,
     "image: upload over the 10 MB limit (10,485,760 bytes)"),
    ("post", "/search", {"files": {"image": ("x.png", _PNG, "image/png")}, "data": {"k": "x"}}, 422, _K + " (got 'x')"),
    ("post", "/search", {"files": {"image": ("x.png", _PNG, "image/png")}, "data": {"k": "1_000"}}, 422,
     _K + " (got '1_000')"),
    ("post", "/search", {"files": {"image": ("x.png", _PNG, "image/png")}, "data": {"k": "5.0"}}, 422,
     _K + " (got '5.0')"),
    ("post", "/search", {"files": [("image", ("x.png", _PNG, "image/png")), ("image", ("y.png", _PNG, "image/png"))]},
     422, "image: given more than once"),
    # an absurd aspect ratio is refused from the header, before the image is decoded or resized
    ("post", "/search", {"files": {"image": ("thin.png", _THIN, "image/png")}}, 422, "image: " + _THIN_SAID),
    ("post", "/search", {"files": {"image": ("wide.png", _png(4000, 3), "image/png")}}, 422,
     "image: 4000x3 is over the 20:1 aspect ratio limit"),
    # JSON nested deeper than any body needs: a 422, never the parser's RecursionError (a 500)
    ("post", "/search", _raw_json(_deep(5000, text="a")), 422, 'body: expected a JSON object like {"text": '
                                                                '"red shoes", "k": 10} (got JSON ' + _NESTED + ")"),
    ("post", "/search", _raw_json(_deep(40, text="a")), 422, _NESTED),
    # a key given twice is refused, not last-wins
    ("post", "/search", _raw_json('{"text": "shoes", "text": "boots", "k": 2, "k": 3}'), 422,
     "text: given more than once (expected one value)"),
    ("post", "/search", _raw_json('{"text": "shoes", "k": 2, "k": 2}'), 422, "k: given more than once"),
    # a lone surrogate (JSON's \\ud800) is named, not the tokenizer's or the codec's message
    ("post", "/search", _raw_json('{"text": "\\ud800"}'), 422,
     "text: not valid Unicode (a lone surrogate at position 0)"),
    ("post", "/search", _raw_json('{"text": "red \\udfff shoes"}'), 422, "text: not valid Unicode (a lone surrogate "
                                                                       "at position 4)"),
    ("post", "/search", _raw_json('{"text": "shoes", "\\ud800": 1}'), 422,
     "body: the field name '\\ud800' is not valid Unicode (a lone surrogate at position 0)"),
    ("post", "/search", _raw_json('{"text": "shoes", "\\ud800": 1, "\\ud800": 2}'), 422,
     "'\\ud800': given more than once"),
    ("post", "/recommend/cold", _raw_json('{"text": "gifts\\udc00"}'), 422,
     "text: not valid Unicode (a lone surrogate at position 5)"),
    ("post", "/recommend/cold", _raw_json('{"item_ids": ["i001", "\\ud800"]}'), 422,
     "item_ids[1]: not valid Unicode (a lone surrogate at position 0)"),
    ("post", "/recommend/cold", _raw_json(_deep(5000, "item_ids")), 422, _NESTED),
    ("post", "/recommend/cold", _raw_json('{"text": "a", "text": "b"}'), 422, "text: given more than once"),
    ("post", "/recommend/batch", _raw_json('{"user_ids": ["u001", "u\\udbff"]}'), 422,
     "user_ids[1]: not valid Unicode (a lone surrogate at position 1)"),
    ("post", "/recommend/batch", _raw_json('{"user_ids": ["u001"], "category": "\\ud800"}'), 422,
     "category: not valid Unicode"),
    ("post", "/recommend/batch", _raw_json(_deep(5000, "user_ids")), 422, _NESTED),
    ("post", "/recommend/batch", _raw_json('{"user_ids": ["u001"], "user_ids": ["u002"]}'), 422,
     "user_ids: given more than once"),
    ("post", "/similar/batch", _raw_json(_deep(5000, "item_ids")), 422, _NESTED),
    ("post", "/fraud/score/batch", _raw_json(_deep(5000, "user_ids")), 422, _NESTED),
    ("post", "/fraud/score/batch", _raw_json('{"user_ids": ["\\ud800"]}'), 422, "user_ids[0]: not valid Unicode"),
])
def test_bad_inputs_are_4xx_naming_the_problem(client, method, url, kwargs, status, message):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert len(r.json()["detail"]) < 300


def test_a_surrogate_pair_is_valid_unicode_and_json_nesting_within_the_limit_passes(client):
    r = client.post("/search", **_raw_json('{"text": "\\ud83d\\ude00 shoes", "k": 2}'))  # an emoji, escaped
    assert r.status_code == 200 and r.json()["text"] == "\U0001f600 shoes"
    r = client.post("/search", **_raw_json(_deep(31, text="a")))  # the body and 31 lists: 32 levels
    assert r.status_code == 422 and r.json()["detail"].startswith("k: expected an integer between 1 and 1000 (got [[[")


def test_media_types_are_case_insensitive_and_k_is_strict_but_plain_digits_pass(client):
    r = client.post("/search", content=b'{"text": "running shoes", "k": 3}',
                    headers={"content-type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    r = client.get("/recommend?user_id=u001&k=007&exclude_seen=FALSE")
    assert r.status_code == 200 and r.json()["k"] == 7


def _chunked_post(app, path: str, content_type: str, chunks):
    """POST ``chunks`` to the ASGI ``app`` one message each, with no Content-Length (as a chunked
    upload comes): ``(status, detail, how many chunks the app read)``."""
    import asyncio

    pending, read, sent = iter(chunks), 0, []

    async def receive():
        nonlocal read
        chunk = next(pending, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode()),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)["detail"], read


@pytest.mark.parametrize("path", ["/search", "/items"])
def test_a_chunked_upload_is_read_only_up_to_its_limit(client, path):
    """Without a Content-Length the multipart body was read whole (to a temp file) before the 413."""
    app = create_app(client.service, demo=False, fraud_cases=False)
    head = (b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG")
    mb = bytes(2**20)
    status, detail, read = _chunked_post(app, path, "multipart/form-data; boundary=b0undary",
                                         itertools.chain([head], itertools.repeat(mb, 200)))  # 200 MB
    assert status == 413
    assert detail == ("body: over the 11,534,336-byte limit of a multipart upload (an image up to the 10 MB limit "
                      "(10,485,760 bytes) and its form fields)")
    assert read <= 12  # 11 MB and the part's head, not 200 MB
    # and JSON bodies, as before
    status, detail, read = _chunked_post(app, "/search", "application/json",
                                         itertools.chain([b'{"text": "'], itertools.repeat(b"x" * 1024, 1000)))
    assert status == 413 and detail == "body: over the 65,536-byte limit of a JSON query" and read <= 66
    # a small chunked body is read whole and answered
    status, detail, read = _chunked_post(app, "/search", "application/json", [b'{"text": ', b'""}'])
    assert status == 422 and detail == "text: expected a non-empty query (got '')" and read == 2


def test_huge_image_is_refused_by_pixels(client):
    import io

    buffer = io.BytesIO()
    Image.new("L", (9000, 5000)).save(buffer, format="PNG")  # 45 MP, a tiny file
    r = client.post("/search", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 422 and "9000x5000 is over the 40 megapixel limit" in r.json()["detail"]


def test_metrics_count_requests_by_route(client):
    for _ in range(3):
        client.get("/recommend", params={"user_id": "u004"})
    client.get("/recommend", params={"user_id": "nobody"})
    client.get("/no/such/path")
    for k in range(3):  # methods a client makes up: one series for them all, not one each
        assert client.request(f"FOO{k}", "/recommend", params={"user_id": "u004"}).status_code == 405
    text = client.get("/metrics").text
    assert "FOO" not in text and 'shopgraph_http_requests_total{method="other",route="/recommend",status="405"}' in text
    ok = [ln for ln in text.splitlines()
          if ln.startswith('shopgraph_http_requests_total{method="GET",route="/recommend",status="200"}')]
    assert ok and int(ok[0].split()[-1]) >= 3
    assert 'route="/recommend",status="404"' in text and 'route="unmatched",status="404"' in text
    assert "# TYPE shopgraph_http_request_duration_seconds histogram" in text
    count = [ln for ln in text.splitlines()
             if ln.startswith('shopgraph_http_request_duration_seconds_count{method="GET",route="/recommend"}')]
    inf = [ln for ln in text.splitlines() if 'method="GET",route="/recommend",le="+Inf"' in ln]
    assert count and inf and count[0].split()[-1] == inf[0].split()[-1]


@pytest.mark.parametrize(("path", "content_type", "first"), [
    ("/recommend/batch", b"application/json", b'{"user_ids": ["u004", '),
    ("/search", b"multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="image"; '
                                                       b'filename="a.png"\r\n\r\n\x89PNG'),
    ("/items", b"multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="item_id"'),
])
def test_a_client_gone_mid_upload_is_counted_apart_not_as_a_server_fault(client, path, content_type, first):
    """A client that hangs up before its body arrived (a mobile client, a proxy's timeout) is no 500:
    the request is counted with nginx's 499, the route by its documented name, and nothing is done."""
    import asyncio

    app = client.app
    items_before = len(client.service.item_ids)
    messages = iter([{"type": "http.request", "body": first, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", content_type), (b"host", b"test")], "client": ("127.0.0.1", 1),
             "server": ("test", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499 and b"closed the connection" in sent[1]["body"]
    assert len(client.service.item_ids) == items_before
    text = client.get("/metrics").text
    assert f'method="POST",route="{path}",status="499"' in text and f'route="{path}",status="500"' not in text


def test_routes_are_counted_by_their_documented_names(client):
    client.get("/items/i001")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    assert 'route="/items/{item_id}",status="200"' in text
    assert 'route="/openapi.json",status="200"' in text  # FastAPI's own page: a route, not "unmatched"
    # a mounted app's routes (the demo's at /demo) under their mount path, not as the API's own "/"
    from fastapi import FastAPI

    from shopgraph.retrieval.api import MetricsMiddleware

    inner, outer, metrics = FastAPI(), FastAPI(), Metrics()
    inner.get("/config")(lambda: {"ok": True})
    outer.mount("/demo", inner)
    outer.add_middleware(MetricsMiddleware, metrics=metrics, router=outer.router)  # type: ignore[arg-type]
    with TestClient(outer) as c:
        assert c.get("/demo/config").status_code == 200 and c.get("/nowhere").status_code == 404
    text = metrics.render()
    assert 'route="/demo/config",status="200"' in text and 'route="unmatched",status="404"' in text
    assert 'route="/config"' not in text


def test_answers_of_a_kilobyte_or_more_are_gzipped_for_clients_that_take_it(client):
    params = {"user_id": "u004", "k": 20}
    plain = client.get("/recommend", params=params, headers={"accept-encoding": "identity"})
    packed = client.get("/recommend", params=params, headers={"accept-encoding": "gzip"})
    assert len(plain.content) >= 1024 and "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip" and "accept-encoding" in packed.headers["vary"].lower()
    assert packed.json() == plain.json() and packed.num_bytes_downloaded < len(plain.content) / 2
    assert packed.headers["x-request-id"]
    small = client.get("/healthz", headers={"accept-encoding": "gzip"})  # under a kilobyte: as it is
    assert "content-encoding" not in small.headers
    picture = client.get("/images/i003", headers={"accept-encoding": "gzip"})  # a PNG does not shrink
    assert picture.status_code == 200 and "content-encoding" not in picture.headers
    error = client.get("/recommend", params={"user_id": "x" * 1500}, headers={"accept-encoding": "gzip"})
    assert error.status_code == 404 and error.json()["error"] == "unknown_user"  # errors read the same
    refused = client.get("/recommend", params=params, headers={"accept-encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.json() == plain.json()  # gzip refused: as it is


@pytest.mark.parametrize(("header", "takes"), [
    ("gzip", True), ("gzip, deflate, br", True), ("GZIP;q=0.5", True), ("x-gzip", True), ("*", True),
    ("gzip;q=0", False), ("gzip;q=0.0, identity", False), ("identity", False), ("", False),
    ("*;q=0", False), ("*, gzip;q=0", False), ("gzip;q=bad", False), ("deflate", False),
])
def test_accept_encoding_is_read_with_its_q_values(header, takes):
    from shopgraph.retrieval.api import accepts_gzip

    assert accepts_gzip(header) is takes


def test_pictures_of_any_format_are_sent_as_they_are(writable):
    """A BMP or TIFF shrinks under gzip, but a picture's GET must match its HEAD and its ETag."""
    import io

    from PIL import Image

    bmp = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(bmp, format="BMP")
    r = writable.post("/items", data={"item_id": "flat-bmp", "title": "flat red tile"},
                      files={"image": ("tile.bmp", bmp.getvalue(), "image/bmp")})
    assert r.status_code == 201, r.text
    got = writable.get("/images/flat-bmp", headers={"accept-encoding": "gzip"})
    assert got.status_code == 200 and "content-encoding" not in got.headers and got.content == bmp.getvalue()
    assert writable.delete("/items/flat-bmp").status_code == 200


def test_metrics_histogram_is_cumulative():
    m = Metrics(buckets=(0.01, 0.1))
    for s in (0.005, 0.05, 0.5):
        m.observe("GET", "/x", 200, s)
    text = m.render()
    assert 'le="0.01"} 1' in text and 'le="0.1"} 2' in text and 'le="+Inf"} 3' in text
    assert np.isclose(float(text.split("_sum{")[1].split()[1]), 0.555)


def test_cli_serve_refuses_a_missing_run(tmp_path):
    import argparse

    from shopgraph.retrieval.api import cli_serve

    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        cli_serve(argparse.Namespace(run=tmp_path / "nothing", host="127.0.0.1", port=0, workers=1))


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_serve_refuses_a_stale_index_in_one_line_before_any_worker_starts(tmp_path_factory, tmp_path,
                                                                              monkeypatch, capsys, workers):
    import argparse
    import shutil

    from safetensors.numpy import save_file

    from shopgraph.graph.run import RunDir, StaleFileError
    from shopgraph.retrieval import api
    from shopgraph.retrieval.index import load_embeddings

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    run = RunDir(copy)
    emb = load_embeddings(run)
    emb["item"] = emb["item"] * 2  # as a retraining would: other vectors, the index not rebuilt
    run.write_with("embeddings.safetensors", lambda p: save_file(emb, str(p)))
    started: list[str] = []
    monkeypatch.setattr(api.uvicorn, "run", lambda *a, **k: started.append("uvicorn.run"))
    monkeypatch.setattr(api.uvicorn.Server, "run", lambda *a, **k: started.append("uvicorn.Server.run"))
    monkeypatch.setattr("uvicorn.supervisors.Multiprocess.run", lambda self: started.append("workers"))
    with pytest.raises(StaleFileError, match=r"'index/gnn_items.faiss' was computed from an earlier "
                                             r"'embeddings.safetensors' \(rewritten since\): rerun `shopgraph index"):
        api.cli_serve(argparse.Namespace(run=copy, host="127.0.0.1", port=0, workers=workers))
    assert started == [] and "serving" not in capsys.readouterr().out


def test_cli_serve_with_workers_checks_the_journal_without_replaying_it(tmp_path_factory, tmp_path, monkeypatch,
                                                                         capsys, caplog):
    import argparse
    import logging
    import shutil

    from shopgraph.retrieval import api
    from shopgraph.retrieval.catalogue import CatalogueError

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    load_service(copy).add_item("new1", "glow in the dark frisbee")
    started: list[str] = []
    monkeypatch.setattr("uvicorn.supervisors.Multiprocess.run", lambda self: started.append("workers"))
    with caplog.at_level(logging.WARNING):
        api.cli_serve(argparse.Namespace(run=copy, host="127.0.0.1", port=0, workers=2))
    # the check loads no model, so replaying the add would only have warned that it cannot embed it
    assert started == ["workers"] and "not applied" not in caplog.text
    journal = copy / "catalogue.jsonl"
    journal.write_bytes(journal.read_bytes().replace(b"frisbee", b"frisbeE"))
    with pytest.raises(CatalogueError, match="line 1: its sha256 does not match"):
        api.cli_serve(argparse.Namespace(run=copy, host="127.0.0.1", port=0, workers=2))
    assert started == ["workers"]


@pytest.mark.parametrize("port", ["-1", "99999", "http"])
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_cli_refuses_a_bad_port_before_loading_anything(tmp_path, capsys, port, command):
    from shopgraph.ui.cli import main

    args = ["serve", "--run", str(tmp_path)] if command == "serve" else ["demo", "--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--port", port])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: expected a port number from 1 to 65535, or 0 for any free port (got '{port}')" in err
    assert "Traceback" not in err and not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_cli_a_port_in_use_is_one_line_before_loading_anything(tmp_path, monkeypatch, capsys, command):
    import socket

    from shopgraph.graph.run import RunDir
    from shopgraph.retrieval import api
    from shopgraph.ui import demo
    from shopgraph.ui.cli import main

    RunDir(tmp_path / "run", create=True)
    loaded: list[object] = []
    monkeypatch.setattr(api.ShopService, "from_run", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(demo, "prepare", lambda *a, **k: loaded.append(a))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    args = ["serve", "--run", str(tmp_path / "run")] if command == "serve" else ["demo", "--workdir", str(tmp_path)]
    try:
        assert main([*args, "--port", str(port)]) == 1
    finally:
        taken.close()
    out, err = capsys.readouterr()
    assert (f"shopgraph {command}: error: --host/--port: cannot listen on 127.0.0.1:{port}: port {port} is in use "
            "(another server?); choose another --port") in err
    assert loaded == [] and "serving" not in out and "open http" not in out


def test_cli_serve_says_where_it_serves_once_the_port_is_bound(tmp_path, monkeypatch, capsys):
    from fastapi import FastAPI

    from shopgraph.graph.run import RunDir
    from shopgraph.retrieval import api
    from shopgraph.ui.cli import main

    RunDir(tmp_path / "run", create=True)
    warmed: list[bool] = []

    class Loaded:
        def warm_up(self) -> float:
            warmed.append(True)
            return 0.0

    monkeypatch.setattr(api.ShopService, "from_run", lambda *a, **k: Loaded())
    monkeypatch.setattr(api, "create_app", lambda service, **kw: FastAPI())
    monkeypatch.setattr(api, "_serving_threads", lambda: None)
    monkeypatch.setattr(api, "_freeze_heap", lambda: None)
    seen: list[tuple[str, int]] = []

    def run(self, sockets=None):
        seen.append((capsys.readouterr().out, sockets[0].getsockname()[1]))

    monkeypatch.setattr(api.uvicorn.Server, "run", run)
    assert main(["serve", "--run", str(tmp_path / "run"), "--port", "0"]) == 0
    out, port = seen[0]
    assert port > 0 and f"on http://127.0.0.1:{port} (1 worker); docs at /docs" in out  # the port it got
    assert warmed == [True]  # warmed up before it serves


def test_multi_worker_listener_keeps_tcp_nodelay():
    import socket

    import uvicorn

    from shopgraph.retrieval.api import nodelay_listener

    # asyncio sets TCP_NODELAY on accepted sockets only when the listener says IPPROTO_TCP. uvicorn
    # up to 0.54 bound the multi-worker listener with proto 0 (issue #3149), 0.55 with IPPROTO_TCP:
    # either way the listener the server uses says IPPROTO_TCP.
    config = uvicorn.Config("shopgraph.retrieval.api:app_from_env", factory=True, host="127.0.0.1", port=0, workers=2)
    sock = nodelay_listener(config.bind_socket())
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.family == socket.AF_INET and sock.get_inheritable()
    finally:
        sock.close()
    # what uvicorn 0.54 bound: a listener with proto 0 is relabelled, same port, still listening
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    port = plain.getsockname()[1]
    sock = nodelay_listener(plain)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] == port and sock.get_inheritable()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = sock.accept()
            conn.close()
    finally:
        sock.close()
    # a listener that already says IPPROTO_TCP is returned as it is
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        assert nodelay_listener(tcp) is tcp
    finally:
        tcp.close()


# -- the catalogue: POST /items, DELETE /items/{item_id} ------------------------------------------
@pytest.fixture(scope="module")
def writable(tmp_path_factory):
    """A client over a copy of the shared run (its catalogue changes are kept in the run)."""
    import shutil

    copy = tmp_path_factory.mktemp("api-catalogue") / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    service = load_service(copy)
    with TestClient(create_app(service, demo=False, fraud_cases=False), raise_server_exceptions=False) as c:
        c.service = service  # type: ignore[attr-defined]
        c.run = copy  # type: ignore[attr-defined]
        yield c


def test_a_damaged_journal_is_the_servers_fault_until_it_is_mended(tmp_path, tmp_path_factory):
    """A journal line changed behind the server's back: changes are a 503 (not the client's 422),
    ``/healthz`` says "degraded" with the reason, and both clear once the journal is mended."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    service = load_service(copy, catalogue_sync_s=0.0)
    with TestClient(create_app(service, demo=False, fraud_cases=False), raise_server_exceptions=False) as c:
        assert c.post("/items", json={"item_id": "new1", "title": "glow in the dark frisbee"}).status_code == 201
        journal = copy / "catalogue.jsonl"
        good = journal.read_bytes()
        damaged = good + good.replace(b'"new1"', b'"new3"')  # a second line whose sha256 is new1's
        journal.write_bytes(damaged)
        for r in (c.post("/items", json={"item_id": "new2", "title": "t"}), c.delete("/items/new1"),
                  c.post("/items/remove", json={"item_ids": ["i001"]})):
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("catalogue: the run's journal cannot be read, so no change can be "
                                                 "saved until it is mended (nothing was changed): ")
            assert "line 2: its sha256 does not match its content" in r.json()["detail"]
        health = c.get("/healthz").json()
        assert health["status"] == "degraded" and "line 2: its sha256" in health["catalogue"]["fault"]
        assert c.get("/recommend", params={"user_id": "u000", "k": 3}).status_code == 200  # answers still served
        assert journal.read_bytes() == damaged
        journal.write_bytes(good)
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["catalogue"]["fault"] is None
        assert health["catalogue"]["not_applied"] == [] and c.get("/items/new1").status_code == 200
        assert c.post("/items", json={"item_id": "new2", "title": "t"}).status_code == 201


def test_a_journal_line_the_server_applied_edited_in_place_stops_changes_until_put_back(tmp_path, tmp_path_factory):
    """A line the server has applied, edited in place (same size) or the file replaced with such an
    edit: the server goes "degraded" and refuses changes (a 503 naming what happened), rather than
    writing on top of a journal that a restart would refuse; putting the line back mends it."""
    import os
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    service = load_service(copy, catalogue_sync_s=0.0)
    with TestClient(create_app(service, demo=False, fraud_cases=False), raise_server_exceptions=False) as c:
        for item in ("new1", "new2"):
            assert c.post("/items", json={"item_id": item, "title": "glow in the dark frisbee"}).status_code == 201
        journal = copy / "catalogue.jsonl"
        good = journal.read_bytes()
        for k, how in enumerate(("in place", "replaced", "longer")):
            good = journal.read_bytes()
            longer = b'"title":"glow in the dark frisbees"' if how == "longer" else b'"title":"glow in the dark frisbeE"'
            edited = good.replace(b'"title":"glow in the dark frisbee"', longer, 1)
            assert edited != good and (len(edited) == len(good)) == (how != "longer")
            if how == "replaced":  # sed -i: a new file by the old name
                journal.with_suffix(".tmp").write_bytes(edited)
                os.replace(journal.with_suffix(".tmp"), journal)
            else:  # the same inode; the same size, or one byte more (the lines after the edit moved)
                with open(journal, "r+b") as f:
                    f.write(edited)
            health = c.get("/healthz").json()
            assert health["status"] == "degraded", (how, health)
            assert f"lines 1 to {2 + k}, which this service has applied, were changed since" in health["catalogue"]["fault"]
            r = c.post("/items", json={"item_id": "new9", "title": "t"})
            assert r.status_code == 503 and r.json()["error"] == "journal_unreadable", r.text
            assert c.delete("/items/new1").json()["error"] == "journal_unreadable"
            assert journal.read_bytes() == edited  # nothing written on top
            journal.write_bytes(good)
            assert c.get("/healthz").json()["status"] == "ok"
            assert c.post("/items", json={"item_id": f"new{3 + k}", "title": "t"}).status_code == 201


def test_an_edit_hidden_by_another_process_s_append_is_still_never_written_over(tmp_path, tmp_path_factory):
    """A line edited outside the last bytes a server keeps, the file then appended to by another
    process (or its time put back: `touch -r`): the cheap look takes it for an append, but a write
    checks every byte first (a 503, nothing written on top), a fault is cleared only by a journal
    that is whole again, and the background check finds it without a write."""
    import os
    import shutil

    from shopgraph.retrieval.catalogue import TAIL_BYTES

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    server = load_service(copy, catalogue_sync_s=0.0, catalogue_follow=False)
    other = load_service(copy, catalogue_sync_s=0.0, catalogue_follow=False)
    journal = copy / "catalogue.jsonl"
    with TestClient(create_app(server, demo=False, fraud_cases=False), raise_server_exceptions=False) as c:
        for k in range(4):  # lines long enough that the first is outside the last 4 KiB kept
            assert c.post("/items", json={"item_id": f"new{k}", "title": "glow in the dark frisbee " * 40}).status_code == 201
        assert journal.stat().st_size > 2 * TAIL_BYTES
        other.sync_catalogue()
        other.add_item("from-elsewhere", "t")  # another process's append, and right after it, by hand:
        with open(journal, "r+b") as f:
            f.write(journal.read_bytes().replace(b"glow in the dark frisbee", b"Glow in the dark frisbee", 1))
        assert c.get("/healthz").json()["status"] == "ok"  # the look takes it for the append alone
        r = c.post("/items", json={"item_id": "on-top", "title": "t"})
        assert r.status_code == 503 and r.json()["error"] == "journal_unreadable", r.text
        assert b"on-top" not in journal.read_bytes()
        with pytest.raises(Exception, match="which this service has applied, were changed since"):  # the other checks too
            other.add_item("from-elsewhere-2", "t")
        with open(journal, "ab") as f:  # an append by something else: the fault stays until the line is whole
            f.write(b"\n")
        assert c.get("/healthz").json()["status"] == "degraded"
        journal.write_bytes(journal.read_bytes().replace(b"Glow in the dark frisbee", b"glow in the dark frisbee", 1))
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.post("/items", json={"item_id": "now", "title": "t"}).status_code == 201
        # a same-size edit with its time put back: the look sees nothing; the background check does
        st = journal.stat()
        with open(journal, "r+b") as f:
            f.write(journal.read_bytes().replace(b"glow in the dark frisbee", b"Glow in the dark frisbee", 1))
        os.utime(journal, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert c.get("/healthz").json()["status"] == "ok"
        server._verify_journal()
        assert c.get("/healthz").json()["status"] == "degraded"


def test_an_image_file_missing_on_the_server_is_a_503(writable, monkeypatch, tmp_path):
    info = writable.service.item_info("i003")
    monkeypatch.setattr(writable.service, "item_info", lambda _: {**info, "image": str(tmp_path / "gone.png")})
    r = writable.get("/images/i003")
    assert r.status_code == 503 and r.json()["detail"] == "item_id: the image file of item 'i003' is missing on the server"


def test_an_item_back_in_stock_keeps_what_it_had(tmp_path, tmp_path_factory):
    """DELETE, then POST with the id and a title only (or null fields, as generated clients send
    unset ones): the item's category, description, price and picture are the ones it had."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    with TestClient(create_app(load_service(copy), demo=False, fraud_cases=False)) as c:
        item = "i003"
        before = c.get(f"/items/{item}").json()
        assert before["category"] and before["price"] is not None
        for body in ({"item_id": item, "title": "back in stock"},
                     {"item_id": item, "title": "back in stock", "category": None, "description": None,
                      "price": None}):
            assert c.delete(f"/items/{item}").status_code == 200
            r = c.post("/items", json=body)
            assert r.status_code == 201, r.text
            kept = {k: r.json()[k] for k in ("category", "description", "price")}
            assert kept == {k: before[k] for k in ("category", "description", "price")}
            assert (r.json()["image"] is None) == (before["image"] is None)
        # a browser's form sends its empty boxes and file input: left out too
        assert c.delete(f"/items/{item}").status_code == 200
        r = c.post("/items", **_form(("item_id", None, item.encode()), ("title", None, b"back"),
                                     ("category", None, b""), ("description", None, b" "), ("price", None, b""),
                                     ("image", "", b"")))
        assert r.status_code == 201, r.text
        assert {k: r.json()[k] for k in ("category", "description", "price")} == {
            k: before[k] for k in ("category", "description", "price")}
        assert c.delete(f"/items/{item}").status_code == 200
        r = c.post("/items", json={"item_id": item, "title": "relisted", "category": "", "price": 5})
        assert (r.json()["category"], r.json()["price"], r.json()["description"]) == ("", 5, before["description"])


def test_a_retry_through_another_worker_is_told_from_the_add_that_wrote(tmp_path_factory, tmp_path):
    """Two workers serve one run, each with its own view of the catalogue (up to a second behind):
    whether a POST added its item or found it served as sent (a retry: 200) is decided under the
    journal's lock, not from the worker's own view, and so is a batch's "added" count."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory.getbasetemp()), copy)
    first, second = (load_service(copy, catalogue_sync_s=3600.0, catalogue_follow=False) for _ in range(2))
    item = {"item_id": "r1", "title": "box kite", "category": "toys", "price": 9.5}
    with TestClient(create_app(first, demo=False, fraud_cases=False), raise_server_exceptions=False) as a, \
            TestClient(create_app(second, demo=False, fraud_cases=False), raise_server_exceptions=False) as b:
        assert a.post("/items", json=item).status_code == 201
        assert not second.has_item("r1")  # the second worker has not looked yet ...
        r = b.post("/items", json=item)  # ... and its retry is still a retry
        assert r.status_code == 200 and r.json()["item_id"] == "r1", r.text
        # removed through one worker, then sent again through the other, which still serves it: added again
        assert a.delete("/items/r1").status_code == 200
        assert second.has_item("r1")
        assert b.post("/items", json=item).status_code == 201
        batch = [{"item_id": f"b{k}", "title": f"kite {k}"} for k in range(3)]
        r = a.post("/items/batch", json={"items": batch})
        assert r.status_code == 201 and r.json()["added"] == 3
        r = b.post("/items/batch", json={"items": batch + [{"item_id": "b3", "title": "kite 3"}]})
        assert r.status_code == 201 and r.json()["added"] == 1, r.text  # b0-b2 were the first worker's
    lines = [json.loads(line)["op"] for line in (copy / "catalogue.jsonl").read_text().splitlines()]
    assert lines == ["add", "remove", "add", "add_batch", "add_batch"]


def test_items_are_added_and_removed_over_http_and_kept_in_the_run(writable):
    r = writable.post("/items", json={"item_id": "new1", "title": "glow in the dark frisbee", "category": "toys",
                                      "price": 9.5})
    assert r.status_code == 201, r.text
    assert r.json() == {"item_id": "new1", "title": "glow in the dark frisbee", "category": "toys",
                        "description": "", "price": 9.5, "image": None, "image_url": None}
    png = solid_png((20, 220, 20), seed=5)
    r = writable.post("/items", data={"item_id": "new2", "title": "green disc", "price": "4"},
                      files={"image": ("disc.png", png, "image/png")})
    assert r.status_code == 201, r.text
    assert r.json()["price"] == 4.0 and r.json()["image"].endswith(".png")
    added = r.json()
    for price in ({"json": {"item_id": "zero", "title": "free sample", "price": -0.0}},
                  _form(("item_id", None, b"zero"), ("title", None, b"free sample"), ("price", None, b"-0.00"))):
        r = writable.post("/items", **price)  # a form's "-0" as JSON's -0.0: zero, not a negative zero
        assert r.status_code == 201 and json.dumps(r.json()["price"]) == "0.0", r.text
        assert writable.delete("/items/zero").status_code == 200
    # a retried write that went through (a timeout, a lost answer): the same item back, a 200, nothing written again
    journal = (writable.run / "catalogue.jsonl").read_bytes()
    r = writable.post("/items", data={"item_id": "new2", "title": "green disc", "price": "4"},
                      files={"image": ("again.png", png, "image/png")})
    assert r.status_code == 200 and r.json() == added
    with pytest.warns(UserWarning, match="stripped leading/trailing spaces"):
        r = writable.post("/items", json={"item_id": " new1", "title": "glow in the dark frisbee", "price": 9.5})
    assert r.status_code == 200 and r.json()["category"] == "toys"  # a field left out is not sent: no clash
    r = writable.post("/items", json={"item_id": "new1", "title": "glow in the dark frisbee", "category": "games",
                                      "price": 9})
    assert r.status_code == 409 and r.json() == {
        "error": "duplicate_id", "ids": ["new1"],
        "detail": "item_id: item 'new1' already exists, with another category and price (sending it again as it is, "
                  "a retry, adds nothing and is not refused)"}
    r = writable.post("/items", json={"item_id": "new2", "title": "green disc", "price": 4})  # no picture: kept
    assert r.status_code == 200 and r.json() == added
    assert (writable.run / "catalogue.jsonl").read_bytes() == journal
    assert writable.service.item_ids.count("new2") == 1
    # the picture over HTTP: image_url, not the server's path
    assert added["image_url"] == "/images/new2"
    got = writable.get(r.json()["image_url"])
    assert got.status_code == 200 and got.content == png and got.headers["content-type"] == "image/png"
    assert writable.get("/images/new1").json()["detail"] == "item_id: item 'new1' has no image"
    assert writable.get("/images/new1").status_code == 404
    assert writable.get("/images/nope").status_code == 404
    assert writable.get("/images/new2?size=9").status_code == 422
    head = writable.head("/images/new2")  # as CDNs and link checkers probe: the headers, no body
    assert head.status_code == 200 and head.headers["content-type"] == "image/png" and head.content == b""
    assert int(head.headers["content-length"]) == len(png)
    # a browser or CDN holding this very file asks again with its ETag: 304, no body
    etag = got.headers["etag"]
    again = writable.get("/images/new2", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert writable.get("/images/new2", headers={"If-None-Match": f'W/{etag}, "other"'}).status_code == 304
    assert writable.get("/images/new2", headers={"If-None-Match": '"stale"'}).content == png
    r = writable.post("/search", files={"image": ("q.png", solid_png((20, 220, 20), seed=6), "image/png")},
                      data={"k": "1"})
    assert [i["item_id"] for i in r.json()["items"]] == ["new2"]
    r = writable.get("/recommend", params={"user_id": "u000", "k": 3, "category": "toys"})
    assert [i["item_id"] for i in r.json()["items"]] == ["new1"]
    r = writable.get("/items/new1")
    assert r.status_code == 200 and r.json()["title"] == "glow in the dark frisbee" and r.json()["price"] == 9.5
    r = writable.get("/items/i003")
    info = writable.service.item_info("i003")
    assert r.status_code == 200 and r.json() == {**info, "image": "images/i003.png", "image_url": "/images/i003"}
    assert Path(info["image"]).is_absolute() and Path(info["image"]).as_posix().endswith("/images/i003.png")
    assert writable.get("/items/nope").json() == {"error": "unknown_item", "detail": "item_id: unknown item 'nope'",
                                                  "ids": ["nope"]}
    assert writable.get("/items/i003?verbose=1").status_code == 422
    got = writable.get("/images/i003")  # a trained item's picture, from the shop's tables
    assert got.status_code == 200 and got.content == Path(writable.service.item_info("i003")["image"]).read_bytes()
    # a version added to the URL to fetch it afresh (?v=...) is taken and ignored; other parameters are not
    assert writable.get("/images/i003", params={"v": "20251219"}).content == got.content
    r = writable.get("/images/i003", params={"size": "64"})
    assert r.status_code == 422 and r.json()["detail"].startswith("size: unknown parameter")
    r = writable.post("/items", json={"item_id": "new1", "title": "again"})
    assert r.status_code == 409 and r.json()["detail"].startswith("item_id: item 'new1' already exists, with another "
                                                                   "title")
    r = writable.delete("/items/i004")
    assert r.status_code == 200 and r.json() == {"item_id": "i004", "removed": True}
    assert writable.get("/similar", params={"item_id": "i004"}).status_code == 404
    assert writable.get("/items/i004").status_code == 404
    r = writable.delete("/items/i004")
    assert r.status_code == 404 and r.json()["detail"] == ("item_id: item 'i004' was removed from the catalogue "
                                                           "(adding it again serves it again)")
    health = writable.get("/healthz").json()
    assert health["catalogue"] == {"added": 2, "removed": 1, "journal": str(writable.run / "catalogue.jsonl"),
                                   "superseded": 0, "not_applied": [], "fault": None,
                                   "generation": 0}
    # a restarted server answers the same
    again = create_app(load_service(writable.run), demo=False, fraud_cases=False)
    with TestClient(again) as c:
        assert c.get("/healthz").json()["catalogue"] == health["catalogue"]
        assert c.get("/recommend", params={"user_id": "u000", "k": 3, "category": "toys"}).json()["items"][0][
            "item_id"] == "new1"


def test_a_batch_of_items_is_added_over_http_all_at_once(writable):
    import base64

    png = solid_png((20, 220, 20), seed=5)
    items = [{"item_id": "b1", "title": "glow in the dark frisbee", "category": "toys", "price": 9.5,
              "image_base64": base64.b64encode(png).decode()},
             {"item_id": " b2", "title": "heavy duty umbrella", "description": "for storms", "image_base64": None}]
    n = len(writable.service.item_ids)
    with pytest.warns(UserWarning, match=r"items\[1\]: item_id: stripped leading/trailing spaces"):
        r = writable.post("/items/batch", json={"items": items})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["added"] == 2 and [i["item_id"] for i in body["items"]] == ["b1", "b2"]  # ids stripped
    assert body["items"][1] == {"item_id": "b2", "title": "heavy duty umbrella", "category": "",
                                "description": "for storms", "price": None, "image": None,
                                "image_url": None}
    # the image named in the run folder, not by the server's path (which says how its disk is laid out)
    assert body["items"][0]["image"].startswith("added_images/") and body["items"][0]["price"] == 9.5
    assert (writable.run / body["items"][0]["image"]).read_bytes() == png
    assert writable.service.item_ids[n:n + 2] == ["b1", "b2"]
    assert writable.get("/items/b2").json() == body["items"][1]
    r = writable.post("/search", files={"image": ("q.png", solid_png((20, 220, 20), seed=6), "image/png")},
                      data={"k": "1"})
    assert [i["item_id"] for i in r.json()["items"]] == ["b1"]
    # a retry of a batch that went through (the same fields, the same picture): nothing added or written, a 200
    journal = (writable.run / "catalogue.jsonl").read_bytes()
    r = writable.post("/items/batch", json={"items": items[:1]})
    assert r.status_code == 200 and r.json() == {"added": 0, "items": body["items"][:1]}
    r = writable.post("/items/batch", json={"items": [{**items[0], "price": 8.5}]})  # another price: not a retry
    assert r.status_code == 409 and r.json()["detail"] == ("item_id: item 'b1' already exists, with another price "
                                                           "(sending it again as it is, a retry, adds nothing and is "
                                                           "not refused)")
    other = base64.b64encode(solid_png((20, 220, 20), seed=6)).decode()
    r = writable.post("/items/batch", json={"items": [{**items[0], "image_base64": other}]})
    assert r.status_code == 409 and "with another image" in r.json()["detail"]
    assert (writable.run / "catalogue.jsonl").read_bytes() == journal
    # base64 as clients write it: wrapped at 76 columns (GNU base64's default), or as a data: URL
    wrapped = base64.encodebytes(png).decode()
    assert "\n" in wrapped.strip()
    r = writable.post("/items/batch", json={"items": [
        {"item_id": "b3", "title": "wrapped picture", "image_base64": wrapped},
        {"item_id": "b4", "title": "data url picture", "image_base64": "data:image/png;base64," + items[0]["image_base64"]}]})
    assert r.status_code == 201, r.text
    assert [(writable.run / i["image"]).read_bytes() for i in r.json()["items"]] == [png, png]
    last = (writable.run / "catalogue.jsonl").read_bytes().splitlines()[-1]
    assert json.loads(last)["op"] == "add_batch" and len(json.loads(last)["items"]) == 2


def test_a_batch_of_items_is_removed_over_http_all_at_once(writable):
    assert writable.post("/items", json={"item_id": "sku/78", "title": "blue disc"}).status_code == 201
    n, removed = writable.service.indexes["gnn_items"].count, writable.get("/healthz").json()["catalogue"]["removed"]
    gone = ["i011", "sku/78", "i012"]
    r = writable.post("/items/remove", json={"item_ids": gone})
    assert r.status_code == 200, r.text
    assert r.json() == {"removed": 3, "item_ids": gone}
    assert writable.service.indexes["gnn_items"].count == n - 3
    for item_id in gone:
        assert writable.get(f"/items/{item_id}").status_code == 404
    last = (writable.run / "catalogue.jsonl").read_bytes().splitlines()[-1]
    assert json.loads(last)["op"] == "remove_batch" and json.loads(last)["item_ids"] == gone
    assert writable.get("/healthz").json()["catalogue"]["removed"] == removed + 2  # sku/78 was an added item


def test_a_visitors_removed_items_are_left_out_of_the_query_and_named(writable):
    """A visitor's recently viewed list can hold items removed since, as a cart can: /recommend/cold
    leaves them out, says which, and answers from the others; all of them removed is a 404."""
    before = writable.post("/recommend/cold", json={"item_ids": ["i021"], "k": 5}).json()
    assert writable.delete("/items/i022").status_code == 200
    r = writable.post("/recommend/cold", json={"item_ids": ["i021", "i022"], "k": 5})
    assert r.status_code == 200, r.text
    still = [i["item_id"] for i in before["items"] if i["item_id"] != "i022"]  # the query of i021 alone
    assert r.json()["left_out"] == ["i022"] and [i["item_id"] for i in r.json()["items"]][:len(still)] == still
    assert before["left_out"] == []
    r = writable.post("/recommend/cold", json={"item_ids": ["i022"], "k": 5})
    assert r.status_code == 404 and "'i022' was removed from the catalogue" in r.json()["detail"]
    r = writable.post("/recommend/cold", json={"item_ids": ["i021", "nope"], "k": 5})  # never served: not left out
    assert r.status_code == 404 and "unknown item 'nope'" in r.json()["detail"]
    # an unknown id beside a removed one: counted against all the ids given, the removed one named; with
    # nothing served left, "ids" lists the removed one too (dropping "nope" alone would get a second 404)
    r = writable.post("/recommend/cold", json={"item_ids": ["i022", "nope"], "k": 5})
    assert r.status_code == 404 and r.json()["ids"] == ["nope", "i022"], r.text
    assert r.json()["detail"] == ("item_ids: unknown item 'nope' (1 of the 2 ids given; 'i022' removed from the "
                                  "catalogue since, left out, and no served item would be left)")
    r = writable.post("/recommend/cold", json={"item_ids": ["i021", "i022", "nope"], "k": 5})
    assert r.status_code == 404 and r.json()["ids"] == ["nope"] and "1 of the 3 ids given" in r.json()["detail"]
    # the list is checked as given, before the removed ones are taken out: positions and size as sent
    r = writable.post("/recommend/cold", json={"item_ids": ["i022", 5], "k": 5})
    assert r.status_code == 422 and r.json()["detail"] == "item_ids[1]: expected a string id (got int 5)"
    r = writable.post("/recommend/cold", json={"item_ids": ["i022"] * 1000 + ["i021"], "k": 5})
    assert r.status_code == 422 and r.json()["detail"] == "item_ids: expected at most 1,000 ids (got 1,001)"
    # an item added at run time and removed since is one of them too (it was a 404 "unknown item")
    assert writable.post("/items", json={"item_id": "sku/9", "title": "green frisbee disc"}).status_code == 201
    assert writable.delete("/items/sku/9").status_code == 200
    r = writable.post("/recommend/cold", json={"item_ids": ["i021", "sku/9"], "k": 5})
    assert r.status_code == 200 and r.json()["left_out"] == ["sku/9"], r.text
    for path, params in (("/similar", {"item_id": "sku/9"}), ("/items/sku/9", {})):
        r = writable.get(path, params=params)
        assert r.status_code == 404 and "'sku/9' was removed from the catalogue" in r.json()["detail"], r.text
    # the Python API gives the same, in one step with the query
    service = writable.service
    rec = service.recommend_for_items(["i021", "i022", "sku/9"], k=5, leave_out_removed=True)
    alone = writable.post("/recommend/cold", json={"item_ids": ["i021"], "k": 5}).json()["items"]
    assert rec.left_out == ["i022", "sku/9"] and rec.item_ids == [i["item_id"] for i in alone]
    with pytest.raises(UnknownIdError, match="'i022', 'sku/9' were removed from the catalogue"):
        service.recommend_for_items(["i021", "i022", "sku/9"], k=5)  # without it: unknown ids, said so


def test_a_visitors_unknown_items_are_skipped_on_request_and_named(writable):
    """A storefront's recently viewed list can hold products it has not sent to POST /items yet:
    with "skip_unknown" they are left out of the query and named in "unknown" (each once, as given),
    the removed ones still in "left_out"; nothing left to recommend from is a 404 all the same."""
    alone = writable.post("/recommend/cold", json={"item_ids": ["i013"], "k": 5}).json()
    assert alone["unknown"] == []
    assert writable.delete("/items/i014").status_code == 200
    r = writable.post("/recommend/cold", json={"item_ids": ["nope", "i013", "i014", "nope", "sku 7"], "k": 5,
                                               "skip_unknown": True})
    assert r.status_code == 200, r.text
    assert (r.json()["unknown"], r.json()["left_out"]) == (["nope", "sku 7"], ["i014"])
    assert r.json()["items"] == alone["items"]  # the query of i013 alone
    for ids in (["nope"], ["nope", "i014"]):  # nothing served left: every one of them named
        r = writable.post("/recommend/cold", json={"item_ids": ids, "k": 5, "skip_unknown": True})
        assert r.status_code == 404 and r.json()["ids"] == ids, r.text
    r = writable.post("/recommend/cold", json={"text": "shoes", "k": 2, "skip_unknown": False})  # the default: fine
    assert r.status_code == 200 and r.json()["unknown"] == [], r.text
    r = writable.post("/recommend/cold", json={"text": "shoes", "skip_unknown": True})
    assert r.status_code == 422 and r.json()["detail"] == "skip_unknown: only with item_ids (a text has no ids to skip)"
    r = writable.post("/recommend/cold", json={"item_ids": ["i013"], "skip_unknown": "yes"})
    assert r.status_code == 422 and r.json()["detail"] == "skip_unknown: expected a boolean, true or false (got str 'yes')"
    # the Python API: without leave_out_removed a removed item is one of the unknown ones
    rec = writable.service.recommend_for_items(["i013", "i014", "nope"], k=5, skip_unknown=True)
    assert (rec.unknown, rec.left_out) == (["i014", "nope"], [])
    assert rec.item_ids == [i["item_id"] for i in alone["items"]]


def test_a_first_visit_gets_the_popular_items(client):
    """No account, nothing viewed, no words: the items most shoppers bought (the unknown user's 404
    on /recommend names the routes for a visitor)."""
    svc = client.service
    indptr = svc._buyers[0]
    buyers = {i: int(indptr[n + 1] - indptr[n]) for n, i in enumerate(svc.item_ids)}
    r = client.get("/recommend/popular", params={"k": 5})
    assert r.status_code == 200, r.text
    got = [(i["item_id"], i["score"], i["reason"]) for i in r.json()["items"]]
    want = sorted(buyers, key=lambda i: (-buyers[i], svc.item_ids.index(i)))[:5]
    assert [g[0] for g in got] == want and [g[1] for g in got] == [buyers[i] for i in want]
    assert got[0][2] == f"popular: bought by {buyers[want[0]]} shoppers"
    assert svc.popular(5).item_ids == want  # the Python API: the same
    category = svc.categories[svc.item_ids.index(want[0])]
    r = client.get("/recommend/popular", params=[("k", "3"), ("category", category), ("exclude", want[0]),
                                                 ("exclude", "nope")])
    assert r.status_code == 200 and want[0] not in [i["item_id"] for i in r.json()["items"]]
    assert {svc.categories[svc.item_ids.index(i["item_id"])] for i in r.json()["items"]} == {category}
    assert r.json()["exclude_not_served"] == ["nope"]
    for params, message in (({"k": 0}, "k: expected an integer between 1 and 1000"),
                            ({"category": "toys"}, "category: unknown category 'toys'"),
                            ({"user_id": "u001"}, "user_id: unknown parameter")):
        r = client.get("/recommend/popular", params=params)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    r = client.get("/recommend", params={"user_id": "visitor-7"})
    visitor = ("for a visitor the model does not know, POST /recommend/cold takes the items they viewed or their "
               "words, and GET /recommend/popular serves a first visit")
    assert r.status_code == 404 and r.json()["detail"] == f"user_id: unknown user 'visitor-7'; {visitor}"
    r = client.get("/recommend/new", params={"user_id": "visitor-7"})
    assert r.status_code == 404 and r.json()["detail"] == f"user_id: unknown user 'visitor-7'; {visitor}"
    r = client.post("/recommend/batch", json={"user_ids": ["u001", "visitor-7"]})
    assert r.status_code == 404 and r.json()["detail"] == (
        "user_ids: unknown user 'visitor-7' (1 of the 2 ids given); visitors with no account: POST /recommend/cold, "
        "GET /recommend/popular")
    r = client.get("/recommend/new", params=[("user_id", "u001"), ("exclude", "nope")])  # a cart, as elsewhere
    assert r.status_code == 200 and r.json()["exclude_not_served"] == ["nope"]


def test_a_visitors_list_can_be_filtered_by_category_and_cart(client):
    """A guest gets the filters a known user gets: one category, and the cart left out (it was a
    422 "unknown field")."""
    svc = client.service
    whole = svc.recommend_for_items(["i001", "i002"], k=8).item_ids
    category = svc.categories[svc.item_ids.index(whole[0])]
    for body, call in (({"item_ids": ["i001", "i002"]}, lambda **kw: svc.recommend_for_items(["i001", "i002"], 5, **kw)),
                       ({"text": "running shoes"}, lambda **kw: svc.recommend_for_text("running shoes", 5, **kw))):
        r = client.post("/recommend/cold", json={**body, "k": 5, "category": category, "exclude": [whole[0], "nope"]})
        assert r.status_code == 200, r.text
        got = [i["item_id"] for i in r.json()["items"]]
        assert got == call(category=category, exclude=[whole[0]]).item_ids and whole[0] not in got
        assert {svc.categories[svc.item_ids.index(i)] for i in got} <= {category}
        assert r.json()["exclude_not_served"] == ["nope"]
    r = client.post("/recommend/cold", json={"item_ids": ["i001"], "category": "toys"})
    assert r.status_code == 422 and "category: unknown category 'toys'" in r.json()["detail"]
    r = client.post("/recommend/cold", json={"item_ids": ["i001"], "exclude": "i002"})
    assert r.status_code == 422 and r.json()["detail"] == "exclude: expected a list of item ids (got str 'i002')"


def test_an_item_id_with_a_slash_is_removed_by_its_path(writable):
    assert writable.post("/items", json={"item_id": "sku/77", "title": "green disc"}).status_code == 201
    r = writable.delete("/items/sku/77")
    assert r.status_code == 200 and r.json() == {"item_id": "sku/77", "removed": True}
    assert not writable.service.has_item("sku/77")


@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("post", "/items", {"json": {"title": "no id"}}, 422, "item_id: required"),
    ("post", "/items", {"json": {"item_id": "n1"}}, 422, "title: required"),
    ("post", "/items", {"json": {"item_id": "", "title": "t"}}, 422, "item_id: expected a non-empty string"),
    ("post", "/items", {"json": {"item_id": 5, "title": "t"}}, 422, "item_id: expected a string (got int 5)"),
    ("post", "/items", {"json": {"item_id": "n1", "title": ["t"]}}, 422, "title: expected a string (got list"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "colour": "red"}}, 422,
     "colour: unknown field (expected item_id, title, category, description, price)"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "image": "x.png"}}, 422, "image: unknown field"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "price": -1}}, 422,
     "price: expected a finite number >= 0 (got int -1)"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "price": True}}, 422,
     "price: expected a finite number >= 0 (got bool True)"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "price": "3"}}, 422,
     "price: expected a finite number >= 0 (got str '3')"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t" * 2001}}, 422,
     "title: 2,001 characters, over the 2,000-character limit"),
    ("post", "/items", {"json": ["n1"]}, 422, "body: expected a JSON object like"),
    ("post", "/items", {"content": b"{", "headers": {"content-type": "application/json"}}, 422,
     "body: expected a JSON object"),
    ("post", "/items", {"content": b"n1", "headers": {"content-type": "text/csv"}}, 415,
     "content-type: expected application/json or multipart/form-data (got 'text/csv')"),
    ("post", "/items?dry_run=1", {"json": {"item_id": "n1", "title": "t"}}, 422, "dry_run: unknown parameter"),
    ("post", "/items", {"json": {"item_id": "i001", "title": "t"}}, 409,
     "item_id: item 'i001' already exists, with another title (sending it again as it is, a retry, adds nothing and is "
     "not refused)"),
    # an id or a category is one line: an id with a newline could not be named in a URL path again
    ("post", "/items", {"json": {"item_id": "x\ny", "title": "t"}}, 422,
     "item_id: expected one line of printable text (got 'x\\ny', a control character '\\n' at position 1)"),
    ("post", "/items", {"json": {"item_id": "x\u0000y", "title": "t"}}, 422, "item_id: expected one line"),
    ("post", "/items", {"json": {"item_id": "n1\u200b", "title": "t"}}, 422, "item_id: an invisible character"),
    ("post", "/items", _form(("item_id", None, b"x\xff"), ("title", None, b"t")), 422,
     "item_id: not valid UTF-8 (got b'x\\xff')"),
    ("delete", "/items/%FFx", {}, 422, "item_id: not valid UTF-8 (got the path b'/items/\\xffx')"),
    ("get", "/items/caf%E9", {}, 422, "item_id: not valid UTF-8 (got the path b'/items/caf\\xe9')"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "ctrl \u0007 bell"}}, 422,
     "title: a control character '\\x07' at position 5"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "category": "to\tys"}}, 422,
     "category: expected one line of printable text"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "t", "category": " Books "}}, 422,
     "category: 'Books' differs from the known category 'books' only in case, spacing, accents written apart or "
     "invisible characters; send "
     "'books' to file it there"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t"}, {"item_id": "n2\rx", "title": "t"}]}},
     422, "items[1]: item_id: expected one line of printable text"),
    # an invalid item and an id that exists: one answer names both (the id alone is a 409)
    ("post", "/items/batch", {"json": {"items": [{"item_id": "i001", "title": "t"}, {"item_id": "n2", "title": 5},
                                                 {"item_id": "n3", "title": "t"}, {"item_id": "i002", "title": "t"}]}},
     422, "3 of 4 items are not valid, nothing was added: items[0]: item_id 'i001' already exists, with another title; "
          "items[1]: title: expected a string (got int 5); items[3]: item_id 'i002' already exists, with another title"),
    ("post", "/items", {"data": {"item_id": "n1", "title": "t", "price": "cheap"}, "files": {"x": ("a", b"a")}}, 422,
     "x: unknown form field (expected item_id, title, category, description, price, image)"),
    ("post", "/items", {"data": {"item_id": "n1", "title": "t", "price": "cheap"},
                        "files": {"image": ("a.png", _PNG, "image/png")}}, 422,
     "price: expected a number >= 0 (got 'cheap')"),
    ("post", "/items", {"data": {"title": "t"}, "files": {"image": ("a.png", _PNG, "image/png")}}, 422,
     "item_id: required"),
    ("post", "/items", {"data": {"item_id": "n1", "title": "t"}, "files": {"image": ("a.png", b"nope", "image/png")}},
     422, "image: not a readable image"),
    ("post", "/items", {"data": {"item_id": "n1", "title": "t"},
                        "files": {"image": ("x.png", b"\x89PNG" + bytes(12 * 2**20), "image/png")}}, 413,
     "image: upload of 12.00 MB"),
    ("delete", "/items/nope", {}, 404, "item_id: unknown item 'nope'"),
    ("delete", "/items/i001?force=1", {}, 422, "force: unknown parameter"),
    ("post", "/items/batch", {"json": [{"item_id": "n1", "title": "t"}]}, 422, 'body: expected a JSON object like '
                                                                              '{"items": [{"item_id": "i900001"'),
    ("post", "/items/batch", {"json": {"item_id": "n1", "title": "t"}}, 422,
     "item_id: unknown field (expected items)"),
    ("post", "/items/batch", {"json": {}}, 422, "items: expected a list of items like"),
    ("post", "/items/batch", {"json": {"items": []}}, 422, "items: expected 1 to 1,000 items (got 0)"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": f"n{k}", "title": "t"} for k in range(1001)]}}, 422,
     "items: expected 1 to 1,000 items (got 1,001)"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t"}, "n2", {"item_id": "n3"},
                                                 {"item_id": "n4", "title": "t", "price": "3"},
                                                 {"item_id": "n5", "title": "t", "image_base64": "@@"},
                                                 {"item_id": "n6", "title": "t", "image_base64": "bm9wZQ=="},
                                                 {"item_id": "n7", "title": "t", "image": "x.png"}]}}, 422,
     "6 of 7 items are not valid, nothing was added: items[1]: expected an object like {\"item_id\": \"i900001\", "
     "\"title\": \"red running shoes\", \"category\": \"shoes\", \"price\": 59.0} (got str); items[2]: title: "
     "required; items[3]: price: expected a finite number >= 0 (got str '3'); items[4]: image_base64: not valid "
     "base64 (the character '@' at position 0, line breaks left out; base64 is A-Z, a-z, 0-9, '+', '/' and '='"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t", "image_base64": "bm9wZQ="}]}}, 422,
     "items[0]: image_base64: not valid base64 (Incorrect padding; 7 characters, line breaks left out)"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t", "image_base64": "bm9wZQ=="}]}}, 422,
     "1 of 1 items are not valid, nothing was added: items[0]: image: not a readable image (4 bytes"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t"}, {"item_id": "n1", "title": "u"}]}},
     422, "items[1]: item_id 'n1' is also items[0]"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "i001", "title": "t"}, {"item_id": "n1", "title": "u"},
                                                 {"item_id": "i002", "title": "v"}]}}, 409,
     "item_id: 2 of the 3 items exist already with other fields, nothing was added: items[0] 'i001' (another title), "
     "items[2] 'i002' (another title)"),
    ("post", "/items/batch", {"content": b"x" * (32 * 2**20 + 1), "headers": {"content-type": "application/json"}},
     413, "body: over the 33,554,432-byte limit of a batch of items"),
    ("post", "/items/batch", {"data": {"item_id": "n1", "title": "t"}, "files": {"image": ("a.png", _PNG)}}, 415,
     "content-type: expected application/json (got 'multipart/form-data"),
    ("post", "/items/batch?k=1", {"json": {"items": [{"item_id": "n1", "title": "t"}]}}, 422,
     "k: unknown parameter"),
    ("post", "/items/remove", {"json": ["i001"]}, 422, 'body: expected a JSON object like {"item_ids": ["i000007"'),
    ("post", "/items/remove", {"json": {"item_id": "i001"}}, 422, "item_id: unknown field (expected item_ids)"),
    ("post", "/items/remove", {"json": {}}, 422, 'item_ids: expected a list of ids like {"item_ids": ["i000007", '
                                                 '"i000100"]} (got nothing)'),
    ("post", "/items/remove", {"json": {"item_ids": "i001"}}, 422, "item_ids: expected a list of ids like"),
    ("post", "/items/remove", {"json": {"item_ids": []}}, 422, "item_ids: expected 1 to 1,000 ids (got 0)"),
    ("post", "/items/remove", {"json": {"item_ids": ["i001", 7]}}, 422,
     "item_ids[1]: expected a string id (got int 7)"),
    ("post", "/items/remove", {"json": {"item_ids": ["i001", "i002", "i001"]}}, 422,
     "item_ids[2]: 'i001' is also item_ids[0]"),
    ("post", "/items/remove", {"json": {"item_ids": ["i001", "nope", "i002"]}}, 404,
     "item_ids: 1 of the 3 items are not served, nothing was removed: 'nope'"),
    ("post", "/items/remove", {"content": b"x" * (2**20 + 1), "headers": {"content-type": "application/json"}},
     413, "body: over the 1,048,576-byte limit of a list of ids"),
    ("post", "/items/remove", {"data": {"item_ids": "i001"}}, 415, "content-type: expected application/json"),
    # an image of absurd aspect ratio: refused before it is decoded or resized, by any route
    ("post", "/items", {"data": {"item_id": "n1", "title": "t"}, "files": {"image": ("thin.png", _THIN, "image/png")}},
     422, "image: " + _THIN_SAID),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t"}, {
        "item_id": "n2", "title": "t", "image_base64": __import__("base64").b64encode(_THIN).decode()}]}}, 422,
     "1 of 2 items are not valid, nothing was added: items[1]: image: " + _THIN_SAID),
    # JSON nested too deeply, keys given twice, lone surrogates
    ("post", "/items", _raw_json(_deep(5000, "price", item_id="n1", title="t")), 422, _NESTED),
    ("post", "/items/batch", _raw_json(_deep(5000, "items")), 422, _NESTED),
    ("post", "/items/batch", _raw_json('{"items": [{"item_id": "n1", "title": "t", "price": ' + "[" * 40 + "]" * 40
                                       + "}]}"), 422, _NESTED),
    ("post", "/items/remove", _raw_json(_deep(5000, "item_ids")), 422, _NESTED),
    ("post", "/items", _raw_json('{"item_id": "n1", "title": "t", "title": "u"}'), 422,
     "title: given more than once (expected one value)"),
    ("post", "/items/batch", _raw_json('{"items": [{"item_id": "n1", "item_id": "n2", "title": "t"}]}'), 422,
     "items[0].item_id: given more than once"),
    ("post", "/items/remove", _raw_json('{"item_ids": ["i001"], "item_ids": ["i002"]}'), 422,
     "item_ids: given more than once (expected one value)"),
    ("post", "/items", _raw_json('{"item_id": "n1", "title": "\\ud800"}'), 422,
     "title: not valid Unicode (a lone surrogate at position 0)"),
    ("post", "/items", _raw_json('{"item_id": "n\\ud800", "title": "t"}'), 422,
     "item_id: not valid Unicode (a lone surrogate at position 1)"),
    ("post", "/items", _raw_json('{"item_id": "n1", "title": "t", "category": "\\udfff"}'), 422,
     "category: not valid Unicode"),
    ("post", "/items", _raw_json('{"item_id": "n1", "title": "t", "description": "ok \\ud800"}'), 422,
     "description: not valid Unicode (a lone surrogate at position 3)"),
    ("post", "/items/batch", _raw_json('{"items": [{"item_id": "n1", "title": "t"}, {"item_id": "n2", "title": "t", '
                                       '"description": "\\ud800"}]}'), 422,
     "items[1].description: not valid Unicode (a lone surrogate at position 0)"),
    ("post", "/items/remove", _raw_json('{"item_ids": ["i001", "\\ud800"]}'), 422,
     "item_ids[1]: not valid Unicode (a lone surrogate at position 0)"),
    # a price past a float's range: refused by name, not an OverflowError (a 500)
    ("post", "/items", _raw_json('{"item_id": "n_big", "title": "t", "price": 1' + "0" * 400 + "}"), 422,
     "price: expected a finite number >= 0 (got int 1000000000"),
    ("post", "/items/batch", _raw_json('{"items": [{"item_id": "n_big", "title": "t", "price": 1' + "0" * 400
                                       + "}]}"), 422, "items[0]: price: expected a finite number >= 0 (got int 1000"),
    ("post", "/items", _raw_json('{"item_id": "n1", "title": "t", "price": 1e400}'), 422,
     "price: expected a finite number >= 0 (got float inf)"),
    # a title is required: an empty one or only spaces is no title
    ("post", "/items", {"json": {"item_id": "n1", "title": ""}}, 422, "title: expected some text (got '')"),
    ("post", "/items", {"json": {"item_id": "n1", "title": "   ", "description": "d"}}, 422,
     "title: expected some text (got '   ')"),
    ("post", "/items", {"data": {"item_id": "n1", "title": " "}, "files": {"image": ("a.png", _PNG, "image/png")}},
     422, "title: expected some text (got ' ')"),
    ("post", "/items/batch", {"json": {"items": [{"item_id": "n1", "title": "t"}, {"item_id": "n2", "title": "\t"}]}},
     422, "1 of 2 items are not valid, nothing was added: items[1]: title: expected some text (got '\\t')"),
    # a form's price is a plain number, as in JSON
    *[("post", "/items", _form(("item_id", None, b"n1"), ("title", None, b"t"), ("price", None, raw)), 422,
       f"price: expected a number >= 0 (got {raw.decode()!r})")
      for raw in (b"1_000", b"-1", b"inf", b"nan", b"0x10", b"1e", b"5 5", b"\xef\xbc\x95", b".")],
    ("post", "/items", _form(("item_id", None, b"n1"), ("title", None, b"t"), ("price", None, b"1e400")), 422,
     "price: expected a finite number >= 0 (got float inf)"),
    # a text field over 1 MB is a 413 naming it (the parser's own limit was an anonymous 400)
    ("post", "/items", _form(("item_id", None, b"n1"), ("title", None, b"t"), ("description", None, b"d" * (2**20 + 1))),
     413, "description: a text field of 1.00 MB (1,048,577 bytes) is over the 1 MB limit (1,048,576 bytes)"),
    ("post", "/items", _form(("item_id", None, b"n1"), ("title", None, b"t"), ("description", None, b"d" * 2001)),
     422, "description: 2,001 characters, over the 2,000-character limit"),
    ("post", "/search", _form(("image", "x.png", _PNG), ("text", None, b"x" * 2**20 * 2)), 413,
     "text: a text field of 2.00 MB (2,097,152 bytes) is over the 1 MB limit"),
])
def test_bad_catalogue_changes_are_4xx_and_change_nothing(writable, method, url, kwargs, status, message):
    before = (writable.service.item_ids.copy(), (writable.run / "catalogue.jsonl").exists()
              and (writable.run / "catalogue.jsonl").read_bytes())
    r = getattr(writable, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert (writable.service.item_ids, (writable.run / "catalogue.jsonl").exists()
            and (writable.run / "catalogue.jsonl").read_bytes()) == before


def test_a_form_price_is_a_plain_number_and_an_empty_file_input_is_no_image(writable):
    for raw, price in ((b"5", 5.0), (b"007.50", 7.5), (b"1e2", 100.0), (b"0", 0.0), (b"", None), (b" ", None),
                       (b" 12.5\r\n", 12.5), (b".5", 0.5), (b"12.", 12.0), (b"+3", 3.0)):
        item_id = f"form_price_{raw.hex()}"
        r = writable.post("/items", **_form(("item_id", None, item_id.encode()), ("title", None, b"a price"),
                                           ("price", None, raw)))
        assert r.status_code == 201, r.text
        assert r.json()["price"] == price
    # a browser's file input left empty: filename="" and no bytes; or no filename at all
    for n, part in enumerate([("image", "", b""), ("image", None, b"")]):
        r = writable.post("/items", **_form(("item_id", None, f"no_pic{n}".encode()), ("title", None, b"t"), part))
        assert r.status_code == 201, r.text
        assert r.json()["image"] is None
    # a named file with no bytes is still an empty upload
    r = writable.post("/items", **_form(("item_id", None, b"no_pic9"), ("title", None, b"t"), ("image", "a.png", b"")))
    assert r.status_code == 422 and r.json()["detail"] == "image: the upload is empty (got 0 bytes)"
    r = writable.post("/items", **_form(("item_id", None, b"no_pic9"), ("title", None, b"t"), ("image", None, b"x")))
    assert r.status_code == 422 and r.json()["detail"] == "image: expected a file, not a text field"


def test_a_journal_that_cannot_be_written_is_a_503_and_changes_nothing(writable, monkeypatch):
    from shopgraph.retrieval.catalogue import CatalogueJournal

    def full_disk(self, entry, digest=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CatalogueJournal, "append", full_disk)
    n = len(writable.service.item_ids)
    r = writable.post("/items", json={"item_id": "n9", "title": "t"})
    assert r.status_code == 503
    assert r.json()["detail"] == ("catalogue: the change could not be written to the run's journal "
                                  "(No space left on device); nothing was changed")
    assert writable.delete("/items/i002").status_code == 503
    r = writable.post("/items/batch", json={"items": [{"item_id": "n9", "title": "t"}, {"item_id": "n10", "title": "u"}]})
    assert r.status_code == 503 and r.json()["detail"].endswith("nothing was changed")
    assert len(writable.service.item_ids) == n and writable.service.has_item("i002")


# -- POST /recommend/cold: visitors the model does not know ---------------------------------------
def test_a_null_field_is_one_not_given(client):
    """What a client generated from the schema sends for an optional field it leaves unset: the
    default (k 10, reasons true, exclude_seen true), never a 422 "got None"."""
    r = client.post("/search", json={"text": "running shoes", "k": None})
    assert r.status_code == 200 and r.json()["k"] == 10
    r = client.post("/recommend/batch", json={"user_ids": ["u001"], "k": None, "exclude_seen": None,
                                              "category": None, "exclude": None})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["items"] == client.post("/recommend/batch", json={"user_ids": ["u001"]}).json()[
        "results"][0]["items"]
    r = client.post("/fraud/score/batch", json={"user_ids": ["u001"], "reasons": None})
    assert r.status_code == 200 and r.json()["scores"][0]["reasons"]  # reasons by default
    r = client.post("/recommend/cold", json={"item_ids": ["i001"], "n_seeds": None, "k": None})
    assert r.status_code == 200 and r.json()["k"] == 10
    # a required one given as null is missing, and said so
    r = client.post("/search", json={"text": None})
    assert r.status_code == 422 and "text" in r.json()["detail"]
    r = client.post("/recommend/batch", json={"user_ids": None})
    assert r.status_code == 422 and "user_ids" in r.json()["detail"]


def test_cold_start_over_http_is_the_service_answer(client):
    r = client.post("/recommend/cold", json={"item_ids": ["i001", "i002"], "k": 5})
    assert r.status_code == 200, r.text
    rec = client.service.recommend_for_items(["i001", "i002"], 5)
    assert r.json()["item_ids"] == ["i001", "i002"] and r.json()["text"] is None and r.json()["k"] == 5
    assert [i["item_id"] for i in r.json()["items"]] == rec.item_ids
    assert [i["reason"] for i in r.json()["items"]] == rec.reasons
    assert not {"i001", "i002"} & {i["item_id"] for i in r.json()["items"]}
    r = client.post("/recommend/cold", json={"text": "running shoes", "k": 4, "n_seeds": 3})
    assert r.status_code == 200, r.text
    rec = client.service.recommend_for_text("running shoes", 4, 3)
    assert r.json()["text"] == "running shoes" and r.json()["item_ids"] is None
    assert [i["item_id"] for i in r.json()["items"]] == rec.item_ids
    assert all(i["reason"] == "matches your text" or i["reason"].endswith("(matches your text)")
               for i in r.json()["items"])
    assert client.post("/recommend/cold", json={"text": "running shoes"}).json()["k"] == 10
    # the unset one as null, as a client generated from the schema sends it: not given
    assert client.post("/recommend/cold", json={"item_ids": ["i001", "i002"], "text": None, "k": 5}).json()["items"] \
        == client.post("/recommend/cold", json={"item_ids": ["i001", "i002"], "k": 5}).json()["items"]
    assert client.post("/recommend/cold", json={"item_ids": None, "text": "running shoes", "k": 4, "n_seeds": 3}
                       ).json()["items"] == r.json()["items"]


@pytest.mark.parametrize("body, status, message", [
    ({"k": 5}, 422, "item_ids, text: expected one of them (got neither)"),
    ({"item_ids": None, "text": None}, 422, "item_ids, text: expected one of them (got neither)"),
    ({"text": None}, 422, "item_ids, text: expected one of them (got neither)"),
    ({"item_ids": ["i001"], "text": "shoes"}, 422, "item_ids, text: expected one of them (got both)"),
    ({"item_ids": []}, 422, "item_ids: expected at least one id (got an empty list)"),
    ({"item_ids": "i001"}, 422, "item_ids: expected a list of ids (got str 'i001')"),
    ({"item_ids": ["i001", "nope"]}, 404, "item_ids: unknown item 'nope' (1 of the 2 ids given)"),
    ({"item_ids": ["i001", 7]}, 422, "item_ids[1]: expected a string id (got int 7)"),
    ({"item_ids": ["i001"] * 1001}, 422, "item_ids: expected at most 1,000 ids (got 1,001)"),
    ({"item_ids": ["i001"], "n_seeds": 3}, 422, "n_seeds: only with text (the item_ids are the seeds)"),
    ({"item_ids": ["i001"], "k": 0}, 422, _K + " (got 0)"),
    ({"text": "shoes", "k": "5"}, 422, _K + " (got '5')"),
    ({"text": "shoes", "n_seeds": 1.0}, 422, "n_seeds: expected an integer between 1 and 1000 (got 1.0)"),
    ({"text": ""}, 422, "text: expected a non-empty query (got '')"),
    ({"text": ["shoes"]}, 422, "text: expected a string (got list"),
    ({"user_id": "u001"}, 422, "user_id: unknown field (expected item_ids, text, k, n_seeds, category, exclude, skip_unknown)"),
    (["i001"], 422, "body: expected a JSON object like {\"item_ids\""),
])
def test_bad_cold_start_bodies_are_4xx_naming_the_problem(client, body, status, message):
    r = client.post("/recommend/cold", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_cold_start_refuses_other_bodies(client):
    r = client.post("/recommend/cold", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith('body: expected a JSON object like {"item_ids"')
    r = client.post("/recommend/cold", data={"text": "shoes"})
    assert r.status_code == 415
    assert r.json()["detail"] == "content-type: expected application/json (got 'application/x-www-form-urlencoded')"
    r = client.post("/recommend/cold?k=3", json={"text": "shoes"})
    assert r.status_code == 422 and r.json()["detail"] == "k: unknown parameter (expected none)"
    r = client.post("/items", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith('body: expected a JSON object like {"item_id"')


# -- batches: POST /recommend/batch, POST /fraud/score/batch; GET /recommend/new -----------------------
def test_recommend_batch_is_each_users_own_answer_in_order(client):
    users = ["u004", "u001", "u004", "u010"]
    r = client.post("/recommend/batch", json={"user_ids": users, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 3 and [res["user_id"] for res in body["results"]] == users
    for res in body["results"]:
        assert res == client.get("/recommend", params={"user_id": res["user_id"], "k": 3}).json()
    r = client.post("/recommend/batch", json={"user_ids": ["u001", "u002"], "k": 2, "exclude_seen": False,
                                              "category": "books"})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        one = client.get("/recommend", params={"user_id": res["user_id"], "k": 2, "exclude_seen": "false",
                                               "category": "books"})
        assert res == one.json()
    assert client.post("/recommend/batch", json={"user_ids": ["u001"], "category": None}).json()["results"][0] == \
        client.get("/recommend", params={"user_id": "u001"}).json()


def test_similar_batch_is_each_items_own_answer_in_order(client):
    items = ["i003", "i001", "i003"]
    r = client.post("/similar/batch", json={"item_ids": items, "k": 4})
    assert r.status_code == 200, r.text
    assert r.json()["k"] == 4 and [res["item_id"] for res in r.json()["results"]] == items
    # /similar's answers, less its exclude_not_served (the batch takes no exclude)
    assert r.json()["results"] == [{key: v for key, v in client.get("/similar", params={"item_id": i, "k": 4}).json(
    ).items() if key != "exclude_not_served"} for i in items]
    assert client.post("/similar/batch", json={"item_ids": ["i002"]}).json()["results"][0]["k"] == 10


def test_fraud_score_batch_is_each_accounts_own_score_in_order(client):
    users = ["u002", "u001", "u002"]
    r = client.post("/fraud/score/batch", json={"user_ids": users})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 3 and [s["user_id"] for s in body["scores"]] == users
    assert body["scores"] == [client.get("/fraud/score", params={"user_id": u}).json() for u in users]
    assert body["flagged"] == sum(s["flagged"] for s in body["scores"])
    assert body["held_out_flagged"] == sum(bool(s["held_out_flagged"]) for s in body["scores"])
    r = client.post("/fraud/score/batch", json={"user_ids": users, "reasons": False})
    assert r.status_code == 200 and all(s["reasons"] == [] for s in r.json()["scores"])
    assert [s["probability"] for s in r.json()["scores"]] == [s["probability"] for s in body["scores"]]


def test_batches_can_answer_the_known_ids_and_name_the_unknown_ones(client):
    """An account that signed up since training sinks a whole batch with a 404; with
    "skip_unknown": true the known ids are answered and every unknown one is named, each once."""
    users = ["u004", "new-1", "u001", " new-1", "new-2"]  # " new-1" is new-1 again (ids are matched spaces aside)
    r = client.post("/recommend/batch", json={"user_ids": users, "k": 3})
    assert r.status_code == 404 and "unknown users 'new-1', 'new-2'" in r.json()["detail"]
    r = client.post("/recommend/batch", json={"user_ids": users, "k": 3, "skip_unknown": True,
                                              "exclude": {"u001": ["i001"], "new-2": ["i002"]}})
    assert r.status_code == 200, r.text
    assert r.json()["unknown"] == ["new-1", "new-2"] and [x["user_id"] for x in r.json()["results"]] == ["u004", "u001"]
    assert r.json()["results"][1] == client.get("/recommend", params={"user_id": "u001", "k": 3,
                                                                      "exclude": "i001"}).json()
    assert client.post("/recommend/batch", json={"user_ids": ["u004"]}).json()["unknown"] == []  # none asked for
    r = client.post("/recommend/batch", json={"user_ids": ["new-1"], "skip_unknown": True})
    assert r.status_code == 200 and r.json()["results"] == [] and r.json()["unknown"] == ["new-1"]
    r = client.post("/similar/batch", json={"item_ids": ["i003", "gone"], "k": 2, "skip_unknown": True})
    assert r.status_code == 200 and r.json()["unknown"] == ["gone"] and len(r.json()["results"]) == 1
    r = client.post("/fraud/score/batch", json={"user_ids": ["u002", "new-9"], "reasons": False, "skip_unknown": True})
    assert r.status_code == 200 and r.json()["unknown"] == ["new-9"] and r.json()["count"] == 1
    # ids that are not strings are refused all the same; so is a skip_unknown that is no JSON boolean
    r = client.post("/recommend/batch", json={"user_ids": ["u004", 7], "skip_unknown": True})
    assert r.status_code == 422
    r = client.post("/recommend/batch", json={"user_ids": ["u004"], "skip_unknown": "yes"})
    assert r.status_code == 422 and r.json()["detail"].startswith("skip_unknown:")


def test_fraud_score_batch_limits_reasons_the_model_works_out_per_account(client):
    """The shared run's GNN head serves: each account's reasons are integrated gradients, so 21
    accounts with reasons are refused and the same 21 without them are answered."""
    assert client.service.reasons_per_account_model
    users = client.service.user_ids[:21]
    r = client.post("/fraud/score/batch", json={"user_ids": users})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("reasons: this run's fraud scorer (gnn) works out each account's reasons")
    assert "at most 20 accounts a request (got 21)" in r.json()["detail"]
    r = client.post("/fraud/score/batch", json={"user_ids": users, "reasons": False})
    assert r.status_code == 200 and r.json()["count"] == 21
    assert client.post("/fraud/score/batch", json={"user_ids": users[:20]}).status_code == 200


_LONG_IDS = [f"customer-{k:06d}-" + "x" * 60 for k in range(1000)]  # 77 kB of JSON: over the 64 kB of a query


@pytest.mark.parametrize("url, body, status, message", [
    ("/recommend/batch", {"user_ids": ["u001", "nobody", "u002", "ghost", "nobody"]}, 404,
     "user_ids: unknown users 'nobody', 'ghost' (3 of the 5 ids given, 1 of them repeats)"),
    ("/recommend/batch", {"user_ids": ["U001", "u002", "ghost", " I002"]}, 404,
     "user_ids: unknown users 'U001', 'ghost', ' I002' (3 of the 4 ids given); did you mean 'u001' for 'U001'? ids "
     "are case-sensitive"),
    ("/similar/batch", {"item_ids": ["I002"]}, 404, "item_ids: unknown item 'I002' (1 of the 1 ids given); did you "
                                                    "mean 'i002' for 'I002'?"),
    ("/similar/batch", {"item_ids": ["I002", "\u0456003"]}, 404,
     "item_ids: unknown items 'I002', '\u0456003' (2 of the 2 ids given); did you mean 'i002' for 'I002', 'i003' for "
     "'\u0456003'? ids are case-sensitive; ids must match exactly, and '\u0456' is U+0456 CYRILLIC SMALL LETTER "
     "BYELORUSSIAN-UKRAINIAN I"),
    ("/recommend/batch", {"user_ids": ["u001"] * 101, "k": 1000}, 422,
     "k: 101 user_ids × k=1,000 asks for 101,000 results, over the 100,000 one batch answers; send at most 100 ids "
     "a batch at this k"),
    ("/similar/batch", {"item_ids": ["i001"] * 201, "k": 500}, 422,
     "k: 201 item_ids × k=500 asks for 100,500 results, over the 100,000 one batch answers; send at most 200 ids"),
    ("/recommend/batch", {"user_ids": _LONG_IDS}, 404, "user_ids: unknown users 'customer-000000-"),
    ("/recommend/batch", {"user_ids": []}, 422, "user_ids: expected at least one id (got an empty list)"),
    ("/recommend/batch", {"user_ids": ["u001"] * 1001}, 422, "user_ids: expected at most 1,000 ids (got 1,001)"),
    ("/recommend/batch", {"user_ids": "u001"}, 422, "user_ids: expected a list of ids like {\"user_ids\""),
    ("/recommend/batch", {"k": 3}, 422, "user_ids: expected a list of ids like {\"user_ids\": [\"u000001\", "
                                        "\"u000042\"], \"k\": 10} (got nothing)"),
    ("/recommend/batch", {"user_ids": ["u001", 42]}, 422, "user_ids[1]: expected a string id (got int 42)"),
    ("/recommend/batch", {"user_ids": ["u001"], "k": "5"}, 422, _K + " (got '5')"),
    ("/recommend/batch", {"user_ids": ["u001"], "k": 1001}, 422, _K + " (got 1001)"),
    ("/recommend/batch", {"user_ids": ["u001"], "exclude_seen": "false"}, 422,
     "exclude_seen: expected a boolean, true or false (got str 'false')"),
    ("/recommend/batch", {"user_ids": ["u001"], "category": ""}, 422,
     "category: expected a category name, or null for every category (got '')"),
    ("/recommend/batch", {"user_ids": ["u001"], "category": 3}, 422,
     "category: expected a category name, or null for every category (got 3)"),
    ("/recommend/batch", {"user_ids": ["u001"], "category": "toys"}, 422, "category: unknown category 'toys'"),
    ("/recommend/batch", {"user_ids": ["u001"], "user_id": "u002"}, 422,
     "user_id: unknown field (expected user_ids, k, exclude_seen, category, exclude, skip_unknown)"),
    ("/recommend/batch", ["u001"], 422, "body: expected a JSON object like {\"user_ids\""),
    ("/recommend/batch", {"user_ids": ["u" + "x" * 1999] * 8500}, 413,
     "body: over the 16,777,216-byte limit of a list of ids and their carts"),
    ("/similar/batch", {"item_ids": ["i" + "x" * 1100] * 1000}, 413,
     "body: over the 1,048,576-byte limit of a list of ids"),
    ("/similar/batch", {"item_ids": ["nope", "i001", "gone"]}, 404,
     "item_ids: unknown items 'nope', 'gone' (2 of the 3 ids given)"),
    ("/similar/batch", {"item_ids": ["i001"], "k": 0}, 422, _K + " (got 0)"),
    ("/similar/batch", {"item_ids": []}, 422, "item_ids: expected at least one id (got an empty list)"),
    ("/similar/batch", {"item_ids": "i001"}, 422, "item_ids: expected a list of ids like {\"item_ids\""),
    ("/similar/batch", {"item_ids": ["i001"], "user_ids": ["u001"]}, 422,
     "user_ids: unknown field (expected item_ids, k, skip_unknown)"),
    ("/fraud/score/batch", {"user_ids": ["u001", "zz"]}, 404, "user_ids: unknown user 'zz' (1 of the 2 ids given)"),
    ("/fraud/score/batch", {"user_ids": []}, 422, "user_ids: expected at least one id (got an empty list)"),
    ("/fraud/score/batch", {"user_ids": ["u001", ""]}, 422, "user_ids[1]: expected a non-empty id (got '')"),
    ("/recommend/batch", {"user_ids": ["  "]}, 422, "user_ids[0]: expected a non-empty id (got '  ')"),
    ("/fraud/score/batch", {"user_ids": ["u001"], "reasons": "no"}, 422,
     "reasons: expected a boolean, true or false (got str 'no')"),
    ("/fraud/score/batch", {"user_ids": ["u001"], "k": 3}, 422, "k: unknown field (expected user_ids, reasons, skip_unknown)"),
    # null is "not given" for a field the route takes, not a pass for a misspelt one
    ("/fraud/score/batch", {"user_ids": ["u001"], "reason": None}, 422,
     "reason: unknown field (expected user_ids, reasons, skip_unknown)"),
    ("/fraud/score/batch", {"user_id": "u001"}, 422, "user_id: unknown field (expected user_ids, reasons, skip_unknown)"),
    ("/items/remove", {"item_ids": _LONG_IDS}, 404, "item_ids: 1,000 of the 1,000 items are not served"),
])
def test_bad_batch_bodies_are_4xx_naming_the_problem(client, url, body, status, message):
    r = client.post(url, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert len(r.json()["detail"]) < 1000


@pytest.mark.parametrize("url, ids", [("/recommend/batch", "user_ids"), ("/fraud/score/batch", "user_ids"),
                                       ("/similar/batch", "item_ids")])
def test_batch_routes_take_json_only_and_no_query(client, url, ids):
    r = client.post(url, data={ids: "u001"})
    assert r.status_code == 415
    assert r.json()["detail"] == "content-type: expected application/json (got 'application/x-www-form-urlencoded')"
    r = client.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(f'body: expected a JSON object like {{"{ids}"')
    r = client.post(url + "?k=3", json={ids: ["i001" if ids == "item_ids" else "u001"]})
    assert r.status_code == 422 and r.json()["detail"] == "k: unknown parameter (expected none)"


def test_recommend_new_ranks_only_the_items_added_since_training(client, writable):
    r = client.get("/recommend/new", params={"user_id": "u001"})
    assert r.status_code == 200 and r.json() == {"user_id": "u001", "k": 10, "items": [],  # nothing added
                                                 "exclude_not_served": []}
    for item_id, title in (("fresh1", "trail running shoes"), ("fresh2", "a cookbook of soups")):
        assert writable.post("/items", json={"item_id": item_id, "title": title, "category": "books"}).status_code == 201
    r = writable.get("/recommend/new", params={"user_id": "u003", "k": 1000})
    assert r.status_code == 200, r.text
    rec = writable.service.recommend_new("u003", 1000)
    assert [i["item_id"] for i in r.json()["items"]] == rec.item_ids
    assert {"fresh1", "fresh2"} <= set(rec.item_ids) and set(rec.item_ids) <= set(writable.service.item_ids[30:])
    assert all(i["reason"].startswith("new since the last training run; ") for i in r.json()["items"])
    r = writable.get("/recommend/new", params={"user_id": "u003", "k": 1, "category": "books"})
    assert r.status_code == 200 and len(r.json()["items"]) == 1
    for params, status, message in (({"user_id": "nobody"}, 404, "user_id: unknown user 'nobody'"),
                                     ({"user_id": "u003", "k": "0"}, 422, _K + " (got '0')"),
                                     ({"user_id": "u003", "category": ""}, 422, "category: expected a non-empty value"),
                                     ({"user_id": "u003", "exclude_seen": "true"}, 422,
                                      "exclude_seen: unknown parameter (expected user_id, k, category, exclude)")):
        r = writable.get("/recommend/new", params=params)
        assert r.status_code == status and message in r.json()["detail"], r.text


def test_a_serving_process_makes_no_multiprocessing_lock_for_progress_bars(monkeypatch):
    """uvicorn stops workers without their finalizers: a multiprocessing semaphore made by a tqdm bar
    (the encoders', loading weights) was reported leaked at every shutdown."""
    import tqdm
    import tqdm.auto
    from tqdm.std import TqdmDefaultWriteLock

    from shopgraph.retrieval import api

    for bar in (tqdm.tqdm, tqdm.auto.tqdm):  # as after earlier bars in this process; restored afterwards
        monkeypatch.setattr(bar, "_lock", TqdmDefaultWriteLock(), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # leave FAISS's threads alone here
    api._serving_threads()
    for _ in tqdm.auto.tqdm([1], disable=True):
        pass
    assert not isinstance(tqdm.auto.tqdm.get_lock(), TqdmDefaultWriteLock)


def test_an_added_items_null_fields_are_left_out_and_its_category_stripped(writable):
    with pytest.warns(UserWarning, match=r"category: stripped leading/trailing spaces \(' books ' -> 'books'\)"):
        r = writable.post("/items", json={"item_id": "spaced-cat", "title": "a novel", "category": " books "})
    assert r.status_code == 201 and r.json()["category"] == "books"
    r = writable.post("/items", json={"item_id": "nulls", "title": "a thing", "category": None, "description": None,
                                      "price": None})
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in ("category", "description", "price")} == {"category": "", "description": "",
                                                                               "price": None}
    assert writable.post("/items/remove", json={"item_ids": ["spaced-cat", "nulls"]}).status_code == 200


def test_a_category_whose_items_were_all_removed_answers_empty_lists(writable):
    assert writable.post("/items", json={"item_id": "only-kite", "title": "a kite", "category": "kites"}).status_code == 201
    assert [i["item_id"] for i in writable.get("/recommend", params={"user_id": "u000", "category": "kites"}).json()[
        "items"]] == ["only-kite"]
    assert writable.delete("/items/only-kite").status_code == 200
    for url, params in (("/recommend", {"user_id": "u000", "category": "kites"}),
                        ("/recommend/new", {"user_id": "u000", "category": "kites"})):
        r = writable.get(url, params=params)
        assert r.status_code == 200 and r.json()["items"] == [], (url, r.text)
    r = writable.post("/recommend/batch", json={"user_ids": ["u000"], "category": "kites"})
    assert r.status_code == 200 and r.json()["results"][0]["items"] == []
    r = writable.get("/recommend", params={"user_id": "u000", "category": "kite"})
    assert r.status_code == 422 and r.json()["detail"].startswith("category: unknown category 'kite' (known: 'books'")


def test_invalid_json_is_named_where_the_parser_stopped(client):
    for body, got in ((b'{"text": "red shoes",}', "(got invalid JSON: Expecting property name enclosed in double "
                                                 "quotes: line 1 column 22)"),
                      (b"{'text': 'red shoes'}", "(got invalid JSON: Expecting property name enclosed in double "
                                                 "quotes: line 1 column 2)"),
                      (b'{"text": "red', "(got invalid JSON: Unterminated string starting at: line 1 column 10)"),
                      (b"\xff\xfe{", "(got invalid JSON: not UTF-8 text)")):
        r = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"].endswith(got), (body, r.text)


def test_json_without_nan_and_routes_that_do_not_exist_are_named(client):
    r = client.post("/search", content=b'{"text": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == (
        "body: NaN is not JSON (a number must be finite; JSON has no NaN or Infinity)")
    r = client.post("/recommend/batch", content=b'{"user_ids": ["u001"], "k": Infinity}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: Infinity is not JSON")
    # a number longer than Python reads (it raised a ValueError that read as "not UTF-8 text")
    r = client.post("/search", content=b'{"text": "a", "k": ' + b"1" * 5000 + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: a number of 5,000 digits (got '1111"), r.text
    assert r.json()["detail"].endswith("numbers here have at most 4,300")
    r = client.get("/recomend", params={"user_id": "u001"})
    assert r.status_code == 404 and r.json()["detail"] == (
        "path: no route '/recomend' (did you mean /recommend? the routes are listed at /docs)")
    r = client.get("/health")  # another service's name for it
    assert r.status_code == 404 and r.json()["detail"] == (
        "path: no route '/health' (did you mean /healthz? the routes are listed at /docs)")
    r = client.get("/item/i001")  # a route with a parameter: named with the value given
    assert r.status_code == 404 and r.json()["detail"] == (
        "path: no route '/item/i001' (did you mean /items/i001? the routes are listed at /docs)")
    from shopgraph.retrieval.api import _nearest_route

    routes = ["/fraud/rings", "/fraud/ring/{ring_id}", "/fraud/case/{ring_id}", "/fraud/device/{device_id}"]
    assert _nearest_route("/fraud/rings/R0001", routes) == "/fraud/ring/R0001"
    assert _nearest_route("/fraud/devices/d1", routes) == "/fraud/device/d1"
    assert _nearest_route("/fraud/ring/R0001/members", routes) is None
    assert _nearest_route("/fraud/case/", routes) == "/fraud/case/{ring_id}"  # the id left out: where it goes
    r = client.get("/nothing/like/it")
    assert r.status_code == 404 and r.json()["detail"] == "path: no route '/nothing/like/it' (the routes are listed at /docs)"
    r = client.put("/healthz")
    assert r.status_code == 405 and r.json()["detail"] == "method: PUT is not allowed on /healthz (allowed: GET, HEAD)"
    assert r.headers["allow"] == "GET, HEAD"
    r = client.put("/openapi.json")  # a route of FastAPI's own, not of the API
    assert r.status_code == 405 and r.json()["detail"] == "method: PUT is not allowed on /openapi.json (allowed: GET, HEAD)"
    r = client.post("/similar", params={"item_id": "i001"})
    assert r.status_code == 405 and r.json()["detail"] == "method: POST is not allowed on /similar (allowed: GET)"
    # a batch too large is said before its unknown ids
    r = client.post("/similar/batch", json={"item_ids": ["i001", "nope"] * 60, "k": 1000})
    assert r.status_code == 422 and r.json()["detail"].startswith("k: 120 item_ids × k=1,000 asks for 120,000 results")


def test_healthz_answers_head_for_probes(client):
    r = client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    assert client.get("/healthz").json()["status"] == "ok"


def test_every_answer_names_its_request_and_an_access_log_can_say_so(client, caplog):
    """X-Request-ID: a client's own is echoed, so its report and a log line can be matched; one
    that could forge a log line (spaces, over 128 characters) is replaced, as is none."""
    r = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/recommend", params={"user_id": "nobody"}).headers["x-request-id"]  # errors too
    assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
    for bad in ("two words", "x" * 129):
        assert client.get("/healthz", headers={"x-request-id": bad}).headers["x-request-id"] != bad
    app = create_app(client.service, demo=False, fraud_cases=False, access_log=True)
    with TestClient(app) as logged, caplog.at_level("INFO", logger="shopgraph.access"):
        logged.get("/recommend", params={"user_id": "u001", "k": 2}, headers={"x-request-id": "req-9"})
    line = [r.getMessage() for r in caplog.records if r.name == "shopgraph.access"]
    assert len(line) == 1 and line[0].startswith("GET /recommend 200 ") and line[0].endswith(" ms request_id=req-9")


def test_a_shop_site_named_by_cors_origin_may_call_the_api_from_the_browser(client):
    """``--cors-origin``: the named sites' pages read answers (errors and their codes too, and the
    request id); any other site's, and every site without the option, are not let in."""
    shop = "https://shop.example"
    with TestClient(create_app(client.service, demo=False, fraud_cases=False, cors_origins=[shop]),
                    raise_server_exceptions=False) as c:
        r = c.get("/recommend", params={"user_id": "u001", "k": 2}, headers={"origin": shop})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == shop
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = c.get("/recommend", params={"user_id": "nobody"}, headers={"origin": shop})
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == shop
        assert r.json()["error"] == "unknown_user"  # a browser's script can branch on it
        # the preflight a browser sends before a JSON POST
        r = c.options("/recommend/cold", headers={"origin": shop, "access-control-request-method": "POST",
                                                  "access-control-request-headers": "content-type"})
        assert r.status_code == 200 and "POST" in r.headers["access-control-allow-methods"]
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        r = c.get("/recommend", params={"user_id": "u001"}, headers={"origin": "https://other.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = c.options("/recommend/cold", headers={"origin": "https://other.example",
                                                  "access-control-request-method": "POST"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        # refused as every other error is: JSON naming what was not let in (a developer's curl sees it)
        assert r.json() == {"error": "cors_refused", "detail": "preflight refused: origin: 'https://other.example' "
                                                               "is not one of the sites this server lets in "
                                                               "(`serve --cors-origin`)"}
        assert r.headers["x-request-id"]
        r = c.options("/items/i001", headers={"origin": shop, "access-control-request-method": "PUT",
                                              "access-control-request-headers": "content-type, X-Api-Key"})
        assert r.status_code == 400 and r.json()["error"] == "cors_refused"
        assert r.headers["access-control-allow-origin"] == shop  # the site is let in; the request is not
        detail = r.json()["detail"]
        assert "method: 'PUT' is not one of GET, HEAD, POST, DELETE" in detail
        assert "headers: 'X-Api-Key' not allowed (allowed: " in detail and "x-request-id" in detail
        assert "origin" not in detail.split(";")[0]
        # an empty element of the list is none (RFC 9110): "content-type," is content-type
        r = c.options("/recommend/cold", headers={"origin": shop, "access-control-request-method": "POST",
                                                  "access-control-request-headers": "content-type,,x-request-id,"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == shop, r.text
    r = client.get("/recommend", params={"user_id": "u001"}, headers={"origin": shop})  # no --cors-origin
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(("given", "origin"), [
    ("https://Shop.Example", "https://shop.example"), (" http://localhost:3000 ", "http://localhost:3000"),
    ("*", "*"),
    # as a browser sends it: no default port, an empty port gone, a host of other scripts in ASCII
    ("https://shop.example:443", "https://shop.example"), ("http://shop.example:80", "http://shop.example"),
    ("https://shop.example:8443", "https://shop.example:8443"), ("https://shop.example:", "https://shop.example"),
    ("https://bücher.example", "https://xn--bcher-kva.example"), ("HTTP://[::1]:3000", "http://[::1]:3000"),
])
def test_cors_origins_are_written_as_browsers_send_them(given, origin):
    from shopgraph.retrieval.api import cors_origin

    assert cors_origin(given) == origin


@pytest.mark.parametrize(("given", "message"), [
    ("https://shop.example/", "without a path or trailing slash: https://shop.example (got 'https://shop.example/')"),
    ("https://shop.example/app", "without a path or trailing slash: https://shop.example"),
    ("shop.example", "expected an origin like https://shop.example or http://localhost:3000, or * for any "
                     "(got 'shop.example')"),
    ("ftp://shop.example", "expected an origin like"),
    ("https://shop.example:99999", "expected an origin like"),
    ("", "expected an origin like"),
    ("https://ex ample.com", "an origin has no spaces"),  # with --workers, the origins travel space-separated
    ("https://*.example", "give each site its own --cors-origin"),
])
def test_cli_refuses_a_cors_origin_no_browser_sends_before_loading_anything(tmp_path, capsys, given, message):
    from shopgraph.ui.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--run", str(tmp_path / "nowhere"), "--cors-origin", given])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --cors-origin: " in err and message in err and "Traceback" not in err


def test_cli_serve_hands_the_cors_origins_to_every_worker(tmp_path, monkeypatch):
    import argparse

    import uvicorn.supervisors

    from shopgraph.retrieval import api

    monkeypatch.setattr(api.ShopService, "from_run", lambda *a, **k: None)
    monkeypatch.setattr(api.CatalogueJournal, "read", lambda self: None)
    started: list[object] = []
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess",
                        lambda config, sockets: type("Workers", (), {"run": lambda self: started.append(config)})())
    for name in (api.CORS_ENV, api.RUN_ENV, api.ACCESS_LOG_ENV):  # set by _serve; put back after the test
        monkeypatch.delenv(name, raising=False)
    sock = api.listen("127.0.0.1", 0)
    try:
        args = argparse.Namespace(run=tmp_path, host="127.0.0.1", port=0, workers=2,
                                  cors_origin=["https://shop.example", "http://localhost:3000"])
        assert api._serve(tmp_path, args, sock) == 0
    finally:
        sock.close()
    assert started and api.os.environ[api.CORS_ENV] == "https://shop.example http://localhost:3000"


def test_each_worker_lets_in_the_origins_serve_handed_it(client, monkeypatch):
    from shopgraph.retrieval import api

    monkeypatch.setattr(api.ShopService, "from_run", lambda *a, **k: client.service)
    monkeypatch.setattr(api, "_serving_threads", lambda: None)
    monkeypatch.setattr(api, "_freeze_heap", lambda: None)
    monkeypatch.setenv(api.RUN_ENV, "run")
    monkeypatch.setenv(api.CORS_ENV, "https://shop.example http://localhost:3000")
    with TestClient(api.app_from_env()) as c:
        for origin in ("https://shop.example", "http://localhost:3000"):
            r = c.get("/healthz", headers={"origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"origin": "https://x.example"}).headers
        # a worker of several serves no demo (a visitor's queued events would reach the other workers): /demo
        # says why, and where to serve it, rather than a 404 or a page that fails half the time
        for path in ("/demo", "/demo/", "/demo/gradio_api/queue/join"):
            r = c.get(path)
            assert r.status_code == 503 and r.json()["error"] == "not_available", (path, r.text)
            assert "--workers 1" in r.json()["detail"]
