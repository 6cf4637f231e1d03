"""The fly.toml models: frozen pydantic models of every section nixfly maps onto the Machines API.

Field validators hold the rules that belong to one section (port ranges, memory steps, check timings);
rules that span sections live in :mod:`nixfly.fly.validation`. ``extra="allow"`` keeps unknown keys so
the loader can refuse them (or, when asked, warn) with a "did you mean" suggestion.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from nixfly.fly.units import VM_SIZES, duration, go_duration_string, parse_memory_mb, parse_size_gb

DEFAULT_PROCESS_GROUP = "app"
STRATEGIES = ("immediate", "rolling", "canary", "bluegreen")
# The Machines API's fly.StopConfig signal enum; flyctl passes kill_signal through unchanged, so anything
# outside this set would only fail later, at the API.
STOP_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM")


# Check timings: a bare integer means milliseconds (fly.toml reference); kill/wait timeouts: seconds.
MillisDuration = Annotated[timedelta, BeforeValidator(lambda v: duration(v, "ms"))]
SecondsDuration = Annotated[timedelta, BeforeValidator(lambda v: duration(v, "s"))]


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"cannot split command {value!r}: {e}") from None
    return value


Command = Annotated[list[str], BeforeValidator(_split_command)]


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
    wait_timeout: Annotated[float, BeforeValidator(lambda v: duration(v, "s").total_seconds())] = 300.0
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


def autostop_string(value: Any) -> Any:
    # flyctl still reads the older boolean spelling; the Machines API wants the string form.
    if value is True:
        return "stop"
    if value is False:
        return "off"
    return value


AutoStop = Annotated[Literal["off", "stop", "suspend"], BeforeValidator(autostop_string)]


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


def env_value(value: Any) -> Any:
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
    env: dict[str, Annotated[str, BeforeValidator(env_value)]] = {}
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
