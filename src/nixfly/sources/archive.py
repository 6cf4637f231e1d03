"""Read an image from a docker-archive (``docker save`` / ``skopeo copy … docker-archive:`` format)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nixfly.errors import ImageError, UsageError
from nixfly.image import Image
from nixfly.image.compression import sniff_compression
from nixfly.image.mediatypes import layer_type
from nixfly.image.model import LayerBase
from nixfly.transports import ArchiveLocation


class _Window:
    """A read-only view of ``size`` bytes at ``offset`` of a file."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = path.open("rb")
        self._f.seek(offset)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ArchiveLayer(LayerBase):
    """A layer stored as a member of a docker-archive; compressed or plain as found."""

    archive: Path
    offset: int
    size: int
    digest: str
    diff_id: str
    media_type: str
    uncompressed_size: int | None = None

    def _open_raw(self) -> BinaryIO:
        return _Window(self.archive, self.offset, self.size)  # type: ignore[return-value]


def _hash_window(path: Path, offset: int, size: int) -> tuple[str, bytes]:
    h = hashlib.sha256()
    head = b""
    with _Window(path, offset, size) as w:
        while chunk := w.read(1 << 20):
            if not head:
                head = chunk[:8]
            h.update(chunk)
    return "sha256:" + h.hexdigest(), head


def read_archive(loc: ArchiveLocation) -> Image:
    if loc.path is None:
        raise UsageError("reading a docker-archive from stdin is not supported; save it to a file first")
    path = loc.path
    where = str(loc)
    try:
        tf = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as e:
        raise ImageError(f"{where}: not a docker-archive ({e})") from None
    with tf:
        members = {m.name.lstrip("./") if m.name != "./" else m.name: m for m in tf.getmembers()}

        def read_member(name: str) -> bytes:
            m = members.get(name)
            f = tf.extractfile(m) if m is not None else None
            if f is None:
                raise ImageError(f"{where}: missing {name}")
            return f.read()

        try:
            manifest = json.loads(read_member("manifest.json"))
        except ValueError:
            raise ImageError(f"{where}: manifest.json is not valid JSON") from None
        if not isinstance(manifest, list) or not manifest:
            raise ImageError(f"{where}: manifest.json lists no image")
        entry = manifest[0]
        if loc.name is not None:
            hits = [e for e in manifest if loc.name in (e.get("RepoTags") or [])]
            if not hits:
                raise ImageError(f"{where}: no image named {loc.name}")
            entry = hits[0]
        elif len(manifest) > 1:
            raise ImageError(f"{where}: holds {len(manifest)} images; name one as docker-archive:FILE:NAME:TAG")
        config_bytes = read_member(str(entry.get("Config", "")))
        cfg = json.loads(config_bytes)
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        names = entry.get("Layers") or []
        if len(diff_ids) != len(names):
            raise ImageError(f"{where}: config lists {len(diff_ids)} diff_ids for {len(names)} layers")
        layers = []
        for name, diff_id in zip(names, diff_ids, strict=True):
            m = members.get(name)
            if m is None or not m.isfile():
                raise ImageError(f"{where}: layer {name} is missing")
            digest, head = _hash_window(path, m.offset_data, m.size)
            comp = sniff_compression(head)
            if comp == "none" and digest != diff_id:
                raise ImageError(f"{where}: layer {name} does not match its diff_id {diff_id}")
            usize = m.size if comp == "none" else None
            layers.append(ArchiveLayer(path, m.offset_data, m.size, digest, diff_id, layer_type("oci", comp), usize))
    # Keep the config bytes exactly; the manifest is generated (archives carry no registry manifest).
    return Image(config_bytes, tuple(layers), "oci")
