"""What nixfly remembers on this host between runs: leases it holds (to recover them after a hard kill)
and the last secrets version ``nixfly secrets`` saw (informational; deploys read the version from the API).

Files live under ``$NIXFLY_STATE_DIR`` (or the XDG state home) and are written atomically.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from nixfly.fsutil import atomic_write_bytes


def default_state_dir() -> Path:
    """Where nixfly remembers leases and secrets versions (``$NIXFLY_STATE_DIR`` or XDG state home)."""
    explicit = os.environ.get("NIXFLY_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nixfly"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)


class LeaseStore:
    """Nonces of leases this host holds, per app, on disk, for crash recovery."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "leases" / f"{app}.json"
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def put(self, machine_id: str, nonce: str) -> None:
        with self._lock:
            data = self.load()
            data[machine_id] = nonce
            _write_json(self.path, data)

    def drop(self, machine_id: str) -> None:
        with self._lock:
            data = self.load()
            if data.pop(machine_id, None) is not None:
                _write_json(self.path, data)


class SecretsVersionStore:
    """The latest secrets version ``nixfly secrets`` saw per app on this host."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "secrets" / f"{app}.json"

    def get(self) -> int | None:
        try:
            v = json.loads(self.path.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            return None
        return v if isinstance(v, int) else None

    def set(self, version: int) -> None:
        _write_json(self.path, {"version": version})
