"""Images Nix already built: dockerTools-style docker-archives (plain, gzip, zstd, on stdin, from a pipe) and
a streamLayeredImage-style script (a real offline-Nix derivation) pushed to a real registry with the same
digest as the OCI layout they were made from; truncated and inconsistent archives; build refusing them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.errors import ImageError
from nixfly.sources import open_image
from nixfly.sources.archive import read_archive
from nixfly.transports import ArchiveLocation, LayoutLocation, image_file_kind, parse_location
from tests.support.cli import NIXFLY, run_nixfly
from tests.support.dockertools import STREAM_NIX, parts_from_layout
from tests.support.nixstore import TinyClosure, make_busybox_dir, nix_env
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Made:
    layout: Path  # oci layout (tag t) built by nixfly
    digest: str  # its manifest digest
    tar: Path  # skopeo copy oci:… docker-archive:…
    tgz: Path  # gzip of tar (what dockerTools.buildLayeredImage gives)
    tzst: Path  # zstd of tar
    parts: Path  # the archive's members laid out as streamLayeredImage writes them, plus "order"


@pytest.fixture(scope="module")
def made(tiny_closure: TinyClosure, tmp_path_factory: pytest.TempPathFactory) -> Made:
    d = tmp_path_factory.mktemp("nix-images")
    big = d / "blob.bin"
    big.write_bytes(random.Random(14).randbytes(300_000))  # a layer bigger than what is kept in memory
    layout = d / "layout"
    args = ["build", tiny_closure.app, "-o", f"oci:{layout}:t", "--cache-dir", str(d / "cache"), "-q",
            "--add", f"{big}:/data/blob.bin", "--perm", "/data=1000:1000:0750"]  # fmt: skip
    assert main(args) == 0
    digest = open_image(LayoutLocation(layout, "t")).manifest_digest()
    tar = d / "img.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:t", f"docker-archive:{tar}:testimg:x"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["gzip", "-k", "-n", str(tar)], check=True)
    subprocess.run(["zstd", "-q", "-k", str(tar)], check=True)
    return Made(layout, digest, tar, d / "img.tar.gz", d / "img.tar.zst", parts_from_layout(layout, d / "parts"))


def _stream_script(tiny_closure: TinyClosure, made: Made, fail: bool = False) -> str:
    bb = make_busybox_dir(tiny_closure.workdir)
    cmd = ["nix-build", str(STREAM_NIX), "--no-out-link", "--arg", "bbdir", str(bb), "--arg", "parts", str(made.parts)]
    if fail:
        cmd += ["--argstr", "fail", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=nix_env(), check=True)
    return proc.stdout.strip()


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _push(capsys: pytest.CaptureFixture[str], src: str, ref: str) -> dict[str, object]:
    assert main(["push", src, ref, "--json"]) == 0, capsys.readouterr().err
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def _skopeo_digest(ref: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True,
                         capture_output=True).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_archives_push_with_the_layout_digest_and_a_repush_uploads_nothing(
    made: Made, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    from_layout = _push(capsys, f"oci:{made.layout}:t", f"{host}/lay:v1")
    assert from_layout["digest"] == made.digest
    # The gzip'd archive (dockerTools.buildLayeredImage's shape), as a bare path: same digest, same bytes up.
    first = _push(capsys, str(made.tgz), f"{host}/tgz:v1")
    assert first["digest"] == made.digest
    assert first["uploaded_bytes"] == from_layout["uploaded_bytes"]
    assert _skopeo_digest(f"{host}/tgz:v1") == made.digest
    again = _push(capsys, str(made.tgz), f"{host}/tgz:v1")
    assert again["digest"] == made.digest
    assert (again["uploaded_blobs"], again["uploaded_bytes"]) == (0, 0)
    # zstd-compressed and plain archives, written docker-archive:FILE.
    assert _push(capsys, f"docker-archive:{made.tzst}", f"{host}/zst:v1")["digest"] == made.digest
    assert _push(capsys, f"docker-archive:{made.tar}:testimg:x", f"{host}/tar:v1")["digest"] == made.digest
    # skopeo reads the pushed image back and the layers are nixfly's gzip, not the archive's plain tars.
    cfg = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/tgz:v1"],
                         check=True, capture_output=True).stdout  # fmt: skip
    layers = json.loads(cfg)["layers"]
    assert all(lyr["mediaType"].endswith("tar+gzip") for lyr in layers)


def test_second_read_of_an_archive_only_hashes_it(made: Made, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    one = read_archive(ArchiveLocation(made.tgz), cache_dir=cache)
    blobs = sorted((cache / "blobs" / "sha256").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in blobs]
    two = read_archive(ArchiveLocation(made.tgz), cache_dir=cache)
    assert one.manifest_digest() == two.manifest_digest() == made.digest
    assert [p.stat().st_mtime_ns for p in sorted((cache / "blobs" / "sha256").iterdir())] == mtimes


def test_archive_on_stdin_and_from_a_fifo(made: Made, registry: RunningRegistry, tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg-sub")}
    for src, name in (("-", "stdin"), ("docker-archive:/dev/stdin", "devstdin")):
        with made.tgz.open("rb") as f:
            proc = subprocess.run(
                [*NIXFLY, "push", src,
                 f"{registry.host}/{name}:v1", "--json"],
                stdin=f, capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
            )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["digest"] == made.digest
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb") as w:
            w.write(made.tzst.read_bytes())

    t = threading.Thread(target=writer)
    t.start()
    img = read_archive(parse_location(str(fifo), bare_paths=True), cache_dir=tmp_path / "c")  # type: ignore[arg-type]
    t.join()
    assert img.manifest_digest() == made.digest


def test_stream_script_is_run_and_pushed_with_the_layout_digest(
    made: Made, tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    script = _stream_script(tiny_closure, made)
    result = tmp_path / "result"
    result.symlink_to(script)
    assert parse_location(str(result), bare_paths=True) == ArchiveLocation(result, None, run=True)
    out = _push(capsys, str(result), f"{registry.host}/stream:v1")
    assert out["digest"] == made.digest
    assert _skopeo_digest(f"{registry.host}/stream:v1") == made.digest
    # copy runs it too: the layout written has the digest of the one the parts came from
    assert main(["copy", str(result), f"oci:{tmp_path / 'copied'}:t"]) == 0
    capsys.readouterr()
    assert open_image(LayoutLocation(tmp_path / "copied", "t")).manifest_digest() == made.digest
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=t", str(tmp_path / "copied")],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    # build refuses to pack the script (or the tarball) as if it were a closure, and says what to run.
    r = run_nixfly("build", str(result), "-o", f"oci:{tmp_path / 'x'}", env=nix_env())
    assert r.code == 2
    assert r.err.count("\n") == 1 and f"nixfly push {result} REF" in r.err
    assert not (tmp_path / "x").exists()
    stored = subprocess.run(["nix-store", "--add", str(made.tgz)], capture_output=True, text=True, env=nix_env(),
                            check=True).stdout.strip()  # fmt: skip
    assert image_file_kind(stored) == "archive"
    r = run_nixfly("build", stored, "-o", f"oci:{tmp_path / 'x'}", env=nix_env())
    assert r.code == 2 and "is already an image" in r.err and f"nixfly push {stored} REF" in r.err
    # an ordinary store path (a dir) and an ordinary executable are not images
    assert image_file_kind(tiny_closure.app) is None
    assert image_file_kind(f"{tiny_closure.bb}/bin/busybox") is None


def test_a_failing_stream_script_is_one_line_naming_its_status(
    made: Made, tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path
) -> None:
    script = _stream_script(tiny_closure, made, fail=True)
    r = run_nixfly("push", script, f"{registry.host}/failing:v1", env={"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert r.code == 1
    assert r.err == f"nixfly: {script} (the image script) exited with status 3: stream: out of disk space\n"


@pytest.mark.parametrize("which", ["tar", "tgz", "tzst"])
def test_truncated_archives_are_one_line(made: Made, tmp_path: Path, which: str) -> None:
    src: Path = getattr(made, which)
    data = src.read_bytes()
    cut = tmp_path / f"cut-{src.name}"
    cut.write_bytes(data[: len(data) // 2])
    r = run_nixfly("inspect", str(cut), env={"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert r.code == 1
    assert r.err.startswith(f"nixfly: docker-archive:{cut}: ") and r.err.count("\n") == 1, r.err
    assert "truncated" in r.err and "Traceback" not in r.err


def _archive(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _layer_tar(content: bytes) -> bytes:
    return _archive([("hello.txt", content)])


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path) -> None:
    good, bad = _layer_tar(b"good" * 30000), _layer_tar(b"evil" * 30000)
    diff = "sha256:" + hashlib.sha256(good).hexdigest()
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff]}, "architecture": "amd64", "os": "linux"})
    cfg_b = cfg.encode()
    cfg_name = hashlib.sha256(cfg_b).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "Layers": ["l/layer.tar"]}]).encode()
    arc = tmp_path / "bad.tar"
    # manifest.json last, as streamLayeredImage writes it
    arc.write_bytes(_archive([("l/layer.tar", bad), (cfg_name, cfg_b), ("manifest.json", manifest)]))
    with pytest.raises(ImageError, match=r"hashes to sha256:.*but the config says"):
        read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c")
    # the good layer works; and a member named after a diff_id it does not hold is refused on reuse
    arc.write_bytes(_archive([("l/layer.tar", good), (cfg_name, cfg_b), ("manifest.json", manifest)]))
    assert read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c").layers[0].diff_id == diff
    liar = f"{diff[7:]}/layer.tar"
    manifest2 = json.dumps([{"Config": cfg_name, "Layers": [liar]}]).encode()
    arc.write_bytes(_archive([(liar, bad), (cfg_name, cfg_b), ("manifest.json", manifest2)]))
    with pytest.raises(ImageError, match=r"named after diff_id .* but holds other bytes"):
        read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c")
    # a config that does not hash to its name
    arc.write_bytes(_archive([("l/layer.tar", good), (cfg_name, cfg_b + b" "), ("manifest.json", manifest)]))
    with pytest.raises(ImageError, match="does not hash to the digest its name says"):
        read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c")
    # not an archive at all
    arc.write_bytes(b"hello, not a tar\n" * 100)
    with pytest.raises(ImageError, match="not a docker-archive"):
        read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c")


def test_a_path_where_a_location_is_expected_gets_a_suggestion(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", tiny_closure.app, "-o", "./out"]) == 2
    assert capsys.readouterr().err == (
        "nixfly: './out' is a path, not a registry reference: did you mean oci:./out (an OCI layout directory)"
        " or docker-archive:./out.tar?\n"
    )
    assert main(["build", tiny_closure.app, "-o", "./img.tar"]) == 2
    assert "did you mean docker-archive:./img.tar?" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing.tar.gz"), "127.0.0.1:1/x:y"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_past_the_memory_budget_members_go_through_the_cache(
    made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nixfly.sources import archive

    monkeypatch.setattr(archive, "SPOOL_BUDGET", 0)  # nothing kept in memory: manifest and config read back
    assert read_archive(ArchiveLocation(made.tgz), cache_dir=tmp_path / "c").manifest_digest() == made.digest


def test_push_on_a_terminal_shows_reading_progress(made: Made, registry: RunningRegistry, tmp_path: Path) -> None:
    import pty
    import select

    main_fd, sub_fd = pty.openpty()
    proc = subprocess.Popen([*NIXFLY, "push", str(made.tzst), f"{registry.host}/tty:v1"], stdin=subprocess.DEVNULL,
                            stdout=sub_fd, stderr=sub_fd,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "x"), "COLUMNS": "200"})  # fmt: skip
    os.close(sub_fd)
    seen = b""
    while select.select([main_fd], [], [], 60)[0]:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(main_fd)
    text = seen.decode(errors="replace")
    assert "reading archive" in text and f"{registry.host}/tty@{made.digest}" in text


def test_layers_reached_through_symlinks_and_hard_links(tmp_path: Path) -> None:
    """docker save points <id>/layer.tar at a shared tar with a symlink; other tools use hard links."""
    one, two = _layer_tar(b"one" * 40000), _layer_tar(b"two" * 10)
    diffs = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (one, two)]
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": diffs}, "architecture": "amd64", "os": "linux"})
    manifest = json.dumps([{"Config": "c.json", "Layers": ["a/layer.tar", "b/layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("blobs/one.tar", one), ("blobs/two.tar", two)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        sym = tarfile.TarInfo("a/layer.tar")
        sym.type, sym.linkname = tarfile.SYMTYPE, "../blobs/one.tar"
        hard = tarfile.TarInfo("b/layer.tar")
        hard.type, hard.linkname = tarfile.LNKTYPE, "blobs/two.tar"
        tf.addfile(sym)
        tf.addfile(hard)
        for name, data in (("c.json", cfg.encode()), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    arc = tmp_path / "links.tar"
    arc.write_bytes(buf.getvalue())
    img = read_archive(ArchiveLocation(arc), cache_dir=tmp_path / "c")
    assert [lyr.diff_id for lyr in img.layers] == diffs
    assert all(lyr.compression == "gzip" for lyr in img.layers)
