"""Checks every HTTP test here makes of the API's error answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shopgraph.retrieval.params import ERROR_CODES

# the status each error code comes with (docs/http_api.md, "Errors")
CODE_STATUS = {
    "unreadable_body": 400, "cors_refused": 400,
    "unknown_user": 404, "unknown_item": 404, "unknown_ring": 404, "unknown_device": 404, "no_image": 404,
    "no_route": 404,
    "method_not_allowed": 405,
    "duplicate_id": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "invalid_value": 422,
    "client_closed": 499,
    "not_available": 503, "journal_unwritable": 503, "journal_unreadable": 503,
}

# the codes whose answers list the ids they are about ("ids")
ABOUT_IDS = {"unknown_user", "unknown_item", "unknown_ring", "unknown_device", "no_image", "duplicate_id"}


@pytest.fixture(autouse=True)
def error_answers_carry_their_code(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every JSON error answer a test gets is ``{"error": <a code of its status>, "detail": ...}``,
    with ``"ids"`` (the ids it is about) for the codes of unknown and duplicate ids."""
    request = TestClient.request

    def checked(self: TestClient, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        r = request(self, method, url, *args, **kwargs)
        json_body = r.headers.get("content-type", "").startswith("application/json") and r.content
        ours = getattr(self.app, "title", None) == "ShopGraph API"  # not a bare FastAPI app a test builds
        if ours and r.status_code >= 400 and json_body and not str(url).startswith("/demo"):
            body = r.json()
            about_ids = body.get("error") in ABOUT_IDS
            assert list(body) == ["error", "detail", *(["ids"] if about_ids else [])], (method, url, body)
            assert CODE_STATUS.get(body["error"]) == r.status_code, (method, url, r.status_code, body)
            if about_ids:  # every id the error is about, each once; detail names (the first ten of) them
                ids = body["ids"]
                assert ids and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids), body
                assert repr(ids[0])[:20] in body["detail"] or repr(ids[0].strip())[:20] in body["detail"], body
        return r

    monkeypatch.setattr(TestClient, "request", checked)
    yield


def test_the_codes_the_checks_know_are_the_api_s() -> None:
    assert sorted(CODE_STATUS) == sorted(ERROR_CODES)
