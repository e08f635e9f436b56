"""A real LiveKit `AgentSession` attached with `metadata=` inside a worker's job: the call starts
with its metadata, the job's room and caller filled in by default."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.job import (
    JobAcceptArguments,
    JobContext,
    JobExecutorType,
    JobProcess,
    RunningJobInfo,
    _JobContextVar,
)
from livekit.agents.voice.events import AgentStateChangedEvent
from livekit.protocol import agent, models

from callstream.integrations.livekit import CallstreamSession
from tests.helpers import ServerProcess, recv_until
from tests.integrations.events import subscribed


@contextlib.contextmanager
def in_job(room: str, caller: str) -> Iterator[None]:
    """Run the block as inside LiveKit's worker, in a job of `room` dispatched for `caller`."""
    ctx = job_context(room, caller)
    token = _JobContextVar.set(ctx)
    try:
        yield
    finally:
        _JobContextVar.reset(token)
        ctx._tempdir.cleanup()  # what the worker does when the job ends


def job_context(room: str, caller: str) -> JobContext:
    """The context LiveKit's worker runs an entrypoint in, for a job dispatched for `caller`."""
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="agent", identity="agent", metadata=""),
        job=agent.Job(id="AJ_1", room=models.Room(name=room), participant=models.ParticipantInfo(identity=caller)),
        url="ws://127.0.0.1:9", token="", worker_id="W_1", fake_job=True,
    )  # fmt: skip
    process = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    return JobContext(
        proc=process, info=info, room=rtc.Room(), on_connect=lambda: None, on_shutdown=lambda _: None,
        inference_executor=None,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_a_session_in_a_job_starts_its_call_with_room_caller_and_metadata(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    ws = await subscribed(server, api_key, call_id)
    session: AgentSession[Any] = AgentSession()
    with in_job("room-42", "sip_+15550100"):
        bridge = await CallstreamSession.attach(
            session, call_id, url=server.url, key=api_key, metadata={"agent": "ada", "campaign": "spring"}
        )
    assert bridge is not None
    session.emit("agent_state_changed", AgentStateChangedEvent(old_state="initializing", new_state="listening"))
    await bridge.aclose()
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [m["type"] for m in messages] == ["call.started", "agent.state", "call.ended"]
    assert messages[0]["data"]["metadata"] == {
        "room": "room-42", "participant": "sip_+15550100", "agent": "ada", "campaign": "spring",
    }  # fmt: skip


async def test_metadata_given_wins_over_what_livekit_tells(server: ServerProcess, api_key: str, call_id: str) -> None:
    ws = await subscribed(server, api_key, call_id)
    session: AgentSession[Any] = AgentSession()
    with in_job("room-42", "sip_+15550100"):
        bridge = await CallstreamSession.attach(session, call_id, url=server.url, key=api_key, metadata={"room": "mine"})
    assert bridge is not None
    await bridge.aclose()
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert messages[0]["data"]["metadata"] == {"room": "mine", "participant": "sip_+15550100"}
