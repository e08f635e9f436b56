"""`callstream tail` shows a call's metadata on its start line and in its panel's title."""

from __future__ import annotations

from rich.console import Console

from callstream.client import parse_message
from callstream.tail import TailView
from tests.e2e.test_tail import Tail, tails  # noqa: F401 - the fixture that stops them
from tests.helpers import ServerProcess, ended, publish

STARTED = {
    "type": "call.started",
    "data": {"metadata": {"agent": "ada", "from": "+15550100", "to": "+15550199", "direction": "inbound",
                          "campaign": "spring", "customer": "cus_42", "crm_id": "x9"}},
}  # fmt: skip


def test_the_start_line_shows_agent_route_campaign_and_customer(
    server: ServerProcess, other_key: str, call_id: str, tails: list[Tail]  # noqa: F811
) -> None:
    tail = Tail(server, other_key, call_id)
    tails.append(tail)
    tail.wait_until_printing(server, other_key, call_id)
    publish(server, other_key, call_id, [STARTED, ended("completed", 1000)])
    lines: list[str] = []
    while not lines or "call ended" not in lines[-1]:
        line = tail.next(10)
        assert line is not None, lines
        lines.append(line)
    assert (
        f"{call_id} ▶ call started · agent ada · +15550100 → +15550199 inbound · campaign spring · customer cus_42"
        in lines[-2]
    )


def test_the_live_view_titles_a_call_with_its_metadata_as_it_changes() -> None:
    view = TailView()
    view.apply(parse_message({"call_id": "c1", "seq": 1, "ts": 1, **STARTED}))
    view.apply(parse_message({"type": "call.metadata", "call_id": "c1", "seq": 2, "ts": 1,
                              "data": {"metadata": {"customer": None, "agent": "bob"}}}))  # fmt: skip
    console = Console(record=True, width=140, height=20, color_system=None)
    console.print(view)
    screen = console.export_text()
    assert "agent bob · +15550100 → +15550199 inbound · campaign spring" in screen.splitlines()[1]  # the title
    assert "cus_42" in screen  # on the start line, as it was then
    assert "✎ metadata · agent bob" in screen
