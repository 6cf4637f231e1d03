"""``nixfly run``: real images (Debian's static busybox as userland) run by the real runtimes on this
machine (runc, bwrap, unshare+chroot). Every assertion is on what the container printed, its exit code,
or the files left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nixfly.errors import RuntimeErrorNF
from nixfly.image import Image
from nixfly.run.runtimes import Probe, RuntimeName, select_runtime
from nixfly.sinks.archive import write_archive
from nixfly.sinks.layout import write_layout
from nixfly.transports import ArchiveLocation, LayoutLocation
from tests.test_unpack import Entry, busybox_entries, make_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes are exercised as root (as in CI)"),
]

RUNTIMES = ["runc", "bwrap", "chroot"]
SHOW = 'echo "user=$(id -u):$(id -g) groups=$(id -G) cwd=$(pwd) X=$X Y=$Y args=$*"'


def nixfly(*args: str, cache: Path, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixfly", "run", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def layout_of(img: Image, where: Path) -> Path:
    write_layout(img, LayoutLocation(where, "latest"))
    return where


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    # Shared by the module's tests: each image is unpacked once, as for a user running it again and again.
    return work / "cache"


@pytest.fixture(scope="module")
def show_image(work: Path) -> Image:
    """Entrypoint prints user, groups, cwd, two variables and its arguments; Cmd gives default arguments."""
    return make_image(
        work / "show-blobs",
        [busybox_entries()],
        {
            "Entrypoint": ["/bin/sh", "-c", SHOW, "entry"],
            "Cmd": ["default", "args"],
            "Env": ["PATH=/bin", "X=from-image"],
            "WorkingDir": "/srv/app",
            "User": "app",
        },
    )


@pytest.fixture(scope="module")
def show_layout(show_image: Image, work: Path) -> Path:
    return layout_of(show_image, work / "show-layout")


@pytest.fixture(scope="module")
def sh_layout(work: Path) -> Path:
    """Plain busybox with Cmd /bin/sh: arguments after -- are the whole command."""
    img = make_image(work / "sh-blobs", [busybox_entries()], {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
    return layout_of(img, work / "sh-layout")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_config_is_honoured(runtime: str, show_layout: Path, cache: Path) -> None:
    r = nixfly("--runtime", runtime, str(show_layout), cache=cache)
    assert r.returncode == 0, r.stderr
    groups = "2345" if runtime == "bwrap" else "2345 3456"  # bwrap cannot set supplementary groups
    assert r.stdout == f"user=1234:2345 groups={groups} cwd=/srv/app X=from-image Y= args=default args\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_env_user_workdir_and_args_from_the_command_line(runtime: str, show_layout: Path, cache: Path) -> None:
    r = nixfly(
        *("--runtime", runtime, "-e", "X=from-cli", "-e", "Y", "--user", "0:3456", "--workdir", "/tmp"),
        *(str(show_layout), "--", "one", "two words"),
        cache=cache,
        env={**os.environ, "Y": "from-host"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "user=0:3456 groups=3456 cwd=/tmp X=from-cli Y=from-host args=one two words\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exit_code_propagates(runtime: str, sh_layout: Path, cache: Path) -> None:
    r = nixfly("--runtime", runtime, str(sh_layout), "--", "sh", "-c", "echo out; echo err >&2; exit 42", cache=cache)
    assert (r.returncode, r.stdout, r.stderr) == (42, "out\n", "err\n")


def test_runs_from_a_docker_archive(show_image: Image, work: Path, cache: Path) -> None:
    archive = work / "show.tar"
    write_archive(show_image, ArchiveLocation(archive, "show:latest"))
    r = nixfly(str(archive), "--", "from-archive", cache=cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("args=from-archive\n")


def test_runs_from_the_local_registry(registry: Any, show_layout: Path, cache: Path) -> None:
    ref = f"{registry.host}/run/show:1"
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{show_layout}:latest", f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    r = nixfly("--no-tls-verify", ref, "--", "from-registry", cache=cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("args=from-registry\n")


def test_whiteouts_and_opaque_directories_are_honoured(work: Path, cache: Path) -> None:
    img = make_image(
        work / "wh-blobs",
        [
            busybox_entries(),
            [Entry("etc/doomed", data=b"x"), Entry("data/old", data=b"o"), Entry("data/sub/lower", data=b"l")],
            [Entry("etc/.wh.doomed"), Entry("data/.wh..wh..opq"), Entry("data/new", data=b"n")],
        ],
        {"Cmd": ["/bin/sh", "-c", "ls -R /data; test -e /etc/doomed && echo doomed-still-there; true"]},
    )
    r = nixfly(str(layout_of(img, work / "wh-layout")), cache=cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/data:\nnew\n"


@pytest.mark.parametrize(
    "evil",
    [
        [Entry("../../../../../../../tmp/nixfly-escaped", data=b"pwned")],
        [Entry("hop", "symlink", link="../../../../../../../../tmp"), Entry("hop/nixfly-escaped", data=b"pwned")],
    ],
    ids=["dotdot", "symlinked-parent"],
)
def test_malicious_layer_is_refused(evil: list[Entry], work: Path, tmp_path: Path) -> None:
    target = Path("/tmp/nixfly-escaped")
    target.unlink(missing_ok=True)
    img = make_image(tmp_path / "blobs", [busybox_entries(), evil], {"Cmd": ["/bin/true"]})
    cache = tmp_path / "cache"
    r = nixfly(str(layout_of(img, tmp_path / "layout")), cache=cache)
    assert r.returncode != 0
    assert r.stderr.startswith("nixfly: layer 2 of 2") and r.stderr.count("\n") == 1, r.stderr
    assert "refusing" in r.stderr or "outside the image root" in r.stderr
    assert not target.exists()
    assert [p.name for p in (cache / "rootfs").iterdir()] == []  # no partial tree kept


def test_missing_command_and_no_command_are_clear_errors(sh_layout: Path, work: Path, cache: Path) -> None:
    r = nixfly(str(sh_layout), "--", "no-such-tool", "--flag", cache=cache)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "nixfly: command 'no-such-tool' is not in the image (searched PATH=/bin)\n"
    r = nixfly(str(sh_layout), "--", "/usr/bin/missing", cache=cache)
    assert r.stderr == "nixfly: command '/usr/bin/missing' is not in the image (no file /usr/bin/missing)\n"
    bare = make_image(work / "bare-blobs", [busybox_entries()], {})
    r = nixfly(str(layout_of(bare, work / "bare-layout")), cache=cache)
    assert r.returncode == 1
    assert r.stderr.startswith("nixfly: the image has no command") and r.stderr.count("\n") == 1


def test_unusable_runtime_says_why(sh_layout: Path, cache: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    r = nixfly("--runtime", "runc", str(sh_layout), "--", "true", cache=cache, env=env)
    assert (r.returncode, r.stderr) == (1, "nixfly: runtime runc is not usable here: not found on PATH\n")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_and_everything_is_cleaned_up(
    runtime: str, sig: signal.Signals, sh_layout: Path, cache: Path
) -> None:
    script = f"trap 'echo got-{sig.name}; exit 42' {sig.name[3:]}; echo ready; while :; do sleep 0.1; done"
    p = _start(cache, runtime, sh_layout, script)
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        _reap(p)
    assert (p.returncode, out) == (42, f"got-{sig.name}\n"), err
    assert list((cache / "runs").iterdir()) == []
    if runtime == "runc":
        listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=True).stdout
        assert f"nixfly-{p.pid}-" not in listed


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_second_signal_kills_a_container_that_ignores_the_first(runtime: str, sh_layout: Path, cache: Path) -> None:
    p = _start(cache, runtime, sh_layout, "trap '' TERM; echo ready; while :; do sleep 0.1; done")
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # ignored, as the container asked
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    finally:
        _reap(p)
    assert p.returncode == 128 + signal.SIGKILL
    assert list((cache / "runs").iterdir()) == []


def _start(cache: Path, runtime: str, layout: Path, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nixfly",
            "run",
            "--cache-dir",
            str(cache),
            "--runtime",
            runtime,
            str(layout),
            "--",
            "sh",
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _reap(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_container_writes_never_reach_the_cached_rootfs(runtime: str, sh_layout: Path, cache: Path) -> None:
    wreck = "echo new > /bin/added && rm /etc/passwd && echo changed > /etc/group && cat /bin/added"
    r = nixfly("--runtime", runtime, str(sh_layout), "--", "sh", "-c", wreck, cache=cache)
    assert (r.returncode, r.stdout) == (0, "new\n"), r.stderr
    again = nixfly(
        "--runtime", runtime, str(sh_layout), "--", "sh", "-c", "ls /bin/added; head -1 /etc/passwd", cache=cache
    )
    assert again.stdout == "root:x:0:0:root:/root:/bin/sh\n"
    assert "No such file" in again.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_volumes_are_mounted_read_write_and_read_only(runtime: str, sh_layout: Path, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "input").write_text("hello volume\n")
    script = "cat /in/input; echo written > /out/result; echo x > /in/nope 2>/dev/null || echo ro-refused"
    r = nixfly(
        *("--runtime", runtime, "-v", f"{ro}:/in:ro", "--volume", f"{rw}:/out", str(sh_layout)),
        *("--", "sh", "-c", script),
        cache=tmp_path / "cache",
    )
    assert (r.returncode, r.stdout) == (0, "hello volume\nro-refused\n"), r.stderr
    assert (rw / "result").read_text() == "written\n"
    assert not (ro / "nope").exists()


def test_no_usable_runtime_names_each_one_tried_and_why() -> None:
    # Making every runtime fail for real would need another machine; the probes' answers are what matter.
    def broken(name: RuntimeName) -> Probe:
        return Probe(name, None, f"{name} is broken")

    with pytest.raises(RuntimeErrorNF) as ei:
        select_runtime("auto", probes=broken)
    assert str(ei.value) == (
        "no usable container runtime (runc: runc is broken; bwrap: bwrap is broken; chroot: chroot is broken); "
        "install runc or bubblewrap"
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_relative_cache_dir_works(runtime: str, sh_layout: Path, tmp_path: Path) -> None:
    # runc resolves a relative rootfs against its bundle ("invalid rootfs"): nixfly makes the path absolute.
    r = subprocess.run(
        [sys.executable, "-m", "nixfly", "run", "--runtime", runtime, "--cache-dir", "rel-cache", str(sh_layout),
         "--", "sh", "-c", "echo ran"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    assert [p.name for p in (tmp_path / "rel-cache" / "rootfs").iterdir()] != []


def test_entrypoint_replaces_the_images_and_drops_its_cmd(sh_layout: Path, cache: Path) -> None:
    r = nixfly("--runtime", "chroot", "--entrypoint", '["/bin/echo", "from-entrypoint"]', str(sh_layout), "--", "x",
               cache=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from-entrypoint x\n"


def test_publish_is_checked_against_the_shared_network(sh_layout: Path, cache: Path) -> None:
    ok = nixfly("--runtime", "chroot", "-p", "8080", "-p", "127.0.0.1:8080:8080/tcp", str(sh_layout), "--",
                "sh", "-c", "echo ran", cache=cache)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == "ran\n", ok.stderr
    bad = nixfly("-p", "9090:8080", str(sh_layout), "--", "sh", "-c", "echo ran", cache=cache)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "shares this machine's network" in bad.stderr


def test_platform_other_than_the_images_is_refused(sh_layout: Path, cache: Path) -> None:
    # A single-platform image has nothing else to offer: it must not run as if it were the one asked for.
    r = nixfly("--platform", "linux/arm64", str(sh_layout), "--", "sh", "-c", "echo ran", cache=cache)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith("nixfly: the image is for linux/amd64, not linux/arm64 (--platform)")
    assert r.stderr.count("\n") == 1
    ok = nixfly("--platform", "linux/amd64", str(sh_layout), "--", "sh", "-c", "echo ran", cache=cache)
    assert (ok.returncode, ok.stdout) == (0, "ran\n"), ok.stderr


def _push(layout: Path, ref: str, digest_file: Path | None = None) -> None:
    extra = ["--digestfile", str(digest_file)] if digest_file else []
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", *extra, f"oci:{layout}:latest", f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_explicit_tls_verify_true_never_falls_back_to_plain_http(registry: Any, sh_layout: Path, cache: Path) -> None:
    ref = f"{registry.host}/run/tls:1"
    _push(sh_layout, ref)
    implicit = nixfly(ref, "--", "sh", "-c", "echo ran", cache=cache)  # loopback: plain HTTP as a fallback
    assert (implicit.returncode, implicit.stdout) == (0, "ran\n"), implicit.stderr
    explicit = nixfly("--tls-verify=true", ref, "--", "sh", "-c", "echo ran", cache=cache)
    assert (explicit.returncode, explicit.stdout) == (1, "")
    assert explicit.stderr.startswith(f"nixfly: registry {registry.host}: cannot reach https://{registry.host}/v2/")
    assert explicit.stderr.count("\n") == 1


def test_a_digest_pinned_image_runs_again_without_its_registry(sh_layout: Path, tmp_path: Path) -> None:
    from tests.support.registry import start_registry

    cache = tmp_path / "cache"
    with start_registry(tmp_path / "registry") as reg:
        _push(sh_layout, f"{reg.host}/run/pinned:1", tmp_path / "digest")
        pinned = f"{reg.host}/run/pinned@{(tmp_path / 'digest').read_text().strip()}"
        first = nixfly(pinned, "--", "sh", "-c", "echo ran", cache=cache)
        assert (first.returncode, first.stdout) == (0, "ran\n"), first.stderr
    again = nixfly(pinned, "--", "sh", "-c", "echo ran again", cache=cache)
    assert (again.returncode, again.stdout, again.stderr) == (0, "ran again\n", "")
    wrong = nixfly("--platform", "linux/arm64", pinned, "--", "true", cache=cache)
    assert wrong.returncode == 1 and wrong.stderr.startswith("nixfly: the image is for linux/amd64, not linux/arm64")
    # A tag can move: it is always asked of the registry (which is gone now).
    tagged = nixfly(f"{reg.host}/run/pinned:1", "--", "true", cache=cache)
    assert tagged.returncode == 1 and tagged.stderr.startswith(f"nixfly: registry {reg.host}: cannot reach")


def test_an_index_pinned_by_digest_runs_again_without_its_registry(work: Path, tmp_path: Path) -> None:
    import json

    from nixfly.image.index import ImageIndex, PlatformImage
    from nixfly.registry.options import RegistryOptions
    from nixfly.sinks.registry import push_index
    from tests.support.registry import start_registry

    amd = make_image(work / "idx-blobs", [busybox_entries()], {"Cmd": ["/bin/echo", "amd64"]})
    arm_cfg = json.loads(amd.config_bytes) | {"architecture": "arm64"}
    arm = Image(json.dumps(arm_cfg).encode(), amd.layers)
    index = ImageIndex((PlatformImage("linux/amd64", amd), PlatformImage("linux/arm64", arm)))
    cache = tmp_path / "cache"
    with start_registry(tmp_path / "registry") as reg:
        digest = push_index(index, [f"{reg.host}/run/multi:1"], options=RegistryOptions(plain_http=True)).digest
        pinned = f"{reg.host}/run/multi@{digest}"
        first = nixfly(pinned, cache=cache)
        assert (first.returncode, first.stdout) == (0, "amd64\n"), first.stderr
    again = nixfly("--platform", "linux/amd64", pinned, cache=cache)
    assert (again.returncode, again.stdout, again.stderr) == (0, "amd64\n", "")
    # The arm64 entry was never fetched here: that one still needs the registry.
    other = nixfly("--platform", "linux/arm64", pinned, cache=cache)
    assert other.returncode == 1 and other.stderr.startswith(f"nixfly: registry {reg.host}: cannot reach")
