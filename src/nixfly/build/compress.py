"""Deterministic compressors for layer blobs.

Compressed bytes must be identical on every machine running the same nixfly version, so:
the libraries are pinned (ISA-L via ``isal``, libzstd via ``zstandard``), input is fed in fixed-size
blocks (never in read-size-dependent chunks), and the gzip header is written by us with fixed fields.
``Compressor.identity`` (library, version, level) is part of every cache key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal, Protocol

import zstandard
from isal import isal_zlib

from nixfly.errors import UsageError

BLOCK = 1 << 20  # bytes handed to the compressor per call; fixed so output never depends on read sizes

# gzip member header: magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown): same bytes everywhere.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

DEFAULT_LEVELS = {"gzip": 1, "zstd": 3}
MAX_LEVELS = {"gzip": 3, "zstd": 19}


class Stream(Protocol):
    def write(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._started = False

    def write(self, data: bytes) -> bytes:
        self._crc = isal_zlib.crc32(data, self._crc)
        self._size += len(data)
        out: bytes = self._c.compress(data)
        if not self._started:
            self._started = True
            return _GZIP_HEADER + out
        return out

    def finish(self) -> bytes:
        head = b"" if self._started else _GZIP_HEADER
        tail: bytes = self._c.flush()
        return head + tail + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)


class _Zstd:
    def __init__(self, level: int) -> None:
        # threads=0: single-threaded, so frame layout never depends on scheduling.
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=0, write_checksum=1)
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
    level: int

    @property
    def identity(self) -> str:
        """Library, version and level: any change here changes the compressed bytes."""
        if self.kind == "gzip":
            import isal

            return f"gzip/isal-{isal.__version__}/l{self.level}/b{BLOCK}"
        if self.kind == "zstd":
            return f"zstd/zstandard-{zstandard.__version__}-{zstandard.ZSTD_VERSION}/l{self.level}/b{BLOCK}"
        return "none"

    def stream(self) -> Stream:
        if self.kind == "gzip":
            return _Gzip(self.level)
        if self.kind == "zstd":
            return _Zstd(self.level)
        return _Identity()


def make_compressor(kind: str, level: int | None = None) -> Compressor:
    if kind not in ("gzip", "zstd", "none"):
        raise UsageError(f"unknown compression {kind!r}: use gzip or zstd")
    if kind == "none":
        return Compressor("none", 0)
    lvl = DEFAULT_LEVELS[kind] if level is None else level
    if not 0 <= lvl <= MAX_LEVELS[kind]:
        raise UsageError(f"{kind} level must be between 0 and {MAX_LEVELS[kind]}, got {lvl}")
    return Compressor(kind, lvl)  # type: ignore[arg-type]
