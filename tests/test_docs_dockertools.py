"""docs/coming-from-dockertools.md runs: every `sh` block of the page, in order, in one flake directory (a
`default` package and an offline-Nix stream script as `image`), with a stock nix.conf, against a real
registry standing in for registry.fly.io and the Fly Machines API stand-in. Only `flyctl` lines are skipped
(no Fly.io here); the page's fly.toml is the one deployed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nixfly.cli import main
from tests.support.dockertools import STREAM_NIX, parts_from_layout, stock_env
from tests.support.flystandin import RunningStandin
from tests.support.nixstore import TinyClosure, make_busybox_dir, nix_env
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parent.parent / "docs" / "coming-from-dockertools.md"
COMMIT_TIME = "2025-03-04T05:06:07Z"

FLAKE = """{
  outputs = { self }: let
    system = "x86_64-linux";
    bb = builtins.path { path = ./bb; name = "busybox-static"; };
  in {
    packages.${system} = {
    default = builtins.derivation {
      name = "my-app-1.0"; inherit system; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
      args = [ "-c" ''
        mkdir -p $out/bin
        printf '#!${bb}/bin/sh\\necho hello from my-app\\n' > $out/bin/my-app
        chmod +x $out/bin/my-app
      '' ];
    };
    image = import ./stream-image.nix { bbdir = ./bb; parts = ./parts; inherit system; };
    };
  };
}
"""


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)


def _git(d: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_DATE": COMMIT_TIME, "GIT_COMMITTER_DATE": COMMIT_TIME, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    subprocess.run(["git", *args], cwd=d, env=env, check=True, capture_output=True)


def local(text: str, registry: RunningRegistry) -> str:
    """The page's commands aimed at the test registry (plain HTTP on loopback) instead of registry.fly.io."""
    text = text.replace("registry.fly.io", registry.host)
    text = text.replace("skopeo --insecure-policy copy", "skopeo --insecure-policy copy --dest-tls-verify=false")
    return text.replace("skopeo inspect", "skopeo inspect --tls-verify=false")


def test_every_command_on_the_page_runs(
    fly_api: RunningStandin, registry: RunningRegistry, tiny_closure: TinyClosure, tmp_path: Path
) -> None:
    d = tmp_path / "my-app"
    d.mkdir()
    shutil.copytree(make_busybox_dir(tiny_closure.workdir), d / "bb", symlinks=True)
    shutil.copy(STREAM_NIX, d / "stream-image.nix")
    (d / "flake.nix").write_text(FLAKE)
    _git(d, "init", "-q")
    _git(d, "add", ".")
    _git(d, "commit", "-qm", "app")
    env = {**os.environ, **stock_env(tmp_path), "FLY_API_TOKEN": fly_api.token, "FLY_API_URL": fly_api.url,
           "NIXFLY_STATE_DIR": str(tmp_path / "state"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    # The stream script streams the image of the default package, as streamLayeredImage would.
    layout = tmp_path / "made"
    build = subprocess.run([sys.executable, "-m", "nixfly", "build", ".", "--cmd", "/bin/my-app", "-o",
                            f"oci:{layout}:t", "-q"], cwd=d, env=env, capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    digest = build.stdout.strip()
    parts_from_layout(layout, d / "parts")
    _git(d, "add", "parts")
    _git(d, "commit", "-qm", "image parts")

    (toml,) = blocks("toml")
    (d / "fly.toml").write_text(toml)
    fly_api.create_app("my-app")
    assert shutil.which("nixfly", path=env["PATH"]) is not None

    sh = blocks("sh")
    assert len(sh) >= 8
    outputs = []
    for block in sh:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("flyctl ")]
        if not lines:
            assert block.startswith("flyctl deploy --image registry.fly.io/my-app:v1")
            continue
        script = "set -euo pipefail\n" + local("\n".join(lines), registry) + "\n"
        # The "before" steps run as their users have Nix set up (flakes enabled); nixfly's with a stock nix.conf.
        block_env = env if "nixfly" in block else {**env, "NIX_CONFIG": nix_env()["NIX_CONFIG"]}
        r = subprocess.run(["bash", "-c", script], cwd=d, env=block_env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{block}\n--- stderr:\n{r.stderr}"
        outputs.append(r.stdout)

    refs = re.findall(rf"{re.escape(registry.host)}/my-app@(sha256:[0-9a-f]{{64}})", "\n".join(outputs))
    assert len(refs) >= 6 and set(refs) == {digest}  # every nixfly push of the image gives the build's digest
    machines = fly_api.machines("my-app")
    # First deploy of an app with an HTTP service: two machines for availability (flyctl's --ha default).
    assert len(machines) == 2 and {m.image for m in machines} == {f"{registry.host}/my-app@{digest}"}
    assert {(m.region, m.state) for m in machines} == {("ams", "started")}
    assert main(["tags", f"{registry.host}/my-app", "--json"]) == 0
