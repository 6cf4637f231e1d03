"""fly.toml → validated, frozen models.

:func:`load_fly_toml` reads a fly.toml with :mod:`tomllib`, smooths over the spellings flyctl accepts but
the published JSON schema does not (booleans for ``auto_stop_machines``, numbers in ``[env]``, a single
table where an array of tables is expected), validates the result against that schema and then against
our own stricter rules, and returns a :class:`FlyConfig`. Every problem becomes a one-line
:class:`~nixfly.errors.ConfigError` that names the file, the line and the key. Keys nobody knows are not
errors (the schema allows them) but are reported as warnings with a "did you mean" suggestion.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nixfly.errors import ConfigError

DEFAULT_PROCESS_GROUP = "app"
STRATEGIES = ("immediate", "rolling", "canary", "bluegreen")
# The Machines API's fly.StopConfig signal enum; flyctl passes kill_signal through unchanged, so anything
# outside this set would only fail later, at the API.
STOP_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM")

Warn = Callable[[str], None]
KeyPath = tuple[str | int, ...]

# --------------------------------------------------------------------------------------------------------
# Durations and sizes, as flyctl reads them


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("15s", "1m30s", "1.5s", "250ms", "0"); raise ValueError otherwise."""
    s = text.strip()
    if s == "0":
        return timedelta(0)
    if not s:
        raise ValueError("empty duration")
    pos, total_ns = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration like '10s', '1m30s' or '500ms'")
        total_ns += float(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    return timedelta(microseconds=total_ns / 1000)


def go_duration_string(d: timedelta) -> str:
    """Format like Go's ``time.Duration.String()`` ("15s", "1m30s", "1.5s", "500ms", "1h0m0s"), which is
    the form the Machines API and flyctl exchange durations in."""
    ns = round(d.total_seconds() * 1_000_000) * 1000
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{frac(rest, 1_000_000_000)}s"


def _duration(value: Any, int_unit: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like '10s', not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(milliseconds=value) if int_unit == "ms" else timedelta(seconds=value)
    if isinstance(value, str):
        return parse_go_duration(value)
    raise ValueError("expected a duration like '10s'")


# Check timings: a bare integer means milliseconds (fly.toml reference); kill/wait timeouts: seconds.
MillisDuration = Annotated[timedelta, BeforeValidator(lambda v: _duration(v, "ms"))]
SecondsDuration = Annotated[timedelta, BeforeValidator(lambda v: _duration(v, "s"))]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_BINARY_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_memory_mb(value: int | str) -> int:
    """Memory as flyctl reads it: an integer or unitless string is MiB; "512mb", "1gb", "2GiB" use binary
    multiples (so "1gb" is 1024). Raise ValueError for anything else or for less than 1 MiB."""
    if isinstance(value, bool):
        raise ValueError("memory must be a number of MB or a size like '512mb'")
    if isinstance(value, int):
        mb = value
    else:
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a memory size like 512, '512mb' or '1gb'")
        number, unit = float(m.group(1)), m.group(2).lower()
        if not unit and m.group(3) is None:
            mb_f = number
        elif not unit:
            mb_f = number / (1024 * 1024)  # plain bytes
        else:
            mb_f = number * 1024 ** _BINARY_POWER[unit] / 1024**2
        mb = int(mb_f)
    if mb < 1:
        raise ValueError(f"memory {value!r} is less than 1 MB")
    return mb


def parse_size_gb(value: int | str) -> int:
    """Volume sizes ("10gb", "1GB", 3): decimal units as flyctl's go-units FromHumanSize, whole GB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a size like '10gb'")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit and m.group(3) is None:
        return int(number)
    return int(number * 1000 ** _BINARY_POWER[unit] / 1000**3)


# VM size presets: name → (cpu_kind, cpus, memory_mb). flyctl's fly-go preset table, the part the
# fly.toml schema lists.
VM_SIZES: dict[str, tuple[str, int, int]] = {
    "shared-cpu-1x": ("shared", 1, 256),
    "shared-cpu-2x": ("shared", 2, 512),
    "shared-cpu-4x": ("shared", 4, 1024),
    "shared-cpu-8x": ("shared", 8, 2048),
    "performance-1x": ("performance", 1, 2048),
    "performance-2x": ("performance", 2, 4096),
    "performance-4x": ("performance", 4, 8192),
    "performance-8x": ("performance", 8, 16384),
    "performance-16x": ("performance", 16, 32768),
}
DEFAULT_VM_SIZE = "shared-cpu-1x"


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"cannot split command {value!r}: {e}") from None
    return value


Command = Annotated[list[str], BeforeValidator(_split_command)]


# --------------------------------------------------------------------------------------------------------
# Models. ``extra="allow"`` keeps unknown keys so the loader can warn about them with a suggestion.


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class Build(_Model):
    image: str | None = None
    dockerfile: str | None = None
    builder: str | None = None
    buildpacks: list[str] | None = None
    args: dict[str, str] | None = None
    build_target: str | None = Field(default=None, alias="build-target")
    ignorefile: str | None = None


class ReleaseCommandVm(_Model):
    size: str | None = None
    memory: int | str | None = None
    cpus: int | None = None
    cpu_kind: str | None = None


class Deploy(_Model):
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] = "rolling"
    max_unavailable: float | int = 0.33
    # Seconds; fly.toml may say "5m" or 300.
    wait_timeout: Annotated[float, BeforeValidator(lambda v: _duration(v, "s").total_seconds())] = 300.0
    release_command: str | None = None
    release_command_vm: ReleaseCommandVm | None = None

    def release_command_argv(self) -> list[str] | None:
        """``release_command`` split like a shell would, or None."""
        return shlex.split(self.release_command) if self.release_command else None

    @model_validator(mode="after")
    def _check(self) -> Deploy:
        if self.max_unavailable <= 0:
            raise ValueError("max_unavailable must be > 0 (a fraction like 0.33 or a count like 2)")
        if isinstance(self.max_unavailable, float) and self.max_unavailable > 1:
            raise ValueError("max_unavailable as a fraction must be at most 1.0; use an integer for a count")
        if self.release_command is not None:
            _split_command(self.release_command)
        return self


class Concurrency(_Model):
    type: Literal["connections", "requests"] | None = None
    hard_limit: int | None = None
    soft_limit: int | None = None


class HttpResponseOptions(_Model):
    pristine: bool | None = None
    headers: dict[str, bool | str | list[str]] | None = None


class HttpOptions(_Model):
    compress: bool | None = None
    h2_backend: bool | None = None
    idle_timeout: int | None = None
    headers_read_timeout: int | None = None
    response: HttpResponseOptions | None = None


class TlsOptions(_Model):
    alpn: list[str] | None = None
    versions: list[str] | None = None
    default_self_signed: bool | None = None


class ProxyProtoOptions(_Model):
    version: str | None = None


class Port(_Model):
    port: int | None = None
    start_port: int | None = None
    end_port: int | None = None
    handlers: list[str] | None = None
    force_https: bool | None = None
    http_options: HttpOptions | None = None
    tls_options: TlsOptions | None = None
    proxy_proto_options: ProxyProtoOptions | None = None

    @model_validator(mode="after")
    def _check(self) -> Port:
        for name in ("port", "start_port", "end_port"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= 65535:
                raise ValueError(f"{name} {v} is outside 1-65535")
        if self.port is None and self.start_port is None:
            raise ValueError("a port needs 'port' or 'start_port'/'end_port'")
        if self.start_port is not None and self.end_port is not None and self.start_port > self.end_port:
            raise ValueError("start_port is greater than end_port")
        return self


class ServiceCheck(_Model):
    """A check inside [[services]] (tcp_checks/http_checks) or [[http_service.checks]]."""

    interval: MillisDuration | None = None
    timeout: MillisDuration | None = None
    grace_period: MillisDuration | None = None
    restart_limit: int | None = None
    method: str | None = None
    path: str | None = None
    protocol: Literal["http", "https"] | None = None
    tls_skip_verify: bool | None = None
    tls_server_name: str | None = None
    headers: dict[str, str] | None = None


def _autostop(value: Any) -> Any:
    # flyctl still reads the older boolean spelling; the Machines API wants the string form.
    if value is True:
        return "stop"
    if value is False:
        return "off"
    return value


AutoStop = Annotated[Literal["off", "stop", "suspend"], BeforeValidator(_autostop)]


def _check_internal_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"internal_port {port} is outside 1-65535")


class HttpService(_Model):
    internal_port: int = 8080
    force_https: bool = False
    auto_stop_machines: AutoStop | None = None
    auto_start_machines: bool | None = None
    min_machines_running: int | None = None
    processes: list[str] | None = None
    concurrency: Concurrency | None = None
    http_options: HttpOptions | None = None
    tls_options: TlsOptions | None = None
    checks: list[ServiceCheck] = []
    machine_checks: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _check(self) -> HttpService:
        _check_internal_port(self.internal_port)
        return self


class Service(_Model):
    protocol: Literal["tcp", "udp"] = "tcp"
    internal_port: int = 8080
    auto_stop_machines: AutoStop | None = None
    auto_start_machines: bool | None = None
    min_machines_running: int | None = None
    ports: list[Port] = []
    concurrency: Concurrency | None = None
    tcp_checks: list[ServiceCheck] = []
    http_checks: list[ServiceCheck] = []
    processes: list[str] | None = None
    machine_checks: list[dict[str, Any]] | None = None
    script_checks: Any = None

    @model_validator(mode="after")
    def _check(self) -> Service:
        _check_internal_port(self.internal_port)
        return self


class TopLevelCheck(_Model):
    """A [checks.NAME] table: a machine-level health check."""

    type: Literal["http", "tcp"]
    port: int | None = None
    interval: MillisDuration | None = None
    timeout: MillisDuration | None = None
    grace_period: MillisDuration | None = None
    kind: Literal["informational", "readiness"] | None = None
    method: str | None = None
    path: str | None = None
    protocol: Literal["http", "https"] | None = None
    tls_skip_verify: bool | None = None
    tls_server_name: str | None = None
    headers: dict[str, str] | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> TopLevelCheck:
        # The Machines API (flaps) refuses intervals under 2 s and timeouts over 60 s; say so now.
        if self.interval is not None and self.interval < timedelta(seconds=2):
            raise ValueError(f"interval {go_duration_string(self.interval)} is too short (minimum 2s)")
        if self.timeout is not None and self.timeout > timedelta(seconds=60):
            raise ValueError(f"timeout {go_duration_string(self.timeout)} is too long (maximum 60s)")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 1-65535")
        return self


class Vm(_Model):
    """One [[vm]] (flyctl also calls it [[compute]]) section."""

    size: str | None = None
    memory: int | str | None = None
    memory_mb: int | None = None
    cpus: int | None = None
    cpu_kind: Literal["shared", "performance"] | None = None
    gpus: int | None = None
    gpu_kind: str | None = None
    kernel_args: Command | None = None
    host_dedication_id: str | None = None
    persist_rootfs: Literal["never", "always", "restart"] | None = None
    processes: list[str] | None = None

    @field_validator("memory", "memory_mb")
    @classmethod
    def _memory_steps(cls, value: int | str | None) -> int | str | None:
        # The Machines API allocates memory in 256 MB steps and rejects anything else.
        if value is not None and (mb := parse_memory_mb(value)) % 256:
            raise ValueError(f"memory {mb} MB is not a multiple of 256 MB")
        return value

    @model_validator(mode="after")
    def _check(self) -> Vm:
        if self.size is not None and self.size not in VM_SIZES:
            raise ValueError(f"unknown size {self.size!r}; known sizes: {', '.join(VM_SIZES)}")
        return self

    def resolved_memory_mb(self) -> int | None:
        """The memory this section asks for, in MiB, or None to keep the size preset's."""
        if self.memory is not None:
            return parse_memory_mb(self.memory)
        return self.memory_mb


class Mount(_Model):
    source: str
    destination: str
    processes: list[str] | None = None
    initial_size: int | str | None = None
    snapshot_retention: int | None = None
    auto_extend_size_threshold: int | None = None
    auto_extend_size_increment: str | None = None
    auto_extend_size_limit: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Mount:
        if not self.destination.startswith("/"):
            raise ValueError(f"destination {self.destination!r} must be an absolute path")
        if self.destination == "/":
            raise ValueError("destination cannot be '/'")
        if self.initial_size is not None and parse_size_gb(self.initial_size) < 1:
            raise ValueError(f"initial_size {self.initial_size!r} is smaller than 1GB")
        for name in ("auto_extend_size_increment", "auto_extend_size_limit"):
            v = getattr(self, name)
            if v is not None:
                parse_size_gb(v)
        return self


class Restart(_Model):
    policy: Literal["always", "never", "on-failure"]
    max_retries: int | None = None
    processes: list[str] | None = None


class File(_Model):
    guest_path: str
    raw_value: str | None = None
    secret_name: str | None = None
    local_path: str | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> File:
        given = [k for k in ("raw_value", "secret_name", "local_path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of raw_value, secret_name or local_path")
        if not self.guest_path.startswith("/"):
            raise ValueError(f"guest_path {self.guest_path!r} must be an absolute path")
        if self.raw_value is not None:
            try:
                base64.b64decode(self.raw_value, validate=True)
            except ValueError:
                raise ValueError("raw_value is not valid base64") from None
        return self


class Static(_Model):
    guest_path: str
    url_prefix: str
    index_document: str | None = None
    tigris_bucket: str | None = None
    processes: list[str] | None = None


class Metrics(_Model):
    port: int
    path: str = "/metrics"
    https: bool | None = None
    processes: list[str] | None = None


class Experimental(_Model):
    cmd: Command | None = None
    entrypoint: Command | None = None
    exec: Command | None = None
    auto_rollback: bool | None = None
    private_network: bool | None = None


def _env_value(value: Any) -> Any:
    # flyctl writes numbers and booleans in [env] as their TOML text; the Machines API wants strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class FlyConfig(_Model):
    """A validated fly.toml. Section lists are always lists (a single table is read as a one-item list)."""

    app: str
    primary_region: str | None = None
    build: Build | None = None
    deploy: Deploy = Deploy()
    env: dict[str, Annotated[str, BeforeValidator(_env_value)]] = {}
    processes: dict[str, str] = {}
    http_service: HttpService | None = None
    services: list[Service] = []
    checks: dict[str, TopLevelCheck] = {}
    vm: list[Vm] = []
    mounts: list[Mount] = []
    kill_signal: Literal["SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM"] | None = None
    kill_timeout: SecondsDuration | None = None
    restart: list[Restart] = []
    files: list[File] = []
    statics: list[Static] = []
    metrics: list[Metrics] = []
    experimental: Experimental | None = None
    swap_size_mb: int | None = None
    host_dedication_id: str | None = None
    console_command: str | None = None
    http_checks: Any = None

    def process_groups(self) -> list[str]:
        """The process groups to run: the [processes] keys sorted, or ``["app"]`` without [processes]."""
        return sorted(self.processes) if self.processes else [DEFAULT_PROCESS_GROUP]

    def default_process_group(self) -> str:
        """The group that sections without a ``processes`` list apply to (flyctl: "app" if it exists,
        else the first group by name)."""
        groups = self.process_groups()
        return DEFAULT_PROCESS_GROUP if DEFAULT_PROCESS_GROUP in groups else groups[0]

    def applies_to(self, processes: Sequence[str] | None, group: str) -> bool:
        """Whether a section with this ``processes`` list applies to ``group``. As in flyctl, a section
        without one applies only to the default group."""
        if not processes:
            return group == self.default_process_group()
        return group in processes

    def command_for(self, group: str) -> list[str] | None:
        """The ``init.cmd`` for a group: its [processes] command split like a shell would, or None."""
        cmd = self.processes.get(group)
        return shlex.split(cmd) if cmd else None

    def vm_for(self, group: str) -> Vm | None:
        """The [[vm]] that applies to a group: one naming it wins over one without ``processes``."""
        specific = [v for v in self.vm if v.processes and group in v.processes]
        if specific:
            return specific[0]
        general = [v for v in self.vm if not v.processes]
        return general[0] if general else None

    def restart_for(self, group: str) -> Restart | None:
        """The [[restart]] that applies to a group (a specific one wins over one without ``processes``)."""
        specific = [r for r in self.restart if r.processes and group in r.processes]
        if specific:
            return specific[0]
        general = [r for r in self.restart if not r.processes]
        return general[0] if general else None


# --------------------------------------------------------------------------------------------------------
# Loading


def load_fly_toml(path: Path, *, warn: Warn | None = None) -> FlyConfig:
    """Read, validate and return the fly.toml at ``path``.

    Raises ConfigError (one line: file, line, key, what is wrong) for unreadable files, invalid TOML,
    schema violations and our own checks (unknown strategy, bad VM sizes, two mounts for one process
    group, sections naming undefined process groups, ...). Unknown keys are passed to ``warn`` (default:
    a ``nixfly: warning:`` line on stderr) with a "did you mean" suggestion where one is close.
    ``[[files]]`` entries with ``local_path`` are read (relative to the file's directory) into
    ``raw_value`` so the config is self-contained.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create one with `nixfly init`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_fly_toml(text, source=str(path), base_dir=path.parent, warn=warn)


def parse_fly_toml(
    text: str, *, source: str = "fly.toml", base_dir: Path | None = None, warn: Warn | None = None
) -> FlyConfig:
    """Like :func:`load_fly_toml` for text already in memory; ``source`` names it in messages."""
    emit: Warn = warn if warn is not None else _stderr_warning
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    lines = _KeyLines(text)
    data = _normalize(raw)
    _schema_check(data, source, lines)
    try:
        cfg = FlyConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if isinstance(x, str | int))
        loc = _trim_loc(loc)
        msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be", 1)
        if err["type"] == "missing":
            msg = f"missing required key {loc[-1]!r}"
            loc = loc[:-1]
        elif err["type"] == "literal_error" and not _is_private(loc):
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ConfigError(_where(source, lines, loc) + msg + more) from None
    _warn_unknown(cfg, (), source, lines, emit)
    _check_groups(cfg, source, lines)
    if any(f.local_path for f in cfg.files):
        cfg = _inline_local_files(cfg, source, lines, base_dir or Path("."))
    return cfg


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"nixfly: warning: {message}\n")


def _trim_loc(loc: KeyPath) -> KeyPath:
    # pydantic appends union-member and validator names (e.g. "int", "function-after[...]"); drop anything
    # after the first piece that is not a real key of the document.
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool", "list")):
            break
        out.append(part)
    return tuple(out)


def _is_private(loc: KeyPath) -> bool:
    return bool(loc) and loc[0] in ("env", "files")


# Keys that may be one table or an array of tables; we always hold a list.
_LISTY_TOP = ("services", "mounts", "statics", "metrics", "vm", "restart", "files")
_LISTY_SERVICE = ("ports", "tcp_checks", "http_checks")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the spellings flyctl accepts into the one the schema and our models check."""
    data = dict(raw)
    for key in _LISTY_TOP:
        if key in data:
            data[key] = _as_list(data[key])
    if isinstance(data.get("services"), list):
        services = []
        for svc in data["services"]:
            if isinstance(svc, dict):
                svc = dict(svc)
                for k in _LISTY_SERVICE:
                    if k in svc:
                        svc[k] = _as_list(svc[k])
                if isinstance(svc.get("auto_stop_machines"), bool):
                    svc["auto_stop_machines"] = _autostop(svc["auto_stop_machines"])
            services.append(svc)
        data["services"] = services
    hs = data.get("http_service")
    if isinstance(hs, dict):
        hs = dict(hs)
        if "checks" in hs:
            hs["checks"] = _as_list(hs["checks"])
        if isinstance(hs.get("auto_stop_machines"), bool):
            hs["auto_stop_machines"] = _autostop(hs["auto_stop_machines"])
        data["http_service"] = hs
    env = data.get("env")
    if isinstance(env, dict):
        data["env"] = {k: _env_value(v) for k, v in env.items()}
    deploy = data.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("wait_timeout"), int | float):
        wt = deploy["wait_timeout"]
        if not isinstance(wt, bool):
            # The schema only knows the string form; an integer means seconds.
            data["deploy"] = {**deploy, "wait_timeout": f"{wt}s"}
    return data


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("nixfly.fly").joinpath("schemas/fly-toml.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    props = schema["properties"]
    # We hold these sections as lists (see _normalize); checking against the array branch alone gives
    # errors that point inside the section instead of a vague "not valid under any of the given schemas".
    for key in ("services", "mounts", "statics", "metrics"):
        branches = props[key]["oneOf"]
        props[key] = next(b for b in branches if b.get("type") == "array")
    # The published enum has SIGSTOP (the Machines API refuses it) and lacks SIGHUP (which it accepts);
    # our model checks kill_signal against the API's own list instead.
    props["kill_signal"] = {"type": "string"}
    # The schema's default strategy ("canary") is not flyctl's ("rolling"); we never read defaults from it.
    return schema


def _schema_check(data: dict[str, Any], source: str, lines: _KeyLines) -> None:
    validator = jsonschema.Draft7Validator(_schema())
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    described = [_describe_schema_error(e) for e in errors]
    described.sort(key=lambda d: (lines.line_of(d[0]) or 0, len(d[0])))
    loc, msg = described[0]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    raise ConfigError(_where(source, lines, loc) + msg + more)


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true/false)",
    "array": "an array",
    "object": "a table",
}


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _show(value: Any, loc: KeyPath) -> str:
    if _is_private(loc) or isinstance(value, dict | list):
        return _toml_type(value)
    return f"{_toml_type(value)} {value!r}"


def _describe_schema_error(e: jsonschema.ValidationError) -> tuple[KeyPath, str]:
    loc: KeyPath = tuple(e.absolute_path)
    kind = e.validator
    value: Any = e.validator_value
    schema: Any = e.schema
    if kind == "type":
        wanted = value if isinstance(value, list) else [value]
        names = " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
        return loc, f"must be {names} (got {_show(e.instance, loc)})"
    if kind == "enum":
        choices = ", ".join(repr(c) for c in value)
        return loc, f"must be one of {choices} (got {_show(e.instance, loc)})"
    if kind in ("oneOf", "anyOf"):
        kinds = [s.get("type") for s in value if isinstance(s, dict)]
        names = " or ".join(_TYPE_NAMES.get(str(k), str(k)) for k in kinds if k)
        return loc, f"must be {names} (got {_show(e.instance, loc)})"
    if kind == "additionalProperties" and isinstance(e.instance, dict):
        allowed = list(schema.get("properties", {}))
        extra = [k for k in e.instance if k not in allowed]
        key = extra[0] if extra else "?"
        return (*loc, key), f"unknown key {key!r} in this section{_did_you_mean(key, allowed)}"
    if kind == "required":
        missing = [k for k in value if isinstance(e.instance, dict) and k not in e.instance]
        return loc, f"missing required key {(missing or ['?'])[0]!r}"
    if kind == "pattern":
        return loc, f"{_show(e.instance, loc)} does not match the pattern {value!r}"
    if kind in ("minItems", "minLength"):
        return loc, "must not be empty"
    if kind == "uniqueItems":
        return loc, "has duplicate entries"
    return loc, e.message.splitlines()[0][:200]


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part_s = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += ("." if out else "") + part_s
    return out or "(top level)"


def _where(source: str, lines: _KeyLines, loc: KeyPath) -> str:
    line = lines.line_of(loc)
    at = f"{source}:{line}" if line else source
    return f"{at}: {_dotted(loc)}: "


def _warn_unknown(model: BaseModel, loc: KeyPath, source: str, lines: _KeyLines, warn: Warn) -> None:
    """Report keys our models do not know, recursing into nested models, lists and dicts of models."""
    known = [f.alias or name for name, f in type(model).model_fields.items()]
    for key in model.model_extra or {}:
        hint = _did_you_mean(key, known)
        warn(f"{_where(source, lines, (*loc, key))}unknown key, ignored{hint}")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = field.alias or name
        if isinstance(value, BaseModel):
            _warn_unknown(value, (*loc, key), source, lines, warn)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _warn_unknown(item, (*loc, key, i), source, lines, warn)
        elif isinstance(value, dict):
            for k, item in value.items():
                if isinstance(item, BaseModel):
                    _warn_unknown(item, (*loc, key, k), source, lines, warn)


def _check_groups(cfg: FlyConfig, source: str, lines: _KeyLines) -> None:
    """Cross-section rules flyctl enforces: sections name defined groups, services say which group they
    serve when there are several, at most one mount per group, no canary deploys with volumes."""
    groups = cfg.process_groups()
    for name, cmd in cfg.processes.items():
        try:
            shlex.split(cmd)
        except ValueError as e:
            raise ConfigError(f"{_where(source, lines, ('processes', name))}cannot split command: {e}") from None

    sections: list[tuple[KeyPath, Sequence[str] | None]] = []
    if cfg.http_service is not None:
        sections.append((("http_service",), cfg.http_service.processes))
    for key in ("services", "mounts", "vm", "restart", "files", "statics", "metrics"):
        for i, item in enumerate(getattr(cfg, key)):
            sections.append(((key, i), item.processes))
    for name, check in cfg.checks.items():
        sections.append((("checks", name), check.processes))
    for loc, procs in sections:
        for p in procs or ():
            if p not in groups:
                have = ", ".join(repr(g) for g in groups)
                raise ConfigError(
                    f"{_where(source, lines, (*loc, 'processes'))}process group {p!r} is not defined "
                    f"(groups: {have}){_did_you_mean(p, groups)}"
                )
        if len(cfg.processes) > 1 and not procs and loc[0] in ("http_service", "services"):
            raise ConfigError(
                f"{_where(source, lines, loc)}the app has {len(cfg.processes)} process groups; "
                "set `processes = [...]` to say which this service is for"
            )

    for group in groups:
        mine = [i for i, m in enumerate(cfg.mounts) if cfg.applies_to(m.processes, group)]
        if len(mine) > 1:
            raise ConfigError(
                f"{_where(source, lines, ('mounts', mine[1]))}process group {group!r} has more than one "
                f"[[mounts]] (mounts[{mine[0]}] and mounts[{mine[1]}]); a machine can mount one volume"
            )
        for key in ("vm", "restart"):
            items = getattr(cfg, key)
            specific = [i for i, x in enumerate(items) if x.processes and group in x.processes]
            general = [i for i, x in enumerate(items) if not x.processes]
            for dup in (specific, general):
                if len(dup) > 1:
                    raise ConfigError(
                        f"{_where(source, lines, (key, dup[1]))}more than one [[{key}]] applies to process "
                        f"group {group!r} ({key}[{dup[0]}] and {key}[{dup[1]}])"
                    )
    if cfg.deploy.strategy == "canary" and cfg.mounts:
        raise ConfigError(
            f"{_where(source, lines, ('deploy', 'strategy'))}the canary strategy cannot be used with "
            "[[mounts]] (volumes); use rolling or immediate"
        )


def _inline_local_files(cfg: FlyConfig, source: str, lines: _KeyLines, base_dir: Path) -> FlyConfig:
    files = []
    for i, f in enumerate(cfg.files):
        if f.local_path:
            p = base_dir / f.local_path
            try:
                content = p.read_bytes()
            except OSError as e:
                raise ConfigError(
                    f"{_where(source, lines, ('files', i, 'local_path'))}cannot read {str(p)!r}: {e.strerror or e}"
                ) from None
            f = f.model_copy(update={"raw_value": base64.b64encode(content).decode("ascii")})
        files.append(f)
    return cfg.model_copy(update={"files": files})


# --------------------------------------------------------------------------------------------------------
# Line numbers. tomllib keeps no positions, so we scan the text for table headers and keys and remember
# where each key path (with array-of-tables indices) starts. Inline tables and values spread over many
# lines resolve to the line of the key that holds them, which is where a reader would look anyway.


_HEADER_AOT = re.compile(r"^\s*\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_PART_RE = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_KEY = re.compile(rf"^\s*((?:{_KEY_PART_RE})(?:\s*\.\s*(?:{_KEY_PART_RE}))*)\s*=")
_KEY_PART = re.compile(_KEY_PART_RE)


def _key_parts(dotted: str) -> list[str]:
    out = []
    for m in _KEY_PART.finditer(dotted):
        part = m.group(0)
        if part.startswith('"'):
            part = json.loads(part)
        elif part.startswith("'"):
            part = part[1:-1]
        out.append(part)
    return out


class _KeyLines:
    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        aot_count: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_multiline: str | None = None

        def concrete(parts: Sequence[str]) -> KeyPath:
            out: list[str | int] = []
            for p in parts:
                out.append(p)
                n = aot_count.get(tuple(out))
                if n:
                    out.append(n - 1)
            return tuple(out)

        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if m := _HEADER_AOT.match(line):
                parts = _key_parts(m.group(1))
                parent = concrete(parts[:-1])
                key = (*parent, parts[-1])
                idx = aot_count.get(key, 0)
                aot_count[key] = idx + 1
                table = (*key, idx)
                self._lines.setdefault(key, lineno)
                self._lines[table] = lineno
                continue
            if m := _HEADER.match(line):
                table = concrete(_key_parts(m.group(1)))
                self._lines.setdefault(table, lineno)
                continue
            if m := _KEY.match(line):
                path = (*table, *_key_parts(m.group(1)))
                self._lines.setdefault(path, lineno)
                rest = line[m.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def line_of(self, loc: KeyPath) -> int | None:
        """The line where the deepest known prefix of ``loc`` is written, or None."""
        for n in range(len(loc), 0, -1):
            line = self._lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return None
