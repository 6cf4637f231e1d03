"""One default PATH: the one `nixfly build` writes into an image whose spec sets none is the one `nixfly run`
assumes for an image config without PATH; an image's own PATH always wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixfly.errors import RuntimeErrorNF
from nixfly.image.config import DEFAULT_PATH
from nixfly.run.process import build_process
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure


def _rootfs(tmp_path: Path, *executables: str) -> Path:
    root = tmp_path / "rootfs"
    for exe in executables:
        p = root / exe.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return root


def _path_of(env: tuple[str, ...]) -> list[str]:
    return [e.partition("=")[2] for e in env if e.startswith("PATH=")]


def test_run_takes_the_images_path_when_there_is_one(tmp_path: Path) -> None:
    root = _rootfs(tmp_path, "/opt/app/bin/hello", "/usr/bin/hello")
    spec = build_process(root, {"config": {"Env": ["PATH=/opt/app/bin"], "Cmd": ["hello"]}}, host_env={"PATH": "/x"})
    assert _path_of(spec.env) == ["/opt/app/bin"]
    # ...and the command is looked up on that PATH, not on a default one: only /usr/bin has `other`.
    root2 = _rootfs(tmp_path / "2", "/usr/bin/other")
    with pytest.raises(RuntimeErrorNF, match=r"searched PATH=/opt/app/bin"):
        build_process(root2, {"config": {"Env": ["PATH=/opt/app/bin"], "Cmd": ["other"]}}, host_env={})


def test_run_without_an_image_path_uses_the_default_nixfly_images_get(tmp_path: Path) -> None:
    root = _rootfs(tmp_path, "/sbin/hello")
    spec = build_process(root, {"config": {"Cmd": ["hello"]}}, host_env={"PATH": "/host/only"})
    assert _path_of(spec.env) == [DEFAULT_PATH]
    # A directory outside the default (docker's /usr/local/bin) is not searched.
    root2 = _rootfs(tmp_path / "2", "/usr/local/bin/hello")
    with pytest.raises(RuntimeErrorNF, match=f"searched PATH={DEFAULT_PATH}"):
        build_process(root2, {"config": {"Cmd": ["hello"]}}, host_env={})


@pytest.mark.slow
def test_a_built_image_without_env_path_carries_exactly_runs_default(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_nixfly("build", tiny_closure.app, "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"), "--json",
                   "--sbom", "none")  # fmt: skip
    assert r.code == 0, r.err
    digest = json.loads(r.out)["digest"]
    manifest = json.loads((out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert [e for e in config["config"]["Env"] if e.startswith("PATH=")] == [f"PATH={DEFAULT_PATH}"]
    # `run` given that config keeps the image's PATH: the same string either way.
    root = _rootfs(tmp_path, "/bin/hello")
    spec = build_process(root, {"config": {**config["config"], "Entrypoint": ["hello"], "Cmd": []}}, host_env={})
    assert _path_of(spec.env) == [DEFAULT_PATH]
