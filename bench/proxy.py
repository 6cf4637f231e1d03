"""A streaming loopback HTTP/1.1 proxy that counts what clients upload to a registry.

Benchmarks put it in front of the real registry so the bytes a push sends are measured the same way
for every client (nixfly, skopeo). It parses just enough HTTP to find message boundaries
(Content-Length or chunked bodies, keep-alive) and streams bodies through in 1 MiB pieces; nothing
is buffered whole. Blob bytes are request bodies sent to ``/blobs/uploads/``; manifest bytes are
bodies sent to ``/manifests/``. Each upload's bytes are also attributed to the digest its final
request names (``?digest=``), so a benchmark can tell layer bytes from config, SBOM or index bytes.

Optionally it shapes the link like a real uplink: ``rate`` (bytes/s) limits the client→registry
direction (request bodies, where uploads go) with one token bucket shared by every connection, so
parallel uploads share the link as they would on a real one; ``latency`` (seconds) delays every
response head, as a round trip would. Responses (registry→client) are not shaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

PIECE = 1 << 20
LIMIT = 8 << 20


@dataclass
class Counts:
    requests: int = 0
    blob_bytes: int = 0  # request bodies to /blobs/uploads/ (POST, PATCH, PUT)
    manifest_bytes: int = 0  # request bodies to /manifests/
    upload_requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    by_digest: dict[str, int] = field(default_factory=dict)  # body bytes of each finished upload
    _sessions: dict[str, int] = field(default_factory=dict, repr=False)  # upload path -> bytes so far

    def upload(self, path: str, body: int) -> None:
        """Count `body` bytes sent to the upload at `path`; the request naming ``?digest=`` ends it."""
        self.blob_bytes += body
        self.upload_requests += 1
        parts = urlsplit(path)
        session = parts.path.rstrip("/")
        total = self._sessions.pop(session, 0) + body
        digest = parse_qs(parts.query).get("digest", [""])[0]
        if digest:
            self.by_digest[digest] = self.by_digest.get(digest, 0) + total
        elif not session.endswith("/blobs/uploads"):  # a POST opening a session names no session yet
            self._sessions[session] = total

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "blob_bytes": self.blob_bytes,
            "manifest_bytes": self.manifest_bytes,
            "upload_requests": self.upload_requests,
            "by_method": dict(self.by_method),
            "by_digest": dict(self.by_digest),
        }


class TokenBucket:
    """A link of `rate` bytes/s shared by every caller in one event loop, with `burst` bytes of slack.

    A virtual clock: each piece reserves the next `n / rate` seconds of the link and sleeps until its
    slot has passed, so the long-run rate is exact however many connections share it."""

    def __init__(self, rate: float, burst: int = 64 << 10) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.slack = burst / rate
        self._t = 0.0
        self.first = 0.0  # when the first piece went, when the last one had gone (monotonic)
        self.last = 0.0

    async def take(self, n: int, ready: float | None = None) -> float:
        """Wait until `n` more bytes have crossed the link; returns when their slot ends (monotonic).

        `ready`: when these bytes were already waiting to be sent (default: now). A sender's backlog
        that piled up while this process was not scheduled is sent back to back from there, as a real
        link's queue would have drained it meanwhile; only a link the sender left idle loses time."""
        now = time.monotonic()
        self.first = self.first or now
        self._t = max(self._t, (now if ready is None else min(ready, now)) - self.slack) + n / self.rate
        end = self._t
        if end > now:
            await asyncio.sleep(end - now)
        self.last = time.monotonic()
        return end

    def piece(self) -> int:
        """How much to move at a time: ~4 ms of link time, 16 KiB to 1 MiB."""
        return max(16 << 10, min(PIECE, int(self.rate / 250)))


async def _read_head(r: asyncio.StreamReader) -> bytes:
    try:
        return await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return b""


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return lines[0], hdrs


async def _relay_body(
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter,
    hdrs: dict[str, str],
    to_eof: bool,
    bucket: TokenBucket | None = None,
) -> int:
    """Copy one message body from r to w (paced by `bucket` if given); returns its payload length."""
    n = 0
    step = bucket.piece() if bucket is not None else PIECE
    prev_end: float | None = None  # when this body's previous piece was through the link

    async def read(want: int) -> bytes:
        nonlocal prev_end
        t0 = time.monotonic()
        piece = await r.read(want)
        if bucket is not None and piece:
            # the piece was already here (the read did not wait): the sender had it queued since at
            # least the end of our previous piece, whatever kept us from coming back sooner
            waited = time.monotonic() - t0 > 0.001
            prev_end = await bucket.take(len(piece), None if waited or prev_end is None else prev_end)
        return piece

    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        while True:
            line = await r.readuntil(b"\r\n")
            w.write(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    t = await r.readuntil(b"\r\n")
                    w.write(t)
                    if t == b"\r\n":
                        break
                await w.drain()
                return n
            left = size
            while left:
                piece = await read(min(step, left))
                if not piece:
                    raise ConnectionError("peer closed inside a chunk")
                w.write(piece)
                left -= len(piece)
                await w.drain()
            w.write(await r.readexactly(2))
            n += size
    if "content-length" in hdrs:
        left = int(hdrs["content-length"])
        while left:
            piece = await read(min(step, left))
            if not piece:
                raise ConnectionError("peer closed inside a body")
            w.write(piece)
            left -= len(piece)
            n += len(piece)
            await w.drain()
        return n
    if to_eof:
        while piece := await read(step):
            w.write(piece)
            n += len(piece)
            await w.drain()
    return n


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while piece := await r.read(PIECE):
            w.write(piece)
            await w.drain()
    with contextlib.suppress(Exception):
        w.close()


class CountingProxy:
    """Run with ``with CountingProxy(port) as p:``; clients use ``127.0.0.1:p.port``.

    `rate` (bytes/s, None: unshaped) paces request bodies through one bucket shared by all
    connections; `latency` (seconds) delays each response head."""

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", rate: float | None = None, latency: float = 0.0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self.latency = latency
        self._bucket = TokenBucket(rate) if rate else None
        self.counts = Counts()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def set_rate(self, rate: float | None) -> None:
        """Reshape the link (None: unshaped) for the requests that start from now on."""
        self.rate = rate
        self._bucket = TokenBucket(rate) if rate else None

    def reset(self) -> Counts:
        old, self.counts = self.counts, Counts()
        return old

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.upstream, limit=LIMIT)
        try:
            first = await cr.read(1)
            if not first:
                return
            if not first.isalpha():
                # Not HTTP (a client probing TLS first, as Go's registry clients do): pass it through
                # untouched so the registry answers exactly as it would without us.
                uw.write(first)
                await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))
                return
            while True:
                head = await _read_head(cr)
                if first:
                    head, first = first + head, b""
                if not head:
                    break
                start, hdrs = _headers(head)
                method, path = start.split(" ")[:2]
                uw.write(head)
                body = await _relay_body(cr, uw, hdrs, to_eof=False, bucket=self._bucket)
                c = self.counts
                c.requests += 1
                c.by_method[method] = c.by_method.get(method, 0) + 1
                if "/blobs/uploads" in path:
                    c.upload(path, body)
                elif "/manifests/" in path:
                    c.manifest_bytes += body
                first_head = True
                while True:
                    rhead = await _read_head(ur)
                    if not rhead:
                        return
                    if first_head and self.latency:
                        await asyncio.sleep(self.latency)
                    first_head = False
                    cw.write(rhead)
                    status_line, rh = _headers(rhead)
                    status = int(status_line.split(" ")[1])
                    if 100 <= status < 200:
                        await cw.drain()
                        continue
                    if method != "HEAD" and status not in (204, 304):
                        await _relay_body(ur, cw, rh, to_eof=True)
                    await cw.drain()
                    break
                if rh.get("connection", "").lower() == "close" or hdrs.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            for w in (uw, cw):
                with contextlib.suppress(Exception):
                    w.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=LIMIT)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.close()

    def __enter__(self) -> CountingProxy:
        self._thread = threading.Thread(target=self._run, daemon=True, name="counting-proxy")
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            if self._server is not None:
                loop.call_soon_threadsafe(self._server.close)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def upload_through(port: int, nbytes: int, repo: str = "selfcheck/blob", parallel: int = 1) -> float:
    """Upload `parallel` blobs of `nbytes` each (monolithic POST + PUT ?digest=, bodies streamed in
    64 KiB pieces, never held whole) to the registry behind a proxy at 127.0.0.1:port, all at once;
    returns the wall time. Raises if the registry did not accept every blob."""
    import hashlib
    import http.client
    import os

    piece = os.urandom(64 << 10)

    def body() -> Iterator[bytes]:
        left = nbytes
        while left:
            yield piece[: min(left, len(piece))]
            left -= min(left, len(piece))

    h = hashlib.sha256()
    for p in body():
        h.update(p)
    digest = "sha256:" + h.hexdigest()
    errors: list[str] = []

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", f"/v2/{repo}{i}/blobs/uploads/", headers={"Content-Length": "0"})
            r = conn.getresponse()
            r.read()
            loc = r.getheader("Location", "")
            if r.status != 202 or not loc:
                errors.append(f"POST: {r.status}")
                return
            loc = urlsplit(loc)._replace(scheme="", netloc="").geturl()
            sep = "&" if "?" in loc else "?"
            conn.request(
                "PUT",
                f"{loc}{sep}digest={digest}",
                body=body(),
                headers={"Content-Length": str(nbytes), "Content-Type": "application/octet-stream"},
            )
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                errors.append(f"PUT: {r.status}")
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"upload through the proxy failed: {', '.join(errors)}")
    return wall


def main() -> int:
    """``python bench/proxy.py --mbit 100 --mb 100``: time uploads through a shaped proxy to a real
    registry against bytes ÷ rate (the shaper's self-check)."""
    import argparse
    import tempfile
    from pathlib import Path

    from registry import Registry

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--mbit", type=float, default=100.0, help="link rate, Mbit/s (default 100)")
    ap.add_argument("--mb", type=float, default=100.0, help="megabytes (10^6) per upload (default 100)")
    ap.add_argument("--parallel", type=int, default=1, help="concurrent uploads sharing the link")
    args = ap.parse_args()
    rate = args.mbit * 1e6 / 8
    n = int(args.mb * 1e6)
    with (
        tempfile.TemporaryDirectory(prefix="proxy-check-", dir="/var/tmp") as d,
        Registry(Path(d) / "reg") as reg,
        CountingProxy(reg.port, rate=rate) as px,
    ):
        wall = upload_through(px.port, n, parallel=args.parallel)
        ideal = n * args.parallel / rate
        b = px._bucket
        busy = b.last - b.first if b is not None else 0.0
        print(
            f"{args.parallel} x {n:,} B at {args.mbit:g} Mbit/s: bytes/rate {ideal:.3f} s; link busy (first to last "
            f"body byte through the proxy) {busy:.3f} s, ratio {busy / ideal:.4f}; whole upload {wall:.3f} s, ratio "
            f"{wall / ideal:.3f} (the rest is the POST round trip and the registry committing the blob); proxy "
            f"counted {px.counts.blob_bytes:,} B"
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
