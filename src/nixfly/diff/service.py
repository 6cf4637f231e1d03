"""``nixfly diff``'s service: open both sides, find each one's closure, compare.

A side is anything ``nixfly inspect`` opens (an OCI layout, a docker-archive, a registry reference) or a
closure in the local store (a store path, a ``./result`` link, a flake installable). For an image, the
closure comes from the SBOM attached to it when there is one with every NarSize (no layer is read);
otherwise from its layers, read once as a stream (a layer both images share is read once), store paths
and NAR sizes taken from the tar headers. For a store path, from ``nix path-info``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nixfly.diff.layers import LayerReader
from nixfly.diff.model import ClosureDiff, ImageFacts, Side, diff_sides, size
from nixfly.diff.sbomdoc import MEDIA_TYPES, SbomClosure, read_sbom
from nixfly.errors import ImageError, UsageError
from nixfly.image import Image
from nixfly.transports import Location, image_file_kind, parse_location

if TYPE_CHECKING:
    from nixfly.registry.client import RegistryClient
    from nixfly.registry.options import RegistryOptions

_TRANSPORTS = ("oci:", "docker-archive:", "docker://")


@dataclass(frozen=True)
class DiffOptions:
    registry: RegistryOptions | None = None  # credentials, TLS: for registry sides
    platform: str | None = None  # which image of an index (default this machine's)
    from_layers: bool = False  # read the layers even when an SBOM is attached
    sbom_only: bool = False  # never read layers (deploy --dry-run: a plan must not download two images)
    store_dir: str = "/nix/store"


@dataclass(frozen=True)
class StoreTarget:
    """A closure in the local Nix store: a store path, a ./result link or a flake installable."""

    text: str


Target = Location | StoreTarget


def classify(text: str, store_dir: str = "/nix/store") -> Target:
    """What the user named: an image location (as ``nixfly inspect`` reads them) or a local closure."""
    from nixfly.build.closure import is_installable

    if text.startswith(_TRANSPORTS):
        return parse_location(text)
    prefix = store_dir.rstrip("/") + "/"
    if os.path.lexists(text):
        real = os.path.realpath(text)
        if real.startswith(prefix):
            if image_file_kind(text) is not None or (Path(real) / "oci-layout").is_file():
                return parse_location(text, bare_paths=True)  # an image Nix built (dockerTools): read as one
            return StoreTarget(text)
        if is_installable(text, store_dir):
            return StoreTarget(text)
        return parse_location(text, bare_paths=True)
    if text.startswith(prefix):
        raise UsageError(f"{text}: not in the local Nix store (nix-store --realise it, or name an image)")
    if "#" in text:
        return StoreTarget(text)
    return parse_location(text, bare_paths=True)


class _Session:
    """Registry clients shared by both sides (one handshake per registry), closed at the end."""

    def __init__(self, options: RegistryOptions | None) -> None:
        self.options = options
        self.clients: dict[str, RegistryClient] = {}

    def client(self, registry: str) -> RegistryClient:
        from nixfly.registry.client import RegistryClient

        c = self.clients.get(registry)
        if c is None:
            c = self.clients[registry] = RegistryClient(registry, self.options)
        return c

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def image_facts(image: Image) -> ImageFacts:
    cfg = image.config
    inner = cfg.get("config")
    return ImageFacts(
        digest=image.manifest_digest(),
        manifest_size=len(image.manifest_bytes()),
        config_digest=image.config_digest,
        config_size=len(image.config_bytes),
        layers=tuple((lyr.digest, lyr.size) for lyr in image.layers),
        config=inner if isinstance(inner, dict) else {},
    )


def _attached_sbom(loc: Location, digest: str, session: _Session, store_dir: str) -> tuple[SbomClosure | None, str]:
    """The closure the image's attached SBOM describes, or (None, why not)."""
    from nixfly.sinks import open_referrers
    from nixfly.sinks.referrers import pick

    with open_referrers(loc, client=session.client(loc.ref.registry) if loc.ref else None) as store:
        if store is None:
            return None, "a docker-archive carries no SBOM"
        refs = store.list(digest)
        for mt in MEDIA_TYPES:
            ref = pick(refs, mt)
            if ref is not None:
                return read_sbom(store.fetch(ref, digest), mt, f"{loc} SBOM {ref.digest}", store_dir), ""
        return None, "no SBOM attached"


def _open_image(loc: Location, opts: DiffOptions, session: _Session) -> Image:
    r = loc.ref
    if r is not None:
        from nixfly.sources.registry import open_remote_image

        return open_remote_image(r, opts.registry, platform=opts.platform, client=session.client(r.registry))
    from nixfly.sources import open_image

    return open_image(loc, opts.registry, platform=opts.platform)


def _store_side(label: str, target: StoreTarget, store_dir: str) -> Side:
    from nixfly.build.closure import resolve_closure

    closure = resolve_closure([target.text], store_dir=store_dir)
    paths = {p: sp.nar_size for p, sp in closure.paths.items()}
    return Side(label, "store", paths, None, "closure from the local Nix store (nix path-info)")


def _image_side(label: str, loc: Location, opts: DiffOptions, session: _Session, reader: LayerReader) -> Side:
    image = _open_image(loc, opts, session)
    facts = image_facts(image)
    why = "--from-layers"
    if not opts.from_layers:
        try:
            found, why = _attached_sbom(loc, facts.digest, session, opts.store_dir)
        except ImageError as e:  # not JSON, not ours, not matching its descriptor: the layers still tell
            found, why = None, f"its attached SBOM is unusable ({e})"
        if found is not None and found.complete:
            return Side(label, "sbom", {p: s or 0 for p, s in found.sizes.items()}, facts)
        if found is not None:
            why = "its SBOM has no NarSize for some store paths"
        if opts.sbom_only:
            raise ImageError(f"{label}: {why} (`nixfly diff` reads its layers instead)")
    before = reader.read_bytes
    paths = reader.store_sizes(image.layers)
    read = reader.read_bytes - before
    how = (f"{why}: store paths and NAR sizes read from its {len(image.layers)} layers "
           f"({size(read)} compressed)" if read else f"{why}: store paths and NAR sizes read from its layers "
           "(already read for the other side)")  # fmt: skip
    return Side(label, "layers", paths, facts, how)


@contextmanager
def _sides(opts: DiffOptions, on_bytes: Callable[[int], None] | None) -> Iterator[Callable[[str, Target], Side]]:
    session = _Session(opts.registry)
    reader = LayerReader(opts.store_dir, on_bytes=on_bytes)
    try:

        def open_side(label: str, target: Target) -> Side:
            if isinstance(target, StoreTarget):
                return _store_side(label, target, opts.store_dir)
            return _image_side(label, target, opts, session, reader)

        yield open_side
    finally:
        session.close()


def diff(old: str, new: str, opts: DiffOptions | None = None, *, old_label: str | None = None,
         new_label: str | None = None, on_bytes: Callable[[int], None] | None = None) -> ClosureDiff:  # fmt: skip
    """Compare what ``old`` and ``new`` name (image locations or local closures; see the module doc).
    ``on_bytes`` hears compressed layer bytes as they are read (for progress)."""
    opts = opts or DiffOptions()
    targets = (classify(old, opts.store_dir), classify(new, opts.store_dir))
    with _sides(opts, on_bytes) as open_side:
        a = open_side(old_label or old, targets[0])
        b = open_side(new_label or new, targets[1])
    return diff_sides(a, b)
