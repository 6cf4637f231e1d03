"""Image sinks: an OCI layout, a docker-archive (file or stdout), a registry. Each writes exactly the image
it is given and says which digest it wrote; none asks where the image came from.

:func:`open_sink` picks the sink for a location; :func:`publish` is the one path ``build``, ``push``,
``copy``, ``pull`` and ``deploy --build`` share (through ``services/ship.py``): choose the format once
(:func:`format_for`), convert the image if needed (a new image, a new digest), then write it to every
destination. What each destination takes is asked in one place, ``sinks/rules.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from nixfly.fsutil import refuse_nix_store
from nixfly.image.convert import with_format
from nixfly.image.mediatypes import ManifestFormat
from nixfly.sinks.rules import check_destinations, format_for, local, references, refuse_index
from nixfly.transports import ArchiveLocation, LayoutLocation, Location

if TYPE_CHECKING:
    from pathlib import Path

    from nixfly.image import Image
    from nixfly.image.index import ImageIndex
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.registry.reference import Reference
    from nixfly.sinks.referrers import Referrer
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

    def write_index(self, index: ImageIndex) -> Written: ...


@dataclass(frozen=True)
class LayoutSink:
    location: LayoutLocation

    def write(self, image: Image) -> Written:
        from nixfly.sinks.layout import write_layout

        return self._written(write_layout(image, self.location))

    def write_index(self, index: ImageIndex) -> Written:
        from nixfly.sinks.layout import write_index_layout

        return self._written(write_index_layout(index, self.location))

    def _written(self, digest: str) -> Written:
        return Written(digest, str(self.location), f"{self.location}@{digest}")


@dataclass(frozen=True)
class ArchiveSink:
    location: ArchiveLocation

    def write(self, image: Image) -> Written:
        from nixfly.sinks.archive import write_archive

        write_archive(image, self.location)
        digest = image.manifest_digest()
        return Written(digest, str(self.location), f"{self.location}@{digest}")

    def write_index(self, index: ImageIndex) -> Written:
        refuse_index(self.location)  # one image only (publish_index asks the rules before writing anything)


@dataclass(frozen=True)
class RegistrySink:
    """One push to several tags/repositories at once (blobs go once per repository)."""

    references: tuple[Reference, ...]
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

    def write_index(self, index: ImageIndex) -> Written:
        from nixfly.sinks.registry import push_index

        result = push_index(index, list(self.references), options=self.options, progress=self.progress,
                            clients=self.clients)  # fmt: skip
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
    return RegistrySink((location.ref,), options, tuple(mount_from), progress)


def _sinks(locations: Sequence[Location], options: RegistryOptions | None, mount_from: Sequence[str],
           progress: PushProgress | None, early: EarlyUploads | None,
           clients: Mapping[str, RegistryClient] | None) -> list[Sink]:  # fmt: skip
    """The local destinations' sinks in order, then one push to every registry reference."""
    sinks = [open_sink(loc) for loc in local(locations)]
    remote = tuple(references(locations))
    if remote:
        sinks.append(RegistrySink(remote, options, tuple(mount_from), progress, early, clients))
    return sinks


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
    list for v2s2), like :func:`publish`. Everything is checked before anything is written (``rules``): a
    docker-archive cannot hold an index, and registry.fly.io (or a host of ``$NIXFLY_V2S2_REGISTRIES``) cannot
    look images up through one, so pushing an index there needs ``allow_index``."""
    from nixfly.image.index import index_with_format

    check_destinations(locations, index_platform=index.platforms[0], allow_index=allow_index)
    out = index_with_format(index, format_for(locations, index.entries[0].image, fmt))
    sinks = _sinks(locations, options, (), progress, None, clients)
    return out, [sink.write_index(out) for sink in sinks]


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
    sinks = _sinks(locations, options, mount_from, progress, early, clients)
    return out, [sink.write(out) for sink in sinks]


class ReferrerStore(Protocol):
    """Where a location keeps the artifacts attached to its images (SBOMs, signatures)."""

    def list(self, subject_digest: str) -> list[Referrer]: ...

    def fetch(self, ref: Referrer, subject_digest: str) -> bytes: ...


@dataclass(frozen=True)
class _LayoutReferrers:
    root: Path

    def list(self, subject_digest: str) -> list[Referrer]:
        from nixfly.sinks.referrers import list_layout_referrers

        return list_layout_referrers(self.root, subject_digest)

    def fetch(self, ref: Referrer, subject_digest: str) -> bytes:
        from nixfly.sinks.referrers import fetch_layout_artifact

        return fetch_layout_artifact(self.root, ref, subject_digest)


@dataclass(frozen=True)
class _RegistryReferrers:
    client: RegistryClient
    repository: str

    def list(self, subject_digest: str) -> list[Referrer]:
        from nixfly.sinks.referrers import list_registry_referrers

        return list_registry_referrers(self.client, self.repository, subject_digest)

    def fetch(self, ref: Referrer, subject_digest: str) -> bytes:
        from nixfly.sinks.referrers import fetch_registry_artifact

        return fetch_registry_artifact(self.client, self.repository, ref, subject_digest)


@contextlib.contextmanager
def open_referrers(location: Location, options: RegistryOptions | None = None, *,
                   client: RegistryClient | None = None) -> Iterator[ReferrerStore | None]:  # fmt: skip
    """The referrers of ``location``: a layout's ``index.json``, a registry repository (through ``client``, else
    one opened with ``options`` and closed afterwards); None where the location has no place for them (a
    docker-archive)."""
    ref = location.ref
    if ref is None:
        path = location.caps.path
        yield _LayoutReferrers(path) if location.caps.referrers and path is not None else None
        return
    if client is not None:
        yield _RegistryReferrers(client, ref.repository)
        return
    from nixfly.registry.client import RegistryClient

    with RegistryClient(ref.registry, options) as mine:
        yield _RegistryReferrers(mine, ref.repository)


__all__ = ["ReferrerStore", "Sink", "Written", "format_for", "open_referrers", "open_sink", "publish", "publish_index"]
