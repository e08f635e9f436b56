"""The voice agent docs/control.md's reader has: it holds call_42 live and carries out what a
supervisor asks. `say` is done at once, `transfer` fails as a busy queue would (so the page can
show a failed action), `end` ends the call. It prints `holding call_42` once the call is live
and its producer socket declared the actions, and exits when the call has ended."""

from __future__ import annotations

import asyncio
import os

from callstream import ControlRequest, Publisher

CALL = "call_42"


async def main() -> None:
    ended = asyncio.Event()

    async def say(request: ControlRequest) -> None:
        """Spoken: nothing to publish for the page's outputs."""

    async def transfer(request: ControlRequest) -> None:
        raise RuntimeError(f"no agent is free in {request.args.get('reason', 'the queue')}")

    async def end(request: ControlRequest) -> None:
        await publisher.publish(CALL, "call.ended", {"status": "completed", "duration_ms": 30000, "reason": "ended by the supervisor"})
        ended.set()

    controls = {"say": say, "transfer": transfer, "end": end}
    async with Publisher(os.environ["CALLSTREAM_URL"], os.environ["KEY"], controls=controls) as publisher:
        await publisher.publish(CALL, "transcript.final", {"speaker": "user", "text": "I want to cancel my subscription."})
        print(f"holding {CALL}", flush=True)
        await ended.wait()


if __name__ == "__main__":
    asyncio.run(main())
