"""bench/report.py judges each fan-out target against its own bound (bench/README.md, Targets)."""

from __future__ import annotations

from typing import Any

from bench import report


def step(target: str, offered: int, p99_ms: float, run: int = 0) -> dict[str, Any]:
    return {
        "target": target, "offered_s": offered, "delivered_s": offered, "p50_ms": 1.0, "p99_ms": p99_ms,
        "p999_ms": p99_ms, "loss": 0.0, "partials_dropped": 0, "cpu_pct": 50.0, "load_cpu_pct": 30.0,
        "runq_wait_pct": 1.0, "rss_mib": 100.0, "closes": {}, "run": run,
    }  # fmt: skip


def targets_of(rows: list[dict[str, Any]]) -> list[str]:
    _, best = report.fanout_section(rows)
    return report.targets_section({"scenarios": {"fanout": rows}}, best).splitlines()


def ladder(target: str, passes_up_to: int) -> list[dict[str, Any]]:
    return [step(target, rate, 10.0 if rate <= passes_up_to else 60.0) for rate in (10_000, 20_000, 30_000, 40_000)]


def test_sse_fanout_is_judged_against_the_websocket_of_the_same_run_at_0_7() -> None:
    rows = [*ladder("callstream", 40_000), *ladder("callstream-sse", 30_000), *ladder("bare-websockets", 30_000)]
    lines = targets_of(rows)
    sse = [line for line in lines if "(callstream-sse)" in line]
    assert sse == ["| SSE fan-out ≥ 0.7× the WebSocket's (callstream) at p99 ≤ 25 ms (callstream-sse) "
                   "| 30,000 vs 40,000/s = 0.75× | met |"]  # fmt: skip
    assert any("1.2× bare-websockets at p99 ≤ 25 ms (callstream)" in line for line in lines)


def test_sse_fanout_under_0_7_of_the_websocket_is_not_met_and_a_patch_meets_its_own_websocket() -> None:
    rows = [
        *ladder("callstream", 40_000), *ladder("callstream-sse", 20_000),
        *ladder("callstream+p", 30_000), *ladder("callstream-sse+p", 30_000),
    ]  # fmt: skip
    lines = targets_of(rows)
    assert [line.rsplit("|", 2)[1].strip() for line in lines if "SSE fan-out" in line] == ["not met", "met"]
    assert any("(callstream+p) at p99 ≤ 25 ms (callstream-sse+p) | 30,000 vs 30,000/s = 1.00×" in line for line in lines)


def test_an_sse_target_without_its_websocket_says_it_was_not_measured() -> None:
    lines = targets_of([*ladder("callstream-sse", 30_000), *ladder("bare-websockets", 30_000)])
    assert [line for line in lines if "SSE fan-out" in line] == [
        "| SSE fan-out ≥ 0.7× the WebSocket's (callstream) at p99 ≤ 25 ms (callstream-sse) "
        "| not measured: the run has no callstream target to compare | not met |"
    ]
