"""Hostile HTTP servers on loopback, for what a malicious or broken server does to a client.

- :class:`Scripted`: a server whose answers a test writes as a function of (method, path, headers, body);
  an answer may be :data:`ENDLESS` (200 and a body that never ends, as fast as the socket takes it) or
  :data:`TRICKLE` (a body that comes one byte at a time, each just in time for any read timeout). Every
  request is recorded with its headers, so a test can ask whether a host ever saw an Authorization header.
- :class:`Relay`: a server on ANOTHER loopback host (127.0.0.2 when it can bind there, else another port on
  127.0.0.1: another origin either way) that records what it receives and forwards it to a real registry,
  adding the registry's credentials itself, as object storage behind a pre-signed URL would accept an
  upload without the registry's credentials.
- :func:`run_measured`: run the nixfly CLI as a subprocess and return its exit code, output and peak RSS
  (``ru_maxrss`` from ``wait4``), under an address-space limit so that a client that reads without end
  dies of MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENDLESS = "endless"
TRICKLE = "trickle"  # 200, a Content-Length of 1 MiB, then one byte every 0.3 s (each read well inside any timeout)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body_len: int


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""  # or ENDLESS


Script = Callable[[Seen], Answer]


def other_host() -> str:
    """127.0.0.2 if this machine can listen there (every 127/8 address is loopback on Linux), else 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    return "127.0.0.1"


def read_body(handler: BaseHTTPRequestHandler, limit: int | None = None) -> bytes:
    """A request's body, chunked or by Content-Length; with ``limit``, stop once that much has come (the
    rest stays unread: the caller drops the connection)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
            if limit is not None and len(out) >= limit:
                return bytes(out)
    n = int(handler.headers.get("Content-Length") or 0)
    if limit is not None:
        n = min(n, limit)
    return handler.rfile.read(n) if n else b""


class _Server:
    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.host = f"{host}:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.seen: list[Seen] = []
        self.sent_bytes = 0  # body bytes written by ENDLESS answers
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._t.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def receive(self, handler: BaseHTTPRequestHandler) -> tuple[Seen, bytes]:
        """Read a request's body and record what arrived."""
        body = read_body(handler)
        s = Seen(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, len(body))
        with self.lock:
            self.seen.append(s)
        return s, body

    def authorized(self) -> list[Seen]:
        """The requests that carried an Authorization header."""
        with self.lock:
            return [s for s in self.seen if "authorization" in s.headers]


class Scripted(_Server):
    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                seen, _body = outer.receive(self)
                a = script(seen)
                self.send_response(a.status)
                for k, v in a.headers.items():
                    self.send_header(k, v)
                if a.body == ENDLESS:
                    # No length: the body ends when the connection does, which it never does by itself.
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    chunk = (b"[" * 1024 + b" " * 1024) * 32
                    with contextlib.suppress(OSError):
                        while not outer.stop.is_set():
                            self.wfile.write(chunk)
                            with outer.lock:
                                outer.sent_bytes += len(chunk)
                    return
                if a.body == TRICKLE:
                    self.send_header("Content-Length", str(1 << 20))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        while not outer.stop.wait(0.3):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            with outer.lock:
                                outer.sent_bytes += 1
                    return
                data = a.body.encode() if isinstance(a.body, str) else a.body
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        super().__init__(host, Handler)


HeaderRewrite = Callable[[Seen, int, list[tuple[str, str]]], list[tuple[str, str]]]


class Relay(_Server):
    """A forwarding proxy to ``upstream`` (host:port, plain HTTP) that records what it receives.

    ``auth`` None passes the client's Authorization header on (a front of the registry); (user, password)
    drops it and sends these credentials instead (storage that accepts an upload without the registry's
    credentials, as behind a pre-signed URL). ``rewrite`` may change the answer's headers (say, point an
    upload's Location or a tags list's Link at another host). ``answer_401`` answers every request with 401
    and this WWW-Authenticate instead of forwarding. Locations naming ``upstream`` are made to name this
    relay, so a session stays where it is."""

    def __init__(self, upstream: str, *, auth: tuple[str, str] | None = None, host: str | None = None,
                 rewrite: HeaderRewrite | None = None, answer_401: str | None = None) -> None:  # fmt: skip
        outer = self
        up_host, _, up_port = upstream.partition(":")
        basic = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                seen, body = outer.receive(self)
                if answer_401 is not None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", answer_401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                dropped = _HOP_BY_HOP | {"host", "content-length"} | ({"authorization"} if basic else set())
                conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in dropped:
                            conn.putheader(k, v)
                    if basic:
                        conn.putheader("Authorization", basic)
                    if body or self.command in ("PUT", "POST", "PATCH"):
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = [(k, v.replace(f"http://{upstream}", outer.url)) for k, v in resp.getheaders()
                               if k.lower() not in _HOP_BY_HOP | {"content-length"}]  # fmt: skip
                finally:
                    conn.close()
                if rewrite is not None:
                    headers = rewrite(seen, resp.status, headers)
                self.send_response_only(resp.status, resp.reason)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD" else
                                 resp.getheader("Content-Length", "0"))  # fmt: skip
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        super().__init__(host or other_host(), Handler)


@contextlib.contextmanager
def serving(server: _Server) -> Iterator[Any]:
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class Measured:
    code: int
    out: str
    err: str
    max_rss_mb: float
    seconds: float


def run_measured(*args: str, env: dict[str, str] | None = None, address_space_gb: float = 2.0,
                 file_size_mb: int = 1024, timeout: float = 120, stdin: bytes | None = None,
                 prefix: tuple[str, ...] = ()) -> Measured:  # fmt: skip
    """Run ``nixfly ARGS`` (after ``prefix``, a wrapper such as ``unshare``) and measure its peak resident
    memory. The address-space and file-size limits turn a read or a download without end into a quick
    failure (MemoryError, SIGXFSZ: a failing test) rather than gigabytes of memory or disk taken from
    everybody else on the machine."""
    limit = int(address_space_gb * (1 << 30))
    fsize = file_size_mb << 20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "nixfly", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            env=full_env, preexec_fn=cap)  # fmt: skip
    outs: dict[str, bytes] = {}

    def drain(name: str, f: Any) -> None:
        outs[name] = f.read()

    readers = [threading.Thread(target=drain, args=(n, f), daemon=True)
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]  # fmt: skip
    for t in readers:
        t.start()
    if stdin is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
        proc.stdin.close()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not all children's
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(10)
    seconds = time.monotonic() - t0
    err = outs.get("err", b"").decode(errors="replace")
    if seconds >= timeout:
        raise AssertionError(f"nixfly {' '.join(args)} did not finish within {timeout} s: {err[-2000:]}")
    return Measured(proc.returncode, outs.get("out", b"").decode(errors="replace"), err,
                    usage.ru_maxrss / 1024, seconds)  # fmt: skip


def wait_path(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total
