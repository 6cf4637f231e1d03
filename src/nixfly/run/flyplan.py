"""What a rehearsal starts, from fly.toml and the command line: one :class:`GroupPlan` per process group,
with the machine config ``nixfly deploy`` sends for it (:func:`nixfly.fly.service.desired_configs`, the same
code path, not a second mapping), its ``env`` plus the variables Fly sets on every machine, the secrets
given on this machine (as environment variables and in secret-backed ``files``), ``files`` placed in the
root file system and ``mounts`` as local directories.

Secrets are never fetched from Fly (the API does not return values): only their names, to say which ones
were not given here.
"""

from __future__ import annotations

import base64
import binascii
import secrets as pysecrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixfly.errors import UsageError

JSON = dict[str, Any]
Log = Callable[[str], None]

DEFAULT_MEMORY_MB = 256  # shared-cpu-1x, the guest a machine gets when fly.toml has no [[vm]]
FLY_PRIVATE_IP = "::1"  # the machine's 6PN address does not exist here; loopback stands in for it
FLY_PUBLIC_IP = "2001:db8::1"  # a documentation address: the machine has no public one here


@dataclass(frozen=True)
class GroupPlan:
    """One container to start: a process group with the machine config deploy would send for it."""

    group: str
    machine_config: JSON
    env: tuple[str, ...] = field(repr=False)  # KEY=VALUE: config env, Fly's variables, secrets
    files: tuple[tuple[str, bytes, int], ...] = field(repr=False)  # (guest path, content, mode)
    mounts: tuple[tuple[str, Path, str], ...] = ()  # (volume name, host dir, destination)




def fly_machine_env(machine_config: Mapping[str, Any], *, app: str, region: str, machine_id: str) -> dict[str, str]:
    """The variables Fly sets on every machine (https://fly.io/docs/machines/runtime-environment/), with
    local stand-ins for what only exists on Fly (the 6PN and public addresses)."""
    guest = machine_config.get("guest")
    memory = guest.get("memory_mb") if isinstance(guest, dict) else None
    env = machine_config.get("env") if isinstance(machine_config.get("env"), dict) else {}
    assert isinstance(env, dict)
    return {
        "FLY_APP_NAME": app,
        "FLY_MACHINE_ID": machine_id,
        "FLY_ALLOC_ID": machine_id,
        "FLY_REGION": region,
        "FLY_PUBLIC_IP": FLY_PUBLIC_IP,
        "FLY_PRIVATE_IP": FLY_PRIVATE_IP,
        "FLY_IMAGE_REF": str(machine_config.get("image", "")),
        "FLY_MACHINE_VERSION": pysecrets.token_hex(13).upper(),
        "FLY_PROCESS_GROUP": str(env.get("FLY_PROCESS_GROUP", "")),
        "FLY_VM_MEMORY_MB": str(memory if isinstance(memory, int) else DEFAULT_MEMORY_MB),
        **({"PRIMARY_REGION": str(env["PRIMARY_REGION"])} if "PRIMARY_REGION" in env else {}),
    }


def machine_files(
    machine_config: Mapping[str, Any], secrets: Mapping[str, str], missing: Callable[[str, str], None]
) -> list[tuple[str, bytes, int]]:
    """The config's ``files`` as (guest path, content, mode): raw values decoded, secret-backed ones from
    ``secrets`` (Fly stores them base64-encoded, so the value is decoded too). A secret not given locally is
    reported through ``missing(secret name, guest path)`` and its file left out."""
    out = []
    for f in machine_config.get("files") or []:
        path = str(f.get("guest_path"))
        mode = f.get("mode") if isinstance(f.get("mode"), int) else 0o644
        if f.get("raw_value") is not None:
            out.append((path, base64.b64decode(f["raw_value"]), mode))
            continue
        name = str(f.get("secret_name"))
        if name not in secrets:
            missing(name, path)
            continue
        try:
            content = base64.b64decode(secrets[name], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(
                f"secret {name} backs [[files]] {path}, and Fly decodes such a secret as base64, but its local "
                f"value is not base64; give it as --secret {name}=$(base64 -w0 FILE)"
            ) from None
        out.append((path, content, mode))
    return out




@dataclass(frozen=True)
class RehearsalRequest:
    """What ``nixfly run -c fly.toml`` was asked (the CLI fills it from its flags)."""

    config_path: Path
    image_ref: Callable[[str], str]  # app name → the reference its machine configs name (what deploy deploys)
    app: str | None = None
    groups: tuple[str, ...] = ()  # empty: the group with the services
    all_groups: bool = False
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # app → the secret names `nixfly secrets list` reports for it (None: Fly is not asked)
    fly_secret_names: Callable[[str], Sequence[str]] | None = field(default=None, compare=False)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)  # where a needed secret may also come from
    require_secrets: bool = False
    volumes: Mapping[str, Path] = field(default_factory=dict)  # volume name → local directory
    state_dir: Path | None = None
    region: str | None = None
    extra_env: tuple[str, ...] = field(default=(), repr=False)
    allow_unknown_keys: bool = False


def _plain_path(path: str, what: str) -> None:
    # These become mount targets inside the container: nothing may climb out of its root.
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or path.rstrip("/") == "":
        raise UsageError(f"fly.toml: {what} must be an absolute path inside the machine, without '..'")


def _plain_name(name: str, what: str) -> None:
    # App and volume names name directories in nixfly's state: letters, digits, '-' and '_' only (as on Fly).
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise UsageError(f"fly.toml: {what} {name!r} may hold only letters, digits, '-' and '_'")


def parse_dotenv(text: str, source: str) -> dict[str, str]:
    """``NAME=VALUE`` lines (``export`` allowed, ``#`` comments, one level of matching quotes stripped).
    Errors name the file and line, never a value."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s.removeprefix("export ").lstrip()
        name, sep, value = s.partition("=")
        name = name.strip()
        if not sep or not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "a").isalnum():
            raise UsageError(f"{source}:{n}: expected NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def default_group(machine_configs: Mapping[str, JSON], default: str) -> str:
    """The group a rehearsal runs without --group: the first with services, else fly.toml's default."""
    return next((g for g, mc in machine_configs.items() if mc.get("services")), default)


def plan_rehearsal(req: RehearsalRequest, warn: Log) -> list[GroupPlan]:
    """The containers to start: one per chosen group, each with the machine config ``nixfly deploy``
    computes for it (:func:`nixfly.fly.service.desired_configs`, for an app with no machines yet)."""
    from nixfly.fly.service import desired_configs, load_config
    from nixfly.fly.state import default_state_dir

    cfg = load_config(req.config_path, allow_unknown_keys=req.allow_unknown_keys)
    app = cfg.app_name(req.app)
    configs = desired_configs(cfg, req.image_ref(app), ())
    if req.all_groups:
        groups = list(configs)
    elif req.groups:
        groups = list(dict.fromkeys(req.groups))
        for g in groups:
            if g not in configs:
                raise UsageError(f"fly.toml defines no process group {g!r} (groups: {', '.join(configs)})")
    else:
        groups = [default_group(configs, cfg.default_process_group())]

    # Every secret Fly would hand the machines: the ones fly.toml's files name and the ones the app has.
    needed = {str(f["secret_name"]): str(f["guest_path"]) for g in groups for f in configs[g].get("files") or []
              if f.get("secret_name")}  # fmt: skip
    for name in req.fly_secret_names(app) if req.fly_secret_names is not None else ():
        needed.setdefault(name, "")
    given = dict(req.secrets)
    for name in needed:
        # nixfly's own Fly credentials never go into a container unless passed by name (--secret NAME).
        if name not in given and name in req.environ and name not in ("FLY_API_TOKEN", "FLY_ACCESS_TOKEN"):
            given[name] = req.environ[name]
    missing = sorted(n for n in needed if n not in given)
    for name in missing:
        where = f" (it backs [[files]] {needed[name]})" if needed[name] else " (the app has it on Fly)"
        line = f"secret {name} was not given here{where}: pass --secret {name}=VALUE or --secrets-file FILE"
        if req.require_secrets:
            raise UsageError(line)
        warn(line)

    mounted = {str(m.get("name")) for g in groups for m in configs[g].get("mounts") or []}
    for name in req.volumes:
        if name not in mounted:
            known = ", ".join(sorted(mounted)) or "none"
            raise UsageError(f"--volume {name}=…: no [[mounts]] source {name!r} in the groups being run ({known})")
    for g in groups:
        for f in configs[g].get("files") or []:
            _plain_path(str(f.get("guest_path")), f"[[files]] guest_path {f.get('guest_path')!r}")
        for m in configs[g].get("mounts") or []:
            _plain_path(str(m.get("path")), f"[[mounts]] destination {m.get('path')!r}")
            _plain_name(str(m.get("name")), "[[mounts]] source")
    _plain_name(app, "app name")
    region = req.region or cfg.primary_region or "ams"  # what deploy places new machines in
    state = (req.state_dir or default_state_dir()) / "rehearse" / app / "volumes"
    plans = []
    for g in groups:
        mc = configs[g]
        machine_id = pysecrets.token_hex(7)
        env = {str(k): str(v) for k, v in (mc.get("env") or {}).items()}
        env.update(fly_machine_env(mc, app=app, region=region, machine_id=machine_id))
        env.update(given)  # on Fly every secret is also an environment variable
        mounts = []
        for m in mc.get("mounts") or []:
            name, dest = str(m.get("name")), str(m.get("path"))
            host = req.volumes.get(name)
            if host is None:
                host = state / name
                host.mkdir(parents=True, exist_ok=True)
            elif not host.is_dir():
                raise UsageError(f"--volume {name}={host}: {host} is not a directory")
            mounts.append((name, host.resolve(), dest))
        files = machine_files(mc, given, lambda _n, _p: None)
        plans.append(GroupPlan(g, mc, tuple(f"{k}={v}" for k, v in env.items()) + req.extra_env, tuple(files),
                               tuple(mounts)))  # fmt: skip
    return plans
