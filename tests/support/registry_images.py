"""Small, real, runnable test images for the registry tests (busybox + an "app" layer), made without Nix.

Each layer is a deterministic gzip tar written to a file and wrapped as a ``BlobLayer``, so images can be
pushed with nixfly, copied with skopeo and run with runc/podman. ``make_image(..., app=b"v2")`` changes only
the app layer, which is how tests model "one app store path changed".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from nixfly.image import BlobLayer, Image, canonical_json

BUSYBOX = Path("/bin/busybox")


def _tar(entries: list[tuple[str, bytes | str, int]]) -> bytes:
    """A tar of (path, data-or-symlink-target, mode) with fixed owner and mtime."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for path, data, mode in entries:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1
                    tf.addfile(ti)
            ti = tarfile.TarInfo(path)
            ti.mtime, ti.mode = 1, mode
            if isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def blob_layer(directory: Path, tar_bytes: bytes, *, level: int = 6) -> BlobLayer:
    gz = gzip.compress(tar_bytes, compresslevel=level, mtime=0)
    digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    path = directory / digest.split(":")[1]
    path.write_bytes(gz)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return BlobLayer(path, digest, diff_id, len(gz), "gzip", len(tar_bytes))


def make_image(
    directory: Path,
    *,
    app: bytes = b"hello from nixfly v1\n",
    extra_layer_bytes: int = 0,
    busybox: bool = True,
    created: str = "1970-01-01T00:00:01Z",
) -> Image:
    """An image: [busybox layer], app layer (/app/message), optionally a large incompressible layer.

    Its command prints /app/message. ``extra_layer_bytes`` adds a layer of that many pseudo-random bytes
    (deterministic), big enough to force chunked uploads when needed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    layers: list[BlobLayer] = []
    if busybox:
        layers.append(blob_layer(directory, _tar([("bin/busybox", BUSYBOX.read_bytes(), 0o755),
                                                  ("bin/sh", "busybox", 0o777),
                                                  ("bin/cat", "busybox", 0o777)])))  # fmt: skip
    if extra_layer_bytes:
        data = bytearray()
        seed = b"nixfly"
        while len(data) < extra_layer_bytes:
            seed = hashlib.sha256(seed).digest()
            data += hashlib.sha512(seed).digest() * 1
        layers.append(blob_layer(directory, _tar([("data/blob", bytes(data[:extra_layer_bytes]), 0o644)]), level=1))
    layers.append(blob_layer(directory, _tar([("app/message", app, 0o644)])))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/app/message"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [lyr.diff_id for lyr in layers]},
        "history": [{"created": "1970-01-01T00:00:01Z", "created_by": "nixfly tests"} for _ in layers],
        "created": created,
    }
    return Image(canonical_json(config), tuple(layers), "oci")


def image_json(image: Image) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(image.manifest_bytes())
    return loaded
