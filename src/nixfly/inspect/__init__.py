"""Look inside an image (``nixfly inspect``), by job: ``report`` (manifest and config facts, each layer, the
store paths that take the room and the reference chain of each), ``files`` (the merged file tree),
``why`` (what refers to one store path) and ``suggest`` (advice about the largest paths). Imports
``image/`` only.
"""

from __future__ import annotations

from nixfly.inspect.files import FileEntry, list_files
from nixfly.inspect.report import (
    PROCESSES_LABEL,
    InspectReport,
    LayerReport,
    ReferrerReport,
    StorePathReport,
    inspect_image,
    reference_chains,
    store_name,
)
from nixfly.inspect.suggest import SUGGEST_MIN, suggest
from nixfly.inspect.why import WhyReport, why

__all__ = [
    "PROCESSES_LABEL", "SUGGEST_MIN", "FileEntry", "InspectReport", "LayerReport", "ReferrerReport",
    "StorePathReport", "WhyReport", "inspect_image", "list_files", "reference_chains", "store_name", "suggest", "why",
]  # fmt: skip
