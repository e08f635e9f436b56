"""A Pipecat pipeline under live control, for the adapters' control tests.

A real pipeline (`PipelineWorker`, the universal user and assistant context aggregators sharing one
`LLMContext`) with two stand-in services built on Pipecat's own service classes: an `LLMService`
answering "Answer N: <the latest system message>", so an instruction shows in what the agent
says, and a `TTSService` that synthesizes silence. The caller is a transport's frames queued
into the worker.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

with warnings.catch_warnings():  # pipecat imports the deprecated `audioop` module
    warnings.simplefilter("ignore", DeprecationWarning)
    from pipecat.frames.frames import (
        Frame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.llm_service import LLMService
    from pipecat.services.settings import LLMSettings, TTSSettings
    from pipecat.services.tts_service import TTSService
    from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
    from pipecat.workers.runner import WorkerRunner

    from callstream.integrations.controls import TransferHook
    from callstream.integrations.pipecat import CallstreamControl, CallstreamObserver

from tests.helpers import ServerProcess
from tests.integrations.events import CallerSays

SYSTEM = "Be brief."


class ContextLLM(LLMService):
    """Answers every run with its number and the latest system message of the context."""

    def __init__(self) -> None:
        unset = dict.fromkeys(
            ("system_instruction", "temperature", "max_tokens", "top_p", "top_k", "frequency_penalty",
             "presence_penalty", "seed", "filter_incomplete_user_turns", "user_turn_completion_config")
        )
        super().__init__(settings=LLMSettings(model=None, **unset))
        self.runs = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        self.runs += 1
        system = [m["content"] for m in frame.context.get_messages() if m.get("role") == "system"]
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(f"Answer {self.runs}: {system[-1]}"))
        await self.push_frame(LLMFullResponseEndFrame())


class SilentTTS(TTSService):
    """Speaks silence; `delay` s of synthesis per sentence leaves time to interrupt it."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True, stop_frame_timeout_s=0.2, sample_rate=16000,
                         settings=TTSSettings(model=None, voice=None, language=None))
        self.delay = delay

    async def run_tts(self, text: str, context_id: str) -> AsyncIterator[Frame | None]:
        await asyncio.sleep(self.delay)
        yield TTSAudioRawFrame(audio=b"\0" * 320, sample_rate=16000, num_channels=1, context_id=context_id)


class Caller:
    """The caller of a running pipeline: its turns, as a transport and an STT push them."""

    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker

    async def says(self, text: str) -> None:
        for frame in (UserStartedSpeakingFrame(), TranscriptionFrame(text, "caller", "t"), UserStoppedSpeakingFrame()):
            await self.worker.queue_frame(frame)
            await asyncio.sleep(0.05)  # system frames overtake queued ones: keep the turn's order


async def run_call(
    server: ServerProcess, key: str, call_id: str, script: Callable[[CallerSays], Awaitable[None]], *,
    transfer: TransferHook | None = None, slow: bool = False,
) -> None:
    """Run a controllable pipeline for the call while `script` drives it, until it ends (the
    script's last request ends it). `slow`: each answer takes a second to synthesize."""
    control = CallstreamControl(transfer=transfer)
    observer = CallstreamObserver(call_id, url=server.url, key=key, control=control)
    context = LLMContextAggregatorPair(
        LLMContext([{"role": "system", "content": SYSTEM}]),
        user_params=LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies()),
    )
    pipeline = Pipeline([IdentityFilter(), context.user(), control, ContextLLM(), SilentTTS(1.0 if slow else 0.0),
                         context.assistant()])
    worker = PipelineWorker(pipeline, observers=[observer], enable_rtvi=False, enable_turn_tracking=False,
                            idle_timeout_secs=None, cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(script(Caller(worker).says), 60)
        await asyncio.wait_for(asyncio.shield(running), 15)
    finally:  # a failed script must not leave the pipeline running
        if not worker.has_finished():
            await worker.cancel(reason="the test is over")
        await asyncio.wait_for(running, 30)


FIRST = f"Answer 1: {SYSTEM}"
