"""One process group's container in a rehearsal, run as its Fly machine would run: the group's command
(``init``), started with the runtime chosen, its output pumped to the log, restarted by the ``restart``
policy, and stopped with ``stop_config`` (the kill signal, then SIGKILL after the kill timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from nixfly.errors import RuntimeErrorNF, UsageError
from nixfly.image import Image
from nixfly.run.checks import config_seconds
from nixfly.run.flyplan import GroupPlan, Log
from nixfly.run.probe import container_pids
from nixfly.run.process import Volume, build_process
from nixfly.run.runner import _set_pdeathsig, run_dir
from nixfly.run.runtimes import Probe, prepare

JSON = dict[str, Any]

DEFAULT_KILL_SIGNAL = "SIGINT"  # Fly's default stop signal and timeout (fly.toml reference: kill_signal, kill_timeout)
DEFAULT_KILL_TIMEOUT = 5.0
# Without a [[restart]] section Fly restarts a machine whose process exits non-zero, up to 10 times
# (https://fly.io/docs/machines/guides-examples/machine-restart-policy/: on-fail is the default for machines
# fly deploy creates).
DEFAULT_RESTART = {"policy": "on-failure", "max_retries": 10}


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown kill signal {name!r}") from None




class Machine:
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
        self.kill_timeout = config_seconds(stop.get("timeout"), DEFAULT_KILL_TIMEOUT, "kill_timeout")
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
