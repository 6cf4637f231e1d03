"""The image model every source produces and every sink consumes.

An :class:`Image` is config bytes plus an ordered tuple of :class:`Layer` s, in one manifest format. A
layer is known by its media type, the digest and size of its *compressed* blob (what a registry stores),
its ``diff_id`` (digest of the uncompressed tar, what the config lists) and two readers: ``compressed()``
and ``uncompressed()``, each verifying what it returns. Optional capabilities are small protocols a sink
may ask for — :class:`LocalBlob` (the blob is a trusted file: hard-link it) and :class:`Mountable` (the
blob lives in a registry repository: mount it) — so no sink asks where an image came from.

Changing an image (its format, its layers) returns a new image with its own digest
(:func:`nixfly.image.convert.with_format`); sinks write exactly the manifest they are given.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable

from nixfly.errors import ImageError
from nixfly.fsutil import NestingError, load_json
from nixfly.image.compression import decompressing_reader
from nixfly.image.digest import VerifyingReader, sha256_digest
from nixfly.image.mediatypes import (
    Compression,
    ManifestFormat,
    compression_of,
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
    """One filesystem layer. ``digest``/``size`` describe the compressed blob ``compressed()`` returns.

    ``compressed()`` raises ImageError at end of stream if the bytes do not match ``digest``/``size``;
    ``uncompressed()`` likewise for ``diff_id`` (and ``uncompressed_size`` when known)."""

    @property
    def media_type(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def diff_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def uncompressed_size(self) -> int | None: ...

    @property
    def compression(self) -> Compression: ...

    def compressed(self) -> BinaryIO: ...

    def uncompressed(self) -> BinaryIO: ...


@runtime_checkable
class LocalBlob(Protocol):
    """A layer whose blob is a trusted file on disk (the layer cache): sinks may hard-link it."""

    @property
    def blob_path(self) -> Path: ...


@dataclass(frozen=True)
class BlobOrigin:
    """Where a registry blob lives: a repository on a registry host."""

    registry: str
    repository: str


@runtime_checkable
class Mountable(Protocol):
    """A layer that lives in a registry repository: a push to the same registry can mount it."""

    @property
    def origin(self) -> BlobOrigin: ...


@dataclass(frozen=True)
class LayerWrapper:
    """Delegates every member of the :class:`Layer` protocol to ``inner``; subclasses override what they
    change (the media type, the reader). Optional capabilities are not delegated: say so explicitly."""

    inner: Layer

    @property
    def media_type(self) -> str:
        return self.inner.media_type

    @property
    def digest(self) -> str:
        return self.inner.digest

    @property
    def diff_id(self) -> str:
        return self.inner.diff_id

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def uncompressed_size(self) -> int | None:
        return self.inner.uncompressed_size

    @property
    def compression(self) -> Compression:
        return self.inner.compression

    def compressed(self) -> BinaryIO:
        return self.inner.compressed()

    def uncompressed(self) -> BinaryIO:
        return uncompressed_reader(cast(Layer, self))


def uncompressed_reader(layer: Layer) -> BinaryIO:
    """``layer``'s tar stream: its compressed blob (verified) decompressed, checked against ``diff_id``."""

    raw = layer.compressed()
    plain = raw if layer.compression == "none" else decompressing_reader(layer.compression, raw)
    verified = VerifyingReader(plain, layer.diff_id, layer.uncompressed_size, what=f"layer {layer.digest} (diff_id)")
    return cast(BinaryIO, verified)


class LayerBase:
    """Shared behaviour for concrete layers: compression from the media type, the verified tar stream."""

    media_type: str
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int | None

    @property
    def compression(self) -> Compression:
        return compression_of(self.media_type)

    def compressed(self) -> BinaryIO:
        return cast(BinaryIO, VerifyingReader(self._open_raw(), self.digest, self.size, what=f"layer {self.digest}"))

    def uncompressed(self) -> BinaryIO:
        return uncompressed_reader(cast(Layer, self))

    def _open_raw(self) -> BinaryIO:
        raise NotImplementedError


def _default_media_type(compression: Compression) -> str:
    return layer_type("oci", compression)


def _open_blob_file(path: Path, digest: str) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as e:
        raise ImageError(f"cannot read layer blob {digest} at {path}: {e.strerror}") from None


@dataclass(frozen=True)
class FileLayer(LayerBase):
    """A layer blob in a file we did not write ourselves (an OCI layout): read and verified, never linked."""

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str
    uncompressed_size: int | None = None

    def _open_raw(self) -> BinaryIO:
        return _open_blob_file(self.path, self.digest)


@dataclass(frozen=True)
class BlobLayer(LayerBase):
    """A layer whose compressed blob is a file nixfly wrote and named by its digest (the layer cache).
    Its media type is the OCI type of ``compression``; another format's is a conversion of the image."""

    path: Path
    digest: str
    diff_id: str
    size: int
    compression: Compression = "gzip"
    uncompressed_size: int | None = None
    store_paths: tuple[str, ...] = ()
    comment: str = ""

    @property
    def media_type(self) -> str:  # type: ignore[override]
        return _default_media_type(self.compression)

    @property
    def blob_path(self) -> Path:
        return self.path

    def _open_raw(self) -> BinaryIO:
        return _open_blob_file(self.path, self.digest)


@dataclass(frozen=True)
class BytesLayer(LayerBase):
    """A small layer held in memory (tests, generated files)."""

    data: bytes = field(repr=False)
    digest: str
    diff_id: str
    media_type: str
    uncompressed_size: int | None = None

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def _open_raw(self) -> BinaryIO:
        return io.BytesIO(self.data)


@dataclass(frozen=True)
class Image:
    """Config bytes plus ordered layers, in one manifest format. ``raw_manifest`` keeps a source's exact
    manifest bytes so that copying an image we did not build preserves its digest."""

    config_bytes: bytes
    layers: tuple[Layer, ...]
    format: ManifestFormat = "oci"
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw_manifest: bytes | None = None

    @property
    def config(self) -> dict[str, Any]:
        try:
            cfg = load_json(self.config_bytes)  # a NestingError is a ValueError
        except (ValueError, UnicodeDecodeError):
            raise ImageError("the image config is not valid JSON") from None
        if not isinstance(cfg, dict):
            raise ImageError("the image config is not a JSON object")
        return cfg

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config_bytes)

    @property
    def media_type(self) -> str:
        """The manifest's media type."""
        return manifest_type(self.format)

    def config_descriptor(self) -> Descriptor:
        return Descriptor(config_type(self.format), self.config_digest, len(self.config_bytes))

    def layer_descriptors(self) -> list[Descriptor]:
        return [Descriptor(lyr.media_type, lyr.digest, lyr.size) for lyr in self.layers]

    def manifest_bytes(self) -> bytes:
        if self.raw_manifest is not None:
            return self.raw_manifest
        m: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config_descriptor().to_json(),
            "layers": [d.to_json() for d in self.layer_descriptors()],
        }
        if self.annotations and self.format == "oci":
            m["annotations"] = dict(self.annotations)
        return canonical_json(m)

    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest_bytes())

    def manifest_media_type(self) -> str:
        return self.media_type

    def with_layers(self, layers: tuple[Layer, ...]) -> Image:
        """The same image with other layer objects (same blobs, e.g. wrapped for progress): the manifest
        bytes are kept, so the digest is too."""
        return Image(self.config_bytes, layers, self.format, self.annotations, self.raw_manifest)


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and shape-check a single-image manifest (OCI or Docker v2s2)."""
    try:
        m = load_json(raw)
    except NestingError as e:
        raise ImageError(f"{where}: manifest is {e}") from None
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{where}: manifest is not valid JSON") from None
    if not isinstance(m, dict) or not isinstance(m.get("config"), dict) or not isinstance(m.get("layers"), list):
        raise ImageError(f"{where}: manifest has no config/layers")
    if not all(isinstance(d, dict) for d in m["layers"]):
        raise ImageError(f"{where}: manifest has a layer descriptor that is not an object")
    mt = m.get("mediaType")
    if mt is None:
        m["mediaType"] = manifest_type("oci")
    format_of_manifest(str(m["mediaType"]))
    return m
