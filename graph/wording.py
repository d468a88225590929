"""The fraud scorer's feature names in plain words, for people reading an account's reasons.

The served fraud scorers read columns with technical names (``graph.baselines.
hetero_neighbor_feature_names``, ``graph.fraud_scorer.product_feature_table``, the grouped encoder
columns of ``graph.explain``): ``users sharing a device via uses: mean log_account_age_days (self
included)``, ``quick purchases: mean item image features (87 columns together; value: their
norm)``. :func:`reason_in_words` reads such a name as a sentence and says what kind of number its
value is (:class:`Reading`); :func:`value_in_words` writes the value so: a count, a share, yes or
no, or "1.2 SD below the average account" for the standardised behaviour columns. The names
themselves stay as they are (``metrics.json``; ``/fraud/explain`` and the case files give each
feature's ``name`` and, beside it, its ``reason`` in these words, as ``/fraud/score`` and the demo
word it). A name this module does not know is returned as it is, never guessed at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import numpy as np

Unit = Literal["raw", "count", "log_count", "share", "flag", "standardised", "none"]
# a feature's value as people read it, from the feature's name and the value the scorer read;
# None: no better words than value_in_words's (FeatureFacts.value for one account)
ValueWords = Callable[[str, float], "str | None"]

# the served fraud scorer's name, by its kind (``RUN/fraud.json`` ``kind``), where people read it:
# the demo's Model table and the precision-recall plot ``shopgraph evaluate`` draws
FRAUD_SCORER_NAMES: dict[str, str] = {
    "gnn_head": "ShopGraph (the network's fraud output)",
    "hybrid": "ShopGraph (trees on network + graph features)",
    "graph_trees": "ShopGraph (trees on graph features)",
    "rank_average": "ShopGraph (network and trees, rankings averaged)",
}

# what the columns counted over every event the graph holds (graph.fraud_scorer.ring_features: the
# account's bursts and quick purchases) say, beside the own columns that stop where the training
# period ends (encoders.behaviour, dated by FeatureFacts.as_of): an account's purchases after that
# date count in the one and not in the other
WHOLE_HISTORY = ", over all activity"
QUICK_ITEMS = "items bought right after viewing or carting them" + WHOLE_HISTORY
# encoders.behaviour measures it where the training period ends (the validation period's start)
ACCOUNT_AGE = "account age at the end of the training period"
# behaviour and table columns (encoders.behaviour), as a person would name them
_FEATURES: dict[str, tuple[str, Unit]] = {
    "log_account_age_days": (ACCOUNT_AGE, "standardised"),
    "has_account_age": ("has an account creation date", "flag"),
    # the account's own counts stop at the end of the training period (encoders.behaviour), where the
    # counts over the graph's edges ("purchase events (log count)") run to the last event: said apart
    "log_n_events": ("number of events in the training period", "standardised"),
    "log_n_cart": ("number of cart adds in the training period", "standardised"),
    "log_n_purchase": ("number of purchases in the training period", "standardised"),
    "log_n_view": ("number of views in the training period", "standardised"),
    "log_amount_mean": ("average purchase amount in the training period", "standardised"),
    "log_amount_max": ("largest purchase amount in the training period", "standardised"),
    "log_amount_sum": ("total purchase amount in the training period", "standardised"),
    "night_share": ("share of events at night in the training period", "standardised"),
    "log_purchases_last_24h": ("purchases in the last 24 hours of activity in the training period", "standardised"),
    "high_risk_purchase_share": ("share of purchases in high-risk categories in the training period", "standardised"),
    "log_n_devices": ("number of devices in the training period", "standardised"),
    "log_max_accounts_per_device": ("most accounts on one device in the training period", "standardised"),
    "log_n_users": ("number of shoppers in the training period", "standardised"),  # an item's (encoders.behaviour)
    "log_price": ("price", "standardised"),
    "has_price": ("has a price", "flag"),
    "has_text": ("has a title or description", "flag"),
    "has_image": ("has a picture", "flag"),
    "log_n_accounts": ("number of accounts using each in the training period", "standardised"),  # a device's
    "log_n_accounts_created": ("number of accounts created on it in the training period", "standardised"),
}
# (user, rel, other) edges: what the account did with the other node
_DID: dict[str, str] = {"view": "viewed", "cart": "put in the cart", "purchase": "bought", "uses": "used"}
_EVENTS: dict[str, str] = {"view": "views", "cart": "cart adds", "purchase": "purchases", "uses": "device uses"}
_PLURAL: dict[str, str] = {"item": "items", "device": "devices", "user": "accounts"}
_ENCODER: dict[str, str] = {"text": "titles and descriptions", "image": "pictures"}
_GROUP = re.compile(r"^(?P<prefix>.*?)(?P<kind>text|image) features \((?P<n>\d+) columns together; value: their norm\)$")
_GNN_GROUP = re.compile(r"^GNN embedding \((?P<n>\d+) columns together; value: their norm\)$")
_OTHER_MEAN = re.compile(r"^(?P<other>\w+)s via (?P<rel>\w+): mean (?P<f>.+)$")
_NOBODY = re.compile(r"^other users sharing an? (?P<other>\w+) via (?P<rel>\w+): none$")
SHARING_MEAN = re.compile(r"^(?P<others>other )?users sharing an? (?P<other>\w+) via (?P<rel>\w+): mean (?P<f>.+?)"
                      r"(?P<self> \(self included\))?$")
_EVENT_COUNT = re.compile(r"^(?P<rel>\w+) events \(log count\)$")
_DISTINCT = re.compile(r"^distinct (?P<other>\w+)s via (?P<rel>\w+) \(log count\)$")
_PATHS = re.compile(r"^other users via (?P<rel>\w+) (?P<other>\w+)s \(log count of paths\)$")
QUICK_ITEM_REASON = "quick purchases: mean item "  # graph.fraud_scorer names what quick buys are so
# graph.explain: an account that bought nothing right after viewing or carting it has no quick items
# to describe; its "what they are" reasons are reported together under this name
NO_QUICK_BUYS = "quick purchases: none"
# graph.explain: a reason about an account's co-users (a ring column) for an account that has none
NOBODY_SUFFIX = ": none"


class Reading(NamedTuple):
    """A feature name in words, and what kind of number its value is (:func:`value_in_words`)."""

    text: str
    unit: Unit


def _feature(name: str) -> tuple[str, Unit]:
    """One node's own column: its words and unit (a one-hot flag ``user_country=DE``: ``country DE``)."""
    if name in _FEATURES:
        return _FEATURES[name]
    if "=" in name:
        column, _, level = name.partition("=")
        for prefix in ("user_", "item_", "device_"):
            column = column.removeprefix(prefix)
        return f"{column.replace('_', ' ')} {level}", "flag"
    for prefix in ("user_", "item_", "device_"):
        if name.startswith(prefix):  # a shop's own numeric column
            return name[len(prefix):].replace("_", " "), "standardised"
    return name, "raw"


def _average(words: str, unit: Unit) -> Reading:
    """``their average <feature>``; a mean of yes/no flags is a share."""
    if unit == "flag":
        return Reading(f"share with {words}", "share")
    return Reading(f"average {words}", "standardised" if unit in ("standardised", "raw") else unit)


def _sharing(rel: str, other: str) -> str:
    """Who shares what: ``on the same devices``, ``that bought the same items``."""
    if rel == "uses":
        return f"on the same {_PLURAL.get(other, other + 's')}"
    return f"that {_DID.get(rel, rel)} the same {_PLURAL.get(other, other + 's')}"


# a ring feature's share of labelled fraud, for an account whose co-users have no label at all
# (:class:`shopgraph.graph.explain.ServedTreeExplainer`): its value, 0, is no share of anything
SHARE_LABELLED = ": share labelled fraud among those labelled "
NONE_LABELLED = ": none of them labelled "


def reason_in_words(name: str) -> Reading:
    """``name`` (a column of the fraud scorer's features) in words, with its value's unit.

    Examples: ``users sharing a device via uses: mean log_account_age_days (self included)`` ->
    ``accounts on the same devices (this one included): average account age`` (standardised);
    ``other users sharing a device via uses: none`` (an account that shares no device,
    :class:`shopgraph.graph.explain.ServedTreeExplainer`) -> ``no other account on the same devices``;
    ``quick purchases: mean item image features (87 columns together; value: their norm)`` ->
    ``items bought right after viewing or carting them, over all activity: what they are, judged from
    their pictures`` (no value worth showing); for an account without such purchases, ``quick
    purchases: none`` -> ``no purchase made right after viewing or carting the item, over all
    activity``; ``accounts sharing a device (or other
    identifier): none`` (an account with no co-user: its counts of them and share labelled fraud
    together) -> ``no other accounts sharing a device (or other identifier)``. Unknown names come
    back unchanged, with the unit ``raw``.
    """
    if (m := _GNN_GROUP.match(name)) is not None:
        return Reading("the network's summary of the account's activity", "none")
    if NONE_LABELLED in name:  # no labelled co-user: nothing to write as a value (not "0%")
        return Reading(name, "none")
    if name == NO_QUICK_BUYS:
        return Reading("no purchase made right after viewing or carting the item" + WHOLE_HISTORY, "none")
    if (m := _GROUP.match(name)) is not None:
        prefix = m["prefix"]
        subject = "this account's items"
        if prefix == QUICK_ITEM_REASON:
            subject = QUICK_ITEMS
        elif (o := re.match(r"^(?P<other>\w+)s via (?P<rel>\w+): mean $", prefix)) is not None:
            subject = f"{_PLURAL.get(o['other'], o['other'] + 's')} {_DID.get(o['rel'], o['rel'])}"
        # no column count: the trees of a fold split on other columns than the served ones, and the
        # same reason with two counts on one screen read as a contradiction
        return Reading(f"{subject}: what they are, judged from their {_ENCODER[m['kind']]}", "none")
    if name.startswith(QUICK_ITEM_REASON):
        words, unit = _feature(name[len(QUICK_ITEM_REASON):])
        average = _average(words, unit)
        return Reading(f"{QUICK_ITEMS}: {average.text}", average.unit)
    if (m := _NOBODY.match(name)) is not None:  # graph.explain: the means over others of an account with none
        return Reading(f"no other account {_sharing(m['rel'], m['other'])}", "none")
    if name.endswith(NOBODY_SUFFIX):  # graph.explain: the co-user counts and share of an account with no co-user
        base = name[: -len(NOBODY_SUFFIX)]
        return Reading("no " + (base.replace("accounts ", "other accounts ", 1) if base.startswith("accounts ")
                                else base), "none")
    if (m := SHARING_MEAN.match(name)) is not None:
        words, unit = _feature(m["f"])
        who = ("other accounts " if m["others"] else "accounts ") + _sharing(m["rel"], m["other"])
        who += " (this one included)" if m["self"] else ""
        average = _average(words, unit)
        return Reading(f"{who}: {average.text}", average.unit)
    if (m := _OTHER_MEAN.match(name)) is not None:
        words, unit = _feature(m["f"])
        average = _average(words, unit)
        return Reading(f"{_PLURAL.get(m['other'], m['other'] + 's')} {_DID.get(m['rel'], m['rel'])}: {average.text}",
                       average.unit)
    if (m := _EVENT_COUNT.match(name)) is not None:
        return Reading(f"number of {_EVENTS.get(m['rel'], m['rel'] + ' events')} (all activity)", "log_count")
    if (m := _DISTINCT.match(name)) is not None:
        return Reading(f"different {_PLURAL.get(m['other'], m['other'] + 's')} {_DID.get(m['rel'], m['rel'])}",
                       "log_count")
    if (m := _PATHS.match(name)) is not None:
        return Reading(f"links to other accounts through the {_PLURAL.get(m['other'], m['other'] + 's')} "
                       f"{_DID.get(m['rel'], m['rel'])}", "log_count")
    if name.endswith("(log count)"):  # the ring columns, in words already (graph.fraud_scorer.ring_column_text)
        return Reading(name[: -len("(log count)")].rstrip(", "), "log_count")
    if "=" in name and name not in _FEATURES:  # the account's own one-hot flag: a sentence, not "signup channel ads"
        words, unit = _feature(name)
        column, _, level = name.partition("=")
        return Reading(f"{words[: -len(level) - 1]} is {level}", unit)
    if name in _FEATURES or name.startswith(("user_", "item_", "device_")):
        return Reading(*_feature(name))
    if "share" in name:
        return Reading(name, "share")
    return Reading(name, "raw")


def value_in_words(reading: Reading, value: float) -> str:
    """``value`` written as its :class:`Reading` says: ``17`` (a log count, back to a count),
    ``100%``, ``yes``, ``1.2 SD below the average account``; ``""`` for a value worth nothing
    to a reader (a norm of embedding columns) or one that is not a number."""
    if reading.unit == "none" or not math.isfinite(value):
        return ""
    if reading.unit == "log_count":
        return f"{math.expm1(value):,.0f}"
    if reading.unit == "count":
        return f"{value:,.0f}"
    if reading.unit == "share":
        return f"{value:.0%}"
    if reading.unit == "flag":
        return "yes" if value >= 0.5 else "no"
    if reading.unit == "standardised":
        if abs(value) < 0.05:
            return "about average"
        return f"{abs(value):.1f} SD {'above' if value > 0 else 'below'} average"
    return f"{value:.3g}"


def cites_training_labels(reason: str) -> bool:
    """Whether a reason (a column name in words, or a served reason sentence) counts other accounts'
    labels from the training data (``graph.fraud_scorer.ring_column_text``: "accounts sharing a
    device (or other identifier), labelled fraud in the training data: 17", "… labelled legitimate
    …", "… share labelled fraud among those labelled …"): a score driven by it is found with the
    help of those labels, not from the account's own behaviour alone."""
    return "labelled" in reason and "in the training data" in reason and NONE_LABELLED not in reason


def label_words(label: bool | None, in_training: bool) -> str:
    """An account's fraud label for a table cell or a spreadsheet: ``"fraud"``, ``"legitimate"``,
    either with ``" (trained on)"`` when the scorer was trained on it, ``""`` when unlabelled."""
    if label is None:
        return ""
    return ("fraud" if label else "legitimate") + (" (trained on)" if in_training else "")


def _count(n: float) -> str:
    return f"{n:,.0f}"


def in_words(name: str, value: float) -> str | None:
    """A scorer column without a raw reading (a neighbourhood mean, a group of encoder columns) as
    :func:`reason_in_words` words it, with its value where that means something ("accounts on
    the same devices (this one included): average account age: 1.0 SD below average"); ``None`` for
    a name it does not know."""
    reading = reason_in_words(name)
    if reading.text == name and reading.unit == "raw":
        return None
    shown_value = value_in_words(reading, value)
    return f"{reading.text}: {shown_value}" if shown_value else reading.text


def describe_user_feature(name: str, raw: float | None, value: float, as_of: str | None = None) -> str | None:
    """A user feature as a plain fact with its raw value, e.g. ``account age at the end of the
    training period (2025-12-19): 3 days``,
    ``country: DE``, ``accounts sharing a device (or other identifier): 4``; ``None`` when the
    feature has no plain reading (neighbourhood means, embedding columns) or says nothing about
    this account (a one-hot flag the account does not have).

    Args:
        name: the feature's name (``data["user"].feature_names`` or a served-tree column).
        raw: the value before standardising (``encoders.behaviour.user_feature_columns``), when known.
        value: the value the scorer read (used for the served trees' ring columns, which are raw).
        as_of: the date the features are measured at (the end of the training period), named in
            the account age's fact; an account created on or after it is said to be (its age is 0).
    """
    if raw is not None and math.isfinite(raw):
        if "=" in name:  # a one-hot flag: "user_country=DE"
            column, _, level = name.partition("=")
            return f"{column.removeprefix('user_').replace('_', ' ')}: {level}" if raw >= 0.5 else None
        plain = math.expm1(raw) if name.startswith("log_") else raw
        if name == "log_account_age_days":
            age = f"{ACCOUNT_AGE} ({as_of})" if as_of else ACCOUNT_AGE
            if as_of and plain <= 0:  # created then or later: the features count it as 0 days old
                return f"{age}: 0 days (created on or after {as_of})"
            return f"{age}: {plain:,.1f} days" if plain < 10 else f"{age}: {plain:,.0f} days"
        if name == "has_account_age":
            return "no account creation date" if raw < 0.5 else None
        if name == "log_n_events":
            return f"events in the training period: {_count(plain)}"
        if name.startswith("log_amount_"):
            which = {"mean": "average", "max": "largest", "sum": "total"}.get(name[len("log_amount_"):])
            return f"{which} purchase amount in the training period: {plain:,.2f}" if which else None
        if name == "night_share":
            return f"share of events at night (00:00-06:00 UTC) in the training period: {plain:.0%}"
        if name == "log_purchases_last_24h":
            return f"purchases in the 24 h before the account's last event in the training period: {_count(plain)}"
        if name == "high_risk_purchase_share":
            return f"share of purchases in high-risk categories in the training period: {plain:.0%}"
        if name == "log_price":  # an item's (a mean over items, FeatureFacts)
            return f"price: {plain:,.2f}"
        if name == "log_n_devices":
            return f"devices used in the training period: {_count(plain)}"
        if name == "log_max_accounts_per_device":
            return f"most accounts on one of its devices in the training period: {_count(plain)}"
        if name.startswith("log_n_"):
            return f"{name[len('log_n_'):]} events in the training period: {_count(plain)}"
        if name.startswith("user_"):
            return f"{name[len('user_'):].replace('_', ' ')}: {plain:g}"
        return None
    # the served trees' ring columns (graph.fraud_scorer.ring_column_text), read as they are
    if not math.isfinite(value) or " " not in name or ":" in name.split("(")[0]:  # "items via cart: mean ..."
        return None
    if name.endswith(" (log count)"):
        return f"{name[:-len(' (log count)')]}: {_count(math.expm1(value))}"
    if name.endswith("(log count)"):
        return f"{name[:-len('(log count)')].rstrip(', ')}: {_count(math.expm1(value))}"
    if "share" in name:
        return f"{name}: {value:.0%}"
    return None


def names_quick_items(name: str) -> bool:
    """Whether ``name`` is a "quick purchases" reason about what the items bought so are (a group of
    their encoder columns, whose value, a norm, means nothing to a reader: the items themselves are
    its value), not one of their shares (``…: mean item item_category=electronics``, a percentage)."""
    return name.startswith(QUICK_ITEM_REASON) and _GROUP.match(name) is not None


class FeatureFacts:
    """An account's behaviour features written as people read them, from their values before
    standardising (:func:`shopgraph.encoders.behaviour.feature_facts`): its own columns as
    :func:`describe_user_feature` writes them ("account age …: 14 days", not "1.8 SD below
    average"), and the means over the accounts sharing its devices (or items) of those columns in
    the same unit ("accounts on the same devices (this one included): average account age: 12
    days (typical, averaged device by device, itself included)"). That column is the mean over the
    account's devices of each device's mean over its accounts, the account itself counted on each of
    its devices (a device of its own pulls the value to its own), as the words say (the "other
    accounts" columns average those accounts, once for each device they share); for a ``log_``
    column it is given back as ``exp`` of that mean of ``log(1 + x)``, less one: a typical value, which
    one account with years of history does not swamp. Everything
    else (a column without a raw value, a group of encoder columns) is written as
    :func:`in_words` writes it, from the value the scorer read.

    Args:
        raw: ``{column: float64 [U]}``, each user column before standardising.
        scales: ``{column: (a, b)}`` with the standardised column ``x == a * raw + b``.
        as_of: the date the features are measured at (the end of the training period).
        quick: ``u ->`` the items user ``u`` bought right after viewing or carting them, named
            (:meth:`shopgraph.graph.fraud_scorer.QuickPurchases.named`), the value of a "quick
            purchases: mean item …" reason, whose norm of encoder columns means nothing to a reader.
    """

    def __init__(self, raw: Mapping[str, np.ndarray] | None = None,
                 scales: Mapping[str, tuple[float, float]] | None = None, as_of: str | None = None,
                 quick: Callable[[int], str] | None = None,
                 node_scales: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> None:
        self.raw = dict(raw or {})
        self.scales = dict(scales or {})
        self.as_of = as_of
        self.quick = quick
        self.node_scales = {nt: dict(s) for nt, s in (node_scales or {}).items()}

    def fact(self, name: str, value: float, u: int) -> str | None:
        """User ``u``'s feature ``name`` (whose value the scorer read is ``value``) as a plain fact,
        or ``None`` when it has none (a one-hot flag the account does not have, a name no reading
        knows)."""
        own = self.raw.get(name)
        fact = describe_user_feature(name, float(own[u]) if own is not None else None, value, self.as_of)
        if fact is not None or own is not None:
            return fact
        mean = self._mean(name, value)
        if mean is not None:
            return f"{reason_in_words(name).text}: {mean}"
        return in_words(name, value)

    def value(self, name: str, value: float, u: int) -> str | None:
        """Only the value of :meth:`fact` ("14 days", "12 days", "DE"), for a table with the reason
        in another column, and for a "quick purchases" reason the items behind it; ``None`` where
        there is nothing better to say (the caller words the value the scorer read)."""
        if names_quick_items(name):
            return (self.quick(u) or None) if self.quick is not None else None
        own = self.raw.get(name)
        if own is not None:
            fact = describe_user_feature(name, float(own[u]), value, self.as_of)
            return fact.partition(": ")[2] if fact is not None and ": " in fact else None
        return self._mean(name, value)

    def _mean(self, name: str, value: float) -> str | None:
        """A neighbourhood mean of a standardised column, back in the column's unit: a user column
        over the accounts sharing its devices (items), or an item's (device's) column over the
        items (devices) the account used, each by its own node type's scale."""
        m = SHARING_MEAN.match(name)
        over = None if m is not None else _OTHER_MEAN.match(name)
        scales = self.scales if over is None else self.node_scales.get(over["other"], {})
        m = m or over
        if m is None or m["f"] not in scales or not math.isfinite(value):
            return None
        a, b = scales[m["f"]]
        raw = (value - b) / a
        logged = m["f"].startswith("log_")
        if logged:
            raw = max(raw, 0.0)  # a mean of log1p(count) is never below 0: rounding, or imputed gaps
        fact = describe_user_feature(m["f"], raw, value)
        if fact is None or ": " not in fact:
            return None
        # what is averaged (graph.baselines.hetero_neighbor_features): "(self included)", the means of
        # each device's (item's) accounts, the account on each of its devices too, so one of its own
        # devices pulls the value to its own; "other users", the other accounts, once per shared device
        per = m.groupdict().get("other") or "device"
        if over is not None:  # the items (devices) themselves, each counted once
            how = f"over the {_PLURAL.get(per, per + 's')} it {_DID.get(over['rel'], over['rel'])}"
        elif m.groupdict().get("self"):
            how = f"averaged {per} by {per}, itself included"
        else:
            how = f"over the other accounts, once for each {per} shared"
        return f"{fact.partition(': ')[2]} ({'typical, ' if logged else ''}{how})"
