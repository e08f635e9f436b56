"""Publish a Pipecat pipeline's call to callstream with CallstreamObserver.

In your bot, the whole integration is one observer on the pipeline's worker::

    from callstream.integrations.pipecat import CallstreamObserver

    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         transport.output(), assistant_aggregator])
    worker = PipelineWorker(pipeline, observers=[
        CallstreamObserver(call_id, url=CALLSTREAM_URL, key=CALLSTREAM_KEY),
    ])
    await WorkerRunner().run(worker)

This script runs without any speech service or transport: it pushes the frames an STT, an LLM,
a TTS and a transport would push through a real Pipecat pipeline, so you can watch the result::

    pip install 'callstream[pipecat]'
    callstream tail --key $KEY --all &            # in another terminal
    python examples/pipecat_agent.py --key $KEY
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from typing import Any

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
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.workers.runner import WorkerRunner

from callstream.integrations.pipecat import CallstreamObserver


def user_says(text: str) -> list[tuple[Frame, float]]:
    words = text.split()
    interims = [" ".join(words[: n + 1]) for n in range(0, len(words) - 1, 3)]
    frames: list[tuple[Frame, float]] = [
        (InterimTranscriptionFrame(text=t, user_id="caller", timestamp=""), 0.3) for t in interims
    ]
    return [*frames, (TranscriptionFrame(text=text, user_id="caller", timestamp=""), 0.5)]


def bot_says(text: str, context_id: str) -> list[tuple[Frame, float]]:
    frames: list[tuple[Frame, float]] = [
        (LLMFullResponseStartFrame(), 0.6),
        (TTSStartedFrame(context_id=context_id), 0.1),
        (BotStartedSpeakingFrame(), 0.0),
    ]
    frames += [(TTSTextFrame(text=w, text_type="word", context_id=context_id), 0.18) for w in text.split()]
    return [*frames, (LLMFullResponseEndFrame(), 0.0), (TTSStoppedFrame(context_id=context_id), 0.2),
            (BotStoppedSpeakingFrame(), 0.4)]


def tool(name: str, tool_call_id: str, args: dict[str, Any], result: Any) -> list[tuple[Frame, float]]:
    call = FunctionCallFromLLM(function_name=name, tool_call_id=tool_call_id, arguments=args, context=None)
    return [
        (LLMFullResponseStartFrame(), 0.4),
        (FunctionCallsStartedFrame(function_calls=[call]), 0.0),
        (LLMFullResponseEndFrame(), 0.0),
        (FunctionCallInProgressFrame(function_name=name, tool_call_id=tool_call_id, arguments=args), 0.7),
        (FunctionCallResultFrame(function_name=name, tool_call_id=tool_call_id, arguments=args, result=result), 0.1),
    ]


SCRIPT = [
    *bot_says("Thanks for calling Bella Vista, how can I help?", "c1"),
    *user_says("Hi, I'd like to book a table for two tonight around eight."),
    *tool("check_availability", "call_1", {"party": 2, "time": "20:00"}, {"free": ["20:00", "20:30"]}),
    *bot_says("Good news, I have a table for two at eight. Shall I book it?", "c2"),
    *user_says("Yes please, that's perfect, thank you!"),
    *tool("book_table", "call_2", {"party": 2, "time": "20:00"}, {"confirmation": "BV-2041"}),
    *bot_says("You're booked, confirmation BV-2041. See you tonight!", "c3"),
]


async def main(url: str, key: str, call_id: str) -> None:
    observer = CallstreamObserver(call_id, url=url, key=key)
    worker = PipelineWorker(Pipeline([IdentityFilter()]), observers=[observer], enable_rtvi=False,
                            idle_timeout_secs=None)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    async def play() -> None:
        await started.wait()
        for frame, pause in SCRIPT:
            await worker.queue_frame(frame)
            await asyncio.sleep(pause + 0.02)
        await worker.queue_frame(EndFrame(reason="caller said goodbye"))

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), play())
    print(f"published {call_id}: GET {url}/v1/calls/{call_id}/transcript shows it")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Publish a scripted Pipecat call to callstream.")
    parser.add_argument("--url", default=os.environ.get("CALLSTREAM_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", default=os.environ.get("CALLSTREAM_KEY"), required="CALLSTREAM_KEY" not in os.environ)
    parser.add_argument("--call-id", default=f"pipecat_{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.key, args.call_id))
