"""ShopService: the one Python API over a run folder (recommend, similar, search, fraud, cold start).

Everything is loaded once by :meth:`ShopService.from_run` (checksums verified through
:class:`~shopgraph.graph.run.RunDir`) into plain numpy arrays, so a request is one FAISS search plus
a few vector operations: no pandas, no torch on the hot path. The HTTP API
(``retrieval/api.py``) and the Gradio app call this class and nothing else.

Conventions:

- Ids in and out are the shop's external string ids; FAISS ids are item node indices.
- "Seen" items (excluded by ``recommend(..., exclude_seen=True)``) are the items the user has
  *purchased* (the graph's target event type, all periods), not every item they viewed: showing
  a viewed-but-not-bought item again is a useful recommendation, re-buying is rarely wanted.
- Every bad input raises ``ValueError`` naming the argument and the value; unknown ids raise its
  subclass :class:`UnknownIdError` (the HTTP API answers 404 for those, 422 for the rest).
  A capability the run lacks (no text index, no model) raises :class:`NotAvailableError`.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import tempfile
import threading
import time
import unicodedata
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from shopgraph.graph.messages import (  # noqa: F401
    SHOWN_CHARS,
    did_you_mean,
    how_it_differs,
    invisible,
    key_path,
    listed_ids,
    plural,
    same_but_case,
    shown,
)
from shopgraph.graph.run import RunDir
from shopgraph.graph.wording import QUICK_ITEM_REASON, FeatureFacts, names_quick_items
from shopgraph.retrieval.catalogue import (
    REMOVED_OP,
    CatalogueError,
    CatalogueJournal,
    JournalPosition,
    decode_vector,
    encode_vector,
)
from shopgraph.retrieval.index import INDEX_DIR, INDEX_NAMES, ItemIndex, load_embeddings

if TYPE_CHECKING:  # torch and the fraud scorer load with the run (ShopService.from_run), not on import
    from shopgraph.graph.fraud_scorer import QuickPurchases

logger = logging.getLogger(__name__)

K_MAX = 1000
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_ASPECT = 20  # the longer side at most 20 times the shorter (the encoder centre-crops a square anyway)
MAX_TEXT_CHARS = 2_000
MAX_BATCH = 1_000
MAX_BATCH_RESULTS = 100_000  # ids x k of one batch (recommend_batch, similar_items_batch)
_NO_ITEMS = np.zeros(0, np.int64)  # an empty list of item positions (read only: shared)
_NO_ITEMS.flags.writeable = False
RESCORE_MARGIN = 8  # candidates fetched beyond k and rescored exactly (near ties at the k-th place)
_IMAGE_CHUNK = 32  # images decoded at a time when a batch is encoded (ShopService._encode_images)
REPLAY_BATCH = 1024  # journal entries whose adds are embedded in one pass
CONTENT_NEIGHBOURS = 20  # trained items whose vectors make a new item's (_new_item_embeddings)
# the one-hot flags of the items' category column (encoders/behaviour.py: "item_" + "category=<value>")
CATEGORY_FLAG = "item_category="
REASON_HISTORY = 200  # history items compared when explaining a recommendation
# FraudScore.held_out_reasons when the held-out score has no attribution (the whole list, one of
# these): for the run, and for one account. Not reasons: the demo leaves them out of its sentence.
HELD_OUT_UNATTRIBUTED = (
    "no attribution of the held-out score is available here: the run's held-out trees are missing or unreadable "
    "(trained before they were stored: retrain it with `shopgraph train`), or the service was loaded without fraud "
    "reasons",
    "no attribution of the held-out score is available for this account: its fold's trees could not be explained or "
    "do not reproduce it (the server's log says which)",
)
# how far along the shopping funnel an event type is (explains revisits by the furthest step)
_FUNNEL = {"click": 1, "view": 1, "wishlist": 2, "cart": 3, "review": 4, "purchase": 5}
_REVISIT_PHRASES = {"view": "you viewed it", "click": "you clicked it", "cart": "you put it in your cart",
                    "wishlist": "you wish-listed it", "review": "you reviewed it", "purchase": "you bought it"}
_VERBS = {"purchase": "bought", "view": "viewed", "cart": "added to the cart", "review": "reviewed",
          "click": "clicked", "wishlist": "wish-listed"}


def _case_hint(positions: Mapping[str, int], unknown: Sequence[Any]) -> str:
    """``"; did you mean 'u001' for 'U001'? ids are case-sensitive"`` for those of the first five
    ``unknown`` ids (as listed) that look like a known one (another case, a Cyrillic letter:
    :func:`~shopgraph.graph.messages.same_but_case`), else ``""``."""
    typed = {str(v).strip(): v for v in unknown[:5] if isinstance(v, str)}
    like = same_but_case(positions, list(typed))
    if not like:
        return ""
    why = list(dict.fromkeys(how_it_differs(key, known) for key, known in like.items()))  # in the ids' order
    return ("; did you mean " + ", ".join(f"{shown(known)} for {shown(typed[key])}" for key, known in like.items())
            + "? " + "; ".join(why))


class _Keep:
    """The type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


# the add_item fields that can be left out (KEEP)
_KEPT_FIELDS = ("category", "description", "price", "image")
# an add_item field left out: none for a new item, what it had for a removed item restored (add_item)
KEEP: Any = _Keep()


class Recommendation(NamedTuple):
    """Ranked items, best first (all lists have the same length, at most k).

    Attributes:
        item_ids: external item ids.
        scores: the ranking score, higher is better: the model's purchase score (inner product of
            embeddings, plus the revisit term for items the user already interacted with).
        reasons: a short human-readable reason per item.
        titles: item titles ("" when unknown).
        left_out: :meth:`ShopService.recommend_for_items` with ``leave_out_removed``: the given ids
            of items removed from the catalogue since, left out of the query; else empty.
        unknown: :meth:`ShopService.recommend_for_items` with ``skip_unknown``: the given ids that
            name no served item (and, with ``leave_out_removed``, no removed one), left out of the
            query; else empty.
    """

    item_ids: list[str]
    scores: list[float]
    reasons: list[str]
    titles: list[str]
    left_out: list[str] = []  # noqa: RUF012 - a NamedTuple default, never mutated
    unknown: list[str] = []  # noqa: RUF012 - a NamedTuple default, never mutated


# what a served fraud probability is (FraudScore.probability_is; `shopgraph score`'s probability_is column)
PREDICTION, FITTED = "prediction", "fitted to its label"


def what_probability_is(in_training: bool) -> str:
    """What an account's served fraud probability is: :data:`FITTED` when the scorer was trained on its
    label, else :data:`PREDICTION` (``FraudScore.probability_is``, ``/fraud/device``)."""
    return FITTED if in_training else PREDICTION


def as_prediction(probability: Any, held_out: float | None, in_training: bool) -> Any:
    """An account's fraud probability as a prediction: for one the scorer was trained on, its held-out
    score when there is one (the served ``probability`` is fitted to its label), else ``probability``
    (``FraudScore.prediction``, ``/fraud/device``'s ``predicted_flagged``)."""
    return held_out if in_training and held_out is not None else probability


class FraudScore(NamedTuple):
    """Fraud score of one user.

    Attributes:
        user_id: external user id.
        probability: the serving fraud scorer's probability (NaN when the run has no scorer).
        threshold: the decision threshold chosen on validation (``RUN/fraud.json``).
        flagged: ``probability >= threshold``.
        reasons: the reasons for the verdict: for a flagged account up to three facts about it
            that raised its score most, for an account below the threshold up to three that
            lowered it most, each with its raw value and its signed contribution to the scorer's
            log-odds (TreeSHAP of the served trees, or integrated gradients of the GNN's fraud
            head); a sentence saying why when there is no attribution; empty when not asked for
            (``score_users(..., reasons=False)``).
        label: the account's ``is_fraud`` label in the shop's data (``None``: unlabelled).
        label_in_training: whether the served scorer was trained on that label (a labelled
            account of the training period). Its ``probability`` is then fitted to the label, not
            a prediction: such accounts score far above the others of their class (every training
            fraudster is flagged on the demo shop, about 78% of the unseen ones).
        held_out_probability: for an account the scorer was trained on, its score from the same
            trees refitted without its label (cross-fitting at training, 5 folds by default,
            :func:`shopgraph.graph.fraud_scorer.held_out_probabilities`; the trees' number of
            rounds and the threshold come from the served fit): what the scorer says of the
            account when it does not know its label, to compare with ``threshold`` (84% of the
            demo shop's trained-on fraudsters are flagged that way). ``None`` for every other
            account, and for all when the served scorer is not ``graph_trees`` or the run was
            trained without held-out scores.
        held_out_reasons: with a ``held_out_probability`` and reasons asked for, the reasons for
            the held-out verdict (the held-out score against ``threshold``), worded as ``reasons``:
            TreeSHAP of the account's fold's trees on the table they read (its label hidden);
            a sentence saying why when there is no attribution; empty otherwise.
    """

    user_id: str
    probability: float
    threshold: float
    flagged: bool
    reasons: list[str]
    label: bool | None = None
    label_in_training: bool = False
    held_out_probability: float | None = None
    held_out_reasons: list[str] = []  # noqa: RUF012 - a NamedTuple default, never mutated

    @property
    def prediction(self) -> float:
        """The account's probability as a prediction: for an account the scorer was trained on, its
        held-out score when there is one (its ``probability`` is fitted to its label), else ``probability``."""
        return float(as_prediction(self.probability, self.held_out_probability, self.label_in_training))

    @property
    def probability_is(self) -> str:
        """What ``probability`` is: :data:`PREDICTION`, or :data:`FITTED` for an account the scorer was
        trained on (its ``held_out_probability``, where there is one, is the prediction)."""
        return what_probability_is(self.label_in_training)

    @property
    def held_out_flagged(self) -> bool | None:
        """``held_out_probability >= threshold`` (``None`` without a held-out score), as the HTTP
        answer and ``shopgraph score`` give it: the verdict on a trained-on account's prediction."""
        held = self.held_out_probability
        return None if held is None else held >= self.threshold


class UnknownIdError(ValueError):
    """An id that the run does not know (a ``ValueError``; HTTP 404).

    ``kind``: what the id names (``"user"``, ``"item"``), which the HTTP answer's ``error`` code
    carries (``unknown_user``), so a client tells an unknown account from an unknown item in a cart
    without reading the message."""

    def __init__(self, message: str, kind: str = "id", ids: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.ids = [str(i) for i in ids]  # every id the message is about, as given (it names the first ten)


class DuplicateIdError(ValueError):
    """An item id that the catalogue already has, given to :meth:`ShopService.add_item` (HTTP 409);
    ``ids``: every such id of the call."""

    def __init__(self, message: str, ids: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.ids = [str(i) for i in ids]


class NotAvailableError(RuntimeError):
    """The run folder lacks what this call needs (no text index, no model...; HTTP 503)."""


class TextEncoderLike(Protocol):
    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray: ...


class ImageEncoderLike(Protocol):
    def encode(self, paths: Sequence[Path | None], progress: bool = False) -> Any: ...


# user node index -> [(feature name, value, contribution to the fraud log-odds)], or None when
# this account's served score cannot be attributed
FraudAttribution = Callable[[int], Sequence[tuple[str, float, float]] | None]
# user node index -> (the contributions to its held-out score's log-odds, as FraudAttribution's, and the
# base value they start from), or None when that score cannot be attributed
HeldOutAttribution = Callable[[int], tuple[Sequence[tuple[str, float, float]], float] | None]


class _Growable:
    """An array that grows by rows without copying itself on every append: rows go into spare
    capacity, which grows by an eighth (at least 64 rows) when full. Copying the whole array per
    added item cost about 0.3 s an item at 100,000 items with image features; this costs a few row
    copies an item amortised, for at most an eighth more memory. ``view`` is the filled part (a
    view: writes to it change the array)."""

    def __init__(self, values: np.ndarray) -> None:
        self._buf = np.ascontiguousarray(values)
        self._n = len(values)

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def append(self, row: Any) -> None:
        if self._n == len(self._buf):
            grown = np.empty((self._n + max(64, self._n // 8), *self._buf.shape[1:]), dtype=self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n] = row
        self._n += 1


class _RWLock:
    """Many concurrent readers (searches) or one writer (add/remove item), writers first.

    Once a writer waits, readers that do not hold the lock yet wait behind it, so a steady stream
    of searches cannot stall a change indefinitely (it waits for the reads already running).

    Re-entry: a thread that holds ``read()`` may take ``read()`` again (it is let in even while a
    writer waits, else it would wait for a writer that waits for it); a thread that holds
    ``write()`` may take ``read()`` (it has the state to itself). Taking ``write()`` while holding
    either is refused with ``RuntimeError`` rather than deadlocking. The service itself takes the
    lock once per call (public methods read under it; ``_insert`` / ``_delete`` write under it)
    and never nests it; the re-entry rules keep a helper that does from deadlocking.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None  # the thread ident of the writer
        self._writers_waiting = 0
        self._mine = threading.local()  # this thread's read depth

    def _depth(self) -> int:
        return getattr(self._mine, "depth", 0)

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = self._depth()
        if self._writer == me:  # the writer reads its own state
            yield
            return
        if depth:  # re-entry: already counted in _readers, so no writer is in
            self._mine.depth = depth + 1
            try:
                yield
            finally:
                self._mine.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        self._mine.depth = 1
        try:
            yield
        finally:
            self._mine.depth = 0
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me or self._depth():
            raise RuntimeError("_RWLock: write() taken by a thread that holds the lock already (it would deadlock)")
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
                self._cond.notify_all()  # readers held back for this writer recheck (it may have given up)
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


def _refuse_not_a_list(values: Any, name: str, what: str = "ids") -> None:
    """``ValueError`` unless ``values`` is a list (a sequence or a 1-d numpy array) of ``what``: one
    string (or bytes, which are a sequence of ints) is refused as itself, not read item by item."""
    if isinstance(values, str | bytes | bytearray | memoryview):
        raise ValueError(f"{name}: expected a list of {what} (got {type(values).__name__}): {shown(values)} "
                         f"is one value, not a list of them")
    if _pandas_column(values):  # a DataFrame's column, as integrators hold ids
        return
    if not isinstance(values, Sequence | np.ndarray) or (isinstance(values, np.ndarray) and values.ndim != 1):
        raise ValueError(f"{name}: expected a list of {what} (got {type(values).__name__})")


def _pandas_column(values: Any) -> bool:
    """Whether ``values`` is a pandas Series or Index (one dimension: read as the list of its values)."""
    return type(values).__module__.split(".")[0] == "pandas" and getattr(values, "ndim", 0) == 1


def _id_text(value: Any, where: str) -> str:
    """``value`` without surrounding spaces when it can be an id (a string that is not blank), else
    ``ValueError`` naming ``where``: ids are never blank (the loader drops such rows), so a blank
    one is a malformed request, not an unknown id; and they are stored without surrounding spaces
    (the loader and ``add_item`` strip them), so an id pasted with a stray space still names one."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string id (got {type(value).__name__} {shown(value)})")
    if not value.strip():
        raise ValueError(f"{where}: expected a non-empty id (got {shown(value)})")
    return value.strip()


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int in 1..1000, else ``ValueError`` naming it."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= K_MAX:
        raise ValueError(f"{name}: expected an integer between 1 and {K_MAX} (got {shown(k)})")
    return int(k)


def once_each(ids: Iterable[Any]) -> list[Any]:
    """``ids`` each once, as first given, a string id counted with its surrounding spaces left out
    (``"nope"``, ``" nope"``: one id, as lookups take them)."""
    seen: set[Any] = set()
    out = []
    for i in ids:
        key = i.strip() if isinstance(i, str) else i
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (``numpy.bool_`` too), else ``ValueError`` naming it: a string
    like ``"no"`` is truthy and would silently mean the opposite."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: expected a boolean, true or false (got {type(value).__name__} {shown(value)})")
    return bool(value)


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone UTF-16 surrogate in ``text`` (JSON's ``"\\ud800"`` decodes to
    one; no encoder, tokenizer or file can take it), or ``None`` when ``text`` is valid Unicode."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # UTF-8 refuses surrogates only
        return int(exc.start)
    return None


def check_unicode(text: str, name: str) -> str:
    """``text`` when it is valid Unicode, else ``ValueError`` naming ``name`` and where."""
    at = lone_surrogate(text)
    if at is not None:
        raise ValueError(f"{name}: not valid Unicode (a lone surrogate at position {at:,})")
    return text


def check_single_line(text: str, name: str) -> str:
    """``text`` when it has no control characters (newline, tab, NUL, ...) nor line or paragraph
    separators, else ``ValueError`` naming ``name`` and the first one: an id or a category name is
    one line of printable text (an id with a newline could not be named in a URL path, nor a
    category in a query string)."""
    at = next((k for k, ch in enumerate(text) if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if at is not None:
        what = "a control character" if unicodedata.category(text[at]) == "Cc" else "a line separator"
        raise ValueError(f"{name}: expected one line of printable text (got {shown(text)}, {what} "
                         f"{text[at]!r} at position {at:,})")
    return text


def check_no_control(text: str, name: str) -> str:
    """``text`` when its only control characters are tabs and line breaks (a title or description
    may have paragraphs; a NUL or a bell breaks the databases and CSV files it is copied to), else
    ``ValueError`` naming ``name`` and the first one."""
    at = next((k for k, ch in enumerate(text) if ch not in "\t\n\r" and unicodedata.category(ch) == "Cc"), None)
    if at is not None:
        raise ValueError(f"{name}: a control character {text[at]!r} at position {at:,} (got {shown(text)}; tabs and "
                         "line breaks are fine, other control characters are not)")
    return text


def shows_nothing(text: str) -> bool:
    """Whether ``text`` shows nothing: only spaces and characters that show as nothing
    (:func:`invisible`: zero-width spaces and joiners, bidirectional marks, the byte-order mark)."""
    return all(c.isspace() or invisible(c) for c in text)


def _escaped(ch: str) -> str:
    """A character as a message quotes it: ``'\\u034f'`` for one that shows as nothing (``repr``
    escapes format characters, not all of those), else as ``repr`` writes it."""
    if not invisible(ch):
        return repr(ch)
    return f"'\\u{ord(ch):04x}'" if ord(ch) <= 0xFFFF else f"'\\U{ord(ch):08x}'"


def _quoted(text: str) -> str:
    """``text`` as :func:`shown` quotes it, with the characters that show as nothing escaped
    (``'\\u200b'``): ``repr`` leaves some of them as they are."""
    return "".join(_escaped(ch)[1:-1] if invisible(ch) else ch for ch in shown(text))


def check_plain_id(item_id: str, name: str, what: str = "an id") -> str:
    """A new id (``what``: or a new category name) when it can be told apart from others by eye: no
    invisible format characters (a zero-width space, a byte-order mark) and in Unicode's composed
    form (NFC: ``é`` one character, not ``e`` and an accent), else ``ValueError`` naming ``name``.
    Ids that look alike but differ this way would each pass the check that an id is not served yet."""
    at = next((k for k, ch in enumerate(item_id) if invisible(ch)), None)
    if at is not None:
        raise ValueError(f"{name}: an invisible character {_escaped(item_id[at])} at position {at:,} (got "
                         f"{_quoted(item_id)}); {what} is characters one can see")
    composed = unicodedata.normalize("NFC", item_id)
    if composed != item_id:
        raise ValueError(f"{name}: not in Unicode's composed form NFC (got {shown(item_id)}, an accent written as a "
                         f"separate character); send {shown(composed)}, which looks the same")
    return item_id


def _loose(category: str) -> str:
    """A category name as a person reads it: case, runs of spaces, accents written apart (NFD),
    full-width and other compatibility forms (NFKC: ``ｔｏｙｓ`` is ``toys``) and characters that
    show as nothing (:func:`invisible`) aside. Two names alike this way are one category spelt twice."""
    visible = "".join(ch for ch in unicodedata.normalize("NFKC", category) if not invisible(ch))
    return " ".join(visible.casefold().split())


def check_text(text: Any, name: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected a string (got {type(text).__name__})")
    check_unicode(text, name)
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{name}: expected a non-empty query (got {shown(text)})")
    if shows_nothing(stripped):  # zero-width spaces, joiners, marks: a query of nothing one can see
        raise ValueError(f"{name}: expected a query one can see (got {_quoted(stripped)}: characters that show as "
                         "nothing)")
    if len(text) > MAX_TEXT_CHARS:  # as sent, spaces included: as every text field is counted (and the schema)
        raise ValueError(f"{name}: expected at most {MAX_TEXT_CHARS:,} characters (got {len(text):,})")
    return stripped


def batch_problems(problems: Sequence[str], total: int, shown_at_most: int = 5) -> str:
    """One error message for the invalid items of a batch (:meth:`ShopService.add_items`), each
    problem already naming its item (``items[3]: price: ...``)."""
    more = f"; and {len(problems) - shown_at_most:,} more" if len(problems) > shown_at_most else ""
    return (f"{len(problems):,} of {total:,} items are not valid, nothing was added: "
            + "; ".join(problems[:shown_at_most]) + more)


def _megabytes(size: int) -> str:
    """``10.01 MB (10,495,761 bytes)``: with the exact size, so that a size just over the limit
    never reads as the limit itself."""
    return f"{size / 2**20:.2f} MB ({size:,} bytes)"


IMAGE_LIMIT = f"{MAX_IMAGE_BYTES // 2**20} MB limit ({MAX_IMAGE_BYTES:,} bytes)"


def read_image(image: Any, name: str = "image") -> Any:
    """Validate an image given as ``PIL.Image``, ``bytes`` or a path; return a decoded RGB image.

    The image is converted as the build converts the shop's image files
    (:func:`shopgraph.encoders.image.to_rgb`), so a file searched or added gives the pixels it gives
    in a build: its EXIF orientation applied (a phone photo upright), 16-bit and float grayscale
    scaled to 8 bits by its depth (not clipped to white), transparency composited on white. The
    limits below are checked from the header, before any pixel is decoded (the orientation only
    swaps width and height, which the checks treat alike).

    Raises:
        ValueError: unreadable, larger than 10 MB, more than 40 megapixels, or longer than 20 times
            its width (or wider than 20 times its height).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        img = image
    else:
        if isinstance(image, bytes | bytearray | memoryview):
            payload = bytes(image)
        elif isinstance(image, str | Path):
            path = Path(image)
            if not path.is_file():
                raise ValueError(f"{name}: no such file (got {shown(str(path))})")
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise ValueError(f"{name}: {_megabytes(size)} is over the {IMAGE_LIMIT}")
            payload = path.read_bytes()
        else:
            raise ValueError(f"{name}: expected a PIL image, bytes or a file path (got {type(image).__name__})")
        if not payload:
            raise ValueError(f"{name}: the upload is empty (got 0 bytes)")
        if len(payload) > MAX_IMAGE_BYTES:
            raise ValueError(f"{name}: {_megabytes(len(payload))} is over the {IMAGE_LIMIT}")
        try:
            img = Image.open(io.BytesIO(payload))
        except UnidentifiedImageError as exc:
            raise ValueError(f"{name}: not a readable image ({len(payload):,} bytes; not a format the image "
                             f"library knows; starts with {shown(payload[:8])})") from exc
        except OSError as exc:
            raise ValueError(f"{name}: not a readable image ({len(payload):,} bytes; {exc})") from exc
        except Image.DecompressionBombError as exc:
            raise ValueError(f"{name}: more than {MAX_IMAGE_PIXELS:,} pixels ({exc})") from exc
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: {width}x{height} is over the {MAX_IMAGE_PIXELS // 1_000_000} megapixel limit")
    if width == 0 or height == 0:
        raise ValueError(f"{name}: the image is empty (got {width}x{height})")
    if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
        # checked from the header, before any pixel is decoded or resized
        raise ValueError(f"{name}: {width}x{height} is over the {MAX_IMAGE_ASPECT}:1 aspect ratio limit (the longer "
                         f"side at most {MAX_IMAGE_ASPECT} times the shorter)")
    from shopgraph.encoders.image import to_rgb

    try:
        img.load()
        return to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - damaged data: OSError, SyntaxError, struct.error, a bad EXIF block ...
        raise ValueError(f"{name}: the image data is corrupt ({exc})") from exc


def fraud_attribution_of(run: RunDir, data: Any, model: Any, fraud: dict[str, Any],
                         fraud_prob: np.ndarray | None) -> FraudAttribution | None:
    """The serving fraud scorer's per-feature log-odds contributions, or ``None`` when none can
    be given truthfully.

    Boosted trees (``graph_trees``, ``hybrid``): TreeSHAP of the served trees
    (:class:`shopgraph.graph.explain.ServedTreeExplainer`, used only when they reproduce the
    stored probabilities). The GNN head (``gnn_head``): integrated gradients of the model's fraud
    logit from the average user, for users whose logit the model reproduces (``None`` for the
    others), when the model reads the users' features (``None`` when it does not: the default
    history tower scores an account from its items and devices alone). Other scorers
    (``rank_average``): ``None``.
    """
    from shopgraph.graph.train import TREE_KINDS

    kind = fraud.get("kind")
    if kind in TREE_KINDS:
        from shopgraph.graph.explain import load_served_explainer

        served = load_served_explainer(run, data, model, fraud_prob)
        if served is None:
            return None
        return lambda u: served.contributions(u)[0]
    reads_users = getattr(getattr(model, "config", None), "in_dims", {}).get("user", -1) != 0
    if kind in ("gnn", "gnn_head") and model is not None and "x" in data["user"] and fraud_prob is not None \
            and reads_users:
        from shopgraph.graph.explain import explain_user

        n_features = int(data["user"].x.size(1))
        stored = np.asarray(fraud_prob, dtype=np.float64)

        def integrated(u: int) -> Sequence[tuple[str, float, float]] | None:
            # features only (no occlusion); the stored scores spare a pass over the whole graph
            ex = explain_user(model, data, u, top_k=n_features, max_neighbours=0, fraud_prob=stored)
            if ex.score is None or abs(ex.score - float(stored[u])) > 1e-3:
                return None  # the model does not give the served score: its gradients would not explain it
            if not ex.method.startswith("integrated_gradients"):
                return []  # every gradient was zero: the account's own features did not move its score
            return [(f.name, f.value, f.attribution) for f in ex.features]

        return integrated
    return None


def held_out_attribution_of(run: RunDir, data: Any, held_out: np.ndarray) -> HeldOutAttribution | None:
    """The held-out scores' per-feature log-odds contributions (TreeSHAP of each fold's trees,
    :class:`shopgraph.graph.explain.HeldOutExplainer`), or ``None`` when the run has no held-out
    trees (trained before they were stored) or they cannot be read (a warning says why)."""
    from shopgraph.graph.explain import load_held_out_explainer

    explainer = load_held_out_explainer(run, data, held_out if np.isfinite(held_out).any() else None)
    if explainer is None:
        return None

    # the latest accounts' attributions are kept: a view of one asks for its reasons and its table
    contributions = functools.lru_cache(maxsize=64)(explainer.contributions)

    def attribution(u: int) -> tuple[Sequence[tuple[str, float, float]], float] | None:
        try:
            return contributions(u)
        except (ValueError, RuntimeError, MemoryError) as exc:  # a bonus: the held-out score serves without it
            logger.warning("held-out reasons of user %d failed: %s", u, exc)
            return None

    return attribution


def user_feature_facts(run: RunDir, data: Any) -> FeatureFacts:
    """The run's user behaviour columns before standardising, as :class:`FeatureFacts` words them
    (empty when the tables are missing or the graph was built otherwise: the reasons then give the
    values the scorer read)."""
    from shopgraph.encoders.behaviour import feature_facts, features_as_of
    from shopgraph.graph.pipeline import load_run_tables

    try:
        return feature_facts(load_run_tables(run), data)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        logger.warning("fraud reasons without raw values: %s", exc)
        return FeatureFacts(as_of=features_as_of(data))


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (row, col) pairs as CSR ``(indptr [n_rows + 1], indices)`` with sorted columns."""
    if rows.size == 0:
        return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    width = int(cols.max()) + 1
    keys = np.unique(rows.astype(np.int64) * width + cols.astype(np.int64))
    r, c = keys // width, keys % width
    indptr = np.searchsorted(r, np.arange(n_rows + 1)).astype(np.int64)
    return indptr, c.astype(np.int64)


def _held_out(embeddings: dict[str, np.ndarray], n_users: int) -> np.ndarray:
    """``float32 [U]``: the run's held-out fraud scores of its training accounts (NaN for the
    others, and for all in a run trained without them)."""
    from shopgraph.graph.fraud_scorer import check_held_out
    from shopgraph.graph.train import HELD_OUT_KEY

    if HELD_OUT_KEY not in embeddings:
        return np.full(n_users, np.nan, dtype=np.float32)
    return check_held_out(embeddings[HELD_OUT_KEY], n_users).astype(np.float32)


def _revisit_csr(embeddings: dict[str, np.ndarray], n_users: int, n_items: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The model's revisit term (``revisit_index [2, N]``, ``revisit_value [N]`` of
    ``embeddings.safetensors``) as CSR ``(indptr, items, values)``; None when the run has none."""
    index, value = embeddings.get("revisit_index"), embeddings.get("revisit_value")
    if index is None and value is None:
        return None
    if index is None or value is None:
        have, lack = ("revisit_index", "revisit_value") if value is None else ("revisit_value", "revisit_index")
        raise ValueError(f"embeddings: {have} without {lack}; re-run `shopgraph train`")
    index, value = np.asarray(index), np.asarray(value, dtype=np.float32).reshape(-1)
    if index.ndim != 2 or index.shape[0] != 2 or index.shape[1] != value.size or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"embeddings: revisit_index must be an integer [2, {value.size}] array "
                         f"(got {index.dtype} {list(index.shape)}); re-run `shopgraph train`")
    if index.size and (index.min() < 0 or index[0].max() >= n_users or index[1].max() >= n_items):
        raise ValueError(f"embeddings: revisit_index points outside the graph's {n_users:,} users / "
                         f"{n_items:,} items; re-run `shopgraph train`")
    if not np.isfinite(value).all():
        raise ValueError("embeddings: revisit_value has non-finite values; re-run `shopgraph train`")
    order = np.lexsort((index[1], index[0]))
    rows, items = index[0][order].astype(np.int64), index[1][order].astype(np.int64)
    indptr = np.searchsorted(rows, np.arange(n_users + 1)).astype(np.int64)
    return indptr, items, value[order]


def _statistic_maps(data: Any, prices: np.ndarray) -> dict[str, tuple[float, float]]:
    """Affine maps raw value -> stored feature for the item statistics a new item can have computed.

    The features are standardised (``encoders/behaviour.py``) with statistics the graph does not
    store. Recomputing each raw statistic for the trained items (training-period counts from the
    graph's split-0 edges, ``log1p(price)`` from the items table) and fitting ``x = a * raw + b``
    recovers the map exactly; a column whose fit is not exact is left at the training mean.
    """
    from shopgraph.encoders.behaviour import affine_fit

    if "x" not in data["item"] or "feature_names" not in data["item"]:
        return {}
    x = np.asarray(data["item"].x, dtype=np.float64)
    names = list(data["item"].feature_names)
    n_items = x.shape[0]
    raw: dict[str, np.ndarray] = {}
    total = np.zeros(n_items)
    pair_keys = []
    for et in data.edge_types:
        if et[0] != "user" or et[2] != "item" or "split" not in data[et]:
            continue
        ei = data[et].edge_index.numpy()
        train = data[et].split.numpy() == 0
        counts = np.bincount(ei[1][train], minlength=n_items).astype(np.float64)
        raw[f"log_n_{et[1]}"] = np.log1p(counts)
        total += counts
        pair_keys.append(ei[0][train].astype(np.int64) * n_items + ei[1][train])
    raw["log_n_events"] = np.log1p(total)
    if pair_keys:
        distinct = np.unique(np.concatenate(pair_keys)) % n_items
        raw["log_n_users"] = np.log1p(np.bincount(distinct, minlength=n_items).astype(np.float64))
    known = np.isfinite(prices)
    maps: dict[str, tuple[float, float]] = {}
    for j, name in enumerate(names):
        if name in raw:
            fit = affine_fit(raw[name], x[:, j])
        elif name == "log_price" and known.sum() >= 2 and prices.size == n_items:
            fit = affine_fit(np.log1p(np.clip(prices[known], 0, None)), x[known, j])
        else:
            continue
        if fit is not None:
            maps[name] = fit
    return maps


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class ShopService:
    """Recommendations, similar items, text/image search and fraud scores over one run folder.

    Build it with :meth:`from_run`. All methods take and return external string ids and are
    safe to call from several threads (``add_item`` / ``remove_item`` take a write lock).

    Args:
        data: the run's graph (``HeteroData``).
        items: the normalised items table (``item_id``, ``title``, ``category``, ...).
        embeddings: ``{"user": [U, D], "item": [I, D], "fraud_prob": [U]}`` float32 arrays.
        indexes: ``{"gnn_items": ItemIndex, "text_items": ..., "image_items": ...}``.
        fraud: the contents of ``RUN/fraud.json``.
        model: the trained ``ShopGNN`` (needed only by :meth:`add_item`).
        text_encoder, image_encoder: encoders for queries (default: built on first use from the
            run's ``text_model`` / ``image_model`` config).
        text_model, image_model: checkpoint paths for the default encoders (``None``: bundled).
        tables_root: folder that item image paths are relative to.
        facts: the user behaviour columns before standardising (:func:`user_feature_facts`), the
            values fraud reasons give (without them: the standardised values the scorer read).
        fraud_attribution: ``user node index -> [(feature, value, log-odds contribution)]`` of the
            serving fraud scorer (:func:`fraud_attribution_of`); without it ``reasons`` say so.
        held_out_attribution: the same of the held-out scores (:func:`held_out_attribution_of`);
            without it ``held_out_reasons`` say so.
        catalogue: the run's journal of items added and removed at run time
            (:mod:`shopgraph.retrieval.catalogue`): replayed here, appended to by :meth:`add_item`
            and :meth:`remove_item`. ``None``: such changes live in this object only.
        catalogue_sync_s: how often (seconds, at most) a call checks the journal for changes that
            other processes made (a look at the file's size and inode; 0: every call).
        catalogue_follow: also check every ``catalogue_sync_s`` (at least every 0.1 s) in a
            background thread, so that a service without calls stays current and its next call
            does not wait for the changes to be applied (``False``: only calls check).
        encoder_models: ``{"text" | "image": model name}`` of the encoders the run's item vectors
            were made with (``RUN/features.json``, when its names are of
            :data:`~shopgraph.encoders.cache.MODEL_NAME_SCHEME`: they carry a digest of the weights). A
            query encoder with another name (its checkpoint retrained or replaced in place since
            the build) would search another vector space: its calls are refused
            (``NotAvailableError``) instead of answering nonsense.
    """

    def __init__(
        self,
        *,
        data: Any,
        items: Any,
        embeddings: dict[str, np.ndarray],
        indexes: dict[str, ItemIndex],
        fraud: dict[str, Any],
        model: Any = None,
        text_encoder: TextEncoderLike | None = None,
        image_encoder: ImageEncoderLike | None = None,
        text_model: str | None = None,
        image_model: str | None = None,
        tables_root: Path | None = None,
        run_path: Path | None = None,
        model_problem: str = "",
        facts: FeatureFacts | None = None,
        fraud_attribution: FraudAttribution | None = None,
        held_out_attribution: HeldOutAttribution | None = None,
        quick_items: QuickPurchases | None = None,
        catalogue: CatalogueJournal | None = None,
        catalogue_sync_s: float = 1.0,
        catalogue_follow: bool = True,
        encoder_models: Mapping[str, str] | None = None,
    ) -> None:
        self._lock = _RWLock()
        self._encoder_models = dict(encoder_models or {})
        self._encoders_checked: set[str] = set()
        self._enc_lock = threading.Lock()
        self.run_path = run_path
        self.tables_root = tables_root
        self.model = model
        self._model_problem = model_problem
        # the date the fraud features are measured at (the end of the training period), which reasons name
        from shopgraph.encoders.behaviour import features_as_of

        self.features_as_of: str | None = features_as_of(data)
        self._facts_of = facts if facts is not None else FeatureFacts(as_of=self.features_as_of)
        self._fraud_attribution = fraud_attribution
        self._held_out_attribution = held_out_attribution
        # per user, the items it bought right after viewing or carting them (graph.fraud_scorer.quick_purchases),
        # named in a "quick purchases" reason: the items behind it
        self._quick_items = quick_items
        self._text_encoder = text_encoder
        self._image_encoder = image_encoder
        self._text_model = text_model
        self._image_model = image_model
        self.fraud = dict(fraud)
        self.indexes = dict(indexes)
        if "gnn_items" not in self.indexes:
            raise ValueError("indexes: the gnn_items index is required (run `shopgraph index`)")
        if "gnn_items_cosine" not in self.indexes:  # runs indexed before it existed: build it here
            gnn = np.asarray(embeddings["item"], dtype=np.float32)
            self.indexes["gnn_items_cosine"] = ItemIndex("cosine").fit(gnn, np.arange(len(gnn), dtype=np.int64))

        # -- ids and item metadata -----------------------------------------------------------
        self.user_ids: list[str] = list(data["user"].ids)
        self.item_ids: list[str] = list(data["item"].ids)
        self._user_pos = {u: k for k, u in enumerate(self.user_ids)}
        self._item_pos = {i: k for k, i in enumerate(self.item_ids)}
        # the trained items, by id: adding the id of one that was removed restores it (_restore)
        self._trained_pos = dict(self._item_pos)
        # the items added at run time, served now or removed since, by id: the position each was last
        # added at (_was_removed; adding a removed one again keeps the fields left out, _kept)
        self._added_pos: dict[str, int] = {}
        # items added at run time and removed since whose journal lines a compaction dropped: known
        # as removed all the same (a visitor's list may hold them), their fields no longer
        self._forgotten: set[str] = set()
        # the trained content rows a restore replaced ({index name: {position: row}}): new items'
        # neighbours are found by the trained content (_new_item_embeddings)
        self._trained_content: dict[str, dict[int, np.ndarray]] = {}
        n_items = len(self.item_ids)
        table = items.set_index("item_id")
        missing = [i for i in self.item_ids if i not in table.index]
        if missing:
            raise ValueError(f"items: {len(missing):,} graph items are not in the items table (first: {missing[0]!r})")
        table = table.loc[self.item_ids]

        def column(name: str) -> list[str]:
            if name not in table.columns:
                return [""] * n_items
            return [("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)) for v in table[name]]

        self.titles = column("title")
        self.categories = column("category")
        self.descriptions = column("description")
        self.images = column("image")
        self.prices = (table["price"].to_numpy(dtype=np.float64) if "price" in table.columns
                       else np.full(n_items, np.nan)).tolist()
        self._cat_code: dict[str, int] = {}
        # per-item arrays that add_item grows (_Growable); read through the properties below
        self._rows: dict[str, _Growable] = {
            "item_cat": _Growable(np.array([self._cat_code.setdefault(c, len(self._cat_code)) for c in self.categories],
                                           dtype=np.int64)),
            "active": _Growable(np.ones(n_items, dtype=bool))}
        self._n_trained = n_items  # items past this position were added by add_item

        # -- embeddings ----------------------------------------------------------------------
        for key in ("user", "item"):
            if key not in embeddings:
                raise ValueError(f"embeddings: no {key!r} tensor (found: {', '.join(sorted(embeddings))})")
        self.user_emb = np.ascontiguousarray(embeddings["user"], dtype=np.float32)
        self._rows["item_emb"] = _Growable(np.ascontiguousarray(embeddings["item"], dtype=np.float32))
        if self.user_emb.shape[0] != len(self.user_ids) or self.item_emb.shape[0] != n_items:
            raise ValueError(
                f"embeddings: {self.user_emb.shape[0]:,} users / {self.item_emb.shape[0]:,} items do not match "
                f"the graph's {len(self.user_ids):,} / {n_items:,}; re-run `shopgraph train`"
            )
        self._rows["item_emb_n"] = _Growable(_normalised(self.item_emb))
        prob = embeddings.get("fraud_prob")
        self.fraud_prob = (np.full(len(self.user_ids), np.nan, dtype=np.float32) if prob is None
                           else np.asarray(prob, dtype=np.float32).reshape(-1))
        self.fraud_prob_held_out = _held_out(embeddings, len(self.user_ids))
        threshold = self.fraud.get("threshold", 0.5)  # null: no scorer (no fraud labels), so NaN: none flagged
        self.fraud_threshold = float("nan") if threshold is None else float(threshold)
        from shopgraph.graph.fraud_scorer import account_labels

        self.fraud_labels, self.label_in_training = account_labels(
            data, self.fraud_prob if self.fraud.get("kind", "none") != "none" else None)
        self._revisit = _revisit_csr(embeddings, len(self.user_ids), n_items)

        # content vectors (for merging text + image scores and for cold start)
        self._content: dict[str, _Growable] = {}
        self._in_index: dict[str, _Growable] = {}
        for name, index in self.indexes.items():
            member = np.zeros(n_items, dtype=bool)
            member[index.ids()] = True
            self._in_index[name] = _Growable(member)
        for name, attr in (("text_items", "text_emb"), ("image_items", "image_emb")):
            if name in self.indexes and attr in data["item"]:
                self._content[name] = _Growable(_normalised(np.asarray(data["item"][attr], dtype=np.float32)))

        # -- history: seen (target) items and every interacted item, per user ----------------
        target = str(getattr(data, "target", "purchase"))
        self.target = target
        n_users = len(self.user_ids)
        rows_t: list[np.ndarray] = []
        cols_t: list[np.ndarray] = []
        rows_a: list[np.ndarray] = []
        cols_a: list[np.ndarray] = []
        rels: list[str] = []
        ev_rel: list[np.ndarray] = []
        ev_time: list[np.ndarray] = []
        for et in data.edge_types:
            src, rel, dst = et
            if src != "user" or dst != "item":
                continue
            ei = data[et].edge_index.numpy()
            rows_a.append(ei[0])
            cols_a.append(ei[1])
            ev_rel.append(np.full(ei.shape[1], len(rels), np.int64))
            rels.append(rel)
            ev_time.append(data[et].time.numpy().astype(np.int64) if "time" in data[et]
                           else np.full(ei.shape[1], -1, np.int64))
            if rel == target:
                rows_t.append(ei[0])
                cols_t.append(ei[1])
        buyer_rows = np.concatenate(rows_t) if rows_t else np.zeros(0, np.int64)
        bought_cols = np.concatenate(cols_t) if cols_t else np.zeros(0, np.int64)
        self._seen = _csr(buyer_rows, bought_cols, n_users)
        self._buyers = _csr(bought_cols, buyer_rows, n_items)  # item -> the users who bought it (similar reasons)
        empty = np.zeros(0, np.int64)
        ev_user = np.concatenate(rows_a) if rows_a else empty
        ev_item = np.concatenate(cols_a) if cols_a else empty
        self._history = _csr(ev_user, ev_item, n_users)
        self._verb_target = _VERBS.get(target, f"{target}d")
        # every user→item event, grouped by user (explains revisit recommendations)
        order = np.argsort(ev_user, kind="stable")
        self._event_rels = rels
        self._events = (np.searchsorted(ev_user[order], np.arange(n_users + 1)).astype(np.int64), ev_item[order],
                        np.concatenate(ev_rel)[order] if ev_rel else empty,
                        np.concatenate(ev_time)[order] if ev_time else empty)


        # -- item feature layout for add_item --------------------------------------------------
        self._item_feature_names: list[str] = (list(data["item"].feature_names)
                                               if "feature_names" in data["item"] else [])
        self._item_x_mean = (np.asarray(data["item"].x, dtype=np.float32).mean(axis=0)
                             if "x" in data["item"] else None)
        self._stat_maps = _statistic_maps(data, np.asarray(self.prices, dtype=np.float64))
        self._layout: _RowLayout | None = None
        if self._item_x_mean is not None:
            x_items = np.asarray(data["item"].x, dtype=np.float32)
            self._item_x_range = (x_items.min(axis=0), x_items.max(axis=0))

        # -- the catalogue journal: replay what was added and removed since training ----------------
        self._journal = catalogue
        self._journal_at = JournalPosition()  # how far the journal is applied
        self._journal_notes: list[str] = []  # entries that could not be applied, for good
        self._journal_fault: str | None = None  # why the journal cannot be read now (None: it can)
        self._journal_superseded = 0  # journal adds of ids that the trained catalogue holds now
        self._sync_lock = threading.Lock()
        self._sync_every = float(catalogue_sync_s)
        self._synced_at = self._verified_at = time.monotonic()
        if self._journal is not None:
            with self._sync_lock:
                self._sync()
            if catalogue_follow:
                _follow_in_background(self, max(self._sync_every, 0.1))
        logger.info("service: %d users, %d items, indexes %s", n_users, int(self._active.sum()),
                    {k: v.count for k, v in self.indexes.items()})

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        text_encoder: TextEncoderLike | None = None,
        image_encoder: ImageEncoderLike | None = None,
        load_model: bool = True,
        use_gpu: bool | None = None,
        fraud_reasons: bool = True,
        catalogue: bool = True,
        catalogue_sync_s: float = 1.0,
        catalogue_follow: bool = True,
    ) -> ShopService:
        """Load a run folder (graph, items table, embeddings, indexes, fraud.json, model).

        Every file is checked against the manifest's checksum before it is read.

        Args:
            run_dir: a run folder after ``shopgraph index``.
            text_encoder, image_encoder: encoders to use for queries (default: the run's models).
            load_model: load ``RUN/model/`` for :meth:`add_item` when it is there.
            use_gpu: FAISS on GPU (``None``: when available).
            fraud_reasons: prepare the fraud reasons' attributions and raw values (:func:`fraud_attribution_of`,
                :func:`user_feature_facts`; a few seconds on a run that serves boosted trees). Without
                them ``score_user`` says that it has no attribution.
            catalogue: replay and keep the items added and removed at run time in the run's
                journal (``RUN/catalogue.jsonl``); ``False``: serve the trained catalogue, and keep
                :meth:`add_item` / :meth:`remove_item` in this object only (benchmarks, what-ifs).
            catalogue_sync_s: how often a call looks for catalogue changes made by other processes
                over the same run (see the class).
            catalogue_follow: look for them in a background thread as well (see the class).

        Raises:
            CatalogueError: a line of ``RUN/catalogue.jsonl`` is damaged (named by line).
        """
        import pandas as pd

        run = RunDir(run_dir)
        data = run.load_graph()
        items = pd.read_parquet(run.path_of("tables/items.parquet"))
        embeddings = load_embeddings(run)
        fraud = run.read_json("fraud.json") if run.has("fraud.json") else {}
        indexes: dict[str, ItemIndex] = {}
        for name in INDEX_NAMES:
            if run.has(f"{INDEX_DIR}/{name}.faiss"):
                indexes[name] = ItemIndex.load(INDEX_DIR, name, run=run, use_gpu=use_gpu)
        if "gnn_items" not in indexes:
            raise FileNotFoundError(f"run folder {run.path}: no {INDEX_DIR}/gnn_items.faiss "
                                    f"(run `shopgraph index --run {run.path}`)")
        model = None
        model_problem = ""
        if load_model and run.has("model/model.safetensors") and run.has("model/config.json"):
            from shopgraph.graph.train import load_model as _load_model

            folder = run.path_of("model/model.safetensors").parent
            run.path_of("model/config.json")
            try:
                model = _load_model(folder, "cpu")
            except (RuntimeError, ValueError, KeyError) as exc:
                # Only add_item needs the model; serving the rest must not depend on it.
                logger.warning("model in %s could not be loaded (%s: %s); add_item is unavailable",
                               folder, type(exc).__name__, str(exc).splitlines()[0])
                model_problem = (f"the run's model could not be loaded ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0]})")
        elif not load_model:
            model_problem = "it was loaded with load_model=False"
        config = run.manifest.get("config", {})
        root = config.get("tables_root")
        prob = embeddings.get("fraud_prob")
        from shopgraph.encoders.cache import MODEL_NAME_SCHEME
        from shopgraph.graph.fraud_scorer import quick_purchases

        features = run.read_json("features.json") if run.has("features.json") else {}
        encoder_models = {}  # only names of the scheme that hashes the weights can be compared
        for kind in ("text", "image"):
            built = features.get(kind)
            if isinstance(built, dict) and built.get("model"):
                if built.get("model_scheme") == MODEL_NAME_SCHEME:
                    encoder_models[kind] = str(built["model"])
                else:
                    logger.info("run %s was built before encoder names identified their weights: its %s "
                                "query encoder is not checked against the build's", run.path, kind)
        return cls(
            data=data, items=items, embeddings=embeddings, indexes=indexes, fraud=fraud, model=model,
            text_encoder=text_encoder, image_encoder=image_encoder,
            text_model=config.get("text_model"), image_model=config.get("image_model"),
            tables_root=Path(root) if root else None, run_path=run.path, model_problem=model_problem,
            facts=user_feature_facts(run, data) if fraud_reasons else None,
            fraud_attribution=fraud_attribution_of(run, data, model, fraud,
                                                   None if prob is None else np.asarray(prob).reshape(-1))
            if fraud_reasons else None,
            held_out_attribution=held_out_attribution_of(run, data, _held_out(embeddings, len(data["user"].ids)))
            if fraud_reasons else None,
            quick_items=quick_purchases(data) if fraud_reasons else None,
            catalogue=CatalogueJournal(run.path) if catalogue else None, catalogue_sync_s=catalogue_sync_s,
            catalogue_follow=catalogue_follow, encoder_models=encoder_models,
        )

    # -- per-item arrays (views of the growable rows) -------------------------------------------
    @property
    def item_emb(self) -> np.ndarray:
        """``[items, D]`` the GNN item embeddings, added items included."""
        return self._rows["item_emb"].view

    @property
    def _item_emb_n(self) -> np.ndarray:
        return self._rows["item_emb_n"].view

    @property
    def _item_cat(self) -> np.ndarray:
        return self._rows["item_cat"].view

    @property
    def _active(self) -> np.ndarray:
        return self._rows["active"].view

    # -- lookups --------------------------------------------------------------------------------
    @staticmethod
    def _lookup(positions: dict[str, int], value: Any, name: str, kind: str) -> int:
        key = _id_text(value, name)
        pos = positions.get(key)
        if pos is None:
            raise UnknownIdError(f"{name}: unknown {kind} {shown(value)}{did_you_mean(positions, key)}", kind, [value])
        return pos

    def user_hint(self, user_id: str) -> str:
        """What an unknown user id's error adds when it looks like one user id (another case, a
        full-width digit, a Cyrillic letter): `` (did you mean 'u001'? ids are case-sensitive)``;
        else ``""`` (:func:`~shopgraph.graph.messages.did_you_mean`)."""
        return did_you_mean(self._user_pos, user_id.strip()) if isinstance(user_id, str) else ""

    def user_ids_hint(self, unknown: Sequence[str]) -> str:
        """What a list of unknown user ids' error adds: ``"; did you mean 'u001' for 'U001'? ids are
        case-sensitive"`` for those of the first five that are users in another case, else ``""``."""
        return _case_hint(self._user_pos, list(unknown))

    def _user(self, user_id: Any, name: str = "user_id") -> int:
        return self._lookup(self._user_pos, user_id, name, "user")

    def _item(self, item_id: Any, name: str = "item_id") -> int:
        try:
            return self._lookup(self._item_pos, item_id, name, "item")
        except UnknownIdError:
            if self._was_removed(item_id):  # known, not served now
                raise UnknownIdError(f"{name}: item {shown(item_id)} was removed from the catalogue (adding it "
                                     "again serves it again)", "item", [item_id]) from None
            raise

    def _was_removed(self, item_id: Any) -> bool:
        """Whether ``item_id`` (spaces aside) names an item that is not served now but was: a trained
        item, or one added at run time, removed since (after a compaction dropped its lines too: the
        compaction names it, ``catalogue.REMOVED_IDS``)."""
        if not isinstance(item_id, str):
            return False
        key = item_id.strip()
        return key not in self._item_pos and (key in self._trained_pos or key in self._added_pos
                                               or key in self._forgotten)

    def _removed_hint(self, names: Sequence[Any]) -> str:
        """What an error naming unknown item ids adds for those that are items removed since (trained
        or added at run time): ``"; 'i000010' was removed from the catalogue"`` (else ``""``)."""
        removed = [n for n in names if self._was_removed(n)]
        if not removed:
            return ""
        return f"; {listed_ids(removed)} {'was' if len(removed) == 1 else 'were'} removed from the catalogue"

    def not_served(self, item_ids: Sequence[Any]) -> list[str]:
        """Those of ``item_ids`` (each once, as first given: ``" nope"`` after ``"nope"`` is the same
        id, as ids are matched spaces aside) that name no served item (unknown, in another case, or
        removed since): in a recommendation's ``exclude`` they leave nothing out, which ``GET
        /recommend`` says (``exclude_not_served``) so that a client's id mistake is seen."""
        with self._lock.read():
            return once_each(i for i in item_ids if not (isinstance(i, str) and i.strip() in self._item_pos))

    def _many(self, ids: Any, name: str, positions: dict[str, int], kind: str, k: int | None = None, *,
              left_out: Sequence[str] = (), given: int | None = None) -> list[int]:
        """The positions of a list of 1 to :data:`MAX_BATCH` ids; the unknown ones are all named
        (``UnknownIdError``), so a caller with several new accounts learns of them in one answer.
        ``k``: results asked for each id, checked against :data:`MAX_BATCH_RESULTS` before the ids
        are looked up (a batch too large is said first, not after its ids are mended).
        ``left_out``: removed items the caller took out of the ``given`` ids before (named in the
        error, counted against all ``given``, and in its ``ids`` too when nothing served would be
        left: the next call would refuse them)."""
        ids, keys = self._id_list(ids, name, k)
        unknown = [value for value, key in zip(ids, keys) if key not in positions]  # named as given
        if unknown:
            names = once_each(unknown)
            repeats = f", {len(unknown) - len(names):,} of them repeats" if len(names) < len(unknown) else ""
            hint = _case_hint(positions, names) + (self._removed_hint(names) if positions is self._item_pos else "")
            served = len(unknown) < len(ids)
            gone = (f"; {listed_ids(left_out)} removed from the catalogue since, left out"
                    + ("" if served else ", and no served item would be left")) if left_out else ""
            raise UnknownIdError(f"{name}: unknown {kind}{'s' if len(names) > 1 else ''} {listed_ids(names)} "
                                 f"({len(unknown):,} of the {given or len(ids):,} ids given{repeats}{gone}){hint}",
                                 kind, names + ([] if served else list(left_out)))
        return [positions[key] for key in keys]

    def _id_list(self, ids: Any, name: str, k: int | None = None) -> tuple[list[Any], list[str]]:
        """``(ids as a list, their keys)``: a list of 1 to :data:`MAX_BATCH` ids, each a string that
        is not blank (its key: stripped), else ``ValueError`` naming the first wrong one by its
        position in the list as given; ``k`` as :meth:`_many` takes it."""
        _refuse_not_a_list(ids, name)
        ids = list(ids)
        if not ids:
            raise ValueError(f"{name}: expected at least one id (got an empty list)")
        if len(ids) > MAX_BATCH:
            raise ValueError(f"{name}: expected at most {MAX_BATCH:,} ids (got {len(ids):,})")
        if k is not None:
            self._check_results(len(ids), name, k)
        return ids, [_id_text(value, f"{name}[{pos}]") for pos, value in enumerate(ids)]

    @staticmethod
    def _check_results(n: int, name: str, k: int) -> None:
        """Refuse a batch of ``n`` ids whose answer would hold more than :data:`MAX_BATCH_RESULTS`
        items (1,000 ids at k=1000 is a million: a 190 MB answer, seconds of a server's time)."""
        if n * k > MAX_BATCH_RESULTS:
            raise ValueError(f"k: {n:,} {name} × k={k:,} asks for {n * k:,} results, over the {MAX_BATCH_RESULTS:,} "
                             f"one batch answers; send at most {MAX_BATCH_RESULTS // k:,} ids a batch at this k")

    def _category(self, category: str | None) -> int | None:
        """The code of a category filter (the caller holds ``_lock.read()``: add_item changes it)."""
        if category is None:
            return None
        if not isinstance(category, str):
            raise ValueError(f"category: expected a category name or None (got {type(category).__name__} "
                             f"{shown(category)})")
        name = category.strip()  # as ids: surrounding spaces are not part of the name
        code = self._cat_code.get(name) if name else None
        if code is None:  # a category whose items were all removed stays known: its lists are empty
            known = sorted(c for c in self._cat_code if c)
            raise ValueError(f"category: unknown category {shown(category)} "
                             f"(known: {listed_ids(known, 20) if known else 'none'})")
        return code

    def has_user(self, user_id: str) -> bool:
        """Whether ``user_id`` (surrounding spaces aside) is a known user (``False`` for anything
        that is not a string id)."""
        return isinstance(user_id, str) and user_id.strip() in self._user_pos

    def has_item(self, item_id: str) -> bool:
        """Whether ``item_id`` (surrounding spaces aside) is a served item (``False`` for anything
        that is not a string id)."""
        self._maybe_sync()
        if not isinstance(item_id, str):
            return False
        with self._lock.read():
            return item_id.strip() in self._item_pos

    def item_info(self, item_id: str) -> dict[str, Any]:
        """Title, category, description, price and image path of an item."""
        self._maybe_sync()
        with self._lock.read():  # add_item maps the id before it appends the title
            i = self._item(item_id)
            price = self.prices[i]
            return {"item_id": self.item_ids[i], "title": self.titles[i], "category": self.categories[i],
                    "description": self.descriptions[i], "price": None if price != price else price,
                    "image": self._image_path(i)}

    def _image_path(self, i: int) -> str | None:
        """Item ``i``'s image file (a trained item's is under the shop's tables), or ``None``."""
        image = self.images[i]
        return str(self.tables_root / image) if image and self.tables_root else (image or None)

    def info(self) -> dict[str, Any]:
        """Counts for health checks."""
        self._maybe_sync()
        with self._lock.read():
            return {"users": len(self.user_ids), "items": int(self._active.sum()),
                    "indexes": {name: index.count for name, index in self.indexes.items()},
                    "fraud_scorer": self.fraud.get("kind", "none"), "run": str(self.run_path or ""),
                    "catalogue": self._catalogue_info()}

    def catalogue_info(self) -> dict[str, Any]:
        """What changed since training: items added (and still served), trained items removed, the
        journal that keeps them (``None``: in this process only), the journal's changes that the
        trained catalogue already reflects (``superseded``: a run rebuilt on tables that hold an
        added id, whose trained item is served, or lack a removed one), the journal entries that
        could not be applied, each with its reason, and the journal's generation (how many times
        it was compacted), and ``fault``: why the journal cannot be read now (a damaged line), so that
        no catalogue change can be saved until it is mended, or ``None``."""
        self._maybe_sync()
        with self._lock.read():
            return self._catalogue_info()

    def _catalogue_info(self) -> dict[str, Any]:
        added = self._active[self._n_trained:]
        return {"added": int(added.sum()), "removed": int((~self._active[:self._n_trained]).sum()),
                "journal": str(self._journal.path) if self._journal is not None else None,
                "superseded": self._journal_superseded, "not_applied": list(self._journal_notes),
                "fault": self._journal_fault, "generation": self._journal_at.generation}

    # -- core search ----------------------------------------------------------------------------
    def _filtered(
        self, name: str, queries: np.ndarray, k: int, exclude: list[np.ndarray], category: int | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k per query from index ``name`` after dropping excluded / off-category items.

        Over-fetches (``k + len(exclude)``, scaled by the category's rarity) and widens the search
        four-fold until k items survive the filters or the whole index was searched.
        """
        index = self.indexes[name]
        total = index.count
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(queries)
        share = 1.0
        if category is not None:
            in_category = self._item_cat[self._active] == category
            if not in_category.any():  # every item of the category was removed: nothing to search for
                return out
            share = float(in_category.mean())
        todo = list(range(len(queries)))
        fetch = min(total, int(math.ceil((k + max((e.size for e in exclude), default=0)) / share * 1.2)) + 1)
        while todo:
            res = index.search(queries[todo], max(fetch, 1))
            again = []
            for row, q in enumerate(todo):
                ids, scores = res.ids[row], res.scores[row]
                keep = ids >= 0
                safe = np.where(keep, ids, 0)
                keep &= self._active[safe]
                if exclude[q].size:
                    keep &= ~np.isin(ids, exclude[q])
                if category is not None:
                    keep &= self._item_cat[safe] == category
                if int(keep.sum()) >= k or fetch >= total:
                    out[q] = (ids[keep][:k], scores[keep][:k])
                else:
                    again.append(q)
            todo = again
            fetch = min(total, fetch * 4)
        return out

    def _pack(self, ids: np.ndarray, scores: np.ndarray, reasons: list[str]) -> Recommendation:
        return Recommendation([self.item_ids[i] for i in ids], [float(s) for s in scores], reasons,
                              [self.titles[i] for i in ids])

    def _seen_items(self, u: int) -> np.ndarray:
        indptr, indices = self._seen
        return indices[indptr[u]:indptr[u + 1]]

    def _revisit_reason(self, u: int, item: int) -> str:
        """Why a revisited item is recommended, from the user's own events on it: "you viewed it 3
        times, last on 2025-12-02", "you put it in your cart, on 2025-11-17"."""
        indptr, items, rels, times = self._events
        sl = slice(indptr[u], indptr[u + 1])
        mine = items[sl] == item
        rel, t = rels[sl][mine], times[sl][mine]
        if rel.size == 0:
            return "you interacted with it before"
        # the furthest step of the funnel (the latest edge type of the graph wins a tie)
        step = max(set(rel.tolist()), key=lambda r: (_FUNNEL.get(self._event_rels[r], 0), r))
        n, last = int((rel == step).sum()), int(t[rel == step].max())
        name = self._event_rels[step]
        did = _REVISIT_PHRASES.get(name, f"you had {name!r} events on it")
        times_ = "" if n == 1 else (" twice" if n == 2 else f" {n} times")
        when = f", {'on' if n == 1 else 'last on'} {time.strftime('%Y-%m-%d', time.gmtime(last))}" if last >= 0 else ""
        return f"{did}{times_}{when}"

    def _user_reasons(self, u: int, rec: np.ndarray) -> list[str]:
        indptr, indices = self._history
        hist = indices[indptr[u]:indptr[u + 1]]
        if hist.size == 0 or rec.size == 0:
            return ["matches your profile (no history yet)"] * int(rec.size)
        seen = self._seen_items(u)
        if hist.size > REASON_HISTORY:  # prefer purchases, then the rest
            rest = hist[~np.isin(hist, seen)]
            hist = np.concatenate([seen, rest])[:REASON_HISTORY]
        best = self._nearest(rec, hist)
        bought = np.isin(best, seen)
        revisit = self._revisit_row(u)[0]
        return [self._revisit_reason(u, int(i)) if i in revisit
                else f"similar to '{self.titles[b]}', which you {self._verb_target if p else 'looked at'}"
                + self._other_category(int(i), int(b)) for i, b, p in zip(rec, best, bought)]

    def _other_category(self, item: int, named: int) -> str:
        """What a reason adds when the item it names is of another category than the recommended
        one (the user has none of that category: an action camera "similar to" dark chocolate
        reads as a mistake without it)."""
        category = self.categories[item]
        if not category or self._item_cat[named] == self._item_cat[item]:
            return ""
        return f" (nothing from '{category}' in your history yet)"

    def _seed_reasons(self, seeds: np.ndarray, rec: np.ndarray, suffix: str = "") -> list[str]:
        if rec.size == 0:
            return []
        return [f"similar to '{self.titles[b]}'{suffix}" for b in self._nearest(rec, seeds)]

    def _nearest(self, rec: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """For each item of ``rec``, the item of ``pool`` (a user's history, a cold start's seeds)
        a reason names: the most similar (GNN cosine) of those in its category, or of all when none
        is. The vectors carry little of the structure within a category, so the most similar of all
        was often of another category: an action camera "similar to" dark chocolate."""
        sims = self._item_emb_n[rec] @ self._item_emb_n[pool].T  # [k, H], cosines in [-1, 1]
        cat = self._item_cat
        blank = self._cat_code.get("", -1)
        same = (cat[rec][:, None] == cat[pool][None, :]) & (cat[rec][:, None] != blank)
        return pool[(sims + 2.0 * same).argmax(axis=1)]

    # -- recommendations ------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True,
                  category: str | None = None, exclude: Sequence[str] = ()) -> Recommendation:
        """Top-k items for a known user: the model's purchase score, exactly (inner product of the user
        GNN embedding with ``gnn_items``, plus the revisit term on the user's own items when the
        model has one).

        Args:
            user_id: external user id.
            k: 1..1000.
            exclude_seen: drop the items the user has already purchased.
            category: only items of this category.
            exclude: up to :data:`MAX_BATCH` item ids to leave out as well (what is in the
                user's cart, say); k items still come back when there are that many others. An
                id that is not served (removed, or never in the catalogue) is nothing to leave
                out: a cart may hold items removed since, and after a compaction of the journal
                a server cannot tell those from ids it never had.
        """
        self._maybe_sync()
        k = check_k(k)
        exclude_seen = check_bool(exclude_seen, "exclude_seen")
        u = self._user(user_id)
        with self._lock.read():
            drop = self._exclusions(exclude, "exclude")
            return self._recommend([u], k, exclude_seen, self._category(category), [drop])[0]

    def _exclusions(self, exclude: Any, name: str) -> np.ndarray:
        """The positions of the item ids to leave out of an answer (the caller holds ``_lock.read()``)."""
        _refuse_not_a_list(exclude, name, "item ids")
        given = list(exclude)
        if len(given) > MAX_BATCH:
            raise ValueError(f"{name}: expected at most {MAX_BATCH:,} ids (got {len(given):,})")
        keys = [_id_text(value, f"{name}[{pos}]") for pos, value in enumerate(given)]
        return np.unique(np.array([self._item_pos[key] for key in keys if key in self._item_pos], dtype=np.int64))

    def recommend_batch(self, user_ids: Sequence[str], k: int = 10, exclude_seen: bool = True,
                        category: str | None = None,
                        exclude: Mapping[str, Sequence[str]] | None = None) -> list[Recommendation]:
        """:meth:`recommend` for many users with one batched FAISS search.

        ``exclude`` maps a user id of ``user_ids`` to the item ids to leave out of that user's
        answer (each user's cart, say), as :meth:`recommend`'s ``exclude``: at most
        :data:`MAX_BATCH` ids a user and :data:`MAX_BATCH_RESULTS` in all; a user the mapping
        does not name leaves out nothing more, and one named more than once in ``user_ids``
        leaves them out each time. A key that is not in ``user_ids`` is refused (a misspelt
        user id would otherwise get the cart back)."""
        self._maybe_sync()
        k = check_k(k)
        exclude_seen = check_bool(exclude_seen, "exclude_seen")
        users = self._many(user_ids, "user_ids", self._user_pos, "user", k)
        carts = self._carts(exclude, user_ids)
        with self._lock.read():
            drops = None
            if carts:
                by_key = {key: self._exclusions(items, key_path("exclude", key)) for key, items in carts.items()}
                drops = [by_key.get(str(value).strip(), _NO_ITEMS) for value in user_ids]
            return self._recommend(users, k, exclude_seen, self._category(category), drops)

    @staticmethod
    def _carts(exclude: Any, user_ids: Sequence[str]) -> dict[str, Any]:
        """``exclude`` of :meth:`recommend_batch` keyed by stripped user id, its shape checked
        (its item ids are checked under the lock, where they are looked up)."""
        if exclude is None:
            return {}
        if not isinstance(exclude, Mapping):
            raise ValueError(f"exclude: expected a mapping from user id to a list of item ids, like "
                             f"{{\"u001\": [\"i042\"]}} (got {type(exclude).__name__})")
        carts: dict[str, Any] = {}
        for key, items in exclude.items():
            name = _id_text(key, "exclude: a user id")
            if name in carts:
                raise ValueError(f"exclude: user {shown(name)} is given more than once (as {shown(key)} too)")
            carts[name] = items
        asked = {str(value).strip() for value in user_ids}
        strays = [key for key in carts if key not in asked]
        if strays:
            raise ValueError(f"exclude: {listed_ids(strays)} {'is' if len(strays) == 1 else 'are'} not among "
                             f"user_ids (a user's items are left out only of that user's answer)")
        total = sum(len(items) for items in carts.values() if isinstance(items, Sized))
        if total > MAX_BATCH_RESULTS:
            raise ValueError(f"exclude: expected at most {MAX_BATCH_RESULTS:,} item ids in all (got {total:,})")
        return carts

    def _revisit_row(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        if self._revisit is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        indptr, items, values = self._revisit
        return items[indptr[u]:indptr[u + 1]], values[indptr[u]:indptr[u + 1]]

    def _recommend(self, users: list[int], k: int, exclude_seen: bool, cat: int | None,
                   drops: list[np.ndarray] | None = None) -> list[Recommendation]:
        """The caller holds ``_lock.read()``; ``drops``: per user, the positions left out as well."""
        exclude = [self._seen_items(u) if exclude_seen else _NO_ITEMS for u in users]
        if drops is not None:
            exclude = [np.union1d(ex, drop) if drop.size else ex for ex, drop in zip(exclude, drops)]
        rows = [self._revisit_row(u) for u in users]
        # The model's score is the dot product plus a revisit term on the few items the user
        # already interacted with. The top k by dot product among the other items, together
        # with those few rescored, hold the exact top k: fetch k + (their number) by dot product.
        extra = max((r[0].size for r in rows), default=0)
        hits = self._filtered("gnn_items", self.user_emb[users], k + extra, exclude, cat)
        out = []
        for u, (ids, _), (rv_items, rv_values), ex in zip(users, hits, rows, exclude):
            keep = self._active[rv_items] & ~np.isin(rv_items, ex)
            if cat is not None:
                keep &= self._item_cat[rv_items] == cat
            cand = np.union1d(ids, rv_items[keep])
            # Row by row, not a matrix-vector product: BLAS rounds each row's sum depending on
            # how many rows it is given, and the batch fetches more candidates than one user
            # alone, so the same user's scores (and near-tie order) differed in the last bit.
            scores = (self.item_emb[cand] * self.user_emb[u]).sum(axis=1)
            scores[np.searchsorted(cand, rv_items[keep])] += rv_values[keep]
            top = np.argsort(-scores, kind="stable")[:k]
            out.append(self._pack(cand[top], scores[top], self._user_reasons(u, cand[top])))
        return out

    def recommend_new(self, user_id: str, k: int = 10, category: str | None = None,
                      exclude: Sequence[str] = ()) -> Recommendation:
        """Top-k of the items added since training (:meth:`add_item`) for a known user, by the
        model's score (inner product; nobody has events on them yet, so no revisit term).

        A new item has no popularity yet, so :meth:`recommend` ranks it below the trained
        catalogue until the next training run; this ranks the new items among themselves (on the
        synthetic shop it finds who buys one about 4-5x as often as chance, ``bench_cold_items.py``).
        Fewer than ``k`` items (none when nothing was added) when fewer are there.

        Args:
            user_id: external user id.
            k: 1..1000.
            category: only new items of this category.
            exclude: item ids to leave out as well (the cart), as :meth:`recommend` takes them.
        """
        self._maybe_sync()
        k = check_k(k)
        u = self._user(user_id)
        with self._lock.read():
            cat = self._category(category)
            new = np.arange(self._n_trained, len(self.item_ids))
            new = new[self._active[new]]
            if cat is not None:
                new = new[self._item_cat[new] == cat]
            new = new[~np.isin(new, self._exclusions(exclude, "exclude"))]
            scores = (self.item_emb[new] * self.user_emb[u]).sum(axis=1)  # as _recommend scores, row by row
            top = np.argsort(-scores, kind="stable")[:k]
            reasons = [f"new since the last training run; {r}" for r in self._user_reasons(u, new[top])]
            return self._pack(new[top], scores[top], reasons)

    def popular(self, k: int = 10, category: str | None = None, exclude: Sequence[str] = ()) -> Recommendation:
        """The served items most shoppers bought (distinct buyers in the run's graph, ties by catalogue
        order): what to show a first visit, with no items viewed and no words yet to go on
        (:meth:`recommend_for_items` and :meth:`recommend_for_text` take over once there are).
        Items added at run time have no buyers yet and come last. ``category`` and ``exclude`` as
        :meth:`recommend` takes them; ``scores`` are the buyer counts."""
        self._maybe_sync()
        k = check_k(k)
        with self._lock.read():
            cat = self._category(category)
            served = np.flatnonzero(self._active)
            if cat is not None:
                served = served[self._item_cat[served] == cat]
            served = np.setdiff1d(served, self._exclusions(exclude, "exclude"), assume_unique=True)
            indptr = self._buyers[0]
            buyers = np.zeros(len(served), dtype=np.int64)
            trained = served < len(indptr) - 1
            buyers[trained] = indptr[served[trained] + 1] - indptr[served[trained]]
            top = np.argsort(-buyers, kind="stable")[:k]
            reasons = [f"popular: bought by {plural(int(n), 'shopper')}" if n else
                       "new since the last training run: no buyers yet" if i >= self._n_trained else "no buyers yet"
                       for i, n in zip(served[top], buyers[top])]
            return self._pack(served[top], buyers[top].astype(np.float64), reasons)

    def similar_items(self, item_id: str, k: int = 10, exclude: Sequence[str] = ()) -> Recommendation:
        """Items closest to an item in the GNN space (cosine, ``gnn_items_cosine``), itself excluded;
        ``exclude``: item ids to leave out as well (what is in the cart, say), as
        :meth:`recommend`'s (an id that is not served is nothing to leave out)."""
        self._maybe_sync()
        k = check_k(k)
        with self._lock.read():
            return self._similar([self._item(item_id)], k, [self._exclusions(exclude, "exclude")])[0]

    def similar_items_batch(self, item_ids: Sequence[str], k: int = 10) -> list[Recommendation]:
        """:meth:`similar_items` for many items."""
        self._maybe_sync()
        k = check_k(k)
        with self._lock.read():
            return self._similar(self._many(item_ids, "item_ids", self._item_pos, "item", k), k)

    def _similar(self, items: list[int], k: int, drop: Sequence[np.ndarray] | None = None) -> list[Recommendation]:
        """The caller holds ``_lock.read()``; ``drop``: per item, positions to leave out besides itself."""
        # FAISS computes a batch of 20 queries or more with BLAS and fewer one by one, which
        # round differently: the candidates (a few more than k) are rescored row by row, so an
        # item's answer in a batch is the one it gets alone.
        leave = [np.union1d(np.array([i], dtype=np.int64), drop[n]) if drop is not None else np.array([i], np.int64)
                 for n, i in enumerate(items)]
        hits = self._filtered("gnn_items_cosine", self._item_emb_n[items], k + RESCORE_MARGIN, leave, None)
        out = []
        for i, (ids, _) in zip(items, hits):
            cand = np.sort(ids)
            scores = (self._item_emb_n[cand] * self._item_emb_n[i]).sum(axis=1)
            top = np.argsort(-scores, kind="stable")[:k]
            out.append(self._pack(cand[top], scores[top], self._similar_reasons(i, cand[top])))
        return out

    def _buyers_of(self, item: int) -> np.ndarray:
        indptr, users = self._buyers
        return users[indptr[item]:indptr[item + 1]] if item < len(indptr) - 1 else np.zeros(0, np.int64)

    def _similar_reasons(self, item: int, ids: np.ndarray) -> list[str]:
        """Per neighbour of ``item``: how many shoppers bought both (when any did), the shared
        category, else that the model puts them close (liked by the same kind of shopper; how close is the
        result's score, the cosine, so the reason does not repeat it)."""
        buyers = self._buyers_of(item)
        out = []
        for j in ids.tolist():
            both = int(np.intersect1d(buyers, self._buyers_of(j), assume_unique=True).size) if buyers.size else 0
            parts = [f"{both} shopper{'s' if both > 1 else ''} {self._verb_target} both"] if both else []
            if self.categories[item] and self._item_cat[j] == self._item_cat[item]:
                parts.append(f"same category '{self.categories[item]}'")
            if not both:
                parts.append("liked by the same kind of shopper, as the model learnt")
            out.append("; ".join(parts))
        return out

    # -- content search -------------------------------------------------------------------------
    def _need(self, name: str) -> ItemIndex:
        index = self.indexes.get(name)
        if index is None:
            what = "text" if name == "text_items" else "image"
            raise NotAvailableError(f"{what} search is not available: this run has no {name} index "
                                    f"(built without {what} features?)")
        return index

    def _loaded_text_encoder(self) -> Any:
        """The query text encoder, made on first use; the caller holds ``_enc_lock``."""
        if self._text_encoder is None:
            from shopgraph.encoders.text import TextEncoder

            self._text_encoder = TextEncoder(self._text_model)
        return self._text_encoder

    def _encode_texts(self, texts: list[str], queries: Sequence[str] = ()) -> np.ndarray:
        """The text model's vectors of ``texts``; ``queries``: their names in messages, when they are
        queries, each refused (``ValueError``) when the model knows none of its words."""
        with self._enc_lock:
            encoder = self._loaded_text_encoder()
            self._check_encoder("text", encoder, self._text_model)
            knows = getattr(encoder, "knows_a_word", None)
            for name, text in zip(queries, texts, strict=False):
                if knows is not None and not knows(text):
                    raise ValueError(f"{name}: the text model knows none of its words (got {shown(text)}), so it "
                                     "would match items at random; use words")
            vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
        return vectors

    def text_cut_at(self, text: str) -> int | None:
        """Where the text model stops reading a query (it reads a window of tokens, 128 for the
        bundled model, about 500 characters of English; :meth:`search` and
        :meth:`recommend_for_text` match the start only): ``None`` when it reads all of it (or
        cannot tell), else how many characters of ``text`` as given it reads."""
        clean = check_text(text)
        with self._enc_lock:
            read_up_to = getattr(self._loaded_text_encoder(), "read_up_to", None)
            cut = read_up_to(clean) if read_up_to is not None else None
        return None if cut is None else cut + len(text) - len(text.lstrip())  # leading spaces are not read

    def _check_encoder(self, kind: str, encoder: Any, path: str | None) -> None:
        """Refuse a query encoder whose model is not the one the run's ``kind`` vectors were made
        with (``encoder_models``); checked once per encoder (the name hashes its weights). The
        caller holds ``_enc_lock``."""
        if kind in self._encoders_checked:
            return
        expected = self._encoder_models.get(kind)
        name = getattr(encoder, "model_name", None)
        # "<folder>@<digest of the weights>/<input size>": the same weights in a folder named
        # otherwise are the same model
        if expected and isinstance(name, str) and name.partition("@")[2] != expected.partition("@")[2]:
            where = f" at {path}" if path else ""
            raise NotAvailableError(
                f"{kind} encoding is not available: the {kind} model{where} is not the one this run's item "
                f"vectors were made with (now {name}, the run was built with {expected}); it was retrained or "
                f"replaced since. Rebuild the run with it (`shopgraph build`, then train and index), or restore "
                "that model")
        self._encoders_checked.add(kind)

    def _encode_image(self, image: Any) -> np.ndarray:
        return self._encode_images([image], ["image"])

    def _encode_images(self, images: Sequence[Any], names: Sequence[str]) -> np.ndarray:
        """``[N, D]``: images (``PIL.Image``, bytes or paths; read by :func:`read_image`) encoded
        :data:`_IMAGE_CHUNK` at a time, each through a PNG file as the build encodes the shop's image
        files, so that a batch of large images is never all decoded at once. An image that cannot
        be read or encoded is a ``ValueError`` naming it by ``names``."""
        out = []
        with self._enc_lock:
            if self._image_encoder is None:
                from shopgraph.encoders.image import ImageEncoder

                self._image_encoder = ImageEncoder(self._image_model, num_workers=0)
            self._check_encoder("image", self._image_encoder, self._image_model)
            with tempfile.TemporaryDirectory(prefix="shopgraph-query-") as tmp:
                for start in range(0, len(images), _IMAGE_CHUNK):
                    chunk = range(start, min(start + _IMAGE_CHUNK, len(images)))
                    paths = [Path(tmp) / f"{k}.png" for k in chunk]
                    for k, path in zip(chunk, paths):
                        read_image(images[k], names[k]).save(path, format="PNG")
                    result = self._image_encoder.encode(paths)
                    failed = [k for k, ok in enumerate(np.asarray(result.ok)) if not ok]
                    if failed:
                        kinds = ", ".join(sorted(set(result.kinds[failed[0]]) - {"no_image"})) or "unknown problem"
                        raise ValueError(f"{names[start + failed[0]]}: could not be encoded ({kinds})")
                    out.append(np.asarray(result.embeddings, dtype=np.float32))
                    for path in paths:
                        path.unlink()
        return np.concatenate(out)

    def _content_hits(self, name: str, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._need(name)
        if q.shape[1] != index.dim_:
            raise NotAvailableError(f"{name}: the query encoder gives {q.shape[1]}-d vectors, the index holds "
                                    f"{index.dim_}-d ones (a different encoder built this run)")
        ids, scores = self._filtered(name, q, fetch, [np.zeros(0, np.int64)], None)[0]
        return ids, scores

    def search(self, text: str | None = None, image: Any = None, k: int = 10) -> Recommendation:
        """Items matching a text query, an image (``PIL.Image``, bytes or a path), or both.

        Text goes through the text encoder to ``text_items``, the image through the image encoder to
        ``image_items`` (cosine). With both, each candidate from either list is scored
        ``0.5 * text_cosine + 0.5 * image_cosine`` (a missing modality of an item counts 0).
        """
        self._maybe_sync()
        k = check_k(k)
        if text is None and image is None:
            raise ValueError("text, image: expected a text query, an image or both (got neither)")
        q_text = self._encode_texts([check_text(text)], ["text"]) if text is not None else None
        q_img = self._encode_image(image) if image is not None else None
        with self._lock.read():
            if q_img is None and q_text is not None:
                ids, sc = self._content_hits("text_items", q_text, k)
                return self._pack(ids, sc, [f"text match {s:.2f}" for s in sc])
            if q_text is None and q_img is not None:
                ids, sc = self._content_hits("image_items", q_img, k)
                return self._pack(ids, sc, [f"image match {s:.2f}" for s in sc])
            if q_text is None or q_img is None:  # unreachable: checked above
                raise ValueError("text, image: expected a text query, an image or both (got neither)")
            fetch = min(K_MAX * 3, 3 * k)
            t_ids, _ = self._content_hits("text_items", q_text, fetch)
            i_ids, _ = self._content_hits("image_items", q_img, fetch)
            cand = np.union1d(t_ids, i_ids)
            st = self._content["text_items"].view[cand] @ q_text[0]
            si = self._content["image_items"].view[cand] @ q_img[0]
            score = 0.5 * st + 0.5 * si
            order = np.argsort(-score, kind="stable")[:k]
            return self._pack(cand[order], score[order],
                              [f"text {st[o]:.2f} + image {si[o]:.2f}" for o in order])

    def search_batch(self, texts: Sequence[str], k: int = 10) -> list[Recommendation]:
        """Text search for many queries, each answered exactly as :meth:`search` answers it.

        Each query is encoded alone and searched alone: the encoder pads a batch to its longest
        text and FAISS scores 20 queries or more with BLAS, both of which change a score in the
        last bits (and can swap near-ties), so one encoder pass for the batch was not the answer
        a query gets by itself. The texts are all checked first (every problem named at once)."""
        self._maybe_sync()
        k = check_k(k)
        _refuse_not_a_list(texts, "texts", "strings")
        texts = list(texts)
        if not texts or len(texts) > MAX_BATCH:
            raise ValueError(f"texts: expected 1 to {MAX_BATCH:,} queries (got {len(texts):,})")
        clean = [check_text(t, f"texts[{n}]") for n, t in enumerate(texts)]
        self._need("text_items")
        out = []
        for n, text in enumerate(clean):
            q = self._encode_texts([text], [f"texts[{n}]"])
            with self._lock.read():
                ids, sc = self._content_hits("text_items", q, k)
                out.append(self._pack(ids, sc, [f"text match {s:.2f}" for s in sc]))
        return out

    # -- fraud ----------------------------------------------------------------------------------
    def _fraud_reasons(self, u: int, top: int = 3, *, raised: bool = True) -> list[str]:
        """The reasons for the account's verdict: the ``top`` facts about it that raised its fraud
        score most (``raised``: a flagged account), or that lowered it most (an account below the
        threshold), each with its raw value and its signed contribution to the scorer's log-odds."""
        if self._fraud_attribution is None:
            return [f"no per-feature attribution is available for this run's fraud scorer "
                    f"({self.fraud.get('kind', 'none')}); /fraud/explain may have one"]
        attribution = self._fraud_attribution(u)
        if attribution is None:
            return [f"no per-feature attribution is available for this account: the run's model does not "
                    f"reproduce its stored score ({self.fraud.get('kind', 'none')}); /fraud/explain may have one"]
        return self._facts(u, attribution, top, raised)

    def _held_out_reasons(self, u: int, held: float, top: int = 3) -> list[str]:
        """The reasons for the held-out verdict of a trained-on account (``held``: its held-out score)."""
        if self._held_out_attribution is None:
            return [HELD_OUT_UNATTRIBUTED[0]]
        got = self._held_out_attribution(u)
        if got is None:
            return [HELD_OUT_UNATTRIBUTED[1]]
        return self._facts(u, got[0], top, held >= self.fraud_threshold)

    def held_out_explanation(self, user_id: str, top_k: int = 5) -> Any:
        """Why a trained-on account's held-out score (its prediction with its own label held out) is
        what it is: a :class:`shopgraph.graph.explain.Explanation` of the trees of its fold
        (:func:`shopgraph.graph.explain.held_out_explanation`), or ``None`` for an account without a
        held-out score or one that cannot be attributed."""
        from shopgraph.graph.explain import held_out_explanation

        u = self._user(user_id)
        held = float(self.fraud_prob_held_out[u]) if u < len(self.fraud_prob_held_out) else float("nan")
        if not math.isfinite(held) or self._held_out_attribution is None:
            return None
        got = self._held_out_attribution(u)
        if got is None:
            return None
        return held_out_explanation(self.user_ids[u], held, got[0], got[1], top_k)

    def _facts(self, u: int, attribution: Sequence[tuple[str, float, float]], top: int, raised: bool) -> list[str]:
        """The ``top`` facts of ``attribution`` that raised (``raised``) or lowered the score most, in words."""
        sign = 1.0 if raised else -1.0
        facts = []
        for name, value, contribution in attribution:
            if sign * contribution >= 0.005:  # shown to two decimals: no "+0.00"
                fact = self._facts_of.fact(name, value, u)
                if fact is not None and name.startswith(QUICK_ITEM_REASON):
                    fact = self._naming_quick_items(fact, u)
                if fact is not None:
                    facts.append((contribution, fact))
        facts.sort(key=lambda f: -sign * f[0])
        reasons = [f"{fact} ({c:+.2f} log-odds)" for c, fact in facts[:top]]
        return reasons or [f"nothing in the account's own behaviour or shared identifiers "
                           f"{'raised' if raised else 'lowered'} its score"]

    def _naming_quick_items(self, fact: str, u: int) -> str:
        """A "quick purchases: mean item …" reason with the items it averages named
        (:meth:`quick_items_named`), so that an investigator can look at what was bought: ``items
        bought right after viewing or carting them (i000123 'gift card', …): what they are,
        judged from their pictures``."""
        named = self._quick_named(u)
        if not named:
            return fact
        head, sep, tail = fact.partition(":")
        return f"{head} ({named}){sep}{tail}"

    def quick_items_named(self, user_id: str) -> str:
        """The items the account bought right after viewing or carting them, as a "quick purchases"
        reason names them: the latest first, three of them (``graph.fraud_scorer.QUICK_FIRST``) with
        their titles and how many more (``i000123 'gift card', i000045 'drone' and 2 more``); ``"none"``
        when it bought none so; ``""`` when the service was loaded without fraud reasons."""
        u = self._user(user_id)
        return "" if self._quick_items is None else (self._quick_named(u) or "none")

    def feature_value_words(self, user_id: str) -> Callable[[str, float], str | None]:
        """How a table of the account's reasons writes a feature's value, from its name and the value
        the scorer read: its own features as the reasons write them ("14 days", "DE"), not the
        standardised values the scorer reads ("1.8 SD below average"), the means over the accounts
        on its devices in the same units ("12 days"), and for a "quick purchases" reason the items
        behind it (:meth:`quick_items_named`); ``None`` where the service has no raw
        value for it (the caller words the value the scorer read: a count, a share, yes or no).
        ``KeyError`` for an unknown account."""
        u = self._user(user_id)

        def words(name: str, value: float) -> str | None:
            if names_quick_items(name):  # what was bought, not a norm of encoder columns
                return self._quick_named(u) or None
            return self._facts_of.value(name, value, u)

        return words

    def _quick_named(self, u: int) -> str:
        quick = self._quick_items
        return "" if quick is None else quick.named(u, self.item_ids, self.titles, self.categories)

    def warm_up(self) -> float:
        """Answer each kind of query once, answers thrown away: a text and an image search, a
        recommendation and a fraud score with its reasons (a trained-on account's held-out ones
        too), so that the first callers after a start do not wait for the encoders and the fraud
        explainers to load (about 3 s on the demo run). What the run cannot do is skipped.
        ``shopgraph serve`` calls it before it answers anything, ``/healthz`` included.

        Returns:
            The seconds it took.
        """
        from PIL import Image

        t0 = time.perf_counter()
        jobs: list[Callable[[], Any]] = [lambda: self.search(text="warm up", k=1),
                                         lambda: self.search(image=Image.new("RGB", (32, 32), (128, 128, 128)), k=1)]
        if self.user_ids:
            held = np.flatnonzero(np.isfinite(np.asarray(self.fraud_prob_held_out, dtype=np.float64)))
            account = self.user_ids[int(held[0])] if held.size else self.user_ids[0]
            jobs += [lambda: self.recommend(self.user_ids[0], k=1), lambda: self.score_user(account)]
        for job in jobs:
            try:
                job()
            except (NotAvailableError, ValueError) as exc:  # a run without text or images, say
                logger.debug("warm-up: skipped (%s)", exc)
        return time.perf_counter() - t0

    def score_user(self, user_id: str) -> FraudScore:
        """Fraud probability of a user, the decision, and the behaviour features behind it."""
        return self._score([self._user(user_id)])[0]

    def score_users(self, user_ids: Sequence[str], *, reasons: bool = True) -> list[FraudScore]:
        """:meth:`score_user` for many users. ``reasons=False`` leaves the reasons out (empty lists):
        a run whose GNN fraud head serves computes them per account (integrated gradients, tens to
        hundreds of milliseconds each; BENCHMARKS.md), the served trees in about a millisecond."""
        reasons = check_bool(reasons, "reasons")
        return self._score(self._many(user_ids, "user_ids", self._user_pos, "user"), reasons=reasons)

    @property
    def reasons_per_account_model(self) -> bool:
        """Whether fraud reasons are worked out by the model for each account (integrated
        gradients of a GNN fraud head: 75-700 ms an account on the 5,000-user shop) rather than
        read from the served trees (about 1 ms; BENCHMARKS.md, "Retrieval", the GNN head's reasons)."""
        from shopgraph.graph.train import TREE_KINDS

        return self._fraud_attribution is not None and self.fraud.get("kind") not in TREE_KINDS

    def _score(self, users: list[int], *, reasons: bool = True) -> list[FraudScore]:
        out = []
        for u in users:
            p, held = float(self.fraud_prob[u]), float(self.fraud_prob_held_out[u])
            label = int(self.fraud_labels[u])
            flagged = bool(p == p and p >= self.fraud_threshold)
            out.append(FraudScore(self.user_ids[u], p, self.fraud_threshold, flagged,
                                  self._fraud_reasons(u, raised=flagged) if reasons else [], None if label < 0 else bool(label),
                                  bool(self.label_in_training[u]), held if held == held else None,
                                  self._held_out_reasons(u, held) if reasons and held == held else []))
        return out

    # -- cold start -----------------------------------------------------------------------------
    def recommend_for_items(self, item_ids: Sequence[str], k: int = 10, *, leave_out_removed: bool = False,
                            skip_unknown: bool = False, category: str | None = None,
                            exclude: Sequence[str] = ()) -> Recommendation:
        """For an unknown user who picked a few items: the mean of their (L2-normalised) GNN
        embeddings, searched by cosine (``gnn_items_cosine``). The given items are excluded.

        ``leave_out_removed``: items removed from the catalogue since (a visitor's recently viewed
        list holds them, as a cart can) are left out of the query and named in the answer's
        ``left_out`` (as ``POST /recommend/cold`` does), in the same step as the query, so an item
        removed meanwhile is one of them too; without it they are unknown ids (``UnknownIdError``
        saying they were removed). Ids that never were items are unknown either way, and so is a
        list of removed items only (nothing to recommend from). ``skip_unknown``: the other ids
        that name no served item (a storefront's item not sent to :meth:`add_item` yet) are left
        out too and named in the answer's ``unknown`` (each once, as given), as the batch routes'
        ``skip_unknown`` does; when no id is left, all of them are unknown ids all the same.
        ``category`` and ``exclude`` (the visitor's cart) as :meth:`recommend` takes them."""
        self._maybe_sync()
        k = check_k(k)
        skip_unknown = check_bool(skip_unknown, "skip_unknown")
        with self._lock.read():
            left_out: list[str] = []
            unknown: list[str] = []
            if leave_out_removed or skip_unknown:  # the list checked as given (types, size), then ids taken out
                given, keys = self._id_list(item_ids, "item_ids")
                out = [leave_out_removed and self._was_removed(key) for key in keys]
                never = [skip_unknown and not removed and key not in self._item_pos for key, removed in zip(keys, out)]
                left_out = once_each(i for i, removed in zip(given, out) if removed)
                unknown = once_each(i for i, no in zip(given, never) if no)
                item_ids = [i for i, removed, no in zip(given, out, never) if not (removed or no)] or given
                if item_ids is given:  # nothing left: the error below names them all
                    left_out, unknown = [], []
            taken = leave_out_removed and len(item_ids) < len(given)  # some removed ones taken out
            seeds = np.array(self._many(item_ids, "item_ids", self._item_pos, "item", left_out=left_out if taken else (),
                                        given=len(given) if taken else None), dtype=np.int64)
            q = _normalised(self._item_emb_n[seeds]).mean(axis=0, keepdims=True)  # added items: unit length too
            drop = np.union1d(seeds, self._exclusions(exclude, "exclude"))
            ids, sc = self._filtered("gnn_items_cosine", q, k, [drop], self._category(category))[0]
            return self._pack(ids, sc, self._seed_reasons(np.unique(seeds), ids))._replace(left_out=left_out,
                                                                                            unknown=unknown)

    def recommend_for_text(self, text: str, k: int = 10, n_seeds: int = 10, *, category: str | None = None,
                           exclude: Sequence[str] = ()) -> Recommendation:
        """For an unknown user described by text: the ``n_seeds`` best text matches become seed items,
        and the mean of their normalised GNN embeddings is the query against ``gnn_items_cosine``
        (so results follow shopping behaviour, not only wording). ``category`` and ``exclude`` as
        :meth:`recommend` takes them (the seeds are all the catalogue's text matches)."""
        self._maybe_sync()
        k = check_k(k)
        n_seeds = check_k(n_seeds, "n_seeds")
        q = self._encode_texts([check_text(text)], ["text"])
        with self._lock.read():
            seeds, _ = self._content_hits("text_items", q, n_seeds)
            if seeds.size == 0:
                return Recommendation([], [], [], [])
            query = _normalised(self._item_emb_n[seeds]).mean(axis=0, keepdims=True)
            ids, sc = self._filtered("gnn_items_cosine", query, k, [self._exclusions(exclude, "exclude")],
                                     self._category(category))[0]
            # a text match among the results is there for the text itself, not "similar to" itself
            own = set(seeds.tolist())
            reasons = ["matches your text" if int(i) in own else why
                       for i, why in zip(ids, self._seed_reasons(seeds, ids, " (matches your text)"))]
            return self._pack(ids, sc, reasons)

    # -- catalogue changes ----------------------------------------------------------------------
    def _feature_row(self, text_vec: np.ndarray | None, image_vec: np.ndarray | None,
                     price: float | None = None, category: str = "") -> np.ndarray:
        """A new item's feature row in the layout of ``data["item"].feature_names``.

        ``text_*`` / ``image_*`` come from the encoders (0 when the item has none), ``has_text`` /
        ``has_image`` / ``has_price`` are the flags, the category one-hot flags
        (``item_category=<value>``) say the item's ``category`` (all 0 for one the shop had not
        seen); the statistics whose standardisation could be recovered (:func:`_statistic_maps`)
        are computed: zero training events and users, and ``log_price``; any other column is the
        training mean of that column.
        """
        layout = self._row_layout()
        row = layout.base.copy()
        for cols, vec, what in ((layout.text, text_vec, "text"), (layout.image, image_vec, "image")):
            if not len(cols) or vec is None:
                continue  # no such columns, or 0 in them (the base row)
            if vec.size != len(cols):
                raise NotAvailableError(f"add_item: the {what} encoder gives {vec.size} values, the item features "
                                        f"hold {len(cols)} {what}_* columns")
            row[cols] = vec.reshape(-1)
        for name, value in (("has_text", text_vec is not None), ("has_image", image_vec is not None),
                            ("has_price", price is not None)):
            if name in layout.flags:
                row[layout.flags[name]] = float(value)
        if category.strip() in layout.categories:
            row[layout.categories[category.strip()]] = 1.0
        j = layout.flags.get("log_price")
        if j is not None:
            fit = self._stat_maps.get("log_price")
            if price is None:
                row[j] = 0.0  # unknown price: the mean, as in training
            elif fit is not None:
                row[j] = self._clip(j, fit[0] * math.log1p(max(price, 0.0)) + fit[1])
        return row

    def _row_layout(self) -> _RowLayout:
        """Where :meth:`_feature_row` writes what, and the row it starts from (made once)."""
        if self._layout is not None:
            return self._layout
        names = self._item_feature_names
        if self._item_x_mean is None or not names:
            raise NotAvailableError("add_item: the graph's items have no .x / feature_names (run `shopgraph build`)")
        base = self._item_x_mean.astype(np.float32).copy()
        text = np.array([j for j, n in enumerate(names) if n.startswith("text_")], dtype=np.int64)
        image = np.array([j for j, n in enumerate(names) if n.startswith("image_")], dtype=np.int64)
        base[text] = 0.0
        base[image] = 0.0
        flags = {n: j for j, n in enumerate(names) if n in ("has_text", "has_image", "has_price", "log_price")}
        categories = {n[len(CATEGORY_FLAG):]: j for j, n in enumerate(names) if n.startswith(CATEGORY_FLAG)}
        base[list(categories.values())] = 0.0  # set to 1 for the item's own category, if the shop had it
        for j, n in enumerate(names):
            if n not in flags and not n.startswith(CATEGORY_FLAG) and n in self._stat_maps:
                base[j] = self._clip(j, self._stat_maps[n][1])  # a count: a new item has none (log1p(0) = 0)
        self._layout = _RowLayout(base, text, image, flags, categories)
        return self._layout

    def _clip(self, j: int, value: float) -> float:
        # Keep computed statistics inside the range the model was trained on: when every trained
        # item had events, "no events" would otherwise sit many SDs outside anything it has seen.
        lo, hi = self._item_x_range
        return float(min(max(value, float(lo[j])), float(hi[j])))

    def _inductive_embedding(self, row: np.ndarray) -> np.ndarray:
        """``[1, D]``: the embedding of one new item (:meth:`_inductive_embeddings`)."""
        return self._inductive_embeddings(row[None, :])

    def _inductive_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """``ShopGNN.embed`` of new items ``rows`` (``[B, F]`` feature rows) on a graph holding only
        them, no edges, no id embedding: ``[B, D]``. One pass for all (replaying the journal
        embeds its adds this way: ~0.03 ms an item against ~3 ms one at a time; the values agree
        to float32 rounding, not bit for bit)."""
        if self.model is None:
            why = (self._model_problem if self._model_problem
                   else "RUN/model/ is missing; run `shopgraph train`")
            raise NotAvailableError(f"add_item: this service has no model: {why}")
        import torch
        from torch_geometric.data import HeteroData

        config = self.model.config
        g = HeteroData()
        for nt in config.node_types:
            n = len(rows) if nt == "item" else 0
            g[nt].num_nodes = n
            if config.in_dims[nt] > 0:
                g[nt].x = torch.zeros(n, config.in_dims[nt])
        g["item"].x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        # past the id table: a new item has no learned id embedding, only its features
        g["item"].n_id = torch.full((len(rows),), config.num_nodes["item"], dtype=torch.long)
        for et in config.edge_types:
            g[et].edge_index = torch.zeros(2, 0, dtype=torch.long)
        with torch.no_grad():
            emb = self.model.embed(g)["item"]
        return np.asarray(emb.float().cpu().numpy(), dtype=np.float32)

    def _new_item_embeddings(self, rows: np.ndarray, contents: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
                             restores: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """New items' GNN vectors ``[B, D]`` and their rows for cosine similarity ``[B, D]``: for an
        item with a text or image vector (on a run that has them), the mean of the trained items'
        vectors of its :data:`CONTENT_NEIGHBOURS` nearest trained items in content (the sum of its
        text and image cosines), and the mean of their unit vectors; for any other, the model's
        inductive pass over its feature row (:meth:`_inductive_embeddings`) and its unit vector.
        Rows of ``restores`` (ids of removed trained items: :meth:`_restore` serves their trained
        vectors) get zeros, and need no model.

        The model's own pass puts every new item in one corner of the space, whatever it is (a
        sneaker's 10 most similar items were 9.9 other new items on average, of any category;
        BENCHMARKS.md, "Items added at run time"): its trained items lean on their id embeddings,
        which a new item lacks. The neighbours' mean sits among items like it, and ranks its
        buyers better. Only trained items are neighbours, removed ones too, by their trained
        content (a restore's new text does not count): an item's vector does not depend on what
        else was added, removed or restored, so every replay of the journal gives the same.

        The cosine row is the neighbours' mean unit vector as it is, not scaled back to length 1
        (0.68-0.75 long on the demo shop): its cosine with an item is the mean of the neighbours'
        cosines with it, and with another new item the mean over both neighbour lists' pairs. A
        mean of 20 vectors scaled to length 1 is closer to every item of its kind than they are to
        one another: when 200 items were added, 91% of a trained item's 10 most similar items
        were new ones, against 10% for a model trained on them all (BENCHMARKS.md, "Items added
        at run time")."""
        embs = np.zeros((len(rows), self.item_emb.shape[1]), dtype=np.float32)
        todo = [b for b in range(len(rows)) if not restores[b]]
        if todo:  # the model embeds new items (no model: NotAvailableError, as before any change)
            embs[todo] = self._inductive_embeddings(rows[todo])
        units = _normalised(embs)
        n = self._n_trained
        kinds = [(j, self._content[name].view[:n], list(self._trained_content.get(name, {}).items()))
                 for j, name in enumerate(("text_items", "image_items")) if name in self._content]
        have = [b for b in todo if any(contents[b][j] is not None for j, _, _ in kinds)]
        k = min(CONTENT_NEIGHBOURS, n)
        for start in range(0, len(have) if k else 0, 64):  # [64, trained items] similarities at a time
            chunk = have[start:start + 64]
            sims = np.zeros((len(chunk), n), dtype=np.float32)
            for j, trained, replaced in kinds:
                given = [(row, vec) for row, b in enumerate(chunk) if (vec := contents[b][j]) is not None]
                if given:
                    query = _normalised(np.stack([vec for _, vec in given]).astype(np.float32))
                    part = query @ trained.T
                    for pos, row in replaced:  # restored items: their trained content
                        part[:, pos] = query @ row
                    sims[[row for row, _ in given]] += part
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            embs[chunk] = self.item_emb[top].mean(axis=1)
            units[chunk] = self._item_emb_n[top].mean(axis=1)
        return embs, units

    def add_item(self, item_id: str, title: str, category: Any = KEEP, description: Any = KEEP,
                 price: Any = KEEP, image: Any = KEEP) -> int:
        """Add an item without retraining: encode its text and image, give it a GNN vector (the mean
        of the trained items' nearest in content, or the model's inductive pass for an item without
        text or image: :meth:`_new_item_embeddings`), and insert it into every index.

        On a service loaded from a run folder the item is first written to the run's catalogue
        journal (``RUN/catalogue.jsonl``, its image to ``RUN/added_images/``), so it is served
        again after a restart and by every other process serving the run; nothing is applied when
        that write fails.

        Args:
            item_id: a new external id (leading and trailing spaces are stripped, with a warning, as
                loading the shop strips them), or that of a trained item removed since: that item
                is restored, its trained vector with what is sent (:meth:`_restore`). An id
                served already is a :class:`DuplicateIdError` (nothing changed), unless every
                field sent is what that item has (a retried write that went through): then
                nothing is written and its index is returned.
            title, category, description: item text, each at most ``MAX_TEXT_CHARS`` (2,000)
                characters (the title must have some: one of only spaces is refused; a
                ``None`` category or description is one left out, as a JSON ``null`` over HTTP).
            price: item price (kept for display); ``None``: unknown.
            image: ``PIL.Image``, bytes or a path; ``None``: no image.

        ``category``, ``description``, ``price`` and ``image`` left out (:data:`KEEP`) are, for a
        new item, none (no category, no description, an unknown price, no image); for a removed
        item that is restored, what it had when it was removed (an item back in stock sent with
        its id and title only keeps its category, description, price and picture).

        Returns:
            The item's node index.
        """
        new = self._new_item("", item_id, title, category, description, price, image)
        return self._add([new], batch=False).positions[0]

    def add_item_outcome(self, item_id: str, title: str, category: Any = KEEP, description: Any = KEEP,
                         price: Any = KEEP, image: Any = KEEP) -> Added:
        """:meth:`add_item`, telling also whether this call added the item or found it served as
        sent (a retry: nothing written), as decided under the journal's lock, so that a retry
        through another worker, or two identical adds at once, are told apart from the add that
        wrote it (``POST /items``: 201 or 200)."""
        new = self._new_item("", item_id, title, category, description, price, image)
        return self._add([new], batch=False)

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add up to :data:`MAX_BATCH` items at once, as :meth:`add_item` adds one, all or none.

        The texts and the images are encoded in one call each and the items embedded in one
        model pass, and the batch is one line of the run's journal (written whole or not at all),
        so a service syncing many items pays the encoders' fixed costs once.

        Args:
            items: each a mapping with :meth:`add_item`'s arguments: ``item_id`` and ``title``
                required; ``category``, ``description``, ``price`` and ``image`` optional.

        Returns:
            The items' node indices, in the order given (an item served already as it is sent,
            a retry, is not added again: its index).

        Raises:
            ValueError: items that are not valid, each named (``items[3]: price: ...``), or ids
                given twice; nothing is added.
            DuplicateIdError: ids that exist already with other fields than those sent (all of
                them named); nothing is added.
        """
        return self._add(self._batch(items), batch=True).positions

    def add_items_outcome(self, items: Sequence[Mapping[str, Any]]) -> Added:
        """:meth:`add_items`, telling also which items this call added and which it found served as
        sent (retries: nothing written), as :meth:`add_item_outcome` does (``POST /items/batch``:
        its ``added`` count)."""
        return self._add(self._batch(items), batch=True)

    def _batch(self, items: Sequence[Mapping[str, Any]]) -> list[_NewItem]:
        """The items of :meth:`add_items`, checked: ``ValueError`` naming every invalid one."""
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
            raise ValueError(f"items: expected a list of items, each a mapping of add_item's arguments "
                             f"(got {type(items).__name__})")
        if not 1 <= len(items) <= MAX_BATCH:
            raise ValueError(f"items: expected 1 to {MAX_BATCH:,} items (got {len(items):,})")
        new, problems = self._check_items(dict(enumerate(items)))
        if problems:
            problems = self._with_known_ids(list(range(len(items))), new, problems)
            raise ValueError(batch_problems([problems[k] for k in sorted(problems)], len(items)))
        return new

    def _with_known_ids(self, keys: list[int], new: list[_NewItem], problems: dict[int, str], *,
                        always: bool = False) -> dict[int, str]:
        """``problems`` of a batch that has invalid items (``always``: the caller found some), and
        the valid items whose ids exist already with other fields (``new``, in the order of the
        batch positions ``keys`` that have no problem), so that one answer names everything to mend
        (alone, ids that exist are a :class:`DuplicateIdError`: HTTP 409; an item served as it is
        sent is a retry, no problem)."""
        if not problems and not always:
            return problems
        valid = [k for k in keys if k not in problems]
        with self._lock.read():
            known = {k: f"items[{k}]: item_id {shown(n.item_id)} already exists, with another {' and '.join(differ)}"
                     for k, n in zip(valid, new) if n.item_id in self._item_pos and (differ := self._differs(n))}
        return {**problems, **known}

    def item_problems(self, items: Mapping[int, Any]) -> dict[int, str]:
        """What :meth:`add_items` would refuse among ``items`` (by their positions in the batch),
        each message naming its item (``items[3]: price: ...``); nothing is added. The HTTP API
        uses it to name every invalid item of a body with some items it refused itself."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stripped ids: said when the items are added
            return self._with_known_ids(list(items), *self._check_items(items), always=True)

    def _check_items(self, items: Mapping[int, Any]) -> tuple[list[_NewItem], dict[int, str]]:
        """The valid items of a batch, checked, and the problem of each invalid one (by position)."""
        new: list[_NewItem] = []
        problems: dict[int, str] = {}
        first: dict[str, int] = {}
        new_categories: dict[str, tuple[str, int]] = {}  # casefolded -> (a category new in this batch, its item)
        for k, item in items.items():
            where = f"items[{k}]"
            try:
                if not isinstance(item, Mapping):
                    raise ValueError(f"{where}: expected a mapping of add_item's arguments (got {type(item).__name__})")
                unknown = sorted(str(key) for key in item if key not in _NEW_ITEM_FIELDS)
                if unknown:
                    raise ValueError(f"{where}: unknown field {shown(unknown[0])} (expected some of "
                                     f"{', '.join(_NEW_ITEM_FIELDS)})")
                missing = [name for name in ("item_id", "title") if name not in item]
                if missing:
                    raise ValueError(f"{where}: {' and '.join(missing)} required")
                one = self._new_item(f"{where}: ", **item)
                if one.item_id in first:
                    raise ValueError(f"{where}: item_id {shown(one.item_id)} is also items[{first[one.item_id]}]")
                if one.category and one.category not in self._cat_code:  # new: as the check of known ones
                    name, at = new_categories.setdefault(_loose(one.category), (one.category, k))
                    if name != one.category:
                        raise ValueError(f"{where}: category: {shown(one.category)} differs from items[{at}]'s new "
                                         f"category {shown(name)} only in case, spacing, accents written apart or "
                                         "invisible characters; send one spelling for both")
                first[one.item_id] = k
                new.append(one)
            except ValueError as exc:
                problems[k] = str(exc)
        return new, problems

    def _new_item(self, where: str, item_id: Any, title: Any, category: Any = KEEP, description: Any = KEEP,
                  price: Any = KEEP, image: Any = KEEP) -> _NewItem:
        """One item to add, checked (errors prefixed with ``where``), its id stripped, its image
        read once to check it (and again when it is encoded); fields left out (:data:`KEEP`) filled
        in (:meth:`add_item`)."""
        if not isinstance(item_id, str) or not item_id.strip():
            raise ValueError(f"{where}item_id: expected a non-empty string (got {shown(item_id)})")
        # None for a text field is the field left out, as over HTTP (a null there: what it had, or none)
        category, description = (KEEP if v is None else v for v in (category, description))
        for name, value in (("item_id", item_id), ("title", title), ("category", category), ("description", description)):
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:  # as over HTTP, and as queries are
                raise ValueError(f"{where}{name}: {len(value):,} characters, over the {MAX_TEXT_CHARS:,}-character "
                                 "limit")
        check_unicode(item_id, f"{where}item_id")
        check_single_line(item_id, f"{where}item_id")  # before the strip below: a trailing newline is refused too
        if item_id != item_id.strip():  # as loading the shop does (graph/load.py): ids are stored stripped
            warnings.warn(f"{where}item_id: stripped leading/trailing spaces ({shown(item_id)} -> "
                          f"{shown(item_id.strip())})", stacklevel=5 if where else 3)
            item_id = item_id.strip()
        if item_id not in self._trained_pos and item_id not in self._item_pos:
            check_plain_id(item_id, f"{where}item_id")
            alike = unicodedata.normalize("NFKC", item_id)
            if alike != item_id and (alike in self._item_pos or alike in self._trained_pos):
                raise ValueError(f"{where}item_id: {shown(item_id)} looks like the item {shown(alike)} (full-width or "
                                 f"other compatibility characters); send {shown(alike)} to change that item, or "
                                 "choose another id")
            if any(part in (".", "..") for part in item_id.split("/")):  # clients rewrite /items/.. before sending
                raise ValueError(f"{where}item_id: {shown(item_id)} cannot be named in a URL path (browsers and HTTP "
                                 "clients turn '.' and '..' segments into other paths); choose another id")
        left_out = frozenset(name for name, value in zip(_KEPT_FIELDS, (category, description, price, image))
                             if value is KEEP)
        category, description, price, image = self._kept(item_id, category, description, price, image)
        for name, value in (("title", title), ("category", category), ("description", description)):
            if not isinstance(value, str):
                raise ValueError(f"{where}{name}: expected a string (got {type(value).__name__})")
            check_unicode(value, f"{where}{name}")
            if name != "category":  # a category is one line: checked as such below
                check_no_control(value, f"{where}{name}")
        if shows_nothing(title):  # no text one can see (spaces, zero-width ones): nothing to search it by or show
            raise ValueError(f"{where}title: expected some text (got {shown(title)})")
        category = self._new_category(where, category)
        if price is not None and not _is_price(price):
            raise ValueError(f"{where}price: expected a finite number >= 0 (got {type(price).__name__} {shown(price)})")
        if image is not None:
            read_image(image, f"{where}image")  # checked now; decoded again when encoded (memory: see _encode_images)
        # abs: a price of -0.0 (>= 0, so taken) is kept as 0.0, not shown as a negative zero
        return _NewItem(item_id, title, category, description, None if price is None else abs(float(price)), image,
                        left_out)

    def _refilled(self, new: list[_NewItem]) -> list[_NewItem] | None:
        """``new`` with the fields each item left out filled in again from what is served now (the
        caller holds the catalogue's locks, after a sync), or ``None`` when that changes nothing.
        They were filled in when the item was checked, before the locks: an item another process
        removed meanwhile (a worker that has not read its removal yet) would otherwise be restored
        with the fields of a new item, none, and its category, description, price and picture lost."""
        again = []
        for n in new:
            if n.left_out:
                given = [KEEP if name in n.left_out else getattr(n, name) for name in _KEPT_FIELDS]
                category, description, price, image = self._kept(n.item_id, *given)
                n = n._replace(category=category, description=description,
                               price=None if price is None else float(price), image=image)
            again.append(n)
        return None if again == new else again

    def _kept(self, item_id: str, category: Any, description: Any, price: Any, image: Any) -> tuple[Any, ...]:
        """``(category, description, price, image)`` with each field left out (:data:`KEEP`) filled
        in: for a removed item that will be restored, what it had when it was removed (its picture
        only while that file is still there), a trained item or one added at run time alike;
        otherwise none."""
        pos = self._trained_pos.get(item_id, self._added_pos.get(item_id))
        restored = pos is not None and item_id not in self._item_pos
        if restored and pos is not None:
            had = self._image_path(pos)
            kept_price = float(self.prices[pos])
            before: tuple[Any, ...] = (self.categories[pos], self.descriptions[pos],
                                       None if math.isnan(kept_price) else kept_price,
                                       had if had and Path(had).is_file() else None)
            if image is KEEP and had and before[3] is None:
                logger.warning("restoring %r: its picture %s is no longer there; restored without one", item_id, had)
        else:
            before = ("", "", None, None)
        return tuple(b if v is KEEP else v for v, b in zip((category, description, price, image), before))

    def _new_category(self, where: str, category: str) -> str:
        """The category of an item to add: stripped (with a warning, as ids), one line, and not a
        known category spelt in another case (``Toys`` beside ``toys`` would be a second filter
        value that the model never saw; a new category is allowed)."""
        name = check_single_line(category, f"{where}category").strip()  # checked before the strip, as ids
        if name and name not in self._cat_code:
            key = _loose(name)
            same = sorted(c for c in list(self._cat_code) if _loose(c) == key)  # (another thread may add one)
            if same:
                raise ValueError(f"{where}category: {shown(name)} differs from the known category {shown(same[0])} "
                                 f"only in case, spacing, accents written apart or invisible characters; send "
                                 f"{shown(same[0])} to file it there")
            check_plain_id(name, f"{where}category", "a category name")  # a new one: as a new id
        if name != category:
            warnings.warn(f"{where}category: stripped leading/trailing spaces ({shown(category)} -> {shown(name)})",
                          stacklevel=6 if where else 4)
        return name

    def _add(self, new: list[_NewItem], *, batch: bool) -> Added:
        """Encode, embed and insert checked new items (one journal line: an ``add``, or with
        ``batch`` an ``add_batch``)."""
        self._maybe_sync()
        asked = [n.item_id for n in new]
        if any(n.item_id in self._item_pos for n in new):
            # another process may have removed it since this one last looked (within the last
            # second): an item removed by one worker and added again through another is restored,
            # not refused by a copy that is behind (the check under the journal's lock is the one
            # that decides; this one only saves encoding a batch that will be refused)
            self.sync_catalogue()
        checked = new  # every item of the call: which of them to add is decided again under the locks
        with self._lock.read():
            new = self._fresh(checked)
        text_vecs, image_vecs, embs, units = self._embedded(new, batch) if new else ({}, {}, None, None)

        def insert(images: list[str]) -> Added:
            assert embs is not None and units is not None
            for k, (n, image) in enumerate(zip(new, images)):
                self._insert(n.item_id, n.title, n.category, n.description, n.price, image,
                             text_vecs.get(k), image_vecs.get(k), embs[k:k + 1], units[k:k + 1])
            written = {n.item_id for n in new}
            return Added([self._item_pos[item_id] for item_id in asked],  # the repeats too, in the order given
                         [item_id in written for item_id in asked])

        def fresh() -> bool:
            """Under the locks: the items still to add (of all the call's: another process may have
            added one meanwhile, a retry then, or removed one found served before, to add after
            all), their fields left out filled in from what is served now, embedded again when
            that changed anything (rare); ``False``: none is left to add."""
            nonlocal new, text_vecs, image_vecs, embs, units
            left = self._fresh(checked)
            again = self._refilled(left)
            now = left if again is None else again
            if now != new:
                new = now
                if new:
                    text_vecs, image_vecs, embs, units = self._embedded(new, batch)
            return bool(new)

        if self._journal is None:
            with self._sync_lock:  # the id check and the insert as one step: two adds of an id, one refused
                if not fresh():  # a retry of what is served: nothing to do
                    return Added([self._item_pos[item_id] for item_id in asked], [False] * len(asked))
                return insert([str(n.image) if isinstance(n.image, str | Path) else "" for n in new])
        with self._sync_lock, self._journal.locked():
            self._sync(verify=True)  # what other processes changed (the id check below is theirs too); every byte checked
            if not fresh():  # a retry of what is served: nothing to write
                return Added([self._item_pos[item_id] for item_id in asked], [False] * len(asked))
            # one image file in memory at a time
            rels = [self._journal.save_image(*_image_file(n.image)) if n.image is not None else "" for n in new]
            adds = [{"item_id": n.item_id, "title": n.title, "category": n.category, "description": n.description,
                     "price": n.price, "image": rel, "text_model": self._encoder_name("text"),
                     "image_model": self._encoder_name("image"), "text_vec": encode_vector(text_vecs.get(k)),
                     "image_vec": encode_vector(image_vecs.get(k))}
                    for k, (n, rel) in enumerate(zip(new, rels))]
            self._append({"op": "add_batch", "items": adds} if batch else {"op": "add", **adds[0]})
            return insert([str(self._journal.run_path / rel) if rel else "" for rel in rels])

    def _embedded(self, new: list[_NewItem], batch: bool) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray],
                                                                   np.ndarray, np.ndarray]:
        """``(text vectors, image vectors, embeddings, cosine rows)`` of checked new items, by position
        (an item without text or a picture has no vector of that kind)."""
        from shopgraph.encoders.text import item_text

        texts = {k: text for k, n in enumerate(new) if (text := item_text(n.title, n.category, n.description))}
        text_vecs = dict(zip(texts, self._encode_texts(list(texts.values())))) if texts else {}
        pictures = {k: n.image for k, n in enumerate(new) if n.image is not None}
        image_vecs = (dict(zip(pictures, self._encode_images(
            list(pictures.values()), [f"items[{k}]: image" if batch else "image" for k in pictures]))) if pictures else {})
        rows = np.stack([self._feature_row(text_vecs.get(k), image_vecs.get(k), n.price, n.category)
                         for k, n in enumerate(new)])
        embs, units = self._new_item_embeddings(rows, [(text_vecs.get(k), image_vecs.get(k)) for k in range(len(new))],
                                                [n.item_id in self._trained_pos for n in new])
        return text_vecs, image_vecs, embs, units

    def remove_item(self, item_id: str) -> None:
        """Take an item out of every index and every answer (its id becomes unknown). On a service
        loaded from a run folder this is written to the catalogue journal first (see
        :meth:`add_item`)."""
        self._maybe_sync()
        if self._journal is None:
            with self._sync_lock:  # the lookup and the removal as one step: a second removal is UnknownIdError
                self._delete([self._item(item_id)])
            return
        with self._sync_lock, self._journal.locked():
            self._sync(verify=True)  # nothing written on top of a line changed since it was applied
            i = self._item(item_id)
            self._append({"op": "remove", "item_id": self.item_ids[i]})  # as stored: no stray spaces
            self._delete([i])

    def remove_items(self, item_ids: Sequence[str]) -> None:
        """Remove up to :data:`MAX_BATCH` items at once, as :meth:`remove_item` removes one, all or
        none: one line of the run's journal, and each index searched through once for all of them
        (one at a time, every removal reads through each index).

        Raises:
            ValueError: not a list of 1 to :data:`MAX_BATCH` ids, or an id given twice.
            UnknownIdError: ids that are not served (all of them named); nothing is removed.
        """
        _refuse_not_a_list(item_ids, "item_ids")
        given = list(item_ids)
        if not 1 <= len(given) <= MAX_BATCH:
            raise ValueError(f"item_ids: expected 1 to {MAX_BATCH:,} ids (got {len(given):,})")
        ids: list[str] = []  # as stored: without surrounding spaces
        first: dict[str, int] = {}
        for k, value in enumerate(given):
            key = _id_text(value, f"item_ids[{k}]")
            if key in first:
                raise ValueError(f"item_ids[{k}]: {shown(value)} is also item_ids[{first[key]}]")
            first[key] = k
            ids.append(key)
        self._maybe_sync()
        if self._journal is None:
            with self._sync_lock:
                self._delete(self._served_positions(ids, given))
            return
        with self._sync_lock, self._journal.locked():
            self._sync(verify=True)
            positions = self._served_positions(ids, given)
            self._append({"op": "remove_batch", "item_ids": ids})
            self._delete(positions)

    def _served_positions(self, item_ids: list[str], given: list[str] | None = None) -> list[int]:
        """The positions of served ``item_ids``; ``UnknownIdError`` naming the others as ``given``."""
        unknown = [g for item_id, g in zip(item_ids, given or item_ids) if item_id not in self._item_pos]
        if unknown:
            raise UnknownIdError(f"item_ids: {len(unknown):,} of the {len(item_ids):,} items are not served, nothing "
                                 f"was removed: {listed_ids(unknown)}", "item", unknown)
        return [self._item_pos[item_id] for item_id in item_ids]

    def _insert(self, item_id: str, title: str, category: str, description: str, price: float | None,
                image: str, text_vec: np.ndarray | None, image_vec: np.ndarray | None, emb: np.ndarray,
                unit: np.ndarray) -> int:
        """Put a new item into every index and table (its vectors computed by the caller: ``emb``
        and its cosine row ``unit``, both ``[1, D]``). The id of a trained item that was removed
        restores that item instead (:meth:`_restore`)."""
        trained = self._trained_pos.get(item_id)
        if trained is not None:
            return self._restore(trained, title, category, description, price, image, text_vec, image_vec)
        with self._lock.write():
            pos = len(self.item_ids)
            self._added_pos[item_id] = pos
            held = self._add_to_indexes(pos, emb, unit, text_vec, image_vec)
            for name, member in self._in_index.items():
                member.append(held[name])
            for name, rows in self._content.items():
                vec = text_vec if name == "text_items" else image_vec
                rows.append(0.0 if vec is None else _normalised(vec[None, :])[0])
            self.item_ids.append(item_id)
            self._item_pos[item_id] = pos
            self.titles.append(title)
            self.categories.append(category)
            self.descriptions.append(description)
            self.images.append(image)
            self.prices.append(float("nan") if price is None else float(price))
            code = self._cat_code.setdefault(category, len(self._cat_code))
            self._rows["item_cat"].append(code)
            self._rows["active"].append(True)
            self._rows["item_emb"].append(emb[0])
            self._rows["item_emb_n"].append(unit[0])
        logger.info("added item %r (node %d)", item_id, pos)
        return pos

    def _add_to_indexes(self, pos: int, emb: np.ndarray, unit: np.ndarray, text_vec: np.ndarray | None,
                        image_vec: np.ndarray | None) -> dict[str, bool]:
        """Put item ``pos`` into the GNN indexes (``emb``: its ``[1, D]`` vector, ``unit`` its
        cosine row, at most 1 long: :meth:`_new_item_embeddings`) and the content indexes it has a
        vector for; which indexes hold it now, by name (the caller holds ``_lock.write()``)."""
        ids = np.array([pos], dtype=np.int64)
        self.indexes["gnn_items"].add(emb, ids)
        self.indexes["gnn_items_cosine"].add(unit, ids, as_given=True)
        for name, vec in (("text_items", text_vec), ("image_items", image_vec)):
            if name in self.indexes and vec is not None:
                self.indexes[name].add(vec[None, :], ids)
        return {name: name.startswith("gnn_items") or (name == "text_items" and text_vec is not None)
                or (name == "image_items" and image_vec is not None) for name in self._in_index}

    def _restore(self, pos: int, title: str, category: str, description: str, price: float | None, image: str,
                 text_vec: np.ndarray | None, image_vec: np.ndarray | None) -> int:
        """Serve the removed trained item at ``pos`` again (an item back in stock): its trained GNN
        vector, which carries its purchase history (the users who bought or viewed it, and so the
        revisit term and the "already bought" exclusions, find it again), with the text, image,
        category and price sent (searched by the text and image vectors of what was sent)."""
        with self._lock.write():
            held = self._add_to_indexes(pos, self.item_emb[pos:pos + 1].copy(), self._item_emb_n[pos:pos + 1].copy(),
                                        text_vec, image_vec)
            for name, member in self._in_index.items():
                member.view[pos] = held[name]
            for name, rows in self._content.items():
                vec = text_vec if name == "text_items" else image_vec
                # the trained row, kept for new items' neighbours (_new_item_embeddings)
                self._trained_content.setdefault(name, {}).setdefault(pos, rows.view[pos].copy())
                rows.view[pos] = 0.0 if vec is None else _normalised(vec[None, :])[0]
            self._item_pos[self.item_ids[pos]] = pos
            self.titles[pos], self.categories[pos], self.descriptions[pos] = title, category, description
            self.images[pos] = image
            self.prices[pos] = float("nan") if price is None else float(price)
            self._item_cat[pos] = self._cat_code.setdefault(category, len(self._cat_code))
            self._active[pos] = True
        logger.info("restored trained item %r (node %d): its trained vector serves again", self.item_ids[pos], pos)
        return pos

    def _delete(self, positions: list[int]) -> None:
        """Take served items out of every index (one removal an index) and table."""
        rows = np.asarray(positions, dtype=np.int64)
        with self._lock.write():
            for name, member in self._in_index.items():
                present = rows[member.view[rows]]
                if present.size:
                    self.indexes[name].remove(present)
                    member.view[present] = False
            self._active[rows] = False
            for i in positions:
                del self._item_pos[self.item_ids[i]]
        for i in positions:
            logger.info("removed item %r (node %d)", self.item_ids[i], i)

    # -- the catalogue journal ----------------------------------------------------------------
    def _fresh(self, new: list[_NewItem]) -> list[_NewItem]:
        """The items of ``new`` to add: those whose ids are not served. An item served already with
        every field it sends (a retried write that went through) is left out, nothing to do; one
        that sends other fields is refused: :class:`DuplicateIdError` naming them all (and, for one
        item, the fields that differ), nothing added."""
        clashes = {k: (n.item_id, differ) for k, n in enumerate(new)
                   if n.item_id in self._item_pos and (differ := self._differs(n))}
        if clashes:
            known = [item_id for item_id, _ in clashes.values()]
            if len(new) == 1:
                raise DuplicateIdError(f"item_id: item {shown(known[0])} already exists, with another "
                                       f"{' and '.join(clashes[0][1])} (sending it again as it is, a retry, "
                                       "adds nothing and is not refused)", known)
            named = [f"items[{k}] {shown(item_id)} (another {' and '.join(differ)})"
                     for k, (item_id, differ) in list(clashes.items())[:10]]
            more = f" and {len(clashes) - 10:,} more" if len(clashes) > 10 else ""
            raise DuplicateIdError(f"item_id: {len(known):,} of the {len(new):,} items exist already with other "
                                   f"fields, nothing was added: {', '.join(named)}{more}", known)
        return [n for n in new if n.item_id not in self._item_pos]

    def _differs(self, n: _NewItem) -> list[str]:
        """The fields ``n`` sends that its served item (of the same id) does not have as sent; a field
        left out differs from nothing. A picture is the same when its bytes are (as the journal keeps
        them: a ``PIL.Image`` as its PNG)."""
        i = self._item_pos[n.item_id]
        served = self.prices[i]
        price = None if served != served else float(served)
        out = [name for name, sent, has in (("title", n.title, self.titles[i]), ("category", n.category, self.categories[i]),
                                            ("description", n.description, self.descriptions[i]),
                                            ("price", n.price, price))
               if name not in n.left_out and sent != has]
        if "image" not in n.left_out and not self._same_image(n.image, self._image_path(i)):
            out.append("image")
        return out

    @staticmethod
    def _same_image(sent: Any, path: str | None) -> bool:
        """Whether an image sent (checked; ``None``: none) has the bytes of the picture at ``path``."""
        if sent is None or not path:
            return sent is None and not path
        try:
            return _image_file(sent)[0] == Path(path).read_bytes()
        except OSError:  # the served picture is missing: not the same
            return False

    def _append(self, entry: dict[str, Any]) -> None:
        """Write one change of this process to the journal (the caller holds ``_sync_lock`` and the
        journal's lock, and has applied everything before it: the line is the next one)."""
        assert self._journal is not None
        at = self._journal_at  # the lock is held: the file appended to is the one stat() sees
        digest = at.digest.copy() if at.digest is not None else None  # the bytes applied, and now the line
        end = self._journal.append(entry, digest)
        ino, _, mtime_ns = self._journal.stat()
        self._journal_at = JournalPosition(at.generation, end, at.line + 1, ino, mtime_ns, digest,
                                           self._journal.tail(end))

    def _encoder_name(self, kind: str) -> str:
        """The encoder that made this run's ``kind`` vectors, as the journal records it."""
        model = self._text_model if kind == "text" else self._image_model
        return str(model) if model else "bundled"

    def _maybe_sync(self) -> None:
        """Apply the journal's new entries when ``catalogue_sync_s`` has passed since the last
        look and the file has changed; never raises (a damaged line is logged and kept in
        :meth:`catalogue_info`). A sync in progress in another thread (the background look, or
        another call) is waited for, not skipped, so a call never answers from a catalogue it
        has seen to be behind the journal. Public calls do this first, before any lookup and
        never while holding ``_lock`` (applying takes it for writing)."""
        if self._journal is None or time.monotonic() - self._synced_at < self._sync_every:
            return
        self._synced_at = time.monotonic()
        if self._journal_fault is None and self._journal.stat() == self._journal_at.stamp():
            return  # (a fault is looked at again: a damaged line cut off leaves the file as it was applied)
        with self._sync_lock:
            if self._journal_fault is None and self._journal.stat() == self._journal_at.stamp():
                return  # applied by the thread that held the lock
            try:  # a fault is cleared only by a journal whose every applied byte is as it was
                self._sync(verify=self._journal_fault is not None)
            except CatalogueError:  # logged and kept in catalogue_info()["fault"] until a sync reads the journal
                pass

    def _verify_journal(self) -> None:
        """Read every byte of the journal this service applied and check it (a line changed since by
        hand, even one whose file kept its size and time, is a fault: :meth:`catalogue_info`);
        the background look does this every :data:`JOURNAL_VERIFY_S`, off the calls' path."""
        if self._journal is None:
            return
        with self._sync_lock:
            try:
                self._sync(verify=True)
            except CatalogueError:  # logged and kept, as _maybe_sync does
                pass
            self._verified_at = time.monotonic()

    def sync_catalogue(self) -> int:
        """Apply the catalogue changes that other processes wrote to the run's journal since this
        service last looked (calls do this by themselves every ``catalogue_sync_s``).

        Returns:
            The number of journal entries read.

        Raises:
            CatalogueError: a damaged journal line (named by line); nothing after it is applied.
        """
        if self._journal is None:
            return 0
        with self._sync_lock:
            return self._sync()

    def _sync(self, verify: bool = False) -> int:
        """Replay the journal past ``_journal_at`` (:meth:`_replay_journal`); a journal that cannot
        be read is the service's fault (``catalogue_info()["fault"]``) until one can. ``verify``:
        check every byte applied so far (:meth:`CatalogueJournal.follow`), as before a write. The
        caller holds ``_sync_lock``."""
        try:
            read = self._replay_journal(verify)
        except CatalogueError as exc:
            if str(exc) != self._journal_fault:
                logger.error("catalogue journal cannot be read; no catalogue change can be saved until it is "
                             "mended: %s", exc)
            self._journal_fault = str(exc)
            raise
        if self._journal_fault is not None:
            logger.info("catalogue journal readable again: %d entries applied", read)
        self._journal_fault = None
        return read

    def _replay_journal(self, verify: bool = False) -> int:
        """Replay the journal past ``_journal_at`` (across a compaction), the adds of up to
        :data:`REPLAY_BATCH` entries embedded in one pass."""
        assert self._journal is not None
        entries, at, incomplete = self._journal.follow(self._journal_at, verify)
        for _, entry in entries:  # a compaction's record of the added items removed since whose lines it dropped
            if entry["op"] == REMOVED_OP:
                self._forgotten.update(entry["item_ids"])
        entries = [(where, entry) for where, entry in entries if entry["op"] != REMOVED_OP]
        superseded = self._journal_superseded
        for start in range(0, len(entries), REPLAY_BATCH):
            batch = entries[start:start + REPLAY_BATCH]
            prepared = self._prepare_adds([entry for _, entry in batch])
            removals: list[int] = []  # consecutive removals' positions, taken out together
            for k, (where, entry) in enumerate(batch):
                if entry["op"] == "remove":
                    removals += self._replay_removal(entry, removals)
                    continue
                if removals:
                    self._delete(removals)
                    removals = []
                try:
                    self._replay(entry, prepared.get(k))
                except (ValueError, NotAvailableError) as exc:
                    note = f"{Path(where).name}: {entry['op']} {entry['item_id']!r} not applied: {exc}"
                    logger.warning("catalogue journal %s", note)
                    self._journal_notes.append(note)
            if removals:
                self._delete(removals)
        if at.generation != self._journal_at.generation and self._journal_at.ino:
            logger.info("%s: compacted to generation %d meanwhile; following it", self._journal.path, at.generation)
        self._journal_at = at
        if self._journal_superseded > superseded:
            logger.info("%s: %d changes are in the trained catalogue already (a run rebuilt on newer tables: "
                        "ids added since are in them, ids removed since are not)", self._journal.path,
                        self._journal_superseded - superseded)
        if incomplete and entries:
            logger.info("%s: %d bytes of an unfinished last line left for later", self._journal.path, incomplete)
        return len(entries)

    def _prepare_adds(self, entries: list[dict[str, Any]]) -> dict[int, _Prepared | Exception]:
        """What each add among ``entries`` needs to be inserted (by position): its content vectors
        (encoded again when the run's encoders are not the ones that made them), its image path and
        its embedding, all embedded in one pass; or the error that stops it."""
        from shopgraph.encoders.text import item_text

        out: dict[int, _Prepared | Exception] = {}
        rows: dict[int, tuple[np.ndarray | None, np.ndarray | None, str, np.ndarray]] = {}
        for k, entry in enumerate(entries):
            if entry["op"] != "add":
                continue
            try:
                text_vec, image_vec = decode_vector(entry["text_vec"]), decode_vector(entry["image_vec"])
                image = (str(self._journal.run_path / entry["image"]) if self._journal is not None and entry["image"]
                         else "")
                if text_vec is not None and entry["text_model"] != self._encoder_name("text"):
                    text_vec = self._encode_texts([item_text(entry["title"], entry["category"],
                                                             entry["description"])])[0]
                if image_vec is not None and entry["image_model"] != self._encoder_name("image"):
                    image_vec = self._encode_image(image)[0]
                rows[k] = (text_vec, image_vec, image,
                           self._feature_row(text_vec, image_vec, entry["price"], entry["category"]))
            except (ValueError, NotAvailableError) as exc:
                out[k] = exc
        if rows:
            try:
                embs, units = self._new_item_embeddings(
                    np.stack([row for *_, row in rows.values()]),
                    [(text_vec, image_vec) for text_vec, image_vec, *_ in rows.values()],
                    [entries[k]["item_id"] in self._trained_pos for k in rows])
            except NotAvailableError as exc:
                return out | dict.fromkeys(rows, exc)
            for (k, (text_vec, image_vec, image, _)), emb, unit in zip(rows.items(), embs, units):
                out[k] = _Prepared(text_vec, image_vec, image, emb[None, :], unit[None, :])
        return out

    def _replay_removal(self, entry: dict[str, Any], pending: list[int]) -> list[int]:
        """The position a journal removal takes out (``[]`` when it is no longer served, counted as
        superseded), given the ``pending`` positions of the removals before it, not yet applied."""
        i = self._item_pos.get(entry["item_id"])
        if i is None or i in pending:  # removals need a served id: the run was rebuilt on tables without it
            self._journal_superseded += 1
            return []
        return [i]

    def _replay(self, entry: dict[str, Any], prepared: _Prepared | Exception | None) -> None:
        """Apply one journal add written by :meth:`add_item` or :meth:`add_items` (here or in
        another process) with what :meth:`_prepare_adds` made for it."""
        item_id = entry["item_id"]
        if item_id in self._item_pos and self._item_pos[item_id] < self._n_trained:
            # the shop's tables have it since (a rebuilt run): the trained item is served
            self._journal_superseded += 1
            return
        if item_id in self._item_pos:
            raise ValueError("the id was added twice")
        if isinstance(prepared, Exception):
            raise prepared
        assert prepared is not None
        self._insert(item_id, entry["title"], entry["category"], entry["description"], entry["price"],
                     prepared.image, prepared.text_vec, prepared.image_vec, prepared.emb, prepared.unit)


class _RowLayout(NamedTuple):
    """The column layout of a new item's feature row (:meth:`ShopService._row_layout`)."""

    base: np.ndarray  # the training means, 0 in the encoder and category columns, counts at "none"
    text: np.ndarray  # text_* columns
    image: np.ndarray  # image_* columns
    flags: dict[str, int]  # has_text, has_image, has_price, log_price -> column
    categories: dict[str, int]  # category -> its item_category=<value> column


_NEW_ITEM_FIELDS = ("item_id", "title", "category", "description", "price", "image")


def _is_price(price: Any) -> bool:
    """A finite number >= 0 (not a bool; an int too large for a float is not finite)."""
    if isinstance(price, bool) or not isinstance(price, int | float | np.number):
        return False
    try:
        return bool(math.isfinite(price) and price >= 0)
    except (OverflowError, TypeError):  # 10**400; a complex number
        return False


class Added(NamedTuple):
    """What :meth:`ShopService.add_item_outcome` and :meth:`ShopService.add_items_outcome` did."""

    positions: list[int]  # every item's node index, in the order given
    added: list[bool]  # whether this call added it (False: it was served already as sent, a retry)


class _NewItem(NamedTuple):
    """An item to add, checked (:meth:`ShopService._new_item`)."""

    item_id: str  # stripped
    title: str
    category: str
    description: str
    price: float | None
    image: Any  # as given (checked): PIL.Image, bytes or a path; None
    # the fields left out (KEEP), filled in by ShopService._kept when checked and again under the
    # journal's lock (ShopService._refilled): another process may have removed the item meanwhile
    left_out: frozenset[str] = frozenset()


class _Prepared(NamedTuple):
    """A journal add, ready to insert (:meth:`ShopService._prepare_adds`)."""

    text_vec: np.ndarray | None
    image_vec: np.ndarray | None
    image: str
    emb: np.ndarray  # [1, D]
    unit: np.ndarray  # [1, D], its cosine row (_new_item_embeddings)


# The background looks of live services: stopped and joined at interpreter exit (below), before
# daemon threads are frozen mid-call (one frozen inside torch's C++ aborted the process at exit).
JOURNAL_VERIFY_S = 60.0  # how often the background look checks every byte of the journal applied
_FOLLOWERS: dict[threading.Thread, threading.Event] = {}
_FOLLOWERS_LOCK = threading.Lock()


def _follow_in_background(service: ShopService, every_s: float) -> None:
    """Apply other processes' catalogue changes to ``service`` every ``every_s`` seconds in a
    daemon thread, which holds the service weakly and stops when it is collected or the
    interpreter exits."""
    ref = weakref.ref(service)
    stop = threading.Event()
    weakref.finalize(service, stop.set)

    def follow() -> None:
        failed = ""  # the last failure, logged once rather than every look
        try:
            while not stop.wait(every_s):
                svc = ref()
                if svc is None:
                    return
                try:
                    svc._maybe_sync()  # never raises for a damaged journal: it notes it
                    if time.monotonic() - svc._verified_at >= JOURNAL_VERIFY_S:
                        svc._verify_journal()  # every byte applied, now and then, off the calls' path
                    failed = ""
                except Exception as exc:  # noqa: BLE001 - e.g. a permission error; the calls' own checks go on
                    if repr(exc) != failed:
                        logger.exception("catalogue: the background look at the journal failed")
                    failed = repr(exc)
                del svc
        finally:
            with _FOLLOWERS_LOCK:
                _FOLLOWERS.pop(threading.current_thread(), None)

    thread = threading.Thread(target=follow, name="shopgraph-catalogue", daemon=True)
    with _FOLLOWERS_LOCK:
        _FOLLOWERS[thread] = stop
    thread.start()


@atexit.register
def _stop_following(threads: Sequence[threading.Thread] | None = None) -> None:
    """Stop the background looks ``threads`` (``None``: all) and wait for one in progress to
    finish (at most 10 s each)."""
    with _FOLLOWERS_LOCK:
        followers = [(t, stop) for t, stop in _FOLLOWERS.items() if threads is None or t in threads]
    for _, stop in followers:
        stop.set()
    for thread, _ in followers:
        thread.join(timeout=10.0)


def _image_file(image: Any) -> tuple[bytes, str]:
    """The bytes and file extension to keep for a (validated) image given as ``PIL.Image``, bytes
    or a path: the file as given, or a PNG of a ``PIL.Image``."""
    from PIL import Image

    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        (image if image.mode in ("RGB", "RGBA", "L", "LA", "P") else image.convert("RGB")).save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    payload = Path(image).read_bytes() if isinstance(image, str | Path) else bytes(image)
    with Image.open(io.BytesIO(payload)) as img:
        fmt = (img.format or "png").lower()
    return payload, {"jpeg": "jpg"}.get(fmt, fmt)
