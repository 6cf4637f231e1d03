"""Where the Fly Machines OpenAPI spec is: ``../shared/fixtures/fly`` beside the repository (the team's
shared fixtures, the source of truth), else the copy in tests/data/fly (same file, for clones without it)."""

from __future__ import annotations

from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
_SHARED = _REPO.parent / "shared" / "fixtures" / "fly" / "fly-machines-openapi.json"
_VENDORED = _REPO / "tests" / "data" / "fly" / "fly-machines-openapi.json"

SPEC_PATH = _SHARED if _SHARED.is_file() else _VENDORED
