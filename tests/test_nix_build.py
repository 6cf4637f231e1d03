"""Nix's own output and settings: a stock nix.conf (no experimental features), `nixfly build .`, the
builder's last log lines and whole evaluation errors on failure, progress events while nix builds, the
flake's lastModified as the image's created time, and `nixfly tags` ordering releases by it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from nixfly.build.closure import NixBuildError, nix_build_installable, nix_reporter
from nixfly.cli import main
from nixfly.cli.registry import version_key
from nixfly.sinks.registry import push_image
from tests.support.cli import NIXFLY, run_nixfly
from tests.support.dockertools import stock_env
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

pytestmark = pytest.mark.slow

COMMIT_TIME = "2024-05-06T07:08:09Z"
COMMIT_EPOCH = 1714979289

FLAKE = """{
  outputs = { self }: {
    packages.x86_64-linux.default = builtins.derivation {
      name = "flake-app-MARKER"; system = "x86_64-linux"; builder = "/bin/busybox";
      args = [ "sh" "-c" "echo compiling MARKER; mkdir -p $out/bin; echo hi > $out/bin/msg" ];
    };
    packages.x86_64-linux.broken = builtins.derivation {
      name = "broken-MARKER"; system = "x86_64-linux"; builder = "/bin/busybox";
      args = [ "sh" "-c" "for i in $(seq 1 30); do echo step-$i; done; echo giving up >&2; exit 7" ];
    };
    packages.x86_64-linux.evalfail = let f = x: x.no.such.attr; in f { };
  };
}
"""


@pytest.fixture()
def flake(tmp_path: Path, nix_available: None) -> tuple[Path, str]:
    marker = uuid.uuid4().hex[:10]
    d = tmp_path / "flake"
    d.mkdir()
    (d / "flake.nix").write_text(FLAKE.replace("MARKER", marker))
    env = {**os.environ, "GIT_AUTHOR_DATE": COMMIT_TIME, "GIT_COMMITTER_DATE": COMMIT_TIME,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "flake.nix"], ["git", "commit", "-qm", "app"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, capture_output=True)
    return d, marker


def test_stock_nix_conf_build_of_dot_uses_default_and_the_commit_time(
    flake: tuple[Path, str], tmp_path: Path
) -> None:
    d, marker = flake
    env = stock_env(tmp_path)
    plain = subprocess.run(["nix", "build", "--no-link", "."], cwd=d, env={**os.environ, **env},
                           capture_output=True, text=True)  # fmt: skip
    assert plain.returncode != 0 and "experimental Nix feature 'nix-command' is disabled" in plain.stderr
    r = run_nixfly("build", ".", "-o", f"oci:{tmp_path / 'img'}:t", "--json", cwd=d, env=env)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert any(f"flake-app-{marker}" in p for lyr in summary["layers"] for p in lyr["store_paths"])
    cfg = subprocess.run(["skopeo", "inspect", "--config", f"oci:{tmp_path / 'img'}:t"], check=True,
                         capture_output=True).stdout  # fmt: skip
    config = json.loads(cfg)
    assert config["created"] == COMMIT_TIME
    assert {h["created"] for h in config["history"]} == {COMMIT_TIME}
    # The commit time wins over SOURCE_DATE_EPOCH when building an installable.
    r2 = run_nixfly("build", ".#default", "-o", f"oci:{tmp_path / 'img2'}:t", "--json", cwd=d,
                    env={**env, "SOURCE_DATE_EPOCH": "1600000000"})  # fmt: skip
    assert r2.code == 0, r2.err
    cfg2 = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci:{tmp_path / 'img2'}:t"],
                                     check=True, capture_output=True).stdout)  # fmt: skip
    assert cfg2["created"] == COMMIT_TIME


def test_failing_build_shows_the_builder_s_last_log_lines(flake: tuple[Path, str], tmp_path: Path) -> None:
    d, marker = flake
    r = run_nixfly("build", ".#broken", "-o", f"oci:{tmp_path / 'img'}", cwd=d, env=stock_env(tmp_path))
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[-1].startswith("nixfly: nix build .#broken failed: builder for '/nix/store/")
    assert f"broken-{marker}.drv' failed with exit code 7" in lines[-1]
    assert "(full log: nix log /nix/store/" in lines[-1]
    assert lines[0] == f"last 25 log lines of broken-{marker}:"
    assert lines[1:-1] == [f"  > step-{i}" for i in range(7, 31)] + ["  > giving up"]
    assert not (tmp_path / "img").exists()


def test_evaluation_error_is_shown_whole(flake: tuple[Path, str], tmp_path: Path) -> None:
    d, _ = flake
    r = run_nixfly("build", ".#evalfail", "-o", f"oci:{tmp_path / 'img'}", cwd=d, env=stock_env(tmp_path))
    assert r.code == 1
    assert "error: attribute 'no' missing" in r.err
    assert "flake.nix:" in r.err and "x.no.such.attr" in r.err  # the position and the source line
    assert r.err.splitlines()[-1] == "nixfly: nix build .#evalfail failed: attribute 'no' missing"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def building(self, drv_name: str) -> None:
        self.events.append(("building", drv_name))

    def log(self, drv_name: str, line: str) -> None:
        self.events.append(("log", f"{drv_name}: {line}"))

    def failed(self, details: Sequence[str]) -> None:
        self.events.append(("failed", "\n".join(details)))


def test_progress_events_name_the_derivation_and_its_log_lines(
    flake: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, marker = flake
    for k, v in stock_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(d)
    rec = Recorder()
    token = nix_reporter.set(rec)
    try:
        outs = nix_build_installable(".#default")
        with pytest.raises(NixBuildError) as e:
            nix_build_installable(".#broken")
    finally:
        nix_reporter.reset(token)
    assert outs and outs[0].endswith(f"-flake-app-{marker}")
    assert ("building", f"flake-app-{marker}") in rec.events
    assert ("log", f"flake-app-{marker}: compiling {marker}") in rec.events
    assert ("building", f"broken-{marker}") in rec.events
    assert rec.events[-1][0] == "failed" and "  > giving up" in rec.events[-1][1]
    assert "\n" not in str(e.value)


def test_a_terminal_sees_a_spinner_with_the_derivation(flake: tuple[Path, str], tmp_path: Path) -> None:
    d, marker = flake
    out = tmp_path / "img"
    main_fd, sub_fd = pty.openpty()
    proc = subprocess.Popen([*NIXFLY, "build", ".#broken", "-o", f"oci:{out}"], cwd=d, stdin=subprocess.DEVNULL,
                            stdout=sub_fd, stderr=sub_fd, env={**os.environ, **stock_env(tmp_path),
                                                              "COLUMNS": "200", "TERM": "xterm"})  # fmt: skip
    os.close(sub_fd)
    seen = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(main_fd)
    text = seen.decode(errors="replace")
    assert proc.returncode == 1
    assert f"nix: building broken-{marker}" in text
    assert "  > giving up" in text


def test_tags_break_ties_by_version_order(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sorted(["v1.10", "v1.9", "v1.9.1", "v2"], key=version_key) == ["v1.9", "v1.9.1", "v1.10", "v2"]
    repo = f"{registry.host}/ver/app"
    same = "2026-05-01T00:00:00Z"
    for tag, created in [("v1.9", same), ("v1.10", same), ("v1.2", same), ("old", "2025-01-01T00:00:00+00:00"),
                         ("v0.1", "2026-05-01T00:00:00.5Z")]:  # fmt: skip
        push_image(make_image(tmp_path / tag, app=tag.encode(), busybox=False, created=created), [f"{repo}:{tag}"])
    assert main(["tags", repo, "--json"]) == 0
    tags = [t["tag"] for t in json.loads(capsys.readouterr().out)["tags"]]
    assert tags == ["v0.1", "v1.10", "v1.9", "v1.2", "old"]
