"""Registry credentials go only to the registry's own host, whatever URLs its answers name.

A hostile (or merely odd) registry front hands out server-given URLs on ANOTHER loopback host: an upload
session's ``Location``, a tags list's ``Link: next``. The other host is a recording relay; it must never see
an Authorization header. Like go-containerregistry (whose transports set Authorization only for the
registry's host), nixfly still follows such URLs, without credentials: distribution allows an upload
Location on other storage, and a relay that accepts the upload without the registry's credentials (as a
pre-signed URL would) lets the push complete. A token realm on plain http:// for an https:// registry is
refused unless --tls-verify=false.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfly.sinks.layout import write_layout
from nixfly.transports import LayoutLocation
from tests.support.hostile_http import Answer, Relay, Scripted, Seen, serving
from tests.support.registry import RunningRegistry, TlsMaterial, start_registry
from tests.support.registry_images import make_image

pytestmark = pytest.mark.slow

NIXFLY = [sys.executable, "-m", "nixfly"]


def _layout(tmp_path: Path) -> Path:
    image = make_image(tmp_path / "img")
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    return tmp_path / "layout"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": "/nonexistent-home"}
    return subprocess.run([*NIXFLY, *args], capture_output=True, text=True, env=env, timeout=180)


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode not in (0, 70), (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixfly: "), p.stderr
    return lines[0]


def _skopeo_digest(r: RunningRegistry, ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", *r.skopeo_args(), f"docker://{ref}"], check=True,
                         capture_output=True)  # fmt: skip
    digest: str = json.loads(out.stdout)["Digest"]
    return digest


class Fronted:
    """The registry behind a front on 127.0.0.1 whose upload Locations point at ``other``."""

    def __init__(self, registry: RunningRegistry, other: Relay | Scripted) -> None:
        self.other = other

        def to_other(seen: Seen, status: int, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [(k, v.replace(self.front.url, other.url)) if k.lower() == "location" and "/blobs/uploads/" in v
                    else (k, v) for k, v in headers]  # fmt: skip

        self.front = Relay(registry.host, host="127.0.0.1", rewrite=to_other)


@pytest.fixture
def storage(basic_registry: RunningRegistry) -> Iterator[Relay]:
    r = basic_registry
    assert r.username is not None and r.password is not None
    with serving(Relay(r.host, auth=(r.username, r.password))) as s:
        yield s


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic-put", "chunked-patches"])
def test_upload_location_on_another_host_gets_the_blob_but_never_the_credentials(
    basic_registry: RunningRegistry, storage: Relay, tmp_path: Path, chunked: bool
) -> None:
    r = basic_registry
    f = Fronted(r, storage)
    with serving(f.front) as front:
        ref = f"{front.host}/secure/app:v1"
        args = ["--chunk-size", "1024"] if chunked else []
        p = _cli("push", f"oci:{_layout(tmp_path)}:v1", ref, "--creds", f"{r.username}:{r.password}", "--json", *args)
    assert p.returncode == 0, p.stderr
    digest = json.loads(p.stdout)["digest"]
    assert _skopeo_digest(r, f"{r.host}/secure/app:v1") == digest  # the image is there, whole
    uploads = [s for s in storage.seen if s.method in ("PUT", "PATCH")]
    assert uploads and sum(s.body_len for s in uploads) > 0  # the blobs went to the other host...
    if chunked:
        assert any(s.method == "PATCH" for s in uploads)
    assert storage.authorized() == []  # ...and not one request there carried our credentials
    assert front.authorized()  # (they were in use: the registry's own host got them)


def test_a_challenge_from_another_host_is_not_followed(
    basic_registry: RunningRegistry, tmp_path: Path
) -> None:
    """The other host answers 401 naming a token service: nixfly neither sends it credentials nor adopts
    its challenge (which would send the credentials to that token service)."""
    r = basic_registry
    with serving(Scripted(lambda s: Answer(200, {}, '{"token": "x"}'))) as realm:
        demand = f'Bearer realm="{realm.url}/token",service="evil"'
        with serving(Relay(r.host, answer_401=demand)) as other:
            f = Fronted(r, other)
            with serving(f.front):
                p = _cli("push", f"oci:{_layout(tmp_path)}:v1", f"{f.front.host}/secure/app:v1",
                         "--creds", f"{r.username}:{r.password}")  # fmt: skip
    line = _one_line(p)
    assert "another host" in line and other.host in line, line
    assert other.seen and other.authorized() == []
    assert realm.seen == []


def test_tags_next_page_on_another_host_gets_no_credentials(
    basic_registry: RunningRegistry, storage: Relay, tmp_path: Path
) -> None:
    r = basic_registry
    layout = _layout(tmp_path)
    for tag in ("v1", "v2"):
        p = _cli("push", f"oci:{layout}:v1", f"{r.host}/secure/app:{tag}", "--creds", f"{r.username}:{r.password}")
        assert p.returncode == 0, p.stderr

    def next_elsewhere(seen: Seen, status: int, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if "/tags/list" in seen.path and status == 200:
            return [*headers, ("Link", f'<{storage.url}/v2/secure/app/tags/list?n=100&last=v1>; rel="next"')]
        return headers

    with serving(Relay(r.host, host="127.0.0.1", rewrite=next_elsewhere)) as front:
        p = _cli("tags", f"{front.host}/secure/app", "--creds", f"{r.username}:{r.password}", "-q")
    assert p.returncode == 0, p.stderr
    assert {"v1", "v2"} <= set(p.stdout.split())
    assert [s.path for s in storage.seen] == ["/v2/secure/app/tags/list?n=100&last=v1"]  # it was followed,
    assert storage.authorized() == []  # without credentials
    assert front.authorized()


def test_plain_http_token_realm_is_refused_for_an_https_registry(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, registry_tls_material: TlsMaterial
) -> None:
    from tests.support.registry_token import signing_material, start_token_issuer

    material = signing_material(tmp_path_factory)
    layout = _layout(tmp_path)
    with (
        start_token_issuer(material, username="tok-user", password="tok-Secret-pw") as issuer,
        start_registry(tmp_path / "reg", tls=registry_tls_material, token=issuer, token_cert=material.cert) as r,
    ):
        assert issuer.url.startswith("http://") and r.url.startswith("https://")
        ref = f"{r.host}/tok/app:v1"
        p = _cli("push", f"oci:{layout}:v1", ref, "--creds", "tok-user:tok-Secret-pw", "--cert-dir", str(r.cert_dir))
        line = _one_line(p)
        assert "plain http://" in line and "--tls-verify=false" in line, line
        assert issuer.requests == []  # neither credentials nor a token request went over plain HTTP
        ok = _cli("push", f"oci:{layout}:v1", ref, "--creds", "tok-user:tok-Secret-pw", "--tls-verify=false")
        assert ok.returncode == 0, ok.stderr
        assert issuer.requests and all(q.account == "tok-user" for q in issuer.requests)


def test_push_of_a_registry_source_never_offers_the_destinations_credentials_to_it(
    registry: RunningRegistry, basic_registry: RunningRegistry, tmp_path: Path
) -> None:
    """`push docker://A/x B/y --creds U:P`: the credentials are B's. A (another host, asking for Basic auth)
    must not get them: the source is read with what is found for A (nothing here), so the push stops there."""
    src = basic_registry
    p = _cli("push", f"oci:{_layout(tmp_path)}:v1", f"{src.host}/team/app:v1",
             "--creds", f"{src.username}:{src.password}")  # fmt: skip
    assert p.returncode == 0, p.stderr
    # Another registry (host:port) in front of it, passing on whatever Authorization it is sent.
    with serving(Relay(src.host, host="127.0.0.1")) as other:
        p = _cli("push", f"docker://{other.host}/team/app:v1", f"{registry.host}/dst/app:v1",
                 "--creds", "dest-user:dest-password-for-the-destination-only")  # fmt: skip
    assert other.seen and other.authorized() == [], (other.authorized(), p.stderr)
    _one_line(p)
