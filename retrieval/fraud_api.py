"""HTTP endpoints for fraud investigators: ranked rings, one ring's case, one user's explanation,
every account on one device.

``fraud_router`` returns a FastAPI ``APIRouter``; the application includes it::

    cases = FraudCases.from_run(run_dir)            # shopgraph.graph.rings
    app.include_router(fraud_router(cases.rings, explain=cases.explain, timeline=cases.timeline))

Contract: ``GET /fraud/rings?top=`` (1 <= top <= ``max_top``, else 422), ``GET /fraud/ring/{ring_id}``,
``GET /fraud/explain?user_id=`` and ``GET /fraud/device/{device_id}`` (unknown ids: 404 naming the id). Errors raised by the
callables are mapped to 4xx (``KeyError`` 404, ``ValueError``/``TypeError`` 422) and an absent
capability to 503, so a client never sees a 500 for bad input.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from shopgraph.graph.explain import MAX_OTHERS, TOP_K, Explanation, feature_dict
from shopgraph.graph.messages import known_ids
from shopgraph.graph.rings import (
    SCHEMA_VERSION,
    Ring,
    find_ring,
    flagged_ids,
    json_text,
    known_fraud,
    predicted,
    ring_hint,
)
from shopgraph.graph.wording import ValueWords
from shopgraph.retrieval.params import ApiError, ErrorOut, strict_query
from shopgraph.retrieval.service import as_prediction, shown, what_probability_is

logger = logging.getLogger(__name__)


class RingEvidence(BaseModel):
    """The numbers behind a ring's score (``docs/fraud_rings.md``); absent values are null."""

    size: int | None = Field(None, description="members")
    shared_device_count: int | None = Field(None, description="devices used by at least two members")
    shared_identifier_count: int | None = Field(None, description="identifiers of every type used by at least two "
                                                                  "members")
    shared_identifiers: dict[str, list[str]] = Field(default_factory=dict,
                                                     description="those identifiers, by node type")
    accounts_per_identifier: float | None = Field(None, description="members per shared identifier (how tightly "
                                                                     "they share)")
    median_account_age_days: float | None = Field(
        None, description="the members' median days from sign-up to their first event (not the fraud reasons' "
                          "account age, which is measured at the end of the training period)")
    purchase_velocity: float | None = Field(None, description="the members' median purchases a day, from their first "
                                                              "event of any kind to their last purchase (at least one "
                                                              "day)")
    high_risk_share: float | None = Field(
        None, description="the members' median share of purchase amount (not of purchases) in high-risk categories "
                          "(electronics, gift cards)")
    n_purchases: int | None = Field(None, description="the members' purchases, all together")
    purchase_amount: float | None = Field(None, description="the members' purchase amount, all together")
    gnn_mean: float | None = Field(None, description="the mean of the members' served fraud probabilities (whichever "
                                                     "scorer serves, despite the name)")
    gnn_max: float | None = Field(None, description="the highest of them")
    predicted_mean: float | None = Field(
        None, description="the same with a trained-on member's held-out score for its served one: the predictions "
                          "the ring is ranked on")
    predicted_max: float | None = Field(None, description="the highest of those predictions")
    score_terms: dict[str, float] = Field(default_factory=dict,
                                          description="the terms in [0, 1] whose weighted mean is the ring's score "
                                                      "(gnn: predicted_mean; young, velocity, high_risk: how far "
                                                      "the members stand out from all accounts; size, density)")
    mode: str | None = Field(None, description="which terms were available: gnn+behaviour+structure, "
                                               "behaviour+structure or structure")


class RingOut(BaseModel):
    ring_id: str = Field(description="R0001 for the highest-ranked ring, R0002 next, ...")
    rank: int
    score: float = Field(description="the ranking score in [0, 1]: a weighted mean of evidence.score_terms (half of "
                                     "it the members' predicted fraud probabilities), not a probability; a household "
                                     "of ordinary accounts sharing a device scores about 0.3")
    members: list[str] = Field(description="user ids, sorted")
    shared_devices: list[str] = Field(description="devices used by at least two members")
    member_scores: dict[str, float] = Field(
        description="each member's served fraud probability, highest first (without a fraud scorer: the mean of its "
                    "behaviour terms, or the share of the ring's shared identifiers it uses); for a member the "
                    "scorer was trained on it is fitted to its label: member_labels' held_out_probability is the "
                    "prediction")
    evidence: RingEvidence
    known_fraud: int | None = Field(None, description="members the shop's data labels fraud (null: no labels given)")
    known_fraud_trained_on: int | None = Field(
        None, description="of those, the ones whose label the scorer was trained on: their member scores are fitted "
                          "to the label, not predicted")
    flagged: int | None = Field(
        None, description="members whose prediction is at or above the validation threshold: a member's held-out "
                          "score where the scorer was trained on it (as /fraud/score's held_out_flagged), its member "
                          "score otherwise; the members whose predicted_flagged is true (null without a fraud "
                          "scorer)")
    flagged_members: list[str] | None = Field(
        None, description="the members flagged counts, the most likely fraud first: a member listed here may have a "
                          "member score below the threshold when the scorer was trained on its label (its "
                          "prediction is its held-out score; /fraud/ring/{ring_id} gives it)")


class RingsOut(BaseModel):
    schema_version: str
    total: int = Field(description="rings known")
    count: int = Field(description="rings returned")
    rings: list[RingOut]


class TimelineEvent(BaseModel):
    timestamp: int | None
    time: str
    user_id: str
    event_type: str
    item_id: str
    title: str
    category: str
    amount: float | None
    device_id: str
    shared_device: bool


class MemberLabelOut(BaseModel):
    label: bool | None = Field(description="the account's is_fraud label in the shop's data (null: unlabelled)")
    label_in_training: bool = Field(description="the scorer was trained on this label, so the member's score "
                                                "is fitted to it rather than predicted")
    held_out_probability: float | None = Field(
        None, description="for a member the scorer was trained on: its score from the same trees refitted without "
                          "its label (null for the other members, and when the run has no held-out scores)")
    flagged: bool | None = Field(
        None, description="its member score at or above the validation threshold, as /fraud/score's flagged "
                          "(null without a fraud scorer)")
    held_out_flagged: bool | None = Field(
        None, description="its held_out_probability at or above the threshold, as /fraud/score's held_out_flagged "
                          "(null without one)")
    predicted_flagged: bool | None = Field(
        None, description="its prediction at or above the threshold: held_out_flagged for a member the scorer was "
                          "trained on (its flagged judges a score fitted to its label), flagged otherwise; the "
                          "verdicts the ring's flagged counts (null without a fraud scorer)")


class RingCaseOut(RingOut):
    schema_version: str
    timeline: list[TimelineEvent] | None = Field(None, description="null when the server has no tables")
    member_labels: dict[str, MemberLabelOut] | None = Field(
        None, description="each member's fraud label (null when the server has no labels to give)")


class DeviceAccountOut(BaseModel):
    user_id: str
    first_seen: int | None = Field(description="its first event on the device (epoch seconds; null: untimed events)")
    last_seen: int | None = Field(description="its last event on the device")
    first_seen_time: str | None = Field(None, description="first_seen in UTC, as a ring timeline's time "
                                                          "(2025-12-19T08:30:00Z)")
    last_seen_time: str | None = Field(None, description="last_seen in UTC")
    events: int = Field(description="its events on the device")
    purchases: int = Field(description="its purchases on the device")
    label: bool | None = Field(description="its is_fraud label in the shop's data (null: unlabelled)")
    label_in_training: bool = Field(description="the scorer was trained on that label")
    probability: float | None = Field(description="its served fraud probability (null: no scorer)")
    flagged: bool | None = Field(description="that probability at or above the validation threshold")
    held_out_probability: float | None = Field(description="for an account the scorer was trained on, its score "
                                                           "with its label held out")
    held_out_flagged: bool | None = Field(description="that score at or above the threshold")
    probability_is: str = Field(description="what probability is: 'prediction', or 'fitted to its label' for an "
                                            "account the scorer was trained on, as /fraud/score says")
    predicted_flagged: bool | None = Field(
        description="the verdict on its prediction: held_out_flagged for an account the scorer was trained on (with "
                    "a held-out score), flagged otherwise; as a ring's members' predicted_flagged")


class DeviceOut(BaseModel):
    device_id: str
    count: int = Field(description="accounts that used the device")
    accounts: list[DeviceAccountOut] = Field(description="every one of them, the first to use it first")


class FeatureOut(BaseModel):
    name: str = Field(description="the scorer's column (or group of embedding columns) as it names it, for "
                                  "integrators")
    reason: str = Field(description="the same in words, as /fraud/score's reasons name it")
    value: float = Field(description="the value the scorer read (standardised for the user's own behaviour "
                                     "features; log1p of a count for the '(log count)' columns; for grouped "
                                     "embedding columns their norm)")
    value_in_words: str = Field(description="the value as people read it: the account's own features as "
                                            "/fraud/score's reasons give them (`42 days`, `67%`), a mean over the "
                                            "accounts on its devices in the same units, saying what is averaged "
                                            "(`12 days (typical, averaged device by device, itself included)`), "
                                            "a count (`8` for a log count of 2.197), "
                                            "a share (`100%`), yes/no, `1.4 SD below average` for a mean of a "
                                            "column the server has no raw values for; for a 'quick purchases' "
                                            "reason the items behind it, as /fraud/score names them; empty when it "
                                            "means nothing to a reader (another norm of embedding columns)")
    attribution: float = Field(description="the feature's contribution to the fraud log-odds (see `method` "
                                           "and `base_value`); for method behaviour_zscore, the z-score")


class NeighbourOut(BaseModel):
    node_type: str
    node_id: str
    attribution: float = Field(description="method tree_shap+shared_identifiers or behaviour_zscore: how many "
                                           "other accounts share this identifier (a count, not a contribution); "
                                           "occlusion: the change of the fraud log-odds without this neighbour")
    others: list[str] = Field(default_factory=list, description=(
        f"the other accounts on this identifier, ids sorted, the first {MAX_OTHERS} of them (`attribution` "
        "counts them all); empty for occlusion"))


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {404: "unknown id (the message names it)", 422: "invalid parameter (the message names it and the value)",
            503: "the server cannot give this (no run loaded)"}
    return {code: {"model": ErrorOut, "description": what[code]} for code in codes}


class HeldOutExplanationOut(BaseModel):
    score: float = Field(description="the held-out probability")
    features: list[FeatureOut] = Field(description=f"its {TOP_K} largest contributions, as `features`")
    base_value: float | None = Field(description="as `base_value`, of the fold's trees")
    unlisted_attribution: float | None = Field(description="as `unlisted_attribution`")


class ExplanationOut(BaseModel):
    user_id: str
    score: float | None
    method: str
    features: list[FeatureOut]
    neighbours: list[NeighbourOut]
    label: bool | None = Field(None, description="the account's is_fraud label in the shop's data (null: unlabelled, "
                                                 "or no labels given)")
    label_in_training: bool | None = Field(None, description="the scorer was trained on that label, so `score` is "
                                                             "fitted to it rather than predicted (null: no labels given)")
    held_out_probability: float | None = Field(
        None, description="for an account the scorer was trained on: its score from the same trees refitted without "
                          "its label (null for the other accounts, and when the run has no held-out scores)")
    base_value: float | None = Field(
        None, description="method tree_shap+shared_identifiers: the trees' base value, the log-odds every account "
                          "starts from; base_value + the listed attributions + unlisted_attribution = "
                          "log(score / (1 - score)) (null for the other methods)")
    unlisted_attribution: float | None = Field(
        None, description="method tree_shap+shared_identifiers: the contributions of every feature not listed, "
                          "summed (null for the other methods)")
    neighbours_total: int | None = Field(
        None, description="how many neighbours there were before the list was cut to its first "
                          f"{TOP_K}: the account's identifiers (occlusion: the neighbours occluded); more "
                          "than the neighbours listed means the list is cut")
    threshold: float | None = Field(None, description="the validation threshold the verdicts compare with")
    flagged: bool | None = Field(None, description="score at or above the threshold, as /fraud/score's flagged (null: "
                                                   "no threshold, or a method other than the served trees')")
    held_out_flagged: bool | None = Field(None, description="held_out_probability at or above the threshold: the "
                                                            "verdict on a trained-on account's prediction")
    held_out: HeldOutExplanationOut | None = Field(
        None, description="for an account the scorer was trained on: why its held_out_probability is what it is "
                          "(the trees of its fold, which never saw its label), the explanation behind "
                          "held_out_flagged; null for the other accounts")


def _utc(seconds: int | None) -> str | None:
    """Epoch seconds as a UTC time, as ring timelines write it (``2025-12-19T08:30:00Z``)."""
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ring_out(ring: Ring, rank: int, labels: dict[str, tuple[bool | None, bool]] | None = None,
              flagged: list[str] | None = None) -> RingOut:
    evidence = {k: _clean(v) for k, v in ring.evidence.items() if k in RingEvidence.model_fields}
    fraud, trained = known_fraud(labels) if labels is not None else (None, None)
    return RingOut(ring_id=ring.ring_id, rank=rank, score=ring.score, members=list(ring.members),
                   shared_devices=list(ring.shared_devices), member_scores=dict(ring.member_scores),
                   evidence=RingEvidence(**evidence), known_fraud=fraud, known_fraud_trained_on=trained,
                   flagged=None if flagged is None else len(flagged), flagged_members=flagged)


def fraud_router(
    get_rings: Callable[[], Sequence[Ring]],
    *,
    explain: Callable[[str], Explanation] | None = None,
    timeline: Callable[[str], pd.DataFrame] | None = None,
    labels: Callable[[Sequence[str]], dict[str, tuple[bool | None, bool]]] | None = None,
    has_user: Callable[[str], bool] | None = None,
    hint: Callable[[str], str] | None = None,
    held_out: Callable[[Sequence[str]], dict[str, float | None]] | None = None,
    threshold: float | None = None,
    device_accounts: Callable[[str], pd.DataFrame] | None = None,
    explain_held_out: Callable[[str], Explanation | None] | None = None,
    value_words: Callable[[str], ValueWords] | None = None,
    case: Callable[[str], dict[str, Any]] | None = None,
    max_top: int = 500,
    prefix: str = "/fraud",
) -> APIRouter:
    """The fraud endpoints.

    Args:
        get_rings: returns the ranked rings (called per request, so a reloaded run is served).
        explain: ``user_id -> Explanation``; raises ``KeyError`` for an unknown user. ``None``:
            ``/fraud/explain`` answers 503.
        timeline: ``ring_id -> DataFrame`` (:func:`shopgraph.graph.explain.ring_timeline` columns);
            ``None``: ring cases carry ``timeline: null``.
        labels: ``user_ids -> {user_id: (label, label_in_training)}``
            (:meth:`shopgraph.graph.rings.FraudCases.labels`); ``None``: ``member_labels: null``.
        has_user: whether a user id is known, so that ``/fraud/rings?user_id=`` of an unknown
            account is a 404 rather than no rings (``None``: never a 404).
        hint: what an unknown user id's 404 adds (the known id it is in another case,
            :meth:`shopgraph.graph.rings.FraudCases.user_hint`); ``None``: nothing.
        held_out: ``user_ids -> {user_id: held-out score or None}``
            (:meth:`shopgraph.graph.rings.FraudCases.held_out`) for the members' and explained
            accounts' ``held_out_probability``; ``None``: always null.
        threshold: the validation threshold, for the members' ``flagged`` and ``held_out_flagged``
            (:attr:`shopgraph.graph.rings.FraudCases.threshold`); ``None``: both null.
        explain_held_out: ``user_id -> Explanation | None`` of a trained-on account's held-out score
            (:meth:`shopgraph.graph.rings.FraudCases.explain_held_out`); ``None``: ``held_out`` null.
        value_words: ``user_id -> (feature name, value -> words)``: the account's features as
            people read them (:meth:`shopgraph.retrieval.service.ShopService.feature_value_words`:
            "86 days", as ``/fraud/score``'s reasons give them, not "1.0 SD below average"; raises
            ``KeyError`` for an unknown account); ``None``: ``value_in_words`` from the value the
            scorer read.
        device_accounts: ``device_id -> DataFrame`` of every account on a device
            (:meth:`shopgraph.graph.rings.FraudCases.device_accounts`; ``KeyError`` for an unknown
            device); ``None``: ``/fraud/device/{device_id}`` answers 503.
        case: ``ring_id ->`` the ring's case document, as ``shopgraph rings --export`` writes it
            (:meth:`shopgraph.graph.rings.FraudCases.case`; ``KeyError`` for an unknown ring);
            ``None``: ``/fraud/case/{ring_id}`` answers 503.
        max_top: largest ``top`` accepted by ``/fraud/rings``.
        prefix: the routes' prefix.

    Returns:
        An ``APIRouter`` with ``GET {prefix}/rings``, ``{prefix}/ring/{ring_id}``, ``{prefix}/case/{ring_id}``,
        ``{prefix}/explain`` and ``{prefix}/device/{device_id}``.
    """
    if max_top < 1:
        raise ValueError(f"max_top: expected a positive integer (got {max_top})")
    router = APIRouter(prefix=prefix, tags=["fraud"])

    def at_or_above(score: float | None) -> bool | None:
        """A score's verdict at the validation threshold (``None``: no threshold, or no score)."""
        return None if threshold is None or score is None or score != score else score >= threshold

    def held_scores(r: Ring) -> dict[str, float | None]:
        """The members' held-out scores (those of the accounts trained on; empty without them)."""
        try:
            return held_out(list(r.member_scores)) if held_out is not None else {}
        except KeyError:  # a ring of other users than the graph's: their member scores as they are
            return {}

    def flagged_members(r: Ring, held: dict[str, float | None] | None = None) -> list[str] | None:
        """Members whose prediction (a trained-on one's held-out score, ``held`` when looked up
        already) is at or above the threshold."""
        return flagged_ids(r, held_scores(r) if held is None else held, threshold)

    @router.get("/rings", response_model=RingsOut, summary="Ranked fraud rings", responses=_errors(404, 422),
                dependencies=[Depends(strict_query(("top", "user_id"), ints={"top": (1, max_top)},
                                                   non_empty=("user_id",)))])
    def rings(top: int = Query(20, ge=1, le=max_top, description=f"how many rings, 1..{max_top}"),
              user_id: str | None = Query(None, description="only the rings this account is a member of")) -> RingsOut:
        ranked = list(enumerate(get_rings(), start=1))  # ranks are the rings' places among all
        if user_id is not None:
            key = user_id.strip()  # ids are stored without surrounding spaces
            if has_user is not None and not has_user(key):
                raise ApiError(404, f"user_id: unknown user {shown(user_id)}{hint(key) if hint else ''}", "unknown_user",
                               [user_id])
            ranked = [(k, r) for k, r in ranked if key in r.members]
        chosen = ranked[:top]
        return RingsOut(schema_version=SCHEMA_VERSION, total=len(ranked), count=len(chosen),
                        rings=[_ring_out(r, k, members_labels(r), flagged_members(r)) for k, r in chosen])

    def members_labels(r: Ring) -> dict[str, tuple[bool | None, bool]] | None:
        """The ring members' labels (``None``: none given, or not for these users)."""
        if labels is None:
            return None
        try:
            return labels(r.members)
        except KeyError as exc:  # a ring of other users than the graph's: its case without labels
            logger.warning("ring %s: member labels left out (%s)", r.ring_id, exc)
            return None

    @router.get("/case/{ring_id}", summary="One ring's case file, as `shopgraph rings --export` writes it",
                responses={200: {"description": "the case document (docs/fraud_rings.md: members, evidence, "
                                                "timeline, the most likely fraud members explained), written now"},
                           **_errors(404, 422, 503)},
                dependencies=[Depends(strict_query(()))])
    def case_document(ring_id: str) -> Response:
        if case is None:
            raise HTTPException(503, "case files are not available on this server (no tables loaded)")
        _, r = find(ring_id)
        return Response(json_text(case(r.ring_id)), media_type="application/json")  # the exported file's bytes

    def find(ring_id: str) -> tuple[int, Ring]:
        """The ring's rank and the ring ``ring_id`` names, as the demo's Ring box takes it (spaces
        aside, in any case); 404 naming an unknown one and what ring ids look like."""
        ranked = list(get_rings())
        at = find_ring(ranked, ring_id)
        if at is None:
            known = known_ids(len(ranked), "ring", ranked[0].ring_id if ranked else None)
            raise ApiError(404, f"ring_id: unknown ring {shown(ring_id)}{ring_hint(ranked, ring_id)} ({known})",
                           "unknown_ring", [ring_id])
        return at + 1, ranked[at]

    @router.get("/ring/{ring_id}", response_model=RingCaseOut, summary="One ring's case", responses=_errors(404, 422),
                dependencies=[Depends(strict_query(()))])
    def ring(ring_id: str) -> RingCaseOut:
        rank, r = find(ring_id)
        events: list[TimelineEvent] | None = None
        if timeline is not None:
            try:
                frame = timeline(r.ring_id)
            except KeyError:
                raise ApiError(404, f"ring_id: unknown ring {shown(ring_id)} (no timeline)", "unknown_ring",
                               [ring_id]) from None
            # to_json turns NaN into null and numpy scalars into JSON numbers
            events = [TimelineEvent(**row) for row in json.loads(frame.to_json(orient="records"))]
        got = members_labels(r)
        held = held_scores(r)  # once: the members' verdicts and the ring's count read the same scores
        prediction = predicted(r, held) if r.evidence.get("gnn_mean") is not None else {}  # as count_flagged
        member_labels = (None if got is None else
                         {u: MemberLabelOut(label=label, label_in_training=trained, held_out_probability=held.get(u),
                                            flagged=at_or_above(r.member_scores.get(u)),
                                            held_out_flagged=at_or_above(held.get(u)),
                                            predicted_flagged=at_or_above(prediction.get(u)))
                          for u, (label, trained) in got.items()})
        out = _ring_out(r, rank, got, flagged_members(r, held))
        return RingCaseOut(**out.model_dump(), schema_version=SCHEMA_VERSION, timeline=events,
                           member_labels=member_labels)

    @router.get("/device/{device_id}", response_model=DeviceOut, summary="Every account that used a device",
                responses=_errors(404, 422, 503), dependencies=[Depends(strict_query(()))])
    def device(device_id: str) -> DeviceOut:
        if device_accounts is None:
            raise HTTPException(503, "device lookups are not available on this server (no tables loaded)")
        try:
            table = device_accounts(device_id.strip())  # ids are stored without surrounding spaces
        except KeyError as exc:
            raise ApiError(404, f"device_id: {exc.args[0] if exc.args else 'unknown device'}",
                           "unknown_device", [device_id]) from None

        def number(value: Any) -> float | None:
            return None if value is None or value != value else float(value)

        accounts = []
        for row in table.itertuples(index=False):
            p, held = number(row.probability), number(row.held_out_probability)
            first = None if number(row.first_seen) is None else int(row.first_seen)
            last = None if number(row.last_seen) is None else int(row.last_seen)
            accounts.append(DeviceAccountOut(
                user_id=row.user_id, first_seen=first, last_seen=last, first_seen_time=_utc(first),
                last_seen_time=_utc(last), events=int(row.events),
                purchases=int(row.purchases), label=None if row.label is None else bool(row.label),
                label_in_training=bool(row.label_in_training), probability=p, flagged=at_or_above(p),
                held_out_probability=held, held_out_flagged=at_or_above(held),
                probability_is=what_probability_is(bool(row.label_in_training)),
                predicted_flagged=at_or_above(as_prediction(p, held, bool(row.label_in_training)))))
        return DeviceOut(device_id=device_id.strip(), count=len(accounts), accounts=accounts)

    @router.get("/explain", response_model=ExplanationOut, summary="Why a user scores as they do",
                responses=_errors(404, 422, 503),
                dependencies=[Depends(strict_query(("user_id",), non_empty=("user_id",)))])
    def explain_user(user_id: str = Query(..., description="the user's id")) -> ExplanationOut:
        if explain is None:
            raise HTTPException(503, "explanations are not available on this server (no run loaded)")
        given, user_id = user_id, user_id.strip()  # ids are stored without surrounding spaces
        try:
            ex = explain(user_id)
        except KeyError:
            raise ApiError(404, f"user_id: unknown user {shown(given)}{hint(user_id) if hint else ''}",
                           "unknown_user", [given]) from None
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, str(exc)) from exc
        label, trained, held = None, None, None
        if labels is not None:
            try:
                label, trained = labels([user_id])[user_id]
                held = held_out([user_id])[user_id] if held_out is not None else None
            except KeyError:  # explained but not among the labelled graph's users: no label to give
                pass
        try:
            words = value_words(user_id) if value_words is not None else None
        except (KeyError, ValueError):  # an account the service does not know: the scorer's values in words
            words = None

        def feature_out(f: Any) -> FeatureOut:  # the account's own values as /fraud/score reads them
            return FeatureOut(**feature_dict(f, words))

        hx = explain_held_out(user_id) if explain_held_out is not None and held is not None else None
        held_out_out = None if hx is None else HeldOutExplanationOut(
            score=hx.score, features=[feature_out(f) for f in hx.features],
            base_value=_clean(hx.base), unlisted_attribution=_clean(hx.unlisted))
        return ExplanationOut(
            user_id=ex.user_id, score=ex.score, method=ex.method,
            features=[feature_out(f) for f in ex.features],
            neighbours=[NeighbourOut(**{**n._asdict(), "others": list(n.others)}) for n in ex.neighbours],
            label=label, label_in_training=trained, held_out_probability=held,
            base_value=_clean(ex.base), unlisted_attribution=_clean(ex.unlisted), neighbours_total=ex.neighbours_total,
            # the verdict on the served score: only the served trees' explanation has it as its score
            threshold=threshold, flagged=at_or_above(ex.score) if ex.method.startswith("tree_shap") else None,
            held_out_flagged=at_or_above(held),
            held_out=held_out_out,
        )

    return router
