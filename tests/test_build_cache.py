"""The layer cache: concurrent builds, kill -9 leftovers and corrupted blobs never produce a wrong image;
flake installables work as roots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import NIXFLY, run_nixfly
from tests.support.nixstore import TinyClosure, nix_env


def _build(tc: TinyClosure, out: Path, cache: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    r = run_nixfly("build", tc.app, "-o", f"oci:{out}", "--cache-dir", str(cache), "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out)  # type: ignore[no-any-return]


def test_concurrent_builds_share_one_cache(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _build(tiny_closure, tmp_path / f"o{i}", cache), range(4)))
    assert len({r["digest"] for r in results}) == 1
    # Every blob in the cache is complete and named by its digest; no temp files are left.
    for blob in (cache / "blobs" / "sha256").iterdir():
        import hashlib

        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert list((cache / "tmp").iterdir()) == []


def test_truncated_or_corrupt_cached_blob_is_never_trusted(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = _build(tiny_closure, tmp_path / "a", cache)
    big = max(first["layers"], key=lambda x: x["size"])
    blob = cache / "blobs" / "sha256" / big["digest"].split(":")[1]
    os.chmod(blob, 0o644)
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])  # as if a crash had cut it short
    again = _build(tiny_closure, tmp_path / "b", cache)
    assert again["digest"] == first["digest"] and again["totals"]["built"] == 1
    # Same size, different bytes (bit rot): detected by the digest check because the stat changed.
    data = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    third = _build(tiny_closure, tmp_path / "c2", cache)
    assert third["digest"] == first["digest"] and third["totals"]["built"] == 1


@pytest.mark.slow
def test_kill_9_mid_build_leaves_no_trusted_partial_blob(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(os.urandom(16 << 20))  # slow enough to kill mid-layer
    args = ["build", tiny_closure.app, "--add", f"{big}:/big", "-o", f"oci:{tmp_path / 'out'}",
            "--cache-dir", str(cache), "--compression", "zstd", "--level", "19", "--json"]  # fmt: skip
    proc = subprocess.Popen([*NIXFLY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any((cache / "tmp").glob("blob.*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    r = run_nixfly(*args)
    assert r.code == 0, r.err
    s = json.loads(r.out)
    ref = run_nixfly(*[a if a != str(cache) else str(tmp_path / "fresh") for a in args])
    assert json.loads(ref.out)["digest"] == s["digest"]


def test_flake_installable_as_root(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text(
        "{\n  outputs = { self }: {\n    packages.x86_64-linux.app = derivation {\n"
        '      name = "flake-app-1.0";\n      system = "x86_64-linux";\n'
        f'      builder = "{tiny_closure.bb}/bin/sh";\n'
        f'      args = [ "-c" "{tiny_closure.bb}/bin/mkdir -p $out/bin && '
        f'{tiny_closure.bb}/bin/echo hi > $out/bin/ref" ];\n'
        "    };\n  };\n}\n"
    )
    r = run_nixfly("build", ".#app", "-o", f"oci:{tmp_path / 'out'}", "--cache-dir", str(tmp_path / "c"), "--json",
                   env=nix_env(), cwd=flake)  # fmt: skip
    assert r.code == 0, r.err
    s = json.loads(r.out)
    top = [layer for layer in s["layers"] if layer["kind"] == "root"]
    assert len(top) == 1 and top[0]["store_paths"][0].endswith("-flake-app-1.0")
    # Roots from a flake are whole store paths of the flake's outputs.
    assert s["totals"]["store_paths"] == 1
    bad = run_nixfly("build", ".#nope", "-o", f"oci:{tmp_path / 'out2'}", env=nix_env(), cwd=flake)
    assert (
        bad.code != 0
        and bad.err.startswith("nixfly: nix build .#nope failed")
        and len(bad.err.strip().splitlines()) == 1
    )


def test_export_references_graph_files_classic_and_structured(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    graphs = subprocess.run(
        ["nix-build", str(Path(__file__).parent / "data" / "nix" / "export-graph.nix"), "--no-out-link",
         "--argstr", "app", tiny_closure.app, "--argstr", "bb", tiny_closure.bb, "-A", "classic", "-A", "structured"],
        capture_output=True, text=True, env=nix_env(), check=True,
    ).stdout.split()  # fmt: skip
    cache = tmp_path / "c"
    ref = _build(tiny_closure, tmp_path / "ref", cache)["digest"]
    no_nix = tmp_path / "no-nix-here"
    no_nix.mkdir()
    for g in graphs:
        # Inside a Nix build there is no nix CLI: PATH holds nothing, the graph file is all nixfly has.
        r = run_nixfly("build", tiny_closure.app, "--closure-file", g, "-o", f"oci:{tmp_path / Path(g).name}",
                       "--cache-dir", str(cache), "--json", env={"PATH": str(no_nix)})  # fmt: skip
        assert r.code == 0, r.err
        assert json.loads(r.out)["digest"] == ref, g


def test_closure_metadata_is_remembered_per_root(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = _build(tiny_closure, tmp_path / "a", cache)
    assert len(list((cache / "closures").glob("*.json"))) == 1
    # A store path's closure never changes: the second build needs no nix at all.
    no_nix = tmp_path / "empty-path"
    no_nix.mkdir()
    r = run_nixfly("build", tiny_closure.app, "-o", f"oci:{tmp_path / 'b'}", "--cache-dir", str(cache), "--json",
                   env={"PATH": str(no_nix)})  # fmt: skip
    assert r.code == 0, r.err
    again = json.loads(r.out)
    assert again["digest"] == first["digest"] and again["totals"]["built"] == 0
    # A corrupt entry is not trusted: nix is asked again.
    next((cache / "closures").glob("*.json")).write_text("{not json")
    assert _build(tiny_closure, tmp_path / "c2", cache)["digest"] == first["digest"]
