"""A loopback HTTP proxy in front of a test registry that counts traffic and injects faults.

The client under test talks to the proxy as if it were the registry (the Host header is passed through,
so the registry's ``Location`` headers point back at the proxy). Every request is recorded as an
:class:`Exchange` (method, path, request body bytes, status, injected fault), which lets tests count
uploaded blob bytes exactly. Faults are queued with :meth:`FaultProxy.add_fault` and consumed in order
by the first matching requests:

- ``reset``: read ``after_bytes`` of the body (default: all of it), then reset the TCP connection (the
  registry never sees the request);
- ``truncate``: like ``reset``, but the registry gets the request with those ``after_bytes`` of the body and
  then a reset, as when a real link breaks mid-upload (distribution then forgets the upload session);
- ``forward_then_reset``: forward the request (the registry acts on it) but reset instead of answering;
- ``status``: swallow the request and answer ``status`` (500, 429 with ``retry_after``, 503 ...);
- ``stall``: read the request and then say nothing for ``stall_seconds`` before closing;
- ``redirect``: answer ``status`` (pass 307, say) with ``Location: location`` instead of forwarding;
- ``rewrite``: forward, then change the answer's headers (``set_headers``; a None value removes one).

Besides the queue, a ``planner`` (a function of method, path and declared body length) may pick a fault for
any request no queued fault matched: that is how a test spreads many random faults over a whole run.

Fixture: ``fault_proxy`` (in front of the ``registry`` fixture).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest

from tests.support.hostile_http import read_body
from tests.support.registry import RunningRegistry

FaultAction = Literal["reset", "truncate", "forward_then_reset", "status", "stall", "redirect", "rewrite"]


@dataclass
class Fault:
    action: FaultAction
    method: str | None = None  # match this HTTP method only
    path_contains: str | None = None  # match paths containing this text only
    times: int = 1
    after_bytes: int | None = None  # "reset": how much of the body to read first
    status: int = 500
    retry_after: str | None = None
    stall_seconds: float = 30.0
    min_body: int = 0  # only requests whose declared body is at least this long
    skip: int = 0  # let this many matching requests through first
    location: str = ""  # "redirect": where to
    set_headers: dict[str, str | None] = field(default_factory=dict)  # "rewrite"

    def matches(self, method: str, path: str, body_len: int) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
            and body_len >= self.min_body
        )


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    request_bytes: int  # body bytes received from the client
    status: int | None  # None when the connection was reset or stalled
    fault: FaultAction | None
    upstream_status: int | None = None  # what the registry answered, when the request reached it


@dataclass
class FaultProxy:
    upstream: RunningRegistry
    url: str = ""
    host: str = ""
    exchanges: list[Exchange] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    planner: Callable[[str, str, int], Fault | None] | None = None

    def add_fault(self, action: FaultAction, **kw: Any) -> Fault:
        fault = Fault(action, **kw)
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str, body_len: int) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path, body_len):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    f.times -= 1
                    return f
            if self.planner is not None:
                return self.planner(method, path, body_len)
        return None

    def record(self, ex: Exchange) -> None:
        with self.lock:
            self.exchanges.append(ex)

    def reset_counters(self) -> None:
        with self.lock:
            self.exchanges.clear()

    def snapshot(self) -> list[Exchange]:
        with self.lock:
            return list(self.exchanges)

    def blob_upload_bytes(self) -> int:
        """Body bytes sent to blob upload endpoints (PATCH/PUT under /blobs/uploads/)."""
        return sum(
            e.request_bytes for e in self.snapshot() if e.method in ("PATCH", "PUT") and "/blobs/uploads/" in e.path
        )

    def blob_uploads_completed(self) -> int:
        """How many blob uploads the registry accepted (PUT ... 201)."""
        return sum(1 for e in self.snapshot() if e.method == "PUT" and "/blobs/uploads/" in e.path and e.status == 201)

    def manifest_puts(self) -> int:
        return sum(1 for e in self.snapshot() if e.method == "PUT" and "/manifests/" in e.path)

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        return sum(1 for e in self.snapshot() if (method is None or e.method == method) and path_contains in e.path)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def _reset(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN: a real "connection reset".
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    up_host, _, up_port = proxy.upstream.host.partition(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            method, path = self.command, self.path
            declared = int(self.headers.get("Content-Length") or 0)
            fault = proxy.take_fault(method, path, declared)
            if fault is not None and fault.action == "truncate":
                body = read_body(self, fault.after_bytes)
                proxy.record(Exchange(method, path, len(body), None, "truncate"))
                up = socket.create_connection((up_host, int(up_port)), timeout=10)
                head = f"{method} {path} HTTP/1.1\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                )
                up.sendall(head.encode() + b"\r\n" + body)
                time.sleep(0.2)  # let the registry take in what it got before the break
                _reset(up)
                self.close_connection = True
                _reset(self.connection)
                return
            if fault is not None and fault.action == "reset":
                body = read_body(self, fault.after_bytes)
                proxy.record(Exchange(method, path, len(body), None, "reset"))
                self.close_connection = True
                _reset(self.connection)
                return
            body = read_body(self, None)
            if fault is not None and fault.action == "status":
                proxy.record(Exchange(method, path, len(body), fault.status, "status"))
                payload = b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}'
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                self.end_headers()
                if method != "HEAD":  # an answer to HEAD has no body, whatever its Content-Length says
                    self.wfile.write(payload)
                return
            if fault is not None and fault.action == "redirect":
                proxy.record(Exchange(method, path, len(body), fault.status, "redirect"))
                self.send_response(fault.status)
                self.send_header("Location", fault.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault is not None and fault.action == "stall":
                proxy.record(Exchange(method, path, len(body), None, "stall"))
                proxy.release.wait(fault.stall_seconds)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.close()
                return
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
            try:
                # Header by header: repeated headers (skopeo sends several Accept lines) must all survive.
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        conn.putheader(k, v)
                if body or method in ("PUT", "POST", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            finally:
                conn.close()
            if fault is not None and fault.action == "forward_then_reset":
                proxy.record(Exchange(method, path, len(body), None, "forward_then_reset", status))
                self.close_connection = True
                _reset(self.connection)
                return
            if fault is not None and fault.action == "rewrite":
                changed = {k.lower(): v for k, v in fault.set_headers.items()}
                resp_headers = [(k, v) for k, v in resp_headers if k.lower() not in changed]
                resp_headers += [(k, v) for k, v in fault.set_headers.items() if v is not None]
            proxy.record(Exchange(method, path, len(body), status, fault.action if fault else None, status))
            self.send_response_only(status, resp.reason)
            for k, v in resp_headers:
                if k.lower() != "content-length":
                    self.send_header(k, v)
            if method != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            else:
                self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


@contextlib.contextmanager
def start_fault_proxy(upstream: RunningRegistry) -> Iterator[FaultProxy]:
    """Serve a counting, fault-injecting proxy to ``upstream`` (plain HTTP) on 127.0.0.1."""
    if upstream.tls:
        raise ValueError("the fault proxy speaks plain HTTP to its upstream")
    proxy = FaultProxy(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(proxy))
    server.daemon_threads = True
    port = server.server_address[1]
    proxy.url, proxy.host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fault_proxy(registry: RunningRegistry) -> Iterator[FaultProxy]:
    """A counting, fault-injecting loopback proxy in front of the ``registry`` fixture."""
    with start_fault_proxy(registry) as p:
        yield p


_SESSION_RE = re.compile(r"/blobs/uploads/([0-9a-fA-F-]{16,})")


def upload_session(path: str) -> str | None:
    """The upload session id (distribution's UUID) in a blob upload path, if any."""
    m = _SESSION_RE.search(path)
    return m.group(1) if m else None


@dataclass
class ChaosPlanner:
    """A planner that spreads many faults over a push while leaving the registry room to make progress.

    - chunked sessions: the first PATCH gets a 500 and so does every second PATCH after it (alternating);
      from the third on, the failing one is, at random, a 500, a reset at a random byte offset, a 429 with
      Retry-After, a stall (at most ``max_stalls``), or — at most ``max_session_losses`` times in all, as
      distribution then forgets the session and the blob starts again — a lost response (forwarded, answer
      dropped) or a break after a random part of the body reached the registry;
    - monolithic uploads: the first PUT of each session fails (500, reset at a random offset, or lost);
    - a closing PUT loses its response now and then (the registry stored the blob; we do not hear it);
    - the first HEAD of each blob is answered 429 with Retry-After (seconds, or an HTTP-date), up to
      ``max_429``; the first manifest PUT of each tag gets a 429 with an HTTP-date.

    No request that follows a fault in the same session is faulted, so the client always gets another
    step forward: the push may only fail if the client fails to resume.
    """

    seed: int = 0
    stall_seconds: float = 10.0
    max_stalls: int = 4
    max_429: int = 6
    max_session_losses: int = 4  # lost PATCH answers and mid-chunk breaks cost distribution's session: keep rare
    rng: random.Random = field(init=False)
    patches: dict[str, int] = field(default_factory=dict)
    puts: dict[str, int] = field(default_factory=dict)
    heads: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    stalls: int = 0
    throttles: int = 0
    session_losses: int = 0
    planned: list[FaultAction] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _retry_after(self) -> str:
        if self.rng.random() < 0.5:
            return "1"
        return email.utils.formatdate(time.time() + 1.5, usegmt=True)

    def _pick(self, body_len: int, allow: tuple[str, ...]) -> Fault:
        kind = self.rng.choice(allow)
        if kind == "stall" and self.stalls >= self.max_stalls:
            kind = "status"
        if kind == "429" and self.throttles >= self.max_429:
            kind = "status"
        if kind in ("lost-patch", "truncate"):
            if self.session_losses >= self.max_session_losses:
                kind = "status"
            else:
                self.session_losses += 1
                kind = "lost" if kind == "lost-patch" else kind
        if kind == "truncate":
            return Fault("truncate", after_bytes=self.rng.randrange(1, max(body_len, 2)))
        if kind == "stall":
            self.stalls += 1
            return Fault("stall", stall_seconds=self.stall_seconds)
        if kind == "429":
            self.throttles += 1
            return Fault("status", status=429, retry_after=self._retry_after())
        if kind == "reset":
            return Fault("reset", after_bytes=self.rng.randrange(max(body_len, 1)))
        if kind == "lost":
            return Fault("forward_then_reset")
        return Fault("status", status=500)

    def __call__(self, method: str, path: str, body_len: int) -> Fault | None:
        fault = self._plan(method, path, body_len)
        if fault is not None:
            self.planned.append(fault.action)
        return fault

    def _plan(self, method: str, path: str, body_len: int) -> Fault | None:
        session = upload_session(path)
        if method == "PATCH" and session:
            n = self.patches[session] = self.patches.get(session, 0) + 1
            if n == 1:
                return Fault("status", status=500)
            if n % 2 == 1:
                return self._pick(body_len, ("status", "reset", "reset", "truncate", "lost-patch", "429", "stall"))
            return None
        if method == "PUT" and session:
            n = self.puts[session] = self.puts.get(session, 0) + 1
            if n == 1 and body_len > 0:
                return self._pick(body_len, ("status", "reset", "lost"))
            if n == 1 and self.rng.random() < 0.4:
                return Fault("forward_then_reset")
            return None
        if method == "HEAD" and "/blobs/sha256:" in path and path not in self.heads:
            self.heads.add(path)
            if self.throttles < self.max_429:
                self.throttles += 1
                return Fault("status", status=429, retry_after=self._retry_after())
            return None
        if method == "PUT" and "/manifests/" in path and path not in self.manifests:
            self.manifests.add(path)
            return Fault("status", status=429, retry_after=email.utils.formatdate(time.time() + 1, usegmt=True))
        return None
