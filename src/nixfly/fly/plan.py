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
from dataclasses import dataclass, field
from typing import Any, Literal

from nixfly.errors import UsageError
from nixfly.fly.api import JSON, Machine
from nixfly.fly.normal import GREEN_FOR_KEY, GROUP_SIZE_KEY, RELEASES_KEY, comparable, same_config
from nixfly.fly.state import Holder

Strategy = Literal["immediate", "rolling", "canary", "bluegreen"]
STRATEGIES: tuple[str, ...] = ("immediate", "rolling", "canary", "bluegreen")
SECRETS_VERSION_KEY = "nixfly_secrets_version"  # metadata: which secrets version a machine runs with
SECRETS_DIGEST_KEY = "nixfly_secrets"  # metadata: a digest of the secrets' names and digests it runs with
# States in which flyctl starts a machine it updates; any other state (stopped, suspended, ...) is
# updated with skip_launch and left as it was (flyctl: internal/command/deploy/machines_launchinput.go,
# shouldSkipLaunch).
RUNNING_STATES = ("started", "starting", "failed")
IP_MODES = ("public", "private", "none")


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
    # Seconds a lease lasts unless refreshed (flyctl's default, internal/command/deploy/machines.go, is 13 s:
    # a killed deploy keeps its machines locked no longer than that).
    lease_ttl: int = 13
    # How often a machine's checks and events are read while waiting for it (no fixed sleeps otherwise).
    poll_interval: float = 0.2
    # A machine without checks counts as healthy once it has run this long without exiting (flyctl's
    # smoke check: internal/machine/leasable_machine.go, WaitForSmokeChecksToPass, 10 s). 0 skips it.
    smoke_period: float = 10.0
    # Start (and wait for) machines that were stopped or suspended when the deploy began, instead of
    # updating them with skip_launch.
    start_stopped: bool = False
    # Only change these machines / groups / regions (flyctl's --only-machines, --process-groups, --regions).
    only_machines: tuple[str, ...] = ()
    process_groups: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    # Send the changes, do not wait for machines to be healthy (flyctl's --detach).
    detach: bool = False
    # Public addresses on a first deploy: "public" (flyctl's default), "private" (flycast), "none".
    ips: str = "public"
    org: str | None = None
    # Who this deploy is (written into each lease's description).
    holder: Holder = field(default_factory=Holder.me)
    # The release log to record in the metadata of every machine this deploy creates or updates.
    release_log: str | None = None
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
        if self.ips not in IP_MODES:
            raise UsageError(f"unknown IP mode {self.ips!r}; use one of {', '.join(IP_MODES)}")

    @property
    def filtered(self) -> bool:
        """Whether the deploy is limited to some machines, groups or regions."""
        return bool(self.only_machines or self.process_groups or self.regions)

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

    kind: Literal["create", "update", "destroy", "replace", "switch"]
    group: str
    machine_id: str | None
    region: str
    new: JSON | None = None
    old: JSON | None = None
    # update: the machine was stopped or suspended when the deploy began; it is updated without being
    # started (skip_launch) and not waited on.
    skip_launch: bool = False
    # create: a standby machine for the group's first new machine (flyctl's standby for groups without
    # services, internal/command/deploy/machines_deploymachinesapp.go).
    standby: bool = False
    # replace: why the machine cannot be updated in place (a mount added, removed or renamed, or another
    # host dedication); a new machine is created and this one destroyed.
    reason: str = ""
    # switch: the blue machine this already-created green replaces (an interrupted bluegreen deploy).
    green_for: str | None = None

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
        out: JSON = {"action": self.kind, "group": self.group, "machine": self.machine_id, "region": self.region,
                     "diff": self.diff()}  # fmt: skip
        if self.skip_launch:
            out["stays_stopped"] = True
        if self.standby:
            out["standby"] = True
        if self.reason:
            out["reason"] = self.reason
        if self.green_for:
            out["replaces"] = self.green_for
        return out


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
    # IP address types to allocate first (a first deploy of an app with services and no address).
    ips: tuple[str, ...] = ()
    # The app does not exist yet; the deploy creates it first (--create-app).
    create_app: bool = False
    notes: tuple[str, ...] = ()

    def of(self, kind: str, group: str | None = None) -> list[Action]:
        return [a for a in self.actions if a.kind == kind and (group is None or a.group == group)]

    @property
    def empty(self) -> bool:
        return not self.actions and not self.release_command and not self.ips and not self.create_app

    def steps(self) -> list[JSON]:
        """The steps the strategy takes, in order: what ``--dry-run`` describes."""
        out: list[JSON] = []
        if self.create_app:
            out.append({"step": "create_app", "app": self.app})
        out += [{"step": "allocate_ip", "type": kind} for kind in self.ips]
        if self.release_command:
            out.append({"step": "release_command", "command": list(self.release_command)})
        for v in self.volumes:
            out.append({"step": "create_volume", **v.to_json()})
        for a in self.of("create"):
            out.append({"step": "create", "group": a.group, "region": a.region, "standby": a.standby,
                        "diff": a.diff()})  # fmt: skip
        for a in self.of("switch"):
            out.append({"step": "switch_green", "group": a.group, "machine": a.machine_id, "replaces": a.green_for})
        for group in sorted({a.group for a in self.of("update")}):
            updates = [a for a in self.of("update", group) if not a.skip_launch]
            if updates and self.strategy == "canary":
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
            for a in self.of("update", group):
                if a.skip_launch:
                    out.append({"step": "update_stopped", "group": group, "machine": a.machine_id, "diff": a.diff()})
        for a in self.of("replace"):
            out.append({"step": "replace", "group": a.group, "machine": a.machine_id, "reason": a.reason,
                        "diff": a.diff()})  # fmt: skip
        out += [{"step": "destroy", "group": a.group, "machine": a.machine_id} for a in self.of("destroy")]
        return out

    def render(self) -> list[str]:
        """Human-readable plan: one line per step, followed by its indented diff."""
        out = [f"deploy {self.image} to app {self.app} ({self.strategy})"]
        out += [f"note: {n}" for n in self.notes]
        if self.empty:
            out.append(f"no change: {len(self.unchanged)} machine(s) already run this image and config")
            return out
        for st in self.steps():
            kind = st["step"]
            if kind == "create_app":
                out.append(f"create app {st['app']}")
            elif kind == "allocate_ip":
                out.append(f"allocate IP address ({IP_WORDS.get(st['type'], st['type'])})")
            elif kind == "release_command":
                out.append(f"run release command: {' '.join(st['command'])}")
            elif kind == "create_volume":
                out.append(f"create volume {st['name']} ({st['size_gb']}GB) in {st['region']} [{st['group']}]")
            elif kind == "create":
                what = "standby machine (created stopped)" if st["standby"] else "new machine"
                out.append(f"create {what} in {st['region']} [{st['group']}]")
            elif kind == "create_canary":
                out.append(f"create canary machine in {st['region']} [{st['group']}], destroyed once healthy")
            elif kind == "create_green":
                out.append(f"create green machine in {st['region']} [{st['group']}] to replace {st['replaces']}")
            elif kind == "destroy_blue":
                out.append(f"destroy blue machine {st['machine']} [{st['group']}] once every green is healthy")
            elif kind == "switch_green":
                out.append(f"finish switching: green {st['machine']} [{st['group']}] replaces {st['replaces']}")
            elif kind == "update_stopped":
                out.append(f"update {st['machine']} [{st['group']}] without starting it (it stays stopped)")
            elif kind == "replace":
                out.append(f"replace {st['machine']} [{st['group']}] with a new machine ({st['reason']})")
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
                "ips": list(self.ips), "create_app": self.create_app, "notes": list(self.notes),
                "no_change": self.empty}  # fmt: skip


# The address types the API allocates, in words.
IP_WORDS = {"v6": "dedicated IPv6", "shared_v4": "shared IPv4", "v4": "dedicated IPv4",
            "private_v6": "private IPv6 (flycast)"}  # fmt: skip


def ip_kind(item: JSON) -> str:
    """What an address of the app's list is, as ``fly ips list`` calls it: private IPv6 (flycast, in Fly's
    ``fdaa:`` 6PN range), public IPv6, shared IPv4 or dedicated IPv4."""
    ip = str(item.get("ip", ""))
    if ":" in ip:
        return "private IPv6" if ip.lower().startswith("fdaa:") else "public IPv6"
    return "shared IPv4" if item.get("shared") else "dedicated IPv4"


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


def _mounts(config: JSON) -> list[JSON]:
    return [m for m in config.get("mounts") or [] if isinstance(m, dict)]


def _host_dedication(config: JSON) -> str:
    guest = config.get("guest")
    value = guest.get("host_dedication_id") if isinstance(guest, dict) else None
    return value.strip() if isinstance(value, str) else ""


def replacement_reason(desired: JSON, old: JSON) -> str:
    """Why a machine running ``old`` cannot take ``desired`` in place ("" if it can). The API cannot attach,
    detach or swap a volume, nor move a machine to another dedicated host (flyctl replaces the machine then:
    internal/command/deploy/machines_launchinput.go, launchInputForUpdate)."""
    new_m, old_m = _mounts(desired), _mounts(old)
    if old_m and not new_m:
        return "its volume mount was removed"
    if new_m and not old_m:
        return "a volume mount was added"
    if new_m and old_m and old_m[0].get("name") and new_m[0].get("name") != old_m[0].get("name"):
        return f"its volume is {old_m[0].get('name')!r}, fly.toml mounts {new_m[0].get('name')!r}"
    hdid = _host_dedication(desired)
    if hdid and hdid != _host_dedication(old):
        return f"host dedication changed to {hdid}"
    return ""


def carry_over(desired: JSON, old: JSON) -> JSON:
    """The desired config, keeping what fly.toml cannot know: attached volume ids, the current guest, a
    standby's standbys (flyctl keeps them while the group has no services) and nixfly's release log."""
    new = copy.deepcopy(desired)
    if "guest" not in new and "guest" in old:
        new["guest"] = copy.deepcopy(old["guest"])
    new_m, old_m = _mounts(new), _mounts(old)
    same_volume = bool(new_m and old_m) and (not old_m[0].get("name") or old_m[0].get("name") == new_m[0].get("name"))
    if same_volume and old_m[0].get("volume") and "volume" not in new_m[0]:
        # Same volume (name unchanged or unknown): only the path may move (launchInputForUpdate).
        new_m[0]["volume"] = old_m[0]["volume"]
    if old.get("standbys") and not new.get("services"):
        new["standbys"] = copy.deepcopy(old["standbys"])
        old_env = old.get("env") if isinstance(old.get("env"), dict) else {}
        if isinstance(old_env, dict) and "FLY_STANDBY_FOR" in old_env:
            new.setdefault("env", {})["FLY_STANDBY_FOR"] = old_env["FLY_STANDBY_FOR"]
    old_meta = old.get("metadata") if isinstance(old.get("metadata"), dict) else {}
    if isinstance(old_meta, dict) and RELEASES_KEY in old_meta:
        new.setdefault("metadata", {})[RELEASES_KEY] = old_meta[RELEASES_KEY]
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
    """How many machines a group's first deploy creates (flyctl, --ha: internal/command/deploy/
    machines_deploymachinesapp.go): one with a volume; two for a service; else one plus a standby."""
    if not ha or config.get("mounts"):
        return 1
    return 2


def should_skip_launch(state: str) -> bool:
    """Whether an update leaves the machine as it is instead of starting it (flyctl's shouldSkipLaunch)."""
    return state not in RUNNING_STATES


def plan_ips(desired: Mapping[str, JSON], existing: Sequence[JSON], mode: str) -> tuple[tuple[str, ...], str | None]:
    """The IP address types a first deploy allocates, and a note for the user (flyctl: internal/command/
    deploy/deploy_first.go, provisionIpsOnFirstDeploy; internal/appconfig/config.go, DetermineIPType).

    Nothing when no group has services or ``mode`` is "none". "private": one private IPv6 (flycast), unless
    the app has an address. "public": a dedicated IPv6 and a shared IPv4, unless a service needs a dedicated
    IPv4 (UDP, or ports other than 80 with ["http"] and 443 with ["tls","http"]): flyctl asks before
    allocating that one (it costs money), so nixfly allocates the IPv6 only and says how to add the IPv4.
    flyctl allocates nothing once the app has any address; nixfly allocates what is still missing of that
    set, so a first deploy interrupted between the two allocations ends with both after a re-run (an app
    with a private address is left alone)."""
    services = [s for c in desired.values() for s in c.get("services") or [] if isinstance(s, dict)]
    if not services or mode == "none":
        return (), None
    if mode == "private":
        return ((), None) if existing else (("private_v6",), None)
    kinds_held = {ip_kind(i) for i in existing if i.get("ip")}
    if "private IPv6" in kinds_held:
        return (), None
    has_v6 = "public IPv6" in kinds_held
    has_v4 = bool(kinds_held & {"shared IPv4", "dedicated IPv4"})
    dedicated = False
    for svc in services:
        if svc.get("protocol") == "udp":
            dedicated = True
        for port in svc.get("ports") or []:
            if not isinstance(port, dict):
                continue
            handlers = port.get("handlers") or []
            number = port.get("port")
            plain_http = number == 80 and handlers == ["http"]
            tls_http = number == 443 and sorted(handlers) == ["http", "tls"]
            if not (plain_http or tls_http):  # a range (no single port) counts as non-HTTP too
                dedicated = True
    kinds = [] if has_v6 else ["v6"]
    note = None
    if dedicated and not has_v4:
        note = ("a service needs a dedicated IPv4 (UDP, or ports other than HTTP on 80 and TLS+HTTP on 443): only "
                "an IPv6 is allocated; add the IPv4 with `fly ips allocate-v4`")  # fmt: skip
    elif not has_v4:
        kinds.append("shared_v4")
    return tuple(kinds), note


def _selected(m: Machine, settings: DeploySettings) -> bool:
    if settings.only_machines and m.id not in settings.only_machines:
        return False
    if settings.process_groups and m.process_group not in settings.process_groups:
        return False
    return not (settings.regions and m.region not in settings.regions)


def plan_deploy(
    machines: Sequence[Machine],
    desired: Mapping[str, JSON],
    settings: DeploySettings,
    *,
    volumes: Sequence[JSON] = (),
    ips: tuple[str, ...] = (),
    create_app: bool = False,
    notes: Sequence[str] = (),
) -> Plan:
    """What a deploy of ``desired`` (process group → MachineConfig) would do to ``machines``. Pure.

    The plan counts what the app should have, so a re-run after any interruption converges:

    - a group without machines gets :func:`initial_count` new machines in ``settings.region``, each tagged
      with that count; a group with fewer machines than its tag says (an interrupted first deploy) gets
      the missing ones (a group without services: the second is a standby, created stopped);
    - a machine whose config differs in normal form is updated (with skip_launch when it was not running,
      unless ``start_stopped``), or replaced when the API cannot change it in place;
    - a green machine of an interrupted bluegreen deploy that already runs the desired config finishes the
      switch (its blue is destroyed); one that does not is destroyed;
    - machines of groups no longer desired (and leftover release-command machines) are destroyed.

    ``volumes`` (the app's volumes) tell which mounts of new machines need a volume created. Every desired
    config must carry the same digest-pinned image.
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
        want = desired[group]
        current = by_group.get(group, [])
        ids = {m.id for m in current}
        group_selected = not settings.process_groups or group in settings.process_groups
        # Greens of an interrupted bluegreen deploy whose blue still exists.
        switching: set[str] = set()
        regular: list[Machine] = []
        for m in current:
            blue = m.meta(GREEN_FOR_KEY)
            if blue and blue in ids and blue != m.id:
                if same_config(carry_over(want, m.config), m.config):
                    actions.append(Action("switch", group, m.id, m.region, old=m.config, green_for=blue))
                    switching.add(blue)
                else:
                    actions.append(Action("destroy", group, m.id, m.region, old=m.config, reason="abandoned green"))
                continue
            regular.append(m)
        regular = [m for m in regular if m.id not in switching]
        sizes = [int(v) for m in current if (v := m.meta(GROUP_SIZE_KEY)) and v.isdigit()]
        target = max(sizes) if sizes else (0 if current else initial_count(want, settings.ha))
        # A filter by machine or region never creates machines; --process-groups creates the named groups'.
        may_create = group_selected and not settings.only_machines and not settings.regions
        missing = max(0, target - len(regular) - len(switching)) if may_create else 0
        if missing:
            standbys = sum(1 for m in regular if m.config.get("standbys"))
            for i in range(missing):
                new = copy.deepcopy(want)
                new.setdefault("metadata", {})[GROUP_SIZE_KEY] = str(target)
                # A group without services: its second machine is a standby of the first (flyctl).
                standby = not want.get("services") and not want.get("mounts") and target > 1 and standbys == 0 and (
                    len(regular) + i >= 1)  # fmt: skip
                actions.append(Action("create", group, None, settings.region, new=new, standby=standby))
        for m in regular:
            if not _selected(m, settings):
                unchanged.append(m.id)
                continue
            new = carry_over(want, m.config)
            reason = replacement_reason(new, m.config)
            if reason:
                for mount in _mounts(new):
                    mount.pop("volume", None)
                actions.append(Action("replace", group, m.id, m.region, new=new, old=m.config, reason=reason))
            elif same_config(new, m.config):
                unchanged.append(m.id)
            else:
                skip = should_skip_launch(m.state) and not settings.start_stopped
                actions.append(Action("update", group, m.id, m.region, new=new, old=m.config, skip_launch=skip))
    if not settings.filtered:
        for group in sorted(by_group.keys() - desired.keys()):
            actions += [Action("destroy", group, m.id, m.region, old=m.config) for m in by_group[group]]
    return Plan(settings.app, image, settings.strategy, tuple(actions), tuple(unchanged),
                settings.release_command, _volume_creates(actions, volumes, settings), ips, create_app,
                tuple(notes))  # fmt: skip


def _volume_creates(
    actions: Sequence[Action], volumes: Sequence[JSON], settings: DeploySettings
) -> tuple[VolumeCreate, ...]:
    free = [v for v in volumes if not v.get("attached_machine_id")]
    sizes = dict(settings.volume_sizes)
    out: list[VolumeCreate] = []
    for a in actions:
        if a.kind not in ("create", "replace") or a.new is None:
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
