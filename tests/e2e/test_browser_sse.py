"""callstream.js falls back to Server-Sent Events in a real browser when the WebSocket cannot open.

The dashboard (which uses callstream.js) in Debian's chromium, with the page's WebSocket blocked:
events still flow, and a server restart loses nothing and duplicates nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_dashboard import account, browser, expect, finals_shown, new_call, open_dashboard, page
from tests.helpers import ServerProcess, final, publish

pytestmark = pytest.mark.browser
__all__ = ["browser", "page"]  # fixtures, used by name

# What a proxy that strips `Upgrade` looks like from the page: every WebSocket fails before it opens.
BLOCK_WEBSOCKET = """
window.WebSocket = class {
  constructor() {
    this.readyState = 0;
    setTimeout(() => { this.readyState = 3; if (this.onclose) this.onclose({ code: 1006 }); }, 20);
  }
  send() { throw new Error("not open"); }
  close() {}
};
"""


def test_without_websocket_the_page_reads_sse_and_resumes_after_a_restart(tmp_path: Path, page: Any) -> None:
    page.add_init_script(BLOCK_WEBSOCKET)
    server = ServerProcess(tmp_path).start()
    try:
        acct = account()
        key = server.create_key(acct)
        call = new_call()
        sent = [f"Before the restart, line {i}." for i in range(3)]
        assert publish(server, key, call, [final(t) for t in sent]).status_code == 202
        open_dashboard(page, server, acct)
        assert page.evaluate("window.callstream._sse") is True
        page.locator(f'#call-list .call-row[data-call-id="{call}"]').click()
        expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(3, timeout=10_000)
        live = "Live over SSE."
        assert publish(server, key, call, final(live)).status_code == 202
        expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(4, timeout=10_000)

        server.stop()
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
        elsewhere = ServerProcess(tmp_path).start()  # the page never tries this port: a certain gap
        during = [f"While the page was away, line {i}." for i in range(3)]
        try:
            assert publish(elsewhere, key, call, [final(t) for t in during]).status_code == 202
        finally:
            elsewhere.stop()
        server.start()
        expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=30_000)
        after = ["After the reconnect."]
        assert publish(server, key, call, [final(t) for t in after]).status_code == 202
        expected = [*sent, live, *during, *after]
        expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(len(expected), timeout=10_000)
        assert finals_shown(page) == expected  # no gap, no duplicate, in order
    finally:
        server.stop()
