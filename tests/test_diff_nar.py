"""NAR sizes from tar headers alone (``nixfly.diff.layers``), held to what Nix itself writes: every tree
here is also dumped with ``nix-store --dump`` and the byte counts must be equal — for file sizes and name
lengths on both sides of every 8-byte boundary, executable bits, symlinks, empty files and directories,
non-ASCII names, and the shapes other tools' layers take: no directory members, hard links, a store path
split over two layers, whiteouts (plain and opaque) and a single-file store path."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from nixfly.diff.layers import LayerReader
from nixfly.image.model import BytesLayer

STORE = "nix/store"
BASE = "0123456789abcdfghijklmnpqrsvwxyz-odd-1.0"  # a store base name (hash part in Nix's alphabet)


def nar_size(path: Path) -> int:
    out = subprocess.run(["nix-store", "--dump", str(path)], capture_output=True, check=True).stdout
    return len(out)


@pytest.fixture()
def tree(tmp_path: Path, nix_available: None) -> Path:
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "share" / "deep" / "er").mkdir(parents=True)
    for n in range(18):  # file sizes and name lengths around every padding boundary
        (root / "share" / ("n" * (n + 1))).write_bytes(b"x" * n)
    (root / "share" / "deep" / "er" / "größe-ünïcode").write_bytes(b"data\n")
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o555)
    os.symlink("../share/deep/er/größe-ünïcode", root / "bin" / "link-a")
    os.symlink("/nix/store/" + "z" * 32 + "-elsewhere/bin/x" * 3, root / "bin" / "link-long")
    (root / "share" / "copy-one").write_bytes(b"same bytes, twice\n")
    (root / "share" / "copy-two").write_bytes(b"same bytes, twice\n")
    return root


def _members(root: Path, *, dirs: bool = True, hardlinks: bool = False) -> list[tuple[tarfile.TarInfo, bytes]]:
    out: list[tuple[tarfile.TarInfo, bytes]] = []
    first_of: dict[bytes, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        name_dir = f"{STORE}/{BASE}" + ("" if rel_dir == "." else f"/{rel_dir}")
        if dirs or not (dirnames or filenames):  # an empty directory needs a member of its own
            ti = tarfile.TarInfo(name_dir)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o555
            out.append((ti, b""))
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                filenames.append(d)
                dirnames.remove(d)
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            ti = tarfile.TarInfo(f"{name_dir}/{f}")
            if os.path.islink(full):
                ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
                out.append((ti, b""))
                continue
            data = Path(full).read_bytes()
            ti.mode = os.stat(full).st_mode & 0o777
            if hardlinks and len(data) > 8 and data in first_of:
                ti.type, ti.linkname = tarfile.LNKTYPE, first_of[data]
                out.append((ti, b""))
                continue
            first_of.setdefault(data, ti.name)
            ti.size = len(data)
            out.append((ti, data))
    return out


def layer(members: list[tuple[tarfile.TarInfo, bytes]]) -> BytesLayer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    plain = buf.getvalue()
    gz = gzip.compress(plain, mtime=0)
    return BytesLayer(gz, "sha256:" + hashlib.sha256(gz).hexdigest(), "sha256:" + hashlib.sha256(plain).hexdigest(),
                      "application/vnd.oci.image.layer.v1.tar+gzip", len(plain))  # fmt: skip


def sizes(*layers: BytesLayer) -> dict[str, int]:
    return LayerReader().store_sizes(layers)


def test_every_node_kind_and_padding_boundary_matches_nix(tree: Path) -> None:
    assert sizes(layer(_members(tree))) == {f"/{STORE}/{BASE}": nar_size(tree)}


def test_without_directory_members_the_implied_directories_still_count(tree: Path) -> None:
    assert sizes(layer(_members(tree, dirs=False))) == {f"/{STORE}/{BASE}": nar_size(tree)}


def test_hard_links_count_the_bytes_of_what_they_link(tree: Path) -> None:
    members = _members(tree, hardlinks=True)
    assert any(ti.islnk() for ti, _ in members)
    assert sizes(layer(members)) == {f"/{STORE}/{BASE}": nar_size(tree)}


def test_a_hard_link_to_a_file_of_a_lower_layer(tree: Path) -> None:
    members = _members(tree)
    one = next(m for m in members if m[0].name.endswith("/copy-one"))
    two = next(m for m in members if m[0].name.endswith("/copy-two"))
    link = tarfile.TarInfo(two[0].name)
    link.type, link.linkname, link.mode = tarfile.LNKTYPE, one[0].name, one[0].mode
    lower = layer([m for m in members if m is not two])
    assert one in [m for m in members if m is not two]
    assert sizes(lower, layer([(link, b"")])) == {f"/{STORE}/{BASE}": nar_size(tree)}


def test_a_path_split_over_layers_with_whiteouts_is_what_the_container_sees(tree: Path, tmp_path: Path) -> None:
    members = _members(tree)
    half = len(members) // 2
    junk = tarfile.TarInfo(f"{STORE}/{BASE}/share/junk-file")
    junk.size = 1000
    junk_dir = tarfile.TarInfo(f"{STORE}/{BASE}/share/deep/er/stale")
    junk_dir.size = 77
    lower = layer([*members[:half], (junk, b"j" * 1000), (junk_dir, b"s" * 77)])
    out = tarfile.TarInfo(f"{STORE}/{BASE}/share/.wh.junk-file")
    opaque = tarfile.TarInfo(f"{STORE}/{BASE}/share/deep/er/.wh..wh..opq")
    er_file = next(m for m in members if m[0].name.endswith("ünïcode"))
    upper = layer([(out, b""), (opaque, b""), *members[half:], er_file])
    assert sizes(lower, upper) == {f"/{STORE}/{BASE}": nar_size(tree)}
    # A whiteout of the whole store path removes it; an upper layer may bring it back.
    gone = layer([(tarfile.TarInfo(f"{STORE}/.wh.{BASE}"), b"")])
    assert sizes(lower, upper, gone) == {}
    assert sizes(lower, gone, layer(members)) == {f"/{STORE}/{BASE}": nar_size(tree)}


def test_single_file_and_symlink_store_paths(tmp_path: Path, nix_available: None) -> None:
    script = tmp_path / "script.sh"
    script.write_bytes(b"#!/bin/sh\nexit 0\n")
    script.chmod(0o555)
    link = tmp_path / "link"
    os.symlink("/nix/store/" + "a" * 32 + "-target", link)
    f = tarfile.TarInfo(f"{STORE}/{'b' * 32}-script.sh")
    f.size, f.mode = script.stat().st_size, 0o555
    s = tarfile.TarInfo(f"{STORE}/{'c' * 32}-link")
    s.type, s.linkname = tarfile.SYMTYPE, os.readlink(link)
    got = sizes(layer([(f, script.read_bytes()), (s, b"")]))
    assert got == {f"/{STORE}/{'b' * 32}-script.sh": nar_size(script), f"/{STORE}/{'c' * 32}-link": nar_size(link)}


def test_a_corrupt_layer_is_an_error_not_a_size(tree: Path) -> None:
    from nixfly.errors import ImageError

    good = layer(_members(tree))
    bad = BytesLayer(good.data[:-9] + b"\0" * 9, good.digest, good.diff_id, good.media_type, good.uncompressed_size)
    with pytest.raises(ImageError):
        sizes(bad)
