"""bench/ui.py's table says how many calls the page showed, beside the N it was given: a page that
listed or received only part of its calls measures less work than N calls, and its row must say so."""

from __future__ import annotations

from typing import Any

from bench.ui import table

MEASURED: dict[str, Any] = {
    "label": "before (x)", "view": "list", "fps": 59.9, "long_tasks": 0, "long_total_ms": 0, "longest_ms": 0,
    "heap_mb": 3.1, "kib_per_s": 3.2, "dom_elements": 2424, "load": 2.1,
}


def test_a_row_says_how_many_calls_the_page_showed() -> None:
    text = table([{**MEASURED, "n": 1000, "shown": 100}])
    head, _, row = text.splitlines()
    assert head.split("|")[3].strip() == "shown"
    assert row.split("|")[3].strip() == "100"


def test_a_row_measured_before_the_count_was_kept_says_so() -> None:
    row = table([{**MEASURED, "n": 200}]).splitlines()[2]
    assert row.split("|")[3].strip() == "–"
