"""Hostile layers under every runtime (runc, bwrap, chroot): ``..`` whiteouts, device nodes, set-uid files,
absolute and escaping symlinks, hard links out of the root, symlink loops.

A canary directory on the host (files, a subdirectory, a symlink) and a complete rootfs of another image
in the same cache must be byte for byte what they were before each run. Hostile entries are either
refused with one line before anything runs, or kept harmless inside the container, which then tries
its worst (writing through the links, making a device node) and must not get out."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixfly.image import Image
from nixfly.sinks.layout import write_layout
from nixfly.transports import LayoutLocation
from tests.test_unpack import Entry, busybox_entries, make_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes are exercised as root (as in CI)"),
]

RUNTIMES = ["runc", "bwrap", "chroot"]
DOCKER_DEFAULT_CAPS = 0xA80425FB


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything observable about a tree: per entry its type, mode, owner, size, mtime and content hash
    (link target for symlinks)."""
    out: dict[str, tuple[Any, ...]] = {".": (stat.S_IMODE(os.lstat(root).st_mode), os.lstat(root).st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                body = None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, body)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def canary(work: Path) -> Path:
    c = work / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "file").write_bytes(b"the host's own bytes\n")
    (c / "sub" / "deep").write_bytes(b"deeper\n")
    (c / "link").symlink_to("file")
    return c


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    """A cache that already holds one complete rootfs (another image's): it must survive every run."""
    c = work / "cache"
    img = make_image(work / "bystander-blobs", [busybox_entries()], {"Cmd": ["/bin/true"]})
    r = run(layout(img, work / "bystander"), c, "chroot")
    assert r.returncode == 0, r.stderr
    return c


def layout(img: Image, where: Path) -> Path:
    if not where.exists():
        write_layout(img, LayoutLocation(where, "latest"))
    return where


def run(lay: Path, cache: Path, runtime: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixfly", "run", "--runtime", runtime, "--cache-dir", str(cache), str(lay), *cmd],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def untouched(canary: Path, cache: Path) -> Any:
    """Asserts after the test that the canary and the cache's other trees are exactly as before."""
    rootfs = cache / "rootfs"
    before = snapshot(canary)
    trees_before = {p.name: snapshot(p) for p in rootfs.iterdir() if not p.name.startswith(".")}
    cache_listing = sorted(p.name for p in cache.iterdir())
    yield
    assert snapshot(canary) == before
    assert sorted(p.name for p in cache.iterdir()) == cache_listing
    for name, snap in trees_before.items():
        assert snapshot(rootfs / name) == snap, f"cached tree {name} changed"
    assert not any(p.name.startswith(".tmp-") for p in rootfs.iterdir()), "a partial tree was left behind"


def _escape(canary: Path) -> str:
    """A relative symlink target that climbs from anywhere in the rootfs to the canary on the host."""
    return "../" * 40 + str(canary).lstrip("/")


REFUSED: dict[str, Any] = {
    "whiteout-dotdot": lambda c: [[Entry(".wh...")]],
    "whiteout-dotdot-in-subdir": lambda c: [[Entry("etc/x", data=b"x")], [Entry("etc/.wh...")]],
    "whiteout-dot": lambda c: [[Entry("etc/x", data=b"x")], [Entry("etc/.wh..")]],
    "whiteout-empty": lambda c: [[Entry(".wh.")]],
    "whiteout-through-escaping-symlink": lambda c: [[Entry("up", "symlink", link=_escape(c))], [Entry("up/.wh.file")]],
    "file-through-escaping-symlink": lambda c: [[Entry("up", "symlink", link=_escape(c)), Entry("up/file", data=b"x")]],
    "dotdot-entry": lambda c: [[Entry("../" * 30 + str(c).lstrip("/") + "/file", data=b"pwned")]],
    "absolute-entry": lambda c: [[Entry(str(c) + "/file", data=b"pwned")]],
    "hardlink-dotdot": lambda c: [[Entry("h", "hardlink", link="../" * 30 + str(c).lstrip("/") + "/file")]],
    "hardlink-absolute": lambda c: [[Entry("h", "hardlink", link=str(c / "file"))]],
    "hardlink-through-symlink": lambda c: [
        [Entry("up", "symlink", link="../" * 40), Entry("h", "hardlink", link="up" + str(c / "file"))]
    ],
    "symlink-loop-written-through": lambda c: [
        [Entry("a", "symlink", link="b"), Entry("b", "symlink", link="a"), Entry("a/x", data=b"x")]
    ],
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_layer_is_refused_and_nothing_outside_is_touched(
    case: str, runtime: str, work: Path, canary: Path, cache: Path, untouched: Any
) -> None:
    img = make_image(work / f"{case}-blobs", [busybox_entries(), *REFUSED[case](canary)], {"Cmd": ["/bin/true"]})
    r = run(layout(img, work / f"{case}-layout"), cache, runtime)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.startswith("nixfly: layer ") and r.stderr.count("\n") == 1, r.stderr
    assert "refusing" in r.stderr, r.stderr


def _contained_image(work: Path, canary: Path) -> Path:
    """Links that lead out of the root when followed on the host, a loop, device nodes and set-id files:
    all allowed in, all harmless inside."""
    layers = [
        busybox_entries(),
        [
            Entry("abs", "symlink", link=str(canary)),  # inside the container: the image's own path
            Entry("rel", "symlink", link=_escape(canary)),  # climbs, but ".." stops at the container's /
            Entry("loop1", "symlink", link="loop2"),
            Entry("loop2", "symlink", link="loop1"),
            Entry("kmsg", "chr"),  # c 1 3 in the test helper: /dev/null's numbers
            Entry("dev/evil", "chr"),
            Entry("kmsg-too", "hardlink", link="kmsg"),
            Entry("bin/suid", data=b"#!/bin/sh\nid\n", mode=0o4755),
            Entry("bin/sgid", data=b"#!/bin/sh\nid\n", mode=0o2755),
        ],
    ]
    return layout(make_image(work / "contained-blobs", layers, {"Env": ["PATH=/bin"]}), work / "contained-layout")


ATTACK = r"""
for d in /abs /rel; do
  mkdir -p "$d/sub" && echo pwned > "$d/file" && echo pwned > "$d/sub/deep" && echo pwned > "$d/new" || echo "no $d"
  rm -rf "$d/link"
done
cat /loop1 2>/dev/null && echo LOOP-READ
for n in /kmsg /kmsg-too /dev/evil; do test -e "$n" && echo "DEVICE $n"; done
mknod /made c 1 3 2>/dev/null && { echo hi > /made; } 2>/dev/null && echo DEVICE-USABLE
stat -c '%a %n' /bin/suid /bin/sgid
grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status
ls /dev
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_links_devices_and_set_id_files_stay_harmless_inside(
    runtime: str, work: Path, canary: Path, cache: Path, untouched: Any
) -> None:
    r = run(_contained_image(work, canary), cache, runtime, "--", "sh", "-c", ATTACK)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "LOOP-READ" not in out and "DEVICE" not in out, out
    assert "755 /bin/suid\n755 /bin/sgid\n" in out  # set-id bits stripped: root has no user namespace here
    caps = {k: v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines() if ln.startswith("Cap"))}
    assert int(caps["CapEff"], 16) & ~DOCKER_DEFAULT_CAPS == 0, caps
    assert int(caps["CapBnd"], 16) & ~DOCKER_DEFAULT_CAPS == 0, caps
    if runtime == "chroot":
        assert int(caps["CapEff"], 16) == DOCKER_DEFAULT_CAPS and "NoNewPrivs:\t1" in out
        dev = out.split("NoNewPrivs:")[1].split("\n", 1)[1].split()
        assert set(dev) <= {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
                            "urandom", "zero"}, dev  # fmt: skip
    # The device nodes were skipped at unpack time, with a warning the first time the image is unpacked.
    tree = next(p for p in (cache / "rootfs").iterdir() if (p / "abs").is_symlink())
    assert not any(os.path.lexists(tree / n) for n in ("kmsg", "kmsg-too", "dev/evil"))
    assert stat.S_IMODE((tree / "bin/suid").stat().st_mode) == 0o755
    assert os.readlink(tree / "abs") == str(canary)


def test_device_nodes_are_skipped_with_a_warning(work: Path, tmp_path: Path) -> None:
    img = make_image(tmp_path / "b", [busybox_entries(), [Entry("kmsg", "chr"), Entry("dev/x", "chr")]], {})
    r = run(layout(img, tmp_path / "l"), tmp_path / "cache", "chroot", "/bin/true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nixfly: warning: layer 2 of 2"), r.stderr
    assert "skipped 2 device node(s) (/kmsg, /dev/x)" in r.stderr
