"""Image sinks: an OCI layout, a docker-archive (file or stdout), a registry. Each writes exactly the image
it is given and says which digest it wrote; none asks where the image came from.

:func:`open_sink` picks the sink for a location; :func:`publish` is the one path ``build``, ``push``,
``copy``, ``pull`` and ``deploy --build`` share: choose the format once (:func:`format_for`), convert the
image if needed (a new image, a new digest), then write it to every destination.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from nixfly.errors import UsageError
from nixfly.fsutil import refuse_nix_store
from nixfly.image.convert import with_format
from nixfly.image.mediatypes import ManifestFormat
from nixfly.transports import ArchiveLocation, LayoutLocation, Location, RegistryLocation

if TYPE_CHECKING:
    from nixfly.image import Image
    from nixfly.image.index import ImageIndex
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.sinks.registry import EarlyUploads, PushProgress, PushResult

@dataclass(frozen=True)
class Written:
    """What a sink wrote: the manifest digest, where, and (for a registry) the push's details."""

    digest: str
    location: str
    reference: str  # name@sha256:… for a registry; LOCATION@sha256:… otherwise
    push: PushResult | None = field(default=None, compare=False)


class Sink(Protocol):
    def write(self, image: Image) -> Written: ...


@dataclass(frozen=True)
class LayoutSink:
    location: LayoutLocation

    def write(self, image: Image) -> Written:
        from nixfly.sinks.layout import write_layout

        digest = write_layout(image, self.location)
        return Written(digest, str(self.location), f"{self.location}@{digest}")


@dataclass(frozen=True)
class ArchiveSink:
    location: ArchiveLocation

    def write(self, image: Image) -> Written:
        from nixfly.sinks.archive import write_archive

        write_archive(image, self.location)
        digest = image.manifest_digest()
        return Written(digest, str(self.location), f"{self.location}@{digest}")


@dataclass(frozen=True)
class RegistrySink:
    """One push to several tags/repositories at once (blobs go once per repository)."""

    references: tuple[str, ...]
    options: RegistryOptions | None = None
    mount_from: tuple[str, ...] = ()
    progress: PushProgress | None = None
    early: EarlyUploads | None = None  # blobs a build already started sending to one of the references
    clients: Mapping[str, RegistryClient] | None = None  # the caller's, one per registry (kept open)

    def write(self, image: Image) -> Written:
        from nixfly.sinks.registry import push_image

        result = push_image(
            image, list(self.references), options=self.options, mount_from=self.mount_from, progress=self.progress,
            early=self.early, clients=self.clients,
        )
        return Written(result.digest, ", ".join(result.references), result.reference, result)


def open_sink(
    location: Location,
    options: RegistryOptions | None = None,
    *,
    mount_from: Sequence[str] = (),
    progress: PushProgress | None = None,
) -> Sink:
    """The sink that writes to ``location``."""
    if isinstance(location, LayoutLocation):
        refuse_nix_store(location.path, "output")
        return LayoutSink(location)
    if isinstance(location, ArchiveLocation):
        if location.path is not None:
            refuse_nix_store(location.path, "output")
        return ArchiveSink(location)
    return RegistrySink((location.reference,), options, tuple(mount_from), progress)


def format_for(locations: Sequence[Location], image: Image, requested: ManifestFormat | None = None) -> ManifestFormat:
    """The manifest format an image is published in: ``requested``, else Docker v2s2 when any destination
    is registry.fly.io (Fly's image lookup breaks on OCI indexes and attestations) or a host listed in
    ``$NIXFLY_V2S2_REGISTRIES`` (comma-separated; for mirrors of it), else the image's own."""
    if requested is not None:
        return requested
    if fly_like_destinations(locations):
        return "v2s2"
    return image.format


def fly_like_destinations(locations: Sequence[Location]) -> list[str]:
    """The registry destinations that are registry.fly.io or a host in ``$NIXFLY_V2S2_REGISTRIES``."""
    from nixfly.registry.auth import FLY_REGISTRY
    from nixfly.registry.reference import parse_reference

    v2s2_hosts = {FLY_REGISTRY, *(h.strip() for h in os.environ.get("NIXFLY_V2S2_REGISTRIES", "").split(",") if h)}
    return [
        loc.reference
        for loc in locations
        if isinstance(loc, RegistryLocation) and parse_reference(loc.reference).registry in v2s2_hosts
    ]


def check_index_destinations(locations: Sequence[Location], *, allow_index: bool, platform: str) -> None:
    """The one place that says where a multi-platform index cannot go (asked before anything is built): a
    docker-archive holds one image, and registry.fly.io (or a host of ``$NIXFLY_V2S2_REGISTRIES``) cannot
    look images up through an index, so pushing one there needs ``allow_index``."""
    for loc in locations:
        if isinstance(loc, ArchiveLocation):
            raise UsageError(
                f"{loc}: a docker-archive holds one image, not a multi-platform index; write oci:DIR, "
                "or build one platform with --platform OS/ARCH"
            )
    fly = fly_like_destinations(locations)
    if fly and not allow_index:
        raise UsageError(
            f"{fly[0]}: Fly's registry cannot run images through a multi-platform index; push one platform "
            f"(nixfly build --platform {platform} --push), or pass build --allow-index to push the index anyway"
        )


def publish_index(
    index: ImageIndex,
    locations: Sequence[Location],
    *,
    fmt: ManifestFormat | None = None,
    options: RegistryOptions | None = None,
    progress: PushProgress | None = None,
    allow_index: bool = False,
    clients: Mapping[str, RegistryClient] | None = None,
) -> tuple[ImageIndex, list[Written]]:
    """Write a multi-platform ``index`` to every location in one format (an OCI index, or a Docker manifest
    list for v2s2), like :func:`publish`. Everything is checked before anything is written: a docker-archive
    cannot hold an index, and registry.fly.io (or a host of ``$NIXFLY_V2S2_REGISTRIES``) cannot look images
    up through one, so pushing an index there needs ``allow_index``."""
    from nixfly.image.index import index_with_format

    check_index_destinations(locations, allow_index=allow_index, platform=index.platforms[0])
    out = index_with_format(index, format_for(locations, index.entries[0].image, fmt))
    written: list[Written] = []
    for loc in locations:
        if isinstance(loc, LayoutLocation):
            from nixfly.sinks.layout import write_index_layout

            digest = write_index_layout(out, loc)
            written.append(Written(digest, str(loc), f"{loc}@{digest}"))
    remote = tuple(loc.reference for loc in locations if isinstance(loc, RegistryLocation))
    if remote:
        from nixfly.sinks.registry import push_index

        result = push_index(out, list(remote), options=options, progress=progress, clients=clients)
        written.append(Written(result.digest, ", ".join(result.references), result.reference, result))
    return out, written


def publish(
    image: Image,
    locations: Sequence[Location],
    *,
    fmt: ManifestFormat | None = None,
    options: RegistryOptions | None = None,
    mount_from: Sequence[str] = (),
    progress: PushProgress | None = None,
    early: EarlyUploads | None = None,
    clients: Mapping[str, RegistryClient] | None = None,
) -> tuple[Image, list[Written]]:
    """Write ``image`` to every location in one format; returns the image as written (converted when the
    format changed) and what each sink wrote — every digest is the same. ``early``: uploads a build started
    to one of the registry destinations (only the rest is sent there)."""
    out = with_format(image, format_for(locations, image, fmt))
    local = [loc for loc in locations if not isinstance(loc, RegistryLocation)]
    remote = tuple(loc.reference for loc in locations if isinstance(loc, RegistryLocation))
    written = [open_sink(loc).write(out) for loc in local]
    if remote:
        written.append(RegistrySink(remote, options, tuple(mount_from), progress, early, clients).write(out))
    return out, written


__all__ = ["Sink", "Written", "check_index_destinations", "format_for", "open_sink", "publish", "publish_index"]
