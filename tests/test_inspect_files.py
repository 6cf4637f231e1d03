"""A look inside, like dive: `nixfly inspect --files [--layer N] [PATH]` (modes, owners, sizes and the layer of
each entry, checked against the layer tars themselves), `--why STORE_PATH`, and suggestions for the
largest store paths (headers, docs, static libraries, a compiler) on real offline-Nix closures."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.errors import ImageError
from nixfly.image import BlobLayer, Image, canonical_json
from nixfly.inspect import inspect_image, list_files, suggest
from nixfly.sinks.layout import write_layout
from nixfly.sources import open_image
from nixfly.transports import LayoutLocation
from tests.support.nixstore import TinyClosure, make_busybox_dir, nix_env

pytestmark = pytest.mark.slow

FAT_NIX = Path(__file__).resolve().parent / "data" / "nix" / "fat-closure.nix"

TOML = """[image]
roots = ["{app}"]
[[image.users]]
name = "app"
uid = 1000
[[image.dirs]]
path = "/var/lib/app"
mode = "0700"
uid = 1000
gid = 1000
"""


@pytest.fixture(scope="module")
def image_dir(tiny_closure: TinyClosure, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("files")
    cfg = d / "nixfly.toml"
    cfg.write_text(TOML.format(app=tiny_closure.app))
    assert main(["build", "--config", str(cfg), "-o", f"oci:{d / 'img'}:t", "--cache-dir", str(d / "c"), "-q"]) == 0
    return d / "img"


def files_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["inspect", "--files", "--json", *args]) == 0
    out: list[dict[str, object]] = json.loads(capsys.readouterr().out)["files"]
    return out


def tar_members(layout: Path) -> list[dict[str, tarfile.TarInfo]]:
    """Each layer's entries read with Python's tarfile straight from the blobs (an independent reading)."""
    img = open_image(LayoutLocation(layout, "t"))
    out = []
    for lyr in img.layers:
        with lyr.compressed() as f, tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read()))) as tf:
            out.append({"/" + m.name.strip("/"): m for m in tf.getmembers()})
    return out


def test_file_listing_of_the_test_image(
    image_dir: Path, tiny_closure: TinyClosure, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {str(e["path"]): e for e in files_json(capsys, f"oci:{image_dir}:t")}
    layers = tar_members(image_dir)
    for path, e in files.items():  # every entry is where the layer tars say, with their mode/owner/size
        m = layers[int(str(e["layer"]))][path]
        assert (int(str(e["mode"]), 8), e["uid"], e["gid"]) == (m.mode & 0o7777, m.uid, m.gid), path
        assert e["size"] == (m.size if m.isreg() else 0)
        assert all(path not in later for later in layers[int(str(e["layer"])) + 1 :]), path
    assert (files["/tmp"]["type"], files["/tmp"]["mode"]) == ("dir", "1777")
    assert (files["/etc/passwd"]["type"], files["/etc/passwd"]["mode"]) == ("file", "0644")
    assert (files["/var/lib/app"]["uid"], files["/var/lib/app"]["gid"], files["/var/lib/app"]["mode"]) == (
        1000, 1000, "0700")  # fmt: skip
    assert files[f"{tiny_closure.app}/bin/hello"]["mode"] == "0555"
    assert files["/bin/hello"]["type"] == "symlink" and files["/bin/hello"]["target"] == f"{tiny_closure.app}/bin/hello"
    assert files["/etc/passwd"]["layer"] == len(layers) - 1  # the customisation layer is on top
    # human listing, like ls -l
    assert main(["inspect", "--files", f"oci:{image_dir}:t", "/tmp"]) == 0
    assert capsys.readouterr().out.split() == ["drwxrwxrwt", "0:0", "(root:root)", "0", f"L{len(layers)}", "/tmp"]
    assert main(["inspect", "--files", f"oci:{image_dir}:t", "/var/lib/app"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["drwx------", "1000:1000"]
    # PATH keeps what is under it; --layer N lists one layer's own entries
    etc = files_json(capsys, f"oci:{image_dir}:t", "/etc")
    assert {e["path"] for e in etc} >= {"/etc", "/etc/passwd", "/etc/group"}
    assert all(str(e["path"]).startswith("/etc") for e in etc)
    top = files_json(capsys, "--layer", str(len(layers)), f"oci:{image_dir}:t")
    assert {str(e["path"]) for e in top} == set(layers[-1])
    assert main(["inspect", "--files", "--layer", "99", f"oci:{image_dir}:t"]) == 2
    assert capsys.readouterr().err == f"nixfly: --layer 99: the image has {len(layers)} layers\n"
    assert main(["inspect", "--files", f"oci:{image_dir}:t", "/no/such"]) == 2
    assert capsys.readouterr().err == "nixfly: /no/such: no such path in the image\n"
    assert main(["inspect", f"oci:{image_dir}:t", "/etc"]) == 2
    assert "PATH and --layer go with --files" in capsys.readouterr().err


def _layer(entries: list[tuple[str, bytes | None]]) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    plain = buf.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def test_merged_view_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    lower = _layer([("a", None), ("a/keep", b"1"), ("a/gone", b"2"), ("o", None), ("o/old", b"3"), ("x", b"4")])
    upper = _layer([("a", None), ("a/.wh.gone", b""), ("o", None), ("o/.wh..wh..opq", b""), ("o/new", b"5"),
                    ("x", b"44")])  # fmt: skip
    layers = []
    for i, (blob, diff_id) in enumerate((lower, upper)):
        p = tmp_path / f"l{i}"
        p.write_bytes(blob)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        layers.append(BlobLayer(path=p, digest=digest, diff_id=diff_id, size=len(blob), compression="gzip"))
    cfg = canonical_json({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": [d for _, d in (lower, upper)]}})  # fmt: skip
    img = Image(cfg, tuple(layers))
    merged = {e.path: e for e in list_files(img)}
    assert set(merged) == {"/a", "/a/keep", "/o", "/o/new", "/x"}
    assert (merged["/x"].layer, merged["/x"].size, merged["/a/keep"].layer) == (1, 2, 0)
    own = [e.path for e in list_files(img, layer=1)]
    assert "/a/.wh.gone" in own and [e.type for e in list_files(img, layer=1) if e.path == "/a/.wh.gone"] == [
        "whiteout"]  # fmt: skip
    # a blob that does not match its digest is refused, not listed
    layers[0].path.write_bytes(upper[0])
    with pytest.raises(ImageError, match=r"^layer 1 \(sha256:.*(longer|hash)"):
        list_files(img)
    write_layout(Image(cfg, tuple(layers[1:])), LayoutLocation(tmp_path / "x"))  # sinks accept it


def test_why_names_the_chain_and_the_referring_files(
    image_dir: Path, tiny_closure: TinyClosure, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "--why", "libgreet-2.1", "--json", f"oci:{image_dir}:t"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["store_path"] == tiny_closure.lib
    assert r["chain"] == [tiny_closure.app, tiny_closure.tool, tiny_closure.lib]
    assert [f["path"] for f in r["files"]] == [f"{tiny_closure.tool}/bin/greet"]
    assert main(["inspect", "--why", tiny_closure.common, "--json", f"oci:{image_dir}:t"]) == 0
    paths = {f["path"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert paths == {f"{tiny_closure.app}/etc/common-path", f"{tiny_closure.lib}/share/doc/README"}
    assert main(["inspect", "--why", "greet-tool-0.3", f"oci:{image_dir}:t"]) == 0
    text = capsys.readouterr().out
    assert "pulled in by: hello-app-1 → greet-tool-0.3" in text and f"{tiny_closure.app}/bin/hello" in text
    assert main(["inspect", "--why", "openssl", f"oci:{image_dir}:t"]) == 2
    assert capsys.readouterr().err == "nixfly: --why openssl: no such store path in the image\n"


def test_suggestions_for_headers_docs_static_libs_and_a_compiler(
    tiny_closure: TinyClosure, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bb = make_busybox_dir(tiny_closure.workdir)
    attrs = ["app", "gcc", "zlibDev", "opensslMan", "staticLibs"]
    cmd = ["nix-build", str(FAT_NIX), "--no-out-link", "--arg", "bbdir", str(bb)]
    cmd += [x for a in attrs for x in ("-A", a)]
    built = subprocess.run(cmd, capture_output=True, text=True, env=nix_env(), check=True).stdout.split()
    outs = dict(zip(attrs, built, strict=True))
    layout = tmp_path / "fat"
    assert main(["build", outs["app"], "-o", f"oci:{layout}:t", "--cache-dir", str(tmp_path / "c"), "-q"]) == 0
    capsys.readouterr()
    tips = suggest(inspect_image(open_image(LayoutLocation(layout, "t"))))
    assert len(tips) == 4
    by = {t.split(" ", 1)[0]: t for t in tips}
    assert by["gcc-12.3.0"].startswith(
        "gcc-12.3.0 (300.0 KiB, pulled in through fat-app-1.0 → gcc-12.3.0) is a compiler"
    )
    assert by["zlib-1.3-dev"].endswith(
        "is mostly headers: consider `.out` instead of `.dev` for what needs it at run time"
    )
    assert "mostly documentation" in by["openssl-3.0.13-man"]
    assert "mostly static libraries" in by["libfoo-static-1.0"]
    assert main(["inspect", "--json", f"oci:{layout}:t"]) == 0
    assert json.loads(capsys.readouterr().out)["suggestions"] == list(tips)
    assert main(["inspect", f"oci:{layout}:t"]) == 0
    human = capsys.readouterr().out
    assert "suggestions:" in human and "consider `.out` instead of `.dev`" in human
    # the tiny closure has nothing worth advice (its paths are a few bytes, whatever they hold)
    assert suggest(inspect_image(open_image(LayoutLocation(image_dir, "t")))) == ()
