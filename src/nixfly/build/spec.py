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
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from nixfly.build.compress import FAST, level_problem
from nixfly.errors import ConfigError, NixflyError, UsageError
from nixfly.fsutil import CONFIG_FILE_MAX, NestingError, load_toml, read_text_file
from nixfly.tomlpos import TomlPositions, dotted_path

T = TypeVar("T")


class SpecError(ValueError):
    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key
        self.msg = msg


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


def _octal_mode(v: Any, key: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise SpecError(key, f'mode {v!r} is not an octal number such as "0755"') from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o7777:
        raise SpecError(key, 'must be a mode between "0000" and "7777" (an octal string such as "0755")')
    return v


# What OCI image configs name (Go's GOARCH and GOOS values).
_ARCHES = ("386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64", "ppc64le",
           "riscv64", "s390x", "wasm")  # fmt: skip
_OSES = ("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "dragonfly", "illumos", "solaris", "aix",
         "android", "ios", "plan9", "js", "wasip1")  # fmt: skip


def _one_of(allowed: tuple[str, ...], what: str) -> Any:
    def check(v: Any, key: str) -> str:
        if not isinstance(v, str) or v not in allowed:
            raise SpecError(key, f"{v!r} is not an OCI {what} (use one of {', '.join(allowed)})")
        return v

    return check


def _port(v: str, key: str) -> str:
    port, _, proto = str(v).partition("/")
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("", "tcp", "udp"):
        raise SpecError(key, f"port {v!r} must look like 8080 or 8080/tcp")
    return f"{int(port)}/{proto or 'tcp'}"


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


def _ge0(n: int) -> dict[str, Any]:
    return {"min": n}


@dataclass(frozen=True)
class UserSpec:
    name: str
    uid: int = field(metadata=_ge0(0))
    gid: int | None = field(default=None, metadata=_ge0(0))
    home: str = "/var/empty"
    shell: str = "/bin/sh"
    gecos: str = ""
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    gid: int = field(metadata=_ge0(0))
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DirSpec:
    path: str
    mode: int = field(default=0o755, metadata={"convert": _octal_mode})
    uid: int = field(default=0, metadata=_ge0(0))
    gid: int = field(default=0, metadata=_ge0(0))
    at_boot: bool = False  # (re)create, own and mode it at every start (volumes hide build-time dirs)


# -- several processes in one machine (a generated supervisor configuration) -----------------------------

Condition = Literal["started", "healthy", "completed_successfully"]
CONDITIONS: tuple[str, ...] = ("started", "healthy", "completed_successfully")
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH")


def _id_name(v: Any, key: str) -> str:
    """A user or group: a name, or a numeric id (an integer or a string of digits)."""
    if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
        raise SpecError(key, "must be a name or a numeric id")
    if isinstance(v, int) and v < 0:
        raise SpecError(key, f"must not be negative (got {v})")
    return str(v)


def _depends_on(v: Any, key: str) -> dict[str, str]:
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


def _signal(v: Any, key: str) -> str:
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
    user: str | None = field(default=None, metadata={"convert": _id_name})
    group: str | None = field(default=None, metadata={"convert": _id_name})
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    depends_on: dict[str, str] = field(default_factory=dict, metadata={"convert": _depends_on})
    restart: Literal["always", "on-failure", "never"] | None = None  # None: always, never for a oneshot
    backoff: int = field(default=1, metadata={"min": 0})  # seconds before a restart
    max_restarts: int = field(default=0, metadata={"min": 0})  # 0: no limit
    readiness: ReadinessSpec | None = None
    stop_signal: str = field(default="SIGTERM", metadata={"convert": _signal})
    stop_timeout: int = field(default=10, metadata={"min": 1})  # seconds before SIGKILL
    oneshot: bool = False

    @property
    def restart_policy(self) -> str:
        return self.restart or ("never" if self.oneshot else "always")


@dataclass(frozen=True)
class PermSpec:
    path: str | None = None
    regex: str | None = None
    uid: int | None = field(default=None, metadata=_ge0(0))
    gid: int | None = field(default=None, metadata=_ge0(0))
    mode: int | None = field(default=None, metadata={"convert": _octal_mode})
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
    ports: list[str] = field(default_factory=list, metadata={"item": _port})
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    architecture: str | None = field(default=None, metadata={"convert": _one_of(_ARCHES, "architecture")})
    os: str | None = field(default=None, metadata={"convert": _one_of(_OSES, "os")})
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


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _convert(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], v, key)
    if origin is Literal:
        if v not in args:
            raise SpecError(key, f"must be one of {', '.join(repr(a) for a in args)} (got {v!r})")
        return v
    if origin is list:
        if not isinstance(v, list):
            raise SpecError(key, "must be a list")
        return [_convert(args[0], x, f"{key}.{i}") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise SpecError(key, "must be a table")
        return {str(k): _convert(args[1], x, f"{key}.{k}") for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, key)  # type: ignore[arg-type]
    if tp in (str, int, bool):
        ok = isinstance(v, tp) and not (tp is int and isinstance(v, bool))
        if not ok:
            raise SpecError(key, f"must be {_TYPE_NAMES[tp]} (got {type(v).__name__} {v!r})")
        return v
    raise SpecError(key, f"unsupported type {tp!r}")  # a bug in this module, not bad input


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from parsed TOML/flag data, checking types, ranges and unknown keys."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SpecError(prefix or "(top level)", "must be a table")
    hints = typing.get_type_hints(cls)
    # A field's key is its name unless its metadata names another (``from`` is a Python keyword).
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), [f.replace("_", "-") if "-" in str(k) else f for f in fields], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{prefix}.{k}" if prefix else str(k), "unknown key" + hint)
    kw: dict[str, Any] = {}
    for dkey, f in fields.items():
        name = f.name
        key = f"{prefix}.{dkey}" if prefix else dkey
        if dkey not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(key, "is required")
            continue
        v = data[dkey]
        if "convert" in f.metadata and v is not None:
            kw[name] = f.metadata["convert"](v, key)
            continue
        v = _convert(hints[name], v, key)
        if isinstance(v, int) and not isinstance(v, bool):
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
                raise SpecError(key, f"must be {rng} (got {v})")
        if "item" in f.metadata:
            v = [f.metadata["item"](x, f"{key}.{i}") for i, x in enumerate(v)]
        kw[name] = v
    return cls(**kw)


def to_dict(obj: Any) -> Any:
    """The plain-data form of a spec (the inverse of ``from_dict``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.metadata.get("key", f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


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
    """fly.toml's kill_timeout: an integer number of seconds or a duration such as "30s" or "1m"."""
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", v) if isinstance(v, str) else None
    if m is None:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


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
