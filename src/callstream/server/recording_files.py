"""Recording files on disk (docs/recordings.md): where a call's WAV lives, and the blocking file
operations the recorder runs on its one writer thread.

Names. `<root>/<account>/<call>.wav`, each part the first hex digits of its SHA-256: a fixed
length, nothing of a producer's string in the path (no `..`, no `:`), and no two ids that a
case-insensitive file system would mix up. A call being written is `<call>.part`; closing it
renames it to `<call>.wav`, so a reader (`GET …/recording`, another node) only ever sees a
finished file.

One writer at a time. A node opens a call's file by creating `.part` exclusively, or by linking
the finished `.wav` to `.part` to go on writing it (a producer back after a restart, or on
another node): exclusive create and link are atomic, also on a shared directory, so two nodes
do not write one file. A `.part` untouched for `STALE_S` was left by a node that stopped without
closing it (the recorder writes to its open files, or closes them, every few seconds): it is
taken over, by the next frame of its call, or by a request for the recording, which closes it
as it is (`close_left_open`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from callstream.events import is_valid_call_id
from callstream.recording import HEADER_BYTES, Chunk, read_header, wav_header

__all__ = [
    "STALE_S",
    "BusyError",
    "OpenFile",
    "RecordingPaths",
    "append",
    "close",
    "close_left_open",
    "discard",
    "erase",
    "exists",
    "is_stale",
    "left_open",
    "open_for",
    "paths_for",
    "stat_finished",
]

STALE_S = 60.0
_ZEROS = bytes(64 * 1024)


class BusyError(Exception):
    """Another writer holds the call's file, or what is there is not a recording of this rate."""


@dataclass(frozen=True, slots=True)
class RecordingPaths:
    finished: Path  # `<call>.wav`
    writing: Path  # `<call>.part`


def paths_for(root: Path, account: str, call_id: str) -> RecordingPaths:
    """The call's file names; a call id outside the contract's alphabet is refused (ValueError)."""
    if not is_valid_call_id(call_id) or not account:
        raise ValueError("not a valid account and call id")
    folder = root / hashlib.sha256(account.encode()).hexdigest()[:32]
    name = hashlib.sha256(call_id.encode()).hexdigest()[:40]
    return RecordingPaths(folder / f"{name}.wav", folder / f"{name}.part")


@dataclass(slots=True)
class OpenFile:
    """A `.part` file the writer thread appends to; `data_bytes` of samples are in it."""

    paths: RecordingPaths
    fd: int
    sample_rate: int
    data_bytes: int
    failed: bool = False


def open_for(paths: RecordingPaths, sample_rate: int) -> OpenFile:
    """Create the call's `.part`; or take over its `.wav`, or a stale `.part`, to go on writing."""
    paths.writing.parent.mkdir(parents=True, exist_ok=True)
    if paths.finished.exists():
        _check_rate(paths.finished, sample_rate)  # before anything is moved: a mismatch leaves it be
        try:
            os.link(paths.finished, paths.writing)  # fails if a writer has a `.part`: atomic
        except FileExistsError:
            return _resume(paths, sample_rate, stale_only=True)
        except FileNotFoundError:
            raise BusyError("another writer took this call's recording first") from None
        paths.finished.unlink(missing_ok=True)
        return _resume(paths, sample_rate, stale_only=False)
    try:
        fd = os.open(paths.writing, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _resume(paths, sample_rate, stale_only=True)
    try:
        os.pwrite(fd, wav_header(sample_rate, 0), 0)
    except OSError:
        _abandon(fd, paths.writing)
        raise
    return OpenFile(paths, fd, sample_rate, 0)


def _abandon(fd: int, created: Path) -> None:
    """Undo a `.part` just created whose header could not be written (a full disk): kept, its
    descriptor would leak with each such call, and the empty file would count as a recording
    and block the call's file for good (no header to resume from)."""
    os.close(fd)
    created.unlink(missing_ok=True)


def _check_rate(path: Path, sample_rate: int) -> None:
    if (rate := _rate_of(path)) != sample_rate:
        raise BusyError(f"the call's recording is at {rate} Hz, not {sample_rate} Hz")


def _rate_of(path: Path) -> int | None:
    """The sample rate in the file's header; None for a header `wav_header` did not write."""
    with path.open("rb") as file:
        return read_header(file.read(HEADER_BYTES))


def is_stale(mtime: float, now: float) -> bool:
    """Whether a `.part` last written at `mtime` was left by a node that stopped without closing it."""
    return now - mtime >= STALE_S


def _resume(paths: RecordingPaths, sample_rate: int, *, stale_only: bool) -> OpenFile:
    """Open `.part` to append to it (a half-written sample at its end is cut off)."""
    try:
        if stale_only and not is_stale(paths.writing.stat().st_mtime, time.time()):
            raise BusyError("another writer has this call's recording open")
        fd = os.open(paths.writing, os.O_RDWR)
    except FileNotFoundError:
        raise BusyError("another writer took this call's recording first") from None
    rate = read_header(os.pread(fd, HEADER_BYTES, 0))
    if rate != sample_rate:
        os.close(fd)
        raise BusyError(f"the call's recording is at {rate} Hz, not {sample_rate} Hz")
    size = os.fstat(fd).st_size - HEADER_BYTES
    data_bytes = max(0, size - size % 4)
    os.ftruncate(fd, HEADER_BYTES + data_bytes)
    return OpenFile(paths, fd, rate, data_bytes)


def append(file: OpenFile, chunks: list[Chunk]) -> None:
    """Append samples (and silence), then the header with the new sizes: at every step the file
    is a playable WAV of what it holds, even after a crash."""
    if file.failed:
        return
    offset = HEADER_BYTES + file.data_bytes
    for chunk in chunks:
        if isinstance(chunk, int):
            while chunk > 0:
                written = os.pwrite(file.fd, _ZEROS[: min(chunk, len(_ZEROS))], offset)
                offset, chunk = offset + written, chunk - written
        else:
            view = memoryview(chunk)
            while view:
                written = os.pwrite(file.fd, view, offset)
                offset, view = offset + written, view[written:]
    file.data_bytes = offset - HEADER_BYTES
    os.pwrite(file.fd, wav_header(file.sample_rate, file.data_bytes), 0)


def close(file: OpenFile, chunks: list[Chunk]) -> None:
    """The last samples, the final header, and `.part` renamed to `.wav`."""
    try:
        append(file, chunks)
    finally:
        discard(file)
    if not file.failed:
        file.paths.writing.rename(file.paths.finished)


def left_open(paths: RecordingPaths) -> bool:
    """Whether the call's `.part` is stale: a cheap look before asking the writer to close it."""
    try:
        return is_stale(paths.writing.stat().st_mtime, time.time())
    except FileNotFoundError:
        return False


def close_left_open(paths: RecordingPaths) -> None:
    """Close a stale `.part` as it is, taken over as `open_for` takes it: its header already says
    what it holds. A fresh one, one another node took first, or one without a header of ours
    (a node killed before writing it) stays as it is."""
    try:
        if (rate := _rate_of(paths.writing)) is None:
            return
        file = _resume(paths, rate, stale_only=True)
    except (BusyError, FileNotFoundError):
        return
    with contextlib.suppress(FileNotFoundError):  # another node closed it, or it was erased
        close(file, [])


def discard(file: OpenFile) -> None:
    """Close the file without finishing it (erased: `erase` unlinks its names). Once only: a
    closed descriptor's number may already name another file."""
    fd, file.fd = file.fd, -1
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def erase(paths: list[RecordingPaths]) -> None:
    """Delete the calls' files. `.part` first, then `.wav`, then `.part` again: a `.part` renamed
    to `.wav` (closed on another node), or a `.wav` linked to `.part` (reopened), meanwhile
    leaves nothing behind."""
    for each in paths:
        each.writing.unlink(missing_ok=True)
        each.finished.unlink(missing_ok=True)
        each.writing.unlink(missing_ok=True)


def stat_finished(paths: RecordingPaths) -> os.stat_result | None:
    """The call's closed file's `stat`; None when it has none."""
    try:
        return os.stat(paths.finished)
    except FileNotFoundError:
        return None


def exists(paths: RecordingPaths) -> bool:
    """Whether the call has a recording, finished or being written."""
    return paths.finished.exists() or paths.writing.exists()
