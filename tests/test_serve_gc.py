"""`serve`'s garbage-collector settings: applied on the Python versions they were measured on,
Python's defaults everywhere else."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator

import pytest

from callstream.server.serve import GC_MEASURED_ON, freeze_startup_heap

TUNED = (10_000, 2, 1_000)


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_serve_decides_by_the_running_python() -> None:
    running = (sys.version_info.major, sys.version_info.minor)
    assert freeze_startup_heap() is (running in GC_MEASURED_ON)
    assert (gc.get_threshold() == TUNED) is (running in GC_MEASURED_ON)


@pytest.mark.parametrize("version", sorted(GC_MEASURED_ON))
def test_they_apply_on_the_measured_versions(version: tuple[int, int]) -> None:
    assert freeze_startup_heap(version) is True
    assert gc.get_threshold() == TUNED
    assert gc.get_freeze_count() > 0  # the start-up heap is out of the collector's sight


@pytest.mark.parametrize("version", [(3, 12), (3, 13), (3, 14)])
def test_other_versions_keep_pythons_defaults(
    version: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    before = gc.get_threshold()
    with caplog.at_level(logging.INFO, logger="callstream"):
        assert freeze_startup_heap(version) is False
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert f"left at Python {version[0]}.{version[1]}'s defaults (tuned on 3.11)" in caplog.text
