"""The whole chain: a real offline Nix closure → nixfly build → nixfly push to a real registry →
nixfly deploy to the validated Machines API stand-in, which resolves the image by digest in that registry."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from tests.support.flystandin import RunningStandin
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow


def test_nix_closure_to_fly_machines(
    fly_env: RunningStandin,
    registry: RunningRegistry,
    tiny_closure: TinyClosure,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fly_api = fly_env
    fly_api.create_app("chain")

    layout = tmp_path / "layout"
    assert main(["build", tiny_closure.app, "-o", f"oci:{layout}:v1", "--cache-dir", str(tmp_path / "cache"),
                 "--entrypoint", "/bin/hello", "--json"]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    assert main(["push", f"oci:{layout}:v1", f"{registry.host}/chain:v1", "--tls-verify", "false", "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    reference = pushed["reference"]
    digest = reference.split("@", 1)[1]
    assert reference == f"{registry.host}/chain@{digest}"
    assert digest == built["digest"]

    toml = tmp_path / "fly.toml"
    toml.write_text('app = "chain"\nprimary_region = "fra"\n[deploy]\nwait_timeout = "5s"\n')
    assert main(["deploy", "--config", str(toml), "--image", reference, "--json", "--ha=false",
                 "--smoke-period", "0.2"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    machines = fly_api.machines("chain")
    assert len(machines) == 1 and summary["created"] == [machines[0].id]
    assert machines[0].image == reference and machines[0].region == "fra" and machines[0].state == "started"
    # The stand-in looked the manifest up by digest in the real registry before accepting the machine.
    assert f"/v2/chain/manifests/{digest}" in registry.log_text()


def test_deploy_builds_and_pushes_first(
    fly_env: RunningStandin,
    registry: RunningRegistry,
    tiny_closure: TinyClosure,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fly_api = fly_env
    fly_api.create_app("oneshot")
    (tmp_path / "nixfly.toml").write_text(f'[image]\nroots = ["{tiny_closure.app}"]\nentrypoint = ["/bin/hello"]\n')
    toml = tmp_path / "fly.toml"
    toml.write_text('app = "oneshot"\nprimary_region = "fra"\n[deploy]\nwait_timeout = "5s"\n')
    monkeypatch.chdir(tmp_path)
    repo = f"{registry.host}/oneshot"

    # --dry-run builds but pushes nothing and changes nothing; it names the digest the push will have.
    assert main(["deploy", "--config", str(toml), "--push-to", repo, "--dry-run", "--json", "--ha=false"]) == 0
    plan = capsys.readouterr().out
    assert "/v2/oneshot/blobs/uploads/" not in registry.log_text()
    assert fly_api.machines("oneshot") == []

    # ./nixfly.toml is found by itself: build, push to a deployment-<digest> tag, deploy by digest.
    assert (
        main(["deploy", "--config", str(toml), "--push-to", repo, "--json", "--ha=false", "--smoke-period", "0.2"]) == 0
    )
    capsys.readouterr()
    machines = fly_api.machines("oneshot")
    assert len(machines) == 1
    image = machines[0].image
    digest = image.split("@", 1)[1]
    assert image == f"{repo}@{digest}" and digest in plan
    tags = json.loads(
        subprocess.run(
            ["skopeo", "list-tags", "--tls-verify=false", f"docker://{repo}"], capture_output=True, check=True
        ).stdout
    )["Tags"]
    # The deployment tag, the layer index a fresh runner's next deploy --build reads (never an image tag), and
    # the SBOM attached through the referrers tag schema, as build --push attaches it.
    hexd = digest.split(":")[1]
    assert sorted(tags) == sorted([f"deployment-{hexd[:12]}", "nixfly-layer-index", f"sha256-{hexd}"])


def _raw(ref: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True, check=True).stdout  # fmt: skip


def test_deploy_build_ships_like_build_push(
    fly_env: RunningStandin,
    registry: RunningRegistry,
    tiny_closure: TinyClosure,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy --build goes through the same service as build --push: the same image, the same SBOM attached
    (byte for byte: the referrer's manifest), the same layer index written."""
    fly_env.create_app("same")
    (tmp_path / "nixfly.toml").write_text(f'[image]\nroots = ["{tiny_closure.app}"]\nentrypoint = ["/bin/hello"]\n')
    toml = tmp_path / "fly.toml"
    toml.write_text('app = "same"\nprimary_region = "fra"\n[deploy]\nwait_timeout = "5s"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["build", "--push", f"{registry.host}/viabuild:v1", "--tls-verify", "false", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert main(["deploy", "--config", str(toml), "--push-to", f"{registry.host}/viadeploy", "--json"]) == 0
    capsys.readouterr()
    image = fly_env.machines("same")[0].image
    digest = image.split("@", 1)[1]
    assert digest == built["digest"] == built["pushed"]["digest"]
    sbom_tag = f"sha256-{digest.split(':')[1]}"
    via_build = _raw(f"{registry.host}/viabuild:{sbom_tag}")
    # The fallback tag holds the referrers index: one SPDX artifact, whose manifest names the image.
    [art] = json.loads(via_build)["manifests"]
    assert art["artifactType"] == "application/spdx+json"
    assert json.loads(_raw(f"{registry.host}/viabuild@{art['digest']}"))["subject"]["digest"] == digest
    assert _raw(f"{registry.host}/viadeploy:{sbom_tag}") == via_build
    index = _raw(f"{registry.host}/viabuild:nixfly-layer-index")
    assert json.loads(index)["artifactType"] == "application/vnd.nixfly.layer-index.v1+json"
    assert _raw(f"{registry.host}/viadeploy:nixfly-layer-index") == index
