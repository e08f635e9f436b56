"""`serve` (server/serve.py): what the node does around uvicorn's own start and stop. In this
process, so the collector settings a node takes at start (tested in tests/test_serve_gc.py) are
left out: they would hold for every later test of this worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callstream.server import serve as node
from callstream.settings import Settings


@pytest.fixture(autouse=True)
def _collector_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "freeze_startup_heap", lambda: False)


async def test_a_node_told_to_stop_while_it_starts_stops_without_running_what_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during start-up: uvicorn starts, then stops at once; the demo's account, link and
    simulated calls (`on_ready`) are not made on a node that is no longer listening."""
    started = node.DrainingServer.startup

    async def startup_then_ctrl_c(self: node.DrainingServer, sockets: object = None) -> None:
        await started(self, sockets)  # type: ignore[arg-type]
        self.should_exit = True  # what uvicorn's SIGINT handler does

    monkeypatch.setattr(node.DrainingServer, "startup", startup_then_ctrl_c)
    readied: list[int] = []

    async def ready(server: node.DrainingServer) -> None:
        readied.append(node.bound_port(server))

    await node.serve(Settings(data_dir=str(tmp_path), port=0, sentiment=False), ready)
    assert readied == []


async def test_a_failure_of_what_waits_for_the_start_stops_the_node_and_is_raised(tmp_path: Path) -> None:
    async def ready(server: node.DrainingServer) -> None:
        raise RuntimeError("the demo's account could not be made")

    with pytest.raises(RuntimeError, match="could not be made"):
        await asyncio.wait_for(node.serve(Settings(data_dir=str(tmp_path), port=0, sentiment=False), ready), 20)
