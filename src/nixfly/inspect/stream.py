"""One layer blob read once as a tar stream: compressed bytes → decompressor → ``tarfile`` in ``r|`` mode,
both sides hashed on the way, so the blob's size and digest and its diff_id are checked as a by-product.
The report, the file tree and ``--why`` all read layers through here."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import BinaryIO, TypeVar, cast

import zstandard

from nixfly.errors import ImageError
from nixfly.image.compression import decompressing_reader
from nixfly.image.digest import HashingReader

T = TypeVar("T")


def read_layer_tar(
    where: str,
    blob: BinaryIO,
    compression: str,
    *,
    size: int,
    digest: str,
    diff_id: str,
    consume: Callable[[tarfile.TarFile], T],
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[T, int]:
    """``consume`` the layer's tar stream (``blob`` is closed after); returns what it returned and the
    uncompressed size. Any failure, a verification one included, is one ImageError naming ``where``."""
    try:
        raw = HashingReader(blob, on_bytes)
        plain = HashingReader(decompressing_reader(compression, cast(BinaryIO, raw)))
        try:
            with tarfile.open(fileobj=cast(BinaryIO, plain), mode="r|") as tf:
                result = consume(tf)
            plain.drain()  # the tar end-of-archive padding counts towards the diff_id
            raw.drain()
        except ImageError as e:  # the blob's own digest check failed
            raise ImageError(f"{where}: {e}") from None
        except (tarfile.TarError, OSError, EOFError, ValueError, zstandard.ZstdError) as e:
            raise ImageError(f"{where}: not a readable {compression} tar stream ({e})") from None
    finally:
        blob.close()
    if raw.count != size or raw.digest != digest:
        raise ImageError(f"{where}: blob has {raw.count} bytes hashing to {raw.digest}; the manifest says otherwise")
    if plain.digest != diff_id:
        raise ImageError(f"{where}: uncompressed bytes hash to {plain.digest}, but the config says {diff_id}")
    return result, plain.count
