"""A layer wrapper whose reads report progress (for download bars), leaving bytes untouched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from nixfly.image.digest import counting_reader
from nixfly.image.model import LayerWrapper


@dataclass(frozen=True)
class ProgressLayer(LayerWrapper):
    """Delegates to ``inner``; every read of the compressed blob calls ``advance(n_bytes)``. The reader stays a
    ``CheckedReader`` when ``inner``'s is one, so whatever consumes it does not hash the bytes a second time."""

    advance: Callable[[int], None] = lambda n: None

    def compressed(self) -> BinaryIO:
        return cast(BinaryIO, counting_reader(self.inner.compressed(), self.advance))
