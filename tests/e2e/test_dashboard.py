"""The dashboard in headless Chromium against a real server.

Debian's chromium driven by Playwright (``executable_path``; no browser download).
Screenshots go to tests/artifacts/ (and to docs/screenshots/ with CALLSTREAM_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from callstream.simulate import run_simulation
from tests.helpers import ServerProcess, ended, final, missing, partial, publish, steady_seed

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CALLSTREAM_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "tests" / "artifacts"

if not Path(CHROMIUM).exists():
    missing(f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")
try:
    from playwright import sync_api
except ImportError:
    missing("needs playwright (pip install -e '.[dev]')")
expect = sync_api.expect


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@contextlib.contextmanager
def checked_page(browser: Any) -> Iterator[Any]:
    """A page in a context of its own; the test fails if a JavaScript error was thrown on it."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with checked_page(browser) as pg:
        yield pg


def account() -> str:
    return f"dash_{uuid.uuid4().hex[:8]}"


def new_call() -> str:
    return f"call_{uuid.uuid4().hex[:10]}"


def screenshot(pg: Any, name: str) -> None:
    """Into tests/artifacts/; with CALLSTREAM_UPDATE_SCREENSHOTS=1 also into docs/screenshots/,
    so an ordinary test run leaves the checkout clean."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name))
    if os.environ.get("CALLSTREAM_UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, SHOTS / name)


def open_dashboard(pg: Any, server: ServerProcess, acct: str, *, control: bool = False) -> None:
    """Log in through a one-time link, as a user would, and wait for the live socket."""
    pg.goto(server.login_url(acct, control=control))
    expect(pg.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)
    assert "login=" not in pg.url, "the one-time code is removed from the address bar"
    # Record every state the socket goes through, for the assertions below.
    pg.evaluate(
        """() => { window.__states = [];
                   window.callstream.on('state', (e) => window.__states.push(e.state)); }"""
    )


def finals_shown(pg: Any) -> list[str]:
    texts: list[str] = pg.locator('#transcript li[data-kind="final"] .text-body').all_inner_texts()
    return texts


@contextlib.contextmanager
def simulating(url: str, key: str, **options: Any) -> Iterator[None]:
    """Run the simulator in a thread of its own while the browser watches."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Task[Any]] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["task"] = loop.create_task(run_simulation(url, key, **options))
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(holder["task"])
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(holder["task"].cancel)
        thread.join(30)


# -- tests ---------------------------------------------------------------------------------------


def test_calls_list_fills_with_simulated_calls(server: ServerProcess, page: Any) -> None:
    acct = account()
    key = server.create_key(acct)
    with simulating(server.url, key, calls=4, speed=3.0, duration=90, seed=7):
        open_dashboard(page, server, acct)
        rows = page.locator("#call-list .call-row.live")
        expect(rows).to_have_count(4, timeout=20_000)
        expect(page.locator("#live-count")).to_have_text("4")
        # Sentiment and agent state arrive with the calls' first turns.
        expect(
            page.locator(
                "#call-list .call-row .chip.positive, #call-list .call-row .chip.negative, "
                "#call-list .call-row .chip.neutral"
            ).first
        ).to_be_visible(timeout=20_000)
        page.wait_for_timeout(4_000)
        # Durations tick.
        first = page.locator("#call-list .call-row.live .dur").first
        before = first.inner_text()
        page.wait_for_timeout(2_100)
        assert first.inner_text() != before
        screenshot(page, "dashboard.png")

        # Keyboard: focus the list, arrow down, Enter opens listen-in.
        page.locator("#call-list .call-row").first.focus()
        page.keyboard.press("ArrowDown")
        focused = page.evaluate("document.activeElement.dataset.callId")
        page.keyboard.press("Enter")
        expect(page.locator("#listen-call-id")).to_have_text(focused)
        expect(page.locator('#transcript li[data-kind="final"]').first).to_be_visible(timeout=20_000)
        page.wait_for_timeout(5_000)
        screenshot(page, "listen-in.png")

        page.click("#tab-campaign")
        expect(page.locator("#campaign-grid .card")).to_have_count(4, timeout=10_000)
        page.wait_for_timeout(1_000)
        screenshot(page, "campaign.png")

        page.click("#tab-calls")
        page.set_viewport_size({"width": 375, "height": 760})
        page.wait_for_timeout(500)
        if page.locator("#jump").is_visible():
            page.click("#jump")
        page.wait_for_timeout(1_000)
        screenshot(page, "listen-in-phone.png")


def test_listen_in_shows_partials_then_finals_in_order(server: ServerProcess, page: Any) -> None:
    acct = account()
    key = server.create_key(acct)
    call = new_call()
    open_dashboard(page, server, acct)

    assert (
        publish(server, key, call, {"type": "agent.state", "data": {"state": "listening"}}).status_code == 202
    )
    row = page.locator(f'#call-list .call-row[data-call-id="{call}"]')
    expect(row).to_be_visible(timeout=10_000)
    row.click()
    expect(page.locator("#listen-call-id")).to_have_text(call)
    expect(page.locator("#listen-agent")).to_have_attribute("data-state", "listening")

    typing = page.locator('#transcript li[data-kind="partial"]')
    publish(server, key, call, partial("I was", utterance_id="u1"))
    expect(typing).to_have_count(1)
    publish(server, key, call, partial("I was charged twice", utterance_id="u1"))
    expect(typing.locator(".text-body")).to_have_text("I was charged twice")
    assert finals_shown(page) == []

    publish(server, key, call, final("I was charged twice and I am really angry.", utterance_id="u1"))
    expect(typing).to_have_count(0)  # the final replaced the partials of its utterance
    expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(1)
    line = page.locator('#transcript li[data-kind="final"]').first
    expect(line.locator(".chip.negative")).to_be_visible()  # server-side VADER sentiment

    publish(
        server,
        key,
        call,
        [
            {"type": "agent.state", "data": {"state": "thinking"}},
            {
                "type": "function.call",
                "data": {"name": "lookup_invoice", "args": {"id": "INV-7"}, "tool_call_id": "tc1"},
            },
        ],
    )
    expect(page.locator("#listen-agent")).to_have_attribute("data-state", "thinking")
    tool = page.locator('#transcript li[data-kind="tool"]')
    expect(tool).to_have_class("tool pending")
    publish(
        server,
        key,
        call,
        {
            "type": "function.result",
            "data": {"name": "lookup_invoice", "result": {"duplicate": True}, "tool_call_id": "tc1"},
        },
    )
    expect(tool).to_have_class("tool")
    expect(tool.locator(".tool-result")).to_contain_text('"duplicate":true')

    publish(
        server,
        key,
        call,
        [
            {"type": "agent.state", "data": {"state": "speaking"}},
            partial("I'm sorry", speaker="agent", utterance_id="u2"),
            partial("I'm sorry about that, I", speaker="agent", utterance_id="u2"),
            final(
                "I'm sorry about that, I have refunded the duplicate charge.",
                speaker="agent",
                utterance_id="u2",
            ),
            final("Thank you so much, that is great!", utterance_id="u3"),
            ended("completed", 42_000),
        ],
    )
    expect(page.locator('#transcript li[data-kind="end"]')).to_contain_text("completed")
    expect(page.locator("#listen-status")).to_have_text("completed")
    assert finals_shown(page) == [
        "I was charged twice and I am really angry.",
        "I'm sorry about that, I have refunded the duplicate charge.",
        "Thank you so much, that is great!",
    ]
    kinds = page.locator("#transcript > li").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert kinds == ["final", "tool", "turn", "final", "final", "end"]  # "turn": the answer's latency
    expect(page.locator("#transcript")).to_have_attribute("aria-live", "polite")


def test_server_restart_shows_reconnecting_and_loses_no_final(tmp_path: Path, page: Any) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        acct = account()
        key = server.create_key(acct)
        call = new_call()
        sent = [f"Before the restart, line {i}." for i in range(3)]
        assert publish(server, key, call, [final(t) for t in sent]).status_code == 202
        open_dashboard(page, server, acct)
        page.locator(f'#call-list .call-row[data-call-id="{call}"]').click()
        expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(3, timeout=10_000)
        page.evaluate(
            """() => { window.__subscribed = [];
                       window.callstream.on('subscribed', (m) => window.__subscribed.push(m.data)); }"""
        )

        server.stop()
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
        expect(page.locator("#conn-label")).to_have_text("Reconnecting…")
        expect(page.locator("#banner")).to_be_visible()
        screenshot(page, "reconnecting.png")

        # Published while the page is away for certain: through a node on the same store that
        # listens on a port the page never tries. Published after the restart instead, they
        # raced the page's reconnect and came live whenever it won.
        elsewhere = ServerProcess(tmp_path).start()
        during = [f"While the dashboard was away, line {i}." for i in range(3)]
        try:
            assert publish(elsewhere, key, call, [final(t) for t in during]).status_code == 202
        finally:
            elsewhere.stop()
        server.start()
        expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=30_000)
        expect(page.locator("#banner")).to_be_hidden()
        after = ["After the reconnect."]
        assert publish(server, key, call, [final(t) for t in after]).status_code == 202
        expected = sent + during + after
        expect(page.locator('#transcript li[data-kind="final"]')).to_have_count(len(expected), timeout=10_000)
        assert finals_shown(page) == expected  # no gap, no duplicate, in order
        states = page.evaluate("window.__states")
        assert "reconnecting" in states
        assert states[-1] == "open"
        resumed = [s for s in page.evaluate("window.__subscribed") if s["call_id"] == call]
        assert resumed, "the call was resubscribed"
        assert sum(s["replayed"] for s in resumed) >= len(during), "the gap was replayed with since"
    finally:
        server.stop()


def test_expiring_token_is_refreshed(tmp_path: Path, page: Any) -> None:
    # The shortest TTL the server allows, so the test sees several refreshes.
    server = ServerProcess(tmp_path, env={"CALLSTREAM_TOKEN_TTL_S": "10"}).start()
    try:
        acct = account()
        key = server.create_key(acct)
        call = new_call()
        sockets: list[Any] = []
        page.on("websocket", lambda ws: sockets.append(ws))
        open_dashboard(page, server, acct)
        first_token = page.evaluate("JSON.parse(sessionStorage.getItem('callstream.session')).token")

        # 1. Refreshed before expiry and handed to the open socket ({"type": "auth"}): no reconnect.
        page.wait_for_timeout(14_000)
        token = page.evaluate("JSON.parse(sessionStorage.getItem('callstream.session')).token")
        assert token != first_token
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        assert len(sockets) == 1
        publish(server, key, call, final("Still here after a refresh."))
        expect(page.locator(f'#call-list .call-row[data-call-id="{call}"]')).to_contain_text(
            "Still here after a refresh.", timeout=10_000
        )

        # 2. A token that does expire on the socket (the refresh was missed, e.g. a suspended tab):
        #    the server closes with 4001, the page gets a fresh token and reconnects by itself.
        #    Stop refreshes at the source: a refresh already in flight would otherwise schedule the
        #    next one when it completes, and the token would never expire.
        page.evaluate(
            "(() => { const cs = window.callstream; cs._scheduleRefresh = () => {};"
            " cs._clearTimer('_refreshTimer'); })()"
        )
        deadline = time.monotonic() + 30
        while len(sockets) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert len(sockets) >= 2, "the page reconnected after its token expired"
        expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)
        publish(server, key, call, final("And after an expiry."))
        expect(page.locator(f'#call-list .call-row[data-call-id="{call}"]')).to_contain_text(
            "And after an expiry.", timeout=10_000
        )
        assert "token_expired" not in page.evaluate("window.__states")
        expect(page.locator("#banner")).to_be_hidden()
    finally:
        server.stop()


def test_used_login_link_and_ended_session_are_explained(server: ServerProcess, page: Any) -> None:
    acct = account()
    url = server.login_url(acct)
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)
    # The same link again, in a fresh tab without the session: it was one-time.
    other = page.context.browser.new_context()
    try:
        tab = other.new_page()
        tab.goto(url)
        expect(tab.locator("#gate")).to_be_visible()
        expect(tab.locator("#gate-title")).to_contain_text("expired")
    finally:
        other.close()
    # A refresh the server refuses (session over) shows "session ended".
    page.route(
        "**/v1/login/refresh",
        lambda route: route.fulfill(
            status=401,
            content_type="application/json",
            body='{"error": {"code": "unauthorized", "message": "session ended"}}',
        ),
    )
    page.evaluate("window.callstream._refresh()")
    expect(page.locator("#conn")).to_have_attribute("data-state", "token_expired")
    expect(page.locator("#banner")).to_contain_text("Session ended, open a new login link")


def test_revoking_the_dashboard_key_ends_the_open_page(server: ServerProcess, page: Any) -> None:
    acct = account()
    open_dashboard(page, server, acct)
    token = page.evaluate("JSON.parse(sessionStorage.getItem('callstream.session')).token")
    minted_by = jwt.decode(token, options={"verify_signature": False})["key"]
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))

    server.cli("keys", "revoke", minted_by, *server.database_args())
    # Within the revocation bound: the socket is closed 4001, the refresh that follows is refused.
    expect(page.locator("#conn")).to_have_attribute("data-state", "token_expired", timeout=5_000)
    expect(page.locator("#conn-label")).to_have_text("Session ended")
    expect(page.locator("#banner")).to_contain_text("Session ended, open a new login link")
    page.wait_for_timeout(3_000)  # and it stays ended: no reconnect, no socket opened again
    assert sockets == [], "the page tried to reconnect after its session ended"
    assert page.evaluate("window.__states")[-1] == "token_expired"
    expect(page.locator("#conn")).to_have_attribute("data-state", "token_expired")


def test_dashboard_works_under_its_content_security_policy(server: ServerProcess, page: Any) -> None:
    """The page loads, connects and shows calls in every view without one CSP violation, and the
    policy is really enforced: an injected inline script does not run."""
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script(
        """window.__violations = [];
           document.addEventListener('securitypolicyviolation',
             (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"""
    )
    acct = account()
    key = server.create_key(acct)
    live, done = new_call(), new_call()
    open_dashboard(page, server, acct)  # the scripts ran, REST answered, the socket is open
    publish(
        server, key, live, [{"type": "agent.state", "data": {"state": "speaking"}}, final("Hello there.")]
    )
    publish(server, key, done, [final("Goodbye."), ended("completed", 5_000)])
    expect(page.locator(f'#call-list .call-row[data-call-id="{live}"]')).to_be_visible(timeout=10_000)
    expect(page.locator(f'#call-list .call-row[data-call-id="{done}"]')).to_be_visible(timeout=10_000)
    page.locator(f'#call-list .call-row[data-call-id="{live}"]').click()
    expect(page.locator('#transcript li[data-kind="final"] .text-body')).to_have_text(
        ["Hello there."], timeout=10_000
    )
    page.click("#tab-campaign")  # the cards: agent state and end status in their own elements
    expect(page.locator("#campaign-grid .card")).to_have_count(2, timeout=10_000)
    page.wait_for_timeout(500)
    assert page.evaluate("window.__violations") == []
    assert violations == []

    page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__injected = true;';
                   document.body.append(s); }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.__injected === undefined")
    assert [v.split(" ")[0] for v in page.evaluate("window.__violations")] == ["script-src-elem"]


# -- live control from the listen-in panel ---------------------------------------------------------


def supervisor_line(pg: Any, action: str) -> Any:
    return pg.locator(f'#transcript li[data-kind="control"][data-action="{action}"]')


def test_a_supervisor_acts_from_the_page_and_the_simulated_agent_obeys(server: ServerProcess, page: Any) -> None:
    page.add_init_script(
        """window.__violations = [];
           document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective));"""
    )
    acct = account()
    key = server.create_key(acct)
    with simulating(server.url, key, calls=1, speed=2.0, duration=120, seed=steady_seed()):
        open_dashboard(page, server, acct, control=True)
        row = page.locator("#call-list .call-row.live").first
        expect(row).to_be_visible(timeout=20_000)
        row.click()
        controls = page.locator("#controls")
        expect(controls).to_be_visible()
        expect(controls.locator("button")).to_have_text(["Say…", "Instruct…", "Take over", "Transfer…", "End call"])

        page.click("#takeover")  # pause: the simulated agent stops, the supervisor has the floor
        expect(page.locator("#takeover")).to_have_text("Give back", timeout=10_000)
        expect(supervisor_line(page, "pause").locator(".sup-text")).to_have_text("Supervisor took over the call")
        expect(supervisor_line(page, "pause").locator(".sup-result")).to_have_text("done")

        page.click('#controls [data-action="say"]')
        expect(page.locator("#control-dialog")).to_be_visible()
        expect(page.locator("#control-title")).to_have_text("Say…")
        page.fill('#control-form textarea[name="text"]', "A supervisor is on the line now.")
        page.click("#control-submit")
        expect(page.locator("#control-dialog")).to_be_hidden()
        said = supervisor_line(page, "say")
        expect(said.locator(".sup-text")).to_have_text("Supervisor said “A supervisor is on the line now.”")
        expect(said.locator(".sup-result")).to_have_text("done", timeout=10_000)
        spoken = page.locator('#transcript li.spk-agent[data-kind="final"] .text-body')
        expect(spoken.filter(has_text="A supervisor is on the line now.")).to_have_count(1, timeout=15_000)
        screenshot(page, "control.png")

        page.click("#takeover")  # give back
        expect(page.locator("#takeover")).to_have_text("Take over", timeout=10_000)
        expect(supervisor_line(page, "resume").locator(".sup-text")).to_have_text(
            "Supervisor gave the call back to the agent"
        )

        page.click('#controls [data-action="end"]')
        expect(page.locator("#control-title")).to_have_text("End this call?")
        expect(page.locator("#control-submit")).to_have_text("End call")
        page.click("#control-submit")
        expect(supervisor_line(page, "end").locator(".sup-text")).to_have_text("Call ended by supervisor")
        expect(page.locator("#listen-status")).to_have_text("completed", timeout=10_000)
        expect(page.locator('#transcript li[data-kind="end"]')).to_contain_text("ended by the supervisor")
        expect(controls.locator("button").first).to_be_disabled()

        page.reload()  # on replay: the supervisor's lines come back from the call's history
        expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)
        expect(page.locator('#transcript li[data-kind="control"] .sup-text')).to_have_text([
            "Supervisor took over the call",
            "Supervisor said “A supervisor is on the line now.”",
            "Supervisor gave the call back to the agent",
            "Call ended by supervisor",
        ], timeout=15_000)
    assert page.evaluate("window.__violations") == []


def test_a_session_without_control_sees_no_actions(server: ServerProcess, page: Any) -> None:
    acct = account()
    key = server.create_key(acct)
    call = new_call()
    open_dashboard(page, server, acct)
    publish(server, key, call, final("Hello there."))
    page.locator(f'#call-list .call-row[data-call-id="{call}"]').click()
    expect(page.locator('#transcript li[data-kind="final"] .text-body')).to_have_text(["Hello there."], timeout=10_000)
    expect(page.locator("#controls")).to_be_hidden()
    expect(page.locator("button[data-action]")).to_have_count(5)  # in the page, never shown
    assert page.locator("button[data-action]:visible").count() == 0


def test_turn_latency_in_the_list_the_transcript_and_the_fleet(tmp_path: Path, page: Any) -> None:
    """A server flagging turns past 600 ms: the slow call rises to the top of the list in red,
    its transcript marks each answer's wait and the interruption, and the campaign view has the
    fleet's tiles and latency chart (docs/quality.md)."""
    server = ServerProcess(tmp_path, "--latency-warn-ms", "600").start()
    try:
        acct = account()
        key = server.create_key(acct)
        slow, fast = new_call(), new_call()
        turn = [partial("Can I"), final("Can I move my booking?")]
        speaking, listening = {"type": "agent.state", "data": {"state": "speaking"}}, {"type": "agent.state", "data": {"state": "listening"}}
        for call, wait in ((slow, 0.9), (fast, 0.05)):  # the slow call starts first: it is the older
            assert publish(server, key, call, turn).status_code == 202
            time.sleep(wait)
            assert publish(server, key, call, [speaking, final("Sure, to when?", speaker="agent")]).status_code == 202
            assert publish(server, key, call, partial("Fri")).status_code == 202  # the caller cuts in
            assert publish(server, key, call, [listening, final("Friday")]).status_code == 202

        open_dashboard(page, server, acct)
        rows = page.locator("#call-list .call-row.live")
        expect(rows).to_have_count(2, timeout=15_000)
        expect(page.locator(f'#call-list .call-row[data-call-id="{slow}"] .lat.warn')).to_be_visible(timeout=10_000)
        expect(page.locator(f'#call-list .call-row[data-call-id="{fast}"] .lat.ok')).to_be_visible()
        # Over the threshold: on top, once the list is next ordered (at most a second later).
        expect(rows.first).to_have_attribute("data-call-id", slow, timeout=5_000)
        assert "p90" in page.locator(f'#call-list .call-row[data-call-id="{slow}"] .lat').inner_text()

        rows.first.click()
        marks = page.locator('#transcript li[data-kind="turn"]')
        expect(marks).to_have_count(2, timeout=10_000)
        expect(marks.first).to_have_class(re.compile(r"\bwarn\b"))
        assert int(marks.first.get_attribute("data-latency")) >= 900
        expect(marks.nth(0)).to_contain_text("answered in")
        expect(marks.nth(1)).to_contain_text("cut in")
        order = page.locator("#transcript li").evaluate_all("els => els.map((e) => e.dataset.kind)")
        assert order[:4] == ["final", "turn", "final", "turn"]  # each mark where it happened

        page.click("#tab-campaign")
        expect(page.locator("#stat-slow")).to_have_text("1", timeout=10_000)
        expect(page.locator("#stat-slow-label")).to_have_text("calls over 600 ms")
        expect(page.locator("#stat-latency")).not_to_have_text("–")
        expect(page.locator("#stat-interruptions")).to_have_text("1.00")
        expect(page.locator("#fleet-chart svg .series.p90")).to_have_count(1)
        expect(page.locator("#fleet-chart svg .threshold")).to_have_count(1)
        expect(page.locator("#campaign-grid .card").first.locator("..")).to_have_attribute(
            "data-call-id", slow, timeout=5_000
        )

        with simulating(server.url, key, calls=8, speed=2.0, duration=120, seed=11):
            expect(page.locator("#campaign-grid .card")).to_have_count(10, timeout=20_000)
            page.wait_for_timeout(14_000)  # turns arrive; the tiles refresh every 10 s
            screenshot(page, "campaign-quality.png")
            page.click("#tab-calls")
            page.locator("#call-list .call-row").nth(1).click()
            page.wait_for_timeout(3_000)
            screenshot(page, "calls-latency.png")
    finally:
        server.stop()
