"""The test registries themselves behave like the real thing each auth mode describes."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.support.registry import RunningRegistry
from tests.support.registry_proxy import FaultProxy

pytestmark = pytest.mark.slow


def test_plain_registry_answers_v2(registry: RunningRegistry) -> None:
    r = httpx.get(registry.url + "/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert registry.root.is_dir() and registry.log.is_file()


def test_basic_registry_needs_the_password(basic_registry: RunningRegistry) -> None:
    r = basic_registry
    assert httpx.get(r.url + "/v2/").status_code == 401
    assert httpx.get(r.url + "/v2/", auth=(r.username or "", "wrong")).status_code == 401
    assert httpx.get(r.url + "/v2/", auth=(r.username or "", r.password or "")).status_code == 200


def test_tls_registry_is_trusted_only_through_its_ca(tls_registry: RunningRegistry) -> None:
    assert tls_registry.ca_cert is not None
    ctx = ssl.create_default_context(cafile=str(tls_registry.ca_cert))
    assert httpx.get(tls_registry.url + "/v2/", verify=ctx).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_registry.url + "/v2/")  # system trust store does not know the CA


def test_token_registry_accepts_issued_tokens(token_registry: RunningRegistry) -> None:
    r = token_registry
    issuer = r.token_issuer
    assert issuer is not None
    challenge = httpx.get(r.url + "/v2/")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith(f'Bearer realm="{issuer.url}/token"')
    params = {"service": issuer.service, "scope": "repository:a/b:pull,push"}
    assert httpx.get(issuer.url + "/token", params=params, auth=(r.username or "", "nope")).status_code == 401
    tok = httpx.get(issuer.url + "/token", params=params, auth=(r.username or "", r.password or "")).json()
    headers = {"Authorization": "Bearer " + tok["token"]}
    assert httpx.get(r.url + "/v2/", headers=headers).status_code == 200
    assert httpx.get(r.url + "/v2/a/b/tags/list", headers=headers).status_code == 404  # allowed, unknown
    # An anonymous token grants no repository access.
    anon = httpx.get(issuer.url + "/token", params=params).json()["token"]
    denied = httpx.get(r.url + "/v2/a/b/tags/list", headers={"Authorization": "Bearer " + anon})
    assert denied.status_code == 401


def test_fault_proxy_counts_and_injects(fault_proxy: FaultProxy) -> None:
    p = fault_proxy
    assert httpx.get(p.url + "/v2/").status_code == 200
    p.add_fault("status", status=429, retry_after="1", path_contains="/v2/")
    r = httpx.get(p.url + "/v2/")
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")
    start = httpx.post(p.url + "/v2/x/blobs/uploads/")
    assert start.status_code == 202
    assert start.headers["location"].startswith(p.url)  # the registry points back through the proxy
    p.add_fault("reset", method="PATCH", after_bytes=10)
    with pytest.raises(httpx.TransportError):
        httpx.patch(
            start.headers["location"], content=b"x" * 1000, headers={"Content-Type": "application/octet-stream"}
        )
    assert [(e.method, e.status, e.fault) for e in p.snapshot()] == [
        ("GET", 200, None),
        ("GET", 429, "status"),
        ("POST", 202, None),
        ("PATCH", None, "reset"),
    ]
    assert p.blob_upload_bytes() == 10
