"""A streaming parser for Nix archives (NAR), yielding the same entry records as a walk of the store.

A NAR is a sequence of strings, each an 8-byte little-endian length, the bytes, and zero padding to a
multiple of 8. The grammar (``nix-archive-1`` magic, then one node)::

    node  = "(" "type" ( "regular" ["executable" ""] "contents" STR
                       | "symlink" "target" STR
                       | "directory" { "entry" "(" "name" STR "node" node ")" } ) ")"

Entries of a directory come in strictly increasing byte order of their names. The parser reads the
stream once, in bounded pieces: file contents are handed on as they are read, never held whole, and
nothing is written to disk. Anything malformed (bad magic or token, unsorted or duplicate names, names
that are empty, ``.``, ``..`` or contain ``/`` or NUL, oversize fields, non-zero padding, truncation,
trailing bytes) is a NarError. Every byte read is hashed (SHA-256) and counted, so the caller can check
NarHash and NarSize once the stream is done.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from typing import Protocol

from nixfly.build.tarwriter import DIRECTORY, REGULAR, SYMLINK, TreeEntry
from nixfly.errors import NixflyError

MAGIC = b"nix-archive-1"
CHUNK = 1 << 20
MAX_TOKEN = 16  # longest keyword is "executable" / "directory"
MAX_NAME = 255  # NAME_MAX on Linux and macOS
MAX_TARGET = 4095  # PATH_MAX - 1
MAX_DEPTH = 256
_ZERO8 = bytes(8)


class NarError(NixflyError):
    """A NAR stream is malformed, truncated, or does not match its metadata."""


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class NarReader:
    """Parses one NAR from ``raw`` (anything with ``read(n)``). ``entries(root)`` yields TreeEntry records
    named ``root`` and below; a regular file's ``content`` must be read (or is skipped) before the next
    record is asked for. ``limit``, when given, is the most bytes the NAR may have (its NarSize)."""

    def __init__(self, raw: Readable, where: str, limit: int | None = None) -> None:
        self._raw = raw
        self.where = where
        self._limit = limit
        self._buf = b""
        self._pos = 0
        self._hash = hashlib.sha256()
        self.size = 0
        self._pending = 0  # bytes of the current file's contents not yet handed on
        self._done = False

    # -- raw input ---------------------------------------------------------------------------------

    def _more(self) -> bytes:
        chunk = self._raw.read(CHUNK)
        if chunk:
            self._hash.update(chunk)
            self.size += len(chunk)
            if self._limit is not None and self.size > self._limit:
                raise NarError(f"{self.where}: the NAR is longer than its stated NarSize ({self._limit} bytes)")
        return chunk

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            return out
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        while have < n:
            c = self._more()
            if not c:
                raise NarError(f"{self.where}: the NAR is truncated (ends after {self.size} bytes)")
            parts.append(c)
            have += len(c)
        data = b"".join(parts)
        self._buf = data
        self._pos = n
        return data[:n]

    def _skip(self, n: int) -> None:
        self._copy(n, None)

    def _copy(self, n: int, write: Callable[[bytes], None] | None) -> None:
        while n > 0:
            if self._pos >= len(self._buf):
                self._buf = self._more()
                self._pos = 0
                if not self._buf:
                    raise NarError(f"{self.where}: the NAR is truncated (ends inside a file's contents)")
            k = min(n, len(self._buf) - self._pos)
            if write is not None:
                if self._pos == 0 and k == len(self._buf):
                    write(self._buf)
                else:
                    write(self._buf[self._pos : self._pos + k])
            self._pos += k
            n -= k

    def _u64(self) -> int:
        v: int = struct.unpack("<Q", self._take(8))[0]
        return v

    def _pad(self, n: int) -> None:
        p = -n % 8
        if p and self._take(p) != _ZERO8[:p]:
            raise NarError(f"{self.where}: malformed NAR (non-zero padding)")

    def _str(self, limit: int, what: str) -> bytes:
        n = self._u64()
        if n > limit:
            raise NarError(f"{self.where}: malformed NAR ({what} of {n} bytes; at most {limit} allowed)")
        s = self._take(n)
        self._pad(n)
        return s

    def _expect(self, token: bytes) -> None:
        got = self._str(MAX_TOKEN, "a token")
        if got != token:
            raise NarError(f"{self.where}: malformed NAR (expected {token.decode()!r}, got {got[:32]!r})")

    # -- ContentReader --------------------------------------------------------------------------------

    def copy_to(self, write: Callable[[bytes], None], size: int) -> None:
        if size != self._pending:
            raise NarError(f"{self.where}: a file's contents were asked for out of turn")
        self._pending = 0
        self._copy(size, write)

    # -- the grammar ---------------------------------------------------------------------------------

    def entries(self, root: bytes) -> Iterator[TreeEntry]:
        """Every entry of the NAR, the root named ``root``; then checks that the stream has ended."""
        n = self._u64()
        if n != len(MAGIC) or self._take(n) != MAGIC:
            raise NarError(f"{self.where}: not a NAR (bad magic)")
        self._pad(n)
        yield from self._node(root, 0)
        if self._pos < len(self._buf) or self._more():
            raise NarError(f"{self.where}: malformed NAR (bytes after the end of the archive)")
        self._done = True

    def _node(self, name: bytes, depth: int) -> Iterator[TreeEntry]:
        if depth > MAX_DEPTH:
            raise NarError(f"{self.where}: malformed NAR (directories nested deeper than {MAX_DEPTH})")
        self._expect(b"(")
        self._expect(b"type")
        kind = self._str(MAX_TOKEN, "a type")
        if kind == b"regular":
            tok = self._str(MAX_TOKEN, "a token")
            executable = False
            if tok == b"executable":
                if self._str(0, "the executable marker") != b"":
                    raise NarError(f"{self.where}: malformed NAR (bad executable marker)")
                executable = True
                tok = self._str(MAX_TOKEN, "a token")
            if tok != b"contents":
                raise NarError(f"{self.where}: malformed NAR (expected 'contents', got {tok[:32]!r})")
            size = self._u64()
            if self._limit is not None and size > self._limit:
                raise NarError(f"{self.where}: malformed NAR (a file of {size} bytes in a NAR of {self._limit})")
            self._pending = size
            yield TreeEntry(name, REGULAR, 0o555 if executable else 0o444, size, content=self)
            if self._pending:
                self._skip(self._pending)
                self._pending = 0
            self._pad(size)
            self._expect(b")")
        elif kind == b"symlink":
            self._expect(b"target")
            target = self._str(MAX_TARGET, "a symlink target")
            if not target or b"\0" in target:
                raise NarError(f"{self.where}: malformed NAR (empty symlink target or one with a NUL byte)")
            self._expect(b")")
            yield TreeEntry(name, SYMLINK, 0o777, 0, target)
        elif kind == b"directory":
            yield TreeEntry(name, DIRECTORY, 0o555)
            prev: bytes | None = None
            while True:
                tok = self._str(MAX_TOKEN, "a token")
                if tok == b")":
                    break
                if tok != b"entry":
                    raise NarError(f"{self.where}: malformed NAR (expected 'entry' or ')', got {tok[:32]!r})")
                self._expect(b"(")
                self._expect(b"name")
                child = self._str(MAX_NAME, "an entry name")
                if child in (b"", b".", b"..") or b"/" in child or b"\0" in child:
                    raise NarError(f"{self.where}: malformed NAR (forbidden entry name {child!r})")
                if prev is not None and child <= prev:
                    what = "duplicate" if child == prev else "unsorted"
                    raise NarError(f"{self.where}: malformed NAR ({what} entry name {child!r} after {prev!r})")
                prev = child
                self._expect(b"node")
                yield from self._node(name + b"/" + child, depth + 1)
                self._expect(b")")
        else:
            raise NarError(f"{self.where}: malformed NAR (unknown node type {kind[:32]!r})")

    # -- after the end -------------------------------------------------------------------------------

    def digest(self) -> bytes:
        """SHA-256 of every byte read; meaningful once ``entries`` has been exhausted."""
        if not self._done:
            raise NarError(f"{self.where}: the NAR was not read to its end")
        return self._hash.digest()


def walk_nar(raw: Readable, root: bytes, where: str, limit: int | None = None) -> Iterator[TreeEntry]:
    """Shorthand: the entries of one NAR (no hash check)."""
    yield from NarReader(raw, where, limit).entries(root)
