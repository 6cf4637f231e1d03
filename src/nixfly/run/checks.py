"""Health checks as Fly runs them, read from a Machines API ``MachineConfig`` and run against a local
container.

The checks come from the config ``nixfly deploy`` sends (``checks`` for [checks], each service's
``checks`` for [[http_service.checks]] and [[services.tcp_checks/http_checks]]), so a rehearsal checks
exactly what Fly will. Status names are Fly's (Consul's): ``passing``, ``warning`` (HTTP 429), ``critical``.
Service checks are named as Fly names them, ``servicecheck-NN-TYPE-PORT``.

Fly's checks reach a machine at its own address, never over its loopback. The container shares this
machine's network, so checks connect to 127.0.0.2: a loopback address that a socket bound to 127.0.0.1
alone does not answer, while one bound to 0.0.0.0 (or a dual-stack [::]) does. An app listening on
127.0.0.1 alone fails its checks here as it would on Fly, and no packet is sent to any address outside
the loopback range. The address probe (:mod:`nixfly.run.probe`) says why.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from nixfly.errors import UsageError
from nixfly.godur import parse_go_duration

# Fly's defaults for a check that does not set them (fly-go machine_types.go: interval 15s, timeout 2s,
# grace_period 1s are the documented examples and the platform's values).
DEFAULT_INTERVAL = 15.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_GRACE = 1.0
MAX_BODY = 64 * 1024  # what a check reads of a response body
LOOPBACK = "127.0.0.1"
CHECK_HOST = "127.0.0.2"


def machine_address() -> str:
    """Where checks connect: a loopback address other than 127.0.0.1 (see the module docstring)."""
    return CHECK_HOST


@dataclass(frozen=True)
class CheckSpec:
    """One check: where and how to probe, and when."""

    name: str
    type: str  # "http" or "tcp"
    port: int
    interval: float
    timeout: float
    grace_period: float
    method: str = "GET"
    path: str = "/"
    protocol: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    tls_skip_verify: bool = False
    tls_server_name: str | None = None
    host: str = LOOPBACK  # where the check connects (see the module docstring)

    def describe(self) -> str:
        if self.type == "tcp":
            return f"tcp {self.host}:{self.port}"
        return f"{self.method} {self.protocol}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True)
class CheckResult:
    at: float  # seconds since the container started
    status: str  # passing | warning | critical
    output: str

    def to_json(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "status": self.status, "output": self.output}


@dataclass
class CheckState:
    spec: CheckSpec
    history: list[CheckResult] = field(default_factory=list)
    next_at: float = 0.0

    @property
    def status(self) -> str:
        """Fly shows a check that has not run yet as critical."""
        return self.history[-1].status if self.history else "critical"

    @property
    def ever_passed(self) -> bool:
        return any(r.status == "passing" for r in self.history)

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {"name": s.name, "type": s.type, "port": s.port, "target": s.describe(), "status": self.status,
                "interval": s.interval, "timeout": s.timeout, "grace_period": s.grace_period,
                "history": [r.to_json() for r in self.history]}  # fmt: skip


def config_seconds(value: Any, default: float, what: str) -> float:
    """A duration of a machine config (a Go duration string, as the Machines API takes it) in seconds;
    ``default`` when it is not set. The rehearsal's one reader of such durations: one that is not a
    duration is a UsageError naming ``what``."""
    if value is None:
        return default
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return parse_go_duration(value).total_seconds()
    except ValueError:
        raise UsageError(f"fly.toml: {what} {value!r} is not a duration like '10s', '1m30s' or '500ms'") from None


def _spec(name: str, raw: Mapping[str, Any], port: int, host: str) -> CheckSpec:
    headers = []
    for h in raw.get("headers") or []:
        if isinstance(h, dict):
            for v in h.get("values") or []:
                headers.append((str(h.get("name")), str(v)))
    return CheckSpec(
        name=name,
        type=str(raw.get("type") or "tcp"),
        port=port,
        interval=config_seconds(raw.get("interval"), DEFAULT_INTERVAL, f"check {name} interval"),
        timeout=config_seconds(raw.get("timeout"), DEFAULT_TIMEOUT, f"check {name} timeout"),
        grace_period=config_seconds(raw.get("grace_period"), DEFAULT_GRACE, f"check {name} grace_period"),
        method=str(raw.get("method") or "GET").upper(),
        path=str(raw.get("path") or "/"),
        protocol=str(raw.get("protocol") or "http"),
        headers=tuple(headers),
        tls_skip_verify=bool(raw.get("tls_skip_verify")),
        tls_server_name=raw.get("tls_server_name") if isinstance(raw.get("tls_server_name"), str) else None,
        host=host,
    )


def checks_of(machine_config: Mapping[str, Any], host: str = LOOPBACK) -> list[CheckSpec]:
    """Every check of a MachineConfig, connecting to ``host``: the machine's own (by name), then each
    service's."""
    out = []
    for name, raw in sorted((machine_config.get("checks") or {}).items()):
        if isinstance(raw, dict) and isinstance(raw.get("port"), int):
            out.append(_spec(name, raw, raw["port"], host))
    for svc in machine_config.get("services") or []:
        if not isinstance(svc, dict) or not isinstance(svc.get("internal_port"), int):
            continue
        for ci, raw in enumerate(svc.get("checks") or []):
            if isinstance(raw, dict):
                kind = str(raw.get("type") or "tcp")
                name = f"servicecheck-{ci:02d}-{kind}-{svc['internal_port']}"
                out.append(_spec(name, raw, svc["internal_port"], host))
    return out


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def run_check(spec: CheckSpec, at: float) -> CheckResult:
    """Run ``spec`` once; never raises."""
    host = spec.host
    started = time.monotonic()
    if spec.type == "tcp":
        try:
            with socket.create_connection((host, spec.port), timeout=spec.timeout):
                pass
        except OSError as e:
            return CheckResult(at, "critical", f"connect to {host}:{spec.port}: {_reason(e)}")
        return CheckResult(at, "passing", f"TCP connect to {host}:{spec.port} succeeded")
    conn: http.client.HTTPConnection
    if spec.protocol == "https":
        ctx = ssl.create_default_context()
        if spec.tls_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, spec.port, timeout=spec.timeout, context=ctx)
        if spec.tls_server_name:
            conn.server_hostname = spec.tls_server_name  # type: ignore[attr-defined]
    else:
        conn = http.client.HTTPConnection(host, spec.port, timeout=spec.timeout)
    what = f"{spec.method} {spec.path}"
    try:
        conn.putrequest(spec.method, spec.path, skip_accept_encoding=True)
        for k, v in spec.headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(at, "critical", f"{what}: {_reason(e)}")
    finally:
        conn.close()
    ms = (time.monotonic() - started) * 1000
    line = f"{what}: {resp.status} {resp.reason} ({ms:.0f}ms)"
    # One line, printable, short: the body is the app's, and may hold anything.
    text = "".join(c if c.isprintable() else " " for c in body[:400].decode(errors="replace"))
    snippet = " ".join(text.split())[:160]
    if 200 <= resp.status < 300:
        return CheckResult(at, "passing", line)
    status = "warning" if resp.status == 429 else "critical"
    return CheckResult(at, status, f"{line}: {snippet}" if snippet else line)


def settle_time(specs: list[CheckSpec]) -> timedelta:
    """How long a rehearsal gives its checks: each check's grace period, two intervals and a timeout."""
    longest = max((s.grace_period + 2 * s.interval + s.timeout for s in specs), default=0.0)
    return timedelta(seconds=longest)
