"""Small CLI helpers shared by command modules: JSON output, progress, key=value parsing."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nixfly.errors import UsageError, redact
from nixfly.fsutil import human_size as human_size  # re-exported: the CLI's modules import it from here

if TYPE_CHECKING:
    from rich.console import Console

    from nixfly.registry.options import RegistryOptions


def stderr_console() -> Console:
    from rich.console import Console

    # soft_wrap: a line longer than the terminal (a pinned reference) is never split when piped.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def show_progress(json_out: bool, quiet: bool) -> bool:
    """Progress bars only for a person at a terminal: never with --json or --quiet."""
    return not json_out and not quiet and sys.stdout.isatty() and sys.stderr.isatty()


def emit_json(obj: Any) -> None:
    click.echo(redact(json.dumps(obj, indent=2, sort_keys=True)))  # no secret this process holds, ever


def parse_kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (the key stripped of spaces; a later key wins)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:  # named by its key alone: the value may be a secret
            raise UsageError(f"{what} {key!r}: expected KEY=VALUE")
        out[key] = value
    return out


def parse_command(text: str | None, what: str) -> list[str] | None:
    """A command given as a JSON array (``'["/bin/app","-v"]'``) or as shell words (``"/bin/app -v"``)."""
    if text is None:
        return None
    s = text.strip()
    if s.startswith("["):
        from nixfly.fsutil import load_json  # a 10,000-deep array is refused, not a RecursionError

        try:
            v = load_json(s)
        except ValueError:
            raise UsageError(f"{what}: {text!r} is not a valid JSON array") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UsageError(f"{what}: {text!r} must be a JSON array of strings")
        return v
    try:
        return shlex.split(s)
    except ValueError as e:
        raise UsageError(f"{what}: {text!r}: {e}") from None


def noter(quiet: bool) -> Callable[[str], None]:
    """Prints ``note: TEXT`` on stderr, unless ``quiet``."""

    def note(text: str) -> None:
        if not quiet:
            click.echo(f"note: {text}", err=True)

    return note


# skopeo's global --insecure-policy (skip its signature policy.json) comes along when a skopeo command line is
# pasted: nixfly reads no policy file, so there is nothing to skip. Accepted (skopeo's spelling, on the root
# group and on every command with registry flags) and ignored.
insecure_policy_option = click.option(
    "--insecure-policy", "insecure_policy", is_flag=True, hidden=True, expose_value=False,
    help="Accepted for skopeo compatibility; nixfly reads no signature policy.",
)  # fmt: skip


class Duration(click.ParamType[float, Any]):
    """A duration flag: seconds as a number (``90``, ``2.5``) or a Go duration as flyctl's own flags take them
    (``90s``, ``5m``, ``1m30s``; flyctl internal/command/deploy/deploy.go parseDurationFlag); the value is
    seconds, finite, not negative and at most ``maximum``. Anything else is one line naming the flag."""

    name = "duration"

    def __init__(self, maximum: float = 366 * 86400.0) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        flag = max((o for o in (param.opts if param else []) if o.startswith("--")), key=len, default="duration")
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds, text = float(value), str(value)
        else:
            text = str(value).strip()
            if text.startswith("-") and text[1:2].isdigit():  # "-1", "-5s": Go durations may be negative
                raise UsageError(f"{flag} {text}: a duration cannot be negative; give 0 or more seconds")
            try:
                seconds = float(text)
            except ValueError:
                from nixfly.fly.units import parse_go_duration

                try:
                    seconds = parse_go_duration(text).total_seconds()
                except (ValueError, OverflowError):
                    raise UsageError(
                        f"{flag} {text!r}: give seconds (90) or a duration like 90s, 5m or 1m30s"
                    ) from None
        if math.isnan(seconds):
            raise UsageError(f"{flag} {text}: give seconds (90) or a duration like 90s, 5m or 1m30s")
        if seconds < 0:
            raise UsageError(f"{flag} {text}: a duration cannot be negative; give 0 or more seconds")
        if seconds > self.maximum:
            raise UsageError(f"{flag} {text}: too long, at most {int(self.maximum)} seconds")
        return seconds


DURATION = Duration()


def transport_options(prefix: str = "") -> Callable[[Any], Any]:
    """--creds/--tls-verify/--cert-dir, optionally with a src-/dest- prefix as in skopeo."""
    p = f"{prefix}-" if prefix else ""
    k = f"{prefix}_" if prefix else ""
    opts = [
        click.option(f"--{p}creds", f"{k}creds", metavar="USER:PASS", default=None,
                     help=f"Registry credentials{' for the ' + prefix if prefix else ''} (never printed)."),
        click.option(f"--{p}tls-verify", f"{k}tls_verify", type=click.BOOL, default=None, metavar="BOOL",
                     help="Verify TLS (default true; false also allows plain HTTP)."),
        click.option(f"--{p}cert-dir", f"{k}cert_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Directory with the registry's CA certificate(s) (*.crt)."),
    ]  # fmt: skip
    if not prefix:  # the older spelling, kept working
        opts.append(click.option("--no-tls-verify", "no_tls_verify", is_flag=True, hidden=True))
        opts.append(insecure_policy_option)

    def deco(f: Any) -> Any:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def registry_options(o: Mapping[str, Any], prefix: str = "") -> RegistryOptions:
    """Typed registry options from a command's parsed flags: ``--creds``/``--tls-verify``/``--cert-dir``
    (with a ``src``/``dest`` prefix as in skopeo, falling back to the plain spelling), ``--timeout``,
    ``--retries``, ``--parallel``."""
    from nixfly.registry.options import RegistryOptions

    k = f"{prefix}_" if prefix else ""
    creds_text = o.get(f"{k}creds") or o.get("creds")
    flag = f"--{prefix}-creds" if prefix and o.get(f"{k}creds") else "--creds"
    creds = None
    if creds_text:
        from nixfly.registry.auth import parse_creds

        creds = parse_creds(creds_text, flag)
    tls = o.get(f"{k}tls_verify")
    if tls is None:
        tls = False if o.get("no_tls_verify") else o.get("tls_verify")
    cert_dir = o.get(f"{k}cert_dir") or o.get("cert_dir")
    kw: dict[str, Any] = {}
    if o.get("chunk_size"):
        kw["chunk_size"] = kw["monolithic_max"] = int(o["chunk_size"])
    if not o.get("quiet") and not o.get("json_out") and sys.stderr.isatty():
        kw["on_retry"] = _show_retry
    return RegistryOptions(
        credentials=creds,
        tls_verify=True if tls is None else bool(tls),
        plain_http=False if tls is True else None,  # only the implicit default falls back to plain HTTP locally
        cert_dir=cert_dir,
        timeout=float(o.get("timeout") or 60.0),
        retries=int(o["retries"] if o.get("retries") is not None else 5),
        parallel=int(o.get("parallel") or 4),
        **kw,
    )


def _show_retry(line: str) -> None:
    """A retry about to wait, on a terminal: people should see why nothing moves."""
    from rich.markup import escape

    stderr_console().print(f"[yellow]{escape(redact(line))}[/yellow]", highlight=False)
