"""``nixfly init``: write a starter fly.toml from an image, or update an existing one in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.errors import ConfigError, ImageError, UsageError
from nixfly.fly.init import exposed_tcp_ports, starter_fly_toml, write_atomic
from nixfly.transports import parse_location


def _image_config(location_text: str) -> tuple[dict[str, Any], str | None]:
    """The image's config dict, and the reference to record as [build] image (registry images only)."""
    from nixfly.sources import open_image

    location = parse_location(location_text, bare_paths=True)
    image = open_image(location)
    try:
        config = json.loads(image.config_bytes)
    except ValueError:
        raise ImageError(f"{location_text}: the image config is not JSON") from None
    if not isinstance(config, dict):
        raise ImageError(f"{location_text}: the image config is not a JSON object")
    ref = location_text.removeprefix("docker://") if location.ref is not None else None  # as written
    return config, ref


@cli.command("init")
@click.option(
    "--image",
    "image",
    metavar="LOCATION",
    help="Image to read ExposedPorts from (oci:DIR, docker-archive:FILE, docker://REF).",
)
@click.option("--app", "app", metavar="NAME", help="Fly app name (required for a new file).")
@click.option("--region", metavar="CODE", help="Primary region, e.g. ams.")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("fly.toml"),
    show_default=True,
    help="File to write.",
)
@click.option("--force", is_flag=True, help="Update an existing file (its comments and layout are kept).")
@click.option("--check-path", metavar="PATH", default=None,
              help="HTTP health-check path, e.g. /healthz (default: no check rather than a guessed /).")  # fmt: skip
def init_command(
    image: str | None, app: str | None, region: str | None, output: Path, force: bool, check_path: str | None
) -> None:
    """Write a starter fly.toml: the app, an http_service on the image's exposed port and, with
    --check-path, a health check."""
    existing: str | None = None
    try:
        exists = output.exists()
    except OSError as e:  # e.g. a name too long for the system
        raise UsageError(f"{output}: {e.strerror}") from None
    if exists:
        if not force:
            raise UsageError(f"{output} already exists; pass --force to update it (comments and layout are kept)")
        from nixfly.fsutil import CONFIG_FILE_MAX, read_text_file  # a regular file, bounded (not /dev/zero)

        try:
            existing = read_text_file(output, CONFIG_FILE_MAX, error=ConfigError)
        except OSError as e:
            raise ConfigError(f"{output}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    config, ref = _image_config(image) if image else ({}, None)
    text = starter_fly_toml(app, config, existing, region=region, image_ref=ref, check_path=check_path)
    try:
        write_atomic(output, text)
    except OSError as e:
        raise UsageError(f"{output}: cannot write: {e.strerror or e}") from None
    ports = exposed_tcp_ports(config)
    port_note = f"internal_port {ports[0]} from the image" if ports else "no port from an image"
    click.echo(f"{'updated' if existing is not None else 'wrote'} {output} ({port_note})")
