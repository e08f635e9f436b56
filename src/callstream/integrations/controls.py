"""A supervisor's requests (docs/control.md) as a framework adapter carries them out.

Framework-free: :class:`AgentControls` is what both adapters share. It declares what the adapter
can do (every action, ``transfer`` only with a hook from the program: handing a call over is
telephony, which only the program knows how to do), refuses anything else, and runs a transfer
as the hook and then the end of the call. Each adapter says how its framework speaks, takes an
instruction, stops and starts answering, and ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from callstream.control import ACTIONS, ControlHandler, ControlRequest

__all__ = ["SUPERVISOR_ENDED", "AgentControls", "TransferHook", "control_actions"]

SUPERVISOR_ENDED: Final = "ended by the supervisor"

TransferHook = Callable[[str, str | None], Awaitable[None]]
"""What carries out a ``transfer``: ``await hook(to, reason)`` hands the call to ``to`` (an E.164
number or a SIP URI) and returns once it is handed over; raising refuses the transfer."""


def control_actions(transfer: TransferHook | None) -> tuple[str, ...]:
    """The actions an adapter declares: all of them, but ``transfer`` only with a hook for it."""
    return tuple(a for a in ACTIONS if a != "transfer" or transfer is not None)


class AgentControls(ABC):
    """Carries out one call's control requests through a framework (a subclass per framework).

    :meth:`handle` is the handler of every declared action (:attr:`handlers` is a
    :class:`~callstream.Publisher`'s ``controls=``): it returns once the framework has the
    request in hand, and raises (the request fails with the message) when it cannot.
    """

    transfer_hook: TransferHook | None = None
    ending: tuple[str, str] | None = None  # (status, reason) of call.ended when control ended the call

    @property
    def actions(self) -> tuple[str, ...]:
        """What this adapter declares it can do."""
        return control_actions(self.transfer_hook)

    @property
    def handlers(self) -> Mapping[str, ControlHandler]:
        """A :class:`~callstream.Publisher`'s ``controls=`` for this adapter's call."""
        return dict.fromkeys(self.actions, self.handle)

    async def handle(self, request: ControlRequest) -> None:
        """Carry out one request (its arguments were checked by the server)."""
        action, args = request.action, request.args
        if action not in self.actions:
            raise RuntimeError(f"this agent cannot {action}")
        self._check_ready()
        if action == "say":
            await self._say(str(args["text"]), interrupt=bool(args.get("interrupt")))
        elif action == "instruct":
            await self._instruct(str(args["text"]))
        elif action == "pause":
            await self._pause()
        elif action == "resume":
            await self._resume()
        elif action == "transfer":
            assert self.transfer_hook is not None  # transfer is declared only with a hook
            to, reason = str(args["to"]), args.get("reason")
            await self.transfer_hook(to, reason)
            await self._end_as("transferred", f"transferred to {to}" + (f": {reason}" if reason else ""))
        else:
            await self._end_as("completed", str(args.get("reason") or SUPERVISOR_ENDED))

    async def _end_as(self, status: str, reason: str) -> None:
        self.ending = (status, reason)
        await self._end(reason)

    def _check_ready(self) -> None:
        """Raise when the agent cannot act now (by default it always can)."""
        return

    @abstractmethod
    async def _say(self, text: str, *, interrupt: bool) -> None:
        """Speak ``text`` verbatim: after what the agent is saying, or at once."""

    @abstractmethod
    async def _instruct(self, text: str) -> None:
        """Give the agent ``text`` as an instruction for the rest of the call."""

    @abstractmethod
    async def _pause(self) -> None:
        """Stop answering the caller (a human takes over)."""

    @abstractmethod
    async def _resume(self) -> None:
        """Answer the caller again."""

    @abstractmethod
    async def _end(self, reason: str) -> None:
        """End the call after what the agent is saying; :attr:`ending` says how it ends."""
