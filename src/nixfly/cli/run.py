"""``nixfly run IMAGE [-- CMD ARGS...]``: run a built or pushed image locally, without Docker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import parse_command, registry_options, transport_options
from nixfly.cli.rehearse import rehearsal_options
from nixfly.errors import UsageError
from nixfly.run.process import parse_volume
from nixfly.run.runner import RunOptions, run_image
from nixfly.run.runtimes import RUNTIMES
from nixfly.transports import parse_location


# Options may follow the image (people write them there); everything after "--" is the container's command.
@cli.command("run")
@click.argument("image", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--runtime",
    type=click.Choice(["auto", *RUNTIMES]),
    default="auto",
    show_default=True,
    help="Container runtime; auto picks runc, else bwrap, else unshare+chroot.",
)
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VAL", help="Set (or with KEY alone, pass) a variable.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CTR[:ro]", help="Bind-mount a host path.")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container.")
@click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="User (name or uid) to run as.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="nixfly cache (unpacked rootfs).")
@click.option("--entrypoint", default=None, metavar="CMD",
              help="Replace the image's Entrypoint (shell words or a JSON array); its Cmd is then not used.")
@click.option("-p", "--publish", "publish", multiple=True, metavar="[HOST:]PORT[/PROTO]",
              help="Check a port is reachable as given: the container shares the host's network, so a port "
              "is published as itself (HOST must equal PORT).")
@click.option("--platform", default=None, metavar="OS/ARCH",
              help="Which image of a multi-platform index (default: this machine's, e.g. linux/amd64).")
@transport_options()
@rehearsal_options
def run_cmd(
    image: str | None,
    command: tuple[str, ...],
    runtime: str,
    env: tuple[str, ...],
    volumes: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    cache_dir: Path | None,
    entrypoint: str | None,
    publish: tuple[str, ...],
    **o: Any,
) -> int:
    """Run IMAGE (an OCI layout dir, a docker-archive file or a registry reference) without Docker.

    Arguments after the image (or after --) replace the image's Cmd; its Entrypoint is kept. The
    container's exit code becomes nixfly's; SIGINT/SIGTERM are forwarded to it.
    """
    if command[:1] == ("--",):
        command = command[1:]
    rehearsal = {k: o.pop(k) for k in list(o) if k in _REHEARSAL_KEYS}
    if rehearsal["fly_config"] is None and any(v not in (None, False, ()) for v in rehearsal.values()):
        raise UsageError("--group, --secret, --for and the other rehearsal flags need -c/--config fly.toml")
    if rehearsal["fly_config"] is not None and (command or entrypoint or workdir or user or publish):
        raise UsageError("a rehearsal (-c) runs the process group's command from fly.toml as Fly would; "
                         "drop the command, --entrypoint, --workdir, --user and -p")  # fmt: skip
    if rehearsal["build_path"] is not None and rehearsal["fly_config"] is not None:
        from nixfly.cli.rehearse import rehearse_build

        return rehearse_build(image, volumes=volumes, env=env, runtime=runtime, cache_dir=cache_dir, **rehearsal)
    if image is None:
        raise UsageError("missing IMAGE: nixfly run IMAGE [-- COMMAND ARGS...]")
    for spec in publish:
        _check_publish(spec)
    entry = parse_command(entrypoint, "--entrypoint")
    loc = parse_location(image, bare_paths=True)
    if o.get("creds") and loc.ref is None:
        raise UsageError("--creds only applies to registry references")
    from nixfly.image.platform import normalise_platform
    from nixfly.run.pinned import open_run_image

    platform = o.get("platform")
    img = open_run_image(loc, registry_options(o) if loc.ref is not None else None,
                         platform=normalise_platform(platform, "--platform") if platform else None,
                         cache_dir=cache_dir.absolute() if cache_dir else None)  # fmt: skip
    if rehearsal["fly_config"] is not None:
        from nixfly.cli.rehearse import run_rehearsal

        del rehearsal["build_path"]
        return run_rehearsal(img, loc, volumes=volumes, env=env, runtime=runtime, cache_dir=cache_dir, **rehearsal)
    opts = RunOptions(
        runtime=runtime,
        command=command,
        env=env,
        volumes=tuple(parse_volume(v) for v in volumes),
        workdir=workdir,
        user=user,
        cache_dir=cache_dir,
        entrypoint=tuple(entry) if entry is not None else None,
    )
    return run_image(img, opts)


_REHEARSAL_KEYS = ("fly_config", "groups", "all_groups", "secret_args", "secrets_file", "require_secrets",
                   "watch_for", "rehearse_wait", "as_json", "region", "offline", "build_path")  # fmt: skip
_PUBLISH = re.compile(r"(?:(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?:(\d{1,5}):)?(\d{1,5})(?:/(tcp|udp))?")


def _check_publish(spec: str) -> None:
    """``-p`` as docker spells it, where this runtime can honour it: the container is in the host's network
    namespace, so a port is already reachable as itself and cannot be remapped."""
    m = _PUBLISH.fullmatch(spec)
    if m is None:
        raise UsageError(f"-p {spec!r}: expected [HOST:]PORT[/tcp|udp], e.g. 8080 or 8080:8080")
    host, port = m.group(1), m.group(2)
    if host is not None and host != port:
        raise UsageError(
            f"-p {spec}: the container shares this machine's network, so its port {port} is port {port} here "
            f"and cannot be published as {host}; use -p {port} (or run the app on port {host})"
        )
