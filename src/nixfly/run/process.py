"""What the container runs: arguments, environment, working directory and user, worked out from the image
config and the command line the way ``docker run`` does, and checked against the unpacked rootfs."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from nixfly.errors import RuntimeErrorNF, UsageError
from nixfly.fsutil import read_regular
from nixfly.image.config import DEFAULT_PATH, env_path
from nixfly.run.rootfs import find_in_root, resolve_dir

USER_DB_MAX = 16 << 20  # /etc/passwd or /etc/group: a line per user, a few KiB in any real image


@dataclass(frozen=True)
class Volume:
    """A host path bind-mounted at an absolute path in the container."""

    host: Path
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class ProcessSpec:
    """The container's process, ready for any runtime. ``env`` holds ``KEY=VALUE`` strings."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    tty: bool = False


def _read_db(root: Path, path: str) -> list[list[str]]:
    # /etc/passwd and /etc/group: colon-separated records; a missing file is an empty database.
    hit = find_in_root(root, path)
    if hit is None or not hit.is_file():
        return []
    try:  # bounded: an image is anyone's, and its /etc/passwd may be 10 GB
        text = read_regular(hit, USER_DB_MAX, f"the image's {path}", RuntimeErrorNF).decode(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(root: Path, spec: str) -> tuple[int, int, tuple[int, ...]]:
    """``user[:group]`` (names or numbers) → (uid, gid, supplementary gids), names looked up in the image's
    /etc/passwd and /etc/group. A numeric uid not in passwd gets gid 0, as docker does."""
    user, _, group = (spec or "0").partition(":")
    passwd = [r for r in _read_db(root, "/etc/passwd") if len(r) >= 4]
    groups = [r for r in _read_db(root, "/etc/group") if len(r) >= 3]
    entry: list[str] | None = None
    if user.isdigit():
        uid = int(user)
        entry = next((r for r in passwd if r[2] == user), None)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    else:
        entry = next((r for r in passwd if r[0] == user), None)
        if entry is None or not entry[2].isdigit():
            raise RuntimeErrorNF(f"user {user!r} is not in the image's /etc/passwd; give a numeric uid instead")
        uid = int(entry[2])
        gid = int(entry[3]) if entry[3].isdigit() else 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((r for r in groups if r[0] == group), None)
            if g is None or not g[2].isdigit():
                raise RuntimeErrorNF(f"group {group!r} is not in the image's /etc/group; give a numeric gid instead")
            gid = int(g[2])
    extra: list[int] = []
    if entry is not None and not group:
        name = entry[0]
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            if name in members and g[2].isdigit() and int(g[2]) != gid and int(g[2]) not in extra:
                extra.append(int(g[2]))
    return uid, gid, tuple(extra)


def home_of(root: Path, uid: int) -> str:
    for r in _read_db(root, "/etc/passwd"):
        if len(r) >= 6 and r[2] == str(uid) and r[5]:
            return r[5]
    return "/"


def merge_env(image_env: Sequence[str], overrides: Sequence[str], host_env: Mapping[str, str]) -> list[str]:
    """Image Env, then ``-e KEY=VAL`` overrides (``-e KEY`` copies KEY from the host, as docker does).
    Order is kept; later settings of a key replace earlier ones in place."""
    merged: dict[str, str] = {}
    for item in image_env:
        k, sep, v = item.partition("=")
        if k and sep:
            merged[k] = v
    for item in overrides:
        k, sep, v = item.partition("=")
        if not k:
            raise UsageError(f"-e needs KEY=VALUE, got {item.split('=', 1)[0]!r}=…")
        if sep:
            merged[k] = v
        elif k in host_env:
            merged[k] = host_env[k]
    return [f"{k}={v}" for k, v in merged.items()]


def parse_volume(text: str) -> Volume:
    """``HOST:CONTAINER[:ro|rw]``; the host path must exist, the container path must be absolute."""
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"--volume {text!r}: use HOST:CONTAINER[:ro]")
    host, ctr = Path(parts[0]), parts[1]
    norm = str(PurePosixPath("/") / ctr)
    if not ctr.startswith("/") or ".." in ctr.split("/") or norm == "/":
        raise UsageError(f"--volume {text!r}: the container path must be absolute, without '..', and not /")
    if not host.exists():
        raise UsageError(f"--volume {text!r}: {host} does not exist on this machine")
    return Volume(host.resolve(), norm, mode == "ro")


def check_volume_target(root: Path, vol: Volume) -> None:
    """Refuse a volume whose container path runs through a symlink in the image: the mount would land
    wherever the link points, which for the chroot runtime could be outside the container."""
    cur = root
    for comp in PurePosixPath(vol.container).parts[1:]:
        cur = cur / comp
        try:
            st = os.lstat(cur)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(
                f"--volume target {vol.container} goes through a symlink in the image "
                f"({'/' + str(cur.relative_to(root))}); give the path it points to"
            )


def _find_command(root: Path, cmd: str, env: Sequence[str], cwd: str) -> tuple[Path | None, str]:
    if "/" in cmd:
        where = cmd if cmd.startswith("/") else str(PurePosixPath(cwd) / cmd)
        return find_in_root(root, where), where
    path = env_path(env)
    for d in path.split(":"):
        if d.startswith("/"):
            hit = find_in_root(root, f"{d}/{cmd}")
            if hit is not None and hit.is_file():
                return hit, f"{d}/{cmd}"
    return None, f"PATH={path}"


def check_command(root: Path, spec: ProcessSpec, volumes: Sequence[Volume] = ()) -> None:
    """Raise RuntimeErrorNF if the command is not an executable file in the image (commands under a
    volume cannot be checked before the run and are left to the runtime)."""
    cmd = spec.args[0]
    hit, where = _find_command(root, cmd, spec.env, spec.cwd)
    if hit is None and "/" in cmd and any(where.startswith(v.container + "/") for v in volumes):
        return
    if hit is None or not hit.is_file():
        searched = f"searched {where}" if "/" not in cmd else f"no file {where}"
        raise RuntimeErrorNF(f"command {cmd!r} is not in the image ({searched})")
    if not hit.stat().st_mode & 0o111:
        raise RuntimeErrorNF(f"command {cmd!r} ({where}) is in the image but is not executable")


def build_process(
    root: Path,
    image_config: Mapping[str, Any],
    *,
    command: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    volumes: Sequence[Volume] = (),
    host_env: Mapping[str, str] | None = None,
    tty: bool = False,
    entrypoint: Sequence[str] | None = None,
) -> ProcessSpec:
    """The process to start, from the image config (``config.Entrypoint/Cmd/Env/WorkingDir/User``) and the
    command line: ``command`` replaces Cmd and keeps Entrypoint, as docker does. Raises RuntimeErrorNF when
    there is no command, or the command, user or group is not in the image."""
    cfg = image_config.get("config") or {}
    if entrypoint is not None:  # docker run --entrypoint: replaces Entrypoint, and the image's Cmd is dropped
        args = list(entrypoint) + list(command)
    else:
        args = list(cfg.get("Entrypoint") or []) + (list(command) if command else list(cfg.get("Cmd") or []))
    if not args:
        raise RuntimeErrorNF("the image has no command (no Entrypoint or Cmd); give one: nixfly run IMAGE -- CMD")
    cwd = workdir or cfg.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise UsageError(f"working directory {cwd!r} must be an absolute path")
    # The runtimes get the directory without symlinks: one pointing at a host path must not make them
    # create (or enter) that host path. Under a volume the directory is the user's own, not the image's.
    if not any(cwd == v.container or cwd.startswith(v.container.rstrip("/") + "/") for v in volumes):
        real_cwd = resolve_dir(root, cwd)
        if real_cwd is None:
            raise RuntimeErrorNF(f"working directory {cwd} is not a directory in the image")
        cwd = real_cwd
    uid, gid, extra = resolve_user(root, user if user is not None else str(cfg.get("User") or ""))
    full_env = merge_env(list(cfg.get("Env") or []), env, os.environ if host_env is None else host_env)
    keys = {e.partition("=")[0] for e in full_env}
    if "PATH" not in keys:  # the image's own PATH when its config has one; else the one nixfly images get
        full_env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOME" not in keys:
        full_env.append(f"HOME={home_of(root, uid)}")
    spec = ProcessSpec(tuple(args), tuple(full_env), cwd, uid, gid, extra, tty)
    for v in volumes:
        check_volume_target(root, v)
    check_command(root, spec, volumes)
    return spec
