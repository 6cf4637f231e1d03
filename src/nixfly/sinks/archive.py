"""Write an image as a docker-archive (what ``docker load`` / ``podman load`` / skopeo read).

Layers are stored uncompressed as ``<diff_id>.tar`` (the format's convention), decompressed on the fly
from the layers' blobs and verified against their diff_ids. To a file the archive is written to a temp
name and renamed; to stdout it streams.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, cast

from nixfly.errors import ImageError
from nixfly.fsutil import atomic_writer
from nixfly.image import Image, Layer, canonical_json
from nixfly.image.digest import digest_hex
from nixfly.transports import ArchiveLocation

_MTIME = 1


@contextlib.contextmanager
def _tar_stream(layer: Layer) -> Iterator[tuple[BinaryIO, int]]:
    """The layer's verified tar stream and its size. When the size is not known up front (a layer from
    a registry or a layout), the stream is decompressed once into a temporary file to learn it."""
    if layer.uncompressed_size is not None:
        with layer.uncompressed() as r:
            yield r, layer.uncompressed_size
        return
    with tempfile.TemporaryFile(prefix="nixfly-layer-") as spool:
        with layer.uncompressed() as r:
            shutil.copyfileobj(r, spool, 1 << 20)
        size = spool.tell()
        spool.seek(0)
        yield cast(BinaryIO, spool), size


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = _MTIME
    ti.mode = 0o644
    ti.uname = ti.gname = ""
    return ti


def _write(image: Image, out: BinaryIO, repo_tag: str | None) -> None:
    cfg_name = digest_hex(image.config_digest) + ".json"
    layer_names = [digest_hex(lyr.diff_id) + ".tar" for lyr in image.layers]
    manifest = [{"Config": cfg_name, "RepoTags": [repo_tag] if repo_tag else [], "Layers": layer_names}]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(_info(cfg_name, len(image.config_bytes)), io.BytesIO(image.config_bytes))
        written: set[str] = set()
        for layer, name in zip(image.layers, layer_names, strict=True):
            if name in written:
                continue
            written.add(name)
            with _tar_stream(layer) as (stream, size):
                tf.addfile(_info(name, size), stream)
        mbytes = canonical_json(manifest)
        tf.addfile(_info("manifest.json", len(mbytes)), io.BytesIO(mbytes))
        if repo_tag:
            name, _, tag = repo_tag.rpartition(":")
            last = digest_hex(image.layers[-1].diff_id) if image.layers else ""
            rbytes = canonical_json({name: {tag: last}})
            tf.addfile(_info("repositories", len(rbytes)), io.BytesIO(rbytes))


def write_archive(image: Image, loc: ArchiveLocation) -> None:
    """Write the archive to ``loc.path`` atomically, or stream it to stdout when ``loc.path`` is None."""
    if loc.path is None:
        if sys.stdout.isatty():
            raise ImageError("refusing to write a docker-archive to a terminal; redirect stdout or use -o FILE")
        _write(image, sys.stdout.buffer, loc.name)
        sys.stdout.buffer.flush()
        return
    with atomic_writer(loc.path) as f:
        _write(image, f, loc.name)
