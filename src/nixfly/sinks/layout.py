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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nixfly.errors import ImageError, NixflyError
from nixfly.fsutil import atomic_write_bytes, copy_stream_to, link_or_copy, sha256_matches
from nixfly.image import Image, canonical_json
from nixfly.image.digest import sha256_digest
from nixfly.image.index import ImageIndex
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


def _check_cached(path: Path, digest: str) -> None:
    """A layer-cache blob is hashed before it is hard-linked into a layout (once per process): bytes changed
    in place, with the mtime put back or by the disk, would otherwise make a layout that fails its digests.
    A damaged blob is removed from the cache, so that the next build makes it again."""
    try:
        if sha256_matches(path, digest):
            return
    except OSError as e:
        raise ImageError(f"cannot read the cached layer blob {digest} at {path}: {e.strerror}") from None
    with contextlib.suppress(OSError):
        os.unlink(path)
    raise ImageError(
        f"the layer cache's copy of {digest} ({path}) is damaged: its bytes no longer match the digest; "
        "it was removed, run the command again to rebuild it"
    )


def _write_blobs(image: Image, work: Path) -> None:
    for layer in image.layers:
        dst = blob_path(work, layer.digest)
        if dst.exists() and dst.stat().st_size == layer.size:
            continue
        if isinstance(layer, LocalBlob):
            _check_cached(layer.blob_path, layer.digest)
            link_or_copy(layer.blob_path, dst)
        else:
            with layer.compressed() as src:
                copy_stream_to(src, dst)
    for data in (image.config_bytes, image.manifest_bytes()):
        p = blob_path(work, sha256_digest(data))
        if not p.exists():
            atomic_write_bytes(p, data)


def _update_index(media_type: str, manifest: bytes, root: Path, tag: str | None, fresh: bool) -> None:
    desc: dict[str, object] = {"mediaType": media_type, "digest": sha256_digest(manifest), "size": len(manifest)}
    if tag:
        desc["annotations"] = {REF_NAME: tag}

    def tagged(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if tag:
            entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) != tag]
        else:
            entries = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME)]
        return [*entries, desc]

    _edit_index(root, tagged, fresh)


def _edit_index(root: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], fresh: bool) -> None:
    """Read ``index.json``, replace its manifests list by ``edit(manifests)``, write it atomically. The
    caller holds the layout's lock: every change to index.json goes through here, under that lock."""
    idx = {} if fresh else read_index(root)
    entries = [e for e in idx.get("manifests", []) if isinstance(e, dict)]
    index = {**idx, "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": edit(entries)}
    atomic_write_bytes(root / "index.json", canonical_json(index))


def edit_layout_index(root: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Change the manifests list of the existing layout at ``root`` under its lock (the one a concurrent
    ``write_layout`` takes), so that no writer's entry is lost: ``edit`` gets the current entries and
    returns the new ones. Write the blobs the new entries name before calling this."""
    with _locked(root):
        if not (root / "oci-layout").is_file():
            raise NixflyError(f"{root} is not an OCI layout (no oci-layout file)")
        _edit_index(root, edit, fresh=False)


def write_layout(image: Image, loc: LayoutLocation) -> str:
    """Write ``image`` (exactly its manifest) to the layout; returns the manifest digest."""
    return _write_layout((image,), image.media_type, image.manifest_bytes(), loc)


def write_index_layout(index: ImageIndex, loc: LayoutLocation) -> str:
    """Write a multi-platform ``index`` to the layout: every image's blobs and manifest, then the index
    blob, then an ``index.json`` entry (tagged ``loc.tag``) pointing at that index; returns its digest."""
    return _write_layout(index.images(), index.media_type, index.manifest_bytes(), loc)


def _write_layout(images: tuple[Image, ...], media_type: str, top: bytes, loc: LayoutLocation) -> str:
    def blobs(work: Path) -> None:
        for image in images:
            _write_blobs(image, work)
        p = blob_path(work, sha256_digest(top))
        if not p.exists():
            atomic_write_bytes(p, top)

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
            blobs(root)
            _update_index(media_type, top, root, loc.tag, fresh=False)
            return sha256_digest(top)
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
        except OSError as e:
            raise NixflyError(f"cannot write {root}: {e.strerror}") from None
        try:
            (work / "blobs" / "sha256").mkdir(parents=True)
            blobs(work)
            atomic_write_bytes(work / "oci-layout", _LAYOUT_FILE)
            _update_index(media_type, top, work, loc.tag, fresh=True)
            work.chmod(0o755)
            work.rename(root)  # replaces an empty directory the user made for us
        except OSError as e:
            raise NixflyError(f"cannot write {root}: {e.strerror}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return sha256_digest(top)


__all__ = ["edit_layout_index", "write_index_layout", "write_layout"]
