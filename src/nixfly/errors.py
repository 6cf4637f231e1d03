"""Error types. Every error a user can cause is a NixflyError whose message is one actionable line.

The CLI prints ``nixfly: <message>`` and exits non-zero; it never shows a traceback for these.
Messages must never contain secrets (tokens, passwords): build them from redacted values.

Redaction by value, as the last line of defence: every secret this process is given (registry passwords,
tokens a token service issued, Fly tokens, the values of ``secrets set``) is announced with
:func:`add_secret` where it enters, and :func:`redact` replaces each of them (and its JSON-escaped and
URL-encoded spellings, in which a server may echo it) by ``<redacted>``. Every NixflyError message passes
through it, and so do crash files, ``--json`` output and retry notices: a server that echoes a request
body, or an exception that quotes an argument, cannot put a secret on the screen or on disk, whatever the
secret is called. Values shorter than 4 characters are not redacted: replacing them everywhere would
garble every line, and they hide nothing worth hiding.
"""

from __future__ import annotations

import threading

MIN_SECRET_LENGTH = 4
REDACTED = "<redacted>"
_secrets: list[str] = []  # longest first, so a secret containing another is replaced whole
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Remember ``value`` as a secret of this process: from now on :func:`redact` hides it."""
    if len(value) < MIN_SECRET_LENGTH:
        return
    import json
    from urllib.parse import quote, quote_plus

    raw = value.encode("utf-8", "surrogateescape")  # argv and stdin keep undecodable bytes as surrogates
    # As written, as JSON and repr() (a traceback's or an exception's quoting) escape it, as URLs encode it.
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
             quote(raw, safe=""), quote_plus(raw, safe="")}  # fmt: skip
    forms |= {f.strip() for f in forms}
    global _secrets
    with _secrets_lock:
        new = {f for f in forms if len(f) >= MIN_SECRET_LENGTH} - set(_secrets)
        if new:
            _secrets = sorted([*_secrets, *new], key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret announced by :func:`add_secret` replaced by ``<redacted>``."""
    for s in _secrets:  # the list is replaced whole, never changed in place: safe to iterate
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def forget_secrets() -> None:
    """Forget every secret announced so far (for a host process that runs several commands in turn, such as
    a test session; a nixfly command never calls it)."""
    global _secrets
    with _secrets_lock:
        _secrets = []


def excerpt(text: str, n: int) -> str:
    """At most ``n`` characters of a text from elsewhere (a server's error body), redacted before it is
    cut so that no prefix of a secret survives the cut."""
    return redact(text)[:n]


class NixflyError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message, secrets redacted."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(redact(message).split()))  # always one line


class UsageError(NixflyError):
    """Bad command-line or configuration input."""

    exit_code = 2


class ClosureError(NixflyError):
    """The Nix closure (store paths, metadata) is missing or malformed."""


class ConfigError(UsageError):
    """A configuration file (nixfly.toml, fly.toml) is invalid; the message names file and key."""


class LayeringError(NixflyError):
    """The requested layering cannot be satisfied (e.g. limit below explicit layers)."""


class ImageError(NixflyError):
    """An image (layout, archive, manifest) is malformed or inconsistent."""


class RegistryError(NixflyError):
    """A registry answered with an error or garbage; the message names the registry."""


class RuntimeErrorNF(NixflyError):
    """No usable container runtime, or the container could not be started."""


class DeployError(NixflyError):
    """A Fly.io deploy step failed."""
