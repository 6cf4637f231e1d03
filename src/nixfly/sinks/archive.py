"""Write an image as a docker-archive (what ``docker load`` / ``podman load`` / skopeo read).

Layers are stored uncompressed as ``<diff_id>.tar`` (the format's convention), decompressed on the fly
from the cached blobs. To a file the archive is written to a temp name and renamed; to stdout it streams.
"""

from __future__ import annotations

import io
import sys
import tarfile
from typing import BinaryIO

from nixfly.build.compress import decompressing_reader
from nixfly.errors import ImageError
from nixfly.fsutil import atomic_writer
from nixfly.image import BlobLayer, Image, Layer, canonical_json
from nixfly.image.digest import digest_hex
from nixfly.transports import ArchiveLocation

_MTIME = 1


def _uncompressed_size(layer: Layer) -> int:
    if isinstance(layer, BlobLayer) and layer.uncompressed_size is not None:
        return layer.uncompressed_size
    if layer.compression == "none":
        return layer.size
    n = 0
    with layer.open() as raw:
        r = decompressing_reader(layer.compression, raw)
        while chunk := r.read(1 << 20):
            n += len(chunk)
    return n


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
            size = _uncompressed_size(layer)
            with layer.open() as raw:
                tf.addfile(_info(name, size), decompressing_reader(layer.compression, raw))
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
