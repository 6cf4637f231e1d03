"""Stale temp files in the layer cache: a build killed with -9 leaves a partial blob in ``cache/tmp``; the
next nixfly to open the cache removes it, while temp files of builds still running are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixfly.build.cache import BlobCache, owner_gone, sweep_stale_temps
from tests.support.cli import NIXFLY, run_nixfly
from tests.support.nixstore import TinyClosure


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_temps_of_dead_or_reused_pids_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now (and not reused within this test: pids go up)
    live = _sleeper()
    try:
        files = {
            "dead": tmp / f"blob.{dead.pid}.abc",
            "live": tmp / f"blob.{live.pid}.def",
            # our pid, but written before this process started: some earlier process with our pid wrote it
            "reused": tmp / f"layer.{os.getpid()}.ghi",
            "mine": tmp / f"layer.{os.getpid()}.jkl",
            "old-anonymous": tmp / "blob.x1y2z3",
            "new-anonymous": tmp / "blob.q9w8e7",
        }
        for p in files.values():
            p.write_bytes(b"partial")
        long_ago = time.time() - 3 * 24 * 3600
        for k in ("reused", "old-anonymous"):
            os.utime(files[k], (long_ago, long_ago))
        removed = sweep_stale_temps(tmp)
        assert sorted(p.name for p in removed) == sorted(files[k].name for k in ("dead", "reused", "old-anonymous"))
        assert sorted(p.name for p in tmp.iterdir()) == sorted(
            files[k].name for k in ("live", "mine", "new-anonymous")
        )
        assert not owner_gone(live.pid, time.time()) and owner_gone(dead.pid, time.time())
    finally:
        live.kill()
        live.wait()


def test_opening_the_cache_sweeps_and_names_temps_by_pid(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    stale = tmp_path / "tmp" / "blob.999999999.zz"
    stale.write_bytes(b"x" * 1000)
    cache = BlobCache(tmp_path)
    assert not stale.exists()
    with cache.new_blob() as (_f, holder):
        assert holder[0].name.startswith(f"blob.{os.getpid()}.")
        BlobCache(tmp_path)  # another nixfly opening the cache meanwhile keeps our live temp file
        assert holder[0].exists()


@pytest.mark.slow
def test_kill_9_mid_build_leaves_a_partial_blob_that_the_next_run_removes(
    tiny_closure: TinyClosure, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(os.urandom(16 << 20))  # slow enough (zstd -19) to kill mid-layer
    args = ["build", tiny_closure.app, "--add", f"{big}:/big", "-o", f"oci:{tmp_path / 'out'}",
            "--cache-dir", str(cache), "--compression", "zstd", "--level", "19", "--json"]  # fmt: skip
    proc = subprocess.Popen([*NIXFLY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in (cache / "tmp").glob(f"blob.{proc.pid}.*") if p.stat().st_size > 0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the build never wrote a temp blob"
    left = sorted((cache / "tmp").iterdir())
    assert left and all(p.name.startswith(f"blob.{proc.pid}.") or p.name.startswith(f"layer.{proc.pid}.") for p in left)
    r = run_nixfly(*args)
    assert r.code == 0, r.err
    assert list((cache / "tmp").iterdir()) == []  # the killed build's leftovers are gone, nothing new is left


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_the_sweep_never_follows_a_symlink_out_of_the_cache(tmp_path: Path) -> None:
    """Issue 25 item 9: with cache/tmp a symlink to another directory, the sweep used to delete that
    directory's old files (and any file named like a temp of a dead pid)."""
    outside = tmp_path / "home"
    (outside / "photos").mkdir(parents=True)
    precious = {
        "old": outside / "thesis.pdf",  # older than the anonymous-temp age
        "pid-named": outside / f"blob.{_dead_pid()}.keep",  # looks like a dead writer's temp file
        "deep": outside / "photos" / "2019.jpg",
    }
    for p in precious.values():
        p.write_bytes(b"irreplaceable")
    long_ago = time.time() - 30 * 24 * 3600
    for p in precious.values():
        os.utime(p, (long_ago, long_ago))

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tmp").symlink_to(outside)
    BlobCache(cache)
    assert sweep_stale_temps(cache / "tmp") == []
    assert all(p.read_bytes() == b"irreplaceable" for p in precious.values())

    # A real cache/tmp whose entries are symlinks out, or a dead build's directory holding one.
    (cache / "tmp").unlink()
    (cache / "tmp").mkdir()
    dead = _dead_pid()
    (cache / "tmp" / f"blob.{dead}.a").symlink_to(precious["old"])
    (cache / "tmp" / f"nars.{dead}.b").symlink_to(outside / "photos")
    nars = cache / "tmp" / f"nars.{dead}.c"
    nars.mkdir()
    (nars / "part.nar").write_bytes(b"x" * 1000)
    (nars / "link").symlink_to(outside / "photos")
    (nars / "file-link").symlink_to(precious["deep"])
    own = cache / "tmp" / f"blob.{dead}.d"
    own.write_bytes(b"partial")
    removed = sweep_stale_temps(cache / "tmp")
    assert sorted(p.name for p in removed) == sorted([nars.name, own.name])
    assert not nars.exists() and not own.exists()
    assert all(p.read_bytes() == b"irreplaceable" for p in precious.values())
    assert sorted(p.name for p in (cache / "tmp").iterdir()) == [f"blob.{dead}.a", f"nars.{dead}.b"]  # links kept
