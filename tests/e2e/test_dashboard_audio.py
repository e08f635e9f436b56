"""Hearing a call from the dashboard (docs/dashboard.md, Hear a call), in headless Chromium
against a real server with `--record`: a producer streams two tones on the call's tracks, the
page presses Listen and plays them through its AudioWorklet, mute silences one meter, and once
the call ends its recording plays in the page, streamed with range requests through the page's
Service Worker (a Blob where the page has none). A session without `listen` cannot listen.

Debian's chromium driven by Playwright, set up as in test_dashboard.py (which skips without
it); with no sound card, Chromium's fake audio output renders the AudioWorklet as a real one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import struct
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from callstream.audio import TRACK_AGENT, TRACK_CALLER, encode_frame
from callstream.server.recording_files import paths_for
from tests.e2e.test_browser_sse import BLOCK_WEBSOCKET
from tests.e2e.test_dashboard import ARGS, CHROMIUM, checked_page, screenshot, sync_api
from tests.helpers import ServerProcess, ended, final, publish, recv, send

expect = sync_api.expect

pytestmark = pytest.mark.browser

RATE = 16_000
FRAME_MS = 20


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("listen"), "--record").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=[*ARGS, "--autoplay-policy=no-user-gesture-required"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with checked_page(browser) as pg:
        yield pg


def tone(freq: float, start: int, n: int) -> bytes:
    return struct.pack(
        f"<{n}h", *(round(8000 * math.sin(2 * math.pi * freq * (start + i) / RATE)) for i in range(n))
    )


@contextlib.contextmanager
def producing(server: ServerProcess, key: str, call_id: str) -> Iterator[Callable[[], None]]:
    """Stream a 220 Hz caller and a 440 Hz agent in real time, 20 ms frames, on /v1/ingest;
    the function yielded ends the call (call.ended, acknowledged) and waits for it."""
    stop = threading.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        per = RATE * FRAME_MS // 1000
        async with connect(f"{server.ws_url}/v1/ingest?token={key}") as mouth:
            await send(
                mouth, {"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": RATE}
            )
            t0 = time.monotonic()
            ms = 0
            while not stop.is_set():
                start = ms * RATE // 1000
                await mouth.send(encode_frame(TRACK_CALLER, call_id, ms, tone(220, start, per)))
                await mouth.send(encode_frame(TRACK_AGENT, call_id, ms, tone(440, start, per)))
                ms += FRAME_MS
                await asyncio.sleep(max(0.0, t0 + ms / 1000 - time.monotonic()))
            await send(mouth, {**ended(duration_ms=ms), "call_id": call_id, "ref": 1})
            while (await recv(mouth, 10))["type"] != "ack":
                pass

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced by end()
            failure.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(20)
        assert not failure, failure

    try:
        yield end
    finally:
        stop.set()
        thread.join(20)


def a_call(server: ServerProcess, prefix: str) -> tuple[str, str, str]:
    """A new account's (name, key) and a call of it that has begun (a first final)."""
    acct = f"{prefix}_{uuid.uuid4().hex[:8]}"
    key = server.create_key(acct)
    call_id = f"call_{uuid.uuid4().hex[:10]}"
    assert publish(server, key, call_id, final("hello, can you hear me?")).status_code == 202
    return acct, key, call_id


def open_call(pg: Any, server: ServerProcess, acct: str, call_id: str, *, listen: bool) -> None:
    pg.goto(server.login_url(acct, listen=listen))
    expect(pg.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)
    row = pg.locator(f'#call-list .call-row[data-call-id="{call_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    row.click()
    expect(pg.locator("#listen-call-id")).to_have_text(call_id)


def figures(pg: Any) -> dict[str, Any]:
    got: dict[str, Any] | None = pg.evaluate("window.callstreamListen")
    assert got is not None, "the player publishes its figures while listening"
    return got


def test_listen_plays_both_tracks_mutes_one_and_then_plays_the_recording(
    recorder: ServerProcess, page: Any
) -> None:
    acct, key, call_id = a_call(recorder, "hear")
    with producing(recorder, key, call_id) as end_call:
        open_call(page, recorder, acct, call_id, listen=True)
        listen = page.locator("#listen-btn")
        expect(listen).to_be_enabled()
        listen.click()
        expect(listen).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#audio-status")).to_contain_text("Listening", timeout=10_000)
        # Frames arrive on the socket, the worklet takes their samples, and both meters move.
        page.wait_for_function(
            "() => { const f = window.callstreamListen; return f && f.frames[0] > 10 && f.frames[1] > 10"
            " && f.samples[0] > 3200 && f.samples[1] > 3200 && f.levels[0] > 0.01 && f.levels[1] > 0.01; }",
            timeout=15_000,
        )
        assert float(page.locator("#meter-caller").evaluate("m => m.value")) > 0
        before = figures(page)
        screenshot(page, "listen-audio.png")

        # Mute the agent: its meter falls to zero while the caller's goes on.
        page.locator('.mute[data-track="1"]').click()
        expect(page.locator('.mute[data-track="1"]')).to_have_attribute("aria-pressed", "true")
        page.wait_for_function("() => window.callstreamListen.levels[1] < 0.001", timeout=5_000)
        page.wait_for_timeout(300)
        muted = figures(page)
        assert muted["levels"][1] < 0.001
        assert muted["levels"][0] > 0.01, "the caller still plays"
        assert muted["samples"][1] > before["samples"][1], "a muted track is still received, only not heard"
        assert float(page.locator("#meter-agent").evaluate("m => m.value")) == 0

        # A second press stops: no more frames are taken.
        listen.click()
        expect(listen).to_have_attribute("aria-pressed", "false")
        assert page.evaluate("window.callstreamListen") is None
        assert page.evaluate(f"window.callstream.listens.has({call_id!r})") is False

        end_call()

    # The call ended: its recording plays in the page.
    expect(page.locator("#listen-status")).to_have_text(re.compile("completed", re.I), timeout=10_000)
    player = page.locator("#recording")
    expect(player).to_be_visible(timeout=20_000)
    page.wait_for_function("() => document.getElementById('recording').duration > 0", timeout=10_000)
    assert page.evaluate("document.getElementById('recording').src") == (
        f"{recorder.url}/v1/calls/{call_id}/recording"
    ), "streamed through the page's Service Worker, no token in its URL"
    expect(listen).to_be_hidden()


def test_a_session_without_listen_cannot_listen(recorder: ServerProcess, page: Any) -> None:
    acct, key, call_id = a_call(recorder, "deaf")
    with producing(recorder, key, call_id) as end_call:
        open_call(page, recorder, acct, call_id, listen=False)
        expect(page.locator("#listen-btn")).to_be_disabled()
        expect(page.locator("#audio-status")).to_contain_text("may not listen")
        expect(page.locator("#audio-status")).to_contain_text("callstream login --listen")
        # Asked anyway (from the console), the server refuses and no audio comes.
        page.evaluate(
            """(id) => { window.__refused = null; window.__frames = 0;
                 window.callstream.on('error', (m) => { if (m.call_id === id) window.__refused = m.data.code; });
                 window.callstream.on('audio', () => { window.__frames += 1; });
                 window.callstream.listen(id); }""",
            call_id,
        )
        page.wait_for_function("() => window.__refused !== null", timeout=10_000)
        assert page.evaluate("window.__refused") == "forbidden"
        page.wait_for_timeout(500)
        assert page.evaluate("window.__frames") == 0
        end_call()
    # Its recording is not for this session either.
    expect(page.locator("#audio-status")).to_contain_text("may not play recordings", timeout=10_000)
    expect(page.locator("#recording")).to_be_hidden()


def test_listen_over_server_sent_events_says_it_needs_the_websocket(recorder: ServerProcess, page: Any) -> None:
    """Server-Sent Events carry no audio: a page that fell back to them says so at once instead of
    waiting for audio that cannot come."""
    page.add_init_script(BLOCK_WEBSOCKET)
    acct, key, call_id = a_call(recorder, "sse")
    with producing(recorder, key, call_id) as end_call:
        open_call(page, recorder, acct, call_id, listen=True)
        assert page.evaluate("window.callstream._sse") is True
        page.locator("#listen-btn").click()
        expect(page.locator("#audio-status")).to_contain_text("needs the WebSocket", timeout=5_000)
        end_call()


def long_recording(server: ServerProcess, acct: str, call_id: str, seconds: int) -> int:
    """The call's recording as the node leaves it once closed: `seconds` of the two tones, 16 kHz
    stereo (64 kB a second), written straight into the recordings folder (a real call that long
    would take as long to record). Its size in bytes."""
    path = paths_for(server.data_dir / "recordings", acct, call_id).finished
    path.parent.mkdir(parents=True, exist_ok=True)
    caller, agent = struct.unpack(f"<{RATE}h", tone(220, 0, RATE)), struct.unpack(f"<{RATE}h", tone(440, 0, RATE))
    second = struct.pack(f"<{2 * RATE}h", *(s for pair in zip(caller, agent, strict=True) for s in pair))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(second * seconds)
    return path.stat().st_size


def recording_requests(seen: list[Any], call_id: str, *, by_worker: bool) -> list[Any]:
    """The requests for the call's recording that the recording player's Service Worker made
    (what the server got for the player), or those the page made itself."""
    path = f"/v1/calls/{call_id}/recording"
    return [r for r in seen if r.url.endswith(path) and (r.service_worker is not None) == by_worker]


def test_a_recording_streams_and_seeks_with_range_requests_and_no_token_in_a_url(
    recorder: ServerProcess, page: Any
) -> None:
    """Three minutes of recording (11.5 MB): the player can play once the start has come, without
    the rest, and a seek to the end asks the server for the end only. The page's credential goes
    in headers, never in a URL."""
    acct, key, call_id = a_call(recorder, "seek")
    seen: list[Any] = []
    finished: list[Any] = []
    page.context.on("request", lambda r: seen.append(r))
    page.context.on("requestfinished", lambda r: finished.append(r))
    open_call(page, recorder, acct, call_id, listen=True)
    size = long_recording(recorder, acct, call_id, 180)
    assert publish(recorder, key, call_id, ended(duration_ms=180_000)).status_code == 202

    expect(page.locator("#recording")).to_be_visible(timeout=20_000)
    page.wait_for_function("() => document.getElementById('recording').readyState >= 1", timeout=10_000)
    served = recording_requests(seen, call_id, by_worker=True)
    assert served, "the player's requests go through the worker"
    assert [r.all_headers().get("range") for r in served[:1]] == ["bytes=0-"]
    assert served[0].response().status == 206
    assert all(r.all_headers().get("authorization", "").startswith("Bearer ") for r in served)
    assert not [r for r in served if r in finished], "playable before the whole file came"
    assert page.evaluate("document.getElementById('recording').duration") == pytest.approx(180)
    assert page.evaluate("document.getElementById('recording').buffered.end(0)") < 90

    # A seek to the end asks for the end, and plays it; through a worker the browser stopped
    # meanwhile (idle workers are), which holds no token and asks the page again.
    cdp = page.context.new_cdp_session(page)
    cdp.send("ServiceWorker.enable")
    cdp.send("ServiceWorker.stopAllWorkers")
    page.evaluate("(() => { const p = document.getElementById('recording'); p.currentTime = 178; return p.play(); })()")
    page.wait_for_function("() => document.getElementById('recording').ended", timeout=15_000)
    served = recording_requests(seen, call_id, by_worker=True)
    ranges = [re.fullmatch(r"bytes=(\d+)-\d*", r.all_headers().get("range", "")) for r in served]
    assert all(ranges), [r.all_headers().get("range") for r in served]
    assert max(int(m.group(1)) for m in ranges if m) > size * 0.9, "a range request from near the end"

    token = page.evaluate("JSON.parse(sessionStorage.getItem('callstream.session')).token")
    assert len(token) > 20
    assert not [r.url for r in seen if token in r.url or "token=" in r.url], "no credential in a URL"
    assert page.evaluate("document.getElementById('recording').src") == f"{recorder.url}/v1/calls/{call_id}/recording"


NO_SERVICE_WORKER = "delete Navigator.prototype.serviceWorker;"


def test_without_a_service_worker_the_recording_is_fetched_into_a_blob(recorder: ServerProcess, page: Any) -> None:
    """A page that cannot have a Service Worker (plain http from another host than localhost is
    not a secure context) fetches the whole file with its credential and plays it from a Blob."""
    page.add_init_script(NO_SERVICE_WORKER)
    acct, key, call_id = a_call(recorder, "blob")
    seen: list[Any] = []
    page.context.on("request", lambda r: seen.append(r))
    open_call(page, recorder, acct, call_id, listen=True)
    assert page.evaluate("'serviceWorker' in navigator") is False
    long_recording(recorder, acct, call_id, 5)
    assert publish(recorder, key, call_id, ended(duration_ms=5000)).status_code == 202
    expect(page.locator("#recording")).to_be_visible(timeout=20_000)
    page.wait_for_function("() => document.getElementById('recording').duration > 0", timeout=10_000)
    assert page.evaluate("document.getElementById('recording').duration") == pytest.approx(5)
    assert page.evaluate("document.getElementById('recording').src").startswith("blob:")
    fetched = recording_requests(seen, call_id, by_worker=False)
    assert [r.all_headers().get("range") for r in fetched] == [None], "one request, for the whole file"


def test_an_ended_call_without_a_recording_says_so(recorder: ServerProcess, page: Any) -> None:
    """The page looks for the file for a while (it is closed a moment after the call's end), then
    says there is none and shows no player."""
    acct, key, call_id = a_call(recorder, "mute")
    open_call(page, recorder, acct, call_id, listen=True)
    assert publish(recorder, key, call_id, ended()).status_code == 202
    expect(page.locator("#audio-status")).to_have_text("Looking for the recording…", timeout=10_000)
    expect(page.locator("#audio-status")).to_have_text("No recording of this call.", timeout=20_000)
    expect(page.locator("#recording")).to_be_hidden()
    assert page.evaluate("document.getElementById('recording').getAttribute('src')") is None
