"""The annotation UI in a real browser (Playwright driving Debian's chromium), used as people use it.

Annotators log in through the form, play the clip with the keyboard and watch the spoken word light up, then
accept, edit and reject items with the keys; a second annotator disagrees, a reviewer settles the conflict,
and `pallm review export` writes what they did back to the dataset.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli
from playwright.sync_api import Browser, Page, expect, sync_playwright
from review_helpers import PASSWORDS, add_users, review_server
from sqlalchemy import select

from pallm.review.db import open_db
from pallm.review.models import Adjudication, Decision, Item, User

CHROMIUM = shutil.which("chromium")
SCREENSHOT = ROOT / "test-output" / "annotation-item.png"
# What the edit step changes in the teacher's rationale (every rules-teacher rationale mentions the voice).
OLD_WORD, NEW_WORD = "voice", "delivery"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
]


def _item_id(page: Page) -> int:
    """The review-store id of the item the page shows, from its URL."""
    m = re.search(r"/(?:items|adjudicate)/(\d+)", page.url)
    assert m, f"not an item page: {page.url}"
    return int(m[1])


def _row(url: str, model: type[Decision] | type[Adjudication], item_id: int, user: str | None = None) -> Any:
    """The stored decision (or adjudication) on an item, read straight from the review database."""
    with open_db(url) as sessions, sessions() as s:
        q = select(model).where(model.item_id == item_id)
        if user is not None:
            q = q.join(User, User.id == model.user_id).where(User.name == user)
        return s.scalar(q)


def _row_id(url: str, item_id: int) -> str:
    with open_db(url) as sessions, sessions() as s:
        return s.get(Item, item_id).row_id


@contextmanager
def _person(browser: Browser, errors: list[str]) -> Iterator[Page]:
    """A fresh browser profile (own cookies) with one tab whose script errors and console errors are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: page error: {e}"))
    # Console errors catch what pageerror does not: CSP violations, failed requests (the audio), 4xx/5xx.
    page.on("console", lambda m: errors.append(f"{page.url}: console: {m.text}") if m.type == "error" else None)
    try:
        yield page
    finally:
        context.close()


def _log_in(page: Page, base: str, path: str, name: str) -> None:
    """Open `path`, get sent to the login form, fill it in and submit it; ends back on `path` (or where it leads)."""
    page.goto(f"{base}{path}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(PASSWORDS[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("header .who")).to_contain_text(name)


def _arrive(page: Page, url: str) -> None:
    """Wait for the page at `url` (a regex) to be loaded, so item.js listens before any key is pressed."""
    expect(page).to_have_url(re.compile(url))
    page.wait_for_load_state("load")


def _play_and_watch(page: Page) -> None:
    """Space plays the clip; the highlighted word follows the audio, in the order of the words' timestamps."""
    expect(page.locator("#transcript .word").first).to_be_visible()
    page.keyboard.press(" ")
    expect(page.locator("#play")).to_contain_text("Pause")
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + 5
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.evaluate(
            """() => {
                const w = document.querySelector('#transcript .word.current');
                const a = document.getElementById('audio');
                const n = document.querySelectorAll('#transcript .word.current').length;
                return {word: w && w.textContent, s: w && parseFloat(w.dataset.s), t: a.currentTime,
                        ended: a.ended, n, time: document.getElementById('time').textContent};
            }"""
        )
        assert state["n"] <= 1, "more than one word highlighted at once"
        if state["word"] is not None and (not seen or seen[-1][0] != state["word"]):
            # The highlighted word must be the one being said right now.
            assert state["s"] <= state["t"] + 0.3, state
            seen.append((state["word"], state["s"]))
        if state["ended"]:
            break
        time.sleep(0.04)
    assert len(seen) >= 2, f"the highlight did not move while the clip played: {seen}, last state {state}"
    starts = [s for _, s in seen]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), f"words lit out of order: {seen}"
    assert state["t"] > 1.5, f"audio did not advance: {state}"
    assert state["time"] != "0.00 s", state
    # `]` is one step faster on the speed list.
    page.keyboard.press("]")
    assert page.evaluate("document.getElementById('audio').playbackRate") == 1.25
    expect(page.locator("#speed")).to_have_value("1.25")
    # Clicking a word seeks to it and lights it (also leaves a highlighted word for the screenshot).
    third = page.locator("#transcript .word").nth(2)
    third.click()
    expect(third).to_have_class(re.compile(r"\bcurrent\b"))
    start = float(third.get_attribute("data-s") or "nan")
    assert abs(page.evaluate("document.getElementById('audio').currentTime") - start) < 0.05
    # The waveform is drawn from the stored peaks: grey bars ahead of the playhead, blue ones behind it.
    colours = page.evaluate(
        """() => {
            const c = document.getElementById('wave');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let played = 0, ahead = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i] === 0x24 && d[i + 1] === 0x63 && d[i + 2] === 0xeb) played++;
                if (d[i] === 0x9a && d[i + 1] === 0xa7 && d[i + 2] === 0xbd) ahead++;
            }
            return {played, ahead};
        }"""
    )
    assert colours["played"] > 500 and colours["ahead"] > 500, colours


def test_annotate_adjudicate_export_in_browser(reviewable: Path, tmp_path: Path, free_port: int) -> None:
    """Two annotators and a reviewer work through real items in chromium; the database and the export agree."""
    dataset = tmp_path / "dataset"
    shutil.copytree(reviewable, dataset)
    url = f"sqlite:///{tmp_path / 'review.sqlite'}"
    env = dict(os.environ)
    r = run_cli(["review", "import", str(dataset), "--sample", "4", "--overlap", "2", "--db", url], env=env)
    assert r.returncode == 0, r.stderr
    add_users(url)
    errors: list[str] = []

    with review_server(url, free_port, tmp_path / "server.log") as (base, _), sync_playwright() as p:
        # Autoplay policy off: headless chromium has no user to satisfy beyond the key presses.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])

        with _person(browser, errors) as page:
            # ann1 asks for work, has to log in first, and lands on an item.
            _log_in(page, base, "/next", "ann1")
            _arrive(page, r"/items/\d+$")
            first = _item_id(page)
            _play_and_watch(page)

            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.unlink(missing_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 20_000

            # `a` accepts and moves on to the next item, which says the decision was saved.
            page.keyboard.press("a")
            _arrive(page, rf"/items/\d+\?saved={first}$")
            expect(page.locator("#saved")).to_contain_text(_row_id(url, first))
            second = _item_id(page)
            assert second != first
            d = _row(url, Decision, first, "ann1")
            assert (d.decision, d.reasons, d.rationale, d.version) == ("accept", [], None, 1)

            # `e` opens the editors with the rationale focused; typing there must not trigger the letter keys.
            page.keyboard.press("e")
            editor = page.locator("#edit-rationale")
            expect(editor).to_be_visible()
            expect(editor).to_be_focused()
            expect(page.locator("#save-edit")).to_be_visible()
            teacher = editor.input_value()
            assert re.search(rf"\b{OLD_WORD}\b", teacher), teacher
            edited = re.sub(rf"\b{OLD_WORD}\b", NEW_WORD, teacher, count=1)
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type(edited)
            # Every letter typed stayed text (none was taken as a shortcut: "a" would have accepted the item).
            expect(editor).to_have_value(edited)
            expect(page).to_have_url(re.compile(rf"/items/{second}\?saved={first}$"))
            page.keyboard.press("Control+Enter")
            _arrive(page, rf"/items/\d+\?saved={second}$")
            third = _item_id(page)
            d = _row(url, Decision, second, "ann1")
            assert (d.decision, d.rationale, d.reply, d.reasons) == ("edit", edited, None, [])

            # Reopening the edited item shows the edit as a word diff against the teacher's text.
            page.goto(f"{base}/items/{second}")
            diff = page.locator("#diff-rationale")
            expect(diff.locator("del")).to_have_text(OLD_WORD)
            expect(diff.locator("ins")).to_have_text(NEW_WORD)
            expect(page.locator("#current")).to_contain_text("edit")
            # `n` goes back to the queue: the item handed out and not yet decided.
            page.keyboard.press("n")
            _arrive(page, rf"/items/{third}$")

            # A rejection without a reason is refused and says why...
            page.keyboard.press("r")
            expect(page.locator("#reasons")).to_be_visible()
            page.keyboard.press("Control+Enter")
            expect(page.locator("#error")).to_contain_text("at least one reason")
            page.wait_for_load_state("load")  # the page with the error is a new document
            assert _row(url, Decision, third, "ann1") is None
            # ...`r`, `1` ticks the first reason; `c` writes a comment, Escape leaves it; ctrl+Enter saves.
            page.keyboard.press("r")
            page.keyboard.press("1")
            expect(page.locator('#reasons input[data-key="1"]')).to_be_checked()
            expect(page.locator('#reasons input[data-key="2"]')).not_to_be_checked()
            page.keyboard.press("c")
            expect(page.locator("#comment")).to_be_focused()
            page.keyboard.type("no such emphasis in the audio")
            page.keyboard.press("Escape")
            expect(page.locator("#comment")).not_to_be_focused()
            page.keyboard.press("Control+Enter")
            _arrive(page, rf"/items/\d+\?saved={third}$")
            d = _row(url, Decision, third, "ann1")
            assert (d.decision, d.reasons, d.comment) == ("reject", ["invented_cue"], "no such emphasis in the audio")

        with _person(browser, errors) as page:
            # ann2 is handed the items ann1 started first (overlap 2), and rejects the one ann1 accepted.
            _log_in(page, base, "/next", "ann2")
            _arrive(page, rf"/items/{first}$")
            page.keyboard.press("r")
            page.keyboard.press("3")
            expect(page.locator('#reasons input[value="wrong_label"]')).to_be_checked()
            page.keyboard.press("Control+Enter")
            _arrive(page, rf"/items/\d+\?saved={first}$")
            d = _row(url, Decision, first, "ann2")
            assert (d.decision, d.reasons) == ("reject", ["wrong_label"])

        with _person(browser, errors) as page:
            # rev1 sees exactly that conflict and settles it with the mouse.
            _log_in(page, base, "/conflicts", "rev1")
            expect(page).to_have_url(re.compile(r"/conflicts$"))
            conflict = page.locator("tbody tr")
            expect(conflict).to_have_count(1)
            expect(conflict).to_contain_text(_row_id(url, first))
            expect(conflict).to_contain_text("ann1: accept; ann2: reject (wrong_label)")
            conflict.get_by_role("link", name="Adjudicate").click()
            _arrive(page, rf"/adjudicate/{first}$")
            expect(page.locator("#others")).to_contain_text("ann1: accept")
            expect(page.locator("#others")).to_contain_text("ann2: reject (wrong_label)")
            page.locator("#reject").click()
            page.locator('#reasons input[value="wrong_label"]').check()
            page.locator("#save-reject").click()
            expect(page).to_have_url(re.compile(r"/conflicts$"))
            expect(page.locator("tbody tr")).to_have_count(0)
            expect(page.locator("h1")).to_contain_text("Conflicts to settle (0)")
            a = _row(url, Adjudication, first)
            assert (a.decision, a.reasons) == ("reject", ["wrong_label"])
            assert _row(url, Adjudication, first, "rev1") is not None

        browser.close()

    # The one error expected: the browser logs the refused rejection's 422 answer.
    refused = [e for e in errors if e.startswith(f"{base}/items/{third}: console:") and "status of 422" in e]
    assert len(refused) == 1, errors
    assert [e for e in errors if e not in refused] == [], "\n".join(errors)

    r = run_cli(["review", "export", str(dataset), "--db", url], env=env)
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(dataset / "reviews.parquet").to_pylist()
    ids = {k: _row_id(url, k) for k in (first, second, third)}
    got = {(x["item_id"], x["annotator"], x["stage"], x["decision"], tuple(x["reasons"]), x["final"]) for x in rows}
    assert got == {
        (ids[first], "ann1", "annotation", "accept", (), False),
        (ids[first], "ann2", "annotation", "reject", ("wrong_label",), False),
        (ids[first], "rev1", "adjudication", "reject", ("wrong_label",), True),
        (ids[second], "ann1", "annotation", "edit", (), False),  # one of two annotators so far: not final yet
        (ids[third], "ann1", "annotation", "reject", ("invented_cue",), False),
    }
    assert next(x for x in rows if x["item_id"] == ids[second])["edited_rationale"] == edited
    card = (dataset / "README.md").read_text(encoding="utf-8")
    assert "## Annotation" in card
    for line in ("| items with a decision | 3 |", "| items with a final decision | 1 |",
                 "| annotator decisions | 4 by 2 annotators |", "| reviewer adjudications | 1 |",
                 "| final reject | 1 (1.000) |"):  # fmt: skip
        assert line in card, card[card.index("## Annotation") :]
