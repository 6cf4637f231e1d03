"""One layer blob read once as a tar stream: compressed bytes → decompressor → ``tarfile`` in ``r|`` mode, through
the image package's one pipeline (``nixfly.image.tarstream``), so the blob's size and digest and its diff_id are
checked as a by-product, each byte hashed once. The report, the file tree and ``--why`` all read layers here."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from nixfly.image import Layer
from nixfly.image.tarstream import read_layer_stream

T = TypeVar("T")


def read_layer_tar(
    where: str,
    layer: Layer,
    *,
    consume: Callable[[tarfile.TarFile], T],
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[T, int]:
    """``consume`` the layer's tar stream; returns what it returned and the uncompressed size. Any failure, a
    verification one included, is one ImageError naming ``where``."""

    def walk(stream: BinaryIO) -> T:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            return consume(tf)

    return read_layer_stream(layer, walk, where=where, on_bytes=on_bytes)
