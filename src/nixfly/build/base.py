"""Base-image layers in the build: fetched once into the blob cache, and the base's ``/etc`` files read.

:func:`cache_backed` wraps a base layer that lives elsewhere (a registry, a layout, an archive) so that
its blob is kept in the layer cache, keyed by digest, the first time it is read in full and verified: a
later read — writing an OCI layout or a docker-archive, reading the base's ``/etc/passwd`` — comes from
the cache. A layer whose blob is already cached (and matches its digest) becomes a ``LocalBlob`` that
sinks hard-link; a registry layer stays ``Mountable`` either way, so a push to the base's registry still
mounts it instead of uploading.

:func:`store_paths_in` lists the store paths the base's merged layers hold (a base built with Nix, by
nixfly or by nixpkgs' dockerTools, shares paths with our closure: busybox, glibc): the build leaves those out
of its own layers instead of packing them a second time. Each layer's listing is kept in the cache by diff_id.
:func:`read_files` reads the base's ``/etc`` files through its whiteouts; :func:`scan_base` does both with each
layer read (decompressed, verified) at most once.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from nixfly.build.cache import BlobCache
from nixfly.errors import ImageError
from nixfly.fsutil import atomic_write_bytes, note_sha256
from nixfly.image import canonical_json
from nixfly.image.digest import CheckedBy, CheckedReader, VerifyingReader, file_digest
from nixfly.image.model import BlobOrigin, Image, Layer, LayerWrapper, LocalBlob, Mountable

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_ETC_FILE = 16 << 20


class _TeeToCache(CheckedBy):
    """Reads a verified stream and copies it into a temporary file of the cache; once the whole blob has
    been read and verified, the file is committed under its digest. A stream closed early leaves nothing.
    A ``CheckedReader``: whoever reads it need not check the bytes again."""

    def __init__(self, src: BinaryIO, cache: BlobCache, digest: str, size: int) -> None:
        self._src = VerifyingReader(src, digest, size, what=f"base layer {digest}")
        self._cache, self._digest, self._size = cache, digest, size
        # The pid in the name lets the next BlobCache sweep this file if we are killed mid-read (every base layer
        # is read in full once, to list its store paths: a large one would otherwise stay for a day).
        fd, name = tempfile.mkstemp(prefix=f"base.{os.getpid()}.", dir=cache.tmp)
        self._tmp = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._pos = 0
        self._done = False

    def _checked_by(self) -> CheckedReader:
        return self._src

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
            note_sha256(path, inner.digest)  # hashed now: a sink hard-linking it need not read it again
            return _CachedMountable(inner, path) if isinstance(inner, Mountable) else _Cached(inner, path)
    return _CachingMountable(inner, cache) if isinstance(inner, Mountable) else _Caching(inner, cache)


def cache_backed_image(image: Image, cache: BlobCache) -> Image:
    """``image`` with every layer :func:`cache_backed` (same manifest, same digest)."""
    return image.with_layers(tuple(cache_backed(lyr, cache) for lyr in image.layers))


def _norm(name: str) -> str:
    n = posixpath.normpath("/" + name).lstrip("/")  # "./etc/x", "/etc/x", "etc/x" → "etc/x"
    return "" if n == "." else n


@dataclass(frozen=True)
class StoreEffect:
    """What one layer does to the top level of the store directory, as names (``<hash>-<name>``): the paths
    it adds whole; the paths of lower layers it deletes or alters (a whiteout in or of them, entries in
    them without their top entry); whether it hides everything below (the store or a parent made opaque,
    deleted or replaced by a non-directory)."""

    added: frozenset[str]
    removed: frozenset[str]
    cleared: bool


@dataclass(frozen=True)
class _FilesView:
    """What one layer says about the wanted files: those it has an entry for (their content, if it is the
    deciding one, is in the scan's :class:`_Contents`), the paths it whites out and the directories it makes
    opaque (both hide lower layers only)."""

    hits: frozenset[str]
    gone: frozenset[str]
    opaque: frozenset[str]


class _Contents:
    """The content of each wanted file in the highest layer read so far that has it (None: not a regular file,
    or too large), shared by the walks of one scan. A layer below one that gave its copy does not read its own,
    and a layer above replaces the copy of one below, so a scan holds one copy per name (and one in flight per
    worker), not one per layer: a base of 100 layers each with a 16 MiB /etc/passwd costs 16 MiB, not 1.6 GB.
    The topmost layer holding a name is the one that decides it (unless a whiteout above hides it), and its
    copy is the one kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._top: dict[str, tuple[int, bytes | None]] = {}

    def wanted(self, name: str, index: int) -> bool:
        with self._lock:
            got = self._top.get(name)
            return got is None or got[0] < index

    def offer(self, name: str, index: int, data: bytes | None) -> None:
        with self._lock:
            got = self._top.get(name)
            if got is None or got[0] < index:
                self._top[name] = (index, data)

    def of(self, name: str, index: int) -> bytes | None:
        """The content layer ``index`` holds: it must be the topmost layer with ``name`` (every layer above was
        read, and none has it)."""
        with self._lock:
            got = self._top.get(name)
        if got is None or got[0] != index:
            raise ImageError(f"internal error: /{name} of base layer {index} was not kept")
        return got[1]


def _walk(
    layer: Layer, store_dir: str | None, want: frozenset[str], index: int, contents: _Contents
) -> tuple[StoreEffect | None, _FilesView]:
    """One read of ``layer``'s tar stream (verified): its effect on ``store_dir`` (None: not asked) and what
    it says about the files in ``want`` (normalised names); ``index`` is its place in the image (0: bottom),
    and the content of a wanted file goes to ``contents`` unless a higher layer's is there already."""
    prefix = _norm(store_dir) if store_dir is not None else None
    above: set[str] = set()  # the store dir and its parents: replacing one of them hides every store path below
    d = prefix
    while d:
        above.add(d)
        d = posixpath.dirname(d)
    added: set[str] = set()
    removed: set[str] = set()
    touched: set[str] = set()
    cleared = False
    hits: set[str] = set()
    gone: set[str] = set()
    opaque: set[str] = set()

    def top(name: str) -> str | None:  # "<prefix>/X/..." → X
        if prefix is None or not name.startswith(prefix + "/"):
            return None
        return name[len(prefix) + 1 :].split("/", 1)[0] or None

    with layer.uncompressed() as stream:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed below
            for m in tf:
                name = _norm(m.name)
                base = posixpath.basename(name)
                parent = posixpath.dirname(name)
                if base == _OPAQUE or base.startswith(_WH):
                    target = parent if base == _OPAQUE else posixpath.join(parent, base[len(_WH) :])
                    (opaque if base == _OPAQUE else gone).add(target)
                    if prefix is None:
                        continue
                    if target in above or (base == _OPAQUE and parent == ""):
                        cleared = True
                    elif (x := top(target)) is not None:
                        removed.add(x)
                    continue
                if name in want and name not in hits:
                    hits.add(name)
                    if contents.wanted(name, index):
                        f = tf.extractfile(m) if m.isreg() and m.size <= _MAX_ETC_FILE else None
                        contents.offer(name, index, f.read() if f is not None else None)
                if prefix is None:
                    continue
                if name in above:
                    cleared = cleared or not m.isdir()
                elif parent == prefix:
                    added.add(base)
                elif (x := top(name)) is not None:
                    touched.add(x)
            tf.close()
            while stream.read(1 << 20):  # the rest (tar padding): the blob is then verified and cached
                pass
        except tarfile.TarError as e:
            raise ImageError(f"base layer {layer.digest} is not a valid tar stream: {e}") from None
    view = _FilesView(frozenset(hits), frozenset(gone), frozenset(opaque))
    if prefix is None:
        return None, view
    removed |= touched - added
    return StoreEffect(frozenset(added - removed), frozenset(removed), cleared), view


def _decide_files(
    layers: Sequence[Layer], want: dict[str, str], views: Sequence[_FilesView | None], contents: _Contents
) -> dict[str, bytes | None]:
    """The wanted files as the merged layers leave them, top layer first; a layer not read yet (``views[i]``
    None) is read now, and reading stops as soon as every file is decided."""
    found: dict[str, bytes | None] = {}
    for index in reversed(range(len(layers))):
        if len(found) == len(want):
            break
        view = views[index]
        if view is None:
            view = _walk(layers[index], None, frozenset(want), index, contents)[1]
        for name in want:
            if name in found:
                continue
            if name in view.hits:
                found[name] = contents.of(name, index)
                continue
            ancestors = [name]
            d = posixpath.dirname(name)
            while d:
                ancestors.append(d)
                d = posixpath.dirname(d)
            if any(a in view.gone for a in ancestors) or any(a in view.opaque for a in ancestors[1:]):
                found[name] = None
    return {want[n]: found.get(n) for n in want}


def read_files(image: Image, wanted: Iterable[str]) -> dict[str, bytes | None]:
    """The content of each regular file in ``wanted`` (absolute paths such as ``/etc/passwd``) as the merged
    layers of ``image`` leave it, or None when it is absent, deleted by a whiteout, or not a regular file.

    Layers are read from the top down and reading stops as soon as every file is decided, so a base whose
    top layer holds its ``/etc`` (as nixfly's customisation layer does) costs one small layer."""
    want = {_norm(w): w for w in wanted}
    return _decide_files(image.layers, want, [None] * len(image.layers), _Contents())


def _cached_effect(
    layer: Layer, store_dir: str, cache: BlobCache, want: frozenset[str], index: int, contents: _Contents
) -> tuple[StoreEffect, _FilesView | None]:
    """The layer's store effect, remembered in the cache by diff_id and store directory; when the layer has to
    be read for it, what it says about the files in ``want`` comes from the same read (else None; the files'
    content goes to ``contents`` as :func:`_walk` says)."""
    key = BlobCache.key({"kind": "store-listing", "diff_id": layer.diff_id, "store_dir": store_dir})
    where = cache.root / "store-listings" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        rec = json.loads(where.read_bytes())
        added, removed, cleared = rec["added"], rec["removed"], rec["cleared"]
        lists = isinstance(added, list) and isinstance(removed, list)
        if lists and all(isinstance(n, str) for n in (*added, *removed)) and isinstance(cleared, bool):
            return StoreEffect(frozenset(added), frozenset(removed), cleared), None
    effect, view = _walk(layer, store_dir, want, index, contents)
    assert effect is not None
    with contextlib.suppress(OSError, ImageError):  # a cache: a failed write only means scanning again
        where.parent.mkdir(exist_ok=True)
        rec = {"added": sorted(effect.added), "removed": sorted(effect.removed), "cleared": effect.cleared}
        atomic_write_bytes(where, canonical_json(rec), durable=False)
    return effect, view


@dataclass(frozen=True)
class BaseScan:
    """What a build needs of its base's layers: the store paths they hold whole (:func:`store_paths_in`) and
    the wanted files as the merged layers leave them (:func:`read_files`)."""

    store_paths: frozenset[str]
    files: dict[str, bytes | None]


def scan_base(
    image: Image, store_dir: str, cache: BlobCache, wanted: Iterable[str] = (), workers: int = 4
) -> BaseScan:
    """:func:`store_paths_in` and :func:`read_files` with each layer read at most once: a layer read for its
    store listing gives the wanted files in the same pass; only the layers whose listing was cached and that
    the files still need (from the top down) are read for them."""
    layers = image.layers
    want = {_norm(w): w for w in wanted}
    if not layers:
        return BaseScan(frozenset(), {w: None for w in want.values()})
    contents = _Contents()
    top_down = range(len(layers) - 1, -1, -1)  # the top layers' files first: those below need not read theirs
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(layers)))) as pool:
        scans = list(
            pool.map(lambda i: _cached_effect(layers[i], store_dir, cache, frozenset(want), i, contents), top_down)
        )[::-1]
    names: set[str] = set()
    for e, _ in scans:  # bottom to top
        if e.cleared:
            names.clear()
        names -= e.removed
        names |= e.added
    store = store_dir.rstrip("/")
    files = _decide_files(layers, want, [v for _, v in scans], contents) if want else {}
    return BaseScan(frozenset(f"{store}/{n}" for n in names), files)


def store_paths_in(image: Image, store_dir: str, cache: BlobCache, workers: int = 4) -> frozenset[str]:
    """The store paths (``<store_dir>/<hash>-<name>``) that ``image``'s merged layers hold whole: present as
    a top entry of the store directory and not deleted, hidden or altered by a layer above.

    Every layer is read once (verified, and its blob kept in the cache like any base layer) unless its listing
    is already cached. A store path's name fixes its content, so a path the base holds need not be packed again."""
    return scan_base(image, store_dir, cache, (), workers).store_paths
