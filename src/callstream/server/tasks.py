"""Tasks the node starts on the side (a socket's close, a broker unwatch), held until they end.

The event loop keeps only weak references to tasks: one whose result nobody holds may be
garbage-collected mid-flight. A `TaskSet` holds each task until it is done, and lets the
node wait for (then cancel) what is still running when it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    """Starts tasks and keeps a reference to each until it finishes."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Let the running tasks finish for up to `grace_s`, then cancel the rest and wait for them."""
        if self._tasks and grace_s > 0:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        while self._tasks:  # a task may start another while it is cancelled
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks -= tasks
