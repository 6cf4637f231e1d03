"""A validated fly.toml → one Machines API ``fly.MachineConfig`` per process group, the way flyctl maps it.

Each [processes] key (or ``app`` without [processes]) gets its own config: ``init.cmd`` from its command,
``metadata.fly_process_group`` and ``env.FLY_PROCESS_GROUP`` naming it, and only the sections whose
``processes`` list names it (a section without one applies to the default group only, as in flyctl).
[[vm]] sizes are expanded from their preset and then overridden; without a [[vm]] the machine's current
guest is kept. The output is plain JSON data shaped like the OpenAPI spec's ``fly.MachineConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from nixfly.errors import ConfigError
from nixfly.fly.flytoml import (
    DEFAULT_VM_SIZE,
    VM_SIZES,
    FlyConfig,
    HttpService,
    Mount,
    ReleaseCommandVm,
    Service,
    ServiceCheck,
    TopLevelCheck,
    Vm,
    go_duration_string,
    parse_memory_mb,
    parse_size_gb,
)

JSON = dict[str, Any]

# Names flyctl gives the throwaway machines it runs for a release command.
RELEASE_COMMAND_GROUP = "fly_app_release_command"
PLATFORM_VERSION = "v2"


def machine_configs(cfg: FlyConfig, image: str, *, current_guest: JSON | None = None) -> dict[str, JSON]:
    """Map ``cfg`` to one MachineConfig per process group (in :meth:`FlyConfig.process_groups` order).

    ``image`` is the reference the machines run (ideally digest-pinned). ``current_guest`` is the guest of
    the machine being updated: kept for groups that have no [[vm]] section, so a ``fly scale`` done
    elsewhere is not undone. Raises ConfigError when a group cannot be mapped (e.g. a [checks] entry with
    no port and no [http_service] to take one from).
    """
    return {g: machine_config(cfg, g, image, current_guest=current_guest) for g in cfg.process_groups()}


def machine_config(cfg: FlyConfig, group: str, image: str, *, current_guest: JSON | None = None) -> JSON:
    """The MachineConfig for one process group; see :func:`machine_configs`."""
    if group not in cfg.process_groups():
        raise ConfigError(f"fly.toml defines no process group {group!r} (groups: {', '.join(cfg.process_groups())})")
    mc: JSON = {"image": image}

    init: JSON = {}
    cmd = cfg.command_for(group)
    exp = cfg.experimental
    if cmd is None and exp is not None and exp.cmd:
        cmd = list(exp.cmd)
    if cmd:
        init["cmd"] = cmd
    if exp is not None and exp.entrypoint:
        init["entrypoint"] = list(exp.entrypoint)
    if exp is not None and exp.exec:
        init["exec"] = list(exp.exec)
    if cfg.swap_size_mb is not None:
        init["swap_size_mb"] = cfg.swap_size_mb
    if init:
        mc["init"] = init

    env = dict(cfg.env)
    env["FLY_PROCESS_GROUP"] = group
    if cfg.primary_region:
        env["PRIMARY_REGION"] = cfg.primary_region
    mc["env"] = env
    mc["metadata"] = {"fly_platform_version": PLATFORM_VERSION, "fly_process_group": group}

    http = _http_service_for(cfg, group)
    services = ([_http_service(http)] if http else []) + [
        _service(s) for s in cfg.services if cfg.applies_to(s.processes, group)
    ]
    if services:
        mc["services"] = services

    checks = {
        name: _toplevel_check(name, check, group, http)
        for name, check in sorted(cfg.checks.items())
        if cfg.applies_to(check.processes, group)
    }
    if checks:
        mc["checks"] = checks

    mounts = [_mount(m) for m in mounts_for(cfg, group)]
    if mounts:
        mc["mounts"] = mounts

    stop = _stop_config(cfg)
    if stop:
        mc["stop_config"] = stop

    files = []
    for f in cfg.files:
        if not cfg.applies_to(f.processes, group):
            continue
        if f.raw_value is not None:
            files.append({"guest_path": f.guest_path, "raw_value": f.raw_value})
        elif f.secret_name is not None:
            files.append({"guest_path": f.guest_path, "secret_name": f.secret_name})
        else:
            # Only load_fly_toml knows the directory local_path is relative to.
            raise ConfigError(f"[[files]] {f.guest_path}: local_path was not read; load the config with load_fly_toml")
    if files:
        mc["files"] = files

    statics = [_plain(s, skip=("processes",)) for s in cfg.statics if cfg.applies_to(s.processes, group)]
    if statics:
        mc["statics"] = statics

    metrics = [m for m in cfg.metrics if cfg.applies_to(m.processes, group)]
    if metrics:
        mc["metrics"] = _plain(metrics[0], skip=("processes",))

    vm = cfg.vm_for(group)
    if vm is not None:
        mc["guest"] = guest_for(vm, host_dedication_id=cfg.host_dedication_id)
    elif current_guest is not None:
        mc["guest"] = dict(current_guest)

    restart = cfg.restart_for(group)
    if restart is not None:
        policy = {"never": "no"}.get(restart.policy, restart.policy)
        mc["restart"] = {"policy": policy}
        if restart.max_retries is not None:
            mc["restart"]["max_retries"] = restart.max_retries
    return mc


def mounts_for(cfg: FlyConfig, group: str) -> list[Mount]:
    """The [[mounts]] that apply to ``group`` (at most one: load_fly_toml rejects more)."""
    return [m for m in cfg.mounts if cfg.applies_to(m.processes, group)]


def mount_initial_size_gb(mount: Mount) -> int:
    """The size, in GB, to create a missing volume for ``mount`` with (``initial_size``, default 1)."""
    return parse_size_gb(mount.initial_size) if mount.initial_size is not None else 1


def guest_for(vm: Vm | ReleaseCommandVm, *, host_dedication_id: str | None = None) -> JSON:
    """A ``fly.MachineGuest``: the size preset (default shared-cpu-1x), then the section's overrides."""
    kind, cpus, memory_mb = VM_SIZES[vm.size or DEFAULT_VM_SIZE]
    if vm.cpu_kind is not None:
        kind = vm.cpu_kind
    if vm.cpus is not None:
        cpus = vm.cpus
    if isinstance(vm, Vm):
        memory_mb = vm.resolved_memory_mb() or memory_mb
    elif vm.memory is not None:
        memory_mb = parse_memory_mb(vm.memory)
    guest: JSON = {"cpu_kind": kind, "cpus": cpus, "memory_mb": memory_mb}
    if isinstance(vm, Vm):
        if vm.gpus is not None:
            guest["gpus"] = vm.gpus
        if vm.gpu_kind is not None:
            guest["gpu_kind"] = vm.gpu_kind
        if vm.kernel_args:
            guest["kernel_args"] = list(vm.kernel_args)
        if vm.persist_rootfs is not None:
            guest["persist_rootfs"] = vm.persist_rootfs
        host_dedication_id = vm.host_dedication_id or host_dedication_id
    if host_dedication_id:
        guest["host_dedication_id"] = host_dedication_id
    return guest


def release_command_config(cfg: FlyConfig, image: str) -> JSON | None:
    """The MachineConfig for a one-off machine running ``[deploy] release_command``, or None without one.

    Like flyctl: restart policy ``no``, ``auto_destroy``, no DNS registration, ``RELEASE_COMMAND=1`` in the
    environment and the process group ``fly_app_release_command``.
    """
    argv = cfg.deploy.release_command_argv()
    if not argv:
        return None
    env = dict(cfg.env)
    env["RELEASE_COMMAND"] = "1"
    env["FLY_PROCESS_GROUP"] = RELEASE_COMMAND_GROUP
    if cfg.primary_region:
        env["PRIMARY_REGION"] = cfg.primary_region
    init: JSON = {"cmd": argv}
    if cfg.experimental is not None and cfg.experimental.entrypoint:
        init["entrypoint"] = list(cfg.experimental.entrypoint)
    if cfg.swap_size_mb is not None:
        init["swap_size_mb"] = cfg.swap_size_mb
    mc: JSON = {
        "image": image,
        "init": init,
        "env": env,
        "metadata": {"fly_platform_version": PLATFORM_VERSION, "fly_process_group": RELEASE_COMMAND_GROUP},
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "dns": {"skip_registration": True},
    }
    if cfg.deploy.release_command_vm is not None:
        mc["guest"] = guest_for(cfg.deploy.release_command_vm)
    stop = _stop_config(cfg)
    if stop:
        mc["stop_config"] = stop
    return mc


# --------------------------------------------------------------------------------------------------------


def _plain(model: BaseModel, *, skip: Sequence[str] = ()) -> JSON:
    """Declared, set fields only: keys we warned about as unknown never reach the API."""
    out: JSON = {}
    for name in type(model).model_fields:
        if name in skip:
            continue
        value = getattr(model, name)
        if value is None:
            continue
        if isinstance(value, BaseModel):
            value = _plain(value)
        elif isinstance(value, list):
            value = [_plain(v) if isinstance(v, BaseModel) else v for v in value]
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    return out


def _http_service_for(cfg: FlyConfig, group: str) -> HttpService | None:
    hs = cfg.http_service
    return hs if hs is not None and cfg.applies_to(hs.processes, group) else None


def _autoscale(svc: HttpService | Service, out: JSON) -> None:
    if svc.auto_stop_machines is not None:
        out["autostop"] = svc.auto_stop_machines
    if svc.auto_start_machines is not None:
        out["autostart"] = svc.auto_start_machines
    if svc.min_machines_running is not None:
        out["min_machines_running"] = svc.min_machines_running
    if svc.concurrency is not None:
        out["concurrency"] = _plain(svc.concurrency)


def _http_service(hs: HttpService) -> JSON:
    """[http_service] is shorthand for a TCP service with port 80 (HTTP) and 443 (TLS + HTTP)."""
    plain_http: JSON = {"port": 80, "handlers": ["http"]}
    if hs.force_https:
        plain_http["force_https"] = True
    tls: JSON = {"port": 443, "handlers": ["http", "tls"]}
    if hs.http_options is not None:
        plain_http["http_options"] = _plain(hs.http_options)
        tls["http_options"] = _plain(hs.http_options)
    if hs.tls_options is not None:
        tls["tls_options"] = _plain(hs.tls_options)
    out: JSON = {"protocol": "tcp", "internal_port": hs.internal_port, "ports": [plain_http, tls]}
    _autoscale(hs, out)
    if hs.checks:
        out["checks"] = [_service_check(c, "http") for c in hs.checks]
    return out


def _service(svc: Service) -> JSON:
    out: JSON = {
        "protocol": svc.protocol,
        "internal_port": svc.internal_port,
        "ports": [_plain(p) for p in svc.ports],
    }
    _autoscale(svc, out)
    checks = [_service_check(c, "tcp") for c in svc.tcp_checks] + [_service_check(c, "http") for c in svc.http_checks]
    if checks:
        out["checks"] = checks
    return out


def _timings(check: ServiceCheck | TopLevelCheck, out: JSON) -> None:
    for name in ("interval", "timeout", "grace_period"):
        value = getattr(check, name)
        if value is not None:
            out[name] = go_duration_string(value)


def _headers(headers: dict[str, str] | None) -> list[JSON] | None:
    if not headers:
        return None
    return [{"name": k, "values": [v]} for k, v in sorted(headers.items())]


def _service_check(check: ServiceCheck, kind: str) -> JSON:
    out: JSON = {"type": kind}
    _timings(check, out)
    if kind == "http":
        if check.method is not None:
            out["method"] = check.method
        _http_fields(check, out)
    return out


def _http_fields(check: ServiceCheck | TopLevelCheck, out: JSON) -> None:
    """Copy the optional HTTP fields (path, protocol, TLS settings, headers) that are set."""
    for name in ("path", "protocol", "tls_skip_verify", "tls_server_name"):
        value = getattr(check, name)
        if value is not None:
            out[name] = value
    headers = _headers(check.headers)
    if headers:
        out["headers"] = headers


def _toplevel_check(name: str, check: TopLevelCheck, group: str, http: HttpService | None) -> JSON:
    port = check.port
    if port is None:
        if http is None:
            raise ConfigError(
                f"fly.toml: checks.{name}: no port set and process group {group!r} has no [http_service] "
                "to take internal_port from; set `port`"
            )
        port = http.internal_port
    out: JSON = {"type": check.type, "port": port}
    _timings(check, out)
    if check.kind is not None:
        out["kind"] = check.kind
    if check.method is not None:
        out["method"] = check.method.upper()
    _http_fields(check, out)
    return out


def _mount(m: Mount) -> JSON:
    out: JSON = {"name": m.source, "path": m.destination}
    if m.auto_extend_size_threshold is not None:
        out["extend_threshold_percent"] = m.auto_extend_size_threshold
    if m.auto_extend_size_increment is not None:
        out["add_size_gb"] = parse_size_gb(m.auto_extend_size_increment)
    if m.auto_extend_size_limit is not None:
        out["size_gb_limit"] = parse_size_gb(m.auto_extend_size_limit)
    return out


def _stop_config(cfg: FlyConfig) -> JSON | None:
    if cfg.kill_signal is None and cfg.kill_timeout is None:
        return None
    out: JSON = {}
    if cfg.kill_signal is not None:
        out["signal"] = cfg.kill_signal
    if cfg.kill_timeout is not None:
        out["timeout"] = go_duration_string(cfg.kill_timeout)
    return out
