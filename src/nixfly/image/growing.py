"""A blob that is still being written: the bridge that lets a layer upload while it is compressed.

The layer builder writes the compressed bytes to a file (its cache temp file) and tells the
:class:`GrowingBlob` how far it got; a reader elsewhere (the registry sink) waits for bytes, reads them by
position from its own descriptor — opened before the writer renames the file to its digest name, so the
rename never disturbs it — and learns the digest and size only when the writer finishes. Nothing is held in
memory: the file is the buffer, so a slow wire never slows the compressor and a fast wire waits for it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

from nixfly.errors import ImageError


class GrowingBlob:
    """Writer: :meth:`wrote` after each write that reached the file, then :meth:`finish` or :meth:`fail`.
    Readers: :meth:`wait` for bytes, :meth:`pread` them, :attr:`digest`/:attr:`size` once :attr:`done`."""

    def __init__(self, path: Path, label: str = "") -> None:
        self.label = label
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._cond = threading.Condition()
        self._written = 0
        self._digest: str | None = None
        self._error: str | None = None
        self._closed = False

    # -- writer side --------------------------------------------------------------------------------------

    def wrote(self, n: int) -> None:
        """``n`` more bytes are in the file (flushed to the kernel, so another descriptor reads them)."""
        if n:
            with self._cond:
                self._written += n
                self._cond.notify_all()

    def finish(self, digest: str, size: int) -> None:
        with self._cond:
            if size != self._written:
                self._error = f"internal error: blob {digest} is {size} bytes but {self._written} were announced"
            self._digest = digest
            self._cond.notify_all()

    def fail(self, reason: str) -> None:
        with self._cond:
            if self._digest is None:
                self._error = reason
            self._cond.notify_all()

    # -- reader side --------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        with self._cond:
            return self._digest is not None or self._error is not None

    @property
    def digest(self) -> str | None:
        return self._digest

    @property
    def size(self) -> int | None:
        return self._written if self._digest is not None else None

    @property
    def written(self) -> int:
        return self._written

    def wait(self, n: int, timeout: float | None = None) -> int:
        """Block until at least ``n`` bytes are written or the writer is done; returns the bytes written.
        Raises ImageError if the writer failed."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._written >= n or self._digest is not None or self._error is not None, timeout
            )
            if self._error is not None:
                raise ImageError(self._error)
            return self._written

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (never past what the writer announced)."""
        if self._closed:
            raise ImageError(f"{self.label or 'blob'}: read after close")
        n = max(0, min(n, self._written - offset))
        return os.pread(self._fd, n, offset) if n else b""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


class GrowingWriter:
    """The file object a compressor writes through: each write goes to the file and is announced."""

    def __init__(self, f: BinaryIO, blob: GrowingBlob) -> None:
        self._f = f
        self._blob = blob

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._f.write(data)
        self._f.flush()
        self._blob.wrote(len(data))
        return int(n) if n is not None else len(data)

    def flush(self) -> None:
        self._f.flush()


class GrowingReader:
    """A seekable reader over what a :class:`GrowingBlob` has written so far (``read`` never blocks: it
    returns at most what is there, ``b""`` at the written end)."""

    def __init__(self, blob: GrowingBlob) -> None:
        self._blob = blob
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._blob.written - self._pos
        data = self._blob.pread(n, self._pos)
        self._pos += len(data)
        return data

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._blob.written + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """The blob's owner closes the descriptor; a reader has nothing of its own."""
