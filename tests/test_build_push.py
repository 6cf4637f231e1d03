"""Build a real Nix closure and push it straight from the layer cache (`build --push`, `push nixfly.toml`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry


@pytest.mark.slow
def test_build_push_with_basic_auth_then_one_layer_for_an_app_change(
    tiny_closure: TinyClosure, basic_registry: RunningRegistry, tmp_path: Path
) -> None:
    reg = basic_registry
    assert reg.username and reg.password
    creds = f"{reg.username}:{reg.password}"
    cache = ["--cache-dir", str(tmp_path / "c")]
    r = run_nixfly("build", tiny_closure.app, "--push", f"{reg.host}/app:v1", "--creds", creds, "--json", *cache)
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["pushed"]["reference"] == f"{reg.host}/app@{s['digest']}"
    assert reg.password not in r.out + r.err
    insp = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--creds", creds, f"docker://{reg.host}/app:v1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(insp.stdout)["Digest"] == s["digest"]

    # The app changes: push uploads exactly its layer plus the config, nothing else.
    app2 = tiny_closure.build(appVersion="2")["app"]
    out = tmp_path / "v2"
    b = run_nixfly("build", app2, "-o", f"oci:{out}:v2", "--json", *cache)
    assert b.code == 0, b.err
    built = json.loads(b.out)
    p = run_nixfly("push", f"oci:{out}:v2", f"{reg.host}/app:v2", "--creds", creds, "--json")
    assert p.code == 0, p.err
    pushed = json.loads(p.out)
    changed = [layer for layer in built["layers"] if layer["store_paths"] == [app2]]
    assert len(changed) == 1
    config_size = len((out / "blobs" / "sha256" / built["config_digest"].split(":")[1]).read_bytes())
    assert pushed["uploaded_blobs"] == 2
    assert pushed["uploaded_bytes"] == changed[0]["size"] + config_size
    assert pushed["digest"] == built["digest"]


@pytest.mark.slow
def test_push_a_nixfly_toml_builds_and_pushes(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path
) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(f'[image]\nroots = ["{tiny_closure.app}"]\nentrypoint = ["/bin/hello"]\n')
    r = run_nixfly(
        "push", str(cfg), f"{registry.host}/fromtoml:v1", "--json", env={"XDG_CACHE_HOME": str(tmp_path / "x")}
    )
    assert r.code == 0, r.err
    pushed = json.loads(r.out)
    cfg_json = subprocess.run(
        ["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{registry.host}/fromtoml:v1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(cfg_json.stdout)["config"]["Entrypoint"] == ["/bin/hello"]
    assert pushed["reference"].endswith("@" + pushed["digest"])
