"""`nixfly build .#container` where the flake output is already an image (what dockerTools.buildLayeredImage
or streamLayeredImage give): refused with one line saying what to run, exactly as the same store path given
as ./result is, instead of packing the tarball (or the script) as a file of a new image."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.sources import open_image
from nixfly.transports import LayoutLocation
from tests.support.cli import run_nixfly
from tests.support.dockertools import STREAM_NIX, parts_from_layout
from tests.support.nixstore import TinyClosure, make_busybox_dir, nix_env

pytestmark = pytest.mark.slow

FLAKE = """{
  outputs = { self }: {
    # dockerTools.buildLayeredImage's kind of output: a gzip-compressed docker-archive in the store.
    packages.x86_64-linux.container = builtins.derivation {
      name = "container-image.tar.gz"; system = "x86_64-linux"; builder = "/bin/busybox";
      args = [ "sh" "-c" "cp ${./img.tar.gz} $out" ];
    };
    # streamLayeredImage's kind: a script that writes the archive to stdout.
    packages.x86_64-linux.stream = import ./stream-image.nix {
      bbdir = ./bb; parts = ./parts; system = "x86_64-linux";
    };
    # an ordinary package, for contrast
    packages.x86_64-linux.plain = builtins.derivation {
      name = "plain-app"; system = "x86_64-linux"; builder = "/bin/busybox";
      args = [ "sh" "-c" "mkdir -p $out/bin; echo hi > $out/bin/msg" ];
    };
  };
}
"""


@pytest.fixture()
def image_flake(tiny_closure: TinyClosure, tmp_path: Path) -> tuple[Path, str]:
    """A git flake whose outputs are images made from a nixfly-built layout; and that layout's digest."""
    layout = tmp_path / "layout"
    assert main(["build", tiny_closure.app, "-o", f"oci:{layout}:t", "--cache-dir", str(tmp_path / "c"), "-q"]) == 0
    digest = open_image(LayoutLocation(layout, "t")).manifest_digest()
    d = tmp_path / "flake"
    d.mkdir()
    tar = tmp_path / "img.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:t", f"docker-archive:{tar}:testimg:x"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["gzip", "-n", str(tar)], check=True)
    shutil.copy(tmp_path / "img.tar.gz", d / "img.tar.gz")
    parts_from_layout(layout, d / "parts")
    make_busybox_dir(d)
    shutil.copy(STREAM_NIX, d / "stream-image.nix")
    (d / "flake.nix").write_text(FLAKE)
    env = {**nix_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "images"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, capture_output=True)
    return d, digest


def _out_path(flake: Path, attr: str) -> str:
    r = subprocess.run(["nix", "build", "--no-link", "--json", f".#{attr}"], cwd=flake, env=nix_env(),
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import json

    return str(json.loads(r.stdout)[0]["outputs"]["out"])


@pytest.mark.parametrize(("attr", "says"), [("container", "is already an image"), ("stream", "is an image script")])
def test_an_installable_that_builds_an_image_is_refused_like_result(
    image_flake: tuple[Path, str], tmp_path: Path, attr: str, says: str
) -> None:
    flake, digest = image_flake
    out = tmp_path / "out"
    r = run_nixfly("build", f".#{attr}", "-o", f"oci:{out}:t", "--cache-dir", str(tmp_path / "c2"), cwd=flake,
                   env=nix_env())  # fmt: skip
    stored = _out_path(flake, attr)
    assert r.code == 2 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    assert r.err.startswith(f"nixfly: .#{attr} built {stored}, which {says}") and f"nixfly push {stored} REF" in r.err
    assert not out.exists() and not list(tmp_path.glob(".out*"))

    # The same path as ./result gets the same refusal (what the message above is modelled on).
    (flake / "result").symlink_to(stored)
    r = run_nixfly("build", "./result", "-o", f"oci:{out}:t", cwd=flake, env=nix_env())
    assert r.code == 2 and r.err.startswith(f"nixfly: ./result {says}") and "nixfly push ./result REF" in r.err

    # What the line says to run works, and gives back the image the archive was made from.
    r = run_nixfly("copy", stored, f"oci:{tmp_path / 'copied'}:t", env=nix_env())
    assert r.code == 0, r.err
    assert open_image(LayoutLocation(tmp_path / "copied", "t")).manifest_digest() == digest


def test_an_ordinary_installable_still_builds(image_flake: tuple[Path, str], tmp_path: Path) -> None:
    flake, _ = image_flake
    r = run_nixfly("build", ".#plain", "-o", f"oci:{tmp_path / 'out'}:t", "--cache-dir", str(tmp_path / "c2"),
                   cwd=flake, env=nix_env())  # fmt: skip
    assert r.code == 0, r.err
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=t", str(tmp_path / "out")],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
