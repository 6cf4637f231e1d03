"""The upload bar of ``build --push``: bytes a build's layers sent while they were being made (the uploads
themselves are ``services.uploads.BuildUploads``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from nixfly.sinks.registry import BlobOutcome, PushProgress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID



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
