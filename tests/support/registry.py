"""A real OCI registry (Debian ``docker-registry``, CNCF distribution 2.8) on loopback, for tests.

Fixtures (all function-scoped, each with its own storage, port and log):

- ``registry``: plain HTTP, anonymous.
- ``basic_registry``: plain HTTP with Basic auth from a bcrypt htpasswd file (``.username``/``.password``).
- ``tls_registry``: HTTPS with a certificate signed by a throw-away CA (``.ca_cert``, ``.cert_dir``).
- ``token_registry``: plain HTTP with distribution's Bearer ``auth.token``; tokens come from a small issuer
  (``tests.support.registry_token``) reachable as ``.token_issuer``.

``start_registry`` is the context manager behind them, for tests that need an unusual set-up.
The registry is only ever bound to 127.0.0.1 on a free ephemeral port.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    # Imported lazily at run time so that pytest registers (and assert-rewrites) that plugin itself.
    from tests.support.registry_token import TokenIssuer

REGISTRY_BIN = "docker-registry"


@dataclass(frozen=True)
class RunningRegistry:
    """Where a test registry listens and what it needs to be reached."""

    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    host: str  # "127.0.0.1:PORT" — what goes in front of a repository name in a reference
    root: Path  # storage root directory
    log: Path  # the registry's stdout+stderr (access log included)
    config: Path
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None  # CA that signed the server certificate (TLS only)
    cert_dir: Path | None = None  # directory holding ca.crt, for skopeo's --cert-dir and ours
    token_issuer: TokenIssuer | None = None

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def skopeo_args(self) -> list[str]:
        """Transport flags skopeo needs to talk to this registry (TLS trust, credentials)."""
        args = [f"--cert-dir={self.cert_dir}"] if self.cert_dir else ["--tls-verify=false"]
        if self.username is not None:
            args.append(f"--creds={self.username}:{self.password}")
        return args


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_material(directory: Path) -> TlsMaterial:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    run = _run_quiet
    run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(ca_key)])
    run(["openssl", "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
         "-subj", "/CN=nixfly test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca_cert)])  # fmt: skip
    run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)])
    run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr)])
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert)])  # fmt: skip
    return TlsMaterial(ca_cert, cert, key)


def _run_quiet(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd entry (distribution rejects MD5 entries with a permanent 401)."""
    out = _run_quiet(["htpasswd", "-Bbn", username, password]).stdout.decode()
    return out.strip() + "\n"


def _config_yaml(root: Path, port: int, extra: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  secret: nixfly-test-secret\n"
        f"{extra}"
    )


@contextlib.contextmanager
def start_registry(
    workdir: Path,
    *,
    basic: tuple[str, str] | None = None,
    tls: TlsMaterial | None = None,
    token: TokenIssuer | None = None,
    token_cert: Path | None = None,
) -> Iterator[RunningRegistry]:
    """Run ``docker-registry serve`` until the block exits; yield once ``GET /v2/`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    extra = ""
    if tls is not None:
        extra += f"  tls:\n    certificate: {tls.server_cert}\n    key: {tls.server_key}\n"
    if basic is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(*basic))
        extra += f"auth:\n  htpasswd:\n    realm: nixfly-test\n    path: {htpasswd}\n"
    if token is not None:
        assert token_cert is not None
        extra += (
            "auth:\n  token:\n"
            f"    realm: {token.url}/token\n"
            f"    service: {token.service}\n"
            f"    issuer: {token.issuer}\n"
            f"    rootcertbundle: {token_cert}\n"
        )
    cert_dir: Path | None = None
    if tls is not None:
        cert_dir = workdir / "certs.d"
        cert_dir.mkdir(exist_ok=True)
        (cert_dir / "ca.crt").write_bytes(tls.ca_cert.read_bytes())

    last_error = "did not start"
    for _attempt in range(5):  # the free port can be taken between probing and binding
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config_yaml(root, port, extra))
        log = workdir / "registry.log"
        scheme = "https" if tls else "http"
        with log.open("ab") as logf:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            if _wait_ready(proc, f"{scheme}://127.0.0.1:{port}", tls.ca_cert if tls else None):
                yield RunningRegistry(
                    url=f"{scheme}://127.0.0.1:{port}",
                    host=f"127.0.0.1:{port}",
                    root=root,
                    log=log,
                    config=config,
                    username=basic[0] if basic else (token.username if token else None),
                    password=basic[1] if basic else (token.password if token else None),
                    ca_cert=tls.ca_cert if tls else None,
                    cert_dir=cert_dir,
                    token_issuer=token,
                )
                return
            last_error = log.read_text(errors="replace")[-2000:]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    raise RuntimeError(f"docker-registry did not start: {last_error}")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, ca: Path | None) -> bool:
    deadline = time.monotonic() + 15
    verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=str(ca)) if ca else False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            r = httpx.get(f"{url}/v2/", verify=verify, timeout=2)
            if r.status_code in (200, 401):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def registry_tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("registry-tls"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A real anonymous plain-HTTP registry on 127.0.0.1, storage under tmp_path."""
    with start_registry(tmp_path / "registry") as r:
        yield r


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A real registry requiring Basic auth (bcrypt htpasswd); credentials in .username/.password."""
    with start_registry(tmp_path / "registry-basic", basic=("nixfly-user", "s3cret-B4sic-pw")) as r:
        yield r


@pytest.fixture
def tls_registry(tmp_path: Path, registry_tls_material: TlsMaterial) -> Iterator[RunningRegistry]:
    """A real anonymous HTTPS registry whose certificate is signed by .ca_cert (also in .cert_dir/ca.crt)."""
    with start_registry(tmp_path / "registry-tls", tls=registry_tls_material) as r:
        yield r


@pytest.fixture
def token_registry(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A real registry using Bearer token auth; .token_issuer is the running issuer (counts tokens)."""
    from tests.support.registry_token import signing_material, start_token_issuer

    material = signing_material(tmp_path_factory)
    with (
        start_token_issuer(material, username="nixfly-token-user", password="s3cret-T0ken-pw") as issuer,
        start_registry(tmp_path / "registry-token", token=issuer, token_cert=material.cert) as r,
    ):
        yield r
