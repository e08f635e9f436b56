"""Pipecat → callstream: publish a running pipeline's conversation as live call events.

Add one observer to the pipeline's worker and every dashboard subscribed to the call sees it::

    from callstream.integrations.pipecat import CallstreamObserver

    observer = CallstreamObserver("call_42", url="http://127.0.0.1:8080", key=key)
    worker = PipelineWorker(pipeline, observers=[observer])

An observer, not a frame processor, because it sees every frame wherever it is pushed without
changing the pipeline, and Pipecat runs observers off the frame path (each on its own queue), so
publishing never delays audio. Frames become events like this:

=============================================  ====================================================
``InterimTranscriptionFrame``                  ``transcript.partial`` (user)
``TranscriptionFrame``                         ``transcript.final`` (user; the partials before it
                                               share its ``utterance_id``)
``TTSTextFrame`` between ``TTSStartedFrame``   agent ``transcript.partial`` as words are spoken,
and ``TTSStoppedFrame``                        ``transcript.final`` at the end (``agent_text="tts"``)
``LLMTextFrame`` between ``LLMFullResponse*``  the same from the LLM's text (``agent_text="llm"``:
                                               for pipelines without TTS)
``LLMFullResponseStartFrame``                  ``agent.state`` thinking
``BotStartedSpeakingFrame``                    ``agent.state`` speaking
``BotStoppedSpeakingFrame``,                   ``agent.state`` listening (thinking while the LLM or a
``UserStartedSpeakingFrame``                   tool is still working)
``FunctionCallInProgressFrame``                ``function.call`` (``tool_call_id``)
``FunctionCallResultFrame``,                   ``function.result`` (``tool_call_id``; ``error`` or
``FunctionCallCancelFrame``                    ``cancelled`` when it did not return)
``EndFrame`` / ``CancelFrame``                 ``call.ended`` completed / canceled
``InterruptionFrame``                          the agent's words so far as a final, ``interrupted``
``UserStartedSpeakingFrame`` while the bot     first a user ``transcript.partial`` "…" (replaced by
speaks                                         the words): the server counts the interruption
``MetricsFrame`` (TTFB, processing)            ``metrics`` per service: ``stage`` ``stt``, ``llm``,
                                               ``tts`` (from the service's name), ``ttfb_ms`` or
                                               ``duration_ms``, ``processor``, ``model``
=============================================  ====================================================

Pipecat reports metrics when the worker runs with ``PipelineParams(enable_metrics=True)``.

Live audio (docs/protocol.md, Live audio), with ``audio=True``: the caller's ``InputAudioRawFrame`` (and
``UserAudioRawFrame``) as the input transport pushes them go on the ``caller`` track; the bot's
audio on the ``agent`` track: what the output transport played (the ``OutputAudioRawFrame`` it
pushes on after writing it, so speech cut off by an interruption is cut off here too), or in a
pipeline without an output transport, the TTS's ``TTSAudioRawFrame``. Both are down-mixed to mono
and resampled with Pipecat's stream resampler (soxr) to ``audio_sample_rate`` (16 kHz by default).

``metadata={"agent": …, "from": …, "to": …, "campaign": …}`` is published with ``call.started`` as
the pipeline starts (the ``StartFrame``): dashboards show it and ``where`` subscriptions filter on it.

Live control (docs/control.md): put a :class:`CallstreamControl` in the pipeline between the user
context aggregator and the LLM, and give it to the observer; a supervisor can then steer the call::

    control = CallstreamControl(transfer=my_transfer)  # transfer= is optional
    observer = CallstreamObserver("call_42", url=..., key=..., control=control)
    pipeline = Pipeline([transport.input(), stt, context.user(), control, llm, tts,
                         transport.output(), context.assistant()])

=============================  ===================================================================
``say``                        a ``TTSSpeakFrame`` (after an ``InterruptionFrame`` when
                               ``interrupt``): spoken after what the bot is saying, kept in context
``instruct``                   a system message appended to the LLM context (``LLMMessagesAppendFrame``,
                               no LLM run): it shapes every later reply
``pause`` / ``resume``         the bot is interrupted and its LLM gets no context to answer until
                               ``resume``; the caller's turns still go into the context
``transfer``                   your ``transfer`` hook, then the pipeline ends; the call ends
                               ``transferred``. Without a hook ``transfer`` is not declared.
``end``                        the pipeline ends (``EndWorkerFrame``: what is queued is still said)
=============================  ===================================================================

Tested with pipecat-ai 1.14 (``PipelineWorker``; ``PipelineTask`` is its deprecated alias).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from callstream.integrations import CallEvents, framework, require_target
from callstream.integrations.controls import AgentControls, TransferHook

with framework("Pipecat", "pipecat-ai", "pipecat"):
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        CancelFrame,
        EndFrame,
        EndWorkerFrame,
        Frame,
        FunctionCallCancelFrame,
        FunctionCallInProgressFrame,
        FunctionCallResultFrame,
        FunctionCallsStartedFrame,
        InputAudioRawFrame,
        InterimTranscriptionFrame,
        InterruptionFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMMessagesAppendFrame,
        LLMTextFrame,
        MetricsFrame,
        OutputAudioRawFrame,
        OutputTransportReadyFrame,
        StartFrame,
        TextFrame,
        TranscriptionFrame,
        TTSSpeakFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
    )
    from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.transports.base_output import BaseOutputTransport

    from callstream.integrations.audio import DEFAULT_SAMPLE_RATE, audio_rate, mono_s16

if TYPE_CHECKING:
    from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
    from pipecat.processors.aggregators.llm_context import LLMContextMessage
    from pipecat.utils.asyncio.task_manager import BaseTaskManager

    from callstream.publisher import Publisher

__all__ = ["CallstreamControl", "CallstreamObserver", "PipelineAudio", "stage_of"]

AgentText = Literal["tts", "llm", "none"]
AUDIO_FRAMES = (InputAudioRawFrame, OutputAudioRawFrame, OutputTransportReadyFrame)


class CallstreamControl(FrameProcessor, AgentControls):  # type: ignore[misc,unused-ignore]
    """A frame processor that carries out a supervisor's control requests in its pipeline.

    Place it between the user context aggregator and the LLM (it holds the LLM's context back
    while the call is paused) and hand it to :class:`CallstreamObserver` as ``control=``. Give
    ``transfer`` (``await transfer(to, reason)``) to declare transfers; the pipeline then ends
    and the call ends ``transferred``.
    """

    def __init__(self, *, transfer: TransferHook | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transfer_hook = transfer
        self.paused = False
        self._running = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._running = True
        elif isinstance(frame, EndFrame | CancelFrame):
            self._running = False
        elif isinstance(frame, LLMContextFrame) and self.paused:
            return  # a human has the call: the LLM is not asked to answer
        await self.push_frame(frame, direction)

    def _check_ready(self) -> None:
        if not self._running:
            raise RuntimeError("the pipeline is not running")

    async def _say(self, text: str, *, interrupt: bool) -> None:
        if interrupt:
            await self.broadcast_interruption()  # type: ignore[no-untyped-call,unused-ignore]
        await self.push_frame(TTSSpeakFrame(text))

    async def _instruct(self, text: str) -> None:
        message: LLMContextMessage = {"role": "system", "content": text}
        await self.pipeline_worker.queue_frame(LLMMessagesAppendFrame(messages=[message], run_llm=False))

    async def _pause(self) -> None:
        self.paused = True
        await self.broadcast_interruption()  # type: ignore[no-untyped-call,unused-ignore]

    async def _resume(self) -> None:
        self.paused = False

    async def _end(self, reason: str) -> None:
        """End the pipeline after what it has queued (the worker turns this into an EndFrame)."""
        await self.push_frame(EndWorkerFrame(reason=reason), FrameDirection.UPSTREAM)


class PipelineAudio:
    """The call's audio as a pipeline carries it, on callstream's tracks: mono, at ``sample_rate``.

    An output transport announces itself as the pipeline starts (``OutputTransportReadyFrame``);
    from then on the bot's audio is what it pushes on after playing it, else what the TTS made.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.output_transport = False
        self._resamplers: dict[tuple[str, int], BaseAudioResampler] = {}  # one stream per track and input rate

    def track_of(self, data: FramePushed) -> str | None:
        """``caller``, ``agent``, or None for audio that is not the call's (another destination,
        or the TTS's when the transport's played audio follows)."""
        frame = data.frame
        if isinstance(frame, InputAudioRawFrame):
            return "caller"
        if not isinstance(frame, OutputAudioRawFrame) or frame.transport_destination is not None:
            return None
        played = isinstance(data.source, BaseOutputTransport)
        return "agent" if played or not self.output_transport else None

    async def tap(self, data: FramePushed, calls: CallEvents) -> None:
        if isinstance(data.frame, OutputTransportReadyFrame):
            self.output_transport = True
            return
        track, frame = self.track_of(data), data.frame
        if track is None or not isinstance(frame, InputAudioRawFrame | OutputAudioRawFrame):
            return
        pcm = mono_s16(frame.audio, frame.num_channels)
        if frame.sample_rate != self.sample_rate:
            key = (track, frame.sample_rate)
            if (resampler := self._resamplers.get(key)) is None:
                resampler = self._resamplers[key] = create_stream_resampler()
            pcm = await resampler.resample(pcm, frame.sample_rate, self.sample_rate)
        calls.audio(track, pcm, self.sample_rate)


class CallstreamObserver(BaseObserver):  # type: ignore[misc,unused-ignore]
    """A Pipecat observer that publishes one pipeline's call to callstream.

    Give it either a started :class:`~callstream.Publisher` (shared by many calls) or ``url`` and
    ``key`` (it then runs a publisher of its own for the pipeline's life). ``agent_text`` picks
    where the agent's words come from: ``"tts"`` (what was actually spoken, the default),
    ``"llm"`` (what the LLM wrote: for text-only pipelines) or ``"none"``. ``audio=True``
    streams the call's live audio too (:class:`PipelineAudio`), at ``audio_sample_rate`` Hz.
    """

    def __init__(
        self,
        call_id: str,
        *,
        publisher: Publisher | None = None,
        url: str | None = None,
        key: str | None = None,
        agent_text: AgentText = "tts",
        agent_partials: bool = True,
        announce_start: bool = True,
        control: CallstreamControl | None = None,
        metadata: Mapping[str, Any] | None = None,
        audio: bool = False,
        audio_sample_rate: int = DEFAULT_SAMPLE_RATE,
        **kwargs: Any,
    ) -> None:
        require_target(publisher, url, key)
        rate = audio_rate(audio, audio_sample_rate)
        super().__init__(observe_every_push=False, **kwargs)
        self.audio = PipelineAudio(rate) if rate is not None else None
        self.call_id = call_id
        self.control = control
        self._url, self._key = url, key
        self._calls = CallEvents(publisher, call_id) if publisher is not None else None
        self._agent_text = agent_text
        self._agent_partials = agent_partials
        self._announce_start = announce_start
        self._metadata = dict(metadata or {})  # published with `call.started` as the pipeline starts
        self._agent_speaking = False  # an agent utterance is open: its final is still owed
        self._agent_words = ""
        self._llm_active = False
        self._tts_active = False
        self._bot_speaking = False
        self._tools_pending: set[str] = set()  # asked for by the LLM, not running yet
        self._tools_running: set[str] = set()

    @property
    def events(self) -> CallEvents | None:
        """The call's :class:`~callstream.integrations.CallEvents` (None until set up)."""
        return self._calls

    async def setup(self, task_manager: BaseTaskManager) -> None:
        await super().setup(task_manager)
        if self._calls is None:
            controls = self.control.handlers if self.control is not None else None
            self._calls = await CallEvents.open(self.call_id, url=self._url, key=self._key, controls=controls)

    async def cleanup(self) -> None:
        """The pipeline is done: make sure the call is ended and what was sent is stored.

        Pipecat may tear observers down before one has read the ``EndFrame``, so the call is
        ended here if it was not yet.
        """
        await super().cleanup()  # type: ignore[no-untyped-call,unused-ignore]
        if self._calls is None:
            return
        self._flush_agent_words()
        self._calls.end("completed", "pipeline finished")
        await self._calls.aclose()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, AUDIO_FRAMES):
            if self.audio is not None and self._calls is not None:
                await self.audio.tap(data, self._calls)
            return
        # Broadcast frames (bot speaking, function calls) come as an upstream and a downstream
        # twin: read the downstream one only, as Pipecat's own observers do.
        if data.frame.broadcast_sibling_id is not None and data.direction != FrameDirection.DOWNSTREAM:
            return
        if self._calls is not None and not self._calls.ended:
            self._on_frame(data.frame, self._calls)

    # -- frames → events ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame, calls: CallEvents) -> None:
        if isinstance(frame, StartFrame):
            calls.started = time.monotonic()  # duration_ms counts from the pipeline's start
            if self._metadata:
                calls.start(self._metadata)
            if self._announce_start:
                calls.state("listening")
        elif isinstance(frame, InterimTranscriptionFrame | TranscriptionFrame):
            self._user_speech(frame, calls)
        elif isinstance(frame, TextFrame):
            self._agent_speech(frame, calls)
        elif isinstance(frame, FunctionCallsStartedFrame):
            self._tools_pending.update(call.tool_call_id for call in frame.function_calls)
        elif isinstance(frame, FunctionCallInProgressFrame | FunctionCallResultFrame | FunctionCallCancelFrame):
            self._tool(frame, calls)
        elif isinstance(frame, MetricsFrame):
            self._metrics(frame, calls)
        elif isinstance(frame, EndFrame | CancelFrame):
            self._flush_agent_words()
            reason = str(frame.reason) if frame.reason is not None else None
            status = "completed" if isinstance(frame, EndFrame) else "canceled"
            if self.control is not None and self.control.ending is not None:
                status, reason = self.control.ending
            calls.end(status, reason)
        else:
            self._turn(frame, calls)

    def _user_speech(self, frame: InterimTranscriptionFrame | TranscriptionFrame, calls: CallEvents) -> None:
        extra = {"user_id": frame.user_id or None, "language": frame.language}
        calls.speech("user", frame.text, final=isinstance(frame, TranscriptionFrame), **extra)

    def _agent_speech(self, frame: TextFrame, calls: CallEvents) -> None:
        source = TTSTextFrame if self._agent_text == "tts" else LLMTextFrame
        if self._agent_text == "none" or not isinstance(frame, source) or not frame.text:
            return
        self._agent_speaking = True
        if frame.includes_inter_frame_spaces:
            self._agent_words += frame.text
        else:
            self._agent_words = f"{self._agent_words} {frame.text.strip()}".lstrip()
        if self._agent_partials:
            calls.speech("agent", self._agent_words.strip(), final=False)

    def _flush_agent_words(self, **extra: Any) -> None:
        """The agent's utterance is over (or cut off): publish its final."""
        if self._calls is not None and self._agent_speaking:
            self._calls.speech("agent", self._agent_words.strip(), final=True, **extra)
        self._agent_speaking, self._agent_words = False, ""

    def _tool(
        self,
        frame: FunctionCallInProgressFrame | FunctionCallResultFrame | FunctionCallCancelFrame,
        calls: CallEvents,
    ) -> None:
        self._tools_pending.discard(frame.tool_call_id)
        if isinstance(frame, FunctionCallInProgressFrame):
            self._tools_running.add(frame.tool_call_id)
            calls.function_call(frame.function_name, frame.arguments, frame.tool_call_id)
            if not self._bot_speaking:
                calls.state("thinking")
            return
        extra: dict[str, Any]
        if isinstance(frame, FunctionCallResultFrame):
            if frame.properties is not None and not frame.properties.is_final:
                return  # an async tool's progress update: the call is not settled yet
            result, extra = frame.result, {"error": frame.error}
        else:
            result, extra = None, {"cancelled": True}
        self._tools_running.discard(frame.tool_call_id)
        calls.function_result(frame.function_name, result, frame.tool_call_id, **extra)

    def _turn(self, frame: Frame, calls: CallEvents) -> None:
        """Who has the floor: agent.state, and where the agent's utterances begin and end."""
        if isinstance(frame, LLMFullResponseStartFrame):
            self._llm_active = True
            if self._agent_text == "llm":
                self._flush_agent_words()
            if not self._bot_speaking:
                calls.state("thinking")
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._llm_active = False
            if self._agent_text == "llm":
                self._flush_agent_words()
            self._settle(calls)
        elif isinstance(frame, TTSStartedFrame | TTSStoppedFrame):
            self._tts_active = isinstance(frame, TTSStartedFrame)
            if self._agent_text == "tts":
                self._flush_agent_words()
            self._settle(calls)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            calls.state("speaking")
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._settle(calls)
        elif isinstance(frame, InterruptionFrame):
            self._tools_pending.clear()  # calls not started yet are dropped by an interruption
            self._flush_agent_words(interrupted=True)
        elif isinstance(frame, UserStartedSpeakingFrame):
            calls.speaking_over()
            self._bot_speaking = False
            calls.state("listening")

    @staticmethod
    def _metrics(frame: MetricsFrame, calls: CallEvents) -> None:
        """Each TTFB and processing time as a `metrics` event of its service's stage; the zeros
        a worker announces its services with at the start measure nothing and are left out."""
        for data in frame.data:
            if not isinstance(data, TTFBMetricsData | ProcessingMetricsData) or data.value <= 0:
                continue
            if isinstance(data, TTFBMetricsData):
                figure = {"ttfb_ms": data.value * 1000}
            else:
                figure = {"duration_ms": data.value * 1000}
            calls.metrics(stage_of(data.processor), **figure, processor=data.processor, model=data.model)

    def _settle(self, calls: CallEvents) -> None:
        """After a turn-ending frame: thinking while anything is still working, else listening."""
        if self._bot_speaking:
            return
        busy = self._llm_active or self._tts_active or bool(self._tools_pending or self._tools_running)
        calls.state("thinking" if busy else "listening")


def stage_of(processor: str) -> str:
    """A service's stage from the name Pipecat gives it (``DeepgramSTTService#0`` → ``stt``);
    any other processor by its class's name."""
    name = processor.split("#", 1)[0]
    return next((stage.lower() for stage in ("STT", "LLM", "TTS") if stage in name), name)
