"""Recordings on real servers (docs/recordings.md): a producer's audio on /v1/ingest comes back
from `GET /v1/calls/{id}/recording` as a WAV equal, sample by sample, to what was sent; ranges;
erasure; and two nodes on Redis sharing the recordings directory."""

from __future__ import annotations

import asyncio
import io
import math
import os
import struct
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from callstream.audio import encode_frame
from callstream.recording import ulaw_to_linear, wav_header
from callstream.server.recording_files import paths_for
from tests.helpers import Cluster, ServerProcess, ended, key_of, publish, recv, send

RECORDING = {"CALLSTREAM_RECORD": "1"}


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("recorder"), "--record").start()
    yield server
    server.stop()


def new_call() -> str:
    return f"rec_{uuid.uuid4().hex[:10]}"


def tone(n: int, freq: float, rate: int) -> list[int]:
    return [round(9000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def produce(server: ServerProcess, key: str, call_id: str, tracks: dict[int, bytes], *, codec: str, rate: int) -> None:
    """Send both tracks in 20 ms frames, interleaved in time as a live producer does, then end
    the call and wait for its ack."""
    width = 2 if codec == "pcm_s16le" else 1
    per = rate // 50 * width
    async with connect(f"{server.ws_url}/v1/ingest?token={key}") as mouth:
        await send(mouth, {"type": "audio.format", "call_id": call_id, "codec": codec, "sample_rate": rate})
        for offset in range(0, max(len(t) for t in tracks.values()), per):
            for track, audio in tracks.items():
                if offset < len(audio):
                    await mouth.send(encode_frame(track, call_id, offset // per * 20, audio[offset : offset + per]))
        await send(mouth, {**ended(), "call_id": call_id, "ref": 1})
        assert (await recv(mouth))["type"] == "ack"


def fetch(server: ServerProcess, key: str, call_id: str, within: float = 20.0, **headers: str) -> httpx.Response:
    """The recording, once the node closed its file (a moment after call.ended)."""
    deadline = time.monotonic() + within
    while True:
        answer = httpx.get(f"{server.url}/v1/calls/{call_id}/recording", headers={**auth(key), **headers}, timeout=10)
        if answer.status_code != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def channels(data: bytes) -> tuple[list[int], list[int], int]:
    with wave.open(io.BytesIO(data)) as wav:
        both = struct.unpack(f"<{wav.getnframes() * 2}h", wav.readframes(wav.getnframes()))
        return list(both[0::2]), list(both[1::2]), wav.getframerate()


def recordings_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in (".wav", ".part")]


async def test_the_recording_is_the_pcm_sent_on_both_tracks_sample_for_sample(recorder: ServerProcess) -> None:
    key, call_id = key_of(recorder), new_call()
    caller, agent = tone(16000, 440, 16000), tone(8000, 660, 16000)
    await produce(
        recorder, key, call_id,
        {0: struct.pack(f"<{len(caller)}h", *caller), 1: struct.pack(f"<{len(agent)}h", *agent)},
        codec="pcm_s16le", rate=16000,
    )  # fmt: skip

    answer = fetch(recorder, key, call_id)

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "audio/wav"
    left, right, rate = channels(answer.content)
    assert rate == 16000
    assert left == caller
    assert right == agent + [0] * (len(caller) - len(agent))


async def test_mulaw_is_recorded_as_its_decoded_samples(recorder: ServerProcess) -> None:
    key, call_id = key_of(recorder), new_call()
    codes = bytes(range(256)) * 10
    await produce(recorder, key, call_id, {1: codes}, codec="mulaw", rate=8000)
    left, right, rate = channels(fetch(recorder, key, call_id).content)
    assert rate == 8000
    assert right == [ulaw_to_linear(c) for c in codes]
    assert left == [0] * len(codes)


async def test_ranges_and_erasure(recorder: ServerProcess) -> None:
    key, call_id = key_of(recorder), new_call()
    audio = struct.pack("<8000h", *tone(8000, 300, 16000))
    await produce(recorder, key, call_id, {0: audio}, codec="pcm_s16le", rate=16000)
    whole = fetch(recorder, key, call_id).content

    head = fetch(recorder, key, call_id, Range="bytes=0-43")
    assert (head.status_code, head.content) == (206, whole[:44])
    assert head.headers["content-range"] == f"bytes 0-43/{len(whole)}"
    past = fetch(recorder, key, call_id, Range=f"bytes={len(whole)}-")
    assert (past.status_code, past.headers["content-range"]) == (416, f"bytes */{len(whole)}")

    assert recordings_under(Path(recorder.data_dir) / "recordings")
    erased = httpx.delete(f"{recorder.url}/v1/calls/{call_id}", headers=auth(key), timeout=30)
    assert erased.status_code == 204, erased.text
    gone = httpx.get(f"{recorder.url}/v1/calls/{call_id}/recording", headers=auth(key), timeout=10)
    assert gone.json() == {"error": {"code": "not_found", "message": "no such recording"}}


async def test_a_recording_made_on_one_node_is_served_and_erased_by_another(
    cluster: Cluster, account: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-recordings"
    near, far = cluster.start(2, env={**RECORDING, "CALLSTREAM_RECORDINGS_DIR": str(shared)})
    key, call_id = cluster.key(account), new_call()
    audio = struct.pack("<16000h", *tone(16000, 500, 16000))
    await produce(near, key, call_id, {0: audio}, codec="pcm_s16le", rate=16000)

    answer = fetch(far, key, call_id)
    assert answer.status_code == 200, answer.text
    left, _, _ = channels(answer.content)
    assert left == list(struct.unpack("<16000h", audio))

    assert httpx.delete(f"{far.url}/v1/calls/{call_id}", headers=auth(key), timeout=30).status_code == 204
    assert recordings_under(shared) == []


async def test_a_range_header_the_server_cannot_read_is_ignored(recorder: ServerProcess) -> None:
    """RFC 9110 §14.2: a Range in a unit the server does not know MUST be ignored, and an invalid
    one may be; either way the answer is the whole file, not a plain-text 400 (every REST error
    is JSON)."""
    key, call_id = key_of(recorder), new_call()
    audio = struct.pack("<1600h", *tone(1600, 300, 16000))
    await produce(recorder, key, call_id, {0: audio}, codec="pcm_s16le", rate=16000)
    whole = fetch(recorder, key, call_id).content

    for header in ("items=0-9", "bytes=abc", "bytes=9-3"):
        answer = fetch(recorder, key, call_id, Range=header)
        assert (answer.status_code, answer.headers["content-type"]) == (200, "audio/wav"), header
        assert answer.content == whole


async def test_a_download_under_way_when_the_call_speaks_again_gets_the_file_it_was_promised(
    recorder: ServerProcess,
) -> None:
    """A call quiet for a while has its file closed and served; when it speaks again the node
    goes on writing that very file. A download begun before gets the bytes its Content-Length
    said, not a connection broken by the bytes appended since."""
    account, call_id = f"acct_{uuid.uuid4().hex[:10]}", new_call()
    key = recorder.create_key(account)
    paths = paths_for(Path(recorder.data_dir) / "recordings", account, call_id)
    paths.finished.parent.mkdir(parents=True, exist_ok=True)
    data_bytes = 16 * 1024 * 1024  # more than the sockets' buffers hold: the download waits on the reader
    paths.finished.write_bytes(wav_header(16000, data_bytes) + bytes(data_bytes))  # closed after a quiet spell

    url = f"{recorder.url}/v1/calls/{call_id}/recording"
    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url, headers=auth(key)) as answer:
        chunks = answer.aiter_raw(64 * 1024)
        received = len(await anext(chunks))
        async with connect(f"{recorder.ws_url}/v1/ingest?token={key}") as mouth:  # the call speaks again
            await send(mouth, {"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": 16000})
            for i in range(100):
                await mouth.send(encode_frame(0, call_id, 600_000 + 20 * i, bytes(640)))
            deadline = time.monotonic() + 10
            while not (paths.writing.exists() and paths.writing.stat().st_size > 44 + data_bytes):
                assert time.monotonic() < deadline, "the call's file was not taken up again"
                await asyncio.sleep(0.05)
        async for chunk in chunks:
            received += len(chunk)

    assert received == 44 + data_bytes == int(answer.headers["content-length"])


async def test_a_file_left_open_by_a_node_that_died_is_served_once_stale_after_the_call_ends_elsewhere(
    tmp_path: Path,
) -> None:
    """A node killed mid-call leaves the call's `.part`, a playable WAV of what it had written.
    The call then ends over REST with no more audio, so no node ever reopens that file: once
    nobody has written it for `STALE_S` it is served (what was sent before the kill, sample for
    sample); while it is fresh it is not."""
    server = ServerProcess(tmp_path, "--record").start()
    account, call_id = f"acct_{uuid.uuid4().hex[:10]}", new_call()
    key = server.create_key(account)
    paths = paths_for(Path(server.data_dir) / "recordings", account, call_id)
    caller = tone(16000, 440, 16000)
    sent = struct.pack(f"<{len(caller)}h", *caller)
    try:
        async with connect(f"{server.ws_url}/v1/ingest?token={key}") as mouth:
            await send(mouth, {"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": 16000})
            started = time.monotonic()
            for i in range(50):  # one second, in real time
                await mouth.send(encode_frame(0, call_id, 20 * i, sent[640 * i : 640 * (i + 1)]))
                await asyncio.sleep(max(0.0, started + 0.02 * (i + 1) - time.monotonic()))
            deadline = time.monotonic() + 10
            while not (paths.writing.exists() and paths.writing.stat().st_size >= 44 + 4 * len(caller) // 2):
                assert time.monotonic() < deadline, "the node did not write the call's audio"
                await asyncio.sleep(0.05)
            server.kill()  # mid-call: the `.part` is never closed
        written = (paths.writing.stat().st_size - 44) // 4  # the last 200 ms were still in memory
        server.start()
        assert publish(server, key, call_id, ended()).status_code < 300  # the call ends, no audio after

        fresh = fetch(server, key, call_id, within=1.5)
        assert fresh.status_code == 404, "a .part written moments ago is served as finished"

        left_at = time.time() - 61  # nobody has written it for longer than the takeover window
        os.utime(paths.writing, (left_at, left_at))
        answer = fetch(server, key, call_id, within=5)

        assert answer.status_code == 200, answer.text
        left, right, rate = channels(answer.content)
        assert (rate, left, right) == (16000, caller[:written], [0] * written)
        assert not paths.writing.exists()
        assert httpx.delete(f"{server.url}/v1/calls/{call_id}", headers=auth(key), timeout=30).status_code == 204
        assert recordings_under(Path(server.data_dir) / "recordings") == []
    finally:
        server.stop()
