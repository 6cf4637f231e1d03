"""The root click group. Command modules attach to it; ``nixfly.cli.main`` turns errors into one line."""

from __future__ import annotations

import click

from nixfly import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nixfly")
def cli() -> None:
    """Ship Nix closures as layered OCI images to any registry and onto Fly.io — no Docker daemon."""
