"""The image definition: what ``nixfly.toml`` holds and what CLI flags override.

Plain frozen dataclasses with a small explicit validator (no pydantic: it costs a quarter of a second
at start-up, which is most of a no-change rebuild). Every error names the file, line, key and problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nixfly.build.compress import FAST, level_problem
from nixfly.build.processes import ProcessSpec
from nixfly.build.specdata import SpecError, at_least, from_dict, octal_mode, one_of, port_spec, to_dict
from nixfly.errors import ConfigError, NixflyError, UsageError
from nixfly.fsutil import CONFIG_FILE_MAX, NestingError, load_toml, read_text_file
from nixfly.godur import parse_go_duration
from nixfly.tomlpos import TomlPositions, dotted_path

# ``to_dict`` (the inverse of the reader) is part of what callers use of an ImageSpec.
__all__ = ["ContentsSpec", "DirSpec", "FileSpec", "GroupSpec", "ImageSpec", "LayersSpec", "PermSpec",
           "PlatformSpec", "ProcessSpec", "SpecError", "UserSpec", "check_processes", "load_spec", "located",
           "process_ids", "to_dict", "validate_spec"]  # fmt: skip


def _integer_modes(table: Any, prefix: str) -> None:
    """Refuse a TOML integer as a mode, rather than guess: `mode = 750` is decimal 750, i.e. mode 01356
    (sticky, world-writable), almost surely meant as "0750"; and reading its digits as octal would make
    `mode = 0o750` wrong. (Parsed data, e.g. flags merged over a file, carries modes as integers.)"""
    if not isinstance(table, dict):
        return
    for section in ("dirs", "perms"):
        entries = table.get(section)
        for i, e in enumerate(entries if isinstance(entries, list) else []):
            v = e.get("mode") if isinstance(e, dict) else None
            if isinstance(v, int) and not isinstance(v, bool):
                digits = str(v)
                hint = f'"0{digits}"' if set(digits) <= set("01234567") and len(digits) <= 4 else f'"{v:04o}"'
                why = f"the TOML integer {v} is decimal: mode 0{v:o}"
                key = f"{prefix}.{section}.{i}.mode" if prefix else f"{section}.{i}.mode"
                raise SpecError(key, f"must be a quoted octal string: write {hint} ({why})")


# What OCI image configs name (Go's GOARCH and GOOS values).
_ARCHES = ("386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64", "ppc64le",
           "riscv64", "s390x", "wasm")  # fmt: skip
_OSES = ("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "dragonfly", "illumos", "solaris", "aix",
         "android", "ios", "plan9", "js", "wasip1")  # fmt: skip


def _level(v: Any, key: str) -> int | str:
    """A compression level: a number, or "fast" (gzip); checked against the compression in check_processes."""
    if isinstance(v, str) and v.strip().lower() == FAST:
        return FAST
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    close = difflib.get_close_matches(str(v).lower(), [FAST], 1, 0.5) if isinstance(v, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SpecError(key, f'must be a number or "fast" (got {type(v).__name__} {v!r}){hint}')


@dataclass(frozen=True)
class UserSpec:
    name: str
    uid: int = field(metadata=at_least(0))
    gid: int | None = field(default=None, metadata=at_least(0))
    home: str = "/var/empty"
    shell: str = "/bin/sh"
    gecos: str = ""
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    gid: int = field(metadata=at_least(0))
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DirSpec:
    path: str
    mode: int = field(default=0o755, metadata={"convert": octal_mode})
    uid: int = field(default=0, metadata=at_least(0))
    gid: int = field(default=0, metadata=at_least(0))
    at_boot: bool = False  # (re)create, own and mode it at every start (volumes hide build-time dirs)


@dataclass(frozen=True)
class PermSpec:
    path: str | None = None
    regex: str | None = None
    uid: int | None = field(default=None, metadata=at_least(0))
    gid: int | None = field(default=None, metadata=at_least(0))
    mode: int | None = field(default=None, metadata={"convert": octal_mode})
    uname: str | None = None
    gname: str | None = None


@dataclass(frozen=True)
class FileSpec:
    src: str
    dest: str


@dataclass(frozen=True)
class LayersSpec:
    algorithm: Literal["popularity", "auto"] = "auto"
    max_layers: int = field(default=100, metadata={"min": 1, "max": 127})
    explicit: list[list[str]] = field(default_factory=list)
    roots_on_top: bool = True
    compression: Literal["gzip", "zstd"] = "gzip"
    level: int | Literal["fast"] | None = field(default=None, metadata={"convert": _level})


@dataclass(frozen=True)
class ContentsSpec:
    roots: bool = True  # symlink the roots' top-level directories into /
    paths: list[str] = field(default_factory=list)  # further store paths (or ./result links) to link into /
    priority: dict[str, int] = field(default_factory=dict)  # store path or name → priority (lower wins)


@dataclass(frozen=True)
class PlatformSpec:
    """One entry of ``[[image.platforms]]``: a platform and the closure its image is built from."""

    platform: str
    roots: list[str] = field(default_factory=list)
    closure_file: str | None = None


@dataclass(frozen=True)
class ImageSpec:
    """The whole image definition."""

    roots: list[str] = field(default_factory=list)
    closure_file: str | None = None
    name: str | None = None
    tag: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    ports: list[str] = field(default_factory=list, metadata={"item": port_spec})
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    architecture: str | None = field(default=None, metadata={"convert": one_of(_ARCHES, "architecture")})
    os: str | None = field(default=None, metadata={"convert": one_of(_OSES, "os")})
    layers: LayersSpec = field(default_factory=LayersSpec)
    contents: ContentsSpec = field(default_factory=ContentsSpec)
    users: list[UserSpec] = field(default_factory=list)
    groups: list[GroupSpec] = field(default_factory=list)
    dirs: list[DirSpec] = field(default_factory=list)
    perms: list[PermSpec] = field(default_factory=list)
    files: list[FileSpec] = field(default_factory=list)
    tmp: bool = True
    ca_certificates: bool = True
    bin_sh: bool = False
    usr_bin_env: bool = False
    format: Literal["oci", "v2s2"] = "oci"
    # Binary caches to take missing store paths from (file://, http://, https://), and the keys
    # (NAME:BASE64) their signatures must verify against; empty keys mean nix.conf's trusted-public-keys.
    substituters: list[str] = field(default_factory=list)
    trusted_public_keys: list[str] = field(default_factory=list)
    processes: list[ProcessSpec] = field(default_factory=list)
    boot_dirs: list[DirSpec] = field(default_factory=list)  # like dirs with at_boot = true
    supervisor: Literal["process-compose", "runit", "s6"] | None = None  # None: whichever the closure holds
    source: str | None = None  # the nixfly.toml this definition came from (set by load_spec; for error lines)
    sbom: Literal["spdx", "cyclonedx", "none"] = "spdx"  # attached to the image as an OCI referrer
    # A base image (any source location); its layers go under ours. TOML key: ``from``.
    base_image: str | None = field(default=None, metadata={"key": "from"})
    base_etc: Literal["merge", "replace"] = "merge"  # /etc/passwd and /etc/group: merge with the base's
    platforms: list[PlatformSpec] = field(default_factory=list)  # one image per platform, under an index


_PROC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILTIN_USERS = {"root": 0, "nobody": 65534}
BUILTIN_GROUPS = {"root": 0, "nogroup": 65534}


def process_ids(spec: ImageSpec, p: ProcessSpec) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplementary gids) a process runs as; names come from the spec's users and groups."""
    users = {**BUILTIN_USERS, **{u.name: u.uid for u in spec.users}}
    groups = {**BUILTIN_GROUPS, **{g.name: g.gid for g in spec.groups}}
    user = next((u for u in spec.users if u.name == p.user), None)
    uid = 0 if p.user is None else int(p.user) if p.user.isdigit() else users[p.user]
    if p.group is not None:
        gid = int(p.group) if p.group.isdigit() else groups[p.group]
    elif user is not None:
        gid = user.gid if user.gid is not None else user.uid
    else:
        gid = {0: 0, 65534: 65534}.get(uid, uid)
    extra = tuple(sorted({groups[g] for g in user.groups if g in groups} - {gid})) if user is not None else ()
    return uid, gid, extra


def check_processes(spec: ImageSpec) -> tuple[ImageSpec, list[tuple[str, str]]]:
    """Check ``processes`` and ``boot_dirs`` against each other and the users and groups (and the layers'
    level against their compression); returns the spec with every depends_on condition resolved, and the
    warnings as (key, message). Raises SpecError."""
    warnings: list[tuple[str, str]] = []
    if spec.layers.level is not None and (bad := level_problem(spec.layers.compression, spec.layers.level)):
        raise SpecError("layers.level", bad)
    for i, d in enumerate(spec.boot_dirs):
        if not d.path.startswith("/") or d.path.rstrip("/") == "" or ".." in d.path.split("/"):
            raise SpecError(f"boot_dirs.{i}.path", f"{d.path!r} must be an absolute path below / without '..'")
    if not spec.processes:
        return spec, warnings
    if spec.entrypoint is not None or spec.cmd is not None:
        key = "entrypoint" if spec.entrypoint is not None else "cmd"
        raise SpecError(key, "cannot be combined with processes: the generated supervisor is the entrypoint")
    users = {*BUILTIN_USERS, *(u.name for u in spec.users)}
    groups = {*BUILTIN_GROUPS, *(g.name for g in spec.groups)}
    by_name: dict[str, int] = {}
    for i, p in enumerate(spec.processes):
        k = f"processes.{i}"
        if not _PROC_NAME.match(p.name):
            raise SpecError(f"{k}.name", f"{p.name!r} must be letters, digits, '_', '.' or '-' (at most 63)")
        if p.name in by_name:
            raise SpecError(f"{k}.name", f"process {p.name!r} is declared twice (also processes[{by_name[p.name]}])")
        by_name[p.name] = i
        if not p.command or not p.command[0]:
            raise SpecError(f"{k}.command", "must be a non-empty list: the program and its arguments")
        if p.user is not None and not p.user.isdigit() and p.user not in users:
            raise SpecError(f"{k}.user", f"user {p.user!r} is not declared in [[image.users]]")
        if p.group is not None and not p.group.isdigit() and p.group not in groups:
            raise SpecError(f"{k}.group", f"group {p.group!r} is not declared in [[image.groups]]")
        if p.working_dir is not None and not p.working_dir.startswith("/"):
            raise SpecError(f"{k}.working_dir", f"{p.working_dir!r} must be an absolute path")
        for var in p.env:
            if not _ENV_NAME.match(var):
                raise SpecError(f"{k}.env.{var}", f"{var!r} is not a valid variable name")
        if p.oneshot and p.restart == "always":
            raise SpecError(f"{k}.restart", 'a oneshot runs to completion: use "on-failure" or "never"')
        r = p.readiness
        if r is not None:
            if p.oneshot:
                raise SpecError(f"{k}.readiness", "a oneshot has no readiness: depend on it completing instead")
            if r.kind == "exec" and not r.command:
                raise SpecError(f"{k}.readiness.command", "an exec probe needs a command")
            if r.kind in ("http", "tcp") and r.port is None:
                raise SpecError(f"{k}.readiness.port", f"a {r.kind} probe needs a port")
            if r.port is not None and r.port < 1024 and process_ids(spec, p)[0] != 0:
                warnings.append(
                    (f"{k}.readiness.port", f"port {r.port} is below 1024 and process {p.name!r} does not run as "
                     "root: it cannot bind it, so the probe will never succeed")
                )  # fmt: skip
    procs = []
    for i, p in enumerate(spec.processes):
        resolved: dict[str, str] = {}
        for dep, cond in p.depends_on.items():
            k = f"processes.{i}.depends_on.{dep}"
            if dep not in by_name:
                raise SpecError(k, f"process {p.name!r} depends on {dep!r}, which is not declared in processes")
            if dep == p.name:
                raise SpecError(k, f"process {p.name!r} depends on itself")
            target = spec.processes[by_name[dep]]
            cond = cond or ("completed_successfully" if target.oneshot else "started")
            if cond == "healthy" and target.readiness is None:
                raise SpecError(k, f'"healthy" needs a readiness probe on {dep!r}')
            if cond == "completed_successfully" and not target.oneshot:
                raise SpecError(k, f'"completed_successfully" needs {dep!r} to be a oneshot')
            resolved[dep] = cond
        procs.append(dataclasses.replace(p, depends_on=resolved))
    # A cycle: depth-first over the dependencies, in declaration order.
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in spec.processes[by_name[name]].depends_on:
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep]
                raise SpecError(f"processes.{by_name[cycle[0]]}.depends_on", "dependency cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for p in spec.processes:
        if p.name not in state:
            visit(p.name, [p.name])
    return dataclasses.replace(spec, processes=procs), warnings


# Host paths may be any bytes (a file named in Latin-1); everything else ends up in the image's JSON.
_HOST_PATH_KEYS = re.compile(r"^(roots\.\d+|closure_file|files\.\d+\.src|platforms\.\d+\.(roots\.\d+|closure_file))$")


def _non_utf8_key(data: Any) -> str | None:
    """The key of the first string in ``data`` (or dict key) that is not UTF-8 text: a command-line
    argument whose bytes were not UTF-8 arrives with lone surrogates in place of those bytes."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, v = stack.pop()
        items: list[tuple[Any, Any]] = []
        if isinstance(v, dict):
            items = list(v.items())
        elif isinstance(v, list):
            items = list(enumerate(v))
        elif isinstance(v, str) and not _HOST_PATH_KEYS.match(key):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return key or "(value)"
        for k, x in items:
            sub = f"{key}.{k}" if key else str(k)
            if isinstance(k, str) and _non_utf8_key(k) is not None:
                return sub
            stack.append((sub, x))
    return None


def validate_spec(data: dict[str, Any], label: Callable[[str], str] = lambda key: key) -> ImageSpec:
    """An ImageSpec from plain data (CLI flags merged over a file); bad values are a UsageError naming
    ``label(key)`` (the CLI names the flag a value came from)."""
    bad = _non_utf8_key(data)
    if bad is not None:
        shown = label(bad).encode("utf-8", "backslashreplace").decode()
        raise UsageError(f"{shown}: is not UTF-8 text (an argument holds bytes that are not UTF-8)")
    try:
        return check_processes(from_dict(ImageSpec, data))[0]
    except SpecError as e:
        raise UsageError(f"{label(e.key)}: {e.msg}") from None


def located(path: Path | str, text: str, key: str, msg: str) -> str:
    """``FILE:LINE: KEY: MSG`` (just ``FILE: KEY: MSG`` when the key's line cannot be found)."""
    positions, loc = TomlPositions(text), dotted_path(key)
    # Keys are named relative to the image definition, which may sit in an [image] table.
    line = positions.line_of(loc) or positions.line_of(("image", *loc))
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {key}: {msg}"


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"nixfly: warning: {message}\n")


def _seconds(v: Any) -> float | None:
    """fly.toml's kill_timeout: an integer number of seconds or a Go duration such as "30s" or "1m30s" (as
    flyctl reads it); None for anything else (fly.toml's own loader reports that)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    try:
        return parse_go_duration(v).total_seconds() if isinstance(v, str) else None
    except ValueError:
        return None


def _kill_timeout_warnings(spec: ImageSpec, fly_toml: Path) -> list[tuple[str, str]]:
    """Warn when the processes' stop timeouts add up to more than fly.toml's kill_timeout (default 5 s):
    Fly kills the machine then, before the supervisor has stopped everything gracefully."""
    long_running = [p for p in spec.processes if not p.oneshot]
    if not long_running or not fly_toml.is_file():
        return []
    try:
        fly = load_toml(read_text_file(fly_toml, CONFIG_FILE_MAX))
    except (OSError, ValueError, NixflyError):
        return []  # fly.toml's own loader reports its problems
    limit = _seconds(fly.get("kill_timeout", 5))
    total = sum(p.stop_timeout for p in long_running)
    if limit is None or total <= limit:
        return []
    i = spec.processes.index(max(long_running, key=lambda p: p.stop_timeout))
    return [(f"processes.{i}.stop_timeout", f"the processes' stop timeouts add up to {total}s, more than "
             f"kill_timeout ({limit:g}s) in {fly_toml}: Fly kills the machine before they have all stopped")]


def load_spec(path: Path, *, warn: Callable[[str], None] | None = None) -> ImageSpec:
    """Load ``nixfly.toml``; the ``[image]`` table (or the top level) is the image definition.
    Relative paths in ``roots``, ``closure_file`` and ``files.src`` are relative to the file."""
    try:
        text = read_text_file(path, CONFIG_FILE_MAX, error=ConfigError)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = load_toml(text)
    except (tomllib.TOMLDecodeError, NestingError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    table = data.get("image", data)
    prefix = "image" if "image" in data else ""
    try:
        _integer_modes(table, prefix)
        spec, warnings = check_processes(from_dict(ImageSpec, table, prefix))
    except SpecError as e:
        raise ConfigError(located(path, text, e.key, e.msg)) from None
    base = Path(path).resolve().parent
    emit = warn if warn is not None else _stderr_warning
    for key, msg in warnings + _kill_timeout_warnings(spec, base / "fly.toml"):
        emit(located(path, text, key, msg))

    def rel(p: str) -> str:
        return p if p.startswith("/") or ("#" in p and not p.startswith(".")) else str(base / p)

    return dataclasses.replace(
        spec,
        roots=[r if r.startswith(".#") else rel(r) for r in spec.roots],
        closure_file=rel(spec.closure_file) if spec.closure_file else None,
        files=[FileSpec(src=rel(f.src), dest=f.dest) for f in spec.files],
        source=str(path),
        base_image=_relative_location(spec.base_image, base),
        platforms=[
            PlatformSpec(p.platform, [r if r.startswith(".#") else rel(r) for r in p.roots],
                         rel(p.closure_file) if p.closure_file else None)
            for p in spec.platforms
        ],
    )


def _relative_location(text: str | None, base: Path) -> str | None:
    """``oci:DIR`` / ``docker-archive:FILE`` locations in a file are relative to it, like its other paths."""
    if text is None:
        return None
    for scheme in ("oci:", "docker-archive:"):
        if text.startswith(scheme) and not text[len(scheme) :].startswith("/"):
            return scheme + str(base / text[len(scheme) :])
    return text
