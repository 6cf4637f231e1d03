"""Read an image from a docker-archive (``docker save``, ``skopeo copy … docker-archive:``, dockerTools) in
one streaming pass.

The archive may be a file (plain, or gzip / zstd compressed as ``dockerTools.buildLayeredImage`` makes it),
stdin, a pipe or FIFO, or the stdout of a ``dockerTools.streamLayeredImage`` script, run for the purpose.
Nothing is seeked and the archive is never copied whole. Member order is not fixed (streamLayeredImage
writes every layer first and ``manifest.json`` last), so small JSON members are kept in memory and each
layer member streams straight into the layer cache as it passes:

- an uncompressed layer tar is hashed (that is its diff_id) and compressed with nixfly's deterministic
  compressor on the way, and the blob is remembered by diff_id + compressor identity. The same image read
  from an archive and from a layout nixfly built therefore has the same digest, and reading the same
  archive again only hashes it;
- a layer member that is already compressed is kept as it is, and decompressed once to learn its diff_id.

When the stream ends, manifest.json and the config say which members are the image's layers, in order,
and each must hash to the diff_id the config lists.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import posixpath
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import zstandard
from isal import isal_zlib

from nixfly.build.cache import BlobCache, CachedLayer
from nixfly.build.compress import Compressor, make_compressor
from nixfly.build.tarwriter import HashingSink
from nixfly.errors import ImageError, NixflyError, UsageError
from nixfly.fsutil import NestingError, load_json
from nixfly.image import BlobLayer, Image
from nixfly.image.compression import decompressing_reader, sniff_compression
from nixfly.transports import ArchiveLocation

_CHUNK = 1 << 20
SPOOL_JSON_MAX = 16 << 20  # a member that starts like JSON and is at most this big is kept in memory
SPOOL_SMALL_MAX = 64 << 10  # any member this small is kept in memory (a tiny layer is cached at the end)
TRAILER_MAX = 16 << 20  # (16 MiB, as the messages say) after the end-of-archive blocks: padding to a record, a few KiB
SPOOL_BUDGET = 128 << 20  # at most this much in memory in all; past it, members stream into the cache
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CODEC_ERRORS: tuple[type[BaseException], ...] = (zstandard.ZstdError, cast(type[BaseException], isal_zlib.error))
_READ_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, ValueError, *_CODEC_ERRORS)


def _norm(name: str) -> str:
    n = posixpath.normpath("/" + name).lstrip("/")
    return n


def _read_full(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at end of stream (a pipe may hand them over in pieces)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = f.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _Prefixed:
    """A read-only stream: ``head`` (already read, to sniff the format) followed by the rest of ``f``."""

    def __init__(self, head: bytes, f: IO[bytes]) -> None:
        self._head = head
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._f.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._f.read(n)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _diff_id_from_name(name: str) -> str | None:
    """The diff_id a member's name promises (``<hex>.tar``, ``<hex>/layer.tar``, ``blobs/sha256/<hex>``)."""
    stem = name.removesuffix("/layer.tar").removesuffix(".tar").removeprefix("blobs/sha256/")
    return "sha256:" + stem if _HEX64.match(stem) else None


def _write(out: IO[bytes] | HashingSink, data: bytes, cache: BlobCache) -> None:
    with _cache_errors(cache):
        out.write(data)


@contextlib.contextmanager
def _cache_errors(cache: BlobCache) -> Iterator[None]:
    """A failing write to the cache (a full disk) is reported as that, not as a broken archive."""
    try:
        yield
    except OSError as e:
        raise NixflyError(f"cannot write to the layer cache {cache.root}: {e.strerror}") from None


def _ingest(f: IO[bytes], name: str, cache: BlobCache, comp: Compressor, where: str) -> CachedLayer:
    """Stream one layer member into the cache; returns the cached blob with its digest and diff_id."""
    first = f.read(_CHUNK)
    kind = sniff_compression(first[:8])
    if kind == "none":
        guess = _diff_id_from_name(name)
        hit = cache.lookup(cache.diff_id_key(guess, comp.identity)) if guess else None
        if hit is not None:  # seen before: only check that these are the same bytes
            h = hashlib.sha256(first)
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            if "sha256:" + h.hexdigest() != guess:
                raise ImageError(f"{where}: member {name} is named after diff_id {guess} but holds other bytes")
            return hit
        with cache.new_blob() as (out, holder):
            sink = HashingSink(comp, out)
            _write(sink, first, cache)
            while chunk := f.read(_CHUNK):
                _write(sink, chunk, cache)
            with _cache_errors(cache):
                diff_id, digest = sink.finish()
                out.flush()
                path = cache.commit(holder[0], digest)
        layer = CachedLayer(digest, diff_id, sink.compressed_size, sink.uncompressed_size, comp.kind, path)
        with _cache_errors(cache):
            cache.remember(cache.diff_id_key(diff_id, comp.identity), layer)
        return layer
    # Already compressed by whoever wrote the archive: keep the blob exactly, learn its diff_id.
    with cache.new_blob() as (out, holder):
        h = hashlib.sha256(first)
        size = len(first)
        _write(out, first, cache)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            _write(out, chunk, cache)
        with _cache_errors(cache):
            out.flush()
        digest = "sha256:" + h.hexdigest()
        plain = hashlib.sha256()
        plain_size = 0
        try:
            with open(holder[0], "rb") as back:
                r = decompressing_reader(kind, cast(BinaryIO, back))
                while chunk := r.read(_CHUNK):
                    plain.update(chunk)
                    plain_size += len(chunk)
        except _READ_ERRORS as e:
            raise ImageError(f"{where}: layer {name} is not a valid {kind} stream ({e})") from None
        with _cache_errors(cache):
            path = cache.commit(holder[0], digest)
    return CachedLayer(digest, "sha256:" + plain.hexdigest(), size, plain_size, kind, path)


class _Members:
    """What one pass over the archive found: small members' bytes, cached layers, links between names."""

    def __init__(self) -> None:
        self.small: dict[str, bytes] = {}
        self.layers: dict[str, CachedLayer] = {}
        self.links: dict[str, str] = {}
        self.count = 0
        self.spooled = 0

    def data(self, name: str) -> bytes | None:
        """A small member's bytes: kept in memory, or (past the memory budget) read back from the cache."""
        if name in self.small:
            return self.small[name]
        cached = self.layers.get(name)
        if cached is None or cached.uncompressed_size > SPOOL_JSON_MAX:
            return None
        with open(cached.path, "rb") as f:
            return decompressing_reader(cached.compression, cast(BinaryIO, f)).read()

    def keep(self, size: int) -> bool:
        """Whether a member of ``size`` bytes still fits in the in-memory budget (then it is counted)."""
        if self.spooled + size > SPOOL_BUDGET:
            return False
        self.spooled += size
        return True

    def resolve(self, name: str) -> str:
        seen = 0
        while name in self.links and seen < 16:
            name = self.links[name]
            seen += 1
        return name


def _scan(plain: IO[bytes], cache: BlobCache, comp: Compressor, where: str) -> _Members:
    found = _Members()
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tf:
            for m in tf:
                found.count += 1
                name = _norm(m.name)
                if m.issym():
                    found.links[name] = _norm(posixpath.join(posixpath.dirname(name), m.linkname))
                    continue
                if m.islnk():
                    found.links[name] = _norm(m.linkname)
                    continue
                if not m.isreg():
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                if m.size <= SPOOL_SMALL_MAX and found.keep(m.size):
                    found.small[name] = _read_full(f, m.size)
                    continue
                head = f.read(1)
                if head in (b"{", b"[") and m.size <= SPOOL_JSON_MAX and found.keep(m.size):
                    found.small[name] = head + _read_full(f, m.size - 1)
                    continue
                found.layers[name] = _ingest(cast(IO[bytes], _Prefixed(head, f)), name, cache, comp, where)
        trailing = 0  # the end-of-archive padding, and a compressed stream's trailer check
        while chunk := plain.read(_CHUNK):
            trailing += len(chunk)
            if trailing > TRAILER_MAX:  # /dev/zero reads as an empty archive followed by zeros for ever
                if found.count == 0:
                    raise ImageError(f"{where}: not a docker-archive (no members, then more than 16 MiB of data)")
                raise ImageError(f"{where}: more than 16 MiB of data after the end of the docker-archive")
    except _READ_ERRORS as e:
        if found.count == 0:
            raise ImageError(f"{where}: not a docker-archive ({e or 'empty input'})") from None
        raise ImageError(f"{where}: truncated or corrupt docker-archive ({e})") from None
    if found.count == 0:
        raise ImageError(f"{where}: not a docker-archive (empty input)")
    return found


def _short_name(repo_tag: str) -> str:
    """``docker.io/library/app:v1`` and ``app:v1`` name the same image (docker and skopeo write the former)."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if repo_tag.startswith(prefix):
            return repo_tag[len(prefix) :]
    return repo_tag


def _json(data: bytes, what: str, where: str) -> Any:
    try:
        return load_json(data)
    except NestingError as e:
        raise ImageError(f"{where}: {what} is {e}") from None
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{where}: {what} is not valid JSON") from None


def _assemble(found: _Members, name_wanted: str | None, cache: BlobCache, comp: Compressor, where: str) -> Image:
    manifest_bytes = found.data("manifest.json")
    if manifest_bytes is None:
        raise ImageError(f"{where}: no manifest.json in the archive (is it truncated, or not a docker-archive?)")
    manifest = _json(manifest_bytes, "manifest.json", where)
    if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
        raise ImageError(f"{where}: manifest.json lists no image")
    entry = manifest[0]
    if name_wanted is not None:
        want = _short_name(name_wanted)
        hits = [e for e in manifest if want in {_short_name(str(t)) for t in e.get("RepoTags") or []}]
        if not hits:
            raise ImageError(f"{where}: no image named {name_wanted}")
        entry = hits[0]
    elif len(manifest) > 1:
        raise ImageError(f"{where}: holds {len(manifest)} images; name one as docker-archive:FILE:NAME:TAG")
    cfg_name = found.resolve(_norm(str(entry.get("Config", ""))))
    config = found.data(cfg_name)
    if config is None:
        raise ImageError(f"{where}: the config {entry.get('Config')!r} named by manifest.json is missing")
    config_bytes = config
    want = cfg_name.removesuffix(".json").removeprefix("blobs/sha256/")
    if _HEX64.match(want) and hashlib.sha256(config_bytes).hexdigest() != want:
        raise ImageError(f"{where}: config {cfg_name} does not hash to the digest its name says")
    cfg = _json(config_bytes, f"config {cfg_name}", where)
    rootfs = cfg.get("rootfs") if isinstance(cfg, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    names = entry.get("Layers") or []
    if not isinstance(diff_ids, list) or not isinstance(names, list):
        raise ImageError(f"{where}: config or manifest.json lists no layers")
    if len(diff_ids) != len(names):
        raise ImageError(f"{where}: config lists {len(diff_ids)} diff_ids for {len(names)} layers")
    layers = []
    for raw_name, diff_id in zip(names, diff_ids, strict=True):
        name = found.resolve(_norm(str(raw_name)))
        cached = found.layers.get(name)
        if cached is None and name in found.small:  # a tiny layer was kept in memory: cache it now
            cached = _ingest(io.BytesIO(found.small[name]), name, cache, comp, where)
        if cached is None:
            raise ImageError(f"{where}: layer {raw_name} is missing from the archive (is it truncated?)")
        if cached.diff_id != diff_id:
            raise ImageError(f"{where}: layer {raw_name} hashes to {cached.diff_id}, but the config says {diff_id}")
        layers.append(
            BlobLayer(path=cached.path, digest=cached.digest, diff_id=cached.diff_id, size=cached.size,
                      compression=cached.compression, uncompressed_size=cached.uncompressed_size)
        )  # fmt: skip
    # Keep the config bytes exactly; the manifest is generated (archives carry no registry manifest).
    return Image(config_bytes, tuple(layers), "oci")


class _Script:
    """Runs a stream script with stdout piped to us; keeps the last lines of its stderr for errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        try:
            self.proc = subprocess.Popen(
                # The resolved store file: a relative "result" must not be looked up on $PATH.
                [os.path.realpath(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            raise ImageError(f"{path}: cannot run it: {e.strerror}") from None
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _drain(self, err: IO[bytes]) -> None:
        for line in err:
            text = line.decode(errors="replace").strip()
            if text:
                self.tail.append(text)

    def finish(self, ok: bool) -> None:
        """Reap the script (killing it when we stopped reading early); a failed script is the error."""
        if not ok and self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        rc = self.proc.wait()
        self._reader.join(timeout=5)
        if (ok and rc != 0) or (not ok and rc > 0):
            last = f": {self.tail[-1]}" if self.tail else ""
            raise ImageError(f"{self.path} (the image script) exited with status {rc}{last}")


@contextlib.contextmanager
def _input(loc: ArchiveLocation, where: str) -> Iterator[IO[bytes]]:
    if loc.run:
        assert loc.path is not None
        script = _Script(loc.path)
        assert script.proc.stdout is not None
        ok = False
        try:
            yield script.proc.stdout
            ok = True
        finally:
            script.finish(ok)
        return
    if loc.path is None:
        if sys.stdin.isatty():
            raise UsageError("refusing to read a docker-archive from a terminal; pipe one in (… | nixfly push - REF)")
        yield sys.stdin.buffer
        return
    try:
        f = open(loc.path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ImageError(f"{where}: cannot read it: {e.strerror}") from None
    with f:
        yield f


def read_archive(
    loc: ArchiveLocation,
    *,
    cache_dir: Path | None = None,
    compressor: Compressor | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Image:
    """The image in the docker-archive at ``loc``, its layers in the layer cache (``cache_dir``, default
    the XDG cache). Uncompressed layers are compressed with ``compressor`` (default: nixfly's gzip, as
    ``nixfly build`` uses). ``on_bytes`` hears how many archive bytes were just read."""
    where = str(loc)
    cache = BlobCache(cache_dir)
    comp = compressor or make_compressor("gzip")
    with _input(loc, where) as raw:
        source: IO[bytes] = raw if on_bytes is None else cast(IO[bytes], _Counting(raw, on_bytes))
        try:
            head = _read_full(source, 8)
        except OSError as e:
            raise ImageError(f"{where}: cannot read it: {e.strerror}") from None
        kind = sniff_compression(head)
        stream = cast(BinaryIO, _Prefixed(head, source))
        plain = cast(IO[bytes], decompressing_reader(kind, stream))
        found = _scan(plain, cache, comp, where)
    return _assemble(found, loc.name, cache, comp, where)


class _Counting:
    def __init__(self, f: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self._f = f
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._on_bytes(len(data))
        return data
