"""``build``'s progress display: the layer bars (a listener of the build's events) and the upload bar of
``build --push`` — bytes a build's layers sent while they were being made (the uploads themselves are
``services.uploads.BuildUploads``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from nixfly.build.events import BuildListener
from nixfly.sinks.registry import BlobOutcome, PushProgress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from nixfly.build.layers import BuiltLayer, LayerSpec


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def _label(spec: LayerSpec) -> str:
    """A layer's name for a progress bar: its first store path's name (+N more), or its kind."""
    if not spec.store_paths:
        return spec.kind
    first = spec.store_paths[0].rsplit("/", 1)[-1].split("-", 1)[-1]
    return first + (f" +{len(spec.store_paths) - 1}" if len(spec.store_paths) > 1 else "")


class BuildBars(BuildListener):
    """The build's bars: one for all layers (by weight), one per layer being built, one for NAR downloads.
    ``spinner`` (nix building an installable) is stopped when the layer plan arrives: the bars take the
    terminal."""

    def __init__(self, progress: Progress, spinner: _Stoppable | None = None) -> None:
        self._progress = progress
        self._spinner = spinner
        self._total: TaskID | None = None
        self._per_layer: dict[int, TaskID] = {}
        self._weights: list[int] = []
        self._names: list[str] = []
        self._fetch: TaskID | None = None

    def planned(self, specs: Sequence[LayerSpec], weights: Sequence[int]) -> None:
        self._weights.extend(weights)
        self._names.extend(_label(s) for s in specs)
        if self._spinner is not None:
            self._spinner.stop()
        self._progress.start()
        self._total = self._progress.add_task(f"[bold]{len(specs)} layers", total=sum(weights))

    def layer_started(self, i: int) -> None:
        self._per_layer[i] = self._progress.add_task(f"  {self._names[i][:40]}", total=max(self._weights[i], 1))

    def layer_bytes(self, i: int, n: int) -> None:
        task = self._per_layer.get(i)
        if task is not None:
            self._progress.advance(task, n)

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        if self._total is not None:
            if i in self._per_layer:
                self._progress.remove_task(self._per_layer.pop(i))
            self._progress.advance(self._total, self._weights[i])

    def fetch_planned(self, total_bytes: int) -> None:
        if not total_bytes:
            return
        progress = self._progress
        if not progress.live.is_started:
            progress.start()
        if self._fetch is not None:
            task = progress.tasks[progress.task_ids.index(self._fetch)]
            progress.update(self._fetch, total=(task.total or 0) + total_bytes)
        else:
            self._fetch = progress.add_task("  downloading NARs", total=total_bytes)

    def fetch_bytes(self, n: int) -> None:
        if self._fetch is not None:
            self._progress.advance(self._fetch, n)



class UploadBar(PushProgress):
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
