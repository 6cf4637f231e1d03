"""``nixfly inspect``: what an image is made of — layers, sizes, and the store paths that take the room,
each with the chain of references that pulls it in."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nixfly.cli.app import cli
from nixfly.cli.common import emit_json, human_size, show_progress, stderr_console
from nixfly.errors import UsageError
from nixfly.inspect import InspectReport, inspect_image, store_name
from nixfly.sources import open_image
from nixfly.transports import Location, RegistryLocation, parse_location

_SHOWN_PATHS = 3  # store paths listed per layer row; the rest are counted


def _location(text: str) -> Location:
    # A missing bare path would otherwise be taken for a registry reference and fail obscurely.
    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
        raise UsageError(f"{text}: no such file or directory (a registry image is written docker://REF)")
    return parse_location(text, bare_paths=True)


def _registry_options(creds: str | None, tls_verify: bool, cert_dir: Path | None) -> dict[str, Any]:
    from nixfly.registry.auth import parse_creds
    from nixfly.registry.client import RegistryOptions

    credentials = parse_creds(creds, "--creds") if creds else None
    return {"options": RegistryOptions(credentials=credentials, tls_verify=tls_verify, cert_dir=cert_dir)}


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


@cli.command()
@click.argument("location")
@click.option("--json", "json_out", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the largest store paths to list.",
)
@click.option("--no-scan", is_flag=True, help="Only read the manifest and config: no layer is downloaded or unpacked.")
@click.option("--creds", metavar="USER:PASS", default=None, help="Registry credentials (never printed).")
@click.option("--platform", default=None, metavar="OS/ARCH",
              help="Which image of a multi-platform index (default: this machine's, e.g. linux/amd64).")
@click.option(
    "--tls-verify/--no-tls-verify",
    default=True,
    show_default=True,
    help="Verify the registry's TLS certificate (--no-tls-verify also allows plain HTTP).",
)
@click.option(
    "--cert-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory with the registry's CA certificate(s) (*.crt).",
)
def inspect(
    location: str, json_out: bool, top: int, no_scan: bool, creds: str | None, tls_verify: bool,
    cert_dir: Path | None, platform: str | None = None,
) -> None:  # fmt: skip
    """Show what the image at LOCATION is made of: oci:DIR[:TAG], docker-archive:FILE, docker://REF,
    or a bare layout directory / archive file.

    Lists each layer with its sizes and store paths, then the largest store paths with the chain of
    references (recovered by scanning the files, as Nix does) that pulls each one into the image."""
    loc = _location(location)
    opts = _registry_options(creds, tls_verify, cert_dir) if isinstance(loc, RegistryLocation) else {}
    from nixfly.image.platform import normalise_platform

    image = open_image(loc, **opts, platform=normalise_platform(platform, "--platform") if platform else None)
    progress = None
    if not no_scan and show_progress(json_out, False):
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
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
    if json_out:
        emit_json({"location": str(loc), **report.to_json()})
        return
    out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    _print_human(str(loc), report, out)
