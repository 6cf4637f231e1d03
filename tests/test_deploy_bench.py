"""bench/deploy.py runs end to end at a small timing scale: every scenario ends where it should, with no
spec violation, and the JSON carries the floor each ratio is taken against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "deploy.py"


@pytest.mark.slow
def test_deploy_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "deploy.json"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "1", "--start", "0.3", "--checks", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in data["rows"]}
    assert set(rows) == {"rolling", "canary", "failing", "redeploy"}
    assert rows["rolling"]["floor"] == pytest.approx(3 * 0.5) and rows["canary"]["floor"] == pytest.approx(4 * 0.5)
    assert rows["redeploy"]["requests"] == 2 and data["spec_violations"] == 0
    assert all(r["api_phase"] >= r["floor"] for r in rows.values())
