"""The dashboard with many calls, in headless Chromium against a real server: the list and the
grid draw only the rows in view, the page takes only what it shows (no partial reaches the list
or the campaign view), the page title counts the calls that need a human, and the keyboard moves
between calls. Small N, so each test stays short; bench/ui.py measures the same page at scale.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from callstream.publisher import Publisher
from tests.e2e.test_dashboard import account, browser, new_call, open_dashboard, page, sync_api  # noqa: F401 - fixtures
from tests.helpers import ServerProcess, ended, final, partial, publish

pytestmark = pytest.mark.browser
expect = sync_api.expect

BASE_TITLE = "callstream · live calls"


def start_calls(server: ServerProcess, key: str, ids: list[str]) -> None:
    """Start each call with one event carrying its metadata, through one ingest socket (in a
    thread: Playwright's sync API holds this thread's event loop)."""

    async def run() -> None:
        async with Publisher(server.url, key) as pub:
            for i, call_id in enumerate(ids):
                metadata = {"agent": f"Agent {i % 7}", "customer": f"Customer {call_id[-6:]}",
                            "campaign": "spring" if i % 3 else "renewals", "direction": "inbound",
                            "from": f"+1555{1_000_000 + i}", "to": "+14155550100"}
                pub.send(call_id, "agent.state", {"state": "listening", "metadata": metadata})
            await pub.flush()

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join(60)


# Resolves after the page's next two animation frames: the counts and the rows are drawn in
# separate frames, so a count read at once may see the rows of the frame before.
_AFTER_DRAW = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def row_count(pg: Any, selector: str) -> int:
    """How many `selector` elements the page holds once its pending frames are drawn."""
    pg.evaluate(_AFTER_DRAW)
    n: int = pg.locator(selector).count()
    return n


def test_the_list_and_the_grid_draw_only_the_calls_in_view(server: ServerProcess, page: Any) -> None:  # noqa: F811
    acct = account()
    key = server.create_key(acct)
    open_dashboard(page, server, acct)
    first = [new_call() for _ in range(40)]
    start_calls(server, key, first)
    expect(page.locator("#live-count")).to_have_text("40", timeout=15_000)
    drawn = row_count(page, "#call-list > li")
    assert 5 <= drawn <= 24, f"{drawn} rows drawn for 40 calls"

    more = [new_call() for _ in range(160)]
    start_calls(server, key, more)
    expect(page.locator("#live-count")).to_have_text("200", timeout=15_000)
    assert row_count(page, "#call-list > li") == drawn, "the DOM follows the view, not the calls"
    top = page.locator("#call-list .call-row").first
    expect(top).to_contain_text(f"Customer {(top.get_attribute('data-call-id') or '')[-6:]}")  # data.metadata

    # Scrolled to the end: the last call is drawn, still with as many rows.
    page.eval_on_selector("#list-scroll", "el => { el.scrollTop = el.scrollHeight; }")
    expect(page.locator('#call-list li[aria-posinset="200"][aria-setsize="200"]')).to_be_visible()
    assert row_count(page, "#call-list > li") <= drawn

    page.click("#tab-campaign")
    expect(page.locator("#campaign-count")).to_have_text("Showing all 200 calls")
    # The count is written before the grid's next frame draws the cards in view: wait for that.
    expect(page.locator("#campaign-grid > li").nth(3)).to_be_attached()
    cards = row_count(page, "#campaign-grid > li")
    assert 4 <= cards <= 40, f"{cards} cards drawn for 200 calls"
    page.fill("#filter-text", f"customer {first[5][-6:]}")
    expect(page.locator("#campaign-count")).to_have_text("Showing 1 of 200 calls")
    expect(page.locator("#campaign-grid > li")).to_have_count(1)
    assert page.locator("#campaign-grid > li").get_attribute("data-call-id") == first[5]
    page.fill("#filter-text", "")
    page.select_option("#filter-campaign", "renewals")
    renewals = sum(1 for batch in (first, more) for i in range(len(batch)) if i % 3 == 0)
    expect(page.locator("#campaign-count")).to_have_text(f"Showing {renewals} of 200 calls")


def test_partials_reach_only_the_open_call(server: ServerProcess, page: Any) -> None:  # noqa: F811
    acct = account()
    key = server.create_key(acct)
    before = [new_call() for _ in range(30)]  # live before the page opens: listed over REST
    start_calls(server, key, before)
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    def watch(ws: Any) -> None:
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    page.on("websocket", watch)
    open_dashboard(page, server, acct)
    expect(page.locator("#live-count")).to_have_text("30", timeout=15_000)
    page.wait_for_timeout(1_200)  # the order has settled
    a, b = (str(page.locator(f'#call-list > li[aria-posinset="{i}"]').get_attribute("data-call-id")) for i in (1, 2))
    for call in (a, b):
        publish(server, key, call, [partial("I want"), partial("I want to cancel"), final("I want to cancel.")])
    expect(page.locator(f'#call-list .call-row[data-call-id="{a}"]')).to_contain_text("I want to cancel.")
    page.wait_for_timeout(300)

    subscribes = [m for m in sent if m.get("type") == "subscribe"]
    assert subscribes, "the page subscribed"
    assert {m["call_id"] for m in subscribes} == {"*"}, "one subscription for the list and the grid"
    assert all("transcript.partial" not in m["types"] for m in subscribes)
    assert not [m for m in received if m.get("type") == "transcript.partial"]

    page.locator(f'#call-list .call-row[data-call-id="{a}"]').click()
    expect(page.locator("#transcript li[data-kind='final']")).to_have_count(1)
    received.clear()
    for call in (a, b):
        publish(server, key, call, partial("And now"))
    expect(page.locator('#transcript li[data-kind="partial"]')).to_have_count(1)
    page.wait_for_timeout(300)
    partial_calls = {m["call_id"] for m in received if m.get("type") == "transcript.partial"}
    assert partial_calls == {a}, "the listen-in panel alone takes partials, of its call alone"


def test_the_title_counts_the_calls_that_need_attention(server: ServerProcess, page: Any) -> None:  # noqa: F811
    acct = account()
    key = server.create_key(acct)
    open_dashboard(page, server, acct)
    calm, angry, furious = new_call(), new_call(), new_call()
    publish(server, key, calm, final("Thanks, that is great, I really appreciate it."))
    expect(page.locator(f'#call-list .call-row[data-call-id="{calm}"]')).to_be_visible(timeout=10_000)
    page.wait_for_timeout(700)
    expect(page).to_have_title(BASE_TITLE)
    publish(server, key, angry, final("This is terrible, I am really angry and upset."))
    publish(server, key, furious, final("Awful service. I hate this, it is horrible."))
    expect(page).to_have_title(f"(2) {BASE_TITLE}", timeout=10_000)
    expect(page.locator("#attention-count")).to_have_text("2 need attention")
    publish(server, key, angry, ended("completed", 30_000))
    expect(page).to_have_title(f"(1) {BASE_TITLE}", timeout=10_000)


def test_the_keyboard_moves_between_calls(server: ServerProcess, page: Any) -> None:  # noqa: F811
    acct = account()
    key = server.create_key(acct)
    open_dashboard(page, server, acct)
    start_calls(server, key, [new_call() for _ in range(30)])
    expect(page.locator("#live-count")).to_have_text("30", timeout=15_000)
    page.wait_for_timeout(1_200)  # the order has settled
    at = "document.activeElement.parentElement.getAttribute('aria-posinset')"

    def call_at(view: str, position: int) -> str:
        return str(page.locator(f'{view} > li[aria-posinset="{position}"]').get_attribute("data-call-id"))

    # In the list: End reaches the last call, drawn and focused though it was out of view.
    page.locator("#call-list .call-row").first.focus()
    page.keyboard.press("End")
    assert page.evaluate(at) == "30"
    page.keyboard.press("ArrowUp")
    assert page.evaluate(at) == "29"

    # Anywhere: j and k open the next and the previous call.
    page.keyboard.press("Home")
    first, second = call_at("#call-list", 1), call_at("#call-list", 2)
    page.keyboard.press("Enter")
    expect(page.locator("#listen-call-id")).to_have_text(first)
    page.keyboard.press("j")
    expect(page.locator("#listen-call-id")).to_have_text(second)
    page.keyboard.press("j")
    page.keyboard.press("k")
    expect(page.locator("#listen-call-id")).to_have_text(second)

    # In the campaign grid: arrows move by card and by row, Enter listens in.
    page.click("#tab-campaign")
    page.select_option("#sort", "newest")
    expect(page.locator("#campaign-grid .card")).not_to_have_count(0)
    page.wait_for_timeout(300)
    page.locator("#campaign-grid .card").first.focus()
    columns = page.evaluate("getComputedStyle(document.getElementById('campaign-grid')).gridTemplateColumns.split(' ').length")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    assert page.evaluate(at) == str(2 + columns)
    target = page.evaluate("document.activeElement.parentElement.dataset.callId")
    page.keyboard.press("Enter")
    expect(page.locator("#listen-call-id")).to_have_text(target)
