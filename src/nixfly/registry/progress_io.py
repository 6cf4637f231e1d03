"""A layer wrapper whose reads report progress (for download bars), leaving bytes untouched."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from nixfly.image import Layer
from nixfly.image.mediatypes import Compression


@dataclass(frozen=True)
class ProgressLayer:
    """Delegates to ``inner``; every read calls ``advance(n_bytes)``."""

    inner: Layer
    advance: Callable[[int], None]

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
    def compression(self) -> Compression:
        return self.inner.compression

    def open(self) -> BinaryIO:
        return io.BufferedReader(_Reporting(self.inner.open(), self.advance), 256 * 1024)


class _Reporting(io.RawIOBase):
    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        super().__init__()
        self._raw, self._advance = raw, advance

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        if n:
            self._advance(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
