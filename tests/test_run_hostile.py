"""``nixfly run`` against hostile images, with the real runtimes: an image must not reach the machine that
runs it. Each test plants the attack in an image (a static program doing the chroot-then-``..`` walk, a
``/dev`` or working directory symlinked to a host directory) and asserts on the host: nothing written or
created outside the container's root, nothing of the host read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_run import layout_of, nixfly
from tests.test_unpack import CAP_SETUID_EP, Entry, busybox_entries, make_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the attacks matter as root (no user namespace in any runtime)"),
]

RUNTIMES = ["runc", "bwrap", "chroot"]

# The classic escape from chroot(2): with CAP_SYS_CHROOT, chroot into a subdirectory while the working
# directory stays above it, walk ".." up to the real root, and chroot there. argv[1]: a file to create
# there; then print what /etc/hostname says.
ESCAPE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[256];
    int fd, n, i;
    chdir("/");
    mkdir("/escape-dir", 0755);
    if (chroot("/escape-dir") != 0) perror("chroot");
    for (i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) perror("chroot .");
    fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, "escaped\n", 8); close(fd); }
    fd = open("/etc/hostname", O_RDONLY);
    n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : 0;
    buf[n > 0 ? n : 0] = 0;
    printf("hostname=%s", buf);
    return 0;
}
"""


SETUID0_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    if (setuid(0) != 0) { perror("setuid"); return 1; }
    printf("uid=%d\n", (int)getuid());
    return 0;
}
"""


def static_program(d: Path, source: str) -> bytes:
    """``source`` compiled and linked statically (it runs in an image without a C library)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the static test program")
    (d / "prog.c").write_text(source)
    r = subprocess.run([cc, "-static", "-O1", "-o", str(d / "prog"), str(d / "prog.c")], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot link a static program here: {r.stderr.decode(errors='replace')[-200:]}")
    return (d / "prog").read_bytes()


@pytest.fixture(scope="module")
def escape_program(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return static_program(tmp_path_factory.mktemp("escape-src"), ESCAPE_C)


@pytest.fixture(scope="module")
def setuid0_program(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return static_program(tmp_path_factory.mktemp("setuid0-src"), SETUID0_C)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_chroot_then_dotdot_does_not_reach_the_host(runtime: str, escape_program: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "written-from-the-container"
    img = make_image(
        tmp_path / "blobs",
        [
            busybox_entries(),
            [Entry("escape", data=escape_program, mode=0o755), Entry("etc/hostname", data=b"inside-the-image\n")],
        ],
        {"Entrypoint": ["/escape", str(marker)], "User": "0"},
    )
    r = nixfly("--runtime", runtime, str(layout_of(img, tmp_path / "layout")), cache=tmp_path / "cache")
    assert not marker.exists(), f"{runtime}: the container wrote {marker} on the host"
    assert r.stdout == "hostname=inside-the-image\n", (r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr


# Files root may write in the host's /proc (kernel settings, the core dump helper, magic SysRq, IRQ routing).
PROC_WRITABLE_BY_ROOT = [
    "/proc/sys/vm/swappiness",
    "/proc/sys/kernel/core_pattern",
    "/proc/sysrq-trigger",
    "/proc/irq/default_smp_affinity",
]


def test_proc_sys_and_sysrq_trigger_are_read_only_for_a_root_container(tmp_path: Path) -> None:
    # Opening for writing changes nothing even where it is allowed (nothing is written): a harmless probe of
    # files through which root in the host's namespaces could otherwise change the kernel's settings.
    probe = (
        f"for f in {' '.join(PROC_WRITABLE_BY_ROOT)}; do "
        "{ true >> $f; } 2>/dev/null && echo writable:$f || echo read-only:$f; done"
    )
    img = make_image(tmp_path / "blobs", [busybox_entries()], {"Cmd": ["/bin/sh", "-c", probe], "Env": ["PATH=/bin"]})
    layout = layout_of(img, tmp_path / "layout")
    for runtime in RUNTIMES:
        r = nixfly("--runtime", runtime, str(layout), cache=tmp_path / "cache")
        expected = "".join(f"read-only:{f}\n" for f in PROC_WRITABLE_BY_ROOT)
        assert (r.returncode, r.stdout) == (0, expected), (runtime, r.stderr)


def _link_to(host_dir: Path, how: str) -> str:
    # Relative: enough ".." to climb out of any rootfs (and of the run's overlay mount point) to "/".
    return str(host_dir) if how == "absolute" else "../" * 40 + str(host_dir).lstrip("/")


@pytest.mark.parametrize("how", ["absolute", "relative"])
@pytest.mark.parametrize("where", ["dev", "dev/shm", "dev/pts", "proc", "sys", "workdir"])
def test_mount_points_symlinked_to_a_host_directory_create_nothing_there(where: str, how: str, tmp_path: Path) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    config: dict[str, Any] = {"Cmd": ["/bin/sh", "-c", "test -c /dev/null && echo ok"], "Env": ["PATH=/bin"]}
    if where == "workdir":
        entries = [Entry("app", "symlink", link=_link_to(host_dir, how))]
        config["WorkingDir"] = "/app/sub/dir"
    else:
        parent = where.rpartition("/")[0]
        entries = [Entry(parent, "dir", mode=0o755)] if parent else []
        entries.append(Entry(where, "symlink", link=_link_to(host_dir, how)))
    img = make_image(tmp_path / "blobs", [busybox_entries(), entries], config)
    layout = layout_of(img, tmp_path / "layout")
    for runtime in RUNTIMES:
        r = nixfly("--runtime", runtime, str(layout), cache=tmp_path / "cache")
        assert sorted(p.name for p in host_dir.iterdir()) == [], f"{runtime} created these in {host_dir}"
        assert (r.returncode, r.stdout) == (0, "ok\n"), (runtime, r.stderr)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_working_directory_through_a_symlink_inside_the_image_still_works(runtime: str, tmp_path: Path) -> None:
    # The common, harmless case (e.g. /app -> /opt/app-1.2): the run starts in the directory the link names.
    entries = [Entry("opt/app-1.2/marker", data=b"here\n"), Entry("app", "symlink", link="opt/app-1.2")]
    img = make_image(
        tmp_path / "blobs",
        [busybox_entries(), entries],
        {"Cmd": ["/bin/sh", "-c", "cat marker && pwd"], "Env": ["PATH=/bin"], "WorkingDir": "/app"},
    )
    r = nixfly("--runtime", runtime, str(layout_of(img, tmp_path / "layout")), cache=tmp_path / "cache")
    assert (r.returncode, r.stdout) == (0, "here\n/opt/app-1.2\n"), r.stderr


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_volume_target_through_a_symlink_is_refused(how: str, tmp_path: Path) -> None:
    host_dir, vol = tmp_path / "host-dir", tmp_path / "vol"
    host_dir.mkdir()
    vol.mkdir()
    img = make_image(
        tmp_path / "blobs",
        [busybox_entries(), [Entry("data", "symlink", link=_link_to(host_dir, how))]],
        {"Cmd": ["/bin/true"]},
    )
    r = nixfly("-v", f"{vol}:/data/sub", str(layout_of(img, tmp_path / "layout")), cache=tmp_path / "cache")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "goes through a symlink in the image (/data)" in r.stderr
    assert list(host_dir.iterdir()) == []


def test_a_file_capability_in_a_layer_gives_no_privilege(setuid0_program: bytes, tmp_path: Path) -> None:
    # `setcap cap_setuid+ep` on a program an unprivileged user of the container runs: setuid(0) must fail.
    caps = (("security.capability", CAP_SETUID_EP),)
    img = make_image(
        tmp_path / "blobs",
        [busybox_entries(), [Entry("bin/become-root", data=setuid0_program, mode=0o755, xattrs=caps)]],
        {"Cmd": ["/bin/become-root"], "User": "65534"},
    )
    layout = layout_of(img, tmp_path / "layout")
    for runtime in RUNTIMES:
        r = nixfly("--runtime", runtime, str(layout), cache=tmp_path / "cache")
        assert (r.returncode, r.stdout) == (1, ""), (runtime, r.stdout)
        # bwrap runs a non-root user in a user namespace where uid 0 is not even mapped (EINVAL).
        assert r.stderr.endswith(("setuid: Operation not permitted\n", "setuid: Invalid argument\n")), r.stderr
        if runtime == RUNTIMES[0]:  # the first run unpacks, and says once what it dropped
            assert r.stderr.startswith(
                "nixfly: warning: dropped file capabilities or security attributes of 1 file(s) (/bin/become-root)"
            ), r.stderr
            assert r.stderr.count("nixfly: warning:") == 1
        else:
            assert "nixfly: warning" not in r.stderr


def _python_for(uid: int) -> str | None:
    """A Python that ``uid`` may run (the test's own may live under /root): the stage needs only its
    standard library."""
    for py in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if py and subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", py, "-c", ""],
                                 capture_output=True).returncode == 0:  # fmt: skip
            return py
    return None


def test_chroot_runtime_without_root_does_not_escape_either(escape_program: bytes) -> None:
    # Without root the chroot runtime runs in a user namespace: a chroot-and-".." walk would reach the host's
    # tree with the user's rights. The stage is started as that user (uid 65534) on a plan nixfly prepared.
    import json
    import tempfile

    from nixfly.run.process import build_process
    from nixfly.run.runtimes import Probe, prepare
    from nixfly.run.unpack import UnpackOptions, cached_rootfs

    nobody = 65534
    py = _python_for(nobody)
    if py is None or shutil.which("setpriv") is None:
        pytest.skip("no Python (or setpriv) an unprivileged user can run")
    top = Path(tempfile.mkdtemp(prefix="nixfly-userns-"))  # pytest's tmp_path is private to root
    try:
        os.chmod(top, 0o777)
        marker = top / "written-from-the-container"
        planted = [Entry("escape", data=escape_program, mode=0o755), Entry("etc/hostname", data=b"in\n")]
        img = make_image(top / "blobs", [busybox_entries(), planted], {"Entrypoint": ["/escape", str(marker)]})
        rootfs = cached_rootfs(img, top / "cache", UnpackOptions(keep_owners=False))
        subprocess.run(["chmod", "-R", "a+rX", str(top / "cache")], check=True)
        run_dir = top / "run"
        run_dir.mkdir()
        spec = build_process(rootfs, img.config)
        prep = prepare(Probe("chroot", py, None), spec, rootfs, (), run_dir, "nixfly-test")
        plan_path = Path(prep.argv[-1])
        plan = json.loads(plan_path.read_text())
        plan["userns"] = True  # what prepare() writes when nixfly itself runs without root
        plan_path.write_text(json.dumps(plan))
        subprocess.run(["chown", "-R", str(nobody), str(run_dir)], check=True)
        argv = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", py, *prep.argv[1:]]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert not marker.exists(), "the container wrote on the host"
        assert (r.returncode, r.stdout) == (0, "hostname=in\n"), r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_a_10_gb_etc_passwd_in_the_image_is_one_line_not_a_read_of_10_gb(tmp_path: Path) -> None:
    """The user the container runs as is looked up in the image's /etc/passwd; a (sparse) 10 GB one is
    refused with one line instead of being read whole (here under a 1 GiB address-space cap, which an
    unbounded read would end in a MemoryError)."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    with open(root / "etc" / "passwd", "wb") as f:
        f.truncate(10 << 30)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from pathlib import Path\n"
        "from nixfly.errors import NixflyError\n"
        "from nixfly.run.process import resolve_user\n"
        "try:\n"
        "    resolve_user(Path(sys.argv[1]), 'app')\n"
        "except NixflyError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "the image's /etc/passwd is larger than 16 MiB (10240 MiB)\n"
