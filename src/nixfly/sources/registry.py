"""A registry as an image source: :func:`open_remote_image` gives an ``Image`` whose layers stream lazily.

Only the manifest and the config are fetched up front. Each layer's ``open()`` streams its blob from the
registry, hashing as it reads: reaching the end with the wrong digest or size raises instead of returning
bad bytes, and a dropped connection is resumed with a ``Range`` request (under :mod:`nixfly.retry`, like every request).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import httpx

from nixfly.errors import ImageError, NixflyError, RegistryError
from nixfly.fsutil import load_json
from nixfly.image import Image
from nixfly.image.digest import CheckedBy, CheckedReader, check_digest
from nixfly.image.mediatypes import INDEX_TYPES, MANIFEST_TYPES, Compression, compression_of, format_of_manifest
from nixfly.image.model import BlobOrigin, uncompressed_reader
from nixfly.image.platform import choose_platform, entry_platforms, host_platform
from nixfly.registry.client import Manifest, RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference, parse_reference
from nixfly.registry.wire import IO_CHUNK


@dataclass(frozen=True)
class RemoteLayer:
    """A layer blob in a registry repository. ``compressed()`` streams and verifies it; a push to the same
    registry can mount it from ``origin``."""

    client: RegistryClient = field(repr=False, compare=False)
    repository: str
    digest: str
    diff_id: str
    size: int
    media_type: str
    uncompressed_size: int | None = None

    @property
    def compression(self) -> Compression:
        return compression_of(self.media_type)

    @property
    def origin(self) -> BlobOrigin:
        return BlobOrigin(self.client.registry, self.repository)

    def compressed(self) -> BinaryIO:
        return _CheckedBufferedReader(_VerifyingBlobReader(self), IO_CHUNK)

    def uncompressed(self) -> BinaryIO:
        return uncompressed_reader(self)


class _CheckedBufferedReader(CheckedBy, io.BufferedReader):
    """The buffered blob stream, still a ``CheckedReader``: an upload of it (a copy to another registry)
    trusts its check instead of hashing every byte a second time."""

    def _checked_by(self) -> CheckedReader:
        return cast(_VerifyingBlobReader, self.raw)


class _VerifyingBlobReader(io.RawIOBase):
    """Reads one blob; resumes after connection drops; raises at the end if digest or size is wrong."""

    def __init__(self, layer: RemoteLayer) -> None:
        super().__init__()
        self._layer = layer
        self._hash = hashlib.sha256()
        self._pos = 0
        self._resp: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._done = False
        self.verified = False  # the end was read and the bytes matched the digest and size
        self.expected_digest = layer.digest

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        """The next piece of the body, under the client's retry policy (one loop: reconnecting from the
        current offset is part of the attempt)."""
        lyr = self._layer
        return lyr.client.policy.run(
            self._attempt,
            on_retry=lyr.client.retry_notice,
            give_up=lambda t, n: lyr.client.fail(f"reading blob {lyr.digest} failed after {n} attempts: {t.what}"),
        )

    def _attempt(self) -> bytes:
        lyr = self._layer
        if self._chunks is None:
            self._resp = lyr.client.open_blob(lyr.repository, lyr.digest, self._pos)
            self._chunks = self._resp.iter_raw(IO_CHUNK)
        try:
            return next(self._chunks, b"")
        except httpx.HTTPError as e:
            self._drop()
            raise lyr.client.read_failure(e, lyr.digest) from None

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp, self._chunks = None, None

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        if not self._buf:
            self._buf = self._next_chunk()
            if not self._buf:
                self._finish()
                return 0
            self._hash.update(self._buf)
            self._pos += len(self._buf)
            if self._pos > self._layer.size:
                self._drop()
                raise RegistryError(
                    f"registry {self._layer.client.registry}: blob {self._layer.digest} is longer than "
                    f"its declared {self._layer.size} bytes"
                )
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _finish(self) -> None:
        self._done = True
        self._drop()
        lyr = self._layer
        got = "sha256:" + self._hash.hexdigest()
        if self._pos != lyr.size or got != lyr.digest:
            raise RegistryError(
                f"registry {lyr.client.registry}: blob {lyr.digest} from {lyr.repository} does not match its "
                f"digest or size ({self._pos} bytes, expected {lyr.size})"
            )
        self.verified = True

    def close(self) -> None:
        self._drop()
        super().close()


def resolve_manifest(client: RegistryClient, ref: Reference, want_platform: str | None = None) -> Manifest:
    """The single-image manifest ``ref`` names, choosing the platform's entry from an index/list."""
    m = client.get_manifest(ref.repository, ref.identifier)
    if m.media_type in INDEX_TYPES:
        want = want_platform or host_platform()
        index = m.json()
        entries: list[dict[str, object]] = [e for e in index.get("manifests", []) if isinstance(e, dict)]
        chosen = choose_platform(entries, want)
        if chosen is None:
            have = ", ".join(entry_platforms(entries)) or "none"
            raise client.fail(f"{ref} has no image for {want} (it has: {have})")
        m = client.get_manifest(ref.repository, check_digest(str(chosen.get("digest"))))
    if m.media_type not in MANIFEST_TYPES:
        raise client.fail(f"{ref} is a {m.media_type or 'manifest of unknown type'}, not an image")
    return m


def image_from_manifest(client: RegistryClient, ref: Reference, m: Manifest) -> Image:
    """Build the lazy :class:`Image` for a fetched single-image manifest (config fetched and verified)."""
    where = f"registry {client.registry}: {ref}"
    try:
        body = m.json()
        cfg_desc = body["config"]
        cfg_digest = check_digest(str(cfg_desc["digest"]))
        layer_descs = body["layers"]
        if not isinstance(layer_descs, list):
            raise TypeError
    except (KeyError, TypeError, ImageError):
        raise RegistryError(f"{where}: manifest has no valid config/layers") from None
    config_bytes = client.get_blob_bytes(ref.repository, cfg_digest)
    try:
        config = load_json(config_bytes)  # bounded nesting: a NestingError is a ValueError
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{where}: image config is not valid (no rootfs.diff_ids)") from None
    if len(diff_ids) != len(layer_descs):
        raise RegistryError(f"{where}: config lists {len(diff_ids)} diff_ids for {len(layer_descs)} layers")
    layers = []
    for d, diff_id in zip(layer_descs, diff_ids, strict=True):
        try:
            mt = str(d["mediaType"])
            compression_of(mt)
            layers.append(
                RemoteLayer(
                    client,
                    ref.repository,
                    check_digest(str(d["digest"])),
                    str(diff_id),
                    int(d["size"]),
                    mt,
                )
            )
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"{where}: a layer descriptor is malformed") from None
        except NixflyError as e:
            raise RegistryError(f"{where}: {e}") from None
    fmt = format_of_manifest(m.media_type)
    annotations = body.get("annotations") if fmt == "oci" else None
    return Image(
        config_bytes,
        tuple(layers),
        fmt,
        dict(annotations) if isinstance(annotations, dict) else {},
        m.data,
    )


def open_remote_image(
    ref: str | Reference,
    options: RegistryOptions | None = None,
    *,
    platform: str | None = None,
    client: RegistryClient | None = None,
) -> Image:
    """Open the image ``ref`` names in its registry.

    Promises: the manifest and config bytes are verified against their digests; the returned image keeps
    the registry's exact manifest bytes (``raw_manifest``), so writing or pushing it again keeps its digest;
    layers are fetched only when opened and fail loudly if the bytes do not match. For an index, the entry
    for ``platform`` (default: this machine, e.g. ``linux/amd64``) is used. The client stays open for the
    layers' use (it is closed when garbage-collected).
    """
    r = parse_reference(ref) if isinstance(ref, str) else ref
    c = client or RegistryClient(r.registry, options)
    m = resolve_manifest(c, r, platform)
    return image_from_manifest(c, r, m)
