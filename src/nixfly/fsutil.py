"""Files in and out, safely.

Out: write to a temp name beside the target, fsync it, rename, fsync the directory. Never a half-written
file, even after a crash: the one helper every module uses for files it writes.

In: a file that is read whole (nixfly.toml, fly.toml, a closure file, a layout's ``index.json``, a
manifest or config blob) is read by :func:`read_regular`: a regular file only (a FIFO would block for
ever, ``/dev/zero`` never ends), at most a size limit; text must be UTF-8 (:func:`read_text_file`);
JSON and TOML documents are parsed by :func:`load_json` / :func:`load_toml`, which refuse nesting
deeper than :data:`MAX_NESTING` instead of running out of stack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from nixfly.errors import NixflyError, UsageError


def refuse_nix_store(path: Path | str, what: str) -> None:
    """Nothing nixfly writes may land inside the Nix store (``$NIX_STORE_DIR``, default /nix/store): its
    paths are immutable and known by their hashes, and as root nothing else stops a write there (a cache
    dir or an ``oci:`` output given as ``./result`` would change a store path under Nix's feet)."""
    store = os.path.realpath(os.environ.get("NIX_STORE_DIR", "/nix/store"))
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return  # a path that cannot be resolved is refused by whatever opens it
    if real == store or real.startswith(store.rstrip("/") + "/"):
        raise UsageError(f"{what} {path} is inside the Nix store ({store}), which nixfly never writes to")


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int = 0o644, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``target`` only if the block completes without error.
    ``durable=False`` skips the fsyncs, for caches that are rebuilt when lost (the rename stays atomic)."""
    target = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise NixflyError(f"cannot write {target}: {e.strerror}") from None
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        if durable:
            fsync_dir(target.parent)
        ok = True
    except OSError as e:
        raise NixflyError(f"cannot write {target}: {e.strerror}") from None
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(target: Path, text: str, mode: int = 0o644, *, durable: bool = True) -> None:
    atomic_write_bytes(target, text.encode(), mode, durable=durable)


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    with atomic_writer(target, mode, durable=durable) as f:
        f.write(data)


def link_or_copy(src: Path, dst: Path) -> None:
    """Place an immutable blob at ``dst`` atomically: hard link when possible (same filesystem), else copy."""
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise NixflyError(f"cannot write {dst}: {e.strerror}") from None


# Files whose SHA-256 this process has seen: (device, inode, size, mtime_ns) and the digest.
_SHA256_SEEN: set[tuple[tuple[int, int, int, int], str]] = set()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def note_sha256(path: Path, digest: str) -> None:
    """Record that the file at ``path`` has ``digest`` ("sha256:<hex>"): its writer hashed the bytes as it
    wrote them, so :func:`sha256_matches` need not read them again in this process."""
    with contextlib.suppress(OSError):
        _SHA256_SEEN.add((_identity(os.stat(path)), digest))


def sha256_matches(path: Path, digest: str) -> bool:
    """Whether the file at ``path`` hashes to ``digest`` ("sha256:<hex>"). Read at most once per process
    while the file keeps its device, inode, size and mtime; ``OSError`` if it cannot be read."""
    import hashlib

    with open(path, "rb") as f:
        key = (_identity(os.fstat(f.fileno())), digest)
        if key in _SHA256_SEEN:
            return True
        ok = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == digest
    if ok:
        _SHA256_SEEN.add(key)
    return ok


def copy_stream_to(src: BinaryIO, dst: Path) -> None:
    with atomic_writer(dst) as f:
        shutil.copyfileobj(src, f, 1 << 20)


# -- reading documents whole ---------------------------------------------------------------------------

CONFIG_FILE_MAX = 4 << 20
"""The largest configuration file (nixfly.toml, fly.toml) nixfly reads: hand-written files are a few KiB."""

MAX_NESTING = 64
"""How deep arrays and tables may nest in a document nixfly parses. OCI documents, closure files and
our configuration files need fewer than 10 levels; the parsers recurse per level, so a hostile 10,000-deep
document would otherwise end in a RecursionError, or get through the parser and break a later walker."""


class NestingError(ValueError):
    """A JSON or TOML document nested deeper than :data:`MAX_NESTING`. A ``ValueError``, like a syntax
    error, so callers that refuse malformed documents refuse this too."""

    def __init__(self, limit: int = MAX_NESTING) -> None:
        super().__init__(f"nested more than {limit} levels deep")
        self.msg = str(self)


def _too_deep(doc: object, limit: int) -> bool:
    """Whether lists and dicts in ``doc`` nest deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def load_json(data: bytes | str, limit: int = MAX_NESTING) -> Any:
    """``json.loads``, refusing documents nested deeper than ``limit`` with :class:`NestingError` (the
    other errors are ``json.loads``'s: ``ValueError``, ``UnicodeDecodeError``)."""
    import json

    try:
        doc = json.loads(data)
    except RecursionError:
        raise NestingError(limit) from None
    if _too_deep(doc, limit):
        raise NestingError(limit)
    return doc


def load_toml(text: str, limit: int = MAX_NESTING) -> dict[str, Any]:
    """``tomllib.loads``, refusing documents nested deeper than ``limit`` with :class:`NestingError`
    (arrays, inline tables, dotted keys and table headers all count)."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise NestingError(limit) from None
    if _too_deep(doc, limit):
        raise NestingError(limit)
    return doc


def is_regular_file(path: Path | str) -> bool:
    """Whether ``path`` names a regular file (symlinks followed). Never raises: a name too long for the
    system, or one that is not a path at all, is simply not a file (``Path.is_file`` raises for those)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_regular(
    path: Path | str, limit: int, what: str | None = None, error: type[NixflyError] = NixflyError
) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks are followed), if there are at most ``limit``.

    A FIFO, a device, a socket or a directory is refused with ``error`` (opening never blocks: a FIFO
    without a writer would wait for ever), as is a file larger than ``limit`` (checked before reading and
    while reading, for a file that grows). Failing to open or read raises the ``OSError`` as it is, so
    callers keep their own wording for a missing file."""
    name = what or str(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name} is not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise error(f"{name} is larger than {_size(limit)} ({_size(st.st_size)})")
        parts: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(limit + 1 - got, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        if got > limit:
            raise error(f"{name} is larger than {_size(limit)}")
        return b"".join(parts)
    finally:
        os.close(fd)


def read_text_file(
    path: Path | str, limit: int, what: str | None = None, error: type[NixflyError] = NixflyError
) -> str:
    """:func:`read_regular`, decoded as UTF-8; other bytes are refused with ``error`` naming where."""
    data = read_regular(path, limit, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(
            f"{what or path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, column {col})"
        ) from None


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))  # fmt: skip


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def human_size(n: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB`` (negative counts keep their
    sign, for size changes)."""
    f = float(abs(n))
    sign = "-" if n < 0 else ""
    for unit in ("B", "KiB", "MiB"):
        if f < 1024:
            return f"{sign}{f:.0f} {unit}" if unit == "B" else f"{sign}{f:.1f} {unit}"
        f /= 1024
    return f"{sign}{f:.1f} GiB"


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n} bytes"
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n / (1 << 20):.1f} MiB"
