"""What nixfly remembers on this host between runs: leases it holds (to recover them after a hard kill),
the last secrets version ``nixfly secrets`` saw, and the per-app lock that keeps two deploys from one
state directory from running at once.

A lease names its holder (:class:`Holder`: pid, host, the process's start time and a per-run token) in
its description, so a later run can tell a lease whose holder is gone (taken over) from one whose holder
still runs (left alone), and a run recognises its own lease when the answer that granted it was lost.

Files live under ``$NIXFLY_STATE_DIR`` (or the XDG state home) and are written atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixfly.errors import DeployError, NixflyError
from nixfly.fsutil import atomic_write_bytes, load_json, read_regular

_HOLDER = re.compile(r"^nixfly (?P<what>[a-z ]+) pid=(?P<pid>\d+) host=(?P<host>\S+) start=(?P<start>\S+) "
                     r"run=(?P<run>[0-9a-f]+)$")  # fmt: skip


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque token (clock ticks since boot, and the boot id), or None
    when there is no such process or the system does not say. A pid reused by another process has
    another start token."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "0"
    return f"{ticks}@{boot}"


def _this_host() -> str:
    """This host's name as a holder's description carries it (one word)."""
    return re.sub(r"\s+", "_", socket.gethostname() or "localhost")


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a nixfly process on some host. Written into the lease's description."""

    what: str
    pid: int
    host: str
    start: str
    run: str

    @classmethod
    def me(cls, what: str = "deploy") -> Holder:
        pid = os.getpid()
        host = _this_host()
        start = process_start(pid) or f"t{int(time.time())}"
        return cls(what, pid, host, start, secrets.token_hex(6))

    def describe(self) -> str:
        return f"nixfly {self.what} pid={self.pid} host={self.host} start={self.start} run={self.run}"

    @classmethod
    def parse(cls, description: str | None) -> Holder | None:
        m = _HOLDER.match(description or "")
        if m is None:
            return None
        return cls(m["what"], int(m["pid"]), m["host"], m["start"], m["run"])

    def gone(self) -> bool:
        """Whether this holder is a process of this host that no longer runs (its pid is free, or now
        belongs to a process that started at another time). A holder on another host is never gone as
        far as this host can tell."""
        if self.host != _this_host():
            return False
        now = process_start(self.pid)
        if now is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False  # the pid lives and nothing tells its start time: assume it is the holder
        return now != self.start

    def where(self) -> str:
        return f"nixfly {self.what} (pid {self.pid} on {self.host})"


# Every state file is small (a lease per machine, a version number); a larger one is not ours.
STATE_FILE_MAX = 1 << 20


def default_state_dir() -> Path:
    """Where nixfly remembers leases and secrets versions (``$NIXFLY_STATE_DIR`` or XDG state home)."""
    explicit = os.environ.get("NIXFLY_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nixfly"


def _read_json(path: Path) -> Any:
    """A state file's document, or None when it is missing or unreadable: a file that is not regular (a
    FIFO would block), larger than any state nixfly writes, or not JSON is as good as none."""
    try:
        return load_json(read_regular(path, STATE_FILE_MAX))
    except (OSError, ValueError, NixflyError):
        return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)


class LeaseStore:
    """Leases this host's nixfly runs hold, per app, on disk: machine id → nonce and holder (the
    :meth:`Holder.describe` line), so that a lease a killed run took by creating a machine (which names no
    holder on the API side) can be recognised and taken over."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "leases" / f"{app}.json"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, str]]:
        data = _read_json(self.path)
        if not isinstance(data, dict):
            return {}
        out: dict[str, dict[str, str]] = {}
        for k, v in data.items():
            if isinstance(v, str):  # the older form: machine id → nonce
                out[str(k)] = {"nonce": v, "holder": ""}
            elif isinstance(v, dict) and isinstance(v.get("nonce"), str):
                out[str(k)] = {"nonce": v["nonce"], "holder": str(v.get("holder") or "")}
        return out

    def load(self) -> dict[str, str]:
        """Machine id → nonce."""
        return {k: v["nonce"] for k, v in self._read().items()}

    def holder_of(self, machine_id: str, nonce: str) -> Holder | None:
        """Who on this host took the lease ``nonce`` on the machine, if this store knows."""
        entry = self._read().get(machine_id)
        if entry is None or entry["nonce"] != nonce:
            return None
        return Holder.parse(entry["holder"])

    def put(self, machine_id: str, nonce: str, holder: str = "") -> None:
        with self._lock:
            data = self._read()
            data[machine_id] = {"nonce": nonce, "holder": holder}
            _write_json(self.path, data)

    def drop(self, machine_id: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(machine_id, None) is not None:
                _write_json(self.path, data)


@contextlib.contextmanager
def app_lock(state_dir: Path, app: str, *, timeout: float, progress: Callable[[str], None]) -> Iterator[None]:
    """Hold the deploy lock of ``app`` in ``state_dir`` (one deploy per app at a time from one state dir):
    a second deploy waits (saying for whom) up to ``timeout`` seconds, then fails with nothing changed.
    The lock is an ``flock``: a killed holder releases it with its last file descriptor."""
    path = state_dir / "locks" / f"{app}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if not told:
                try:  # what the holder wrote (Holder.where), bounded
                    who = read_regular(path, 4096).decode(errors="replace").strip() or "another nixfly deploy"
                except (OSError, NixflyError):
                    who = "another nixfly deploy"
                progress(f"waiting for {who} to finish with app {app}")
                told = True
            if time.monotonic() >= deadline:
                raise DeployError(f"app {app} is being deployed by another nixfly run on this host "
                                  f"(waited {timeout:g}s); nothing was changed")  # fmt: skip
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().where().encode(), 0)
        yield
    finally:
        os.close(fd)


class SecretsVersionStore:
    """The latest secrets version ``nixfly secrets`` saw per app on this host."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "secrets" / f"{app}.json"

    def get(self) -> int | None:
        data = _read_json(self.path)
        v = data.get("version") if isinstance(data, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def set(self, version: int) -> None:
        _write_json(self.path, {"version": version})
