"""Deploy a digest-pinned image to Fly Machines: a pure plan, then an executor for each strategy.

``plan_deploy`` compares the app's machines with the desired MachineConfig per process group and returns
the machines to create, update and destroy, each with a config diff; it performs no I/O, which is what
``--dry-run`` prints. ``Deployer.run`` carries a plan out: it leases every machine it will touch before
touching any (a lease held by someone else stops the deploy with nothing changed), refreshes the leases
in the background, and releases them on every exit path, Ctrl-C included. Leases are also recorded on
disk so that a re-run after a hard kill can release the ones it left.

Beyond flyctl: when an updated machine crashes or fails its checks during a rolling or canary deploy,
every machine already updated gets its previous config back, and the error names the failing machine
with its last events.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nixfly.errors import DeployError, UsageError
from nixfly.fly.api import JSON, FlyAPIError, LeaseConflict, Machine, MachinesAPI

Strategy = Literal["immediate", "rolling", "canary", "bluegreen"]
STRATEGIES: tuple[str, ...] = ("immediate", "rolling", "canary", "bluegreen")
RELEASE_GROUP = "fly_app_release_command"  # flyctl's process-group name for one-off release machines
SECRETS_VERSION_KEY = "nixfly_secrets_version"  # metadata key: which secrets version a machine runs with
LEASE_DESCRIPTION = "nixfly deploy"


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
    """How to deploy; the CLI fills it from fly.toml [deploy] and flags."""

    app: str
    strategy: Strategy = "rolling"
    max_unavailable: float | int = 0.33
    wait_timeout: float = 300.0
    release_command: tuple[str, ...] | None = None
    region: str = "ams"
    min_secrets_version: int | None = None
    lease_ttl: int = 60
    poll_interval: float = 1.0
    # The one-off machine's config for release_command (machineconfig.release_command_config), if any.
    release_config: JSON | None = None
    # Size (GB) to create each missing volume with, by volume name; 1 GB when not listed.
    volume_sizes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown deploy strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.max_unavailable <= 0:
            raise UsageError("max_unavailable must be > 0")

    def batch_size(self, n: int) -> int:
        """How many machines may be updated at once after the first one."""
        if isinstance(self.max_unavailable, float) and self.max_unavailable <= 1.0:
            # A fraction bounds how many may be down, so round down (but always make progress).
            return max(1, math.floor(self.max_unavailable * n))
        return max(1, int(self.max_unavailable))


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
        before, after = _flatten(self.old or {}), _flatten(self.new or {})
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
class Plan:
    app: str
    image: str
    strategy: Strategy
    actions: tuple[Action, ...]
    unchanged: tuple[str, ...]
    release_command: tuple[str, ...] | None = None

    def of(self, kind: str, group: str | None = None) -> list[Action]:
        return [a for a in self.actions if a.kind == kind and (group is None or a.group == group)]

    def render(self) -> list[str]:
        """Human-readable plan: one header line per action followed by its indented diff."""
        out = [f"deploy {self.image} to app {self.app} ({self.strategy})"]
        if self.release_command:
            out.append(f"run release command: {' '.join(self.release_command)}")
        for a in self.actions:
            target = a.machine_id or f"new machine in {a.region}"
            out.append(f"{a.kind} {target} [{a.group}]")
            out += [f"    {line}" for line in (a.diff() if a.kind != "destroy" else [])]
        out.append(f"{len(self.unchanged)} machine(s) unchanged")
        return out

    def to_json(self) -> JSON:
        return {"app": self.app, "image": self.image, "strategy": self.strategy,
                "release_command": list(self.release_command) if self.release_command else None,
                "actions": [a.to_json() for a in self.actions], "unchanged": list(self.unchanged)}  # fmt: skip


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


def _carry_over(desired: JSON, old: JSON) -> JSON:
    """The desired config, keeping what fly.toml cannot know: attached volume ids and the current guest."""
    new = copy.deepcopy(desired)
    if "guest" not in new and "guest" in old:
        new["guest"] = copy.deepcopy(old["guest"])
    old_mounts = {m.get("path"): m for m in old.get("mounts") or [] if isinstance(m, dict)}
    for mount in new.get("mounts") or []:
        prev = old_mounts.get(mount.get("path"))
        if prev and "volume" not in mount and prev.get("volume"):
            mount["volume"] = prev["volume"]
    return new


def desired_with_secrets(desired: Mapping[str, JSON], version: int | None) -> dict[str, JSON]:
    """Tag each config with the secrets version, so a secrets change alone still rolls the machines."""
    out = {g: copy.deepcopy(c) for g, c in desired.items()}
    if version is not None:
        for config in out.values():
            config.setdefault("metadata", {})[SECRETS_VERSION_KEY] = str(version)
    return out


def plan_deploy(machines: Sequence[Machine], desired: Mapping[str, JSON], settings: DeploySettings) -> Plan:
    """What a deploy of ``desired`` (process group → MachineConfig) would do to ``machines``. Pure.

    Groups without machines get one new machine in ``settings.region``; machines whose config differs
    are updated; machines of groups no longer desired (and leftover release-command machines) are
    destroyed. Every desired config must carry the same digest-pinned image.
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
            actions.append(Action("create", group, None, settings.region, new=copy.deepcopy(desired[group])))
        for m in current:
            new = _carry_over(desired[group], m.config)
            if new == m.config:
                unchanged.append(m.id)
            else:
                actions.append(Action("update", group, m.id, m.region, new=new, old=m.config))
    for group in sorted(by_group.keys() - desired.keys()):
        actions += [Action("destroy", group, m.id, m.region, old=m.config) for m in by_group[group]]
    return Plan(settings.app, image, settings.strategy, tuple(actions), tuple(unchanged),
                settings.release_command)  # fmt: skip


# -- lease bookkeeping ----------------------------------------------------------------------------


def default_state_dir() -> Path:
    """Where nixfly remembers leases and secrets versions (``$NIXFLY_STATE_DIR`` or XDG state home)."""
    explicit = os.environ.get("NIXFLY_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nixfly"


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LeaseStore:
    """Nonces of leases this host holds, per app, on disk (written atomically), for crash recovery."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "leases" / f"{app}.json"
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def put(self, machine_id: str, nonce: str) -> None:
        with self._lock:
            data = self.load()
            data[machine_id] = nonce
            _atomic_write_json(self.path, data)

    def drop(self, machine_id: str) -> None:
        with self._lock:
            data = self.load()
            if data.pop(machine_id, None) is not None:
                _atomic_write_json(self.path, data)


class SecretsVersionStore:
    """The latest secrets version ``nixfly secrets`` saw per app, so deploys pass min_secrets_version."""

    def __init__(self, state_dir: Path, app: str) -> None:
        self.path = state_dir / "secrets" / f"{app}.json"

    def get(self) -> int | None:
        try:
            v = json.loads(self.path.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            return None
        return v if isinstance(v, int) else None

    def set(self, version: int) -> None:
        _atomic_write_json(self.path, {"version": version})


# -- execution ------------------------------------------------------------------------------------


class MachineFailed(Exception):
    """An updated or new machine did not become healthy (internal; turned into DeployError)."""

    def __init__(self, machine_id: str, reason: str, events: list[str]) -> None:
        super().__init__(reason)
        self.machine_id = machine_id
        self.reason = reason
        self.events = events


@dataclass
class DeployResult:
    app: str
    image: str
    strategy: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    volumes_created: list[str] = field(default_factory=list)
    release_exit_code: int | None = None

    def to_json(self) -> JSON:
        return {"app": self.app, "image": self.image, "strategy": self.strategy, "created": self.created,
                "updated": self.updated, "destroyed": self.destroyed, "volumes_created": self.volumes_created,
                "release_exit_code": self.release_exit_code}  # fmt: skip


def _describe_events(events: Sequence[JSON], limit: int = 5) -> list[str]:
    out = []
    for ev in list(events)[:limit]:
        text = f"{ev.get('type', '?')}/{ev.get('status', '?')}"
        exit_event = (ev.get("request") or {}).get("exit_event") if isinstance(ev.get("request"), dict) else None
        if isinstance(exit_event, dict) and "exit_code" in exit_event:
            text += f" exit_code={exit_event['exit_code']}"
        out.append(text)
    return out


class Deployer:
    """Carries out one Plan against the API. Not reusable: make one per deploy."""

    def __init__(
        self,
        api: MachinesAPI,
        plan: Plan,
        settings: DeploySettings,
        *,
        state_dir: Path | None = None,
        progress: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.api = api
        self.plan = plan
        self.s = settings
        self.app = settings.app
        self.store = LeaseStore(state_dir or default_state_dir(), settings.app)
        self.progress = progress
        self.result = DeployResult(settings.app, plan.image, settings.strategy)
        self._leases: dict[str, str] = {}  # machine id -> nonce
        self._lease_lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- leases ------------------------------------------------------------------------------------

    def _lease(self, machine_id: str) -> str:
        """Lease a machine, first releasing a lease an interrupted nixfly run on this host left behind."""
        try:
            lease = self.api.acquire_lease(self.app, machine_id, ttl=self.s.lease_ttl, description=LEASE_DESCRIPTION)
        except LeaseConflict:
            leftover = self.store.load().get(machine_id)
            holder = self.api.get_lease(self.app, machine_id)
            if leftover is None or holder is None or holder.nonce != leftover:
                who = f" by {holder.owner}" if holder and holder.owner else ""
                until = (
                    f" until {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(holder.expires_at))}"
                    if holder and holder.expires_at else ""
                )  # fmt: skip
                raise DeployError(
                    f"machine {machine_id} of app {self.app} is leased{who}{until}; nothing was changed "
                    "(wait for the other operation to finish, or for the lease to expire)"
                ) from None
            self.progress(f"recovering lease on {machine_id} left by an interrupted deploy")
            self.api.release_lease(self.app, machine_id, nonce=leftover)
            lease = self.api.acquire_lease(self.app, machine_id, ttl=self.s.lease_ttl, description=LEASE_DESCRIPTION)
        with self._lease_lock:
            self._leases[machine_id] = lease.nonce
        self.store.put(machine_id, lease.nonce)
        return lease.nonce

    def _nonce(self, machine_id: str) -> str:
        with self._lease_lock:
            nonce = self._leases.get(machine_id)
        return nonce if nonce is not None else self._lease(machine_id)

    def _forget(self, machine_id: str) -> None:
        with self._lease_lock:
            self._leases.pop(machine_id, None)
        self.store.drop(machine_id)

    def _refresh_loop(self) -> None:
        interval = max(0.5, self.s.lease_ttl / 3)
        while not self._stop.wait(interval):
            with self._lease_lock:
                held = dict(self._leases)
            for mid, nonce in held.items():
                with contextlib.suppress(FlyAPIError):
                    self.api.refresh_lease(self.app, mid, nonce=nonce, ttl=self.s.lease_ttl)

    def _release_all(self) -> None:
        with self._lease_lock:
            held = dict(self._leases)
        for mid, nonce in held.items():
            try:
                self.api.release_lease(self.app, mid, nonce=nonce)
            except FlyAPIError:
                continue  # stays in the store; the next run recovers it
            self._forget(mid)

    @contextlib.contextmanager
    def _leased(self) -> Iterator[None]:
        try:
            for a in self.plan.actions:
                if a.machine_id is not None:
                    self._lease(a.machine_id)
            self._refresher = threading.Thread(target=self._refresh_loop, name="lease-refresh", daemon=True)
            self._refresher.start()
            yield
        finally:
            self._stop.set()
            if self._refresher is not None:
                self._refresher.join(timeout=5)
            self._release_all()

    # -- waiting -----------------------------------------------------------------------------------

    def _failure(self, machine_id: str, reason: str) -> MachineFailed:
        try:
            events = _describe_events(self.api.list_events(self.app, machine_id, limit=5))
        except FlyAPIError:
            events = []
        return MachineFailed(machine_id, reason, events)

    def _wait_state(self, machine_id: str, state: str, deadline: float) -> Machine:
        """Loop /wait calls of at most 60 s until ``state`` or the deadline; MachineFailed otherwise."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(machine_id, f"did not reach {state} within {self.s.wait_timeout:g}s")
            reached = self.api.wait_state(self.app, machine_id, [state], timeout=math.ceil(remaining))
            machine = self.api.get_machine(self.app, machine_id)
            if reached == state or machine.state == state:
                return machine
            if state == "started" and machine.state in ("stopped", "failed", "destroyed", "suspended"):
                raise self._failure(machine_id, f"crashed after starting (state {machine.state})")

    def _wait_healthy(self, machine_id: str) -> None:
        """Started, then every check passing, within wait_timeout."""
        deadline = time.monotonic() + self.s.wait_timeout
        machine = self._wait_state(machine_id, "started", deadline)
        while True:
            if machine.state != "started":
                raise self._failure(machine_id, f"crashed after starting (state {machine.state})")
            bad = [c for c in machine.checks if c.get("status") != "passing"]
            if not bad:
                return
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{c.get('name')}={c.get('status')} ({c.get('output', '')})" for c in bad)
                raise self._failure(machine_id, f"checks not passing after {self.s.wait_timeout:g}s: {detail}")
            time.sleep(min(self.s.poll_interval, max(0.0, deadline - time.monotonic())))
            machine = self.api.get_machine(self.app, machine_id)

    # -- steps -------------------------------------------------------------------------------------

    def _machine_body(self, config: JSON, **extra: Any) -> JSON:
        body: JSON = {"config": config, **extra}
        if self.s.min_secrets_version is not None:
            body["min_secrets_version"] = self.s.min_secrets_version
        return body

    def _with_volumes(self, config: JSON, region: str) -> JSON:
        mounts = [m for m in config.get("mounts") or [] if isinstance(m, dict) and not m.get("volume")]
        if not mounts:
            return config
        config = copy.deepcopy(config)
        free = [v for v in self.api.list_volumes(self.app)
                if not v.get("attached_machine_id") and v.get("region") == region]  # fmt: skip
        for mount in config["mounts"]:
            if mount.get("volume"):
                continue
            name = str(mount.get("name") or "data")
            match = next((v for v in free if v.get("name") == name), None)
            if match is None:
                size = dict(self.s.volume_sizes).get(name, 1)
                match = self.api.create_volume(self.app, name=name, region=region, size_gb=int(size))
                self.result.volumes_created.append(str(match["id"]))
                self.progress(f"created volume {match['id']} ({name}, {size}GB, {region})")
            else:
                free.remove(match)
            mount["volume"] = match["id"]
        return config

    def _create(self, group: str, config: JSON, region: str, **extra: Any) -> str:
        config = self._with_volumes(config, region)
        m = self.api.create_machine(self.app, self._machine_body(config, region=region, **extra))
        self.result.created.append(m.id)
        self.progress(f"created machine {m.id} [{group}] in {region}")
        return m.id

    def _destroy(self, machine_id: str) -> None:
        self.api.destroy_machine(self.app, machine_id, nonce=self._nonce(machine_id), force=True)
        self._forget(machine_id)
        self.result.destroyed.append(machine_id)
        self.progress(f"destroyed machine {machine_id}")

    def _update(self, a: Action, config: JSON) -> None:
        assert a.machine_id is not None
        self.api.update_machine(self.app, a.machine_id, self._machine_body(config), nonce=self._nonce(a.machine_id))

    def _release_command(self) -> None:
        argv = self.plan.release_command
        if not argv:
            return
        base = copy.deepcopy(self.s.release_config) if self.s.release_config else {}
        base.update(
            image=self.plan.image,
            init={**(base.get("init") or {}), "cmd": list(argv)},
            restart={"policy": "no"},
            # Kept until we have read its exit code from the events; we destroy it ourselves after.
            auto_destroy=False,
            metadata={**(base.get("metadata") or {}), "fly_process_group": RELEASE_GROUP},
        )
        self.progress(f"running release command: {' '.join(argv)}")
        mid = self.api.create_machine(self.app, self._machine_body(base, region=self.s.region)).id
        try:
            self._wait_state(mid, "stopped", time.monotonic() + self.s.wait_timeout)
            code = None
            for ev in self.api.list_events(self.app, mid, limit=20):
                req = ev.get("request")
                if ev.get("type") == "exit" and isinstance(req, dict) and isinstance(req.get("exit_event"), dict):
                    code = req["exit_event"].get("exit_code")
                    break
        except MachineFailed as e:
            raise DeployError(f"release command did not finish: {e.reason}; nothing was deployed") from None
        finally:
            with contextlib.suppress(FlyAPIError):
                self.api.destroy_machine(self.app, mid, nonce=self._lease(mid), force=True)
                self._forget(mid)
        self.result.release_exit_code = code if isinstance(code, int) else None
        if code != 0:
            raise DeployError(f"release command {' '.join(argv)!r} exited with code {code}; nothing was deployed")

    def _rollback(self, updated: list[Action], failure: MachineFailed) -> DeployError:
        restored, unrestored = [], []
        for a in reversed(updated):
            assert a.machine_id is not None and a.old is not None
            try:
                self._update(a, a.old)
                self._wait_state(a.machine_id, "started", time.monotonic() + self.s.wait_timeout)
                restored.append(a.machine_id)
            except (FlyAPIError, MachineFailed):
                unrestored.append(a.machine_id)
        self.progress(f"restored the previous config on {len(restored)} machine(s)")
        msg = (
            f"machine {failure.machine_id} {failure.reason}; last events: {', '.join(failure.events) or 'none'}; "
            f"restored the previous config on {len(restored)} machine(s)"
            + (f" ({', '.join(sorted(restored))})" if restored else "")
        )
        if unrestored:
            msg += f"; could NOT restore {', '.join(unrestored)}"
        return DeployError(msg)

    def _rolling(self, updates: list[Action]) -> None:
        if not updates:
            return
        size = self.s.batch_size(len(updates))
        batches = [updates[:1]] + [updates[i : i + size] for i in range(1, len(updates), size)]
        done: list[Action] = []
        for batch in batches:
            for a in batch:
                assert a.new is not None
                self._update(a, a.new)
                done.append(a)
                self.progress(f"updated machine {a.machine_id} [{a.group}]")
            try:
                for a in batch:
                    assert a.machine_id is not None
                    self._wait_healthy(a.machine_id)
            except MachineFailed as failure:
                raise self._rollback(done, failure) from None
            self.result.updated += [str(a.machine_id) for a in batch]

    def _canary(self, group: str, updates: list[Action]) -> None:
        if not updates:
            return
        first = updates[0]
        assert first.new is not None
        config = copy.deepcopy(first.new)
        config.pop("mounts", None)  # a canary must not steal a volume from a running machine
        mid = self._create(group, config, first.region)
        self.result.created.remove(mid)
        try:
            self._wait_healthy(mid)
        except MachineFailed as f:
            with contextlib.suppress(FlyAPIError):
                self._destroy(mid)
            raise DeployError(
                f"canary machine {mid} [{group}] {f.reason}; last events: {', '.join(f.events) or 'none'}; "
                "nothing was changed"
            ) from None
        self._destroy(mid)
        self.result.destroyed.remove(mid)
        self._rolling(updates)

    def _bluegreen(self, group: str, updates: list[Action]) -> None:
        if not updates:
            return
        greens: list[str] = []
        try:
            for a in updates:
                assert a.new is not None
                config = copy.deepcopy(a.new)
                if config.get("mounts"):
                    raise DeployError(f"bluegreen cannot deploy group {group}: its machines have volumes")
                greens.append(self._create(group, config, a.region, skip_service_registration=True))
            for mid in greens:
                self._wait_healthy(mid)
        except MachineFailed as f:
            for mid in greens:
                with contextlib.suppress(FlyAPIError):
                    self._destroy(mid)
            raise DeployError(
                f"green machine {f.machine_id} [{group}] {f.reason}; last events: "
                f"{', '.join(f.events) or 'none'}; blue machines untouched"
            ) from None
        for mid in greens:
            self.api.uncordon_machine(self.app, mid, nonce=self._nonce(mid))
        for a in updates:
            assert a.machine_id is not None
            nonce = self._nonce(a.machine_id)
            self.api.cordon_machine(self.app, a.machine_id, nonce=nonce)
            self.api.stop_machine(self.app, a.machine_id, nonce=nonce)
            self._destroy(a.machine_id)
        self.progress(f"switched {group} to {len(greens)} green machine(s)")

    def run(self) -> DeployResult:
        """Carry out the plan; DeployError (after any rollback) if it cannot, leases released either way."""
        groups = sorted({a.group for a in self.plan.actions})
        with self._leased():
            self._release_command()
            for a in self.plan.of("create"):
                assert a.new is not None
                mid = self._create(a.group, a.new, a.region)
                if self.s.strategy != "immediate":
                    try:
                        self._wait_healthy(mid)
                    except MachineFailed as f:
                        raise DeployError(
                            f"new machine {mid} [{a.group}] {f.reason}; last events: {', '.join(f.events) or 'none'}"
                        ) from None
            for group in groups:
                updates = self.plan.of("update", group)
                if self.s.strategy == "immediate":
                    for a in updates:
                        assert a.new is not None
                        self._update(a, a.new)
                        self.result.updated.append(str(a.machine_id))
                        self.progress(f"updated machine {a.machine_id} [{a.group}]")
                elif self.s.strategy == "rolling":
                    self._rolling(updates)
                elif self.s.strategy == "canary":
                    self._canary(group, updates)
                else:
                    self._bluegreen(group, updates)
            for a in self.plan.of("destroy"):
                assert a.machine_id is not None
                self._destroy(a.machine_id)
        return self.result
