"""Image sources: an OCI layout, a docker-archive, a registry. Each gives back an ``Image``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixfly.image import Image
from nixfly.transports import ArchiveLocation, LayoutLocation, Location

if TYPE_CHECKING:
    from nixfly.registry.client import RegistryOptions


def open_image(location: Location, options: RegistryOptions | None = None, *, platform: str | None = None) -> Image:
    """Open the image at ``location``. ``options`` (credentials, TLS, retries) and ``platform`` (which entry of
    a multi-platform index) apply to registries."""
    if isinstance(location, LayoutLocation):
        from nixfly.sources.layout import read_layout

        return read_layout(location)
    if isinstance(location, ArchiveLocation):
        from nixfly.sources.archive import read_archive

        return read_archive(location)
    from nixfly.sources.registry import open_remote_image

    return open_remote_image(location.reference, options, platform=platform)
