"""Faults: a full disk under the SQLite store turns publishing into clear errors, and back.

Needs root (it mounts a small tmpfs as the data directory); skipped otherwise. SIGKILL during
ingest is covered in test_ingest.py, graceful 1001 drains in test_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import ServerProcess, final, publish, recv


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: small enough to fill in a moment."""
    if not _can_mount():
        pytest.skip("needs root to mount a tmpfs")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; the file is the space to give back later."""
    filler = directory / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def health(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.url + "/healthz", timeout=10)


async def test_a_full_disk_gives_clear_errors_and_recovers(
    tmp_path: Path, small_disk: Path, call_id: str
) -> None:
    server = ServerProcess(tmp_path, "--data-dir", str(small_disk))  # logs stay on the big disk
    await asyncio.to_thread(server.start)
    try:
        out = await asyncio.to_thread(
            server.cli, "keys", "create", "--account", "acme", "--json", "--data-dir", str(small_disk)
        )
        key = orjson.loads(out.stdout)["key"]
        assert publish(server, key, call_id, final("before")).status_code == 202
        filler = await asyncio.to_thread(fill, small_disk)

        # Publish until the store refuses: every answer is quick, 202 or a clear 503.
        big = [final("x" * 16_000) for _ in range(8)]
        failure = None
        for _ in range(60):
            started = time.monotonic()
            response = await asyncio.to_thread(publish, server, key, call_id, big)
            assert time.monotonic() - started < 12, "a publish hung on the full disk"
            if response.status_code != 202:
                failure = response
                break
        assert failure is not None, "the disk never filled up"
        assert failure.status_code == 503, failure.text
        assert failure.json()["error"]["code"] == "unavailable"
        assert failure.json()["error"]["message"]
        assert health(server).status_code == 503
        assert health(server).json()["store"] is False

        # The ingest socket answers `internal` with the event's ref, and stays open.
        async with await connect(f"{server.ws_url}/v1/ingest?token={key}") as ws:
            frame: dict[str, Any] = {"call_id": call_id, **final("y" * 16_000), "ref": "full"}
            await ws.send(orjson.dumps(frame).decode())
            error = await recv(ws, timeout=15)
            assert (error["type"], error["ref"], error["data"]["code"]) == ("error", "full", "internal")

            filler.unlink()  # space comes back: so does the node, without a restart
            deadline = time.monotonic() + 10
            while health(server).status_code != 200:
                assert time.monotonic() < deadline, "healthz stayed 503 after the disk recovered"
                await asyncio.sleep(0.2)
            await ws.send(orjson.dumps({"call_id": call_id, **final("back"), "ref": "back"}).decode())
            ack = await recv(ws, timeout=15)
            assert (ack["type"], ack["ref"]) == ("ack", "back")
        assert publish(server, key, call_id, final("and over REST")).status_code == 202
        response = await asyncio.to_thread(
            httpx.get, f"{server.url}/v1/calls/{call_id}/events", headers={"Authorization": f"Bearer {key}"}
        )
        texts = [e["data"]["text"] for e in response.json()["events"]]
        assert texts[0] == "before"
        assert texts[-2:] == ["back", "and over REST"]
    finally:
        await asyncio.to_thread(server.kill)
