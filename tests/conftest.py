"""Test configuration: loads the shared fixtures in tests/support/ (real registry, real Nix, Fly stand-in)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SUPPORT = Path(__file__).parent / "support"

# Every module in tests/support/ that exists is a pytest plugin; modules land independently.
pytest_plugins = [
    f"tests.support.{p.stem}"
    for p in sorted(_SUPPORT.glob("*.py"))
    if p.stem != "__init__" and importlib.util.find_spec(f"tests.support.{p.stem}") is not None
]
