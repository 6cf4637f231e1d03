"""The first process of every run, started as ``python -I _stage.py PLAN.json`` (standard library only).

It enters a private mount namespace (and a user namespace when not root), mounts the run's writable
overlay (the cached rootfs read-only below, a per-run upper directory above) so the cache is never
written, turns every path a runtime will mount onto into a real directory of the overlay (a symlink there,
e.g. an image's ``/dev -> /home/you``, would make the runtime create files wherever it points), and then
either execs runc/bwrap, or (the ``chroot`` runtime) forks the container as PID 1 of new PID, UTS and IPC
namespaces, which moves into the overlay with pivot_root(2) in a mount namespace of its own and detaches
the host's tree (so no chroot(2)-and-``..`` walk can climb back out), and forwards signals to it.
Everything it mounts vanishes with its namespace, so a crash can leave no mount behind on the host.

Exit status: the container's (128+N when it died of signal N); 125 when setting up failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import signal
import stat
import subprocess
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
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
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 0x200000
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 125
# runc's defaults (and docker's): parts of /proc through which root could change the host's kernel (sysctls,
# the core dump helper, magic SysRq, IRQ routing) are read-only; those that leak or need no reading are hidden.
PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
PROC_MASKED = ("acpi", "kcore", "keys", "latency_stats", "timer_list", "sched_debug", "scsi")
# pivot_root(2) has no wrapper in older C libraries: its syscall number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "i686": 217, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


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


def _prctl(option: int, arg: int, what: str) -> None:
    zero = ctypes.c_ulong(0)
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero), what)


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
        # nodev: a device node the container makes (root has CAP_MKNOD) opens nothing.
        _mount("overlay", merged, "overlay", MS_NODEV, opts)
    except SetupError:
        # No overlayfs here: a private copy still keeps the cache unwritten (reflinks where the fs can).
        subprocess.run(["cp", "-a", "--reflink=auto", f"{lower}/.", merged], check=True)
        _mount(merged, merged, None, MS_BIND)
        _mount(None, merged, None, MS_BIND | MS_REMOUNT | MS_NODEV | _locked_flags(merged))


def make_mount_points(merged: str, points: list[list[Any]]) -> None:
    """Make each ``[path, replace_files]`` a directory of ``merged``, component by component, never
    following a symlink: a symlink on the way is replaced by an empty directory (so are other non-directories
    when ``replace_files``; else they are an error), a missing component is created. Runtimes then mount
    onto exactly these directories instead of wherever a link in the image points (on the host, for runc's
    /dev entries and bwrap's directories)."""
    for path, replace_files in points:
        fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in (c for c in path.split("/") if c not in ("", ".")):
                if comp == "..":
                    raise SetupError(f"mount point {path}: '..' is not allowed")
                try:
                    st: os.stat_result | None = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    if not (stat.S_ISLNK(st.st_mode) or replace_files):
                        raise SetupError(f"{path}: {comp} in the image is not a directory")
                    os.unlink(comp, dir_fd=fd)
                    st = None
                if st is None:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        finally:
            os.close(fd)


def _locked_flags(path: str) -> int:
    """The per-mount flags ``path``'s mount already has: a bind remount must repeat them (in a user
    namespace the kernel refuses to clear flags the outer namespace set)."""
    f = os.statvfs(path).f_flag
    flags = 0
    for st_bit, ms_bit in (
        (os.ST_RDONLY, MS_RDONLY),
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
    ):
        if f & st_bit:
            flags |= ms_bit
    return flags


def _bind(host: str, target: str, read_only: bool, restrict: bool = False) -> None:
    """Bind ``host`` at ``target``; ``restrict`` adds nosuid and nodev (volumes), ``read_only`` ro."""
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(host, target, None, MS_BIND | MS_REC)
    extra = (MS_RDONLY if read_only else 0) | (MS_NOSUID | MS_NODEV if restrict else 0)
    if extra:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | extra | _locked_flags(target))


def _drop_privileges(keep: list[int]) -> None:
    """Docker's default capabilities and nothing more, for good: every other capability leaves the
    bounding set (so no exec can regain it), the process keeps only ``keep`` (none inheritable, no
    ambient ones), and no_new_privs stops set-uid files and file capabilities from granting anything."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _prctl(PR_CAPBSET_DROP, cap, f"dropping capability {cap}")
    mask = sum(1 << c for c in keep)
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective, data[i].permitted, data[i].inheritable = word, word, 0
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")
    with contextlib.suppress(SetupError):  # no ambient capabilities before Linux 4.3: nothing to clear
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")


def _mount_dev(merged: str, tty: bool) -> None:
    """A /dev of the container's own: a tmpfs (nosuid, nodev: a node made there opens nothing) holding
    the harmless host devices, a private pseudo-terminal instance, and with a terminal only that one."""
    dev = f"{merged}/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists(f"/dev/{node}"):
            _bind(f"/dev/{node}", f"{dev}/{node}", False)
    links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1"}
    links |= {"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
    for name, target in links.items():
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(f"{dev}/pts")
    term = None
    if tty:
        with contextlib.suppress(OSError):
            term = os.ttyname(0)
    if term is not None and term.startswith("/dev/pts/"):
        # The container's own terminal at the same name (so ttyname() works), and no other of the host's.
        _mount("tmpfs", f"{dev}/pts", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
        _bind(term, f"{dev}/pts/{os.path.basename(term)}", False)
    else:
        _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.makedirs(f"{dev}/shm")
    _mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV)


def _mount_proc(merged: str) -> None:
    """A /proc of the container's PID namespace, with runc's read-only and masked paths."""
    proc = f"{merged}/proc"
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        if os.path.exists(f"{proc}/{name}"):
            _bind(f"{proc}/{name}", f"{proc}/{name}", True)
    for name in PROC_MASKED:
        p = f"{proc}/{name}"
        if os.path.isdir(p):
            _mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        elif os.path.exists(p):
            _mount("/dev/null", p, None, MS_BIND)


def _pivot_root(new_root: str) -> None:
    """Make ``new_root`` (a mount point) the root of this mount namespace and detach the old root, so that
    nothing of the host's tree stays reachable: after this, ``..`` at "/" is "/" whatever chroot(2) does."""
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    new = os.open(new_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        if hasattr(_libc, "pivot_root"):
            rc = _libc.pivot_root(b".", b".")
        elif platform.machine() in _SYS_PIVOT_ROOT:
            rc = _libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT[platform.machine()]), b".", b".")
        else:
            raise SetupError(f"pivot_root is not known on {platform.machine()}")
        _check(rc, "pivot_root")
        # The old root is now stacked on the new one; "." (reached through the old root's descriptor) is it.
        os.fchdir(old)
        _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "detaching the host's root")
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


def _default_signals() -> None:
    # Python ignores SIGPIPE/SIGXFSZ and exec keeps ignored signals ignored: the container must not inherit that.
    for s in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_DFL)


def _container_child(plan: dict[str, Any]) -> None:
    """PID 1 of the new PID namespace: finish the filesystem, drop to the user, exec the command."""
    c = plan["chroot"]
    merged = plan["merged"]
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the stage, whatever kills it
    # A mount namespace of its own: pivot_root below must not move the stage's root too.
    _unshare(CLONE_NEWNS)
    name = b"nixfly"
    _check(_libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
    _mount_proc(merged)
    _mount_dev(merged, bool(c.get("tty")))
    for host, ctr, ro in c["volumes"]:
        _bind(host, merged + ctr, ro, restrict=True)
    _pivot_root(merged)
    # Inside the container's own root now: a missing directory (under a volume, say) is made as docker does.
    os.makedirs(c["cwd"], exist_ok=True)
    os.chdir(c["cwd"])
    _drop_privileges(c["caps"])
    if c["groups"] or not plan["userns"]:  # a user namespace denies setgroups(2): there are none to drop
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
    _unshare(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC)
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
            _unshare(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC)
        except (SetupError, OSError) as e:
            sys.stderr.write(f"{e}\n")
            return 1
        return 0
    try:
        enter_namespaces(plan["userns"])
        mount_rootfs(plan)
        make_mount_points(plan["merged"], plan.get("mount_points", []))
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
