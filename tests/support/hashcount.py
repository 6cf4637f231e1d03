"""Counting what a module streams through SHA-256: the bytes given to ``update`` (whole small documents are
hashed at creation and not counted), for tests that one byte is hashed once."""

from __future__ import annotations

import hashlib
import types

import pytest


def count_sha256(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[int]:
    """Replace ``module.hashlib`` with one whose sha256 counts streamed bytes into the returned cell."""
    streamed = [0]

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self._h = hashlib.sha256(data)

        def update(self, data: bytes) -> None:
            streamed[0] += len(memoryview(data).cast("B"))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(module, "hashlib", types.SimpleNamespace(sha256=Counting))
    return streamed
