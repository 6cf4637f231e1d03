"""Bit rot in the layer cache (issue 25 item 10): a cached blob whose bytes changed in place, with its mtime
put back so that the cache's stat shortcut still trusts it, must never be hard-linked into a new layout
that then fails its digests. The build says so in one line and removes the damaged blob; the next build
makes the layer again and its layout validates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure

pytestmark = pytest.mark.slow


def _build(tc: TinyClosure, out: Path, cache: Path) -> tuple[int, str, str]:
    r = run_nixfly("build", tc.app, "-o", f"oci:{out}:v1", "--cache-dir", str(cache), "--json", "--sbom", "none")
    return r.code, r.out, r.err


def _flip_keeping_stat(blob: Path) -> None:
    """Change one byte in the middle of ``blob`` and put its mtime back (same inode, size and mtime)."""
    st = blob.stat()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0x01]))
    os.chmod(blob, st.st_mode & 0o777)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = blob.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def _blobs_match_their_names(layout: Path) -> None:
    for p in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, p


def test_a_flipped_byte_in_a_cached_blob_never_reaches_a_new_layout(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, out, err = _build(tiny_closure, tmp_path / "first", cache)
    assert code == 0, err
    first = json.loads(out)
    biggest = max(first["layers"], key=lambda layer: layer["size"])["digest"]
    blob = cache / "blobs" / "sha256" / biggest.split(":")[1]
    _flip_keeping_stat(blob)  # (the first layout shares this inode: a hard link; it is the new one that counts)

    code, out, err = _build(tiny_closure, tmp_path / "second", cache)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "internal error" not in err, err
    assert f"the layer cache's copy of {biggest}" in lines[0] and "damaged" in lines[0]
    assert not (tmp_path / "second").exists()  # nothing half-written
    assert not blob.exists()  # removed, so that the next build makes it again

    code, out, err = _build(tiny_closure, tmp_path / "second", cache)
    assert code == 0, err
    again = json.loads(out)
    assert again["digest"] == first["digest"] and again["totals"]["built"] == 1
    _blobs_match_their_names(tmp_path / "second")
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", str(tmp_path / "second")],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0 and "Validation succeeded" in v.stdout + v.stderr, v.stdout + v.stderr


def test_a_blob_this_process_wrote_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check costs a read only for blobs another process left in the cache: a cold build into a new
    layout does not hash its layers twice."""
    import hashlib as real_hashlib

    from nixfly.build.cache import BlobCache
    from nixfly.fsutil import sha256_matches

    cache = BlobCache(tmp_path)
    data = b"layer bytes" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with cache.new_blob() as (f, holder):
        f.write(data)
        f.flush()
        path = cache.commit(holder[0], digest)
    other = tmp_path / "left-by-another-process"
    other.write_bytes(data)
    reads: list[object] = []
    real = real_hashlib.file_digest

    def counting(f: object, name: str) -> object:
        reads.append(f)
        return real(f, name)  # type: ignore[arg-type]

    monkeypatch.setattr(real_hashlib, "file_digest", counting)
    assert sha256_matches(path, digest) and reads == []
    assert sha256_matches(other, digest) and len(reads) == 1
    assert sha256_matches(other, digest) and len(reads) == 1  # once per process
    assert not sha256_matches(other, "sha256:" + "0" * 64) and len(reads) == 2
