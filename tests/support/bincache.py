"""Real Nix binary caches for tests: a closure unique to this test run (random marker) built by offline
Nix, signed with a key made by ``nix-store --generate-binary-cache-key``, copied with ``nix copy`` into
``file://`` caches (xz, zstd, bzip2, none), and then DELETED from the shared store (only these unique
paths, never shared fixtures). A loopback static file server serves a cache directory over HTTP."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.nixstore import make_busybox_dir, nix_env

BINCACHE_NIX = Path(__file__).resolve().parent.parent / "data" / "nix" / "bincache.nix"
COMPRESSIONS = ("xz", "zstd", "bzip2", "none")


def nix(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=nix_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def build_unique(work: Path, marker: str, nix_file: Path = BINCACHE_NIX) -> dict[str, str]:
    bb = make_busybox_dir(work)
    out = nix("nix-build", str(nix_file), "--no-out-link", "--arg", "bbdir", str(bb), "--argstr", "marker", marker,
              "-A", "app", "-A", "data", "-A", "sh")  # fmt: skip
    return dict(zip(["app", "data", "sh"], out.split(), strict=True))


def make_key(work: Path, name: str) -> tuple[Path, str]:
    sk, pk = work / f"{name}.sk", work / f"{name}.pk"
    nix("nix-store", "--generate-binary-cache-key", name, str(sk), str(pk))
    return sk, pk.read_text().strip()


def copy_to_cache(dest: Path, compression: str, *paths: str) -> Path:
    nix("nix", "copy", "--to", f"file://{dest}?compression={compression}", *paths)
    return dest


def delete_paths(*paths: str) -> None:
    """Delete store paths unique to this test run (referrers first; nix-store --delete orders them)."""
    nix("nix-store", "--delete", *paths)


@dataclass(frozen=True)
class CachedClosure:
    paths: dict[str, str]  # app, data, sh (all deleted from the local store)
    public_key: str
    caches: dict[str, Path]  # compression -> cache dir
    local_digest: str  # manifest digest of the build from the local store, before deletion
    local_layout: Path
    work: Path
    local_digest_bin_sh: str = ""  # the same with --bin-sh (a link into a dependency found by search)


def new_marker() -> str:
    return "t" + uuid.uuid4().hex[:12]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(self.path)  # type: ignore[attr-defined]
        mode = srv.faults.get(self.path)  # type: ignore[attr-defined]
        if mode and self.path not in srv.faulted:  # type: ignore[attr-defined]
            srv.faulted.add(self.path)  # type: ignore[attr-defined]
            if mode == "503":
                self.send_error(503)
                return
            if mode == "endless":  # 200 and zeros until the client hangs up (no length: the body never ends)
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk = bytes(64 << 10)
                try:
                    while not srv.release.is_set():  # type: ignore[attr-defined]
                        self.wfile.write(chunk)
                        srv.sent += len(chunk)  # type: ignore[attr-defined]
                except OSError:
                    pass
                return
            if mode in ("stall", "cut"):  # full Content-Length, half the body, then the connection drops
                data = Path(self.translate_path(self.path)).read_bytes()  # ("stall": only once released)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if mode == "stall":
                    srv.release.wait(120)  # type: ignore[attr-defined]
                self.close_connection = True
                return
        super().do_GET()


class StaticServer:
    """A static file server over a directory on 127.0.0.1 (an ephemeral port), recording request paths."""

    def __init__(self, root: Path, faults: dict[str, str] | None = None) -> None:
        """``faults``: request path → "503" (the first GET answers 503), "cut" (the first GET's body
        stops halfway), "endless" (200 and zeros for ever; ``sent`` counts them) or "stall" (half the
        body, then silence until the server is closed)."""
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.httpd.faults = dict(faults or {})  # type: ignore[attr-defined]
        self.httpd.faulted = set()  # type: ignore[attr-defined]
        self.httpd.sent = 0  # type: ignore[attr-defined]
        self.httpd.release = threading.Event()  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        reqs: list[str] = self.httpd.requests  # type: ignore[attr-defined]
        return reqs

    def __enter__(self) -> StaticServer:
        self._t.start()
        return self

    @property
    def sent(self) -> int:
        """Bytes written by "endless" answers."""
        n: int = self.httpd.sent  # type: ignore[attr-defined]
        return n

    def __exit__(self, *exc: object) -> None:
        self.httpd.release.set()  # type: ignore[attr-defined]
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(root: Path) -> Iterator[StaticServer]:
    with StaticServer(root) as s:
        yield s
