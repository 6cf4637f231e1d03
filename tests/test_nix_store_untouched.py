"""Nothing nixfly writes lands in the Nix store. As root nothing else stops it: a fuzz run once gave a real
store path as ``--cache-dir`` and left ``blobs/``, ``layers/``, ``closures/`` and ``tmp/`` inside it, so the
path no longer matched its NarHash and later tests read a reference that Nix never recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure


def _listing(root: str) -> list[str]:
    return sorted(str(Path(d, n)) for d, dirs, files in os.walk(root) for n in [*dirs, *files])


@pytest.mark.parametrize("where", ["cache", "layout", "archive"])
def test_nothing_is_written_into_a_store_path(tiny_closure: TinyClosure, tmp_path: Path, where: str) -> None:
    store_path = tiny_closure.lib
    before = _listing(store_path)
    args = ["build", tiny_closure.app, "--cache-dir", str(tmp_path / "c"), "-o", f"oci:{tmp_path / 'out'}"]
    if where == "cache":
        args[3] = store_path
    elif where == "layout":
        args[-1] = f"oci:{store_path}/image"
    else:
        args[-1] = f"docker-archive:{store_path}/image.tar"
    r = run_nixfly(*args)
    assert r.code == 2, r.err
    assert r.err.strip().splitlines() == [
        f"nixfly: {'cache dir' if where == 'cache' else 'output'} {store_path}"
        f"{'' if where == 'cache' else '/image' + ('.tar' if where == 'archive' else '')} "
        "is inside the Nix store (/nix/store), which nixfly never writes to"
    ]
    assert _listing(store_path) == before
