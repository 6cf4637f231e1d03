"""``nixfly run -c fly.toml IMAGE``: run an image the way its Fly machines will run it, and judge it the way
Fly does, before anything is pushed.

Each process group's machine config is the one ``nixfly deploy`` sends (:func:`nixfly.fly.service.desired_configs`,
the same code path, not a second mapping). From it the container gets the group's command (``init``), its
``env`` plus the variables Fly sets on every machine, the secrets given on this machine (as environment
variables and in secret-backed ``files``), ``files`` placed in the root file system, ``mounts`` as local
directories, ``stop_config`` on stop and the ``restart`` policy. While it runs, the config's checks run on
their own schedule (:mod:`nixfly.run.checks`) and the address probe (:mod:`nixfly.run.probe`) looks at what
the app listens on. The verdict: every container stays up, every check passes, every service port has a
listener fly-proxy can reach.

Secrets are never fetched from Fly (the API does not return values); values never reach an output, a log
line, ``--json`` or a file that outlives the run.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets as pysecrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nixfly.errors import NixflyError, RuntimeErrorNF, UsageError
from nixfly.image import Image
from nixfly.run.checks import CheckResult, CheckState, checks_of, machine_address, run_check, settle_time
from nixfly.run.probe import Listener, address_problems, container_pids, expected_ports, host_listeners_on, listeners
from nixfly.run.process import Volume, build_process
from nixfly.run.runner import _set_pdeathsig, run_dir
from nixfly.run.runtimes import Probe, prepare, select_runtime
from nixfly.run.unpack import UnpackOptions, cached_rootfs

JSON = dict[str, Any]
Log = Callable[[str], None]

# flyctl waits this long for the expected listen addresses when no check says otherwise
# (internal/command/deploy/machines_deploymachinesapp.go: defaultListenAddressCheckTimeout).
PROBE_WINDOW = 15.0
MIN_UP = 2.0  # a group with nothing to check must at least stay up this long
DEFAULT_KILL_SIGNAL = "SIGINT"  # Fly's default stop signal and timeout (fly.toml reference: kill_signal, kill_timeout)
DEFAULT_KILL_TIMEOUT = 5.0
# Without a [[restart]] section Fly restarts a machine whose process exits non-zero, up to 10 times
# (https://fly.io/docs/machines/guides-examples/machine-restart-policy/: on-fail is the default for machines
# fly deploy creates).
DEFAULT_RESTART = {"policy": "on-failure", "max_retries": 10}
DEFAULT_MEMORY_MB = 256  # shared-cpu-1x, the guest a machine gets when fly.toml has no [[vm]]
FLY_PRIVATE_IP = "::1"  # the machine's 6PN address does not exist here; loopback stands in for it
FLY_PUBLIC_IP = "2001:db8::1"  # a documentation address: the machine has no public one here


class RehearsalError(NixflyError):
    """The rehearsal found something that would fail on Fly (already reported above the error line)."""


@dataclass(frozen=True)
class GroupPlan:
    """One container to start: a process group with the machine config deploy would send for it."""

    group: str
    machine_config: JSON
    env: tuple[str, ...] = field(repr=False)  # KEY=VALUE: config env, Fly's variables, secrets
    files: tuple[tuple[str, bytes, int], ...] = field(repr=False)  # (guest path, content, mode)
    mounts: tuple[tuple[str, Path, str], ...] = ()  # (volume name, host dir, destination)


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
# From a machine config to what the container gets


def fly_machine_env(machine_config: Mapping[str, Any], *, app: str, region: str, machine_id: str) -> dict[str, str]:
    """The variables Fly sets on every machine (https://fly.io/docs/machines/runtime-environment/), with
    local stand-ins for what only exists on Fly (the 6PN and public addresses)."""
    guest = machine_config.get("guest")
    memory = guest.get("memory_mb") if isinstance(guest, dict) else None
    env = machine_config.get("env") if isinstance(machine_config.get("env"), dict) else {}
    assert isinstance(env, dict)
    return {
        "FLY_APP_NAME": app,
        "FLY_MACHINE_ID": machine_id,
        "FLY_ALLOC_ID": machine_id,
        "FLY_REGION": region,
        "FLY_PUBLIC_IP": FLY_PUBLIC_IP,
        "FLY_PRIVATE_IP": FLY_PRIVATE_IP,
        "FLY_IMAGE_REF": str(machine_config.get("image", "")),
        "FLY_MACHINE_VERSION": pysecrets.token_hex(13).upper(),
        "FLY_PROCESS_GROUP": str(env.get("FLY_PROCESS_GROUP", "")),
        "FLY_VM_MEMORY_MB": str(memory if isinstance(memory, int) else DEFAULT_MEMORY_MB),
        **({"PRIMARY_REGION": str(env["PRIMARY_REGION"])} if "PRIMARY_REGION" in env else {}),
    }


def machine_files(
    machine_config: Mapping[str, Any], secrets: Mapping[str, str], missing: Callable[[str, str], None]
) -> list[tuple[str, bytes, int]]:
    """The config's ``files`` as (guest path, content, mode): raw values decoded, secret-backed ones from
    ``secrets`` (Fly stores them base64-encoded, so the value is decoded too). A secret not given locally is
    reported through ``missing(secret name, guest path)`` and its file left out."""
    out = []
    for f in machine_config.get("files") or []:
        path = str(f.get("guest_path"))
        mode = f.get("mode") if isinstance(f.get("mode"), int) else 0o644
        if f.get("raw_value") is not None:
            out.append((path, base64.b64decode(f["raw_value"]), mode))
            continue
        name = str(f.get("secret_name"))
        if name not in secrets:
            missing(name, path)
            continue
        try:
            content = base64.b64decode(secrets[name], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(
                f"secret {name} backs [[files]] {path}, and Fly decodes such a secret as base64, but its local "
                f"value is not base64; give it as --secret {name}=$(base64 -w0 FILE)"
            ) from None
        out.append((path, content, mode))
    return out


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown kill signal {name!r}") from None


# ---------------------------------------------------------------------------------------------------------
# One machine's container


class _Machine:
    """A group's container: started from the main thread, its output pumped by a thread, restarted per the
    restart policy, stopped with the stop config."""

    def __init__(self, image: Image, rootfs: Path, plan: GroupPlan, rt: Probe, cache_dir: Path, log: Log) -> None:
        self.image = image
        self.rootfs = rootfs
        self.plan = plan
        self.rt = rt
        self.cache_dir = cache_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.container_id = ""
        self.started_at = 0.0
        self.stack: contextlib.ExitStack | None = None
        self.pump: threading.Thread | None = None
        mc = plan.machine_config
        stop = mc.get("stop_config") if isinstance(mc.get("stop_config"), dict) else {}
        assert isinstance(stop, dict)
        self.kill_signal = str(stop.get("signal") or DEFAULT_KILL_SIGNAL)
        from nixfly.fly.units import parse_go_duration

        timeout = stop.get("timeout")
        self.kill_timeout = DEFAULT_KILL_TIMEOUT
        if isinstance(timeout, str):
            self.kill_timeout = parse_go_duration(timeout).total_seconds()
        restart = mc.get("restart") if isinstance(mc.get("restart"), dict) else DEFAULT_RESTART
        assert isinstance(restart, dict)
        self.restart_policy = str(restart.get("policy") or "on-failure")
        retries = restart.get("max_retries")
        self.max_retries = retries if isinstance(retries, int) else 10

    def _process_args(self) -> tuple[list[str], list[str] | None]:
        """(command, entrypoint) from ``init`` as Fly reads it: ``exec`` replaces both, ``entrypoint`` the
        image's Entrypoint, ``cmd`` its Cmd."""
        init = self.plan.machine_config.get("init") or {}
        if init.get("exec"):
            return [], list(init["exec"])
        entry = list(init["entrypoint"]) if init.get("entrypoint") else None
        cmd = list(init.get("cmd") or [])
        if entry is not None and not cmd:
            cmd = list((self.image.config.get("config") or {}).get("Cmd") or [])
        return cmd, entry

    def launch(self) -> None:
        """Start the container (errors in the image or the plan raise here, in the caller's thread)."""
        stack = contextlib.ExitStack()
        try:
            d, cid = stack.enter_context(run_dir(self.cache_dir, self.rt))
            volumes = [Volume(host, dest) for _name, host, dest in self.plan.mounts]
            files_dir = d / "files"
            files_dir.mkdir(mode=0o700)
            for i, (guest, content, mode) in enumerate(self.plan.files):
                host = files_dir / f"{i}-{PurePosixPath(guest).name}"
                fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o7777)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                os.chmod(host, mode & 0o7777)
                volumes.append(Volume(host, guest))
            command, entrypoint = self._process_args()
            spec = build_process(
                self.rootfs, self.image.config, command=command, entrypoint=entrypoint, env=self.plan.env,
                host_env={}, volumes=volumes, tty=False,
            )  # fmt: skip
            info_read = info_write = None
            if self.rt.name == "bwrap":
                info_read, info_write = os.pipe()

            def close_info() -> None:  # the read end is ours until the drain thread owns it
                if info_read is not None:
                    os.close(info_read)

            stack.callback(close_info)
            try:
                prep = prepare(self.rt, spec, self.rootfs, volumes, d, cid, info_write)
                try:
                    proc = subprocess.Popen(
                        prep.argv,
                        pass_fds=(info_write,) if info_write is not None else (),
                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        process_group=0,
                        preexec_fn=_set_pdeathsig,
                    )
                except OSError as e:
                    raise RuntimeErrorNF(f"cannot start {self.rt.name}: {e.strerror}") from None
            finally:
                if info_write is not None:
                    os.close(info_write)
            if info_read is not None:
                # bwrap reports its child's pid here; the probe finds the container by namespace instead,
                # but the pipe must be drained so bwrap's write never fails.
                threading.Thread(target=_drain, args=(info_read,), daemon=True).start()
                info_read = None
        except BaseException:
            stack.close()
            raise
        self.stack, self.proc, self.container_id = stack, proc, cid
        self.started_at = time.monotonic()
        self.pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.pump.start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.log(f"[{self.plan.group}] {raw.decode(errors='replace').rstrip()}")

    def poll(self) -> int | None:
        assert self.proc is not None
        rc = self.proc.poll()
        return None if rc is None else (128 - rc if rc < 0 else rc)

    def pids(self) -> list[int]:
        return container_pids(self.proc.pid) if self.proc is not None else []

    def finish(self) -> None:
        """After the container exited: wait for its output, remove its run directory."""
        if self.pump is not None:
            self.pump.join(5)
        if self.stack is not None:
            self.stack.close()
        self.stack = None

    def _signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.rt.name == "runc" and self.rt.path:
            name = signal.Signals(signum).name
            r = subprocess.run([self.rt.path, "kill", self.container_id, name], capture_output=True, check=False)
            if r.returncode == 0:
                return
        pids = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0] if pids else self.proc.pid, signum)

    def stop(self) -> JSON:
        """Stop with the config's signal; SIGKILL after its timeout. What happened, for the report.

        On Fly the app is not PID 1 (Fly's init is), so a signal it has no handler for kills it. Here it is
        PID 1 of its namespace, where the kernel drops such a signal: when the app neither catches nor
        ignores the kill signal, the rehearsal does what that signal would have done, and kills it."""
        if self.proc is None or self.proc.poll() is not None:
            self.finish()
            return {"signal": self.kill_signal, "already_exited": True}
        started = time.monotonic()
        signum = _signal_number(self.kill_signal)
        pids = self.pids()
        disposition = _disposition(pids[0], signum) if pids else "caught"
        self._signal(signum if disposition != "default" else signal.SIGKILL)
        try:
            self.proc.wait(self.kill_timeout)
            killed = False
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            killed = True
        took = time.monotonic() - started
        self.finish()
        if killed:
            self.log(f"==> {self.plan.group}: did not stop within {self.kill_timeout:g}s of {self.kill_signal}; killed")
        return {"signal": self.kill_signal, "timeout": self.kill_timeout, "app_signal_handling": disposition,
                "killed_after_timeout": killed, "took": round(took, 3)}  # fmt: skip


def _disposition(pid: int, signum: int) -> str:
    """``caught``, ``ignored`` or ``default``: what process ``pid`` does with ``signum`` (/proc status masks)."""
    masks = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("SigCgt", "SigIgn"):
                masks[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        return "caught"  # cannot tell: deliver the signal as asked
    bit = 1 << (signum - 1)
    if masks.get("SigCgt", 0) & bit:
        return "caught"
    if masks.get("SigIgn", 0) & bit:
        return "ignored"
    return "default"


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError), os.fdopen(fd, "rb") as f:
        while f.read(4096):
            pass


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
    machines = [_Machine(image, rootfs, p, rt, cache_dir, opts.log) for p in plans]
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
    machines: list[_Machine], reports: list[MachineReport], opts: RehearsalOptions, t0: float, wait: float,
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


def _healthy(m: _Machine, rep: MachineReport) -> bool:
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


# ---------------------------------------------------------------------------------------------------------
# From fly.toml and the command line to the plans


@dataclass(frozen=True)
class RehearsalRequest:
    """What ``nixfly run -c fly.toml`` was asked (the CLI fills it from its flags)."""

    config_path: Path
    image_ref: Callable[[str], str]  # app name → the reference its machine configs name (what deploy deploys)
    app: str | None = None
    groups: tuple[str, ...] = ()  # empty: the group with the services
    all_groups: bool = False
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # app → the secret names `nixfly secrets list` reports for it (None: Fly is not asked)
    fly_secret_names: Callable[[str], Sequence[str]] | None = field(default=None, compare=False)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)  # where a needed secret may also come from
    require_secrets: bool = False
    volumes: Mapping[str, Path] = field(default_factory=dict)  # volume name → local directory
    state_dir: Path | None = None
    region: str | None = None
    extra_env: tuple[str, ...] = field(default=(), repr=False)
    allow_unknown_keys: bool = False


def _plain_path(path: str, what: str) -> None:
    # These become mount targets inside the container: nothing may climb out of its root.
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or path.rstrip("/") == "":
        raise UsageError(f"fly.toml: {what} must be an absolute path inside the machine, without '..'")


def _plain_name(name: str, what: str) -> None:
    # App and volume names name directories in nixfly's state: letters, digits, '-' and '_' only (as on Fly).
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise UsageError(f"fly.toml: {what} {name!r} may hold only letters, digits, '-' and '_'")


def parse_dotenv(text: str, source: str) -> dict[str, str]:
    """``NAME=VALUE`` lines (``export`` allowed, ``#`` comments, one level of matching quotes stripped).
    Errors name the file and line, never a value."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s.removeprefix("export ").lstrip()
        name, sep, value = s.partition("=")
        name = name.strip()
        if not sep or not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "a").isalnum():
            raise UsageError(f"{source}:{n}: expected NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def default_group(machine_configs: Mapping[str, JSON], default: str) -> str:
    """The group a rehearsal runs without --group: the first with services, else fly.toml's default."""
    return next((g for g, mc in machine_configs.items() if mc.get("services")), default)


def plan_rehearsal(req: RehearsalRequest, warn: Log) -> list[GroupPlan]:
    """The containers to start: one per chosen group, each with the machine config ``nixfly deploy``
    computes for it (:func:`nixfly.fly.service.desired_configs`, for an app with no machines yet)."""
    from nixfly.fly.service import desired_configs, load_config
    from nixfly.fly.state import default_state_dir

    cfg = load_config(req.config_path, allow_unknown_keys=req.allow_unknown_keys)
    app = cfg.app_name(req.app)
    configs = desired_configs(cfg, req.image_ref(app), ())
    if req.all_groups:
        groups = list(configs)
    elif req.groups:
        groups = list(dict.fromkeys(req.groups))
        for g in groups:
            if g not in configs:
                raise UsageError(f"fly.toml defines no process group {g!r} (groups: {', '.join(configs)})")
    else:
        groups = [default_group(configs, cfg.default_process_group())]

    # Every secret Fly would hand the machines: the ones fly.toml's files name and the ones the app has.
    needed = {str(f["secret_name"]): str(f["guest_path"]) for g in groups for f in configs[g].get("files") or []
              if f.get("secret_name")}  # fmt: skip
    for name in req.fly_secret_names(app) if req.fly_secret_names is not None else ():
        needed.setdefault(name, "")
    given = dict(req.secrets)
    for name in needed:
        # nixfly's own Fly credentials never go into a container unless passed by name (--secret NAME).
        if name not in given and name in req.environ and name not in ("FLY_API_TOKEN", "FLY_ACCESS_TOKEN"):
            given[name] = req.environ[name]
    missing = sorted(n for n in needed if n not in given)
    for name in missing:
        where = f" (it backs [[files]] {needed[name]})" if needed[name] else " (the app has it on Fly)"
        line = f"secret {name} was not given here{where}: pass --secret {name}=VALUE or --secrets-file FILE"
        if req.require_secrets:
            raise UsageError(line)
        warn(line)

    mounted = {str(m.get("name")) for g in groups for m in configs[g].get("mounts") or []}
    for name in req.volumes:
        if name not in mounted:
            known = ", ".join(sorted(mounted)) or "none"
            raise UsageError(f"--volume {name}=…: no [[mounts]] source {name!r} in the groups being run ({known})")
    for g in groups:
        for f in configs[g].get("files") or []:
            _plain_path(str(f.get("guest_path")), f"[[files]] guest_path {f.get('guest_path')!r}")
        for m in configs[g].get("mounts") or []:
            _plain_path(str(m.get("path")), f"[[mounts]] destination {m.get('path')!r}")
            _plain_name(str(m.get("name")), "[[mounts]] source")
    _plain_name(app, "app name")
    region = req.region or cfg.primary_region or "ams"  # what deploy places new machines in
    state = (req.state_dir or default_state_dir()) / "rehearse" / app / "volumes"
    plans = []
    for g in groups:
        mc = configs[g]
        machine_id = pysecrets.token_hex(7)
        env = {str(k): str(v) for k, v in (mc.get("env") or {}).items()}
        env.update(fly_machine_env(mc, app=app, region=region, machine_id=machine_id))
        env.update(given)  # on Fly every secret is also an environment variable
        mounts = []
        for m in mc.get("mounts") or []:
            name, dest = str(m.get("name")), str(m.get("path"))
            host = req.volumes.get(name)
            if host is None:
                host = state / name
                host.mkdir(parents=True, exist_ok=True)
            elif not host.is_dir():
                raise UsageError(f"--volume {name}={host}: {host} is not a directory")
            mounts.append((name, host.resolve(), dest))
        files = machine_files(mc, given, lambda _n, _p: None)
        plans.append(GroupPlan(g, mc, tuple(f"{k}={v}" for k, v in env.items()) + req.extra_env, tuple(files),
                               tuple(mounts)))  # fmt: skip
    return plans
