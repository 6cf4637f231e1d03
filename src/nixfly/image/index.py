"""A multi-platform image: one :class:`~nixfly.image.model.Image` per platform, described by an OCI image
index (``--format oci``) or a Docker manifest list (``--format v2s2``).

Like an ``Image``, an ``ImageIndex`` is a value: changing its format returns a new index whose entries are
the converted images (each with its own digest), and its own bytes are canonical JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nixfly.errors import UsageError
from nixfly.image.convert import with_format
from nixfly.image.digest import sha256_digest
from nixfly.image.mediatypes import DOCKER_LIST, OCI_INDEX, ManifestFormat
from nixfly.image.model import Image, canonical_json
from nixfly.image.platform import parse_platform


@dataclass(frozen=True)
class PlatformImage:
    """One entry of an index: the platform (``linux/arm64``) and its image."""

    platform: str
    image: Image

    def platform_json(self) -> dict[str, str]:
        os_name, arch, variant = parse_platform(self.platform)
        p = {"architecture": arch, "os": os_name}
        if variant:
            p["variant"] = variant
        return p


@dataclass(frozen=True)
class ImageIndex:
    """Images for several platforms under one digest. Every image must be in the index's format."""

    entries: tuple[PlatformImage, ...]
    format: ManifestFormat = "oci"
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for e in self.entries:
            if e.platform in seen:
                raise UsageError(f"platform {e.platform} is given twice; an index holds one image per platform")
            seen.add(e.platform)
        if not self.entries:
            raise UsageError("an image index needs at least one platform")

    @property
    def media_type(self) -> str:
        return OCI_INDEX if self.format == "oci" else DOCKER_LIST

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(e.platform for e in self.entries)

    def images(self) -> tuple[Image, ...]:
        return tuple(e.image for e in self.entries)

    def manifest_bytes(self) -> bytes:
        manifests = []
        for e in self.entries:
            raw = e.image.manifest_bytes()
            manifests.append({
                "mediaType": e.image.media_type,
                "digest": sha256_digest(raw),
                "size": len(raw),
                "platform": e.platform_json(),
            })  # fmt: skip
        idx: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type, "manifests": manifests}
        if self.annotations and self.format == "oci":
            idx["annotations"] = dict(self.annotations)
        return canonical_json(idx)

    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest_bytes())

    def image_for(self, platform: str) -> Image | None:
        for e in self.entries:
            if e.platform == platform:
                return e.image
        return None


def index_with_format(index: ImageIndex, fmt: ManifestFormat) -> ImageIndex:
    """``index`` as an OCI index or a Docker manifest list: every image converted to ``fmt`` (new digests,
    so a new index digest); annotations exist only in OCI."""
    if fmt == index.format:
        return index
    entries = tuple(PlatformImage(e.platform, with_format(e.image, fmt)) for e in index.entries)
    return ImageIndex(entries, fmt, index.annotations if fmt == "oci" else {})
