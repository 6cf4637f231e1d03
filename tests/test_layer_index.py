"""A fresh runner (empty layer cache) pushing to a repository that already holds the image compresses
nothing: the repository's nixfly layer index, checked blob by blob with a HEAD, supplies the layers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.registry.reference import parse_reference
from nixfly.sinks.layer_index import INDEX_TAG, RegistryLayerIndex
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow


def _build(capsys: pytest.CaptureFixture[str], root: str, cache: Path, *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["build", root, "--cache-dir", str(cache), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _blobs(cache: Path) -> list[str]:
    d = cache / "blobs"
    return sorted(p.name for p in d.rglob("*") if p.is_file()) if d.exists() else []


def _tags(ref: str) -> list[str]:
    out = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    # The SBOM's referrer tags (sha256-<hex>, the OCI tag-schema fallback) are beside the point here.
    return sorted(t for t in json.loads(out)["Tags"] if not t.startswith("sha256-"))


def test_fresh_runner_push_of_an_unchanged_image_builds_no_layer(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"{registry.host}/ci/app"
    first = _build(capsys, tiny_closure.app, tmp_path / "runner-1", "--push", f"{repo}:v1")
    assert first["totals"]["built"] == first["totals"]["layers"]
    assert _tags(repo) == [INDEX_TAG, "v1"]  # the index has its own tag; the image's tags are untouched
    # A second runner with an empty cache: every layer comes from the registry, none is compressed.
    second = _build(capsys, tiny_closure.app, tmp_path / "runner-2", "--push", f"{repo}:v1")
    assert second["digest"] == first["digest"] == second["pushed"]["digest"]
    assert second["totals"]["built"] == 0
    assert second["totals"]["from_registry"] == second["totals"]["layers"]
    assert not [b for b in _blobs(tmp_path / "runner-2") if not b.endswith(".json")]  # no layer blob written
    # tags lists releases only.
    assert main(["tags", repo, "-q"]) == 0
    assert capsys.readouterr().out.split() == ["v1"]


def test_app_change_on_a_fresh_runner_builds_only_the_app_layer(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"{registry.host}/ci/change"
    v1 = _build(capsys, tiny_closure.app, tmp_path / "runner-1", "--push", f"{repo}:v1")
    changed = tiny_closure.build(appVersion="2")
    v2 = _build(capsys, changed["app"], tmp_path / "runner-2", "--push", f"{repo}:v2")
    assert v2["digest"] != v1["digest"]
    rebuilt = [lyr for lyr in v2["layers"] if lyr["built"]]
    assert [lyr["store_paths"] for lyr in rebuilt] == [[changed["app"]]]
    assert v2["totals"]["from_registry"] == v2["totals"]["layers"] - 1


def test_an_index_entry_the_registry_cannot_back_is_built_instead(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"{registry.host}/ci/lie"
    first = _build(capsys, tiny_closure.app, tmp_path / "runner-1", "--push", f"{repo}:v1")
    ref = parse_reference(f"{repo}:v1")
    index = RegistryLayerIndex(ref).load()
    assert len(index.entries) == first["totals"]["layers"]
    # Rewrite the index so every entry claims a wrong size: nothing in it may be trusted without the HEAD.
    lying = {k: type(v)(v.digest, v.diff_id, v.size + 1, v.uncompressed_size, v.media_type)
             for k, v in index.entries.items()}  # fmt: skip
    index.entries = {}
    index.save([], ref)
    index.entries = lying
    index.save([], ref)
    again = _build(capsys, tiny_closure.app, tmp_path / "runner-2", "--push", f"{repo}:v1")
    assert again["totals"]["built"] == again["totals"]["layers"] and again["totals"]["from_registry"] == 0
    assert again["digest"] == first["digest"]


def test_no_layer_index_leaves_the_repository_alone(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"{registry.host}/ci/none"
    _build(capsys, tiny_closure.app, tmp_path / "c", "--push", f"{repo}:v1", "--no-layer-index")
    assert _tags(repo) == ["v1"]


def test_build_push_pings_once_and_asks_for_one_token(
    tiny_closure: TinyClosure, token_registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One registry client for the whole build --push: the layer index, the uploads during the build, the push,
    the layer index update and the SBOM share one ping and one token (a push token also covers the reads)."""
    r = token_registry
    assert r.token_issuer is not None
    before_log = r.log_text().count('"GET /v2/ HTTP/1.1"')
    before_tokens = len(r.token_issuer.requests)
    first = _build(capsys, tiny_closure.app, tmp_path / "cache", "--push", f"{r.host}/once/app:v1",
                   "--creds", f"{r.username}:{r.password}", "--tls-verify", "false")  # fmt: skip
    assert first["pushed"]["digest"] == first["digest"] and first["sbom"]["attached"]
    assert r.log_text().count('"GET /v2/ HTTP/1.1"') - before_log == 1
    asked = r.token_issuer.requests[before_tokens:]
    assert [q.scopes for q in asked] == [["repository:once/app:pull,push"]]


def test_push_of_a_layout_with_its_sbom_pings_once_and_asks_for_one_token(
    tiny_closure: TinyClosure, token_registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """push oci:DIR REF: the image and the layout's SBOM go up on one client (one ping, one token)."""
    r = token_registry
    assert r.token_issuer is not None
    _build(capsys, tiny_closure.app, tmp_path / "cache", "-o", f"oci:{tmp_path / 'layout'}:v1")
    before_log = r.log_text().count('"GET /v2/ HTTP/1.1"')
    before_tokens = len(r.token_issuer.requests)
    assert main(["push", f"oci:{tmp_path / 'layout'}:v1", f"{r.host}/lay/app:v1", "--creds",
                 f"{r.username}:{r.password}", "--tls-verify", "false"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "attached application/spdx+json" in out.err
    assert r.log_text().count('"GET /v2/ HTTP/1.1"') - before_log == 1
    assert [q.scopes for q in r.token_issuer.requests[before_tokens:]] == [["repository:lay/app:pull,push"]]
