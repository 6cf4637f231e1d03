"""``nixfly inspect``: what an image is made of — layers, sizes, and the store paths that take the room,
each with the chain of references that pulls it in."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nixfly.cli.app import cli
from nixfly.cli.common import emit_json, human_size, registry_options, show_progress, stderr_console, transport_options
from nixfly.errors import UsageError
from nixfly.image import Image
from nixfly.inspect import (
    FileEntry,
    InspectReport,
    ReferrerReport,
    WhyReport,
    inspect_image,
    list_files,
    store_name,
    suggest,
    why,
)
from nixfly.sources import open_image
from nixfly.transports import Location, parse_location

if TYPE_CHECKING:
    from nixfly.registry.client import RegistryOptions

_SHOWN_PATHS = 3  # store paths listed per layer row; the rest are counted


def _location(text: str) -> Location:
    # A missing bare path would otherwise be taken for a registry reference and fail obscurely.
    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
        raise UsageError(f"{text}: no such file or directory (a registry image is written docker://REF)")
    return parse_location(text, bare_paths=True)


def _referrers(loc: Location, digest: str, options: RegistryOptions | None) -> tuple[ReferrerReport, ...] | None:
    """The image's OCI referrers (SBOMs, signatures); None where the location has no place for them."""
    from nixfly.sinks import open_referrers

    with open_referrers(loc, options) as store:
        if store is None:
            return None
        found = store.list(digest)
    return tuple(ReferrerReport(x.artifact_type, x.digest, x.size) for x in sorted(found, key=lambda x: x.digest))


def _names(paths: tuple[str, ...], limit: int) -> str:
    names = [store_name(p) for p in paths]
    more = f" +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _words(value: tuple[str, ...] | None) -> str:
    return "—" if value is None else " ".join(value) or '""'


def _print_human(where: str, r: InspectReport, con: Console) -> None:
    unc = r.uncompressed_size
    facts = [
        ("image", where),
        ("digest", r.digest),
        ("media type", r.media_type),
        ("config", r.config_digest),
        ("platform", r.platform),
        ("created", r.created or "—"),
        ("entrypoint", _words(r.entrypoint)),
        ("cmd", _words(r.cmd)),
    ]
    if r.working_dir:
        facts.append(("workdir", r.working_dir))
    if r.user:
        facts.append(("user", r.user))
    if r.exposed_ports:
        facts.append(("ports", ", ".join(r.exposed_ports)))
    facts += [(("env" if i == 0 else ""), e) for i, e in enumerate(r.env)]
    size = f"{human_size(r.size)} compressed" + (f", {human_size(unc)} uncompressed" if unc is not None else "")
    facts.append(("size", f"{size} in {len(r.layers)} layers"))
    width = max(len(k) for k, _ in facts)
    for k, v in facts:
        con.print(f"{k:<{width}}  {v}", markup=False, highlight=False)

    if r.processes is not None:
        _print_processes(r.processes, con)
    table = Table(title=None, show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("size", justify="right")
    if r.scanned:
        table.add_column("unpacked", justify="right")
    table.add_column("digest")
    table.add_column("kind / comment", overflow="fold")
    if r.scanned:
        table.add_column("store paths", overflow="fold")
    for lyr in r.layers:
        what = lyr.comment or lyr.created_by or "—"
        if r.scanned and lyr.store_paths and what.startswith("store paths:"):
            what = lyr.created_by or "store paths"  # the store path column says it better
        row = [str(lyr.index + 1), human_size(lyr.size)]
        if r.scanned:
            row.append(human_size(lyr.uncompressed_size or 0))
        row += [lyr.digest.removeprefix("sha256:")[:12], what]
        if r.scanned:
            row.append(_names(lyr.store_paths, _SHOWN_PATHS) or "—")
        table.add_row(*row)
    con.print()
    con.print(table)
    if r.referrers:
        con.print()
        con.print(f"referrers ({len(r.referrers)}):", highlight=False)
        for ref in r.referrers:
            con.print(f"  {ref.artifact_type or '—'}  {ref.digest}  {human_size(ref.size)}", markup=False,
                      highlight=False)  # fmt: skip
    if not r.scanned:
        return
    con.print()
    if not r.largest:
        con.print("no Nix store paths found in the image", highlight=False)
        return
    shown = len(r.largest)
    con.print(f"largest store paths ({shown} of {r.store_path_count}):", highlight=False)
    size_w = max(len(human_size(p.size)) for p in r.largest)
    name_w = max(len(p.name) for p in r.largest)
    for p in r.largest:
        chain = " → ".join(store_name(c) for c in p.chain)
        con.print(f"  {human_size(p.size):>{size_w}}  {p.name:<{name_w}}  {chain}", markup=False, highlight=False)
    _print_suggestions(suggest(r), con)


def _print_suggestions(tips: tuple[str, ...], con: Console) -> None:
    if tips:
        con.print()
        con.print("suggestions:", highlight=False)
        for t in tips:
            con.print(f"  - {t}", markup=False, highlight=False)


def _owner(e: FileEntry) -> str:
    names = f" ({e.uname or e.uid}:{e.gname or e.gid})" if e.uname or e.gname else ""
    return f"{e.uid}:{e.gid}{names}"


def _print_files(entries: list[FileEntry], out: Console) -> None:
    """One line per entry, like ``ls -l``: mode, uid:gid, size, layer (1-based), path [-> target]."""
    owners = [_owner(e) for e in entries]
    ow = max((len(o) for o in owners), default=0)
    sw = max((len(str(e.size)) for e in entries), default=0)
    for e, o in zip(entries, owners, strict=True):
        link = f" -> {e.target}" if e.type == "symlink" else (f" link to {e.target}" if e.type == "hardlink" else "")
        out.print(f"{e.mode_string}  {o:<{ow}}  {e.size:>{sw}}  L{e.layer + 1:<3} {e.path}{link}",
                  markup=False, highlight=False)  # fmt: skip


def _print_why(r: WhyReport, out: Console) -> None:
    out.print(f"{r.store_path} ({human_size(r.size)})", markup=False, highlight=False)
    out.print("  pulled in by: " + " → ".join(store_name(c) for c in r.chain), markup=False, highlight=False)
    if not r.referrers:
        out.print("  no file in the image refers to it (it is a top-level path)", highlight=False)
        return
    out.print(f"  referred to by {len(r.referrers)} files:", highlight=False)
    for e in r.referrers:
        link = f" -> {e.target}" if e.type == "symlink" else ""
        out.print(f"    L{e.layer + 1:<3} {e.path}{link}", markup=False, highlight=False)


def _files_or_why(
    loc: Location, image: Image, files: bool, layer: int | None, path: str | None, why_path: str | None,
    json_out: bool,
) -> None:  # fmt: skip
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 100000)
    if why_path is not None:
        report = why(image, why_path)
        if json_out:
            emit_json({"location": str(loc), **report.to_json()})
        else:
            _print_why(report, out)
        return
    entries = list_files(image, layer=None if layer is None else layer - 1, path=path)
    if json_out:
        emit_json({"location": str(loc), "layer": layer, "path": path, "files": [e.to_json() for e in entries]})
    else:
        _print_files(entries, out)


def _print_processes(d: dict[str, Any], con: Console) -> None:
    """The declared processes, users and boot steps the supervisor label records."""

    def say(text: str) -> None:
        con.print(text, markup=False, highlight=False)

    say("")
    say(f"processes (supervisor: {d.get('supervisor') or 'none, boot stage only'}):")
    for p in d.get("processes", []):
        if not isinstance(p, dict):
            continue
        kind = "oneshot" if p.get("oneshot") else f"restart {p.get('restart')}"
        deps = ", ".join(f"{k} {v}" for k, v in (p.get("depends_on") or {}).items())
        ready = p.get("readiness")
        extra = f"; after {deps}" if deps else ""
        if isinstance(ready, dict):
            extra += f"; ready: {ready.get('kind')}" + (f" :{ready['port']}" if ready.get("port") else "")
        cmd = shlex.join(str(w) for w in p.get("command", []))
        say(f"  {p.get('name')}  as {p.get('user')} ({p.get('uid')}:{p.get('gid')}), {kind}{extra}: {cmd}")
    users = [u for u in d.get("users", []) if isinstance(u, dict)]
    if users:
        say("users: " + ", ".join(f"{u.get('name')} ({u.get('uid')}:{u.get('gid')})" for u in users))
    steps = [b for b in d.get("boot", []) if isinstance(b, dict)]
    if steps:
        say("boot steps, in order:")
    for b in steps:
        if b.get("step") == "dir":
            say(f"  dir {b.get('path')}  owner {b.get('uid')}:{b.get('gid')}, mode {b.get('mode')}")
        else:
            say(f"  oneshot {b.get('name')}")


@cli.command()
@click.argument("location")
@click.argument("path", required=False)
@click.option("--files", is_flag=True, help="List the file tree (modes, owners, sizes, layer of each entry).")
@click.option("--layer", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --files: only layer N's own entries (1 = bottom).")  # fmt: skip
@click.option("--why", "why_path", metavar="STORE_PATH", default=None,
              help="Why STORE_PATH is in the image: its reference chain and the files that refer to it.")  # fmt: skip
@click.option("--json", "json_out", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the largest store paths to list.",
)
@click.option("--no-scan", is_flag=True, help="Only read the manifest and config: no layer is downloaded or unpacked.")
@click.option("--platform", default=None, metavar="OS/ARCH",
              help="Which image of a multi-platform index (default: this machine's, e.g. linux/amd64).")
@transport_options()
def inspect(
    location: str, path: str | None, files: bool, layer: int | None, why_path: str | None,
    json_out: bool, top: int, no_scan: bool, **o: Any,
) -> None:  # fmt: skip
    """Show what the image at LOCATION is made of: oci:DIR[:TAG], docker-archive:FILE, docker://REF,
    or a bare layout directory / archive file.

    Lists each layer with its sizes and store paths, then the largest store paths with the chain of
    references (recovered by scanning the files, as Nix does) that pulls each one into the image, and
    advice where it is obvious (headers, docs, static libraries, a compiler).

    --files [--layer N] [PATH] lists the file tree instead; --why STORE_PATH says what pulls a path in."""
    if (path is not None or layer is not None) and not files:
        raise UsageError("PATH and --layer go with --files (as in nixfly inspect --files IMAGE /etc)")
    if files and why_path is not None:
        raise UsageError("--files and --why are separate views; give one")
    loc = _location(location)
    options = registry_options(o) if loc.ref is not None else None
    from nixfly.image.platform import normalise_platform

    platform = o.get("platform")
    image = open_image(loc, options, platform=normalise_platform(platform, "--platform") if platform else None)
    if files or why_path is not None:
        _files_or_why(loc, image, files, layer, path, why_path, json_out)
        return
    progress = None
    if not no_scan and show_progress(json_out, False):
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TimeElapsedColumn(),
            console=stderr_console(), transient=True,
        )  # fmt: skip
    on_bytes = None
    if progress is not None:
        bar = progress.add_task(f"reading {len(image.layers)} layers", total=sum(x.size for x in image.layers))

        def on_bytes(n: int) -> None:
            progress.advance(bar, n)

        progress.start()
    try:
        report = inspect_image(image, top=top, scan=not no_scan, on_bytes=on_bytes)
    finally:
        if progress is not None:
            progress.stop()
    report = dataclasses.replace(report, referrers=_referrers(loc, report.digest, options))
    if json_out:
        emit_json({"location": str(loc), **report.to_json(), "suggestions": list(suggest(report))})
        return
    out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    _print_human(str(loc), report, out)
