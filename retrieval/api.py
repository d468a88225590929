"""The HTTP API: a thin FastAPI layer over :class:`~shopgraph.retrieval.service.ShopService`.

Endpoints (``docs/http_api.md``): ``GET /recommend``, ``POST /recommend/batch``, ``GET
/recommend/new``, ``GET /similar``, ``POST /similar/batch``, ``POST /search`` (JSON text or a
multipart image upload), ``POST /recommend/cold``, ``GET /fraud/score``, ``POST
/fraud/score/batch``, the catalogue (``POST /items``, ``POST /items/batch``, ``POST
/items/remove``, ``GET`` and ``DELETE /items/{id}``), ``GET /healthz``, ``GET /metrics``
(Prometheus text format), OpenAPI docs at ``/docs``; the Gradio app is mounted at ``/demo`` and
the fraud-case endpoints (``retrieval/fraud_api.py``) under ``/fraud`` when they are available.

Errors are JSON ``{"error": "<code>", "detail": "<argument>: <problem> (got <value>)"}`` (the codes:
``params.ErrorCode``): 404 for an unknown user or
item id, 409 for an item id the catalogue has, 422 for any other bad input (k not an integer in
1..1000, an unknown, repeated or empty parameter or field, empty text, unreadable image), 413 for
an image or JSON body over its size limit, 400 for a multipart body that cannot be parsed, 415
for an unsupported content type, 503 when the run lacks what the call needs or a catalogue change
could not be written to the run's journal (nothing changed). Bad input never yields a 500.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import difflib
import errno
import gc
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from shopgraph.graph.wording import ValueWords
from shopgraph.retrieval.catalogue import CatalogueError, CatalogueJournal
from shopgraph.retrieval.params import (
    ERROR_CODES,
    ApiError,
    ErrorOut,
    check_fields,
    error_code,
    field_name,
    parse_int,
    strict_query,
)
from shopgraph.retrieval.service import (
    IMAGE_LIMIT,
    K_MAX,
    MAX_BATCH,
    MAX_BATCH_RESULTS,
    MAX_IMAGE_BYTES,
    MAX_TEXT_CHARS,
    DuplicateIdError,
    FraudScore,
    NotAvailableError,
    Recommendation,
    ShopService,
    UnknownIdError,
    batch_problems,
    check_bool,
    check_k,
    key_path,
    lone_surrogate,
    once_each,
    shown,
)

logger = logging.getLogger(__name__)

RUN_ENV = "SHOPGRAPH_RUN"
ACCESS_LOG_ENV = "SHOPGRAPH_ACCESS_LOG"  # "1": each worker logs one line a request (`serve --access-log`)
GZIP_MIN_BYTES, GZIP_LEVEL = 1024, 5  # answers compressed from this size, at this zlib level (bench/bench_gzip.py)
CORS_ENV = "SHOPGRAPH_CORS_ORIGINS"  # the origins browsers may call from (`serve --cors-origin`), spaces between
access_logger = logging.getLogger("shopgraph.access")
# a request id a client sends is echoed when it is short printable ASCII (a log line must not be forged
# through it); otherwise, and when none is sent, one is made
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
MAX_JSON_BYTES = 64 * 1024  # a JSON query is at most 2,000 characters of text and k
MAX_BATCH_JSON_BYTES = 32 * 2**20  # POST /items/batch: up to 1,000 items, their images in base64
MAX_IDS_JSON_BYTES = 2**20  # a list of up to 1,000 ids (the batch routes of /similar, /fraud/score, /items)
# POST /recommend/batch: its ids and their carts, up to 100,000 item ids in all (of 160 bytes each, quoted)
MAX_CARTS_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 32  # lists and objects inside each other (the deepest body, /items/batch, needs 3)
MAX_FORM_FIELD_BYTES = 2**20  # a multipart text field
MAX_MULTIPART_BYTES = MAX_IMAGE_BYTES + MAX_FORM_FIELD_BYTES  # a multipart body: its image and its fields
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                      2.5, 5.0, 10.0)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- response models -------------------------------------------------------------------------------
class ItemOut(BaseModel):
    item_id: str
    title: str
    score: float
    reason: str


_SKIP_UNKNOWN = ("true: answer for the known ids and name the others in `unknown`, rather than a 404 for the whole "
                 "batch (an account that signed up since training, an item removed since); ids that are not "
                 "strings are refused all the same")
_UNKNOWN = "with skip_unknown: every id given that is not known (each once, as given), left out of the answer"


_NOT_SERVED = ("those of the ids given to exclude that are no served item (an unknown id, one in another case, or "
               "an item removed since), each once, as given: they left nothing out, so a client's id mistake shows "
               "here rather than as a cart item recommended")


# what an unknown user's /recommend 404 adds: the routes for a visitor the model does not know
_VISITOR = ("for a visitor the model does not know, POST /recommend/cold takes the items they viewed or their "
            "words, and GET /recommend/popular serves a first visit")
_VISITORS = "visitors with no account: POST /recommend/cold, GET /recommend/popular"


@contextlib.contextmanager
def _pointing_visitors(name: str, hint: str = _VISITOR) -> Iterator[None]:
    """An unknown user's 404 (``UnknownIdError`` about ``name``) adds where a visitor with no account
    is served (``hint``)."""
    try:
        yield
    except UnknownIdError as exc:
        if not str(exc).startswith(f"{name}:"):
            raise
        raise UnknownIdError(f"{exc}; {hint}", exc.kind, exc.ids) from None


class PopularOut(BaseModel):
    k: int
    items: list[ItemOut] = Field(description="the served items most shoppers bought, most first (score: how many "
                                             "distinct shoppers bought it in the run's data)")
    exclude_not_served: list[str] = Field(description=_NOT_SERVED)


class RecommendOut(BaseModel):
    user_id: str
    k: int
    items: list[ItemOut]
    exclude_not_served: list[str] = Field(description=_NOT_SERVED)


class RecommendBatchIn(BaseModel):
    """The JSON body of POST /recommend/batch."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_recommend_batch_json`
    model_config = ConfigDict(extra="forbid")

    user_ids: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="known user ids (a user may "
                                                                                     "appear more than once)")
    k: int = Field(10, ge=1, le=K_MAX, description=f"results per user, 1..{K_MAX}, and at most "
                                                   f"{MAX_BATCH_RESULTS:,} results in all (user ids × k)")
    exclude_seen: bool = Field(True, description="drop items each user already purchased")
    category: str | None = Field(None, min_length=1, description="only items of this category (omit it or null "
                                                                 "for every category)")
    skip_unknown: bool = Field(False, description=_SKIP_UNKNOWN)
    exclude: dict[str, list[str]] | None = Field(
        None, description=f"per user, item ids to leave out as well (each user's cart, say): "
                          f'{{"u001": ["i042", "i007"]}}; every key one of user_ids, at most {MAX_BATCH:,} ids a '
                          f"user and {MAX_BATCH_RESULTS:,} in all; ids that are not served are nothing to leave out")


class RecommendBatchOut(BaseModel):
    k: int
    results: list[RecommendOut] = Field(description="one per user id, in the order given (with skip_unknown: "
                                                    "per known one)")
    unknown: list[str] = Field(description=_UNKNOWN)


class SimilarOut(BaseModel):
    item_id: str
    k: int
    items: list[ItemOut]


class SimilarExcludingOut(SimilarOut):
    exclude_not_served: list[str] = Field(description=_NOT_SERVED)


class SimilarBatchIn(BaseModel):
    """The JSON body of POST /similar/batch."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_similar_batch_json`
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="served item ids (an item "
                                                                                     "may appear more than once)")
    k: int = Field(10, ge=1, le=K_MAX, description=f"results per item, 1..{K_MAX}, and at most "
                                                   f"{MAX_BATCH_RESULTS:,} results in all (item ids × k)")
    skip_unknown: bool = Field(False, description=_SKIP_UNKNOWN)


class SimilarBatchOut(BaseModel):
    k: int
    results: list[SimilarOut] = Field(description="one per item id, in the order given (with skip_unknown: "
                                                  "per served one)")
    unknown: list[str] = Field(description=_UNKNOWN)


class SearchIn(BaseModel):
    """The JSON body of POST /search."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_search_json`
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description="the query text", max_length=MAX_TEXT_CHARS)
    k: int = Field(10, ge=1, le=K_MAX, description=f"results, 1..{K_MAX}")


class ColdIn(BaseModel):
    """The JSON body of POST /recommend/cold."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_cold_json`
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] | None = Field(None, description="items the visitor looked at or picked (or give text)",
                                       min_length=1, max_length=1000)
    text: str | None = Field(None, description="what the visitor wants, in words (or give item_ids)",
                             max_length=MAX_TEXT_CHARS)
    k: int = Field(10, ge=1, le=K_MAX, description=f"results, 1..{K_MAX}")
    n_seeds: int = Field(10, ge=1, le=K_MAX, description="with text: the text matches whose embeddings make the query")
    category: str | None = Field(None, min_length=1, description="only items of this category (omit it or null "
                                                                 "for every category)")
    exclude: list[str] = Field(default_factory=list, max_length=MAX_BATCH,
                               description="item ids to leave out as well (the visitor's cart, say); an id that is "
                                           "not served is nothing to leave out (named in exclude_not_served)")
    skip_unknown: bool = Field(False, description="with item_ids, true: ids that name no item (a product not sent to "
                                                  "POST /items yet) are left out of the query and named in `unknown`, "
                                                  "rather than a 404; none left is a 404 all the same")


_TEXT_CUT = ("null when the text model read the whole text; else how many of its first characters it read (it "
             "reads a window of 128 tokens, about 500 characters of English): the rest did not count")


class ColdOut(BaseModel):
    item_ids: list[str] | None
    left_out: list[str] = Field(description="those of item_ids removed from the catalogue "
                                "since (a visitor's recently viewed list can hold them): left out of the query, "
                                "which the others make; all of them removed is a 404")
    unknown: list[str] = Field(description="with skip_unknown: those of item_ids that name no item (each once, as "
                                           "given), left out of the query; else empty")
    text: str | None
    text_cut_at: int | None = Field(None, description=_TEXT_CUT)
    exclude_not_served: list[str] = Field(description=_NOT_SERVED)
    k: int
    items: list[ItemOut]


class SearchOut(BaseModel):
    text: str | None
    text_cut_at: int | None = Field(None, description=_TEXT_CUT)
    image: bool
    k: int
    items: list[ItemOut]


class FraudOut(BaseModel):
    user_id: str
    probability: float | None = Field(description="null when the run has no fraud scorer")
    threshold: float
    flagged: bool
    scorer: str
    reasons: list[str]
    label: bool | None = Field(description="the account's is_fraud label in the shop's data (null: unlabelled)")
    label_in_training: bool = Field(
        description="the scorer was trained on this account's label, so its probability is fitted to that label "
                    "rather than predicted (an account of the scorer's training sample: a random share of the "
                    "labelled accounts, not a time period)")
    probability_is: str = Field(
        description="what probability is: 'prediction', or 'fitted to its label' for an account the scorer was "
                    "trained on, whose flagged and reasons then describe how the scorer fits that label (its "
                    "held_out_probability, held_out_flagged and held_out_reasons are the prediction), as "
                    "`shopgraph score` writes it")
    held_out_probability: float | None = Field(
        None, description="for an account the scorer was trained on: its score from the same trees refitted "
                          "without its label (cross-fitting, 5 folds by default), to compare with the threshold; null for "
                          "every other account, and when the run has no held-out scores")
    held_out_flagged: bool | None = Field(
        None, description="held_out_probability at or above the threshold (as `shopgraph score` writes it); null "
                          "without a held_out_probability")
    held_out_reasons: list[str] = Field(
        default_factory=list, description="with a held_out_probability: the reasons for the held-out verdict (its "
                                          "score against the threshold), worded as `reasons`, from the trees that "
                                          "gave it; empty otherwise and without reasons")


class FraudBatchIn(BaseModel):
    """The JSON body of POST /fraud/score/batch."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_fraud_batch_json`
    model_config = ConfigDict(extra="forbid")

    user_ids: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="known user ids")
    reasons: bool = Field(True, description="include each account's reasons (false: scores only)")
    skip_unknown: bool = Field(False, description=_SKIP_UNKNOWN)


class FraudBatchOut(BaseModel):
    count: int = Field(description="how many accounts were scored (all of those given; with skip_unknown, the "
                                   "known ones)")
    flagged: int = Field(description="how many of them are at or above the threshold (their served scores)")
    held_out_flagged: int = Field(0, description="how many of those the scorer was trained on have a held-out score "
                                                 "at or above the threshold: the verdict on their prediction, as "
                                                 "`shopgraph score --leads` and the demo judge them")
    scores: list[FraudOut] = Field(description="one per user id, in the order given")
    unknown: list[str] = Field(description=_UNKNOWN)


class CatalogueOut(BaseModel):
    added: int = Field(description="items added at run time and served")
    removed: int = Field(description="trained items removed at run time")
    journal: str | None = Field(description="the run's journal that keeps these changes (null: this process only)")
    superseded: int = Field(description="journal changes the trained catalogue already reflects (a rebuilt run: "
                                        "an added id its tables hold, a removed id they lack)")
    not_applied: list[str] = Field(description="journal entries that could not be applied, each with why")
    fault: str | None = Field(description="why the journal cannot be read now (a damaged line): until it is mended "
                                          "no catalogue change can be saved (503) and `status` is \"degraded\"; "
                                          "null when it can")
    generation: int = Field(description="how many times the journal was compacted (`shopgraph catalogue --compact`)")


class HealthOut(BaseModel):
    status: str = Field(description="\"ok\", or \"degraded\" while the catalogue journal cannot be read "
                                    "(`catalogue.fault`): answers are served, catalogue changes refused")
    users: int
    items: int
    indexes: dict[str, int]
    fraud_scorer: str
    run: str
    catalogue: CatalogueOut


class ItemIn(BaseModel):
    """The JSON body of POST /items."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_item_fields`
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(..., description="a new item id", max_length=MAX_TEXT_CHARS)
    title: str = Field(..., description="the item's title", max_length=MAX_TEXT_CHARS)
    category: str | None = Field("", description="its category (a new one is allowed; spaces around it are "
                                                 "stripped; null or left out: none, or for a removed item sent "
                                                 "again what it had)", max_length=MAX_TEXT_CHARS)
    description: str | None = Field("", description="its description (null or left out: none, or for a removed item "
                                                    "sent again what it had)", max_length=MAX_TEXT_CHARS)
    price: float | None = Field(None, ge=0, description="its price (null or left out: unknown, or for a removed item "
                                                        "sent again what it had)")


class BatchItemIn(ItemIn):
    """One item of ``POST /items/batch``."""

    image_base64: str | None = Field(None, description=f"the item's image file (PNG, JPEG, ...), base64-encoded "
                                                        "(line breaks and a data: URL's 'data:image/...;base64,' "
                                                        f"prefix are fine); at most {MAX_IMAGE_BYTES // 2**20} MB "
                                                        "once decoded")


_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def _base64_image(raw: str) -> bytes:
    """An image file from its base64 text as clients send it: wrapped in lines (what ``base64``
    writes by default) or as a data: URL are fine; else ``ValueError`` naming the first character
    that is not base64 and where it is."""
    text = "".join(_DATA_URL.sub("", raw.strip(), count=1).split())
    bad = next(((k, ch) for k, ch in enumerate(text) if not (ch.isascii() and (ch.isalnum() or ch in "+/="))), None)
    if bad is not None:
        raise ValueError(f"image_base64: not valid base64 (the character {bad[1]!r} at position {bad[0]:,}, "
                         "line breaks left out; base64 is A-Z, a-z, 0-9, '+', '/' and '=' at the end)")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"image_base64: not valid base64 ({exc}; {len(text):,} characters, line breaks left out)"
                         ) from None


class ItemInfoOut(BaseModel):
    item_id: str
    title: str
    category: str
    description: str
    price: float | None
    image: str | None = Field(description="the item's image file as the shop's items table names it "
                                          "(`images/i000001.png`), or, for one added at run time, in the run "
                                          "folder (`added_images/<hash>.png`): never the server's own folders "
                                          "(null: none)")
    image_url: str | None = Field(None, description="the image to fetch over HTTP, `GET /images/{item_id}` "
                                                    "(null: none)")


def _item_out(info: dict[str, Any], service: ShopService) -> ItemInfoOut:
    """An item as ``/items`` answers it: :meth:`ShopService.item_info` and where to fetch its image,
    the image file named relative to the shop's tables or the run folder (a client has no use for
    the server's paths, and they say how its disk is laid out)."""
    url = f"/images/{quote(info['item_id'], safe='')}" if info.get("image") else None
    return ItemInfoOut(**{**info, "image": _relative(info.get("image"), service)}, image_url=url)


def _relative(path: str | None, service: ShopService) -> str | None:
    """``path`` relative to the run folder or the shop's tables (whichever holds it), else its name."""
    if not path:
        return None
    where = Path(path)
    for root in (service.run_path, service.tables_root):
        if root is not None and where.is_absolute():
            try:
                return where.relative_to(Path(root)).as_posix()
            except ValueError:
                continue
    return where.as_posix() if not where.is_absolute() else where.name


class BatchOut(BaseModel):
    added: int = Field(description="how many items were added: the whole batch, less the items served already "
                                   "as sent (a retried batch: 0, and the answer is a 200)")
    items: list[ItemInfoOut] = Field(description="the batch's items as served, in the order given")


class RemovedOut(BaseModel):
    item_id: str
    removed: bool


class RemoveIn(BaseModel):
    """The JSON body of POST /items/remove."""

    # its schema, for the OpenAPI document; the body itself is checked by :func:`_remove_ids` and
    # :meth:`ShopService.remove_items`
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="served item ids, each once")


class RemovedBatchOut(BaseModel):
    removed: int = Field(description="how many items were removed (all of the batch)")
    item_ids: list[str] = Field(description="the removed items, in the order given")


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown user or item id"},
    422: {"model": ErrorOut, "description": "invalid parameter (the message names it and the value)"},
}


def _items(rec: Recommendation) -> list[ItemOut]:
    return [ItemOut(item_id=i, title=t, score=s, reason=r)
            for i, s, r, t in zip(rec.item_ids, rec.scores, rec.reasons, rec.titles)]


# -- metrics ---------------------------------------------------------------------------------------
# the methods the metrics name (RFC 9110's, and PATCH); any other is counted as "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


class Metrics:
    """Request counts and a latency histogram per route, rendered in Prometheus text format.

    Counts are per process: with several workers each keeps its own.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._hist: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # a method name is the client's choice (any token, `FOO1`): each would be a series of its own
        method = method if method in HTTP_METHODS else "other"
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            h = self._hist.setdefault((method, route), [0.0] * (len(self.buckets) + 2))
            for n, bound in enumerate(self.buckets):
                if seconds <= bound:
                    h[n] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self) -> str:
        lines = ["# HELP shopgraph_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE shopgraph_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f'shopgraph_http_requests_total{{method="{method}",route="{route}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP shopgraph_http_request_duration_seconds HTTP request latency.",
                      "# TYPE shopgraph_http_request_duration_seconds histogram"]
            for (method, route), h in sorted(self._hist.items()):
                labels = f'method="{method}",route="{route}"'
                for bound, c in zip(self.buckets, h):
                    lines.append(f'shopgraph_http_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {int(c)}')
                lines.append(f'shopgraph_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {int(h[-1])}')
                lines.append(f"shopgraph_http_request_duration_seconds_sum{{{labels}}} {h[-2]:.6f}")
                lines.append(f"shopgraph_http_request_duration_seconds_count{{{labels}}} {int(h[-1])}")
        return "\n".join(lines) + "\n"


_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # a path parameter's converter, left out of the route label
# a request whose client hung up before its body arrived (nginx's code): no answer reaches it
CLIENT_CLOSED = 499


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body copy) feeding :class:`Metrics`.

    Requests are labelled by route template (``/recommend``), never the raw path, so the label
    set stays bounded; unmatched paths count as ``"unmatched"``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, router: Any = None, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router  # the app's own routes, for those that do not name themselves in the scope
        self.access_log = access_log

    def _route(self, scope: Scope) -> str:
        """The route's path as the docs name it: a mounted app's (the demo's) under its mount path,
        FastAPI's own pages (``/openapi.json``, ``/docs``) by theirs; ``"unmatched"`` for no route."""
        path = getattr(scope.get("route"), "path", None)
        endpoint = scope.get("endpoint")
        if path is None and endpoint is not None and self.router is not None:  # a plain Starlette route
            path = next((r.path for r in self.router.routes if getattr(r, "endpoint", None) is endpoint), None)
        if path is None:
            return "unmatched"
        return _CONVERTER.sub(r"{\1}", str(scope.get("root_path") or "") + path)  # "/items/{item_id:path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        request_id = given.decode("ascii") if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # every answer names its request, so a client's report and a log line can be matched
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(scope.get("method", ""), self._route(scope), status, seconds)
            if self.access_log:
                access_logger.info("%s %s %d %.1f ms request_id=%s", scope.get("method", ""),
                                   self._route(scope), status, seconds * 1000, request_id)


# -- errors ----------------------------------------------------------------------------------------
def _validation_message(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path", "form")]
        name = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "missing":
            parts.append(f"{name}: required")
        else:
            parts.append(f"{name}: {msg[0].lower() + msg[1:] if msg else msg} (got {shown(err.get('input'))})")
    return "; ".join(parts)


def _detail(exc: Exception) -> str:
    """``str(exc)`` with any lone surrogate escaped (``\\ud800``): a response body is UTF-8."""
    text = str(exc)
    return text if lone_surrogate(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None,
           ids: Sequence[str] = ()) -> JSONResponse:
    """An error answer: ``{"error": code, "detail": detail}``, with ``"ids"`` when it is about ids
    (:class:`ErrorOut`)."""
    body: dict[str, Any] = {"error": code, "detail": detail}
    if ids:
        body["ids"] = list(ids)
    return JSONResponse(body, status_code=status, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (RFC 9110 12.5.3): named (or ``x-gzip``) with
    a q-value above 0, or not named and ``*`` with one; ``gzip;q=0`` refuses it."""
    named: float | None = None
    star: float | None = None
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a q-value that is not a number: not an acceptance
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            star = q
    return named > 0 if named is not None else star is not None and star > 0


class _GZip(GZipMiddleware):
    """Starlette's gzip, but a client that refuses gzip (``gzip;q=0``) gets the answer as it is:
    Starlette looks for "gzip" anywhere in the header."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get("accept-encoding", "")
            if "gzip" in header and not accepts_gzip(header):
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
                         + [(b"accept-encoding", b"identity")]}
        await super().__call__(scope, receive, send)


class _CorsMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered as every other error is: JSON
    (``cors_refused``) naming what was not let in. The page's script never sees it (the browser
    reports a CORS failure), but the browser's network panel and a developer's ``curl`` do."""

    def preflight_response(self, request_headers: Headers) -> Response:
        listed = request_headers.get("access-control-request-headers")
        if listed is not None:  # empty list elements ("content-type,") are none (RFC 9110 5.6.1): Starlette refused them
            kept = ", ".join(h.strip() for h in listed.split(",") if h.strip())
            raw = [(k, v) for k, v in request_headers.raw if k.lower() != b"access-control-request-headers"]
            request_headers = Headers(raw=raw + ([(b"access-control-request-headers", kept.encode("latin-1"))]
                                                 if kept else []))
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        origin = request_headers["origin"]
        method = request_headers["access-control-request-method"]
        problems = []
        if not self.is_allowed_origin(origin=origin):
            problems.append(f"origin: {shown(origin)} is not one of the sites this server lets in "
                            f"(`serve --cors-origin`)")
        if method not in self.allow_methods:
            problems.append(f"method: {shown(method)} is not one of {', '.join(self.allow_methods)}")
        asked = [h.strip() for h in request_headers.get("access-control-request-headers", "").split(",") if h.strip()]
        refused = [h for h in asked if h.lower() not in self.allow_headers]
        if refused:
            problems.append(f"headers: {', '.join(shown(h) for h in refused)} not allowed (allowed: "
                            f"{', '.join(self.allow_headers)})")
        if "access-control-request-private-network" in request_headers:
            problems.append("private network access: not allowed")
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")}
        return _error(400, "cors_refused", "preflight refused: " + ("; ".join(problems) or "not let in"), headers)


def _unknown_code(exc: Exception) -> str:
    """The ``error`` of an unknown id's 404: ``unknown_user``, ``unknown_item``...; ``no_image`` for an
    item without a picture."""
    kind = getattr(exc, "kind", "id")
    code = "no_image" if kind == "image" else f"unknown_{kind}"
    return code if code in ERROR_CODES else "unknown_item"


def _route_table(app: Any) -> list[tuple[str, re.Pattern[str], set[str]]]:
    """``(path, its regex, methods)`` of every route of ``app``: its own, and those of the routers
    it includes (the fraud routes), which FastAPI keeps behind one included-router entry."""
    table = []
    for route in app.routes:
        if isinstance(route, Route):
            table.append((route.path, route.path_regex, set(route.methods or ())))
        elif callable(contexts := getattr(route, "effective_route_contexts", None)):
            table += [(c.path, c.path_regex, set(c.methods or ())) for c in contexts()]
    return table


def _install_error_handlers(app: FastAPI) -> None:
    async def unknown_id(_: Request, exc: Exception) -> JSONResponse:
        return _error(404, _unknown_code(exc), _detail(exc), ids=getattr(exc, "ids", ()))

    async def bad_value(_: Request, exc: Exception) -> JSONResponse:
        return _error(422, "invalid_value", _detail(exc))

    async def duplicate_id(_: Request, exc: Exception) -> JSONResponse:
        return _error(409, "duplicate_id", _detail(exc), ids=getattr(exc, "ids", ()))

    async def not_available(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, "not_available", _detail(exc))

    async def journal_fault(_: Request, exc: Exception) -> JSONResponse:  # the server's file, not the request
        return _error(503, "journal_unreadable", "catalogue: the run's journal cannot be read, so no change can be "
                                                 f"saved until it is mended (nothing was changed): {_detail(exc)}")

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
        return _error(422, "invalid_value", _validation_message(list(errors)))

    async def no_route(request: Request, exc: Exception) -> JSONResponse:
        # the router's own "Not Found" / "Method Not Allowed", in the API's "<argument>: <problem>" form
        assert isinstance(exc, StarletteHTTPException)
        detail, code = exc.detail, error_code(exc.status_code, exc)
        if exc.status_code == 404 and detail == "Not Found":  # a misspelt route: the one it is close to
            paths = sorted({path for path, _, _ in _route_table(request.app)})
            close = _nearest_route(request.url.path, paths)
            hint = f"did you mean {close}? " if close else ""
            detail = f"path: no route {shown(request.url.path)} ({hint}the routes are listed at /docs)"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            # every route of the path (GET and HEAD /healthz are two), not only the one the router tried
            methods = {m for _, regex, route_methods in _route_table(request.app)  # /docs, /openapi.json too
                       if regex.match(request.url.path) for m in route_methods}
            allowed = ", ".join(sorted(methods))
            detail = f"method: {request.method} is not allowed on {request.url.path}" + (
                f" (allowed: {allowed})" if allowed else "")
            if allowed:  # the header says the same
                return _error(405, code, detail, {**(exc.headers or {}), "Allow": allowed})
        return _error(exc.status_code, code, detail, exc.headers, getattr(exc, "ids", ()))

    app.add_exception_handler(StarletteHTTPException, no_route)
    app.add_exception_handler(UnknownIdError, unknown_id)
    app.add_exception_handler(DuplicateIdError, duplicate_id)
    app.add_exception_handler(ValueError, bad_value)
    app.add_exception_handler(TypeError, bad_value)
    app.add_exception_handler(NotAvailableError, not_available)
    app.add_exception_handler(CatalogueError, journal_fault)  # a ValueError too: the more specific wins
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ValidationError, invalid_request)  # a ValueError: more specific wins


# -- optional mounts -------------------------------------------------------------------------------
def _nearest_route(path: str, routes: Sequence[str]) -> str | None:
    """The route a path that matched none was meant for, the closest of them (a similarity of at
    least 0.75): a route without parameters by the whole path (``/recomend``: ``/recommend``), one
    with them, of as many segments, by its fixed parts, written with the values the path gave
    (``/fraud/rings/R0001``: ``/fraud/ring/R0001``); ``None`` when none is close."""
    parts, best, ratio = path.lstrip("/").split("/"), None, 0.75  # a trailing "/": an empty last part
    for route in routes:
        fixed = route.strip("/").split("/")
        if "{" not in route:
            similar, named = difflib.SequenceMatcher(None, path, route).ratio(), route
        elif len(fixed) == len(parts):
            pairs = [(got, want) for got, want in zip(parts, fixed) if not want.startswith("{")]
            similar = difflib.SequenceMatcher(None, "/".join(g for g, _ in pairs),
                                              "/".join(w for _, w in pairs)).ratio()
            # a parameter left empty (/fraud/case/) is named by the route's own placeholder
            named = "/" + "/".join((got or want) if want.startswith("{") else want for got, want in zip(parts, fixed))
        else:
            continue
        if similar >= ratio and (best is None or similar > ratio):
            best, ratio = named, similar
    return best


def mount_demo(app: FastAPI, service: ShopService, path: str = "/demo") -> bool:
    """Mount the Gradio app (``shopgraph.ui.app.build_app(service)``) at ``path``.

    The UI module is optional here: when it (or gradio) is missing, or building the app fails,
    the API is served without it and a log line says why.

    Returns:
        Whether the demo was mounted.
    """
    try:
        import gradio

        from shopgraph.ui.app import UI_CSS, build_app
    except ImportError as exc:
        logger.info("Gradio demo not mounted at %s: %s", path, exc)
        return False
    try:
        blocks = build_app(service)
        gradio.mount_gradio_app(app, blocks, path=path, css=UI_CSS)  # UI_CSS: narrow screens readable
    except Exception as exc:  # noqa: BLE001 - the API must come up without the demo
        logger.warning("Gradio demo not mounted at %s: building it failed (%s: %s)", path,
                       type(exc).__name__, exc)
        return False

    # the address people type: to the app's own page (a path, not an absolute URL, so that behind
    # a TLS proxy it stays https), as the router's own slash redirects are off (create_app)
    @app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)
    def demo_page(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return Response(status_code=307, headers={"Location": f"{request.scope.get('root_path', '')}{path}/{query}"})

    logger.info("Gradio demo mounted at %s", path)
    return True


# Gradio keeps a visitor's queued events in the process that took them, and uvicorn's workers share
# one socket with no sticky sessions: the page's next request, on another connection, often reaches
# another worker, which answers "session not found" (gradio-app/gradio#10487, #7224)
DEMO_ONE_WORKER = ("demo: not served with --workers N (Gradio keeps each visitor's events in the worker that took "
                   "them, and the workers take requests in turn): serve it from `shopgraph serve --run RUN --workers "
                   "1 --port OTHER` beside this server; the API is served here as usual")


def refuse_demo(app: FastAPI, path: str = "/demo") -> None:
    """``path`` and everything under it answer a 503 ``not_available`` saying why the demo is not
    here (:data:`DEMO_ONE_WORKER`), not a 404 for a path a visitor was told to open."""

    def no_demo() -> Response:
        raise NotAvailableError(DEMO_ONE_WORKER)

    app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)(no_demo)
    app.api_route(path + "/{rest:path}", methods=["GET", "HEAD", "POST"], include_in_schema=False)(no_demo)


def include_fraud_cases(app: FastAPI, run_dir: Path | None,
                        explain_held_out: Callable[[str], Any] | None = None,
                        value_words: Callable[[str], ValueWords] | None = None) -> bool:
    """Add the fraud investigators' endpoints (``retrieval/fraud_api.py``) when the run has rings.

    Args:
        app: the application.
        run_dir: the run folder (``None``: nothing added).
        explain_held_out: the held-out explanation of an account (the service's
            :meth:`ShopService.held_out_explanation`, whose fold tables the warm-up built and whose
            attributions it keeps); default :meth:`shopgraph.graph.rings.FraudCases.explain_held_out`.
        value_words: the account's feature values as people read them
            (:meth:`ShopService.feature_value_words`), for the explanations' ``value_in_words``;
            default :meth:`shopgraph.graph.rings.FraudCases.value_words`.

    Returns:
        Whether the routes were added.
    """
    if run_dir is None:
        return False
    try:
        from shopgraph.graph.rings import FraudCases
        from shopgraph.retrieval.fraud_api import fraud_router
    except ImportError as exc:
        logger.info("fraud case endpoints not served: %s", exc)
        return False
    try:
        cases = FraudCases.from_run(run_dir)
        app.include_router(fraud_router(cases.rings, explain=cases.explain, timeline=cases.timeline,
                                        labels=cases.labels, has_user=cases.has_user, held_out=cases.held_out,
                                        hint=cases.user_hint, threshold=cases.threshold,
                                        device_accounts=cases.device_accounts,
                                        explain_held_out=explain_held_out or cases.explain_held_out,
                                        value_words=value_words or cases.value_words, case=cases.case))
    except Exception as exc:  # noqa: BLE001 - optional feature; the core API must start
        logger.info("fraud case endpoints not served (%s: %s)", type(exc).__name__, exc)
        return False
    return True


# -- the /search body -----------------------------------------------------------------------------
_JSON_EXAMPLE = '{"text": "red shoes", "k": 10}'


def _declared_length(request: Request) -> int:
    """The request's ``Content-Length`` (0 when it sends none: chunked); 400 when it is not a number."""
    try:
        return int(request.headers.get("content-length") or 0)
    except ValueError:
        raise HTTPException(400, f"content-length: not a number (got "
                                 f"{shown(request.headers.get('content-length'))})") from None


async def _capped(request: Request, limit: int, too_big: HTTPException) -> AsyncGenerator[bytes, None]:
    """The request body's chunks, ``too_big`` raised as soon as more than ``limit`` bytes came:
    a body without a ``Content-Length`` (chunked) is never read past its limit either."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            yield chunk
    except ClientDisconnect:  # a client gone mid-upload: its fault, counted apart (nginx's 499), not a 500
        raise HTTPException(CLIENT_CLOSED, "body: the client closed the connection before the whole body "
                                           "arrived; nothing was done") from None


class _Repeated(dict):  # type: ignore[type-arg]
    """A JSON object that gives a key twice (``json.loads`` would keep the last silently):
    :func:`_check_json` refuses it, naming where it is."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.repeated = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: the object, or a :class:`_Repeated` one when a key
    is given twice (refused as a repeated form field or query parameter is, once
    :func:`_check_json` knows where the object is)."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _Repeated(pairs, key)
            seen.add(key)
    return out


def _check_json(body: Any, example: str) -> None:
    """Refuse a JSON value nested more than :data:`MAX_JSON_DEPTH` deep, an object in it that gives
    a key twice, and any string in it (a key too) that is not valid Unicode (a lone surrogate,
    ``"\\ud800"``), naming where it is (``items[3].title``). Walked without recursion, in the order of
    the body."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            at = lone_surrogate(value)
            if at is not None:
                raise ValueError(f"{where or 'body'}: not valid Unicode (a lone surrogate at position {at:,})")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"body: expected a JSON object like {example} (got JSON nested more than "
                                 f"{MAX_JSON_DEPTH} levels deep)")
            children: list[tuple[Any, str, int]] = []
            if isinstance(value, _Repeated):  # named as the other checks name where they are: items[0].title
                raise ValueError(f"{key_path(where, value.repeated)}: given more than once (expected one value)")
            if isinstance(value, dict):
                for key, item in value.items():
                    at = lone_surrogate(key)
                    if at is not None:
                        raise ValueError(f"{where or 'body'}: the field name {shown(key, 40)} is not valid Unicode "
                                         f"(a lone surrogate at position {at:,})")
                    children.append((item, key_path(where, key), depth + 1))
            else:
                children = [(item, f"{where or 'body'}[{n}]", depth + 1) for n, item in enumerate(value)]
            stack.extend(reversed(children))


async def _json_body(request: Request, example: str, limit: int = MAX_JSON_BYTES,
                     what: str = "a JSON query") -> dict[str, Any]:
    """The body's JSON object, read up to ``limit`` bytes (413 past it, with or without a
    ``Content-Length``); invalid JSON or another JSON value is a 422 that shows ``example``, and so
    is a key given twice, JSON nested too deeply or a string that is not valid Unicode. A field
    whose value is ``null`` is one not given (what a client generated from the schema sends for an
    optional field it leaves unset): its default, or "required" for one that must be given."""
    too_big = HTTPException(413, f"body: over the {limit:,}-byte limit of {what}")
    if _declared_length(request) > limit:
        raise too_big
    chunks = [chunk async for chunk in _capped(request, limit, too_big)]
    try:
        body = json.loads(b"".join(chunks), object_pairs_hook=_unique_keys, parse_constant=_not_json,
                          parse_int=_json_int)
    except _NotJson as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:  # thousands of [ or {: the parser's own recursion
        raise ValueError(f"body: expected a JSON object like {example} (got JSON nested more than "
                         f"{MAX_JSON_DEPTH} levels deep)") from None
    except json.JSONDecodeError as exc:  # where the parser stopped, so a client can find its mistake
        raise ValueError(f"body: expected a JSON object like {example} (got invalid JSON: {exc.msg}: line "
                         f"{exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:  # bytes that are not UTF-8 text
        raise ValueError(f"body: expected a JSON object like {example} (got invalid JSON: not UTF-8 text)") from None
    if not isinstance(body, dict):
        raise ValueError(f"body: expected a JSON object like {example} (got {type(body).__name__})")
    _check_json(body, example)
    given = _Body((key, value) for key, value in body.items() if value is not None)
    given.nulls = tuple(key for key, value in body.items() if value is None)
    return given


class _Body(dict[str, Any]):
    """A JSON body without its null fields (not given: their defaults), which remembers their names
    (``nulls``), so that a misspelt field is refused even when its value is null (:func:`_given`)."""

    nulls: tuple[str, ...] = ()


def _given(body: dict[str, Any]) -> list[str]:
    """Every field a JSON body named, the null ones too (:class:`_Body`), for ``check_fields``."""
    return [*body, *getattr(body, "nulls", ())]


def _json_or_multipart(model: type[BaseModel], form: dict[str, Any], *, required: list[str]) -> dict[str, Any]:
    """The OpenAPI request body of a route that takes ``model`` as JSON or the fields ``form`` as a
    multipart form (an upload; ``required``: its fields that must be there, none for an empty list)."""
    schema: dict[str, Any] = {"type": "object", "properties": form, "additionalProperties": False}
    if required:
        schema["required"] = required
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": schema},
    }}}


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that takes ``model`` as JSON."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _media_type(request: Request, accepted: tuple[str, ...]) -> str:
    """The request's media type, one of ``accepted`` (compared case-insensitively, RFC 9110), or
    ``application/json`` when it names none; 415 naming ``accepted`` otherwise, and for a compressed
    body (``Content-Encoding: gzip``: read as it is, it would be reported as text that is not UTF-8)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPException(415, f"content-encoding: compressed bodies are not supported (got "
                                 f"{shown(request.headers.get('content-encoding'))}); send the body uncompressed")
    ctype = request.headers.get("content-type", "")
    if not ctype:
        return "application/json"
    media = ctype.split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise HTTPException(415, f"content-type: expected {' or '.join(accepted)} (got {shown(ctype)})")
    return media


def _search_json(body: dict[str, Any]) -> tuple[str, int]:
    """``(text, k)`` of a JSON search body: an object with ``text`` and optional ``k``, nothing else.
    ``k`` must be a JSON integer (not ``true``, ``"5"`` or ``5.0``), as in the query and the form."""
    check_fields(_given(body), ("text", "k"), "field")
    if "text" not in body:
        raise ValueError("text: required")
    text = body["text"]
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string (got {type(text).__name__} {shown(text)})")
    return text, check_k(body.get("k", 10))


class _StrictParser(MultiPartParser):
    """Starlette's multipart parser, noting the first text field that is not UTF-8 (it would read
    its bytes as Latin-1 and hand on an id or a title the client never sent: ``x\xff`` as ``xÿ``)."""

    not_utf8: tuple[str, bytes] | None = None
    ended = False  # the closing boundary was read: a body cut off before it is no form at all

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and self.not_utf8 is None and self._charset.lower().replace("-", "") == "utf8":
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                self.not_utf8 = (part.field_name, bytes(part.data))
        super().on_part_end()


async def _multipart(request: Request) -> FormData:
    """The parsed multipart form of ``request``, read up to :data:`MAX_MULTIPART_BYTES` (an image
    at most ``MAX_IMAGE_BYTES`` and its fields): 413 when the declared length is over that or, for
    a body sent without one (chunked), as soon as that much was read; 413 naming a text field over
    :data:`MAX_FORM_FIELD_BYTES`; 400 when the body is not readable multipart. The caller closes
    the form."""
    length = _declared_length(request)
    if length > MAX_MULTIPART_BYTES:
        raise HTTPException(413, f"image: upload of {length / 2**20:.2f} MB ({length:,} bytes) is over the "
                                 f"{IMAGE_LIMIT}")
    too_big = HTTPException(413, f"body: over the {MAX_MULTIPART_BYTES:,}-byte limit of a multipart upload (an "
                                 f"image up to the {IMAGE_LIMIT} and its form fields)")
    # text fields are limited below, by name, rather than by the parser's anonymous 400
    parser = _StrictParser(request.headers, _capped(request, MAX_MULTIPART_BYTES, too_big),
                           max_part_size=MAX_MULTIPART_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        detail = exc.message.rstrip(".")
        raise HTTPException(400, f"body: not a readable multipart/form-data body "
                                 f"({detail[:1].lower() + detail[1:]})") from None
    except (ValueError, KeyError, AssertionError) as exc:
        raise HTTPException(400, f"body: not a readable multipart/form-data body ({type(exc).__name__})") from None
    if not parser.ended:  # its last fields would read as missing ("item_id: required"), not as a cut body
        await form.close()
        raise HTTPException(400, "body: not a readable multipart/form-data body (it ends before its closing "
                                 "boundary: cut off?)")
    if parser.not_utf8 is not None:
        await form.close()
        name, raw = parser.not_utf8
        raise ValueError(f"{field_name(name)}: not valid UTF-8 (got {shown(raw, 60)})")
    for key, value in form.multi_items():
        if isinstance(value, str) and len(value) > MAX_FORM_FIELD_BYTES // 4 and (
                size := len(value.encode("utf-8", "surrogatepass"))) > MAX_FORM_FIELD_BYTES:
            await form.close()
            raise HTTPException(413, f"{field_name(key)}: a text field of {size / 2**20:.2f} MB ({size:,} bytes) "
                                     f"is over the {MAX_FORM_FIELD_BYTES // 2**20} MB limit "
                                     f"({MAX_FORM_FIELD_BYTES:,} bytes)")
    return form


async def _search_form(request: Request) -> tuple[str | None, bytes | None, int]:
    """``(text, image bytes, k)`` of a multipart search: a file field ``image``, ``text`` or both,
    optional ``k``, nothing else; 413 when the image is over the limit, 400 when the body is not
    readable multipart."""
    form = await _multipart(request)
    try:
        return await _search_fields(form)
    finally:
        await form.close()


async def _search_fields(form: FormData) -> tuple[str | None, bytes | None, int]:
    """As a browser's search form sends them: an image, a text or both; an empty text box or an
    empty file input (:func:`_form_image`) is none."""
    check_fields([key for key, _ in form.multi_items()], ("image", "text", "k"), "form field")
    image = await _form_image(form)
    raw_text = form.get("text")
    if raw_text is not None and not isinstance(raw_text, str):
        raise ValueError("text: expected a text field, not a file")
    if image is None and not raw_text:
        raise ValueError("image, text: expected an image file, a text or both in the form (got neither; an empty "
                         "file input or text box is none)")
    raw_k = form.get("k", "10")
    if not isinstance(raw_k, str):
        raise ValueError("k: expected a text field, not a file")
    return raw_text or None, image, parse_int("k", raw_k, 1, K_MAX)


async def _form_image(form: FormData) -> bytes | None:
    """The bytes of a form's file field ``image``, or ``None`` when there is none or it is a
    browser's file input left empty (no file name, no bytes); 413 past :data:`MAX_IMAGE_BYTES`.
    An empty file that has a name is returned (the image check names it)."""
    upload = form.get("image")
    if upload is None or upload == "":  # "": an empty file input, sent without a filename
        return None
    if isinstance(upload, str):
        raise ValueError("image: expected a file, not a text field")
    image = await upload.read(MAX_IMAGE_BYTES + 1)
    if len(image) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"image: upload over the {IMAGE_LIMIT}")
    return None if not image and not upload.filename else image


# -- the /recommend/cold body ----------------------------------------------------------------------
_COLD_EXAMPLE = '{"item_ids": ["i000007", "i000100"], "k": 10} or {"text": "gifts for a runner", "k": 10}'


class _Cold(NamedTuple):
    """A checked ``POST /recommend/cold`` body (:func:`_cold_json`)."""

    item_ids: list[str] | None
    text: str | None
    k: int
    n_seeds: int
    category: str | None
    exclude: list[Any]
    skip_unknown: bool


def _category_field(body: dict[str, Any]) -> str | None:
    """A JSON body's ``category``: a name that is not blank, or ``None`` (null or left out: every category)."""
    category = body.get("category")
    if category is not None and not (isinstance(category, str) and category.strip()):
        raise ValueError(f"category: expected a category name, or null for every category (got {shown(category)})")
    return category


def _cold_json(body: dict[str, Any]) -> _Cold:
    """A cold-start body: exactly one of ``item_ids`` and ``text``; ``n_seeds`` only with ``text``;
    ``category`` and ``exclude`` as ``GET /recommend`` takes them (the service checks their values);
    nothing else (a ``null`` field was dropped already, as not given: :func:`_json_body`)."""
    check_fields(_given(body), ("item_ids", "text", "k", "n_seeds", "category", "exclude", "skip_unknown"), "field")
    if ("item_ids" in body) == ("text" in body):
        raise ValueError(f"item_ids, text: expected one of them (got {'both' if 'text' in body else 'neither'})")
    k = check_k(body.get("k", 10))
    category = _category_field(body)
    exclude = body.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"exclude: expected a list of item ids (got {type(exclude).__name__} {shown(exclude)})")
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string (got {type(text).__name__} {shown(text)})")
        if check_bool(body.get("skip_unknown", False), "skip_unknown"):  # false, the default, is fine
            raise ValueError("skip_unknown: only with item_ids (a text has no ids to skip)")
        return _Cold(None, text, k, check_k(body.get("n_seeds", 10), "n_seeds"), category, exclude, False)
    if "n_seeds" in body:
        raise ValueError("n_seeds: only with text (the item_ids are the seeds)")
    ids = body["item_ids"]
    if not isinstance(ids, list):
        raise ValueError(f"item_ids: expected a list of ids (got {type(ids).__name__} {shown(ids)})")
    return _Cold(ids, None, k, 0, category, exclude, check_bool(body.get("skip_unknown", False), "skip_unknown"))


# -- the batch bodies of /recommend and /fraud/score ----------------------------------------------
_RECOMMEND_BATCH_EXAMPLE = '{"user_ids": ["u000001", "u000042"], "k": 10}'
_FRAUD_BATCH_EXAMPLE = '{"user_ids": ["u000001", "u000042"], "reasons": true}'
_SIMILAR_BATCH_EXAMPLE = '{"item_ids": ["i000007", "i000100"], "k": 10}'
MAX_SLOW_REASONS = 20  # accounts a request when each one's reasons take the model's gradients


async def _ids_body(request: Request, example: str, limit: int = MAX_IDS_JSON_BYTES,
                    what: str = "a list of ids") -> dict[str, Any]:
    """The JSON object of a route that takes a list of up to 1,000 ids (415 for another content
    type, 413 past ``limit`` bytes, :data:`MAX_IDS_JSON_BYTES` unless the route takes more)."""
    _media_type(request, ("application/json",))
    return await _json_body(request, example, limit, what)


def _id_list(body: dict[str, Any], name: str, example: str) -> list[Any]:
    """``body[name]`` when it is a JSON list (the service checks the ids themselves)."""
    ids = body.get(name)
    if not isinstance(ids, list):
        raise ValueError(f"{name}: expected a list of ids like {example} (got "
                         f"{'nothing' if ids is None else type(ids).__name__ + ' ' + shown(ids)})")
    return ids


def _recommend_batch_json(body: dict[str, Any]) -> tuple[list[Any], int, bool, str | None, Any]:
    """``(user_ids, k, exclude_seen, category, exclude)`` of a ``POST /recommend/batch`` body; ``k``
    a JSON integer and ``exclude_seen`` a JSON boolean, as strict as the query of ``GET /recommend``
    (the service checks ``exclude``: a JSON object arrives as the mapping it expects)."""
    check_fields(_given(body), ("user_ids", "k", "exclude_seen", "category", "exclude", "skip_unknown"), "field")
    ids = _id_list(body, "user_ids", _RECOMMEND_BATCH_EXAMPLE)
    category = _category_field(body)
    return (ids, check_k(body.get("k", 10)), check_bool(body.get("exclude_seen", True), "exclude_seen"), category,
            body.get("exclude"))


def _similar_batch_json(body: dict[str, Any]) -> tuple[list[Any], int]:
    """``(item_ids, k)`` of a ``POST /similar/batch`` body."""
    check_fields(_given(body), ("item_ids", "k", "skip_unknown"), "field")
    return _id_list(body, "item_ids", _SIMILAR_BATCH_EXAMPLE), check_k(body.get("k", 10))


def _fraud_batch_json(body: dict[str, Any], service: ShopService) -> tuple[list[Any], bool]:
    """``(user_ids, reasons)`` of a ``POST /fraud/score/batch`` body. Reasons that the model works out
    per account (a GNN fraud head) are limited to :data:`MAX_SLOW_REASONS` accounts a request, so a
    request never runs for minutes."""
    check_fields(_given(body), ("user_ids", "reasons", "skip_unknown"), "field")
    ids = _id_list(body, "user_ids", _FRAUD_BATCH_EXAMPLE)
    reasons = check_bool(body.get("reasons", True), "reasons")
    if reasons and service.reasons_per_account_model and len(ids) > MAX_SLOW_REASONS:
        raise ValueError(f"reasons: this run's fraud scorer ({service.fraud.get('kind', 'none')}) works out each "
                         f"account's reasons with the model (integrated gradients, up to about a second an "
                         f"account), so reasons come for at most {MAX_SLOW_REASONS} accounts a request (got "
                         f"{len(ids):,}); send \"reasons\": false for scores only, or fewer accounts")
    return ids, reasons


def _known_only(body: dict[str, Any], ids: list[Any], known: Callable[[str], bool]) -> tuple[list[Any], list[str]]:
    """``(ids to answer, the unknown ones)`` of a batch: with ``"skip_unknown": true`` in ``body``, the
    string ids ``known`` does not know (spaces aside) are taken out and named, each once, as given;
    without it, ``(ids, [])`` (the service's 404 names them). Ids that are not strings stay, for the
    service to refuse."""
    if not check_bool(body.get("skip_unknown", False), "skip_unknown"):
        return ids, []
    unknown = once_each(i for i in ids if isinstance(i, str) and not known(i.strip()))
    gone = {i.strip() for i in unknown}
    return [i for i in ids if not (isinstance(i, str) and i.strip() in gone)], unknown


def _fraud_out(service: ShopService, s: FraudScore) -> FraudOut:
    p = s.probability
    return FraudOut(user_id=s.user_id, probability=None if math.isnan(p) else p, threshold=s.threshold,
                    flagged=s.flagged, scorer=str(service.fraud.get("kind", "none")), reasons=s.reasons,
                    label=s.label, label_in_training=s.label_in_training, probability_is=s.probability_is,
                    held_out_probability=s.held_out_probability,
                    held_out_flagged=s.held_out_flagged,
                    held_out_reasons=s.held_out_reasons)


# -- the /items body ------------------------------------------------------------------------------
_ITEM_FIELDS = ("item_id", "title", "category", "description", "price")
_ITEM_EXAMPLE = '{"item_id": "i900001", "title": "red running shoes", "category": "shoes", "price": 59.0}'


def _item_fields(body: dict[str, Any], what: str, allowed: tuple[str, ...] = _ITEM_FIELDS) -> dict[str, Any]:
    """The :meth:`ShopService.add_item` arguments of a checked ``/items`` body (JSON or form)."""
    check_fields(_given(body), allowed, what)
    for name in ("item_id", "title"):
        if name not in body:
            raise ValueError(f"{name}: required")
    # null for an optional field is the field left out, what generated clients send for an unset field:
    # none for a new item (no category, an unknown price), what it had for a removed item restored
    out = {k: body[k] for k in _ITEM_FIELDS if k in body and not (body[k] is None and k in ("category", "description", "price"))}
    for name in ("item_id", "title", "category", "description"):
        if name in out and not isinstance(out[name], str):
            raise ValueError(f"{name}: expected a string (got {type(out[name]).__name__} {shown(out[name])})")
        if name in out and len(out[name]) > MAX_TEXT_CHARS:
            raise ValueError(f"{name}: {len(out[name]):,} characters, over the {MAX_TEXT_CHARS:,}-character limit")
    return out


_BATCH_EXAMPLE = f'{{"items": [{_ITEM_EXAMPLE}, ...]}}'


def _batch_items(body: dict[str, Any], service: ShopService) -> list[dict[str, Any]]:
    """The :meth:`ShopService.add_items` argument of a ``POST /items/batch`` body: ``items``, a list
    of ``/items`` objects that may each carry ``image_base64``; every invalid item named (those
    refused here, and what the service would refuse among the others)."""
    check_fields(_given(body), ("items",), "field")
    items = body.get("items")
    if not isinstance(items, list):
        raise ValueError(f"items: expected a list of items like {_BATCH_EXAMPLE} (got "
                         f"{'nothing' if items is None else type(items).__name__})")
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValueError(f"items: expected 1 to {MAX_BATCH:,} items (got {len(items):,})")
    out: dict[int, dict[str, Any]] = {}
    problems: dict[int, str] = {}
    for k, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError(f"expected an object like {_ITEM_EXAMPLE} (got {type(item).__name__})")
            fields = _item_fields(item, "field", _ITEM_FIELDS + ("image_base64",))
            raw = item.get("image_base64")
            if raw is not None:
                if not isinstance(raw, str) or not raw:
                    raise ValueError(f"image_base64: expected the image file in base64 (got {type(raw).__name__} "
                                     f"{shown(raw)}; null or no field for no image)")
                fields["image"] = _base64_image(raw)
            out[k] = fields
        except ValueError as exc:
            problems[k] = f"items[{k}]: {exc}"
    if problems:
        problems |= service.item_problems(out)
        raise ValueError(batch_problems([problems[k] for k in sorted(problems)], len(items)))
    return list(out.values())


_REMOVE_EXAMPLE = '{"item_ids": ["i000007", "i000100"]}'


def _remove_ids(body: dict[str, Any]) -> list[str]:
    """The :meth:`ShopService.remove_items` argument of a ``POST /items/remove`` body (the service
    checks the ids themselves)."""
    check_fields(_given(body), ("item_ids",), "field")
    return _id_list(body, "item_ids", _REMOVE_EXAMPLE)


# a decimal number >= 0 as people type one into a form: "5", "5.", ".5", "+5", "1e2" (not "1_000", "inf",
# "nan", "0x10" or full-width digits, which float() would take); spaces around it are ignored
_PRICE = re.compile(r"\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NEGATIVE_ZERO = re.compile(r"-(0+(\.0*)?|\.0+)([eE][+-]?[0-9]+)?")  # "-0", "-0.00": zero, as JSON's -0.0 is


async def _item_form(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """The fields and the image of a multipart ``POST /items`` (413 past the image limit)."""
    form = await _multipart(request)
    try:
        return await _item_fields_of_form(form)
    finally:
        await form.close()


async def _item_fields_of_form(form: FormData) -> tuple[dict[str, Any], bytes | None]:
    """The fields and the image of a parsed ``POST /items`` form: ``price`` a plain decimal number
    (spaces around it ignored; no underscores, ``-``, ``inf`` or ``nan``), and an empty box (price,
    category, description) or file input left out, as a browser sends a form: none for a new
    item, what it had for a removed item restored."""
    items = form.multi_items()
    check_fields([key for key, _ in items], _ITEM_FIELDS + ("image",), "form field")
    fields: dict[str, Any] = {}
    for key, value in items:
        if key == "image":
            continue
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a text field, not a file")
        fields[key] = value
    for name in ("category", "description"):  # a form sends its empty boxes: left out (kept on a restore)
        if name in fields and not fields[name].strip():
            del fields[name]
    if "price" in fields:
        raw = fields["price"].strip()
        if raw == "":
            fields["price"] = None
        elif _PRICE.fullmatch(raw) or _NEGATIVE_ZERO.fullmatch(raw):
            fields["price"] = float(raw)  # past a float's range: inf, which the service refuses by name
        else:
            raise ValueError(f"price: expected a number >= 0 (got {shown(raw)})")
    image = await _form_image(form)
    return _item_fields(fields, "form field"), image


DOCS_ASSETS = "/docs-assets"
REDOC_JS = "redoc.standalone.js"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"


def _offline_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI 5) and ``GET /redoc`` with their scripts from the installed
    ``fastapi-offline`` package under :data:`DOCS_ASSETS`, not from FastAPI's default CDN (the
    pages were blank on a machine without internet). Swagger UI 4 cannot read the OpenAPI 3.1
    schema FastAPI writes ("Unable to render this definition")."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    # ReDoc's footer loads Redocly's logo from their CDN (hidden when that fails): an empty picture in
    # its place, so that opening the page asks nothing of another host
    redoc_js = (assets / "redoc.standalone.js").read_bytes().replace(REDOC_CDN_LOGO, EMPTY_SVG)

    @app.get(f"{DOCS_ASSETS}/{REDOC_JS}", include_in_schema=False)  # before the mount, which would serve it as is
    async def redoc_script() -> Response:
        return Response(redoc_js, media_type="text/javascript")

    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} - docs"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url=str(app.openapi_url), title=title,
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url=str(app.openapi_url), title=title,
                              redoc_js_url=f"{DOCS_ASSETS}/{REDOC_JS}",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


class _NotJson(ValueError):
    """A constant Python's parser reads but JSON does not have."""


def _not_json(name: str) -> Any:
    """``json.loads``' ``parse_constant``: ``NaN``, ``Infinity`` and ``-Infinity`` are Python's, not JSON."""
    raise _NotJson(f"body: {name} is not JSON (a number must be finite; JSON has no NaN or Infinity)")


def _json_int(text: str) -> int:
    """``json.loads``' ``parse_int``: an integer of more digits than Python turns into a number
    (4,300) is named as such, not as text that is not UTF-8 (the ``ValueError`` it raised)."""
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _NotJson(f"body: a number of {digits:,} digits (got {shown(text)}); numbers here have at most "
                       f"{MAX_INT_DIGITS:,}")
    return int(text)


MAX_INT_DIGITS = 4300  # Python's default limit of int(str)


def _rendered(answer: BaseModel) -> Response:
    """``answer`` as its JSON response, rendered by the caller's thread: a batch's answer (up to
    :data:`MAX_BATCH_RESULTS` items, ~20 MB) rendered by FastAPI would be encoded on the event loop,
    holding every other request (health checks too) for as long."""
    return Response(answer.model_dump_json(), media_type="application/json")


# -- the app ---------------------------------------------------------------------------------------
def cors_origin(text: str) -> str:
    """An origin browsers may call the API from, written as a browser sends it: ``scheme://host[:port]``
    (``https://shop.example``, ``http://localhost:3000``), or ``*`` for any; a default port left out
    (``:443`` for https), a host of other scripts in its ASCII form (``bücher.example``:
    ``xn--bcher-kva.example``), in lower case; else ``ValueError`` saying what is wrong (a path, a
    space, a wildcard: no browser's ``Origin`` has one, so it would never match)."""
    value = text.strip()
    if value == "*":
        return value
    like = "expected an origin like https://shop.example or http://localhost:3000, or * for any"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"--cors-origin: {like}; an origin has no spaces (got {shown(text)})")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--cors-origin: {like} (got {shown(text)})")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        raise ValueError(f"--cors-origin: an origin is a scheme, host and port only, without a path or trailing "
                         f"slash: {bare} (got {shown(text)})")
    if "*" in parts.hostname:
        raise ValueError(f"--cors-origin: a site's name, not a pattern: give each site its own --cors-origin "
                         f"(got {shown(text)})")
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower case; an IPv6 address without its brackets
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ValueError(f"--cors-origin: {shown(parts.hostname)} is not a host name (got {shown(text)})") from None
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def create_app(service: ShopService, *, demo: bool = True, fraud_cases: bool = True,
               access_log: bool = False, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The FastAPI application over ``service``.

    Args:
        service: a loaded :class:`ShopService`.
        demo: try to mount the Gradio app at ``/demo`` (:func:`mount_demo`).
        fraud_cases: try to add the ``/fraud/rings|ring|explain`` endpoints (:func:`include_fraud_cases`).
        access_log: log one line a request to ``shopgraph.access`` (method, route, status,
            milliseconds, request id); every answer carries its ``X-Request-ID`` either way.
        cors_origins: the origins a browser may call the API from (:func:`cors_origin`; ``*``: any);
            none (the default): a browser lets no other site's page read the answers.
    """
    origins = [cors_origin(o) for o in cors_origins]
    app = FastAPI(
        title="ShopGraph API",
        version="0.1.0",
        description="Recommendations, similar items, text/image search and fraud scores from a ShopGraph run.",
        docs_url=None, redoc_url=None,  # FastAPI's pages load their scripts from a CDN: served offline below
        # "/recommend/" is a 404 naming /recommend, not a 307 to an absolute http:// URL (wrong behind
        # a TLS proxy, and a client that does not follow it sees no error code)
        redirect_slashes=False,
    )
    _offline_docs(app)
    metrics = Metrics()
    app.state.metrics = metrics
    app.state.service = service
    _install_error_handlers(app)
    k_param = Query(10, ge=1, le=K_MAX, description=f"number of results, 1..{K_MAX}")
    category_param = Query(None, description="only items of this category (omit it for every category; an empty "
                                             "value is refused)")
    exclude_param = Query([], description=f"item ids to leave out as well (what is in the cart, say), one parameter "
                                          f"each: exclude=i1&exclude=i2; at most {MAX_BATCH:,}; an id that is not "
                                          "served is nothing to leave out (named in exclude_not_served)")

    k_range = {"k": (1, K_MAX)}
    only_recommend = Depends(strict_query(("user_id", "k", "exclude_seen", "category", "exclude"), ints=k_range,
                                          bools=("exclude_seen",), non_empty=("user_id", "category", "exclude"),
                                          repeated=("exclude",)))
    only_similar = Depends(strict_query(("item_id", "k", "exclude"), ints=k_range, non_empty=("item_id", "exclude"),
                                        repeated=("exclude",)))
    only_new = Depends(strict_query(("user_id", "k", "category", "exclude"), ints=k_range,
                                    non_empty=("user_id", "category", "exclude"), repeated=("exclude",)))
    only_popular = Depends(strict_query(("k", "category", "exclude"), ints=k_range, non_empty=("category", "exclude"),
                                        repeated=("exclude",)))
    only_user = Depends(strict_query(("user_id",), non_empty=("user_id",)))
    body_errors: dict[int | str, dict[str, Any]] = {
        413: {"model": ErrorOut, "description": "body too large"},
        415: {"model": ErrorOut, "description": "unsupported content type"},
    }
    nothing = Depends(strict_query(()))
    cache_busting = Depends(strict_query(("v",)))  # /images: a version added to its URL, ignored

    @app.get("/recommend", response_model=RecommendOut, responses=_ERRORS, tags=["recommend"],
             summary="Top-k items for a user", dependencies=[only_recommend])
    def recommend(
        user_id: str = Query(..., description="external user id"),
        k: int = k_param,
        exclude_seen: bool = Query(True, description="drop items the user already purchased: true or false"),
        category: str | None = category_param,
        exclude: list[str] = exclude_param,
    ) -> RecommendOut:
        with _pointing_visitors("user_id"):
            rec = service.recommend(user_id, k, exclude_seen=exclude_seen, category=category, exclude=exclude)
        return RecommendOut(user_id=user_id.strip(), k=k, items=_items(rec),  # the id as stored
                            exclude_not_served=service.not_served(exclude))

    @app.get("/recommend/popular", response_model=PopularOut, responses={422: _ERRORS[422]}, tags=["recommend"],
             summary="The items most shoppers bought: for a first visit, with nothing viewed yet",
             dependencies=[only_popular])
    def recommend_popular(
        k: int = k_param,
        category: str | None = category_param,
        exclude: list[str] = exclude_param,
    ) -> PopularOut:
        rec = service.popular(k, category=category, exclude=exclude)
        return PopularOut(k=k, items=_items(rec), exclude_not_served=service.not_served(exclude))

    @app.get("/recommend/new", response_model=RecommendOut, responses=_ERRORS, tags=["recommend"],
             summary="Top-k of the items added since training, for a user (a \"new for you\" slot)",
             dependencies=[only_new])
    def recommend_new(
        user_id: str = Query(..., description="external user id"),
        k: int = k_param,
        category: str | None = category_param,
        exclude: list[str] = exclude_param,
    ) -> RecommendOut:
        with _pointing_visitors("user_id"):
            rec = service.recommend_new(user_id, k, category=category, exclude=exclude)
        return RecommendOut(user_id=user_id.strip(), k=k, items=_items(rec), exclude_not_served=service.not_served(exclude))

    @app.post("/recommend/batch", response_model=RecommendBatchOut, responses={**_ERRORS, **body_errors},
              tags=["recommend"], summary=f"Top-k items for up to {MAX_BATCH:,} users in one search (JSON)",
              openapi_extra=_json_schema(RecommendBatchIn), dependencies=[nothing])
    async def recommend_batch(request: Request) -> Response:
        body = await _ids_body(request, _RECOMMEND_BATCH_EXAMPLE, MAX_CARTS_JSON_BYTES, "a list of ids and their carts")
        ids, k, exclude_seen, category, exclude = _recommend_batch_json(body)
        ids, unknown = _known_only(body, ids, service.has_user)
        if unknown and isinstance(exclude, dict):  # their carts go with them (keys matched as ids are: spaces aside)
            gone = {u.strip() for u in unknown}
            exclude = {u: v for u, v in exclude.items() if not (isinstance(u, str) and u.strip() in gone)}

        def answer() -> Response:
            with _pointing_visitors("user_ids", _VISITORS):  # short: the message names up to 10 long ids
                recs = service.recommend_batch(ids, k, exclude_seen, category, exclude) if ids or not unknown else []
            # each user's cart by its id as stored (keys and ids are matched spaces aside, as the service does)
            carts = {str(u).strip(): v for u, v in exclude.items()} if isinstance(exclude, dict) else {}
            return _rendered(RecommendBatchOut(k=k, results=[
                RecommendOut(user_id=u.strip(), k=k, items=_items(rec), exclude_not_served=service.not_served(
                    carts.get(u.strip(), []))) for u, rec in zip(ids, recs)], unknown=unknown))

        return await run_in_threadpool(answer)

    @app.get("/similar", response_model=SimilarExcludingOut, responses=_ERRORS, tags=["recommend"],
             summary="Items similar to an item", dependencies=[only_similar])
    def similar(item_id: str = Query(..., description="external item id"), k: int = k_param,
                exclude: list[str] = exclude_param) -> SimilarExcludingOut:
        rec = service.similar_items(item_id, k, exclude)
        return SimilarExcludingOut(item_id=item_id.strip(), k=k, items=_items(rec),
                                   exclude_not_served=service.not_served(exclude))

    @app.post("/similar/batch", response_model=SimilarBatchOut, responses={**_ERRORS, **body_errors},
              tags=["recommend"], summary=f"Items similar to each of up to {MAX_BATCH:,} items in one search (JSON)",
              openapi_extra=_json_schema(SimilarBatchIn), dependencies=[nothing])
    async def similar_batch(request: Request) -> Response:
        body = await _ids_body(request, _SIMILAR_BATCH_EXAMPLE)
        ids, k = _similar_batch_json(body)
        ids, unknown = _known_only(body, ids, service.has_item)

        def answer() -> Response:
            recs = service.similar_items_batch(ids, k) if ids or not unknown else []
            return _rendered(SimilarBatchOut(k=k, results=[SimilarOut(item_id=i.strip(), k=k, items=_items(rec))
                                                           for i, rec in zip(ids, recs)], unknown=unknown))

        return await run_in_threadpool(answer)

    @app.post("/recommend/cold", response_model=ColdOut, responses={
        **_ERRORS, **body_errors, 503: {"model": ErrorOut, "description": "text given, and the run has no text index"},
    }, tags=["recommend"], summary="Top-k items for a visitor the model does not know: from items, or from text",
        openapi_extra=_json_schema(ColdIn), dependencies=[nothing])
    async def recommend_cold(request: Request) -> ColdOut:
        _media_type(request, ("application/json",))
        ids, text, k, n_seeds, category, exclude, skip_unknown = _cold_json(await _json_body(request, _COLD_EXAMPLE))

        def answer() -> ColdOut:  # in a worker thread: a query of 1,000 seeds held every other request up
            if text is not None:
                rec = service.recommend_for_text(text, k, n_seeds, category=category, exclude=exclude)
            else:  # removed items left out in the same step as the query (none left: the 404 names them all)
                rec = service.recommend_for_items(ids or [], k, leave_out_removed=True, skip_unknown=skip_unknown,
                                                  category=category, exclude=exclude)
            cut = service.text_cut_at(text) if text is not None else None
            return ColdOut(item_ids=ids, left_out=rec.left_out, unknown=rec.unknown, text=text, text_cut_at=cut, k=k,
                           items=_items(rec), exclude_not_served=service.not_served(exclude))

        return await run_in_threadpool(answer)

    search_body = _json_or_multipart(SearchIn, {
        "image": {"type": "string", "format": "binary",
                  "description": f"an image file, at most {MAX_IMAGE_BYTES // 2**20} MB (an empty file input: none)"},
        "text": {"type": "string", "maxLength": MAX_TEXT_CHARS,
                 "description": "text, alone or combined with the image (empty: none)"},
        "k": {"type": "integer", "minimum": 1, "maximum": K_MAX, "default": 10},
    }, required=[])

    @app.post("/search", response_model=SearchOut, responses={
        422: _ERRORS[422], 413: {"model": ErrorOut, "description": "upload too large"},
        415: {"model": ErrorOut, "description": "unsupported content type"},
        503: {"model": ErrorOut, "description": "the run has no text or image index"},
        400: {"model": ErrorOut, "description": "a multipart body that cannot be parsed"},
    }, tags=["search"], summary="Search items by text (JSON), or by an image, a text or both (multipart)", openapi_extra=search_body,
        dependencies=[nothing])
    async def search(request: Request) -> SearchOut:
        text: str | None = None
        image: bytes | None = None
        if _media_type(request, ("application/json", "multipart/form-data")) == "multipart/form-data":
            text, image, k = await _search_form(request)
        else:
            text, k = _search_json(await _json_body(request, _JSON_EXAMPLE))
        rec = await run_in_threadpool(service.search, text=text, image=image, k=k)
        cut = await run_in_threadpool(service.text_cut_at, text) if text is not None else None
        return SearchOut(text=text, text_cut_at=cut, image=image is not None, k=k, items=_items(rec))

    item_body = _json_or_multipart(ItemIn, {
        **{name: {"type": "string", "maxLength": MAX_TEXT_CHARS} for name in ("item_id", "title", "category",
                                                                               "description")},
        "price": {"type": "number", "minimum": 0},
        "image": {"type": "string", "format": "binary",
                  "description": f"the item's image, at most {MAX_IMAGE_BYTES // 2**20} MB"},
    }, required=["item_id", "title"])
    catalogue_errors: dict[int | str, dict[str, Any]] = {  # adding items: no id to look up, one to refuse
        422: _ERRORS[422], 409: {"model": ErrorOut, "description": "the item id exists already"},
        413: {"model": ErrorOut, "description": "upload too large"},
        415: {"model": ErrorOut, "description": "unsupported content type"},
        503: {"model": ErrorOut, "description": "no model to embed new items, or the journal could not be written"},
        400: {"model": ErrorOut, "description": "a multipart body that cannot be parsed"},
    }
    removal_errors: dict[int | str, dict[str, Any]] = {
        **_ERRORS, 404: {"model": ErrorOut, "description": "item ids that are not served (all of them in `ids`)"},
        413: catalogue_errors[413], 415: catalogue_errors[415],
        503: {"model": ErrorOut, "description": "the journal could not be written, or cannot be read"},
    }

    def _changed(change: Callable[[], Any]) -> Any:
        try:
            return change()
        except OSError as exc:  # the journal write failed: nothing was applied
            raise ApiError(503, f"catalogue: the change could not be written to the run's journal "
                                f"({exc.strerror or exc}); nothing was changed", "journal_unwritable") from None

    retried: dict[int | str, dict[str, Any]] = {200: {
        "model": ItemInfoOut,
        "description": "a retry: the item is served with every field sent (and its picture byte for byte); nothing "
                       "was written again"}}

    @app.post("/items", response_model=ItemInfoOut, status_code=201, responses={**retried, **catalogue_errors},
              tags=["catalogue"],
              summary="Add an item without retraining (JSON, or multipart with an image)",
              openapi_extra=item_body, dependencies=[nothing])
    async def add_item(request: Request, response: Response) -> ItemInfoOut:
        image: bytes | None = None
        if _media_type(request, ("application/json", "multipart/form-data")) == "multipart/form-data":
            fields, image = await _item_form(request)
        else:
            fields = _item_fields(await _json_body(request, _ITEM_EXAMPLE), "field")
        given = fields if image is None else {**fields, "image": image}  # no image given: kept on a restore

        def add() -> tuple[bool, ItemInfoOut]:
            done = service.add_item_outcome(**given)  # decided under the journal's lock, every worker's writes seen
            return done.added[0], _item_out(service.item_info(service.item_ids[done.positions[0]]), service)

        added, out = await run_in_threadpool(_changed, add)
        if not added:  # a retry of a write that went through (this worker's or another's): nothing written
            response.status_code = 200
        return out

    batch_item = BatchItemIn.model_json_schema()
    batch_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["items"], "additionalProperties": False,
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": batch_item}},
    }}}}}

    @app.post("/items/batch", response_model=BatchOut, status_code=201,
              responses={200: {"model": BatchOut, "description": "a retry: every item is served as sent; nothing "
                                                                 "added (`added` 0) or written again"},
                         **{c: r for c, r in catalogue_errors.items() if c != 400}},  # JSON only
              tags=["catalogue"], summary=f"Add up to {MAX_BATCH:,} items at once, all or none (JSON; images in "
                                          "base64)", openapi_extra=batch_body, dependencies=[nothing])
    async def add_items(request: Request, response: Response) -> BatchOut:
        _media_type(request, ("application/json",))
        body = await _json_body(request, _BATCH_EXAMPLE, MAX_BATCH_JSON_BYTES, "a batch of items")
        items = await run_in_threadpool(_batch_items, body, service)

        def add() -> BatchOut:
            done = service.add_items_outcome(items)  # which were added, decided under the journal's lock
            return BatchOut(added=sum(done.added),
                            items=[_item_out(service.item_info(service.item_ids[p]), service) for p in done.positions])

        out = await run_in_threadpool(_changed, add)
        if out.added == 0:
            response.status_code = 200
        return out

    @app.post("/items/remove", response_model=RemovedBatchOut, responses=removal_errors, tags=["catalogue"],
              summary=f"Remove up to {MAX_BATCH:,} items at once, all or none (JSON)",
              openapi_extra=_json_schema(RemoveIn), dependencies=[nothing])
    async def remove_items(request: Request) -> RemovedBatchOut:
        ids = _remove_ids(await _ids_body(request, _REMOVE_EXAMPLE))
        await run_in_threadpool(_changed, lambda: service.remove_items(ids))
        return RemovedBatchOut(removed=len(ids), item_ids=[i.strip() for i in ids])  # as stored

    @app.get("/items/{item_id:path}", response_model=ItemInfoOut, responses=_ERRORS, tags=["catalogue"],
             summary="One served item: title, category, description, price, image", dependencies=[nothing])
    def get_item(item_id: str) -> ItemInfoOut:
        return _item_out(service.item_info(item_id), service)

    @app.get("/images/{item_id:path}", response_class=FileResponse, tags=["catalogue"],
             summary="A served item's image file (the `image_url` of `GET /items/{item_id}`)",
             responses={**_ERRORS, 200: {"content": {"image/*": {}}, "description": "the image file"},
                        503: {"model": ErrorOut, "description": "the image file is missing on the server"}},
             dependencies=[cache_busting])
    def item_image(item_id: str, request: Request,
                   v: str | None = Query(None, description="any value, ignored: a version a client or CDN adds to "
                                                          "the URL to fetch the picture afresh")) -> Response:
        path = service.item_info(item_id)["image"]  # an unknown item: 404
        if not path:
            raise UnknownIdError(f"item_id: item {shown(item_id.strip())} has no image", "image", [item_id.strip()])
        if not Path(path).is_file():
            raise NotAvailableError(f"item_id: the image file of item {shown(item_id.strip())} is missing on the server")
        response = FileResponse(path, stat_result=os.stat(path))  # its headers (ETag) set now, not when sent
        # a browser or CDN that has this very file (its ETag) gets a 304 and no body
        etag = response.headers.get("etag")
        sent = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
        if etag and (etag in sent or "*" in sent):
            return Response(status_code=304, headers={k: v for k, v in response.headers.items()
                                                       if k in ("etag", "last-modified")})
        return response

    # HEAD too, as CDNs and link checkers probe a picture (the headers of GET, no body)
    app.head("/images/{item_id:path}", response_class=FileResponse, tags=["catalogue"],
             summary="The headers of `GET /images/{item_id}` (its type and size), without the file",
             responses={**_ERRORS, 200: {"description": "the image file's headers"},
                        503: {"model": ErrorOut, "description": "the image file is missing on the server"}},
             dependencies=[cache_busting])(item_image)

    @app.delete("/items/{item_id:path}", response_model=RemovedOut, responses={
        **_ERRORS, 503: {"model": ErrorOut, "description": "the journal could not be written"},
    }, tags=["catalogue"],
                summary="Remove an item from every answer", dependencies=[nothing])
    async def remove_item(item_id: str) -> RemovedOut:
        await run_in_threadpool(_changed, lambda: service.remove_item(item_id))
        return RemovedOut(item_id=item_id.strip(), removed=True)

    @app.get("/fraud/score", response_model=FraudOut, responses=_ERRORS, tags=["fraud"],
             summary="Fraud probability of a user", dependencies=[only_user])
    def fraud_score(user_id: str = Query(..., description="external user id")) -> FraudOut:
        return _fraud_out(service, service.score_user(user_id))

    @app.post("/fraud/score/batch", response_model=FraudBatchOut, responses={**_ERRORS, **body_errors},
              tags=["fraud"], summary=f"Fraud probabilities of up to {MAX_BATCH:,} users (JSON)",
              openapi_extra=_json_schema(FraudBatchIn), dependencies=[nothing])
    async def fraud_score_batch(request: Request) -> FraudBatchOut:
        body = await _ids_body(request, _FRAUD_BATCH_EXAMPLE)
        ids, reasons = _fraud_batch_json(body, service)
        ids, unknown = _known_only(body, ids, service.has_user)
        scored = await run_in_threadpool(service.score_users, ids, reasons=reasons) if ids or not unknown else []
        scores = [_fraud_out(service, s) for s in scored]
        return FraudBatchOut(count=len(scores), flagged=sum(s.flagged for s in scores),
                             held_out_flagged=sum(bool(s.held_out_flagged) for s in scores), scores=scores,
                             unknown=unknown)

    @app.get("/healthz", response_model=HealthOut, tags=["ops"], summary="Liveness and what is loaded",
             responses={422: _ERRORS[422]}, dependencies=[nothing])
    def healthz() -> HealthOut:
        info = service.info()
        return HealthOut(status="degraded" if info["catalogue"]["fault"] else "ok", **info)

    @app.head("/healthz", tags=["ops"], summary="Liveness for probes that send HEAD: 200, no body",
              responses={422: _ERRORS[422]}, dependencies=[nothing])
    def healthz_head() -> Response:
        return Response()

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"], responses={422: _ERRORS[422]},
             summary="Request counts and latency histogram (Prometheus text format)", dependencies=[nothing])
    def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    if fraud_cases:
        include_fraud_cases(app, service.run_path, service.held_out_explanation, service.feature_value_words)
    if demo:
        mount_demo(app, service)
    # inside the metrics (a preflight is counted, as "unmatched": it is answered before any route); a
    # preflight refused (another site, method or header) is a JSON 400, cors_refused, which a
    # browser never shows to the page's script (it reports a CORS failure)
    # answers of 1 KB or more compressed for a client that sends Accept-Encoding: gzip (a batch of 100
    # users at k=1000: 20.8 MB, 3.1 MB gzipped); pictures and event streams are left as they are
    app.add_middleware(_GZip, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL,
                       exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "image/*"))
    if origins:
        app.add_middleware(_CorsMiddleware, allow_origins=origins,  # type: ignore[arg-type]
                           allow_methods=["GET", "HEAD", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"],
                           max_age=600)
    app.add_middleware(MetricsMiddleware, metrics=metrics, router=app.router,  # type: ignore[arg-type]
                       access_log=access_log)
    return app


def nodelay_listener(sock: socket.socket) -> socket.socket:
    """The same listening socket, labelled ``proto=IPPROTO_TCP`` so accepted sockets get TCP_NODELAY.

    With ``--workers N`` uvicorn binds the socket itself with ``proto`` 0; accepted sockets inherit
    it and asyncio then skips ``TCP_NODELAY``, so every keep-alive response waits for the client's
    delayed ACK (~40 ms on Linux; uvicorn issue #3149, up to uvicorn 0.54; 0.55 binds it with
    ``IPPROTO_TCP`` and this returns it as it is). Measured on this machine with a trivial FastAPI
    app and uvicorn 0.54: p50 1.7 ms with 1 worker, 44 ms with 2.

    (A ``uvicorn.Config`` subclass would be simpler but is pickled to every worker, which then
    imports this module, torch included, before answering the supervisor's health ping in time.)
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    return sock


def _serving_threads() -> None:
    """One FAISS thread per process unless OMP_NUM_THREADS says otherwise: a server's parallelism
    comes from concurrent requests, and OpenMP teams on single-vector searches only add jitter.

    And a thread lock for tqdm: its bars (the encoders', loading model weights; even disabled
    ones) otherwise create a multiprocessing semaphore, which a worker stopped by uvicorn leaves
    behind ("There appear to be 2 leaked semaphore objects to clean up at shutdown")."""
    if "OMP_NUM_THREADS" not in os.environ:
        import faiss

        faiss.omp_set_num_threads(1)
    import tqdm
    import tqdm.auto

    lock = threading.RLock()
    for bar in (tqdm.tqdm, tqdm.auto.tqdm):  # the subclass keeps a lock of its own once it has made one
        bar.set_lock(lock)


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: loads the run named by ``$SHOPGRAPH_RUN``."""
    _serving_threads()
    run = os.environ.get(RUN_ENV)
    if not run:
        raise RuntimeError(f"{RUN_ENV} is not set (use `shopgraph serve --run RUN`)")
    service = ShopService.from_run(run)
    app = create_app(service, access_log=os.environ.get(ACCESS_LOG_ENV) == "1", demo=False,
                     cors_origins=os.environ.get(CORS_ENV, "").split())
    refuse_demo(app)  # several workers: a visitor's events would reach workers that never saw them
    logger.info("warmed up in %.1f s (encoders and fraud explainers loaded)", service.warm_up())
    _freeze_heap()
    return app


def _freeze_heap() -> None:
    """Move everything loaded so far (torch, the run, the indexes' Python side) out of the cyclic
    GC's reach: a full collection would otherwise walk it all and stall a request for tens of ms."""
    import gc

    gc.collect()
    gc.freeze()


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) for uvicorn, as uvicorn binds it.

    Bound before the run folder is loaded, so that a port in use is one error line at once, and
    nothing says "serving" before the address is ours (uvicorn's own bind exits the process).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: expected a port number from 1 to 65535, or 0 for any free port (got {port!r})")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = (f"port {port} is in use (another server?); choose another --port" if exc.errno == errno.EADDRINUSE
                else f"{exc.strerror or exc}")
        raise OSError(f"--host/--port: cannot listen on {host}:{port}: {hint}") from None
    sock.set_inheritable(True)
    return sock


def cli_serve(args: argparse.Namespace) -> int:
    """``shopgraph serve --run RUN [--host H] [--port P] [--workers N]``."""
    run = Path(args.run).resolve()
    if not (run / "manifest.json").is_file():
        raise FileNotFoundError(f"run folder {run}: no manifest.json (run `shopgraph build` first)")
    sock = listen(args.host, args.port)
    try:
        return _serve(run, args, sock)
    finally:
        sock.close()


def _serve(run: Path, args: argparse.Namespace, sock: socket.socket) -> int:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: the API has no authentication", flush=True)
    workers = int(getattr(args, "workers", 1) or 1)
    origins = [cors_origin(o) for o in getattr(args, "cors_origin", None) or ()]
    port = sock.getsockname()[1]
    serving = (f"serving {run} on http://{args.host}:{port} ({workers} worker{'s' if workers > 1 else ''}); "
               "docs at /docs")
    if workers == 1:
        _serving_threads()
        service = ShopService.from_run(run)
        app = create_app(service, access_log=bool(getattr(args, "access_log", False)), cors_origins=origins)
        logger.info("warmed up in %.1f s (encoders and fraud explainers loaded)", service.warm_up())
        _freeze_heap()
        print(serving, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, access_log=False, log_level="info"))
        server.run(sockets=[sock])
        return 0
    from uvicorn.supervisors import Multiprocess

    # Load it once here, so that a run folder the workers cannot serve (stale index, bad checksum)
    # is one error line, not workers dying and respawning with the same traceback.
    # The journal is read (a damaged line stops here too) but not applied: that needs the model.
    ShopService.from_run(run, load_model=False, fraud_reasons=False, catalogue=False)
    CatalogueJournal(run).read()
    gc.collect()
    print(serving, flush=True)
    print("the Gradio demo is not served with several workers: `shopgraph serve --run RUN --workers 1 --port "
          "OTHER` serves it beside this server", flush=True)
    os.environ[RUN_ENV] = str(run)
    os.environ[ACCESS_LOG_ENV] = "1" if getattr(args, "access_log", False) else "0"
    os.environ[CORS_ENV] = " ".join(origins)
    config = uvicorn.Config("shopgraph.retrieval.api:app_from_env", factory=True, host=args.host, port=port,
                            workers=workers, access_log=False, log_level="info")
    Multiprocess(config, sockets=[nodelay_listener(sock)]).run()
    return 0
