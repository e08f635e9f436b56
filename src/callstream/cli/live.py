"""`callstream simulate` and `tail`: drive calls into a running server, or follow them live."""

from __future__ import annotations

from typing import Annotated

import typer

from callstream.cli.common import DEFAULT_URL, Key, Url, check_url, fail


def simulate(
    key: Key,
    url: Url = DEFAULT_URL,
    calls: Annotated[int, typer.Option(min=1, max=100_000, help="concurrent calls")] = 5,
    rate: Annotated[float | None, typer.Option(min=0.001, help="new calls per second")] = None,
    speed: Annotated[float, typer.Option(min=0.1, max=1000.0, help="speaking pace multiplier")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=0.1, help="stop after this many seconds")] = None,
    seed: Annotated[int | None, typer.Option(help="for reproducible conversations")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live view")] = False,
    arrival_rate: Annotated[
        float | None, typer.Option(help="Poisson arrivals: new calls per second on average (not with --rate)")
    ] = None,
    mean_length: Annotated[
        float | None, typer.Option(help="median call length in seconds (log-normal); default: the script's")
    ] = None,
    stagger: Annotated[
        bool, typer.Option(help="steady state: the first calls join at random points of their scripts")
    ] = True,
    audio: Annotated[
        bool, typer.Option("--audio", help="speak the transcripts on the calls' audio tracks (espeak-ng, else tones)")
    ] = False,
) -> None:
    """Drive realistic simulated calls into a server.

    Without --rate or --arrival-rate it holds a steady state: --calls calls live, a new one
    starting as one ends; the first ones join at random points of their scripts (--no-stagger:
    all from their first word). --audio streams each call's live audio too (listen-in): the
    transcripts spoken with espeak-ng when it is installed, else as tones.
    """
    from callstream.sim_campaign import check_options
    from callstream.simulate import simulate_command

    try:
        check_options(arrival_rate, rate, mean_length)
    except ValueError as exc:
        fail(str(exc))
    simulate_command(check_url(url), key, calls, rate, speed, duration, seed, quiet, arrival_rate, mean_length, stagger, audio)


def tail(
    key: Key,
    call_ids: Annotated[list[str] | None, typer.Argument(help="call ids to follow")] = None,
    url: Url = DEFAULT_URL,
    all_calls: Annotated[bool, typer.Option("--all", help="every call of the account")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="NDJSON, one event a line")] = False,
) -> None:
    """Live transcript in the terminal."""
    from callstream.events import is_valid_call_id
    from callstream.tail import tail_command

    if not call_ids and not all_calls:
        fail("name call ids or pass --all")
    for call_id in call_ids or []:
        if not is_valid_call_id(call_id):
            fail(f"invalid call id {call_id!r}: 1-128 characters of A-Z a-z 0-9 _ . : -")
    tail_command(check_url(url), key, ["*"] if all_calls else list(call_ids or []), as_json)
