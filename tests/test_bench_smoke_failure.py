"""A scenario that fails makes the whole benchmark run fail, with the scenario's own error on stderr
(before, the run exited 0 and the smoke test only saw a missing series: ``KeyError: 'build.gzip.skopeo'``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_smoke import BENCH, TOOLS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/setup.sh)"
    ),
]


def test_a_failing_baseline_fails_the_run_and_shows_its_error(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "skopeo").write_text("#!/bin/sh\necho 'skopeo: simulated first-use failure' >&2\nexit 3\n")
    (fake / "skopeo").chmod(0o755)
    out = tmp_path / "bench.json"
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    res = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--only", "build", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "scenario cold build gzip failed" in res.stderr and "simulated first-use failure" in res.stderr
    assert "bench: 2 scenario(s) failed: cold build gzip, cold build zstd" in res.stderr
    data = json.loads(out.read_text())  # the numbers measured before the failure are still written
    assert data["facts"]["failed_scenarios"] == ["cold build gzip", "cold build zstd"]
    assert data["series"]["build.gzip.nixfly"]["wall"]["n"] == 1
