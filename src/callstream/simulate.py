"""Realistic simulated calls, for demos, tests and benchmarks.

A dashboard, a benchmark or a subscriber's test needs traffic that looks like real voice calls:
partial transcripts growing word by word at speaking pace, agent state changes around each
agent turn (the server measures each answer's latency from them), the pipeline's own `metrics`
(STT, LLM and TTS time to first byte, now and then a slow LLM), function calls with believable
arguments and results, and calls ending in the varied ways real calls end. :func:`script_events` produces that as a pure, seeded generator
(no I/O, no clock) so tests check its shape without a server; :func:`run_simulation` plays many
such calls concurrently against a server through one :class:`~callstream.publisher.Publisher`.
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

from callstream.errors import PublishError
from callstream.publisher import Publisher

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

Event = tuple[float, str, dict[str, Any]]
# What the simulated pipeline's `metrics` events name (made-up services, real shapes).
STT_MODEL: Final = "nova-3"
LLM_MODEL: Final = "gpt-4o-mini"
TTS_MODEL: Final = "sonic-2"


# -- script building blocks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """One utterance, heard as growing partials and then one final."""

    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the agent calls; emitted as a function.call/function.result pair."""

    name: str
    args: dict[str, Any]
    result: dict[str, Any]


Turn = Say | Tool


@dataclass(frozen=True, slots=True)
class Script:
    """A whole conversation as it goes when nothing interrupts it."""

    turns: list[Turn]
    reason: str  # why the call ended when it completes
    queue: str  # where a transfer goes


class _Facts:
    """Random but consistent details (names, dates, ids) a script draws from."""

    FIRST: Final = ("Maria", "James", "Aisha", "Daniel", "Priya", "Tom", "Sofia", "Kenji", "Laura")
    LAST: Final = ("Garcia", "Johnson", "Okafor", "Müller", "Patel", "Nguyen", "Rossi", "Smith")
    CITIES: Final = ("Sacramento", "Phoenix", "Austin", "Tampa", "Denver", "San Diego")

    def __init__(self, rng: random.Random, today: dt.date) -> None:
        self.rng = rng
        self.today = today
        self.first = rng.choice(self.FIRST)
        self.last = rng.choice(self.LAST)

    def code(self, prefix: str, digits: int = 5) -> str:
        return f"{prefix}-{self.rng.randrange(10 ** (digits - 1), 10**digits)}"

    def phone(self) -> str:
        return f"+1555{self.rng.randrange(1_000_000, 9_999_999)}"

    def day(self, earliest: int = 1, latest: int = 9) -> dt.date:
        return self.today + dt.timedelta(days=self.rng.randint(earliest, latest))

    def time(self, first_hour: int = 9, last_hour: int = 16) -> dt.time:
        return dt.time(self.rng.randint(first_hour, last_hour), self.rng.choice((0, 15, 30, 45)))


def _spoken_day(day: dt.date) -> str:
    return f"{day:%A}, {day:%B} {day.day}"


def _spoken_time(at: dt.time) -> str:
    hour = at.hour % 12 or 12
    suffix = "AM" if at.hour < 12 else "PM"
    return f"{hour}:{at.minute:02d} {suffix}" if at.minute else f"{hour} {suffix}"


def _iso(day: dt.date, at: dt.time) -> str:
    return dt.datetime.combine(day, at).isoformat(timespec="minutes")


def _agent(text: str) -> Say:
    return Say("agent", text)


def _user(text: str) -> Say:
    return Say("user", text)


# -- the conversations ----------------------------------------------------------------------------


def _clinic(f: _Facts) -> Script:
    rng = f.rng
    doctor = rng.choice(("Chen", "Okonkwo", "Alvarez", "Hoffman"))
    symptom, days = rng.choice(("sore throat", "bad cough", "rash on my arm", "earache")), rng.randint(2, 6)
    born = dt.date(rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28))
    day1, day2 = sorted({f.day(1, 4), f.day(5, 8)})
    t1, t2 = f.time(8, 11), f.time(13, 16)
    patient, confirmation = f.code("P", 6), f.code("RFC", 4)
    pick_day, pick_time = rng.choice(((day1, t1), (day2, t2)))
    return Script(
        turns=[
            _agent("Thank you for calling Riverside Family Clinic, this is Ava, the virtual "
                   "assistant. How can I help you today?"),
            _user(f"Hi, I'd like to see Dr. {doctor}. I've had a {symptom} for about {days} days."),
            _agent("I'm sorry to hear that. Can I have your full name and date of birth?"),
            _user(f"Sure, it's {f.first} {f.last}, born {born:%B} {born.day}, {born.year}."),
            Tool("find_patient",
                 {"last_name": f.last, "date_of_birth": born.isoformat()},
                 {"patient_id": patient, "first_name": f.first, "insurance": "Aetna PPO"}),
            Tool("check_availability",
                 {"provider": f"Dr. {doctor}", "visit_type": "sick_visit",
                  "date_from": day1.isoformat(), "date_to": day2.isoformat()},
                 {"slots": [_iso(day1, t1), _iso(day2, t2)]}),
            _agent(f"Thanks, {f.first}, I found your record. Dr. {doctor} can see you on "
                   f"{_spoken_day(day1)} at {_spoken_time(t1)}, or on {_spoken_day(day2)} at "
                   f"{_spoken_time(t2)}. Which works better?"),
            _user(f"{pick_day:%A} at {_spoken_time(pick_time)} is perfect."),
            Tool("book_appointment",
                 {"patient_id": patient, "provider": f"Dr. {doctor}",
                  "start": _iso(pick_day, pick_time), "visit_type": "sick_visit",
                  "reason": symptom},
                 {"status": "booked", "confirmation": confirmation}),
            _agent(f"You're all set for {_spoken_day(pick_day)} at {_spoken_time(pick_time)} "
                   f"with Dr. {doctor}. Your confirmation number is {confirmation}. Please "
                   "arrive ten minutes early and bring your insurance card. Anything else?"),
            _user("No, that's everything. Thank you!"),
            _agent(f"You're welcome, {f.first}. Feel better soon, goodbye!"),
        ],
        reason="appointment booked",
        queue="front_desk",
    )


def _router(f: _Facts) -> Script:
    rng = f.rng
    color = rng.choice(("orange", "red", "amber"))
    account, ticket, phone = f.code("NW", 7), f.code("TCK", 6), f.phone()
    loss = round(rng.uniform(6, 25), 1)
    visit = f.day(1, 3)
    window = rng.choice(("8 AM and noon", "noon and 4 PM", "1 PM and 5 PM"))
    return Script(
        turns=[
            _agent("Northwind Fiber support, this is Sam. What can I do for you?"),
            _user(f"My internet keeps dropping every few minutes and the light on the router is "
                  f"blinking {color}."),
            _agent("That sounds frustrating. What's the phone number on the account?"),
            _user(f"It's {phone[2:5]} {phone[5:8]} {phone[8:]}."),
            Tool("lookup_account", {"phone": phone},
                 {"account_id": account, "name": f"{f.first} {f.last}", "plan": "Fiber 500",
                  "router_model": "NW-AX3000"}),
            Tool("run_line_diagnostics", {"account_id": account},
                 {"line_status": "degraded", "packet_loss_pct": loss, "signal_dbm": -27.4}),
            _agent(f"Thanks, {f.first}. I see about {loss:g} percent packet loss on your line. "
                   "Could you unplug the router for thirty seconds and plug it back in?"),
            _user("Okay, hold on. Alright, it's back on, but the light is still blinking."),
            _agent("Thanks for trying that. The router needs a technician, so I'll open a "
                   "ticket for you."),
            Tool("create_ticket",
                 {"account_id": account, "category": "hardware", "priority": "high",
                  "summary": f"NW-AX3000 blinking {color}, {loss:g}% packet loss after reboot"},
                 {"ticket_id": ticket, "status": "open"}),
            Tool("check_availability",
                 {"service": "technician_visit", "account_id": account},
                 {"windows": [f"{visit.isoformat()} {window}"]}),
            _agent(f"Your ticket number is {ticket}. A technician can come on "
                   f"{_spoken_day(visit)} between {window}. Does that work for you?"),
            _user("Yes, that works."),
            Tool("schedule_visit", {"ticket_id": ticket, "date": visit.isoformat(),
                                    "window": window},
                 {"status": "scheduled"}),
            _agent("Great, you'll get a text the morning of the visit. Anything else today?"),
            _user("No, thanks for your help."),
            _agent("Have a good day!"),
        ],
        reason="ticket created, technician visit scheduled",
        queue="tier2_support",
    )


def _solar(f: _Facts) -> Script:
    rng = f.rng
    city, bill = rng.choice(f.CITIES), rng.choice((140, 180, 220, 260, 310))
    zip_code = f"{rng.randint(85001, 95999)}"
    kw = round(bill / 30, 1)
    savings = round(bill * rng.uniform(0.55, 0.8))
    opening: list[Turn] = [
        _agent(f"Hi, is this {f.first}? This is Max calling from Brightside Solar. Do you have a "
               "quick minute?"),
        _user("Uh, sure. What is this about?"),
        _agent(f"We're helping homeowners in {city} cut their electric bill with rooftop solar. "
               "Do you own your home, and roughly what is your monthly bill?"),
        _user(f"We own it. The bill is around {bill} dollars in the summer."),
        Tool("estimate_savings",
             {"zip": zip_code, "monthly_bill_usd": bill, "roof_orientation": "south"},
             {"system_kw": kw, "est_monthly_savings_usd": savings, "payback_years": 7.5,
              "federal_tax_credit_pct": 30}),
        _agent(f"Based on that, a {kw} kilowatt system could save you about {savings} dollars a "
               "month, with a thirty percent federal tax credit. Would a free site survey be "
               "worth it to you?"),
    ]
    if rng.random() < 0.4:
        return Script(
            turns=[
                *opening,
                _user("I'm not really interested right now, thanks."),
                Tool("update_lead", {"phone": f.phone(), "status": "not_interested"},
                     {"updated": True}),
                _agent("No problem at all. Thanks for your time, and have a great day."),
            ],
            reason="lead not interested",
            queue="sales_specialist",
        )
    day, at = f.day(2, 7), f.time(9, 15)
    survey = f.code("SV", 5)
    return Script(
        turns=[
            *opening,
            _user("That sounds interesting. What would the next step be?"),
            Tool("check_availability", {"service": "site_survey", "zip": zip_code},
                 {"slots": [_iso(day, at)]}),
            _agent(f"A surveyor can come by on {_spoken_day(day)} at {_spoken_time(at)}. It "
                   "takes about an hour. Does that work?"),
            _user("Yes, that's fine."),
            Tool("book_appointment",
                 {"service": "site_survey", "start": _iso(day, at),
                  "customer": f"{f.first} {f.last}", "zip": zip_code},
                 {"status": "booked", "confirmation": survey}),
            _agent(f"You're booked, confirmation {survey}. You'll get an email with the details. "
                   "Thanks, and talk soon!"),
        ],
        reason="site survey booked",
        queue="sales_specialist",
    )


def _restaurant(f: _Facts) -> Script:
    rng = f.rng
    party, day = rng.randint(2, 8), f.day(0, 6)
    wanted = dt.time(rng.choice((18, 19, 20)), rng.choice((0, 30)))
    later = (dt.datetime.combine(day, wanted) + dt.timedelta(minutes=45)).time()
    phone, reservation = f.phone(), f.code("R", 4)
    return Script(
        turns=[
            _agent("Good evening, Trattoria Lucia, how can I help you?"),
            _user(f"Hi, I'd like a table for {party} on {day:%A} at {_spoken_time(wanted)}."),
            Tool("check_availability",
                 {"party_size": party, "date": day.isoformat(), "time": f"{wanted:%H:%M}"},
                 {"available": False, "alternatives": [f"{later:%H:%M}"]}),
            _agent(f"I'm sorry, {_spoken_time(wanted)} is fully booked, but I can offer "
                   f"{_spoken_time(later)}. Would that work?"),
            _user(f"{_spoken_time(later)} is fine. Oh, and one of us has a nut allergy."),
            _agent("Noted, I'll let the kitchen know. What name and phone number should I put "
                   "the reservation under?"),
            _user(f"{f.first} {f.last}, {phone[2:5]} {phone[5:8]} {phone[8:]}."),
            Tool("create_reservation",
                 {"party_size": party, "start": _iso(day, later), "name": f"{f.first} {f.last}",
                  "phone": phone, "notes": "nut allergy"},
                 {"reservation_id": reservation, "status": "confirmed"}),
            _agent(f"You're confirmed for {party} on {_spoken_day(day)} at "
                   f"{_spoken_time(later)}, under {f.last}. See you then!"),
            _user("Thank you, bye!"),
        ],
        reason="reservation confirmed",
        queue="host_stand",
    )


def _billing(f: _Facts) -> Script:
    rng = f.rng
    amount = round(rng.uniform(40, 160), 2)
    fee = rng.choice((10.0, 15.0, 25.0))
    customer, txn, fee_txn = f.code("C", 7), f.code("TX", 8), f.code("TX", 8)
    declined = f.today - dt.timedelta(days=rng.randint(5, 20))
    return Script(
        turns=[
            _agent("Thanks for calling Vista Mobile billing. How can I help?"),
            _user(f"My payment didn't go through this month and now I've been charged a "
                  f"{fee:.0f} dollar late fee. That's not fair."),
            _agent("I understand, let's sort it out. Can you confirm the account holder's name "
                   "and the ZIP code on the account?"),
            _user(f"{f.first} {f.last}, and the ZIP is {rng.randint(10001, 99950)}."),
            Tool("lookup_customer", {"name": f"{f.first} {f.last}"},
                 {"customer_id": customer, "balance_due": amount + fee, "autopay": True}),
            Tool("list_transactions", {"customer_id": customer, "since": declined.isoformat()},
                 {"transactions": [
                     {"id": txn, "amount": amount, "status": "declined",
                      "decline_reason": "card_expired", "date": declined.isoformat()},
                     {"id": fee_txn, "amount": fee, "type": "late_fee", "status": "posted"},
                 ]}),
            _agent(f"I see the autopay of {amount} dollars on {declined:%B} {declined.day} was "
                   "declined because the card on file had expired."),
            _user("Oh, I got a new card last month. Can you waive the late fee?"),
            Tool("waive_fee", {"transaction_id": fee_txn, "reason": "first_occurrence"},
                 {"status": "approved", "credit": fee}),
            _agent(f"Done, I've credited the {fee:.0f} dollar fee. Would you like a secure link "
                   "by text to update your card and pay the balance?"),
            _user("Yes, please send it."),
            Tool("send_payment_link", {"customer_id": customer, "channel": "sms"},
                 {"sent": True, "expires_in_minutes": 30}),
            _agent("It's on its way. Is there anything else I can help with?"),
            _user("No, that's it. Thanks."),
        ],
        reason="late fee waived, payment link sent",
        queue="billing_specialist",
    )


SCRIPTS: Final[dict[str, Callable[[_Facts], Script]]] = {
    "clinic_appointment": _clinic,
    "router_support": _router,
    "solar_outbound": _solar,
    "restaurant_reservation": _restaurant,
    "billing_dispute": _billing,
}


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
    depends on it.
    """
    del call_id  # part of the signature so callers can pass per-call context later
    if speed <= 0:
        msg = "speed must be positive"
        raise ValueError(msg)
    line = _Timeline(rng, speed)
    script = rng.choice(list(SCRIPTS.values()))(_Facts(rng, today))
    status = rng.choices(list(END_WEIGHTS), weights=list(END_WEIGHTS.values()))[0]
    if status == "no_answer":
        yield from line.end(status, f"no answer after {rng.randint(20, 40)} s of ringing", 0, 0)
        return
    if status == "busy":
        yield from line.end(status, "line busy (SIP 486 Busy Here)", 0, 0)
        return
    yield 0.0, "agent.state", {"state": "listening"}
    line.started, line.state = True, "listening"
    cut = rng.choice(_user_turns(script.turns)[1:] or [len(script.turns)])
    if status == "completed":
        yield from _play(line, script.turns)
        yield from line.end(status, script.reason, 0.5, 1.5)
    elif status == "transferred":
        yield from _play(line, script.turns[:cut])
        yield from _play(line, [
            _user("Actually, can I talk to a real person, please?"),
            _agent("Of course. I'll transfer you now, please hold."),
            Tool("transfer_call", {"queue": script.queue, "reason": "caller_request"},
                 {"status": "transferring", "queue_position": rng.randint(1, 6)}),
        ])
        yield from line.end(status, f"transferred to {script.queue} at the caller's request",
                            0.3, 1.0)
    elif status == "canceled":
        yield from _play(line, script.turns[:cut])
        yield from line.end(status, "caller hung up", 1.0, 3.0)
    else:
        yield from _play(line, script.turns[:cut])
        yield from line.end(status, rng.choice(FAILURES), 0.5, 4.0)


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


class _Simulation:
    """The calls of one :func:`run_simulation`, sharing a publisher and a stats object."""

    def __init__(self, pub: Publisher, speed: float, seed: int | None,
                 on_progress: ProgressCallback | None) -> None:
        self.pub = pub
        self.speed = speed
        self.rng = random.Random(seed)
        self.on_progress = on_progress
        self.stats = SimulationStats()
        self.ids: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.today = dt.datetime.now(dt.UTC).date()
        # Set when the publisher fails for good (unauthorized, closed): the run stops with it.
        self.fatal: asyncio.Future[PublishError] = asyncio.get_running_loop().create_future()

    def new_call_id(self) -> str:
        """Fresh ids even under a seed: a rerun must not publish into calls that already ended."""
        while (call_id := f"sim_{uuid.uuid4().hex[:8]}") in self.ids:
            pass
        self.ids.add(call_id)
        return call_id

    def start_call(self, slots: asyncio.Semaphore) -> None:
        call_rng = random.Random(self.rng.getrandbits(64))
        task = asyncio.create_task(self.call(self.new_call_id(), call_rng, slots))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(self, call_id: str, rng: random.Random, slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        self.stats.calls_started += 1
        start = due = loop.time()
        ended = False
        try:
            for delay, kind, data in script_events(call_id, rng, self.speed, today=self.today):
                due += delay
                await asyncio.sleep(max(0.0, due - loop.time()))
                self.emit(await self.pub.send_wait(call_id, kind, data), call_id, kind, data)
                ended = kind == "call.ended"
        except PublishError as exc:
            if not self.fatal.done():
                self.fatal.set_result(exc)
        finally:
            if not ended:  # stopped mid-call: don't leave it live on the server forever
                self.end_now(call_id, round((loop.time() - start) * 1000))
            self.stats.calls_ended += 1
            slots.release()

    def emit(self, future: asyncio.Future[int | None], call_id: str, kind: str,
             data: dict[str, Any]) -> None:
        self.stats.events_sent += 1
        future.add_done_callback(self.stats.on_done)
        if kind == "transcript.final":
            self.stats.finals.append((call_id, data["speaker"], data["text"]))
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def end_now(self, call_id: str, duration_ms: int) -> None:
        data = {"status": "canceled", "duration_ms": duration_ms, "reason": "simulation stopped"}
        with contextlib.suppress(PublishError):  # backpressure/closed: nothing more to do
            self.emit(self.pub.send(call_id, "call.ended", data), call_id, "call.ended", data)

    async def keep_going(self, calls: int, rate: float | None) -> None:
        """Start calls as slots free up, no faster than ``rate`` per second when given."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(calls)
        due = loop.time()
        while True:
            await slots.acquire()
            if rate is not None:
                due = max(due + 1 / rate, loop.time())
                await asyncio.sleep(due - loop.time())
            self.start_call(slots)

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
) -> SimulationStats:
    """Keep ``calls`` simulated calls going against the server at ``url``.

    Without ``rate``, a new call starts as soon as one ends; with ``rate``, calls start at that
    many per second, never more than ``calls`` at once. Runs for ``duration`` seconds, or until
    cancelled. Either way, calls still going are ended with ``call.ended`` (status
    ``canceled``, reason ``simulation stopped``) so none stays live on the server. ``seed``
    makes what is said reproducible; call ids (``sim_<8 hex>``) are always fresh.
    ``on_progress`` is called with the stats after every event sent; keep it cheap.
    """
    if calls < 1 or (rate is not None and rate <= 0) or speed <= 0:
        msg = "calls, rate and speed must be positive"
        raise ValueError(msg)
    async with Publisher(url, key) as pub:
        sim = _Simulation(pub, speed, seed, on_progress)
        keeper = asyncio.create_task(sim.keep_going(calls, rate))
        try:
            watched: list[asyncio.Future[Any]] = [keeper, sim.fatal]
            await asyncio.wait(watched, timeout=duration,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            keeper.cancel()
            await asyncio.wait([keeper])
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
            on_progress=grab,
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
