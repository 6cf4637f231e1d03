"""Two real Nix closures for ``nixfly diff`` tests (tests/data/nix/diff.nix): built once per session with
offline Nix, described by ``nix path-info``, and what a diff of them must say worked out by hand.

Fixture: ``diff_closures`` (session-scoped)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.nixstore import make_busybox_dir, nix_env, path_info

DIFF_NIX = Path(__file__).resolve().parent.parent / "data" / "nix" / "diff.nix"


@dataclass(frozen=True)
class Closures:
    old: str
    new: str
    sizes: dict[str, int]  # narSize of every path of both closures
    old_paths: set[str]
    new_paths: set[str]
    work: Path


def _nix_build(work: Path, variant: str) -> str:
    bb = make_busybox_dir(work)
    out = subprocess.run(
        ["nix-build", str(DIFF_NIX), "--no-out-link", "--arg", "bbdir", str(bb), "--argstr", "variant", variant,
         "-A", "app"], capture_output=True, text=True, env=nix_env(), check=True,
    ).stdout.split()  # fmt: skip
    return out[0]


@pytest.fixture(scope="session")
def diff_closures(tmp_path_factory: pytest.TempPathFactory, nix_available: None) -> Closures:
    work = tmp_path_factory.mktemp("diff-nix")
    old, new = _nix_build(work, "old"), _nix_build(work, "new")
    info_old, info_new = path_info([old]), path_info([new])
    sizes = {str(i["path"]): int(str(i["narSize"])) for i in info_old + info_new}
    os.environ.setdefault("NIX_CONFIG", nix_env()["NIX_CONFIG"])
    return Closures(old, new, sizes, {str(i["path"]) for i in info_old}, {str(i["path"]) for i in info_new}, work)


def _by_name(c: Closures, paths: set[str], name: str) -> str:
    return next(p for p in paths if p.split("-", 1)[1] == name)


def expected_packages(c: Closures) -> list[dict[str, Any]]:
    """What the diff must say, worked out from `nix path-info` by hand."""
    o, n, s = c.old_paths, c.new_paths, c.sizes

    def pkg(name: str, kind: str, ov: list[str], nv: list[str], op: list[str], np: list[str]) -> dict[str, Any]:
        old_size, new_size = sum(s[p] for p in op), sum(s[p] for p in np)
        return {"name": name, "kind": kind, "old_versions": ov, "new_versions": nv, "old_paths": op,
                "new_paths": np, "old_size": old_size, "new_size": new_size,
                "nar_size_delta": new_size - old_size}  # fmt: skip

    app_o, app_n = _by_name(c, o, "hello-app-1"), _by_name(c, n, "hello-app-1")
    lib_o, lib_n = _by_name(c, o, "libgreet-2.1"), _by_name(c, n, "libgreet-2.2")
    return [
        pkg("hello-app", "rebuilt", ["1"], ["1"], [app_o], [app_n]),
        pkg("libgreet", "changed", ["2.1"], ["2.2"], [lib_o], [lib_n]),
        pkg("newhelper", "added", [], ["1.4"], [], [_by_name(c, n, "newhelper-1.4")]),
        pkg("oldhelper", "removed", ["0.9"], [], [_by_name(c, o, "oldhelper-0.9")], []),
    ]


def closure_size(path: str) -> int:
    """`nix path-info -S`: the closure's total NAR size, as Nix computes it."""
    out = subprocess.run(["nix", "path-info", "-S", "--json", path], capture_output=True, text=True,
                         env=nix_env(), check=True).stdout  # fmt: skip
    data = json.loads(out)
    item = data[0] if isinstance(data, list) else next(iter(data.values()))
    return int(item["closureSize"])
