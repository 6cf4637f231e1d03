"""Unpacking layers into a rootfs: order, OCI whiteouts and opaque directories, refusal of escapes, the cache.

Every test writes real tar layers (Python's tarfile), compresses them and unpacks them for real.
The helpers here also build the busybox images ``test_run.py`` runs.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from nixfly.errors import NixflyError
from nixfly.image import BlobLayer, Image
from nixfly.run.unpack import UnpackError, UnpackOptions, cache_key, cached_rootfs, unpack

ROOT = os.geteuid() == 0
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Entry:
    """One tar entry to write. ``kind``: file, dir, symlink, hardlink, fifo, chr."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    mtime: int = 1_000_000
    xattrs: tuple[tuple[str, bytes], ...] = ()  # written as PAX SCHILY.xattr.* headers, as GNU tar does


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed layer tar holding ``entries`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
            ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
                continue
            ti.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[e.kind]
            ti.linkname = e.link
            if e.kind == "chr":
                ti.devmajor, ti.devminor = 1, 3
            tf.addfile(ti)
    return buf.getvalue()


def busybox_entries() -> list[Entry]:
    """/bin/busybox (Debian's static build) plus a symlink per applet: a whole userland in one layer."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [Entry("bin", "dir", mode=0o755), Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)]
    entries += [Entry(f"bin/{a}", "symlink", link="busybox") for a in applets if a != "busybox"]
    entries += [
        Entry("etc", "dir", mode=0o755),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/home/app:/bin/sh\n"),
        Entry("etc/group", data=b"root:x:0:\napp:x:2345:\nextra:x:3456:app\n"),
        Entry("tmp", "dir", mode=0o1777),
    ]
    return entries


def make_image(
    where: Path,
    layers: Sequence[Sequence[Entry] | bytes],
    config: dict[str, Any] | None = None,
    compression: str = "gzip",
) -> Image:
    """An Image of real blob files under ``where`` (one per layer) and an OCI config listing their diff_ids."""
    where.mkdir(parents=True, exist_ok=True)
    blobs: list[BlobLayer] = []
    for entries in layers:
        raw = entries if isinstance(entries, bytes) else layer_tar(entries)
        if compression == "gzip":
            blob = gzip.compress(raw, mtime=0)
        elif compression == "zstd":
            blob = zstandard.ZstdCompressor().compress(raw)
        else:
            blob = raw
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        path = where / digest.split(":")[1]
        path.write_bytes(blob)
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        blobs.append(BlobLayer(path, digest, diff_id, len(blob), compression))  # type: ignore[arg-type]
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
    }
    return Image(json.dumps(cfg).encode(), tuple(blobs))


def _unpacked(tmp_path: Path, layers: Sequence[Sequence[Entry] | bytes], **kw: Any) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir(parents=True)
    unpack(make_image(tmp_path / "blobs", layers, **kw), root)
    return root


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_files_dirs_symlinks_hardlinks_are_unpacked(tmp_path: Path) -> None:
    root = _unpacked(
        tmp_path,
        [
            [
                Entry("usr", "dir", mode=0o755),
                Entry("usr/bin", "dir", mode=0o750),
                Entry("usr/bin/tool", data=b"#!tool\n", mode=0o755, uid=1234, gid=2345),
                Entry("usr/bin/alias", "symlink", link="tool"),
                Entry("usr/bin/same", "hardlink", link="usr/bin/tool"),
                Entry("run/pipe", "fifo", mode=0o600),
            ]
        ],
    )
    tool = root / "usr/bin/tool"
    assert tool.read_bytes() == b"#!tool\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "usr/bin").stat().st_mode) == 0o750
    assert os.readlink(root / "usr/bin/alias") == "tool"
    assert (root / "usr/bin/same").stat().st_ino == tool.stat().st_ino
    assert stat.S_ISFIFO((root / "run/pipe").lstat().st_mode)
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o755  # implicit parent
    assert tool.stat().st_mtime == 1_000_000
    if ROOT:
        assert (tool.stat().st_uid, tool.stat().st_gid) == (1234, 2345)


def test_later_layers_replace_earlier_entries(tmp_path: Path) -> None:
    root = _unpacked(
        tmp_path,
        [
            [Entry("a", data=b"one"), Entry("d/x", data=b"x"), Entry("link", "symlink", link="a")],
            [Entry("a", data=b"two"), Entry("d", data=b"now a file"), Entry("link", "dir", mode=0o755)],
        ],
    )
    assert (root / "a").read_bytes() == b"two"
    assert (root / "d").read_bytes() == b"now a file"
    assert (root / "link").is_dir() and not (root / "link").is_symlink()


def test_whiteout_deletes_a_lower_layers_file(tmp_path: Path) -> None:
    root = _unpacked(
        tmp_path,
        [
            [Entry("etc/a", data=b"a"), Entry("etc/b", data=b"b"), Entry("gone/deep/f", data=b"f")],
            [Entry("etc/.wh.a"), Entry(".wh.gone")],
        ],
    )
    assert _tree(root) == {"etc", "etc/b"}


def test_whiteout_does_not_hide_its_own_layers_file(tmp_path: Path) -> None:
    # The spec: a whiteout only applies to lower layers, whatever the order inside the tar.
    root = _unpacked(tmp_path, [[Entry("a", data=b"lower")], [Entry("a", data=b"mine"), Entry(".wh.a")]])
    assert (root / "a").read_bytes() == b"mine"


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_hides_everything_below_from_lower_layers(tmp_path: Path, marker_first: bool) -> None:
    marker = [Entry("data/.wh..wh..opq")]
    upper = [Entry("data/new", data=b"new"), Entry("data/sub/mine", data=b"m")]
    root = _unpacked(
        tmp_path,
        [
            [Entry("data/old", data=b"o"), Entry("data/sub/lower", data=b"l"), Entry("keep/me", data=b"k")],
            marker + upper if marker_first else upper + marker,
        ],
    )
    assert _tree(root) == {"data", "data/new", "data/sub", "data/sub/mine", "keep", "keep/me"}


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/etc/escaped"])
def test_entry_names_that_leave_the_root_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnpackError, match="refusing"):
        _unpacked(tmp_path, [[Entry(name, data=b"pwned")]])
    assert not (tmp_path / "escaped").exists()


def test_symlinked_parent_that_climbs_out_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    hop = "../" * 12 + str(outside).lstrip("/")
    with pytest.raises(UnpackError, match="outside the image root"):
        _unpacked(tmp_path, [[Entry("evil", "symlink", link=hop)], [Entry("evil/pwned", data=b"pwned")]])
    assert list(outside.iterdir()) == []


def test_symlinked_parent_escape_within_one_layer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match="outside the image root"):
        _unpacked(tmp_path, [[Entry("a", "dir"), Entry("a/up", "symlink", link="../.."), Entry("a/up/x", data=b"")]])
    assert not (tmp_path / "x").exists()


def test_absolute_symlinked_parent_stays_inside_the_root(tmp_path: Path) -> None:
    # "/etc" seen from inside the container is the image's /etc, never the host's.
    outside = tmp_path / "host-dir"
    outside.mkdir()
    root = _unpacked(
        tmp_path,
        [[Entry("lnk", "symlink", link=str(outside))], [Entry("lnk/planted", data=b"inside")]],
    )
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "planted").read_bytes() == b"inside"


@pytest.mark.parametrize(
    "layers",
    [
        [[Entry("h", "hardlink", link="../../../etc/passwd")]],
        [[Entry("h", "hardlink", link="/etc/passwd")]],
        [[Entry("up", "symlink", link="../../../../../../"), Entry("h", "hardlink", link="up/etc/passwd")]],
        [[Entry("nothere", "hardlink", link="missing")]],
    ],
)
def test_hardlinks_to_outside_or_missing_targets_are_refused(tmp_path: Path, layers: list[list[Entry]]) -> None:
    with pytest.raises(UnpackError):
        _unpacked(tmp_path, layers)


@pytest.mark.skipif(not ROOT, reason="owners and set-id bits need root")
def test_owners_are_kept_as_root_but_set_id_bits_are_not(tmp_path: Path) -> None:
    # As root no runtime has a user namespace: a set-uid root file in the cache would be a real one.
    layer = [Entry("bin/su", data=b"x", mode=0o4755), Entry("bin/wall", data=b"w", mode=0o2755, gid=5)]
    layer += [Entry("o", uid=7, gid=8), Entry("shared", "dir", mode=0o3775)]
    root = _unpacked(tmp_path, [layer])
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "bin/wall").stat().st_mode) == 0o755
    assert ((root / "o").stat().st_uid, (root / "o").stat().st_gid) == (7, 8)
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o3775 & ~stat.S_ISUID  # sticky + set-gid dir

    kept = tmp_path / "kept"
    kept.mkdir()
    unpack(make_image(tmp_path / "b2", [layer]), kept, UnpackOptions(keep_owners=True, keep_setid=True))
    assert stat.S_IMODE((kept / "bin/su").stat().st_mode) == 0o4755


def test_unprivileged_unpack_drops_set_id_bits(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    img = make_image(tmp_path / "b", [[Entry("su", data=b"x", mode=0o6755, uid=0), Entry("d", "dir", mode=0o500)]])
    unpack(img, root, UnpackOptions(keep_owners=False))
    assert stat.S_IMODE((root / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o700


# struct vfs_cap_data, revision 2, effective: cap_setuid (7) permitted, i.e. `setcap cap_setuid+ep`.
CAP_SETUID_EP = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)


@pytest.mark.skipif(not ROOT, reason="only root could write security.capability")
def test_file_capabilities_and_security_xattrs_are_dropped_with_one_note(tmp_path: Path) -> None:
    caps = (("security.capability", CAP_SETUID_EP),)
    layers = [
        [Entry("bin/tool", data=b"t", mode=0o755, xattrs=caps), Entry("bin/su", data=b"s", mode=0o4755)],
        [Entry("bin/other", data=b"o", xattrs=(("security.selinux", b"x"), ("trusted.overlay.opaque", b"y")))],
        [Entry("bin/plain", data=b"p", xattrs=(("user.note", b"kept"),))],
    ]
    root = tmp_path / "rootfs"
    root.mkdir()
    notes: list[str] = []
    unpack(make_image(tmp_path / "blobs", layers), root, UnpackOptions.for_current_user(notes.append))
    for name, attr in (
        ("tool", "security.capability"),
        ("other", "security.selinux"),
        ("other", "trusted.overlay.opaque"),
    ):
        with pytest.raises(OSError) as ei:
            os.getxattr(root / "bin" / name, attr)
        assert ei.value.errno == errno.ENODATA, (name, attr)
    assert os.getxattr(root / "bin/plain", "user.note") == b"kept"
    assert notes == [
        "dropped set-uid/set-gid bits of 1 file(s) and file capabilities or security attributes of 2 file(s) "
        "(/bin/other, /bin/su, /bin/tool): an image's files grant no privileges here"
    ]


def test_zstd_and_uncompressed_layers(tmp_path: Path) -> None:
    for kind in ("zstd", "none"):
        root = _unpacked(tmp_path / kind, [[Entry("f", data=kind.encode())]], compression=kind)
        assert (root / "f").read_bytes() == kind.encode()


def test_content_not_matching_diff_id_is_refused(tmp_path: Path) -> None:
    img = make_image(tmp_path / "b", [[Entry("f", data=b"x")]])
    lyr = img.layers[0]
    assert isinstance(lyr, BlobLayer)
    bad = BlobLayer(lyr.path, lyr.digest, "sha256:" + "0" * 64, lyr.size, lyr.compression)
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(UnpackError, match="diff_id"):
        unpack(Image(img.config_bytes, (bad,)), root)


def test_corrupt_layer_gives_one_line_error(tmp_path: Path) -> None:
    img = make_image(tmp_path / "b", [[Entry("f", data=b"x" * 5000)]])
    lyr = img.layers[0]
    assert isinstance(lyr, BlobLayer)
    lyr.path.write_bytes(lyr.path.read_bytes()[:30])
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(UnpackError) as ei:
        unpack(img, root)
    assert "\n" not in str(ei.value) and "layer 1 of 1" in str(ei.value)


def test_cache_is_reused_and_never_keeps_a_partial_tree(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = make_image(tmp_path / "good", [[Entry("f", data=b"cached")]])
    first = cached_rootfs(good, cache)
    assert first.name == cache_key(good) and (first / "f").read_bytes() == b"cached"
    assert stat.S_IMODE((cache / "rootfs").stat().st_mode) == 0o700
    for lyr in good.layers:  # the second run must not need the blobs any more
        assert isinstance(lyr, BlobLayer)
        lyr.path.unlink()
    assert cached_rootfs(good, cache) == first

    bad = make_image(tmp_path / "bad", [[Entry("ok", data=b"1")], [Entry("../escape", data=b"2")]])
    with pytest.raises(NixflyError):
        cached_rootfs(bad, cache)
    assert sorted(p.name for p in (cache / "rootfs").iterdir()) == [first.name]

    # A leftover of a killed unpack (its pid no longer exists) is swept, never reused.
    dead = cache / "rootfs" / f".tmp-{cache_key(bad)}-999999999-x"
    dead.mkdir()
    (dead / "half").write_bytes(b"")
    # So is a tree of an older unpack version (one of v2 may hold file capabilities): it is never used again.
    old = cache / "rootfs" / f"v2-{'a' * 64}"
    (old / "bin").mkdir(parents=True)
    fixed = make_image(tmp_path / "fixed", [[Entry("whole", data=b"w")]])
    got = cached_rootfs(fixed, cache)
    assert not dead.exists() and not old.exists() and _tree(got) == {"whole"}
    assert sorted(p.name for p in (cache / "rootfs").iterdir()) == sorted([first.name, got.name])
