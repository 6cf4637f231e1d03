"""Content digests (``sha256:<hex>``) and their validation."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from nixfly.errors import ImageError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


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
