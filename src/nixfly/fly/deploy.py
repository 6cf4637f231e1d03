"""Carry out a deploy :class:`~nixfly.fly.plan.Plan` against the Machines API, one strategy at a time.

``Deployer.run`` leases every machine it will touch before touching any (:mod:`nixfly.fly.leases`), and
every machine it creates is leased by its create (``lease_ttl``); the leases are refreshed in the
background and released on every exit path, Ctrl-C included.

Order: first-deploy addresses, the release command, new machines (a standby created stopped), greens an
interrupted bluegreen deploy left (their switch is finished), each group's updates by strategy (machines
that were stopped are updated with skip_launch and not waited on), replacements, destroys.

Each new or updated machine is waited on until healthy (:mod:`nixfly.fly.health`). Beyond flyctl: when an
updated machine crashes or fails its checks during a rolling or canary deploy, every machine already
updated gets its previous config back (sent in the spec's request shape), and the error names the failing
machine with its last events. On Ctrl-C the deploy says which machines run which image, and with
``rollback_on_interrupt`` restores the ones it changed.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixfly.errors import DeployError
from nixfly.fly.api import JSON, FlyAPIError, MachinesAPI
from nixfly.fly.health import MachineFailed, Waiter, Watch, exit_code_of
from nixfly.fly.leases import Leases
from nixfly.fly.normal import GREEN_FOR_KEY, RELEASE_GROUP, RELEASES_KEY, request_form
from nixfly.fly.plan import (
    IP_WORDS,
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
from nixfly.fly.state import LeaseStore, SecretsVersionStore, default_state_dir

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
        self.progress = progress
        self.leases = Leases(api, settings.app, LeaseStore(state_dir or default_state_dir(), settings.app),
                             holder=settings.holder, ttl=settings.lease_ttl, progress=progress)  # fmt: skip
        self.waiter = Waiter(api, settings)
        self.result = DeployResult(settings.app, plan.image, settings.strategy)
        self._changed: list[Action] = []  # updates sent so far, in order (what an interrupt would undo)

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

    def _create(self, group: str, config: JSON, region: str, *, skip_launch: bool = False, **extra: Any) -> Watch:
        """Create a machine, leased to this deploy by the create itself (``lease_ttl``)."""
        config = self._with_volumes(config, region)
        body = self._machine_body(config, region=region, lease_ttl=self.s.lease_ttl, **extra)
        if skip_launch:
            body["skip_launch"] = True
        m = self.api.create_machine(self.app, body)
        if m.nonce:
            self.leases.hold(m.id, m.nonce)
        self.result.created.append(m.id)
        self.progress(f"created machine {m.id} [{group}] in {region}" + (" (stopped)" if skip_launch else ""))
        return Watch.of(m)

    def _destroy(self, machine_id: str) -> None:
        self.api.destroy_machine(self.app, machine_id, nonce=self.leases.nonce(machine_id), force=True)
        self.leases.forget(machine_id)
        self.result.destroyed.append(machine_id)
        self.progress(f"destroyed machine {machine_id}")

    def _update(self, a: Action, config: JSON, *, stamp: bool = True, skip_launch: bool = False) -> Watch:
        assert a.machine_id is not None
        body = self._machine_body(config, stamp=stamp)
        if skip_launch:
            body["skip_launch"] = True
        m = self.api.update_machine(self.app, a.machine_id, body, nonce=self.leases.nonce(a.machine_id))
        return Watch.of(m)

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
            self.progress(f"allocated {IP_WORDS.get(kind, kind)}: {got['ip']}")

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
            self.leases.hold(mid, created.nonce)
        try:
            self.waiter.state(Watch.of(created), "stopped", time.monotonic() + self.s.wait_timeout)
            code = None
            for ev in self.api.list_events(self.app, mid, limit=20):
                code = exit_code_of(ev)
                if code is not None:
                    break
        except MachineFailed as e:
            raise DeployError(f"release command did not finish: {e.reason}; nothing was deployed") from None
        finally:
            with contextlib.suppress(FlyAPIError):
                self.api.destroy_machine(self.app, mid, nonce=self.leases.nonce(mid), force=True)
                self.leases.forget(mid)
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
                    self.waiter.state(w, "started", time.monotonic() + self.s.wait_timeout)
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
                    self.waiter.healthy(w)
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
            self.waiter.healthy(w)
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

    def _switch(self, group: str, greens: Sequence[Watch], blues: Sequence[str]) -> None:
        """Greens healthy: they take the traffic, the blues go."""
        for w in greens:
            self.api.uncordon_machine(self.app, w.machine_id, nonce=self.leases.nonce(w.machine_id))
        for mid in blues:
            nonce = self.leases.nonce(mid)
            self.api.cordon_machine(self.app, mid, nonce=nonce)
            self.api.stop_machine(self.app, mid, nonce=nonce)
            self._destroy(mid)
        self.progress(f"switched {group} to {len(greens)} green machine(s)")

    def _bluegreen(self, group: str, updates: list[Action]) -> None:
        if not updates:
            return
        greens: list[Watch] = []
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
                self.waiter.healthy(w)
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
            w = Watch(m.id, m.instance_id, set())
            if m.state not in ("started", "starting", "created", "replacing"):
                self.api.start_machine(self.app, m.id, nonce=self.leases.nonce(m.id))
            try:
                self.waiter.healthy(w)
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
                self.waiter.healthy(w)
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
        # Every machine the plan touches, leased at once; a create leases its machine itself.
        ids = {a.machine_id for a in self.plan.actions if a.machine_id is not None}
        ids |= {a.green_for for a in self.plan.actions if a.green_for}
        with self.leases.held(ids):
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
                    self.waiter.healthy(w)
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
