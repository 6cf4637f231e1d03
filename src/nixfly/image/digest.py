"""Content digests (``sha256:<hex>``) and their validation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


class HashingReader:
    """A file-like reader that passes reads through while hashing (sha256) and counting the bytes, so a
    stream can be checked against its digest as it is consumed, with no second pass. ``on_bytes`` hears
    the size of every non-empty chunk (for progress)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self.hash.update(data)
            self.count += len(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(_BLOCK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()
