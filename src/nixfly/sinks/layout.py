"""Write an image into an OCI image layout (``oci:DIR[:TAG]``), usable by skopeo, podman, umoci.

Blobs are placed first (each atomically: hard-linked when the layer is a trusted local blob, else streamed
and verified against its digest), ``index.json`` last (atomically, under a lock on the layout, so two
writers adding different tags both keep theirs). A new layout is assembled under a unique temporary name
and renamed into place, so an interrupted write never leaves an index pointing at missing blobs. Writing
into an existing layout adds or replaces the one tag and keeps the other images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nixfly.errors import NixflyError
from nixfly.fsutil import atomic_write_bytes, copy_stream_to, link_or_copy
from nixfly.image import Image, canonical_json
from nixfly.image.digest import sha256_digest
from nixfly.image.mediatypes import OCI_INDEX
from nixfly.image.model import LocalBlob
from nixfly.sources.layout import REF_NAME, blob_path, read_index
from nixfly.transports import LayoutLocation

_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock for writing the layout ``root``: a lock on its parent directory, so that two
    writers creating the same new layout contend too, and no lock file is left behind."""
    try:
        fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise NixflyError(f"cannot write {root}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_blobs(image: Image, work: Path) -> None:
    for layer in image.layers:
        dst = blob_path(work, layer.digest)
        if dst.exists() and dst.stat().st_size == layer.size:
            continue
        if isinstance(layer, LocalBlob):
            link_or_copy(layer.blob_path, dst)
        else:
            with layer.compressed() as src:
                copy_stream_to(src, dst)
    for data in (image.config_bytes, image.manifest_bytes()):
        p = blob_path(work, sha256_digest(data))
        if not p.exists():
            atomic_write_bytes(p, data)


def _update_index(image: Image, root: Path, tag: str | None, fresh: bool) -> None:
    entries = [] if fresh else [e for e in read_index(root)["manifests"] if isinstance(e, dict)]
    if tag:
        entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) != tag]
    else:
        entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME)]
    manifest = image.manifest_bytes()
    desc: dict[str, object] = {"mediaType": image.media_type, "digest": sha256_digest(manifest), "size": len(manifest)}
    if tag:
        desc["annotations"] = {REF_NAME: tag}
    entries.append(desc)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    atomic_write_bytes(root / "index.json", canonical_json(index))


def write_layout(image: Image, loc: LayoutLocation) -> str:
    """Write ``image`` (exactly its manifest) to the layout; returns the manifest digest."""
    root = loc.path
    if root.exists() and not root.is_dir():
        raise NixflyError(f"{root} exists and is not a directory; oci: needs a directory (new, empty or a layout)")
    if root.is_dir() and not (root / "oci-layout").exists() and any(root.iterdir()):
        raise NixflyError(f"{root} exists and is not an OCI layout; choose an empty or new directory")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NixflyError(f"cannot write {root}: {e.strerror}") from None
    with _locked(root):
        if (root / "oci-layout").exists():
            _write_blobs(image, root)
            _update_index(image, root, loc.tag, fresh=False)
            return image.manifest_digest()
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
        except OSError as e:
            raise NixflyError(f"cannot write {root}: {e.strerror}") from None
        try:
            (work / "blobs" / "sha256").mkdir(parents=True)
            _write_blobs(image, work)
            atomic_write_bytes(work / "oci-layout", _LAYOUT_FILE)
            _update_index(image, work, loc.tag, fresh=True)
            work.chmod(0o755)
            work.rename(root)  # replaces an empty directory the user made for us
        except OSError as e:
            raise NixflyError(f"cannot write {root}: {e.strerror}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return image.manifest_digest()


__all__ = ["write_layout"]
