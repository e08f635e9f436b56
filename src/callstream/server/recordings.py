"""The node's recordings (`--record`, docs/recordings.md): each call's audio into its WAV file.

The event loop never touches a file. Frames go through the call's `recording.Assembler` (pure,
bounded), and what it returns is queued per call and handed, 64 KiB or a second at a time, to
one writer thread (`recording_files`). One thread means the jobs of a call (open, appends,
close, erase) run in the order they were asked for, without a lock.

A call's file is closed, and renamed from `.part` to `.wav`, when `call.ended` passes through
this node (its publish path or its fan-out), when no frame came for `IDLE_S` (a producer that
went quiet, or moved to another node: the next frame opens the file again and goes on where it
stopped), and when the node stops; a `.part` a node that died left is closed when its recording
is asked for, once stale (`finished`). The writer's backlog is bounded: past `MAX_QUEUED_BYTES`
audio is written as silence of the same length, so the file stays aligned while the disk catches
up. Serving and erasing files works whether or not this node records.

Open files are bounded, per account and per node (`MAX_OPEN_PER_ACCOUNT`, `MAX_OPEN`, and at most
a quarter of the process's descriptor limit): a producer may send audio for any number of calls,
and each would hold a descriptor until it goes quiet. At a bound the call fed least recently is
closed if it has been quiet for `QUIET_S` (it reopens where it stopped when it speaks again);
otherwise the new call's frames are not recorded until one is. So one account's calls never take
the descriptors the node needs for other accounts' files and sockets, and calls that speak keep
their files.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from callstream.recording import FRAME_BYTES, RATES, Assembler, AudioFormatLike, AudioFrameLike, Chunk, Limits
from callstream.server import recording_files as files
from callstream.server.recording_files import OpenFile, RecordingPaths

__all__ = ["IDLE_S", "Recordings"]

log = logging.getLogger("callstream.recordings")

IDLE_S = 10.0  # a call with no frame this long has its file closed (the next frame reopens it)
TICK_S = 1.0  # queued samples are written at least this often
FLUSH_BYTES = 64 * 1024  # a call's queued samples are handed to the writer at this size
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # the writer's backlog; past it audio is written as silence
MAX_WAITING = 256  # frames held while the call's file is being opened
ENDED_KEPT = 10_000  # ended calls remembered, so a late frame does not reopen their file
MAX_OPEN = 4_000  # recording files open (or opening) on the node
MAX_OPEN_PER_ACCOUNT = 1_000  # of them, one account's
QUIET_S = 1.0  # at a bound, a call quiet this long gives its file to a new one

_Key = tuple[str, str]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Frame:
    """A frame held while its call's file opens (the payload copied: the caller's may be reused)."""

    track: int
    ms: int
    payload: bytes
    arrived_ms: int


@dataclass(eq=False, slots=True)
class _Call:
    paths: RecordingPaths
    sample_rate: int
    last_frame: float
    assembler: Assembler | None = None  # None while the file opens
    file: OpenFile | None = None
    waiting: list[tuple[AudioFormatLike, _Frame]] = field(default_factory=list)
    queued: list[Chunk] = field(default_factory=list)
    queued_bytes: int = 0
    ending: bool = False  # closed as soon as the file is open
    dead: bool = False  # the file could not be opened: frames are dropped until `tick` lets it go
    dead_since: float = 0.0  # when the opening failed
    holds_file: bool = True  # counted among the open files until its close is handed to the writer


class Recordings:
    """Records calls under `root` (when `enabled`), serves and erases their files."""

    def __init__(
        self,
        root: Path,
        *,
        enabled: bool,
        limits: Limits | None = None,
        idle_s: float = IDLE_S,
        max_open: int = MAX_OPEN,
        max_open_per_account: int = MAX_OPEN_PER_ACCOUNT,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.root = root
        self.enabled = enabled
        self._limits = limits or Limits()
        self._idle_s = idle_s
        self._max_open = min(max_open, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
        self._max_open_per_account = min(max_open_per_account, self._max_open)
        self._quiet_s = quiet_s
        self._calls: dict[_Key, _Call] = {}
        self._recent: OrderedDict[_Key, _Call] = OrderedDict()  # calls that may be closed, least recently fed first
        self._recent_of: dict[str, OrderedDict[_Key, _Call]] = {}  # the same, per account
        self._open_files = 0
        self._open_files_of: Counter[str] = Counter()
        self._ended: OrderedDict[_Key, None] = OrderedDict()
        self._not_recorded: OrderedDict[_Key, None] = OrderedDict()  # told in the log, once a call
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recordings")
        self._backlog = 0  # bytes handed to the writer and not written yet
        self._jobs = 0  # handed to the writer so far

    # ---- what the node asks ------------------------------------------------------------------

    def frame(self, account: str, call_id: str, fmt: AudioFormatLike, frame: AudioFrameLike) -> None:
        """Record one accepted frame of a live call (nothing when recording is off)."""
        if not self.enabled:
            return
        key = (account, call_id)
        call = self._calls.get(key)
        if call is None:
            if key in self._ended or fmt.sample_rate not in RATES or (paths := self.paths(*key)) is None:
                return
            if not self._room_for(account):
                return
            call = self._open(key, paths, fmt.sample_rate)
        elif key in self._recent:
            self._recent.move_to_end(key)
            self._recent_of[account].move_to_end(key)
        call.last_frame = now = time.monotonic()
        if call.assembler is not None:
            self._queue(call, call.assembler.feed(fmt, frame, int(now * 1000)))
        elif not call.dead and len(call.waiting) < MAX_WAITING:
            call.waiting.append((fmt, _Frame(frame.track, frame.ms, bytes(frame.payload), int(now * 1000))))

    def end(self, account: str, call_id: str) -> None:
        """The call ended: close its file (a later frame of it is not recorded)."""
        if not self.enabled:
            return
        key = (account, call_id)
        self._not_recorded.pop(key, None)
        self._ended[key] = None
        if len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        if (call := self._calls.get(key)) is not None:
            self._close(key, call)

    def forget(self, account: str, call_ids: list[str] | tuple[str, ...]) -> asyncio.Future[None]:
        """The calls were erased: drop what this node holds of them and delete their files."""
        doomed = []
        for call_id in call_ids:
            key = (account, call_id)
            self._ended.pop(key, None)
            self._not_recorded.pop(key, None)
            call = self._calls.pop(key, None)
            if call is not None:
                self._unlist(key)
            if call is not None and call.file is not None:
                self._release(key, call)
                self._submit(files.discard, call.file)
            if (paths := self.paths(account, call_id)) is not None:
                doomed.append(paths)
        erasing = self._submit(files.erase, doomed)
        erasing.add_done_callback(_log_failure)
        return erasing

    async def erase(self, account: str, call_ids: list[str]) -> None:
        """`forget`, returning once the files are gone (an erasure answers after that)."""
        await self.forget(account, call_ids)

    def paths(self, account: str, call_id: str) -> RecordingPaths | None:
        """The call's file names; None for an id no call can have."""
        try:
            return files.paths_for(self.root, account, call_id)
        except ValueError:
            return None

    async def has_recording(self, account: str, call_id: str) -> bool:
        """Whether the call has a recording, finished or being written (on any node)."""
        call = self._calls.get((account, call_id))
        if call is not None and not call.dead:
            return True
        paths = self.paths(account, call_id)
        return paths is not None and await asyncio.to_thread(files.exists, paths)

    async def finished(self, paths: RecordingPaths) -> os.stat_result | None:
        """The `stat` of the call's closed file, to serve; None while it is being written. A
        `.part` nobody has written for `STALE_S` (its node died) is closed first, on the writer
        thread: in order with this node's erasures, and taken over as a frame would take it."""
        if (stat := await asyncio.to_thread(files.stat_finished, paths)) is not None:
            return stat
        if not await asyncio.to_thread(files.left_open, paths):
            return None
        try:
            await self._submit(files.close_left_open, paths)
        except OSError as error:  # a read-only mount, a failing disk: it stays as it is
            log.warning("recording file %s left open could not be closed: %s", paths.writing.name, error)
            return None
        return await asyncio.to_thread(files.stat_finished, paths)

    async def run_forever(self) -> None:
        """Every `TICK_S`: hand queued samples to the writer; close the files of idle calls."""
        while True:
            await asyncio.sleep(TICK_S)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        for key, call in list(self._calls.items()):
            if self._lapsed(call, now):
                self._close(key, call)
            else:
                self._flush(call)

    def _lapsed(self, call: _Call, now: float) -> bool:
        """Whether the call's entry goes: its file open and no frame for `idle_s` (the next frame
        reopens it), or its file not opened for `idle_s`, frames or not: its next frame tries
        again, so a `.part` a node that died left is taken over once stale while the call goes on."""
        if call.dead:
            return now - call.dead_since >= self._idle_s
        return call.assembler is not None and now - call.last_frame >= self._idle_s

    async def written(self) -> None:
        """Return once the writer has done everything asked of it so far, and what that asked
        for in turn (a file that opened has its waiting frames written, and its close)."""
        while True:
            before = self._jobs
            await self._submit(_nothing)
            if self._jobs == before + 1:
                return

    async def close(self) -> None:
        """Close every open file (the node stops), and wait for the writer to finish."""
        for key, call in list(self._calls.items()):
            self._close(key, call)
        await self.written()
        self._writer.shutdown(wait=False)

    # ---- the calls' life ---------------------------------------------------------------------

    def _room_for(self, account: str) -> bool:
        """Whether a new call of `account` may open a file, after closing the least recently fed
        call (the account's at its bound, the node's at its own) where that frees one. An
        account that could not make room among its own calls closes no other account's."""
        if self._open_files_of[account] >= self._max_open_per_account:
            self._close_quiet(self._recent_of.get(account))
            if self._open_files_of[account] >= self._max_open_per_account:
                return False
        if self._open_files >= self._max_open:
            self._close_quiet(self._recent)
        return self._open_files < self._max_open

    def _close_quiet(self, recent: OrderedDict[_Key, _Call] | None) -> None:
        """Close the least recently fed of `recent` if its file is open and it has been quiet for
        `quiet_s`: closing a call that speaks would only have it reopened a frame later."""
        if not recent:
            return
        key, call = next(iter(recent.items()))
        if call.file is not None and time.monotonic() - call.last_frame >= self._quiet_s:
            self._close(key, call)

    def _unlist(self, key: _Key) -> None:
        """The call can no longer be closed to make room (it is closing, or has no file)."""
        if self._recent.pop(key, None) is not None:
            mine = self._recent_of[key[0]]
            del mine[key]
            if not mine:
                del self._recent_of[key[0]]

    def _release(self, key: _Key, call: _Call) -> None:
        """The call's file is closed or was never opened: it no longer counts against the bounds."""
        if call.holds_file:
            call.holds_file = False
            self._open_files -= 1
            self._open_files_of[key[0]] -= 1
            if not self._open_files_of[key[0]]:
                del self._open_files_of[key[0]]

    def _open(self, key: _Key, paths: RecordingPaths, sample_rate: int) -> _Call:
        call = self._calls[key] = _Call(paths, sample_rate, time.monotonic())
        self._recent[key] = call
        self._recent_of.setdefault(key[0], OrderedDict())[key] = call
        self._open_files += 1
        self._open_files_of[key[0]] += 1
        opening = self._submit(files.open_for, paths, sample_rate)
        opening.add_done_callback(functools.partial(self._opened, key, call))
        return call

    def _opened(self, key: _Key, call: _Call, opening: asyncio.Future[OpenFile]) -> None:
        error = None if opening.cancelled() else opening.exception()
        if opening.cancelled() or error is not None:
            self._log_not_recorded(key, error)
            call.dead, call.dead_since, call.waiting = True, time.monotonic(), []
            self._release(key, call)
            if self._calls.get(key) is call:
                self._unlist(key)
            if call.ending and self._calls.get(key) is call:
                del self._calls[key]
            return
        file = opening.result()
        self._not_recorded.pop(key, None)
        if self._calls.get(key) is not call:  # erased meanwhile: `forget` queued the unlink
            self._release(key, call)
            self._submit(files.discard, file)
            return
        call.file = file
        call.assembler = Assembler(call.sample_rate, limits=self._limits, start=file.data_bytes // FRAME_BYTES)
        for fmt, frame in call.waiting:
            self._queue(call, call.assembler.feed(fmt, frame, frame.arrived_ms))
        call.waiting = []
        if call.ending:
            self._close(key, call)

    def _log_not_recorded(self, key: _Key, error: BaseException | None) -> None:
        """A warning the first time a call's file cannot be opened, a debug line at each retry
        after: a full disk fails every call's file, every `idle_s`."""
        level = logging.DEBUG if key in self._not_recorded else logging.WARNING
        log.log(level, "call %s is not recorded on this node: %s", key[1], error or "the node stopped")
        self._not_recorded[key] = None
        if len(self._not_recorded) > ENDED_KEPT:
            self._not_recorded.popitem(last=False)

    def _close(self, key: _Key, call: _Call) -> None:
        self._unlist(key)
        if call.assembler is None or call.file is None:
            call.ending = True  # still opening: closed once open (or dropped if it cannot be)
            if call.dead:
                del self._calls[key]
            return
        del self._calls[key]
        self._release(key, call)
        self._queue(call, call.assembler.finish(), flush=False)
        self._write(call, files.close)

    def _queue(self, call: _Call, chunks: list[Chunk], *, flush: bool = True) -> None:
        if not chunks:
            return
        call.queued += chunks
        call.queued_bytes += sum(len(c) for c in chunks if isinstance(c, bytes))
        if flush and call.queued_bytes >= FLUSH_BYTES:
            self._flush(call)

    def _flush(self, call: _Call) -> None:
        if call.queued and call.file is not None:
            self._write(call, files.append)

    def _write(self, call: _Call, job: Callable[[OpenFile, list[Chunk]], None]) -> None:
        """Hand the call's queued samples to the writer (as silence while its backlog is full)."""
        assert call.file is not None
        chunks, size = call.queued, call.queued_bytes
        call.queued, call.queued_bytes = [], 0
        if self._backlog + size > MAX_QUEUED_BYTES:
            chunks, size = [sum(len(c) if isinstance(c, bytes) else c for c in chunks)], 0
        self._backlog += size
        done = self._submit(_guarded, job, call.file, chunks)
        done.add_done_callback(functools.partial(self._written, size))

    def _written(self, size: int, _: asyncio.Future[None]) -> None:
        self._backlog -= size

    def _submit(self, job: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        self._jobs += 1
        return asyncio.get_running_loop().run_in_executor(self._writer, job, *args)


def _guarded(job: Callable[[OpenFile, list[Chunk]], None], file: OpenFile, chunks: list[Chunk]) -> None:
    """Run a write on the writer thread; a failing disk stops this file's recording (logged once)."""
    try:
        job(file, chunks)
    except OSError:
        if not file.failed:
            log.exception("recording file %s: writing failed; its recording stops here", file.paths.writing.name)
        file.failed = True


def _nothing() -> None:
    """A job that marks a point in the writer's queue."""


def _log_failure(done: asyncio.Future[None]) -> None:
    """A deletion nobody awaits (another node's erasure) still says when it failed."""
    if not done.cancelled() and (error := done.exception()) is not None:
        log.error("recordings could not be deleted: %s", error)
