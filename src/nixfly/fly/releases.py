"""The release log: every deploy nixfly made, kept in the app's machines' metadata (not on this host).

Each machine carries the same log under the ``nixfly_releases`` metadata key (a compact JSON list of the
newest :data:`MAX_RELEASES` entries), so any machine — and any host with the token — can read it.
Writing it uses the metadata endpoint, which does not restart machines; a deploy carries the key over
when it updates a config (see :func:`nixfly.fly.plan.carry_over`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from nixfly.fly.api import JSON, FlyAPIError, Machine, MachinesAPI
from nixfly.fly.normal import BOOKKEEPING_METADATA

RELEASES_KEY = BOOKKEEPING_METADATA[0]
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
    meta = m.config.get("metadata")
    text = meta.get(RELEASES_KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        return []
    try:
        items = json.loads(text)
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


def new_release(releases: Sequence[Release], image: str, strategy: str, outcome: str, command: str) -> Release:
    version = (releases[0].version + 1) if releases else 1
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Release(version, image, strategy, at, outcome, command)


def record_release(
    api: MachinesAPI,
    app: str,
    release: Release,
    *,
    nonce_for: Callable[[str], str | None] = lambda _mid: None,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[Release]:
    """Add ``release`` to the log on every machine of the app; the log as written, newest first.

    A machine that refuses (leased by someone else, gone) is skipped with a progress line: the log lives
    on every machine, so one missing copy loses nothing."""
    machines = api.list_machines(app)
    log = [release] + [r for r in app_releases(machines) if r.version != release.version]
    log = log[:MAX_RELEASES]
    text = json.dumps([r.to_json() for r in log], separators=(",", ":"), sort_keys=True)

    def write(m: Machine) -> None:
        try:
            api.set_metadata(app, m.id, RELEASES_KEY, text, nonce=nonce_for(m.id))
        except FlyAPIError as e:
            progress(f"could not record release v{release.version} on machine {m.id}: {e}")

    from nixfly.fly.deploy import parallel

    parallel(write, [m for m in machines if m.process_group != "fly_app_release_command"])
    return log
