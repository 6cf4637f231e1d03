"""Several processes in one machine: ``[[image.processes]]`` as plain dataclasses (a generated supervisor
configuration runs them; :mod:`nixfly.build.supervisor`), their value converters and dependency order. The
checks that need the whole image definition (users, groups) are :func:`nixfly.build.spec.check_processes`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nixfly.build.specdata import SpecError

Condition = Literal["started", "healthy", "completed_successfully"]
CONDITIONS: tuple[str, ...] = ("started", "healthy", "completed_successfully")
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH")


def id_name(v: Any, key: str) -> str:
    """A user or group: a name, or a numeric id (an integer or a string of digits)."""
    if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
        raise SpecError(key, "must be a name or a numeric id")
    if isinstance(v, int) and v < 0:
        raise SpecError(key, f"must not be negative (got {v})")
    return str(v)


def depends_on_spec(v: Any, key: str) -> dict[str, str]:
    """``["a", "b"]`` (condition by default) or ``{ a = "healthy" }``; the default condition is "" until
    ``check_processes`` resolves it (completed_successfully for a oneshot, else started)."""
    if isinstance(v, list):
        out: dict[str, str] = {}
        for i, x in enumerate(v):
            if not isinstance(x, str) or not x:
                raise SpecError(f"{key}.{i}", "must be a process name")
            out[x] = ""
        return out
    if isinstance(v, dict):
        for k, c in v.items():
            if c not in CONDITIONS and c != "":
                raise SpecError(f"{key}.{k}", f"condition must be one of {', '.join(CONDITIONS)} (got {c!r})")
        return {str(k): str(c) for k, c in v.items()}
    raise SpecError(key, 'must be a list of process names or a table such as { db = "healthy" }')


def signal_name(v: Any, key: str) -> str:
    name = str(v).upper() if isinstance(v, str) else ""
    if name and not name.startswith("SIG"):
        name = "SIG" + name
    if name not in SIGNALS:
        raise SpecError(key, f"must be one of {', '.join(SIGNALS)} (got {v!r})")
    return name


@dataclass(frozen=True)
class ReadinessSpec:
    """When a process counts as ready (``healthy`` for the processes depending on it)."""

    kind: Literal["exec", "http", "tcp"]
    command: list[str] = field(default_factory=list)  # exec
    host: str = "127.0.0.1"  # http, tcp
    port: int | None = field(default=None, metadata={"min": 1, "max": 65535})  # http, tcp
    path: str = "/"  # http
    period: int = field(default=2, metadata={"min": 1})  # seconds between probes
    timeout: int = field(default=1, metadata={"min": 1})  # seconds one probe may take
    initial_delay: int = field(default=0, metadata={"min": 0})
    success_threshold: int = field(default=1, metadata={"min": 1})
    failure_threshold: int = field(default=3, metadata={"min": 1})


@dataclass(frozen=True)
class ProcessSpec:
    """One process of ``[[image.processes]]``; ``oneshot`` ones are boot steps that run to completion."""

    name: str
    command: list[str]
    user: str | None = field(default=None, metadata={"convert": id_name})
    group: str | None = field(default=None, metadata={"convert": id_name})
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    depends_on: dict[str, str] = field(default_factory=dict, metadata={"convert": depends_on_spec})
    restart: Literal["always", "on-failure", "never"] | None = None  # None: always, never for a oneshot
    backoff: int = field(default=1, metadata={"min": 0})  # seconds before a restart
    max_restarts: int = field(default=0, metadata={"min": 0})  # 0: no limit
    readiness: ReadinessSpec | None = None
    stop_signal: str = field(default="SIGTERM", metadata={"convert": signal_name})
    stop_timeout: int = field(default=10, metadata={"min": 1})  # seconds before SIGKILL
    oneshot: bool = False

    @property
    def restart_policy(self) -> str:
        return self.restart or ("never" if self.oneshot else "always")



def process_order(processes: list[ProcessSpec]) -> list[ProcessSpec]:
    """The processes in dependency order (dependencies first), ties in declaration order."""
    by_name = {p.name: p for p in processes}
    done: dict[str, ProcessSpec] = {}

    def visit(p: ProcessSpec) -> None:
        if p.name in done:
            return
        for dep in p.depends_on:
            if dep in by_name:
                visit(by_name[dep])
        done[p.name] = p

    for p in processes:
        visit(p)
    return list(done.values())
