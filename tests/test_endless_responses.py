"""Servers whose answer never ends: every body nixfly reads whole has a size limit, so each of these is one
line and a non-zero exit (never the internal-error 70), with the CLI's peak memory far below what the
stream would have taken (9-19 GB before the limits, in 8-30 s).

Each case runs the real CLI as a subprocess against a scripted loopback server that streams the body for
ever, and reads the child's own peak RSS from ``wait4``."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from nixfly.image.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST
from tests.support.hostile_http import ENDLESS, TRICKLE, Answer, Measured, Scripted, Seen, run_measured, serving

MAX_RSS_MB = 300
REGISTRY_OK = Answer(200, {"Docker-Distribution-API-Version": "registry/2.0"})
STORE_PATH = "/nix/store/" + "a" * 32 + "-endless-test"


def one_line(r: Measured) -> str:
    assert r.code not in (0, 70), (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixfly: "), r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert r.max_rss_mb < MAX_RSS_MB, f"peak RSS {r.max_rss_mb:.0f} MB"
    print(f"peak RSS {r.max_rss_mb:.1f} MB, {r.seconds:.1f} s: {lines[0][:100]}")  # shown with -s
    return lines[0]


def _image() -> tuple[bytes, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [],
    }).encode()  # fmt: skip
    return manifest, config


def test_endless_manifest() -> None:
    def script(s: Seen) -> Answer:
        if s.path == "/v2/":
            return REGISTRY_OK
        return Answer(200, {"Content-Type": OCI_MANIFEST}, ENDLESS)

    with serving(Scripted(script)) as srv:
        r = run_measured("inspect", f"docker://{srv.host}/r:t", "--tls-verify=false")
    line = one_line(r)
    assert "manifests/t" in line and "larger than the 4 MiB" in line, line
    assert srv.sent_bytes > 4 << 20  # it really was more than the limit that came


def test_endless_tags_list() -> None:
    def script(s: Seen) -> Answer:
        if s.path == "/v2/":
            return REGISTRY_OK
        return Answer(200, {"Content-Type": "application/json"}, ENDLESS)

    with serving(Scripted(script)) as srv:
        r = run_measured("tags", f"{srv.host}/r", "--tls-verify=false")
    line = one_line(r)
    assert "tags/list" in line and "larger than the 16 MiB" in line, line


@pytest.mark.slow  # a thousand small pages
def test_endless_tags_pagination_ends() -> None:
    # Every page is small and names a new next page: the pages, not one body, go on for ever.
    pages = itertools.count()

    def script(s: Seen) -> Answer:
        if s.path == "/v2/":
            return REGISTRY_OK
        n = next(pages)
        return Answer(200, {"Content-Type": "application/json", "Link": f'</v2/r/tags/list?last=t{n}>; rel="next"'},
                      json.dumps({"name": "r", "tags": [f"t{n}"]}))  # fmt: skip

    with serving(Scripted(script)) as srv:
        r = run_measured("tags", f"{srv.host}/r", "--tls-verify=false", timeout=600)
    line = one_line(r)
    assert "goes on for more than 1000 pages" in line, line


def test_endless_token_answer() -> None:
    def script(s: Seen) -> Answer:
        if s.path.startswith("/token"):
            return Answer(200, {"Content-Type": "application/json"}, ENDLESS)
        return Answer(401, {"WWW-Authenticate": f'Bearer realm="http://{srv.host}/token",service="x"'})

    with serving(Scripted(script)) as srv:
        r = run_measured("inspect", f"docker://{srv.host}/r:t", "--tls-verify=false", "--creds", "u:pw-of-test")
    line = one_line(r)
    assert "/token" in line and "larger than the 1 MiB" in line, line


def test_endless_referrers_list() -> None:
    manifest, config = _image()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    cfg_digest = "sha256:" + hashlib.sha256(config).hexdigest()

    def script(s: Seen) -> Answer:
        if s.path == "/v2/":
            return REGISTRY_OK
        if s.path.startswith("/v2/r/referrers/"):
            return Answer(200, {"Content-Type": OCI_INDEX}, ENDLESS)
        if s.path == f"/v2/r/manifests/{digest}":
            return Answer(200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}, manifest)
        if s.path == f"/v2/r/blobs/{cfg_digest}":
            return Answer(200, {"Docker-Content-Digest": cfg_digest}, config)
        return Answer(404, {"Content-Type": "application/json"}, '{"errors":[{"code":"NOT_FOUND"}]}')

    with serving(Scripted(script)) as srv:
        r = run_measured("sbom", f"docker://{srv.host}/r@{digest}", "--tls-verify=false")
        assert any(s.path.startswith("/v2/r/referrers/") for s in srv.seen)
    line = one_line(r)
    assert "referrers" in line and "larger than the 4 MiB" in line, line


@pytest.mark.parametrize("endless", ["nix-cache-info", "narinfo"])
def test_endless_binary_cache_documents(endless: str, tmp_path: Path) -> None:
    def script(s: Seen) -> Answer:
        if s.path == "/nix-cache-info":
            if endless == "nix-cache-info":
                return Answer(200, {"Content-Type": "text/x-nix-cache-info"}, ENDLESS)
            return Answer(200, {"Content-Type": "text/x-nix-cache-info"}, "StoreDir: /nix/store\nPriority: 40\n")
        if s.path.endswith(".narinfo"):
            return Answer(200, {"Content-Type": "text/x-nix-narinfo"}, ENDLESS)
        return Answer(404)

    with serving(Scripted(script)) as srv:
        r = run_measured("build", STORE_PATH, "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", str(tmp_path / "c"),
                         "--from-cache", srv.url, "--no-verify")  # fmt: skip
    line = one_line(r)
    limit = "64 KiB" if endless == "nix-cache-info" else "1 MiB"
    assert f"larger than the {limit}" in line and endless.split("-")[0] in line, line
    assert not (tmp_path / "img").exists()


def test_endless_fly_api_answer(tmp_path: Path) -> None:
    with serving(Scripted(lambda s: Answer(200, {"Content-Type": "application/json"}, ENDLESS))) as srv:
        r = run_measured("secrets", "list", "--app", "demo", "--api-url", srv.url,
                         env={"FLY_API_TOKEN": "fo1_endless-test-token", "HOME": str(tmp_path)})  # fmt: skip
    line = one_line(r)
    assert "Fly API GET /apps/demo/secrets" in line and "larger than the 16 MiB" in line, line
    assert "endless-test-token" not in r.err


def test_a_trickling_manifest_ends_in_one_line(tmp_path: Path) -> None:
    """One byte every 0.3 s keeps every read inside the timeout, and 4 MiB at that pace is four months: a
    body read whole must keep coming at a useful rate once the read timeout has passed."""

    def script(s: Seen) -> Answer:
        if s.path == "/v2/":
            return REGISTRY_OK
        return Answer(200, {"Content-Type": OCI_MANIFEST}, TRICKLE)

    with serving(Scripted(script)) as srv:
        r = run_measured("pull", f"docker://{srv.host}/r:t", f"oci:{tmp_path / 'out'}", "--tls-verify=false",
                         "--timeout", "2", timeout=30)  # fmt: skip
    line = one_line(r)
    assert "manifests/t" in line and "trickles in" in line, line
    assert r.seconds < 15, r.seconds
    assert not (tmp_path / "out").exists()
