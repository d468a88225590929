"""The demo in a real browser: Playwright driving Debian's Chromium against the app served by uvicorn.

Run with ``pytest -m browser tests/ui/test_browser.py``. Chromium is ``/usr/bin/chromium``; when it
is missing and the test runs as root, the setup installs it with apt (never ``playwright
install``, which downloads a browser). Screenshots go to ``docs/screenshots/`` only when
``SHOPGRAPH_SCREENSHOTS=1``, otherwise to the test's temp folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from shopgraph.graph.rings import FraudCases
from shopgraph.graph.run import RunDir
from shopgraph.retrieval.service import ShopService

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "SHOPGRAPH_SCREENSHOTS"
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TIMEOUT_MS = 30_000
SEARCH_TEXT = "blue noise-cancelling headphones"
MAX_SHOT_COLOURS = 256  # README screenshots are palette PNGs (well under 300 KB)


def _chromium() -> Path:
    """Debian's Chromium, installed with apt when missing and we are root; else skip with the reason."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root (apt-get install -y chromium)")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=900,
                       env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = (getattr(exc, "stderr", b"") or b"")[-300:].decode(errors="replace")
        pytest.skip(f"could not install chromium with apt-get ({exc}; {tail})")
    if not CHROMIUM.is_file():
        pytest.skip(f"apt-get install chromium did not provide {CHROMIUM}")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(ui_service: ShopService) -> Iterator[str]:
    """The HTTP API with the demo at /demo, served by uvicorn in a background thread."""
    import uvicorn

    from shopgraph.retrieval.api import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(ui_service), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the API server did not come up within 60 s")
        time.sleep(0.2)
    yield f"{base}/demo/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(server)
        pg.get_by_text("Each tab below says what it shows").wait_for()
        yield pg
        context.close()
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get(SCREENSHOT_ENV) == "1":
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        return SCREENSHOT_DIR
    return tmp_path_factory.mktemp("screenshots")


def _shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.wait_for_timeout(400)  # let images finish painting
    from PIL import Image

    png = page.screenshot(full_page=True)
    with Image.open(io.BytesIO(png)) as img:
        img.convert("RGB").quantize(MAX_SHOT_COLOURS, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def _close_toasts(page: Any) -> None:
    for button in page.locator(".toast-close").all():
        button.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def _tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _default_user(service: ShopService, cases: FraudCases, kind: str, fraud: bool = True) -> str:
    """The user a tab preselects (as ``build_app`` picks it: the Recommend tab from the shoppers,
    ``fraud=False``)."""
    from shopgraph.ui.app import UserHistory, default_user, sample_users

    user = default_user(sample_users(service, UserHistory(cases.tables.events, service.target), cases, fraud=fraud),
                        kind)
    assert user is not None
    return user


def _verdict_score(score: Any) -> float:
    """The score the Fraud tab's verdict leads with: a trained-on account's held-out prediction, else
    its probability (``ui.app.verdict``)."""
    held = score.held_out_probability
    return held if score.label_in_training and held is not None and math.isfinite(held) else score.probability


def test_every_tab_in_a_real_browser(page: Any, shots: Path, ui_service: ShopService, ui_cases: FraudCases,
                                     ui_run: Path, tmp_path: Path) -> None:
    user = _default_user(ui_service, ui_cases, "typical shopper", fraud=False)

    # -- Recommend: the default tab, the first typical shopper preselected
    _tab(page, "Recommend")
    expect(page.locator("#rec-status")).to_contain_text(user)  # filled on page load
    k_box = page.locator("#rec-k input[type=number]")
    for k in (3, 8):  # the button recomputes with the chosen k
        k_box.fill(str(k))
        k_box.press("Enter")
        page.get_by_role("button", name="Recommend", exact=True).click()
        expect(page.locator("#rec-gallery img")).to_have_count(k)
    rec = ui_service.recommend(user, k=8)
    expect(page.locator("#rec-table")).to_contain_text(rec.titles[0])
    expect(page.locator("#rec-table")).to_contain_text(rec.reasons[0][:30])
    expect(page.locator("#rec-gallery img")).to_have_count(8)
    assert page.locator("#rec-history img").count() > 0
    _shot(page, shots, "recommend")

    # -- a visitor with no account: nothing picked is a message; two picked items give results
    page.get_by_role("button", name="Recommend for this visitor").click()
    expect(page.locator("#rec-status")).to_contain_text("pick one or more items the visitor looked at")
    _close_toasts(page)
    from shopgraph.ui.app import sample_items

    picks = sample_items(ui_service)[:2]
    box = page.locator("#visitor-items input")
    for label, _ in picks:
        box.click()
        page.get_by_role("option", name=label, exact=True).click()
    page.get_by_role("button", name="Recommend for this visitor").click()
    expect(page.locator("#rec-status")).to_contain_text("looked at 2 items")
    cold = ui_service.recommend_for_items([i for _, i in picks], k=8)
    expect(page.locator("#rec-table")).to_contain_text(cold.titles[0])
    expect(page.locator("#rec-history img")).to_have_count(2)
    expect(page.locator("#rec-gallery img")).to_have_count(8)
    _shot(page, shots, "visitor")

    # -- Similar & search: a text query, then an empty one
    _tab(page, "Similar & search")
    expect(page.locator("#search-status")).to_contain_text("Items closest to")  # opens with the picked item's answer
    query = SEARCH_TEXT
    expected = ui_service.search(text=query, k=8)
    page.locator("#search-text textarea").fill(query)
    page.get_by_role("button", name="Search text").click()
    expect(page.locator("#search-table")).to_contain_text(expected.titles[0])
    expect(page.locator("#search-gallery img")).to_have_count(8)
    _shot(page, shots, "search")
    page.locator("#search-text textarea").fill("")
    page.get_by_role("button", name="Search text").click()
    expect(page.locator("#search-status")).to_contain_text("empty text")
    expect(page.locator(".toast-body").filter(has_text="type a few words")).to_be_visible()  # the toast too
    _close_toasts(page)

    # -- image search: an unreadable upload is a message; a real picture finds its own item
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    upload = page.locator("#search-image input[type=file]")
    upload.set_input_files(str(broken))
    expect(page.locator("#search-status")).to_contain_text("not a readable image")
    _close_toasts(page)
    item = next((i for i in ui_service.item_ids if ui_service.item_info(i)["image"]), None)
    if item is not None:
        page.locator("#search-image").get_by_role("button", name="Clear").click()
        upload.set_input_files(str(ui_service.item_info(item)["image"]))
        if "image_items" in ui_service.indexes:
            expect(page.locator("#search-table")).to_contain_text(ui_service.item_info(item)["title"])
        else:
            expect(page.locator("#search-status")).to_contain_text("image search is not available")
            _close_toasts(page)
        expect(page.locator("#search-image-preview img")).to_be_visible()
        # removing the picture (its Clear button) takes its preview and its results or message with it
        page.locator("#search-image").get_by_role("button", name="Clear").click()
        expect(page.locator("#search-image-preview img")).to_have_count(0)
        expect(page.locator("#search-gallery img")).to_have_count(0)
        expect(page.locator("#search-status")).to_have_text("")

    # -- Fraud: score the first sample user, then move the threshold both ways
    _tab(page, "Fraud")
    user = _default_user(ui_service, ui_cases, "fraud probability")
    page.get_by_role("button", name="Score").click()
    score = ui_service.score_user(user)
    expect(page.locator("#fraud-status")).to_contain_text(f"{score.probability:.3f}")
    decided = _verdict_score(score)
    expect(page.locator("#fraud-verdict")).to_contain_text(
        "FLAGGED" if decided >= score.threshold else "Not flagged")
    expect(page.locator("#fraud-reasons")).to_contain_text("reason")
    number = page.locator("#fraud-threshold input[type=number]")
    assert float(number.input_value()) == round(score.threshold, 3)  # to 3 decimals, not 0.2089774
    expect(page.locator("#fraud-flagged-count")).to_contain_text("accounts are flagged")
    above = min(1.0, round(decided + 0.02, 2))
    if above > decided:
        number.fill(f"{above}")
        number.press("Enter")
        expect(page.locator("#fraud-verdict")).to_contain_text("Not flagged")
    number.fill("0")
    number.press("Enter")
    expect(page.locator("#fraud-verdict")).to_contain_text("FLAGGED for review")
    n = int(np.isfinite(ui_service.fraud_prob).sum())
    expect(page.locator("#fraud-flagged-count")).to_contain_text(f"At this threshold {n:,} of the {n:,} accounts")
    number.fill(f"{round(score.threshold, 2)}")
    number.press("Enter")
    _shot(page, shots, "fraud")

    # -- Rings: click the top ring's row; its graph and case files appear
    _tab(page, "Rings")
    rings = ui_cases.rings()
    if rings:
        ring = rings[0]
        page.locator("#ring-table [role=gridcell]").filter(has_text=ring.ring_id, visible=True).first.click()
        expect(page.locator("#ring-status")).to_contain_text(f"Ring {ring.ring_id}")
        expect(page.locator("#ring-pick")).to_be_in_viewport()  # the page goes down to the ring, below the table
        expect(page.locator("#ring-image img")).to_be_visible()
        expect(page.locator(f"#ring-files a[href$='{ring.ring_id}.csv']")).to_have_count(1)
        expect(page.locator(f"#ring-files a[href$='{ring.ring_id}.md']")).to_have_count(1)  # the page to forward
        expect(page.locator("#ring-members")).to_contain_text(ring.members[0])
        link = page.locator(f"#ring-files a[href$='{ring.ring_id}.json']")
        expect(link).to_have_count(1)
        expect(page.locator("#ring-files button[aria-label='Remove this file']").first).to_be_hidden()  # downloads
        with urllib.request.urlopen(str(link.get_attribute("href")), timeout=10) as r:  # the download itself
            assert json.loads(r.read())["ring_id"] == ring.ring_id
    _shot(page, shots, "rings")

    # -- Model: the metrics tables against the baselines and the plots
    _tab(page, "Model")
    metrics = RunDir(ui_run).read_json("metrics.json")
    expect(page.locator("#model-purchase")).to_contain_text("ShopGraph (")
    for name in metrics["purchase"]["baselines"]:
        expect(page.locator("#model-purchase")).to_contain_text(name)
    # each plot's caption above it, not a label box drawn over the plot's own title
    expect(page.locator("#model-plot-0-caption")).to_contain_text(
        "Training, for engineers: on the left the training objective per epoch")
    expect(page.locator("#model-plot-0 [data-testid='block-label']")).to_be_hidden()
    _shot(page, shots, "model")

    # -- bad input on the Fraud tab: a typed unknown id gives a message, not a traceback
    _tab(page, "Fraud")
    box = page.get_by_label("Account")
    box.fill("no-such-user")
    box.press("Enter")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#fraud-status")).to_contain_text("Account: unknown account 'no-such-user'")
    assert page.get_by_text("Traceback").count() == 0


def test_a_phone_sized_screen_stacks_the_boxes_and_scrolls_tables_sideways(page: Any, server: str) -> None:
    """At 400 px wide the boxes of a row stack (the shopper box is not squeezed beside the slider) and
    a table keeps readable columns, scrolling sideways, rather than wrapping ids a letter a line."""
    context = page.context.browser.new_context(viewport={"width": 400, "height": 900})  # the page's browser
    try:
        phone = context.new_page()
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(server)
        phone.get_by_text("Each tab below says what it shows").wait_for()
        phone.locator("#rec-table").wait_for()
        widths = phone.evaluate("""() => {
            const wrap = document.querySelector('#rec-table .table-wrap');
            const box = document.querySelector('#rec-table .table-container');
            return [wrap.getBoundingClientRect().width, box.scrollWidth, box.clientWidth]; }""")
        assert widths[0] >= 640 and widths[1] > widths[2], widths  # wider than the screen: it scrolls
        # ... and says so above it (a phone shows no scroll bar until the table is touched)
        hint = phone.evaluate("() => getComputedStyle(document.querySelector('#rec-table'), '::before').content")
        assert "Swipe the table sideways" in hint, hint
        page.locator("#rec-table").wait_for(state="attached")  # a desktop's table fits, and says nothing of the kind
        assert page.evaluate("() => getComputedStyle(document.querySelector('#rec-table'), '::before').content") \
            in ("none", "normal")
        shopper = phone.get_by_label("Shopper").bounding_box()
        assert shopper is not None and shopper["width"] > 250  # the whole width, not half of it
        # every tab is in the tab bar, none behind a "More tabs" button
        expect(phone.get_by_role("tab")).to_have_count(5)
        # the pictures: two a row, all of them inside the gallery (none cut off at its right edge)
        phone.locator("#rec-gallery img").first.wait_for()
        inside = phone.evaluate("""() => {
            const box = document.querySelector('#rec-gallery').getBoundingClientRect();
            return Array.from(document.querySelectorAll('#rec-gallery img')).map(
                i => i.getBoundingClientRect().right <= box.right + 1); }""")
        assert inside and all(inside), inside
        # the answer to a button, a screen or two below it on a phone, is scrolled to
        phone.evaluate("window.scrollTo(0, 0)")
        phone.get_by_role("button", name="Recommend", exact=True).click()
        phone.wait_for_function("() => { const r = document.querySelector('#rec-status').getBoundingClientRect();"
                                " return r.top >= -1 && r.top < window.innerHeight / 2; }")
        phone.get_by_role("tab", name="Similar & search").click()
        phone.get_by_role("button", name="Similar items").click()
        status = phone.locator("#search-status")
        expect(status).to_contain_text("Items closest to")
        phone.wait_for_function("() => { const r = document.querySelector('#search-status').getBoundingClientRect();"
                                " return r.top >= -1 && r.top < window.innerHeight / 2; }")
        # every result's picture is inside the search gallery, none hidden below its box (it showed the top of 2 of 8)
        phone.locator("#search-gallery img").first.wait_for()
        shown = phone.evaluate("""() => {
            const box = document.querySelector('#search-gallery').getBoundingClientRect();
            return Array.from(document.querySelectorAll('#search-gallery img')).map(
                i => i.getBoundingClientRect().bottom <= box.bottom + 1); }""")
        assert len(shown) >= 4 and all(shown), shown
        phone.get_by_role("tab", name="Fraud").click()
        phone.locator("#fraud-status").wait_for()
        phone.evaluate("window.scrollTo(0, 0)")
        phone.get_by_role("button", name="Score", exact=True).click()
        phone.wait_for_function("() => { const r = document.querySelector('#fraud-status').getBoundingClientRect();"
                                " return r.top >= -1 && r.top < window.innerHeight / 2; }")
        # the ranked rings' narrowest column holds a ring id on one line
        phone.get_by_role("tab", name="Rings").click()
        phone.locator("#ring-table").wait_for()
        cell = phone.locator("#ring-table .body-cell").first
        cell.wait_for()
        box = cell.bounding_box()
        assert box is not None and box["width"] >= 56, box  # R0001 in the table's font and padding
    finally:
        context.close()


def test_fraud_threshold_out_of_range_is_a_message(page: Any, ui_service: ShopService,
                                                    ui_cases: FraudCases) -> None:
    _tab(page, "Fraud")
    user = _default_user(ui_service, ui_cases, "fraud probability")
    box = page.get_by_label("Account")
    box.fill(user)
    box.press("Enter")
    page.get_by_role("button", name="Score").click()
    score = ui_service.score_user(user)
    expect(page.locator("#fraud-status")).to_contain_text(user)
    expect(page.locator("#fraud-verdict")).to_contain_text(
        "FLAGGED" if _verdict_score(score) >= score.threshold else "Not flagged")
    _close_toasts(page)
    number = page.locator("#fraud-threshold input[type=number]")
    for typed in ("5", "-1"):
        number.fill(typed)
        number.press("Enter")
        # the stale verdict is replaced by the message, in the tab and as a toast
        expect(page.locator("#fraud-verdict")).to_contain_text("Threshold: must be between 0 and 1")
        expect(page.locator("#fraud-verdict")).not_to_contain_text("flagged", ignore_case=True)
        expect(page.locator(".toast-body").filter(has_text="Threshold: must be between 0 and 1").first).to_be_visible()
        assert page.locator(".toast-body").filter(has_text="Error").count() == 0
        _close_toasts(page)
    # scoring again keeps the chosen threshold (no silent reset to the validation one)
    number.fill("0")
    number.press("Enter")
    expect(page.locator("#fraud-verdict")).to_contain_text("FLAGGED for review")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#fraud-status")).to_contain_text(user)
    assert number.input_value() == "0"  # kept across scoring
    expect(page.locator("#fraud-verdict")).to_contain_text("FLAGGED for review")
    assert page.get_by_text("Traceback").count() == 0


def test_search_table_headers_and_user_text_shown_as_typed(page: Any) -> None:
    _tab(page, "Similar & search")
    text = "[link](http://evil.example) <img src=x onerror=alert(1)> **bold**"
    page.locator("#search-text textarea").fill(text)
    page.get_by_role("button", name="Search text").click()
    status = page.locator("#search-status")
    expect(status).to_contain_text(text)  # the characters, literally
    assert status.locator("a").count() == 0 and status.locator("img").count() == 0
    assert status.locator("strong").filter(has_text="bold").count() == 0 or "**bold**" in status.inner_text()
    expect(page.locator("#search-table")).to_contain_text("item_id")


def test_enter_in_an_emptied_box_is_a_message(page: Any, ui_cases: FraudCases) -> None:
    """Deleting a dropdown's text and pressing Enter makes Gradio pick the list's first entry: the
    app's first entry is the empty id, so the view asks for an id instead of showing the results of
    a shopper, item, account or ring nobody picked."""
    cases = [("Recommend", "Shopper", "#rec-status"), ("Similar & search", "Item", "#search-status"),
             ("Fraud", "Account", "#fraud-status")]
    if ui_cases.rings():
        cases.append(("Rings", "Ring", "#ring-status"))
    for tab, label, status in cases:
        _tab(page, tab)
        box = page.get_by_label(label, exact=True)
        box.fill("x")
        box.press("Backspace")  # a key, as a person empties the box: Gradio makes the first entry active
        box.press("Enter")
        # the message names the box as the page labels it
        expect(page.locator(status)).to_contain_text(f"{label}: pick one from the list or type an id", timeout=10_000)
        _close_toasts(page)
    assert page.get_by_text("Traceback").count() == 0


def test_typing_an_id_then_clicking_the_button_answers_once(page: Any, ui_service: ShopService,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The box's change as it loses focus and the button's click are one request: answered once
    (each problem was shown twice, 'Warning (2)', and every account scored twice)."""
    import shopgraph.ui.app as app

    calls: list[str] = []
    real = app.fraud_view

    def counted(service: Any, cases: Any, user_id: Any) -> Any:
        calls.append(str(user_id))
        return real(service, cases, user_id)

    monkeypatch.setattr(app, "fraud_view", counted)
    sessions: list[str] = []
    session = app._Requests._session

    def recorded(self: Any, request: Any) -> Any:
        sessions.append(str(getattr(request, "session_hash", None) or ""))
        return session(self, request)

    monkeypatch.setattr(app._Requests, "_session", recorded)
    _tab(page, "Fraud")
    _close_toasts(page)
    box = page.get_by_label("Account")
    for typed, shown in ((ui_service.user_ids[7], ui_service.user_ids[7]), ("ghost-7", "unknown account 'ghost-7'")):
        box.fill(typed)
        page.get_by_role("button", name="Score").click()  # the box loses focus (a change), then the click
        expect(page.locator("#fraud-status")).to_contain_text(shown)
        page.wait_for_timeout(1500)  # a second answer would have come by now
        assert calls.count(typed) == 1, calls
    expect(page.locator(".toast-body").filter(has_text="unknown account 'ghost-7'")).to_have_count(1)
    _close_toasts(page)
    page.wait_for_timeout(int(app.DUPLICATE_WINDOW_S * 1000))
    page.get_by_role("button", name="Score").click()  # later, the same id again: a new request
    expect(page.locator(".toast-body").filter(has_text="unknown account 'ghost-7'")).to_have_count(1)
    assert calls.count("ghost-7") == 2
    # the requests are told apart per browser session: Gradio hands each handler the request
    assert sessions and all(sessions) and len(set(sessions)) == 1, sessions


def test_a_threshold_moved_while_scoring_decides_the_verdict(page: Any, ui_service: ShopService,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The slider moved while a score is on its way: the verdict shown is at the slider's value, not
    at the one the request was sent with (it was, until the verdict was drawn again after scoring)."""
    import shopgraph.ui.app as app

    real = app.fraud_view

    def slow(service: Any, cases: Any, user_id: Any) -> Any:
        time.sleep(2.0)
        return real(service, cases, user_id)

    _tab(page, "Fraud")
    _close_toasts(page)
    number = page.locator("#fraud-threshold input[type=number]")
    number.fill("0.99")
    number.press("Enter")
    user = next(u for u in ui_service.user_ids[10:] if ui_service.score_user(u).probability < 0.99)
    monkeypatch.setattr(app, "fraud_view", slow)
    box = page.get_by_label("Account")
    box.fill(user)
    page.get_by_role("button", name="Score").click()  # sent with 0.99: "Not flagged" there
    number.fill("0")  # moved while the score is on its way
    number.press("Enter")
    expect(page.locator("#fraud-status")).to_contain_text(user, timeout=15_000)
    page.wait_for_timeout(1000)
    expect(page.locator("#fraud-verdict")).to_contain_text("FLAGGED for review")
    assert number.input_value() == "0"


def test_the_fraud_tab_opens_an_accounts_ring_on_the_rings_tab(page: Any, ui_cases: FraudCases) -> None:
    ring = ui_cases.rings()[0]
    member = next(iter(ring.member_scores))  # the members table's first row (a long table renders only its top)
    _tab(page, "Fraud")
    box = page.get_by_label("Account")
    box.fill(member)
    box.press("Enter")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#fraud-status")).to_contain_text(member)
    button = page.locator("#fraud-open-ring")
    expect(button).to_have_text(f"Open ring {ring.ring_id} on the Rings tab")
    button.click()
    expect(page.get_by_role("tab", name="Rings", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#ring-status")).to_contain_text(ring.ring_id)
    expect(page.locator("#ring-members")).to_contain_text(member)
    expect(page.locator("#ring-pick")).to_be_in_viewport()  # the ring itself, not the top of the ranked list
    # an account in no ring has no such button
    _tab(page, "Fraud")
    alone = next(u for u in ui_cases.data["user"].ids if not ui_cases.has_user(u) or not ui_cases.rings_of(u))
    box.fill(alone)
    box.press("Enter")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#fraud-status")).to_contain_text(alone)
    expect(button).to_be_hidden()


def test_the_api_docs_page_renders_the_schema_offline(page: Any, server: str) -> None:
    """Swagger UI from the installed package reads FastAPI's OpenAPI 3.1 schema (version 4 could
    not: "Unable to render this definition"), and ReDoc renders it, with no request leaving the machine."""
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "blob:", "data:")) else outside.append(r.url))
    page.goto(server.replace("/demo/", "/docs"))
    expect(page.locator(".opblock-summary-path").filter(has_text="/recommend/batch").first).to_be_visible()
    assert page.get_by_text("Unable to render this definition").count() == 0
    page.goto(server.replace("/demo/", "/redoc"))
    expect(page.get_by_text("/recommend/batch").first).to_be_attached()
    assert outside == []  # ReDoc's footer logo too: served as an empty picture, not from Redocly's CDN
    page.goto(server)
    page.get_by_text("Each tab below says what it shows").wait_for()
