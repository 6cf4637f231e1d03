"""Test configuration: loads the shared fixtures in tests/support/ (real registry, real Nix, Fly stand-in)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SUPPORT = Path(__file__).parent / "support"

# Every module in tests/support/ that exists is a pytest plugin; modules land independently.
pytest_plugins = [
    f"tests.support.{p.stem}"
    for p in sorted(_SUPPORT.glob("*.py"))
    if p.stem != "__init__" and importlib.util.find_spec(f"tests.support.{p.stem}") is not None
]

# A test that asks for real Nix (directly or through a fixture such as ``tiny_closure``) is a real-system
# test: it is marked slow whether or not it says so, so the fast tier (``scripts/test.sh --fast``, which runs
# ``-m "not slow"``) never waits for a Nix build. Runs before ``-m`` deselects.
_REAL_SYSTEM_FIXTURES = frozenset({"nix_available"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    """Secrets are remembered per process; in-process tests share one, so each starts with none."""
    from nixfly.errors import forget_secrets

    forget_secrets()
