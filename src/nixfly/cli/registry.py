"""``nixfly push``, ``pull``, ``copy`` and ``tags``: talk to OCI registries directly (no Docker, no skopeo).

Locations are written like skopeo's: ``oci:DIR[:TAG]``, ``docker-archive:FILE``, ``docker://REF`` (a bare
REF means ``docker://``). Pushes print the digest-pinned ``name@sha256:…`` reference on stdout.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nixfly.cli.app import cli
from nixfly.cli.common import emit_json, human_size, show_progress, stderr_console, transport_options
from nixfly.errors import ImageError, UsageError
from nixfly.image import Image
from nixfly.image.mediatypes import INDEX_TYPES, ManifestFormat
from nixfly.registry.auth import Credentials, parse_creds
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference, parse_reference, parse_repository
from nixfly.sinks.registry import BlobOutcome, PushProgress, PushResult, push_image
from nixfly.sources.registry import image_from_manifest, open_remote_image, resolve_manifest
from nixfly.transports import ArchiveLocation, LayoutLocation, Location, RegistryLocation, parse_location


def _common_options(f: Any) -> Any:
    for o in reversed(
        [
            click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True,
                         help="Blob transfers at once."),
            click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
                         help="Retries per request on connection errors, 429 and 5xx."),
            click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
                         help="Seconds a connection may make no progress before it is retried."),
            click.option("--chunk-size", type=click.IntRange(min=1024), default=None, hidden=True),
            click.option("--json", "json_out", is_flag=True, help="Print a JSON result on stdout."),
            click.option("-q", "--quiet", is_flag=True, help="Print only the result (no progress)."),
        ]
    ):  # fmt: skip
        f = o(f)
    return f


def _options(o: dict[str, Any], prefix: str = "") -> RegistryOptions:
    k = f"{prefix}_" if prefix else ""
    creds_text = o.get(f"{k}creds") or o.get("creds")
    flag = f"--{prefix}-creds" if prefix and o.get(f"{k}creds") else "--creds"
    creds: Credentials | None = parse_creds(creds_text, flag) if creds_text else None
    tls = o.get(f"{k}tls_verify")
    if tls is None:
        tls = o.get("tls_verify")
    cert_dir = o.get(f"{k}cert_dir") or o.get("cert_dir")
    kw: dict[str, Any] = {}
    if o.get("chunk_size"):
        kw["chunk_size"] = kw["monolithic_max"] = int(o["chunk_size"])
    return RegistryOptions(
        credentials=creds,
        tls_verify=True if tls is None else bool(tls),
        cert_dir=cert_dir,
        timeout=float(o.get("timeout") or 60.0),
        retries=int(o["retries"] if o.get("retries") is not None else 5),
        parallel=int(o.get("parallel") or 4),
        **kw,
    )


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

    def blob_finished(self, digest: str, outcome: BlobOutcome) -> None:
        with self.lock:
            if digest in self.tasks:
                t = self.tasks[digest]
                total = self.progress.tasks[t].total or 0
                self.progress.update(t, completed=total, description=f"{digest[7:19]} {outcome}")


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr_console(), transient=True,
    )  # fmt: skip


def _push_with_progress(
    image: Image,
    refs: list[str],
    *,
    fmt: ManifestFormat | None,
    options: RegistryOptions,
    mount_from: list[str],
    o: dict[str, Any],
) -> PushResult:
    if show_progress(bool(o.get("json_out")), bool(o.get("quiet"))):
        bar = _progress_bar()
        with bar:
            return push_image(image, refs, fmt=fmt, options=options, mount_from=mount_from,
                              progress=_RichPushProgress(bar))  # fmt: skip
    return push_image(image, refs, fmt=fmt, options=options, mount_from=mount_from)


def _report_push(result: PushResult, o: dict[str, Any], verb: str = "pushed") -> None:
    if o.get("json_out"):
        emit_json(result.to_json())
        return
    if not o.get("quiet"):
        stderr_console().print(
            f"{verb} {', '.join(result.references)}: {result.uploaded_blobs} blobs uploaded "
            f"({human_size(result.uploaded_bytes)}), {result.skipped_blobs} already there, "
            f"{result.mounted_blobs} mounted"
        )
    click.echo(result.reference)


def _open_source(loc: Location, options: RegistryOptions, platform: str | None = None) -> Image:
    if isinstance(loc, RegistryLocation):
        return open_remote_image(loc.reference, options, platform=platform)
    from nixfly.sources import open_image

    return open_image(loc)


def _dest_refs(dests: tuple[str, ...]) -> list[str]:
    refs = []
    for d in dests:
        loc = parse_location(d)
        if not isinstance(loc, RegistryLocation):
            raise UsageError(f"{d}: push sends images to registries; use nixfly copy to write {loc}")
        parse_reference(loc.reference)  # fail early on a malformed reference
        refs.append(loc.reference)
    return refs


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

    Only blobs the registry lacks are uploaded; the manifest goes last, under every tag given. Prints the
    digest-pinned reference (name@sha256:…) that nixfly deploy takes.
    """
    refs = _dest_refs(destinations)
    options = _options(o, "dest")  # --dest-* (skopeo's spelling) or the plain --creds/--tls-verify/--cert-dir
    src_path = Path(source)
    if source.endswith(".toml") and not source.startswith(("oci:", "docker-archive:")):
        if not src_path.is_file():
            raise UsageError(f"{source}: no such file")
        from nixfly.build.pipeline import build_image
        from nixfly.build.spec import load_spec

        spec = load_spec(src_path)
        built = build_image(spec)
        image = built.image
    else:
        loc = parse_location(source, bare_paths=True)
        if isinstance(loc, ArchiveLocation) and loc.path is None:
            raise UsageError("push cannot read an image from stdin; give a file")
        image = _open_source(loc, options)
    result = _push_with_progress(image, refs, fmt=fmt, options=options, mount_from=list(mount_from), o=o)
    notes: list[str] = []  # the image's SBOM goes along (for a nixfly.toml, the one made now)
    if source.endswith(".toml") and not source.startswith(("oci:", "docker-archive:")):
        from nixfly.sbom.attach import attach_built

        notes = attach_built(built, spec.sbom, spec.name, refs, result.format, result.reference, options)
    elif isinstance(loc, LayoutLocation):
        from nixfly.sinks.referrers import carry_layout_referrers

        notes = carry_layout_referrers(loc.path, image.manifest_digest(), result.digest, refs, options)
    for note in notes if not o.get("quiet") and not o.get("json_out") else []:
        click.echo(f"note: {note}", err=True)
    _report_push(result, o)


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
    src = parse_location(source)
    if not isinstance(src, RegistryLocation):
        raise UsageError(f"{source}: pull reads from a registry (docker://REF); use nixfly copy for {src}")
    dest = parse_location(destination, bare_paths=False)
    options = _options(o)
    image = open_remote_image(src.reference, options, platform=platform)
    digest = _write_local(image, dest, options, o, src.reference)
    ref = parse_reference(src.reference)
    if o.get("json_out"):
        emit_json({"digest": digest, "reference": ref.pinned(digest), "destination": str(dest)})
        return
    if not o.get("quiet"):
        stderr_console().print(f"pulled {ref} → {dest}")
    click.echo(ref.pinned(digest))


def _write_local(image: Image, dest: Location, options: RegistryOptions, o: dict[str, Any], name: str) -> str:
    """Write a (possibly remote, lazily streamed) image to a layout or archive; returns its digest."""
    if isinstance(dest, LayoutLocation):
        from nixfly.sinks.layout import write_layout

        if show_progress(bool(o.get("json_out")), bool(o.get("quiet"))):
            with _progress_bar() as bar:
                task = bar.add_task("downloading", total=sum(lyr.size for lyr in image.layers))
                return write_layout(_counting(image, (bar, task)), dest)
        return write_layout(image, dest)
    if isinstance(dest, ArchiveLocation):
        from nixfly.sinks.archive import write_archive

        if dest.path is None:
            raise UsageError("writing an archive to stdout is not supported here; give a file")
        write_archive(image, dest)
        return image.manifest_digest()
    raise UsageError(f"{dest}: expected oci:DIR[:TAG] or docker-archive:FILE")


def _counting(image: Image, hook: tuple[Progress, TaskID]) -> Image:
    """The same image whose layer reads advance a progress bar."""
    from nixfly.registry.progress_io import ProgressLayer

    bar, task = hook
    layers = tuple(ProgressLayer(lyr, lambda n: bar.advance(task, n)) for lyr in image.layers)
    return Image(image.config_bytes, layers, image.format, image.annotations, image.raw_manifest)


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
    src = parse_location(source, bare_paths=True)
    dest = parse_location(destination)
    src_opts, dest_opts = _options(o, "src"), _options(o, "dest")
    image = _open_source(src, src_opts, platform)
    if isinstance(dest, RegistryLocation):
        dref = parse_reference(dest.reference)
        mount: list[str] = []
        if isinstance(src, RegistryLocation):
            sref = parse_reference(src.reference)
            if sref.registry == dref.registry and sref.repository != dref.repository:
                mount = [sref.repository]
        result = _push_with_progress(image, [dest.reference], fmt=fmt, options=dest_opts, mount_from=mount, o=o)
        _report_push(result, o, "copied to")
        return
    if fmt is not None:
        image = image.with_format(fmt)
    digest = _write_local(image, dest, src_opts, o, source)
    if o.get("json_out"):
        emit_json({"digest": digest, "reference": f"{dest}@{digest}", "destination": str(dest)})
        return
    if not o.get("quiet"):
        stderr_console().print(f"copied {source} → {dest}")
    click.echo(digest)


@cli.command()
@click.argument("repository")
@transport_options()
@_common_options
def tags(repository: str, **o: Any) -> None:
    """List the releases in REPOSITORY: each tag with its digest and created time, newest first."""
    loc = parse_location(repository)
    if not isinstance(loc, RegistryLocation):
        raise UsageError(f"{repository}: tags lists a registry repository, as in registry.fly.io/app")
    ref = parse_repository(loc.reference)
    options = _options(o)
    with RegistryClient(ref.registry, options) as client:
        releases = list_releases(client, ref)
    if o.get("json_out"):
        emit_json({"repository": ref.name, "tags": releases})
        return
    for r in releases:
        click.echo(f"{r['tag']}\t{r['digest']}\t{r['created'] or '-'}")


def list_releases(client: RegistryClient, repo: Reference) -> list[dict[str, Any]]:
    """Every tag of ``repo`` with its manifest digest and image creation time, newest first."""
    from nixfly.sinks.referrers import is_fallback_tag

    names = [t for t in client.list_tags(repo.repository) if not is_fallback_tag(t)]  # referrers, not releases

    def one(tag: str) -> dict[str, Any]:
        r = repo.with_tag(tag)
        top = client.get_manifest(r.repository, tag)
        created: str | None = None
        try:
            m = resolve_manifest(client, r) if top.media_type in INDEX_TYPES else top
            cfg = image_from_manifest(client, r, m).config
            created = str(cfg["created"]) if cfg.get("created") else None
        except (ImageError, UsageError):
            created = None  # an index without our platform, or a foreign artefact: still list the tag
        return {"tag": tag, "digest": top.digest, "mediaType": top.media_type, "created": created,
                "reference": r.pinned(top.digest)}  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, min(8, client.options.parallel * 2))) as pool:
        releases = list(pool.map(one, names))
    # Newest first; equal or unknown times fall back to the tag name, descending, for a stable order.
    releases.sort(key=lambda r: (r["created"] or "", r["tag"]), reverse=True)
    return releases
