"""``nixfly run -c fly.toml IMAGE``: run an image the way its Fly machines will run it, and judge it the way
Fly does, before anything is pushed.

Each process group's container (:mod:`nixfly.run.machine`) is started from a plan
(:mod:`nixfly.run.flyplan`: the machine config ``nixfly deploy`` sends, env, secrets, files, mounts). While
it runs, the config's checks run on their own schedule (:mod:`nixfly.run.checks`) and the address probe
(:mod:`nixfly.run.probe`) looks at what the app listens on. The verdict: every container stays up, every
check passes, every service port has a listener fly-proxy can reach.

Secrets are never fetched from Fly (the API does not return values); values never reach an output, a log
line, ``--json`` or a file that outlives the run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixfly.errors import NixflyError, UsageError
from nixfly.image import Image
from nixfly.run.checks import CheckResult, CheckState, checks_of, machine_address, run_check, settle_time
from nixfly.run.flyplan import GroupPlan, Log, RehearsalRequest, plan_rehearsal
from nixfly.run.machine import Machine
from nixfly.run.probe import Listener, address_problems, expected_ports, host_listeners_on, listeners
from nixfly.run.runtimes import Probe, select_runtime
from nixfly.run.unpack import UnpackOptions, cached_rootfs

__all__ = ["GroupPlan", "RehearsalError", "RehearsalOptions", "RehearsalRequest", "RehearsalResult", "plan_rehearsal",
           "rehearse"]  # fmt: skip

JSON = dict[str, Any]

# flyctl waits this long for the expected listen addresses when no check says otherwise
# (internal/command/deploy/machines_deploymachinesapp.go: defaultListenAddressCheckTimeout).
PROBE_WINDOW = 15.0
MIN_UP = 2.0  # a group with nothing to check must at least stay up this long


class RehearsalError(NixflyError):
    """The rehearsal found something that would fail on Fly (already reported above the error line)."""


@dataclass(frozen=True)
class RehearsalOptions:
    runtime: str = "auto"
    cache_dir: Path | None = None
    watch_for: float = 0.0  # keep watching this long after start even when all is well
    wait_timeout: float | None = None  # give up this long after start (default: from the checks)
    log: Log = field(default=lambda _line: None, compare=False)  # progress and container output lines


@dataclass
class MachineReport:
    group: str
    machine_config: JSON
    runtime: str = ""
    exits: list[JSON] = field(default_factory=list)
    restarts: int = 0
    checks: list[CheckState] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    expected_ports: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop: JSON | None = None

    def to_json(self) -> JSON:
        return {
            "group": self.group,
            "runtime": self.runtime,
            "machine_config": self.machine_config,
            "exits": self.exits,
            "restarts": self.restarts,
            "listening": [{"address": x.address, "pid": x.pid, "command": x.command} for x in self.listeners],
            "expected_ports": self.expected_ports,
            "checks": [c.to_json() for c in self.checks],
            "problems": self.problems,
            "stop": self.stop,
        }


@dataclass
class RehearsalResult:
    machines: list[MachineReport]
    duration: float = 0.0
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return not self.interrupted and all(not m.problems for m in self.machines)

    def to_json(self) -> JSON:
        return {"passed": self.passed, "interrupted": self.interrupted, "duration": round(self.duration, 3),
                "machines": [m.to_json() for m in self.machines]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The rehearsal


def _ports(plan: GroupPlan) -> set[int]:
    return set(expected_ports(plan.machine_config)) | {c.port for c in checks_of(plan.machine_config)}


def _check_ports_free(plans: Sequence[GroupPlan]) -> None:
    """The containers share this machine's network: a port something else already listens on would be
    answered by that something else, and the rehearsal would judge the wrong program."""
    for port in sorted(set().union(*(_ports(p) for p in plans))):
        busy = host_listeners_on(port)
        if busy:
            raise UsageError(
                f"port {port} is already in use on this machine ({', '.join(busy)}); the rehearsal shares this "
                "machine's network, so stop what listens there first"
            )


def batches(plans: Sequence[GroupPlan]) -> list[list[GroupPlan]]:
    """Plans split into runs that can share this machine's network: groups that use the same port (each
    machine has its own network on Fly) are rehearsed one after the other."""
    out: list[tuple[set[int], list[GroupPlan]]] = []
    for plan in plans:
        ports = _ports(plan)
        for used, batch in out:
            if not used & ports:
                used |= ports
                batch.append(plan)
                break
        else:
            out.append((set(ports), [plan]))
    return [b for _, b in out]


@contextlib.contextmanager
def _interrupts() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM/SIGHUP set an event (the containers are then stopped with their kill signal)."""
    stop = threading.Event()
    old = {}

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        old[s] = signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def rehearse(image: Image, plans: Sequence[GroupPlan], opts: RehearsalOptions) -> RehearsalResult:
    """Start one container per plan, run the checks and the address probe, stop everything with the
    configured kill signal, and return what was seen. Raises for a plan that cannot start at all (the
    command is not in the image, a port is taken)."""
    _check_ports_free(plans)
    cache_dir = (opts.cache_dir or _default_cache()).absolute()
    rootfs = cached_rootfs(image, cache_dir, UnpackOptions.for_current_user(lambda m: opts.log(f"warning: {m}")))
    rt = select_runtime(opts.runtime)
    result = RehearsalResult([])
    t0 = time.monotonic()
    with _interrupts() as interrupted:
        for batch in batches(plans):
            if len(batch) < len(plans):
                opts.log(f"==> {', '.join(p.group for p in batch)}: rehearsing apart (other groups use the same ports)")
            result.machines += _rehearse_batch(image, rootfs, rt, cache_dir, batch, opts, interrupted)
            if interrupted.is_set():
                break
        result.interrupted = interrupted.is_set()
    result.duration = time.monotonic() - t0
    for rep in result.machines:
        _judge(rep, result.interrupted)
    return result


def _rehearse_batch(
    image: Image, rootfs: Path, rt: Probe, cache_dir: Path, plans: Sequence[GroupPlan], opts: RehearsalOptions,
    interrupted: threading.Event,
) -> list[MachineReport]:  # fmt: skip
    machines = [Machine(image, rootfs, p, rt, cache_dir, opts.log) for p in plans]
    reports = [MachineReport(p.group, p.machine_config, rt.name) for p in plans]
    host = machine_address()
    for rep, m in zip(reports, machines, strict=True):
        rep.expected_ports = expected_ports(m.plan.machine_config)
        rep.checks = [CheckState(s, next_at=s.grace_period) for s in checks_of(m.plan.machine_config, host)]
    all_checks = [c.spec for r in reports for c in r.checks]
    window = settle_time(all_checks).total_seconds()
    if any(r.expected_ports for r in reports) and not all_checks:
        window = max(window, PROBE_WINDOW)
    wait = opts.wait_timeout if opts.wait_timeout is not None else max(window, MIN_UP)
    wait = max(wait, opts.watch_for)
    t0 = time.monotonic()
    try:
        for m in machines:
            opts.log(f"==> {m.plan.group}: starting ({rt.name})")
            m.launch()
        _watch(machines, reports, opts, t0, wait, interrupted)
    finally:
        for m, rep in zip(machines, reports, strict=True):
            if m.proc is not None:
                rep.stop = m.stop()
    return reports


def _default_cache() -> Path:
    from nixfly.build.cache import default_cache_dir

    return default_cache_dir()


def _watch(
    machines: list[Machine], reports: list[MachineReport], opts: RehearsalOptions, t0: float, wait: float,
    interrupted: threading.Event,
) -> None:  # fmt: skip
    last_probe = 0.0
    while not interrupted.is_set():
        now = time.monotonic()
        probe_due = now - last_probe >= 0.25
        if probe_due:
            last_probe = now
        down = False
        for m, rep in zip(machines, reports, strict=True):
            rc = m.poll() if m.proc is not None else None
            if rc is not None:
                up = now - m.started_at
                rep.exits.append({"exit_code": rc, "after": round(up, 3)})
                m.finish()
                again = m.restart_policy == "always" or (m.restart_policy == "on-failure" and rc != 0)
                if again and rep.restarts < m.max_retries:
                    rep.restarts += 1
                    opts.log(f"==> {rep.group}: exited with {rc} after {up:.1f}s; restarting "
                             f"(restart policy {m.restart_policy}, {rep.restarts} of {m.max_retries})")  # fmt: skip
                    m.launch()
                    for c in rep.checks:  # a restarted machine's checks start over after its grace period
                        c.next_at = c.spec.grace_period
                else:
                    opts.log(f"==> {rep.group}: exited with {rc} after {up:.1f}s; not restarted "
                             f"(restart policy {m.restart_policy})")  # fmt: skip
                    m.proc = None
                    down = True
            if m.proc is None:
                continue
            for c in rep.checks:
                since = time.monotonic() - m.started_at
                if since >= c.next_at:
                    _record(rep.group, c, run_check(c.spec, since), opts.log)
                    c.next_at = since + c.spec.interval
            if rep.expected_ports and probe_due:
                rep.listeners = listeners(m.pids())
        elapsed = time.monotonic() - t0
        if down:
            return
        if elapsed >= opts.watch_for and all(_healthy(m, r) for m, r in zip(machines, reports, strict=True)):
            return
        # An app that has not opened any socket yet may still be starting (flyctl gives it 15 s), unless
        # the deadline was set by hand.
        silent = any(r.expected_ports and not r.listeners for r in reports) and opts.wait_timeout is None
        if elapsed >= (max(wait, PROBE_WINDOW) if silent else wait):
            return
        interrupted.wait(0.05)


def _record(group: str, state: CheckState, res: CheckResult, log: Log) -> None:
    if state.history and state.history[-1].status == res.status:
        state.history.append(res)
        return
    state.history.append(res)
    log(f"==> {group}: check {state.spec.name} is {res.status}: {res.output}")


def _healthy(m: Machine, rep: MachineReport) -> bool:
    if m.proc is None or rep.exits:
        return False
    if time.monotonic() - m.started_at < MIN_UP and not rep.checks and not rep.expected_ports:
        return False
    if any(c.status != "passing" for c in rep.checks):
        return False
    return not address_problems(rep.expected_ports, rep.listeners)


def _judge(rep: MachineReport, interrupted: bool) -> None:
    problems = []
    if len(rep.exits) == 1:
        problems.append(f"the process exited with {rep.exits[0]['exit_code']} after {rep.exits[0]['after']:.1f}s")
    elif rep.exits:
        codes = ", ".join(str(e["exit_code"]) for e in rep.exits)
        problems.append(f"the process exited {len(rep.exits)} times (exit codes {codes}), the first after "
                        f"{rep.exits[0]['after']:.1f}s")  # fmt: skip
    if not interrupted:
        problems += address_problems(rep.expected_ports, rep.listeners)
        for c in rep.checks:
            if c.status != "passing":
                last = c.history[-1].output if c.history else f"never ran (grace period {c.spec.grace_period:g}s)"
                problems.append(f"check {c.spec.name} ({c.spec.describe()}) is {c.status}: {last}")
    rep.problems = [f"{rep.group}: {p}" for p in problems]
