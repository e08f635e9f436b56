"""Wiring into a node: queue messages when a call ends, run the worker for the node's life."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from callstream.events import Event
from callstream.webhooks.config import WebhookConfig
from callstream.webhooks.repo import WebhookRepo
from callstream.webhooks.worker import WebhookWorker

if TYPE_CHECKING:
    from callstream.server.runtime import Runtime

__all__ = ["install", "recording_url", "repo_of"]


def repo_of(runtime: Runtime) -> WebhookRepo:
    """The node's repo (created by `install`); the API uses it."""
    repo: WebhookRepo = runtime.webhooks  # type: ignore[attr-defined]
    return repo


async def recording_url(runtime: Runtime, event: Event) -> str | None:
    """Where the ended call's recording is served (`--public-url` in front, when set), or None
    when it has none. Only a recording node looks: its recordings are on a disk it shares."""
    recordings = runtime.recordings
    if not recordings.enabled or not await recordings.has_recording(event.account, event.call_id):
        return None
    return f"{(runtime.settings.public_url or '').rstrip('/')}/v1/calls/{event.call_id}/recording"


def install(runtime: Runtime) -> WebhookWorker:
    """Queue webhooks in the transaction that stores `call.ended`; deliver from a worker.

    Call once per Runtime, before `runtime.start()` (the start hooks run at start).
    """
    config = WebhookConfig.from_settings(runtime.settings)
    repo = WebhookRepo(runtime.store.engine, runtime.store.dialect, config)
    worker = WebhookWorker(repo, config)
    runtime.webhooks = repo  # type: ignore[attr-defined]

    async def on_call_ended(conn: AsyncConnection, event: Event) -> None:
        if await repo.enqueue_for_call(conn, event, await recording_url(runtime, event)):
            worker.wake_soon()

    async def run_worker(_runtime: Runtime) -> None:
        await worker.run()

    runtime.store.ended_hooks.append(on_call_ended)
    runtime.start_hooks.append(run_worker)
    return worker
