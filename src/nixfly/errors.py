"""Error types. Every error a user can cause is a NixflyError whose message is one actionable line.

The CLI prints ``nixfly: <message>`` and exits non-zero; it never shows a traceback for these.
Messages must never contain secrets (tokens, passwords): build them from redacted values.
"""

from __future__ import annotations


class NixflyError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line


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
