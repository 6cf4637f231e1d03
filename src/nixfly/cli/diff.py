"""``nixfly diff OLD NEW``: what changes between two images, releases or closures, in Nix terms."""

from __future__ import annotations

import sys
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import emit_json, registry_options, show_progress, stderr_console, transport_options
from nixfly.diff.model import ClosureDiff, ConfigChange, Kind, PackageChange, signed, size
from nixfly.errors import UsageError

_KINDS: tuple[tuple[Kind, str], ...] = (("changed", "changed"), ("added", "added"), ("removed", "removed"),
                                        ("rebuilt", "rebuilt (same version, other inputs)"))  # fmt: skip
_VALUE_MAX = 80


def _versions(vs: tuple[str, ...]) -> str:
    return ", ".join(v or "∅" for v in vs) or "∅"


def _package_line(p: PackageChange, name_w: int) -> str:
    if p.kind == "changed":
        what = f"{_versions(p.old_versions)} → {_versions(p.new_versions)}"
    elif p.kind == "added":
        what = _versions(p.new_versions)
    elif p.kind == "removed":
        what = _versions(p.old_versions)
    else:
        n = len(p.new_paths)
        what = _versions(p.new_versions) + (f" ({n} paths)" if n > 1 else "")
    return f"  {p.name:<{name_w}}  {what:<24}  {signed(p.delta):>11}"


def _short(v: str | None) -> str:
    if v is None:
        return "∅"
    return v if len(v) <= _VALUE_MAX else v[: _VALUE_MAX - 1] + "…"


def _config_line(c: ConfigChange) -> str:
    key = f" {c.key}" if c.key else ""
    if c.hidden:
        return f"  {c.field}{key}: value hidden (looks secret), {c.change}"
    if c.change == "added":
        return f"  + {c.field}{key}" + ("" if c.field in ("ports", "volumes") else f" = {_short(c.new)}")
    if c.change == "removed":
        return f"  - {c.field}{key}" + ("" if c.field in ("ports", "volumes") else f" (was {_short(c.old)})")
    return f"  {c.field}{key}: {_short(c.old)} → {_short(c.new)}"


def print_diff(d: ClosureDiff) -> None:
    """The human report: the summary line, then packages by kind, sizes, the push, config changes."""
    say = click.echo
    say(d.summary())
    if d.same_image:
        return
    name_w = max((len(p.name) for p in d.packages), default=0)
    for kind, title in _KINDS:
        items = d.of(kind)
        if items:
            say(f"{title}:")
            for p in items:
                say(_package_line(p, name_w))
    o, n = d.old, d.new
    say(f"closure: {len(o.paths)} → {len(n.paths)} store paths, {size(o.closure_size)} → {size(n.closure_size)} "
        f"({signed(d.closure_delta)}) of NAR")  # fmt: skip
    if o.image is not None and n.image is not None:
        say(f"image: {size(o.image.compressed_size)} → {size(n.image.compressed_size)} compressed "
            f"({signed(n.image.compressed_size - o.image.compressed_size)}), {len(o.image.layers)} → "
            f"{len(n.image.layers)} layers")  # fmt: skip
    if d.wire is not None:
        w = d.wire
        cfg = f" + config {size(w.config_bytes)}" if w.config_bytes else ""
        say(f"push of NEW where OLD is: {w.layers} of {w.layers_total} layers, {size(w.layer_bytes)}{cfg} + "
            f"manifest {size(w.manifest_bytes)} = {size(w.total)}")  # fmt: skip
    if d.config:
        say("config:")
        for c in d.config:
            say(_config_line(c))


@cli.command("diff")
@click.argument("old", required=False)
@click.argument("new", required=False)
@click.option("-a", "--app", "app_name", default=None,
              help="Compare releases of this Fly app: v3, previous, current (none given: previous → current).")
@click.option("--api-url", default=None, help="Machines API base URL (default $FLY_API_URL or Fly's).")
@click.option("-t", "--access-token", default=None, help="Fly API token (default $FLY_API_TOKEN or ~/.fly).")
@click.option("--from-layers", is_flag=True, help="Read the layers even when an SBOM is attached.")
@click.option("--platform", default=None, metavar="OS/ARCH",
              help="Which image of a multi-platform index (default: this machine's).")  # fmt: skip
@click.option("--json", "json_out", is_flag=True, help="Print everything as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the one-line summary.")
@transport_options()
def diff_command(
    old: str | None, new: str | None, app_name: str | None, api_url: str | None, access_token: str | None,
    from_layers: bool, platform: str | None, json_out: bool, quiet: bool, **o: Any,
) -> None:  # fmt: skip
    """Compare OLD and NEW in Nix terms: packages changed (with versions), added, removed and rebuilt, each
    with its NAR size delta; closure and compressed image sizes; what a push of NEW sends where OLD is;
    config changes.

    OLD and NEW are images (oci:DIR[:TAG], docker-archive:FILE, docker://REF, a bare layout or archive),
    closures in the local Nix store (a store path, ./result, .#installable) or, with -a APP, releases
    (v3, previous, current). An image's closure comes from its attached SBOM (no layer is downloaded),
    else from its layers, read as a stream."""
    from nixfly.diff.releases import is_release_word
    from nixfly.diff.service import DiffOptions, diff

    if json_out and quiet:
        raise UsageError("--json and -q are separate outputs; give one")
    words = [w for w in (old, new) if w is not None]
    if app_name is None:
        if len(words) != 2:
            raise UsageError("give OLD and NEW (or -a APP to compare its releases)")
        for w in words:
            if is_release_word(w):
                raise UsageError(f"{w} names a release: pass -a APP")
    else:
        if len(words) == 0:
            words = ["previous", "current"]
        elif len(words) == 1:
            words.append("current")
    labels = list(words)
    if app_name is not None and any(is_release_word(w) for w in words):
        words, labels = _releases(words, app_name, api_url, access_token)
    platform_opt = None
    if platform:
        from nixfly.image.platform import normalise_platform

        platform_opt = normalise_platform(platform, "--platform")
    opts = DiffOptions(registry=registry_options(o), platform=platform_opt, from_layers=from_layers)
    progress = None
    if show_progress(json_out, quiet):
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]reading layers"), BarColumn(), DownloadColumn(binary_units=True),
                            TimeElapsedColumn(), console=stderr_console(), transient=True)  # fmt: skip
    on_bytes = None
    if progress is not None:
        bar = progress.add_task("layers", total=None)

        def on_bytes(n: int) -> None:
            progress.advance(bar, n)

        progress.start()
    try:
        result = diff(words[0], words[1], opts, old_label=labels[0], new_label=labels[1], on_bytes=on_bytes)
    finally:
        if progress is not None:
            progress.stop()
    if json_out:
        emit_json(result.to_json())
        return
    if quiet:
        click.echo(result.summary())
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    print_diff(result)
    sys.stdout.flush()


def _releases(words: list[str], app: str, api_url: str | None, token: str | None) -> tuple[list[str], list[str]]:
    """Release words → the images they deployed (docker:// references), and labels naming both."""
    from nixfly.diff.releases import is_release_word, pick
    from nixfly.fly.service import Connection, list_releases

    releases = list_releases(Connection(api_url, token), app)
    if not releases:
        raise UsageError(f"app {app} has no release yet (see `nixfly releases`)")
    out, labels = [], []
    for w in words:
        if is_release_word(w):
            r = pick(releases, w)
            out.append(f"docker://{r.image}")
            labels.append(f"v{r.version} ({r.image})")
        else:
            out.append(w)
            labels.append(w)
    return out, labels
