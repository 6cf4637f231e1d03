"""The content-addressed blob store and layer index under the XDG cache dir.

``blobs/sha256/<hex>`` holds compressed layer blobs that nixfly made; ``layers/<key>.json`` remembers,
for a key derived from what cannot change (sorted store paths, compressor identity, ownership rules,
mtime), which blob that layer is. Every write is temp file + atomic rename, so concurrent builds and
``kill -9`` never leave a truncated blob under a final name; on reuse the blob's size is checked, and
its digest too unless its inode/size/mtime are exactly those recorded right after it was written.

The stat shortcut cannot see bytes changed in place with the mtime put back (or a disk's bit rot), so a
sink verifies a cached blob's digest before hard-linking it into an output (once per process; blobs
this process wrote are known good: :func:`nixfly.fsutil.sha256_matches`).

Temp files carry their writer's pid (``blob.<pid>.<random>``, and the directories of NAR downloads,
``nars.<pid>.<random>``); opening the cache removes the ones whose writer is gone (a ``kill -9`` leftover,
up to a whole layer's size, or GBs of NARs) — or whose pid now belongs to a process started after the
file was last written, which therefore cannot be its writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nixfly.errors import NixflyError
from nixfly.fsutil import atomic_write_bytes, note_sha256, refuse_nix_store
from nixfly.image import canonical_json
from nixfly.image.digest import digest_hex, file_digest
from nixfly.image.mediatypes import Compression


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nixfly"


# A temp name without a pid (written by an older nixfly) is only swept once it is this old.
_ANONYMOUS_TEMP_AGE = 24 * 3600.0
_TEMP_PID = re.compile(r"^[A-Za-z]+\.(\d+)\.")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_gone(pid: int, mtime: float) -> bool:
    """Whether the process that last wrote a temp file (``pid`` at ``mtime``) no longer exists: the pid
    is free, or it belongs to a process that started after the write (the pid was reused)."""
    if not pid_alive(pid):
        return True
    started = process_start_time(pid)
    return started is not None and started > mtime + 1.0  # /proc's start time has tick granularity


def sweep_stale_temps(directory: Path) -> list[Path]:
    """Remove temp files in ``directory`` whose writer is gone (see ``owner_gone``); returns them.

    Nothing outside the directory is ever touched: a ``directory`` that is itself a symlink (``cache/tmp``
    pointing elsewhere) is not swept at all, entries are removed by name relative to the directory as it
    was opened, symlinks and other special entries are left alone, and a directory entry (a dead build's
    NAR downloads) is removed without following any link inside it."""
    removed: list[Path] = []
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        now = time.time()
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue  # nixfly writes only files and directories here
            m = _TEMP_PID.match(e.name)
            if not (owner_gone(int(m.group(1)), st.st_mtime) if m else now - st.st_mtime > _ANONYMOUS_TEMP_AGE):
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(e.name, dir_fd=fd)
                else:
                    os.unlink(e.name, dir_fd=fd)
                removed.append(directory / e.name)
    finally:
        os.close(fd)
    return removed


@dataclass(frozen=True)
class CachedLayer:
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    compression: Compression
    path: Path


class BlobCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        refuse_nix_store(self.root, "cache dir")
        self.blobs = self.root / "blobs" / "sha256"
        self.index = self.root / "layers"
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.index.mkdir(parents=True, exist_ok=True)
            self.tmp = self.root / "tmp"
            self.tmp.mkdir(exist_ok=True)
        except OSError as e:
            raise NixflyError(f"cannot use cache dir {self.root}: {e.strerror}") from None
        sweep_stale_temps(self.tmp)

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(canonical_json(parts)).hexdigest()

    @staticmethod
    def diff_id_key(diff_id: str, compressor_identity: str) -> str:
        """The index key of a layer known by its uncompressed digest (a layer read from a docker-archive),
        compressed by the compressor with this identity: same tar bytes + same compressor → same blob."""
        return BlobCache.key({"kind": "diff_id", "diff_id": diff_id, "compressor": compressor_identity})

    @contextlib.contextmanager
    def new_blob(self) -> Iterator[tuple[BinaryIO, list[Path]]]:
        """A temp file for a blob being written; ``commit`` moves it to its digest name."""
        fd, name = tempfile.mkstemp(prefix=f"blob.{os.getpid()}.", dir=self.tmp)
        holder = [Path(name)]
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, holder
        finally:
            with contextlib.suppress(OSError):
                os.unlink(holder[0])

    def commit(self, tmp: Path, digest: str) -> Path:
        dst = self.blob_path(digest)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dst)  # identical content if another build raced us: replacing is harmless
        note_sha256(dst, digest)  # hashed as it was written: sinks need not read it again
        return dst

    def remember(self, key: str, layer: CachedLayer) -> None:
        st = os.stat(layer.path)
        rec = {
            "digest": layer.digest,
            "diff_id": layer.diff_id,
            "size": layer.size,
            "uncompressed_size": layer.uncompressed_size,
            "compression": layer.compression,
            "stat": [st.st_ino, st.st_size, st.st_mtime_ns],
        }
        atomic_write_bytes(self.index / f"{key}.json", canonical_json(rec), durable=False)  # a cache: no fsync

    def lookup(self, key: str) -> CachedLayer | None:
        """The cached layer for ``key``, or None if unknown or its blob is missing or corrupt."""
        try:
            rec = json.loads((self.index / f"{key}.json").read_bytes())
            digest = rec["digest"]
            path = self.blob_path(digest)
            st = os.stat(path)
        except (OSError, ValueError, KeyError, NixflyError):
            return None
        if st.st_size != rec["size"]:
            return None
        if rec.get("stat") != [st.st_ino, st.st_size, st.st_mtime_ns]:
            actual, _ = file_digest(path)
            if actual != digest:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return None
            note_sha256(path, digest)
        return CachedLayer(digest, rec["diff_id"], rec["size"], rec["uncompressed_size"], rec["compression"], path)
