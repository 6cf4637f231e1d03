"""Image sources: an OCI layout, a docker-archive, a registry. Each gives back an ``Image``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from nixfly.image import Image
from nixfly.transports import ArchiveLocation, LayoutLocation, Location

if TYPE_CHECKING:
    from nixfly.registry.client import RegistryOptions


class ReadProgress(Protocol):
    """Bytes read from a source as they are read: a task (``what``, its total when known), then its bytes."""

    def start(self, what: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


def open_image(
    location: Location,
    options: RegistryOptions | None = None,
    *,
    platform: str | None = None,
    progress: ReadProgress | None = None,
) -> Image:
    """Open the image at ``location``. ``options`` (credentials, TLS, retries) apply to registries;
    ``platform`` (``linux/arm64``; default: this machine's) picks the entry of a multi-platform index.
    ``progress`` hears a docker-archive's bytes as it is read whole (a layout or a registry image is read
    lazily, when it is written somewhere)."""
    if isinstance(location, LayoutLocation):
        from nixfly.sources.layout import read_layout

        return read_layout(location, platform)
    if isinstance(location, ArchiveLocation):
        from nixfly.sources.archive import read_archive

        if progress is None:
            return read_archive(location)
        path = location.path
        total = path.stat().st_size if path is not None and not location.run and path.is_file() else None
        progress.start("reading archive", total)
        return read_archive(location, on_bytes=progress.advance)
    from nixfly.sources.registry import open_remote_image

    return open_remote_image(location.ref, options, platform=platform)
