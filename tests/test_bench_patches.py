"""The benchmark's live patches still apply to the code: `make bench` measures the store disabled
(`callstream+bench-no-store`) by applying one to a copy of `src/`, and a patch that no longer
applies fails that target mid-run instead of here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIVE = sorted((ROOT / "bench" / "patches").glob("*.diff"))  # landed/ and rejected/ are history


def test_the_suite_has_its_store_disabled_patch() -> None:
    assert ROOT / "bench" / "patches" / "bench-no-store.diff" in LIVE


@pytest.mark.parametrize("patch", LIVE, ids=[p.stem for p in LIVE])
def test_a_live_patch_applies_to_the_current_source(patch: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src", tmp_path / "src")
    result = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
