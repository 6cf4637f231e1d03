"""What an image config's ``Env`` means for the process it starts.

``DEFAULT_PATH`` is the PATH nixfly writes into an image whose spec sets none, and what ``nixfly run``
assumes for an image whose config has no PATH: one definition, so the command nixfly checked at build
time is the one ``run`` finds.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_PATH = "/bin:/usr/bin:/sbin:/usr/sbin"


def env_path(env: Sequence[str]) -> str:
    """The PATH a ``KEY=VALUE`` environment sets (the last setting wins), else :data:`DEFAULT_PATH`."""
    return next((e.partition("=")[2] for e in reversed(env) if e.startswith("PATH=")), DEFAULT_PATH)


__all__ = ["DEFAULT_PATH", "env_path"]
