"""How an error message quotes what it was given: one place for every layer.

``shown`` cuts a long value (an id of 10,000 characters is named by its start and its length, not
echoed whole) and never fails on one that ``repr`` cannot write; ``listed_ids`` names a few of
many ids. Torch-free and import-free, so the loader, the rings, the service, the HTTP API and the
demo quote values alike (``retrieval.service`` re-exports both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SHOWN_CHARS = 60  # longest value echoed in an error message


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (a long input is
    named by its start and its length, not echoed whole)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's 4,300-digit limit; lists nested too deep
        text = f"<{type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else (
        f" ({len(value):,} items)" if isinstance(value, Sequence | bytes) else "")
    return text[:limit] + "…" + size


def listed_ids(ids: Sequence[str], at_most: int = 10) -> str:
    """``'a', 'b' and 3 more``: the ids an error names."""
    return ", ".join(shown(i) for i in ids[:at_most]) + (f" and {len(ids) - at_most:,} more" if len(ids) > at_most
                                                         else "")


def known_ids(count: int, noun: str, example: str | None) -> str:
    """What a refusal says of the ids there are: ``"99 rings known; ring ids look like R0001"``,
    ``"1 ring known; ..."``, ``"no rings known"``."""
    if not count or example is None:
        return f"no {noun}s known"
    return f"{count:,} {noun}{'s' if count > 1 else ''} known; {noun} ids look like {example}"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``"1 account"``, ``"2 accounts"`` (``many``: the plural when it is not ``noun + "s"``)."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {many or noun + 's'}"


def did_you_mean(positions: Mapping[str, int], key: str) -> str:
    """`` (did you mean 'u000858'? ids are case-sensitive)`` when exactly one known id is ``key`` up
    to case (``U000858``, as people type ids), else ``""``. A scan of the ids, on the error path only."""
    same = same_but_case(positions, [key])
    return f" (did you mean {shown(same[key])}? ids are case-sensitive)" if key in same else ""


def same_but_case(positions: Mapping[str, int], keys: Sequence[str]) -> dict[str, str]:
    """``{key: the one known id that is it up to case}`` for those of ``keys`` that have one (one scan)."""
    folded = {key.casefold(): key for key in keys}
    found: dict[str, list[str]] = {}
    for known in list(positions):  # a copy: another thread may add an id
        key = folded.get(known.casefold())
        if key is not None:
            found.setdefault(key, []).append(known)
    return {key: ids[0] for key, ids in found.items() if len(ids) == 1}
