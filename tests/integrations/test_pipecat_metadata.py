"""A real Pipecat pipeline with `CallstreamObserver(metadata=…)`: the call starts with its metadata."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from pipecat.frames.frames import TranscriptionFrame

    from callstream.integrations.pipecat import CallstreamObserver

from tests.helpers import ServerProcess, recv_until
from tests.integrations.events import subscribed
from tests.integrations.test_pipecat import run_pipeline


async def test_the_pipeline_s_call_starts_with_its_metadata(server: ServerProcess, api_key: str, call_id: str) -> None:
    ws = await subscribed(server, api_key, call_id)
    metadata = {"agent": "ada", "from": "+15550100", "to": "+15550199", "campaign": "spring", "vip": True}
    observer = CallstreamObserver(call_id, url=server.url, key=api_key, metadata=metadata)
    await run_pipeline(observer, [TranscriptionFrame(text="Hello?", user_id="caller", timestamp="t1")])
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [m["type"] for m in messages[:2]] == ["call.started", "agent.state"]
    assert messages[0]["data"] == {"metadata": metadata}
    assert messages[0]["seq"] == 1
