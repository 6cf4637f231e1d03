"""Closure diffs between two images, releases or store paths, in Nix terms (``nixfly diff``)."""

from __future__ import annotations

from nixfly.diff.model import ClosureDiff, ConfigChange, ImageFacts, PackageChange, Side, Wire, diff_sides
from nixfly.diff.service import DiffOptions, diff

__all__ = [
    "ClosureDiff",
    "ConfigChange",
    "DiffOptions",
    "ImageFacts",
    "PackageChange",
    "Side",
    "Wire",
    "diff",
    "diff_sides",
]
