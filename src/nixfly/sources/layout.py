"""Read an image from an OCI image layout directory (``oci:DIR[:TAG]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nixfly.errors import ImageError
from nixfly.image import BlobLayer, Image, parse_manifest
from nixfly.image.digest import check_digest, digest_hex
from nixfly.image.mediatypes import INDEX_TYPES, MANIFEST_TYPES, compression_of, format_of_manifest
from nixfly.transports import LayoutLocation

REF_NAME = "org.opencontainers.image.ref.name"


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest_hex(digest)


def _read_blob(root: Path, desc: dict[str, Any], where: str) -> bytes:
    digest = check_digest(str(desc.get("digest", "")))
    p = blob_path(root, digest)
    try:
        data = p.read_bytes()
    except OSError:
        raise ImageError(f"{where}: blob {digest} is missing from {root}") from None
    if "size" in desc and len(data) != desc["size"]:
        raise ImageError(f"{where}: blob {digest} has {len(data)} bytes, descriptor says {desc['size']}")
    return data


def read_index(root: Path) -> dict[str, Any]:
    try:
        idx = json.loads((root / "index.json").read_text())
    except FileNotFoundError:
        raise ImageError(f"{root} is not an OCI layout (no index.json)") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"{root}/index.json is unreadable: {e}") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("manifests"), list):
        raise ImageError(f"{root}/index.json has no manifests list")
    return idx


def _select(root: Path, manifests: list[dict[str, Any]], tag: str | None, where: str) -> dict[str, Any]:
    if tag is not None:
        hits = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == tag]
        if not hits:
            names = sorted({m.get("annotations", {}).get(REF_NAME, "?") for m in manifests})
            raise ImageError(f"{where}: no image tagged {tag!r} (tags: {', '.join(names) or 'none'})")
        return hits[0]
    # Referrers (an SBOM with a `subject`) sit beside the image in index.json; they are not images.
    manifests = [m for m in manifests if "subject" not in m] or manifests
    if len(manifests) != 1:
        raise ImageError(f"{where}: holds {len(manifests)} images; name one as oci:DIR:TAG")
    return manifests[0]


def read_layout(loc: LayoutLocation) -> Image:
    root = loc.path
    where = str(loc)
    idx = read_index(root)
    desc = _select(root, idx["manifests"], loc.tag, where)
    # Follow nested indexes to the linux/amd64 (or only) manifest.
    while desc.get("mediaType") in INDEX_TYPES:
        nested = json.loads(_read_blob(root, desc, where))
        subs = nested.get("manifests", [])
        plat = [m for m in subs if m.get("platform", {}).get("architecture") in ("amd64", None)]
        if not plat:
            raise ImageError(f"{where}: index has no linux/amd64 image")
        desc = plat[0]
    if desc.get("mediaType") not in (*MANIFEST_TYPES, None):
        raise ImageError(f"{where}: unsupported manifest type {desc.get('mediaType')}")
    raw = _read_blob(root, desc, where)
    m = parse_manifest(raw, where)
    config_bytes = _read_blob(root, m["config"], where)
    cfg = json.loads(config_bytes)
    diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(m["layers"]):
        raise ImageError(f"{where}: config lists {len(diff_ids)} diff_ids for {len(m['layers'])} layers")
    layers = []
    for d, diff_id in zip(m["layers"], diff_ids, strict=True):
        digest = check_digest(str(d.get("digest", "")))
        p = blob_path(root, digest)
        if not p.is_file():
            raise ImageError(f"{where}: layer blob {digest} is missing")
        if p.stat().st_size != d.get("size"):
            raise ImageError(f"{where}: layer blob {digest} is truncated or the wrong size")
        layers.append(BlobLayer(p, digest, diff_id, int(d["size"]), compression_of(str(d.get("mediaType")))))
    return Image(
        config_bytes,
        tuple(layers),
        format_of_manifest(str(m["mediaType"])),
        m.get("annotations") or {},
        raw,
    )
