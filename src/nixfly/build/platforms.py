"""Multi-platform builds: one image per ``[[image.platforms]]`` entry (or ``--platform OS/ARCH=ROOT``), under
one :class:`~nixfly.image.index.ImageIndex`. Every image is built (and its base resolved) before anything
is written, so a failing platform leaves no partial output."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixfly.build.pipeline import BaseResolver, BuildResult, build_image
from nixfly.build.spec import ImageSpec, PlatformSpec
from nixfly.errors import UsageError
from nixfly.image.index import ImageIndex, PlatformImage
from nixfly.image.platform import normalise_platform


@dataclass(frozen=True)
class IndexBuildResult:
    index: ImageIndex
    results: tuple[BuildResult, ...]  # in the order of the index's entries

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)


def check_platforms(platforms: Sequence[PlatformSpec], where: str = "platforms") -> list[PlatformSpec]:
    """The platform entries with normalised names; a duplicate or an entry without roots is an error."""
    out: list[PlatformSpec] = []
    seen: set[str] = set()
    for i, p in enumerate(platforms):
        name = normalise_platform(p.platform, f"{where}[{i}]")
        if name in seen:
            raise UsageError(f"{where}: platform {name} is given twice; an index holds one image per platform")
        seen.add(name)
        if not p.roots:
            raise UsageError(f"{where}: platform {name} has no roots (give --platform {name}=ROOT)")
        out.append(PlatformSpec(name, list(p.roots), p.closure_file))
    return out


def select_platforms(platforms: Sequence[PlatformSpec], wanted: Sequence[str]) -> list[PlatformSpec]:
    """The entries of ``platforms`` named by ``wanted`` (``--platform linux/amd64`` without ``=ROOT``)."""
    by_name = {p.platform: p for p in platforms}
    out = []
    for w in wanted:
        name = normalise_platform(w, "--platform")
        if name not in by_name:
            have = ", ".join(by_name) or "none"
            raise UsageError(f"--platform {name}: the image definition declares no such platform (it has: {have})")
        out.append(by_name[name])
    return out


def platform_spec(spec: ImageSpec, p: PlatformSpec) -> ImageSpec:
    """The single-image spec of one platform entry."""
    return dataclasses.replace(spec, roots=list(p.roots), closure_file=p.closure_file, platforms=[])


def build_index(
    spec: ImageSpec,
    platforms: Sequence[PlatformSpec],
    *,
    cache_dir: Path | None = None,
    workers: int | None = None,
    base: BaseResolver | None = None,
    on_platform: Callable[[str], None] | None = None,
    **build_options: Any,
) -> IndexBuildResult:
    """Build one image per entry of ``platforms`` (checked with :func:`check_platforms`) and the index;
    ``build_options`` (``events``, ``caches``, ``known``, …) go to each ``build_image``."""
    results = []
    entries = []
    for p in check_platforms(platforms):
        if on_platform is not None:
            on_platform(p.platform)
        r = build_image(platform_spec(spec, p), cache_dir=cache_dir, workers=workers, base=base,
                        platform=p.platform, **build_options)  # fmt: skip
        results.append(r)
        entries.append(PlatformImage(p.platform, r.image))
    return IndexBuildResult(ImageIndex(tuple(entries), spec.format), tuple(results))
