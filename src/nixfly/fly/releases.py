"""The release log: every deploy nixfly made, kept in the app's machines' metadata (not on this host).

Each machine carries a log under the ``nixfly_releases`` metadata key (a compact JSON list of the newest
:data:`MAX_RELEASES` entries), so any machine — and any host with the token — can read it. A deploy puts
the log, its own release first, into the config of every machine it creates or updates: the request that
changes the machine records the release, so a machine runs a release only if it carries it, and there is
no separate write that could fail on its own. Machines a deploy leaves alone keep the log they had; the
app's log is the union.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from nixfly.fly.api import JSON, Machine
from nixfly.fly.normal import RELEASES_KEY
from nixfly.fsutil import load_json

MAX_RELEASES = 20
OUTCOMES = ("deployed", "failed", "interrupted")


@dataclass(frozen=True)
class Release:
    version: int
    image: str
    strategy: str
    at: str  # UTC, ISO 8601
    outcome: str  # one of OUTCOMES
    command: str = "deploy"  # or "rollback"

    @property
    def digest(self) -> str:
        return self.image.partition("@")[2]

    def to_json(self) -> JSON:
        return asdict(self)

    @classmethod
    def parse(cls, item: object) -> Release | None:
        if not isinstance(item, dict):
            return None
        try:
            return cls(int(item["version"]), str(item["image"]), str(item["strategy"]), str(item["at"]),
                       str(item["outcome"]), str(item.get("command", "deploy")))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


def machine_releases(m: Machine) -> list[Release]:
    text = m.meta(RELEASES_KEY)
    if text is None:
        return []
    try:  # a machine's metadata is anyone's with a token for the app: no 10,000-deep nesting
        items = load_json(text)
    except ValueError:
        return []
    return [r for r in (Release.parse(i) for i in items if isinstance(items, list)) if r is not None]


def app_releases(machines: Sequence[Machine]) -> list[Release]:
    """The app's releases, newest first: the union of what its machines carry (one entry per version)."""
    by_version: dict[int, Release] = {}
    for m in machines:
        for r in machine_releases(m):
            by_version.setdefault(r.version, r)
    return [by_version[v] for v in sorted(by_version, reverse=True)]


def last_deployed(releases: Sequence[Release]) -> Release | None:
    """The newest release that finished."""
    return next((r for r in releases if r.outcome == "deployed"), None)


def rollback_target(releases: Sequence[Release], current: Release) -> Release | None:
    """The newest finished release before ``current`` whose image differs: where a rollback goes (and what
    ``nixfly diff -a APP previous`` names)."""
    return next((r for r in releases if r.version < current.version and r.outcome == "deployed"
                 and r.image != current.image), None)  # fmt: skip


def new_release(releases: Sequence[Release], image: str, strategy: str, outcome: str, command: str) -> Release:
    version = (releases[0].version + 1) if releases else 1
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Release(version, image, strategy, at, outcome, command)


def release_log_text(release: Release, history: Sequence[Release]) -> str:
    """The metadata value a deploy writes into every machine it creates or updates: ``release`` first, then
    the newest of ``history`` (at most :data:`MAX_RELEASES` in all), as compact JSON."""
    log = [release] + [r for r in history if r.version != release.version]
    return json.dumps([r.to_json() for r in log[:MAX_RELEASES]], separators=(",", ":"), sort_keys=True)
