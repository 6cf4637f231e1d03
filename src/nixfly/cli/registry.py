"""``nixfly push``, ``pull``, ``copy`` and ``tags``: talk to OCI registries directly (no Docker, no skopeo).

Locations are written like skopeo's: ``oci:DIR[:TAG]``, ``docker-archive:FILE``, ``docker://REF`` (a bare
REF means ``docker://``). Pushes print the digest-pinned ``name@sha256:…`` reference on stdout.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import (
    emit_json,
    human_size,
    noter,
    registry_options,
    show_progress,
    stderr_console,
    transport_options,
)
from nixfly.errors import ImageError, RegistryError, UsageError
from nixfly.image.mediatypes import INDEX_TYPES, ManifestFormat
from nixfly.registry.client import Manifest, RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference, as_repository
from nixfly.sinks.layer_index import INDEX_TAG
from nixfly.sinks.registry import BlobOutcome, PushProgress, PushResult
from nixfly.sinks.rules import pushed_to
from nixfly.sources.registry import image_from_manifest, resolve_manifest
from nixfly.transports import Location, parse_location

if TYPE_CHECKING:  # rich loads only for a person at a terminal (progress bars)
    from rich.progress import Progress, TaskID

    from nixfly.services.ship import PublishRequest, ShipEvents, ShipOutcome


def _network_options(transfers: bool = True) -> Callable[[Any], Any]:
    """--retries/--timeout (and, for commands that move blobs, --parallel), --json, -q."""
    opts = [
        click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
                     help="Retries per request on connection errors, 429 and 5xx."),
        click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
                     help="Seconds a connection may make no progress before it is retried."),
        click.option("--json", "json_out", is_flag=True, help="Print a JSON result on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the result (no progress)."),
    ]  # fmt: skip
    if transfers:
        opts += [
            click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True,
                         help="Blob transfers at once."),
            click.option("--chunk-size", type=click.IntRange(min=1024), default=None, hidden=True),
        ]  # fmt: skip

    def deco(f: Any) -> Any:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


_common_options = _network_options()


class _RichPushProgress(PushProgress):
    """One bar per blob with transfer rate, on stderr, only at a terminal."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.lock = threading.Lock()

    def blob_started(self, digest: str, size: int) -> None:
        with self.lock:
            if digest not in self.tasks:
                self.tasks[digest] = self.progress.add_task(digest[7:19], total=size)

    def blob_advanced(self, digest: str, completed: int) -> None:
        with self.lock:
            if digest in self.tasks:
                self.progress.update(self.tasks[digest], completed=completed)

    def blob_note(self, digest: str, text: str) -> None:
        with self.lock:
            if digest in self.tasks:
                self.progress.update(self.tasks[digest], description=f"{digest[7:19]} {text}")

    def blob_finished(self, digest: str, outcome: BlobOutcome) -> None:
        with self.lock:
            if digest in self.tasks:
                t = self.tasks[digest]
                total = self.progress.tasks[t].total or 0
                self.progress.update(t, completed=total, description=f"{digest[7:19]} {outcome}")


def _progress_bar() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr_console(), transient=True,
    )  # fmt: skip


def _report_push(result: PushResult, o: dict[str, Any], verb: str = "pushed") -> None:
    if o.get("json_out"):
        emit_json(result.to_json())
        return
    if not o.get("quiet"):
        click.echo(
            f"{verb} {', '.join(result.references)}: {result.uploaded_blobs} blobs uploaded "
            f"({human_size(result.uploaded_bytes)}), {result.skipped_blobs} already there, "
            f"{result.mounted_blobs} mounted",
            err=True,
        )  # plain text: no markup or emoji codes to interpret in a reference, and no rich to import
    click.echo(result.reference)


class _ReadBar:
    """The bar of what a source has read so far (an archive read whole, the layers a local copy reads)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, what: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(what, total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _dest_locations(dests: tuple[str, ...]) -> list[Location]:
    """Push destinations, each parsed (and its reference checked) before anything is read."""
    locs: list[Location] = []
    for d in dests:
        loc = parse_location(d)
        if loc.ref is None:
            raise UsageError(f"{d}: push sends images to registries; use nixfly copy to write {loc}")
        locs.append(loc)
    return locs


@cli.command()
@click.argument("source")
@click.argument("destinations", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["oci", "v2s2"]), default=None,
              help="Manifest format (default: the image's; v2s2 for registry.fly.io).")  # fmt: skip
@click.option("--mount-from", multiple=True, metavar="REPO",
              help="Sibling repository on the same registry to mount existing blobs from (repeatable).")  # fmt: skip
@transport_options()
@transport_options("dest")
@_common_options
def push(source: str, destinations: tuple[str, ...], fmt: ManifestFormat | None, mount_from: tuple[str, ...],
         **o: Any) -> None:  # fmt: skip
    """Push SOURCE (an OCI layout, a docker-archive or a nixfly.toml to build) to DESTINATIONS.

    A docker-archive may be gzip/zstd-compressed (dockerTools.buildLayeredImage), come on stdin (-), or be
    written by a streamLayeredImage script (nixfly push ./result REF runs it). Its uncompressed layers are
    compressed as nixfly build would, so the digest matches the same image pushed from a layout.

    Only blobs the registry lacks are uploaded; the manifest goes last, under every tag given. Prints the
    digest-pinned reference (name@sha256:…) that nixfly deploy takes.
    """
    dests = _dest_locations(destinations)
    options = registry_options(o, "dest")  # --dest-* (skopeo's spelling) or the plain --creds/--tls-verify/--cert-dir
    if source.endswith(".toml") and not source.startswith(("oci:", "docker-archive:")):
        _push_spec(Path(source), dests, fmt, options, tuple(mount_from), o)
        return
    from nixfly.services.ship import PublishRequest

    src = parse_location(source, bare_paths=True)
    # The push's credentials are for its destinations: a registry source elsewhere reads with its own (looked
    # up), never with them. The image's SBOM goes along from a layout.
    source_options = options
    if src.ref is not None and not pushed_to(src.ref, dests):
        source_options = replace(options, credentials=None)
    request = PublishRequest(src, tuple(dests), fmt=fmt, options=options, source_options=source_options,
                             mount_from=tuple(mount_from), carry_referrers=True)  # fmt: skip
    outcome = _publish(request, o)
    for note in outcome.notes if not o.get("quiet") and not o.get("json_out") else []:
        click.echo(f"note: {note}", err=True)
    assert outcome.written[-1].push is not None
    _report_push(outcome.written[-1].push, o)


def _push_spec(path: Path, dests: list[Location], fmt: ManifestFormat | None, options: RegistryOptions,
               mount_from: tuple[str, ...], o: dict[str, Any]) -> None:  # fmt: skip
    """``push nixfly.toml``: build it and ship it as ``build --push`` would (layer index, SBOM, one image or,
    with ``[[image.platforms]]``, an index — refused for registry.fly.io before anything is built)."""
    from nixfly.build.events import Notes
    from nixfly.build.spec import load_spec
    from nixfly.services.ship import ShipEvents, ShipRequest, ship

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    spec = load_spec(path)
    quiet = bool(o.get("quiet") or o.get("json_out"))

    note = noter(quiet)
    request = ShipRequest(spec, tuple(dests), fmt=fmt, options=options, platforms=tuple(spec.platforms),
                          mount_from=mount_from)  # fmt: skip
    with _push_bars(o) as bars:
        outcome = ship(request, ShipEvents(build=Notes(note), push=bars))
    for text in outcome.notes:
        note(text)
    for a in (outcome.sbom or {}).get("attached", []):
        note(f"attached {outcome.sbom and outcome.sbom['format']} SBOM {a['digest']} to {a['to']} "
             f"({a['tag'] or a['method']})")  # fmt: skip
    assert outcome.written[-1].push is not None
    _report_push(outcome.written[-1].push, o)


@contextlib.contextmanager
def _push_bars(o: dict[str, Any]) -> Iterator[PushProgress | None]:
    """Upload bars on a terminal, else nothing."""
    with _bars(o) as events:
        yield events.push


@contextlib.contextmanager
def _bars(o: dict[str, Any]) -> Iterator[ShipEvents]:
    """Upload bars and the bar of what the source reads, on a terminal; else no listeners."""
    from nixfly.services.ship import ShipEvents

    if not show_progress(bool(o.get("json_out")), bool(o.get("quiet"))):
        yield ShipEvents()
        return
    bar = _progress_bar()
    with bar:
        yield ShipEvents(push=_RichPushProgress(bar), reading=_ReadBar(bar))


def _publish(request: PublishRequest, o: dict[str, Any]) -> ShipOutcome:
    """An existing image through the ship service, with bars on a terminal."""
    from nixfly.services.ship import publish_image

    with _bars(o) as events:
        return publish_image(request, events)


@cli.command()
@click.argument("source")
@click.argument("destination")
@click.option("--platform", default=None, help="os/arch to pick from a multi-platform image (default: this host).")
@transport_options()
@_common_options
def pull(source: str, destination: str, platform: str | None, **o: Any) -> None:
    """Pull registry image SOURCE into DESTINATION (oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]).

    Every blob is verified against its digest while it streams; the layout keeps the registry's manifest
    bytes, so the pulled image has the same digest.
    """
    from nixfly.services.ship import PublishRequest

    src = parse_location(source)
    ref = src.ref
    if ref is None:
        raise UsageError(f"{source}: pull reads from a registry (docker://REF); use nixfly copy for {src}")
    dest = _local_destination(parse_location(destination, bare_paths=False))
    outcome = _publish(PublishRequest(src, (dest,), source_options=registry_options(o), platform=platform), o)
    digest = outcome.digest
    if o.get("json_out"):
        emit_json({"digest": digest, "reference": ref.pinned(digest), "destination": str(dest)})
        return
    if not o.get("quiet"):
        click.echo(f"pulled {ref} → {dest}", err=True)
    click.echo(ref.pinned(digest))


def _local_destination(dest: Location) -> Location:
    if dest.ref is not None:
        raise UsageError(f"{dest}: expected oci:DIR[:TAG] or docker-archive:FILE")
    return dest


@cli.command()
@click.argument("source")
@click.argument("destination")
@click.option("--format", "fmt", type=click.Choice(["oci", "v2s2"]), default=None,
              help="Destination manifest format (default: the source's; v2s2 for registry.fly.io).")  # fmt: skip
@click.option("--platform", default=None, help="os/arch to pick from a multi-platform image (default: this host).")
@transport_options()
@transport_options("src")
@transport_options("dest")
@_common_options
def copy(source: str, destination: str, fmt: ManifestFormat | None, platform: str | None, **o: Any) -> None:
    """Copy an image from SOURCE to DESTINATION (registry, oci:DIR[:TAG] or docker-archive:FILE).

    Registry to registry, blobs stream through (never a whole image in memory) or, on the same registry,
    are mounted across repositories without transferring them.
    """
    from nixfly.services.ship import PublishRequest

    src = parse_location(source, bare_paths=True)
    dest = parse_location(destination)
    request = PublishRequest(src, (dest,), fmt=fmt, options=registry_options(o, "dest"),
                             source_options=registry_options(o, "src"), platform=platform)  # fmt: skip
    outcome = _publish(request, o)
    pushed = outcome.written[0].push
    if pushed is not None:
        _report_push(pushed, o, "copied to")
        return
    digest = outcome.digest
    if o.get("json_out"):
        emit_json({"digest": digest, "reference": f"{dest}@{digest}", "destination": str(dest)})
        return
    if not o.get("quiet"):
        click.echo(f"copied {source} → {dest}", err=True)
    click.echo(digest)


@cli.command()
@click.argument("repository")
@transport_options()
@_network_options(transfers=False)
def tags(repository: str, **o: Any) -> None:
    """List the releases in REPOSITORY: each tag with its digest and created time, newest first
    (with -q, only the tag names)."""
    loc = parse_location(repository)
    if loc.ref is None:
        raise UsageError(f"{repository}: tags lists a registry repository, as in registry.fly.io/app")
    ref = as_repository(loc.ref, repository.removeprefix("docker://"))
    options = registry_options(o)
    with RegistryClient(ref.registry, options) as client:
        releases = list_releases(client, ref)
    if o.get("json_out"):
        emit_json({"repository": ref.name, "tags": releases})
        return
    for r in releases:
        click.echo(r["tag"] if o.get("quiet") else f"{r['tag']}\t{r['digest']}\t{r['created'] or '-'}")


_REFERRERS_TAG = re.compile(r"sha256-[0-9a-f]{64}")


def list_releases(client: RegistryClient, repo: Reference) -> list[dict[str, Any]]:
    """Every tag of ``repo`` with its manifest digest and image creation time, newest first. The OCI
    referrers fallback tags (``sha256-<hex>``, where SBOMs hang) and nixfly's layer index are not releases
    and are left out."""
    names = [t for t in client.list_tags(repo.repository) if not _REFERRERS_TAG.fullmatch(t) and t != INDEX_TAG]

    def one(tag: str) -> dict[str, Any]:
        r = repo.with_tag(tag)
        top = client.get_manifest(r.repository, tag)
        created: str | None = None
        m: Manifest | None = top
        if top.media_type in INDEX_TYPES:
            try:
                m = resolve_manifest(client, r)
            except RegistryError:
                m = None  # an index without this platform's image: still list the tag
        try:
            if m is not None:
                cfg = image_from_manifest(client, r, m).config
                created = str(cfg["created"]) if cfg.get("created") else None
        except (ImageError, UsageError):
            created = None  # a foreign artefact: still list the tag
        return {"tag": tag, "digest": top.digest, "media_type": top.media_type, "created": created,
                "reference": r.pinned(top.digest)}  # fmt: skip

    with ThreadPoolExecutor(max_workers=8) as pool:
        releases = list(pool.map(one, names))
    # Newest first by the config's created time; equal times by version-aware tag order (v1.10 after
    # v1.9), highest first; tags without a readable time come last.
    releases.sort(key=_release_order, reverse=True)
    return releases


def version_key(tag: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing the digit runs of a tag as numbers: v1.9 < v1.10 < v2."""
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in re.findall(r"\d+|\D+", tag))


def _release_order(r: dict[str, Any]) -> tuple[bool, float, tuple[tuple[int, int | str], ...]]:
    when: datetime | None = None
    if r.get("created"):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(str(r["created"]))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    return (when is not None, when.timestamp() if when else 0.0, version_key(str(r["tag"])))
