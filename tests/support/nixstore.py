"""Real offline Nix for tests: a busybox toolchain imported into the store and a small real closure
(app → tool → lib → common, plus cacert), built with ``nix-build`` and described by ``nix path-info``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NIX_CONFIG = "build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes\nsubstituters ="
CLOSURE_NIX = Path(__file__).resolve().parent.parent / "data" / "nix" / "closure.nix"


def nix_env() -> dict[str, str]:
    """The environment for offline Nix 2.8 without touching /etc/nix/nix.conf."""
    env = dict(os.environ)
    env["NIX_CONFIG"] = NIX_CONFIG
    return env


def make_busybox_dir(dest: Path) -> Path:
    """A bin/ of Debian's static busybox with relative symlinks for every applet."""
    bb = dest / "bb"
    if (bb / "bin" / "busybox").exists():
        return bb
    (bb / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", bb / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        link = bb / "bin" / a
        if a != "busybox" and not link.exists():
            link.symlink_to("busybox")
    return bb


@dataclass(frozen=True)
class TinyClosure:
    app: str
    tool: str
    lib: str
    common: str
    cacert: str
    bb: str
    path_info: Path  # `nix path-info --json --recursive app` output
    workdir: Path

    def build(self, **args: str) -> dict[str, str]:
        return build_closure(self.workdir, **args)


def build_closure(workdir: Path, **args: str) -> dict[str, str]:
    """Build the attrs of closure.nix with extra string args; returns attr → store path."""
    bb = make_busybox_dir(workdir)
    attrs = ["app", "tool", "lib", "common", "cacert"]
    cmd = ["nix-build", str(CLOSURE_NIX), "--no-out-link", "--arg", "bbdir", str(bb)]
    for k, v in args.items():
        cmd += ["--argstr", k, v]
    for a in attrs:
        cmd += ["-A", a]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=nix_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nix-build failed: {proc.stderr[-2000:]}")
    outs = dict(zip(attrs, proc.stdout.split(), strict=True))
    refs = subprocess.run(["nix-store", "-qR", outs["tool"]], capture_output=True, text=True, env=nix_env(), check=True)
    outs["bb"] = next(p for p in refs.stdout.split() if p.endswith("-busybox-static"))
    return outs


def path_info(paths: list[str]) -> list[dict[str, object]]:
    out = subprocess.run(
        ["nix", "path-info", "--json", "--recursive", *paths], capture_output=True, text=True, env=nix_env(), check=True
    ).stdout
    data = json.loads(out)
    return data if isinstance(data, list) else [{"path": k, **v} for k, v in data.items()]


@pytest.fixture(scope="session")
def nix_available() -> None:
    if shutil.which("nix-build") is None or not Path("/bin/busybox").exists():
        pytest.fail("real Nix (nix-bin) and busybox-static are required: run scripts/setup.sh")


@pytest.fixture(scope="session")
def tiny_closure(tmp_path_factory: pytest.TempPathFactory, nix_available: None) -> Iterator[TinyClosure]:
    work = tmp_path_factory.mktemp("nix")
    outs = build_closure(work)
    pi = work / "path-info.json"
    pi.write_text(json.dumps(path_info([outs["app"]])))
    os.environ.setdefault("NIX_CONFIG", NIX_CONFIG)
    yield TinyClosure(outs["app"], outs["tool"], outs["lib"], outs["common"], outs["cacert"], outs["bb"], pi, work)


@pytest.fixture()
def nix_env_vars() -> dict[str, str]:
    return nix_env()
