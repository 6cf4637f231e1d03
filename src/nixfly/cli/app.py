"""The root click group. Command modules attach to it; ``nixfly.cli.main`` turns errors into one line.

Commands load lazily: ``nixfly build`` imports only what building needs (not the registry client, the
Fly modules or their dependencies), which keeps start-up — most of a no-change rebuild — short.
"""

from __future__ import annotations

import importlib

import click

from nixfly import __version__
from nixfly.cli.common import insecure_policy_option

# command → (module under nixfly.cli, one-line help for `nixfly --help` without importing it)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build", "Build a Nix closure into a reproducible layered image."),
    "inspect": ("inspect", "Show an image's layers, sizes and largest store paths."),
    "diff": ("diff", "Compare two images, releases or closures: packages, sizes, push bytes, config."),
    "push": ("registry", "Push an image to a registry; print the digest-pinned reference."),
    "pull": ("registry", "Pull a registry image into an OCI layout or archive."),
    "copy": ("registry", "Copy an image between registries, layouts and archives."),
    "sbom": ("sbom", "Print an image's SBOM (the attached one, or derived from its layers)."),
    "tags": ("registry", "List a repository's releases (tags, digests, created)."),
    "run": ("run", "Run an image locally without Docker."),
    "init": ("flyinit", "Write or update a starter fly.toml from an image."),
    "deploy": ("deploy", "Deploy an image (pinned by digest) to Fly Machines."),
    "secrets": ("deploy", "Manage the app's Fly secrets (values never printed)."),
    "apps": ("flyapps", "Create Fly apps through the Machines API."),
    "status": ("flyapps", "Show the app's machines, images, checks and releases."),
    "releases": ("flyapps", "List every deploy nixfly made to the app, newest first."),
    "rollback": ("flyapps", "Redeploy the previous (or a named) release."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"nixfly.cli.{COMMANDS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nixfly")
@click.option("--debug", is_flag=True, help="On an internal error, print the traceback (else it goes to a crash file).")
@insecure_policy_option
def cli(debug: bool) -> None:
    """Ship Nix closures as layered OCI images to any registry and onto Fly.io — no Docker daemon."""
