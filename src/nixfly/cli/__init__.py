"""Command-line entry point. Command modules load on demand (see ``app.COMMANDS``); every NixflyError
becomes ``nixfly: <one line>`` on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import sys

import click

from nixfly.cli.app import cli
from nixfly.errors import NixflyError


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
