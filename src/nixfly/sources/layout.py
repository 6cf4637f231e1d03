"""Read an image from an OCI image layout directory (``oci:DIR[:TAG]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from nixfly.errors import ImageError
from nixfly.fsutil import NestingError, load_json, read_regular
from nixfly.image import Image, parse_manifest
from nixfly.image.digest import check_digest, digest_hex, sha256_digest
from nixfly.image.mediatypes import INDEX_TYPES, MANIFEST_TYPES, compression_of, format_of_manifest
from nixfly.image.model import FileLayer
from nixfly.image.platform import choose_platform, descriptor_platform, entry_platforms, host_platform
from nixfly.limits import MANIFEST_MAX  # a manifest or index blob, as distribution takes them
from nixfly.transports import LayoutLocation

REF_NAME = "org.opencontainers.image.ref.name"
# Documents read whole, bounded (a JSON document costs up to ~30 times its size in memory once parsed):
CONFIG_MAX = 16 << 20  # an image config (usually a few KiB; long histories make it longer)
INDEX_JSON_MAX = 16 << 20  # index.json: about 250 bytes a tag, so 60,000 tags


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest_hex(digest)


def _read_blob(root: Path, desc: dict[str, Any], where: str, limit: int = MANIFEST_MAX) -> bytes:
    """A small blob (index, manifest, config) named by ``desc``, verified against its digest and size."""
    digest = check_digest(str(desc.get("digest", "")))
    p = blob_path(root, digest)
    size = desc.get("size")
    if isinstance(size, int) and not 0 <= size <= limit:
        raise ImageError(f"{where}: blob {digest} is {size} bytes; not a manifest or config")
    try:
        data = read_regular(p, limit, f"{where}: blob {digest}", ImageError)
    except OSError:
        raise ImageError(f"{where}: blob {digest} is missing from {root}") from None
    if "size" in desc and len(data) != desc["size"]:
        raise ImageError(f"{where}: blob {digest} has {len(data)} bytes, descriptor says {desc['size']}")
    if sha256_digest(data) != digest:
        raise ImageError(f"{where}: blob {digest} does not match its digest; the layout is corrupt")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = load_json(data)
    except NestingError as e:
        raise ImageError(f"{what} is {e}") from None
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def read_index(root: Path) -> dict[str, Any]:
    try:
        data = read_regular(root / "index.json", INDEX_JSON_MAX, f"{root}/index.json", ImageError)
    except FileNotFoundError:
        raise ImageError(f"{root} is not an OCI layout (no index.json)") from None
    except OSError as e:
        raise ImageError(f"{root}/index.json is unreadable: {e.strerror}") from None
    idx = _json_object(data, f"{root}/index.json")
    manifests = idx.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise ImageError(f"{root}/index.json has no manifests list of objects")
    return idx


def _annotations(desc: dict[str, Any]) -> dict[str, Any]:
    a = desc.get("annotations")
    return a if isinstance(a, dict) else {}


def _select(
    root: Path, manifests: list[dict[str, Any]], tag: str | None, where: str, platform: str | None = None
) -> dict[str, Any]:
    if tag is not None:
        hits = [m for m in manifests if _annotations(m).get(REF_NAME) == tag]
        if not hits:
            # Only real tag names: referrers (an SBOM) and other untagged entries have none to list.
            names = sorted({n for m in manifests if isinstance(n := _annotations(m).get(REF_NAME), str)})
            raise ImageError(f"{where}: no image tagged {tag!r} (tags: {', '.join(names) or 'none'})")
        return hits[0]
    # Referrers (an SBOM with a `subject`) sit beside the image in index.json; they are not images.
    manifests = [m for m in manifests if "subject" not in m] or manifests
    if len(manifests) != 1:
        # An index.json listing one image per platform (and no tags) is an index itself.
        if all(descriptor_platform(m.get("platform")) for m in manifests):
            return _for_platform(manifests, platform, where)
        raise ImageError(f"{where}: holds {len(manifests)} images; name one as oci:DIR:TAG")
    return manifests[0]


def _for_platform(entries: list[dict[str, Any]], platform: str | None, where: str) -> dict[str, Any]:
    if len(entries) == 1 and descriptor_platform(entries[0].get("platform")) is None:
        return entries[0]  # an index of one image that names no platform
    want = platform or host_platform()
    chosen = choose_platform(cast(list[dict[str, object]], entries), want)
    if chosen is None:
        have = ", ".join(entry_platforms(cast(list[dict[str, object]], entries))) or "none"
        raise ImageError(f"{where}: the index has no image for {want} (it has: {have})")
    return cast(dict[str, Any], chosen)


def read_layout(loc: LayoutLocation, platform: str | None = None) -> Image:
    """The image ``loc`` names; through an index, the entry for ``platform`` (default: this machine's)."""
    root = loc.path
    where = str(loc)
    idx = read_index(root)
    desc = _select(root, idx["manifests"], loc.tag, where, platform)
    depth = 0
    while desc.get("mediaType") in INDEX_TYPES:
        depth += 1
        if depth > 4:
            raise ImageError(f"{where}: indexes nested more than 4 deep")
        nested = _json_object(_read_blob(root, desc, where), f"{where}: index {desc.get('digest')}")
        subs = [m for m in nested.get("manifests") or [] if isinstance(m, dict)]
        desc = _for_platform(subs, platform, where)
    if desc.get("mediaType") not in (*MANIFEST_TYPES, None):
        raise ImageError(f"{where}: unsupported manifest type {desc.get('mediaType')}")
    raw = _read_blob(root, desc, where)
    m = parse_manifest(raw, where)
    config_bytes = _read_blob(root, m["config"], where, CONFIG_MAX)
    cfg = _json_object(config_bytes, f"{where}: config {m['config'].get('digest')}")
    rootfs = cfg.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageError(f"{where}: config has no rootfs.diff_ids list")
    if len(diff_ids) != len(m["layers"]):
        raise ImageError(f"{where}: config lists {len(diff_ids)} diff_ids for {len(m['layers'])} layers")
    layers = []
    for d, diff_id in zip(m["layers"], diff_ids, strict=True):
        digest = check_digest(str(d.get("digest", "")))
        p = blob_path(root, digest)
        if not p.is_file():
            raise ImageError(f"{where}: layer blob {digest} is missing")
        if not isinstance(d.get("size"), int) or p.stat().st_size != d["size"]:
            raise ImageError(f"{where}: layer blob {digest} is truncated or the wrong size")
        mt = str(d.get("mediaType"))
        compression_of(mt)  # an unknown layer type is refused here, not half-way through a copy
        layers.append(FileLayer(p, digest, check_digest(str(diff_id)), int(d["size"]), mt))
    return Image(
        config_bytes,
        tuple(layers),
        format_of_manifest(str(m["mediaType"])),
        _annotations(m),
        raw,
    )
