"""A layer wrapper whose reads report progress (for download bars), leaving bytes untouched."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from nixfly.image.model import LayerWrapper


@dataclass(frozen=True)
class ProgressLayer(LayerWrapper):
    """Delegates to ``inner``; every read of the compressed blob calls ``advance(n_bytes)``."""

    advance: Callable[[int], None] = lambda n: None

    def compressed(self) -> BinaryIO:
        return io.BufferedReader(_Reporting(self.inner.compressed(), self.advance), 256 * 1024)


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
