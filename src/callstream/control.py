"""Live control, without I/O: the actions a supervisor may ask of a call's producer, their
arguments, and the messages and events they travel as (docs/protocol.md, Live control).

The server, the Publisher, the framework adapters and the simulator all read the same rules
from here, so a request the server accepts is one every producer can carry out.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from callstream.events import EventInvalidError, check_values

__all__ = [
    "ACTIONS",
    "MAX_TEXT",
    "REQUESTED",
    "RESULT",
    "ControlHandler",
    "ControlRequest",
    "Holder",
    "WaitingRequest",
    "check_args",
    "check_result",
    "parse_actions",
]

ACTIONS: Final = ("say", "instruct", "pause", "resume", "transfer", "end")
REQUESTED: Final = "control.requested"  # appended by the server: the audit trail
RESULT: Final = "control.result"  # published by the producer, or by the server on a timeout
MAX_TEXT: Final = 2_000  # characters of `text`, `reason` and a result's `error`
MAX_TARGET: Final = 256  # characters of a transfer's `to`
REQUEST_ID: Final = re.compile(r"ctl_[0-9a-f]{20}")
TIMEOUT_ERROR: Final = "timeout"
CALL_ENDED_ERROR: Final = "call_ended"
# A transfer target: an E.164 number or a SIP(S) URI (user@host or host, no spaces).
_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
_SIP: Final = re.compile(r"sips?:[^\s@]+(@[^\s@]+)?", re.IGNORECASE)
# Arguments each action takes: name → (required, kind).
_ARGS: Final[dict[str, dict[str, tuple[bool, str]]]] = {
    "say": {"text": (True, "text"), "interrupt": (False, "bool")},
    "instruct": {"text": (True, "text")},
    "pause": {},
    "resume": {},
    "transfer": {"to": (True, "target"), "reason": (False, "reason")},
    "end": {"reason": (False, "reason")},
}


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One request a producer received: carry it out, then answer it (exactly once)."""

    call_id: str
    request_id: str
    action: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """A request whose call's stored history holds its `control.requested` and no result yet:
    what a node that restarted must still answer (a timeout once its deadline falls due)."""

    account: str
    call_id: str
    request_id: str
    action: str
    requested_at: int  # ms since the epoch: the `ts` of its `control.requested`


ControlHandler = Callable[[ControlRequest], Awaitable[None]]


def check_args(action: str, args: object) -> dict[str, Any]:
    """The arguments of `action`, checked (and completed: `interrupt` defaults to false);
    raises EventInvalidError saying which argument is wrong and why."""
    if action not in _ARGS:
        raise EventInvalidError(f"action must be one of {', '.join(ACTIONS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise EventInvalidError("args must be a JSON object")
    allowed = _ARGS[action]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "no arguments"
        raise EventInvalidError(f"{action} takes {takes}; not {', '.join(map(repr, unknown))}")
    checked: dict[str, Any] = {}
    for name, (required, kind) in allowed.items():
        if name not in args:
            if required:
                raise EventInvalidError(f"{action} needs args.{name}")
            continue
        checked[name] = _checked(name, kind, args[name])
    if action == "say":
        checked.setdefault("interrupt", False)
    check_values(checked, "args")
    return checked


def _checked(name: str, kind: str, value: object) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise EventInvalidError(f"args.{name} must be true or false")
        return value
    if not isinstance(value, str):
        raise EventInvalidError(f"args.{name} must be a string")
    if kind == "text" and not 1 <= len(value) <= MAX_TEXT:
        raise EventInvalidError(f"args.{name} must be 1-{MAX_TEXT} characters")
    if kind == "reason" and len(value) > MAX_TEXT:
        raise EventInvalidError(f"args.{name} must be at most {MAX_TEXT} characters")
    if kind == "target" and not (
        len(value) <= MAX_TARGET and (_E164.fullmatch(value) or _SIP.fullmatch(value))
    ):
        raise EventInvalidError(f"args.{name} must be an E.164 number (+14155550100) or a sip: URI")
    return value


def check_result(data: dict[str, Any]) -> None:
    """A `control.result`'s data: `{request_id, ok, error?}` and nothing else."""
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or REQUEST_ID.fullmatch(request_id) is None:
        raise EventInvalidError("data.request_id must be the request_id of a control request")
    if not isinstance(data.get("ok"), bool):
        raise EventInvalidError("data.ok must be true or false")
    error = data.get("error")
    if error is not None and not (isinstance(error, str) and len(error) <= MAX_TEXT):
        raise EventInvalidError(f"data.error must be a string of at most {MAX_TEXT} characters")
    extra = sorted(set(data) - {"request_id", "ok", "error"})
    if extra:
        raise EventInvalidError(f"a control.result carries request_id, ok and error; not {', '.join(extra)}")


def result_data(request_id: str, ok: bool, error: str | None = None) -> dict[str, Any]:
    """A `control.result`'s data; an error message longer than allowed is cut to fit."""
    data: dict[str, Any] = {"request_id": request_id, "ok": ok}
    if error is not None:
        data["error"] = error[:MAX_TEXT]
    return data


def parse_actions(value: object) -> frozenset[str]:
    """What a producer declares it can do: a list of actions (the `hello` message) or a
    comma-separated string (`?controls=`). Raises EventInvalidError naming what is unknown."""
    if isinstance(value, str):
        value = [a.strip() for a in value.split(",") if a.strip()]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise EventInvalidError("controls must be a list of actions")
    unknown = sorted(set(value) - set(ACTIONS))
    if unknown:
        raise EventInvalidError(f"unknown controls {unknown}; each one of {', '.join(ACTIONS)}")
    return frozenset(value)


def new_request_id() -> str:
    return "ctl_" + secrets.token_hex(10)


def relay_frame(request: ControlRequest) -> bytes:
    """What the holding producer receives: the request alone, never who asked nor with what."""
    return orjson.dumps(
        {
            "type": "control",
            "call_id": request.call_id,
            "request_id": request.request_id,
            "action": request.action,
            "args": request.args,
        }
    )


def parse_relay(message: dict[str, Any]) -> ControlRequest | None:
    """The request in a `control` message a producer received, or None if it is not one."""
    call_id, request_id, action, args = (message.get(k) for k in ("call_id", "request_id", "action", "args"))
    if not (isinstance(call_id, str) and isinstance(request_id, str) and action in ACTIONS):
        return None
    return ControlRequest(call_id, request_id, str(action), args if isinstance(args, dict) else {})


@dataclass(frozen=True, slots=True)
class Holder:
    """The producer socket holding a call: its node, its id on that node, what it declared.

    Kept by the broker as one string (`node|conn|say,end`), so a request on any node can check
    the declared actions and route the relay without asking the holder's node."""

    node: str
    conn: str
    actions: frozenset[str]

    def encode(self) -> str:
        return f"{self.node}|{self.conn}|{','.join(sorted(self.actions))}"

    @classmethod
    def decode(cls, text: str) -> Holder:
        node, conn, actions = [*text.split("|", 2), "", ""][:3]
        return cls(node, conn, frozenset(a for a in actions.split(",") if a in ACTIONS))


def settles_at_end(action: str, end_status: object) -> tuple[bool, str | None]:
    """A request still unanswered when its call ends is settled by the end: `end` succeeded,
    `transfer` did when the call ended transferred, anything else could no longer happen."""
    if action == "end" or (action == "transfer" and end_status == "transferred"):
        return True, None
    return False, CALL_ENDED_ERROR

