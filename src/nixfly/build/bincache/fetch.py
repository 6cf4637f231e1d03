"""One binary cache and its fetcher: ``file://DIR`` read in place or ``http(s)://`` through one retrying,
size-bounded HTTP client (credentials in the URL hidden), nix-cache-info, narinfos, NAR downloads bounded
by ``NarInfo.compressed_limit`` into a private directory, and the streams that count and decompress them.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import lzma
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx
import zstandard

from nixfly.build.bincache.narinfo import COMPRESSIONS, BinaryCacheError, NarInfo, nix_hash, parse_narinfo
from nixfly.build.closure import (
    STORE_DIR,
)
from nixfly.build.nar import CHUNK, NarError
from nixfly.errors import UsageError, add_secret
from nixfly.limits import ACCEPT_ENCODING, CACHE_INFO_MAX, NARINFO_MAX, check_encoding, read_limited
from nixfly.retry import RetryPolicy, Transient, classify_transport, retry_after_seconds, status_is_transient

# The project's retry policy, with a short budget: a cache that does not answer is one line within seconds.
RETRY = RetryPolicy(retries=2, backoff=0.2, max_backoff=2.0)
TIMEOUT = 30.0
MAX_NARINFO = NARINFO_MAX

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
