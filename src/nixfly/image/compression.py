"""Reading compressed layer blobs: gzip (ISA-L), zstd, or plain; and telling them apart by their magic."""

from __future__ import annotations

from typing import Any, BinaryIO, Literal, cast

Kind = Literal["gzip", "zstd", "none"]


class _Closing:
    """A decompressing reader that also closes the stream it reads from (gzip readers do not)."""

    def __init__(self, inner: Any, raw: BinaryIO) -> None:
        self._inner, self._raw = inner, raw

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._inner.read(n)
        return data

    def readinto(self, b: Any) -> int:
        n: int = self._inner.readinto(b)
        return n

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._raw.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decompressing_reader(kind: str, raw: BinaryIO) -> BinaryIO:
    """A reader yielding the uncompressed bytes of a gzip / zstd / plain stream; closing it closes ``raw``."""
    if kind == "gzip":
        from isal import igzip

        return _Closing(igzip.IGzipFile(fileobj=raw, mode="rb"), raw)  # type: ignore[no-untyped-call,return-value]
    if kind == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return cast(BinaryIO, reader)
    return raw


def sniff_compression(head: bytes) -> Kind:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"
