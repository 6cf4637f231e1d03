"""Shipping an image: build → publish → layer index → SBOM, written once, below the CLI.

``build`` (with or without ``--push``), ``push nixfly.toml`` and ``deploy --build`` hand :func:`ship` a
frozen :class:`ShipRequest` (the spec, the destinations parsed once, the format, registry options, build
settings, layer index on/off, SBOM kind, allow-index) and get a frozen :class:`ShipOutcome` back (digest,
pinned reference, what each destination wrote, notes). The CLI parses flags into the request and renders
progress (``ShipEvents``) and the outcome; the order of the steps, the rules about which destination takes
what, and the registry clients live here. Single- and multi-platform builds alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.build.events import NO_EVENTS, BuildEvents, Tee
from nixfly.errors import NixflyError
from nixfly.sinks.rules import Stdout, check_destinations, references, referrer_places
from nixfly.transports import Location, RegistryLocation

if TYPE_CHECKING:
    from nixfly.build.bincache import CacheOptions
    from nixfly.build.pipeline import BaseResolver, BuildResult
    from nixfly.build.spec import ImageSpec, PlatformSpec
    from nixfly.image import Image
    from nixfly.image.index import ImageIndex
    from nixfly.image.mediatypes import ManifestFormat
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.registry.reference import Reference
    from nixfly.sinks import Written
    from nixfly.sinks.layer_index import RegistryLayerIndex
    from nixfly.sinks.registry import PushProgress
    from nixfly.sources import ReadProgress


@dataclass(frozen=True)
class BuildSettings:
    """How the image is built (what ``build_image`` takes besides the spec and the progress hooks)."""

    cache_dir: Path | None = None
    workers: int | None = None
    caches: CacheOptions | None = None
    verify: bool = True
    platform_check: bool = True
    platform: str | None = None  # the one platform of a single image
    base: BaseResolver | None = None  # opens spec.base_image; default: sources.base.open_base, no credentials


@dataclass(frozen=True)
class ShipRequest:
    spec: ImageSpec
    destinations: tuple[Location, ...]  # parsed once; local ones first, then the registries
    fmt: ManifestFormat | None = None
    options: RegistryOptions | None = None
    build: BuildSettings = BuildSettings()
    platforms: tuple[PlatformSpec, ...] = ()  # more than none: an index, one image per platform
    layer_index: bool = True
    sbom: str | None = None  # spdx | cyclonedx | none; default the spec's
    allow_index: bool = False
    mount_from: tuple[str, ...] = ()
    # Registry destinations given as a bare repository get the tag PREFIX<first 12 hex digits of the digest>
    # (deploy's deployment-… tags).
    digest_tag: str | None = None
    dry_run: bool = False  # build and say the digest a push would have; write nothing
    stdout: Stdout = "free"  # who else writes to stdout ("json": build --json), for the stdout rule


@dataclass(frozen=True)
class ShipOutcome:
    digest: str  # of the manifest (or index) every destination holds
    pinned: str | None  # name@sha256:… of the first registry destination, None without one
    written: tuple[Written, ...]
    notes: tuple[str, ...]
    results: tuple[BuildResult, ...]  # one per platform
    image: Image | None  # as written (a single image)
    index: ImageIndex | None  # as written (an index)
    sbom: dict[str, Any] | None  # what was attached (build --json's "sbom")


@dataclass
class ShipEvents:
    """What the CLI listens to: the build's events (``build.events``: the layer plan, layers' progress, …, and
    the notes of the whole operation), upload progress while the build runs and during the push, platforms as
    they start; for an existing image, the bytes read from its source (an archive read whole, or the layers a
    copy to this machine reads)."""

    build: BuildEvents = NO_EVENTS
    uploads: PushProgress | None = None
    push: PushProgress | None = None
    on_platform: Callable[[str], None] | None = None
    reading: ReadProgress | None = None

    def note(self, text: str) -> None:
        self.build.note(text)


class Clients:
    """One registry client per registry for a whole operation: the layer index, the early uploads, the push
    and the SBOM share it (one ping, one token per scope)."""

    def __init__(self, options: RegistryOptions | None) -> None:
        self._options = options
        self._clients: dict[str, RegistryClient] = {}

    def get(self, registry: str) -> RegistryClient:
        client = self._clients.get(registry)
        if client is None:
            from nixfly.registry.client import RegistryClient

            client = self._clients[registry] = RegistryClient(registry, self._options)
        return client

    def pushing(self, refs: Sequence[Reference]) -> None:
        """The repositories pushed to: their clients ask one token for reads and writes there."""
        for r in refs:
            self.get(r.registry).auth.push_session(r.repository)

    def mapping(self) -> dict[str, RegistryClient]:
        return dict(self._clients)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


def _base(req: ShipRequest) -> BaseResolver | None:
    if req.build.base is not None or not req.spec.base_image:
        return req.build.base
    from nixfly.sources.base import open_base

    return open_base


def _layer_index(req: ShipRequest, pushes: list[Reference], clients: Clients,
                 events: ShipEvents) -> RegistryLayerIndex | None:  # fmt: skip
    """The first push destination's layer index (what it already holds), unless switched off."""
    if not pushes or not req.layer_index or req.dry_run:
        return None
    from nixfly.sinks.layer_index import RegistryLayerIndex

    index = RegistryLayerIndex(pushes[0], req.options, client=clients.get(pushes[0].registry)).load()
    if index.note:
        events.note(index.note)
    return index


def _save_layer_index(index: RegistryLayerIndex, results: Sequence[BuildResult], pushed: list[Reference],
                      clients: Clients, notes: list[str]) -> None:  # fmt: skip
    """Record this build's layers (every platform's, for an index) in every pushed repository's index; the
    push already succeeded, so a failure here is a note, not an error."""
    pairs = [(b.key, b.layer) for r in results for b in reversed(r.layers)]  # the app's (top) layers first
    repos = {(r.registry, r.repository): r for r in pushed}
    for ref in repos.values():
        try:
            index.save(pairs, ref, client=clients.get(ref.registry))
        except NixflyError as e:
            notes.append(f"the layer index of {ref.name} was not updated: {e}")


def _tagged(req: ShipRequest, locations: tuple[Location, ...], digest: str) -> tuple[Location, ...]:
    """Registry destinations given as a bare repository, tagged ``req.digest_tag`` + the digest's first hex."""
    if req.digest_tag is None:
        return locations
    tag = f"{req.digest_tag}{digest.split(':', 1)[1][:12]}"
    return tuple(
        RegistryLocation(f"{loc.ref.name}:{tag}") if loc.ref and loc.ref.tag is None and loc.ref.digest is None else loc
        for loc in locations
    )


def _named(req: ShipRequest) -> tuple[Location, ...]:
    """The destinations, an archive recording the spec's name:tag unless its location names one."""
    spec = req.spec
    name = f"{spec.name}:{spec.tag or 'latest'}" if spec.name else None
    return tuple(loc.with_default_name(name) for loc in req.destinations)


@contextlib.contextmanager
def _clients(options: RegistryOptions | None) -> Iterator[Clients]:
    clients = Clients(options)
    try:
        yield clients
    finally:
        clients.close()


def ship(req: ShipRequest, events: ShipEvents | None = None) -> ShipOutcome:
    """Build ``req.spec`` and publish it to every destination, then update the layer index of the registries
    pushed to and attach the SBOM (to a layout and every registry; a docker-archive has no place for it)."""
    events = events or ShipEvents()
    check_destinations(req.destinations, index_platform=req.platforms[0].platform if req.platforms else None,
                       allow_index=req.allow_index, sbom=req.sbom, stdout=req.stdout, paths=True)  # fmt: skip
    req = dataclasses.replace(req, destinations=_named(req))
    if req.platforms:
        with _clients(req.options) as clients:
            return _ship_index(req, events, clients)
    with _clients(req.options) as clients:
        return _ship_image(req, events, clients)


@dataclass(frozen=True)
class PublishRequest:
    """An image that exists already — ``push``, ``copy`` and ``pull`` of a layout, an archive or a registry
    image — to publish to every destination."""

    source: Location
    destinations: tuple[Location, ...]
    fmt: ManifestFormat | None = None
    options: RegistryOptions | None = None  # the destinations'
    source_options: RegistryOptions | None = None
    platform: str | None = None  # the entry of a multi-platform source (default: this machine's)
    mount_from: tuple[str, ...] = ()
    carry_referrers: bool = False  # a layout source's referrers (its SBOM) go along to the registries
    stdout: Stdout = "result"  # the command prints its result on stdout: no destination may write there


def publish_image(req: PublishRequest, events: ShipEvents | None = None) -> ShipOutcome:
    """Open the source and publish it to every destination (one client per registry); with
    ``carry_referrers``, a layout's SBOM goes along when the manifest pushed is the layout's. The destinations
    are checked (``sinks.rules``) before the source is opened."""
    from nixfly.sinks import publish
    from nixfly.sources import open_image

    events = events or ShipEvents()
    check_destinations(req.destinations, stdout=req.stdout)
    source = open_image(req.source, req.source_options, platform=req.platform, progress=events.reading)
    pushes = references(req.destinations)
    image = source if events.reading is None or pushes else _counting(source, events.reading, "downloading")
    with _clients(req.options) as clients:
        clients.pushing(pushes)
        image, written = publish(image, req.destinations, fmt=req.fmt, options=req.options, mount_from=req.mount_from,
                                 progress=events.push, clients=clients.mapping())  # fmt: skip
        notes: list[str] = []
        layout = req.source.caps.path if req.source.ref is None and req.source.caps.referrers else None
        if req.carry_referrers and layout is not None and pushes:
            from nixfly.sinks.referrers import carry_layout_referrers

            notes = carry_layout_referrers(layout, source.manifest_digest(), written[-1].digest, pushes,
                                           _options(req), clients.mapping())  # fmt: skip
    pinned = written[-1].reference if pushes else None
    return ShipOutcome(image.manifest_digest(), pinned, tuple(written), tuple(notes), (), image, None, None)


def _counting(image: Image, progress: ReadProgress, what: str) -> Image:
    """The same image whose layer reads advance ``progress``."""
    from nixfly.registry.progress_io import ProgressLayer

    progress.start(what, sum(lyr.size for lyr in image.layers))
    return image.with_layers(tuple(ProgressLayer(lyr, progress.advance) for lyr in image.layers))


def _ship_image(req: ShipRequest, events: ShipEvents, clients: Clients) -> ShipOutcome:
    from nixfly.build.pipeline import build_image
    from nixfly.image.convert import with_format
    from nixfly.sinks import format_for, publish

    spec = req.spec
    pushes = references(req.destinations)
    clients.pushing(pushes)
    index = _layer_index(req, pushes, clients, events)
    listeners = events.build
    uploads = None
    if pushes and not req.dry_run:
        # Layers go to the first registry while the build runs: each starts uploading when its compression
        # starts; the push then sends the config and the manifest.
        from nixfly.services.uploads import BuildUploads

        uploads = BuildUploads(pushes[0], _options(req), events.uploads, client=clients.get(pushes[0].registry))
        listeners = Tee(events.build, uploads)
    b = req.build
    with uploads or contextlib.nullcontext():
        result = build_image(spec, cache_dir=b.cache_dir, workers=b.workers, caches=b.caches, verify=b.verify,
                             platform_check=b.platform_check, base=_base(req), platform=b.platform,
                             known=index.lookup if index is not None else None, events=listeners)  # fmt: skip
    fmt = format_for(req.destinations, result.image, req.fmt)
    converted = with_format(result.image, fmt)
    digest = converted.manifest_digest()
    destinations = _tagged(req, req.destinations, digest)
    if req.dry_run:
        pinned = pushes[0].pinned(digest) if pushes else None
        return ShipOutcome(digest, pinned, (), (), (result,), converted, None, None)
    image, written = publish(result.image, destinations, fmt=fmt, options=req.options, mount_from=req.mount_from,
                             progress=events.push, early=uploads.early if uploads else None,
                             clients=clients.mapping())  # fmt: skip
    notes: list[str] = []
    pushed = references(destinations)
    pinned = written[-1].reference if pushed else None
    if index is not None:
        _save_layer_index(index, [result], pushed, clients, notes)
    kind = req.sbom or spec.sbom
    sbom_summary = None
    if kind in ("spdx", "cyclonedx"):
        from nixfly.build.cache import default_cache_dir
        from nixfly.sbom.attach import SbomAttacher

        sboms = SbomAttacher(result, "cyclonedx" if kind == "cyclonedx" else "spdx",
                             b.cache_dir or default_cache_dir(), spec.name)  # fmt: skip
        layouts, refs, no_place = referrer_places(destinations)
        for path in layouts:
            sboms.attach_layout(path, image)
        notes += no_place
        if refs:
            assert pinned is not None
            sboms.attach_registry(refs, image, pinned, _options(req), clients=clients.mapping())
        sbom_summary = sboms.summary()
    return ShipOutcome(digest, pinned, tuple(written), tuple(notes), (result,), image, None, sbom_summary)


def _ship_index(req: ShipRequest, events: ShipEvents, clients: Clients) -> ShipOutcome:
    from nixfly.build.platforms import build_index
    from nixfly.sinks import publish_index

    pushes = references(req.destinations)
    clients.pushing(pushes)
    index = _layer_index(req, pushes, clients, events)
    b = req.build
    res = build_index(req.spec, req.platforms, cache_dir=b.cache_dir, workers=b.workers, base=_base(req),
                      on_platform=events.on_platform, events=events.build, caches=b.caches, verify=b.verify,
                      platform_check=b.platform_check, known=index.lookup if index is not None else None)  # fmt: skip
    if req.dry_run:
        from nixfly.image.index import index_with_format
        from nixfly.sinks import format_for

        out = index_with_format(res.index, format_for(req.destinations, res.index.entries[0].image, req.fmt))
        digest = out.manifest_digest()
        return ShipOutcome(digest, pushes[0].pinned(digest) if pushes else None, (), (), res.results, None, out, None)
    written_index, written = publish_index(res.index, req.destinations, fmt=req.fmt, options=req.options,
                                           progress=events.push, allow_index=req.allow_index,
                                           clients=clients.mapping())  # fmt: skip
    notes: list[str] = []
    if index is not None:
        _save_layer_index(index, list(res.results), pushes, clients, notes)
    digest = written_index.manifest_digest()
    pinned = written[-1].reference if pushes else None
    return ShipOutcome(digest, pinned, tuple(written), tuple(notes), res.results, None, written_index, None)


def _options(req: ShipRequest | PublishRequest) -> RegistryOptions:
    from nixfly.registry.client import RegistryOptions

    return req.options or RegistryOptions()


def build_only(spec: ImageSpec, settings: BuildSettings = BuildSettings()) -> BuildResult:
    """Build without publishing (a rehearsal): the same build settings and base default as :func:`ship`."""
    from nixfly.build.pipeline import build_image

    req = ShipRequest(spec, (), build=settings)
    return build_image(spec, cache_dir=settings.cache_dir, workers=settings.workers, caches=settings.caches,
                       verify=settings.verify, platform_check=settings.platform_check, base=_base(req),
                       platform=settings.platform)  # fmt: skip
