"""Scripted calls for the turn tracker's tests (unit, broker contract, end to end).

A script is what a producer publishes, each event with the server ts it was given; `measure`
runs it through the tracker as the broker does and returns each event's data as subscribers get
it, with what each event measured for the call's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callstream.turns import Marks

Kind = tuple[str, dict[str, Any]]


def user(text: str, *, final: bool = True) -> Kind:
    return ("transcript.final" if final else "transcript.partial"), {"speaker": "user", "text": text}


def agent_says(text: str, *, final: bool = True) -> Kind:
    return ("transcript.final" if final else "transcript.partial"), {"speaker": "agent", "text": text}


def state(name: str) -> Kind:
    return "agent.state", {"state": name}


ENDED: Kind = ("call.ended", {"status": "completed", "duration_ms": 1})

# A call with every kind of turn: answered, interrupted, answered again, then the end.
CALL: list[Kind] = [
    state("speaking"),  # the greeting: no turn
    state("listening"),
    user("I need", final=False),
    user("I need to move my booking"),
    state("thinking"),
    state("speaking"),  # a turn
    user("no wa", final=False),  # over the agent
    state("listening"),  # interrupted
    user("no wait, to Friday"),
    state("speaking"),  # a turn
    state("listening"),
    ENDED,
]


def measure(*script: tuple[int, Kind]) -> tuple[list[dict[str, Any]], list[Marks | None]]:
    from callstream.turns import TurnTracker, role  # here: the e2e tests use the scripts alone

    tracker = TurnTracker()
    datas: list[dict[str, Any]] = []
    marks: list[Marks | None] = []
    for ts, (kind, data) in script:
        data = {k: v for k, v in data.items() if k not in ("latency_ms", "interrupted")}
        part = role(kind, data)
        measured = tracker.step(part, ts) if part else None
        if measured is not None:
            measured.write_into(data)
        datas.append(data)
        marks.append(measured)
    return datas, marks
