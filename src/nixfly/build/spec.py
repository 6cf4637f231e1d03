"""The image definition: what ``nixfly.toml`` holds and what CLI flags override.

Plain frozen dataclasses with a small explicit validator (no pydantic: it costs a quarter of a second
at start-up, which is most of a no-change rebuild). Every error names the file, line, key and problem.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from nixfly.errors import ConfigError, UsageError

T = TypeVar("T")


class SpecError(ValueError):
    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key
        self.msg = msg


def _octal_mode(v: Any, key: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise SpecError(key, f'mode {v!r} is not an octal number such as "0755"') from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o7777:
        raise SpecError(key, "must be a mode between 0 and 07777")
    return v


def _port(v: str, key: str) -> str:
    port, _, proto = str(v).partition("/")
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("", "tcp", "udp"):
        raise SpecError(key, f"port {v!r} must look like 8080 or 8080/tcp")
    return f"{int(port)}/{proto or 'tcp'}"


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
    level: int | None = None


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
    architecture: str | None = None
    os: str | None = None
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
            raise SpecError(f"{prefix}.{k}" if prefix else str(k), "unknown key")
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


def validate_spec(data: dict[str, Any]) -> ImageSpec:
    """An ImageSpec from plain data (CLI flags merged over a file); bad values are a UsageError."""
    try:
        return from_dict(ImageSpec, data)
    except SpecError as e:
        raise UsageError(f"{e.key}: {e.msg}") from None


def _line_of(text: str, key: str) -> int | None:
    parts = [p for p in key.split(".") if not p.isdigit()]
    last = parts[-1]
    table = ".".join(parts[:-1])
    in_table = table == "" or table == "image"
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("["):
            name = s.strip("[]").strip()
            in_table = name in (table, f"image.{table}") or (table == "" and name == "image")
            if s in (f"[{key}]", f"[[{key}]]"):
                return i
            continue
        if in_table and s.split("=", 1)[0].strip() == last:
            return i
    return None


def load_spec(path: Path) -> ImageSpec:
    """Load ``nixfly.toml``; the ``[image]`` table (or the top level) is the image definition.
    Relative paths in ``roots``, ``closure_file`` and ``files.src`` are relative to the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    table = data.get("image", data)
    prefix = "image" if "image" in data else ""
    try:
        spec = from_dict(ImageSpec, table, prefix)
    except SpecError as e:
        line = _line_of(text, e.key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {e.key}: {e.msg}") from None
    base = Path(path).resolve().parent

    def rel(p: str) -> str:
        return p if p.startswith("/") or ("#" in p and not p.startswith(".")) else str(base / p)

    return dataclasses.replace(
        spec,
        roots=[r if r.startswith(".#") else rel(r) for r in spec.roots],
        closure_file=rel(spec.closure_file) if spec.closure_file else None,
        files=[FileSpec(src=rel(f.src), dest=f.dest) for f in spec.files],
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
