"""A layer's tar stream read once, every byte checked once: the one pipeline ``inspect``, the closure diff and
a build's base image read layers through.

compressed blob (``layer.compressed()``, which the ``Layer`` protocol has check its own digest and size; a
stream that is not a ``CheckedReader`` is checked here) → progress count → decompressor → diff_id check → the
caller's tar reader. After the caller is done the rest is
drained, so both checks run at the end of the stream: nothing is hashed twice and nothing goes unchecked.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar, cast

from nixfly.errors import ImageError
from nixfly.image.compression import decompressing_reader
from nixfly.image.digest import CheckedReader, VerifyingReader, counting_reader

if TYPE_CHECKING:
    from nixfly.image.model import Layer

T = TypeVar("T")
_CHUNK = 1 << 20


def read_layer_stream(
    layer: Layer,
    consume: Callable[[BinaryIO], T],
    *,
    where: str,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[T, int]:
    """``consume`` ``layer``'s uncompressed tar stream; returns what it returned and the uncompressed size.
    ``on_bytes`` hears the compressed bytes as they are read (for progress). A blob or tar stream that does not
    check out — digest, size, diff_id, a broken compressed or tar stream — is one ImageError naming ``where``."""
    import zstandard

    raw = layer.compressed()
    if not isinstance(raw, CheckedReader):
        # A layer that does not check its own blob (one from outside nixfly: the protocol asks it to, nothing
        # makes it): check its digest and size here, or the "none" case below would trust it unread.
        raw = cast(BinaryIO, VerifyingReader(raw, layer.digest, layer.size, what=f"layer blob {layer.digest}"))
    try:
        counted = counting_reader(raw, on_bytes)
        if layer.compression == "none" and layer.diff_id == layer.digest:
            plain: BinaryIO = cast(BinaryIO, counted)  # the same bytes, the same hash: checked once already
        else:
            unpacked = decompressing_reader(layer.compression, cast(BinaryIO, counted))
            plain = cast(BinaryIO, VerifyingReader(unpacked, layer.diff_id, None, what="uncompressed bytes (diff_id)"))
        try:
            result = consume(plain)
            while plain.read(_CHUNK):  # the tar end-of-archive padding counts towards the diff_id
                pass
            while counted.read(_CHUNK):  # anything after the compressed stream: the digest check sees it
                pass
        except ImageError as e:
            raise ImageError(f"{where}: {e}") from None
        except (tarfile.TarError, OSError, EOFError, ValueError, zstandard.ZstdError) as e:
            raise ImageError(f"{where}: not a readable {layer.compression} tar stream ({e})") from None
        if isinstance(raw, CheckedReader) and not raw.verified:
            raise ImageError(f"{where}: the blob was not read to its end")
    finally:
        raw.close()
    return result, plain.tell() if isinstance(plain, VerifyingReader) else counted.count
