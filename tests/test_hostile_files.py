"""Hostile files where nixfly expects a document (issue 25 items 12, 13): a 10,000-deep nesting, a FIFO,
``/dev/zero`` and bytes that are not UTF-8, given as nixfly.toml, fly.toml, a closure file, a layout's
index.json, a manifest, an index or config blob, a docker-archive's manifest.json or config. Each is one
line and a deliberate exit code (never 70, the internal error), within a time and memory bound: no
RecursionError, no read of an endless file, no open of a FIFO that waits for a writer for ever."""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nixfly.sinks.layout import write_layout
from nixfly.transports import LayoutLocation
from tests.support.cli import NIXFLY
from tests.support.registry_images import make_image

pytestmark = pytest.mark.slow

DEEP = "[" * 10_000 + "]" * 10_000
TIMEOUT = 60.0
MAX_RSS_MIB = 400  # nixfly with the HTTP and image libraries loaded is ~100 MiB
PINNED = "127.0.0.1:1/r@sha256:" + "0" * 64


def run_bounded(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run ``nixfly ARGV`` with a timeout and an address-space cap (an endless read fails fast instead of
    eating the machine); returns exit code, stderr and peak RSS in MiB."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / ".cache"), "XDG_STATE_HOME": str(cwd / ".state")}
    err_path = cwd / ".stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    with open(err_path, "wb") as err, open(os.devnull, "wb") as out:
        import subprocess

        proc = subprocess.Popen([*NIXFLY, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=limit)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise AssertionError(f"nixfly {argv!r} did not finish within {TIMEOUT:.0f}s (a FIFO or endless file?)")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return proc.returncode, err_path.read_text(errors="replace"), usage.ru_maxrss / 1024


# -- the hostile inputs ----------------------------------------------------------------------------


def _layout(d: Path) -> Path:
    root = d / "layout"
    write_layout(make_image(d / "img", busybox=False), LayoutLocation(root, "t"))
    return root


def _put(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest


def _top(root: Path) -> tuple[dict, dict]:  # type: ignore[type-arg]
    index = json.loads((root / "index.json").read_bytes())
    return index, next(m for m in index["manifests"] if "subject" not in m)


def _replace(p: Path, how: str) -> None:
    """Make ``p`` a FIFO, a link to /dev/zero, deep JSON, a (sparse) 10 GB file, or bytes that are not UTF-8."""
    p.unlink()
    if how == "fifo":
        os.mkfifo(p)
    elif how == "zero":
        p.symlink_to("/dev/zero")
    elif how == "deep":
        p.write_text(DEEP)
    elif how == "huge":
        with open(p, "wb") as f:
            f.truncate(10 << 30)  # sparse: 10 GiB that an unbounded read would try to hold in memory
    else:
        p.write_bytes(b'{"schemaVersion": 2, "manifests": [], "x": "\xff\xfe"}')


def _point_top_at(root: Path, data: bytes, media_type: str | None = None) -> None:
    index, top = _top(root)
    top["digest"], top["size"] = _put(root, data), len(data)
    if media_type:
        top["mediaType"] = media_type
    (root / "index.json").write_text(json.dumps(index))


def _config(root: Path, how: str) -> None:
    _, top = _top(root)
    manifest = json.loads((root / "blobs" / "sha256" / top["digest"].split(":")[1]).read_bytes())
    if how == "deep":
        data = ('{"x": ' + DEEP + "}").encode()
        manifest["config"]["digest"], manifest["config"]["size"] = _put(root, data), len(data)
        _point_top_at(root, json.dumps(manifest).encode())
    else:
        _replace(root / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1], how)


def _archive(d: Path, manifest: bytes, config: bytes) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("manifest.json", manifest), ("c.json", config)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (d / "a.tar").write_bytes(buf.getvalue())
    return d / "a.tar"


Case = Callable[[Path], tuple[list[str], str]]


def _layout_case(change: Callable[[Path], None], command: str, expect: str) -> Case:
    def make(d: Path) -> tuple[list[str], str]:
        root = _layout(d)
        change(root)
        argv = {
            "inspect": ["inspect", f"oci:{root}:t"],
            "copy": ["copy", f"oci:{root}:t", f"oci:{d / 'out'}"],
            "push": ["push", f"oci:{root}:t", "127.0.0.1:1/r:t"],
            "run": ["run", f"oci:{root}:t", "true"],
        }[command]
        return argv, expect

    return make


def _spec_case(content: str | bytes | None, expect: str, how: str | None = None) -> Case:
    def make(d: Path) -> tuple[list[str], str]:
        p = d / "nixfly.toml"
        if how == "fifo":
            os.mkfifo(p)
        elif how == "zero":
            p.symlink_to("/dev/zero")
        else:
            p.write_bytes(content.encode() if isinstance(content, str) else content or b"")
        return ["build", "--config", str(p), "-o", f"oci:{d / 'out'}"], expect

    return make


def _closure_case(how: str, expect: str) -> Case:
    def make(d: Path) -> tuple[list[str], str]:
        root = (d / "store-path").read_text()  # a real root: the closure file is what is read
        p = d / "closure.json"
        p.write_text("[]")
        _replace(p, how)
        return ["build", root, "--closure-file", str(p), "-o", f"oci:{d / 'out'}"], expect

    return make


def _deploy_argv(d: Path) -> list[str]:
    return ["deploy", "--config", str(d / "fly.toml"), "--image", PINNED, "--dry-run", "--access-token", "x"]


def _fly_case(content: bytes, expect: str) -> Case:
    def make(d: Path) -> tuple[list[str], str]:
        (d / "fly.toml").write_bytes(content)
        return _deploy_argv(d), expect

    return make


def _fly_toml_over(how: str, command: str = "init") -> Case:
    """fly.toml itself a FIFO nobody writes to, or /dev/zero, read by ``init --force`` or ``deploy``."""

    def make(d: Path) -> tuple[list[str], str]:
        (d / "fly.toml").touch()
        _replace(d / "fly.toml", how)
        argv = _deploy_argv(d) if command == "deploy" else ["init", "--app", "a", "--force"]
        return argv, "fly.toml is not a regular file"

    return make


def _fly_local_file(how: str) -> Case:
    """A ``[[files]] local_path`` that is a FIFO without a writer, /dev/zero, or a (sparse) 10 GB file."""

    def make(d: Path) -> tuple[list[str], str]:
        target = d / "conf" / "motd"
        target.parent.mkdir()
        target.touch()
        _replace(target, how)
        argv, _ = _fly_case(b'app = "a"\n[[files]]\nguest_path = "/etc/motd"\nlocal_path = "conf/motd"\n', "")(d)
        expect = {"fifo": "is not a regular file (a FIFO)", "zero": "is not a regular file (a character device)",
                  "huge": "is larger than 4 MiB (10240 MiB)"}[how]  # fmt: skip
        return argv, f"fly.toml:4: files[0].local_path: '{target}' {expect}"

    return make


def _nested_index(root: Path) -> None:
    _point_top_at(root, ('{"schemaVersion": 2, "manifests": ' + DEEP + "}").encode(),
                  "application/vnd.oci.image.index.v1+json")  # fmt: skip


def _archive_case(which: str) -> Case:
    def make(d: Path) -> tuple[list[str], str]:
        ok_manifest = json.dumps([{"Config": "c.json", "RepoTags": ["a:b"], "Layers": []}]).encode()
        deep = ('{"x": ' + DEEP + "}").encode()
        path = _archive(d, DEEP.encode() if which == "manifest" else ok_manifest, deep)
        return ["inspect", f"docker-archive:{path}"], "nested more than 64 levels deep"

    return make


NESTED = "nested more than 64 levels deep"
CASES: dict[str, Case] = {
    "nixfly.toml-deep-array": _spec_case(f"[image]\nroots = {DEEP}\n", NESTED),
    "nixfly.toml-deep-inline-tables": _spec_case("[image]\nx = " + "{a=" * 5000 + "1" + "}" * 5000, NESTED),
    "nixfly.toml-fifo": _spec_case(None, "is not a regular file (a FIFO)", "fifo"),
    "nixfly.toml-dev-zero": _spec_case(None, "is not a regular file (a character device)", "zero"),
    "nixfly.toml-latin1": _spec_case(b'[image]\nroots = ["caf\xe9"]\n', "not UTF-8 text (byte 0xe9 at line 2"),
    "nixfly.toml-integer-mode": _spec_case('[image]\nroots = ["x"]\n[[image.dirs]]\npath = "/d"\nmode = 750\n',
                                           'image.dirs.0.mode: must be a quoted octal string: write "0750"'),
    "fly.toml-deep": _fly_case(f'app = "a"\nx = {DEEP}\n'.encode(), NESTED),
    "fly.toml-latin1": _fly_case(b'app = "caf\xe9"\n', "fly.toml"),
    "fly.toml-dev-zero-init": _fly_toml_over("zero"),  # init --force updates the fly.toml it reads
    "fly.toml-fifo-init": _fly_toml_over("fifo"),
    "fly.toml-fifo-deploy": _fly_toml_over("fifo", "deploy"),
    "fly.toml-dev-zero-deploy": _fly_toml_over("zero", "deploy"),
    "fly.toml-files-fifo": _fly_local_file("fifo"),
    "fly.toml-files-dev-zero": _fly_local_file("zero"),
    "fly.toml-files-10g": _fly_local_file("huge"),
    "fly.toml-kill-timeout-overflow": _fly_case(b'app = "a"\nkill_timeout = 1e20\n',
                                                "fly.toml:2: kill_timeout: 1e+20 is too long a duration"),
    "fly.toml-check-interval-overflow": _fly_case(
        b'app = "a"\n[checks.x]\nport = 80\ntype = "tcp"\ninterval = "9999999999999999h"\n',
        "checks.x.interval: '9999999999999999h' is too long a duration"),
    "closure-deep": _closure_case("deep", NESTED),
    "closure-fifo": _closure_case("fifo", "is not a regular file (a FIFO)"),
    "closure-dev-zero": _closure_case("zero", "is not a regular file (a character device)"),
    "closure-latin1": _closure_case("latin1", "not UTF-8 text (byte 0xff at line 1"),
    "index.json-deep": _layout_case(lambda r: _replace(r / "index.json", "deep"), "inspect", NESTED),
    "index.json-fifo-inspect": _layout_case(lambda r: _replace(r / "index.json", "fifo"), "inspect", "(a FIFO)"),
    "index.json-fifo-push": _layout_case(lambda r: _replace(r / "index.json", "fifo"), "push", "(a FIFO)"),
    "index.json-fifo-run": _layout_case(lambda r: _replace(r / "index.json", "fifo"), "run", "(a FIFO)"),
    "index.json-dev-zero": _layout_case(lambda r: _replace(r / "index.json", "zero"), "copy", "character device"),
    "index.json-latin1": _layout_case(lambda r: _replace(r / "index.json", "latin1"), "inspect", "not valid JSON"),
    "manifest-deep": _layout_case(lambda r: _point_top_at(r, DEEP.encode()), "copy", "manifest is " + NESTED),
    "index-blob-deep": _layout_case(_nested_index, "inspect", NESTED),
    "config-deep": _layout_case(lambda r: _config(r, "deep"), "inspect", NESTED),
    "config-fifo-inspect": _layout_case(lambda r: _config(r, "fifo"), "inspect", "is not a regular file (a FIFO)"),
    "config-fifo-push": _layout_case(lambda r: _config(r, "fifo"), "push", "is not a regular file (a FIFO)"),
    "config-fifo-run": _layout_case(lambda r: _config(r, "fifo"), "run", "is not a regular file (a FIFO)"),
    "config-dev-zero": _layout_case(lambda r: _config(r, "zero"), "copy", "(a character device)"),
    "archive-manifest-deep": _archive_case("manifest"),
    "archive-config-deep": _archive_case("config"),
    # /dev/zero reads as an empty tar archive followed by zeros for ever (a FIFO, though, is a way to stream one)
    "archive-dev-zero": lambda d: (["inspect", "docker-archive:/dev/zero"], "not a docker-archive"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_is_one_line_and_a_deliberate_exit(
    case: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if case.startswith("closure-"):
        (tmp_path / "store-path").write_text(request.getfixturevalue("tiny_closure").app)
    argv, expect = CASES[case](tmp_path)
    if argv[0] == "run" and (os.geteuid() != 0 or not shutil.which("runc")):
        pytest.skip("nixfly run needs root and runc here")
    code, err, rss = run_bounded(argv, tmp_path)
    lines = err.strip().splitlines()
    assert code in (1, 2, 125), f"exit {code}: {err}"  # 125: run's own failure before the container starts
    assert len(lines) == 1 and lines[0].startswith("nixfly: ") and "internal error" not in err, err
    assert expect in lines[0], lines[0]
    assert rss < MAX_RSS_MIB, f"peak RSS {rss:.0f} MiB"
