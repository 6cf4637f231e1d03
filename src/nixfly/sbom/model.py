"""What an SBOM says, independent of its format: the image (the described root), one package per store
path, and every non-Nix entry of the image by path.

Built from a build's exact closure (:func:`from_build`) or, for an image whose closure is not at hand,
from what its layers show (:func:`from_scan`, which says what it could not know). Everything is sorted, so
the same image always gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from nixfly.build.closure import StorePath
from nixfly.build.layers import BuiltLayer, Entry
from nixfly.sbom.nixhash import parse_drv_name, sha256_hex

SbomFormat = Literal["spdx", "cyclonedx"]
FORMATS: tuple[SbomFormat, ...] = ("spdx", "cyclonedx")
MEDIA_TYPES: dict[SbomFormat, str] = {"spdx": "application/spdx+json", "cyclonedx": "application/vnd.cyclonedx+json"}


def format_of_media_type(media_type: str) -> SbomFormat | None:
    for fmt, mt in MEDIA_TYPES.items():
        if mt == media_type:
            return fmt
    return None


@dataclass(frozen=True)
class Subject:
    """The image the SBOM describes: its manifest as pushed or written."""

    digest: str
    media_type: str
    size: int
    name: str | None = None  # e.g. the image name from nixfly.toml, for the document's title


@dataclass(frozen=True)
class Package:
    """One store path. ``path`` is the unique identifier; ``nar_hash`` is hex SHA-256 of the NAR."""

    path: str
    name: str
    version: str
    nar_hash: str | None
    nar_size: int | None
    deriver: str | None
    references: tuple[str, ...]
    root: bool = False

    @property
    def hash_part(self) -> str:
        return os.path.basename(self.path).split("-", 1)[0]


@dataclass(frozen=True)
class ImageFile:
    """A non-store entry of the image, by path only (never its contents)."""

    path: str
    kind: str  # file, dir, symlink
    origin: str  # "customisation layer", "added file", "contents link"


@dataclass(frozen=True)
class Sbom:
    subject: Subject
    created: str  # the image's `created`, RFC 3339
    packages: tuple[Package, ...]
    files: tuple[ImageFile, ...] = ()
    source: Literal["closure", "layers"] = "closure"
    notes: tuple[str, ...] = field(default=())  # what this SBOM could not know

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(p.path for p in self.packages if p.root)


def package_of(sp: StorePath, root: bool) -> Package:
    name, version = parse_drv_name(sp.name)
    return Package(
        path=sp.path,
        name=name,
        version=version,
        nar_hash=sha256_hex(sp.nar_hash) if sp.nar_hash else None,
        nar_size=sp.nar_size,
        deriver=sp.deriver,
        references=tuple(sorted(sp.references)),
        root=root,
    )


def _tree_paths(src: str, dest: str) -> list[tuple[str, str]]:
    """(image path, kind) for an added file or directory, without reading any file's bytes."""
    if os.path.islink(src) or not os.path.isdir(src):
        return [(dest, "symlink" if os.path.islink(src) else "file")]
    out = [(dest, "dir")]
    for dirpath, dirs, files in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(dirpath, src)
        base = dest if rel == "." else f"{dest.rstrip('/')}/{rel}"
        for d in list(dirs):
            full = os.path.join(dirpath, d)
            out.append((f"{base.rstrip('/')}/{d}", "symlink" if os.path.islink(full) else "dir"))
            if os.path.islink(full):
                dirs.remove(d)
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            out.append((f"{base.rstrip('/')}/{f}", "symlink" if os.path.islink(full) else "file"))
    return out


def image_files(layers: Iterable[BuiltLayer]) -> tuple[ImageFile, ...]:
    """Every non-store entry the layers add: customisation entries, added files, contents links."""
    seen: dict[str, ImageFile] = {}
    for b in layers:
        for e in b.spec.extra:
            for f in _entry_files(e, b.spec.kind):
                seen.setdefault(f.path, f)
    return tuple(sorted(seen.values(), key=lambda f: f.path))


def _entry_files(e: Entry, layer_kind: str) -> list[ImageFile]:
    if e.kind == "tree":
        return [ImageFile(p, k, "added file") for p, k in _tree_paths(e.src, e.path)]
    origin = "customisation layer" if layer_kind == "customisation" else "contents link of a root"
    return [ImageFile(e.path, e.kind, origin)]


def from_closure(
    subject: Subject,
    created: str,
    paths: Mapping[str, StorePath],
    roots: Sequence[str],
    files: Sequence[ImageFile] = (),
) -> Sbom:
    pkgs = tuple(package_of(paths[p], p in roots) for p in sorted(paths))
    notes = []
    missing = [p for p in pkgs if p.nar_hash is None]
    if missing:
        notes.append(f"{len(missing)} store paths have no NarHash in the closure metadata (no checksum listed)")
    return Sbom(subject, created, pkgs, tuple(sorted(files, key=lambda f: f.path)), notes=tuple(notes))
