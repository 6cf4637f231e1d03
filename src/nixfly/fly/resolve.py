"""Resolve a tagged image reference to its digest once, so a moving tag is never deployed."""

from __future__ import annotations

from nixfly.errors import RegistryError
from nixfly.registry.reference import parse_reference


def is_pinned(image: str) -> bool:
    """Whether ``image`` names a digest (``NAME@sha256:…``)."""
    return "@" in image


def resolve_tag(image: str) -> str:
    """``image`` pinned by digest: a ``NAME[:TAG]`` is looked up in its registry (with the usual
    credentials: registry.fly.io takes the Fly token) and the manifest bytes are checked against the
    digest the registry names. A reference that is already pinned is returned unchanged."""
    from nixfly.registry.client import RegistryClient

    ref = parse_reference(image)
    if ref.digest is not None:
        return ref.pinned(ref.digest)
    tag = ref.tag or "latest"
    with RegistryClient(ref.registry) as client:
        try:
            manifest = client.get_manifest(ref.repository, tag)
        except RegistryError as e:
            raise RegistryError(f"cannot resolve image {image} to a digest: {e}") from None
    return ref.pinned(manifest.digest)
