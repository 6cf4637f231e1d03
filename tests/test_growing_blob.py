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
