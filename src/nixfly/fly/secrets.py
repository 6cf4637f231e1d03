"""App secrets via the Machines API: set, list (names and digests only), unset.

Values are never returned, printed or put into errors; every change records the new secrets version so
the next ``nixfly deploy`` passes ``min_secrets_version`` and rolls machines onto it. Each value is
announced to ``nixfly.errors.add_secret`` the moment it is parsed, so an API error that echoes the
request, or a crash, cannot show it; and each is checked before any request: UTF-8 text (the API takes
JSON strings), no NUL byte, and at most ``MAX_ASSIGNMENT`` bytes as ``NAME=VALUE``, the most one
environment string may hold on Linux (MAX_ARG_STRLEN, 32 pages): a longer one could never reach the
machine's environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixfly.errors import UsageError, add_secret
from nixfly.fly.api import MachinesAPI, NotFound
from nixfly.fly.state import SecretsVersionStore

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ASSIGNMENT = 32 * 4096  # Linux's MAX_ARG_STRLEN: the longest NAME=VALUE string execve accepts


@dataclass(frozen=True)
class SecretInfo:
    name: str
    digest: str
    updated_at: str


def parse_assignments(args: Sequence[str], stdin_text: str | None = None) -> dict[str, str]:
    """``NAME=VALUE`` pairs from arguments, then from stdin lines (blank lines and ``#`` comments skipped).
    Text that came from bytes (argv, stdin) carries undecodable bytes as surrogates (``surrogateescape``).

    UsageError names the offending NAME (never a value) for a malformed or duplicate assignment, or a
    value that is not UTF-8, holds a NUL byte or is too long (see the module docstring).
    """
    lines = list(args)
    if stdin_text is not None:
        lines += [ln for ln in stdin_text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for item in lines:  # before anything can fail: no message or crash file may show one of them
        value = item.partition("=")[2]
        add_secret(value)
        add_secret(item)
    out: dict[str, str] = {}
    for i, item in enumerate(lines, 1):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            # Only the position is reported: the text may be a secret someone pasted without a name.
            raise UsageError(f"secret assignment #{i} is not NAME=VALUE")
        check_name(name)
        if name in out:
            raise UsageError(f"secret {name} is given twice")
        check_value(name, value)
        out[name] = value
    if not out:
        raise UsageError("no secrets given: pass NAME=VALUE arguments or lines on stdin")
    return out


def check_value(name: str, value: str) -> None:
    """UsageError (naming ``name``, never the value) unless ``value`` can be a secret's value."""
    try:
        size = len(name) + 1 + len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"secret {name}: the value is not valid UTF-8 text") from None
    if "\0" in value:
        raise UsageError(f"secret {name}: the value holds a NUL byte, which no environment variable can")
    if size > MAX_ASSIGNMENT:
        raise UsageError(f"secret {name}: NAME=VALUE is {size} bytes, more than the {MAX_ASSIGNMENT} one "
                         "environment variable can hold")  # fmt: skip


def check_name(name: str) -> str:
    """``name`` if it is a valid environment variable name; UsageError otherwise."""
    if not _NAME.match(name):
        shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:80]
        raise UsageError(f"secret name {shown!r} is not a valid environment variable name")
    return name


def set_secrets(api: MachinesAPI, app: str, values: Mapping[str, str], state_dir: Path) -> int:
    """Set the secrets; returns (and records for deploy) the new secrets version."""
    version = api.update_secrets(app, values)
    SecretsVersionStore(state_dir, app).set(version)
    return version


def unset_secrets(api: MachinesAPI, app: str, names: Iterable[str], state_dir: Path) -> int:
    """Remove the named secrets (UsageError if one does not exist); returns the newest secrets version."""
    version: int | None = None
    for name in names:
        check_name(name)
        try:
            version = api.delete_secret(app, name)
        except NotFound:
            raise UsageError(f"app {app} has no secret named {name}") from None
    if version is None:
        raise UsageError("no secret names given")
    SecretsVersionStore(state_dir, app).set(version)
    return version


def list_secrets(api: MachinesAPI, app: str) -> list[SecretInfo]:
    """Names, digests and update times, sorted by name; never the values."""
    items = api.list_secrets(app)
    out = [SecretInfo(str(s.get("name", "")), str(s.get("digest", "")), str(s.get("updated_at", ""))) for s in items]
    return sorted(out, key=lambda s: s.name)
