"""A blob still being written, read by more than one reader: bytes a reader takes back from the file are
checked against the writer's digest, whatever it takes from memory around them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import nixfly.image.growing as growing_mod
from nixfly.errors import ImageError
from nixfly.image.growing import GrowingBlob, GrowingReader


def _three_pieces(tmp_path: Path) -> tuple[GrowingBlob, Path, bytes]:
    path = tmp_path / "blob.tmp"
    pieces = [bytes([i + 1]) * 1000 for i in range(3)]
    path.write_bytes(b"")
    blob = GrowingBlob(path, "test layer")
    with open(path, "ab") as f:
        for p in pieces:
            f.write(p)
            f.flush()
            blob.wrote(len(p), p)
    return blob, path, b"".join(pieces)


def test_a_reader_going_from_held_pieces_to_the_file_and_back_checks_the_file_bytes(tmp_path: Path) -> None:
    blob, path, data = _three_pieces(tmp_path)
    try:
        a = GrowingReader(blob)
        assert a.read(1000) == data[:1000]  # piece 0 is taken: released
        with open(path, "r+b") as f:  # the file changes under the blob
            f.write(b"X" * 1000)
        blob.finish("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        b = GrowingReader(blob)
        out = b""
        with pytest.raises(ImageError, match="does not match its digest"):
            while chunk := b.read(1000):
                out += chunk
        assert not b.verified
        assert out.startswith(b"X" * 1000)  # read back from the file, so it had to be checked
    finally:
        blob.close()
    assert growing_mod.held_bytes() == 0


def test_a_reader_of_held_pieces_only_is_verified_without_hashing(tmp_path: Path) -> None:
    blob, _path, data = _three_pieces(tmp_path)
    try:
        blob.finish("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        r = GrowingReader(blob)
        out = b""
        while chunk := r.read(1000):
            out += chunk
        assert out == data and r.verified
    finally:
        blob.close()
    assert growing_mod.held_bytes() == 0


@pytest.mark.parametrize("fails", ["remember", "on_blob"])
def test_a_layer_build_failing_after_its_blob_was_handed_over_fails_the_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """Every way out of ``build_layer`` finishes or fails the growing blob it handed over: an upload waiting
    for its bytes must not wait for ever. A blob the receiver refused is closed."""
    import errno
    import os

    from nixfly.build.cache import BlobCache
    from nixfly.build.compress import make_compressor
    from nixfly.build.layers import Entry, LayerSettings, LayerSpec, build_layer
    from nixfly.errors import NixflyError

    blobs: list[GrowingBlob] = []

    def on_blob(blob: GrowingBlob) -> None:
        blobs.append(blob)
        if fails == "on_blob":
            raise NixflyError("push abandoned")

    def remember(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(BlobCache, "remember", remember)
    spec = LayerSpec(extra=(Entry("file", "/data/x", 0o644, data=os.urandom(100_000)),), comment="data")
    with pytest.raises(NixflyError, match="No space left on device" if fails == "remember" else "abandoned"):
        build_layer(spec, LayerSettings(make_compressor("gzip")), BlobCache(tmp_path / "cache"), on_blob=on_blob)
    (blob,) = blobs
    assert blob.done and blob.digest is None
    with pytest.raises(ImageError, match="No space left on device" if fails == "remember" else "abandoned"):
        blob.wait(1 << 30, timeout=5)
    if fails == "on_blob":
        with pytest.raises(ImageError, match="read after close"):
            blob.pread(1, 0)
    blob.close()
    assert growing_mod.held_bytes() == 0
