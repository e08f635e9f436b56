"""Follow calls with callstream.Client: a 30-line `callstream tail`.

    python examples/client_tail.py --url http://127.0.0.1:8080 --key $KEY call_42   # one call
    python examples/client_tail.py --key $KEY '*'                                   # every call

Stop the server and start it again while this runs: the client reconnects and resumes each call
where it left off (no final is lost, none is printed twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

from callstream import Client
from callstream.client import AgentState, CallEnded, FunctionCall, Subscribed, TranscriptFinal


async def main(url: str, key: str, call_ids: list[str]) -> None:
    async with Client(url, key) as client:
        async for event in client.events(*call_ids):
            if isinstance(event, Subscribed):
                print(f"[{event.call_id}] subscribed ({event.status}, last seq {event.last_seq})")
            elif isinstance(event, TranscriptFinal):
                mood = (event.sentiment or {}).get("label", "")
                print(f"[{event.call_id} #{event.seq}] {event.speaker}: {event.text}  {mood}")
            elif isinstance(event, AgentState):
                print(f"[{event.call_id} #{event.seq}] agent is {event.state}")
            elif isinstance(event, FunctionCall):
                print(f"[{event.call_id} #{event.seq}] calls {event.name}({event.args})")
            elif isinstance(event, CallEnded):
                print(f"[{event.call_id} #{event.seq}] ended: {event.status} after {event.duration_ms} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("call_ids", nargs="+", help="call ids, or '*' for every call of the account")
    parser.add_argument("--url", default=os.environ.get("CALLSTREAM_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", default=os.environ.get("CALLSTREAM_KEY"), required="CALLSTREAM_KEY" not in os.environ)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.url, args.key, args.call_ids))
