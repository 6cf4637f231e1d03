"""``nixfly run IMAGE [-- CMD ARGS...]``: run a built or pushed image locally, without Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.errors import UsageError
from nixfly.run.process import parse_volume
from nixfly.run.runner import RunOptions, run_image
from nixfly.run.runtimes import RUNTIMES
from nixfly.sources import open_image
from nixfly.transports import RegistryLocation, parse_location


def _registry_options(tls_verify: bool, creds: str | None) -> dict[str, Any]:
    # Imported here: the registry client is only needed (and only loaded) for registry references.
    from nixfly.registry.auth import parse_creds
    from nixfly.registry.client import RegistryOptions

    credentials = parse_creds(creds) if creds else None
    return {"options": RegistryOptions(credentials=credentials, tls_verify=tls_verify)}


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
@click.option("--tls-verify/--no-tls-verify", default=True, help="Verify registry TLS certificates.")
@click.option("--creds", default=None, metavar="USER:PASS", help="Registry credentials for a registry reference.")
@click.option("--platform", default=None, metavar="OS/ARCH",
              help="Which image of a multi-platform index (default: this machine's, e.g. linux/amd64).")
def run_cmd(
    image: str,
    command: tuple[str, ...],
    runtime: str,
    env: tuple[str, ...],
    volumes: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    cache_dir: Path | None,
    tls_verify: bool,
    creds: str | None,
    platform: str | None = None,
) -> int:
    """Run IMAGE (an OCI layout dir, a docker-archive file or a registry reference) without Docker.

    Arguments after the image (or after --) replace the image's Cmd; its Entrypoint is kept. The
    container's exit code becomes nixfly's; SIGINT/SIGTERM are forwarded to it.
    """
    if command[:1] == ("--",):
        command = command[1:]
    loc = parse_location(image, bare_paths=True)
    if creds and not isinstance(loc, RegistryLocation):
        raise UsageError("--creds only applies to registry references")
    reg = _registry_options(tls_verify, creds) if isinstance(loc, RegistryLocation) else {}
    from nixfly.image.platform import normalise_platform

    img = open_image(loc, **reg, platform=normalise_platform(platform, "--platform") if platform else None)
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
