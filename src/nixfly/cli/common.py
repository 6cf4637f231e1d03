"""Small CLI helpers shared by command modules: JSON output, progress, key=value parsing."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click
from rich.console import Console

from nixfly.errors import UsageError


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def show_progress(json_out: bool, quiet: bool) -> bool:
    """Progress bars only for a person at a terminal: never with --json or --quiet."""
    return not json_out and not quiet and sys.stdout.isatty() and sys.stderr.isatty()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def parse_kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def parse_command(text: str | None, what: str) -> list[str] | None:
    """A command given as a JSON array (``'["/bin/app","-v"]'``) or as shell words (``"/bin/app -v"``)."""
    if text is None:
        return None
    s = text.strip()
    if s.startswith("["):
        try:
            v = json.loads(s)
        except ValueError:
            raise UsageError(f"{what}: {text!r} is not a valid JSON array") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UsageError(f"{what}: {text!r} must be a JSON array of strings")
        return v
    try:
        return shlex.split(s)
    except ValueError as e:
        raise UsageError(f"{what}: {text!r}: {e}") from None


def human_size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{n} B"
