"""Where an SBOM's facts come from: a build's exact closure, or an image's layers."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nixfly.errors import ClosureError, ImageError
from nixfly.image import Image
from nixfly.sbom.model import Package, Sbom, Subject, from_closure, image_files, package_of

if TYPE_CHECKING:
    from nixfly.build.pipeline import BuildResult


def subject_of(image: Image, name: str | None = None) -> Subject:
    """The image's manifest (exactly as written: convert the image first for another format) as an SBOM's
    described root."""
    return Subject(image.manifest_digest(), image.media_type, len(image.manifest_bytes()), name)


def _created(image: Image) -> str:
    try:
        created = image.config.get("created")
    except ValueError:
        raise ImageError("the image config is not valid JSON") from None
    return str(created) if created else "1970-01-01T00:00:00Z"


def from_build(result: BuildResult, subject: Subject) -> Sbom:
    """The SBOM of a build: every store path of its closure, every non-store entry of its layers."""
    closure = result.closure
    return from_closure(subject, _created(result.image), closure.paths, closure.roots, image_files(result.layers))


def from_image(image: Image, subject: Subject, store_dir: str = "/nix/store", use_local_store: bool = True) -> Sbom:
    """An SBOM for an image without its build at hand. The layers are scanned (as ``nixfly inspect`` does)
    for store paths and references; when the local Nix store holds every one of those paths, ``nix
    path-info`` supplies NarHash, NarSize and derivers. What could not be known is listed in ``notes``."""
    from nixfly.inspect import inspect_image

    report = inspect_image(image, top=1 << 30, store_dir=store_dir)
    scanned = {p.path: p for p in report.largest}
    created = _created(image)
    notes = ["non-Nix files of the image are not listed (only the build knows them)"]
    if use_local_store and scanned:
        with contextlib.suppress(ClosureError):
            from nixfly.build.closure import query_path_info

            info = query_path_info(sorted(report.top_level), store_dir)
            if set(info) == set(scanned):
                tops = set(report.top_level)
                pkgs = tuple(package_of(info[p], p in tops) for p in sorted(info))
                notes.insert(0, "store path metadata from the local Nix store (nix path-info)")
                return Sbom(subject, created, pkgs, source="layers", notes=tuple(notes))
    tops = set(report.top_level)
    pkgs = tuple(
        Package(
            path=p.path,
            name=_split(p.name)[0],
            version=_split(p.name)[1],
            nar_hash=None,
            nar_size=None,
            deriver=None,
            references=tuple(sorted(p.references)),
            root=p.path in tops,
        )
        for p in sorted(scanned.values(), key=lambda r: r.path)
    )
    notes.insert(
        0,
        "derived from the image's layers: references recovered by scanning file contents; NarHash, NarSize "
        "and derivers are unknown (the closure metadata is not in the image)",
    )
    return Sbom(subject, created, pkgs, source="layers", notes=tuple(notes))


def _split(name: str) -> tuple[str, str]:
    from nixfly.sbom.nixhash import parse_drv_name

    return parse_drv_name(name)
