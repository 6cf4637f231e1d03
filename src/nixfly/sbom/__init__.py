"""Software bills of materials from a Nix closure: SPDX 2.3 and CycloneDX 1.6 JSON.

``from_build`` uses the exact closure a build resolved; ``from_image`` works from an image alone (the
store paths and references its layers show, completed from the local Nix store when it holds them).
``render`` turns either into the bytes of one format.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from nixfly.sbom.model import (
    FORMATS,
    MEDIA_TYPES,
    ImageFile,
    Package,
    Sbom,
    SbomFormat,
    Subject,
    format_of_media_type,
)
from nixfly.sbom.sources import from_build, from_image, subject_of


def render(sbom: Sbom, fmt: SbomFormat, *, validate: bool = False) -> bytes:
    """The SBOM as SPDX or CycloneDX JSON bytes, emitted by the format's own library. With ``validate``
    that library's validator checks it first (its cost grows with the square of the package count)."""
    if fmt == "spdx":
        from nixfly.sbom.spdx import to_spdx

        return to_spdx(sbom, validate=validate)
    from nixfly.sbom.cyclonedx import to_cyclonedx

    return to_cyclonedx(sbom, validate=validate)


def _library_version(fmt: SbomFormat) -> str:
    """The emitting library's version, without importlib.metadata (a third of a second here)."""
    if fmt == "cyclonedx":
        import cyclonedx

        return f"cyclonedx-python-lib {cyclonedx.__version__}"
    import spdx_tools

    here = Path(next(iter(spdx_tools.__path__))).parent
    return " ".join(sorted(p.name for p in here.glob("spdx_tools-*.dist-info"))) or "spdx-tools ?"


def render_key(sbom: Sbom, fmt: SbomFormat) -> str:
    """What ``render(sbom, fmt)``'s bytes depend on, hashed: the SBOM, the format, nixfly's and the
    emitting library's versions. Equal keys, equal bytes (without importing the library's model)."""
    from nixfly import __version__

    return hashlib.sha256(f"{fmt}\n{__version__}\n{_library_version(fmt)}\n{sbom!r}".encode()).hexdigest()


def render_cached(sbom: Sbom, fmt: SbomFormat, cache_root: Path) -> bytes:
    """``render``, remembered under ``cache_root/sboms`` (keyed by everything the bytes depend on, each
    file named by its own digest and checked on reading), so a no-change rebuild does not emit it again."""
    from nixfly.fsutil import atomic_write_bytes

    key = render_key(sbom, fmt)
    d = cache_root / "sboms"
    for hit in sorted(d.glob(f"{key}.*")):
        with contextlib.suppress(OSError):
            data = hit.read_bytes()
            if hashlib.sha256(data).hexdigest() == hit.suffix[1:]:
                return data
    data = render(sbom, fmt)
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs the next build a render
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / f"{key}.{hashlib.sha256(data).hexdigest()}", data)
    return data


__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "ImageFile",
    "Package",
    "Sbom",
    "SbomFormat",
    "Subject",
    "format_of_media_type",
    "from_build",
    "from_image",
    "render",
    "render_cached",
    "render_key",
    "subject_of",
]
