"""README command 1 (the demo) passes, end to end, and leaves nothing running."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _demo_containers() -> set[str]:
    """runc containers whose bundle lives in a demo work dir (other tests may run containers meanwhile)."""
    out = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True, check=False).stdout
    return {c["id"] for c in json.loads(out or "[]") or [] if "nixfly-demo." in c.get("bundle", "")}


@pytest.mark.slow
def test_readme_demo_command_passes() -> None:
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "APP_ECHO_ME=hello from the nixfly demo" in out  # the page served by `nixfly run`
    assert "second push uploaded 0 blob bytes" in out
    assert '"created": [' in out and "webecho@sha256:" in out  # deployed to the stand-in by digest
    assert "demo finished" in out
    assert _demo_containers() == set(), "the demo left a container running"
