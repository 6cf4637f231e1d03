"""Deterministic tar streams, hashed and compressed in the same pass.

Each entry gets fixed metadata (mtime, uid/gid 0 root/root unless a perms rule says otherwise), entries
come in name order, hard links are written as regular files, and PAX records are used only when ustar
cannot hold a value (long or non-UTF-8 names, long link targets, files of 8 GiB or more). The bytes
flow once: tar → sha256 (diff_id) → compressor (fixed-size blocks) → sha256 (digest) → file.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from nixfly.build.compress import BLOCK, Compressor
from nixfly.errors import NixflyError

DEFAULT_MTIME = 1  # 1970-01-01T00:00:01Z
_USTAR_MAX_SIZE = 0o77777777777  # 11 octal digits
_ZERO = bytes(512)


REGULAR, SYMLINK, DIRECTORY = b"0", b"2", b"5"


class ContentReader(Protocol):
    """Supplies a file's bytes from a stream (e.g. a NAR being parsed)."""

    def copy_to(self, write: Callable[[bytes], None], size: int) -> None:
        """Pass exactly ``size`` bytes to ``write``, in pieces; raise a NixflyError if they are not there."""
        ...


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a store tree, whatever it is read from: the tar name (relative, no trailing slash),
    the type (REGULAR, SYMLINK, DIRECTORY), the mode bits, and for regular files the size and where the
    bytes come from (``src``, a file on disk, or ``content``, a stream). A filesystem walk and a NAR
    parse yield the same records for the same store path, so both give the same tar bytes."""

    name: bytes
    type: bytes
    mode: int
    size: int = 0
    target: bytes = b""
    src: bytes = b""
    content: ContentReader | None = None


def walk_tree(src: bytes, name: bytes) -> Iterator[TreeEntry]:
    """The entries of ``src`` on disk (file, symlink or directory, recursively, in byte order of names),
    named ``name`` and below."""
    st = os.lstat(src)
    m = st.st_mode
    if stat.S_ISLNK(m):
        yield TreeEntry(name, SYMLINK, 0o777, 0, os.readlink(src))
    elif stat.S_ISREG(m):
        yield TreeEntry(name, REGULAR, stat.S_IMODE(m), st.st_size, src=src)
    elif stat.S_ISDIR(m):
        yield TreeEntry(name, DIRECTORY, stat.S_IMODE(m))
        with os.scandir(src) as it:
            children = sorted(e.name for e in it)
        for c in children:
            yield from walk_tree(src + b"/" + c, name + b"/" + c)
    else:
        raise NixflyError(f"{os.fsdecode(src)}: unsupported file type in the Nix store")


@dataclass(frozen=True)
class PermRule:
    """Owner/mode override for entries whose absolute path matches ``pattern`` (a regex, full match)."""

    pattern: re.Pattern[str]
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    uname: str | None = None
    gname: str | None = None

    def describe(self) -> list[object]:
        return [self.pattern.pattern, self.uid, self.gid, self.mode, self.uname, self.gname]


def compile_perm_rule(
    path: str | None = None,
    regex: str | None = None,
    *,
    uid: int | None = None,
    gid: int | None = None,
    mode: int | None = None,
    uname: str | None = None,
    gname: str | None = None,
    where: str = "perms",
) -> PermRule:
    if (path is None) == (regex is None):
        raise NixflyError(f"{where}: give exactly one of 'path' or 'regex'")
    try:
        pattern = re.compile(re.escape(path.rstrip("/") or "/") if path is not None else str(regex))
    except re.error as e:
        raise NixflyError(f"{where}: invalid regex {regex!r}: {e}") from None
    if mode is not None and not 0 <= mode <= 0o7777:
        raise NixflyError(f"{where}: mode {oct(mode)} is out of range")
    return PermRule(pattern, uid, gid, mode, uname, gname)


class HashingSink:
    """Receives raw tar bytes; hashes them, compresses in fixed blocks, hashes and writes the output."""

    def __init__(self, compressor: Compressor, out: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> None:
        self._on_bytes = on_bytes
        self._buf = bytearray()
        self._diff = hashlib.sha256()
        self._dig = hashlib.sha256()
        self._comp = compressor.stream()
        self._out = out
        self.uncompressed_size = 0
        self.compressed_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= BLOCK:
            self._drain()

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._dig.update(chunk)
            self._out.write(chunk)
            self.compressed_size += len(chunk)

    def _drain(self) -> None:
        buf = self._buf
        n = len(buf) - len(buf) % BLOCK
        if not n:
            return
        view = memoryview(buf)
        for off in range(0, n, BLOCK):
            block = bytes(view[off : off + BLOCK])
            self._diff.update(block)
            self._emit(self._comp.write(block))
        view.release()
        del buf[:n]
        self.uncompressed_size += n
        if self._on_bytes is not None:
            self._on_bytes(n)

    def finish(self) -> tuple[str, str]:
        """Flush everything; returns (diff_id, digest)."""
        self._drain()
        if self._buf:
            tail = bytes(self._buf)
            self._diff.update(tail)
            self.uncompressed_size += len(tail)
            self._emit(self._comp.write(tail))
            self._buf.clear()
        self._emit(self._comp.finish())
        return "sha256:" + self._diff.hexdigest(), "sha256:" + self._dig.hexdigest()


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    if len(name) <= 100:
        return b"", name
    # Split at a '/' so that prefix <= 155 and name <= 100.
    for i in range(len(name) - 1, 0, -1):
        if name[i : i + 1] == b"/" and i <= 155 and len(name) - i - 1 <= 100 and len(name) - i - 1 > 0:
            return name[:i], name[i + 1 :]
    return None


class TarWriter:
    """Writes deterministic tar entries into a sink (anything with ``write(bytes)``)."""

    def __init__(self, sink: HashingSink, mtime: int = DEFAULT_MTIME, rules: Sequence[PermRule] = ()) -> None:
        self.sink = sink
        self.mtime = mtime
        self.rules = tuple(rules)

    def _owner(
        self, abspath: str, mode: int, owner: tuple[int, int, str, str] | None
    ) -> tuple[int, int, int, str, str]:
        uid, gid, uname, gname = owner or (0, 0, "root", "root")
        for r in self.rules:
            if r.pattern.fullmatch(abspath):
                if r.uid is not None:
                    uid = r.uid
                    uname = r.uname or ""
                if r.gid is not None:
                    gid = r.gid
                    gname = r.gname or ""
                if r.uname is not None:
                    uname = r.uname
                if r.gname is not None:
                    gname = r.gname
                if r.mode is not None:
                    mode = r.mode
        return uid, gid, mode, uname, gname

    def header(
        self,
        name: bytes,
        typeflag: bytes,
        mode: int,
        size: int = 0,
        linkname: bytes = b"",
        owner: tuple[int, int, str, str] | None = None,
    ) -> None:
        """Write one header (plus a PAX header first when ustar cannot hold the values). ``owner`` is
        (uid, gid, uname, gname) before perms rules apply; root by default."""
        abspath = "/" + os.fsdecode(name).rstrip("/")
        uid, gid, mode, uname, gname = self._owner(abspath, mode, owner)
        pax: list[bytes] = []
        split = _split_ustar(name)
        binary = False
        try:
            name.decode("utf-8")
            linkname.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
        if split is None or binary:
            pax.append(_pax_record("path", name))
            split = (b"", name[:100])
        if len(linkname) > 100 or binary:
            pax.append(_pax_record("linkpath", linkname))
        if size > _USTAR_MAX_SIZE:
            pax.append(_pax_record("size", str(size).encode()))
        if pax:
            if binary:
                pax.insert(0, _pax_record("hdrcharset", b"BINARY"))
            data = b"".join(pax)
            self._raw_header(b"././@PaxHeader", b"x", 0o644, len(data), b"", b"", 0, 0, "root", "root")
            self.sink.write(data)
            pad = -len(data) % 512
            if pad:
                self.sink.write(_ZERO[:pad])
        prefix, short = split
        self._raw_header(
            short,
            typeflag,
            mode,
            0 if size > _USTAR_MAX_SIZE else size,
            linkname[:100],
            prefix,
            uid,
            gid,
            uname,
            gname,
        )

    def _raw_header(
        self,
        name: bytes,
        typeflag: bytes,
        mode: int,
        size: int,
        linkname: bytes,
        prefix: bytes,
        uid: int,
        gid: int,
        uname: str,
        gname: str,
    ) -> None:
        h = bytearray(512)
        h[0 : len(name)] = name
        h[100:108] = _octal(mode & 0o7777, 8)
        h[108:116] = _octal(uid, 8)
        h[116:124] = _octal(gid, 8)
        h[124:136] = _octal(size, 12)
        h[136:148] = _octal(self.mtime, 12)
        h[148:156] = b"        "
        h[156:157] = typeflag
        h[157 : 157 + len(linkname)] = linkname
        h[257:265] = b"ustar\x0000"
        un, gn = uname.encode()[:31], gname.encode()[:31]
        h[265 : 265 + len(un)] = un
        h[297 : 297 + len(gn)] = gn
        h[329:337] = _octal(0, 8)
        h[337:345] = _octal(0, 8)
        h[345 : 345 + len(prefix)] = prefix
        h[148:156] = b"%06o\0 " % sum(h)
        self.sink.write(h)

    def add_dir(self, name: bytes, mode: int = 0o755, owner: tuple[int, int, str, str] | None = None) -> None:
        self.header(name.rstrip(b"/") + b"/", b"5", mode, owner=owner)

    def add_symlink(self, name: bytes, target: bytes, owner: tuple[int, int, str, str] | None = None) -> None:
        self.header(name, b"2", 0o777, 0, target, owner=owner)

    def add_bytes(
        self, name: bytes, data: bytes, mode: int = 0o644, owner: tuple[int, int, str, str] | None = None
    ) -> None:
        self.header(name, b"0", mode, len(data), owner=owner)
        self.sink.write(data)
        pad = -len(data) % 512
        if pad:
            self.sink.write(_ZERO[:pad])

    def add_file(self, name: bytes, src: bytes, mode: int, size: int) -> None:
        """Copy a file from disk; it must still have ``size`` bytes (store paths never change)."""
        self.header(name, b"0", mode, size)
        left = size
        with open(src, "rb", buffering=0) as f:
            while left > 0:
                chunk = f.read(min(left, BLOCK))
                if not chunk:
                    raise NixflyError(f"{os.fsdecode(src)} shrank while being read")
                self.sink.write(chunk)
                left -= len(chunk)
        pad = -size % 512
        if pad:
            self.sink.write(_ZERO[:pad])

    def add_entry(self, e: TreeEntry) -> None:
        if e.type == DIRECTORY:
            self.add_dir(e.name, e.mode)
        elif e.type == SYMLINK:
            self.add_symlink(e.name, e.target)
        elif e.content is None:
            self.add_file(e.name, e.src, e.mode, e.size)
        else:
            self.header(e.name, REGULAR, e.mode, e.size)
            e.content.copy_to(self.sink.write, e.size)
            pad = -e.size % 512
            if pad:
                self.sink.write(_ZERO[:pad])

    def add_entries(self, entries: Iterable[TreeEntry]) -> None:
        for e in entries:
            self.add_entry(e)

    def add_tree(self, src: bytes, name: bytes) -> None:
        """Add ``src`` (file, symlink or directory, recursively, in name order) as ``name``."""
        self.add_entries(walk_tree(src, name))

    def close(self) -> None:
        self.sink.write(_ZERO * 2)
