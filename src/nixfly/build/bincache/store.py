"""The remote store: the missing paths' NARs fetched with bounded parallelism and streamed through the
decompressor and the NAR parser, FileHash/FileSize and NarHash/NarSize checked when each stream ends.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import IO, Protocol

from nixfly.build.bincache.fetch import BinaryCache, _Counting, _Decompressor
from nixfly.build.bincache.narinfo import BinaryCacheError, NarInfo, nix_hash
from nixfly.build.bincache.resolve import FETCH_JOBS, RemoteClosure
from nixfly.build.nar import NarReader
from nixfly.build.tarwriter import TreeEntry

# ---------------------------------------------------------------------------------------------------
# fetching and streaming NARs


_KINDS = {b"0": "f", b"2": "l", b"5": "d"}


def listing_item(e: TreeEntry, root: bytes) -> tuple[str, list[str]] | None:
    """(relative path, [kind, symlink target]) for entries a listing keeps: two levels deep, and
    ``etc/`` five (the CA bundle paths); None for the others."""
    rel = os.fsdecode(e.name[len(root) + 1 :]) if e.name != root else ""
    parts = rel.split("/") if rel else []
    if len(parts) > 2 and not (parts[0] == "etc" and len(parts) <= 5):
        return None
    kind = _KINDS[e.type]
    if e.type == b"0" and e.mode & 0o111:
        kind = "x"
    return rel, [kind, os.fsdecode(e.target) if e.type == b"2" else ""]


class Listings(Protocol):
    """Where the listings a streamed NAR leaves behind are kept (``remotefs.RemoteFS``, which imports this
    module: the store knows it only by this)."""

    roots: set[str]

    def has_complete_listing(self, path: str) -> bool: ...

    def keep_listing(self, path: str, entries: dict[str, list[str]]) -> None: ...


class RemoteStore:
    """The StoreSource for paths that come from a binary cache (see ``nixfly.build.layers``)."""

    def __init__(self, remote: RemoteClosure, workdir: Path) -> None:
        self.narinfos = remote.narinfos
        self.caches = remote.caches
        self.workdir = workdir
        self._files: dict[str, Path] = {}
        self._lock = threading.Lock()
        self.fs: Listings | None = None  # set by the pipeline once it knows which paths are listed whole
        self.on_bytes: Callable[[int], None] | None = None  # hears downloaded bytes (progress)

    def covers(self, path: str) -> bool:
        return path in self.narinfos

    def _cache(self, ni: NarInfo) -> BinaryCache:
        return self.caches.get(ni.cache) or BinaryCache(ni.cache)

    def needs_download(self, path: str) -> bool:
        ni = self.narinfos[path]
        return self._cache(ni).dir is None and path not in self._files

    def prefetch(
        self, paths: Iterable[str], jobs: int = FETCH_JOBS, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Download the compressed NARs of ``paths`` (HTTP caches only), ``jobs`` at a time."""
        todo = sorted({p for p in paths if p in self.narinfos and self.needs_download(p)},
                      key=lambda p: -(self.narinfos[p].file_size or 0))  # fmt: skip
        if not todo:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)

        def one(p: str) -> None:
            ni = self.narinfos[p]
            dest = self.workdir / (p.rsplit("/", 1)[-1] + ".nar")
            self._cache(ni).download(ni, dest, on_bytes or self.on_bytes)
            with self._lock:
                self._files[p] = dest

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for fut in [pool.submit(one, p) for p in todo]:
                fut.result()

    def _open(self, ni: NarInfo) -> IO[bytes]:
        cache = self._cache(ni)
        if cache.dir is not None:
            return cache.open_nar(ni)
        if ni.store_path not in self._files:
            self.prefetch([ni.store_path], 1)
        return open(self._files[ni.store_path], "rb")

    def entries(self, path: str, name: bytes) -> Generator[TreeEntry, None, None]:
        """The entries of ``path`` from its NAR; verified when exhausted. While a layer streams a path
        that is not listed yet, its listing is noted on the way and kept once the NAR has verified, so
        the customisation that follows reads no NAR twice."""
        ni = self.narinfos[path]
        where = f"{path} from {ni.cache}"
        fs = self.fs
        noting = fs is not None and path not in fs.roots and not fs.has_complete_listing(path)
        noted: dict[str, list[str]] = {}
        with self._open(ni) as fp:
            counted = _Counting(fp, ni)
            reader = NarReader(_Decompressor(counted, ni.compression, where), where, ni.nar_size)
            for e in reader.entries(name):
                if noting:
                    item = listing_item(e, name)
                    if item is not None:
                        noted[item[0]] = item[1]
                yield e
            counted.finish()
            digest = reader.digest()
        if reader.size != ni.nar_size:
            raise BinaryCacheError(f"{where}: the NAR has {reader.size} bytes, not its NarSize {ni.nar_size}")
        if digest != ni.nar_hash:
            raise BinaryCacheError(
                f"{where}: NAR hash mismatch (narinfo says {nix_hash(ni.nar_hash)}, the NAR is {nix_hash(digest)})"
            )
        if noting and fs is not None:
            fs.keep_listing(path, noted)

    def read_head(self, entry: TreeEntry, n: int) -> bytes:
        got = bytearray()

        def take(b: bytes) -> None:
            if len(got) < n:
                got.extend(b[: n - len(got)])

        assert entry.content is not None
        entry.content.copy_to(take, entry.size)
        return bytes(got)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for c in self.caches.values():
            if c._client is not None:
                c._client.close()
                c._client = None


def download_size(store: RemoteStore, paths: Iterable[str]) -> int:
    return sum(store.narinfos[p].file_size or 0 for p in set(paths) if p in store.narinfos and store.needs_download(p))
