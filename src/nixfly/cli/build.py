"""``nixfly build``: a Nix closure → a reproducible layered image, written to a layout or archive
(and pushed, with ``--push``)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from nixfly.build.closure import is_installable, nix_reporter
from nixfly.build.events import BuildEvents, Notes, Tee
from nixfly.build.pipeline import BuildResult
from nixfly.build.spec import (
    FileSpec,
    ImageSpec,
    PlatformSpec,
    load_spec,
    to_dict,
    validate_spec,
)
from nixfly.cli.app import cli
from nixfly.cli.common import (
    emit_json,
    human_size,
    noter,
    parse_command,
    parse_kv,
    show_progress,
    stderr_console,
    transport_options,
)
from nixfly.errors import UsageError
from nixfly.image import Image
from nixfly.transports import Location, parse_location


def _merge_spec(base: ImageSpec, roots: tuple[str, ...], o: dict[str, Any]) -> ImageSpec:
    upd: dict[str, Any] = {}
    if roots:
        upd["roots"] = list(roots)
    if o["closure_file"]:
        upd["closure_file"] = o["closure_file"]
    for key in ("name", "workdir", "user", "stop_signal", "architecture", "os", "format", "sbom"):
        if o.get(key) is not None:
            upd[key] = o[key]
    if o["entrypoint"] is not None:
        upd["entrypoint"] = parse_command(o["entrypoint"], "--entrypoint")
    if o["cmd"] is not None:
        upd["cmd"] = parse_command(o["cmd"], "--cmd")
    if o["env"]:
        upd["env"] = {**base.env, **parse_kv(o["env"], "--env")}
    if o["label"]:
        upd["labels"] = {**base.labels, **parse_kv(o["label"], "--label")}
    if o["annotation"]:
        upd["annotations"] = {**base.annotations, **parse_kv(o["annotation"], "--annotation")}
    if o["port"]:
        upd["ports"] = [*base.ports, *o["port"]]
    if o["volume"]:
        upd["volumes"] = [*base.volumes, *o["volume"]]
    if o["add"]:
        files = list(base.files)
        for a in o["add"]:
            src, sep, dest = a.rpartition(":")
            if not sep or not src or not dest.startswith("/"):
                raise UsageError(f"--add {a!r} must look like SRC:/image/path")
            files.append(FileSpec(src=str(Path(src).resolve()), dest=dest))
        upd["files"] = files
    if o["perm"]:
        perms: list[Any] = list(base.perms)
        for p in o["perm"]:
            # PATH=UID:GID[:MODE]
            path, sep, rest = p.partition("=")
            bits = rest.split(":")
            if not sep or len(bits) not in (2, 3) or not all(b.isdigit() for b in bits[:2]):
                raise UsageError(f"--perm {p!r} must look like /path=UID:GID[:MODE]")
            # The mode stays text so the spec's validator checks it ("9999" is no octal mode) like the file's.
            mode = bits[2] if len(bits) == 3 else None
            perms.append({"path": path, "uid": int(bits[0]), "gid": int(bits[1]), "mode": mode})
        upd["perms"] = perms
    if o.get("from_ref") is not None:
        upd["from"] = o["from_ref"]
    if o.get("base_etc") is not None:
        upd["base_etc"] = o["base_etc"]
    decls = [p for p in o.get("platform") or () if "=" in p]
    if decls:
        plats = []
        for d in decls:
            name, _, root = d.partition("=")
            if not root:
                raise UsageError(f"--platform {d!r} must look like OS/ARCH=ROOT (or OS/ARCH to pick one)")
            plats.append({"platform": name, "roots": [root], "closure_file": None})
        upd["platforms"] = plats
    for flag in ("bin_sh", "usr_bin_env"):
        if o[flag]:
            upd[flag] = True
    if o["no_contents"]:
        upd["contents"] = dataclasses.replace(base.contents, roots=False)
    lay: dict[str, Any] = {}
    for key, name in (("max_layers", "max_layers"), ("layering", "algorithm"), ("compression", "compression")):
        if o[key] is not None:
            lay[name] = o[key]
    if o["level"] is not None:
        lay["level"] = o["level"]
    if o["layer"]:
        lay["explicit"] = [*base.layers.explicit, *[[p for p in x.split(",") if p] for x in o["layer"]]]
    merged = to_dict(base)
    merged.update(upd)
    if lay:
        merged["layers"] = {**to_dict(base.layers), **lay}
    given = {**upd, **{f"layers.{k}": v for k, v in lay.items()}}
    return validate_spec(merged, lambda key: _flag_or_key(key, given, to_dict(base)))


# The flag that sets each key of the spec: an error about a value typed on the command line names the flag
# (`--max-layers: …`), not the nixfly.toml key the flag is merged into.
_FLAG_OF = {
    "roots": "ROOTS", "closure_file": "--closure-file", "name": "--name", "workdir": "--workdir", "user": "--user",
    "stop_signal": "--stop-signal", "architecture": "--arch", "os": "--os", "format": "--format", "sbom": "--sbom",
    "entrypoint": "--entrypoint", "cmd": "--cmd", "env": "--env", "labels": "--label", "annotations": "--annotation",
    "ports": "--port", "volumes": "--volume", "files": "--add", "perms": "--perm", "from": "--from",
    "base_etc": "--base-etc", "platforms": "--platform", "layers.max_layers": "--max-layers",
    "layers.algorithm": "--layering", "layers.compression": "--compression", "layers.level": "--level",
    "layers.explicit": "--layer",
}  # fmt: skip


def _flag_or_key(key: str, given: dict[str, Any], base: dict[str, Any]) -> str:
    """The flag that gave the value ``key`` names, else ``key`` itself (the value came from the file)."""
    parts = key.split(".")
    n = 2 if parts[0] == "layers" and len(parts) > 1 else 1
    head, rest = ".".join(parts[:n]), parts[n:]
    flag = _FLAG_OF.get(head)
    if flag is None or head not in given:
        return key
    before = base.get(parts[0]) if n == 1 else (base.get("layers") or {}).get(parts[1])
    if rest and isinstance(before, list) and rest[0].isdigit() and int(rest[0]) < len(before):
        return key  # an entry of the file's list; the flags' entries come after it
    if rest and isinstance(before, dict) and before.get(rest[0]) == given[head].get(rest[0]):
        return key  # a file's entry the flags left alone
    return flag


def _summary(result: BuildResult, output: str | None, img: Image) -> dict[str, Any]:
    """The build's JSON summary; ``img`` is the image as written (its format may differ from the build's)."""
    layers = []
    for b in result.layers:
        layers.append(
            {
                "digest": b.layer.digest,
                "diff_id": b.layer.diff_id,
                "size": b.layer.size,
                "uncompressed_size": b.layer.uncompressed_size,
                "kind": b.spec.kind,
                "store_paths": list(b.spec.store_paths),
                "built": b.built,
            }
        )
    return {
        "digest": img.manifest_digest(),
        "config_digest": img.config_digest,
        "format": img.format,
        "output": output,
        "layers": layers,
        "totals": {
            "layers": len(layers),
            "size": sum(x["size"] for x in layers),
            "uncompressed_size": sum(x["uncompressed_size"] or 0 for x in layers),
            "built": result.built_count,
            "reused": len(layers) - result.built_count,
            "from_registry": sum(1 for b in result.layers if b.remote),
            "store_paths": len(result.closure.paths),
        },
        "seconds": round(result.seconds, 3),
    }


class _NixSpinner:
    """While ``nix build`` runs for an installable: a spinner naming the derivation being built and its
    latest log line (on a terminal only). A failure's log lines are printed when nix gives up."""

    def __init__(self) -> None:
        from rich.status import Status

        self._status = Status("", console=stderr_console(), spinner="dots")
        self._running = False
        self._done = False

    def start(self, installable: str) -> None:
        self._status.update(f"nix build {installable}: evaluating")
        self._status.start()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._status.stop()
            self._running = False
        self._done = True

    def building(self, drv_name: str) -> None:
        if not self._done:
            self._status.update(f"nix: building {drv_name}")

    def log(self, drv_name: str, line: str) -> None:
        if not self._done:
            self._status.update(f"nix: building {drv_name}: {line[:100]}")

    def failed(self, details: Sequence[str]) -> None:
        self.stop()
        con = stderr_console()
        for line in details:
            con.print(line, markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("roots", nargs=-1)
@click.option("-o", "--output", help="oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], or - (archive on stdout).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Image definition (nixfly.toml).")
@click.option("--closure-file", help="Closure metadata (path-info JSON, exportReferencesGraph, closureInfo).")
@click.option("--max-layers", type=int, help="Maximum number of layers (default 100, at most 127).")
@click.option("--layering", type=click.Choice(["popularity", "auto"]), help="Layering algorithm (default auto).")
@click.option("--layer", multiple=True, help="An explicit layer: store paths or name globs, comma-separated.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), help="Layer compression (default gzip).")
@click.option("--level", help='Compression level: gzip 1-12 (default 2) or "fast" (ISA-L), zstd 1-19 (default 3).')
@click.option("--format", "format", type=click.Choice(["oci", "v2s2"]), help="Manifest format (default oci).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Layer cache (default $XDG_CACHE_HOME/nixfly).")
@click.option("--entrypoint", help='Entrypoint, as shell words or a JSON array.')
@click.option("--cmd", help="Cmd, as shell words or a JSON array.")
@click.option("-e", "--env", multiple=True, help="KEY=VALUE environment variable (repeatable).")
@click.option("--workdir", help="Working directory.")
@click.option("--user", help="User (name or uid[:gid]).")
@click.option("--port", multiple=True, help="Exposed port, e.g. 8080 or 8080/tcp (repeatable).")
@click.option("--volume", multiple=True, help="Volume path (repeatable).")
@click.option("--label", multiple=True, help="KEY=VALUE label (repeatable).")
@click.option("--annotation", multiple=True, help="KEY=VALUE manifest annotation (repeatable).")
@click.option("--stop-signal", help="Stop signal, e.g. SIGTERM.")
@click.option("--arch", "architecture", help="Override the architecture (default: from the closure's system).")
@click.option("--os", "os", help="Override the OS (default: from the closure's system).")
@click.option("--add", multiple=True, help="Extra file or directory SRC:/image/path (repeatable).")
@click.option("--perm", multiple=True, help="Ownership/mode rule /path=UID:GID[:MODE] (repeatable).")
@click.option("--bin-sh", is_flag=True, help="Link /bin/sh to a shell from the closure.")
@click.option("--usr-bin-env", is_flag=True, help="Link /usr/bin/env from the closure.")
@click.option("--no-contents", is_flag=True, help="Do not link the roots' bin/, etc/, … into /.")
@click.option("--from", "from_ref", metavar="LOCATION",
              help="Base image: docker://REF (a tag or @sha256:…), oci:DIR[:TAG] or docker-archive:FILE.")
@click.option("--base-etc", type=click.Choice(["merge", "replace"]),
              help="merge (default): keep the base's /etc/passwd and /etc/group entries beside ours; "
                   "replace: ours only.")
@click.option("--platform", "platform", multiple=True, metavar="OS/ARCH[=ROOT]",
              help="OS/ARCH=ROOT: build ROOT for that platform (repeat for an index); OS/ARCH alone picks one "
                   "of the declared platforms, or the platform of a single image.")
@click.option("--allow-index", is_flag=True, help="Push a multi-platform index even to registry.fly.io.")
@transport_options("from")
@click.option("--name", help="Image name (for archives' RepoTags).")
@click.option("--push", "push_refs", multiple=True, help="Also push to this registry reference (repeatable).")
@click.option("--no-layer-index", is_flag=True,
              help="With --push: neither read nor update the repository's index of nixfly layers.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel layer builds (default: number of cores).")
@click.option(
    "--from-cache", "from_cache", is_flag=False, flag_value="", default=None, metavar="URL[,URL…]",
    help="Take store paths missing locally from these binary caches (file://, http://, https://); "
    "alone: nix.conf's substituters.",
)  # fmt: skip
@click.option("--trusted-public-key", "trusted_keys", multiple=True, metavar="NAME:KEY",
              help="A key binary-cache signatures must verify against (repeatable; default: nix.conf's).")  # fmt: skip
@click.option("--ignore-local-store", is_flag=True,
              help="With --from-cache: take every path from the caches, even those in the local store.")  # fmt: skip
@click.option("--no-verify", is_flag=True, help="Accept binary-cache paths without a valid trusted signature.")
@click.option("--no-platform-check", is_flag=True, help="Do not check the roots' executables against the platform.")
@click.option("--sbom", type=click.Choice(["spdx", "cyclonedx", "none"]),
              help="SBOM attached to the image as an OCI referrer (default spdx).")  # fmt: skip
@transport_options()
@click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
              help="With --push: retries per request on connection errors, 429 and 5xx.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="With --push: seconds a connection may make no progress before it is retried.")  # fmt: skip
@click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True,
              help="With --push: blob uploads at once (they start while layers are still compressing).")  # fmt: skip
@click.option("--chunk-size", type=click.IntRange(min=1024), default=None, hidden=True)
@click.option("--json", "json_out", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the digest.")
def build(roots: tuple[str, ...], config_path: str | None, output: str | None, **o: Any) -> None:
    """Build ROOTS (store paths, ./result links, flake installables like .#app; . means .#default) into a
    layered image. From an installable, the image's created time is the flake's lastModified (commit time);
    otherwise SOURCE_DATE_EPOCH, else 1970-01-01T00:00:01Z."""
    cfg = Path(config_path) if config_path else (Path("nixfly.toml") if Path("nixfly.toml").is_file() else None)
    base = load_spec(cfg) if cfg else ImageSpec()
    spec = _merge_spec(base, roots, {**o, "format": o["format"], "sbom": o.get("sbom")})
    spec, single_platform, platforms = _choose_platforms(spec, o["platform"])
    if not spec.roots and not platforms:
        raise UsageError("nothing to build: give store paths / ./result / .#installable, or roots in nixfly.toml")
    push_refs: tuple[str, ...] = o["push_refs"]
    if output is None and not push_refs:
        raise UsageError("say where the image goes: -o oci:DIR[:TAG], -o docker-archive:FILE, -o -, or --push REF")
    dest = parse_location(output) if output else None
    if dest is not None and dest.ref is not None:
        raise UsageError(f"-o {output}: use --push to send the image to a registry")
    push_locations = [_push_location(r) for r in push_refs]  # every destination is checked before building
    json_out: bool = o["json_out"]
    destinations = (*([dest] if dest is not None else []), *push_locations)  # ship checks them first
    to_stdout = dest is not None and dest.caps.stdio
    quiet: bool = o["quiet"]
    resolver = _base_resolver(spec, push_locations, o, quiet or json_out)
    caches = None
    if o["from_cache"] is not None:
        from nixfly.build.bincache import cache_options

        urls = [u.strip() for u in str(o["from_cache"]).split(",") if u.strip()] or list(spec.substituters)
        keys = list(o["trusted_keys"]) or list(spec.trusted_public_keys)
        caches = cache_options(urls, keys, verify=not o["no_verify"], use_local=not o["ignore_local_store"])
    elif o["ignore_local_store"]:
        raise UsageError("--ignore-local-store needs --from-cache")
    elif o["trusted_keys"]:
        spec = dataclasses.replace(spec, trusted_public_keys=list(o["trusted_keys"]))
    if platforms:
        _build_index(spec, platforms, dest, push_locations, resolver, o, caches)
        return
    progress = None
    if show_progress(json_out, quiet) and not to_stdout:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TimeElapsedColumn(),
            console=stderr_console(), transient=True,
        )  # fmt: skip
    spinner = _NixSpinner() if progress is not None else None
    token = nix_reporter.set(spinner) if spinner is not None else None
    from nixfly.cli.common import registry_options
    from nixfly.services.ship import ShipEvents, ShipRequest, ship

    options = registry_options(o)
    uploads_bar = None
    if progress is not None and push_locations:
        from nixfly.cli.streaming import UploadBar

        uploads_bar = UploadBar(progress)
    listener: BuildEvents = Notes(noter(quiet or json_out))
    if progress is not None:
        from nixfly.cli.streaming import BuildBars

        listener = Tee(BuildBars(progress, spinner), listener)
    events = ShipEvents(build=listener, uploads=uploads_bar)
    settings = _settings(o, caches, resolver, single_platform)
    request = ShipRequest(spec, destinations, fmt=o["format"], options=options, build=settings,
                          layer_index=not o["no_layer_index"], sbom=o.get("sbom"),
                          stdout="json" if json_out else "free")  # fmt: skip
    try:
        if spinner is not None and any(is_installable(r) for r in spec.roots):
            spinner.start(next(r for r in spec.roots if is_installable(r)))
        outcome = ship(request, events)
    finally:
        if spinner is not None:
            spinner.stop()
        if token is not None:
            nix_reporter.reset(token)
        if progress is not None:
            progress.stop()
    result = outcome.results[0]
    assert outcome.image is not None
    image = outcome.image
    for w in result.warnings:
        click.echo(f"nixfly: warning: {w}", err=True)
    digest = outcome.digest
    summary = _summary(result, str(dest) if dest else None, image)
    if push_locations:
        summary["pushed"] = {"digest": outcome.written[-1].digest, "reference": outcome.pinned}
    summary["sbom"] = outcome.sbom
    if not quiet and not json_out:
        for note in outcome.notes:
            click.echo(f"note: {note}", err=True)
    summary.update(_base_summary(result))
    if json_out:
        emit_json(summary)
        return
    t = summary["totals"]
    if not quiet:
        click.echo(
            f"built {t['layers']} layers ({t['built']} new, {t['reused']} reused) from {t['store_paths']} store paths"
            + (f" ({len(result.from_base)} already in the base)" if result.from_base else "")
            + f", {human_size(t['size'])} compressed, in {result.seconds:.2f}s"
            + (f" → {dest}" if dest else ""),
            err=True,
        )
        if "pushed" in summary:
            click.echo(f"pushed {summary['pushed']['reference']}", err=True)
        if summary["sbom"]:
            for a in summary["sbom"]["attached"]:
                how = f"tag {a['tag']}" if a["tag"] else a["method"]
                click.echo(f"attached {summary['sbom']['format']} SBOM {a['digest']} to {a['to']} ({how})", err=True)
    if not to_stdout:
        click.echo(summary["pushed"]["reference"] if "pushed" in summary else digest)
    else:
        sys.stderr.write(digest + "\n")


def _push_location(text: str) -> Location:
    loc = parse_location(text)  # a malformed reference is refused here, before anything is built
    if loc.ref is None:
        raise UsageError(f"--push {text}: give a registry reference (use -o for {loc})")
    return loc


def _base_summary(result: BuildResult) -> dict[str, Any]:
    if result.base is None:
        return {}
    b = result.base
    held = len(result.from_base)  # store paths of the closure the base holds (not packed again)
    return {"base": {"name": b.name, "digest": b.digest, "layers": n_base(result), "store_paths": held}}


def n_base(result: BuildResult) -> int:
    return len(result.image.layers) - len(result.layers)


def _choose_platforms(spec: ImageSpec, flags: tuple[str, ...]) -> tuple[ImageSpec, str | None, list[PlatformSpec]]:
    """(spec, the one platform of a single image or None, the platforms of an index or [])."""
    from nixfly.build.platforms import check_platforms, platform_spec, select_platforms
    from nixfly.image.platform import normalise_platform

    picks = [p for p in flags if "=" not in p]
    declared = check_platforms(spec.platforms, "--platform" if any("=" in p for p in flags) else "platforms")
    if declared and spec.roots and not any("=" in p for p in flags) and spec.platforms:
        raise UsageError(
            "give roots either per platform ([[image.platforms]] / --platform OS/ARCH=ROOT) or once, not both"
        )
    if picks:
        if declared:
            declared = select_platforms(declared, picks)
        elif len(picks) > 1:
            raise UsageError("several platforms need a root each: --platform OS/ARCH=ROOT")
        else:
            return spec, normalise_platform(picks[0], "--platform"), []
    if len(declared) == 1:
        return platform_spec(spec, declared[0]), declared[0].platform, []
    return spec, None, declared


def _base_resolver(spec: ImageSpec, pushes: list[Location], o: dict[str, Any], quiet: bool) -> Any:
    """Opens the base with --from-creds/--from-tls-verify/--from-cert-dir; the push's --creds are used only
    when the base lives on the registry pushed to (they are never sent to another host)."""
    if not spec.base_image:
        return None
    from nixfly.cli.common import registry_options
    from nixfly.image.base import BaseImage
    from nixfly.sinks.rules import pushed_to
    from nixfly.sources.base import open_base

    flags = dict(o)
    base = parse_location(spec.base_image).ref
    if base is not None and not o.get("from_creds") and not pushed_to(base, pushes):
        flags["creds"] = None
    options = registry_options(flags, "from")

    def resolve(text: str, platform: str) -> BaseImage:
        b = open_base(text, platform, options)
        if not quiet:
            click.echo(f"base {text} ({platform}) → {b.pinned}", err=True)
        return b

    return resolve


def _build_index(
    spec: ImageSpec,
    platforms: list[PlatformSpec],
    dest: Location | None,
    pushes: list[Location],
    resolver: Any,
    o: dict[str, Any],
    caches: Any,
) -> None:
    from nixfly.cli.common import registry_options
    from nixfly.services.ship import ShipEvents, ShipRequest, ship

    destinations: list[Location] = [*([dest] if dest is not None else []), *pushes]
    quiet = o["quiet"] or o["json_out"]

    def on_platform(p: str) -> None:
        if not quiet:
            click.echo(f"building {p}", err=True)

    request = ShipRequest(spec, tuple(destinations), fmt=o["format"], options=registry_options(o),
                          build=_settings(o, caches, resolver, None), platforms=tuple(platforms),
                          layer_index=not o["no_layer_index"], allow_index=o["allow_index"], sbom=o.get("sbom"),
                          stdout="json" if o["json_out"] else "free")  # fmt: skip
    outcome = ship(request, ShipEvents(build=Notes(noter(quiet)), on_platform=on_platform))
    for r in outcome.results:
        for w in r.warnings:
            click.echo(f"nixfly: warning: {r.platform}: {w}", err=True)
    for note in outcome.notes if not quiet else ():
        click.echo(f"note: {note}", err=True)
    index = outcome.index
    assert index is not None
    digest = outcome.digest
    seconds = sum(r.seconds for r in outcome.results)
    summary: dict[str, Any] = {
        "digest": digest,
        "media_type": index.media_type,
        "format": index.format,
        "output": str(dest) if dest else None,
        "platforms": [
            {**_summary(r, None, e.image), "platform": e.platform, **_base_summary(r)}
            for r, e in zip(outcome.results, index.entries, strict=True)
        ],
        "seconds": round(seconds, 3),
    }
    if pushes:
        summary["pushed"] = {"digest": outcome.written[-1].digest, "reference": outcome.pinned}
    if o["json_out"]:
        emit_json(summary)
        return
    if not o["quiet"]:
        for e in index.entries:
            click.echo(f"{e.platform}: {e.image.manifest_digest()} ({len(e.image.layers)} layers)", err=True)
        click.echo(f"index of {len(index.entries)} platforms in {seconds:.2f}s" + (f" → {dest}" if dest else ""),
                   err=True)  # fmt: skip
        if pushes:
            click.echo(f"pushed {summary['pushed']['reference']}", err=True)
    click.echo(summary["pushed"]["reference"] if pushes else digest)


def _settings(o: dict[str, Any], caches: Any, resolver: Any, platform: str | None) -> Any:
    from nixfly.services.ship import BuildSettings

    return BuildSettings(cache_dir=Path(o["cache_dir"]) if o["cache_dir"] else None, workers=o["jobs"], caches=caches,
                         verify=not o["no_verify"], platform_check=not o["no_platform_check"], platform=platform,
                         base=resolver)  # fmt: skip
