"""Which destination takes what: the one place that asks the locations' capabilities
(:class:`nixfly.transports.Capabilities`) — as containers/image's copy engine asks each destination which
manifest types it accepts and whether it holds signatures.

- the format: the one asked for, else the one a destination declares (Docker v2s2 for registry.fly.io and the
  hosts of ``$NIXFLY_V2S2_REGISTRIES``), else the image's own;
- an index: not into a destination that holds one image (a docker-archive), and not to a Fly-like registry
  unless allowed (``--allow-index``);
- an SBOM: attached where referrers can be held (a layout, a registry); a docker-archive gets a note, and an
  SBOM asked for explicitly with nowhere to go is refused;
- stdout: written by at most one destination, and by none when the command prints its own result there;
- a local file or directory (build's ``-o``): writable as what it is (a layout's directory, an archive's file).

Every check runs before anything is built, read or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from nixfly.errors import UsageError
from nixfly.transports import Location

if TYPE_CHECKING:
    from nixfly.image import Image
    from nixfly.image.mediatypes import ManifestFormat
    from nixfly.registry.reference import Reference

# Who else writes to stdout: nobody ("free"), the command's --json document, or its printed result.
Stdout = Literal["free", "json", "result"]


def references(locations: Sequence[Location]) -> list[Reference]:
    """The registry destinations' references, in order."""
    return [loc.ref for loc in locations if loc.ref is not None]


def pushed_to(ref: Reference, locations: Sequence[Location]) -> bool:
    """Whether one of ``locations`` is on ``ref``'s registry: only then may an image read from ``ref`` (a
    base, a push's registry source) be read with the push's own credentials, never sent to another host."""
    return any(r.registry == ref.registry for r in references(locations))


def local(locations: Sequence[Location]) -> list[Location]:
    """The destinations on this machine (layouts, archives), in order."""
    return [loc for loc in locations if loc.ref is None]


def fly_like(locations: Sequence[Location]) -> list[Reference]:
    """The destinations that are registry.fly.io or a host of ``$NIXFLY_V2S2_REGISTRIES``."""
    return [loc.ref for loc in locations if loc.caps.fly_like and loc.ref is not None]


def format_for(locations: Sequence[Location], image: Image, requested: ManifestFormat | None = None) -> ManifestFormat:
    """The manifest format an image is published in: ``requested``, else the first a destination declares
    (v2s2 for Fly-like registries), else the image's own."""
    if requested is not None:
        return requested
    return next((loc.caps.format for loc in locations if loc.caps.format is not None), image.format)


def check_destinations(
    locations: Sequence[Location],
    *,
    index_platform: str | None = None,
    allow_index: bool = False,
    sbom: str | None = None,
    stdout: Stdout = "free",
    paths: bool = False,
) -> None:
    """Every rule about what the destinations take, asked before anything is built or written.
    ``index_platform``: an index is published (its first platform, for the advice); ``sbom``: the SBOM kind
    asked for explicitly (a default one goes where it can, with a note elsewhere); ``stdout``: who else writes
    there; ``paths``: the local destinations' paths are checked too (build's ``-o``, before a build; copy and
    pull let the sink say)."""
    _check_stdout(locations, stdout)
    for loc in local(locations) if paths else ():
        _check_writable(loc)
    if index_platform is not None:
        _check_index(locations, allow_index, index_platform)
    if sbom in ("spdx", "cyclonedx") and locations and not any(loc.caps.referrers for loc in locations):
        raise UsageError(
            f"{locations[0]}: a docker-archive has no place for an SBOM (an OCI referrer); write oci:DIR or push "
            "to a registry to attach one, or pass --sbom none"
        )


def _check_stdout(locations: Sequence[Location], stdout: Stdout) -> None:
    outs = [loc for loc in locations if loc.caps.stdio]
    if len(outs) > 1:
        raise UsageError("only one destination can write to stdout (-)")
    if outs and stdout == "json":
        raise UsageError("-o - writes the archive to stdout; it cannot be combined with --json")
    if outs and stdout == "result":
        raise UsageError("writing an archive to stdout is not supported here; give a file")


def _check_writable(loc: Location) -> None:
    """A layout's directory must be one (or not exist yet); an archive's file must not be a directory and its
    directory must exist."""
    path = loc.caps.path
    if path is None:
        return
    if loc.caps.directory:
        if path.exists() and not path.is_dir():
            raise UsageError(f"-o oci:{path}: {path} exists and is not a directory")
        return
    if path.is_dir():
        raise UsageError(f"-o docker-archive:{path}: {path} is a directory")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"-o docker-archive:{path}: directory {parent} does not exist")


def _check_index(locations: Sequence[Location], allow_index: bool, platform: str) -> None:
    for loc in locations:
        if not loc.caps.index:
            refuse_index(loc)
    fly = fly_like(locations)
    if fly and not allow_index:
        raise UsageError(
            f"{fly[0]}: Fly's registry cannot run images through a multi-platform index; push one "
            f"platform (nixfly build --platform {platform} --push), or pass build --allow-index to push the index "
            "anyway"
        )


def refuse_index(loc: Location) -> NoReturn:
    """The refusal of an index for a destination that holds one image (a docker-archive)."""
    raise UsageError(
        f"{loc}: a docker-archive holds one image, not a multi-platform index; write oci:DIR, "
        "or build one platform with --platform OS/ARCH"
    )


def referrer_places(locations: Sequence[Location]) -> tuple[list[Path], list[Reference], list[str]]:
    """Where artifacts attached to the image (the SBOM) go: the layouts' directories, the registry references,
    and a note for each destination that has no place for them."""
    layouts: list[Path] = []
    notes: list[str] = []
    for loc in local(locations):
        if loc.caps.referrers and loc.caps.path is not None:
            layouts.append(loc.caps.path)
        else:
            notes.append("the SBOM is not written into a docker-archive (it has no place for referrers)")
    return layouts, references(locations), notes


__all__ = [
    "Stdout", "check_destinations", "fly_like", "format_for", "local", "references", "referrer_places", "refuse_index",
]  # fmt: skip
