"""Software bills of materials from a Nix closure: SPDX 2.3 and CycloneDX 1.6 JSON.

``from_build`` uses the exact closure a build resolved; ``from_image`` works from an image alone (the
store paths and references its layers show, completed from the local Nix store when it holds them).
``render`` turns either into the bytes of one format.
"""

from __future__ import annotations

from nixfly.sbom.model import (
    FORMATS,
    MEDIA_TYPES,
    ImageFile,
    Package,
    Sbom,
    SbomFormat,
    Subject,
    format_of_media_type,
)
from nixfly.sbom.sources import from_build, from_image, subject_of


def render(sbom: Sbom, fmt: SbomFormat) -> bytes:
    """The SBOM as SPDX or CycloneDX JSON bytes (validated by the format's own library first)."""
    if fmt == "spdx":
        from nixfly.sbom.spdx import to_spdx

        return to_spdx(sbom)
    from nixfly.sbom.cyclonedx import to_cyclonedx

    return to_cyclonedx(sbom)


__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "ImageFile",
    "Package",
    "Sbom",
    "SbomFormat",
    "Subject",
    "format_of_media_type",
    "from_build",
    "from_image",
    "render",
    "subject_of",
]
