"""The closure an attached SBOM describes: store path → NarSize, from the SPDX or CycloneDX document nixfly
writes (``sbom/spdx.py``, ``sbom/cyclonedx.py``). Plain JSON reading: the SBOM libraries are not needed to
read back what they wrote, and a diff of two 2,000-path closures should not pay for loading them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nixfly.errors import ImageError
from nixfly.nixbase32 import STORE_BASENAME

SPDX = "application/spdx+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
MEDIA_TYPES = (SPDX, CYCLONEDX)  # in order of preference
_NAR_SIZE = re.compile(r"NarSize (\d+) bytes")


@dataclass(frozen=True)
class SbomClosure:
    """Store paths with their NAR sizes (None where the document does not say) and the roots."""

    sizes: dict[str, int | None]
    roots: frozenset[str]

    @property
    def complete(self) -> bool:
        """Every store path has a NarSize: the document can stand in for the closure's metadata."""
        return bool(self.sizes) and all(s is not None for s in self.sizes.values())


def _store_path(value: object, store_dir: str) -> str | None:
    if not isinstance(value, str):
        return None
    head, _, base = value.rstrip("/").rpartition("/")
    return value if head == store_dir.rstrip("/") and STORE_BASENAME.match(base) else None


def _size(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def read_sbom(data: bytes, media_type: str, where: str, store_dir: str = "/nix/store") -> SbomClosure:
    """Parse an SPDX 2.3 or CycloneDX 1.6 JSON document nixfly attached. A document that is not one is an
    ImageError naming ``where``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ImageError(f"{where}: the attached SBOM is not JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{where}: the attached SBOM is not a JSON object")
    sizes: dict[str, int | None] = {}
    roots: set[str] = set()
    if media_type == SPDX:
        pkgs = doc.get("packages")
        if not isinstance(pkgs, list):
            raise ImageError(f"{where}: the SPDX document has no packages list")
        for p in pkgs:
            if not isinstance(p, dict):
                continue
            path = _store_path(p.get("packageFileName"), store_dir)
            if path is None:
                continue
            comment = p.get("comment") if isinstance(p.get("comment"), str) else ""
            m = _NAR_SIZE.search(str(comment))
            sizes[path] = _size(m.group(1)) if m else None
            if p.get("primaryPackagePurpose") == "APPLICATION":
                roots.add(path)
    elif media_type == CYCLONEDX:
        comps = doc.get("components", [])
        if not isinstance(comps, list):
            raise ImageError(f"{where}: the CycloneDX document's components are not a list")
        for c in comps:
            if not isinstance(c, dict) or not isinstance(c.get("properties"), list):
                continue
            props = {str(q.get("name")): q.get("value") for q in c["properties"] if isinstance(q, dict)}
            path = _store_path(props.get("nix:storePath"), store_dir)
            if path is None:
                continue
            sizes[path] = _size(props.get("nix:narSize"))
            if props.get("nixfly:root") == "true":
                roots.add(path)
    else:
        raise ImageError(f"{where}: {media_type} is not an SBOM format nixfly reads")
    return SbomClosure(sizes, frozenset(roots))
