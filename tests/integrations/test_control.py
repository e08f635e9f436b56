"""Live control of both framework adapters: a supervisor's requests, relayed by a real server,
carried out in a real Pipecat pipeline (CallstreamControl) and a real LiveKit Agents voice session
(CallstreamSession), and what the call then shows to every subscriber. The same scenarios run
against both (tests/integrations/pipecat_agent.py and livekit_agent.py say how each is built).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import ServerProcess, Supervisor
from tests.integrations.events import CallerSays

FRAMEWORKS = {"pipecat": "pipecat", "livekit": "livekit.agents"}


@pytest.fixture(params=list(FRAMEWORKS))
def agent(request: pytest.FixtureRequest) -> ModuleType:
    """The framework under test: its `run_call(server, key, call_id, script, *, transfer, slow)`
    and the agent's `FIRST` answer."""
    with warnings.catch_warnings():  # pipecat imports the deprecated `audioop` module
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip(FRAMEWORKS[request.param])  # skips without the framework, never hides our errors
    return importlib.import_module(f"tests.integrations.{request.param}_agent")


def agent_said(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "transcript.final" and m["data"]["speaker"] == "agent" and m["data"]["text"] == text


def finals(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["speaker"], e["data"]["text"]) for e in events if e["type"] == "transcript.final"]


async def steer(supervisor: Supervisor, call_id: str, caller_says: CallerSays, first_answer: str) -> None:
    """Say, instruct, take over, give back, end, with the caller speaking in between. The agent
    under test answers "Answer N: <its latest instruction>" (`first_answer` before any)."""
    await caller_says("Hi, I'd like to change my plan.")
    await supervisor.until(agent_said(first_answer))

    await supervisor.done(call_id, "say", text="A supervisor is joining the call.")
    await supervisor.until(agent_said("A supervisor is joining the call."))

    await supervisor.done(call_id, "instruct", text="Offer the premium plan at 10% off.")
    await caller_says("What can you offer me?")
    await supervisor.until(agent_said("Answer 2: Offer the premium plan at 10% off."))

    await supervisor.done(call_id, "pause")
    await caller_says("Hello? Is anyone there?")
    heard = await supervisor.during(1.5)
    assert finals(heard) == [("user", "Hello? Is anyone there?")]  # the agent no longer answers

    await supervisor.done(call_id, "resume")
    await caller_says("Thanks, that's all.")
    await supervisor.until(agent_said("Answer 3: Offer the premium plan at 10% off."))

    await supervisor.done(call_id, "end", reason="resolved by a supervisor")


def steered(first_answer: str) -> list[tuple[str, str]]:
    """What the call's transcript says after `steer`."""
    return [
        ("user", "Hi, I'd like to change my plan."),
        ("agent", first_answer),
        ("agent", "A supervisor is joining the call."),
        ("user", "What can you offer me?"),
        ("agent", "Answer 2: Offer the premium plan at 10% off."),
        ("user", "Hello? Is anyone there?"),
        ("user", "Thanks, that's all."),
        ("agent", "Answer 3: Offer the premium plan at 10% off."),
    ]


CUT_IN = "Let me stop you there."


async def say_while_busy(supervisor: Supervisor, call_id: str, caller_says: CallerSays, *, interrupt: bool) -> None:
    """A `say` while the agent works on its answer (the agent under test answers slowly)."""
    await caller_says("Tell me everything about your plans.")
    await supervisor.until(lambda m: m["type"] == "agent.state" and m["data"]["state"] == "thinking")
    await supervisor.done(call_id, "say", text=CUT_IN, interrupt=interrupt)
    await supervisor.until(agent_said(CUT_IN))
    await supervisor.done(call_id, "end")


def said_while_busy(first_answer: str, *, interrupt: bool) -> list[str]:
    """What the agent said after `say_while_busy`: with `interrupt` its answer was cut off and
    the supervisor's words came at once, else they came after it."""
    return [CUT_IN] if interrupt else [first_answer, CUT_IN]


def agent_lines(events: list[dict[str, Any]]) -> list[str]:
    return [text for speaker, text in finals(events) if speaker == "agent"]


class TransferDesk:
    """A transfer hook that records what it was asked, or refuses every transfer."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.handed: list[tuple[str, str | None]] = []
        self.refuse = refuse

    async def __call__(self, to: str, reason: str | None) -> None:
        if self.refuse:
            raise RuntimeError(f"{to} did not pick up")
        self.handed.append((to, reason))


async def hand_over(supervisor: Supervisor, call_id: str, caller_says: CallerSays, first_answer: str) -> None:
    await caller_says("I want a human.")
    await supervisor.until(agent_said(first_answer))
    await supervisor.done(call_id, "transfer", to="+14155550100", reason="billing question")


async def transfer_undeclared(supervisor: Supervisor, call_id: str, caller_says: CallerSays, first_answer: str) -> None:
    await caller_says("Transfer me.")
    await supervisor.until(agent_said(first_answer))
    answer = await supervisor.request(call_id, "transfer", to="+14155550100")
    assert (answer["type"], answer["data"]["code"]) == ("error", "unsupported_action")
    await supervisor.done(call_id, "end")


async def transfer_refused(supervisor: Supervisor, call_id: str, caller_says: CallerSays, first_answer: str) -> None:
    """The hook raises: the request fails with its message and the call goes on."""
    await caller_says("I want a human.")
    await supervisor.until(agent_said(first_answer))
    request_id = await supervisor.ask(call_id, "transfer", to="sip:desk@example.com")
    assert await supervisor.result(request_id) == {
        "request_id": request_id, "ok": False, "error": "sip:desk@example.com did not pick up",
    }
    await caller_says("Still there?")
    await supervisor.until(lambda m: m["type"] == "transcript.final" and m["data"]["text"].startswith("Answer 2"))
    await supervisor.done(call_id, "end")


async def ended(supervisor: Supervisor) -> dict[str, Any]:
    """The call's `call.ended` data."""
    return dict((await supervisor.until(lambda m: m["type"] == "call.ended"))["data"])


async def test_a_supervisor_says_instructs_takes_over_and_ends_the_call(
    server: ServerProcess, api_key: str, call_id: str, supervisor: Supervisor, agent: ModuleType
) -> None:
    await agent.run_call(server, api_key, call_id, lambda says: steer(supervisor, call_id, says, agent.FIRST))
    data = await ended(supervisor)
    assert (data["status"], data["reason"]) == ("completed", "resolved by a supervisor")
    assert finals(supervisor.events) == steered(agent.FIRST)


@pytest.mark.parametrize("interrupt", [False, True])
async def test_say_waits_for_the_agent_or_interrupts_it(
    server: ServerProcess, api_key: str, call_id: str, supervisor: Supervisor, agent: ModuleType, interrupt: bool
) -> None:
    await agent.run_call(server, api_key, call_id,
                         lambda says: say_while_busy(supervisor, call_id, says, interrupt=interrupt), slow=True)
    await ended(supervisor)
    assert agent_lines(supervisor.events) == said_while_busy(agent.FIRST, interrupt=interrupt)


async def test_transfer_runs_the_hook_and_ends_the_call_transferred(
    server: ServerProcess, api_key: str, call_id: str, supervisor: Supervisor, agent: ModuleType
) -> None:
    desk = TransferDesk()
    await agent.run_call(server, api_key, call_id, lambda says: hand_over(supervisor, call_id, says, agent.FIRST),
                         transfer=desk)
    assert desk.handed == [("+14155550100", "billing question")]
    data = await ended(supervisor)
    assert (data["status"], data["reason"]) == ("transferred", "transferred to +14155550100: billing question")


async def test_without_a_transfer_hook_transfer_is_not_declared(
    server: ServerProcess, api_key: str, call_id: str, supervisor: Supervisor, agent: ModuleType
) -> None:
    await agent.run_call(server, api_key, call_id,
                         lambda says: transfer_undeclared(supervisor, call_id, says, agent.FIRST))
    assert (await ended(supervisor))["status"] == "completed"


async def test_a_failing_transfer_hook_fails_the_request_and_the_call_goes_on(
    server: ServerProcess, api_key: str, call_id: str, supervisor: Supervisor, agent: ModuleType
) -> None:
    await agent.run_call(server, api_key, call_id,
                         lambda says: transfer_refused(supervisor, call_id, says, agent.FIRST),
                         transfer=TransferDesk(refuse=True))
    assert (await ended(supervisor))["status"] == "completed"
