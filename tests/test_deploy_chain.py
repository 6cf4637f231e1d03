"""The whole chain: a real offline Nix closure → nixfly build → nixfly push to a real registry →
nixfly deploy to the validated Machines API stand-in, which resolves the image by digest in that registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixfly.cli import main
from tests.support.flystandin import RunningStandin
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow


def test_nix_closure_to_fly_machines(
    fly_api: RunningStandin,
    registry: RunningRegistry,
    tiny_closure: TinyClosure,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", fly_api.token)
    monkeypatch.setenv("FLY_API_URL", fly_api.url)
    monkeypatch.setenv("NIXFLY_STATE_DIR", str(tmp_path / "state"))
    fly_api.create_app("chain")

    layout = tmp_path / "layout"
    assert main(["build", tiny_closure.app, "-o", f"oci:{layout}:v1", "--cache-dir", str(tmp_path / "cache"),
                 "--json"]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    assert main(["push", f"oci:{layout}:v1", f"{registry.host}/chain:v1", "--tls-verify", "false", "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    reference = pushed["reference"]
    digest = reference.split("@", 1)[1]
    assert reference == f"{registry.host}/chain@{digest}"
    assert digest == built["digest"]

    toml = tmp_path / "fly.toml"
    toml.write_text('app = "chain"\nprimary_region = "fra"\n[deploy]\nwait_timeout = "5s"\n')
    assert main(["deploy", "--config", str(toml), "--image", reference, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    machines = fly_api.machines("chain")
    assert len(machines) == 1 and summary["created"] == [machines[0].id]
    assert machines[0].image == reference and machines[0].region == "fra" and machines[0].state == "started"
    # The stand-in looked the manifest up by digest in the real registry before accepting the machine.
    assert f"/v2/chain/manifests/{digest}" in registry.log_text()
