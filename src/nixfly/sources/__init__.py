"""Image sources: an OCI layout, a docker-archive, a registry. Each gives back an ``Image``."""

from __future__ import annotations

from typing import Any

from nixfly.image import Image
from nixfly.transports import ArchiveLocation, LayoutLocation, Location, RegistryLocation


def open_image(location: Location, **registry_options: Any) -> Image:
    """Open the image at ``location``. Registry options (credentials, TLS) go to the registry source."""
    if isinstance(location, LayoutLocation):
        from nixfly.sources.layout import read_layout

        return read_layout(location)
    if isinstance(location, ArchiveLocation):
        from nixfly.sources.archive import read_archive

        return read_archive(location)
    assert isinstance(location, RegistryLocation)
    from nixfly.sources.registry import open_remote_image

    return open_remote_image(location.reference, **registry_options)
