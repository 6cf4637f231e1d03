"""A blob that is still being written: the bridge that lets a layer upload while it is compressed.

The layer builder writes the compressed bytes to a file (its cache temp file) and tells the
:class:`GrowingBlob` how far it got; a reader elsewhere (the registry sink) waits for bytes, reads them by
position from its own descriptor — opened before the writer renames the file to its digest name, so the
rename never disturbs it — and learns the digest and size only when the writer finishes. The file is the
buffer, so a slow wire never slows the compressor and a fast wire waits for it.

One SHA-256 pass per byte: the writer hashes each piece for its digest as it writes it and hands the blob
the piece itself, which the blob keeps in memory (up to ``HOLD_MAX`` bytes over the whole process) until a
reader has taken it. A reader sends those very bytes, which the digest covers, without hashing them again;
bytes it has to read back from the file (it fell behind what memory holds, or the writer gave no pieces) are
hashed as they are read and checked against the digest at the end, so what goes out always matches it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from nixfly.errors import ImageError

HOLD_MAX = 64 << 20
"""Bytes of written pieces held in memory for readers, over every blob of the process: a few PATCH chunks'
worth, which a reader keeping up with its writer (a fast wire) needs; a reader further behind (a slow wire,
where the CPU is not what limits) reads back from the file and hashes."""

_hold_lock = threading.Lock()
_held_total = 0


def _hold(n: int) -> bool:
    global _held_total
    with _hold_lock:
        if _held_total + n > HOLD_MAX:
            return False
        _held_total += n
        return True


def _unhold(n: int) -> None:
    global _held_total
    with _hold_lock:
        _held_total -= n


def held_bytes() -> int:
    """Bytes of pieces held in memory now, over all blobs (for tests)."""
    return _held_total


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
        self._reading = 0  # preads in flight: the descriptor is closed after the last one, never under one
        self._pieces: deque[tuple[int, bytes]] = deque()  # (offset, bytes) the writer hashed, not yet taken
        self._held = 0
        self._holding = True  # false once a piece was not kept: later ones would not follow on

    # -- writer side --------------------------------------------------------------------------------------

    def wrote(self, n: int, piece: bytes | None = None) -> None:
        """``n`` more bytes are in the file (flushed to the kernel, so another descriptor reads them).
        ``piece``: those bytes themselves, exactly as hashed into the digest :meth:`finish` will report;
        readers may then send them from memory without hashing them again."""
        if n:
            with self._cond:
                if piece is not None and len(piece) == n and self._holding and not self._closed and _hold(n):
                    self._pieces.append((self._written, piece))
                    self._held += n
                else:
                    self._holding = False
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
        with self._cond:
            if self._closed:
                raise ImageError(f"{self.label or 'blob'}: read after close")
            n = max(0, min(n, self._written - offset))
            if not n:
                return b""
            self._reading += 1
        try:
            return os.pread(self._fd, n, offset)
        finally:
            with self._cond:
                self._reading -= 1
                last = self._closed and not self._reading
            if last:
                os.close(self._fd)

    def held(self, offset: int, n: int) -> bytes | None:
        """Up to ``n`` bytes at ``offset`` from a piece the writer handed over (never past its end), or None
        if no held piece covers ``offset``."""
        with self._cond:
            for start, data in self._pieces:
                if start > offset:
                    break
                if offset < start + len(data):
                    return data if offset == start and n >= len(data) else data[offset - start : offset - start + n]
        return None

    def release(self, upto: int) -> None:
        """A reader has taken the bytes before ``upto``: drop the pieces that lie wholly before it."""
        with self._cond:
            freed = 0
            while self._pieces and self._pieces[0][0] + len(self._pieces[0][1]) <= upto:
                freed += len(self._pieces.popleft()[1])
            self._held -= freed
        if freed:
            _unhold(freed)

    def _drop_pieces(self) -> None:
        with self._cond:
            freed, self._held = self._held, 0
            self._pieces.clear()
            self._holding = False
        if freed:
            _unhold(freed)

    def close(self) -> None:
        """Drop the held pieces and close the descriptor (at once, or after the reads in flight): later reads
        raise ImageError. Any thread may call it, more than once."""
        self._drop_pieces()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            now = not self._reading
            self._cond.notify_all()
        if now:
            os.close(self._fd)


class GrowingWriter:
    """The file object a compressor writes through: each write goes to the file and is announced with its
    bytes — which must be the bytes the writer's digest covers, as they are for ``HashingSink``, which hashes
    each piece just before writing it."""

    def __init__(self, f: BinaryIO, blob: GrowingBlob) -> None:
        self._f = f
        self._blob = blob

    def write(self, data: bytes | bytearray | memoryview) -> int:
        piece = data if isinstance(data, bytes) else bytes(data)
        n = self._f.write(piece)
        self._f.flush()
        self._blob.wrote(len(piece), piece)
        return int(n) if n is not None else len(piece)

    def flush(self) -> None:
        self._f.flush()


class GrowingReader:
    """A seekable reader over what a :class:`GrowingBlob` has written so far (``read`` never blocks: it
    returns at most what is there, ``b""`` at the written end).

    It checks what it returns (a :class:`~nixfly.image.digest.CheckedReader`): bytes taken from the writer's
    held pieces are the ones its digest covers; bytes read back from the file are hashed, and once the blob is
    finished and its end read, the hash must be the digest, else ImageError. A reader that goes from held
    pieces to the file first hashes the file's bytes before that point (the one case of a second pass: it fell
    behind what memory holds); from then on it hashes every byte it takes, held ones too, since one pass
    over some file bytes proves nothing unless the end check covers them. Bytes read again after seeking back
    are not checked again, as in ``VerifyingReader``."""

    def __init__(self, blob: GrowingBlob) -> None:
        self._blob = blob
        self._pos = 0
        self._checked = 0  # bytes [0, _checked) were taken from held pieces or hashed from the file
        # Of [0, _checked) once the file was read from; None while every byte came from held pieces. Once
        # set it stays: held bytes after file bytes are hashed too, so the end check covers the file's.
        self._hash: hashlib._Hash | None = None
        self._verified = False

    @property
    def expected_digest(self) -> str | None:
        return self._blob.digest

    @property
    def verified(self) -> bool:
        return self._verified

    def read(self, n: int = -1) -> bytes:
        while self._checked < self._pos:  # seeked forward: check the bytes skipped
            if not self._take(min(1 << 20, self._pos - self._checked)):
                break
        left = self._blob.written - self._pos
        n = left if n < 0 else min(n, left)
        if n <= 0:
            self._check_end()
            return b""
        if self._pos < self._checked:  # read again: already checked
            n = min(n, self._checked - self._pos)
            data = self._blob.held(self._pos, n) or self._blob.pread(n, self._pos)
        else:
            data = self._take(n)
        self._pos += len(data)
        return data

    def _take(self, n: int) -> bytes:
        """Up to ``n`` new bytes at ``_checked``, accounted for."""
        at = self._checked
        data = self._blob.held(at, n)
        if data is not None:
            if self._hash is not None:  # the file's bytes before it are in the hash: so must these be
                self._hash.update(data)
        else:
            if self._hash is None:
                self._hash = self._hash_file(at)
            data = self._blob.pread(n, at)
            self._hash.update(data)
        self._checked += len(data)
        self._blob.release(self._checked)
        self._check_end()
        return data

    def _hash_file(self, end: int) -> hashlib._Hash:
        """The hash of the file's bytes [0, end): the pieces taken before are in the file too."""
        h = hashlib.sha256()
        pos = 0
        while pos < end:
            chunk = self._blob.pread(min(1 << 20, end - pos), pos)
            if not chunk:
                raise ImageError(f"{self._blob.label or 'blob'} is shorter than the bytes already read")
            h.update(chunk)
            pos += len(chunk)
        return h

    def _check_end(self) -> None:
        blob = self._blob
        if self._verified or blob.digest is None or blob.size != self._checked:
            return
        if self._hash is not None and "sha256:" + self._hash.hexdigest() != blob.digest:
            raise ImageError(f"blob {blob.digest} does not match its digest; the local copy is corrupt")
        self._verified = True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._blob.written + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """The blob's owner closes the descriptor; a reader has nothing of its own."""
