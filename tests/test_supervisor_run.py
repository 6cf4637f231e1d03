"""Real supervisors under real runtimes: Debian's runit and s6 patched into offline Nix closures (as
/work/shared/docs/TEST-INFRA.md shows), busybox as the userland, the image built by ``nixfly build`` from a
nixfly.toml and started by ``nixfly run`` with a volume over the boot directory, as on Fly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import make_busybox_dir, nix_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes are exercised as root (as in CI)"),
]

NIX = Path(__file__).resolve().parent / "data" / "nix"
# supervisor → (nix file, attribute, a Debian binary it needs)
SUPERVISORS = {"runit": ("runit.nix", "runit", "/usr/bin/runsvdir"), "s6": ("s6.nix", "s6", "/usr/bin/s6-svscan")}


@pytest.fixture(scope="module")
def closures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """supervisor → (busybox store path, supervisor store path), Debian's binaries patched into the store."""
    bb = make_busybox_dir(tmp_path_factory.mktemp("supervisor-nix"))
    args = ["--arg", "bbdir", str(bb), "--arg", "bindir", "/usr/bin", "--arg", "libdir", "/lib/x86_64-linux-gnu"]
    env = nix_env()
    out = {}
    for name, (nix, attr, needs) in SUPERVISORS.items():
        for tool in (needs, "/usr/bin/patchelf", "/bin/busybox"):
            if not Path(tool).exists():
                pytest.fail(f"{tool} is missing: run scripts/setup.sh (it installs runit, s6, patchelf)")
        built = subprocess.run(["nix-build", str(NIX / nix), "--no-out-link", *args, "-A", attr],
                               capture_output=True, text=True, env=env, check=False)  # fmt: skip
        assert built.returncode == 0, built.stderr[-2000:]
        ev = subprocess.run(["nix-instantiate", "--eval", str(NIX / nix), *args, "-A", "busybox"],
                            capture_output=True, text=True, env=env, check=True)  # fmt: skip
        out[name] = (ev.stdout.strip().strip('"'), built.stdout.strip())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def pids_matching(token: str, argv0: str) -> list[int]:
    """Host pids whose command line starts with ``argv0`` and contains ``token`` (runc and bwrap leave
    container processes visible on the host, with their real uids)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0] == argv0.encode() and any(token.encode() in a for a in args):
            out.append(int(d.name))
    return out


def ids(pid: int) -> tuple[str, str, str]:
    """(Uid, Gid, Groups) lines of /proc/PID/status, values only."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = " ".join(v.split())
    return fields["Uid"], fields["Gid"], fields["Groups"]


def build(tmp: Path, toml: str) -> Path:
    (tmp / "nixfly.toml").write_text(toml)
    out = tmp / "img"
    r = run_nixfly("build", "--config", str(tmp / "nixfly.toml"), "-o", f"oci:{out}:latest",
                   "--cache-dir", str(tmp / "cache"), "-q", env={"NIX_CONFIG": nix_env()["NIX_CONFIG"]})  # fmt: skip
    assert r.code == 0, r.err
    return out


def start(tmp: Path, layout: Path, volume: Path, runtime: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nixfly", "run", "--runtime", runtime, "--cache-dir", str(tmp / "cache"),
         "-v", f"{volume}:/var/lib/app", f"oci:{layout}:latest"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


HEAD = """\
[image]
roots = ["{bb}", "{sup}"]
supervisor = "{supervisor}"

[[image.users]]
name = "app"
uid = 1000
gid = 1000

[[image.users]]
name = "web"
uid = 1001
gid = 1001
groups = ["app"]

[[image.groups]]
name = "app"
gid = 1000

[[image.groups]]
name = "web"
gid = 1001
"""

APP = (
    HEAD
    + """
[[image.boot_dirs]]
path = "/var/lib/app"
uid = 1000
gid = 1000
mode = "0750"

[[image.processes]]
name = "seed"
oneshot = true
user = "app"
command = ["/bin/sh", "-c", '''mkdir -p /var/lib/app/www && echo hello-{port} > /var/lib/app/www/index.html
  echo "boot $(id -u):$(id -g)" >> /var/lib/app/events''']

[[image.processes]]
name = "web"
user = "web"
command = ["/bin/httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/var/lib/app/www"]
readiness = {{ kind = "http", port = {port}, period = 1 }}
stop_timeout = 3

[[image.processes]]
name = "heartbeat"
user = "app"
command = ["/bin/sh", "-c", ''': hb-{port}; echo "heartbeat $(id -u):$(id -g)" >> /var/lib/app/events
  while true; do date +%s%N > /var/lib/app/heartbeat; sleep 0.3; done''']
depends_on = {{ web = "healthy" }}
backoff = 1
stop_timeout = 4
"""
)


@pytest.mark.parametrize("supervisor", list(SUPERVISORS))
def test_boot_step_then_processes_as_their_users(
    closures: dict[str, tuple[str, str]], tmp_path: Path, supervisor: str
) -> None:
    bb, sup = closures[supervisor]
    port = free_port()
    layout = build(tmp_path, APP.format(bb=bb, sup=sup, supervisor=supervisor, port=port))
    r = run_nixfly("inspect", "--no-scan", f"oci:{layout}:latest")
    assert r.code == 0, r.err
    assert f"processes (supervisor: {supervisor}):" in r.out
    assert "  heartbeat  as app (1000:1000), restart always; after web healthy: /bin/sh -c" in r.out
    assert "  dir /var/lib/app  owner 1000:1000, mode 0750\n  oneshot seed" in r.out
    vol = tmp_path / "vol"
    vol.mkdir()  # a volume owned by root: the boot stage makes it app's at every start
    proc = start(tmp_path, layout, vol, "runc")
    try:
        page = wait_for("the page", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read())
        assert page == f"hello-{port}\n".encode()
        beat = wait_for("a heartbeat", lambda: (vol / "heartbeat").read_text())
        wait_for("the next heartbeat", lambda: (vol / "heartbeat").read_text() not in ("", beat))
        st = vol.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o750)
        events = (vol / "events").read_text().splitlines()
        assert events == ["boot 1000:1000", "heartbeat 1000:1000"]  # the boot step ran first, once

        [web] = pids_matching(f"127.0.0.1:{port}", "/bin/httpd")
        assert ids(web) == ("1001 1001 1001 1001", "1001 1001 1001 1001", "1000 1001")
        [hb] = pids_matching(f"hb-{port}", "/bin/sh")
        assert ids(hb) == ("1000 1000 1000 1000", "1000 1000 1000 1000", "1000")

        # A process that dies is restarted (after its backoff) and says so in the log.
        os.kill(hb, signal.SIGKILL)
        new = wait_for("the restart", lambda: [p for p in pids_matching(f"hb-{port}", "/bin/sh") if p != hb])
        assert isinstance(new, list) and len(new) == 1
        wait_for("its start", lambda: (vol / "events").read_text().count("heartbeat 1000:1000") == 2)

        # SIGTERM (Fly's kill) stops everything, each within its stop_timeout, and exits 0.
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=3 + 4 + 5)
        took = time.monotonic() - t0
        log = proc.stdout.read() if proc.stdout else ""
        assert rc == 0, log
        assert took < 3 + 4, f"{took:.1f}s"
        assert not pids_matching(f"127.0.0.1:{port}", "/bin/httpd") and not pids_matching(f"hb-{port}", "/bin/sh")
        assert "nixfly: boot step seed" in log and "nixfly: heartbeat exited (exit 137); restarting in 1s" in log
        assert "nixfly: stopping the processes" in log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


CRITICAL = (
    HEAD
    + """
[[image.processes]]
name = "steady"
command = ["/bin/sh", "-c", ": steady-{port}; while true; do sleep 0.2; done"]
stop_timeout = 2

[[image.processes]]
name = "critical"
restart = "never"
command = ["/bin/sh", "-c", "echo critical-start >> /var/lib/app/log; sleep 1; exit 3"]
"""
)


@pytest.mark.parametrize("supervisor", list(SUPERVISORS))
def test_a_failing_never_restart_process_stops_the_machine_nonzero(
    closures: dict[str, tuple[str, str]], tmp_path: Path, supervisor: str
) -> None:
    bb, sup = closures[supervisor]
    port = free_port()
    layout = build(tmp_path, CRITICAL.format(bb=bb, sup=sup, supervisor=supervisor, port=port))
    vol = tmp_path / "vol"
    vol.mkdir()
    proc = start(tmp_path, layout, vol, "bwrap")
    try:
        rc = proc.wait(timeout=20)
        log = proc.stdout.read() if proc.stdout else ""
        assert rc == 3, log
        assert (vol / "log").read_text() == "critical-start\n"  # never restarted
        assert "critical failed (exit 3); restart = never: stopping the machine" in log
        assert not pids_matching(f"steady-{port}", "/bin/sh")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
