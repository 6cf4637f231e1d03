"""The layers stage: turn a layer plan into compressed, cached layer blobs — one pass per layer.

A layer is remembered by a key made of what cannot change: its sorted store paths (store paths are
immutable once built), the digest of any extra entries, the compressor identity and level, the mtime,
and the perms rules. A rebuild after one path changed writes only that path's layer; an unchanged
rebuild writes nothing. Layers are built in parallel threads (hashing, compression and file reads
release the GIL); the bytes of each layer never depend on scheduling.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol, cast

from nixfly.build.cache import BlobCache, CachedLayer
from nixfly.build.compress import Compressor
from nixfly.build.tarwriter import DEFAULT_MTIME, HashingSink, PermRule, TarWriter, TreeEntry
from nixfly.errors import NixflyError
from nixfly.image import BlobLayer, Layer
from nixfly.image.growing import GrowingBlob, GrowingWriter

LAYER_FORMAT = 1  # bump when the tar layout changes, so old cache entries are not reused

Owner = tuple[int, int, str, str]


@dataclass(frozen=True)
class Entry:
    """A non-store entry of a layer. ``path`` is absolute ("/etc/passwd"). For ``tree`` entries, ``src``
    is a file or directory on disk copied (recursively, in name order) to ``path``."""

    kind: Literal["dir", "file", "symlink", "tree"]
    path: str
    mode: int = 0o755
    data: bytes = b""
    target: str = ""
    src: str = ""
    owner: Owner | None = None

    def fingerprint(self, h: hashlib._Hash) -> None:
        h.update(repr((self.kind, self.path, self.mode, self.target, self.src, self.owner)).encode())
        h.update(hashlib.sha256(self.data).digest())
        if self.kind == "tree":
            _fingerprint_tree(os.fsencode(self.src), h)


def _fingerprint_tree(src: bytes, h: hashlib._Hash) -> None:
    try:
        st = os.lstat(src)
    except OSError as e:
        raise NixflyError(f"cannot read {os.fsdecode(src)}: {e.strerror}") from None
    h.update(b"%s %o %d\n" % (src, st.st_mode, st.st_size))
    if os.path.islink(src):
        h.update(os.readlink(src))
    elif os.path.isdir(src):
        for c in sorted(os.listdir(src)):
            _fingerprint_tree(src + b"/" + c, h)
    else:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)


@dataclass(frozen=True)
class LayerSpec:
    store_paths: tuple[str, ...] = ()
    extra: tuple[Entry, ...] = ()
    kind: str = "store"
    comment: str = ""

    def extra_digest(self) -> str:
        h = hashlib.sha256()
        for e in self.extra:
            e.fingerprint(h)
        return h.hexdigest()


class StoreSource(Protocol):
    """Where the store paths that are not on disk come from (a binary cache): the same entry records a
    walk of the path on disk would give, so the layer bytes do not depend on where a path was read."""

    def covers(self, path: str) -> bool: ...

    def entries(self, path: str, name: bytes) -> Generator[TreeEntry, None, None]:
        """The entries of ``path``, named ``name`` and below; raises a NixflyError if the bytes do not
        verify (checked by the time the iterator is exhausted)."""
        ...


@dataclass(frozen=True)
class LayerSettings:
    compressor: Compressor
    mtime: int = DEFAULT_MTIME
    rules: tuple[PermRule, ...] = ()
    store_dir: str = "/nix/store"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Not part of the key: a path's layer bytes are the same whether it is read from disk or a cache.
    remote: StoreSource | None = field(default=None, compare=False)

    def key(self, spec: LayerSpec) -> str:
        return BlobCache.key(
            {
                "format": LAYER_FORMAT,
                "paths": sorted(spec.store_paths),
                "extra": spec.extra_digest() if spec.extra else "",
                "compressor": self.compressor.identity,
                "mtime": self.mtime,
                "rules": [r.describe() for r in self.rules],
                "store": self.store_dir,
            }
        )


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _sort_key(e: Entry) -> tuple[bytes, ...]:
    # Per-directory name order (like GNU tar --sort=name): compare path components, not whole strings.
    return tuple(e.path.strip("/").encode().split(b"/"))


def _write_entries(tw: TarWriter, entries: Sequence[Entry]) -> None:
    for e in entries:
        name = e.path.strip("/").encode()
        if e.kind == "dir":
            tw.add_dir(name, e.mode, e.owner)
        elif e.kind == "file":
            tw.add_bytes(name, e.data, e.mode, e.owner)
        elif e.kind == "symlink":
            tw.add_symlink(name, e.target.encode(), e.owner)
        else:
            tw.add_tree(os.fsencode(e.src), name)


def write_layer_tar(tw: TarWriter, spec: LayerSpec, store_dir: str, remote: StoreSource | None = None) -> None:
    """Emit the entries of ``spec`` in name order: extra entries sorting before the store tree, the
    store tree (``/nix``, ``/nix/store`` first, then each path), then the remaining extra entries."""
    store_rel = store_dir.strip("/")
    extra = sorted(spec.extra, key=_sort_key)
    declared = {e.path.strip("/") for e in extra if e.kind == "dir"}
    # Implied parent directories of extra entries, so every entry's parent exists in the layer.
    implied = sorted({p for e in extra for p in _parents(e.path)} - declared - set(_parents("/" + store_rel + "/x")))
    all_extra = sorted([*extra, *(Entry("dir", "/" + p, 0o755) for p in implied)], key=_sort_key)
    top = store_rel.split("/", 1)[0].encode()
    before = [e for e in all_extra if e.path.strip("/").encode().split(b"/")[0] < top]
    after = [e for e in all_extra if e.path.strip("/").encode().split(b"/")[0] > top]
    inside = [e for e in all_extra if e.path.strip("/").encode().split(b"/")[0] == top]
    if inside and spec.store_paths:
        raise NixflyError(f"extra entry {inside[0].path} would collide with the store tree")
    _write_entries(tw, before)
    if spec.store_paths:
        for d in _parents("/" + store_rel + "/x"):
            tw.add_dir(d.encode(), 0o755)
        for p in sorted(spec.store_paths):
            name = p.strip("/").encode()
            if remote is not None and remote.covers(p):
                with contextlib.closing(remote.entries(p, name)) as it:
                    tw.add_entries(it)
            else:
                tw.add_tree(os.fsencode(p), name)
    _write_entries(tw, inside)
    _write_entries(tw, after)
    tw.close()


def build_layer(
    spec: LayerSpec,
    settings: LayerSettings,
    cache: BlobCache,
    on_bytes: Callable[[int], None] | None = None,
    on_blob: Callable[[GrowingBlob], None] | None = None,
) -> tuple[CachedLayer, bool]:
    """The cached layer for ``spec``, building it if needed. Returns (layer, built_now). ``on_bytes`` hears
    how many uncompressed tar bytes were written, as they are; ``on_blob``, when a layer is built, gets the
    compressed blob as it grows (so it can be uploaded while it is written) — it owns that handle."""
    key = settings.key(spec)
    hit = cache.lookup(key)
    if hit is not None:
        return hit, False
    with cache.new_blob() as (f, holder):
        growing = None
        out: BinaryIO = f
        if on_blob is not None:
            growing = GrowingBlob(holder[0], spec.comment or ",".join(spec.store_paths[:1]))
            out = cast(BinaryIO, GrowingWriter(f, growing))
            try:
                on_blob(growing)
            except BaseException as e:  # not taken: nobody else will fail and close it
                growing.fail(str(e) or type(e).__name__)
                growing.close()
                raise
        # From here every way out finishes or fails the growing blob: an upload waiting for its bytes would
        # otherwise wait for ever (and, on a worker thread, keep the process from exiting).
        try:
            sink = HashingSink(settings.compressor, out, on_bytes)
            tw = TarWriter(sink, settings.mtime, settings.rules)
            try:
                write_layer_tar(tw, spec, settings.store_dir, settings.remote)
            except OSError as e:
                raise NixflyError(f"cannot read {e.filename or 'a store path'}: {e.strerror}") from None
            diff_id, digest = sink.finish()
            f.flush()
            try:
                path = cache.commit(holder[0], digest)
                layer = CachedLayer(digest, diff_id, sink.compressed_size, sink.uncompressed_size,
                                    settings.compressor.kind, path)  # fmt: skip
                cache.remember(key, layer)
            except OSError as e:
                raise NixflyError(f"cannot store a layer in the cache {cache.root}: {e.strerror}") from None
            if growing is not None:
                growing.finish(digest, sink.compressed_size)
        except BaseException as e:
            if growing is not None:
                growing.fail(str(e) or type(e).__name__)  # nothing once finished
            raise
    return layer, True


@dataclass(frozen=True)
class BuiltLayer:
    """One layer of a build: written now (``built``), found in the local cache, or — ``remote`` — known to
    be in the destination registry already (its layer index), so nothing was compressed at all."""

    spec: LayerSpec
    layer: Layer
    built: bool
    key: str = ""  # the layer's cache key (store paths + settings + compressor identity + layer format)
    remote: bool = False


# Asked for a layer that is missing from the local cache: a registry that already holds the blob for this
# cache key answers with a layer that streams from there (checked by a HEAD), else None.
KnownLayers = Callable[[str], "Layer | None"]


def build_layers(
    specs: Sequence[LayerSpec],
    settings: LayerSettings,
    cache: BlobCache,
    *,
    weights: Sequence[int] | None = None,
    on_done: Callable[[int, BuiltLayer], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
    known: KnownLayers | None = None,
    on_blob: Callable[[int, GrowingBlob], None] | None = None,
) -> list[BuiltLayer]:
    """Build (or reuse) every layer, in parallel; results in ``specs`` order. The callbacks (for progress
    display) hear when layer i starts, how many tar bytes it has written, and when it is done. A layer the
    local cache lacks but ``known`` vouches for is taken from there instead of being built (the lookups run in
    parallel: each is a HEAD). ``on_blob`` hears of each layer being built, with its blob as it grows."""
    results: list[BuiltLayer | None] = [None] * len(specs)

    def done(i: int, b: BuiltLayer) -> None:
        results[i] = b
        if on_done is not None:
            on_done(i, b)

    def finish(i: int, cl: CachedLayer, built: bool) -> None:
        spec = specs[i]
        bl = BlobLayer(
            cl.path, cl.digest, cl.diff_id, cl.size, cl.compression,
            cl.uncompressed_size, spec.store_paths, spec.comment,
        )  # fmt: skip
        done(i, BuiltLayer(spec, bl, built, settings.key(spec)))

    def one(i: int) -> None:
        if on_start is not None:
            on_start(i)
        counter = None if on_bytes is None else (lambda n: on_bytes(i, n))
        blob_hook = None if on_blob is None else (lambda g: on_blob(i, g))
        cl, built = build_layer(specs[i], settings, cache, counter, blob_hook)
        finish(i, cl, built)

    # Cache hits first, serially: an unchanged rebuild then needs no thread pool at all.
    misses = []
    # Largest first, for hits and misses alike: the long poles start early so the cores stay busy to the
    # end, and ``on_done`` may start an upload of each layer (a push), where the long transfers go first.
    order = sorted(range(len(specs)), key=lambda i: -(weights[i] if weights else 0))
    for i in order:
        spec = specs[i]
        hit = cache.lookup(settings.key(spec))
        if hit is not None:
            finish(i, hit, False)
        else:
            misses.append(i)
    if known is not None and misses:
        # Each answer is a HEAD to the registry: ask in parallel, so a fresh runner's unchanged build costs
        # one round trip's worth of waiting, not one per layer.
        from concurrent.futures import ThreadPoolExecutor

        keys = [settings.key(specs[i]) for i in misses]
        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
            answers = list(pool.map(known, keys))
        still = []
        for i, key, remote in zip(misses, keys, answers, strict=True):
            if remote is not None:
                done(i, BuiltLayer(specs[i], remote, False, key, remote=True))
            else:
                still.append(i)
        misses = still
    if settings.workers <= 1 or len(misses) <= 1:
        for i in misses:
            one(i)
    elif misses:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            for fut in [pool.submit(one, i) for i in misses]:
                fut.result()
    return [r for r in results if r is not None]
