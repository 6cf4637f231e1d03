"""Store paths from Nix binary caches: an image of paths that are not in the local store, on any host.

A binary cache (``file://DIR``, ``http://``, ``https://``) holds ``nix-cache-info`` (its StoreDir must
be ours), one ``<hash>.narinfo`` per store path (StorePath, URL, Compression, FileHash, FileSize,
NarHash, NarSize, References, Deriver, Sig) and the compressed NARs. The closure is found by following
References from the roots; paths present in the local store are read from disk (their metadata from
``nix path-info``), only the missing ones come from a cache. Each narinfo's signature is checked before
anything else is fetched: ed25519 over ``1;<storePath>;<narHash>;<narSize>;<refs>`` against the trusted
keys. NARs are downloaded with bounded parallelism into a private directory (HTTP) or read in place
(``file://``), then streamed through the decompressor and the NAR parser into the layer's tar writer;
FileHash/FileSize and NarHash/NarSize are checked when the stream ends, before the layer is committed.
Installables are evaluated for their store path (``nix eval``), never built.

Bounds: FileSize and URL are not signed, NarSize is. A download (or an in-place read) stops at FileSize
when given, and in any case at the most a compressor can make of NarSize bytes (``compressed_limit``),
so a cache that streams without end fills neither memory nor disk. Downloads go into a directory named
after this process (``nars.<pid>.…`` in the cache's tmp dir); the next build removes one whose process
died (``nixfly.build.cache.sweep_stale_temps``). A full disk is one line naming the directory.
"""

from __future__ import annotations

import base64
import bz2
import concurrent.futures
import contextlib
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nixfly.build.closure import (
    NIX_FLAGS,
    STORE_DIR,
    Closure,
    StorePath,
    is_store_path,
    query_path_info,
    to_store_path,
)
from nixfly.build.nar import CHUNK, NarError, NarReader, Readable
from nixfly.build.tarwriter import TreeEntry
from nixfly.errors import ClosureError, NixflyError, UsageError, add_secret
from nixfly.fsutil import atomic_write_text
from nixfly.limits import ACCEPT_ENCODING, CACHE_INFO_MAX, NAR_LISTING_MAX, NARINFO_MAX, check_encoding, read_limited
from nixfly.retry import RetryPolicy, Transient, classify_transport, retry_after_seconds, status_is_transient

FETCH_JOBS = 8
# The project's retry policy, with a short budget: a cache that does not answer is one line within seconds.
RETRY = RetryPolicy(retries=2, backoff=0.2, max_backoff=2.0)
TIMEOUT = 30.0
MAX_NARINFO = NARINFO_MAX
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_INDEX = {c: i for i, c in enumerate(_NIX32)}
COMPRESSIONS = ("xz", "zstd", "bzip2", "none")


class BinaryCacheError(NixflyError):
    """A binary cache is unreachable, malformed, lacks a path, or served bytes that do not verify."""


class SignatureError(BinaryCacheError):
    """A path has no valid signature by a trusted key."""


# ---------------------------------------------------------------------------------------------------
# hashes and signatures


def nix32_encode(data: bytes) -> str:
    n = (len(data) * 8 - 1) // 5 + 1
    out = []
    for k in range(n - 1, -1, -1):
        b = k * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(_NIX32[c & 0x1F])
    return "".join(out)


def nix32_decode(s: str, size: int) -> bytes:
    if len(s) != (size * 8 - 1) // 5 + 1:
        raise ValueError("wrong length")
    out = bytearray(size)
    for k in range(len(s)):
        digit = _NIX32_INDEX[s[len(s) - 1 - k]]
        b = k * 5
        i, j = divmod(b, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise ValueError("excess bits")
    return bytes(out)


def parse_sha256(value: str) -> bytes:
    """A SHA-256 in any of Nix's spellings: ``sha256:<nix32>``, ``sha256:<hex>``, ``sha256-<base64>``."""
    try:
        if value.startswith("sha256-"):
            raw = base64.b64decode(value[7:], validate=True)
            if len(raw) == 32:
                return raw
        elif value.startswith("sha256:"):
            body = value[7:]
            if len(body) == 64 and re.fullmatch(r"[0-9a-f]{64}", body):
                return bytes.fromhex(body)
            return nix32_decode(body, 32)
    except (ValueError, KeyError):
        pass
    raise ValueError(f"{value!r} is not a SHA-256 hash")


def nix_hash(digest: bytes) -> str:
    return "sha256:" + nix32_encode(digest)


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key: bytes  # 32 bytes


def parse_public_key(text: str, where: str = "--trusted-public-key") -> TrustedKey:
    name, sep, b64 = text.strip().partition(":")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raw = b""
    if not sep or not name or len(raw) != 32:
        raise UsageError(f"{where}: {text[:80]!r} is not a public key NAME:BASE64 (32 bytes)")
    return TrustedKey(name, raw)


# ---------------------------------------------------------------------------------------------------
# narinfo


@dataclass(frozen=True)
class NarInfo:
    store_path: str
    url: str
    compression: str
    file_hash: bytes | None
    file_size: int | None
    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...]  # full store paths, sorted, the path itself included when it refers to itself
    deriver: str | None
    sigs: tuple[str, ...]
    system: str | None
    cache: str  # the URL of the cache it came from

    def compressed_limit(self) -> int:
        """The most bytes the compressed NAR may have: FileSize if given, never more than its compressor's
        worst case for the signed NarSize (incompressible input stored, plus framing): xz stores such data
        in 64 KiB chunks with a 3-byte header, zstd's bound is n + n/256 (ZSTD_COMPRESSBOUND), bzip2's
        1% + 600 bytes (bzip2's manual); n/128 and a fixed 64 KiB cover block and stream headers."""
        n = self.nar_size
        if self.compression == "none":
            bound = n
        elif self.compression == "bzip2":
            bound = n + n // 100 + 600 + (64 << 10)
        else:
            bound = n + n // 128 + (64 << 10)
        return bound if self.file_size is None else min(self.file_size, bound)

    def fingerprint(self) -> bytes:
        return f"1;{self.store_path};{nix_hash(self.nar_hash)};{self.nar_size};{','.join(self.references)}".encode()

    def to_store_path(self) -> StorePath:
        return StorePath(self.store_path, self.nar_size, tuple(r for r in self.references if r != self.store_path),
                         self.deriver, nix_hash(self.nar_hash))  # fmt: skip


def parse_narinfo(text: str, where: str, cache: str, store_dir: str = STORE_DIR) -> NarInfo:
    """Parse a ``.narinfo``; every missing or malformed field is a BinaryCacheError naming ``where``."""
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key):
            raise BinaryCacheError(f"{where}: malformed narinfo (line {i} is not 'Key: value')")
        if key == "Sig":
            sigs.append(value.strip())
        elif key in fields:
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} given twice)")
        else:
            fields[key] = value.strip()

    def need(key: str) -> str:
        if key not in fields:
            raise BinaryCacheError(f"{where}: malformed narinfo (no {key})")
        return fields[key]

    def number(key: str) -> int:
        v = need(key)
        if not v.isdigit():
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} {v[:40]!r} is not a number)")
        return int(v)

    def sha(key: str) -> bytes:
        try:
            return parse_sha256(need(key))
        except ValueError:
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} is not a SHA-256 hash)") from None

    path = need("StorePath")
    if not is_store_path(path, store_dir):
        raise BinaryCacheError(f"{where}: malformed narinfo (StorePath {path[:80]!r} is not in {store_dir})")
    url = need("URL")
    if not url or url.startswith("/") or ".." in url.split("/") or "\\" in url or "\0" in url:
        raise BinaryCacheError(f"{where}: malformed narinfo (URL {url[:80]!r} is not a relative file name)")
    compression = fields.get("Compression", "bzip2")  # Nix's default when the field is absent
    refs = []
    for r in fields.get("References", "").split():
        full = f"{store_dir}/{r}"
        if "/" in r or not is_store_path(full, store_dir):
            raise BinaryCacheError(f"{where}: malformed narinfo (reference {r[:80]!r} is not a store path name)")
        refs.append(full)
    deriver = fields.get("Deriver")
    file_hash = sha("FileHash") if "FileHash" in fields else None
    file_size = number("FileSize") if "FileSize" in fields else None
    return NarInfo(
        path, url, compression, file_hash, file_size, sha("NarHash"), number("NarSize"),
        tuple(sorted(set(refs))), f"{store_dir}/{deriver}" if deriver and deriver != "unknown-deriver" else None,
        tuple(sigs), fields.get("System"), cache,
    )  # fmt: skip


def verify_signature(ni: NarInfo, keys: Sequence[TrustedKey]) -> None:
    """Accept ``ni`` if one of its signatures is valid for a trusted key of the same name."""
    fp = ni.fingerprint()
    by_name = {k.name: k for k in keys}
    signers = []
    for sig in ni.sigs:
        name, _, b64 = sig.partition(":")
        signers.append(name)
        key = by_name.get(name)
        if key is None:
            continue
        try:
            raw = base64.b64decode(b64, validate=True)
            Ed25519PublicKey.from_public_bytes(key.key).verify(raw, fp)
            return
        except (ValueError, InvalidSignature):
            continue
    tried = ", ".join(k.name for k in keys) or "none (give --trusted-public-key NAME:KEY)"
    signed = ", ".join(signers) if signers else "nobody (unsigned)"
    raise SignatureError(
        f"{ni.store_path} from {ni.cache}: no valid signature by a trusted key (keys tried: {tried}; "
        f"signed by: {signed}); use --no-verify to accept it anyway"
    )


# ---------------------------------------------------------------------------------------------------
# nix.conf defaults


@dataclass(frozen=True)
class NixSettings:
    substituters: tuple[str, ...] = ()
    trusted_public_keys: tuple[str, ...] = ()


def _conf_files() -> list[Path]:
    files = [Path(os.environ.get("NIX_CONF_DIR", "/etc/nix")) / "nix.conf"]
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files += [Path(d) / "nix" / "nix.conf" for d in reversed(dirs) if d]
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    files.append(Path(home) / "nix" / "nix.conf")
    return files


def read_nix_settings(texts: Iterable[str] | None = None) -> NixSettings:
    """``substituters`` and ``trusted-public-keys`` (with their ``extra-`` forms) from nix.conf files and
    ``$NIX_CONFIG``, later settings overriding earlier ones as Nix does."""
    if texts is None:
        found = []
        for f in _conf_files():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found.append(f.read_text())
        found.append(os.environ.get("NIX_CONFIG", ""))
        texts = found
    vals: dict[str, list[str]] = {"substituters": [], "trusted-public-keys": []}
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep:
                continue
            words = value.split()
            if key in vals:
                vals[key] = words
            elif key.startswith("extra-") and key[6:] in vals:
                vals[key[6:]] += words
    return NixSettings(tuple(vals["substituters"]), tuple(vals["trusted-public-keys"]))


# ---------------------------------------------------------------------------------------------------
# caches


def _redact(url: str) -> str:
    u = urlsplit(url)
    if u.username or u.password:
        host = u.hostname or ""
        if u.port:
            host += f":{u.port}"
        return u._replace(netloc=host, query="").geturl()
    return u._replace(query="").geturl()


class BinaryCache:
    """One binary cache: ``file://DIR`` (read in place) or ``http(s)://…``."""

    def __init__(self, url: str, store_dir: str = STORE_DIR, client: httpx.Client | None = None) -> None:
        u = urlsplit(url)
        if u.password:  # https://user:password@cache/: never shown, whatever a server echoes
            add_secret(unquote(u.password))
        self.url = _redact(url).rstrip("/")
        self.store_dir = store_dir
        self._checked = False
        self._lock = threading.Lock()
        self.scheme = u.scheme
        if u.scheme == "file":
            if u.netloc not in ("", "localhost"):
                raise UsageError(f"--from-cache {self.url}: a file:// URL names a local directory (file:///DIR)")
            self.dir: Path | None = Path(unquote(u.path))
            self._base = ""
        elif u.scheme in ("http", "https"):
            self.dir = None
            self._base = u._replace(query="", fragment="").geturl().rstrip("/")
        elif u.scheme == "s3":
            raise UsageError(f"--from-cache {self.url}: s3:// caches are not supported yet; serve it over https")
        else:
            raise UsageError(f"--from-cache {self.url}: use a file://, http:// or https:// binary cache URL")
        self._client = client

    # -- raw access ------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=TIMEOUT, follow_redirects=True,
                                            headers={"Accept-Encoding": ACCEPT_ENCODING})  # fmt: skip
            return self._client

    def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under the project's retry policy (``nixfly.retry``): 429 and 5xx answers and broken
        or refused connections are tried again (every request here is a GET); a name that does not
        resolve, a TLS failure, other 4xx answers and anything that does not verify end it at once."""
        last_transport = False

        def attempt() -> Any:
            nonlocal last_transport
            try:
                return fn()
            except httpx.HTTPStatusError as e:
                code = e.response.status_code
                if status_is_transient(code, repeatable=True):
                    last_transport = False
                    wait = retry_after_seconds(e.response.headers.get("Retry-After"))
                    raise Transient(f"HTTP {code}", wait) from None
                raise BinaryCacheError(f"{self.url}: {what} failed: HTTP {code}") from None
            except httpx.TransportError as e:
                failure = classify_transport(e)
                if failure.transient(repeatable=True):
                    last_transport = True
                    raise Transient(failure.text) from None
                raise BinaryCacheError(f"binary cache {self.url} is unreachable ({what}: {failure.text})") from None

        def give_up(t: Transient, attempts: int) -> Exception:
            if last_transport:
                return BinaryCacheError(f"binary cache {self.url} is unreachable ({what}: {t.what}; {attempts} tries)")
            return BinaryCacheError(f"{self.url}: {what} failed: {t.what} ({attempts} tries)")

        return RETRY.run(attempt, give_up=give_up)

    def get(self, rel: str, limit: int = MAX_NARINFO, kind: str = "narinfo") -> bytes | None:
        """A small file of the cache (at most ``limit`` bytes, else one line), or None if it has none."""
        if self.dir is not None:
            try:
                with open(self.dir / rel, "rb") as f:
                    data = f.read(limit + 1)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise BinaryCacheError(f"binary cache {self.url}: cannot read {rel}: {e.strerror}") from None
        else:

            def once() -> bytes | None:
                r = self._http().send(self._http().build_request("GET", f"{self._base}/{rel}"), stream=True)
                if r.status_code in (404, 410):
                    r.close()
                    return None
                if r.status_code >= 400:
                    r.close()
                    r.raise_for_status()
                return read_limited(r, limit, f"{self.url}/{rel}", BinaryCacheError)

            got: bytes | None = self._retrying(f"GET {rel}", once)
            if got is None:
                return None
            data = got
        if len(data) > limit:
            raise BinaryCacheError(f"{self.url}/{rel}: larger than {limit} bytes; not a {kind}")
        return data

    def check(self) -> None:
        """Check ``nix-cache-info`` once: the cache exists and its StoreDir is ours."""
        with self._lock:
            if self._checked:
                return
        data = self.get("nix-cache-info", CACHE_INFO_MAX, "nix-cache-info")
        if data is None:
            raise BinaryCacheError(f"{self.url} is not a binary cache (it has no nix-cache-info)")
        store = None
        for line in data.decode(errors="replace").splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "StoreDir":
                store = v.strip()
        if store is not None and store.rstrip("/") != self.store_dir:
            raise BinaryCacheError(
                f"binary cache {self.url} has StoreDir {store}, not {self.store_dir}: its paths cannot be used here"
            )
        with self._lock:
            self._checked = True

    def narinfo(self, path: str) -> NarInfo | None:
        self.check()
        h = path.rsplit("/", 1)[-1].split("-", 1)[0]
        data = self.get(f"{h}.narinfo")
        if data is None:
            return None
        where = f"{self.url}/{h}.narinfo"
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise BinaryCacheError(f"{where}: malformed narinfo (not UTF-8)") from None
        ni = parse_narinfo(text, where, self.url, self.store_dir)
        if ni.store_path != path:
            raise BinaryCacheError(f"{where}: describes {ni.store_path}, not {path}")
        if ni.compression not in COMPRESSIONS:
            raise BinaryCacheError(
                f"{where}: compression {ni.compression!r} is not supported (xz, zstd, bzip2 or none are)"
            )
        return ni

    def open_nar(self, ni: NarInfo) -> IO[bytes]:
        """The compressed NAR of a ``file://`` cache, opened in place."""
        assert self.dir is not None
        try:
            return open(self.dir / ni.url, "rb")
        except OSError as e:
            raise BinaryCacheError(f"{ni.store_path}: cannot read {self.url}/{ni.url}: {e.strerror}") from None

    def download(self, ni: NarInfo, dest: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        """Download the compressed NAR to ``dest``, checking FileSize and FileHash, and stopping at
        ``ni.compressed_limit()`` bytes; a failed attempt is thrown away whole and started again (nothing
        half-trusted is resumed). A full disk is one line; ``dest`` is removed after any failure."""
        src = f"{self._base}/{ni.url}"
        limit = ni.compressed_limit()

        def once() -> None:
            h = hashlib.sha256()
            n = 0
            with self._http().stream("GET", src) as r:
                if r.status_code in (404, 410):
                    raise BinaryCacheError(f"{ni.store_path}: {self.url}/{ni.url} is missing (HTTP {r.status_code})")
                r.raise_for_status()
                check_encoding(r, f"{self.url}/{ni.url}", BinaryCacheError)
                with open(dest, "wb") as f:
                    for chunk in r.iter_bytes(CHUNK):
                        n += len(chunk)
                        if n > limit:
                            raise BinaryCacheError(
                                f"{ni.store_path} from {self.url}: the download is longer than "
                                + (f"its FileSize ({ni.file_size} bytes)" if ni.file_size == limit else
                                   f"any {ni.compression} compression of its {ni.nar_size}-byte NAR can be")
                            )  # fmt: skip
                        h.update(chunk)
                        f.write(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
            _check_file(ni, self.url, n, h.digest())

        try:
            self._retrying(f"GET {ni.url}", once)
        except BaseException as e:
            with contextlib.suppress(OSError):
                dest.unlink()
            if isinstance(e, OSError):  # the download's own file: a full disk, a quota, a read-only dir
                raise BinaryCacheError(f"cannot store the download of {ni.store_path} in {dest.parent}: "
                                       f"{e.strerror or type(e).__name__}") from None  # fmt: skip
            raise


def _check_file(ni: NarInfo, cache: str, size: int, digest: bytes) -> None:
    if ni.file_size is not None and size != ni.file_size:
        raise BinaryCacheError(
            f"{ni.store_path} from {cache}: the compressed NAR has {size} bytes, not its FileSize {ni.file_size}"
        )
    if ni.file_hash is not None and digest != ni.file_hash:
        raise BinaryCacheError(
            f"{ni.store_path} from {cache}: the compressed NAR's hash {nix_hash(digest)} does not match its "
            f"FileHash {nix_hash(ni.file_hash)} (corrupted download or cache)"
        )


# ---------------------------------------------------------------------------------------------------
# streams


class _Counting:
    """Reads the compressed file, hashing and counting it, refusing more than FileSize bytes."""

    def __init__(self, fp: IO[bytes], ni: NarInfo) -> None:
        self._fp = fp
        self._ni = ni
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        # Never an unbounded read: a file:// cache's NAR may be /dev/zero or a FIFO that never ends.
        data = self._fp.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.size += len(data)
        if self.size > self._ni.compressed_limit():
            raise BinaryCacheError(
                f"{self._ni.store_path} from {self._ni.cache}: the compressed NAR is longer than "
                + ("its FileSize" if self._ni.file_size is not None else
                   f"any {self._ni.compression} compression of its {self._ni.nar_size}-byte NAR can be")
            )  # fmt: skip
        self.hash.update(data)
        return data

    def finish(self) -> None:
        while self.read(CHUNK):
            pass
        _check_file(self._ni, self._ni.cache, self.size, self.hash.digest())


class _Decompressor:
    """xz / bzip2 through the standard library's incremental decompressors (several concatenated streams
    allowed), zstd through ``zstandard``, none as is."""

    def __init__(self, fp: _Counting, kind: str, where: str) -> None:
        self._fp = fp
        self._kind = kind
        self._where = where
        self._z: Any = None
        self._d: Any = None
        if kind == "zstd":
            self._z = zstandard.ZstdDecompressor().stream_reader(fp, read_size=CHUNK, read_across_frames=True)  # type: ignore[arg-type]
        elif kind in ("xz", "bzip2"):
            self._d = self._new()
        self._eof = False

    def _new(self) -> Any:
        return lzma.LZMADecompressor() if self._kind == "xz" else bz2.BZ2Decompressor()

    def read(self, n: int = -1, /) -> bytes:
        try:
            if self._kind == "none":
                return self._fp.read(n)
            if self._z is not None:
                out: bytes = self._z.read(n)
                return out
            while not self._eof:
                d = self._d
                if d.eof:
                    rest = d.unused_data
                    if not rest:
                        rest = self._fp.read(CHUNK)
                        if not rest:
                            self._eof = True
                            break
                    self._d = d = self._new()
                    data = rest
                elif d.needs_input:
                    data = self._fp.read(CHUNK)
                    if not data:
                        raise NarError(f"{self._where}: the compressed NAR is truncated")
                else:
                    data = b""
                out = d.decompress(data, n)
                if out:
                    return out
            return b""
        except (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError) as e:
            raise NarError(f"{self._where}: the compressed NAR is corrupt ({self._kind}: {e})") from None


# ---------------------------------------------------------------------------------------------------
# the closure


@dataclass(frozen=True)
class CacheOptions:
    urls: tuple[str, ...]
    trusted_keys: tuple[TrustedKey, ...] = ()
    verify: bool = True
    jobs: int = FETCH_JOBS
    store_dir: str = STORE_DIR
    use_local: bool = True  # False: every path from the caches, even those in the local store


def cache_options(
    urls: Sequence[str], keys: Sequence[str], *, verify: bool = True, store_dir: str = STORE_DIR,
    use_local: bool = True,
) -> CacheOptions:
    """Options from user input; no URL means nix.conf's substituters, no key nix.conf's trusted keys."""
    settings = read_nix_settings() if not urls or not keys else NixSettings()
    chosen = [u for u in (urls or settings.substituters) if u]
    if not chosen:
        raise UsageError("--from-cache: no binary cache given and nix.conf lists no substituters")
    parsed = tuple(parse_public_key(k) for k in (keys or settings.trusted_public_keys))
    return CacheOptions(tuple(dict.fromkeys(chosen)), parsed, verify, FETCH_JOBS, store_dir, use_local)


def eval_installable(installable: str) -> tuple[str, str | None]:
    """A flake installable's output path and system, by evaluation only (``nix eval``): nothing is built,
    so ``.#packages.x86_64-linux.app`` works on any host."""
    try:
        proc = subprocess.run(
            ["nix", *NIX_FLAGS, "eval", "--json", installable, "--apply", "d: [ d.outPath (d.system or null) ]"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise ClosureError(f"nix eval {installable}: the nix command is not installed (give store paths)") from None
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ClosureError(f"nix eval {installable} failed: {last[-1] if last else 'exit ' + str(proc.returncode)}")
    try:
        out, system = json.loads(proc.stdout)
    except (ValueError, TypeError):
        raise ClosureError(f"nix eval {installable}: unexpected output") from None
    if not isinstance(out, str) or not is_store_path(out):
        raise ClosureError(f"nix eval {installable}: {out!r} is not a store path")
    return out, system if isinstance(system, str) else None


def _root_path(r: str, store_dir: str) -> str:
    if os.path.lexists(r):
        return to_store_path(r, store_dir)
    prefix = store_dir.rstrip("/") + "/"
    if r.startswith(prefix):
        top = prefix + r[len(prefix) :].split("/", 1)[0]
        if is_store_path(top, store_dir):
            return top
    raise ClosureError(f"{r}: not a store path, a ./result link or a flake installable")


@dataclass(frozen=True)
class RemoteClosure:
    closure: Closure
    narinfos: Mapping[str, NarInfo]  # the paths to fetch (missing locally)
    caches: Mapping[str, BinaryCache] = field(default_factory=dict)


class NarinfoCache:
    """narinfos fetched over HTTP, kept under the layer cache dir (store paths never change; signatures
    are checked again on every use), so a rebuild whose layers are cached touches no network."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _file(self, cache: BinaryCache, h: str) -> Path | None:
        if self.root is None or cache.dir is not None:
            return None
        return self.root / hashlib.sha256(cache.url.encode()).hexdigest()[:16] / f"{h}.narinfo"

    def load(self, cache: BinaryCache, path: str) -> NarInfo | None:
        h = path.rsplit("/", 1)[-1].split("-", 1)[0]
        f = self._file(cache, h)
        if f is None:
            return None
        with contextlib.suppress(OSError, UnicodeDecodeError, BinaryCacheError):
            ni = parse_narinfo(f.read_text(), str(f), cache.url, cache.store_dir)
            if ni.store_path == path and ni.compression in COMPRESSIONS:
                return ni
        return None

    def forget(self, cache: BinaryCache, path: str) -> None:
        f = self._file(cache, path.rsplit("/", 1)[-1].split("-", 1)[0])
        if f is not None:
            with contextlib.suppress(OSError):
                f.unlink()

    def save(self, cache: BinaryCache, ni: NarInfo, text: str) -> None:
        f = self._file(cache, ni.store_path.rsplit("/", 1)[-1].split("-", 1)[0])
        if f is None:
            return
        with contextlib.suppress(OSError, NixflyError):  # a cache that cannot be written costs a request
            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(f, text, durable=False)


def _narinfo_text(ni: NarInfo) -> str:
    lines = [
        f"StorePath: {ni.store_path}", f"URL: {ni.url}", f"Compression: {ni.compression}",
        f"NarHash: {nix_hash(ni.nar_hash)}", f"NarSize: {ni.nar_size}",
        "References: " + " ".join(r.rsplit("/", 1)[-1] for r in ni.references),
    ]  # fmt: skip
    if ni.file_hash is not None:
        lines.append(f"FileHash: {nix_hash(ni.file_hash)}")
    if ni.file_size is not None:
        lines.append(f"FileSize: {ni.file_size}")
    if ni.deriver:
        lines.append(f"Deriver: {ni.deriver.rsplit('/', 1)[-1]}")
    if ni.system:
        lines.append(f"System: {ni.system}")
    lines += [f"Sig: {s}" for s in ni.sigs]
    return "\n".join(lines) + "\n"


def resolve_from_caches(
    roots: Sequence[str],
    options: CacheOptions,
    *,
    system: str | None = None,
    narinfo_cache: Path | None = None,
    local_closure: Callable[[Sequence[str]], Mapping[str, StorePath]] | None = None,
) -> RemoteClosure:
    """The closure of ``roots``: paths on disk from the local store's metadata, the others from the
    caches' narinfos (first cache that has a path wins; signatures checked unless ``verify`` is off)."""
    if not roots:
        raise UsageError("nothing to build: give at least one store path or flake installable")
    store_dir = options.store_dir
    caches = [BinaryCache(u, store_dir) for u in options.urls]
    disk = NarinfoCache(narinfo_cache)
    evaluated_system: str | None = None
    store_roots: list[str] = []
    for r in roots:
        if "#" in r and not os.path.lexists(r):
            path, sys_ = eval_installable(r)
            store_roots.append(path)
            evaluated_system = evaluated_system or sys_
        else:
            store_roots.append(_root_path(r, store_dir))
    store_roots = list(dict.fromkeys(store_roots))

    def trusted(ni: NarInfo) -> bool:
        if options.verify:
            verify_signature(ni, options.trusted_keys)
        return True

    def lookup(path: str) -> NarInfo:
        for c in caches:
            ni = disk.load(c, path)
            if ni is not None:
                with contextlib.suppress(SignatureError):
                    if trusted(ni):
                        return ni
                disk.forget(c, path)
        refused: SignatureError | None = None
        for c in caches:
            ni = c.narinfo(path)
            if ni is None:
                continue
            try:
                trusted(ni)
            except SignatureError as e:  # another cache may have it signed by a trusted key
                refused = refused or e
                continue
            disk.save(c, ni, _narinfo_text(ni))  # only narinfos that passed are remembered
            return ni
        if refused is not None:
            raise refused
        tried = ", ".join(c.url for c in caches)
        raise BinaryCacheError(
            f"{path} is in no binary cache (tried: {tried}) and not in the local store; "
            "push it from CI (nix copy --to …) or build it"
        )

    narinfos: dict[str, NarInfo] = {}
    local: list[str] = []
    seen: set[str] = set()
    level = list(store_roots)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        while level:
            todo = []
            for p in level:
                if p in seen:
                    continue
                seen.add(p)
                if options.use_local and os.path.lexists(p):
                    local.append(p)
                else:
                    todo.append(p)
            found = list(pool.map(lookup, todo))
            nxt: list[str] = []
            for ni in found:
                narinfos[ni.store_path] = ni
                nxt.extend(r for r in ni.references if r not in seen)
            level = nxt
    for c in caches:
        if c._client is not None:
            c._client.close()
            c._client = None
    paths: dict[str, StorePath] = {p: ni.to_store_path() for p, ni in narinfos.items()}
    if local:
        info = (local_closure or (lambda rs: query_path_info(rs, store_dir)))(sorted(local))
        paths.update(info)  # a path found in a cache first but local after all is read from disk
        for p in info:
            narinfos.pop(p, None)
    for r in store_roots:
        if r not in paths:
            raise ClosureError(f"{r} is not in the closure metadata")
    sys_ = system or evaluated_system or next((narinfos[r].system for r in store_roots if r in narinfos), None)
    if sys_ is None:
        sys_ = f"{platform.machine().lower().replace('arm64', 'aarch64')}-linux"
    closure = Closure(tuple(store_roots), paths, sys_, store_dir)
    closure.closure_of(store_roots)  # every reference is listed
    return RemoteClosure(closure, narinfos, {c.url: c for c in caches})


# ---------------------------------------------------------------------------------------------------
# fetching and streaming NARs


class RemoteStore:
    """The StoreSource for paths that come from a binary cache (see ``nixfly.build.layers``)."""

    def __init__(self, remote: RemoteClosure, workdir: Path) -> None:
        self.narinfos = remote.narinfos
        self.caches = remote.caches
        self.workdir = workdir
        self._files: dict[str, Path] = {}
        self._lock = threading.Lock()
        self.fs: RemoteFS | None = None  # set by the pipeline once it knows which paths are listed whole
        self.on_bytes: Callable[[int], None] | None = None  # hears downloaded bytes (progress)

    def covers(self, path: str) -> bool:
        return path in self.narinfos

    def _cache(self, ni: NarInfo) -> BinaryCache:
        return self.caches.get(ni.cache) or BinaryCache(ni.cache)

    def needs_download(self, path: str) -> bool:
        ni = self.narinfos[path]
        return self._cache(ni).dir is None and path not in self._files

    def prefetch(
        self, paths: Iterable[str], jobs: int = FETCH_JOBS, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Download the compressed NARs of ``paths`` (HTTP caches only), ``jobs`` at a time."""
        todo = sorted({p for p in paths if p in self.narinfos and self.needs_download(p)},
                      key=lambda p: -(self.narinfos[p].file_size or 0))  # fmt: skip
        if not todo:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)

        def one(p: str) -> None:
            ni = self.narinfos[p]
            dest = self.workdir / (p.rsplit("/", 1)[-1] + ".nar")
            self._cache(ni).download(ni, dest, on_bytes or self.on_bytes)
            with self._lock:
                self._files[p] = dest

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for fut in [pool.submit(one, p) for p in todo]:
                fut.result()

    def _open(self, ni: NarInfo) -> IO[bytes]:
        cache = self._cache(ni)
        if cache.dir is not None:
            return cache.open_nar(ni)
        if ni.store_path not in self._files:
            self.prefetch([ni.store_path], 1)
        return open(self._files[ni.store_path], "rb")

    def entries(self, path: str, name: bytes) -> Generator[TreeEntry, None, None]:
        """The entries of ``path`` from its NAR; verified when exhausted. While a layer streams a path
        that is not listed yet, its listing is noted on the way and kept once the NAR has verified, so
        the customisation that follows reads no NAR twice."""
        ni = self.narinfos[path]
        where = f"{path} from {ni.cache}"
        fs = self.fs
        noting = fs is not None and path not in fs.roots and not fs.has_complete_listing(path)
        noted: dict[str, list[str]] = {}
        with self._open(ni) as fp:
            counted = _Counting(fp, ni)
            reader = NarReader(_Decompressor(counted, ni.compression, where), where, ni.nar_size)
            for e in reader.entries(name):
                if noting:
                    item = _listing_item(e, name)
                    if item is not None:
                        noted[item[0]] = item[1]
                yield e
            counted.finish()
            digest = reader.digest()
        if reader.size != ni.nar_size:
            raise BinaryCacheError(f"{where}: the NAR has {reader.size} bytes, not its NarSize {ni.nar_size}")
        if digest != ni.nar_hash:
            raise BinaryCacheError(
                f"{where}: NAR hash mismatch (narinfo says {nix_hash(ni.nar_hash)}, the NAR is {nix_hash(digest)})"
            )
        if noting and fs is not None:
            fs.keep_listing(path, noted)

    def read_head(self, entry: TreeEntry, n: int) -> bytes:
        got = bytearray()

        def take(b: bytes) -> None:
            if len(got) < n:
                got.extend(b[: n - len(got)])

        assert entry.content is not None
        entry.content.copy_to(take, entry.size)
        return bytes(got)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for c in self.caches.values():
            if c._client is not None:
                c._client.close()
                c._client = None


# ---------------------------------------------------------------------------------------------------
# a look at remote paths without unpacking them


_HEAD = 64
_KINDS = {b"0": "f", b"2": "l", b"5": "d"}


def _listing_item(e: TreeEntry, root: bytes) -> tuple[str, list[str]] | None:
    """(relative path, [kind, symlink target]) for entries a listing keeps: two levels deep, and
    ``etc/`` five (the CA bundle paths); None for the others."""
    rel = os.fsdecode(e.name[len(root) + 1 :]) if e.name != root else ""
    parts = rel.split("/") if rel else []
    if len(parts) > 2 and not (parts[0] == "etc" and len(parts) <= 5):
        return None
    kind = _KINDS[e.type]
    if e.type == b"0" and e.mode & 0o111:
        kind = "x"
    return rel, [kind, os.fsdecode(e.target) if e.type == b"2" else ""]


class RemoteFS:
    """``customise``'s and the platform guard's view of the store: local paths through ``os.path``,
    remote ones through a listing read from their NAR (entries two levels deep, ``etc/`` five, the first
    bytes of ``bin/`` and ``sbin/`` files). A path that is not a root only needs ``bin`` and ``etc``, so
    its NAR is read only until the entries sort past ``etc``. Listings are remembered under the cache
    dir (store paths never change), so a rebuild reads no NAR; a NAR that does not verify fails the
    build when its layer is written, so a listing never outlives a bad NAR in a finished image."""

    def __init__(
        self, store: RemoteStore, full: Iterable[str], cache_dir: Path | None, store_dir: str,
        roots: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.full = set(full)
        self.roots = set(roots)
        self.cache_dir = cache_dir
        self.store_dir = store_dir.rstrip("/")
        self._listings: dict[str, tuple[bool, dict[str, list[str]], dict[str, list[str]]]] = {}
        self._lock = threading.Lock()

    # -- listings --------------------------------------------------------------------------------

    def _from_ls(self, path: str) -> dict[str, list[str]] | None:
        """The listing from the cache's ``<hash>.ls`` (``nix copy --to '…?write-nar-listing=true'``;
        cache.nixos.org has them), when there is one: no NAR is read then."""
        ni = self.store.narinfos[path]
        cache = self.store._cache(ni)
        try:
            data = cache.get(path.rsplit("/", 1)[-1].split("-", 1)[0] + ".ls", NAR_LISTING_MAX, "NAR listing")
            if data is None:
                return None
            root = json.loads(data)["root"]
        except (BinaryCacheError, ValueError, KeyError, TypeError, RecursionError):
            return None
        entries: dict[str, list[str]] = {}
        kinds = {"regular": "f", "symlink": "l", "directory": "d"}
        stack: list[tuple[str, Any]] = [("", root)]
        while stack:
            rel, node = stack.pop()
            if not isinstance(node, dict) or node.get("type") not in kinds:
                return None
            kind = kinds[node["type"]]
            if kind == "f" and node.get("executable"):
                kind = "x"
            target = node.get("target", "") if kind == "l" else ""
            if not isinstance(target, str):
                return None
            entries[rel] = [kind, target]
            if kind == "d":
                children = node.get("entries", {})
                if not isinstance(children, dict):
                    return None
                parts = rel.split("/") if rel else []
                for name, child in children.items():
                    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                        return None
                    depth = len(parts) + 1
                    if depth <= 2 or (parts and parts[0] == "etc" and depth <= 5):
                        stack.append((f"{rel}/{name}" if rel else name, child))
        return entries

    def _read(self, path: str, full: bool) -> tuple[bool, dict[str, list[str]]]:
        if path not in self.roots:  # roots need the first bytes of bin/ files: those only a NAR has
            listed = self._from_ls(path)
            if listed is not None:
                return True, listed
        entries: dict[str, list[str]] = {}
        root = path.strip("/").encode()
        complete = True
        gen = self.store.entries(path, root)
        try:
            for e in gen:
                if not full and e.name != root and e.name[len(root) + 1 :].split(b"/", 1)[0] > b"etc":
                    complete = False
                    break
                item = _listing_item(e, root)
                if item is None:
                    continue
                rel, (kind, extra) = item
                parts = rel.split("/")
                if e.type == b"0" and len(parts) == 2 and parts[0] in ("bin", "sbin"):
                    extra = base64.b64encode(self.store.read_head(e, _HEAD)).decode()
                entries[rel] = [kind, extra]
        finally:
            gen.close()
        return complete, entries

    def has_complete_listing(self, path: str) -> bool:
        with self._lock:
            got = self._listings.get(path)
        return got is not None and got[0]

    def keep_listing(self, path: str, entries: dict[str, list[str]]) -> None:
        """A complete listing noted while the path's layer was written (and its NAR verified)."""
        self._store(path, True, entries)

    def _file(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (path.rsplit("/", 1)[-1].split("-", 1)[0] + ".json")

    def has_listing(self, path: str) -> bool:
        f = self._file(path)
        return path in self._listings or (f is not None and f.exists())

    def listing(self, path: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(entries by relative path, child names by relative directory) of a remote path."""
        full = path in self.full
        with self._lock:
            got = self._listings.get(path)
        if got is not None and (got[0] or not full):
            return got[1], got[2]
        complete, entries = False, {}
        f = self._file(path)
        loaded = False
        if f is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(f.read_bytes())
                complete, entries = bool(data["complete"]), dict(data["entries"])
                loaded = complete or not full
        if not loaded:
            complete, entries = self._read(path, full)
            return self._store(path, complete, entries)
        return self._store(path, complete, entries, write=False)

    def _store(
        self, path: str, complete: bool, entries: dict[str, list[str]], write: bool = True
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        f = self._file(path)
        if write and f is not None:
            with contextlib.suppress(OSError, NixflyError):
                f.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(f, json.dumps({"complete": complete, "entries": entries}), durable=False)
        children: dict[str, list[str]] = {}
        for rel in entries:
            if rel:
                parent, _, name = rel.rpartition("/")
                children.setdefault(parent, []).append(name)
        with self._lock:
            self._listings[path] = (complete, entries, children)
        return entries, children

    def prefetch(self, paths: Iterable[str], jobs: int) -> None:
        """Read the listings of ``paths`` (remote ones), ``jobs`` at a time: the decompressors run in
        parallel, and a search through the closure (CA certificates, /bin/sh) then finds them ready."""
        todo = [p for p in dict.fromkeys(paths) if self.store.covers(p)]
        if len(todo) <= 1 or jobs <= 1:
            for p in todo:
                self.listing(p)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for fut in [pool.submit(self.listing, p) for p in todo]:
                fut.result()

    # -- path resolution -------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[str, list[str]] | None:
        prefix = self.store_dir + "/"
        if not path.startswith(prefix):
            return None
        top, _, rest = path[len(prefix) :].partition("/")
        return prefix + top, [c for c in rest.split("/") if c and c != "."]

    def _resolve(self, path: str, follow: bool) -> tuple[bool, str, list[str] | None]:
        """Follow symlinks through remote listings: (False, path, None) once the path leaves the remote
        paths (the OS answers for it), else (True, resolved path, its entry or None if absent)."""
        for _ in range(40):
            path = os.path.normpath(path)
            sp = self._split(path)
            if sp is None or not self.store.covers(sp[0]):
                return False, path, None
            top, comps = sp
            entries, _children = self.listing(top)
            for i in range(len(comps) + 1):
                rel = "/".join(comps[:i])
                e = entries.get(rel)
                if e is None:
                    return True, path, None
                last = i == len(comps)
                if e[0] == "l" and (not last or follow):
                    path = os.path.join(os.path.dirname(top + ("/" + rel if rel else "")), e[1], *comps[i + 1 :])
                    break
                if not last and e[0] != "d":
                    return True, path, None
            else:
                return True, path, e
        return True, path, None  # a symlink loop

    def isdir(self, path: str) -> bool:
        remote, p, e = self._resolve(path, True)
        return e is not None and e[0] == "d" if remote else os.path.isdir(p)

    def islink(self, path: str) -> bool:
        remote, p, e = self._resolve(path, False)
        return e is not None and e[0] == "l" if remote else os.path.islink(p)

    def lexists(self, path: str) -> bool:
        remote, p, e = self._resolve(path, False)
        return e is not None if remote else os.path.lexists(p)

    def isfile(self, path: str) -> bool:
        remote, p, e = self._resolve(path, True)
        if not remote:
            return os.path.exists(p) and not os.path.isdir(p)
        if e is not None:
            return e[0] != "d"
        # Deeper than a listing goes (two levels, etc/ five): not known without the NAR; say yes, the
        # layer is written from the NAR whatever this answers.
        sp = self._split(p)
        comps = sp[1] if sp is not None else []
        return len(comps) > 2 and not (comps[0] == "etc" and len(comps) <= 5)

    def listdir(self, path: str) -> list[str]:
        remote, p, e = self._resolve(path, True)
        if not remote:
            return os.listdir(p)
        if e is None or e[0] != "d":
            raise BinaryCacheError(f"{path}: not a directory in its NAR")
        sp = self._split(p)
        assert sp is not None
        _entries, children = self.listing(sp[0])
        return sorted(children.get("/".join(sp[1]), []))

    def bin_heads(self, root: str) -> list[tuple[str, bytes]]:
        """(file, first bytes) of the regular files directly in a remote root's bin/ and sbin/."""
        entries, _c = self.listing(root)
        out = []
        for rel, (kind, extra) in sorted(entries.items()):
            parts = rel.split("/")
            if len(parts) == 2 and parts[0] in ("bin", "sbin") and kind in ("f", "x"):
                out.append((f"{root}/{rel}", base64.b64decode(extra)))
        return out


def download_size(store: RemoteStore, paths: Iterable[str]) -> int:
    return sum(store.narinfos[p].file_size or 0 for p in set(paths) if p in store.narinfos and store.needs_download(p))


__all__ = [
    "BinaryCache", "BinaryCacheError", "CacheOptions", "NarInfo", "Readable", "RemoteClosure", "RemoteStore",
    "SignatureError", "TrustedKey", "cache_options", "eval_installable", "parse_narinfo", "read_nix_settings",
    "resolve_from_caches", "verify_signature",
]  # fmt: skip
