"""The embedded store's fold: the journal filed into SQLite by a process of its own.

Only the hot path lives here: the folds of the journal (store/journal.py), which holds every
commit that ends no call. Everything else, including the batches whose `call.ended` hooks write
the webhook outbox in the same transaction, keeps the SQLAlchemy path in `sql.py`. The fold's
statements (`fold_process.row_statements`) mirror `SqlStore._commit` and `_calls_upsert`; the
store contract tests run both.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from callstream.store import fold_process
from callstream.store.fold_process import FailedCall, Statement

# A fold commits which journal files it filed (store/journal.py), and forgets files long deleted.
_MARK_FOLDED = "INSERT INTO meta (key, value) VALUES (?, '') ON CONFLICT (key) DO NOTHING"
_FORGET_FOLDED = "DELETE FROM meta WHERE key = ?"


@dataclass(slots=True)
class Fold:
    """What a fold files: the journal `files` (path and size: the fold process reads them), the
    `markers` of those files (`journal.JournalFile.marker`) and the `forget` markers of files
    deleted since."""

    files: Sequence[tuple[str, int]] = ()
    markers: Sequence[str] = ()
    forget: Sequence[str] = ()

    def statements(self) -> list[Statement]:
        """What the transaction runs after the files' rows: the markers."""
        return [
            *((_MARK_FOLDED, [marker]) for marker in self.markers),
            *((_FORGET_FOLDED, [marker]) for marker in self.forget),
        ]


class FoldError(Exception):
    """The fold process refused a transaction (its SQLite error, as text) or went away."""


class JournalFolder:
    """Folds the journal in a process of its own (`fold_process`), one pipe round trip a fold.

    SQLite holds the GIL for everything but a statement's step, so SQLite work in the node (a
    thread, or SQLAlchemy's) would take turns with the fan-out for the interpreter; in a process
    it runs on whichever core is free. The node sends which journal files to fold (and a few
    statements); the process reads, merges and inserts their rows. A process that dies fails the
    fold in flight (the rows stay in their files for the next; a read waiting for it gets the
    store's error: REST 503 `unavailable`) and is started again for the next.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def fold(self, fold: Fold) -> list[FailedCall]:
        """File the journal's files into event_chunks and calls; the calls whose rows could not
        be filed (`fold_process.fold`), if any."""
        return await self._transaction(list(fold.files), fold.statements())

    async def _transaction(self, files: list[tuple[str, int]], statements: list[Statement]) -> list[FailedCall]:
        body = pickle.dumps((files, statements), pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            reply = await self._round_trip(body)
        if reply.startswith(fold_process.FAILED_CALLS):
            failed: list[FailedCall] = orjson.loads(reply[len(fold_process.FAILED_CALLS) :])
            return failed
        if reply:
            raise FoldError(reply.decode(errors="replace"))
        return []

    async def _round_trip(self, body: bytes) -> bytes:
        process = self._process
        if process is None or process.returncode is not None:
            # A plain script with -I (isolated): the standard library only, none of the node's
            # environment. A process group of its own: a terminal's Ctrl-C is the node's to act
            # on, and would kill an interpreter still starting, before it can ignore SIGINT. Not
            # a session of its own: where Linux schedules by session (autogroup), that would give
            # the fold an equal share of a core with the node, whatever its nice (bench/README.md,
            # `fold-session`).
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-B", fold_process.__file__, self.path,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, **_own_group(),
            )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(fold_process.HEADER.pack(len(body)))
            process.stdin.write(body)
            await process.stdin.drain()
            (size,) = fold_process.HEADER.unpack(await process.stdout.readexactly(fold_process.HEADER.size))
            return await process.stdout.readexactly(size) if size else b""
        except (OSError, asyncio.IncompleteReadError) as exc:  # the fold process died
            await self._stop(grace_s=1)
            raise FoldError("the fold process exited") from exc
        except BaseException:
            # Cancelled between request and reply: the next round trip would read this one's
            # reply, so this process cannot be trusted again (its transaction commits or not).
            self._process = None
            process.kill()
            raise

    async def _stop(self, grace_s: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def close(self) -> None:
        """Let the fold process finish what it was sent: it exits when its pipe closes."""
        async with self._lock:
            await self._stop(grace_s=10)


def _own_group() -> dict[str, Any]:
    """The subprocess option that starts a child in a process group of its own: asyncio's loops
    take `process_group` (no Python runs in the child); uvloop, the node's loop, does not, and
    runs `os.setpgrp` in the child instead."""
    if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}
