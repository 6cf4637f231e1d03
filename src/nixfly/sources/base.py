"""Resolving a base image (``--from`` / ``[image] from``) for one platform: any source location, pinned to
the digest of the manifest it resolved to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixfly.errors import ImageError, NixflyError, UsageError
from nixfly.image.base import BaseImage, config_platform
from nixfly.image.platform import platform_matches
from nixfly.transports import parse_location

if TYPE_CHECKING:
    from nixfly.registry.client import RegistryOptions


def open_base(text: str, platform: str, options: RegistryOptions | None = None) -> BaseImage:
    """The base image ``text`` names, for ``platform`` (``linux/amd64``).

    A registry reference by tag is resolved once and pinned to the platform manifest's digest; one by digest
    (``…@sha256:…``) is fetched by that digest exactly (an index so named is searched for the platform). An
    index lacking the platform, or an image whose config declares another platform, is an error."""
    try:
        loc = parse_location(text)
    except UsageError as e:
        raise UsageError(f"--from {text}: {e}") from None
    try:
        ref = loc.ref
        if ref is not None:
            from nixfly.registry.client import RegistryClient
            from nixfly.sources.registry import image_from_manifest, resolve_manifest

            client = RegistryClient(ref.registry, options)
            m = resolve_manifest(client, ref, platform)
            image = image_from_manifest(client, ref, m)
            name, digest = text.removeprefix("docker://"), m.digest
        else:
            if loc.caps.stdio:
                raise UsageError("a base image cannot be read from stdin; save it to a file first")
            from nixfly.sources import open_image

            image = open_image(loc, platform=platform)
            name, digest = str(loc), image.manifest_digest()
    except NixflyError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith("--from") else f"base image {text}: {msg}") from None
    have = config_platform(image.config_bytes)
    if have is not None and not platform_matches(have, platform):
        raise ImageError(f"base image {text} is for {have}, not {platform} (the image's platform)")
    return BaseImage(image, name, digest, have)
