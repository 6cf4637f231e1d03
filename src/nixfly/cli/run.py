"""``nixfly run IMAGE [-- CMD ARGS...]``: run a built or pushed image locally, without Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import registry_options, transport_options
from nixfly.errors import UsageError
from nixfly.run.process import parse_volume
from nixfly.run.runner import RunOptions, run_image
from nixfly.run.runtimes import RUNTIMES
from nixfly.sources import open_image
from nixfly.transports import RegistryLocation, parse_location


# Options may follow the image (people write them there); everything after "--" is the container's command.
@cli.command("run")
@click.argument("image")
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
@transport_options()
def run_cmd(
    image: str,
    command: tuple[str, ...],
    runtime: str,
    env: tuple[str, ...],
    volumes: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    cache_dir: Path | None,
    **o: Any,
) -> int:
    """Run IMAGE (an OCI layout dir, a docker-archive file or a registry reference) without Docker.

    Arguments after the image (or after --) replace the image's Cmd; its Entrypoint is kept. The
    container's exit code becomes nixfly's; SIGINT/SIGTERM are forwarded to it.
    """
    if command[:1] == ("--",):
        command = command[1:]
    loc = parse_location(image, bare_paths=True)
    if o.get("creds") and not isinstance(loc, RegistryLocation):
        raise UsageError("--creds only applies to registry references")
    img = open_image(loc, registry_options(o) if isinstance(loc, RegistryLocation) else None)
    opts = RunOptions(
        runtime=runtime,
        command=command,
        env=env,
        volumes=tuple(parse_volume(v) for v in volumes),
        workdir=workdir,
        user=user,
        cache_dir=cache_dir,
    )
    return run_image(img, opts)
