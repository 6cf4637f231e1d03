"""Pushing while building: the build listener that hands a build's layers to the registry sink as they are
made.

A ship with a registry destination adds this listener to ``build_image``'s events, so a layer starts uploading
when its compression starts (``sinks.registry.EarlyUploads``); the push afterwards sends only the config and the
manifest, plus whatever another destination needs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from nixfly.build.events import BuildListener
from nixfly.sinks.registry import EarlyUploads, PushProgress

if TYPE_CHECKING:
    from nixfly.build.layers import BuiltLayer
    from nixfly.image.growing import GrowingBlob
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.registry.reference import Reference


class BuildUploads(BuildListener):
    """Layers of one build → uploads to the first push destination while the build goes on (a listener of
    the build's events: each growing blob, each finished layer)."""

    def __init__(self, ref: Reference, options: RegistryOptions, progress: PushProgress | None = None,
                 client: RegistryClient | None = None) -> None:  # fmt: skip
        self.early = EarlyUploads(ref, options, progress, client=client)
        self._streamed: set[int] = set()
        self._lock = threading.Lock()

    def layer_blob(self, i: int, blob: GrowingBlob) -> None:
        with self._lock:
            self._streamed.add(i)
        self.early.layer_growing(blob)

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        with self._lock:
            streamed = i in self._streamed
        if built.remote:
            self.early.already_there(built.layer)
        elif not streamed:
            self.early.layer_ready(built.layer)

    def __enter__(self) -> BuildUploads:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """After the build: wait for the uploads (raising their first failure); after a failed or
        interrupted build: abandon them at once."""
        if exc_type is None:
            self.early.finish()
        else:
            self.early.abort()
