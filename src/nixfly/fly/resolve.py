"""Resolve a tagged image reference to its digest once, so a moving tag is never deployed, and read what a
deploy must check about an image before any write (:func:`inspect_image`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from nixfly.errors import RegistryError
from nixfly.fsutil import load_json
from nixfly.registry.reference import parse_reference

if TYPE_CHECKING:
    from nixfly.registry.options import RegistryOptions


class ImageUnreadable(RegistryError):
    """The registry could not be asked about the image (unreachable, refused, an error answer): nothing is
    known about the image itself."""


class BadImage(RegistryError):
    """The registry answered, and the image is not one a deploy can use (missing, no linux/amd64 entry,
    no config)."""


def is_pinned(image: str) -> bool:
    """Whether ``image`` names a digest (``NAME@sha256:…``)."""
    return "@" in image


def resolve_tag(image: str, options: RegistryOptions | None = None) -> str:
    """``image`` pinned by digest: a ``NAME[:TAG]`` is looked up in its registry (with the usual
    credentials: registry.fly.io takes the Fly token) and the manifest bytes are checked against the
    digest the registry names. A reference that is already pinned is returned unchanged."""
    from nixfly.registry.client import RegistryClient

    ref = parse_reference(image)
    if ref.digest is not None:
        return ref.pinned(ref.digest)
    tag = ref.tag or "latest"
    try:
        with RegistryClient(ref.registry, options) as client:
            manifest = client.get_manifest(ref.repository, tag)
    except RegistryError as e:
        raise RegistryError(f"cannot resolve image {image} to a digest: {e}") from None
    except httpx.HTTPError as e:  # whatever the client does not map itself is still one line
        raise RegistryError(f"cannot resolve image {image} to a digest: {type(e).__name__}: {e}") from None
    return ref.pinned(manifest.digest)


@dataclass(frozen=True)
class ImageFacts:
    """What a deploy must know about an image before it sends anything: how it starts and what it listens on."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    exposed_ports: tuple[int, ...]  # TCP and UDP port numbers the config exposes


def inspect_image(image: str, options: RegistryOptions | None = None) -> ImageFacts:
    """Read the manifest (by digest: the registry must have it) and the config of a pinned image, with the
    registry's usual credentials (``--creds`` in ``options``). Through an index, the linux/amd64 entry
    (what Fly Machines run). RegistryError, one line, when the registry does not have the digest or cannot
    be read."""
    from nixfly.image.platform import choose_platform
    from nixfly.registry.client import RegistryClient

    ref = parse_reference(image)
    if ref.digest is None:
        raise RegistryError(f"image {image} is not pinned by digest")
    try:
        with RegistryClient(ref.registry, options) as client:
            try:
                manifest = client.get_manifest(ref.repository, ref.digest)
            except RegistryError as e:
                if "not found" in str(e):  # the client's 404 (it has no error type of its own for one)
                    raise BadImage(
                        f"registry {ref.registry} does not have image {image}: push it first (nixfly push), "
                        "or pass the registry's credentials with --creds"
                    ) from None
                raise
            body = manifest.json()
            if isinstance(body.get("manifests"), list):
                entry = choose_platform([e for e in body["manifests"] if isinstance(e, dict)], "linux/amd64")
                if entry is None:
                    raise BadImage(f"image {image} has no linux/amd64 manifest; Fly Machines run linux/amd64")
                manifest = client.get_manifest(ref.repository, str(entry.get("digest")))
                body = manifest.json()
            config = body.get("config")
            digest = config.get("digest") if isinstance(config, dict) else None
            if not isinstance(digest, str):
                raise BadImage(f"image {image}: the manifest names no config")
            raw = client.get_blob_bytes(ref.repository, digest, max_size=4 * 1024 * 1024)
    except BadImage:
        raise
    except RegistryError as e:
        raise ImageUnreadable(f"cannot read image {image}: {e}") from None
    except httpx.HTTPError as e:
        raise ImageUnreadable(f"cannot read image {image}: {type(e).__name__}: {e}") from None
    try:
        cfg = load_json(raw).get("config") or {}  # a 4 MiB nesting is refused, not a RecursionError
    except (ValueError, AttributeError):
        raise BadImage(f"image {image}: its config is not JSON") from None
    if not isinstance(cfg, dict):
        cfg = {}
    ports = []
    for key in cfg.get("ExposedPorts") or {}:
        number = str(key).split("/", 1)[0]
        if number.isdigit():
            ports.append(int(number))
    return ImageFacts(
        tuple(str(x) for x in cfg.get("Entrypoint") or ()),
        tuple(str(x) for x in cfg.get("Cmd") or ()),
        tuple(sorted(set(ports))),
    )
