"""The fault drill's short profile (tests/fault_drill.py; bench/faults.py runs it for minutes).

Nodes on Redis and PostgreSQL of the test's own, a producer on REST and one on /v1/ingest, a
subscribing client on every node; PostgreSQL, then Redis, goes down mid-call and comes back, on
one node and on two, and a node is SIGKILLed in the middle of a PostgreSQL outage. Afterwards:
no acked event lost, each call's stored history gap-free (1..N) and holding every event any
subscriber received, as received; no duplicates; every subscriber got every stored event
without being restarted; only 202 and 503 answered; /healthz answered 503 during each outage
and 200 after it. With a node killed, the other node stores what it failed to before the killed
one is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault_drill import Cluster, Drill
from tests.faults import PrivatePostgres, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

DOWN_S = 3.0


@pytest.fixture
def cluster_of(tmp_path: Path, private_pg: PrivatePostgres, private_redis: RedisServer) -> Iterator[Callable[[int], Cluster]]:
    """Makes the test's cluster of n nodes on its own PostgreSQL and Redis (not started)."""
    made: list[Cluster] = []

    def make(count: int) -> Cluster:
        made.append(Cluster(tmp_path, private_pg, private_redis, count))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


async def _drill(cluster: Cluster, outages: list[tuple[str, int | None]]) -> None:
    """Steady traffic, then each outage (service, node to SIGKILL halfway or None) in turn."""
    key = await cluster.key("acme")
    await asyncio.to_thread(cluster.start)
    async with Drill(cluster, key) as drill:
        await drill.steady(1.0)
        for service, kill in outages:
            await drill.outage(service, DOWN_S, kill=kill)
            await drill.steady(1.0)
        findings = await drill.finish()
    assert findings.problems == [], "\n".join([*findings.problems, *findings.lines()])


@pytest.mark.parametrize("nodes", [1, 2])
async def test_postgres_then_redis_down_mid_call_lose_nothing_and_leave_no_gap(
    cluster_of: Callable[[int], Cluster], nodes: int
) -> None:
    await _drill(cluster_of(nodes), [("postgres", None), ("redis", None)])


async def test_a_node_killed_during_a_postgres_outage_leaves_its_repair_to_the_other(
    cluster_of: Callable[[int], Cluster],
) -> None:
    cluster = cluster_of(2)
    key = await cluster.key("acme")
    await asyncio.to_thread(cluster.start)
    async with Drill(cluster, key, producers_on=[0]) as drill:  # node 0's commits fail
        await drill.steady(1.0)
        await drill.outage("postgres", DOWN_S, kill=0, revive=False)
        assert await drill.repaired(), drill.findings.problems  # node 1 stored what node 0 failed to
        await drill.revive(0)
        await drill.steady(1.0)
        findings = await drill.finish()
    assert findings.problems == [], "\n".join([*findings.problems, *findings.lines()])
