"""Container runtimes nixfly can start an unpacked image with, how to probe them, and how to invoke them.

Preference order: ``runc`` (a full OCI runtime, needs root), ``bwrap`` (bubblewrap), ``chroot`` (our own
stage: unshare(2) + pivot_root(2), the last resort; named after what it replaces). All share the host's
network. Every run goes through ``_stage.py``, which mounts a per-run writable overlay over the cached
rootfs inside a private mount namespace, so no runtime ever writes into the cache.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from nixfly.errors import RuntimeErrorNF
from nixfly.run import _stage
from nixfly.run._stage import PROC_READ_ONLY
from nixfly.run.process import ProcessSpec, Volume

RuntimeName = Literal["runc", "bwrap", "chroot"]
RUNTIMES: tuple[RuntimeName, ...] = ("runc", "bwrap", "chroot")
PROBE_TIMEOUT = 10.0
# The runtimes' own PATH on the host when ours has none (the container's comes from the image config).
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# docker's default capability set for a root process in a container.
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


# Their numbers (linux/capability.h), for the chroot runtime, which sets them itself.
CAP_NUMBERS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}


@dataclass(frozen=True)
class Probe:
    """A runtime and whether it works here: ``problem`` is None when usable, else why not (one line)."""

    name: RuntimeName
    path: str | None
    problem: str | None

    @property
    def usable(self) -> bool:
        return self.problem is None


def _host_env() -> dict[str, str]:
    # Runtimes get only what they need from our environment: never the user's secrets.
    return {"PATH": os.environ.get("PATH", _HOST_PATH)}


def stage_command(plan_path: Path | str) -> list[str]:
    """``python -I`` ignores PYTHON* variables, so nothing in the environment changes what the stage does."""
    return [sys.executable, "-I", _stage.__file__, str(plan_path)]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"


def _try(argv: Sequence[str], what: str) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, env=_host_env())
    except subprocess.TimeoutExpired:
        return f"{what} did not answer within {PROBE_TIMEOUT:.0f}s"
    except OSError as e:
        return f"{what} cannot be started: {e.strerror}"
    if r.returncode != 0:
        return f"{what} failed: {_last_line(r.stderr or r.stdout)}"
    return None


def probe(name: RuntimeName) -> Probe:
    """Check quickly whether ``name`` can run containers here (without running one for runc)."""
    if name == "chroot":
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nixfly-probe-") as f:
            json.dump({"probe": True, "userns": os.geteuid() != 0}, f)
            f.flush()
            problem = _try(stage_command(f.name), "creating mount and PID namespaces")
        return Probe(name, sys.executable, problem)
    path = shutil.which(name)
    if path is None:
        return Probe(name, None, "not found on PATH")
    if name == "runc":
        if os.geteuid() != 0:
            return Probe(name, path, "needs root (nixfly does not set up rootless runc)")
        return Probe(name, path, _try([path, "--version"], "runc --version"))
    true = shutil.which("true") or "/bin/true"
    argv = [path, "--ro-bind", "/", "/", "--unshare-all", "--share-net", "--die-with-parent", true]
    return Probe(name, path, _try(argv, "a trial sandbox"))


def select_runtime(requested: str = "auto", probes: Callable[[RuntimeName], Probe] = probe) -> Probe:
    """The runtime to use: ``requested`` if it is usable, or with ``auto`` the first usable of runc, bwrap,
    chroot. Raises RuntimeErrorNF naming each runtime tried and why it is unusable."""
    names: tuple[RuntimeName, ...]
    if requested == "auto":
        names = RUNTIMES
    elif requested in RUNTIMES:
        names = (requested,)
    else:
        raise RuntimeErrorNF(f"unknown runtime {requested!r}: use auto, {', '.join(RUNTIMES)}")
    tried = []
    for n in names:
        p = probes(n)
        if p.usable:
            return p
        tried.append(f"{n}: {p.problem}")
    if requested != "auto":
        raise RuntimeErrorNF(f"runtime {requested} is not usable here: {tried[0].split(': ', 1)[1]}")
    raise RuntimeErrorNF("no usable container runtime (" + "; ".join(tried) + "); install runc or bubblewrap")


def runc_config(spec: ProcessSpec, root: str, volumes: Sequence[Volume]) -> dict[str, Any]:
    """An OCI runtime config (config.json) for runc: host network (no network namespace), docker's default
    capabilities for root, the usual /proc /dev /sys mounts and the volumes as bind mounts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    caps = DEFAULT_CAPS if spec.uid == 0 else []
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for v in volumes:
        opts = ["rbind", "rprivate"] + (["ro"] if v.read_only else [])
        mounts.append({"destination": v.container, "type": "bind", "source": str(v.host), "options": opts})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": list(spec.additional_gids)},
            "args": list(spec.args),
            "env": list(spec.env),
            "cwd": spec.cwd,
            "capabilities": {"bounding": DEFAULT_CAPS, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}],
            "noNewPrivileges": False,  # set-uid programs in the image work, as under docker
        },
        "root": {"path": root, "readonly": False},
        "hostname": "nixfly",
        "mounts": mounts,
        "linux": {
            # No "network" entry: the container shares the host's network, as the issue asks.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [f"/proc/{p}" for p in PROC_READ_ONLY],
        },
    }


def bwrap_args(bwrap: str, spec: ProcessSpec, root: str, volumes: Sequence[Volume], info_fd: int) -> list[str]:
    """The bwrap command line: the rootfs bound at /, fresh /proc and /dev, all namespaces but the network.
    ``--as-pid-1`` makes the command PID 1 so signals reach it directly (via ``--info-fd``'s child-pid)."""
    argv = [bwrap, "--bind", root, "/", "--proc", "/proc", "--dev", "/dev", "--ro-bind-try", "/sys", "/sys"]
    # bwrap covers /proc/sys and the like only where its unprivileged setup cannot write them: as root it
    # leaves them writable (core_pattern, sysctls). Read-only, as runc's readonlyPaths.
    for p in PROC_READ_ONLY:
        argv += ["--ro-bind-try", f"/proc/{p}", f"/proc/{p}"]
    argv += ["--unshare-all", "--share-net", "--die-with-parent", "--as-pid-1", "--info-fd", str(info_fd)]
    argv += ["--hostname", "nixfly"]
    if (spec.uid, spec.gid) != (0, 0):
        # bwrap sets ids only inside its own user namespace (one uid and one gid, no supplementary groups).
        argv += ["--unshare-user", "--uid", str(spec.uid), "--gid", str(spec.gid)]
    else:
        # As root bwrap would keep every capability: docker's default set instead, as runc and chroot do.
        argv += ["--cap-drop", "ALL"]
        for cap in DEFAULT_CAPS:
            argv += ["--cap-add", cap]
    for v in volumes:
        argv += ["--ro-bind" if v.read_only else "--bind", str(v.host), v.container]
    argv += ["--dir", spec.cwd, "--chdir", spec.cwd, "--", *spec.args]
    return argv


def mount_points(spec: ProcessSpec, volumes: Sequence[Volume]) -> list[list[Any]]:
    """``[path, replace_files]`` for every path of the rootfs a runtime mounts onto or enters: the stage
    makes each a real directory of the run's overlay before any runtime starts (see ``_stage``)."""
    points: list[list[Any]] = [[p, True] for p in ("/proc", "/dev", "/sys", "/dev/pts", "/dev/shm", "/dev/mqueue")]
    for v in volumes:
        points.append([v.container if v.host.is_dir() else str(PurePosixPath(v.container).parent), False])
    points.append([spec.cwd, False])
    return points


@dataclass(frozen=True)
class Prepared:
    """A run ready to start: the stage command and what supervising it needs to know."""

    runtime: Probe
    argv: tuple[str, ...]
    container_id: str
    info_fd: int | None = None  # bwrap: write end, passed to the child


def prepare(
    rt: Probe,
    spec: ProcessSpec,
    rootfs: Path,
    volumes: Sequence[Volume],
    run_dir: Path,
    container_id: str,
    info_fd: int | None = None,
) -> Prepared:
    """Write the run's plan (and runc bundle) into ``run_dir`` (private, removed by the caller)."""
    merged = run_dir / "rootfs"
    for d in ("upper", "work", "rootfs"):
        (run_dir / d).mkdir()
    os.chmod(merged, 0o755)
    plan: dict[str, Any] = {
        "mount_points": mount_points(spec, volumes),
        "lower": str(rootfs),
        "upper": str(run_dir / "upper"),
        "work": str(run_dir / "work"),
        "merged": str(merged),
        "userns": os.geteuid() != 0,
        "exec": None,
        "exec_env": list(spec.env),
        "chroot": None,
        "forward": [],
        "ignore": [],
    }
    assert rt.path is not None
    if rt.name == "runc":
        (run_dir / "config.json").write_text(json.dumps(runc_config(spec, str(merged), volumes)))
        plan["exec"] = [rt.path, "run", "--bundle", str(run_dir), container_id]
        plan["exec_env"] = [f"{k}={v}" for k, v in _host_env().items()]
    elif rt.name == "bwrap":
        assert info_fd is not None
        plan["exec"] = bwrap_args(rt.path, spec, str(merged), volumes, info_fd)
    else:
        import signal

        plan["chroot"] = {
            "args": list(spec.args),
            "env": list(spec.env),
            "cwd": spec.cwd,
            "uid": spec.uid,
            "gid": spec.gid,
            "groups": list(spec.additional_gids),
            "volumes": [[str(v.host), v.container, v.read_only] for v in volumes],
            "caps": sorted(CAP_NUMBERS[c] for c in DEFAULT_CAPS),
            "tty": spec.tty,
        }
        fwd = [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]
        tty_sigs = [signal.SIGINT, signal.SIGQUIT]
        # On a terminal the kernel already sends ^C/^\ to the container (same process group): don't double it.
        plan["forward"] = [int(s) for s in (fwd if spec.tty else fwd + tty_sigs)]
        plan["ignore"] = [int(s) for s in tty_sigs] if spec.tty else []
    plan_path = run_dir / "plan.json"
    fd = os.open(plan_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(plan, f)
    return Prepared(rt, tuple(stage_command(plan_path)), container_id, info_fd)
