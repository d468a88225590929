from __future__ import annotations

import math

import pytest

from shopgraph.graph.wording import Reading, cites_training_labels, reason_in_words, value_in_words


@pytest.mark.parametrize("name, text, unit", [
    ("items via view: mean log_n_users", "items viewed: average number of shoppers in the training period",
     "standardised"),
    ("users sharing a device via uses: mean log_account_age_days (self included)",
     "accounts on the same devices (this one included): average account age at the end of the training period", "standardised"),
    ("other users sharing a item via purchase: mean night_share",
     "other accounts that bought the same items: average share of events at night in the training period",
     "standardised"),
    ("other users sharing a device via uses: mean user_country=DE",
     "other accounts on the same devices: share with country DE", "share"),
    # an account that shares no device (graph.explain): no average over accounts that do not exist
    ("other users sharing a device via uses: none", "no other account on the same devices", "none"),
    ("other users sharing a item via purchase: none", "no other account that bought the same items", "none"),
    ("quick purchases: mean item image features (87 columns together; value: their norm)",
     "items bought right after viewing or carting them, over all activity: what they are, judged from their pictures", "none"),
    ("items via cart: mean text features (22 columns together; value: their norm)",
     "items put in the cart: what they are, judged from their titles and descriptions", "none"),
    ("quick purchases: mean item log_price", "items bought right after viewing or carting them, over all activity: average price", "standardised"),
    ("items via view: mean item_category=gift cards", "items viewed: share with category gift cards", "share"),
    ("devices via uses: mean log_n_accounts", "devices used: average number of accounts using each in the training period",
     "standardised"),
    ("purchase events (log count)", "number of purchases (all activity)", "log_count"),
    ("log_n_view", "number of views in the training period", "standardised"),
    ("distinct devices via uses (log count)", "different devices used", "log_count"),
    ("other users via uses devices (log count of paths)", "links to other accounts through the devices used",
     "log_count"),
    ("GNN embedding (64 columns together; value: their norm)",
     "the network's summary of the account's activity", "none"),
    ("accounts sharing a device (or other identifier), labelled fraud in the training data (log count)",
     "accounts sharing a device (or other identifier), labelled fraud in the training data", "log_count"),
    ("share of purchases made within 2 min of carting or viewing the item, over all activity",
     "share of purchases made within 2 min of carting or viewing the item, over all activity", "share"),
    ("log_account_age_days", "account age at the end of the training period", "standardised"),
    ("user_signup_channel=ads", "signup channel is ads", "flag"),
    ("user_country=DE", "country is DE", "flag"),
    ("user_loyalty_score", "loyalty score", "standardised"),
    ("f3", "f3", "raw"),  # unknown: unchanged, never guessed at
])
def test_feature_names_read_as_words(name: str, text: str, unit: str) -> None:
    assert reason_in_words(name) == Reading(text, unit)  # type: ignore[arg-type]


def test_no_technical_token_survives_in_a_shops_feature_names() -> None:
    """Every column name the scorer builds for the synthetic shop's graph reads as words."""
    own = ["log_account_age_days", "has_account_age", "log_n_events", "log_n_cart", "log_n_purchase", "log_n_view",
           "log_amount_mean", "log_amount_max", "log_amount_sum", "night_share", "log_purchases_last_24h",
           "high_risk_purchase_share", "log_n_devices", "log_max_accounts_per_device", "user_country=DE"]
    item = ["has_text", "has_image", "log_n_events", "log_n_users", "log_price", "has_price", "item_category=toys"]
    device = ["log_n_accounts", "log_n_accounts_created", "log_n_events", "device_os=ios", "device_kind=phone"]
    names = list(own)
    for rel, other, feats in (("view", "item", item), ("cart", "item", item), ("purchase", "item", item),
                              ("uses", "device", device)):
        names += [f"{rel} events (log count)", f"distinct {other}s via {rel} (log count)"]
        names += [f"{other}s via {rel}: mean {g}" for g in feats]
        names += [f"users sharing a {other} via {rel}: mean {f} (self included)" for f in own]
        names += [f"other users sharing a {other} via {rel}: mean {f}" for f in own]
        names.append(f"other users via {rel} {other}s (log count of paths)")
    names += [f"quick purchases: mean item {g}" for g in item]
    for name in names:
        text = reason_in_words(name).text
        assert "log_" not in text and " via " not in text and "_" not in text, (name, text)


@pytest.mark.parametrize("unit, value, shown", [
    ("log_count", math.log1p(17), "17"), ("share", 1.0, "100%"), ("flag", 1.0, "yes"), ("flag", 0.0, "no"),
    ("standardised", -0.965, "1.0 SD below average"), ("standardised", 2.04, "2.0 SD above average"),
    ("standardised", 0.01, "about average"), ("none", 0.25, ""), ("raw", 0.123456, "0.123"),
    ("share", float("nan"), ""),
])
def test_values_read_as_their_unit(unit: str, value: float, shown: str) -> None:
    assert value_in_words(Reading("x", unit), value) == shown  # type: ignore[arg-type]


@pytest.mark.parametrize("reason, cites", [
    ("accounts sharing a device (or other identifier), labelled fraud in the training data: 17 (+2.88 log-odds)", True),
    ("accounts sharing a device (or other identifier), labelled fraud in the training data outside this account's "
     "fold: 10 (+3.16 log-odds)", True),
    ("accounts sharing a device (or other identifier): share labelled fraud among those labelled in the training "
     "data: 100% (+0.76 log-odds)", True),
    ("accounts sharing a device that bought within 2 h of this one: 29 (+1.86 log-odds)", False),
    # no co-user labelled: no label helped
    ("accounts sharing a device (or other identifier): none of them labelled in the training data (+0.20 log-odds)",
     False),
    ("items bought right after viewing or carting them, over all activity: what they are, judged from their pictures (+1.41 log-odds)",
     False),
    ("account age: 3 days (+0.41 log-odds)", False),
])
def test_reasons_that_count_other_accounts_labels_are_told_apart(reason: str, cites: bool) -> None:
    assert cites_training_labels(reason) is cites


def test_feature_facts_give_raw_values_and_neighbour_means_in_the_columns_units() -> None:
    """An explanation's values as people read them: the account's own age in days, and the mean of
    the standardised column over the accounts on its devices back in days too (a geometric mean
    for a log column), not in standard deviations; what there is no raw value for stays unsaid."""
    import numpy as np

    from shopgraph.graph.wording import FeatureFacts

    ages = np.array([3.0, 31.0, 255.0])  # 1 + age: 4, 32, 256, whose geometric mean is 32
    logs = np.log1p(ages)
    a, b = 1 / logs.std(), -logs.mean() / logs.std()  # x = a * raw + b, as encoders.behaviour standardises
    share = np.array([0.0, 0.5, 1.0])
    facts = FeatureFacts({"log_account_age_days": logs, "night_share": share},
                         {"log_account_age_days": (a, b), "night_share": (2.0, -1.0)}, as_of="2025-12-19")
    assert facts.value("log_account_age_days", a * logs[1] + b, 1) == "31 days"
    assert facts.fact("log_account_age_days", 0.0, 0) == (
        "account age at the end of the training period (2025-12-19): 3.0 days")
    mean = "users sharing a device via uses: mean log_account_age_days (self included)"
    standardised = float((a * logs + b).mean())
    # expm1 of the mean of log1p (not 96, the mean), and what is averaged: its devices' accounts,
    # device by device, the account itself on each (one device of its own pulls it to its own age)
    typical = "31 days (typical, averaged device by device, itself included)"
    assert facts.value(mean, standardised, 0) == typical
    assert facts.fact(mean, standardised, 0) == (
        f"accounts on the same devices (this one included): average account age at the end of the training "
        f"period: {typical}")
    assert facts.value("other users sharing a device via uses: mean night_share", 2.0 * 0.25 - 1.0, 2) == (
        "25% (over the other accounts, once for each device shared)")
    assert facts.value("users sharing a item via view: mean night_share (self included)", 0.0, 2) == (
        "50% (averaged item by item, itself included)")
    # a mean below what any account can have (rounding, imputed gaps) is no negative age
    assert facts.value(mean, b - 1.0, 0).startswith("0.0 days (")
    # no raw values for it: None, and the caller words the standardised value (or the fact as before)
    assert facts.value("users sharing a device via uses: mean log_n_view (self included)", -1.0, 0) is None
    assert facts.fact("users sharing a device via uses: mean log_n_view (self included)", -1.0, 0) == (
        "accounts on the same devices (this one included): average number of views in the training period: 1.0 SD "
        "below average")
    assert facts.value(mean, float("nan"), 0) is None
    assert FeatureFacts().value("log_account_age_days", -1.0, 0) is None
    # a mean over the items (devices) the account used is of the items' own column, by the items'
    # scale: an item column named as a user one (log_n_cart) is not read with the user column's
    carts = np.log1p(np.array([3.0, 15.0, 63.0]))  # items' cart adds: 1 + x is 4, 16, 64, geometric mean 16
    ia, ib = 1 / carts.std(), -carts.mean() / carts.std()
    both = FeatureFacts({"log_n_cart": np.log1p(np.array([1.0, 2.0, 3.0]))}, {"log_n_cart": (5.0, -3.0)},
                        node_scales={"item": {"log_n_cart": (ia, ib), "log_price": (2.0, -4.0)},
                                     "device": {"log_n_accounts": (1.0, -1.0)}})
    assert both.value("items via cart: mean log_n_cart", float((ia * carts + ib).mean()), 0) == (
        "15 (typical, over the items it put in the cart)")
    assert both.fact("items via view: mean log_price", 2.0 * math.log1p(19.5) - 4.0, 0) == (
        "items viewed: average price: 19.50 (typical, over the items it viewed)")
    assert both.value("devices via uses: mean log_n_accounts", math.log1p(3.0) - 1.0, 0) == (
        "3 (typical, over the devices it used)")
    # no item scales (a graph built otherwise): unsaid, as before, never the user column's
    assert FeatureFacts({"log_n_cart": carts}, {"log_n_cart": (5.0, -3.0)}).value(
        "items via cart: mean log_n_cart", 0.0, 0) is None
    # a "quick purchases" reason's value: the items behind it, where they are known
    quick = "quick purchases: mean item image features (87 columns together; value: their norm)"
    assert FeatureFacts().value(quick, 0.3, 0) is None
    named = FeatureFacts(quick=lambda u: "i1 'drone' (electronics)" if u == 0 else "")
    assert named.value(quick, 0.3, 0) == "i1 'drone' (electronics)" and named.value(quick, 0.0, 1) is None
    # a share among the quick-bought items is a share, not the items
    share = "quick purchases: mean item item_category=electronics"
    assert named.value(share, 0.333, 0) is None  # the caller words it: 33%
