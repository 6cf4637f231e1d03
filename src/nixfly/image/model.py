"""The image model every source produces and every sink consumes.

An :class:`Image` is an ordered list of :class:`Layer` s plus config bytes. A layer is known by the digest
of its *compressed* blob (what a registry stores), its ``diff_id`` (digest of the uncompressed tar, what the
config lists) and a way to open the blob. Sinks never ask where an image came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from nixfly.errors import ImageError
from nixfly.image.digest import sha256_digest
from nixfly.image.mediatypes import (
    Compression,
    ManifestFormat,
    config_type,
    format_of_manifest,
    layer_type,
    manifest_type,
)


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@runtime_checkable
class Layer(Protocol):
    """One filesystem layer. ``digest``/``size`` describe the compressed blob that ``open`` returns."""

    @property
    def digest(self) -> str: ...

    @property
    def diff_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def compression(self) -> Compression: ...

    def open(self) -> BinaryIO: ...


@dataclass(frozen=True)
class BlobLayer:
    """A layer whose compressed blob is a file on disk (the layer cache, an OCI layout)."""

    path: Path
    digest: str
    diff_id: str
    size: int
    compression: Compression
    uncompressed_size: int | None = None
    store_paths: tuple[str, ...] = ()
    comment: str = ""

    def open(self) -> BinaryIO:
        try:
            return self.path.open("rb")
        except OSError as e:
            raise ImageError(f"cannot read layer blob {self.digest} at {self.path}: {e.strerror}") from None


@dataclass(frozen=True)
class Image:
    """Config bytes plus ordered layers. ``raw_manifest`` keeps a source's exact manifest bytes so that
    copying an image we did not build preserves its digest."""

    config_bytes: bytes
    layers: tuple[Layer, ...]
    format: ManifestFormat = "oci"
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw_manifest: bytes | None = None

    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(self.config_bytes)
        return cfg

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config_bytes)

    def config_descriptor(self, fmt: ManifestFormat | None = None) -> Descriptor:
        return Descriptor(config_type(fmt or self.format), self.config_digest, len(self.config_bytes))

    def layer_descriptors(self, fmt: ManifestFormat | None = None) -> list[Descriptor]:
        f = fmt or self.format
        return [Descriptor(layer_type(f, lyr.compression), lyr.digest, lyr.size) for lyr in self.layers]

    def manifest_bytes(self, fmt: ManifestFormat | None = None) -> bytes:
        f = fmt or self.format
        if self.raw_manifest is not None and f == self.format:
            return self.raw_manifest
        m: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": manifest_type(f),
            "config": self.config_descriptor(f).to_json(),
            "layers": [d.to_json() for d in self.layer_descriptors(f)],
        }
        if self.annotations and f == "oci":
            m["annotations"] = dict(self.annotations)
        return canonical_json(m)

    def manifest_digest(self, fmt: ManifestFormat | None = None) -> str:
        return sha256_digest(self.manifest_bytes(fmt))

    def manifest_media_type(self, fmt: ManifestFormat | None = None) -> str:
        return manifest_type(fmt or self.format)

    def with_format(self, fmt: ManifestFormat) -> Image:
        """The same image described by another manifest format (layer blobs are unchanged)."""
        if fmt == self.format:
            return self
        return Image(self.config_bytes, self.layers, fmt, self.annotations, None)



def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and shape-check a single-image manifest (OCI or Docker v2s2)."""
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{where}: manifest is not valid JSON") from None
    if not isinstance(m, dict) or not isinstance(m.get("config"), dict) or not isinstance(m.get("layers"), list):
        raise ImageError(f"{where}: manifest has no config/layers")
    mt = m.get("mediaType")
    if mt is None:
        m["mediaType"] = manifest_type("oci")
    format_of_manifest(str(m["mediaType"]))
    return m
