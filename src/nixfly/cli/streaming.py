"""Pushing while building: the hooks that hand a build's layers to the registry sink as they are made.

``build --push``, ``push nixfly.toml`` and ``deploy --build`` give ``build_image`` these hooks, so a layer
starts uploading when its compression starts (``sinks.registry.EarlyUploads``); the push afterwards sends
only the config and the manifest, plus whatever another destination needs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from nixfly.registry.reference import parse_reference
from nixfly.sinks.registry import BlobOutcome, EarlyUploads, PushProgress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from nixfly.build.layers import BuiltLayer
    from nixfly.image.growing import GrowingBlob
    from nixfly.registry.client import RegistryOptions


class _UploadBar(PushProgress):
    """One bar on the build's progress display: bytes sent while the layers are still being made."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._sent: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _update(self) -> None:
        if self._task is None:
            self._task = self._progress.add_task("  uploading", total=None)
        self._progress.update(self._task, completed=sum(self._sent.values()))

    def blob_started(self, digest: str, size: int) -> None:
        with self._lock:
            self._sizes[digest] = size
            self._sent.setdefault(digest, 0)
            self._update()

    def blob_advanced(self, digest: str, completed: int) -> None:
        with self._lock:
            self._sent[digest] = completed
            self._update()

    def blob_finished(self, digest: str, outcome: BlobOutcome) -> None:
        with self._lock:
            if outcome != "uploaded":
                self._sent.pop(digest, None)
            elif self._sizes.get(digest):
                self._sent[digest] = self._sizes[digest]
            self._update()


class BuildUploads:
    """Layers of one build → uploads to the first push destination while the build goes on."""

    def __init__(self, reference: str, options: RegistryOptions, progress: Progress | None = None) -> None:
        self.early = EarlyUploads(parse_reference(reference), options, _UploadBar(progress) if progress else None)
        self._streamed: set[int] = set()
        self._lock = threading.Lock()

    def on_blob(self, i: int, blob: GrowingBlob) -> None:
        with self._lock:
            self._streamed.add(i)
        self.early.layer_growing(blob)

    def on_layer(self, i: int, built: BuiltLayer) -> None:
        with self._lock:
            streamed = i in self._streamed
        if built.remote:
            self.early.already_there(built.layer)
        elif not streamed:
            self.early.layer_ready(built.layer)

    def build_hooks(self, on_layer: Any = None) -> dict[str, Any]:
        """Keyword arguments for ``build_image``: ours, chained with the caller's ``on_layer``."""

        def layer(i: int, b: BuiltLayer) -> None:
            if on_layer is not None:
                on_layer(i, b)
            self.on_layer(i, b)

        return {"on_layer": layer, "on_layer_blob": self.on_blob}

    def __enter__(self) -> BuildUploads:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """After the build: wait for the uploads (raising their first failure); after a failed or
        interrupted build: abandon them at once."""
        if exc_type is None:
            self.early.finish()
        else:
            self.early.abort()
