"""Command-line entry point. Imports each command module (they attach to ``cli``) and maps every
NixflyError to ``nixfly: <one line>`` on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import importlib
import sys

import click

from nixfly.cli.app import cli
from nixfly.errors import NixflyError

# Each module owns its commands; a missing module (not yet written) is skipped so slices can land alone.
COMMAND_MODULES = ("build", "inspect", "registry", "run", "deploy", "flyinit")

for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"nixfly.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"nixfly.cli.{_name}":
            raise


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the process exit code."""
    try:
        rv = cli.main(args=argv, prog_name="nixfly", standalone_mode=False)
    except NixflyError as e:
        click.echo(f"nixfly: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("nixfly: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("nixfly: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    if isinstance(rv, int):
        return rv
    return 0


def _console_main() -> None:
    sys.exit(main())
