"""Releases as diff sides: ``-a APP v3``, ``previous``, ``current``, and each release against the one before
(``nixfly releases --diff``). The release log is the one ``fly/releases.py`` keeps in machine metadata."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from nixfly.diff.model import ClosureDiff
from nixfly.diff.service import DiffOptions, diff
from nixfly.errors import NixflyError, UsageError
from nixfly.fly.plan import Plan
from nixfly.fly.releases import Release, last_deployed, rollback_target

_WORD = re.compile(r"^(v?\d+|current|previous)$")


def is_release_word(text: str) -> bool:
    """``v3``, ``3``, ``current`` or ``previous``: a release, not an image location."""
    return bool(_WORD.match(text))


def pick(releases: Sequence[Release], word: str) -> Release:
    """The release ``word`` names in ``releases`` (newest first). ``current`` is the newest that finished;
    ``previous`` the newest finished one before it with another image (what ``rollback`` would go to)."""
    current = last_deployed(releases)
    if word == "current":
        if current is None:
            raise UsageError("the app has no finished release yet (see `nixfly releases`)")
        return current
    if word == "previous":
        if current is None:
            raise UsageError("the app has no finished release yet (see `nixfly releases`)")
        previous = rollback_target(releases, current)
        if previous is None:
            raise UsageError(f"no finished release before v{current.version} with another image")
        return previous
    version = int(word.removeprefix("v"))
    for r in releases:
        if r.version == version:
            return r
    raise UsageError(f"no release v{version} in the app's release log (see `nixfly releases`)")


@dataclass(frozen=True)
class ReleaseDiff:
    release: Release
    before: Release
    diff: ClosureDiff | None  # None: an image could not be read
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"version": self.release.version, "against": self.before.version,
                "diff": None if self.diff is None else self.diff.to_json(), "error": self.error}  # fmt: skip


def release_diffs(releases: Sequence[Release], opts: DiffOptions | None = None) -> list[ReleaseDiff]:
    """Each release (newest first) against the one before it in the log. An image that cannot be read (a
    registry gone, a deleted tag) costs that pair its diff, not the listing."""
    out: list[ReleaseDiff] = []
    ordered = sorted(releases, key=lambda r: r.version, reverse=True)
    for r, before in itertools.pairwise(ordered):
        try:
            d = diff(f"docker://{before.image}", f"docker://{r.image}", opts, old_label=f"v{before.version}",
                     new_label=f"v{r.version}")  # fmt: skip
            out.append(ReleaseDiff(r, before, d))
        except NixflyError as e:
            out.append(ReleaseDiff(r, before, None, str(e)))
    return out


def running_images(plan: Plan) -> list[str]:
    """The images the machines a deploy would update run now, most machines first (usually one)."""
    counts: dict[str, int] = {}
    for a in plan.of("update"):
        image = a.old.get("image") if isinstance(a.old, dict) else None
        if isinstance(image, str) and image != plan.image:
            counts[image] = counts.get(image, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))


def plan_diffs(plan: Plan, opts: DiffOptions | None = None) -> list[tuple[str, ClosureDiff | None, str | None]]:
    """For ``deploy --dry-run``: (running image, its diff to the image the plan deploys or None, why not).
    From attached SBOMs only: a dry run reads manifests, configs and SBOMs, never two images' layers."""
    out: list[tuple[str, ClosureDiff | None, str | None]] = []
    opts = replace(opts or DiffOptions(), sbom_only=True)
    for image in running_images(plan):
        try:
            out.append((image, diff(f"docker://{image}", f"docker://{plan.image}", opts, old_label=image,
                                    new_label=plan.image), None))  # fmt: skip
        except NixflyError as e:
            out.append((image, None, str(e)))
    return out
