"""How an error message quotes what it was given: one place for every layer.

``shown`` cuts a long value (an id of 10,000 characters is named by its start and its length, not
echoed whole) and never fails on one that ``repr`` cannot write; ``listed_ids`` names a few of
many ids; ``key_path`` names where in a JSON body a value is; ``invisible`` says which characters
show as nothing, and ``did_you_mean`` names the one known id an unknown one looks like. Torch-free and import-free, so the loader, the rings, the
service, the HTTP API and the demo quote values alike (``retrieval.service`` re-exports them).
"""

from __future__ import annotations

import re
import unicodedata
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
    # a string's (bytes') quote closed after the cut, as it opened: 'xxxx…' (5,000 characters)
    quote = text[0] if isinstance(value, str) else text[1] if isinstance(value, bytes) else ""
    return text[:limit] + "…" + quote + size


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_path(where: str, key: str) -> str:
    """Where a JSON object's value is, as every error names it: the key after a dot when it is a
    plain name (``items[3].title``, ``exclude.u001``), else quoted in brackets
    (``exclude['u 001']``, ``exclude['a.b']``), so a path reads one way whichever layer checks it;
    a top-level key (``where`` empty) by itself, cut to 40 characters, escaped when it is not valid
    Unicode (a lone surrogate: a response body is UTF-8)."""
    if not where:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return shown(key, 40)
        return key if len(key) <= 40 else key[:40] + "…"
    return f"{where}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{where}[{shown(key, 40)}]"


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


# Characters that show as nothing besides Unicode's format characters (Cf: zero-width spaces, the
# byte-order mark): the other default-ignorable code points (a combining grapheme joiner, Hangul and
# Mongolian fillers, variation selectors) and the blank braille pattern
_SHOWS_NOTHING = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0,
                            *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def invisible(ch: str) -> bool:
    """Whether a character shows as nothing: a format character (``Cf``) or another default-ignorable
    code point (:data:`_SHOWS_NOTHING`). Ids, category names and titles are judged by what shows."""
    return unicodedata.category(ch) == "Cf" or ord(ch) in _SHOWS_NOTHING


# Letters of other scripts that look like Latin ones (an id pasted from a document or typed on a
# Cyrillic or Greek keyboard): the common ones of Unicode's confusables list, both cases.
_LOOKALIKES = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеіјорсхуѕԁһӏԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧαικνορτυχ",
    "ABESIJKMHOPCTXYaeijopcxysdhlqwABEZHIKMNOPTYXaikvoptux",
)


def _looks(text: str) -> str:
    """``text`` as a person reads it: compatibility forms (NFKC: full-width ``ｕ００１`` is ``u001``),
    characters that show as nothing (:func:`invisible`: zero-width spaces, byte-order marks,
    variation selectors) and case aside, letters of other scripts that look like Latin ones read as
    those."""
    visible = "".join(ch for ch in unicodedata.normalize("NFKC", text) if not invisible(ch))
    return visible.translate(_LOOKALIKES).casefold()


def how_it_differs(typed: str, known: str) -> str:
    """Why ``typed`` is not the id ``known`` it looks like: ``"ids are case-sensitive"``, or the first
    character that only looks like one of ``known`` (``"'о' is U+043E CYRILLIC SMALL LETTER O"``)."""
    if typed.casefold() == known.casefold():
        return "ids are case-sensitive"
    strays = [ch for ch in typed if ch not in known]
    # a letter in another case is the lesser difference: the look-alike character is named (U00021３: '３')
    odd = next((ch for ch in strays if ch.swapcase() not in known), strays[0] if strays else None)
    if odd is None:
        return "ids must match exactly"
    name = unicodedata.name(odd, "an unnamed character")
    return f"ids must match exactly, and {odd!r} is U+{ord(odd):04X} {name}" if not invisible(odd) \
        else f"ids must match exactly, and the id holds an invisible U+{ord(odd):04X} {name}"


def did_you_mean(positions: Mapping[str, int], key: str) -> str:
    """`` (did you mean 'u000858'? ids are case-sensitive)`` when exactly one known id looks like
    ``key`` (:func:`same_but_case`: ``U000858`` as people type ids, a full-width or Cyrillic letter
    pasted from a document), else ``""``. A scan of the ids, on the error path only."""
    same = same_but_case(positions, [key])
    return f" (did you mean {shown(same[key])}? {how_it_differs(key, same[key])})" if key in same else ""


def same_but_case(positions: Mapping[str, int], keys: Sequence[str]) -> dict[str, str]:
    """``{key: the one known id that looks like it}`` for those of ``keys`` that have one (one scan):
    the same up to case, compatibility forms, invisible characters and letters of other scripts
    that look like Latin ones (:func:`_looks`)."""
    folded = {_looks(key): key for key in keys}
    found: dict[str, list[str]] = {}
    for known in list(positions):  # a copy: another thread may add an id
        key = folded.get(_looks(known))
        if key is not None and key != known:
            found.setdefault(key, []).append(known)
    return {key: ids[0] for key, ids in found.items() if len(ids) == 1}
