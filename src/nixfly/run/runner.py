"""``nixfly run`` end to end: cached rootfs → process spec → runtime → supervised container → cleanup."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from nixfly.build.cache import default_cache_dir, owner_gone, pid_alive
from nixfly.errors import NixflyError, RuntimeErrorNF
from nixfly.image import Image
from nixfly.run.pinned import remember_image
from nixfly.run.process import Volume, build_process
from nixfly.run.runtimes import Prepared, Probe, prepare, select_runtime
from nixfly.run.unpack import UnpackOptions, cached_rootfs, remove_tree

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunOptions:
    """Everything ``nixfly run`` can change about how an image runs."""

    runtime: str = "auto"
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    volumes: tuple[Volume, ...] = ()
    workdir: str | None = None
    user: str | None = None
    cache_dir: Path | None = None
    tty: bool | None = None  # None: when stdin and stdout are terminals
    entrypoint: tuple[str, ...] | None = None  # replaces the image's Entrypoint (and drops its Cmd)
    host_env: dict[str, str] | None = field(default=None, repr=False)


def _warn(message: str) -> None:
    sys.stderr.write(f"nixfly: warning: {message}\n")


def _set_pdeathsig() -> None:
    # If nixfly itself is killed (even with SIGKILL), the runtime gets SIGKILL instead of running on.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _sweep_runs(runs: Path, runc: str | None) -> None:
    # Run dirs (and runc containers) named after a nixfly pid that no longer exists are leftovers of kill -9.
    for d in runs.glob("*-*"):
        pid = d.name.split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and owner_gone(int(pid), os.lstat(d).st_mtime):
                remove_tree(d)
    if runc is not None:
        r = subprocess.run([runc, "list", "-q"], capture_output=True, text=True, check=False)
        for cid in r.stdout.split():
            m = re.fullmatch(r"nixfly-(\d+)-[0-9a-f]+", cid)
            if m and not pid_alive(int(m.group(1))):
                subprocess.run([runc, "delete", "--force", cid], capture_output=True, check=False)


@contextlib.contextmanager
def run_dir(cache_dir: Path, runtime: Probe) -> Iterator[tuple[Path, str]]:
    """A private per-run directory (overlay upper/work, mount point, plan, runc bundle) on the cache's
    filesystem, removed on every exit path; yields it with the run's container id."""
    runs = cache_dir / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        os.chmod(runs, 0o700)
        _sweep_runs(runs, runtime.path if runtime.name == "runc" else None)
        d = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=runs))
    except OSError as e:
        raise NixflyError(f"cannot use cache dir {cache_dir}: {e.strerror}") from None
    cid = f"nixfly-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield d, cid
    finally:
        if runtime.name == "runc" and runtime.path:
            # runc deletes a container that exits normally; one whose runc was killed needs this.
            subprocess.run([runtime.path, "delete", "--force", cid], capture_output=True, check=False)
        remove_tree(d)


class _Supervisor:
    """Starts the stage, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the container (a second ^C or TERM kills
    it outright), and returns its exit status."""

    def __init__(self, prep: Prepared, info_read: int | None, tty: bool) -> None:
        self.prep = prep
        self.info_read = info_read
        self.tty = tty
        self.child_pid: int | None = None  # bwrap: the container's PID-1 on the host
        self.child_known = threading.Event()  # set once bwrap has told us child_pid (or closed the pipe)
        self.proc: subprocess.Popen[bytes] | None = None
        self.signals = 0

    def _read_info(self) -> None:
        assert self.info_read is not None
        buf = b""
        try:
            with os.fdopen(self.info_read, "rb") as f:
                while chunk := f.read1(4096):
                    buf += chunk
                    m = re.search(rb'"child-pid"\s*:\s*(\d+)', buf)
                    if m:
                        self.child_pid = int(m.group(1))
                        self.child_known.set()
        finally:
            self.child_known.set()

    def _target(self) -> int:
        assert self.proc is not None
        if self.prep.runtime.name == "bwrap":
            # A signal can arrive before the reader thread has parsed bwrap's report; bwrap itself must
            # not get it (it would die and leave the container), so wait for the PID briefly.
            self.child_known.wait(5.0)
            if self.child_pid is not None:
                return self.child_pid
        return self.proc.pid

    def _kill_hard(self) -> None:
        assert self.proc is not None
        rt = self.prep.runtime
        if rt.name == "runc" and rt.path:
            subprocess.run([rt.path, "kill", self.prep.container_id, "KILL"], capture_output=True, check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._target(), signal.SIGKILL)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1 and signum in (signal.SIGINT, signal.SIGTERM):
            self._kill_hard()
            return
        if self.tty and signum in (signal.SIGINT, signal.SIGQUIT):
            return  # the terminal delivered it to the container's process group already
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._target(), signum)

    def run(self) -> int:
        old: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        for s in FORWARDED:
            old[s] = signal.signal(s, self._on_signal)
        try:
            fds = (self.prep.info_fd,) if self.prep.info_fd is not None else ()
            try:
                self.proc = subprocess.Popen(
                    self.prep.argv,
                    pass_fds=fds,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    # On a terminal the container must be in the foreground process group to read from it.
                    process_group=None if self.tty else 0,
                    preexec_fn=_set_pdeathsig,
                )
            except OSError as e:
                raise RuntimeErrorNF(f"cannot start {self.prep.runtime.name}: {e.strerror}") from None
            finally:
                if self.prep.info_fd is not None:
                    os.close(self.prep.info_fd)
            if self.info_read is not None:
                threading.Thread(target=self._read_info, daemon=True).start()
                self.info_read = None
            rc = self.proc.wait()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self._kill_hard()
                self.proc.wait()
            for signum, handler in old.items():
                signal.signal(signum, handler)
            if self.info_read is not None:
                os.close(self.info_read)
        return 128 - rc if rc < 0 else rc


def run_image(image: Image, opts: RunOptions) -> int:
    """Run ``image`` with the best (or the chosen) runtime and return the container's exit code (128+N if
    it died of signal N). Promises: the cached rootfs is never modified by the container; the container and
    the run's temporary state are gone when this returns or raises."""
    # Absolute: runc resolves a relative rootfs against its bundle, not against our working directory.
    cache_dir = (opts.cache_dir or default_cache_dir()).absolute()
    rootfs = cached_rootfs(image, cache_dir, UnpackOptions.for_current_user(_warn))
    remember_image(image, cache_dir)  # so that a digest-pinned reference to it runs again offline
    tty = opts.tty if opts.tty is not None else (sys.stdin.isatty() and sys.stdout.isatty())
    spec = build_process(
        rootfs,
        image.config,
        command=opts.command,
        env=opts.env,
        workdir=opts.workdir,
        user=opts.user,
        volumes=opts.volumes,
        host_env=opts.host_env,
        tty=tty,
        entrypoint=opts.entrypoint,
    )
    rt = select_runtime(opts.runtime)
    with run_dir(cache_dir, rt) as (d, cid):
        info_read = info_write = None
        if rt.name == "bwrap":
            info_read, info_write = os.pipe()
        try:
            prep = prepare(rt, spec, rootfs, opts.volumes, d, cid, info_write)
        except BaseException:
            for fd in (info_read, info_write):
                if fd is not None:
                    os.close(fd)
            raise
        return _Supervisor(prep, info_read, tty).run()


def available_runtimes() -> Sequence[Probe]:
    """Every runtime with its probe result (for diagnostics)."""
    from nixfly.run.runtimes import RUNTIMES, probe

    return [probe(n) for n in RUNTIMES]
