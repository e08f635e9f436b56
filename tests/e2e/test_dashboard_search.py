"""The dashboard's search over ended calls (search.js) in headless Chromium against a real server:
hits with their snippets marked, and a hit opens the call's transcript."""

from __future__ import annotations

from typing import Any

from tests.e2e.test_dashboard import (
    account,
    browser,
    expect,
    finals_shown,
    new_call,
    open_dashboard,
    page,
    screenshot,
)
from tests.helpers import ServerProcess, ended, final, publish

__all__ = ["browser", "page"]  # the fixtures, shared with test_dashboard.py


def test_searching_ended_calls_shows_snippets_and_a_hit_opens_the_transcript(server: ServerProcess, page: Any) -> None:
    acct = account()
    key = server.create_key(acct)
    wanted, other, live = new_call(), new_call(), new_call()
    publish(server, key, wanted, [final("Hello, this is Ava."), final("I was charged a <b>late fee</b> twice", "user")])
    publish(server, key, wanted, ended())
    publish(server, key, other, [final("Just checking my balance"), ended()])
    publish(server, key, live, final("a late fee, live"))  # live: not among ended calls
    open_dashboard(page, server, acct)

    page.fill("#search-q", '"late fee"')
    page.press("#search-q", "Enter")
    hits = page.locator("#search-results .hit")
    expect(hits).to_have_count(1, timeout=10_000)
    expect(hits.first).to_have_attribute("data-call-id", wanted)
    expect(hits.first.locator(".snippet")).to_contain_text("I was charged a <b>late fee</b> twice")  # text, not markup
    expect(hits.first.locator("mark")).to_have_text(["late fee"])
    expect(page.locator("#search-status")).to_have_text("1 ended call")
    screenshot(page, "search.png")

    hits.first.click()
    expect(page.locator("#listen-call-id")).to_have_text(wanted)
    expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(2)
    assert finals_shown(page)[1] == "I was charged a <b>late fee</b> twice"

    page.fill("#search-q", "nothingmatches")
    page.press("#search-q", "Enter")
    expect(page.locator("#search-status")).to_have_text("No ended call matches.")
    expect(hits).to_have_count(0)
    page.fill("#search-q", "!!!")
    page.press("#search-q", "Enter")
    expect(page.locator("#search-status")).to_have_text("Type a word to search for (letters or digits).")
