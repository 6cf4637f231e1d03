"""Unpack an image's layers into a root filesystem, safely, and cache the result by manifest digest.

Layers are applied in order with OCI whiteouts (``.wh.NAME`` hides ``NAME`` of lower layers) and opaque
directories (``.wh..wh..opq`` hides everything lower layers put in that directory). No entry can land
outside the rootfs: names that are absolute or contain ``..`` are refused, and every directory on the way
to an entry is resolved component by component inside the rootfs, so a symlink laid down by a layer is
followed the way the container would see it (absolute targets start at the rootfs) and a symlink that
climbs above the rootfs is refused.

The rootfs is private to us while it is being unpacked (a fresh temp directory nobody else writes), which
is why resolving with ``lstat`` on path strings is safe here: nothing can swap a component under us.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nixfly.build.cache import default_cache_dir, owner_gone
from nixfly.errors import ImageError, NixflyError
from nixfly.image import Image, Layer
from nixfly.image.compression import decompressing_reader
from nixfly.image.digest import HashingReader, digest_hex
from nixfly.run.rootfs import strictly_inside, walk

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# Bumped when unpacking changes in a way that makes older cached trees wrong (v2: no device nodes, no
# set-id bits in the cache; v3: no file capabilities or other security.*/trusted.* attributes).
UNPACK_VERSION = "v3"
# Extended attributes an image never brings along: file capabilities (``security.capability``) grant
# privileges as set-uid bits do, the rest of ``security.*`` is the host's security modules' business, and
# ``trusted.*`` is read by the kernel (overlayfs keeps its own metadata there).
_PRIVILEGED_XATTRS = ("security.", "trusted.")
_BLOCK = 1 << 20


class UnpackError(ImageError):
    """A layer cannot be unpacked: corrupt, or it tries to write outside the rootfs."""


@dataclass(frozen=True)
class UnpackOptions:
    """How ownership is applied. ``keep_owners`` needs root (CAP_CHOWN); without it every file is ours.

    ``keep_setid``: keep set-uid/set-gid bits. Off for the cache: when nixfly runs as root its runtimes
    have no user namespace, so a set-uid root file in the cache would be a real one on the host; without
    root the files are ours and the bits would hand out our identity. File capabilities and other
    ``security.*``/``trusted.*`` attributes are never applied. ``warn`` hears what was skipped (device
    nodes, one line per layer) and what was dropped (set-id bits, capabilities: one line per unpack)."""

    keep_owners: bool
    keep_setid: bool = False
    warn: Callable[[str], None] | None = field(default=None, compare=False)

    @staticmethod
    def for_current_user(warn: Callable[[str], None] | None = None) -> UnpackOptions:
        return UnpackOptions(keep_owners=os.geteuid() == 0, keep_setid=False, warn=warn)


@dataclass
class _Stripped:
    """What unpacking took away from an image's files for safety, told once per unpack."""

    setid: list[str] = field(default_factory=list)
    xattrs: list[str] = field(default_factory=list)

    def tell(self, warn: Callable[[str], None] | None) -> None:
        if warn is None or not (self.setid or self.xattrs):
            return
        names = sorted({*self.setid, *self.xattrs})
        shown = ", ".join("/" + n for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        what = []
        if self.setid:
            what.append(f"set-uid/set-gid bits of {len(self.setid)} file(s)")
        if self.xattrs:
            what.append(f"file capabilities or security attributes of {len(self.xattrs)} file(s)")
        warn(f"dropped {' and '.join(what)} ({shown}): an image's files grant no privileges here")


def entry_parts(name: str, where: str) -> tuple[str, ...]:
    """Split a tar entry name into path components, refusing absolute names and ``..``."""
    if name.startswith("/"):
        raise UnpackError(f"{where}: entry {name!r} has an absolute path; refusing to unpack it")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnpackError(f"{where}: entry {name!r} contains '..'; refusing to unpack it")
    return parts


def resolve_in_root(root: Path, parts: tuple[str, ...] | list[str], where: str, *, create: bool) -> Path | None:
    """The host path of the directory ``parts`` names inside ``root``, following symlinks as the container
    would (absolute targets restart at ``root``). Missing directories are created (0755) when ``create``,
    else the answer is None. A symlink that climbs above ``root`` is refused with UnpackError; so is a
    path through something that is not a directory."""
    r = walk(root, parts, escape_ok=False, create=create, dirs_only=True)
    if r.problem is not None:
        raise UnpackError(f"{where}: {r.problem}; refusing it")
    return r.path


def _remove(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)


def remove_tree(path: Path) -> None:
    """Delete a tree even where directories lack write/execute permission (a non-root unpack or an
    unprivileged container may leave such directories behind)."""

    def fix(func: object, p: str, _exc: object) -> None:
        # Grant ourselves access to the parent and retry once; failing again is a real error.
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p)
                return
            os.unlink(p)

    if not os.path.lexists(path):
        return
    shutil.rmtree(path, onerror=fix)


class _LayerApplier:
    """Applies one layer's tar stream to the rootfs."""

    def __init__(self, root: Path, where: str, opts: UnpackOptions, stripped: _Stripped | None = None) -> None:
        self.root = root
        self.where = where
        self.opts = opts
        self.stripped = stripped if stripped is not None else _Stripped()
        self.written: set[str] = set()  # host paths this layer wrote (incl. directories it created)
        self.whiteouts: list[Path] = []
        self.opaque: list[Path] = []
        self.dir_meta: list[tuple[Path, tarfile.TarInfo]] = []
        self.skipped_devices: list[str] = []

    def parent_of(self, parts: tuple[str, ...], name: str) -> Path:
        parent = resolve_in_root(self.root, parts[:-1], f"{self.where}: {name!r}", create=True)
        assert parent is not None  # create=True always yields a directory
        for up in (parent, *parent.parents):
            if up == self.root or self.root not in up.parents:
                break
            self.written.add(str(up))
        return parent

    def apply(self, ti: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        parts = entry_parts(ti.name, self.where)
        if not parts:
            return  # the root itself ("./"): its metadata belongs to the runtime, not the image
        base = parts[-1]
        if base == OPAQUE:
            self.opaque.append(self.parent_of(parts, ti.name))
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT) :]
            if hidden.startswith(WHITEOUT):
                return  # other AUFS metadata (.wh..wh.plnk, ...) carries no content for us
            if hidden in ("", ".", "..") or "/" in hidden or "\0" in hidden:
                raise UnpackError(f"{self.where}: whiteout {ti.name!r} names no entry of a directory; refusing it")
            parent = resolve_in_root(self.root, parts[:-1], f"{self.where}: {ti.name!r}", create=False)
            if parent is not None:
                target = parent / hidden
                if not strictly_inside(self.root, target):
                    raise UnpackError(f"{self.where}: whiteout {ti.name!r} leads outside the image root; refusing it")
                self.whiteouts.append(target)
            return
        dest = self.parent_of(parts, ti.name) / base
        self._clear(dest, keep_dir=ti.isdir())
        if ti.isdir():
            if not dest.is_dir():
                os.mkdir(dest, 0o700)
            self.dir_meta.append((dest, ti))
        elif ti.isreg():
            self._write_file(dest, ti, tf, "/".join(parts))
        elif ti.issym():
            os.symlink(ti.linkname, dest)
            self._owner(dest, ti)
        elif ti.islnk():
            if not self._hardlink(dest, ti):
                return
        elif ti.isfifo():
            os.mkfifo(dest, 0o600)
            self._finish(dest, ti, "/".join(parts))
        elif ti.ischr() or ti.isblk():
            # Never a device node from an image (as rootless unpackers do): as root it would be a real
            # door into the host's devices. The runtimes give the container its own minimal /dev.
            self.skipped_devices.append("/".join(parts))
            return
        else:
            return  # sparse/contiguous/unknown types: tarfile already folded sparse into regular files
        self.written.add(str(dest))
        if not ti.isdir():
            with contextlib.suppress(OSError):
                os.utime(dest, ns=(int(ti.mtime) * 10**9,) * 2, follow_symlinks=False)

    def _clear(self, dest: Path, *, keep_dir: bool) -> None:
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return
        _remove(dest)

    def _write_file(self, dest: Path, ti: tarfile.TarInfo, tf: tarfile.TarFile, name: str) -> None:
        src = tf.extractfile(ti)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, _BLOCK)
        self._finish(dest, ti, name)

    def _hardlink(self, dest: Path, ti: tarfile.TarInfo) -> bool:
        what = f"{self.where}: hard link {ti.name!r} -> {ti.linkname!r}"
        tparts = entry_parts(ti.linkname, what)
        if not tparts:
            raise UnpackError(f"{what}: links to the root directory")
        if "/".join(tparts) in self.skipped_devices:
            self.skipped_devices.append(ti.name.strip("/"))
            return False  # a second name for a device node we did not create
        parent = resolve_in_root(self.root, tparts[:-1], what, create=False)
        target = None if parent is None else parent / tparts[-1]
        if target is None or not os.path.lexists(target):
            raise UnpackError(f"{what}: the link target is not in the image")
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise UnpackError(f"{what}: hard links to directories are not allowed")
        os.link(target, dest, follow_symlinks=False)
        return True

    def _owner(self, dest: Path, ti: tarfile.TarInfo) -> None:
        if self.opts.keep_owners:
            os.chown(dest, ti.uid, ti.gid, follow_symlinks=False)

    def _finish(self, dest: Path, ti: tarfile.TarInfo, name: str) -> None:
        # Order matters: chown clears set-id bits and file capabilities, so owner first, then mode, then xattrs.
        self._owner(dest, ti)
        mode = ti.mode & 0o7777
        if not (self.opts.keep_owners and self.opts.keep_setid):
            # Without root the file is ours, and a set-id bit would hand out *our* identity; as root (no
            # user namespace in any runtime) it would be a real set-uid file on the host.
            if mode & (stat.S_ISUID | stat.S_ISGID) and ti.isreg():
                self.stripped.setid.append(name)
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        os.chmod(dest, mode)
        self._xattrs(dest, ti, name)

    def _xattrs(self, dest: Path, ti: tarfile.TarInfo, name: str) -> None:
        dropped = False
        for key, value in ti.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr.") :]
            if attr.startswith(_PRIVILEGED_XATTRS):
                # Never applied, for the reason set-id bits are not: a file capability (cap_setuid+ep) would
                # let any user of the container become root, and as root nixfly's runtimes share the host's.
                dropped = True
                continue
            if self.opts.keep_owners:
                # Best effort (user.* and ACLs); a filesystem without xattrs just loses them.
                with contextlib.suppress(OSError):
                    os.setxattr(dest, attr, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        if dropped:
            self.stripped.xattrs.append(name)

    def finish_layer(self) -> None:
        if self.skipped_devices and self.opts.warn is not None:
            names = ", ".join("/" + n for n in self.skipped_devices[:3])
            more = f" and {len(self.skipped_devices) - 3} more" if len(self.skipped_devices) > 3 else ""
            self.opts.warn(
                f"{self.where}: skipped {len(self.skipped_devices)} device node(s) ({names}{more}): "
                "images cannot create devices; the runtime provides /dev"
            )
        for path in self.whiteouts:
            if str(path) not in self.written and os.path.lexists(path):
                _remove(path)
        for d in self.opaque:
            self._hide_lower(d)
        # Directory metadata last, deepest first: children were written into them and changed their mtimes,
        # and a read-only directory must stay writable until its contents are in place.
        for path, ti in sorted(self.dir_meta, key=lambda item: -len(item[0].parts)):
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            self._owner(path, ti)
            mode = ti.mode & 0o7777
            if not self.opts.keep_owners:
                # Without root a directory we cannot write or enter would block later layers and cleanup.
                mode = (mode | 0o700) & ~(stat.S_ISUID | stat.S_ISGID)
            elif not self.opts.keep_setid:
                mode &= ~stat.S_ISUID  # set-gid on a directory only passes its group on: harmless, kept
            os.chmod(path, mode)
            with contextlib.suppress(OSError):
                os.utime(path, ns=(int(ti.mtime) * 10**9,) * 2, follow_symlinks=False)

    def _hide_lower(self, d: Path) -> None:
        # Everything in an opaque directory that this layer did not write came from a lower layer.
        with os.scandir(d) as it:
            entries = list(it)
        for e in entries:
            if e.path not in self.written:
                _remove(Path(e.path))
            elif e.is_dir(follow_symlinks=False):
                self._hide_lower(Path(e.path))


def apply_layer(layer: Layer, root: Path, where: str, opts: UnpackOptions, stripped: _Stripped | None = None) -> None:
    """Apply one layer to the rootfs at ``root`` and check its bytes against the layer's diff_id."""
    applier = _LayerApplier(root, where, opts, stripped)
    try:
        with layer.compressed() as raw:
            hashing = HashingReader(decompressing_reader(layer.compression, raw))
            with tarfile.open(fileobj=hashing, mode="r|") as tf:  # type: ignore[call-overload]
                for ti in tf:
                    applier.apply(ti, tf)
            hashing.drain()
        applier.finish_layer()
    except UnpackError:
        raise
    except ImageError as e:  # the blob failed its own digest check
        raise UnpackError(f"{where}: corrupt layer: {e}") from None
    except NixflyError:
        raise
    except OSError as e:
        raise UnpackError(f"{where}: cannot unpack: {e.strerror or e}") from None
    except Exception as e:
        # Decompressors and tarfile raise their own assorted types for corrupt input; all mean the same.
        raise UnpackError(f"{where}: corrupt layer: {e}") from None
    diff_id = layer.diff_id
    if diff_id.startswith("sha256:") and hashing.digest != diff_id:
        raise UnpackError(f"{where}: uncompressed content does not match its diff_id {diff_id}")


def unpack(image: Image, dest_root: Path, opts: UnpackOptions | None = None) -> Path:
    """Apply every layer of ``image`` in order into the existing directory ``dest_root``; returns it.

    Promises: no file is created, changed or removed outside ``dest_root``; an escaping or corrupt layer
    raises UnpackError (the caller discards the partial tree). Owners are kept when running as root."""
    o = opts or UnpackOptions.for_current_user()
    n = len(image.layers)
    stripped = _Stripped()
    for i, layer in enumerate(image.layers, 1):
        apply_layer(layer, dest_root, f"layer {i} of {n} ({layer.digest[:19]})", o, stripped)
    stripped.tell(o.warn)
    return dest_root


def cache_key(image: Image) -> str:
    return f"{UNPACK_VERSION}-{digest_hex(image.manifest_digest())}"


def _sweep_partials(base: Path) -> None:
    # ".tmp-<key>-<pid>-<rand>" dirs whose unpacking process is gone are leftovers of a kill -9.
    for p in base.glob(".tmp-*"):
        try:
            pid = int(p.name.split("-")[-2])
            mtime = os.lstat(p).st_mtime
        except (ValueError, IndexError, OSError):
            continue
        if owner_gone(pid, mtime):
            with contextlib.suppress(OSError):
                remove_tree(p)
    # Trees of an older unpack version are never used again (and a v2 tree may hold file capabilities).
    for p in base.glob("v*-*"):
        if re.fullmatch(r"v\d+-[0-9a-f]{64}", p.name) and not p.name.startswith(f"{UNPACK_VERSION}-"):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    remove_tree(p)


def cached_rootfs(image: Image, cache_dir: Path | None = None, opts: UnpackOptions | None = None) -> Path:
    """The unpacked rootfs of ``image`` under ``<cache_dir>/rootfs/<key>``, unpacking it on first use.

    Promises: the returned tree is complete (it only appears under its final name by an atomic rename once
    every layer is applied); a partial tree is never reused; concurrent callers agree on one tree. The cache
    directory is private (0700) because a root-owned rootfs may hold set-uid programs."""
    base = (cache_dir or default_cache_dir()) / "rootfs"
    try:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
    except OSError as e:
        raise NixflyError(f"cannot use cache dir {base}: {e.strerror}") from None
    key = cache_key(image)
    final = base / key
    if final.is_dir():
        return final
    _sweep_partials(base)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=base))
    except OSError as e:
        raise NixflyError(f"cannot use cache dir {base}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o755)  # the rootfs's own "/" as containers expect it
        unpack(image, tmp, opts)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if not final.is_dir():
                raise NixflyError(f"cannot write {final}: {e.strerror}") from None
            # Another run finished the same image first; theirs is as good as ours.
    except BaseException:
        remove_tree(tmp)
        raise
    if tmp.exists():
        remove_tree(tmp)
    return final
