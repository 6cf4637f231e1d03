"""Image mutations: each returns a new :class:`Image` (with its own digest); nothing here writes anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nixfly.image.mediatypes import ManifestFormat, layer_type_for
from nixfly.image.model import BlobOrigin, Image, Layer, LayerWrapper, LocalBlob, Mountable


@dataclass(frozen=True)
class _Retyped(LayerWrapper):
    """``inner`` under another media type (same blob, same digest)."""

    retype: str = ""

    @property
    def media_type(self) -> str:
        return self.retype

    def uncompressed(self) -> BinaryIO:
        return self.inner.uncompressed()


@dataclass(frozen=True)
class _RetypedLocal(_Retyped):
    @property
    def blob_path(self) -> Path:
        assert isinstance(self.inner, LocalBlob)
        return self.inner.blob_path


@dataclass(frozen=True)
class _RetypedMountable(_Retyped):
    @property
    def origin(self) -> BlobOrigin:
        assert isinstance(self.inner, Mountable)
        return self.inner.origin


@dataclass(frozen=True)
class _RetypedLocalMountable(_RetypedLocal):
    """A blob both in the local cache and in a registry (a fetched base layer): link it, or mount it."""

    @property
    def origin(self) -> BlobOrigin:
        assert isinstance(self.inner, Mountable)
        return self.inner.origin


def retyped(layer: Layer, media_type: str) -> Layer:
    """``layer`` described by ``media_type``, keeping its optional capabilities."""
    if media_type == layer.media_type:
        return layer
    if isinstance(layer, LocalBlob) and isinstance(layer, Mountable):
        return _RetypedLocalMountable(layer, media_type)
    if isinstance(layer, LocalBlob):
        return _RetypedLocal(layer, media_type)
    if isinstance(layer, Mountable):
        return _RetypedMountable(layer, media_type)
    return _Retyped(layer, media_type)


def with_format(image: Image, fmt: ManifestFormat) -> Image:
    """The same image described by a manifest of format ``fmt`` (OCI or Docker v2s2): layer blobs and config
    bytes are unchanged, media types are those of ``fmt``, and so the manifest digest is a new one.
    Manifest annotations exist only in OCI; converting to v2s2 drops them."""
    if fmt == image.format:
        return image
    layers = tuple(retyped(lyr, layer_type_for(lyr.media_type, fmt)) for lyr in image.layers)
    return Image(image.config_bytes, layers, fmt, image.annotations if fmt == "oci" else {}, None)

