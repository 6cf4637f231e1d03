"""The registry client under faults: exact Range parsing, resumed uploads, a retry budget that resets on
progress, bounded timeouts, final errors (refused, not a registry, untrusted TLS, a redirect to a dead host)
as one line, and answers verified. Each test here failed before its fix.

Real registry (distribution 2.8) behind the fault proxy; the validators are skopeo and oci-image-tool.
"""

from __future__ import annotations

import email.utils
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nixfly.errors import RegistryError
from nixfly.registry.client import RegistryOptions
from nixfly.registry.wire import parse_range
from nixfly.retry import RetryPolicy
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import PushProgress, push_image
from nixfly.sources.registry import open_remote_image
from nixfly.transports import LayoutLocation
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image
from tests.support.registry_proxy import Fault, FaultProxy
from tests.test_push_faults import skopeo_validate

pytestmark = pytest.mark.slow

CHUNKED = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5, "chunk_size": 64 * 1024, "monolithic_max": 64 * 1024}


def test_range_header_is_parsed_exactly() -> None:
    assert parse_range("0-0") == 0  # distribution's empty session
    assert parse_range("0-99") == 100
    assert parse_range("bytes=0-65535") == 65536
    for odd in (None, "", "5-9", "0-", "0-x", "bytes 0-9/10"):
        assert parse_range(odd) is None


def test_500_on_the_first_patch_resumes_at_zero(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """Item 1: the status GET then says ``Range: 0-0`` (empty); resuming at byte 1 gave DIGEST_INVALID."""
    image = make_image(tmp_path / "img", extra_layer_bytes=300_000, busybox=False)
    fault_proxy.add_fault("status", status=500, method="PATCH")
    ref = f"{fault_proxy.host}/rel/first:v1"
    result = push_image(image, [ref], options=RegistryOptions(parallel=1, **CHUNKED))  # type: ignore[arg-type]
    statuses = [e for e in fault_proxy.snapshot() if e.method == "GET" and "/blobs/uploads/" in e.path]
    assert len(statuses) == 1 and statuses[0].status == 204
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_budget_resets_on_progress(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """Item 2: a 500 on every second PATCH with retries=2 — no request fails twice in a row, so the push
    must succeed (it failed "after 3 attempts" when the budget was per blob)."""
    image = make_image(tmp_path / "img", extra_layer_bytes=600_000, busybox=False)
    patches = [0]

    def every_second_patch(method: str, path: str, body_len: int) -> Fault | None:
        if method != "PATCH":
            return None
        patches[0] += 1
        return Fault("status", status=500) if patches[0] % 2 == 1 else None

    fault_proxy.planner = every_second_patch
    ref = f"{fault_proxy.host}/rel/alternate:v1"
    opts = RegistryOptions(parallel=1, retries=2, **CHUNKED)  # type: ignore[arg-type]
    result = push_image(image, [ref], options=opts)
    failed = sum(1 for e in fault_proxy.snapshot() if e.method == "PATCH" and e.status == 500)
    assert failed >= 9  # ten chunks at least: far more failures than the budget of 2
    assert skopeo_validate(ref, tmp_path) == result.digest


class Notes(PushProgress):
    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []

    def blob_note(self, digest: str, text: str) -> None:
        self.notes.append((digest, text))


def test_resume_from_the_session_range_and_say_so_when_it_is_lost(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """Item 3: a reset mid-chunk resumes from the session's Range (only the lost chunk goes twice); when the
    registry has forgotten the session (404), the blob restarts from 0 and the progress hook says so."""
    image = make_image(tmp_path / "img", extra_layer_bytes=400_000, busybox=False)
    big = max(image.layers, key=lambda lyr: lyr.size)
    total = sum(lyr.size for lyr in image.layers) + len(image.config_bytes)
    fault_proxy.add_fault("reset", method="PATCH", after_bytes=10_000, skip=2)
    ref = f"{fault_proxy.host}/rel/resume:v1"
    opts = RegistryOptions(parallel=1, **CHUNKED)  # type: ignore[arg-type]
    notes = Notes()
    push_image(image, [ref], options=opts, progress=notes)
    assert total < fault_proxy.blob_upload_bytes() <= total + 10_000
    (tmp_path / "v2").mkdir()
    (tmp_path / "v3").mkdir()
    assert notes.notes == []

    # The session is lost: the 4th PATCH and the status GET after it answer 404.
    fault_proxy.reset_counters()
    image2 = make_image(tmp_path / "img2", extra_layer_bytes=400_001, busybox=False)
    big = max(image2.layers, key=lambda lyr: lyr.size)
    fault_proxy.add_fault("status", status=404, method="PATCH", skip=3)
    fault_proxy.add_fault("status", status=404, method="GET", path_contains="/blobs/uploads/")
    ref2 = f"{fault_proxy.host}/rel/lost:v1"
    result = push_image(image2, [ref2], options=opts, progress=notes)
    assert [d for d, _ in notes.notes] == [big.digest]
    assert "restarting from 0" in notes.notes[0][1] and "lost the upload session" in notes.notes[0][1]
    assert skopeo_validate(ref2, tmp_path / "v2") == result.digest

    # A real break mid-chunk: the registry gets part of the 3rd PATCH, then a reset. distribution drops
    # the session (its signed Location no longer matches), so this blob restarts, and says so.
    fault_proxy.reset_counters()
    notes.notes.clear()
    image3 = make_image(tmp_path / "img3", extra_layer_bytes=400_002, busybox=False)
    big = max(image3.layers, key=lambda lyr: lyr.size)
    fault_proxy.add_fault("truncate", method="PATCH", after_bytes=20_000, skip=2)
    ref3 = f"{fault_proxy.host}/rel/broken:v1"
    result = push_image(image3, [ref3], options=opts, progress=notes)
    assert [e.fault for e in fault_proxy.snapshot() if e.fault] == ["truncate"]
    assert notes.notes == [(big.digest, f"the registry lost the upload session at byte {2 * 65536}; restarting from 0")]
    assert skopeo_validate(ref3, tmp_path / "v3") == result.digest


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts TCP connections (the kernel's backlog does) and never answers a byte."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_a_server_that_never_answers_fails_within_twice_the_timeout(silent_server: str, tmp_path: Path) -> None:
    """Item 4: the first timeout decides for every worker (it took 6× the timeout per worker before)."""
    image = make_image(tmp_path / "img")
    timeout = 1.5
    for plain in (None, True):
        opts = RegistryOptions(timeout=timeout, parallel=4, plain_http=plain)
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match=f"^registry {silent_server}: cannot reach ") as push_err:
            push_image(image, [f"{silent_server}/hung/app:v1"], options=opts)
        assert time.monotonic() - t0 < 2 * timeout
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match=f"^registry {silent_server}: cannot reach ") as pull_err:
            open_remote_image(f"{silent_server}/hung/app:v1", opts)
        assert time.monotonic() - t0 < 2 * timeout
        assert "no answer" in str(push_err.value) and "no answer" in str(pull_err.value)
    r = _cli("pull", f"{silent_server}/hung/app:v1", f"oci:{tmp_path / 'out'}", "--timeout", "1")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"nixfly: registry {silent_server}: cannot reach https://{silent_server}/v2/: no answer")
    assert not (tmp_path / "out").exists()


def test_refused_on_loopback_is_final(tmp_path: Path) -> None:
    """Item 4: on 127.0.0.1 a refusal is as final as a connect timeout: no retries, no backoff."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match=f"registry 127.0.0.1:{port}: cannot reach") as ei:
        open_remote_image(f"127.0.0.1:{port}/x/y:1", RegistryOptions(backoff=2.0))
    assert time.monotonic() - t0 < 1.5
    assert str(ei.value).endswith("connection refused")


@pytest.fixture
def web_server() -> Iterator[str]:
    """A plain web server: 200 and an HTML page for every method and path."""

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Location", "/index.html")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_a_web_server_is_not_a_registry(web_server: str, tmp_path: Path) -> None:
    """Item 5: a push to it "succeeded" ("already there") before; now one line naming the host."""
    image = make_image(tmp_path / "img", busybox=False)
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    r = subprocess.run([sys.executable, "-m", "nixfly", "push", f"oci:{tmp_path / 'layout'}:v1",
                        f"{web_server}/a/b:v1", "-q"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"nixfly: registry {web_server}: ") and r.stderr.count("\n") == 1
    assert "not an OCI registry" in r.stderr


def test_head_and_manifest_answers_are_verified(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """Item 5: a HEAD claiming another digest, or a manifest PUT not confirming ours, is an error."""
    image = make_image(tmp_path / "img", busybox=False)
    ref = f"{fault_proxy.host}/verify/app:v1"
    push_image(image, [ref])  # the blobs are there now
    fault_proxy.add_fault("rewrite", method="HEAD", path_contains="/blobs/",
                          set_headers={"Docker-Content-Digest": "sha256:" + "0" * 64})  # fmt: skip
    with pytest.raises(RegistryError, match=r"HEAD blob sha256:\w+ in verify/app answered 200 with Docker-Content"):
        push_image(image, [ref], options=RegistryOptions(retries=0))
    fault_proxy.add_fault("rewrite", method="PUT", path_contains="/manifests/",
                          set_headers={"Docker-Content-Digest": None})  # fmt: skip
    with pytest.raises(RegistryError, match="without the Docker-Content-Digest it stored"):
        push_image(image, [f"{fault_proxy.host}/verify/app:v2"])
    fault_proxy.add_fault("rewrite", method="PUT", path_contains="/manifests/",
                          set_headers={"Docker-Content-Digest": "sha256:" + "1" * 64})  # fmt: skip
    with pytest.raises(RegistryError, match="but stored sha256:1111"):
        push_image(image, [f"{fault_proxy.host}/verify/app:v3"])


def test_untrusted_certificate_on_loopback_is_the_tls_error(tls_registry: RunningRegistry, tmp_path: Path) -> None:
    """Item 6: it was "GET /v2/ answered HTTP 400" (a fallback to plain HTTP that lost the TLS error)."""
    image = make_image(tmp_path / "img", busybox=False)
    with pytest.raises(RegistryError, match=r"TLS certificate not trusted .*--cert-dir"):
        push_image(image, [f"{tls_registry.host}/tls/app:v1"])
    with pytest.raises(RegistryError, match="TLS certificate not trusted"):
        open_remote_image(f"{tls_registry.host}/tls/app:v1")
    # With the CA it works, and a plain-HTTP registry on loopback is still found by the fallback.
    trusted = RegistryOptions(cert_dir=tls_registry.cert_dir)
    result = push_image(image, [f"{tls_registry.host}/tls/app:v1"], options=trusted)
    assert open_remote_image(result.reference, trusted).manifest_digest() == result.digest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nixfly", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("target", ["closed-port", "unresolvable"])
def test_blob_redirect_to_a_dead_host_is_one_line(
    target: str, fault_proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    """Item 14: a 307 for a blob to a closed port or a name that does not resolve gave a raw httpx
    ConnectError traceback in pull, copy, inspect, tags and run: now one line each, naming the host."""
    image = make_image(tmp_path / "img", busybox=False)
    pushed = push_image(image, [f"{registry.host}/redir/app:v1"])
    if target == "closed-port":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/blob"
        s.close()
        why = "connection refused"
    else:
        dead = "http://blob-storage.invalid/blob"
        why = "does not resolve"
    fault_proxy.add_fault("redirect", method="GET", path_contains="/blobs/sha256:", status=307, location=dead,
                          times=1000)  # fmt: skip
    ref = f"{fault_proxy.host}/redir/app:v1"
    runs = {
        "pull": _cli("pull", ref, f"oci:{tmp_path / 'out'}:v1", "--retries", "1"),
        "copy": _cli("copy", f"docker://{ref}", f"oci:{tmp_path / 'copy'}:v1", "--retries", "1"),
        "inspect": _cli("inspect", ref),
        "tags": _cli("tags", f"{fault_proxy.host}/redir/app"),
        "run": _cli("run", "--cache-dir", str(tmp_path / "cache"), ref),
    }
    assert pushed.digest
    for cmd, r in runs.items():
        assert r.returncode != 0, cmd
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (cmd, r.stderr)
        assert r.stderr.startswith(f"nixfly: registry {fault_proxy.host}: "), (cmd, r.stderr)
        assert why in r.stderr and "GET" in r.stderr, (cmd, r.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "copy").exists()


def test_one_retry_loop_per_blob_read_and_retry_after_honoured(
    fault_proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    """Issue 9: reading a blob is one retry loop (reconnecting is part of the attempt): r+1 requests in all.
    The waits come from the injected sleep: Retry-After as seconds and as an HTTP-date is what is waited."""
    image = make_image(tmp_path / "img", busybox=False)
    push_image(image, [f"{registry.host}/nest/app:v1"])
    slept: list[float] = []
    opts = RegistryOptions(retry=RetryPolicy(retries=2, backoff=0.01, sleep=slept.append))
    remote = open_remote_image(f"{fault_proxy.host}/nest/app:v1", opts)
    layer = remote.layers[0]
    path = f"/blobs/{layer.digest}"
    fault_proxy.add_fault("status", status=503, method="GET", path_contains=path, times=100)
    with pytest.raises(RegistryError, match=r"failed after 3 attempts: HTTP 503"):
        layer.compressed().read()
    assert fault_proxy.count("GET", path) == 3 and len(slept) == 2
    fault_proxy.faults.clear()

    slept.clear()
    fault_proxy.add_fault("status", status=429, method="GET", path_contains=path, retry_after="7")
    fault_proxy.add_fault("status", status=429, method="GET", path_contains=path,
                          retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))  # fmt: skip
    assert layer.compressed().read() == image.layers[0].compressed().read()
    assert slept[0] == 7.0 and 28.0 <= slept[1] <= 30.0


def test_a_registry_claiming_bytes_never_sent_gets_no_final_put(fault_proxy: FaultProxy) -> None:
    """A PATCH answer saying the session holds the whole blob after its first chunk: the bytes we never read
    were never checked, so the upload stops before the PUT that would commit them under our digest."""
    import hashlib
    import io

    from nixfly.errors import ImageError
    from nixfly.registry.client import RegistryClient

    data = bytes(range(256)) * 1200  # 307200 bytes: five chunks
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fault_proxy.add_fault("rewrite", method="PATCH", set_headers={"Range": f"0-{len(data) - 1}"})
    with RegistryClient(fault_proxy.host, RegistryOptions(retries=0, **CHUNKED)) as c:  # type: ignore[arg-type]
        with pytest.raises(ImageError, match=rf"{digest}: 65536 of {len(data)} bytes were read"):
            c.upload_blob("claims/all", digest, len(data), lambda: io.BytesIO(data))
        assert not c.has_blob("claims/all", digest, len(data))
    puts = [e for e in fault_proxy.snapshot() if e.method == "PUT" and "/blobs/uploads/" in e.path]
    assert puts == []
