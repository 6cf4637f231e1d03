"""The image definition: what ``nixfly.toml`` holds and what CLI flags override.

Parsed with pydantic at the edge; every error names the file, the key and what is wrong, in one line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nixfly.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _mode(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return int(v, 8)
        except ValueError:
            raise ValueError(f"mode {v!r} is not an octal number such as \"0755\"") from None
    return v


class UserSpec(_Model):
    name: str
    uid: int = Field(ge=0)
    gid: int | None = Field(default=None, ge=0)
    home: str = "/var/empty"
    shell: str = "/bin/sh"
    gecos: str = ""
    groups: list[str] = []


class GroupSpec(_Model):
    name: str
    gid: int = Field(ge=0)
    members: list[str] = []


class DirSpec(_Model):
    path: str
    mode: int = 0o755
    uid: int = Field(default=0, ge=0)
    gid: int = Field(default=0, ge=0)

    _m = field_validator("mode", mode="before")(_mode)


class PermSpec(_Model):
    path: str | None = None
    regex: str | None = None
    uid: int | None = Field(default=None, ge=0)
    gid: int | None = Field(default=None, ge=0)
    mode: int | None = None
    uname: str | None = None
    gname: str | None = None

    _m = field_validator("mode", mode="before")(_mode)


class FileSpec(_Model):
    src: str
    dest: str


class LayersSpec(_Model):
    algorithm: Literal["popularity", "auto"] = "auto"
    max_layers: int = Field(default=100, ge=1, le=127)
    explicit: list[list[str]] = []
    roots_on_top: bool = True
    compression: Literal["gzip", "zstd"] = "gzip"
    level: int | None = None


class ContentsSpec(_Model):
    roots: bool = True  # symlink the roots' top-level directories into /
    paths: list[str] = []  # further store paths (or ./result links) to symlink into /
    priority: dict[str, int] = {}  # store path or name → priority (lower wins a conflict)


class ImageSpec(_Model):
    """The whole image definition."""

    roots: list[str] = []
    closure_file: str | None = None
    name: str | None = None
    tag: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = {}
    workdir: str | None = None
    user: str | None = None
    ports: list[str] = []
    volumes: list[str] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    stop_signal: str | None = None
    architecture: str | None = None
    os: str | None = None
    layers: LayersSpec = LayersSpec()
    contents: ContentsSpec = ContentsSpec()
    users: list[UserSpec] = []
    groups: list[GroupSpec] = []
    dirs: list[DirSpec] = []
    perms: list[PermSpec] = []
    files: list[FileSpec] = []
    tmp: bool = True
    ca_certificates: bool = True
    bin_sh: bool = False
    usr_bin_env: bool = False
    format: Literal["oci", "v2s2"] = "oci"

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        out = []
        for p in v:
            port, _, proto = str(p).partition("/")
            if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("", "tcp", "udp"):
                raise ValueError(f"port {p!r} must look like 8080 or 8080/tcp")
            out.append(f"{int(port)}/{proto or 'tcp'}")
        return out


def _loc(err: Any) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "(top level)"


def _line_of(text: str, key: str) -> int | None:
    last = key.split(".")[-1]
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith((last + " ", last + "=")) or s in (f"[{key}]", f"[[{key}]]"):
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
    prefix = "image." if "image" in data else ""
    try:
        spec = ImageSpec.model_validate(table)
    except ValidationError as e:
        err = e.errors()[0]
        key = prefix + _loc(err)
        line = _line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"{where}: {key}: {msg}") from None
    base = Path(path).resolve().parent

    def rel(p: str) -> str:
        return p if ("#" in p and not p.startswith(("/", "."))) or p.startswith("/") else str(base / p)

    return spec.model_copy(
        update={
            "roots": [rel(r) if not r.startswith(".#") else r for r in spec.roots],
            "closure_file": rel(spec.closure_file) if spec.closure_file else None,
            "files": [FileSpec(src=rel(f.src), dest=f.dest) for f in spec.files],
        }
    )
