"""A streaming loopback HTTP/1.1 proxy that counts what clients upload to a registry.

Benchmarks put it in front of the real registry so the bytes a push sends are measured the same way
for every client (nixfly, skopeo). It parses just enough HTTP to find message boundaries
(Content-Length or chunked bodies, keep-alive) and streams bodies through in 1 MiB pieces; nothing
is buffered whole. Blob bytes are request bodies sent to ``/blobs/uploads/``; manifest bytes are
bodies sent to ``/manifests/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

PIECE = 1 << 20
LIMIT = 8 << 20


@dataclass
class Counts:
    requests: int = 0
    blob_bytes: int = 0  # request bodies to /blobs/uploads/ (POST, PATCH, PUT)
    manifest_bytes: int = 0  # request bodies to /manifests/
    upload_requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "blob_bytes": self.blob_bytes,
            "manifest_bytes": self.manifest_bytes,
            "upload_requests": self.upload_requests,
            "by_method": dict(self.by_method),
        }


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


async def _relay_body(r: asyncio.StreamReader, w: asyncio.StreamWriter, hdrs: dict[str, str], to_eof: bool) -> int:
    """Copy one message body from r to w; returns its payload length."""
    n = 0
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
                piece = await r.read(min(PIECE, left))
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
            piece = await r.read(min(PIECE, left))
            if not piece:
                raise ConnectionError("peer closed inside a body")
            w.write(piece)
            left -= len(piece)
            n += len(piece)
            await w.drain()
        return n
    if to_eof:
        while piece := await r.read(PIECE):
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
    """Run with ``with CountingProxy(port) as p:``; clients use ``127.0.0.1:p.port``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts = Counts()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

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
                body = await _relay_body(cr, uw, hdrs, to_eof=False)
                c = self.counts
                c.requests += 1
                c.by_method[method] = c.by_method.get(method, 0) + 1
                if "/blobs/uploads" in path:
                    c.blob_bytes += body
                    c.upload_requests += 1
                elif "/manifests/" in path:
                    c.manifest_bytes += body
                while True:
                    rhead = await _read_head(ur)
                    if not rhead:
                        return
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
