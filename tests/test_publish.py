"""One publish path: build --push, push and deploy --build print the digest of what they actually wrote."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry


def _registry_digest(ref: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _layout_digest(layout: Path, tag: str = "t") -> str:
    idx = json.loads((layout / "index.json").read_text())
    ref_name = "org.opencontainers.image.ref.name"
    tagged = [m for m in idx["manifests"] if (m.get("annotations") or {}).get(ref_name) == tag]
    assert len(tagged) == 1  # (the SBOM's referrer entry sits beside it, untagged)
    return str(tagged[0]["digest"])


@pytest.mark.slow
def test_build_push_to_a_v2s2_default_registry_prints_one_digest(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("NIXFLY_V2S2_REGISTRIES", registry.host)  # behaves as registry.fly.io does
    ref = f"{registry.host}/built/app:1"
    args = ["build", tiny_closure.app, "-o", f"oci:{tmp_path / 'out'}:t", "--cache-dir", str(tmp_path / "c"),
            "--push", ref]  # fmt: skip
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    pushed = _registry_digest(ref)
    # The summary, the push, the registry and the layout all name the same (v2s2) manifest.
    assert summary["digest"] == summary["pushed"]["digest"] == pushed == _layout_digest(tmp_path / "out")
    assert summary["format"] == "v2s2"
    assert summary["pushed"]["reference"] == f"{registry.host}/built/app@{pushed}"
    assert main([*args, "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"{registry.host}/built/app@{pushed}"


@pytest.mark.slow
def test_bad_push_reference_is_refused_before_anything_is_built(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["build", tiny_closure.app, "-o", f"oci:{out}", "--cache-dir", str(tmp_path / "c"),
                 "--push", "127.0.0.1:5000/UPPER/case:1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "c").exists()
