"""Realistic simulated calls, for demos, tests and benchmarks.

A dashboard, a benchmark or a subscriber's test needs traffic that looks like real voice calls:
partial transcripts growing word by word at speaking pace, agent state changes around each
agent turn (the server measures each answer's latency from them), the pipeline's own `metrics`
(STT, LLM and TTS time to first byte, now and then a slow LLM), function calls with believable
arguments and results, and calls ending in the varied ways real calls end. :func:`script_events` produces that as a pure, seeded generator
(no I/O, no clock) so tests check its shape without a server; :func:`run_simulation` plays many
such calls concurrently against a server through one :class:`~callstream.publisher.Publisher`,
and a supervisor can steer each of them live (:class:`_LiveCall`, docs/control.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from callstream.control import ACTIONS, ControlRequest
from callstream.errors import PublishError
from callstream.publisher import Publisher
from callstream.sim_campaign import SHAPE_SALT, arrival_gap, check_options, draw_call
from callstream.sim_scripts import SCRIPTS, Facts, Say, Tool, Turn, agent, user
from callstream.sim_voice import Voices

__all__ = [
    "END_WEIGHTS",
    "SCRIPTS",
    "SimulationStats",
    "run_simulation",
    "script_events",
    "simulate_command",
]

WORDS_PER_SECOND: Final = 2.5
REFERENCE_DAY: Final = dt.date(2026, 3, 2)  # a Monday: keeps script_events deterministic
END_WEIGHTS: Final[dict[str, float]] = {
    "completed": 0.74,
    "transferred": 0.08,
    "failed": 0.05,
    "no_answer": 0.05,
    "busy": 0.04,
    "canceled": 0.04,
}
FAILURES: Final = (
    "media timeout: no audio from the caller for 10 s",
    "carrier error: SIP 503 Service Unavailable",
    "LLM provider timeout after 3 retries",
    "TTS provider returned HTTP 500",
)

CONTROLS: Final = ACTIONS  # a simulated call obeys every action (docs/control.md)

Event = tuple[float, str, dict[str, Any]]
# What the simulated pipeline's `metrics` events name (made-up services, real shapes).
STT_MODEL: Final = "nova-3"
LLM_MODEL: Final = "gpt-4o-mini"
TTS_MODEL: Final = "sonic-2"


# -- from a script to timed events ----------------------------------------------------------------


class _Timeline:
    """Turns a script into ``(delay, type, data)`` events with speaking-pace timing."""

    def __init__(self, rng: random.Random, speed: float) -> None:
        self.rng = rng
        self.speed = speed
        self.state = ""
        self.utterances = 0
        self.elapsed = 0.0  # since the call's first event, in (scaled) seconds
        self.started = False
        self.saying: Say | None = None  # the utterance being played (its voice speaks it)

    def wait(self, low: float, high: float) -> float:
        delay = self.rng.uniform(low, high) / self.speed
        if self.started:
            self.elapsed += delay
        self.started = True
        return delay

    def set_state(self, state: str, low: float, high: float) -> Iterator[Event]:
        if self.state != state:
            self.state = state
            yield self.wait(low, high), "agent.state", {"state": state}

    def say(self, say: Say) -> Iterator[Event]:
        if say.speaker == "user":
            yield from self.set_state("listening", 0.1, 0.3)
        else:
            yield from self.set_state("thinking", 0.2, 0.5)
            yield from self.answer()
        self.saying = say
        self.utterances += 1
        base = {"speaker": say.speaker, "utterance_id": f"utt_{self.utterances}"}
        words = say.text.split()
        pace = 1 / WORDS_PER_SECOND
        for count in range(1, max(2, len(words))):
            first = count == 1
            delay = self.wait(0.4, 1.2) if first else self.wait(pace * 0.7, pace * 1.3)
            partial = {**base, "text": " ".join(words[:count]), "is_final": False}
            yield delay, "transcript.partial", partial
        yield self.wait(0.2, 0.5), "transcript.final", {**base, "text": say.text, "is_final": True}
        if say.speaker == "user":
            yield self.heard()

    def answer(self) -> Iterator[Event]:
        """From thinking to speaking as a voice pipeline gets there: the LLM's first token, then
        the TTS's first audio, each reported by a `metrics` event as the pipeline would. About one
        answer in twelve has a slow LLM, as real providers do now and then."""
        slow = self.rng.random() < 1 / 12
        llm_s = self.rng.uniform(1.2, 2.8) if slow else self.rng.uniform(0.25, 0.75)
        tts_s = self.rng.uniform(0.1, 0.3)
        tokens = self.rng.randint(12, 60)
        yield self.wait(llm_s, llm_s), "metrics", {
            "stage": "llm", "ttfb_ms": round(llm_s * 1000), "model": LLM_MODEL, "completion_tokens": tokens,
        }
        self.state = "speaking"
        yield self.wait(tts_s, tts_s), "agent.state", {"state": "speaking"}
        yield 0.0, "metrics", {"stage": "tts", "ttfb_ms": round(tts_s * 1000), "model": TTS_MODEL}

    def heard(self) -> Event:
        """The STT's figures for the utterance just finalised."""
        ttfb = self.rng.uniform(0.12, 0.35)
        return 0.0, "metrics", {"stage": "stt", "ttfb_ms": round(ttfb * 1000), "model": STT_MODEL}

    def tool(self, tool: Tool) -> Iterator[Event]:
        yield from self.set_state("thinking", 0.2, 0.5)
        call_id = f"call_{self.rng.getrandbits(48):012x}"
        yield self.wait(0.3, 0.9), "function.call", {
            "name": tool.name, "args": tool.args, "tool_call_id": call_id,
        }
        yield self.wait(0.2, 1.5), "function.result", {
            "name": tool.name, "result": tool.result, "tool_call_id": call_id,
        }

    def end(self, status: str, reason: str, low: float, high: float) -> Iterator[Event]:
        delay = self.wait(low, high)
        duration_ms = round(self.elapsed * 1000)
        yield delay, "call.ended", {"status": status, "duration_ms": duration_ms, "reason": reason}


def _user_turns(turns: list[Turn]) -> list[int]:
    """Indexes where the caller speaks: the places a call can be cut off without tearing a turn."""
    return [i for i, turn in enumerate(turns) if isinstance(turn, Say) and turn.speaker == "user"]


def _play(line: _Timeline, turns: list[Turn]) -> Iterator[Event]:
    for turn in turns:
        yield from line.say(turn) if isinstance(turn, Say) else line.tool(turn)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one call goes when nobody steers it: the turns it plays, then how it ends."""

    turns: list[Turn]
    status: str
    reason: str
    end_delay: tuple[float, float]
    answered: bool = True  # False: it ends before anyone speaks (no answer, busy)
    script: str = ""  # the key of sim_scripts.SCRIPTS it plays


def _plan(rng: random.Random, today: dt.date) -> _Plan:
    """Draw a conversation and its ending: how often each ending comes is ``END_WEIGHTS``."""
    name = rng.choice(list(SCRIPTS))
    script = SCRIPTS[name](Facts(rng, today))
    status = rng.choices(list(END_WEIGHTS), weights=list(END_WEIGHTS.values()))[0]
    if status == "no_answer":
        reason = f"no answer after {rng.randint(20, 40)} s of ringing"
        return _Plan([], status, reason, (0, 0), answered=False, script=name)
    if status == "busy":
        return _Plan([], status, "line busy (SIP 486 Busy Here)", (0, 0), answered=False, script=name)
    cut = rng.choice(_user_turns(script.turns)[1:] or [len(script.turns)])
    if status == "completed":
        return _Plan(script.turns, status, script.reason, (0.5, 1.5), script=name)
    if status == "transferred":
        handover: list[Turn] = [
            user("Actually, can I talk to a real person, please?"),
            agent("Of course. I'll transfer you now, please hold."),
            Tool("transfer_call", {"queue": script.queue, "reason": "caller_request"},
                 {"status": "transferring", "queue_position": rng.randint(1, 6)}),
        ]
        reason = f"transferred to {script.queue} at the caller's request"
        return _Plan([*script.turns[:cut], *handover], status, reason, (0.3, 1.0), script=name)
    if status == "canceled":
        return _Plan(script.turns[:cut], status, "caller hung up", (1.0, 3.0), script=name)
    return _Plan(script.turns[:cut], status, rng.choice(FAILURES), (0.5, 4.0), script=name)


def _check_speed(speed: float) -> None:
    if speed <= 0:
        msg = "speed must be positive"
        raise ValueError(msg)


def script_events(
    call_id: str,
    rng: random.Random,
    speed: float = 1.0,
    *,
    today: dt.date = REFERENCE_DAY,
) -> Iterator[Event]:
    """Yield one simulated call as ``(delay_before_s, type, data)``, ending with ``call.ended``.

    Pure and deterministic for a seeded ``rng`` (``today`` anchors the dates spoken), so tests
    can check the shape without a server or a clock. ``speed`` scales time: 2.0 plays the call
    twice as fast. ``duration_ms`` is the time from the first event to ``call.ended`` at that
    speed, i.e. what the server observes. ``call_id`` only names the call; nothing here
    depends on it. This is the call as it goes when nobody steers it: a live call
    (:func:`run_simulation`) plays the same plan and also obeys control requests.
    """
    del call_id  # part of the signature so callers can pass per-call context later
    _check_speed(speed)
    line = _Timeline(rng, speed)
    plan = _plan(rng, today)
    if plan.answered:
        yield 0.0, "agent.state", {"state": "listening"}
        line.started, line.state = True, "listening"
        yield from _play(line, plan.turns)
    yield from line.end(plan.status, plan.reason, *plan.end_delay)


# -- one live call, steered by a supervisor --------------------------------------------------------


class _Cut(Exception):  # noqa: N818 - control flow, not an error
    """A control request cut the turn being played short."""


class _HungUp(Exception):  # noqa: N818 - control flow, not an error
    """A control request ended the call: its ``call.ended`` is out."""


class _LiveCall:
    """One simulated call played in real time, steered by the control requests sent to it.

    It plays its plan turn by turn at speaking pace; whenever it waits for its next event it
    takes the requests that came (docs/control.md): ``say`` makes the agent speak the text after the
    turn in progress, or at once when ``interrupt`` (an agent's turn in progress is cut short; a
    caller is let finish); ``instruct`` changes the agent's next scripted reply (having no model,
    it says the instruction first); ``pause`` cuts the agent off and holds the script until
    ``resume`` (a human has the floor: the agent still speaks what it is told to say);
    ``transfer`` ends the call ``transferred``; ``end`` ends it. Each request's
    ``control.result`` is published before what it causes, so it precedes a ``call.ended``.

    Its campaign shape (:mod:`callstream.sim_campaign`) gives its metadata, sent as its first
    event, ``call.started {metadata}`` (docs/protocol.md, Call metadata), may cap its length (it then ends
    ``completed`` at the next turn), and for a call ``joining`` a running campaign, skips the
    turns already behind it.
    """

    def __init__(self, sim: _Simulation, call_id: str, rng: random.Random, shape_rng: random.Random, *,
                 joining: bool = False) -> None:
        self.sim = sim
        self.call_id = call_id
        self.line = _Timeline(rng, sim.speed)
        self.plan = _plan(rng, sim.today)
        # From a random.Random of its own: a seed plays the same conversations with or without it.
        self.shape = draw_call(shape_rng, self.plan.script, len(self.plan.turns),
                               mean_length=sim.mean_length, joining=joining)
        self.requests: asyncio.Queue[ControlRequest] = asyncio.Queue()
        self.queued: deque[Say] = deque()  # lines the supervisor asked for, said after the turn
        self.instruction: str | None = None
        self.paused = False
        self.playing: str | None = None  # whose turn is being played: "agent" or "user"
        self.open: dict[str, Any] | None = None  # the last partial of the utterance in progress
        self.tool: dict[str, Any] | None = None  # the function call waiting for its result
        self.loop = asyncio.get_running_loop()
        self.started = self.due = self.loop.time()
        self.announced = False  # its `call.started` is out
        self.ended = False

    @property
    def elapsed_ms(self) -> int:
        return round((self.loop.time() - self.started) * 1000)

    async def run(self) -> None:
        """Play the call to its end; a ``transfer`` or ``end`` request ends it early."""
        if self.shape.delay_s:
            await asyncio.sleep(self.shape.delay_s / self.sim.speed)
            self.started = self.due = self.loop.time()
        await self.send("call.started", {"metadata": self.shape.metadata})
        with contextlib.suppress(_HungUp):
            if self.plan.answered:
                await self.send("agent.state", {"state": "listening"})
                self.line.started, self.line.state = True, "listening"
                for turn in self.plan.turns[self.shape.skip_turns:]:
                    if self.over_length():
                        await self.end("completed", "the caller had what they needed")
                        return
                    await self.play(self.steered(turn), turn.speaker if isinstance(turn, Say) else "agent")
                    await self.between_turns()
            await self.sleep(self.line.wait(*self.plan.end_delay))
            await self.between_turns()
            await self.end(self.plan.status, self.plan.reason)

    def over_length(self) -> bool:
        """Past the length its campaign drew for it (never, without a cap)."""
        cap = self.shape.max_length_s
        return cap is not None and self.loop.time() - self.started >= cap / self.sim.speed

    def steered(self, turn: Turn) -> Iterator[Event]:
        """The events of the next scripted turn; an agent reply carries a pending instruction."""
        if isinstance(turn, Tool):
            return self.line.tool(turn)
        if turn.speaker == "agent" and self.instruction is not None:
            turn, self.instruction = agent(f"{self.instruction} {turn.text}"), None
        return self.line.say(turn)

    async def between_turns(self) -> None:
        """Say what the supervisor asked for; while paused, wait for requests instead."""
        while self.queued or self.paused:
            if self.queued:
                await self.play(self.line.say(self.queued.popleft()), "agent")
                if self.paused:  # said what it was told; the human has the floor again
                    await self.listen()
            else:
                await self.handle(await self.requests.get())
                self.due = self.loop.time()

    async def play(self, events: Iterator[Event], speaker: str) -> None:
        """Send one turn's events at their pace, unless a request cuts it short."""
        self.playing = speaker
        try:
            for delay, kind, data in events:
                await self.sleep(delay)
                await self.send(kind, data)
        except _Cut:
            self.due = self.loop.time()
        finally:
            self.playing = None

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` s after the previous event's due time, taking requests meanwhile."""
        self.due += delay
        while True:
            if self.requests.empty():
                try:
                    async with asyncio.timeout_at(self.due):
                        request = await self.requests.get()
                except TimeoutError:
                    return
            else:
                request = self.requests.get_nowait()
            await self.handle(request)

    async def handle(self, request: ControlRequest) -> None:
        """Carry out one request: its result first, then what it does to the call."""
        action, args = request.action, request.args
        if action not in CONTROLS:
            await self.sim.result(request, ok=False, error=f"the simulator cannot {action}")
            return
        await self.sim.result(request, ok=True)
        cut = False
        if action == "say":
            line = agent(str(args.get("text", "")))
            if args.get("interrupt"):
                self.queued.appendleft(line)
                cut = await self.cut_agent_off()
            else:
                self.queued.append(line)
        elif action == "instruct":
            self.instruction = str(args.get("text", ""))
        elif action == "pause":
            self.paused = True
            cut = await self.cut_agent_off()
            if cut or self.playing is None:
                await self.listen()
        elif action == "resume":
            self.paused = False
        else:
            await self.close_turn()
            if action == "transfer":
                why = f": {args['reason']}" if args.get("reason") else ""
                await self.end("transferred", f"transferred to {args.get('to')} by the supervisor{why}")
            else:
                await self.end("completed", str(args.get("reason") or "ended by the supervisor"))
            raise _HungUp
        if cut:
            raise _Cut

    async def cut_agent_off(self) -> bool:
        """Close the agent's turn in progress, if it has one (True: the turn is to be dropped)."""
        if self.playing != "agent":
            return False
        await self.close_turn()
        return True

    async def listen(self) -> None:
        if self.line.state != "listening":
            await self.send("agent.state", {"state": "listening"})

    async def close_turn(self) -> None:
        """End what the turn in progress left open: the utterance with what was said of it (an
        agent's is ``interrupted``), a function call with a ``cancelled`` result."""
        if self.open is not None:
            cut_off = {"interrupted": True} if self.open["speaker"] == "agent" else {}
            await self.send("transcript.final", {**self.open, "is_final": True, **cut_off})
        if self.tool is not None:
            await self.send("function.result", {**self.tool, "result": None, "cancelled": True})

    async def end(self, status: str, reason: str) -> None:
        """``call.ended``: the server settles the requests still waiting (docs/control.md)."""
        await self.send("call.ended", {"status": status, "duration_ms": self.elapsed_ms, "reason": reason[:500]})
        self.ended = True

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        """Publish one event, keeping track of what is open (an utterance, a function call)."""
        if kind.startswith("transcript."):
            self.open = data if kind == "transcript.partial" else None
        elif kind.startswith("function."):
            self.tool = {k: data[k] for k in ("name", "tool_call_id")} if kind == "function.call" else None
        elif kind == "agent.state":
            self.line.state = data["state"]
        self.sim.emit(await self.sim.pub.send_wait(self.call_id, kind, data), self.call_id, kind, data)
        self.announced = True
        if self.sim.voices is not None:
            self.sim.voices.follow(self.call_id, kind, data, self.line.saying)


# -- playing many calls against a server ---------------------------------------------------------


@dataclass(slots=True)
class SimulationStats:
    """Counters of a running simulation; mutated in place, read by the live view."""

    started_at: float = field(default_factory=time.monotonic)
    calls_started: int = 0
    calls_ended: int = 0
    events_sent: int = 0
    events_acked: int = 0
    errors: int = 0
    last_error: str = ""
    finals: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=6))

    @property
    def calls_live(self) -> int:
        return self.calls_started - self.calls_ended

    def on_done(self, future: asyncio.Future[int | None]) -> None:
        """Count an event's outcome; retrieving the exception keeps asyncio from logging it."""
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            self.errors += 1
            self.last_error = str(error)
        else:
            self.events_acked += 1


ProgressCallback = Callable[[SimulationStats], None]


@dataclass(eq=False)
class _Simulation:
    """The calls of one :func:`run_simulation`, sharing a publisher and a stats object."""

    pub: Publisher
    speed: float
    rng: random.Random
    on_progress: ProgressCallback | None
    mean_length: float | None
    voices: Voices | None
    stats: SimulationStats = field(init=False, default_factory=SimulationStats)
    ids: set[str] = field(init=False, default_factory=set)
    tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    live: dict[str, _LiveCall] = field(init=False, default_factory=dict)
    today: dt.date = field(init=False, default_factory=lambda: dt.datetime.now(dt.UTC).date())
    # Set when the publisher fails for good (unauthorized, closed): the run stops with it.
    fatal: asyncio.Future[PublishError] = field(
        init=False, default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def new_call_id(self) -> str:
        """Fresh ids even under a seed: a rerun must not publish into calls that already ended."""
        while (call_id := f"sim_{uuid.uuid4().hex[:8]}") in self.ids:
            pass
        self.ids.add(call_id)
        return call_id

    def start_call(self, slots: asyncio.Semaphore, *, joining: bool = False) -> None:
        seed = self.rng.getrandbits(64)
        rngs = random.Random(seed), random.Random(seed ^ SHAPE_SALT)
        task = asyncio.create_task(self.call(self.new_call_id(), rngs, slots, joining=joining))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(self, call_id: str, rngs: tuple[random.Random, random.Random], slots: asyncio.Semaphore, *,
                   joining: bool = False) -> None:
        self.stats.calls_started += 1
        call = self.live[call_id] = _LiveCall(self, call_id, *rngs, joining=joining)
        try:
            await call.run()
        except PublishError as exc:
            if not self.fatal.done():
                self.fatal.set_result(exc)
        finally:
            del self.live[call_id]
            if self.voices is not None:
                self.voices.forget(call_id)
            if not call.ended:  # stopped mid-call: don't leave it live on the server forever
                self.end_now(call_id, call.elapsed_ms, None if call.announced else call.shape.metadata)
            self.stats.calls_ended += 1
            slots.release()

    async def steer(self) -> None:
        """Hand each control request to the live call it is for."""
        async for request in self.pub.control_requests():
            call = self.live.get(request.call_id)
            if call is None:
                await self.result(request, ok=False, error="the call ended")
            else:
                call.requests.put_nowait(request)

    async def result(self, request: ControlRequest, *, ok: bool, error: str | None = None) -> None:
        """Publish a request's ``control.result``; a call that ended meanwhile refuses it (the
        server answers the request itself then)."""
        with contextlib.suppress(PublishError):
            await self.pub.control_result(request, ok=ok, error=error)

    def emit(self, future: asyncio.Future[int | None], call_id: str, kind: str,
             data: dict[str, Any]) -> None:
        self.stats.events_sent += 1
        future.add_done_callback(self.stats.on_done)
        if kind == "transcript.final":
            self.stats.finals.append((call_id, data["speaker"], data["text"]))
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def end_now(self, call_id: str, duration_ms: int, metadata: dict[str, str] | None) -> None:
        """End a call stopped mid-way; one stopped before it started (`metadata` given) starts
        first, so every simulated call opens with its `call.started`."""
        data: dict[str, Any] = {"status": "canceled", "duration_ms": duration_ms, "reason": "simulation stopped"}
        events: list[tuple[str, dict[str, Any]]] = [("call.started", {"metadata": metadata})] if metadata else []
        with contextlib.suppress(PublishError):  # backpressure/closed: nothing more to do
            for kind, body in [*events, ("call.ended", data)]:
                self.emit(self.pub.send(call_id, kind, body), call_id, kind, body)

    async def keep_going(self, calls: int, rate: float | None, arrival_rate: float | None = None, *,
                         stagger: bool = False) -> None:
        """Start calls as slots free up, never more than ``calls`` at once.

        With ``rate``, no faster than that many a second, evenly spaced; with ``arrival_rate``,
        as a Poisson process of that many a second. With neither, the steady state: one starts
        as another ends, and with ``stagger`` the first ``calls`` join at random points of their
        scripts.
        """
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(calls)
        due = loop.time()
        filling = calls if stagger and rate is None and arrival_rate is None else 0
        while True:
            await slots.acquire()
            if rate is not None:
                due = max(due + 1 / rate, loop.time())
                await asyncio.sleep(due - loop.time())
            elif arrival_rate is not None:
                due = max(due, loop.time() - 1.0) + arrival_gap(self.rng, arrival_rate)
                await asyncio.sleep(max(0.0, due - loop.time()))
            self.start_call(slots, joining=filling > 0)
            filling -= 1

    async def stop(self) -> None:
        """Cancel the running calls (each publishes its ``call.ended``), then flush."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))
        with contextlib.suppress(TimeoutError, PublishError):
            async with asyncio.timeout(5):
                await self.pub.flush()


async def run_simulation(
    url: str,
    key: str,
    *,
    calls: int = 10,
    rate: float | None = None,
    speed: float = 1.0,
    duration: float | None = None,
    seed: int | None = None,
    on_progress: ProgressCallback | None = None,
    arrival_rate: float | None = None,
    mean_length: float | None = None,
    stagger: bool = False,
    audio: bool = False,
) -> SimulationStats:
    """Keep ``calls`` simulated calls going against the server at ``url``.

    Without ``rate``, a new call starts as soon as one ends; with ``rate``, calls start at that
    many per second, never more than ``calls`` at once. Runs for ``duration`` seconds, or until
    cancelled. Either way, calls still going are ended with ``call.ended`` (status
    ``canceled``, reason ``simulation stopped``) so none stays live on the server. The calls
    obey live control (every action is declared): see :class:`_LiveCall`. ``seed``
    makes what is said reproducible; call ids (``sim_<8 hex>``) are always fresh.
    ``on_progress`` is called with the stats after every event sent; keep it cheap.

    A campaign (:mod:`callstream.sim_campaign`): ``arrival_rate`` starts calls as a Poisson
    process instead (not with ``rate``); without either, ``stagger`` has the first ``calls``
    join at random points of their scripts, so none speak in lockstep. ``mean_length``
    (seconds) is the median of each call's drawn length cap. Every call starts with
    ``call.started {metadata}`` (docs/protocol.md, Call metadata).

    ``audio``: the calls speak their transcripts on the caller and agent tracks
    (:mod:`callstream.sim_voice`: espeak-ng when installed, else tones).
    """
    if calls < 1 or (rate is not None and rate <= 0) or speed <= 0:
        msg = "calls, rate and speed must be positive"
        raise ValueError(msg)
    check_options(arrival_rate, rate, mean_length)
    async with Publisher(url, key, controls=dict.fromkeys(CONTROLS)) as pub:
        voices = Voices(pub, speed) if audio else None
        sim = _Simulation(pub, speed, random.Random(seed), on_progress, mean_length, voices)
        keeper = asyncio.create_task(sim.keep_going(calls, rate, arrival_rate, stagger=stagger))
        steering = asyncio.create_task(sim.steer())
        speaking = asyncio.create_task(voices.run() if voices is not None else asyncio.sleep(0))
        try:
            watched: list[asyncio.Future[Any]] = [keeper, sim.fatal]
            await asyncio.wait(watched, timeout=duration,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            keeper.cancel()
            steering.cancel()
            speaking.cancel()
            await asyncio.wait([keeper, steering, speaking])
            await sim.stop()
        if sim.fatal.done():
            raise sim.fatal.result()
        if not keeper.cancelled() and (error := keeper.exception()) is not None:
            raise error
    return sim.stats


# -- the command --------------------------------------------------------------------------------


class _View:
    """The live terminal view: counters, events per second, the last few final transcripts."""

    def __init__(self, stats: SimulationStats) -> None:
        self.stats = stats
        self.samples: deque[tuple[float, int]] = deque(maxlen=12)

    def render(self) -> Group:
        s = self.stats
        now = time.monotonic()
        self.samples.append((now, s.events_sent))
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        table = Table.grid(padding=(0, 2))
        for name, value in (
            ("elapsed", f"{now - s.started_at:,.0f} s"),
            ("calls live", f"{s.calls_live:,}"),
            ("calls started / ended", f"{s.calls_started:,} / {s.calls_ended:,}"),
            ("events sent", f"{s.events_sent:,}  ({rate:,.0f}/s)"),
            ("events acked", f"{s.events_acked:,}"),
            ("errors", f"{s.errors:,}" + (f"  last: {s.last_error}" if s.errors else "")),
        ):
            table.add_row(Text(name, style="bold"), value)
        lines = [Text.assemble((f"{call} ", "dim"), (f"{who}: ", "cyan" if who == "agent"
                                                     else "green"), text)
                 for call, who, text in s.finals]
        return Group(table, Text(""), *lines)


async def _show(console: Console, task: asyncio.Task[SimulationStats],
                stats_box: list[SimulationStats]) -> None:
    view: _View | None = None
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if stats_box:
                    view = view or _View(stats_box[0])
                    live.update(view.render())
    finally:
        if not console.is_terminal:
            console.line()  # a non-terminal Live leaves its last frame without a newline


def simulate_command(
    url: str,
    key: str,
    calls: int,
    rate: float | None,
    speed: float,
    duration: float | None,
    seed: int | None,
    quiet: bool,
    arrival_rate: float | None = None,
    mean_length: float | None = None,
    stagger: bool = True,
    audio: bool = False,
) -> None:
    """Run :func:`run_simulation` with a live view; Ctrl-C ends the calls and exits cleanly."""
    console = Console(stderr=True)
    stats_box: list[SimulationStats] = []

    def grab(stats: SimulationStats) -> None:
        if not stats_box:
            stats_box.append(stats)

    async def main() -> SimulationStats:
        task = asyncio.create_task(run_simulation(
            url, key, calls=calls, rate=rate, speed=speed, duration=duration, seed=seed,
            on_progress=grab, arrival_rate=arrival_rate, mean_length=mean_length, stagger=stagger, audio=audio,
        ))
        try:
            if not quiet:
                await _show(console, task, stats_box)
            return await task
        finally:  # Ctrl-C cancels main(): let the simulation end its calls before exiting
            task.cancel()
            await asyncio.wait([task])

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        stats = stats_box[0] if stats_box else SimulationStats()
    except PublishError as exc:
        console.print(f"[red]simulate: {exc}[/red]")
        raise SystemExit(1) from exc
    console.print(
        f"{stats.calls_started:,} calls started, {stats.calls_ended:,} ended, "
        f"{stats.events_sent:,} events sent, {stats.events_acked:,} acked, {stats.errors:,} errors"
    )
