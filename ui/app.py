"""The Gradio demo: recommendations, similar items and search, fraud scores, fraud rings, model metrics.

The app is thin: every answer comes from :class:`~shopgraph.retrieval.service.ShopService` (the same
object the HTTP API calls) or from :class:`~shopgraph.graph.rings.FraudCases` (the rings
engineer's API), and the files of the run folder (``metrics.json``, ``plots/*.png``, case
exports). What this module adds is presentation: thumbnails, tables, a ring drawing, and
messages for bad input.

Each tab's work is a plain function returning a NamedTuple of display values
(:func:`recommend_view`, :func:`similar_view`, :func:`text_search_view`,
:func:`image_search_view`, :func:`fraud_view`, :func:`verdict`, :func:`rings_table`,
:func:`ring_view`, :func:`model_view`), so the tests call them without a browser;
:func:`build_app` wires them to Gradio components. Bad input never raises out of a handler: the
view carries a ``status`` message (shown in the tab and as a ``gr.Warning`` toast).

Images are handed to Gradio as decoded PIL images, never as paths, so the app shows them
wherever the shop's folder lives (Gradio serves files only from its cache, the working folder and
the temp folder); case files are copied into a temp folder before they are offered for download.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from shopgraph.graph.messages import plural
from shopgraph.graph.wording import (
    FRAUD_SCORER_NAMES,
    ValueWords,
    cites_training_labels,
    label_words,
    reason_in_words,
    value_in_words,
)
from shopgraph.retrieval.export import contradiction
from shopgraph.retrieval.service import (
    HELD_OUT_UNATTRIBUTED,
    MAX_TEXT_CHARS,
    NotAvailableError,
    ShopService,
    UnknownIdError,
    listed_ids,
    shown,
    shows_nothing,
)

if TYPE_CHECKING:
    import gradio as gr
    from PIL.Image import Image as PILImage

    from shopgraph.graph.rings import FraudCases, Ring

logger = logging.getLogger(__name__)

THUMB_SIZE = 128
HISTORY_ITEMS = 8
DEFAULT_K = 8
MAX_K = 20  # the "how many" sliders' top; the message for other values names the same range
SAMPLES_PER_KIND = 4
SAMPLES_DISPUTED = 2  # sample accounts of each kind whose held-out score contradicts their label
RING_LABELS = 12  # rings up to this size get their account ids written on the drawing
RING_ITEMS = 12  # items drawn in a ring's subgraph (the ones most members bought)
ERROR_PREFIX = "**Problem:** "  # plain text: headless browsers may lack an emoji font
# the boxes' labels: messages about a box's value name the box as the page shows it
SHOPPER, VISITOR_ITEMS, ITEM, TEXT, ACCOUNT, THRESHOLD, RING = (
    "Shopper", "Visitor's items", "Item", "Text", "Account", "Threshold", "Ring")
GalleryItem = tuple["PILImage", str]  # (thumbnail, caption)
_CATEGORY_COLOURS = [(78, 121, 167), (242, 142, 43), (225, 87, 89), (118, 183, 178), (89, 161, 79),
                     (237, 201, 72), (176, 122, 161), (255, 157, 167), (156, 117, 95), (186, 176, 172)]


# -- display values -----------------------------------------------------------------------------
class RecommendView(NamedTuple):
    """What the Recommend tab shows for one user.

    Attributes:
        status: Markdown: a one-line summary, or a message starting with ``ERROR_PREFIX``.
        history: the user's most recent items (thumbnail, "title · event · date").
        gallery: the recommendations (thumbnail, "title · score").
        table: rank, item id, title, category, score, reason.
    """

    status: str
    history: list[GalleryItem]
    gallery: list[GalleryItem]
    table: pd.DataFrame


class SearchView(NamedTuple):
    """Nearest items for an item, a text or an image.

    Attributes:
        status: Markdown summary or message.
        gallery: (thumbnail, "title · score").
        table: rank, item id, title, category, score, reason.
    """

    status: str
    gallery: list[GalleryItem]
    table: pd.DataFrame


class FraudView(NamedTuple):
    """A user's fraud score and why.

    Attributes:
        status: Markdown summary (probability, threshold) or message.
        probability: the scorer's probability (``None`` on bad input, NaN without a scorer).
        threshold: the validation-chosen threshold (``None`` on bad input).
        verdict: Markdown flag / not flag at ``threshold``.
        reasons: table of the top reasons (feature or neighbour, value, contribution).
        method: how the reasons were computed.
        held_out: for an account the scorer was trained on, its score with its label held out
            (the verdict gives it a second line), else ``None``.
        ring: the highest-ranked device-sharing group the account is in (the Fraud tab's button
            opens it on the Rings tab), else ``None``.
    """

    status: str
    probability: float | None
    threshold: float | None
    verdict: str
    reasons: pd.DataFrame
    method: str
    held_out: float | None = None
    ring: str | None = None


class RingView(NamedTuple):
    """One ring: its drawing, members and case files.

    Attributes:
        status: Markdown summary or message.
        image: the subgraph drawing (``None`` on bad input).
        files: paths of the case files (JSON, CSV) in a temp folder.
        members: member table (user id, fraud probability, label, devices, purchases).
    """

    status: str
    image: PILImage | None
    files: list[str]
    members: pd.DataFrame


class ModelView(NamedTuple):
    """Metrics of the run against its baselines.

    Attributes:
        status: Markdown summary or message.
        purchase: one row per model (GNN first) with the ranking metrics.
        fraud: one row per model (GNN first) with the fraud metrics.
        plots: (image, caption) for each ``RUN/plots/*.png``.
        purchase_legend, fraud_legend: Markdown: each column of the table in plain words, and its
            baselines.
        technical: Markdown (small print): the technical names of ShopGraph's models.
    """

    status: str
    purchase: pd.DataFrame
    fraud: pd.DataFrame
    plots: list[GalleryItem]
    purchase_legend: str = ""
    fraud_legend: str = ""
    technical: str = ""


# the score column says what its number is: a cosine similarity (similar items, search and a
# visitor's recommendations; text and image together average two), or a shopper's raw fit score,
# an unscaled inner product (e.g. 1794.17) of which only the order means something
SIMILARITY = "similarity (1 = same)"
FIT_SCORE = "fit score (order only)"
# the price as the shop's items table gives it, in the shop's currency ("" when it gives none)
RESULT_COLUMNS = ["rank", "item_id", "title", "category", "price", SIMILARITY, "reason"]
RECOMMEND_COLUMNS = ["rank", "item_id", "title", "category", "price", FIT_SCORE, "reason"]
# the score header on two lines, not cut mid-word
_RESULT_WIDTHS: list[str | int] = ["5%", "8%", "26%", "10%", "7%", "10%", "34%"]


# characters that Markdown or HTML would read as markup on one line (tags, entities, emphasis, code,
# links, maths, e-mail autolinks), written as numeric character references: the Markdown status and
# the HTML toast both show them as the characters they are
_MARKUP = {ord(c): f"&#{ord(c)};" for c in "&<>\\`*_~[]$@"}
# bidirectional controls (the marks, embeddings, overrides and isolates): one in an echoed text could
# reverse the rest of the line; each is shown as its code point instead
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_MARKUP.update({c: f"&#91;U+{c:04X}&#93;" for c in _BIDI})
_PLAIN = {c: f"[U+{c:04X}]" for c in _BIDI}
_AUTOLINK = re.compile(r"(?i)(?<=[a-z])(:)(?=//)|(?<=www)(\.)")  # "http://", "www." start links by themselves


def _md(text: Any) -> str:
    """``text`` (user input, or a message that quotes it) safe to put in Markdown or an HTML toast:
    shown literally, on one line."""
    plain = " ".join(str(text).split()).translate(_MARKUP)
    return _AUTOLINK.sub(lambda m: f"&#{ord(m.group(0))};", plain)


def _plain(text: Any) -> str:
    """``text`` (a title in a caption) with its bidirectional controls shown as code points."""
    return str(text).translate(_PLAIN)


# the argument names that the service's and the rings' messages start with ("user_id: unknown user
# 'x'", "item_ids[2]: ...", "unknown ring_id 'R9'"): the app names the box instead
_INTERNAL_NAME = re.compile(r"^(?:user_id|item_ids?|text|image)(?:\[\d+\])?: |^unknown ring_id ")


def _problem(exc: BaseException, label: str | None = None) -> str:
    """One readable line for an exception (``KeyError`` quotes its message; strip that), the
    argument name it starts with replaced by the box's ``label``; the message quotes user input, so
    it is escaped (:func:`_md`)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if label:
        text = _INTERNAL_NAME.sub(lambda m: f"{label}: unknown ring " if m.group(0).startswith("unknown")
                                  else f"{label}: ", text, count=1)
    return f"{ERROR_PREFIX}{_md(text)}"


def is_problem(status: str) -> bool:
    """Whether a view's status is an error message."""
    return status.startswith(ERROR_PREFIX)


def _clean_id(value: Any, name: str) -> str:
    if value is None or (isinstance(value, str) and shows_nothing(value)):
        raise ValueError(f"{name}: pick one from the list or type an id (got nothing)")
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string id (got {type(value).__name__})")
    return value.strip()


def _was_removed(service: ShopService, item_id: str) -> bool:
    """Whether ``item_id`` was in the catalogue and was removed since (by this process or another
    one serving the run: the service applies the run's catalogue journal). The service keeps the
    ids of removed items in ``item_ids`` (their positions stay) but no longer serves them."""
    return not service.has_item(item_id) and item_id in service.item_ids


def _item_problem(service: ShopService, item_id: str, label: str) -> str:
    """The message for an item id the service does not serve: removed, or never known (then, when
    the words typed match some items' text, those items' ids: people type a product, not an id)."""
    if _was_removed(service, item_id):
        return f"{label}: item {shown(item_id)} was removed from the catalogue; pick another item"
    text = f"{label}: unknown item {shown(item_id)} (pick one from the list or type an item id)"
    try:
        found = service.search(text=item_id, k=3) if len(item_id) <= QUOTED_CHARS else None
    except (ValueError, NotAvailableError):  # no text index, or nothing searchable in what was typed
        found = None
    if found is not None and found.scores and found.scores[0] >= WEAK_TEXT_MATCH:
        matches = ", ".join(f"{i} ({shown(t, 60)})" for i, t, score in zip(found.item_ids, found.titles, found.scores)
                            if score >= WEAK_TEXT_MATCH)
        text += f"; items whose text matches it: {matches}"
    return text


def _need_item(service: ShopService, item_id: str, label: str) -> None:
    """``ValueError`` with :func:`_item_problem`'s message unless the service serves ``item_id``."""
    if not service.has_item(item_id):
        raise ValueError(_item_problem(service, item_id, label))


def _need_user(service: ShopService, user_id: str, label: str, kind: str) -> None:
    if not service.has_user(user_id):
        hint = service.user_hint(user_id)  # " (did you mean 'u002002'? ids are case-sensitive)", as the API says
        ids = service.user_ids
        example = f", such as {ids[0]}" if len(ids) else ""  # what an id here looks like (the Rings box says it too)
        raise ValueError(f"{label}: unknown {kind} {shown(user_id)}" + (hint or (
            f" (pick one from the list or type the user id of {'an' if kind[0] in 'aeiou' else 'a'} {kind} in the "
            f"data{example})")))


def _info(service: ShopService, item_id: str) -> dict[str, Any] | None:
    """The item's :meth:`~ShopService.item_info`, or ``None`` when it is no longer served (removed
    by another process since the answer that named it was computed)."""
    try:
        return service.item_info(item_id)
    except UnknownIdError:
        return None


# -- thumbnails and history ------------------------------------------------------------------------
class Thumbnails:
    """Item thumbnails (``THUMB_SIZE`` px), loaded from the shop's images once and kept.

    Kept by item id, image path and category: an item removed and added again with another picture
    (added images are stored under their content's hash) or category gets a new thumbnail. Items
    without a readable image get a tile in their category's colour with "no image" on it.

    Args:
        service: the service (``item_info`` gives the image path and category).
        size: thumbnail edge in pixels.
    """

    def __init__(self, service: ShopService, size: int = THUMB_SIZE) -> None:
        self.service = service
        self.size = size
        self._cache: dict[tuple[str, str, str], PILImage] = {}
        self._lock = threading.Lock()

    def _placeholder(self, category: str) -> PILImage:
        from PIL import Image, ImageDraw

        colour = _CATEGORY_COLOURS[sum(category.encode()) % len(_CATEGORY_COLOURS)] if category else (160, 160, 160)
        img = Image.new("RGB", (self.size, self.size), tuple(int(0.35 * c + 0.65 * 255) for c in colour))
        draw = ImageDraw.Draw(img)
        draw.text((8, self.size // 2 - 12), "no image", fill=(60, 60, 60))
        if category:
            draw.text((8, self.size // 2 + 2), category[:18], fill=(60, 60, 60))
        return img

    def get(self, item_id: str, info: dict[str, Any] | None = None) -> PILImage:
        """The item's thumbnail (RGB).

        Args:
            item_id: a served item id.
            info: its :meth:`~ShopService.item_info`, when the caller has it (default: asked for;
                ``UnknownIdError`` when the item is not served).
        """
        if info is None:
            info = self.service.item_info(item_id)
        path = info.get("image")
        key = (item_id, str(path or ""), str(info.get("category") or ""))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        from PIL import Image

        img: PILImage | None = None
        if path:
            try:
                with Image.open(path) as raw:
                    img = raw.convert("RGB")
                img.thumbnail((self.size, self.size))
            except (OSError, ValueError) as exc:
                logger.info("item %s: image %s unreadable (%s); showing a placeholder", item_id, path, exc)
                img = None
        if img is None:
            img = self._placeholder(str(info.get("category") or ""))
        with self._lock:
            self._cache[key] = img
        return img


class UserHistory:
    """Each user's events, most recent first, from the run's events table (display only).

    Args:
        events: the normalised events table (``user_id``, ``item_id``, ``event_type``, optional
            ``timestamp``), in file order.
        target: the recommendation target event type (for the purchase counts).
    """

    def __init__(self, events: pd.DataFrame, target: str = "purchase") -> None:
        for col in ("user_id", "item_id", "event_type"):
            if col not in events.columns:
                raise ValueError(f"events: missing column {col!r} (got {list(events.columns)})")
        frame = events[[c for c in ("user_id", "item_id", "event_type", "timestamp") if c in events.columns]]
        frame = frame.reset_index(drop=True)
        if "timestamp" in frame.columns:
            frame = frame.sort_values("timestamp", kind="stable")
        frame = frame.iloc[::-1]  # most recent first (file order stands in for time without timestamps)
        self._frame = frame.reset_index(drop=True)
        self._rows = self._frame.groupby("user_id", sort=False).indices
        self.target = target
        purchases = self._frame[self._frame["event_type"] == target]
        self.purchase_counts: pd.Series = purchases["user_id"].value_counts()

    @classmethod
    def from_run(cls, run_dir: Path, target: str = "purchase") -> UserHistory:
        """Read ``RUN/tables/events.parquet`` (checksum verified)."""
        from shopgraph.graph.run import RunDir

        path = RunDir(run_dir).path_of("tables/events.parquet")
        return cls(pd.read_parquet(path), target)

    def recent(self, user_id: str, n: int = HISTORY_ITEMS) -> pd.DataFrame:
        """The user's ``n`` most recent distinct items: ``item_id``, ``event_type`` (the strongest
        event on that item among the user's recent ones, target first), ``time`` (date or "")."""
        rows = self._rows.get(user_id)
        if rows is None:
            return pd.DataFrame(columns=["item_id", "event_type", "time"])
        mine = self._frame.iloc[rows]
        order = {self.target: 0}
        mine = mine.assign(_rank=mine["event_type"].map(lambda e: order.get(e, 1)))
        first = mine.drop_duplicates("item_id")  # most recent event per item, in recency order
        first = first.head(n)
        best = mine[mine["item_id"].isin(first["item_id"])].sort_values("_rank", kind="stable")
        event = best.drop_duplicates("item_id").set_index("item_id")["event_type"]
        if "timestamp" in first.columns:
            time = pd.to_datetime(first["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d").tolist()
        else:
            time = [""] * len(first)
        return pd.DataFrame({"item_id": first["item_id"].astype(str).tolist(),
                             "event_type": [str(event[i]) for i in first["item_id"]], "time": time})


def _empty_results() -> pd.DataFrame:
    return pd.DataFrame(columns=RESULT_COLUMNS)


class _Results(NamedTuple):
    gallery: list[GalleryItem]
    table: pd.DataFrame
    gone: int  # results removed from the catalogue (by another process) since the answer, left out

    def note(self) -> str:
        """A sentence for the status when results were left out, else ``""``."""
        if not self.gone:
            return ""
        return (f" {plural(self.gone, 'result')} removed from the catalogue a moment ago "
                f"{'is' if self.gone == 1 else 'are'} left out.")


def _results(service: ShopService, thumbs: Thumbnails, rec: Any, ranked: bool = False) -> _Results:
    """Gallery entries and the table for a :class:`~shopgraph.retrieval.service.Recommendation`.

    An item that another process removed between the answer and now (the service applies the
    run's catalogue journal on every call) is left out, and counted in ``gone``.

    ``ranked``: a shopper's recommendations: the captions give the rank (``"#1 title"``), not the
    score, and the table's score column is :data:`FIT_SCORE` (recommendation scores are unscaled
    inner products, e.g. 1794.17: only their order means something); else :data:`SIMILARITY`."""
    gallery: list[GalleryItem] = []
    rows: list[list[Any]] = []
    for i, t, s, r in zip(rec.item_ids, rec.titles, rec.scores, rec.reasons):
        info = _info(service, i)
        if info is None:
            continue
        n = len(rows) + 1
        gallery.append((thumbs.get(i, info), _plain(f"#{n} {t or i}" if ranked else f"{t or i} · {s:.2f}")))
        price = info.get("price")
        rows.append([n, i, t, info["category"], "" if price is None else f"{price:,.2f}", round(float(s), 3), r])
    return _Results(gallery, pd.DataFrame(rows, columns=RECOMMEND_COLUMNS if ranked else RESULT_COLUMNS),
                    len(rec.item_ids) - len(rows))


def _check_k(k: Any) -> int:
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"number of results: expected a whole number from 1 to {MAX_K} (got {k!r})")
    return k


# -- Recommend --------------------------------------------------------------------------------------
_DID_IT = {"purchase": "bought", "cart": "carted", "view": "viewed"}  # a history caption's first word


def _short_date(day: str) -> str:
    """``"2025-12-31"`` as a picture's caption has room for it, ``"31 Dec"`` (the history is the
    latest few events); anything else as it is."""
    try:
        return time.strftime("%d %b", time.strptime(day, "%Y-%m-%d")).lstrip("0")
    except ValueError:
        return day


def recommend_view(service: ShopService, history: UserHistory | None, thumbs: Thumbnails, user_id: Any,
                   k: Any = DEFAULT_K) -> RecommendView:
    """The user's recent history and their top-k recommendations.

    Args:
        service: the service.
        history: the events by user (``None``: the history panel says it is unavailable).
        thumbs: the thumbnail cache.
        user_id: an external user id (from the dropdown or typed).
        k: how many recommendations (1..``MAX_K``).
    """
    try:
        user = _clean_id(user_id, SHOPPER)
        k = _check_k(k)
        _need_user(service, user, SHOPPER, "shopper")
        rec = service.recommend(user, k=k)
        found = _results(service, thumbs, rec, ranked=True)
        past: list[GalleryItem] = []
        n_bought = 0
        if history is not None:
            recent = history.recent(user)
            n_bought = int(history.purchase_counts.get(user, 0))
            for row in recent.itertuples(index=False):
                info = _info(service, row.item_id)
                if info is None:  # removed from the catalogue since
                    continue
                # what they did and when first: a gallery cuts a caption to its first words
                did = _DID_IT.get(str(row.event_type), str(row.event_type))
                when = f" {_short_date(row.time)}" if row.time else ""
                past.append((thumbs.get(row.item_id, info),
                             _plain(f"{did}{when} · {info['title'] or row.item_id}")))
    except (ValueError, NotAvailableError) as exc:
        return RecommendView(_problem(exc, SHOPPER), [], [], pd.DataFrame(columns=RECOMMEND_COLUMNS))
    status = (f"**{_md(user)}**: {n_bought:,} purchases in the data. Top {plural(len(found.table), 'recommendation')} "
              f"(already-bought items left out), best fit first. The fit score column is the model's raw score "
              "for this shopper: only its order matters (higher = better fit)." + found.note())
    back = sum(1 for why in rec.reasons if why.startswith("you "))  # the revisit reasons: "you viewed it 3 times"
    if back:
        which = ("All are items" if back == len(rec.reasons) else f"{back} of the {len(rec.reasons)} "
                 + ("is an item" if back == 1 else "are items"))
        status += (f" {which} this shopper looked at without buying (the reason says when): what shoppers here buy next is most "
                   "often something they came back to, so the model puts those first (the Model tab's "
                   "itemknn_revisit does the same)" + ("." if back == len(rec.reasons) else "; the others are new to "
                                                                                   "them."))
    if history is None:
        status += " The history panel is empty: the run's events table could not be read."
    elif len(past) >= HISTORY_ITEMS:  # the gallery holds the latest items only
        status += (f" The history shows the {HISTORY_ITEMS} latest items; a reason can name an older one (its date "
                   "says when).")
    return RecommendView(status, past, found.gallery, found.table)


def visitor_view(service: ShopService, thumbs: Thumbnails, item_ids: Any, k: Any = DEFAULT_K) -> RecommendView:
    """Recommendations for a visitor the model has never seen, from the items they looked at
    (:meth:`ShopService.recommend_for_items`, as ``POST /recommend/cold``).

    Args:
        service: the service.
        thumbs: the thumbnail cache.
        item_ids: the picked item ids (the multi-select's list; typed ids too). An entry that is no
            item id but a comma-separated list of them (``"i000000, i000005"`` typed into the box)
            counts as those items.
        k: how many recommendations (1..``MAX_K``).
    """
    try:
        if item_ids is None or (isinstance(item_ids, list | tuple) and not item_ids):
            raise ValueError(f"{VISITOR_ITEMS}: pick one or more items the visitor looked at (got nothing)")
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        if not isinstance(item_ids, list | tuple):
            raise ValueError(f"{VISITOR_ITEMS}: expected a list of item ids (got {type(item_ids).__name__})")
        picked = list(dict.fromkeys(i for entry in item_ids for i in _split_ids(service, entry)))
        k = _check_k(k)
        missing = [i for i in picked if not service.has_item(i)]
        if missing:
            raise ValueError(_items_problem(service, missing))
        infos = {i: service.item_info(i) for i in picked}
        rec = service.recommend_for_items(picked, k=k)
        found = _results(service, thumbs, rec)
    except UnknownIdError as exc:  # a picked item removed by another process between the check and the answer
        gone = [i for i in picked if not service.has_item(i)]
        return RecommendView(f"{ERROR_PREFIX}{_md(_items_problem(service, gone))}" if gone
                             else _problem(exc, VISITOR_ITEMS), [], [], _empty_results())
    except (ValueError, NotAvailableError) as exc:
        return RecommendView(_problem(exc, VISITOR_ITEMS), [], [], _empty_results())
    seen = [(thumbs.get(i, info), _plain(f"looked at · {info['title'] or i}")) for i, info in infos.items()]
    status = (f"**For a visitor, not the shopper above:** someone with no account who looked at "
              f"{plural(len(picked), 'item')}. The model has no history for them, so it shows the "
              f"{len(found.table):,} items most like those taken together, as the model places items (a similarity "
              "up to 1, 1 = the same, where a shopper's list has the fit score, which only orders; the items they "
              "looked at are left out). Each reason names the looked-at item the result is most like."
              + found.note())
    return RecommendView(status, seen, found.gallery, found.table)


def _split_ids(service: ShopService, entry: Any) -> list[str]:
    """One entry of the visitor's items: its id, or the ids of a comma-separated list typed as one
    entry (only when the whole entry is no served item id: an id with a comma in it stays whole)."""
    item = _clean_id(entry, VISITOR_ITEMS)
    if "," not in item or service.has_item(item):
        return [item]
    parts = [p.strip() for p in item.split(",")]
    return [p for p in parts if not shows_nothing(p)] or [item]


def _items_problem(service: ShopService, missing: Sequence[str]) -> str:
    """The message for the visitor's items that the service does not serve: unknown ones, removed
    ones; and, when an entry looks like several ids in one, how to give them."""
    if len(missing) == 1:
        text = _item_problem(service, missing[0], VISITOR_ITEMS)
    else:
        removed = [i for i in missing if _was_removed(service, i)]
        unknown = [i for i in missing if i not in removed]
        parts = ([f"unknown items {listed_ids(unknown, 5)}"] if unknown else []) + (
            [f"{listed_ids(removed, 5)} {'was' if len(removed) == 1 else 'were'} removed from the catalogue"] if removed
            else [])
        text = f"{VISITOR_ITEMS}: " + "; ".join(parts) + " (pick items from the list or type item ids)"
    if any(" " in i.strip() for i in missing):
        text += "; to give several items, pick them one at a time or separate their ids with commas"
    return text


def sample_users(service: ShopService, history: UserHistory | None, cases: FraudCases | None,
                 n: int = SAMPLES_PER_KIND, *, fraud: bool = True) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, user_id)``: likely fraudsters, labels the held-out scores contradict
    (the most contradicted first), ring members, heavy buyers, typical users.

    Args:
        service: the service (fraud probabilities).
        history: purchase counts per user (heavy buyers), optional.
        cases: fraud rings, optional.
        n: users of each kind.
        fraud: with the fraud kinds (the Fraud tab); ``False``: shoppers only (the Recommend tab,
            where "labelled fraud, but the model alone misses it" would mean nothing).
    """
    chosen: dict[str, str] = {}

    def add(user: str, label: str) -> None:
        if user not in chosen and service.has_user(user):
            chosen[user] = f"{user} ({label})"

    prob = np.asarray(service.fraud_prob, dtype=np.float64) if fraud else np.full(0, np.nan)
    if np.isfinite(prob).any():  # predictions only: a training label's account scores its own label
        predicted = np.where(service.label_in_training, -1.0, np.nan_to_num(prob, nan=-1.0))
        for u in np.argsort(-predicted, kind="stable")[:n]:
            if predicted[u] >= 0:
                add(service.user_ids[int(u)], f"fraud probability {prob[u]:.3f}")  # as the tab shows it
    held, threshold = np.asarray(service.fraud_prob_held_out, dtype=np.float64), service.fraud_threshold
    if fraud and np.isfinite(held).any() and math.isfinite(threshold):  # labels the held-out scores contradict
        labels = np.asarray(service.fraud_labels)
        for label, wrong, words in ((0, held >= threshold, "labelled legitimate, but the model flags it"),
                                    (1, held < threshold, "labelled fraud, but the model alone misses it")):
            found = np.flatnonzero(np.isfinite(held) & (labels == label) & wrong)
            far = np.array([contradiction(h, threshold) for h in held[found]])  # as `score --label-audit` orders
            for u in found[np.argsort(-far, kind="stable")][:SAMPLES_DISPUTED]:
                add(service.user_ids[int(u)], words)
    if fraud and cases is not None:
        for ring in cases.rings(top=n):
            add(ring.members[0], f"member of ring {ring.ring_id}")
    if history is not None and len(history.purchase_counts):
        for u, c in history.purchase_counts.head(n).items():
            add(str(u), f"heavy buyer, {int(c)} purchases")
        counts = history.purchase_counts
        typical = counts[(counts >= counts.median()) & (counts <= counts.median() + 2)]
        for u, c in typical.head(n).items():
            add(str(u), f"typical shopper, {int(c)} purchases")
    for u in service.user_ids[:n]:
        add(u, "an example shopper")
    return [(label, user) for user, label in chosen.items()]


def default_user(choices: Sequence[tuple[str, str]], kind: str) -> str | None:
    """The first sample user whose label mentions ``kind`` ("heavy buyer", "fraud probability"), else the first."""
    for label, user in choices:
        if kind in label:
            return user
    return choices[0][1] if choices else None


# -- Similar & search ---------------------------------------------------------------------------------
def similar_view(service: ShopService, thumbs: Thumbnails, item_id: Any, k: Any = DEFAULT_K) -> SearchView:
    """Items closest to an item in the GNN space (bought by the same kind of shopper)."""
    try:
        item = _clean_id(item_id, ITEM)
        k = _check_k(k)
        _need_item(service, item, ITEM)
        title = service.item_info(item)["title"] or item
        rec = service.similar_items(item, k=k)
        found = _results(service, thumbs, rec)
    except UnknownIdError:  # removed by another process between the check and the answer
        return SearchView(f"{ERROR_PREFIX}{_md(_item_problem(service, item, ITEM))}", [], _empty_results())
    except (ValueError, NotAvailableError) as exc:
        return SearchView(_problem(exc, ITEM), [], _empty_results())
    return SearchView(f"Items closest to **{_md(title)}** ({_md(item)}) in the model's item space: the kind of "
                      "shopper who buys one buys the others, ranked by that closeness (over all shoppers' activity, not "
                      "only the purchases of both). Each row's reason says whether anyone bought both."
                      + found.note(), found.gallery, found.table)


def text_search_view(service: ShopService, thumbs: Thumbnails, text: Any, k: Any = DEFAULT_K) -> SearchView:
    """Items whose title and description match a text (text encoder + ``text_items`` index)."""
    try:
        if text is None or (isinstance(text, str) and shows_nothing(text)):  # zero-width spaces are nothing too
            raise ValueError(f"{TEXT}: type a few words, e.g. 'running shoes' (got an empty text)")
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:  # a pasted page: its start, as the model reads
            text = text[:MAX_TEXT_CHARS]  # only ~500 characters anyway; the status says where it stopped
        rec = service.search(text=text, k=_check_k(k))
        found = _results(service, thumbs, rec)
    except (ValueError, NotAvailableError) as exc:
        return SearchView(_problem(exc, TEXT), [], _empty_results())
    status = (f"Items whose text best matches **{_md(_cut(text))}** (similarity up to 1, 1 = the same)."
              + found.note())
    cut = service.text_cut_at(text)
    if cut is not None:  # the model read the start only: said, so that words at the end are not thought to count
        status += (f" *The text is longer than the model reads: only its first {cut:,} characters (to "
                   f"\"…{_md(text[max(0, cut - 30):cut].strip())}\") counted.*")
    if service.has_item(text):
        status += (f" *{_md(text.strip())} is an item id: the text search reads words, not ids; to see the items "
                   "like it, pick it under Similar items.*")
    elif rec.scores and rec.scores[0] < WEAK_TEXT_MATCH:
        status += (f" *No item matches this text closely: the best similarity is {rec.scores[0]:.2f} (words that "
                   "name a product scored 0.36 to 0.67 on the demo shop); these are only the nearest items.*")
    return SearchView(status, found.gallery, found.table)


# A text search's best similarity below this is no real match. Measured on the demo shop with the
# bundled text encoder (all-MiniLM-L6-v2): 'red shoes' 0.65, 'laptop' 0.56, 'gift' 0.48, 'blue' 0.43,
# 'phone case' 0.36; nonsense ('asdfqwerzxcv', 'qwerty uiop', 'zzzz', '42') and item ids 0.21-0.29.
# Another text encoder (--text-model) has its own scale: the threshold is the bundled one's.
WEAK_TEXT_MATCH = 0.35
# An image search's best similarity below this is no real match. Measured on the demo shop with the
# bundled image encoder (EfficientNet-Lite0): an item's own picture 1.0 and the next items 0.92-0.97;
# a chart 0.52-0.56, a screenshot of the demo 0.57, a plain colour 0.41-0.42, noise 0.22. Another
# image encoder has its own scale, as for WEAK_TEXT_MATCH.
WEAK_IMAGE_MATCH = 0.7
QUOTED_CHARS = 120  # a typed text quoted back in a status line, at most


def _cut(text: str, limit: int = QUOTED_CHARS) -> str:
    """``text`` as a status line quotes it: whole, or its start and its length ("… (480 characters)")."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def image_search_view(service: ShopService, thumbs: Thumbnails, image: Any, k: Any = DEFAULT_K) -> SearchView:
    """Items whose picture looks like an uploaded image (image encoder + ``image_items`` index)."""
    try:
        if image is None or (isinstance(image, str) and not image):
            raise ValueError("Image: upload a picture first (got nothing; a file that is not a picture, such as a "
                             "text file, is not taken by the upload box)")
        if isinstance(image, np.ndarray):
            from PIL import Image

            image = Image.fromarray(image.astype(np.uint8))
        rec = service.search(image=image, k=_check_k(k))
        found = _results(service, thumbs, rec)
    except (ValueError, NotAvailableError) as exc:
        text = str(exc)
        if ": not a readable image (" in text:  # in words first; the details after, for whoever debugs it
            # its first bytes (b'...', for a developer telling an HTML error page from a picture) left out
            detail = text.split(": not a readable image (", 1)[1].rstrip(")").split("; starts with ")[0]
            exc = ValueError("Image: that file is not a picture the demo can read (PNG, JPEG, GIF, WebP or BMP "
                             f"are); it is not a readable image ({detail})")
        return SearchView(_problem(exc), [], _empty_results())
    status = "Items whose picture looks most like the uploaded image (similarity up to 1, 1 = the same)." + found.note()
    if rec.scores and rec.scores[0] < WEAK_IMAGE_MATCH:
        status += (f" *No item looks much like this picture: the best similarity is {rec.scores[0]:.2f} (a picture "
                   "of an item of the demo shop scores above 0.9 against the items like it); these are only the "
                   "nearest items.*")
    return SearchView(status, found.gallery, found.table)


def cleared_image_search() -> tuple[str, list[GalleryItem], pd.DataFrame, None]:
    """What the image search shows once its picture is cleared: no status, no results, no preview
    (the outputs of :func:`image_search_view` and :func:`image_preview`, emptied)."""
    return "", [], _empty_results(), None


def image_preview(image: Any) -> PILImage | None:
    """The uploaded image as a small RGB picture, or ``None`` when there is none or it is unreadable."""
    from shopgraph.retrieval.service import read_image

    if image is None or (isinstance(image, str) and not image):
        return None
    try:
        img = read_image(image)
    except ValueError:
        return None
    img.thumbnail((THUMB_SIZE * 2, THUMB_SIZE * 2))
    return img


def sample_items(service: ShopService, n: int = 12) -> list[tuple[str, str]]:
    """Dropdown choices ``(title (id), item_id)``: a few items of each category."""
    per_cat: dict[str, list[str]] = {}
    for item, cat in zip(service.item_ids, service.categories):
        if service.has_item(item) and len(per_cat.setdefault(cat, [])) < 2:
            per_cat[cat].append(item)
    picked = [i for items in per_cat.values() for i in items][: max(n, 1)]
    return [(_plain(f"{service.item_info(i)['title'] or i} ({i})"), i) for i in picked]


# -- Fraud ----------------------------------------------------------------------------------------
def _compared(a: float, b: float, least: int = 2) -> tuple[str, str]:
    """``a`` and ``b`` written with the fewest decimals (at least ``least``) that keep their order
    visible: never "0.98 is below 0.98" (rounding can tie two numbers, never swap them)."""
    for digits in range(least, 16):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if (float(sa) < float(sb)) == (a < b) and (float(sa) > float(sb)) == (a > b):
            return sa, sb
    return repr(a), repr(b)


def _missing_threshold(threshold: Any) -> bool:
    """Whether the threshold box is empty (``None``, or the raw "" of a cleared number box)."""
    return threshold is None or (isinstance(threshold, str) and shows_nothing(threshold))


def check_threshold(threshold: Any) -> float:
    """The fraud threshold as a float in [0, 1] (``-0`` as 0); ``ValueError`` naming what was given
    otherwise, or saying that it is missing."""
    if _missing_threshold(threshold):
        raise ValueError(f"{THRESHOLD}: missing; type a number between 0 and 1")
    value = threshold
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{THRESHOLD}: must be a number between 0 and 1 (got {shown(threshold)})") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{THRESHOLD}: must be between 0 and 1 (got {shown(threshold)})")
    return float(value) + 0.0  # -0.0 + 0.0 is 0.0: never "threshold -0.00"


def verdict(probability: float | None, threshold: Any, held_out: float | None = None) -> str:
    """Markdown: flagged or not at ``threshold`` (live as the slider moves); a threshold outside
    [0, 1], or none once a user is scored, gives a message (``ERROR_PREFIX``) instead of a verdict.
    ``held_out``: the score of an account the scorer was trained on, with its label held out: the
    verdict is this prediction's alone (the score fitted to the label only repeats the label:
    judged by it, a fraud the scorer misses without its label read as caught; the status says
    where the probability comes from)."""
    no_score = probability is None or (isinstance(probability, float) and math.isnan(probability))
    if not (no_score and _missing_threshold(threshold)):  # nothing to compare yet: no threshold is fine
        try:
            threshold = check_threshold(threshold)
        except ValueError as exc:
            return _problem(exc)
    if probability is None:
        return "Score a user first."
    if isinstance(probability, float) and math.isnan(probability):
        return "This run has no fraud scorer, so nobody is flagged."
    if held_out is not None and math.isfinite(held_out):  # the prediction, not the score fitted to the label
        probability = held_out
    p, t = _compared(float(probability), threshold, least=3)  # as the status writes the probability
    if probability >= threshold:
        return f"**FLAGGED for review**: {p} is at or above the threshold {t}."
    return f"**Not flagged**: {p} is below the threshold {t}."


_REASON_COLUMNS = ["reason", "value", "effect", "contribution"]


def effect_words(contribution: Any) -> str:
    """A contribution (log-odds) in words for the reasons table's "effect" column: which way it
    pushes the score and how hard (+1 multiplies the odds of fraud by 2.7, +0.3 by 1.35, +0.05 by
    1.05); ``""`` for no contribution (a shared identifier: evidence, not a push)."""
    if contribution is None or not isinstance(contribution, int | float) or not math.isfinite(contribution):
        return ""
    size = abs(float(contribution))
    if size < 0.05:
        return "hardly moves it"
    way = "raises" if contribution > 0 else "lowers"
    return f"{way} it {'a lot' if size >= 1.0 else 'clearly' if size >= 0.3 else 'a little'}"


SHARED_WITH_NAMED = 5  # other accounts named on a shared device's row (the API names up to graph.explain.MAX_OTHERS)


def _shared_with(nb: Any) -> str:
    """A shared identifier in words, naming the other accounts on it: ``shares device d1 with 2
    other accounts: u7, u9``; the first ``SHARED_WITH_NAMED`` and how many more when there are
    more."""
    count = int(nb.attribution)
    if count <= 0:
        return f"uses {nb.node_type} {nb.node_id}, which no other account uses"
    text = f"shares {nb.node_type} {nb.node_id} with {plural(count, 'other account')}"
    named = list(getattr(nb, "others", ()) or ())[:SHARED_WITH_NAMED]
    if not named:
        return text
    more = count - len(named)
    return f"{text}: {', '.join(named)}" + (f" and {more:,} more" if more > 0 else "")


def _explanation_table(explanation: Any, words: ValueWords | None = None) -> pd.DataFrame:
    """One row per reason, largest contribution first, each fact in words with its value in its
    unit (:mod:`shopgraph.graph.wording`: a count, a share, yes/no, SDs from the average account;
    blank for a group of encoder columns, whose norm means nothing to a reader). For the served
    trees' explanation (and the no-model z-scores) the shared identifiers are evidence, not
    contributions: they come last, each with its co-user count and the other accounts on it, and a
    last row says when the account has more identifiers than are listed. ``words``: the account's
    feature values as people read them, from a feature's name and value
    (:meth:`ShopService.feature_value_words`: "14 days", not "1.8 SD below average"; for a "quick
    purchases" reason the items behind it)."""
    trees = explanation.method.startswith("tree_shap")
    counted = trees or explanation.method == "behaviour_zscore"  # neighbours' attribution: other accounts
    features: list[dict[str, Any]] = []
    for f in explanation.features:
        reading = reason_in_words(f.name)
        value = (words(f.name, float(f.value)) if words is not None else None) or value_in_words(reading, float(f.value))
        features.append({"reason": reading.text if trees else f"behaviour: {reading.text}",
                         "value": value, "effect": effect_words(float(f.attribution)),
                         "contribution": round(float(f.attribution), 3)})
    neighbours: list[dict[str, Any]] = []
    for nb in sorted(explanation.neighbours, key=lambda n: -abs(float(n.attribution))):
        if counted:
            count = int(nb.attribution)  # other accounts on it: none is said in the reason, no "0" beside it
            neighbours.append({"reason": _shared_with(nb), "value": f"{count:,}" if count > 0 else "", "effect": "",
                               "contribution": None})
        else:
            neighbours.append({"reason": f"linked {nb.node_type}: {nb.node_id}", "value": "",
                               "effect": effect_words(float(nb.attribution)),
                               "contribution": round(float(nb.attribution), 3)})
    total = getattr(explanation, "neighbours_total", None)
    if counted and total is not None and total > len(explanation.neighbours):
        # named by the types of all of them, not only of those listed (5 devices listed of 4 devices and 3 cards)
        types = list(getattr(explanation, "neighbour_types", ())) or ["identifier"]
        what = types[0] if len(types) == 1 else "identifier"
        neighbours.append({"reason": f"uses {plural(total, what)} in all: the {len(explanation.neighbours)} most "
                                     "shared are listed", "value": f"{total:,}", "effect": "", "contribution": None})

    def size(row: dict[str, Any]) -> float:
        return -abs(float(row["contribution"] or 0.0))

    # the trees' shared identifiers are evidence, not contributions: after the reasons
    if not trees:
        return pd.DataFrame(sorted(features + neighbours, key=size), columns=_REASON_COLUMNS)
    first, last = _adding_up(explanation)
    return pd.DataFrame(first + sorted(features, key=size) + last + neighbours, columns=_REASON_COLUMNS)


SCORE_ROW = "= the account's score"  # the reasons table's sum row (its contribution: the score's log-odds)


def _adding_up(explanation: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows that make the trees' contributions add up to the score on screen: where every
    account starts (the trees' base value, as a probability: fraud is rare, so it is low, and an
    account can have mostly positive contributions and still score low; its contribution the base
    log-odds), the contributions of every fact not listed, together, and the sum: the score, its
    contribution the score's log-odds, which the contributions above add up to. None without a
    base value."""
    base, score = getattr(explanation, "base", None), explanation.score
    if base is None or score is None or not 0.0 < score < 1.0:
        return [], []
    rest = getattr(explanation, "unlisted", None)
    if rest is None:
        rest = math.log(score / (1.0 - score)) - base - sum(float(f.attribution) for f in explanation.features)
    start = {"reason": "where the account starts: the typical account's score, before any fact about it (the trees that scored "
                        "it set it: a little different for an account whose verdict is its held-out score)",
             "value": f"{1.0 / (1.0 + math.exp(-base)):.3f}", "effect": "", "contribution": round(base, 3)}
    others = {"reason": "every other fact about this account, together", "value": "", "effect": effect_words(rest),
              "contribution": round(rest, 3)}
    total = {"reason": f"{SCORE_ROW}: where it starts plus every contribution above", "value": f"{score:.3f}",
             "effect": "", "contribution": round(math.log(score / (1.0 - score)), 3)}
    return [start], ([others] if abs(rest) >= 0.0005 else []) + [total]


def _explanation_method(method: str) -> str:
    """What the reasons table shows, in words."""
    if method.startswith("tree_shap"):
        return ("each row is a fact about this account and how much it moved the score away from the typical "
                "account's, in words in the effect column (raises it a lot, clearly, a little; or lowers it); the "
                "largest are shown. For the exact sizes: a positive contribution pushes towards fraud, a negative "
                "one away from it. Contributions are log-odds, "
                "which add: the start's plus every contribution is the score's, in the \"= the account's score\" "
                "row (+0.7 about doubles the odds of fraud, -0.7 halves them). Where a value has no plainer reading, "
                "\"SD below average\" means lower than most accounts (standard deviations). Last, the account's devices, how many other accounts "
                "use each, and which")
    if method.startswith("integrated_gradients"):
        return ("attribution of the GNN's score to the user's features and linked accounts/devices/items "
                "(positive pushes towards fraud; the served score may come from another scorer)")
    if method == "behaviour_zscore+occlusion":
        return ("behaviour features furthest from the average user (z-scores), and how much each linked "
                "account/device/item moves the GNN's score (the served score may come from another scorer)")
    return "behaviour features furthest from the average user (z-scores)"


def fraud_view(service: ShopService, cases: FraudCases | None, user_id: Any) -> FraudView:
    """A user's fraud probability, the threshold, the decision and the top reasons.

    Reasons come from ``cases.explain`` when the rings are loaded (TreeSHAP contributions to the
    served trees' score when trees serve, else attributions of the GNN's; positive pushes towards
    fraud), else from the service's unusual behaviour features.
    """
    empty = pd.DataFrame(columns=_REASON_COLUMNS)
    try:
        user = _clean_id(user_id, ACCOUNT)
        _need_user(service, user, ACCOUNT, "account")
        score = service.score_user(user)
    except (ValueError, NotAvailableError) as exc:
        return FraudView(_problem(exc, ACCOUNT), None, None, verdict(None, None), empty, "")
    table: pd.DataFrame | None = None
    method = ""
    explains_held_out = False  # the table explains the prediction the verdict leads with, not the fitted score
    if cases is not None:
        try:
            explanation = cases.explain(user)
            held_ex = service.held_out_explanation(user) if score.label_in_training else None
            if held_ex is not None:  # the same shared identifiers, the held-out trees' contributions
                explanation, explains_held_out = held_ex._replace(
                    neighbours=explanation.neighbours, neighbours_total=explanation.neighbours_total,
                    neighbour_types=explanation.neighbour_types), True
            table = _explanation_table(explanation, service.feature_value_words(user))
            method = _explanation_method(explanation.method)
            if explains_held_out:
                from shopgraph.graph.fraud_scorer import HELD_OUT_LABELS

                method = ("the table explains the prediction with this account's own label held out, the score of "
                          "the verdict; " + method
                          + (_FOLD_NOTE if table["reason"].str.contains(HELD_OUT_LABELS, regex=False).any() else ""))
        except (KeyError, ValueError, RuntimeError) as exc:  # explanation is a bonus; the score stands
            logger.warning("explain(%s) failed: %s", user, exc)
            table, explains_held_out = None, False
    if table is None or table.empty:
        table = pd.DataFrame({"reason": score.reasons, _REASON_COLUMNS[1]: [None] * len(score.reasons),
                              "effect": [""] * len(score.reasons), "contribution": [None] * len(score.reasons)},
                             columns=_REASON_COLUMNS)
        method = ("the reasons for the verdict at the validation threshold: the facts that raised the score of a "
                  "flagged account most, or lowered that of an unflagged one most (log-odds)")
    p = score.probability
    held = score.held_out_probability if score.label_in_training else None
    if p == p:  # a trained-on account's is its prediction with its label held out, as the verdict's
        shown_p, _ = _compared(held if held is not None and math.isfinite(held) else p, score.threshold, least=3)
        status = (f"**{_md(user)}**: fraud probability **{shown_p}**. The verdict below compares it with the "
                  "threshold, which starts at the one chosen on validation data to balance missed fraud against "
                  "false alarms.")
    else:
        status = f"**{_md(user)}**: this run has no fraud scorer."
    status += label_sentence(score.label, score.label_in_training, scored=p == p,
                             held_out=score.held_out_probability, threshold=score.threshold,
                             held_out_reasons=() if explains_held_out else score.held_out_reasons, fitted=p)
    ring = None
    if cases is not None and cases.has_user(user):
        ranked = cases.rings()
        ranks = {r.ring_id: k for k, r in enumerate(ranked, start=1)}
        rings = cases.rings_of(user)
        status += _ring_sentence(rings, ranks, len(ranked))
        ring = min((r.ring_id for r in rings), key=lambda r: ranks[r], default=None)
    return FraudView(status, p, score.threshold, verdict(p, score.threshold, held), table, method, held, ring)


def predictions(service: ShopService) -> np.ndarray:
    """``[U]`` every account's fraud probability as the Fraud tab judges it: the held-out score of an
    account the scorer was trained on (its served one is fitted to its label), else the served one."""
    served = np.asarray(service.fraud_prob, dtype=np.float64)
    held = np.asarray(service.fraud_prob_held_out, dtype=np.float64)
    return np.where(np.asarray(service.label_in_training, dtype=bool) & np.isfinite(held), held, served)


def flagged_at(service: ShopService, threshold: Any) -> str:
    """Markdown: how many accounts the threshold flags, judged as the verdict judges one account
    (:func:`predictions`), and how many of those the shop's data labels fraud; ``""`` when there is
    nothing to count (no scorer, a threshold out of range: the verdict says why)."""
    try:
        t = check_threshold(threshold)
    except ValueError:
        return ""
    pred = predictions(service)
    known = np.isfinite(pred)
    if not known.any():
        return ""
    flagged = known & (pred >= t)
    fraud = flagged & (np.asarray(service.fraud_labels) == 1)
    labels = np.asarray(service.fraud_labels)
    labelled = int((labels[flagged] >= 0).sum())
    all_fraud = int((known & (labels == 1)).sum())
    # and the other way round: of the accounts labelled fraud, how many the threshold catches (the rest it misses)
    # (named "it" after the flagged ones' labels, the shop's data otherwise: none flagged still says what it misses)
    who = "it" if labelled else "the shop's data"
    caught = (f"{int(fraud.sum()):,} of the {all_fraud:,} accounts {who} labels fraud are flagged "
              f"({fraud.sum() / all_fraud:.0%}; {all_fraud - int(fraud.sum()):,} missed)" if all_fraud else "")
    if labelled:
        share = f"; the shop's data labels {int(fraud.sum()):,} of them fraud" + (f", and {caught}" if caught else "")
    else:
        share = f"; {caught}" if caught else ""
    return (f"*At this threshold {int(flagged.sum()):,} of the {int(known.sum()):,} accounts are flagged{share} "
            "(each judged as above: by its prediction with its own label held out when the scorer was trained "
            "on it). These are all the shop's accounts; the Model tab's precision and recall are measured on the "
            "test accounts alone.*")


def _ring_sentence(rings: Sequence[Ring], ranks: dict[str, int], total: int) -> str:
    """The Fraud tab's sentence on the device-sharing groups an account is in (``""``: none).

    Worded as a fact, not an accusation: most low-ranked groups are households and shared
    computers; the ring score and its rank among all ``total`` groups say how suspicious one is."""
    if not rings:
        return ""
    named = ", ".join(f"**{_md(r.ring_id)}** ({len(r.members)} accounts; ring score {r.score:.3f}, "
                      f"{_ordinal(ranks[r.ring_id])} of {total})" for r in rings)
    several = len(rings) > 1
    first = min(rings, key=lambda r: ranks[r.ring_id]).ring_id
    return (f" Shares devices with the other accounts of group{'s' if several else ''} {named}: open "
            f"{'them' if several else 'it'} on the Rings tab to see who they are (the button below opens "
            f"{_md(first)}).")


def _ordinal(n: int) -> str:
    """``1`` -> ``1st``, ``12`` -> ``12th``, ``23`` -> ``23rd``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_HELD_OUT_VERDICT = {  # (labelled fraud, flagged with the label held out) -> what it means
    (True, True): "the scorer finds this fraud without its own label.",
    (True, False): "the scorer alone would have missed this fraud.",
    (False, True): "it would have been flagged; worth a second look at the label.",
    (False, False): "the scorer agrees with the label.",
}
# ... when the strongest reason for flagging it is other accounts' training labels (wording.cites_training_labels):
# found without its own label, not without labels
_HELPED = "the labels of accounts tied to it (the first reason below)"
_LOG_ODDS = re.compile(r" \([+-]\d+(?:\.\d+)? log-odds\)$")  # a reason's contribution, as the API gives it
_HELD_OUT_HELPED = {
    True: f"the scorer finds this fraud without its own label, helped by {_HELPED}.",
    False: f"it would have been flagged, helped by {_HELPED}; worth a second look at the label.",
}
_FOLD_NOTE = (" (\"Outside this account's fold\": those trees never saw the labels of this account's share of the "
              "training accounts, so they count fewer labelled accounts than the reasons of the served score.)")


def label_sentence(label: bool | None, in_training: bool, scored: bool = True, *, held_out: float | None = None,
                   threshold: float = float("nan"), held_out_reasons: Sequence[str] = (),
                   fitted: float | None = None) -> str:
    """What the shop's own label says of an account, after its score (``""`` when unlabelled;
    ``scored``: the run has a fraud scorer, so there is a probability to say something of;
    ``held_out``: the account's score with its label held out, compared with the validation
    ``threshold``, for an account the scorer was trained on: the probability the status gives,
    and ``held_out_reasons`` behind it; ``fitted``: its served score, fitted to the label, said once
    in passing)."""
    if label is None:
        return ""
    word = "fraud" if label else "legitimate"
    if not scored:
        return f" The shop's data labels this account **{word}**."
    if in_training:
        if held_out is None or held_out != held_out or threshold != threshold:
            return (f" The shop's data labels this account **{word}**, and the scorer was trained on that label: "
                    "its probability is fitted to the label, not a prediction.")
        from shopgraph.graph.fraud_scorer import HELD_OUT_LABELS

        _, shown_t = _compared(held_out, threshold, least=3)
        flagged = held_out >= threshold
        facts = [r for r in held_out_reasons if r not in HELD_OUT_UNATTRIBUTED]  # not reasons: no attribution
        helped = flagged and bool(facts) and cites_training_labels(facts[0])
        repeats = (f" (with the label it gives {_compared(fitted, threshold, least=3)[0]}, which only repeats the "
                   "label)" if fitted is not None and fitted == fitted else "")
        text = (f" The shop's data labels this account **{word}**, and the scorer learnt from that label, so the "
                f"probability above is what it predicts when refitted without it{repeats}. That prediction is "
                f"{'at or above' if flagged else 'below'} the validation threshold {shown_t}: "
                + (_HELD_OUT_HELPED[bool(label)] if helped else _HELD_OUT_VERDICT[(bool(label), flagged)]))
        if facts:  # without their log-odds: the table below explains the served score, in other numbers
            text += (" What drives that prediction (the table below explains the score fitted to the label): "
                     + "; ".join(_md(_LOG_ODDS.sub("", r)) for r in facts) + ".")
            if any(HELD_OUT_LABELS in r for r in facts):
                text += _FOLD_NOTE
        return text
    return (f" The shop's data labels this account **{word}**; the scorer never saw that label, so the "
            "probability is a prediction.")


# -- Rings ------------------------------------------------------------------------------------------
RING_COLUMNS = ["ring", "score", "members", "flagged", "known fraud", "fraud labels trained on", "shared devices",
                "mean fraud probability", "days from sign-up to first activity", "purchases a day since first visit",
                "high-risk share"]
RING_TOP = 50  # rings listed in the table (the dropdown takes any ring id)
# room for each header on one or two lines (the short numbers' headers were broken mid-word)
_RING_WIDTHS: list[str | int] = ["6%", "6%", "8%", "7%", "7%", "7%", "20%", "10%", "11%", "9%", "9%"]
RING_LEGEND = (
    "**score**: ranks the groups, 0 to 1, most suspicious first; it is not a probability (the members' fraud "
    "probabilities weigh most, then young accounts, fast buying, risky categories, size and how tightly they share "
    "devices); **flagged**: members whose fraud probability is at or above the validation threshold, as the Fraud "
    "tab flags them (a member the scorer was trained on by its probability with its own label held out; groups low "
    "in the list, with few or none flagged, are mostly households and shared computers); "
    "**known fraud**: members "
    "the shop's data already labels fraud; **fraud labels trained on**: how many of those labels the scorer was "
    "trained on (a ring's page counts its legitimate labels trained on as well; their served probabilities are "
    "fitted to the label, so the score and the flagged column count their probabilities with the label held out); "
    "**shared "
    "devices**: how many devices two or more members used, with the first ids; **mean fraud probability**: the "
    "members' average fraud probability, as the flagged column and the members table give them; **days from "
    "sign-up to first activity**: the typical member's (fraudsters' accounts tend to start buying soon after they "
    "are made); "
    "**purchases a day since first visit**: the typical member's purchases divided by the days from their first "
    "visit to their last purchase (at least one day: accounts that buy a lot right after they appear stand out); "
    "**high-risk share**: typical member's share of "
    "spending on easily resold goods (electronics, gift cards).")
RING_DEVICES_LISTED = 3  # shared device ids written in a table cell
RING_SHOWN_DEVICES = 20  # ... and in a ring's status line


def _id_list(ids: Sequence[str], most: int) -> str:
    """``"d1, d2, d3 and 4 more"``."""
    shown = ", ".join(ids[:most])
    return f"{shown} and {len(ids) - most} more" if len(ids) > most else shown


def rings_table(cases: FraudCases | None, top: int = RING_TOP, threshold: float | None = None) -> pd.DataFrame:
    """The ranked rings, one row each (evidence numbers rounded; "" when unknown); "shared devices" is
    their count and the first ids (``"2: d0001, d0002"``); "flagged" the members whose fraud
    probability (:meth:`FraudCases.predictions`, as the Fraud tab's verdict) is at or above ``threshold``
    ("" without one, or for rings ranked without fraud probabilities)."""
    if cases is None:
        return pd.DataFrame(columns=RING_COLUMNS)

    def flagged(ring: Ring) -> Any:
        if threshold is None or not math.isfinite(threshold) or ring.evidence.get("gnn_mean") is None:
            return ""  # member_scores are then no probabilities (structure or behaviour)
        return sum(p >= threshold for p in cases.predictions(ring).values())

    def ev(ring: Ring, key: str, digits: int) -> Any:
        value = ring.evidence.get(key)
        return round(float(value), digits) if isinstance(value, int | float) and math.isfinite(value) else ""

    def devices(ring: Ring) -> str:
        n = len(ring.shared_devices)
        return f"{n}: {_id_list(ring.shared_devices, RING_DEVICES_LISTED)}" if n else "0"

    def known(ring: Ring) -> list[Any]:
        from shopgraph.graph.rings import known_fraud

        try:
            return list(known_fraud(cases.labels(ring.members)))
        except KeyError:  # a ring of other users than the graph's: no labels to count
            return ["", ""]

    def mean(ring: Ring) -> Any:  # of the probabilities the flagged column and the members table give
        if ring.evidence.get("gnn_mean") is None:
            return ""
        values = list(cases.predictions(ring).values())
        return round(float(np.mean(values)), 2) if values else ""

    rows = [[r.ring_id, round(r.score, 3), len(r.members), flagged(r), *known(r), devices(r), mean(r),
             ev(r, "median_account_age_days", 1), ev(r, "purchase_velocity", 2), ev(r, "high_risk_share", 2)]
            for r in cases.rings(top=top)]
    return pd.DataFrame(rows, columns=RING_COLUMNS)



def rings_note(cases: FraudCases | None, top: int = RING_TOP) -> str:
    """How many rings the table lists out of how many there are, and how many of them have a member
    flagged at the validation threshold: most groups of accounts sharing a device are households."""
    if cases is None:
        return ""
    rings = cases.rings()
    total = len(rings)
    shown = (f"Showing the top {top} of {total} rings; type any other ring id (R0001 to R{total:04d}) in the Ring box."
             if total > top else f"All {plural(total, 'ring')}.")
    counts = [cases.flagged(r) for r in rings]
    if not total or any(c is None for c in counts):  # no scorer: nothing flagged to count
        return shown
    with_flags = sum(bool(c) for c in counts)
    return (f"{shown} {with_flags:,} of the {total:,} have a member flagged at the validation threshold "
            f"({cases.threshold:.3f}); the other {total - with_flags:,} have none: mostly households and shared "
            "computers, listed because they share devices too.")


def _past(verb: str) -> str:
    """"purchase" -> "purchased", "view" -> "viewed" (for legends)."""
    return verb + ("d" if verb.endswith("e") else "ed")


def _colour_split(ring: Ring, threshold: float | None) -> float | None:
    """The threshold a ring drawing splits its colours at (:func:`_split_at`), or ``None``: no
    threshold inside (0, 1), or a ring ranked without fraud probabilities (its member scores are
    behaviour or structure, on a plain 0-1 scale)."""
    if threshold is None or not 0.0 < threshold < 1.0 or ring.evidence.get("gnn_mean") is None:
        return None
    return float(threshold)


def _split_colours(cmap: Any, threshold: float, below: float = 0.42, above: float = 0.62) -> Any:
    """``cmap`` split at ``threshold`` for probabilities on a plain [0, 1] scale: ``[0, threshold)``
    takes its colours ``[0, below)`` (greens to yellow), ``[threshold, 1]`` its colours
    ``[above, 1]`` (orange to red), so the colour jumps where flagging starts while the colour bar's
    axis stays the probability itself (a member at 0.20 sits just under a threshold of 0.21)."""
    from matplotlib.colors import ListedColormap

    p = np.linspace(0.0, 1.0, 1001)
    place = np.where(p < threshold, below * p / threshold, above + (1.0 - above) * (p - threshold) / (1.0 - threshold))
    return ListedColormap(cmap(place))


def draw_ring(cases: FraudCases, ring: Ring, target: str = "purchase", threshold: float | None = None) -> PILImage:
    """The ring's subgraph drawn to an image: members coloured by fraud score, their devices and other
    identifiers (shared ones dark and outlined), and the items most members bought; legend and colour
    bar included (matplotlib, Agg backend).

    Args:
        cases: the loaded rings (graph for the identifier edges, tables for the purchases).
        ring: the ring to draw.
        target: the event type whose items are drawn.

    Returns:
        An RGB image of about 750 x 550 pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib import colors
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D
    from PIL import Image

    from shopgraph.graph.explain import evidence_edges

    g = nx.Graph()
    for u in ring.members:
        g.add_node(("user", u))
    edges = evidence_edges(ring, cases.data)
    shared = {("device", d) for d in ring.shared_devices}
    for row in edges.itertuples(index=False):
        if bool(row.shared):
            shared.add((str(row.node_type), str(row.node_id)))
        g.add_node((str(row.node_type), str(row.node_id)))
        g.add_edge(("user", str(row.user_id)), (str(row.node_type), str(row.node_id)))
    ev = cases.tables.events
    bought = ev[ev["user_id"].isin(set(ring.members)) & (ev["event_type"] == target)]
    pairs = bought[["user_id", "item_id"]].drop_duplicates()
    top_items = pairs["item_id"].value_counts()
    top_items = top_items[top_items >= 2].head(RING_ITEMS) if (top_items >= 2).any() else top_items.head(RING_ITEMS // 2)
    for row in pairs[pairs["item_id"].isin(top_items.index)].itertuples(index=False):
        g.add_edge(("user", str(row.user_id)), ("item", str(row.item_id)))

    pos = nx.kamada_kawai_layout(g) if g.number_of_nodes() > 1 else {n: (0.0, 0.0) for n in g}
    pos = _spread(pos)
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=100)
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#b0b0b0", width=0.8)
    users = [n for n in g if n[0] == "user"]
    predicted = cases.predictions(ring)  # as the Fraud tab and the Members table give them
    scores = [predicted.get(n[1], float("nan")) for n in users]
    try:
        known = cases.labels([n[1] for n in users])
    except KeyError:  # a ring of other users than the graph's: no labels to outline
        known = {}
    fraud = [bool(known.get(n[1], (None, False))[0]) for n in users]  # labelled fraud: a thick outline
    cmap = plt.get_cmap("RdYlGn_r")
    split = _colour_split(ring, threshold)
    # split at the threshold: below it greens to yellow, above it orange to red (the yellow between
    # left out), so that a flagged member never looks like an unflagged one
    if split is not None:
        cmap = _split_colours(cmap, split)
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    nx.draw_networkx_nodes(g, pos, nodelist=users, ax=ax, node_shape="o", node_size=260,
                           node_color=[cmap(norm(0.0 if s != s else s)) for s in scores],
                           edgecolors="black", linewidths=[2.6 if f else 0.8 for f in fraud])
    ids = [n for n in g if n[0] not in ("user", "item")]
    nx.draw_networkx_nodes(g, pos, nodelist=ids, ax=ax, node_shape="s", node_size=150,
                           node_color=["#1f4e79" if n in shared else "#9ec3e6" for n in ids],
                           edgecolors=["black" if n in shared else "none" for n in ids],
                           linewidths=[2.0 if n in shared else 0.0 for n in ids])
    items = [n for n in g if n[0] == "item"]
    nx.draw_networkx_nodes(g, pos, nodelist=items, ax=ax, node_shape="^", node_size=140, node_color="#bab0ac",
                           edgecolors="#555555", linewidths=0.6)
    tied = [n for n in ids if n in shared]
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.035, pad=0.02,
                       label="member fraud probability")
    if split is not None:  # where flagging starts: the yellow in the middle of the bar
        bar.ax.axhline(split, color="black", linewidth=2.0)
        bar.ax.text(-0.6, split, "flagged\nabove", transform=bar.ax.get_yaxis_transform(), ha="right",
                    va="center", fontsize=7)
    handles = [
        Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black", markersize=9,
               label="account (colour: fraud probability)"),
        *([Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black", markeredgewidth=2.6,
                  markersize=9, label="account the shop's data labels fraud")] if any(fraud) else []),
        Line2D([], [], marker="s", ls="", color="#1f4e79", markeredgecolor="black", markeredgewidth=2,
               markersize=8, label="shared device"),
        Line2D([], [], marker="s", ls="", color="#9ec3e6", markersize=8, label="device of one member"),
        Line2D([], [], marker="^", ls="", color="#bab0ac", markeredgecolor="#555555", markersize=8,
               label=f"item {_past(target)} by members"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"Ring {ring.ring_id}: {len(ring.members)} accounts, {plural(len(ring.shared_devices), 'shared device')}"
                 f", score {ring.score:.3f}", fontsize=10)
    ax.axis("off")
    # labels last, once the colour bar and legend have fixed where the axes are: each is put
    # where it overlaps no label before it (the shared devices first: the ring's status lists
    # them all; the members table lists the accounts of rings too big to label)
    from matplotlib.transforms import Bbox

    # the shared devices' markers sit close together in the middle: no label may cover them
    placed: list[Any] = [Bbox.from_bounds(x - 7, y - 7, 14, 14) for x, y in ax.transData.transform([pos[n] for n in tied])]
    if len(tied) <= RING_LABELS:
        _place_labels(fig, ax, [pos[n] for n in tied], [n[1] for n in tied], placed, color="#1f4e79",
                      fontweight="bold", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "#1f4e79",
                                               "alpha": 0.85})
    if len(users) <= RING_LABELS:
        _place_labels(fig, ax, [pos[n] for n in users], [n[1] for n in users], placed,
                      bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return img.convert("RGB")


NODE_GAP = 0.09  # the least distance between two drawn nodes, as a share of the layout's width


def _spread(pos: dict[Any, Any], gap: float = NODE_GAP, rounds: int = 50) -> dict[Any, np.ndarray]:
    """``pos`` with nodes closer than ``gap`` (a share of the layout's extent) pushed apart: the
    layout puts accounts with the same neighbours on the same spot, where one hid the other."""
    keys = list(pos)
    xy = np.array([pos[k] for k in keys], dtype=np.float64).reshape(len(keys), 2)
    if len(keys) < 2:
        return {k: xy[i] for i, k in enumerate(keys)}
    least = gap * max(float(np.ptp(xy, axis=0).max()), 1e-9)
    rng = np.random.default_rng(0)  # the same drawing every time
    for _ in range(rounds):
        diff = xy[:, None, :] - xy[None, :, :]
        dist = np.sqrt((diff ** 2).sum(axis=2))
        np.fill_diagonal(dist, np.inf)
        close = dist < least
        if not close.any():
            break
        same = dist < 1e-12  # on the very same spot: apart in a random direction
        diff[same] = rng.normal(size=(int(same.sum()), 2)) * 1e-6
        near = np.where(close, np.maximum(dist, 1e-12), 1.0)  # finite where a pair is pushed, 1 elsewhere
        push = np.where(close, (least - near) / 2 / near, 0.0)[:, :, None] * diff
        xy += push.sum(axis=1)
    return {k: xy[i] for i, k in enumerate(keys)}


# where a label may go from its point, in points: below, above, then further out and to the sides
_LABEL_OFFSETS = [(0, -11), (0, 11), (0, -22), (0, 22), (-42, 0), (42, 0), (-42, -14), (42, -14), (-42, 14),
                  (42, 14), (0, -33), (0, 33), (-84, 0), (84, 0), (0, -44), (0, 44)]


def _place_labels(fig: Any, ax: Any, anchors: Sequence[Any], texts: Sequence[str], placed: list[Any],
                  **style: Any) -> list[Any]:
    """Write each text near its anchor (data coordinates), at the first of :data:`_LABEL_OFFSETS`
    where its box overlaps no box in ``placed`` (the drawing's labels so far; appended to), else
    at the last tried. Returns the text artists."""
    renderer = fig.canvas.get_renderer()
    artists = []
    for (x, y), text in zip(anchors, texts):
        label = None
        box = None
        for dx, dy in _LABEL_OFFSETS:
            if label is not None:
                label.remove()
            label = ax.annotate(text, (float(x), float(y)), xytext=(dx, dy), textcoords="offset points",
                                ha="center", va="center", fontsize=7, **style)
            box = label.get_window_extent(renderer).expanded(1.1, 1.3)  # the round box around the text
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)
        artists.append(label)
    return artists


def _case_files(cases: FraudCases, ring: Ring, export_dir: Path | None, work_dir: Path) -> list[str]:
    """The ring's case summary (Markdown, :func:`shopgraph.graph.rings.case_markdown`), JSON and CSV,
    in ``work_dir/<ring_id>/``.

    Taken from the run's case export (``export_dir/cases/<ring_id>.{json,csv}``) when it holds this
    very ring (:func:`shopgraph.graph.rings.exported_ring`: same members, scores and evidence, so a
    ring recomputed since the export never gets the old files); otherwise written now with
    :func:`shopgraph.graph.rings.export_cases` (same schema).
    """
    out = work_dir / ring.ring_id
    summary = out / f"{ring.ring_id}.md"
    wanted = [out / f"{ring.ring_id}.json", out / f"{ring.ring_id}.csv"]
    if all(p.is_file() for p in (summary, *wanted)):
        return [str(p) for p in (summary, *wanted)]
    out.mkdir(parents=True, exist_ok=True)
    from shopgraph.graph.rings import export_cases, exported_ring

    source = export_dir / "cases" if export_dir is not None and exported_ring(export_dir, ring) else None
    doc = None
    if source is not None and cases.source is not None:
        doc = _case_doc(source / f"{ring.ring_id}.json")
        if doc is None or doc.get("source") != cases.source:
            source = doc = None  # exported from another folder (a run copied since) or other files: written anew
    if source is None:  # as `shopgraph rings --export` writes them: the top members explained too
        from shopgraph.graph.explain import explain_ring_members

        explained = explain_ring_members(ring, cases.data, cases.model, fraud_prob=cases.fraud_prob,
                                         served=cases.served, held_out=cases.held_out_explainer, facts=cases.facts)
        fresh = Path(tempfile.mkdtemp(prefix=f"{ring.ring_id}-", dir=work_dir)) / "export"
        export_cases([ring], cases.data, cases.tables, fresh, fraud_prob=cases.fraud_prob,
                     explanations={ring.ring_id: explained}, held_out=cases.held_out_prob,
                     threshold=cases.threshold, source=cases.source)
        source = fresh / "cases"
    for p in wanted:
        shutil.copyfile(source / p.name, p)
    if (source / summary.name).is_file():
        shutil.copyfile(source / summary.name, summary)
    else:  # an export older than the summaries: the page to read and forward, from the very JSON handed out
        from shopgraph.graph.rings import case_markdown

        if doc is None:
            doc = json.loads(wanted[0].read_text(encoding="utf-8"))
        summary.write_text(case_markdown(doc), encoding="utf-8")
    return [str(p) for p in (summary, *wanted)]


def _case_doc(path: Path) -> dict[str, Any] | None:
    """A case file's document (``None``: a file that cannot be read as a JSON object)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


MEMBER_COLUMNS = ["user_id", "fraud probability", "flagged", "label", "fitted to its label", "devices",
                  "shared devices used", "purchases"]
# the members table spans the page under the drawing: the device lists get the most room
_MEMBER_WIDTHS: list[str | int] = ["10%", "10%", "7%", "15%", "10%", "7%", "31%", "10%"]


def _members_labelled(labels: dict[str, tuple[bool | None, bool]], held_out: dict[str, float | None] | None = None) -> str:
    """The ring status's sentence on the members' labels (``""`` when none is labelled), and on
    the trained-on members' ``held_out`` probabilities when some are given."""
    fraud = sum(1 for label, _ in labels.values() if label)
    known = sum(1 for label, _ in labels.values() if label is not None)
    if not known:
        return ""
    trained = sum(1 for label, in_training in labels.values() if label is not None and in_training)
    legit = known - fraud

    def share(n: int) -> str:
        return f"all {n}" if n == len(labels) else f"{n} of the {len(labels)}"

    if fraud and legit:
        labelled = f"{share(fraud)} members fraud and {legit} legitimate"
    else:
        labelled = f"{share(fraud)} members fraud" if fraud else f"{share(legit)} members legitimate"
    text = f" The shop's data labels {labelled} (**label** column)."
    if trained:
        # the ranked table's "fraud labels trained on" counts fraud labels only: the same count, then the legitimate ones
        trained_fraud = sum(1 for label, in_training in labels.values() if label and in_training)
        parts = ([f"{trained_fraud} of the fraud labels (the ranked table's \"fraud labels trained on\")"] if fraud
                 else []) + (
            [f"{trained - trained_fraud} of the legitimate ones"] if trained > trained_fraud else [])
        text += (f" The scorer was trained on {' and '.join(parts)}: those members' "
                 "probabilities are fitted to their labels, not predictions.")
        if any(h is not None for h in (held_out or {}).values()):
            text += (" For them the **fraud probability** column (and their colour) gives what the scorer says "
                     "when refitted without their labels, as the Fraud tab does; **fitted to its label** gives the "
                     "served score.")
    return text


def ring_view(cases: FraudCases | None, ring_id: Any, export_dir: Path | None, work_dir: Path,
              threshold: float | None = None) -> RingView:
    """Draw one ring and offer its case files.

    Args:
        cases: the loaded rings (``None``: a message says how to create them).
        ring_id: e.g. ``"R0001"``.
        export_dir: the run's case export folder (``rings.json`` + ``cases/``), optional.
        work_dir: a temp folder the download copies go to.
        threshold: the validation threshold, for the members' "flagged" column (empty without it).
    """
    members = pd.DataFrame(columns=MEMBER_COLUMNS)
    if cases is None:
        return RingView(f"{ERROR_PREFIX}no fraud rings in this run (run `shopgraph rings --run RUN`)", None, [],
                        members)
    try:
        ring = cases.ring(_clean_id(ring_id, RING))
    except (KeyError, ValueError) as exc:
        typed = ring_id.strip() if isinstance(ring_id, str) else ""
        if isinstance(exc, KeyError) and cases.has_user(typed):  # an account's id typed where a ring's goes
            its = [r.ring_id for r in cases.rings_of(typed)]
            where = (f"it is in {'ring' if len(its) == 1 else 'rings'} {', '.join(its)}; type "
                     f"{'that' if len(its) == 1 else 'one'} here" if its else "it shares no device with a ring")
            return RingView(f"{ERROR_PREFIX}{RING}: {_md(shown(typed))} is an account, not a ring: {where} (the Fraud "
                            "tab scores the account)", None, [], members)
        return RingView(_problem(exc, RING), None, [], members)
    target = str(getattr(cases.data, "target", "purchase"))
    image = draw_ring(cases, ring, target, threshold)
    files = _case_files(cases, ring, export_dir, work_dir)
    ev = cases.tables.events
    mine = ev[ev["user_id"].isin(set(ring.members))]
    n_dev = mine[mine["device_id"] != ""].groupby("user_id")["device_id"].nunique() if "device_id" in mine else {}
    n_buy = mine[mine["event_type"] == target].groupby("user_id").size()
    from shopgraph.graph.explain import evidence_edges

    edges = evidence_edges(ring, cases.data)
    tied = edges[(edges["node_type"] == "device") & edges["node_id"].isin(set(ring.shared_devices))]
    used = tied.groupby("user_id")["node_id"].apply(sorted).to_dict() if len(tied) else {}
    users_of = tied.groupby("node_id")["user_id"].nunique().to_dict() if len(tied) else {}
    predicted = cases.predictions(ring)
    ordered = sorted(ring.members, key=lambda u: (-predicted.get(u, -1.0), u))
    labels, held_out = cases.labels(ordered), cases.held_out(ordered)

    def flagged(u: str) -> str:
        if threshold is None or not math.isfinite(threshold) or u not in predicted or ring.evidence.get(
                "gnn_mean") is None:  # member_scores are then no probabilities (structure or behaviour)
            return ""
        return "yes" if predicted[u] >= threshold else "no"

    members = pd.DataFrame({
        "user_id": ordered,
        "fraud probability": [round(predicted[u], 3) if u in predicted else None for u in ordered],
        "flagged": [flagged(u) for u in ordered],
        "label": [label_words(*labels[u]) for u in ordered],
        "fitted to its label": [round(ring.member_scores[u], 3) if held_out[u] is not None and u in ring.member_scores
                                else None for u in ordered],
        "devices": [int(n_dev.get(u, 0)) for u in ordered],
        "shared devices used": [", ".join(used.get(u, [])) for u in ordered],
        "purchases": [int(n_buy.get(u, 0)) for u in ordered],
    }, columns=MEMBER_COLUMNS)
    devices = [f"**{_md(d)}** ({plural(int(users_of[d]), 'account')})" if d in users_of else f"**{_md(d)}**"
               for d in ring.shared_devices]
    tie = (f"sharing {plural(len(devices), 'device')}: {_id_list(devices, RING_SHOWN_DEVICES)}" if devices
           else "sharing no device")
    split = _colour_split(ring, threshold) is not None  # as draw_ring colours the members
    status = (f"**Ring {ring.ring_id}**: {len(ring.members)} accounts {tie}; ring score {ring.score:.3f}. "
              + ("Account colour is the fraud probability: green to yellow below the flagging threshold, orange to "
                 f"red at or above it ({threshold:.3f}, the black line on the colour bar, the validation threshold: "
                 "the Members table's **flagged** says the same, whatever the Fraud tab's slider is set to); "
                 if split and threshold is not None
                 else "Account colour is the fraud probability (green low, red high); ")
              + "a thick outline marks an account the "
              "shop's data labels fraud; dark outlined squares are the shared devices. The case files hold every "
              "member's evidence and the ring's timeline."
              + (f" Account ids are drawn for rings of up to {RING_LABELS} accounts; the Members table lists "
                 "them all." if len(ring.members) > RING_LABELS else "")
              + _members_labelled(labels, held_out))
    return RingView(status, image, files, members)


# -- Model ------------------------------------------------------------------------------------------
PURCHASE_MODEL = "ShopGraph (graph neural network)"
# ShopGraph's fraud row is named by the kind of scorer it serves (metrics.json fraud.gnn.kind):
# graph.wording.FRAUD_SCORER_NAMES, which the precision-recall plot uses too
# the baselines of graph/baselines.py, in plain words
BASELINES = {
    "popularity": "the most-bought items, the same list for everyone",
    "itemknn": "items often bought by the same shoppers as the shopper's purchases",
    "itemknn_all_events": "the same, counting views and carts as well as purchases",
    "itemknn_revisit": "the same, plus a bonus for items the shopper already looked at",
    "ease": "EASE, a linear item-to-item model",
    "bpr_mf": "matrix factorisation (BPR), a classic collaborative filter",
    "content_knn": "items whose text and picture are like the shopper's purchases",
    "logreg": "logistic regression on the account's own behaviour",
    "xgb": "boosted trees on the account's own behaviour",
    "xgb_graph": "boosted trees on the account's behaviour and its neighbours in the graph",
}
PURCHASE_METRICS = ("recall@10", "ndcg@10", "hit@10", "recall@20", "ndcg@20", "coverage@20")
# no threshold column: each model's is on its own scale, and ShopGraph's, of a refit measured on the
# test accounts, read as a second threshold beside the one the Fraud tab starts at
FRAUD_METRICS = ("auroc", "auprc", "rec@k", "precision", "recall")
# every column the Model tab shows, in plain words (the ratio column is explained with its metric)
METRIC_LEGEND = {
    "recall@10": "of the items each shopper really bought in the test period, the share found in their "
                 "top 10 recommendations (averaged over shoppers)",
    "ndcg@10": "like recall@10, but a bought item near the top of the list counts more than one further down "
               "(1 = all of them at the very top)",
    "hit@10": "the share of shoppers with at least one item they really bought among their top 10",
    "recall@20": "recall@10 for the top 20",
    "ndcg@20": "ndcg@10 for the top 20",
    "coverage@20": "the share of the whole catalogue that appears in at least one shopper's top 20 (low: "
                   "everyone is shown the same few items)",
    "auroc": "the chance that a randomly picked fraudster scores higher than a randomly picked honest account "
             "(0.5 = guessing, 1 = perfect)",
    "auprc": "how well fraud ranks above honest accounts, weighted towards the top of the list (1 = perfect; "
             "guessing gets the share of fraud among the accounts)",
    "rec@k": "the share of fraudsters found if an analyst reviews as many of the top-scored accounts as there "
             "are fraudsters",
    "precision": "of the test accounts flagged at the model's threshold (each model chooses its own on validation "
                 "data, to best balance precision and recall), the share that really are fraud",
    "recall": "of the real fraudsters among the test accounts, the share flagged at the model's threshold (the "
              "Fraud tab's counts are of every account, the trained-on ones too, so they differ)",
}


def _ratio_column(ratio_key: str) -> str:
    return f"ShopGraph ÷ this model ({ratio_key})"


def _metric_rows(section: dict[str, Any], keys: Sequence[str], ratio_key: str, name: str) -> pd.DataFrame:
    gnn = section.get("gnn", {})
    rows = {name: gnn, **section.get("baselines", {})}
    ref = gnn.get(ratio_key)
    table = []
    for model, m in rows.items():
        row: dict[str, Any] = {"model": model}
        for key in keys:
            v = m.get(key)
            # three decimals: on a test set of ~1,000 shoppers and ~40 fraudsters the fourth says nothing
            row[key] = round(float(v), 3) if isinstance(v, int | float) and math.isfinite(v) else ""
        v = m.get(ratio_key)
        row[_ratio_column(ratio_key)] = (round(float(ref) / float(v), 2)
                                         if isinstance(v, int | float) and isinstance(ref, int | float) and v > 0
                                         else "")
        table.append(row)
    return pd.DataFrame(table, columns=["model", *keys, _ratio_column(ratio_key)])


def metric_legend(table: pd.DataFrame, ratio_key: str) -> str:
    """Markdown: what each column of a Model table means, and what its baselines are, in plain words."""
    if table.empty:
        return ""
    lines = [f"- **{key}**: {METRIC_LEGEND[key]}." for key in table.columns if key in METRIC_LEGEND]
    if _ratio_column(ratio_key) in table.columns:
        lines.append(f"- **{_ratio_column(ratio_key)}**: ShopGraph's {ratio_key} divided by this model's (above 1: "
                     "ShopGraph does better).")
    known = [f"{_md(name)} = {BASELINES[name]}" for name in table["model"] if name in BASELINES]
    if known:
        lines.append("- **Baselines** (simpler methods): " + "; ".join(known) + ".")
    trees = next((name for name in table["model"] if "trees on graph features" in str(name)), None)
    if trees is not None and "xgb_graph" in set(table["model"]):
        lines.append(f"- **{_md(trees)}** against xgb_graph: boosted trees too, reading what xgb_graph reads plus "
                     "ShopGraph's ring features: how many accounts share the account's devices and how many of them "
                     "the training data labels fraud, buying in step with them, purchases made within 2 minutes of "
                     "viewing or carting the item, and what the items bought that fast are (from their text and "
                     "pictures).")
    return "\n".join(lines)


# captions of the plots graph/evaluate.py writes, in display order; other plots follow, named by file
PLOT_CAPTIONS = {"training": "Training, for engineers: on the left the training objective per epoch (no unit; "
                             "lower is better), on the right what the network scores on the validation weeks "
                             "while it trains (higher is better). They sit below the tables above because the "
                             "tables measure the finished model on the test weeks: its recommendations with the "
                             "terms fitted after training (items revisited, popular in a shopper's categories, "
                             "kept coming back to), and fraud with the boosted trees that serve, where val_auprc "
                             "is the network's own fraud output",
                 "fraud_pr": "Fraud: precision-recall curves on the test users, one for each model of the fraud "
                             "table (higher and further right is better)"}


def _in_short(purchase: dict[str, Any], fraud: dict[str, Any]) -> str:
    """One plain sentence per table: ShopGraph's main number beside the best simple method's
    (``""`` when a table has no baseline to compare with)."""
    def best(section: dict[str, Any], key: str) -> tuple[str, float, float] | None:
        ours = section.get("gnn", {}).get(key)
        rivals = {n: m.get(key) for n, m in section.get("baselines", {}).items()
                  if isinstance(m.get(key), int | float) and math.isfinite(m.get(key))}
        if not isinstance(ours, int | float) or not math.isfinite(ours) or not rivals:
            return None
        name = max(rivals, key=lambda n: rivals[n])
        return name, float(ours), float(rivals[name])

    def compared(ours: float, theirs: float, share: bool) -> str:
        """``2 percentage points (7%) more than``: the difference itself first (a reader takes "7%
        more" of 31% against 29% for points), then how large it is beside the rival's value."""
        if theirs <= 0:
            return "ahead of"
        change = ours / theirs - 1.0
        gap = abs(ours - theirs)
        size = f"{gap * 100:.0f} percentage point{'s' if round(gap * 100) != 1 else ''}" if share else f"{gap:.2f}"
        return (f"{size} ({change:.0%}) more than" if change >= 0.005
                else f"{size} ({-change:.0%}) less than" if change <= -0.005 else "about the same as")

    parts = []
    if (p := best(purchase, "recall@20")) is not None:
        parts.append(f"ShopGraph's top 20 recommendations hold on average {p[1]:.0%} of the items a shopper "
                     "bought next that they had not bought before (items they had only viewed count), "
                     + f"{compared(p[1], p[2], share=True)} the best simple method ({_md(p[0])}, {p[2]:.0%})"
                     + _chance(purchase.get("test", {}).get("vs_best"), p[0]))
    if (f := best(fraud, "auprc")) is not None:
        parts.append(f"its fraud ranking scores {f[1]:.2f} AUPRC, {compared(f[1], f[2], share=False)} the best simple "
                     f"method ({_md(f[0])}, {f[2]:.2f})")
    return (" In short: " + "; ".join(parts) + ".") if parts else ""


def _chance(versus: Any, baseline: str) -> str:
    """How a lead over ``baseline`` compares with chance, from ``metrics.json``'s paired difference
    (``vs_best``: the mean per-shopper difference and its standard error); ``""`` without one."""
    if not isinstance(versus, dict) or versus.get("baseline") != baseline:
        return ""
    d, se = versus.get("difference"), versus.get("se")
    if not isinstance(d, int | float) or not isinstance(se, int | float) or not (math.isfinite(d) and se > 0):
        return ""
    verdict = ("more than chance would give" if abs(d) >= 2 * se
               else "within what chance alone can give on this many shoppers")
    return f"; the difference, {d:+.3f} ± {se:.3f} (standard error, shopper by shopper), is {verdict}"


def _measured_on(purchase: Any, fraud: Any) -> str:
    """A sentence saying how many shoppers, purchases and fraud accounts the metrics are measured on
    (``metrics.json``'s ``test`` counts; ``""`` for a run evaluated before they were written)."""
    def counts(section: Any, *keys: str) -> list[int] | None:
        values = [section.get(k) for k in keys] if isinstance(section, dict) else []
        numbers = [v for v in values if isinstance(v, int)]
        return numbers if values and len(numbers) == len(values) else None

    parts = []
    if (p := counts(purchase, "users", "purchases")) is not None:
        parts.append(f"recommendations on the {p[0]:,} shoppers who bought something new to them in the test period "
                     f"({p[1]:,} such purchases)")
    if (f := counts(fraud, "accounts", "fraud")) is not None and f[1] > 0:
        parts.append(f"fraud on {f[0]:,} test accounts, {f[1]:,} of them fraud (one fraud account more or less "
                     f"found moves recall by {1 / f[1]:.2f}: small differences between rows can be chance)")
    return (" Measured: " + "; ".join(parts) + ".") if parts else ""


# the parts of the served purchase model besides the network (graph.train names them in its kind,
# "shopgnn-history+revisit+groupmix+itemknn+consider"), in words
_PURCHASE_PARTS = {
    "revisit": "the items a shopper viewed or carted and came back to",
    "groupmix": "the popular items of the categories they shop most",
    "itemknn": "the items often bought with theirs",
    "consider": "the few items they keep returning to",
}


def _purchase_parts(kind: str) -> str:
    """`` that also weighs …`` for the parts of the served purchase model that are not the network
    itself (the simpler signals it adds), ``""`` for a network alone."""
    parts = [_PURCHASE_PARTS[p] for p in kind.split("+")[1:] if p in _PURCHASE_PARTS]
    if not parts:
        return ""
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f" that also weighs {listed}"


def model_view(run_dir: Path | None) -> ModelView:
    """Tables from ``RUN/metrics.json`` (GNN vs each baseline), their legends, the technical names of
    ShopGraph's models, and the images of ``RUN/plots/*.png``."""
    empty = pd.DataFrame(columns=["model"])
    if run_dir is None:
        return ModelView(f"{ERROR_PREFIX}no run folder: metrics unavailable", empty, empty, [])
    from PIL import Image

    from shopgraph.graph.run import RunDir, StaleFileError

    try:
        run = RunDir(run_dir)
        metrics = run.read_json("metrics.json")
    except StaleFileError as exc:  # the model was retrained since: these metrics describe another one
        return ModelView(f"{ERROR_PREFIX}{exc}", empty, empty, [])
    except (FileNotFoundError, ValueError) as exc:
        return ModelView(f"{ERROR_PREFIX}{exc} (run `shopgraph evaluate --run {run_dir}`)", empty, empty, [])
    purchase_section = metrics.get("purchase", {})
    purchase = _metric_rows(purchase_section, PURCHASE_METRICS, "recall@20", PURCHASE_MODEL)
    fraud_section = metrics.get("fraud", {})
    fraud_kind = str(fraud_section.get("gnn", {}).get("kind", "none"))
    fraud = (_metric_rows(fraud_section, FRAUD_METRICS, "auprc", FRAUD_SCORER_NAMES.get(fraud_kind, "ShopGraph"))
             if fraud_kind != "none" else empty)
    plots: list[GalleryItem] = []
    rels = [f for f in run.manifest.get("files", {}) if f.startswith("plots/") and f.endswith(".png")]
    order = list(PLOT_CAPTIONS)
    for rel in sorted(rels, key=lambda r: (order.index(Path(r).stem) if Path(r).stem in order else len(order), r)):
        stem = Path(rel).stem
        try:
            with Image.open(run.path_of(rel)) as img:
                plots.append((img.convert("RGB"), PLOT_CAPTIONS.get(stem, stem.replace("_", " "))))
        except (OSError, ValueError) as exc:
            logger.warning("plot %s unreadable: %s", rel, exc)
    status = ("Test-period metrics of what ShopGraph serves and of simpler methods (baselines): higher is better. "
              "ShopGraph ranks purchases with a graph neural network"
              + _purchase_parts(str(purchase_section.get("gnn", {}).get("kind", ""))) + "; its fraud "
              "score comes from the fraud scorer that did best on validation data. What each column means is "
              "written under its table." + _in_short(purchase_section, fraud_section)
              + _measured_on(purchase_section.get("test"), fraud_section.get("test")))
    names = [f"purchase model {_md(purchase_section.get('gnn', {}).get('kind', '?'))}"]
    if fraud_kind != "none":
        names.append(f"fraud scorer {_md(fraud_kind)}")
    technical = f"<small>Technical names, for engineers: {'; '.join(names)}.</small>"
    return ModelView(status, purchase, fraud, plots, metric_legend(purchase, "recall@20"),
                     metric_legend(fraud, "auprc"), technical)


# -- the app --------------------------------------------------------------------------------------------
def _load_cases(run_dir: Path | None) -> FraudCases | None:
    if run_dir is None:
        return None
    try:
        from shopgraph.graph.rings import RINGS_FILE, FraudCases
        from shopgraph.graph.run import RunDir

        if not RunDir(run_dir).has(RINGS_FILE):
            logger.info("run %s has no %s: the Rings tab says so", run_dir, RINGS_FILE)
            return None
        return FraudCases.from_run(run_dir)
    except (ImportError, FileNotFoundError, ValueError, KeyError) as exc:
        logger.warning("fraud rings not loaded (%s: %s)", type(exc).__name__, exc)
        return None


def _export_dir(run_dir: Path | None) -> Path | None:
    """The case export folder ``shopgraph demo`` writes (``RUN/cases``), when present."""
    if run_dir is None:
        return None
    folder = Path(run_dir) / "cases"
    return folder if (folder / "rings.json").is_file() else None


NO_CHOICE = ("—", "")
"""A dropdown's first entry, meaning "nobody picked". Pressing Enter in an emptied Gradio dropdown
picks the list's first entry (its filter is empty, so the first entry is the active one); with this
entry first, that pick is the empty id, and the view says that an id is needed instead of showing
the results of a shopper nobody asked for. Its label, a dash, matches no id or title typed into the
box, so it never stands in front of a typed id's matches."""


def with_no_choice(choices: Sequence[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """``choices`` (labels and values, or bare values) as ``(label, value)`` pairs behind
    :data:`NO_CHOICE`."""
    return [NO_CHOICE, *((c, c) if isinstance(c, str) else (c[0], c[1]) for c in choices)]


_FRAUD_SCORERS = {
    "gnn_head": "the same network's fraud head",
    "hybrid": "trees on the network's embeddings and graph features",
    "graph_trees": "trees on graph features (shared devices, account age, buying speed)",
    "rank_average": "an average of the network's and the trees' rankings",
}


def fraud_scorer(run_dir: Path | None) -> str | None:
    """The kind of fraud scorer the run serves (``metrics.json`` ``fraud.gnn.kind``), or ``None``."""
    if run_dir is None:
        return None
    from shopgraph.graph.run import RunDir

    try:
        kind = RunDir(run_dir).read_json("metrics.json").get("fraud", {}).get("gnn", {}).get("kind")
    except (FileNotFoundError, ValueError, AttributeError) as exc:
        logger.info("fraud scorer kind unknown: %s", exc)
        return None
    return str(kind) if kind and kind != "none" else None


def generated_shop(run_dir: Path | None) -> dict[str, Any] | None:
    """The note of a run built from a shop ``shopgraph generate`` made up (its ``generated.json``,
    recorded in the manifest's config by ``shopgraph build``), or ``None``: a real shop, or a run
    built before builds recorded it."""
    if run_dir is None:
        return None
    from shopgraph.graph.run import RunDir

    try:
        note = RunDir(run_dir).manifest.get("config", {}).get("generated")
    except (FileNotFoundError, ValueError, AttributeError) as exc:
        logger.info("whether the shop is generated is unknown: %s", exc)
        return None
    return note if isinstance(note, dict) else None


# On a phone-sized screen (up to 700 px wide): a row's boxes stack instead of squeezing side by side,
# and a table keeps columns wide enough to read, scrolling sideways, instead of wrapping ids and
# headers a letter a line: Gradio sizes each column as its share of the table's width, so the
# tables of many columns get more (the ranked rings' 6 % column holds R0001 at 1,100 px), and the
# tab buttons are narrower, so that all five fit rather than three going behind a "More tabs" button;
# a gallery shows two pictures a row, all of them (not four a row with the fourth cut off; the search
# gallery, outside a row, grows with them instead of showing the top of two); the ring members'
# table is wide enough for "flagged" and "fraud probability" on a line; over each wide table a line
# says it scrolls sideways (a phone shows no scroll bar until it is touched). On every screen a
# gallery's pictures start below its label (it covered their tops), and a picture's caption (what the shopper
# did, when, the title; a result's rank or similarity and title) wraps onto up to three lines instead
# of being cut after its first words. A ring's case files are downloads: no "remove" cross beside
# them (it took a file off the list). Pass it as ``css=`` where the app is mounted or launched.
UI_CSS = """
#rec-history .caption-label, #rec-gallery .caption-label, #search-gallery .caption-label {
  white-space: normal !important; max-width: calc(100% - 8px) !important; line-height: 1.25;
  display: -webkit-box !important; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden !important;
  padding-top: 2px !important; padding-bottom: 0 !important; max-height: calc(3.75em + 2px) !important;
}
#ring-files .label-clear-button { display: none !important; }
.gallery-container .grid-container.pt-6 { padding-top: 2.75rem !important; }
@media (max-width: 700px) {
  .row { flex-direction: column !important; flex-wrap: nowrap !important; }
  .row > * { width: 100% !important; min-width: 0 !important; max-width: 100% !important; }
  .table-container { overflow-x: auto !important; }
  .table-container > .table-wrap { min-width: 640px !important; }
  #rec-table .table-container > .table-wrap, #search-table .table-container > .table-wrap { min-width: 1000px !important; }
  #ring-members .table-container > .table-wrap { min-width: 1150px !important; }
  #ring-table .table-container > .table-wrap { min-width: 1100px !important; }
  #rec-table::before, #search-table::before, #fraud-reasons::before, #ring-table::before, #ring-members::before,
  #model-purchase::before, #model-fraud::before {
    content: "↔ Swipe the table sideways to see all its columns"; display: block; order: -1;
    font-size: 13px; font-weight: 600; padding: 0 2px 4px; color: var(--body-text-color);
  }
  [role=tablist] > button, .tab-container > button { padding: 0 5px !important; font-size: 13px !important; }
  .gallery-container .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  .gallery-container .grid-wrap { height: auto !important; max-height: none !important; }
  #search-gallery { height: auto !important; }
}
"""


def intro(users: int, items: int, scorer: str | None, generated: Mapping[str, Any] | None = None) -> str:
    """The page's opening Markdown: what the graph is and which model does what (and, for a shop
    ``shopgraph generate`` made up, that it is made up)."""
    fraud = (f" Fraud is scored by {_FRAUD_SCORERS.get(scorer, scorer)}, the method that did best on validation "
             "data." if scorer else "")
    made_up = ("\n\n*This shop is made up, to try ShopGraph on: `shopgraph generate` invented its shoppers, devices, "
               "fraud rings, product titles and pictures (so titles such as \"Inkwell Deluxe Green fountain pen 500 "
               "sheets\" and the simple drawings are odd on purpose). Run it on your own shop's tables to see "
               "yours.*" if generated else "")
    return (f"# ShopGraph\nA graph of **{users:,} shoppers** and **{items:,} items**, linked by what they viewed and "
            "bought and the devices they used. A graph neural network learns from it to recommend items." + fraud +
            " Each tab below says what it shows and how to read it." + made_up)


def _catalogue_state(service: ShopService) -> tuple[Any, ...]:
    """What changes when items are added or removed (the service's catalogue counts and journal
    generation, and how many item positions it has)."""
    info = service.catalogue_info()
    return info["added"], info["removed"], info["generation"], len(service.item_ids)


def _warn(status: str) -> None:
    import gradio as gr

    if is_problem(status):
        gr.Warning(status[len(ERROR_PREFIX):], duration=8)


def _to_answer(elem_id: str, *, every_screen: bool = False) -> str:
    """Browser code that shows a tab's answer where it begins (``#elem_id``), on a phone-sized screen
    (as UI_CSS's), where the boxes stack and the answer comes a screen or two below the button;
    ``every_screen``: on a desktop too (a ring picked by its row: the ring comes below the ranked
    table, a screen and a half down)."""
    when = "" if every_screen else "if (window.innerWidth <= 700) "
    return (f"() => {{ {when}"
            f"document.querySelector('#{elem_id}')?.scrollIntoView({{behavior: 'smooth', block: 'start'}}); }}")


_TO_RESULTS = _to_answer("search-status")
DUPLICATE_WINDOW_S = 2.0  # the same request again within this time is the same request (see _Requests)
MAX_SESSIONS = 10_000  # browser sessions whose last request a tab remembers (the oldest forgotten)


class _Requests:
    """The requests of one tab's handlers (those that write the same outputs), per browser session.

    Typing an id and clicking the tab's button sends two events with the same inputs (the box's
    change as it loses focus, then the click), which were both answered: every problem showed
    twice, "Warning (2)". A handler made by :meth:`once` answers a request unless the session's
    last answered request of this tab was the same handler with the same inputs (the first
    ``used`` of them), answered less than :data:`DUPLICATE_WINDOW_S` ago; a session's requests are
    answered one at a time, so the second event waits for the first and sees it. Any other
    handler of the tab, or :meth:`forget`, makes the next request new. The lock is the session's
    own: no session waits here for another (Gradio's queue is as it was).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, tuple[threading.Lock, list[Any]]] = OrderedDict()

    def _session(self, request: Any) -> tuple[threading.Lock, list[Any]]:
        sid = str(getattr(request, "session_hash", None) or "")
        with self._lock:
            entry = self._sessions.get(sid)
            if entry is None:
                entry = self._sessions[sid] = (threading.Lock(), [None, 0.0])
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(sid)
            return entry

    def once(self, fn: Callable[[Any, Any], tuple[Any, ...]], n_outputs: int, tag: str,
             used: int = 2, skip: bool = True) -> Callable[..., tuple[Any, ...]]:
        """``fn(value, k) -> outputs`` as a Gradio handler that skips a repeated request (class
        doc); ``skip=False``: one that answers every request (still one at a time, and the next
        request of the tab is then a new one)."""
        import gradio as gr

        def handler(value: Any, k: Any, request: Any = None) -> tuple[Any, ...]:
            lock, last = self._session(request)
            key = repr((tag, [value, k][:used]))
            with lock:
                if skip and last[0] == key and time.monotonic() - last[1] < DUPLICATE_WINDOW_S:
                    return tuple(gr.skip() for _ in range(n_outputs))
                last[0] = None  # while fn runs, and if it fails: nothing to skip against
                out = fn(value, k)
                if skip:  # stamped once answered: a slow answer's repeat is still the same request
                    last[0], last[1] = key, time.monotonic()
                return out

        # the annotation is a string under `from __future__ import annotations`; Gradio needs the class
        handler.__annotations__["request"] = gr.Request
        return handler

    def forget(self, request: Any) -> None:
        """Another handler wrote the tab's outputs: the session's next request is a new one."""
        lock, last = self._session(request)
        with lock:
            last[0] = None


def build_app(service: ShopService, cases: FraudCases | None = None, run_dir: Path | None = None) -> gr.Blocks:
    """The Gradio Blocks app over ``service``.

    Args:
        service: the loaded service (the same object the HTTP API serves).
        cases: the fraud rings; default: loaded from the run folder when it has ``rings/rings.json``.
        run_dir: the run folder (metrics, plots, events, case exports); default ``service.run_path``.

    Returns:
        The app (``.launch(css=UI_CSS)`` it, or mount it with ``gradio.mount_gradio_app(..., css=UI_CSS)``).
    """
    import gradio as gr

    run_dir = Path(run_dir) if run_dir is not None else service.run_path
    if cases is None:
        cases = _load_cases(run_dir)
    history: UserHistory | None = None
    target = service.target
    try:
        if cases is not None:
            history = UserHistory(cases.tables.events, target)
        elif run_dir is not None:
            history = UserHistory.from_run(run_dir, target)
    except (FileNotFoundError, ValueError) as exc:
        logger.warning("user history unavailable: %s", exc)
    thumbs = Thumbnails(service)
    work_dir = Path(tempfile.mkdtemp(prefix="shopgraph-demo-"))
    export_dir = _export_dir(run_dir)
    users = sample_users(service, history, cases)
    shoppers = sample_users(service, history, cases, fraud=False)
    rec_default = default_user(shoppers, "typical shopper")  # a mix of picks came back to and new ones
    fraud_default = default_user(users, "fraud probability")
    scorer = fraud_scorer(run_dir)
    generated = generated_shop(run_dir)

    def current_intro() -> str:  # run on every page load: items added or removed since start-up count
        info = service.info()
        return intro(info["users"], info["items"], scorer, generated)

    with gr.Blocks(title="ShopGraph demo") as app:
        gr.Markdown(current_intro, elem_id="intro")

        with gr.Tabs() as tabs:  # a handle, so that a button can open another tab
            with gr.Tab("Recommend", id="recommend"):
                gr.Markdown("**What the shop would show this shopper next.** Pick a shopper (or type an id): on the left "
                            "(above, on a phone) what they recently looked at or bought, on the right (below) the model's top picks, each with a "
                            "score (higher = better fit) and the reason (what in their history led to it). A visitor with no "
                            "account works too: pick a few items they looked at.")
                with gr.Row():
                    rec_user = gr.Dropdown(choices=with_no_choice(shoppers), value=rec_default, allow_custom_value=True, label=SHOPPER,
                                           info="sample shoppers: heavy buyers, typical shoppers; or type any user id",
                                           scale=3)
                    rec_k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="How many recommendations", scale=1,
                                      elem_id="rec-k")
                    rec_btn = gr.Button("Recommend", variant="primary", scale=1)
                with gr.Row():
                    visitor_items = gr.Dropdown(choices=sample_items(service), value=[], multiselect=True,
                                                allow_custom_value=True, label=VISITOR_ITEMS,
                                                info="…or a new visitor (no sign-in, no history): pick (or type) a few "
                                                     "items they looked at, one at a time or as ids separated by "
                                                     "commas, for recommendations without any history",
                                                scale=4, elem_id="visitor-items")
                    visitor_btn = gr.Button("Recommend for this visitor", scale=1, elem_id="visitor-btn")
                rec_status = gr.Markdown(elem_id="rec-status")
                with gr.Row():
                    rec_hist = gr.Gallery(label="Recent history, newest first (a visitor: items looked at)", columns=4, height=300,
                                          object_fit="contain", elem_id="rec-history")
                    rec_gallery = gr.Gallery(label="Recommended, best first (more than 8: scroll the pictures)", columns=4,
                                             height=300, object_fit="contain",
                                             elem_id="rec-gallery")
                rec_table = gr.Dataframe(value=_empty_results(), label="Recommendations with reasons",
                                         interactive=False, wrap=True, max_height=1400,  # 20 rows unscrolled
                                         column_widths=_RESULT_WIDTHS, elem_id="rec-table")

                def on_recommend(user: Any, k: Any) -> tuple[Any, ...]:
                    view = recommend_view(service, history, thumbs, user, k)
                    _warn(view.status)
                    return view.status, view.history, view.gallery, view.table

                rec_requests = _Requests()
                rec_once = rec_requests.once(on_recommend, 4, "shopper")
                rec_outputs = [rec_status, rec_hist, rec_gallery, rec_table]
                rec_btn.click(rec_once, [rec_user, rec_k], rec_outputs).then(None, js=_to_answer("rec-status"))

                def on_visitor(picked: Any, k: Any) -> tuple[Any, ...]:
                    view = visitor_view(service, thumbs, picked, k)
                    _warn(view.status)
                    return view.status, view.history, view.gallery, view.table

                visitor_btn.click(rec_requests.once(on_visitor, 4, "visitor"), [visitor_items, rec_k],
                                  rec_outputs).then(None, js=_to_answer("rec-status"))
                # .change, not .select: a typed id that matches no entry (kept as typed on Enter or when the
                # box loses focus) is a change but no select; so is the empty id of NO_CHOICE
                rec_user.change(rec_once, [rec_user, rec_k], rec_outputs)
                # the first screen shows a result, not an empty form
                app.load(rec_once, [rec_user, rec_k], rec_outputs)

            with gr.Tab("Similar & search", id="search"):
                gr.Markdown("**Find items three ways.** *Similar items*: what the same kind of shopper buys (from the graph). "
                            "*Text search*: titles and descriptions that match your words. *Image search*: pictures "
                            "that look like yours. Each result shows its similarity: higher is closer, 1 the same.")
                items = sample_items(service)
                with gr.Row():
                    with gr.Column():
                        sim_item = gr.Dropdown(choices=with_no_choice(items), value=items[0][1] if items else None,
                                               allow_custom_value=True, label=ITEM, info="pick or type an item id")
                        sim_btn = gr.Button("Similar items", variant="primary")
                    with gr.Column():
                        txt_query = gr.Textbox(label=TEXT, placeholder="e.g. wireless headphones", elem_id="search-text")
                        txt_btn = gr.Button("Search text", variant="primary")
                    with gr.Column():
                        # a File, not an Image: gr.Image decodes uploads before the handler runs, so a corrupt
                        # file would end in Gradio's generic "Error" instead of our message
                        img_query = gr.File(label="Image (PNG, JPEG, ...)", file_types=["image"], type="filepath",
                                            height=140, elem_id="search-image")
                        img_btn = gr.Button("Search image", variant="primary")
                        img_preview = gr.Image(label="Your image", type="pil", interactive=False, height=120,
                                               elem_id="search-image-preview")
                search_k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="How many results")
                search_status = gr.Markdown(elem_id="search-status")
                search_gallery = gr.Gallery(label="Nearest items (more than 8: scroll the pictures)", columns=8,
                                            height=230, object_fit="contain", elem_id="search-gallery")
                search_table = gr.Dataframe(value=_empty_results(), label="Results", interactive=False, wrap=True,
                                            max_height=1400,  # 20 rows unscrolled, as the Recommend tab's
                                            column_widths=_RESULT_WIDTHS, elem_id="search-table")
                outputs = [search_status, search_gallery, search_table]

                def wrap(fn: Callable[..., SearchView]) -> Callable[[Any, Any], tuple[Any, ...]]:
                    def handler(value: Any, k: Any) -> tuple[Any, ...]:
                        view = fn(service, thumbs, value, k)
                        _warn(view.status)
                        return tuple(view)
                    return handler

                search_requests = _Requests()
                sim_once = search_requests.once(wrap(similar_view), 3, "similar")
                txt_once = search_requests.once(wrap(text_search_view), 3, "text")
                sim_item.change(sim_once, [sim_item, search_k], outputs)
                app.load(sim_once, [sim_item, search_k], outputs)  # the tab opens with the picked item's answer
                # on a phone the three boxes stack, and the results come two screens below the button
                # pressed: the page goes down to them (a desktop shows them under the boxes already)
                sim_btn.click(sim_once, [sim_item, search_k], outputs).then(None, js=_TO_RESULTS)
                txt_btn.click(txt_once, [txt_query, search_k], outputs).then(None, js=_TO_RESULTS)
                txt_query.submit(txt_once, [txt_query, search_k], outputs).then(None, js=_TO_RESULTS)

                def on_image(path: Any, k: Any) -> tuple[Any, ...]:
                    view = image_search_view(service, thumbs, path, k)
                    _warn(view.status)
                    return (*view, image_preview(path))

                def on_clear(request: Any = None) -> tuple[Any, ...]:
                    search_requests.forget(request)
                    return cleared_image_search()

                on_clear.__annotations__["request"] = gr.Request
                # an image search is answered every time (an upload is no repeat of a click), and makes the
                # tab's next request a new one
                image_once = search_requests.once(on_image, 4, "image", skip=False)
                img_btn.click(image_once, [img_query, search_k], [*outputs, img_preview]).then(None, js=_TO_RESULTS)
                img_query.upload(image_once, [img_query, search_k], [*outputs, img_preview]).then(None, js=_TO_RESULTS)
                # the picture removed (its x): its preview and results go with it
                img_query.clear(on_clear, None, [*outputs, img_preview])

                # the item pickers were filled at start-up: on a page load after items were added or
                # removed (here or by another process), they offer the items served now
                catalogue = [_catalogue_state(service)]

                def refresh_items() -> tuple[Any, Any]:
                    now = _catalogue_state(service)
                    if now == catalogue[0]:
                        return gr.skip(), gr.skip()
                    fresh = sample_items(service)
                    return gr.Dropdown(choices=with_no_choice(fresh)), gr.Dropdown(choices=fresh)

                app.load(refresh_items, None, [sim_item, visitor_items])

            with gr.Tab("Fraud", id="fraud"):
                gr.Markdown("**How likely is this account to be fraudulent, and why?** The model gives a probability; "
                            "accounts at or above the threshold are flagged for review. Move the threshold to see the "
                            "decision change: lower catches more fraud but flags more honest shoppers. The table lists "
                            "what drove the score.")
                with gr.Row():
                    fr_user = gr.Dropdown(choices=with_no_choice(users), value=fraud_default, allow_custom_value=True, label=ACCOUNT,
                                          info="pick or type a user id", scale=3)
                    fr_btn = gr.Button("Score", variant="primary", scale=1)
                fr_status = gr.Markdown(elem_id="fraud-status")
                fr_ring_btn = gr.Button(  # under the sentence naming the ring
                    "Open its ring on the Rings tab", visible=False, elem_id="fraud-open-ring")
                fr_ring = gr.State(None)  # the ring that button opens
                threshold0 = float(service.fraud_threshold) if math.isfinite(service.fraud_threshold) else 0.5
                # the box shows the validation-chosen threshold to 3 decimals, and that value compares as the
                # threshold itself (0.209 is 0.2089774...): rounded, it could flip a verdict near the line
                shown0 = round(threshold0, 3)

                def exact(threshold: Any) -> Any:
                    try:
                        return threshold0 if float(threshold) == shown0 else threshold
                    except (TypeError, ValueError):
                        return threshold  # check_threshold names the problem

                fr_threshold = gr.Slider(0.0, 1.0, value=shown0, step=0.001, label=THRESHOLD,
                                         info="starts at the validation-chosen threshold; kept when you score "
                                              "another account", elem_id="fraud-threshold")
                fr_verdict = gr.Markdown(verdict(None, None), elem_id="fraud-verdict")
                fr_count = gr.Markdown(flagged_at(service, threshold0), elem_id="fraud-flagged-count")
                fr_prob = gr.State(None)
                fr_held = gr.State(None)  # a trained-on account's held-out score: the verdict's second line
                fr_method = gr.Markdown()
                fr_reasons = gr.Dataframe(value=pd.DataFrame(columns=_REASON_COLUMNS), label="Top reasons",
                                          interactive=False, wrap=True, column_widths=["54%", "18%", "14%", "14%"],
                                          max_height=1000, elem_id="fraud-reasons")  # the devices last: unscrolled

                def on_score(user: Any, threshold: Any) -> tuple[Any, ...]:
                    view = fraud_view(service, cases, user)
                    _warn(view.status)
                    shown = view.verdict if view.probability is None else verdict(view.probability, exact(threshold),
                                                                                   view.held_out)
                    if view.probability is not None:
                        _warn(shown)  # a threshold out of range typed before scoring
                    method = f"*Reasons: {view.method}.*" if view.method else ""
                    button = gr.Button(f"Open ring {view.ring} on the Rings tab", visible=view.ring is not None)
                    return view.status, view.probability, shown, view.reasons, method, view.held_out, button, view.ring

                def verdict_now(probability: Any, threshold: Any, held_out: Any) -> str:
                    return verdict(probability, exact(threshold), held_out)

                def on_threshold(probability: Any, threshold: Any, held_out: Any) -> tuple[str, str]:
                    shown = verdict_now(probability, threshold, held_out)
                    _warn(shown)
                    return shown, flagged_at(service, exact(threshold))

                # preprocess=False: the handlers get the typed threshold as it is, so one out of the slider's
                # range gets our message; Gradio's own check would answer with a bare "Error" and a traceback
                score_outputs = [fr_status, fr_prob, fr_verdict, fr_reasons, fr_method, fr_held, fr_ring_btn,
                                 fr_ring]

                # the account makes a request new, not the threshold: on_threshold redraws the verdict for it
                score_once = _Requests().once(on_score, len(score_outputs), "score", used=1)
                for listen, scroll in ((fr_btn.click, True), (fr_user.change, False), (app.load, False)):
                    # then the verdict again at the slider's value of that moment: one moved while the score was
                    # on its way was compared with the account scored before, and the score came back with the
                    # verdict at the value it was sent with
                    scored = listen(score_once, [fr_user, fr_threshold], score_outputs, preprocess=False).then(
                        verdict_now, [fr_prob, fr_threshold, fr_held], [fr_verdict], preprocess=False)  # warned already
                    if scroll:  # on a phone the answer is a screen below the button, as on the other tabs
                        scored.then(None, js=_to_answer("fraud-status"))
                fr_threshold.change(on_threshold, [fr_prob, fr_threshold, fr_held], [fr_verdict, fr_count],
                                    preprocess=False)

            with gr.Tab("Rings", id="rings"):
                gr.Markdown("**Groups of accounts that share devices, most suspicious first**: possible fraud rings "
                            "at the top, ranked by a score that combines the members' fraud probabilities, young "
                            "accounts, fast buying, risky categories and how tightly they share devices; lower down, "
                            "mostly households and shared computers (see the **flagged** column). Pick a ring (or "
                            "click its row) to see the accounts, their devices and the items they bought, and to "
                            "download the case files.")
                table = rings_table(cases, threshold=service.fraud_threshold)
                ring_ids = table["ring"].tolist()
                # wrapped: every column in view, none cut off; tall enough to show where the suspicious groups
                # end and the households begin (16th of the demo shop's 99)
                ring_table = gr.Dataframe(value=table, label="Ranked rings", interactive=False, wrap=True,
                                          column_widths=_RING_WIDTHS, max_height=900, elem_id="ring-table")
                gr.Markdown(rings_note(cases), elem_id="ring-count")
                gr.Markdown(RING_LEGEND, elem_id="ring-legend")
                with gr.Row():
                    ring_pick = gr.Dropdown(choices=with_no_choice(ring_ids), value=None, label=RING, scale=1,
                                            elem_id="ring-pick",
                                            allow_custom_value=True, info="pick a ring or type its id (e.g. R0001)")
                ring_status = gr.Markdown("" if cases is not None else
                                          f"{ERROR_PREFIX}no fraud rings in this run (run `shopgraph rings --run RUN`)",
                                          elem_id="ring-status")
                with gr.Row():
                    # no label over the drawing: it covered the start of the drawing's own title on a phone
                    ring_image = gr.Image(label="Ring subgraph", show_label=False, type="pil", interactive=False,
                                          elem_id="ring-image", scale=3, height=520)
                    ring_files = gr.File(label="Case files (summary to read, JSON, CSV)", file_count="multiple",
                                         interactive=False,
                                         elem_id="ring-files", scale=1)
                # the page's full width: every column's header and values fit on a line or two
                ring_members = gr.Dataframe(value=pd.DataFrame(columns=MEMBER_COLUMNS), label="Members",
                                            interactive=False, wrap=True, column_widths=_MEMBER_WIDTHS,
                                            max_height=2400,  # a ring of 40 (the largest found) unscrolled
                                            elem_id="ring-members")

                def on_ring(ring_id: Any) -> tuple[Any, ...]:
                    view = ring_view(cases, ring_id, export_dir, work_dir, service.fraud_threshold)
                    _warn(view.status)
                    return view.status, view.image, view.files or None, view.members

                def on_row(evt: gr.SelectData) -> Any:
                    row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
                    return ring_ids[int(row)] if 0 <= int(row) < len(ring_ids) else None

                # the annotation is a string under `from __future__ import annotations`; Gradio needs the class
                on_row.__annotations__["evt"] = gr.SelectData
                ring_table.select(on_row, None, [ring_pick])
                ring_pick.change(on_ring, [ring_pick], [ring_status, ring_image, ring_files, ring_members]).then(
                    None, js=_to_answer("ring-pick", every_screen=True))  # the ring box, its status and drawing

                def open_ring(ring_id: Any) -> tuple[Any, Any]:  # the Fraud tab's button
                    return gr.Tabs(selected="rings"), ring_id

                # then to the ring itself, not the top of the ranked list (it may be far below)
                fr_ring_btn.click(open_ring, [fr_ring], [tabs, ring_pick]).then(
                    None, None, None, js="() => { setTimeout(() => document.getElementById('ring-pick')"
                                         "?.scrollIntoView({block: 'start'}), 300); }")

            with gr.Tab("Model", id="model"):
                gr.Markdown("**How good is the model?** Measured on the most recent period, which it never saw in "
                            "training, against simpler methods (baselines). *Purchase*: recall@k = share of the items "
                            "shoppers really bought next that appear in their top k. *Fraud*: AUPRC = how well fraud "
                            "ranks above honest accounts (1 is perfect). Every column is explained under its table.")
                mv = model_view(run_dir)
                gr.Markdown(mv.status, elem_id="model-status")
                gr.Dataframe(value=mv.purchase, label="Recommendations (purchase)", interactive=False,
                             elem_id="model-purchase")
                gr.Markdown(mv.purchase_legend, elem_id="model-purchase-legend")
                gr.Dataframe(value=mv.fraud, label="Fraud detection", interactive=False, elem_id="model-fraud")
                gr.Markdown(mv.fraud_legend, elem_id="model-fraud-legend")
                gr.Markdown(mv.technical, elem_id="model-technical")
                for k, (img, caption) in enumerate(mv.plots):
                    # the caption above the picture, not as the image's label: Gradio draws a label over
                    # the top of the picture, where it hid the plots' own titles
                    gr.Markdown(f"**{caption}**", elem_id=f"model-plot-{k}-caption")
                    gr.Image(value=img, show_label=False, type="pil", interactive=False, height=380,
                             elem_id=f"model-plot-{k}")

    return app
