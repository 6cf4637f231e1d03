"""Content digests (``sha256:<hex>``) and their validation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable

from nixfly.errors import ImageError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_BLOCK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed sha256 digest, else raise ImageError."""
    if not _DIGEST_RE.match(value):
        raise ImageError(f"not a sha256 digest: {value!r}")
    return value


def digest_hex(digest: str) -> str:
    return check_digest(digest).split(":", 1)[1]


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 digest and size of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


@runtime_checkable
class CheckedReader(Protocol):
    """A reader that checks the bytes it returns against a digest itself and raises ImageError, at the latest
    when its end is read, if they do not match — so whoever consumes it (an upload) need not hash them again.
    ``expected_digest`` is None while the digest is not known yet (a blob still being written)."""

    @property
    def expected_digest(self) -> str | None: ...

    @property
    def verified(self) -> bool:
        """The end was read and every byte up to it matched the digest."""
        ...

    def read(self, n: int = -1) -> bytes: ...


class VerifyingReader:
    """Reads ``raw`` and, when it ends, checks that the bytes had digest ``digest`` (and ``size`` bytes, when
    given); a mismatch raises ImageError naming ``what``. Nothing can be read past ``size``.

    Seeking back to bytes already read, or forward (the skipped bytes are read and hashed), keeps the check
    intact, so an uploader may rewind to resume a chunk."""

    def __init__(self, raw: BinaryIO, digest: str, size: int | None, *, what: str) -> None:
        self._raw, self._digest, self._size, self._what = raw, check_digest(digest), size, what
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) went through the hash
        self._pos = 0
        self._verified = False

    @property
    def verified(self) -> bool:
        return self._verified

    @property
    def expected_digest(self) -> str:
        """The digest the bytes are checked against."""
        return self._digest

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(getattr(self._raw, "seekable", lambda: False)())

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self._size is not None:
            left = self._size - self._pos
            n = left if n is None or n < 0 else min(n, left)
            if n == 0:
                self._at_end()
                return b""
        data = self._raw.read(n) if n is not None and n >= 0 else self._raw.read()
        if not data:
            self._at_end()
            return b""
        new_from = self._hashed - self._pos
        if new_from < len(data):
            self._hash.update(memoryview(data)[max(new_from, 0) :])
            self._hashed = self._pos + len(data)
        self._pos += len(data)
        if self._size is not None and self._pos == self._size:
            self._at_end()  # consumers that read exactly ``size`` bytes never ask for the EOF
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _at_end(self) -> None:
        if self._verified or self._hashed != self._pos:
            return
        if self._size is not None:
            # Anything beyond the declared size is a mismatch too.
            extra = self._raw.read(1)
            if extra:
                raise ImageError(f"{self._what} is longer than its declared {self._size} bytes")
            if self._pos != self._size:
                raise ImageError(f"{self._what} is truncated: {self._pos} of {self._size} bytes")
        got = "sha256:" + self._hash.hexdigest()
        if got != self._digest:
            raise ImageError(f"{self._what} does not match its digest (got {got}): the data is corrupt")
        self._verified = True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("VerifyingReader seeks only to absolute positions")
        if pos > self._hashed:
            self._raw.seek(self._hashed)
            self._pos = self._hashed
            while self._pos < pos:
                if not self.read(min(1 << 20, pos - self._pos)):
                    break
            return self._pos
        self._raw.seek(pos)
        self._pos = pos
        return pos

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(getattr(self._raw, "closed", False))

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingReader:
    """Passes reads through, counting the bytes and telling ``on_bytes`` the size of every non-empty chunk
    (for progress). It hashes nothing: see :func:`counting_reader` to keep a checked reader checked."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self.count = 0

    def _seen(self, data: bytes) -> None:
        self.count += len(data)
        if self._on_bytes is not None:
            self._on_bytes(len(data))

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._seen(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def drain(self) -> None:
        """Read whatever is left."""
        while self.read(_BLOCK):
            pass

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckedBy:
    """Mixin for a reader that passes on the bytes of a :class:`CheckedReader` (``_checked_by()``): it is one
    too, with that reader's digest and verdict."""

    def _checked_by(self) -> CheckedReader:
        raise NotImplementedError

    @property
    def expected_digest(self) -> str | None:
        return self._checked_by().expected_digest

    @property
    def verified(self) -> bool:
        return self._checked_by().verified


class _CheckedCounting(CheckedBy, CountingReader):
    """A :class:`CountingReader` over a :class:`CheckedReader`, and one itself."""

    def _checked_by(self) -> CheckedReader:
        return cast(CheckedReader, self._raw)


def counting_reader(raw: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> CountingReader:
    """``raw`` with its bytes counted (and told to ``on_bytes``); still a ``CheckedReader`` when ``raw`` is
    one, so a consumer that trusts a checked reader (an upload) does not hash the bytes again."""
    return _CheckedCounting(raw, on_bytes) if isinstance(raw, CheckedReader) else CountingReader(raw, on_bytes)


class HashingReader(CountingReader):
    """A file-like reader that passes reads through while hashing (sha256) and counting the bytes, so a
    stream can be checked against its digest as it is consumed, with no second pass. ``on_bytes`` hears
    the size of every non-empty chunk (for progress)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> None:
        super().__init__(raw, on_bytes)
        self.hash = hashlib.sha256()

    def _seen(self, data: bytes) -> None:
        self.hash.update(data)
        super()._seen(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()
