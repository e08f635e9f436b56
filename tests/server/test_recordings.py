"""Recordings on the embedded node (docs/recordings.md): frames handed to the runtime as the
ingest socket hands them, the WAV served by `GET /v1/calls/{id}/recording` (in process, over
the real app), erased with its call, and named in the `call.ended` webhook."""

from __future__ import annotations

import asyncio
import io
import math
import os
import struct
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa

from callstream.events import NewEvent
from callstream.server import recording_files as files
from callstream.server.app import create_app
from callstream.server.recordings import Recordings
from callstream.server.retention import DAY_MS, RetentionSweep
from callstream.server.runtime import Runtime
from callstream.settings import Settings
from callstream.webhooks import tables as wt
from callstream.webhooks.hooks import repo_of

A, B = "acme", "globex"
RATE = 16000


@dataclass(frozen=True)
class Fmt:
    codec: str = "pcm_s16le"
    sample_rate: int = RATE


@dataclass(frozen=True)
class Frame:
    track: int
    ms: int
    payload: bytes


@dataclass
class Node:
    runtime: Runtime
    http: httpx.AsyncClient
    keys: dict[str, str]
    data_dir: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def get(self, call_id: str, who: str = "listener", **headers: str) -> httpx.Response:
        return await self.http.get(f"/v1/calls/{call_id}/recording", headers={**self.auth(who), **headers})


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    runtime = Runtime(Settings(data_dir=str(tmp_path), sentiment=False, record=True))
    app = create_app(runtime.settings, runtime)
    await runtime.start()
    keys = {}
    for who, account, scopes in (
        ("listener", A, {"listen"}),
        ("reader", A, {"subscribe"}),
        ("admin", A, {"admin"}),
        ("other", B, {"listen"}),
    ):
        _, keys[who] = await runtime.store.create_key(account, frozenset(scopes))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as http:
        yield Node(runtime, http, keys, tmp_path)
    await runtime.stop()


def tone(n: int, freq: float) -> list[int]:
    return [round(10000 * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n)]


CALLER, AGENT = tone(RATE, 440), tone(RATE // 2, 660)  # 1 s of caller, the agent's first 0.5 s


async def recorded_call(node: Node, call_id: str, account: str = A, *, end: bool = True) -> None:
    """A call whose caller speaks 1 s and agent 0.5 s, in 20 ms frames as a live producer sends."""
    runtime = node.runtime
    _, durable = await runtime.publish(account, [NewEvent(call_id, "transcript.final", {"speaker": "user", "text": "hi"})])
    await durable
    for i in range(0, RATE, 320):
        runtime.recordings.frame(account, call_id, Fmt(), Frame(0, i // 16, struct.pack("<320h", *CALLER[i : i + 320])))
        if i < len(AGENT):
            runtime.recordings.frame(account, call_id, Fmt(), Frame(1, i // 16, struct.pack("<320h", *AGENT[i : i + 320])))
    if end:
        _, durable = await runtime.publish(account, [NewEvent(call_id, "call.ended", {"status": "completed", "duration_ms": 1000})])
        await durable
    await runtime.recordings.written()


def channels(wav_bytes: bytes) -> tuple[list[int], list[int], int]:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        both = struct.unpack(f"<{wav.getnframes() * 2}h", wav.readframes(wav.getnframes()))
        return list(both[0::2]), list(both[1::2]), wav.getframerate()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---- the WAV and its ranges -----------------------------------------------------------------


async def test_an_ended_call_s_recording_is_served_as_the_wav_of_what_was_sent(node: Node) -> None:
    await recorded_call(node, "call_1")

    answer = await node.get("call_1")

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "audio/wav"
    assert answer.headers["accept-ranges"] == "bytes"
    left, right, rate = channels(answer.content)
    assert rate == RATE
    assert left == CALLER
    assert right == AGENT + [0] * (RATE - len(AGENT))


async def test_ranges_answer_206_with_the_bytes_asked_and_416_past_the_end(node: Node) -> None:
    await recorded_call(node, "call_1")
    whole = (await node.get("call_1")).content
    size = len(whole)

    head = await node.get("call_1", Range="bytes=0-43")
    assert head.status_code == 206
    assert head.headers["content-range"] == f"bytes 0-43/{size}"
    assert head.content == whole[:44]

    tail = await node.get("call_1", Range="bytes=-100")
    assert tail.status_code == 206
    assert tail.content == whole[-100:]
    assert tail.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"

    middle = await node.get("call_1", Range="bytes=1000-")
    assert (middle.status_code, middle.content) == (206, whole[1000:])

    past = await node.get("call_1", Range=f"bytes={size}-{size + 10}")
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{size}"


async def test_head_answers_what_get_would_without_the_body(node: Node) -> None:
    await recorded_call(node, "call_1")
    whole = await node.get("call_1")

    head = await node.http.head("/v1/calls/call_1/recording", headers=node.auth("listener"))

    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "accept-ranges", "etag"):
        assert head.headers[name] == whole.headers[name], name
    missing = await node.http.head("/v1/calls/never_was/recording", headers=node.auth("listener"))
    other = await node.http.head("/v1/calls/call_1/recording", headers=node.auth("other"))
    assert (missing.status_code, other.status_code) == (404, 404)


async def test_missing_other_accounts_and_unrecorded_calls_answer_the_same_404(node: Node) -> None:
    await recorded_call(node, "call_1")
    _, durable = await node.runtime.publish(A, [NewEvent("unrecorded", "call.ended", {"status": "completed", "duration_ms": 1000})])
    await durable

    answers = [
        await node.get("never_was"),
        await node.get("call_1", who="other"),  # B's key, A's call
        await node.get("unrecorded"),
        await node.get("not*valid"),
    ]

    assert [a.status_code for a in answers] == [404] * 4
    assert len({a.content for a in answers}) == 1
    assert answers[0].json() == {"error": {"code": "not_found", "message": "no such recording"}}


async def test_a_credential_without_listen_is_refused(node: Node) -> None:
    await recorded_call(node, "call_1")
    answer = await node.get("call_1", who="reader")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"


async def test_a_live_call_s_recording_is_served_once_it_ended(node: Node) -> None:
    await recorded_call(node, "call_1", end=False)
    assert (await node.get("call_1")).status_code == 404  # still being written

    _, durable = await node.runtime.publish(A, [NewEvent("call_1", "call.ended", {"status": "completed", "duration_ms": 1000})])
    await durable
    await node.runtime.recordings.written()

    left, _, _ = channels((await node.get("call_1")).content)
    assert left == CALLER


async def test_recordings_of_two_accounts_with_one_call_id_are_kept_apart(node: Node) -> None:
    await recorded_call(node, "same_id", A)
    await recorded_call(node, "same_id", B)
    assert len(files_under(node.data_dir / "recordings")) == 2
    assert (await node.get("same_id")).status_code == 200
    assert (await node.get("same_id", who="other")).status_code == 200


async def test_a_file_name_holds_nothing_of_the_call_id(node: Node) -> None:
    await recorded_call(node, "..:..")
    (path,) = files_under(node.data_dir / "recordings")
    assert path.parent.parent == node.data_dir / "recordings"
    assert ".." not in path.name
    assert ":" not in str(path.relative_to(node.data_dir))


async def test_stopping_the_node_finishes_a_live_call_s_file(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=str(tmp_path), sentiment=False, record=True))
    await runtime.start()
    for i in range(0, RATE, 320):
        runtime.recordings.frame(A, "live", Fmt(), Frame(0, i // 16, struct.pack("<320h", *CALLER[i : i + 320])))
    await runtime.stop()

    (path,) = files_under(tmp_path / "recordings")
    assert path.suffix == ".wav"
    left, _, _ = channels(path.read_bytes())
    assert left == CALLER


async def test_without_record_nothing_is_written(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=str(tmp_path), sentiment=False))
    await runtime.start()
    runtime.recordings.frame(A, "c", Fmt(), Frame(0, 0, bytes(640)))
    await runtime.stop()
    assert not (tmp_path / "recordings").exists()


# ---- erasure, retention, webhooks ------------------------------------------------------------


async def test_erasing_a_call_deletes_its_recording(node: Node) -> None:
    await recorded_call(node, "call_1")
    await recorded_call(node, "kept")

    answer = await node.http.delete("/v1/calls/call_1", headers=node.auth("admin"))

    assert answer.status_code == 204
    assert (await node.get("call_1")).status_code == 404
    assert (await node.get("kept")).status_code == 200
    assert len(files_under(node.data_dir / "recordings")) == 1


async def test_the_retention_sweep_deletes_the_recordings_of_the_calls_it_erases(node: Node) -> None:
    await recorded_call(node, "old")
    runtime = node.runtime
    ahead = 2 * DAY_MS / 1000
    sweep = RetentionSweep(runtime.store, runtime.erasure, 1, every_s=60, pause_s=0, clock=lambda: time.time() + ahead)

    assert await sweep.sweep() == 1

    assert (await node.get("old")).status_code == 404
    assert files_under(node.data_dir / "recordings") == []


async def test_the_call_ended_webhook_carries_the_recording_s_url(node: Node) -> None:
    await repo_of(node.runtime).create_endpoint(A, "https://hooks.example.com/h", ["call.ended"])
    await recorded_call(node, "call_1")
    _, durable = await node.runtime.publish(A, [NewEvent("silent", "call.ended", {"status": "completed", "duration_ms": 1000})])
    await durable

    payloads = await webhook_payloads(node.runtime)

    assert payloads["call_1"]["data"]["recording_url"] == "/v1/calls/call_1/recording"
    assert payloads["silent"]["data"]["recording_url"] is None


async def webhook_payloads(runtime: Runtime) -> dict[str, dict[str, object]]:
    async with runtime.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(wt.webhook_messages.c.call_id, wt.webhook_messages.c.payload))).all()
    return {row.call_id: orjson.loads(row.payload) for row in rows}


# ---- a recording that stops and goes on ------------------------------------------------------


def caller_frames(runtime: Runtime, call_id: str, first_ms: int, samples: list[int]) -> None:
    for i in range(0, len(samples), 320):
        runtime.recordings.frame(A, call_id, Fmt(), Frame(0, first_ms + i // 16, struct.pack("<320h", *samples[i : i + 320])))


async def test_a_call_quiet_for_a_while_has_its_file_closed_and_reopened_when_it_speaks_again(node: Node) -> None:
    runtime = node.runtime
    caller_frames(runtime, "call_1", 0, CALLER)
    await runtime.recordings.written()
    assert (await node.get("call_1")).status_code == 404  # being written

    runtime.recordings.tick(time.monotonic() + 60)  # long quiet: closed
    await runtime.recordings.written()
    left, _, _ = channels((await node.get("call_1")).content)
    assert left == CALLER

    caller_frames(runtime, "call_1", 2000, CALLER)  # speaks again a second later
    _, durable = await runtime.publish(A, [NewEvent("call_1", "call.ended", {"status": "completed", "duration_ms": 1000})])
    await durable
    await runtime.recordings.written()
    left, _, _ = channels((await node.get("call_1")).content)
    assert left == CALLER + [0] * RATE + CALLER


async def test_a_node_started_again_goes_on_with_the_file_of_a_call_still_live(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), sentiment=False, record=True)
    first = Runtime(settings)
    await first.start()
    caller_frames(first, "live", 0, CALLER)
    await first.stop()

    second = Runtime(settings)
    await second.start()
    caller_frames(second, "live", 1500, CALLER)
    second.recordings.end(A, "live")
    await second.stop()

    (path,) = files_under(tmp_path / "recordings")
    left, right, _ = channels(path.read_bytes())
    assert left == CALLER + [0] * (RATE // 2) + CALLER
    assert right == [0] * len(left)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_account_sending_audio_for_endless_calls_holds_a_bounded_number_of_files(tmp_path: Path) -> None:
    recordings = Recordings(tmp_path, enabled=True, max_open=20, max_open_per_account=10, quiet_s=0.05)
    frame = struct.pack("<320h", *CALLER[:320])
    before = open_descriptors()
    try:
        for flooders, account in enumerate(("flood_1", "flood_2"), 1):  # calls never started nor ended
            for n in range(2_000):
                recordings.frame(account, f"call_{n}", Fmt(), Frame(0, 0, frame))
                if n % 100 == 0:
                    await asyncio.sleep(0)  # the writer opens files meanwhile
            await recordings.written()
            assert open_descriptors() - before <= 10 * flooders

        await asyncio.sleep(0.1)  # the flood's calls went quiet: they give their files to new ones
        for i in range(0, RATE, 320):  # another account's call is recorded whole meanwhile
            recordings.frame(A, "victim", Fmt(), Frame(0, i // 16, struct.pack("<320h", *CALLER[i : i + 320])))
        recordings.end(A, "victim")
        await recordings.written()
        left, _, _ = channels(recordings.paths(A, "victim").finished.read_bytes())  # type: ignore[union-attr]
        assert left == CALLER
    finally:
        await recordings.close()
    assert open_descriptors() <= before


async def test_at_the_node_s_bound_the_call_quiet_longest_gives_its_file_to_a_new_one(tmp_path: Path) -> None:
    recordings = Recordings(tmp_path, enabled=True, max_open=2, max_open_per_account=2, quiet_s=0.05)
    frame = struct.pack("<320h", *CALLER[:320])
    try:
        recordings.frame("flood_1", "quiet", Fmt(), Frame(0, 0, frame))
        recordings.frame("flood_2", "loud", Fmt(), Frame(0, 0, frame))
        await recordings.written()
        await asyncio.sleep(0.1)
        recordings.frame("flood_2", "loud", Fmt(), Frame(0, 20, frame))
        recordings.frame(A, "new", Fmt(), Frame(0, 0, frame))  # closes "quiet", keeps "loud"
        await recordings.written()
        assert {p.suffix for p in files_under(tmp_path)} == {".wav", ".part"}
        assert recordings.paths("flood_1", "quiet").finished.exists()  # type: ignore[union-attr]
        assert recordings.paths("flood_2", "loud").writing.exists()  # type: ignore[union-attr]
        assert recordings.paths(A, "new").writing.exists()  # type: ignore[union-attr]
    finally:
        await recordings.close()


async def test_an_account_at_its_bound_never_closes_another_account_s_file(tmp_path: Path) -> None:
    """An account whose own quiet-longest call is still opening cannot make room for itself:
    its new call goes unrecorded, and no other account's call is closed for it."""
    recordings = Recordings(tmp_path, enabled=True, max_open=2, max_open_per_account=1)
    frame = struct.pack("<320h", *CALLER[:320])
    try:
        recordings.frame(B, "theirs", Fmt(), Frame(0, 0, frame))
        await recordings.written()
        recordings.frame("flood_1", "call_1", Fmt(), Frame(0, 0, frame))  # opening: nothing to close yet
        recordings.frame("flood_1", "call_2", Fmt(), Frame(0, 0, frame))
        await recordings.written()
        assert recordings.paths(B, "theirs").writing.exists()  # type: ignore[union-attr]
        assert not recordings.paths(B, "theirs").finished.exists()  # type: ignore[union-attr]
        assert not recordings.paths("flood_1", "call_2").writing.exists()  # type: ignore[union-attr]
    finally:
        await recordings.close()


async def test_calls_speaking_at_the_bound_keep_their_files_and_a_new_one_waits_for_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a call fed 20 ms ago only to reopen it 20 ms later frees nothing: only a call quiet
    for a while gives its file to a new one."""
    opened: list[str] = []
    real_open = files.open_for
    monkeypatch.setattr(files, "open_for", lambda paths, rate: opened.append(paths.writing.name) or real_open(paths, rate))
    recordings = Recordings(tmp_path, enabled=True, max_open=10, max_open_per_account=2)
    try:
        for i in range(0, RATE, 320):  # three calls speak at once, 20 ms frames in turn
            for call_id in ("c1", "c2", "c3"):
                recordings.frame(A, call_id, Fmt(), Frame(0, i // 16, struct.pack("<320h", *CALLER[i : i + 320])))
            await recordings.written()
        assert len(opened) == 2  # c1 and c2, once each
        for call_id in ("c1", "c2"):
            recordings.end(A, call_id)
        await recordings.written()
        for call_id in ("c1", "c2"):
            left, _, _ = channels(recordings.paths(A, call_id).finished.read_bytes())  # type: ignore[union-attr]
            assert left == CALLER
        assert not recordings.paths(A, "c3").finished.exists()  # type: ignore[union-attr]
    finally:
        await recordings.close()


async def test_a_file_left_open_by_a_node_that_died_is_taken_over_while_the_call_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer back on a node within `STALE_S` of the crash finds the call's `.part` still
    fresh: that node tries again while the audio goes on, and takes the file over once stale."""
    monkeypatch.setattr(files, "STALE_S", 0.3)
    paths = files.paths_for(tmp_path, A, "live")
    crashed = files.open_for(paths, RATE)
    files.append(crashed, [struct.pack("<320h", *CALLER[:320])])
    files.discard(crashed)  # the node died: its `.part` is never closed
    recordings = Recordings(tmp_path, enabled=True, idle_s=0.5)
    frame = struct.pack("<320h", *CALLER[:320])
    try:
        started = time.monotonic()
        for i in range(75):  # 1.5 s of audio, in real time
            recordings.frame(A, "live", Fmt(), Frame(0, 20 * i, frame))
            recordings.tick(time.monotonic())
            await asyncio.sleep(max(0.0, started + 0.02 * (i + 1) - time.monotonic()))
        recordings.end(A, "live")
        await recordings.written()
    finally:
        await recordings.close()

    assert paths.finished.exists(), "the call's recording was never taken over"
    left, _, _ = channels(paths.finished.read_bytes())
    assert left[-320:] == CALLER[:320]  # the call's last frame is in it


async def test_a_call_that_cannot_be_recorded_is_logged_once_however_often_it_tries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its file is held by a node that still writes it: every retry fails, and a full disk would
    fail every call's the same way, so the log says it once a call, not once a retry."""
    paths = files.paths_for(tmp_path, A, "held")
    holder = files.open_for(paths, RATE)  # another node writes it: fresh, never stale here
    recordings = Recordings(tmp_path, enabled=True, idle_s=0.05)
    frame = struct.pack("<320h", *CALLER[:320])
    caplog.set_level("DEBUG", logger="callstream.recordings")
    try:
        for i in range(30):  # 0.6 s of audio: a retry every 50 ms
            recordings.frame(A, "held", Fmt(), Frame(0, 20 * i, frame))
            recordings.tick(time.monotonic())
            await recordings.written()
            await asyncio.sleep(0.02)
    finally:
        await recordings.close()
        files.discard(holder)

    tries = [r for r in caplog.records if "is not recorded on this node" in r.getMessage()]
    assert len(tries) >= 3, "the call was not tried again"
    assert [r.levelname for r in tries].count("WARNING") == 1


def test_a_part_is_stale_once_nobody_has_written_it_for_the_takeover_window() -> None:
    now = 1_000_000.0
    assert not files.is_stale(now - files.STALE_S + 1, now)
    assert files.is_stale(now - files.STALE_S, now)


async def test_a_file_left_open_by_a_node_that_died_is_served_once_stale_without_another_frame(node: Node) -> None:
    """The call ended where no frame of it came again: its `.part` is closed as it is once nobody
    has written it for `STALE_S`, and served; not before (a node may still be writing it). One
    with no header (killed before writing it) is not a recording to serve."""
    root = node.runtime.recordings.root
    paths, empty = files.paths_for(root, A, "left"), files.paths_for(root, A, "empty")
    crashed = files.open_for(paths, RATE)
    files.append(crashed, [struct.pack(f"<{2 * len(CALLER)}h", *(sample for c in CALLER for sample in (c, 0)))])
    files.discard(crashed)  # the node died: its `.part` is never closed
    empty.writing.touch()

    assert (await node.get("left")).status_code == 404
    left_at = time.time() - files.STALE_S - 1
    for part in (paths.writing, empty.writing):
        os.utime(part, (left_at, left_at))
    assert (await node.http.head("/v1/calls/left/recording", headers=node.auth("listener"))).status_code == 200
    answer = await node.get("left")

    assert answer.status_code == 200, answer.text
    left, right, _ = channels(answer.content)
    assert (left, right) == (CALLER, [0] * len(CALLER))
    assert not paths.writing.exists()
    assert (await node.get("empty")).status_code == 404
    assert empty.writing.exists()


async def test_a_file_that_cannot_be_started_leaves_no_descriptor_and_no_part_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk refuses the new file's header: the call is not recorded, and nothing of the
    attempt stays (a held descriptor per call, an empty `.part` that counts as a recording)."""

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    recordings = Recordings(tmp_path, enabled=True)
    before = open_descriptors()
    monkeypatch.setattr(os, "pwrite", full)
    try:
        recordings.frame(A, "call_1", Fmt(), Frame(0, 0, struct.pack("<320h", *CALLER[:320])))
        await recordings.written()
    finally:
        monkeypatch.undo()
        await recordings.close()

    assert open_descriptors() <= before
    assert files_under(tmp_path) == []
    assert not await recordings.has_recording(A, "call_1")
