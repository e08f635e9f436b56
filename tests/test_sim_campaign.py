"""The simulator's campaign: metadata on every call, Poisson arrivals, drawn lengths, calls that
join a running campaign at different points, and the command's refusals of options that make
no campaign."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import Counter
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from callstream.cli import app
from callstream.sim_campaign import CAMPAIGNS, arrival_gap, check_options, draw_call
from callstream.simulate import run_simulation
from tests.helpers import ServerProcess, key_of
from tests.test_simulate import Ingest, ingest  # noqa: F401 - the fixture

META_KEYS = {"agent", "from", "to", "direction", "campaign", "customer"}


def get(server: ServerProcess, key: str, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{server.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_arrival_gaps_are_exponential() -> None:
    rng = random.Random(5)
    gaps = [arrival_gap(rng, 4.0) for _ in range(20_000)]
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    # Exponential: the standard deviation equals the mean, unlike evenly spaced starts.
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.08)


def test_lengths_spread_around_the_median_and_joining_calls_start_apart() -> None:
    rng = random.Random(6)
    drawn = [draw_call(rng, "billing_dispute", 12, mean_length=120.0, joining=True) for _ in range(2_000)]
    caps = sorted(d.max_length_s or 0 for d in drawn)
    assert statistics.median(caps) == pytest.approx(120, rel=0.08)
    assert caps[len(caps) // 10] < 80 < 180 < caps[-len(caps) // 10]  # a spread, not one length
    skips = Counter(d.skip_turns for d in drawn)
    assert set(skips) == set(range(12)), "a joining call may be at any turn but past its last"
    assert len({round(d.delay_s, 2) for d in drawn}) > 100
    fresh = draw_call(rng, "billing_dispute", 12, mean_length=None, joining=False)
    assert (fresh.skip_turns, fresh.delay_s, fresh.max_length_s) == (0, 0.0, None)


def test_metadata_matches_the_campaign_and_its_direction() -> None:
    rng = random.Random(7)
    for script, (campaign, direction, agents) in CAMPAIGNS.items():
        m = draw_call(rng, script, 5, mean_length=None, joining=False).metadata
        assert set(m) == META_KEYS
        assert (m["campaign"], m["direction"]) == (campaign, direction)
        assert m["agent"] in agents
        caller = m["from"] if direction == "inbound" else m["to"]
        assert caller.startswith("+1555")
        assert len(caller) == 12


@pytest.mark.parametrize(
    ("arrival_rate", "rate", "mean_length", "message"),
    [
        (0.0, None, None, "arrival rate must be a positive"),
        (math.inf, None, None, "arrival rate must be a positive"),
        (2.0, 1.0, None, "not both"),
        (None, None, -5.0, "mean length must be a positive"),
        (None, None, math.nan, "mean length must be a positive"),
    ],
)
def test_options_that_make_no_campaign_are_refused(
    arrival_rate: float | None, rate: float | None, mean_length: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_options(arrival_rate, rate, mean_length)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "1", "--arrival-rate", "2"], "not both"),
        (["--arrival-rate", "inf"], "arrival rate must be a positive"),
        (["--mean-length", "0"], "mean length must be a positive"),
    ],
)
def test_the_command_refuses_them_with_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["simulate", "--key", "k", "--url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


async def test_every_simulated_call_starts_with_its_metadata(server: ServerProcess) -> None:
    """What a user of the server sees: each call's metadata on `GET /v1/calls/{id}`, set by its
    first event, `call.started {metadata}` (docs/protocol.md, Call metadata), and by no other."""
    key = key_of(server)
    stats = await run_simulation(server.url, key, calls=6, speed=300, duration=0.6, seed=8, stagger=True)
    listed = (await asyncio.to_thread(get, server, key, "/v1/calls", limit=500))["calls"]
    assert len(listed) == stats.calls_started > 0
    for call in listed:
        shown = await asyncio.to_thread(get, server, key, f"/v1/calls/{call['call_id']}")
        assert set(shown["metadata"]) == META_KEYS
        assert shown["metadata"]["campaign"] in {name for name, _, _ in CAMPAIGNS.values()}
        first, *rest = (await asyncio.to_thread(get, server, key, f"/v1/calls/{call['call_id']}/events"))[
            "events"
        ]
        assert (first["type"], first["data"]["metadata"]) == ("call.started", shown["metadata"])
        assert all("metadata" not in e["data"] for e in rest), "sent once, not with every event"


async def test_poisson_arrivals_start_calls_over_time(ingest: Ingest) -> None:  # noqa: F811
    stats = await run_simulation(ingest.url, "k", calls=500, speed=1, duration=1.0, seed=9, arrival_rate=30)
    # About 30 in the second: far from the 500 a burst would start, and not exactly 30.
    assert 12 <= stats.calls_started <= 50
    ingest.assert_every_call_ended_once()
