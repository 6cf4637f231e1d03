"""Waiting for a machine a deploy created or updated to be healthy.

Waiting means: ``/wait`` on the instance the update returned until it is started, then reading its checks
and events every ``poll_interval``; a machine without checks must stay up ``smoke_period`` seconds
(flyctl's smoke check). A machine that exits non-zero before it is healthy fails at once (a crash loop
shows ``exit`` events within a second, long before any timeout); the failure carries its last events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nixfly.fly.api import JSON, FlyAPIError, Machine, MachinesAPI
from nixfly.fly.plan import DeploySettings

_DOWN_STATES = ("stopped", "failed", "destroyed", "suspended")


class MachineFailed(Exception):
    """An updated or new machine did not become healthy (internal; turned into DeployError)."""

    def __init__(self, machine_id: str, reason: str, events: list[str]) -> None:
        super().__init__(reason)
        self.machine_id = machine_id
        self.reason = reason
        self.events = events


def exit_code_of(event: JSON) -> int | None:
    """The exit code of an ``exit`` event, or None for other events."""
    req = event.get("request")
    exit_event = req.get("exit_event") if isinstance(req, dict) else None
    if event.get("type") != "exit" or not isinstance(exit_event, dict):
        return None
    code = exit_event.get("exit_code")
    return code if isinstance(code, int) else None


def describe_events(events: Sequence[JSON], limit: int = 5) -> list[str]:
    """The first ``limit`` events as ``type/status`` words (with the exit code of an ``exit``)."""
    out = []
    for ev in list(events)[:limit]:
        text = f"{ev.get('type', '?')}/{ev.get('status', '?')}"
        code = exit_code_of(ev)
        if code is not None:
            text += f" exit_code={code}"
        out.append(text)
    return out


@dataclass
class Watch:
    """One machine instance being waited on: its version and the events that predate it."""

    machine_id: str
    version: str
    seen: set[str]

    @classmethod
    def of(cls, m: Machine) -> Watch:
        return cls(m.id, m.instance_id, {str(e.get("id")) for e in m.events})


class Waiter:
    """Waits on machines of one app, by a deploy's settings (timeouts, poll interval, smoke period)."""

    def __init__(self, api: MachinesAPI, settings: DeploySettings) -> None:
        self.api = api
        self.app = settings.app
        self.s = settings

    def failure(self, machine_id: str, reason: str) -> MachineFailed:
        """A MachineFailed for the machine, with its last events when the API gives them."""
        try:
            events = describe_events(self.api.list_events(self.app, machine_id, limit=5))
        except FlyAPIError:
            events = []
        return MachineFailed(machine_id, reason, events)

    def _crashes(self, w: Watch, machine: Machine) -> list[int]:
        """Non-zero exit codes of this instance, from events the watch has not seen before."""
        codes = []
        for ev in machine.events:
            if str(ev.get("id")) in w.seen:
                continue
            code = exit_code_of(ev)
            if code is not None and code != 0:
                codes.append(code)
        return codes

    def _check_crash(self, w: Watch, machine: Machine) -> None:
        codes = self._crashes(w, machine)
        if len(codes) >= self.s.max_crashes:
            raise self.failure(
                w.machine_id,
                f"crashed: exited with code {codes[0]} before it was healthy (state {machine.state or '?'})",
            )

    def state(self, w: Watch, state: str, deadline: float) -> Machine:
        """Loop /wait calls (at most 60 s each) on the watched instance until ``state`` or the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.failure(w.machine_id, f"did not reach {state} within {self.s.wait_timeout:g}s")
            reached = self.api.wait_state(
                self.app, w.machine_id, [state], timeout=math.ceil(remaining), version=w.version or None
            )
            machine = self.api.get_machine(self.app, w.machine_id)
            if state == "started":
                self._check_crash(w, machine)
            if reached == state or machine.state == state:
                return machine
            if state == "started" and machine.state in _DOWN_STATES:
                raise self.failure(w.machine_id, f"crashed after starting (state {machine.state})")

    def healthy(self, w: Watch) -> None:
        """Started, then every check passing, within wait_timeout; fails at the first crash. A machine
        without checks must run ``smoke_period`` seconds without exiting (flyctl's smoke check,
        internal/machine/leasable_machine.go). Nothing is waited for with ``detach``."""
        if self.s.detach:
            return
        deadline = time.monotonic() + self.s.wait_timeout
        machine = self.state(w, "started", deadline)
        up_since = time.monotonic()
        while True:
            self._check_crash(w, machine)
            if machine.state in _DOWN_STATES:
                raise self.failure(w.machine_id, f"crashed after starting (state {machine.state})")
            bad = [c for c in machine.checks if c.get("status") != "passing"]
            smoked = bool(machine.checks) or time.monotonic() - up_since >= self.s.smoke_period
            if machine.state == "started" and not bad and smoked:
                return
            if time.monotonic() >= deadline:
                if not bad:
                    return  # flyctl: a smoke check that runs out of time passes
                detail = "; ".join(f"{c.get('name')}={c.get('status')} ({c.get('output', '')})" for c in bad)
                raise self.failure(w.machine_id, f"checks not passing after {self.s.wait_timeout:g}s: {detail}")
            time.sleep(min(self.s.poll_interval, max(0.0, deadline - time.monotonic())))
            machine = self.api.get_machine(self.app, w.machine_id)
