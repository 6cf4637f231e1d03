"""The pure part of a deploy: what would change, as data, with no I/O (what ``--dry-run`` prints).

``plan_deploy`` compares the app's machines with the desired MachineConfig per process group, in the
normal form of :mod:`nixfly.fly.normal` (so an unchanged deploy plans nothing), and returns the machines
to create, update and destroy with a config diff each, plus the volumes that must be created.
``Plan.render`` describes the steps the chosen strategy takes (a canary machine, green machines that
replace blue ones) rather than only the end state.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nixfly.errors import UsageError
from nixfly.fly.api import JSON, Machine
from nixfly.fly.normal import BOOKKEEPING_METADATA, comparable, same_config

Strategy = Literal["immediate", "rolling", "canary", "bluegreen"]
STRATEGIES: tuple[str, ...] = ("immediate", "rolling", "canary", "bluegreen")
RELEASE_GROUP = "fly_app_release_command"  # flyctl's process-group name for one-off release machines
SECRETS_VERSION_KEY = "nixfly_secrets_version"  # metadata: which secrets version a machine runs with
SECRETS_DIGEST_KEY = "nixfly_secrets"  # metadata: a digest of the secrets' names and digests it runs with


def require_digest_ref(image: str) -> str:
    """``image`` if it is pinned by digest (``name@sha256:<64 hex>``); UsageError for a tag-only ref."""
    name, sep, digest = image.partition("@")
    algo, _, hexpart = digest.partition(":")
    if (
        not sep
        or not name
        or algo != "sha256"
        or len(hexpart) != 64
        or not all(c in "0123456789abcdef" for c in hexpart)
    ):
        raise UsageError(
            f"image {image!r} is not pinned by digest: deploy needs NAME@sha256:<64 hex> "
            "(nixfly push prints one); a mutable tag is never deployed"
        )
    return image


@dataclass(frozen=True)
class DeploySettings:
    """How to deploy; the deploy service fills it from fly.toml [deploy] and flags."""

    app: str
    strategy: Strategy = "rolling"
    max_unavailable: float | int = 0.33
    wait_timeout: float = 300.0
    release_command: tuple[str, ...] | None = None
    region: str = "ams"
    min_secrets_version: int | None = None
    lease_ttl: int = 60
    # How often a machine's checks and events are read while waiting for it (no fixed sleeps otherwise).
    poll_interval: float = 0.2
    # The one-off machine's config for release_command (machineconfig.release_command_config), if any.
    release_config: JSON | None = None
    # Size (GB) to create each missing volume with, by volume name; 1 GB when not listed.
    volume_sizes: tuple[tuple[str, int], ...] = ()
    # The other CreateVolumeRequest fields by volume name (encrypted, compute, snapshot settings).
    volume_extra: tuple[tuple[str, JSON], ...] = ()
    # First deploy of a group with services (and no volume): two machines, as flyctl's --ha.
    ha: bool = True
    # A new machine that exits non-zero this many times before it is healthy fails the deploy.
    max_crashes: int = 1
    rollback_on_interrupt: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown deploy strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.max_unavailable <= 0:
            raise UsageError("max_unavailable must be > 0")

    def batch_size(self, n: int) -> int:
        """How many machines may be updated at once after the first one."""
        # flyctl (machines_deploymachinesapp.go, getPoolSize): 1 or more is a count (1.5 is 1), a fraction
        # of the group's machines rounds up.
        if self.max_unavailable >= 1:
            return int(self.max_unavailable)
        return max(1, math.ceil(self.max_unavailable * n))


@dataclass(frozen=True)
class Action:
    """One step of a plan. ``new``/``old`` are MachineConfig dicts (None where not applicable)."""

    kind: Literal["create", "update", "destroy"]
    group: str
    machine_id: str | None
    region: str
    new: JSON | None = None
    old: JSON | None = None

    def diff(self) -> list[str]:
        """``- key: old`` / ``+ key: new`` lines over flattened config keys, sorted by key."""
        # Compared in normal form: what the API fills in or spells differently is not a change.
        before = _flatten(comparable(self.old)) if self.old else {}
        after = _flatten(comparable(self.new)) if self.new else {}
        lines: list[str] = []
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                if key in before:
                    lines.append(f"- {key}: {before[key]}")
                if key in after:
                    lines.append(f"+ {key}: {after[key]}")
        return lines

    def to_json(self) -> JSON:
        return {"action": self.kind, "group": self.group, "machine": self.machine_id, "region": self.region,
                "diff": self.diff()}  # fmt: skip


@dataclass(frozen=True)
class VolumeCreate:
    """A volume the deploy will create because no unattached one of that name exists in the region."""

    name: str
    region: str
    size_gb: int
    group: str

    def to_json(self) -> JSON:
        return {"name": self.name, "region": self.region, "size_gb": self.size_gb, "group": self.group}


@dataclass(frozen=True)
class Plan:
    app: str
    image: str
    strategy: Strategy
    actions: tuple[Action, ...]
    unchanged: tuple[str, ...]
    release_command: tuple[str, ...] | None = None
    volumes: tuple[VolumeCreate, ...] = ()

    def of(self, kind: str, group: str | None = None) -> list[Action]:
        return [a for a in self.actions if a.kind == kind and (group is None or a.group == group)]

    @property
    def empty(self) -> bool:
        return not self.actions and not self.release_command

    def steps(self) -> list[JSON]:
        """The steps the strategy takes, in order: what ``--dry-run`` describes."""
        out: list[JSON] = []
        if self.release_command:
            out.append({"step": "release_command", "command": list(self.release_command)})
        for v in self.volumes:
            out.append({"step": "create_volume", **v.to_json()})
        for a in self.of("create"):
            out.append({"step": "create", "group": a.group, "region": a.region, "diff": a.diff()})
        for group in sorted({a.group for a in self.of("update")}):
            updates = self.of("update", group)
            if self.strategy == "canary":
                out.append({"step": "create_canary", "group": group, "region": updates[0].region,
                            "then": "destroyed once healthy"})  # fmt: skip
            for a in updates:
                if self.strategy == "bluegreen":
                    out.append({"step": "create_green", "group": group, "region": a.region, "replaces": a.machine_id,
                                "diff": a.diff()})  # fmt: skip
                else:
                    out.append({"step": "update", "group": group, "machine": a.machine_id, "diff": a.diff()})
            if self.strategy == "bluegreen":
                out += [{"step": "destroy_blue", "group": group, "machine": a.machine_id} for a in updates]
        out += [{"step": "destroy", "group": a.group, "machine": a.machine_id} for a in self.of("destroy")]
        return out

    def render(self) -> list[str]:
        """Human-readable plan: one line per step, followed by its indented diff."""
        out = [f"deploy {self.image} to app {self.app} ({self.strategy})"]
        if self.empty:
            out.append(f"no change: {len(self.unchanged)} machine(s) already run this image and config")
            return out
        for st in self.steps():
            kind = st["step"]
            if kind == "release_command":
                out.append(f"run release command: {' '.join(st['command'])}")
            elif kind == "create_volume":
                out.append(f"create volume {st['name']} ({st['size_gb']}GB) in {st['region']} [{st['group']}]")
            elif kind == "create":
                out.append(f"create new machine in {st['region']} [{st['group']}]")
            elif kind == "create_canary":
                out.append(f"create canary machine in {st['region']} [{st['group']}], destroyed once healthy")
            elif kind == "create_green":
                out.append(f"create green machine in {st['region']} [{st['group']}] to replace {st['replaces']}")
            elif kind == "destroy_blue":
                out.append(f"destroy blue machine {st['machine']} [{st['group']}] once every green is healthy")
            else:
                out.append(f"{kind} {st['machine']} [{st['group']}]")
            out += [f"    {line}" for line in st.get("diff", [])]
        out.append(f"{len(self.unchanged)} machine(s) unchanged")
        return out

    def to_json(self) -> JSON:
        return {"app": self.app, "image": self.image, "strategy": self.strategy,
                "release_command": list(self.release_command) if self.release_command else None,
                "actions": [a.to_json() for a in self.actions], "unchanged": list(self.unchanged),
                "volumes": [v.to_json() for v in self.volumes], "steps": self.steps(),
                "no_change": self.empty}  # fmt: skip


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def carry_over(desired: JSON, old: JSON) -> JSON:
    """The desired config, keeping what fly.toml cannot know: attached volume ids, the current guest and
    nixfly's bookkeeping metadata (the release log)."""
    new = copy.deepcopy(desired)
    if "guest" not in new and "guest" in old:
        new["guest"] = copy.deepcopy(old["guest"])
    old_mounts = {m.get("path"): m for m in old.get("mounts") or [] if isinstance(m, dict)}
    for mount in new.get("mounts") or []:
        prev = old_mounts.get(mount.get("path"))
        if prev and "volume" not in mount and prev.get("volume"):
            mount["volume"] = prev["volume"]
    old_meta = old.get("metadata") if isinstance(old.get("metadata"), dict) else {}
    for key in BOOKKEEPING_METADATA:
        if isinstance(old_meta, dict) and key in old_meta:
            new.setdefault("metadata", {})[key] = old_meta[key]
    return new


def secrets_digest(secrets: Sequence[JSON]) -> str:
    """A short digest of the app's secrets (names and the API's value digests), never of values."""
    text = "\n".join(sorted(f"{s.get('name')}={s.get('digest')}" for s in secrets))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def desired_with_secrets(
    desired: Mapping[str, JSON], version: int | None, digest: str | None = None
) -> dict[str, JSON]:
    """Tag each config with the secrets it runs with, so a secrets change alone still rolls the machines."""
    out = {g: copy.deepcopy(c) for g, c in desired.items()}
    for config in out.values():
        meta = config.setdefault("metadata", {})
        if version is not None:
            meta[SECRETS_VERSION_KEY] = str(version)
        if digest is not None:
            meta[SECRETS_DIGEST_KEY] = digest
    return out


def initial_count(config: JSON, ha: bool) -> int:
    """How many machines a group's first deploy creates: two for a service without a volume (--ha)."""
    return 2 if ha and config.get("services") and not config.get("mounts") else 1


def plan_deploy(
    machines: Sequence[Machine],
    desired: Mapping[str, JSON],
    settings: DeploySettings,
    *,
    volumes: Sequence[JSON] = (),
) -> Plan:
    """What a deploy of ``desired`` (process group → MachineConfig) would do to ``machines``. Pure.

    Groups without machines get new machines in ``settings.region`` (see :func:`initial_count`);
    machines whose config differs in normal form are updated; machines of groups no longer desired (and
    leftover release-command machines) are destroyed. ``volumes`` (the app's volumes) tell which mounts
    of new machines need a volume created. Every desired config must carry the same digest-pinned image.
    """
    if not desired:
        raise UsageError("nothing to deploy: no process groups")
    images = {str(c.get("image", "")) for c in desired.values()}
    if len(images) != 1:
        raise UsageError(f"process groups disagree on the image: {sorted(images)}")
    image = require_digest_ref(images.pop())
    actions: list[Action] = []
    unchanged: list[str] = []
    by_group: dict[str, list[Machine]] = {}
    for m in sorted(machines, key=lambda m: m.id):
        by_group.setdefault(m.process_group, []).append(m)
    for group in sorted(desired):
        current = by_group.get(group, [])
        if not current:
            for _ in range(initial_count(desired[group], settings.ha)):
                actions.append(Action("create", group, None, settings.region, new=copy.deepcopy(desired[group])))
        for m in current:
            new = carry_over(desired[group], m.config)
            if same_config(new, m.config):
                unchanged.append(m.id)
            else:
                actions.append(Action("update", group, m.id, m.region, new=new, old=m.config))
    for group in sorted(by_group.keys() - desired.keys()):
        actions += [Action("destroy", group, m.id, m.region, old=m.config) for m in by_group[group]]
    return Plan(settings.app, image, settings.strategy, tuple(actions), tuple(unchanged),
                settings.release_command, _volume_creates(actions, volumes, settings))  # fmt: skip


def _volume_creates(
    actions: Sequence[Action], volumes: Sequence[JSON], settings: DeploySettings
) -> tuple[VolumeCreate, ...]:
    free = [v for v in volumes if not v.get("attached_machine_id")]
    sizes = dict(settings.volume_sizes)
    out: list[VolumeCreate] = []
    for a in actions:
        if a.kind != "create" or a.new is None:
            continue
        for mount in a.new.get("mounts") or []:
            if not isinstance(mount, dict) or mount.get("volume"):
                continue
            name = str(mount.get("name") or "data")
            match = next((v for v in free if v.get("name") == name and v.get("region") == a.region), None)
            if match is not None:
                free.remove(match)
            else:
                out.append(VolumeCreate(name, a.region, int(sizes.get(name, 1)), a.group))
    return tuple(out)
