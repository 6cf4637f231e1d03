"""The first process of every run, started as ``python -I _stage.py PLAN.json`` (standard library only).

It enters a private mount namespace (and a user namespace when not root), mounts the run's writable
overlay (the cached rootfs read-only below, a per-run upper directory above) so the cache is never
written, and then either execs runc/bwrap, or (the ``chroot`` runtime) forks the container as PID 1 of a
new PID namespace, chroots it and forwards signals to it. Everything it mounts vanishes with its
namespace, so a crash can leave no mount behind on the host.

Exit status: the container's (128+N when it died of signal N); 125 when setting up failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        src.encode() if src else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(rc, f"mount {target}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(userns: bool) -> None:
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWNS | (CLONE_NEWUSER if userns else 0))
    if userns:
        # Map ourselves to root inside, so mounting is allowed; other ids stay unmapped.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    # Nothing we mount may propagate back to the host's mount table.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_rootfs(plan: dict[str, Any]) -> None:
    lower, upper, work, merged = plan["lower"], plan["upper"], plan["work"], plan["merged"]
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",userxattr" if plan["userns"] else "")
    try:
        if any(c in p for p in (lower, upper, work) for c in ",:\\"):
            raise SetupError("paths unsuitable for overlay options")
        _mount("overlay", merged, "overlay", 0, opts)
    except SetupError:
        # No overlayfs here: a private copy still keeps the cache unwritten (reflinks where the fs can).
        subprocess.run(["cp", "-a", "--reflink=auto", f"{lower}/.", merged], check=True)


def _bind(host: str, target: str, read_only: bool) -> None:
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(host, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _default_signals() -> None:
    # Python ignores SIGPIPE/SIGXFSZ and exec keeps ignored signals ignored: the container must not inherit that.
    for s in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_DFL)


def _container_child(plan: dict[str, Any]) -> None:
    """PID 1 of the new PID namespace: finish the filesystem, drop to the user, exec the command."""
    c = plan["chroot"]
    merged = plan["merged"]
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the stage, whatever kills it
    os.makedirs(f"{merged}/proc", exist_ok=True)
    _mount("proc", f"{merged}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = f"{merged}/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists(f"/dev/{node}"):
            _bind(f"/dev/{node}", f"{dev}/{node}", False)
    links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1"}
    links |= {"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
    for name, target in links.items():
        os.symlink(target, f"{dev}/{name}")
    if os.path.isdir("/dev/pts"):
        # The host's terminals, so a container started from a terminal finds its tty (ttyname, job control).
        _bind("/dev/pts", f"{dev}/pts", False)
    os.makedirs(f"{dev}/shm")
    _mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV)
    for host, ctr, ro in c["volumes"]:
        _bind(host, merged + ctr, ro)
    os.chroot(merged)
    os.makedirs(c["cwd"], exist_ok=True)  # docker creates a missing working directory too
    os.chdir(c["cwd"])
    os.setgroups(c["groups"])
    os.setgid(c["gid"])
    os.setuid(c["uid"])
    env = dict(e.split("=", 1) for e in c["env"])
    args = c["args"]
    _default_signals()
    try:
        os.execvpe(args[0], args, env)
    except OSError as e:
        sys.stderr.write(f"nixfly: cannot run {args[0]!r} in the container: {e.strerror}\n")
        os._exit(127)


def run_chroot(plan: dict[str, Any]) -> int:
    _unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            _container_child(plan)
        except (SetupError, OSError) as e:
            sys.stderr.write(f"nixfly: chroot runtime: {e}\n")
        os._exit(SETUP_FAILED)

    def forward(signum: int, _frame: object) -> None:
        # The child is PID 1 of its namespace: like docker, it only sees signals it has a handler for.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for s in plan["forward"]:
        signal.signal(s, forward)
    for s in plan["ignore"]:
        signal.signal(s, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        plan: dict[str, Any] = json.load(f)
    if plan.get("probe"):
        try:
            enter_namespaces(plan["userns"])
            _unshare(CLONE_NEWPID)
        except (SetupError, OSError) as e:
            sys.stderr.write(f"{e}\n")
            return 1
        return 0
    try:
        enter_namespaces(plan["userns"])
        mount_rootfs(plan)
        if plan.get("exec"):
            argv_ = plan["exec"]
            _default_signals()
            os.execve(argv_[0], argv_, dict(e.split("=", 1) for e in plan["exec_env"]))
    except (SetupError, OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write(f"nixfly: cannot set up the container's filesystem: {e}\n")
        return SETUP_FAILED
    return run_chroot(plan)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
