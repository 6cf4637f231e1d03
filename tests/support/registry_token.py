"""A small Bearer token issuer for distribution's ``auth.token``, written for the tests.

It answers ``GET /token?service=S&scope=repository:NAME:pull,push`` the way Docker's token servers do:
with Basic credentials that match it grants the requested actions; anonymously it grants nothing (the
registry then answers 401 insufficient_scope); wrong credentials get 401. Tokens are RS256 JWTs signed by
``openssl dgst`` with a key whose self-signed certificate is the registry's ``rootcertbundle``; the JWT
header carries that certificate in ``x5c``, which is how distribution 2.8 finds the verification key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass(frozen=True)
class SigningMaterial:
    key: Path  # RSA private key (PEM)
    cert: Path  # self-signed certificate for that key (PEM) — the registry's rootcertbundle
    cert_der_b64: str  # standard base64 of the DER certificate, for the JWT x5c header


_MATERIAL_CACHE: dict[Path, SigningMaterial] = {}


def signing_material(tmp_path_factory: pytest.TempPathFactory) -> SigningMaterial:
    """RSA key + certificate, made once per test session (RSA key generation is the slow part)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _MATERIAL_CACHE:
        _MATERIAL_CACHE[base] = make_signing_material(tmp_path_factory.mktemp("token-signer"))
    return _MATERIAL_CACHE[base]


def make_signing_material(directory: Path) -> SigningMaterial:
    key, cert = directory / "signer.key", directory / "signer.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=nixfly test token signer"],
        check=True, capture_output=True,
    )  # fmt: skip
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return SigningMaterial(key, cert, base64.b64encode(der).decode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(material: SigningMaterial, claims: dict[str, Any]) -> str:
    """An RS256 JWT over ``claims`` whose header names the signing certificate in ``x5c``."""
    header = {"typ": "JWT", "alg": "RS256", "x5c": [material.cert_der_b64]}
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    # PKCS#1 v1.5 over SHA-256 is exactly what RS256 means.
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(material.key)],
        input=signing_input.encode(), check=True, capture_output=True,
    ).stdout  # fmt: skip
    return signing_input + "." + _b64url(sig)


@dataclass
class TokenRequest:
    account: str | None  # the Basic user, None when anonymous
    scopes: list[str]
    granted: bool
    status: int


@dataclass
class TokenIssuer:
    """A running issuer. ``requests`` records every token request; ``tokens`` every token handed out."""

    url: str
    service: str
    issuer: str
    username: str
    password: str
    material: SigningMaterial
    expires_in: int = 300
    requests: list[TokenRequest] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, account: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        access = []
        if account is not None:
            for scope in scopes:
                parts = scope.split(":")
                if len(parts) >= 3:
                    typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1]
                    access.append({"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]})
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = sign_jwt(self.material, claims)
        with self.lock:
            self.tokens.append(token)
        return token


def _handler_for(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._answer(404, {"error": "not found"})
                return
            q = parse_qs(url.query)
            scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
            account: str | None = None
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    user, pw = "", ""
                if (user, pw) != (issuer.username, issuer.password):
                    with issuer.lock:
                        issuer.requests.append(TokenRequest(user, scopes, False, 401))
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                account = user
            if q.get("service", [issuer.service])[0] != issuer.service:
                self._answer(400, {"error": "unknown service"})
                return
            token = issuer.issue(account, scopes)
            with issuer.lock:
                issuer.requests.append(TokenRequest(account, scopes, account is not None, 200))
            self._answer(
                200,
                {"token": token, "access_token": token, "expires_in": issuer.expires_in,
                 "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            )  # fmt: skip

    return Handler


@contextlib.contextmanager
def start_token_issuer(
    material: SigningMaterial,
    *,
    username: str,
    password: str,
    service: str = "nixfly-test-registry",
    issuer_name: str = "nixfly-test-issuer",
    expires_in: int = 300,
) -> Iterator[TokenIssuer]:
    """Serve tokens on 127.0.0.1 (ephemeral port) until the block exits."""
    issuer = TokenIssuer("", service, issuer_name, username, password, material, expires_in)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(issuer))
    server.daemon_threads = True
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="token-issuer", daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
