"""Deterministic compressors for layer blobs.

Compressed bytes must be identical on every machine running the same nixfly version, so:
the libraries are pinned (libdeflate via ``deflate``, ISA-L via ``isal``, libzstd via ``zstandard``),
input is cut in fixed-size blocks (never in read-size-dependent chunks), and gzip headers are written by
us with fixed fields. ``Compressor.identity`` (library, version, level, block scheme) is part of every
cache key, so a change of any of them rebuilds the cache once.

gzip is written as independent members, one per ``BLOCK`` (1 MiB) of input, zstd as independent frames,
one per ``ZSTD_FRAME`` (4 MiB). Both are valid single streams (RFC 1952 §2.2; RFC 8878 §3.1: a zstd
stream is a sequence of frames) that Go's readers (skopeo, containerd), umoci, gzip/zcat/zstd and Python
read as one. Independent pieces are what let one layer use every core: they are compressed on one
shared thread pool (the compressors release the GIL) under a pool-wide bound on the input in flight,
and written in input order, so the bytes never depend on the number of threads or on scheduling.

(libzstd's own multi-threaded mode also gives the same frame for any thread count with a fixed job
size, but each compressor owns its threads and buffers: with one per layer being built, memory grew
with cores × layers at once — 145 MB peak for two layers on two cores, against 92 MB for these frames.)
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import deflate
import zstandard
from isal import isal_zlib

from nixfly.errors import UsageError

BLOCK = 1 << 20  # input bytes per gzip member; fixed so output never depends on read sizes
ZSTD_FRAME = 4 << 20  # input bytes per zstd frame (level 3's window is 2 MiB: little is lost at a boundary)

# gzip member header: magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown): same bytes everywhere.
# (libdeflate's own gzip header sets XFL by level; we write raw deflate and this header instead.)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

Level = int | Literal["fast"]
FAST: Literal["fast"] = "fast"
FAST_ISAL_LEVEL = 2  # ISA-L level 2 is both faster and smaller than its level 1 on real layers
DEFAULT_LEVELS: dict[str, Level] = {"gzip": 2, "zstd": 3}
MIN_LEVELS = {"gzip": 1, "zstd": 1}
MAX_LEVELS = {"gzip": 12, "zstd": 19}


def level_problem(kind: str, level: object) -> str | None:
    """Why ``level`` is not a level of ``kind`` (one line), or None when it is."""
    if kind not in MAX_LEVELS:
        return None
    lo, hi = MIN_LEVELS[kind], MAX_LEVELS[kind]
    fast = ' or "fast"' if kind == "gzip" else ""
    if level == FAST and kind != "gzip":
        return f'"fast" is a gzip level; {kind} levels are {lo} to {hi}'
    if level == FAST:
        return None
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        return f"{kind} level must be {lo} to {hi}{fast}, got {level!r}"
    return None


class Stream(Protocol):
    def write(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# --- the shared pool ------------------------------------------------------------------------------


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Budget:
    """A count of MiB that blocks may take at once, taken and given back whole per block."""

    def __init__(self, units: int) -> None:
        self._free = units
        self._cond = threading.Condition()

    def take(self, units: int, *, blocking: bool) -> bool:
        with self._cond:
            while self._free < units:
                if not blocking:
                    return False
                self._cond.wait()
            self._free -= units
            return True

    def give(self, units: int) -> None:
        with self._cond:
            self._free += units
            self._cond.notify_all()


class _Pool:
    """One thread pool for every layer being compressed, with a bound on the input in flight over all
    layers (so memory stays a few MiB per thread however many layers are built at once)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nixfly-compress")
        # MiB of input submitted and not yet written out, over all layers; at least two of the largest block.
        self.budget = _Budget(max(6 * threads, 2 * ZSTD_FRAME // BLOCK))
        self.per_stream = 2 * threads  # blocks: one layer may keep every thread busy, with look-ahead


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(_default_threads())
        return _pool


def set_threads(threads: int | None) -> None:
    """Use ``threads`` compression threads from now on (None: one per core); call it between builds, not
    during one. The bytes do not change."""
    global _pool
    if threads is not None and threads < 1:
        raise UsageError(f"compression threads must be at least 1, got {threads}")
    with _pool_lock:
        old, _pool = _pool, _Pool(threads or _default_threads())
    if old is not None:
        old.executor.shutdown(wait=True)


class _Blocks:
    """A stream of independent pieces (gzip members, zstd frames), one per ``size`` bytes of input,
    compressed on the shared pool. ``write`` returns the pieces that are done, in input order."""

    def __init__(self, piece: Callable[[bytes], bytes], size: int) -> None:
        self._piece = piece
        self._size = size
        self._units = size // BLOCK
        self._pool = _shared_pool()
        self._buf = bytearray()
        self._inflight: deque[Future[bytes]] = deque()
        self._any = False

    def _pop(self) -> bytes:
        fut = self._inflight.popleft()
        try:
            return fut.result()
        finally:
            self._pool.budget.give(self._units)

    def _submit(self, block: bytes) -> bytes:
        out = []
        while len(self._inflight) >= self._pool.per_stream:
            out.append(self._pop())
        # Take room in the pool-wide budget. While this stream has blocks in flight it frees its own
        # rather than wait for others' (so no two streams wait on each other); with none it waits.
        while not self._pool.budget.take(self._units, blocking=not self._inflight):
            out.append(self._pop())
        try:
            self._inflight.append(self._pool.executor.submit(self._piece, block))
        except BaseException:
            self._pool.budget.give(self._units)
            raise
        self._any = True
        while self._inflight and self._inflight[0].done():
            out.append(self._pop())
        return b"".join(out)

    def write(self, data: bytes) -> bytes:
        if not self._buf and len(data) == self._size:
            return self._submit(data)  # gzip's usual case: HashingSink hands over whole blocks
        self._buf += data
        out = []
        while len(self._buf) >= self._size:
            with memoryview(self._buf) as view:
                block = bytes(view[: self._size])
            out.append(self._submit(block))
            del self._buf[: self._size]
        return b"".join(out)

    def finish(self) -> bytes:
        out = []
        if self._buf or not self._any:  # the short last block; an empty stream is one empty piece
            out.append(self._submit(bytes(self._buf)))
            self._buf.clear()
        while self._inflight:
            out.append(self._pop())
        return b"".join(out)

    def __del__(self) -> None:
        # A sink abandoned half-way (an error while writing a layer) gives its budget back.
        while getattr(self, "_inflight", None):
            self._inflight.popleft().cancel()
            self._pool.budget.give(self._units)


def _member(body: bytes | bytearray, data: bytes) -> bytes:
    return b"".join((_GZIP_HEADER, body, struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)))


def _libdeflate_member(level: int) -> Callable[[bytes], bytes]:
    def member(data: bytes) -> bytes:
        return _member(deflate.deflate_compress(data, level), data)

    return member


def _isal_member(level: int) -> Callable[[bytes], bytes]:
    def member(data: bytes) -> bytes:
        return _member(isal_zlib.compress(data, level, -15), data)

    return member


_zstd_local = threading.local()  # a ZstdCompressor is not thread-safe: one per pool thread and level


def _zstd_frame(level: int) -> Callable[[bytes], bytes]:
    def frame(data: bytes) -> bytes:
        cs: dict[int, zstandard.ZstdCompressor] = _zstd_local.__dict__.setdefault("by_level", {})
        c = cs.get(level)
        if c is None:
            params = zstandard.ZstdCompressionParameters.from_level(level, threads=0, write_checksum=1)
            c = cs[level] = zstandard.ZstdCompressor(compression_params=params)
        out: bytes = c.compress(data)  # one frame, content size in its header
        return out

    return frame


class _Identity:
    def write(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


@dataclass(frozen=True)
class Compressor:
    kind: Literal["gzip", "zstd", "none"]
    level: Level

    @property
    def identity(self) -> str:
        """Library, version, level and block scheme: any change here changes the compressed bytes."""
        if self.kind == "gzip":
            if self.level == FAST:
                import isal

                return f"gzip/isal-{isal.__version__}/l{FAST_ISAL_LEVEL}/members-b{BLOCK}"
            return f"gzip/libdeflate-py{deflate.__version__}/l{self.level}/members-b{BLOCK}"
        if self.kind == "zstd":
            return f"zstd/zstandard-{zstandard.__version__}-{zstandard.ZSTD_VERSION}/l{self.level}/frames-b{ZSTD_FRAME}"
        return "none"

    def stream(self) -> Stream:
        if self.kind == "gzip":
            if self.level == FAST:
                return _Blocks(_isal_member(FAST_ISAL_LEVEL), BLOCK)
            assert isinstance(self.level, int)
            return _Blocks(_libdeflate_member(self.level), BLOCK)
        if self.kind == "zstd":
            assert isinstance(self.level, int)
            return _Blocks(_zstd_frame(self.level), ZSTD_FRAME)
        return _Identity()


def make_compressor(kind: str, level: Level | None = None) -> Compressor:
    if kind not in ("gzip", "zstd", "none"):
        raise UsageError(f"unknown compression {kind!r}: use gzip or zstd")
    if kind == "none":
        return Compressor("none", 0)
    lvl = DEFAULT_LEVELS[kind] if level is None else level
    problem = level_problem(kind, lvl)
    if problem is not None:
        raise UsageError(problem)
    return Compressor(kind, lvl)  # type: ignore[arg-type]
