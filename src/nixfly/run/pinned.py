"""Which image ``nixfly run`` starts: a digest-pinned registry image that is already unpacked here runs from
the cache without the network, and an image for another platform than ``--platform`` is refused.

A digest names its bytes for ever, so the manifest and config kept beside an unpacked rootfs
(``<cache>/images/<manifest hex>.json``) are as good as the registry's: both are checked against that digest
again when read. For a digest naming an index, ``images/pins/<index hex>@<os>_<arch>[_<variant>]`` holds the
digest of the manifest chosen for that platform.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.build.cache import default_cache_dir
from nixfly.errors import ImageError, NixflyError, RuntimeErrorNF
from nixfly.image import Image
from nixfly.image.digest import digest_hex, sha256_digest
from nixfly.image.mediatypes import format_of_manifest
from nixfly.image.platform import descriptor_platform, host_platform, platform_matches
from nixfly.run.unpack import cache_key
from nixfly.transports import Location, RegistryLocation

if TYPE_CHECKING:
    from nixfly.registry.options import RegistryOptions

_MAX_RECORD = 16 << 20  # a manifest (4 MiB at most in distribution) and a config, base64-encoded


def image_platform(image: Image) -> str | None:
    """``os/arch[/variant]`` the image's config declares, or None when it declares none."""
    try:
        cfg = image.config
    except ImageError:
        return None
    return descriptor_platform({k: cfg.get(k) for k in ("os", "architecture", "variant")})


def check_platform(image: Image, want: str) -> None:
    """Refuse (one line) an image whose config names a platform that does not serve ``want``."""
    have = image_platform(image)
    if have is not None and not platform_matches(have, want):
        raise RuntimeErrorNF(
            f"the image is for {have}, not {want} (--platform); it offers no other platform: "
            "run it without --platform, or run an image built for " + want
        )


def _images_dir(cache_dir: Path) -> Path:
    return cache_dir / "images"


def _pin_path(cache_dir: Path, digest: str, platform: str) -> Path:
    return _images_dir(cache_dir) / "pins" / f"{digest_hex(digest)}@{platform.replace('/', '_')}"


def _write_private(cache_dir: Path, path: Path, data: bytes) -> None:
    """Write ``path`` (under ``<cache_dir>/images``, which only we can read) whole or not at all."""
    images = _images_dir(cache_dir)
    images.mkdir(parents=True, exist_ok=True)
    os.chmod(images, 0o700)
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remember_image(image: Image, cache_dir: Path | None = None) -> None:
    """Keep ``image``'s manifest and config beside its unpacked rootfs (best effort: a run never fails
    because this could not be written; the image then just needs its registry next time)."""
    cache = cache_dir or default_cache_dir()
    path = _images_dir(cache) / f"{digest_hex(image.manifest_digest())}.json"
    if path.exists():
        return
    record = {
        "manifest": base64.b64encode(image.manifest_bytes()).decode(),
        "config": base64.b64encode(image.config_bytes).decode(),
    }
    with contextlib.suppress(OSError):
        _write_private(cache, path, json.dumps(record).encode())


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(path) or os.fstat(f.fileno()).st_size > _MAX_RECORD:
                return None
            rec = json.loads(f.read(_MAX_RECORD))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def cached_image(digest: str, platform: str, cache_dir: Path | None = None) -> Image | None:
    """The image ``digest`` names for ``platform`` if its rootfs is unpacked here, from the kept records
    (checked against the digests again); None when anything is missing or does not match."""
    cache = cache_dir or default_cache_dir()
    images = _images_dir(cache)
    manifest_digest = digest
    try:
        digest_hex(digest)
    except ImageError:
        return None  # not a sha256 digest: nothing here is kept under it
    if not (images / f"{digest_hex(digest)}.json").is_file():
        try:
            manifest_digest = _pin_path(cache, digest, platform).read_text(errors="replace").strip()[:100]
            digest_hex(manifest_digest)
        except (OSError, ImageError, ValueError):
            return None
    rec = _read_record(images / f"{digest_hex(manifest_digest)}.json")
    if rec is None:
        return None
    try:
        manifest = base64.b64decode(str(rec["manifest"]), validate=True)
        config = base64.b64decode(str(rec["config"]), validate=True)
        body = json.loads(manifest)
        config_digest = str(body["config"]["digest"])
        media_type = str(body.get("mediaType") or "application/vnd.oci.image.manifest.v1+json")
        fmt = format_of_manifest(media_type)
    except (KeyError, TypeError, ValueError, NixflyError):
        return None
    if sha256_digest(manifest) != manifest_digest or sha256_digest(config) != config_digest:
        return None
    image = Image(config, (), fmt, {}, manifest)
    if not (cache / "rootfs" / cache_key(image)).is_dir():
        return None
    return image


def open_run_image(
    location: Location, options: RegistryOptions | None, *, platform: str | None, cache_dir: Path | None
) -> Image:
    """The image ``nixfly run`` starts. A registry reference pinned by digest whose rootfs is unpacked in
    ``cache_dir`` needs no registry (nor credentials); anything else is opened as usual. With ``platform``
    given, an image for another platform is refused with one line."""
    from nixfly.registry.reference import parse_reference
    from nixfly.sources import open_image

    want = platform or host_platform()
    digest = None
    if isinstance(location, RegistryLocation):
        digest = parse_reference(location.reference).digest
    if digest is not None:
        hit = cached_image(digest, want, cache_dir)
        if hit is not None:
            if platform is not None:
                check_platform(hit, platform)
            return hit
    image = open_image(location, options, platform=platform)
    if platform is not None:
        check_platform(image, platform)
    if digest is not None and image.manifest_digest() != digest:
        # The digest named an index: remember which of its manifests serves this platform.
        cache = cache_dir or default_cache_dir()
        with contextlib.suppress(OSError):
            _write_private(cache, _pin_path(cache, digest, want), image.manifest_digest().encode())
    return image
