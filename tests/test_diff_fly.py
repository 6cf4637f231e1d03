"""Where users meet ``nixfly diff`` on Fly: ``deploy --dry-run`` says what the deploy changes in Nix terms,
``releases --diff`` what each release changed against the one before, ``status`` whether the machines run
the last release — against the Machines API stand-in, with real Nix images in a real registry."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from tests.support.cli import NIXFLY
from tests.support.flystandin import RunningStandin
from tests.support.nixdiff import Closures
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow

FLY_TOML = """\
app = "demo"
primary_region = "ams"
[deploy]
strategy = "rolling"
wait_timeout = "5s"
[processes]
app = "/bin/serve"
[http_service]
internal_port = 8080
"""
FULL = "1 changed, 1 added, 1 removed, 1 rebuilt; closure "


def _images(c: Closures, registry: RunningRegistry, work: Path) -> dict[str, str]:
    """old, new and new-again (NEW's closure with another env: same store paths, another image), pushed."""
    out = {}
    for name, root, extra in (("old", c.old, []), ("new", c.new, []), ("again", c.new, ["-e", "MODE=again"]),
                              ("bare", c.new, ["--sbom", "none", "-e", "MODE=bare"])):
        layout = work / f"img-{name}"
        subprocess.run([*NIXFLY, "build", root, "-o", f"oci:{layout}:x", "--cache-dir", str(c.work / "cache"), "-q",
                        *extra], check=True, capture_output=True)  # fmt: skip
        digest = subprocess.run([*NIXFLY, "push", f"oci:{layout}:x", f"docker://{registry.host}/demo:{name}",
                                 "--tls-verify=false", "-q"], check=True, capture_output=True,
                                text=True).stdout  # fmt: skip
        out[name] = digest.strip().splitlines()[-1]
    return out


def _manifest(ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True,
                         capture_output=True).stdout  # fmt: skip
    m: dict[str, Any] = json.loads(out)
    return m


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return cap.out


def test_dry_run_shows_what_the_deploy_changes_in_nix_terms(
    fly_env: RunningStandin, demo_app: Path, registry: RunningRegistry, diff_closures: Closures,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    images = _images(diff_closures, registry, demo_app)
    assert all("@sha256:" in i for i in images.values()), images
    toml = demo_app / "fly.toml"
    toml.write_text(FLY_TOML)
    _run(capsys, "deploy", "--config", str(toml), "--image", images["old"], "--ha=false")
    out = _run(capsys, "deploy", "--config", str(toml), "--image", images["new"], "--dry-run")
    line = next(x for x in out.splitlines() if x.startswith("image change from "))
    assert line == f"image change from {images['old']}: " + line.split(": ", 1)[1]
    assert line.split(": ", 1)[1].startswith(FULL)
    assert {m.image for m in fly_env.machines("demo")} == {images["old"]}  # a dry run changes nothing
    doc = json.loads(_run(capsys, "deploy", "--config", str(toml), "--image", images["new"], "--dry-run", "--json"))
    [change] = doc["image_changes"]
    assert change["running"] == images["old"] and change["error"] is None
    assert change["diff"]["counts"] == {"changed": 1, "added": 1, "removed": 1, "rebuilt": 1, "unchanged": 2}
    assert (change["diff"]["old"]["source"], change["diff"]["new"]["source"]) == ("sbom", "sbom")
    # An image without an SBOM: the dry run says it cannot tell, and downloads no layer to find out.
    before = len(registry.log_text())
    out = _run(capsys, "deploy", "--config", str(toml), "--image", images["bare"], "--dry-run")
    line = next(x for x in out.splitlines() if x.startswith("image change from "))
    assert line.endswith("no SBOM attached (`nixfly diff` reads its layers instead))"), line
    gets = [x for x in registry.log_text()[before:].splitlines() if "GET" in x and "/blobs/sha256:" in x]
    layers = {lyr["digest"] for name in ("old", "bare") for lyr in _manifest(images[name])["layers"]}
    assert gets and not [x for x in gets if any(d in x for d in layers)]  # configs only


def test_releases_diff_after_three_deploys_lists_two_diffs_and_status_says_current(
    fly_env: RunningStandin, demo_app: Path, registry: RunningRegistry, diff_closures: Closures,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    images = _images(diff_closures, registry, demo_app)
    toml = demo_app / "fly.toml"
    toml.write_text(FLY_TOML)
    for name in ("old", "new", "again"):
        _run(capsys, "deploy", "--config", str(toml), "--image", images[name], "--ha=false")
    out = _run(capsys, "releases", "--config", str(toml), "--diff").splitlines()
    assert [x.split("\t")[0] for x in out if not x.startswith(" ")] == ["v3", "v2", "v1"]
    diffs = [x for x in out if x.startswith("  vs ")]
    assert len(diffs) == 2
    assert diffs[0].startswith("  vs v2: no store path changed; closure ") and diffs[0].endswith("config: env")
    assert diffs[1].startswith("  vs v1: " + FULL)
    doc: list[dict[str, Any]] = json.loads(_run(capsys, "releases", "--config", str(toml), "--diff", "--json"))
    assert [r["version"] for r in doc] == [3, 2, 1]
    assert doc[2]["diff"] is None and doc[1]["diff"]["against"] == 1
    assert doc[1]["diff"]["diff"]["counts"]["rebuilt"] == 1
    [env] = doc[0]["diff"]["diff"]["config"]
    assert (env["key"], env["old"], env["new"], env["change"]) == ("MODE", None, "again", "added")
    # nixfly diff -a APP: previous → current, the same as v2 → v3.
    d = json.loads(_run(capsys, "diff", "-a", "demo", "--json"))
    assert d["packages"] == [] and d["old"]["label"].startswith("v2 ") and d["new"]["label"].startswith("v3 ")
    assert json.loads(_run(capsys, "diff", "-a", "demo", "v1", "v2", "--json"))["counts"]["changed"] == 1

    status = _run(capsys, "status", "--config", str(toml)).splitlines()
    assert status[1] == "all 1 machines run the last release, v3"
    fly_env.seed_machine("demo", {**fly_env.machines("demo")[0].config, "image": images["old"]})
    status = _run(capsys, "status", "--config", str(toml)).splitlines()
    assert status[1] == "1 of 2 machines run the last release, v3"
