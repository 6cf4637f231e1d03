"""The fly.toml models: frozen pydantic models with the keys of flyctl's own config structs.

The sections and keys are those of flyctl's ``appconfig.Config`` (internal/appconfig/config.go,
service.go, toplevelcheck.go) and the fly-go types it embeds (machine_types.go): a key is "known" here
exactly when flyctl's decoder keeps it. Field validators hold the rules that belong to one section (port
ranges, memory steps, check timings); rules that span sections live in :mod:`nixfly.fly.validation`.
``extra="allow"`` keeps the other keys so the loader can say what becomes of them (a typo is refused, a
key flyctl drops is reported as having no effect).
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from nixfly.errors import ConfigError
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


class BuildCompose(_Model):
    file: str | None = None


class Build(_Model):
    """[build]: only ``image`` means something to nixfly; the rest configures flyctl's own image build."""

    image: str | None = None
    dockerfile: str | None = None
    builder: str | None = None
    buildpacks: list[str] | None = None
    args: dict[str, Any] | None = None
    build_target: str | None = Field(default=None, alias="build-target")
    ignorefile: str | None = None
    settings: dict[str, Any] | None = None
    builtin: str | None = None
    compose: BuildCompose | None = None
    compression: str | None = None
    compression_level: int | None = None


def _as_argv(value: Any) -> Any:
    # flyctl (internal/appconfig/patches.go, stringOrSliceToSlice) turns a lone string into a one-element
    # list: `cmd = "a b"` runs the program "a b", it is not split like a shell would.
    return [value] if isinstance(value, str) else value


Argv = Annotated[list[str], BeforeValidator(_as_argv)]


class Vm(_Model):
    """One [[vm]] section (flyctl also reads [[compute]]/[[computes]]): a size preset, ``memory`` and the
    Machines API guest fields, which win over both (flyctl's appconfig.Compute)."""

    size: str | None = None
    memory: str | None = None
    cpu_kind: Literal["shared", "performance"] | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    max_memory_mb: int | None = None
    gpus: int | None = None
    gpu_kind: str | None = None
    host_dedication_id: str | None = None
    persist_rootfs: Literal["never", "always", "restart"] | None = None
    kernel_args: Command | None = None
    processes: list[str] | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            _memory_steps(parse_memory_mb(value))
        return value

    @field_validator("memory_mb")
    @classmethod
    def _memory_mb(cls, value: int | None) -> int | None:
        if value is not None:
            _memory_steps(value)
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and value not in VM_SIZES:
            raise ValueError(f"unknown size {value!r}; known sizes: {', '.join(VM_SIZES)}")
        return value

    def resolved_memory_mb(self) -> int | None:
        """The memory this section asks for, in MiB, or None to keep the size preset's. As in flyctl's
        computeToGuest, ``memory_mb`` (a guest field) wins over ``memory``."""
        if self.memory_mb:
            return self.memory_mb
        if self.memory is not None:
            return parse_memory_mb(self.memory)
        return None


def _memory_steps(mb: int) -> None:
    # The Machines API allocates memory in 256 MB steps and rejects anything else.
    if mb % 256:
        raise ValueError(f"memory {mb} MB is not a multiple of 256 MB")


# Kept for callers that named the release-command section's type.
ReleaseCommandVm = Vm


class Deploy(_Model):
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] = "rolling"
    max_unavailable: float | int = 0.33
    # Seconds; fly.toml may say "5m" or 300.
    wait_timeout: Annotated[float, BeforeValidator(lambda v: duration(v, "s").total_seconds())] = 300.0
    release_command: str | None = None
    release_command_timeout: SecondsDuration | None = None
    release_command_vm: Vm | None = None
    seed_command: str | None = None

    def release_command_argv(self) -> list[str] | None:
        """``release_command`` split like a shell would, or None."""
        return shlex.split(self.release_command) if self.release_command else None

    @model_validator(mode="after")
    def _check(self) -> Deploy:
        if self.max_unavailable <= 0:
            raise ValueError("max_unavailable must be > 0 (a fraction like 0.33 or a count like 2)")
        if self.release_command is not None:
            _split_command(self.release_command)
        return self


class Concurrency(_Model):
    type: Literal["connections", "requests"] | None = None
    hard_limit: int | None = None
    soft_limit: int | None = None


class HttpResponseOptions(_Model):
    pristine: bool | None = None
    headers: dict[str, Any] | None = None


class ReplayCache(_Model):
    path_prefix: str | None = None
    ttl_seconds: int | None = None
    type: str | None = None
    name: str | None = None
    allow_bypass: bool | None = None


class HttpOptions(_Model):
    compress: bool | None = None
    response: HttpResponseOptions | None = None
    h2_backend: bool | None = None
    idle_timeout: int | None = None
    headers_read_timeout: int | None = None
    replay_cache: list[ReplayCache] | None = None


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
    tls_options: TlsOptions | None = None
    http_options: HttpOptions | None = None
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


class TcpCheck(_Model):
    """A [[services.tcp_checks]] entry: flyctl's ServiceTCPCheck knows only the timings."""

    interval: MillisDuration | None = None
    timeout: MillisDuration | None = None
    grace_period: MillisDuration | None = None


class ServiceCheck(TcpCheck):
    """An HTTP check inside [[services]] (http_checks) or [[http_service.checks]]."""

    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    tls_skip_verify: bool | None = None
    tls_server_name: str | None = None
    headers: dict[str, str] | None = None


class MachineCheck(_Model):
    """[[services.machine_checks]]: run by flyctl in a throwaway machine; nixfly does not run them."""

    command: list[str] | None = None
    image: str | None = None
    entrypoint: list[str] | None = None
    kill_signal: str | None = None
    kill_timeout: SecondsDuration | None = None


def autostop_string(value: Any) -> Any:
    # flyctl still reads the older boolean spelling; the Machines API wants the string form.
    if value is True:
        return "stop"
    if value is False:
        return "off"
    return value


AutoStop = Annotated[Literal["off", "stop", "suspend"], BeforeValidator(autostop_string)]


def _check_internal_port(port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"internal_port {port} is outside 1-65535")


class HttpService(_Model):
    # No default: flyctl sends no internal_port when fly.toml sets none (the docs' "8080" is not its code).
    internal_port: int | None = None
    force_https: bool = False
    auto_stop_machines: AutoStop | None = None
    auto_start_machines: bool | None = None
    min_machines_running: int | None = None
    processes: list[str] | None = None
    concurrency: Concurrency | None = None
    tls_options: TlsOptions | None = None
    http_options: HttpOptions | None = None
    checks: list[ServiceCheck] = []
    machine_checks: list[MachineCheck] | None = None

    @model_validator(mode="after")
    def _check(self) -> HttpService:
        _check_internal_port(self.internal_port)
        return self


class Service(_Model):
    protocol: Literal["tcp", "udp"] | None = None
    internal_port: int | None = None
    auto_stop_machines: AutoStop | None = None
    auto_start_machines: bool | None = None
    min_machines_running: int | None = None
    ports: list[Port] = []
    concurrency: Concurrency | None = None
    tcp_checks: list[TcpCheck] = []
    http_checks: list[ServiceCheck] = []
    machine_checks: list[MachineCheck] | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> Service:
        _check_internal_port(self.internal_port)
        return self


class TopLevelCheck(_Model):
    """A [checks.NAME] table: a machine-level health check (flyctl's ToplevelCheck)."""

    port: int | None = None
    type: Literal["http", "tcp"]
    interval: MillisDuration | None = None
    timeout: MillisDuration | None = None
    grace_period: MillisDuration | None = None
    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    tls_skip_verify: bool | None = None
    tls_server_name: str | None = None
    headers: dict[str, str] | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> TopLevelCheck:
        # The Machines API (flaps) refuses intervals under 2 s and timeouts over 60 s; flyctl says so
        # before deploying (validation.go, validateChecksSection), and so do we.
        if self.interval is not None and self.interval < timedelta(seconds=2):
            raise ValueError(f"interval {go_duration_string(self.interval)} is too short (minimum 2s)")
        if self.timeout is not None and self.timeout > timedelta(seconds=60):
            raise ValueError(f"timeout {go_duration_string(self.timeout)} is too long (maximum 60s)")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 1-65535")
        return self


class Mount(_Model):
    source: str
    destination: str
    initial_size: str | None = None
    snapshot_retention: int | None = None
    scheduled_snapshots: bool | None = None
    auto_extend_size_threshold: int | None = None
    auto_extend_size_increment: str | None = None
    auto_extend_size_limit: str | None = None
    processes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> Mount:
        if not self.destination.startswith("/"):
            raise ValueError(f"destination {self.destination!r} must be an absolute path")
        if self.destination == "/":
            raise ValueError("destination cannot be '/'")
        if self.initial_size is not None and parse_size_gb(self.initial_size) < 1:
            raise ValueError(f"initial_size {self.initial_size!r} is smaller than 1GB")
        # flyctl's validateMounts (internal/appconfig/validation.go).
        if self.snapshot_retention is not None and not 1 <= self.snapshot_retention <= 60:
            raise ValueError("snapshot_retention must be between 1 and 60 days")
        for name in ("auto_extend_size_increment", "auto_extend_size_limit"):
            v = getattr(self, name)
            if v is not None:
                parse_size_gb(v)
        return self


class Restart(_Model):
    policy: Literal["always", "never", "on-failure"]
    # flyctl's key (and the docs') is `retries`; it becomes the API's max_retries.
    retries: int | None = None
    processes: list[str] | None = None


class File(_Model):
    guest_path: str
    local_path: str | None = None
    secret_name: str | None = None
    # Plain text: flyctl base64-encodes it itself (appconfig.File.toMachineFile).
    raw_value: str | None = None
    processes: list[str] | None = None
    # The base64 of local_path's bytes, read by load_fly_toml relative to the fly.toml.
    _local_b64: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> File:
        given = [k for k in ("raw_value", "secret_name", "local_path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of raw_value, secret_name or local_path")
        if not self.guest_path.startswith("/"):
            raise ValueError(f"guest_path {self.guest_path!r} must be an absolute path")
        return self

    def machine_file(self) -> dict[str, str]:
        """The ``fly.File`` this entry becomes: raw_value and local_path contents base64-encoded."""
        if self.secret_name is not None:
            return {"guest_path": self.guest_path, "secret_name": self.secret_name}
        if self.raw_value is not None:
            encoded = base64.b64encode(self.raw_value.encode("utf-8")).decode("ascii")
            return {"guest_path": self.guest_path, "raw_value": encoded}
        if self._local_b64 is None:
            raise ValueError(f"[[files]] {self.guest_path}: local_path was not read; use load_fly_toml")
        return {"guest_path": self.guest_path, "raw_value": self._local_b64}

    def with_local_content(self, content: bytes) -> File:
        out = self.model_copy()
        out._local_b64 = base64.b64encode(content).decode("ascii")
        return out


class Static(_Model):
    guest_path: str
    url_prefix: str
    tigris_bucket: str | None = None
    index_document: str | None = None


class Metrics(_Model):
    port: int | None = None
    path: str | None = None
    https: bool | None = None
    processes: list[str] | None = None


class Experimental(_Model):
    cmd: Argv | None = None
    entrypoint: Argv | None = None
    exec: Argv | None = None
    auto_rollback: bool | None = None
    enable_consul: bool | None = None
    enable_etcd: bool | None = None
    lazy_load_images: bool | None = None
    attached: dict[str, Any] | None = None
    machine_config: str | None = None


def env_value(value: Any) -> Any:
    # flyctl writes numbers and booleans in [env] as their TOML text; the Machines API wants strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class FlyConfig(_Model):
    """A validated fly.toml. Section lists are always lists (a single table is read as a one-item list)."""

    app: str | None = None  # flyctl lets --app name it instead (and prefers --app)
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
    # flyctl's containers (Pilot): a machine config file, or the container the image goes into.
    machine_config: str | None = None
    container: str | None = None
    machine_checks: list[MachineCheck] | None = None

    def app_name(self, given: str | None = None) -> str:
        """The app to deploy: ``given`` (-a/--app) wins over fly.toml's ``app``, as in flyctl (deploy.go:
        "Always prefer the app name passed via --app")."""
        name = given or self.app
        if not name:
            raise ConfigError('fly.toml has no `app = "NAME"`; pass -a/--app NAME')
        return name

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
        """The [[vm]] for a group, as flyctl's ComputeForGroup picks it: among the sections without
        ``processes`` and those naming the group, the first, unless a later one names the group."""
        best: Vm | None = None
        for v in self.vm:
            names = bool(v.processes) and group in (v.processes or ())
            if v.processes and not names:
                continue
            if best is None or names:
                best = v
        return best

    def restart_for(self, group: str) -> Restart | None:
        """The [[restart]] for a group: as in flyctl's updateMachineConfig, the last of those that apply
        (one without ``processes`` applies to the default group only)."""
        mine = [r for r in self.restart if self.applies_to(r.processes, group)]
        return mine[-1] if mine else None
