"""Base-image layers in the build: fetched once into the blob cache, and the base's ``/etc`` files read.

:func:`cache_backed` wraps a base layer that lives elsewhere (a registry, a layout, an archive) so that
its blob is kept in the layer cache, keyed by digest, the first time it is read in full and verified: a
later read — writing an OCI layout or a docker-archive, reading the base's ``/etc/passwd`` — comes from
the cache. A layer whose blob is already cached (and matches its digest) becomes a ``LocalBlob`` that
sinks hard-link; a registry layer stays ``Mountable`` either way, so a push to the base's registry still
mounts it instead of uploading.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from nixfly.build.cache import BlobCache
from nixfly.errors import ImageError
from nixfly.image.digest import VerifyingReader, file_digest
from nixfly.image.model import BlobOrigin, Image, Layer, LayerWrapper, LocalBlob, Mountable

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_ETC_FILE = 16 << 20


class _TeeToCache:
    """Reads a verified stream and copies it into a temporary file of the cache; once the whole blob has
    been read and verified, the file is committed under its digest. A stream closed early leaves nothing."""

    def __init__(self, src: BinaryIO, cache: BlobCache, digest: str, size: int) -> None:
        self._src = VerifyingReader(src, digest, size, what=f"base layer {digest}")
        self._cache, self._digest, self._size = cache, digest, size
        fd, name = tempfile.mkstemp(prefix="base.", dir=cache.tmp)
        self._tmp = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data and not self._done:
            self._out.write(data)
            self._pos += len(data)
        if self._pos == self._size and self._src.verified and not self._done:
            self._done = True
            self._out.close()
            with contextlib.suppress(OSError):
                self._cache.commit(self._tmp, self._digest)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._src.close()
        if not self._out.closed:
            self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    @property
    def closed(self) -> bool:
        return self._out.closed and self._src.closed

    def __enter__(self) -> _TeeToCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Caching(LayerWrapper):
    """``inner``, read from the cache when its blob is there, else streamed from ``inner`` into it."""

    cache: BlobCache = field(compare=False, repr=False)

    def compressed(self) -> BinaryIO:
        path = self.cache.blob_path(self.digest)
        with contextlib.suppress(OSError):
            if path.stat().st_size == self.size:
                what = f"cached base layer {self.digest}"
                return cast(BinaryIO, VerifyingReader(path.open("rb"), self.digest, self.size, what=what))
        return cast(BinaryIO, _TeeToCache(self.inner.compressed(), self.cache, self.digest, self.size))


@dataclass(frozen=True)
class _CachingMountable(_Caching):
    @property
    def origin(self) -> BlobOrigin:
        assert isinstance(self.inner, Mountable)
        return self.inner.origin


@dataclass(frozen=True)
class _Cached(LayerWrapper):
    """``inner`` whose blob is a verified file of the cache: sinks may hard-link it."""

    path: Path

    @property
    def blob_path(self) -> Path:
        return self.path

    def compressed(self) -> BinaryIO:
        what = f"cached base layer {self.digest}"
        return cast(BinaryIO, VerifyingReader(self.path.open("rb"), self.digest, self.size, what=what))


@dataclass(frozen=True)
class _CachedMountable(_Cached):
    @property
    def origin(self) -> BlobOrigin:
        assert isinstance(self.inner, Mountable)
        return self.inner.origin


def _unwrap(layer: Layer) -> Layer:
    while isinstance(layer, (_Caching, _Cached)):
        layer = layer.inner
    return layer


def cache_backed(layer: Layer, cache: BlobCache) -> Layer:
    """``layer`` backed by the blob cache (see the module docstring); a trusted local blob is returned as is."""
    inner = _unwrap(layer)
    if isinstance(inner, LocalBlob):
        return inner
    path = cache.blob_path(inner.digest)
    with contextlib.suppress(OSError, ImageError):
        if path.stat().st_size == inner.size and file_digest(path)[0] == inner.digest:
            return _CachedMountable(inner, path) if isinstance(inner, Mountable) else _Cached(inner, path)
    return _CachingMountable(inner, cache) if isinstance(inner, Mountable) else _Caching(inner, cache)


def cache_backed_image(image: Image, cache: BlobCache) -> Image:
    """``image`` with every layer :func:`cache_backed` (same manifest, same digest)."""
    return image.with_layers(tuple(cache_backed(lyr, cache) for lyr in image.layers))


def _norm(name: str) -> str:
    n = posixpath.normpath("/" + name).lstrip("/")  # "./etc/x", "/etc/x", "etc/x" → "etc/x"
    return "" if n == "." else n


def read_files(image: Image, wanted: Iterable[str]) -> dict[str, bytes | None]:
    """The content of each regular file in ``wanted`` (absolute paths such as ``/etc/passwd``) as the merged
    layers of ``image`` leave it, or None when it is absent, deleted by a whiteout, or not a regular file.

    Layers are read from the top down and reading stops as soon as every file is decided, so a base whose
    top layer holds its ``/etc`` (as nixfly's customisation layer does) costs one small layer."""
    want = {_norm(w): w for w in wanted}
    found: dict[str, bytes | None] = {}
    for layer in reversed(image.layers):
        if len(found) == len(want):
            break
        hits: dict[str, bytes | None] = {}
        gone: set[str] = set()  # paths whited out in this layer (hide lower layers only)
        opaque: set[str] = set()  # directories made opaque in this layer
        with layer.uncompressed() as stream:
            try:
                tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed below
                for m in tf:
                    name = _norm(m.name)
                    base = posixpath.basename(name)
                    parent = posixpath.dirname(name)
                    if base == _OPAQUE:
                        opaque.add(parent)
                        continue
                    if base.startswith(_WH):
                        gone.add(posixpath.join(parent, base[len(_WH) :]))
                        continue
                    if name in want and name not in found:
                        f = tf.extractfile(m) if m.isreg() and m.size <= _MAX_ETC_FILE else None
                        hits[name] = f.read() if f is not None else None
                tf.close()
                while stream.read(1 << 20):  # the rest (tar padding): the blob is then verified and cached
                    pass
            except tarfile.TarError as e:
                raise ImageError(f"base layer {layer.digest} is not a valid tar stream: {e}") from None
        for name in want:
            if name in found:
                continue
            if name in hits:
                found[name] = hits[name]
                continue
            ancestors = [name]
            d = posixpath.dirname(name)
            while d:
                ancestors.append(d)
                d = posixpath.dirname(d)
            if any(a in gone for a in ancestors) or any(a in opaque for a in ancestors[1:]):
                found[name] = None
    return {want[n]: found.get(n) for n in want}
