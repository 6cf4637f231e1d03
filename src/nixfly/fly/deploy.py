"""Carry out a deploy :class:`~nixfly.fly.plan.Plan` against the Machines API, one strategy at a time.

``Deployer.run`` leases every machine it will touch before touching any, and every machine it creates is
leased by its create (``lease_ttl``); the leases are refreshed in the background and released on every exit
path, Ctrl-C included. Each lease names its holder (:class:`~nixfly.fly.state.Holder`: pid, host, process
start) in its description and is recorded on disk (:mod:`nixfly.fly.state`): a lease whose holder is a
nixfly process of this host that is gone (killed) is taken over; one whose holder runs, or that someone
else holds, stops the deploy with nothing changed.

Order: first-deploy addresses, the release command, new machines (a standby created stopped), greens an
interrupted bluegreen deploy left (their switch is finished), each group's updates by strategy (machines
that were stopped are updated with skip_launch and not waited on), replacements, destroys.

Waiting on a machine means: ``/wait`` on the instance the update returned until it is started, then
reading its checks and events every ``poll_interval``; a machine without checks must stay up
``smoke_period`` seconds (flyctl's smoke check). A machine that exits non-zero before it is healthy fails
at once (a crash loop shows ``exit`` events within a second, long before any timeout). Beyond flyctl: when
an updated machine crashes or fails its checks during a rolling or canary deploy, every machine already
updated gets its previous config back (sent in the spec's request shape), and the error names the failing
machine with its last events. On Ctrl-C the deploy says which machines run which image, and with
``rollback_on_interrupt`` restores the ones it changed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixfly.errors import DeployError
from nixfly.fly.api import JSON, FlyAPIError, Lease, LeaseConflict, Machine, MachinesAPI, NotFound
from nixfly.fly.normal import request_form
from nixfly.fly.plan import (
    _IP_WORDS,
    GREEN_FOR_KEY,
    RELEASE_GROUP,
    RELEASES_KEY,
    SECRETS_DIGEST_KEY,
    SECRETS_VERSION_KEY,
    STRATEGIES,
    Action,
    DeploySettings,
    Plan,
    Strategy,
    VolumeCreate,
    carry_over,
    desired_with_secrets,
    plan_deploy,
    require_digest_ref,
)
from nixfly.fly.state import Holder, LeaseStore, SecretsVersionStore, default_state_dir

__all__ = [
    "RELEASE_GROUP",
    "SECRETS_DIGEST_KEY",
    "SECRETS_VERSION_KEY",
    "STRATEGIES",
    "Action",
    "DeployResult",
    "DeploySettings",
    "Deployer",
    "LeaseStore",
    "MachineFailed",
    "Plan",
    "SecretsVersionStore",
    "Strategy",
    "VolumeCreate",
    "carry_over",
    "default_state_dir",
    "desired_with_secrets",
    "plan_deploy",
    "require_digest_ref",
]  # fmt: skip

_DOWN_STATES = ("stopped", "failed", "destroyed", "suspended")


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
    ips: list[JSON] = field(default_factory=list)  # addresses allocated: {"type", "ip"}
    left_stopped: list[str] = field(default_factory=list)  # updated with skip_launch

    def to_json(self) -> JSON:
        return {"app": self.app, "image": self.image, "strategy": self.strategy, "created": self.created,
                "updated": self.updated, "destroyed": self.destroyed, "volumes_created": self.volumes_created,
                "release_exit_code": self.release_exit_code, "ips": self.ips,
                "left_stopped": self.left_stopped}  # fmt: skip


def exit_code_of(event: JSON) -> int | None:
    """The exit code of an ``exit`` event, or None for other events."""
    req = event.get("request")
    exit_event = req.get("exit_event") if isinstance(req, dict) else None
    if event.get("type") != "exit" or not isinstance(exit_event, dict):
        return None
    code = exit_event.get("exit_code")
    return code if isinstance(code, int) else None


def _describe_events(events: Sequence[JSON], limit: int = 5) -> list[str]:
    out = []
    for ev in list(events)[:limit]:
        text = f"{ev.get('type', '?')}/{ev.get('status', '?')}"
        code = exit_code_of(ev)
        if code is not None:
            text += f" exit_code={code}"
        out.append(text)
    return out


def parallel(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 8) -> None:
    """Run ``fn`` on every item on a few threads (independent API requests); the first error is raised
    once all have finished."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


@dataclass
class _Watch:
    """One machine instance being waited on: its version and the events that predate it."""

    machine_id: str
    version: str
    seen: set[str]

    @classmethod
    def of(cls, m: Machine) -> _Watch:
        return cls(m.id, m.instance_id, {str(e.get("id")) for e in m.events})


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
        self._changed: list[Action] = []  # updates sent so far, in order (what an interrupt would undo)

    # -- leases ------------------------------------------------------------------------------------

    def _lease(self, machine_id: str) -> str:
        """Lease a machine. A lease held by a nixfly process of this host that is gone (killed) is taken
        over; a lease without a holder's name that runs out soon is waited out; any other holder stops the
        deploy. Our own lease whose grant was lost is recognised by the API client (its description names
        this run)."""
        desc = self.s.holder.describe()
        try:
            lease = self.api.acquire_lease(self.app, machine_id, ttl=self.s.lease_ttl, description=desc)
        except LeaseConflict:
            held = self.api.get_lease(self.app, machine_id)
            lease = self._lease_held(machine_id, held, desc) if held is not None else self.api.acquire_lease(
                self.app, machine_id, ttl=self.s.lease_ttl, description=desc)  # fmt: skip
        self._hold(machine_id, lease.nonce)
        return lease.nonce

    def _lease_held(self, machine_id: str, held: Lease, desc: str) -> Lease:
        holder = Holder.parse(held.description)
        if holder is None:
            # A lease without a holder's name: one a create took (lease_ttl). If this host's store says a
            # nixfly run that is gone got it, it is taken over; else, when it runs out soon, wait for it.
            holder = self.store.holder_of(machine_id, held.nonce)
            if (holder is None or not holder.gone()) and held.expires_at and \
                    0 < held.expires_at - time.time() <= self.s.lease_ttl + 1:  # fmt: skip
                return self._wait_out(machine_id, held.expires_at, desc)
        if holder is None or not holder.gone():
            who = f"by {holder.where()}" if holder else (f"by {held.owner}" if held.owner else "by someone else")
            until = (f" until {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(held.expires_at))}"
                     if held.expires_at else "")  # fmt: skip
            raise DeployError(
                f"machine {machine_id} of app {self.app} is leased {who}{until}; nothing was changed "
                "(wait for the other operation to finish, or for the lease to expire)"
            )
        self.progress(f"taking over the lease on {machine_id} left by {holder.where()}, which is gone")
        with contextlib.suppress(NotFound):
            self.api.release_lease(self.app, machine_id, nonce=held.nonce)
        return self.api.acquire_lease(self.app, machine_id, ttl=self.s.lease_ttl, description=desc)

    def _wait_out(self, machine_id: str, expires_at: float, desc: str) -> Lease:
        """Acquire the lease once the one held has run out (expires_at is whole seconds: the lease may
        outlive it by up to one)."""
        self.progress(f"machine {machine_id} is leased by a run that did not say who it is; waiting "
                      f"{expires_at - time.time():.0f}s for the lease to run out")  # fmt: skip
        give_up = expires_at + 3.0
        time.sleep(max(0.0, expires_at - time.time()) + 0.2)
        while True:
            try:
                return self.api.acquire_lease(self.app, machine_id, ttl=self.s.lease_ttl, description=desc)
            except LeaseConflict:
                if time.time() >= give_up:
                    raise
                time.sleep(0.3)

    def _hold(self, machine_id: str, nonce: str) -> None:
        with self._lease_lock:
            self._leases[machine_id] = nonce
        self.store.put(machine_id, nonce, self.s.holder.describe())

    def _nonce(self, machine_id: str) -> str:
        with self._lease_lock:
            nonce = self._leases.get(machine_id)
        return nonce if nonce is not None else self._lease(machine_id)

    def held_nonce(self, machine_id: str) -> str | None:
        """The nonce of a lease this deploy holds on the machine, if any."""
        with self._lease_lock:
            return self._leases.get(machine_id)

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
                    lease = self.api.refresh_lease(self.app, mid, nonce=nonce, ttl=self.s.lease_ttl)
                    # A refresh that came after the lease ran out (a starved process) is granted as a new
                    # lease with a new nonce: hold that one, or every later change is refused as not ours.
                    if lease.nonce and lease.nonce != nonce:
                        with self._lease_lock:
                            still_held = self._leases.get(mid) == nonce
                        if still_held:
                            self._hold(mid, lease.nonce)

    def _release_all(self) -> None:
        with self._lease_lock:
            held = dict(self._leases)

        def release(item: tuple[str, str]) -> None:
            mid, nonce = item
            try:
                self.api.release_lease(self.app, mid, nonce=nonce)
            except FlyAPIError:
                return  # stays in the store; the next run recovers it
            self._forget(mid)

        parallel(release, list(held.items()))

    @contextlib.contextmanager
    def _leased(self) -> Iterator[None]:
        try:
            # All at once (each is one request); any failure stops the deploy before anything changed, and
            # the leases already granted are released below.
            ids = {a.machine_id for a in self.plan.actions if a.machine_id is not None}
            ids |= {a.green_for for a in self.plan.actions if a.green_for}
            # The refresher runs before the first grant: waiting out one machine's lease may take longer than
            # the leases already granted last (it refreshes whatever is held at each round).
            self._refresher = threading.Thread(target=self._refresh_loop, name="lease-refresh", daemon=True)
            self._refresher.start()
            parallel(self._lease, sorted(ids))
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

    def _crashes(self, w: _Watch, machine: Machine) -> list[int]:
        """Non-zero exit codes of this instance, from events the watch has not seen before."""
        codes = []
        for ev in machine.events:
            if str(ev.get("id")) in w.seen:
                continue
            code = exit_code_of(ev)
            if code is not None and code != 0:
                codes.append(code)
        return codes

    def _check_crash(self, w: _Watch, machine: Machine) -> None:
        codes = self._crashes(w, machine)
        if len(codes) >= self.s.max_crashes:
            raise self._failure(
                w.machine_id,
                f"crashed: exited with code {codes[0]} before it was healthy (state {machine.state or '?'})",
            )

    def _wait_state(self, w: _Watch, state: str, deadline: float) -> Machine:
        """Loop /wait calls (at most 60 s each) on the watched instance until ``state`` or the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(w.machine_id, f"did not reach {state} within {self.s.wait_timeout:g}s")
            reached = self.api.wait_state(
                self.app, w.machine_id, [state], timeout=math.ceil(remaining), version=w.version or None
            )
            machine = self.api.get_machine(self.app, w.machine_id)
            if state == "started":
                self._check_crash(w, machine)
            if reached == state or machine.state == state:
                return machine
            if state == "started" and machine.state in _DOWN_STATES:
                raise self._failure(w.machine_id, f"crashed after starting (state {machine.state})")

    def _wait_healthy(self, w: _Watch) -> None:
        """Started, then every check passing, within wait_timeout; fails at the first crash. A machine
        without checks must run ``smoke_period`` seconds without exiting (flyctl's smoke check,
        internal/machine/leasable_machine.go). Nothing is waited for with ``detach``."""
        if self.s.detach:
            return
        deadline = time.monotonic() + self.s.wait_timeout
        machine = self._wait_state(w, "started", deadline)
        up_since = time.monotonic()
        while True:
            self._check_crash(w, machine)
            if machine.state in _DOWN_STATES:
                raise self._failure(w.machine_id, f"crashed after starting (state {machine.state})")
            bad = [c for c in machine.checks if c.get("status") != "passing"]
            smoked = bool(machine.checks) or time.monotonic() - up_since >= self.s.smoke_period
            if machine.state == "started" and not bad and smoked:
                return
            if time.monotonic() >= deadline:
                if not bad:
                    return  # flyctl: a smoke check that runs out of time passes
                detail = "; ".join(f"{c.get('name')}={c.get('status')} ({c.get('output', '')})" for c in bad)
                raise self._failure(w.machine_id, f"checks not passing after {self.s.wait_timeout:g}s: {detail}")
            time.sleep(min(self.s.poll_interval, max(0.0, deadline - time.monotonic())))
            machine = self.api.get_machine(self.app, w.machine_id)

    # -- steps -------------------------------------------------------------------------------------

    def _machine_body(self, config: JSON, *, stamp: bool = True, **extra: Any) -> JSON:
        """The create/update request. ``stamp``: record this deploy's release log in the config's metadata
        (the update itself carries it: no separate write that could fail on its own)."""
        config = request_form(config)
        if stamp and self.s.release_log is not None:
            config.setdefault("metadata", {})[RELEASES_KEY] = self.s.release_log
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
                extra = dict(self.s.volume_extra).get(name)
                match = self.api.create_volume(self.app, name=name, region=region, size_gb=int(size), extra=extra)
                self.result.volumes_created.append(str(match["id"]))
                self.progress(f"created volume {match['id']} ({name}, {size}GB, {region})")
            else:
                free.remove(match)
            mount["volume"] = match["id"]
        return config

    def _create(self, group: str, config: JSON, region: str, *, skip_launch: bool = False, **extra: Any) -> _Watch:
        """Create a machine, leased to this deploy by the create itself (``lease_ttl``)."""
        config = self._with_volumes(config, region)
        body = self._machine_body(config, region=region, lease_ttl=self.s.lease_ttl, **extra)
        if skip_launch:
            body["skip_launch"] = True
        m = self.api.create_machine(self.app, body)
        if m.nonce:
            self._hold(m.id, m.nonce)
        self.result.created.append(m.id)
        self.progress(f"created machine {m.id} [{group}] in {region}" + (" (stopped)" if skip_launch else ""))
        return _Watch.of(m)

    def _destroy(self, machine_id: str) -> None:
        self.api.destroy_machine(self.app, machine_id, nonce=self._nonce(machine_id), force=True)
        self._forget(machine_id)
        self.result.destroyed.append(machine_id)
        self.progress(f"destroyed machine {machine_id}")

    def _update(self, a: Action, config: JSON, *, stamp: bool = True, skip_launch: bool = False) -> _Watch:
        assert a.machine_id is not None
        body = self._machine_body(config, stamp=stamp)
        if skip_launch:
            body["skip_launch"] = True
        m = self.api.update_machine(self.app, a.machine_id, body, nonce=self._nonce(a.machine_id))
        return _Watch.of(m)

    def _allocate_ips(self) -> None:
        """A first deploy's public addresses (flyctl: internal/command/deploy/deploy_first.go). As in
        flyctl, a failure is reported and the deploy goes on: the machines are still worth deploying."""
        for kind in self.plan.ips:
            try:
                got = self.api.assign_ip(self.app, kind, org=self.s.org)
            except FlyAPIError as e:
                self.progress(f"could not allocate an IP address ({kind}): {e}; allocate it with `fly ips`")
                return
            self.result.ips.append({"type": kind, "ip": got["ip"]})
            self.progress(f"allocated {_IP_WORDS.get(kind, kind)}: {got['ip']}")

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
        body = self._machine_body(base, stamp=False, region=self.s.region, lease_ttl=self.s.lease_ttl)
        created = self.api.create_machine(self.app, body)
        mid = created.id
        if created.nonce:
            self._hold(mid, created.nonce)
        try:
            self._wait_state(_Watch.of(created), "stopped", time.monotonic() + self.s.wait_timeout)
            code = None
            for ev in self.api.list_events(self.app, mid, limit=20):
                code = exit_code_of(ev)
                if code is not None:
                    break
        except MachineFailed as e:
            raise DeployError(f"release command did not finish: {e.reason}; nothing was deployed") from None
        finally:
            with contextlib.suppress(FlyAPIError):
                self.api.destroy_machine(self.app, mid, nonce=self._nonce(mid), force=True)
                self._forget(mid)
        self.result.release_exit_code = code
        if code != 0:
            raise DeployError(f"release command {' '.join(argv)!r} exited with code {code}; nothing was deployed")

    def _restore(self, updated: Sequence[Action]) -> tuple[list[str], list[str]]:
        """Send each updated machine its previous config again (newest first); (restored, not restored)."""
        restored, unrestored = [], []
        for a in reversed(updated):
            assert a.machine_id is not None and a.old is not None
            try:
                w = self._update(a, a.old, stamp=False, skip_launch=a.skip_launch)
                if not a.skip_launch and not self.s.detach:
                    self._wait_state(w, "started", time.monotonic() + self.s.wait_timeout)
                restored.append(a.machine_id)
            except (FlyAPIError, MachineFailed):
                unrestored.append(a.machine_id)
        self.progress(f"restored the previous config on {len(restored)} machine(s)")
        return restored, unrestored

    def _rollback(self, updated: list[Action], failure: MachineFailed) -> DeployError:
        restored, unrestored = self._restore(updated)
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
            watches = []
            for a in batch:
                assert a.new is not None
                watches.append(self._update(a, a.new))
                done.append(a)
                self._changed.append(a)
                self.progress(f"updated machine {a.machine_id} [{a.group}]")
            try:
                for w in watches:
                    self._wait_healthy(w)
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
        # Tagged like a green: a re-run after a kill here finds it and does not leave it behind.
        config.setdefault("metadata", {})[GREEN_FOR_KEY] = str(first.machine_id)
        w = self._create(group, config, first.region)
        mid = w.machine_id
        self.result.created.remove(mid)
        try:
            self._wait_healthy(w)
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

    def _switch(self, group: str, greens: Sequence[_Watch], blues: Sequence[str]) -> None:
        """Greens healthy: they take the traffic, the blues go."""
        for w in greens:
            self.api.uncordon_machine(self.app, w.machine_id, nonce=self._nonce(w.machine_id))
        for mid in blues:
            nonce = self._nonce(mid)
            self.api.cordon_machine(self.app, mid, nonce=nonce)
            self.api.stop_machine(self.app, mid, nonce=nonce)
            self._destroy(mid)
        self.progress(f"switched {group} to {len(greens)} green machine(s)")

    def _bluegreen(self, group: str, updates: list[Action]) -> None:
        if not updates:
            return
        greens: list[_Watch] = []
        try:
            for a in updates:
                assert a.new is not None
                config = copy.deepcopy(a.new)
                if config.get("mounts"):
                    raise DeployError(f"bluegreen cannot deploy group {group}: its machines have volumes")
                # The blue it replaces, so that a re-run after an interruption finishes this switch.
                config.setdefault("metadata", {})[GREEN_FOR_KEY] = str(a.machine_id)
                greens.append(self._create(group, config, a.region, skip_service_registration=True))
            for w in greens:
                self._wait_healthy(w)
        except MachineFailed as f:
            for w in greens:
                with contextlib.suppress(FlyAPIError):
                    self._destroy(w.machine_id)
            raise DeployError(
                f"green machine {f.machine_id} [{group}] {f.reason}; last events: "
                f"{', '.join(f.events) or 'none'}; blue machines untouched"
            ) from None
        self._switch(group, greens, [str(a.machine_id) for a in updates])

    def _finish_switches(self) -> None:
        """Greens an interrupted bluegreen deploy created and that already run this config: wait for them,
        then finish the switch (their blues go)."""
        for a in self.plan.of("switch"):
            assert a.machine_id is not None and a.green_for is not None
            m = self.api.get_machine(self.app, a.machine_id)
            w = _Watch(m.id, m.instance_id, set())
            if m.state not in ("started", "starting", "created", "replacing"):
                self.api.start_machine(self.app, m.id, nonce=self._nonce(m.id))
            try:
                self._wait_healthy(w)
            except MachineFailed as f:
                raise DeployError(f"green machine {f.machine_id} [{a.group}] left by an interrupted deploy "
                                  f"{f.reason}; its blue {a.green_for} is untouched") from None  # fmt: skip
            self._switch(a.group, [w], [a.green_for])

    def _replace(self, a: Action) -> None:
        """A machine that cannot take the new config in place: a new one in its region, then the old one
        goes (a volume is never shared: the new machine gets one of its own)."""
        assert a.new is not None and a.machine_id is not None
        self.progress(f"replacing machine {a.machine_id} [{a.group}]: {a.reason}")
        config = copy.deepcopy(a.new)
        # Tagged like a green: a re-run after a kill between the create and the destroy finishes the switch
        # instead of replacing the old machine a second time.
        config.setdefault("metadata", {})[GREEN_FOR_KEY] = a.machine_id
        w = self._create(a.group, config, a.region, skip_launch=a.skip_launch)
        if not a.skip_launch:
            try:
                self._wait_healthy(w)
            except MachineFailed as f:
                with contextlib.suppress(FlyAPIError):
                    self._destroy(w.machine_id)
                raise DeployError(f"replacement machine {f.machine_id} [{a.group}] {f.reason}; "
                                  f"{a.machine_id} is untouched") from None  # fmt: skip
        self._destroy(a.machine_id)

    def _update_stopped(self, updates: Sequence[Action]) -> None:
        """Machines that were stopped or suspended: updated with skip_launch, not waited on (flyctl:
        internal/command/deploy/plan.go, updateMachineWChecks returns right after such an update)."""
        for a in updates:
            assert a.new is not None
            self._update(a, a.new, skip_launch=True)
            self._changed.append(a)
            self.result.updated.append(str(a.machine_id))
            self.result.left_stopped.append(str(a.machine_id))
            self.progress(f"updated machine {a.machine_id} [{a.group}] without starting it (it was stopped)")

    def _interrupted(self) -> None:
        """Ctrl-C: say which machines run which image; restore the changed ones when asked to."""
        try:
            machines = self.api.list_machines(self.app)
        except FlyAPIError:
            machines = []
        by_image: dict[str, list[str]] = {}
        for m in machines:
            if m.process_group != RELEASE_GROUP:
                by_image.setdefault(m.image or "?", []).append(m.id)
        for image, ids in sorted(by_image.items()):
            tag = "new" if image == self.plan.image else "previous"
            self.progress(f"interrupted: {len(ids)} machine(s) on the {tag} image {image}: {', '.join(sorted(ids))}")
        if not self._changed:
            self.progress("interrupted before any machine was updated; nothing to undo")
        elif self.s.rollback_on_interrupt:
            _restored, unrestored = self._restore(self._changed)
            if unrestored:
                self.progress(f"could NOT restore {', '.join(unrestored)}")
        else:
            self.progress(
                "the app is half on the new image: run `nixfly rollback` to go back, or `nixfly deploy` to finish "
                "(--rollback-on-interrupt restores it by itself)"
            )

    def run(self) -> DeployResult:
        """Carry out the plan; DeployError (after any rollback) if it cannot, leases released either way."""
        groups = sorted({a.group for a in self.plan.actions})
        with self._leased():
            try:
                self._run(groups)
            except KeyboardInterrupt:
                self._interrupted()
                raise
        return self.result

    def _run(self, groups: list[str]) -> None:
        self._allocate_ips()
        self._release_command()
        first_new: dict[str, str] = {}
        for a in self.plan.of("create"):
            assert a.new is not None
            config = a.new
            if a.standby:
                # A standby of the group's first machine: created stopped, started by the platform only when
                # that machine's host fails (flyctl: machines_launchinput.go, launchInputForLaunch).
                first = first_new.get(a.group) or self._first_machine(a.group)
                config = copy.deepcopy(a.new)
                if first:
                    config["standbys"] = [first]
                    config.setdefault("env", {})["FLY_STANDBY_FOR"] = first
            w = self._create(a.group, config, a.region, skip_launch=a.standby)
            first_new.setdefault(a.group, w.machine_id)
            if self.s.strategy != "immediate" and not a.standby:
                try:
                    self._wait_healthy(w)
                except MachineFailed as f:
                    raise DeployError(
                        f"new machine {w.machine_id} [{a.group}] {f.reason}; last events: "
                        f"{', '.join(f.events) or 'none'}"
                    ) from None
        self._finish_switches()
        for group in groups:
            updates = [a for a in self.plan.of("update", group) if not a.skip_launch]
            if self.s.strategy == "immediate":
                for a in updates:
                    assert a.new is not None
                    self._update(a, a.new)
                    self._changed.append(a)
                    self.result.updated.append(str(a.machine_id))
                    self.progress(f"updated machine {a.machine_id} [{a.group}]")
            elif self.s.strategy == "rolling":
                self._rolling(updates)
            elif self.s.strategy == "canary":
                self._canary(group, updates)
            else:
                self._bluegreen(group, updates)
            self._update_stopped([a for a in self.plan.of("update", group) if a.skip_launch])
        for a in self.plan.of("replace"):
            self._replace(a)
        for a in self.plan.of("destroy"):
            assert a.machine_id is not None
            self._destroy(a.machine_id)

    def _first_machine(self, group: str) -> str | None:
        """An existing machine of ``group`` that is no standby (what a standby created on a re-run stands for)."""
        for m in self.api.list_machines(self.app):
            if m.process_group == group and not m.config.get("standbys"):
                return m.id
        return None
