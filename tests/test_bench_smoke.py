"""The benchmark harness runs end to end on a small closure, and nixfly's layers hold exactly what GNU tar
puts in the floor's layers for the same store paths (names, types, modes, sizes, link targets, contents)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TOOLS = ("nix", "nix-build", "skopeo", "libdeflate-gzip", "zstd", "tar", "busybox")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/setup.sh)"
    ),
]


def run_quick(tmp_path: Path, only: str, timeout: float = 600) -> dict[str, Any]:
    """``bench/run.py --quick --only ONLY``; its JSON (the run must succeed)."""
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--only", only, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_quick_build_bench_matches_the_floor(tmp_path: Path) -> None:
    data = run_quick(tmp_path, "build", timeout=300)
    for comp in ("gzip", "zstd"):
        for subject in ("nixfly", "floor", "skopeo"):
            series = data["series"][f"build.{comp}.{subject}"]
            assert series["wall"]["n"] == 1 and series["wall"]["median"] > 0
        assert data["facts"][f"build.{comp}.layers"] > 1
    same, _, total = data["facts"]["build.gzip.same_tar_entries"].partition(" ")[0].partition("/")
    assert same == total, data["facts"]["build.gzip.same_tar_entries"]
    # compressed sizes within a few percent of the same compressor run by the shell pipeline
    ratio = data["facts"]["build.gzip.nixfly_blob_bytes"] / data["facts"]["build.gzip.floor_blob_bytes"]
    assert 0.95 < ratio < 1.05
