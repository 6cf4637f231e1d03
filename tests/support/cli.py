"""Run the nixfly CLI in tests: in-process (fast) or as a real subprocess (stdout bytes, signals)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

NIXFLY = [sys.executable, "-m", "nixfly"]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_nixfly(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> Result:
    """Run ``nixfly ARGS`` as a subprocess; returns exit code, stdout and stderr."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [*NIXFLY, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture()
def nixfly_cli() -> type:
    return type("Cli", (), {"run": staticmethod(run_nixfly)})
