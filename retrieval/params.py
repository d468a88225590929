"""Strict query parameters for the HTTP API (``retrieval/api.py``, ``retrieval/fraud_api.py``),
and the error answer both give.

FastAPI on its own ignores unknown query parameters, keeps the last of repeated ones, and parses
integers leniently (``k=5.0``). A client that misspells ``k`` as ``K`` or sends ``k`` twice would
silently get an answer to a question it did not ask, so each route declares its parameters here and
anything else is a 422 naming the parameter, in the API's ``<argument>: <problem>`` form.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, get_args
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field

from shopgraph.retrieval.service import key_path, shown

_DIGITS = re.compile(r"[0-9]{1,9}")


# what went wrong, for a program: every error answer's ``error`` (docs/http_api.md, "Errors")
ErrorCode = Literal[
    "unreadable_body",  # 400: a multipart body or Content-Length that cannot be parsed
    "cors_refused",  # 400: a browser's preflight from a site, or for a method or header, not let in
    "unknown_user", "unknown_item", "unknown_ring", "unknown_device",  # 404: an id the run does not know
    "no_image",  # 404: a served item without a picture
    "no_route",  # 404: a path no route has
    "method_not_allowed",  # 405
    "duplicate_id",  # 409: an item id the catalogue has
    "too_large",  # 413: a body, upload or form field over its limit
    "unsupported_media_type",  # 415: a content type or encoding the route does not take
    "invalid_value",  # 422: any other invalid parameter or body
    "client_closed",  # 499: the client left before its body arrived (never received)
    "not_available",  # 503: the run lacks what the call needs
    "journal_unwritable", "journal_unreadable",  # 503: the run's catalogue journal
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)
# the code of an error raised without one, by its status
STATUS_CODES: dict[int, str] = {400: "unreadable_body", 404: "no_route", 405: "method_not_allowed",
                                409: "duplicate_id", 413: "too_large", 415: "unsupported_media_type",
                                422: "invalid_value", 499: "client_closed", 503: "not_available"}


class ErrorOut(BaseModel):
    """Every error answer of the API (one schema, so generated clients get one ``ErrorOut``)."""

    error: ErrorCode = Field(description="what went wrong, for a program: one of a fixed set of codes, which "
                                         "stay as they are when the wording of `detail` changes")
    detail: str = Field(description="<argument>: <problem> (got <value>), for a person")
    ids: list[str] | None = Field(None, description="with unknown_user, unknown_item, unknown_ring, unknown_device, "
                                                    "no_image and duplicate_id: every id the error is about, as "
                                                    "given, each once (`detail` names the first ten); absent "
                                                    "otherwise")


class ApiError(HTTPException):
    """An ``HTTPException`` whose answer carries ``code`` as its ``error`` (else the status's,
    :data:`STATUS_CODES`)."""

    def __init__(self, status_code: int, detail: str, code: str, ids: Sequence[str] = ()) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"code: not an error code (got {code!r})")
        super().__init__(status_code, detail)
        self.code = code
        self.ids = list(ids)


def error_code(status: int, exc: Exception | None = None) -> str:
    """The ``error`` of an answer with ``status``, raised as ``exc``: its own code where it has one
    (:class:`ApiError`), else the status's (``"invalid_value"`` for a status not listed)."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code in ERROR_CODES else STATUS_CODES.get(status, "invalid_value")


def parse_int(name: str, raw: str, low: int, high: int) -> int:
    """A decimal integer in ``low..high`` written as digits only (no sign, point, exponent,
    underscore or spaces), else ``ValueError`` naming ``name``."""
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ValueError(f"{name}: expected an integer between {low} and {high} (got {shown(raw)})")
    return int(raw)


def parse_bool(name: str, raw: str) -> bool:
    """``true`` / ``false`` (any case), else ``ValueError`` naming ``name``."""
    low = raw.lower()
    if low not in ("true", "false"):
        raise ValueError(f"{name}: expected true or false (got {shown(raw)})")
    return low == "true"


def field_name(key: str) -> str:
    """A field or parameter name for an error message: cut to 40 characters, escaped when not valid
    Unicode (:func:`~shopgraph.graph.messages.key_path` of a top-level key)."""
    return key_path("", key)


def check_utf8(query: bytes, allowed: Sequence[str] | None = None) -> None:
    """``ValueError`` naming the first parameter of a raw query string whose name or value does not
    decode as UTF-8 (``%FF``): Starlette would hand it on with the bytes replaced by "�", and a
    lookup would answer "unknown user '�'" for what is a client's encoding mistake. A parameter
    whose name is not in ``allowed`` is left to the unknown-parameter check (its value does not
    matter), and a name that is not UTF-8 is shown as its bytes, not with "�"."""
    if b"%" not in query:  # only %-escapes can carry bytes that are not UTF-8 (a raw one is refused by the server)
        return
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        raw_key = unquote_to_bytes(key.replace(b"+", b" "))
        try:
            name = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"a parameter name: not valid UTF-8 (got {shown(raw_key, 60)})") from None
        if allowed is not None and name not in allowed:
            continue
        raw = unquote_to_bytes(value.replace(b"+", b" "))
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{field_name(name)}: not valid UTF-8 (got {shown(raw, 60)})") from None


def check_utf8_path(raw_path: bytes, name: str) -> None:
    """``ValueError`` naming ``name`` (the route's path parameter) when the raw path's %-escapes do
    not decode as UTF-8 (``/items/%FF``), as :func:`check_utf8` for a query."""
    if b"%" not in raw_path:
        return
    raw = unquote_to_bytes(raw_path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not valid UTF-8 (got the path {shown(raw, 60)})") from None


def check_fields(present: Sequence[str], allowed: Sequence[str], what: str, repeated: Sequence[str] = ()) -> None:
    """Each of ``present`` (names in the order given) is in ``allowed`` and given once (those of
    ``repeated``, lists, as often as wanted)."""
    seen: set[str] = set()
    for key in present:
        if key not in allowed:
            raise ValueError(f"{field_name(key)}: unknown {what} "
                             f"(expected {', '.join(allowed) or 'none'})")
        if key in seen and key not in repeated:
            raise ValueError(f"{key}: given more than once (expected one value)")
        seen.add(key)


def strict_query(
    allowed: Sequence[str], *, ints: Mapping[str, tuple[int, int]] | None = None,
    bools: Sequence[str] = (), non_empty: Sequence[str] = (), repeated: Sequence[str] = (),
) -> Callable[[Request], Awaitable[None]]:
    """A route dependency that refuses (422) unknown or repeated query
    parameters (but those of ``repeated``, lists), integers that are not plain digits in range,
    booleans other than true/false and empty values of ``non_empty``. It runs before FastAPI
    parses the typed parameters, so those only ever see values that passed here."""
    ints = dict(ints or {})

    # async, though it awaits nothing: FastAPI runs a plain ``def`` dependency in its thread pool,
    # a thread hop that cost ~0.15 ms a request (bench/bench_api.py); this runs on the event loop.
    async def check(request: Request) -> None:
        items = request.query_params.multi_items()
        try:
            check_utf8(request.scope.get("query_string", b""), allowed)
            check_utf8_path(request.scope.get("raw_path") or b"", next(iter(request.path_params), "path"))
            check_fields([key for key, _ in items], allowed, "parameter", repeated)
            for key, value in items:
                if key in ints:
                    parse_int(key, value, *ints[key])
                elif key in bools:
                    parse_bool(key, value)
                elif key in non_empty and not value.strip():
                    raise ValueError(f"{key}: expected a non-empty value (got {shown(value)})")
        except ValueError as exc:  # an HTTPException, so a router used on its own answers 422 too
            raise HTTPException(422, str(exc)) from None

    return check
