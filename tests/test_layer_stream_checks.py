"""A layer's tar stream is checked whoever made the layer: a third-party ``Layer`` whose ``compressed()`` is a
plain stream (no check of its own) still has its blob's digest and size checked by the one read pipeline."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import BinaryIO

import pytest

from nixfly.errors import ImageError
from nixfly.image import Image, canonical_json
from nixfly.image.mediatypes import OCI_LAYER, OCI_LAYER_GZIP, Compression
from nixfly.inspect import inspect_image


def _tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x/f")
        ti.size = len(content)
        tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ThirdPartyLayer:
    """A layer from outside nixfly: its blob stream is whatever bytes it was given, unchecked."""

    def __init__(self, blob: bytes, digest: str, diff_id: str, compression: Compression, size: int) -> None:
        self.blob, self.digest, self.diff_id, self.compression, self.size = blob, digest, diff_id, compression, size
        self.media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER
        self.uncompressed_size: int | None = None

    def compressed(self) -> BinaryIO:
        return io.BytesIO(self.blob)

    def uncompressed(self) -> BinaryIO:
        raise AssertionError("inspect reads the compressed stream")


def _inspect(layer: ThirdPartyLayer) -> None:
    cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    inspect_image(Image(canonical_json(cfg), (layer,), "oci"))


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_third_party_layer_with_the_wrong_bytes_fails_inspect_with_one_line(compression: Compression) -> None:
    good, bad = _tar(b"what the digest covers\n"), _tar(b"what the stream holds!\n")
    if compression == "gzip":
        # The wrong blob is a valid gzip tar whose diff_id is the one declared: only the blob digest is wrong.
        wrong = gzip.compress(bad, mtime=0)
        layer = ThirdPartyLayer(wrong, _sha(gzip.compress(good, mtime=0)), _sha(bad), "gzip", len(wrong))
    else:
        layer = ThirdPartyLayer(bad, _sha(good), _sha(good), "none", len(bad))
    right = good if compression == "none" else gzip.compress(good, mtime=0)
    _inspect(ThirdPartyLayer(right, layer.digest, _sha(good), compression, len(right)))  # the right bytes pass
    with pytest.raises(ImageError) as e:
        _inspect(layer)
    msg = str(e.value)
    assert "\n" not in msg and layer.digest in msg and "does not match its digest" in msg, msg


def test_a_third_party_layer_shorter_than_its_size_fails_inspect() -> None:
    good = gzip.compress(_tar(b"x" * 1000), mtime=0)
    layer = ThirdPartyLayer(good, _sha(good), _sha(_tar(b"x" * 1000)), "gzip", len(good) + 10)
    with pytest.raises(ImageError, match="truncated"):
        _inspect(layer)
