"""A validated fly.toml → one Machines API ``fly.MachineConfig`` per process group, the way flyctl maps it.

Each [processes] key (or ``app`` without [processes]) gets its own config: ``init.cmd`` from its command,
``metadata.fly_process_group`` and ``env.FLY_PROCESS_GROUP`` naming it, and the sections that apply to it
by flyctl's rules (see :func:`machine_config`). [[vm]] sizes are expanded from fly-go's presets and then
overridden; without a [[vm]] the machine's current guest is kept. The output is plain JSON data shaped
like the OpenAPI spec's ``fly.MachineConfig``; each rule cites the flyctl file it follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from nixfly.errors import ConfigError
from nixfly.fly.flytoml import (
    DEFAULT_GPU_VM_SIZE,
    DEFAULT_VM_SIZE,
    VM_SIZES,
    FlyConfig,
    HttpService,
    Mount,
    Service,
    ServiceCheck,
    TcpCheck,
    TopLevelCheck,
    Vm,
    go_duration_string,
    parse_memory_mb,
    parse_size_gb,
)
from nixfly.fly.normal import RELEASE_GROUP

JSON = dict[str, Any]

# Names flyctl gives the throwaway machines it runs for a release command.
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
    """The MachineConfig for one process group, as flyctl's Config.ToMachineConfig builds it
    (internal/appconfig/machines.go, updateMachineConfig, after processgroups.go's Flatten).

    Sections without ``processes`` apply to the default group only, except [[statics]] and [[files]],
    which flyctl puts on every group, and [[vm]], whose general section applies to every group without
    one of its own. Without a [[vm]] the machine keeps ``current_guest``; a new machine gets flyctl's
    default size (shared-cpu-1x, its --vm-size default). Zero values of the API's non-pointer fields are
    left out, as Go's ``omitempty`` leaves them out of flyctl's requests; ``false``/``0`` that flyctl
    sends explicitly (autostart, tls_skip_verify, min_machines_running, ...) are kept.
    """
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

    files = machine_files(cfg)
    if files:
        mc["files"] = files

    # flyctl's Static has no process groups: every group serves every [[statics]] entry.
    statics = [_plain(s, omit_zero=("tigris_bucket", "index_document")) for s in cfg.statics]
    if statics:
        mc["statics"] = statics

    metrics = [m for m in cfg.metrics if cfg.applies_to(m.processes, group)]
    if metrics:
        plain = _plain(metrics[0], skip=("processes",), omit_zero=("port", "path", "https"))
        if plain:
            mc["metrics"] = plain

    vm = cfg.vm_for(group)
    if vm is not None:
        mc["guest"] = guest_for(vm, host_dedication_id=cfg.host_dedication_id)
    elif current_guest is not None:
        mc["guest"] = dict(current_guest)
    else:
        mc["guest"] = preset_guest(DEFAULT_VM_SIZE)
        if cfg.host_dedication_id:
            mc["guest"]["host_dedication_id"] = cfg.host_dedication_id

    restart = cfg.restart_for(group)
    if restart is not None:
        policy = {"never": "no"}.get(restart.policy, restart.policy)
        mc["restart"] = {"policy": policy}
        if restart.retries:
            mc["restart"]["max_retries"] = restart.retries
    return mc


def machine_files(cfg: FlyConfig) -> list[JSON]:
    """The ``files`` of every group's machines: all [[files]] entries, whatever their ``processes`` (flyctl
    merges them once for the app, config.go MergeFiles, and every group's config takes the merge). A later
    entry for the same guest_path replaces an earlier one in its place."""
    out: list[JSON] = []
    for f in cfg.files:
        try:
            entry: JSON = f.machine_file()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        same = [i for i, g in enumerate(out) if g["guest_path"] == f.guest_path]
        if same:
            out[same[0]] = entry
        else:
            out.append(entry)
    return out


def mounts_for(cfg: FlyConfig, group: str) -> list[Mount]:
    """The [[mounts]] that apply to ``group`` (at most one: load_fly_toml rejects more)."""
    return [m for m in cfg.mounts if cfg.applies_to(m.processes, group)]


# deploy_first.go: a volume flyctl creates for a first deploy is 1 GB, or 100 GB for a GPU machine.
DEFAULT_VOLUME_GB = 1
DEFAULT_GPU_VOLUME_GB = 100


def mount_initial_size_gb(mount: Mount, guest: JSON | None = None) -> int:
    """The size, in GB, to create a missing volume for ``mount`` with: ``initial_size``, else 100 for a
    machine with a GPU (``guest``), else 1."""
    if mount.initial_size is not None:
        return parse_size_gb(mount.initial_size)
    if guest is not None and guest.get("gpu_kind"):
        return DEFAULT_GPU_VOLUME_GB
    return DEFAULT_VOLUME_GB


def volume_request(mount: Mount, *, region: str, image: str, guest: JSON | None) -> JSON:
    """The ``CreateVolumeRequest`` flyctl sends for a volume a first deploy needs (deploy_first.go,
    provisionVolumesOnFirstDeploy): encrypted, sized as :func:`mount_initial_size_gb` says, placed for the
    machine's guest and image, with the mount's snapshot settings."""
    req: JSON = {"name": mount.source, "region": region, "size_gb": mount_initial_size_gb(mount, guest),
                 "encrypted": True, "compute_image": image}  # fmt: skip
    if guest:
        req["compute"] = dict(guest)
    if mount.snapshot_retention is not None:
        req["snapshot_retention"] = mount.snapshot_retention
    if mount.scheduled_snapshots is not None:
        req["auto_backup_enabled"] = mount.scheduled_snapshots
    return req


def volume_requests(cfg: FlyConfig, image: str) -> dict[str, JSON]:
    """For each [[mounts]] source, the CreateVolumeRequest fields (all but region) a deploy creates a
    missing volume with (:func:`volume_request`), the guest being that of the first group the mount
    serves: its [[vm]], else flyctl's default size."""
    out: dict[str, JSON] = {}
    for group in cfg.process_groups():
        vm = cfg.vm_for(group)
        guest = guest_for(vm, host_dedication_id=cfg.host_dedication_id) if vm else preset_guest(DEFAULT_VM_SIZE)
        for m in mounts_for(cfg, group):
            req = volume_request(m, region="", image=image, guest=guest)
            del req["region"]
            out.setdefault(m.source, req)
    return out


def preset_guest(size: str) -> JSON:
    """A size preset of fly-go's table as a ``fly.MachineGuest``."""
    p = VM_SIZES[size]
    guest: JSON = {"cpu_kind": p.cpu_kind, "cpus": p.cpus, "memory_mb": p.memory_mb}
    if p.gpu_kind:
        guest["gpu_kind"] = p.gpu_kind
        guest["gpus"] = p.gpus
    return guest


def guest_for(vm: Vm, *, host_dedication_id: str | None = None) -> JSON:
    """A ``fly.MachineGuest`` as flyctl's computeToGuest makes it: the size preset (shared-cpu-1x, or
    performance-8x for a section with ``gpu_kind`` and no size), the top-level host dedication, then
    ``memory``, then every guest field the section sets (``memory_mb`` beats ``memory``)."""
    size = vm.size or (DEFAULT_GPU_VM_SIZE if vm.gpu_kind else DEFAULT_VM_SIZE)
    guest = preset_guest(size)
    if host_dedication_id:
        guest["host_dedication_id"] = host_dedication_id
    if vm.memory is not None:
        guest["memory_mb"] = parse_memory_mb(vm.memory)
    for key in ("cpu_kind", "cpus", "memory_mb", "max_memory_mb", "gpus", "gpu_kind", "host_dedication_id",
                "persist_rootfs"):  # fmt: skip
        value = getattr(vm, key)
        if value:  # copier's IgnoreEmpty: a zero value overrides nothing
            guest[key] = value
    if vm.kernel_args:
        guest["kernel_args"] = list(vm.kernel_args)
    return guest


def release_command_config(cfg: FlyConfig, image: str, *, app_guests: Sequence[JSON] = ()) -> JSON | None:
    """The MachineConfig for a one-off machine running ``[deploy] release_command``, or None without one.

    Like flyctl (machines.go ToReleaseMachineConfig, machines_releasecommand.go): restart policy ``no``,
    ``auto_destroy``, no DNS registration, ``RELEASE_COMMAND=1`` in the environment, the process group
    ``fly_app_release_command`` and every [[files]] entry. Its guest is ``release_command_vm``'s; without
    one, the largest (by memory) of ``app_guests`` (the guests of the default group's machines), and
    shared-cpu-2x when the app has none yet.
    """
    argv = cfg.deploy.release_command_argv()
    if not argv:
        return None
    env = dict(cfg.env)
    env["RELEASE_COMMAND"] = "1"
    env["FLY_PROCESS_GROUP"] = RELEASE_GROUP
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
        "metadata": {"fly_platform_version": PLATFORM_VERSION, "fly_process_group": RELEASE_GROUP},
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "dns": {"skip_registration": True},
    }
    stop = _stop_config(cfg)
    if stop:
        mc["stop_config"] = stop
    files = machine_files(cfg)
    if files:
        mc["files"] = files
    if cfg.deploy.release_command_vm is not None:
        guest = guest_for(cfg.deploy.release_command_vm, host_dedication_id=cfg.host_dedication_id)
    else:
        guest = _largest(app_guests) or preset_guest(RELEASE_COMMAND_SIZE)
    if cfg.host_dedication_id:
        guest["host_dedication_id"] = cfg.host_dedication_id
    mc["guest"] = guest
    return mc


# flyctl's inferReleaseCommandGuest: a release command on a new app runs on shared-cpu-2x (512 MB).
RELEASE_COMMAND_SIZE = "shared-cpu-2x"


def _largest(guests: Sequence[JSON]) -> JSON | None:
    best: JSON | None = None
    for g in guests:
        mem = g.get("memory_mb") if isinstance(g, dict) else None
        if isinstance(mem, int) and mem > (best or {}).get("memory_mb", 0):
            best = g
    return dict(best) if best is not None else None


# --------------------------------------------------------------------------------------------------------


def _plain(model: BaseModel, *, skip: Sequence[str] = (), omit_zero: Sequence[str] = ()) -> JSON:
    """Declared, set fields only (keys flyctl drops never reach the API); ``omit_zero`` names fields that
    are plain values in fly-go, which flyctl's JSON leaves out when they are false, 0 or empty."""
    out: JSON = {}
    for name, field in type(model).model_fields.items():
        if name in skip:
            continue
        value = getattr(model, name)
        if value is None or (name in omit_zero and not value):
            continue
        if isinstance(value, BaseModel):
            value = _plain(value, omit_zero=_OMIT_ZERO.get(type(value).__name__, ()))
        elif isinstance(value, list):
            value = [_plain(v, omit_zero=_OMIT_ZERO.get(type(v).__name__, ())) if isinstance(v, BaseModel) else v
                     for v in value]  # fmt: skip
            if not value:
                continue
        elif isinstance(value, dict):
            value = dict(value)
            if not value:
                continue
        out[field.alias or name] = value
    return out


# fly-go fields without a pointer (so `omitempty` drops their zero value), by model.
_OMIT_ZERO: dict[str, tuple[str, ...]] = {
    "Port": ("force_https",),
    "Concurrency": ("type", "hard_limit", "soft_limit"),
    "ReplayCache": ("allow_bypass",),
    "ProxyProtoOptions": ("version",),
}


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
        out["concurrency"] = _plain(svc.concurrency, omit_zero=_OMIT_ZERO["Concurrency"])


def _http_service(hs: HttpService) -> JSON:
    """[http_service] is shorthand for a TCP service with port 80 (HTTP) and 443 (TLS + HTTP)
    (service.go, HTTPService.ToService)."""
    plain_http: JSON = {"port": 80, "handlers": ["http"]}
    if hs.force_https:
        plain_http["force_https"] = True
    tls: JSON = {"port": 443, "handlers": ["http", "tls"]}
    if hs.http_options is not None:
        plain_http["http_options"] = _plain(hs.http_options)
        tls["http_options"] = _plain(hs.http_options)
    if hs.tls_options is not None:
        tls["tls_options"] = _plain(hs.tls_options)
    out: JSON = {"protocol": "tcp"}
    if hs.internal_port:
        out["internal_port"] = hs.internal_port
    out["ports"] = [plain_http, tls]
    _autoscale(hs, out)
    if hs.checks:
        out["checks"] = [_service_check(c, "http") for c in hs.checks]
    return out


def _service(svc: Service) -> JSON:
    out: JSON = {}
    if svc.protocol:
        out["protocol"] = svc.protocol
    if svc.internal_port:
        out["internal_port"] = svc.internal_port
    ports = [_plain(p, omit_zero=_OMIT_ZERO["Port"]) for p in svc.ports]
    if ports:
        out["ports"] = ports
    _autoscale(svc, out)
    checks = [_service_check(c, "tcp") for c in svc.tcp_checks] + [_service_check(c, "http") for c in svc.http_checks]
    if checks:
        out["checks"] = checks
    return out


def _timings(check: TcpCheck | TopLevelCheck, out: JSON) -> None:
    for name in ("interval", "timeout", "grace_period"):
        value = getattr(check, name)
        if value is not None:
            out[name] = go_duration_string(value)


def _headers(headers: dict[str, str] | None) -> list[JSON] | None:
    if not headers:
        return None
    return [{"name": k, "values": [v]} for k, v in sorted(headers.items())]


def _service_check(check: TcpCheck, kind: str) -> JSON:
    out: JSON = {"type": kind}
    _timings(check, out)
    if isinstance(check, ServiceCheck):
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
    out: JSON = {"type": check.type}
    if port:
        out["port"] = port
    _timings(check, out)
    if check.method is not None:
        out["method"] = check.method.upper()
    _http_fields(check, out)
    return out


def _mount(m: Mount) -> JSON:
    out: JSON = {"name": m.source, "path": m.destination}
    if m.auto_extend_size_threshold:
        out["extend_threshold_percent"] = m.auto_extend_size_threshold
    if m.auto_extend_size_increment is not None and (add := parse_size_gb(m.auto_extend_size_increment)):
        out["add_size_gb"] = add
    if m.auto_extend_size_limit is not None and (limit := parse_size_gb(m.auto_extend_size_limit)):
        out["size_gb_limit"] = limit
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
