"""Write an image into an OCI image layout (``oci:DIR[:TAG]``), usable by skopeo, podman, umoci.

Blobs are placed first (each atomically, hard-linked from the cache when possible), ``index.json`` last
(atomically), so an interrupted write never leaves an index pointing at missing blobs. Writing into an
existing layout adds or replaces the one tag and keeps the other images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nixfly.errors import NixflyError
from nixfly.fsutil import atomic_write_bytes, copy_stream_to, link_or_copy
from nixfly.image import BlobLayer, Image, canonical_json
from nixfly.image.digest import sha256_digest
from nixfly.image.mediatypes import OCI_INDEX, ManifestFormat
from nixfly.sources.layout import REF_NAME, blob_path, read_index
from nixfly.transports import LayoutLocation


def write_layout(image: Image, loc: LayoutLocation, fmt: ManifestFormat | None = None) -> str:
    """Write ``image`` to the layout; returns the manifest digest."""
    root = loc.path
    fresh = not root.exists()
    if root.exists() and not (root / "oci-layout").exists() and any(root.iterdir()):
        raise NixflyError(f"{root} exists and is not an OCI layout; choose an empty or new directory")
    work = root.with_name(f".{root.name}.partial") if fresh else root
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NixflyError(f"cannot write {root}: {e.strerror}") from None
    try:
        for layer in image.layers:
            dst = blob_path(work, layer.digest)
            if dst.exists() and dst.stat().st_size == layer.size:
                continue
            if isinstance(layer, BlobLayer):
                link_or_copy(layer.path, dst)
            else:
                with layer.open() as src:
                    copy_stream_to(src, dst)
        manifest = image.manifest_bytes(fmt)
        digest = image.manifest_digest(fmt)
        for data in (image.config_bytes, manifest):
            p = blob_path(work, sha256_digest(data))
            if not p.exists():
                atomic_write_bytes(p, data)
        atomic_write_bytes(work / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        entries = [] if fresh else list(read_index(work)["manifests"])
        if loc.tag:
            entries = [e for e in entries if e.get("annotations", {}).get(REF_NAME) != loc.tag]
        else:
            entries = [e for e in entries if e.get("annotations", {}).get(REF_NAME)]
        desc = {"mediaType": image.manifest_media_type(fmt), "digest": digest, "size": len(manifest)}
        if loc.tag:
            desc["annotations"] = {REF_NAME: loc.tag}
        entries.append(desc)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        atomic_write_bytes(work / "index.json", canonical_json(index))
        if fresh:
            try:
                work.rename(root)
            except OSError as e:
                raise NixflyError(f"cannot write {root}: {e.strerror}") from None
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return digest


def layout_tags(root: Path) -> dict[str, str]:
    """Tag → manifest digest of a layout."""
    return {
        e.get("annotations", {}).get(REF_NAME, ""): e["digest"]
        for e in read_index(root)["manifests"]
        if isinstance(e, dict) and "digest" in e
    }


__all__ = ["layout_tags", "write_layout"]
