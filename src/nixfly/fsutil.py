"""Atomic file output: write to a temp name beside the target, fsync it, rename, fsync the directory.
Never a half-written file, even after a crash: the one helper every module uses for files it writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nixfly.errors import NixflyError


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


def copy_stream_to(src: BinaryIO, dst: Path) -> None:
    with atomic_writer(dst) as f:
        shutil.copyfileobj(src, f, 1 << 20)
