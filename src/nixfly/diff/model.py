"""A closure diff in Nix terms, from two sides that each say which store paths they hold and how big
each one's NAR is — whatever told them (an attached SBOM, the layers, the local store).

Store paths present on both sides are unchanged. The rest are grouped by package name as
``builtins.parseDrvName`` splits it (``openssl-3.0.14`` → ``openssl``, ``3.0.14``): a name whose version
set changed is *changed* (``openssl 3.0.13 → 3.0.14``), a name only NEW has is *added*, one only OLD has
is *removed*, and a path whose hash changed while its name and version did not (other inputs: a
dependency moved, a patch, a flag) is *rebuilt*, counted apart. Each carries its NAR size delta.

For images, the config's user-facing fields are compared too, and the bytes a push of NEW sends to a
repository that already holds OLD: the blobs (layers, config) OLD does not have, and the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nixfly.fsutil import human_size
from nixfly.nixbase32 import STORE_HASH
from nixfly.sbom.nixhash import parse_drv_name

Source = Literal["sbom", "layers", "store"]
Kind = Literal["changed", "added", "removed", "rebuilt"]
_STORE_BASE = re.compile(rf"^{STORE_HASH}-")


def path_name(path: str) -> str:
    """``/nix/store/<hash>-openssl-3.0.14`` → ``openssl-3.0.14``."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[33:] if _STORE_BASE.match(base) else base


def split_name(path: str) -> tuple[str, str]:
    """(package name, version) of a store path, as ``builtins.parseDrvName`` splits its name."""
    return parse_drv_name(path_name(path))


@dataclass(frozen=True)
class ImageFacts:
    """What a diff needs of an image: digests and sizes of its blobs, and the config's runtime fields."""

    digest: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[tuple[str, int], ...]  # (digest, compressed size), bottom first
    config: Mapping[str, Any]  # the config's "config" object (Entrypoint, Cmd, Env, ...)

    @property
    def compressed_size(self) -> int:
        return sum(size for _d, size in self.layers)

    def blobs(self) -> dict[str, int]:
        out = dict(self.layers)
        out[self.config_digest] = self.config_size
        return out


@dataclass(frozen=True)
class Side:
    """One side of a diff: how the user named it, where its closure came from, and the closure."""

    label: str
    source: Source
    paths: Mapping[str, int]  # store path → NAR size
    image: ImageFacts | None = None
    how: str = ""  # one line on where the closure came from, when it is not the SBOM

    @property
    def closure_size(self) -> int:
        return sum(self.paths.values())

    def to_json(self) -> dict[str, Any]:
        img = self.image
        return {
            "label": self.label,
            "source": self.source,
            "how": self.how or None,
            "store_paths": len(self.paths),
            "closure_size": self.closure_size,
            "image": None if img is None else {
                "digest": img.digest, "config_digest": img.config_digest, "layers": len(img.layers),
                "compressed_size": img.compressed_size, "manifest_size": img.manifest_size,
            },
        }  # fmt: skip


@dataclass(frozen=True)
class PackageChange:
    name: str
    kind: Kind
    old_versions: tuple[str, ...]
    new_versions: tuple[str, ...]
    old_paths: tuple[str, ...]
    new_paths: tuple[str, ...]
    old_size: int  # NAR bytes of old_paths
    new_size: int

    @property
    def delta(self) -> int:
        return self.new_size - self.old_size

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "old_versions": list(self.old_versions),
            "new_versions": list(self.new_versions), "old_paths": list(self.old_paths),
            "new_paths": list(self.new_paths), "old_size": self.old_size, "new_size": self.new_size,
            "nar_size_delta": self.delta,
        }  # fmt: skip


@dataclass(frozen=True)
class ConfigChange:
    """One runtime field that differs. ``hidden``: a value that looks secret, so only its name is given."""

    field: str  # entrypoint, cmd, env, ports, user, workdir, labels, stop_signal
    key: str | None  # the env name / label key / port, for the keyed fields
    old: str | None
    new: str | None
    hidden: bool = False
    change: Literal["added", "removed", "changed"] = "changed"

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "key": self.key, "change": self.change, "old": self.old, "new": self.new,
                "hidden": self.hidden}  # fmt: skip


@dataclass(frozen=True)
class Wire:
    """What a push of NEW sends to a repository holding OLD: its blobs OLD lacks, and its manifest."""

    layers: int  # layers sent
    layer_bytes: int
    layers_total: int  # NEW's distinct layers
    config_bytes: int  # 0: OLD has the same config blob
    manifest_bytes: int

    @property
    def blob_bytes(self) -> int:
        return self.layer_bytes + self.config_bytes

    @property
    def total(self) -> int:
        return self.blob_bytes + self.manifest_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "layer_bytes": self.layer_bytes, "layers_total": self.layers_total,
            "config_bytes": self.config_bytes, "manifest_bytes": self.manifest_bytes, "blob_bytes": self.blob_bytes,
            "total": self.total,
        }  # fmt: skip


@dataclass(frozen=True)
class ClosureDiff:
    old: Side
    new: Side
    packages: tuple[PackageChange, ...]
    config: tuple[ConfigChange, ...] | None  # None: a side is not an image
    wire: Wire | None
    unchanged: int  # store paths on both sides
    notes: tuple[str, ...] = field(default=())

    def of(self, kind: Kind) -> list[PackageChange]:
        return [p for p in self.packages if p.kind == kind]

    @property
    def same_image(self) -> bool:
        o, n = self.old.image, self.new.image
        return o is not None and n is not None and o.digest == n.digest

    @property
    def closure_delta(self) -> int:
        return self.new.closure_size - self.old.closure_size

    @property
    def image_delta(self) -> int | None:
        o, n = self.old.image, self.new.image
        return None if o is None or n is None else n.compressed_size - o.compressed_size

    def counts(self) -> dict[str, int]:
        return {
            "changed": len(self.of("changed")),
            "added": len(self.of("added")),
            "removed": len(self.of("removed")),
            "rebuilt": sum(len(p.new_paths) for p in self.of("rebuilt")),
        }

    def summary(self) -> str:
        """The one line: what changed, how the closure and the image grew, what a push sends."""
        c = self.counts()
        if self.same_image:
            head = "same image"
        elif any(c.values()):
            head = ", ".join(f"{n} {k}" for k, n in c.items() if n)
        else:
            head = "no store path changed"
        parts = [head, f"closure {size(self.old.closure_size)} → {size(self.new.closure_size)} "
                       f"({signed(self.closure_delta)})"]  # fmt: skip
        delta = self.image_delta
        if delta is not None and not self.same_image:
            parts.append(f"image {signed(delta)} compressed")
        if self.wire is not None and not self.same_image:
            parts.append(f"a push sends {self.wire.layers} of {self.wire.layers_total} layers "
                         f"({size(self.wire.total)})")  # fmt: skip
        if self.config:
            fields = sorted({ch.field for ch in self.config})
            parts.append("config: " + ", ".join(fields))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "counts": {**self.counts(), "unchanged": self.unchanged},
            "packages": [p.to_json() for p in self.packages],
            "closure": {"old": self.old.closure_size, "new": self.new.closure_size, "delta": self.closure_delta,
                        "old_paths": len(self.old.paths), "new_paths": len(self.new.paths)},
            "image": None if self.image_delta is None else {
                "old": self.old.image.compressed_size if self.old.image else None,
                "new": self.new.image.compressed_size if self.new.image else None,
                "delta": self.image_delta,
            },
            "wire": None if self.wire is None else self.wire.to_json(),
            "config": None if self.config is None else [ch.to_json() for ch in self.config],
            "notes": list(self.notes),
        }


size = human_size  # the diff's name for it (a size change keeps its sign)


def signed(n: int) -> str:
    return "±0 B" if n == 0 else ("+" if n > 0 else "") + size(n)


# -- packages ---------------------------------------------------------------------------------------


def _versions(paths: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({split_name(p)[1] for p in paths}))


def _change(name: str, kind: Kind, old: list[str], new: list[str], o: Mapping[str, int],
            n: Mapping[str, int]) -> PackageChange:  # fmt: skip
    old, new = sorted(old), sorted(new)
    return PackageChange(name, kind, _versions(old), _versions(new), tuple(old), tuple(new),
                         sum(o[p] for p in old), sum(n[p] for p in new))  # fmt: skip


def diff_packages(old: Mapping[str, int], new: Mapping[str, int]) -> list[PackageChange]:
    """The package changes between two closures (store path → NAR size), sorted by name then kind."""
    split = {p: split_name(p) for p in (*(p for p in old if p not in new), *(p for p in new if p not in old))}
    by_name: dict[str, tuple[list[str], list[str]]] = {}
    for p, (name, _version) in split.items():
        by_name.setdefault(name, ([], []))[0 if p in old else 1].append(p)
    out: list[PackageChange] = []
    for name in sorted(by_name):
        olds, news = by_name[name]
        # Same name and version on both sides, another hash: rebuilt (paired in path order per version).
        rebuilt_old: set[str] = set()
        rebuilt_new: set[str] = set()
        for version in sorted({split[p][1] for p in olds} & {split[p][1] for p in news}):
            a = sorted(p for p in olds if split[p][1] == version)
            b = sorted(p for p in news if split[p][1] == version)
            k = min(len(a), len(b))
            rebuilt_old.update(a[:k])
            rebuilt_new.update(b[:k])
        rest_old = [p for p in olds if p not in rebuilt_old]
        rest_new = [p for p in news if p not in rebuilt_new]
        if rest_old and rest_new:
            out.append(_change(name, "changed", rest_old, rest_new, old, new))
        elif rest_new:
            out.append(_change(name, "added", [], rest_new, old, new))
        elif rest_old:
            out.append(_change(name, "removed", rest_old, [], old, new))
        if rebuilt_old:
            out.append(_change(name, "rebuilt", list(rebuilt_old), list(rebuilt_new), old, new))
    return out


# -- config -----------------------------------------------------------------------------------------

_SECRET_NAME = re.compile(
    r"(?i)(secret|token|passw|pwd|passphrase|credential|private|api_?key|access_?key|auth|session|cookie|"
    r"signing|salt|(^|_)key($|_)|dsn|database_url|_url_with_password)"
)
_SECRET_VALUE = re.compile(
    r"(://[^/\s:@]+:[^/\s@]+@)|(-----BEGIN)|(^(ghp_|gho_|ghs_|github_pat_|glpat-|xox[abpr]-|sk_live_|sk-|AKIA|"
    r"FlyV1 |fm[12]_|eyJ))"
)


def looks_secret(name: str, value: str) -> bool:
    """Whether an environment variable or label probably holds a credential: by its name (TOKEN, PASSWORD,
    API_KEY, …) or its value (a URL with a password, a PEM block, a well-known token prefix, a JWT)."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


def _words(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        import json

        return json.dumps([str(v) for v in value])
    return str(value)


def _env(cfg: Mapping[str, Any]) -> dict[str, str]:
    env = cfg.get("Env")
    out: dict[str, str] = {}
    for item in env if isinstance(env, list) else []:
        if isinstance(item, str):
            k, _, v = item.partition("=")
            out[k] = v
    return out


def _keys(value: Any) -> set[str]:
    return {str(k) for k in value} if isinstance(value, dict) else set()


def _labels(cfg: Mapping[str, Any]) -> dict[str, str]:
    labels = cfg.get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def diff_config(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """The runtime fields that differ between two image configs' ``config`` objects. Environment values and
    labels that look secret are named, never shown."""
    out: list[ConfigChange] = []
    for name, key in (("entrypoint", "Entrypoint"), ("cmd", "Cmd"), ("user", "User"), ("workdir", "WorkingDir"),
                      ("stop_signal", "StopSignal")):  # fmt: skip
        a, b = _words(old.get(key)) or None, _words(new.get(key)) or None
        if a != b:
            out.append(ConfigChange(name, None, a, b, False, _how(a, b)))
    for fld, a_map, b_map in (("env", _env(old), _env(new)), ("labels", _labels(old), _labels(new))):
        for k in sorted(a_map.keys() | b_map.keys()):
            a, b = a_map.get(k), b_map.get(k)
            if a != b:
                hidden = looks_secret(k, a or "") or looks_secret(k, b or "")
                out.append(ConfigChange(fld, k, None if hidden else a, None if hidden else b, hidden, _how(a, b)))
    for fld, key in (("ports", "ExposedPorts"), ("volumes", "Volumes")):
        a_set, b_set = _keys(old.get(key)), _keys(new.get(key))
        out += [ConfigChange(fld, p, p, None, False, "removed") for p in sorted(a_set - b_set)]
        out += [ConfigChange(fld, p, None, p, False, "added") for p in sorted(b_set - a_set)]
    return out


def _how(old: str | None, new: str | None) -> Literal["added", "removed", "changed"]:
    return "added" if old is None else "removed" if new is None else "changed"


# -- the whole diff ---------------------------------------------------------------------------------


def wire(old: ImageFacts, new: ImageFacts) -> Wire:
    have = old.blobs()
    layers = dict(new.layers)  # a layer listed twice goes up once
    sent = {d: s for d, s in layers.items() if d not in have}
    config = 0 if new.config_digest in have else new.config_size
    return Wire(len(sent), sum(sent.values()), len(layers), config, new.manifest_size)


def diff_sides(old: Side, new: Side) -> ClosureDiff:
    """Compare two sides: packages, config (both images), the push of NEW over OLD (both images)."""
    packages = tuple(diff_packages(old.paths, new.paths))
    unchanged = sum(1 for p in new.paths if p in old.paths)
    config = None
    pushed = None
    if old.image is not None and new.image is not None:
        config = tuple(diff_config(old.image.config, new.image.config))
        pushed = wire(old.image, new.image)
    notes = tuple(f"{side}: {s.how}" for side, s in (("OLD", old), ("NEW", new)) if s.how)
    return ClosureDiff(old, new, packages, config, pushed, unchanged, notes)
