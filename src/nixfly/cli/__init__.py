"""Command-line entry point. Command modules load on demand (see ``app.COMMANDS``); every NixflyError
becomes ``nixfly: <one line>`` on stderr with a non-zero exit, never a traceback.

The last line of defence: any other exception is a bug in nixfly. It becomes one line (``nixfly: internal
error: …, please report``) and exit status 70; the traceback goes to stderr only with ``nixfly --debug``
(or ``NIXFLY_DEBUG=1``), else into a private crash file whose path the line names. Neither the line nor the
crash file carries a secret: the line holds only the exception's type and where it was raised, and the
crash file has replaced by ``<redacted>``: every secret value this process was given
(``nixfly.errors.add_secret``), credential-like environment variables and option values, and the value of
every ``NAME=VALUE`` argument (``secrets set API_KEY=…``), whatever its name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from nixfly.cli.app import cli
from nixfly.errors import NixflyError, add_secret, redact

if TYPE_CHECKING:
    from pathlib import Path

INTERNAL_ERROR = 70  # EX_SOFTWARE: distinct from the 1/2 of user errors and from Python's own crash status
_SECRET_WORDS = ("TOKEN", "SECRET", "PASS", "KEY", "AUTH", "CRED")


def _debug_requested(argv: Sequence[str]) -> bool:
    if os.environ.get("NIXFLY_DEBUG", "") not in ("", "0"):
        return True
    for a in argv:  # only the root group's options, before the command name
        if a == "--debug":
            return True
        if not a.startswith("-") or a == "--":
            break
    return False


def _secrets(argv: Sequence[str]) -> list[str]:
    """Values that must not appear in a crash file: credential-like variables and option values."""
    found = [v for k, v in os.environ.items() if any(w in k.upper() for w in _SECRET_WORDS) and len(v) >= 4]
    for i, a in enumerate(argv):
        name, eq, value = a.partition("=")
        if eq and not name.startswith("-"):  # NAME=VALUE: a secret's value, a label, … all hidden alike
            found.append(value)
        if not any(w.lower() in name.lower() for w in ("creds", "token", "password", "secret")):
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        found += [value, *value.split(":", 1)[1:]]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _origin(exc: BaseException) -> str:
    """``file:line (function)`` of the innermost frame outside libraries (click, httpx, the standard
    library): where the bug is, short enough for one line."""
    import sysconfig
    import traceback
    from pathlib import Path

    import nixfly

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    # Our own files are known by where the package really is, never by a folder's name: a checkout or a
    # virtualenv may itself sit in a folder called "nixfly" (what `git clone …/nixfly` makes).
    package = Path(nixfly.__file__).resolve().parent
    stdlib = sysconfig.get_paths()["stdlib"]
    lib = ("site-packages", "dist-packages")

    def in_package(filename: str) -> bool:
        return Path(filename).resolve().is_relative_to(package)

    ours = [
        f for f in frames
        if in_package(f.filename) or not (any(d in f.filename for d in lib) or f.filename.startswith(stdlib))
    ]  # fmt: skip
    f = (ours or frames)[-1]
    if in_package(f.filename):
        short = "/".join(("nixfly", *Path(f.filename).resolve().relative_to(package).parts))
    else:
        short = "/".join(Path(f.filename).parts[-2:])
    return f"{short}:{f.lineno} ({f.name})"


def _crash_dir() -> Path:
    from pathlib import Path

    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "nixfly" / "crashes"


def _write_crash_file(text: str) -> Path | None:
    import datetime
    import tempfile
    from pathlib import Path

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for d in (_crash_dir(), Path(tempfile.gettempdir())):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(prefix=f"nixfly-crash-{stamp}-", suffix=".txt", dir=d)
            with os.fdopen(fd, "w", errors="backslashreplace") as f:  # mkstemp: mode 0600
                f.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def internal_error(exc: BaseException, argv: Sequence[str]) -> int:
    """Report a bug (an exception that is not a NixflyError) in one line; returns the exit status."""
    import traceback  # the error paths' imports load only when there is an error to report

    from nixfly import __version__

    what = f"{type(exc).__name__} at {_origin(exc)}"
    tb = "".join(traceback.format_exception(exc))
    if _debug_requested(argv):
        sys.stderr.write(tb)
        click.echo(f"nixfly: internal error: {what}, please report", err=True)
        return INTERNAL_ERROR
    text = f"nixfly {__version__}, python {sys.version.split()[0]}\nargv: {list(argv)!r}\n\n{tb}"
    for s in _secrets(argv):  # hidden from here on like every other secret: one redaction, all spellings
        add_secret(s)
    text = redact(text)
    path = _write_crash_file(text)
    where = f"details in {path}" if path else "run again with --debug for details"
    click.echo(f"nixfly: internal error: {what}, please report ({where})", err=True)
    return INTERNAL_ERROR


def _skip_httpx_cli() -> None:
    """``import httpx`` also imports httpx's own command-line client (``httpx._main``: rich's console,
    progress and syntax modules, pygments), about a third of httpx's import time, which nixfly never
    runs. httpx imports it under ``try/except ImportError`` (that client is an optional extra), and a
    ``None`` entry in ``sys.modules`` is the import system's documented way to make an import fail, so
    httpx falls back to its stub and loads nothing of it. Only for the CLI process, before httpx loads;
    httpx is pinned, and tests/test_startup.py fails if a new version stops tolerating this."""
    if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]  # typeshed omits the None entry


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _skip_httpx_cli()
    try:
        rv = cli.main(args=args, prog_name="nixfly", standalone_mode=False)
    except NixflyError as e:
        click.echo(f"nixfly: {redact(str(e))}", err=True)
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
        _quiet_stdout()
        return 141
    except Exception as e:
        return internal_error(e, args)
    if isinstance(rv, int):
        return rv
    return 0


def _quiet_stdout() -> None:
    # The reader went away: point stdout at /dev/null so the interpreter's final flush cannot fail loudly.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _console_main() -> None:
    sys.exit(main())
