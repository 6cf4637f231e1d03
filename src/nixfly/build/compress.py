"""Deterministic compressors for layer blobs.

Compressed bytes must be identical on every machine running the same nixfly version, so:
the libraries are pinned (libdeflate via ``deflate``, ISA-L via ``isal``, libzstd via ``zstandard``),
input is cut in fixed-size blocks (never in read-size-dependent chunks), and gzip headers are written by
us with fixed fields. ``Compressor.identity`` (library, version, level, block scheme) is part of every
cache key, so a change of any of them rebuilds the cache once.

gzip is written as independent members, one per ``BLOCK`` of input (a multi-member gzip file is valid
gzip: RFC 1952 §2.2, and every reader we know of — Go's compress/gzip, zcat, Python — reads it as one
stream). Independent members are what let one layer use every core: blocks are compressed on a shared,
bounded thread pool (the compressors release the GIL) and written in input order, so the bytes never
depend on the number of threads or on scheduling.
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

BLOCK = 1 << 20  # input bytes per gzip member / per compressor call; fixed so output never depends on read sizes

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


def parse_level(text: str) -> Level:
    """A level as typed on the command line: a number or ``fast``; a UsageError otherwise."""
    t = text.strip().lower()
    if t == FAST:
        return FAST
    if t.lstrip("-").isdigit():
        return int(t)
    raise UsageError(f'--level must be a number (gzip 1-12, zstd 1-19) or "fast", got {text!r}')


class Stream(Protocol):
    def write(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# --- the shared pool ------------------------------------------------------------------------------


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Pool:
    """One thread pool for every layer being compressed, with a bound on the blocks in flight over all
    layers (so memory stays a few MiB per thread however many layers are built at once)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nixfly-compress")
        self.slots = threading.BoundedSemaphore(4 * threads)  # blocks submitted and not yet written out
        self.per_stream = 2 * threads  # one layer may keep every thread busy, with a block of look-ahead


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(_default_threads())
        return _pool


def set_threads(threads: int | None) -> None:
    """Use ``threads`` compression threads from now on (None: one per core). The bytes do not change."""
    global _pool
    if threads is not None and threads < 1:
        raise UsageError(f"compression threads must be at least 1, got {threads}")
    with _pool_lock:
        old, _pool = _pool, _Pool(threads or _default_threads())
    if old is not None:
        old.executor.shutdown(wait=True)


class _Members:
    """A gzip stream of independent members, one per BLOCK of input, compressed on the shared pool.
    ``write`` returns the members that are done, in input order; at most ``per_stream`` are in flight."""

    def __init__(self, member: Callable[[bytes], bytes]) -> None:
        self._member = member
        self._pool = _shared_pool()
        self._buf = bytearray()
        self._inflight: deque[Future[bytes]] = deque()
        self._any = False

    def _pop(self) -> bytes:
        fut = self._inflight.popleft()
        try:
            return fut.result()
        finally:
            self._pool.slots.release()

    def _submit(self, block: bytes) -> bytes:
        out = []
        while len(self._inflight) >= self._pool.per_stream:
            out.append(self._pop())
        # Take a pool-wide slot. While this stream holds slots it frees its own rather than wait for
        # others' (so no two streams can wait on each other); with none held it waits for a free one.
        while not self._pool.slots.acquire(blocking=not self._inflight):
            out.append(self._pop())
        try:
            self._inflight.append(self._pool.executor.submit(self._member, block))
        except BaseException:
            self._pool.slots.release()
            raise
        self._any = True
        while self._inflight and self._inflight[0].done():
            out.append(self._pop())
        return b"".join(out)

    def write(self, data: bytes) -> bytes:
        if not self._buf and len(data) == BLOCK:
            return self._submit(data)  # the usual case: HashingSink hands over whole blocks
        self._buf += data
        out = []
        while len(self._buf) >= BLOCK:
            out.append(self._submit(bytes(self._buf[:BLOCK])))
            del self._buf[:BLOCK]
        return b"".join(out)

    def finish(self) -> bytes:
        out = []
        if self._buf or not self._any:  # the short last block; an empty stream is one empty member
            out.append(self._submit(bytes(self._buf)))
            self._buf.clear()
        while self._inflight:
            out.append(self._pop())
        return b"".join(out)

    def __del__(self) -> None:
        # A sink abandoned half-way (an error while writing a layer) gives its slots back.
        while getattr(self, "_inflight", None):
            fut = self._inflight.popleft()
            fut.cancel()
            self._pool.slots.release()


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


ZSTD_JOB = 4 << 20  # input bytes per libzstd worker job; fixed, so the frame never depends on the thread count


class _Zstd:
    def __init__(self, level: int) -> None:
        # libzstd's multi-threaded mode (threads >= 1) with a fixed job size writes the same frame for any
        # thread count and any write sizes (checked by tests/test_compress.py), so one layer uses every
        # core. Its output differs from threads=0 (single-threaded), hence "mt" in the identity.
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=_shared_pool().threads, job_size=ZSTD_JOB, write_checksum=1
        )
        self._c = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def write(self, data: bytes) -> bytes:
        out: bytes = self._c.compress(data)
        return out

    def finish(self) -> bytes:
        out: bytes = self._c.flush()
        return out


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
            return f"zstd/zstandard-{zstandard.__version__}-{zstandard.ZSTD_VERSION}/l{self.level}/mt-j{ZSTD_JOB}"
        return "none"

    def stream(self) -> Stream:
        if self.kind == "gzip":
            if self.level == FAST:
                return _Members(_isal_member(FAST_ISAL_LEVEL))
            assert isinstance(self.level, int)
            return _Members(_libdeflate_member(self.level))
        if self.kind == "zstd":
            assert isinstance(self.level, int)
            return _Zstd(self.level)
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
