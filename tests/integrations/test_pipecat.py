"""A real Pipecat pipeline, fed frames, publishing through CallstreamObserver to a real server.

No speech service is involved: the frames an STT, an LLM, a TTS and a transport would push are
queued into a real `Pipeline` run by a real `PipelineWorker`, and the test reads what a
subscriber of `/v1/events` receives.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

# pipecat imports the deprecated `audioop` module; the suite turns warnings into errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        EndFrame,
        Frame,
        FunctionCallFromLLM,
        FunctionCallInProgressFrame,
        FunctionCallResultFrame,
        FunctionCallsStartedFrame,
        InterimTranscriptionFrame,
        InterruptionFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TranscriptionFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from callstream import Publisher
    from callstream.integrations.pipecat import CallstreamObserver

from tests.helpers import ServerProcess, recv_until
from tests.integrations.events import brief, subscribed


async def run_pipeline(
    observer: CallstreamObserver, frames: list[Frame], *, cancel: bool = False, services: list[Any] | None = None
) -> None:
    """Run a real pipeline with the observer (and `services`, metrics on), queue `frames` one by
    one, then end or cancel it."""
    worker = PipelineWorker(
        Pipeline(services or [IdentityFilter()]),
        params=PipelineParams(enable_metrics=True),
        observers=[observer],
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    async def feed() -> None:
        await asyncio.wait_for(started.wait(), 10)
        for frame in frames:
            await worker.queue_frame(frame)
            await asyncio.sleep(0.02)  # system frames overtake queued ones: keep the script's order
        if cancel:
            await worker.cancel(reason="caller hung up")
        else:
            await worker.queue_frame(EndFrame(reason="goodbye said"))

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), 30)


def word(text: str) -> TTSTextFrame:
    return TTSTextFrame(text=text, text_type="word", context_id="ctx-1")


CALL = [
    InterimTranscriptionFrame(text="I'd like", user_id="caller", timestamp="t1"),
    InterimTranscriptionFrame(text="I'd like to book", user_id="caller", timestamp="t2"),
    TranscriptionFrame(text="I'd like to book a table for two.", user_id="caller", timestamp="t3"),
    LLMFullResponseStartFrame(),
    FunctionCallsStartedFrame(function_calls=[
        FunctionCallFromLLM(function_name="check_availability", tool_call_id="call_1",
                            arguments={"party": 2}, context=None)]),
    LLMFullResponseEndFrame(),
    FunctionCallInProgressFrame(function_name="check_availability", tool_call_id="call_1",
                                arguments={"party": 2}),
    FunctionCallResultFrame(function_name="check_availability", tool_call_id="call_1",
                            arguments={"party": 2}, result={"free": ["20:00"]}),
    LLMFullResponseStartFrame(),
    TTSStartedFrame(context_id="ctx-1"),
    LLMTextFrame(text="We have a table at eight."),  # spoken text comes from the TTS frames
    word("We"),
    word("have"),
    BotStartedSpeakingFrame(),
    word("a table at eight."),
    LLMFullResponseEndFrame(),
    TTSStoppedFrame(context_id="ctx-1"),
    BotStoppedSpeakingFrame(),
]


async def test_pipeline_frames_arrive_as_callstream_events_in_order(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    ws = await subscribed(server, api_key, call_id)
    observer = CallstreamObserver(call_id, url=server.url, key=api_key)
    await run_pipeline(observer, CALL)
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [brief(m) for m in messages] == [
        ("agent.state", "listening"),
        ("transcript.partial", "user", "I'd like", "user-1"),
        ("transcript.partial", "user", "I'd like to book", "user-1"),
        ("transcript.final", "user", "I'd like to book a table for two.", "user-1"),
        ("agent.state", "thinking"),
        ("function.call", "check_availability", {"party": 2}, "call_1"),
        ("function.result", "check_availability", {"free": ["20:00"]}, "call_1"),
        ("transcript.partial", "agent", "We", "agent-1"),
        ("transcript.partial", "agent", "We have", "agent-1"),
        ("agent.state", "speaking"),
        ("transcript.partial", "agent", "We have a table at eight.", "agent-1"),
        ("transcript.final", "agent", "We have a table at eight.", "agent-1"),
        ("agent.state", "listening"),
        ("call.ended", "completed", "goodbye said"),
    ]
    final = messages[3]["data"]
    assert final["user_id"] == "caller"
    assert "sentiment" in final  # the server enriched the final: it is a real one
    assert messages[-1]["data"]["duration_ms"] > 0


async def test_llm_text_interruption_and_cancel_with_a_shared_publisher(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    ws = await subscribed(server, api_key, call_id)
    async with Publisher(server.url, api_key) as publisher:
        observer = CallstreamObserver(call_id, publisher=publisher, agent_text="llm",
                                      agent_partials=False, announce_start=False)
        await run_pipeline(observer, [
            TranscriptionFrame(text="Hi there", user_id="", timestamp="t1"),
            LLMFullResponseStartFrame(),
            LLMTextFrame(text="Hello"),
            LLMTextFrame(text=", how can"),
            InterruptionFrame(),
            TranscriptionFrame(text="Actually, never mind.", user_id="", timestamp="t2"),
        ], cancel=True)
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [brief(m) for m in messages] == [
        ("transcript.final", "user", "Hi there", "user-1"),
        ("agent.state", "thinking"),
        ("transcript.final", "agent", "Hello, how can", "agent-1"),
        ("transcript.final", "user", "Actually, never mind.", "user-2"),
        ("call.ended", "canceled", "caller hung up"),
    ]
    assert messages[2]["data"]["interrupted"] is True
    assert "user_id" not in messages[0]["data"]  # empty ids are left out


async def test_a_refused_key_never_breaks_the_pipeline(server: ServerProcess, call_id: str) -> None:
    observer = CallstreamObserver(call_id, url=server.url, key="cs_wrong")
    await run_pipeline(observer, CALL[:3])  # runs to its end; the observer only logs
    assert observer.events is None


class MeteredService(FrameProcessor):  # type: ignore[misc]
    """A service that measures itself with Pipecat's own metrics, as its STT, LLM and TTS
    services do: on each user final, a time to first byte, then a processing time."""

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            await self.start_ttfb_metrics()
            await self.start_processing_metrics()
            await asyncio.sleep(0.03)
            await self.stop_ttfb_metrics()
            await asyncio.sleep(0.02)
            await self.stop_processing_metrics()


async def test_services_metrics_and_a_barge_in_are_published(server: ServerProcess, api_key: str, call_id: str) -> None:
    ws = await subscribed(server, api_key, call_id)
    observer = CallstreamObserver(call_id, url=server.url, key=api_key, announce_start=False)
    services = [MeteredService(name="ScriptedLLMService"), MeteredService(name="ScriptedTTSService")]
    await run_pipeline(observer, [
        TranscriptionFrame(text="What's on tonight?", user_id="", timestamp="t1"),
        BotStartedSpeakingFrame(),
        UserStartedSpeakingFrame(),  # the caller talks over the bot
        InterimTranscriptionFrame(text="No wait", user_id="", timestamp="t2"),
    ], services=services)
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    metrics = [m["data"] for m in messages if m["type"] == "metrics"]
    assert sorted((d["stage"], d["processor"], "ttfb_ms" in d) for d in metrics) == [
        ("llm", "ScriptedLLMService", False), ("llm", "ScriptedLLMService", True),
        ("tts", "ScriptedTTSService", False), ("tts", "ScriptedTTSService", True),
    ]  # fmt: skip
    assert all(d.get("ttfb_ms", 30) >= 30 and d.get("duration_ms", 50) >= 50 for d in metrics)
    turn = [brief(m) for m in messages if m["type"] != "metrics"]
    assert turn[:5] == [
        ("transcript.final", "user", "What's on tonight?", "user-1"),
        ("agent.state", "speaking"),
        ("transcript.partial", "user", "…", "user-2"),  # the barge-in, before the state changes
        ("agent.state", "listening"),
        ("transcript.partial", "user", "No wait", "user-2"),
    ]
    states = [m["data"] for m in messages if m["type"] == "agent.state"]
    assert "latency_ms" in states[0]
    assert states[1]["interrupted"] is True  # the server measured it


def test_a_services_stage_comes_from_its_name() -> None:
    from callstream.integrations.pipecat import stage_of

    assert [stage_of(n) for n in ("DeepgramSTTService#0", "OpenAILLMService#2", "CartesiaTTSService#0")] == [
        "stt", "llm", "tts",
    ]
    assert stage_of("LocalSmartTurnAnalyzerV3#0") == "LocalSmartTurnAnalyzerV3"
