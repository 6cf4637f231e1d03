"""The customisation layer, declared: /bin/sh and /usr/bin/env links, contents priority, extra files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from isal import igzip

from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure


def layer_entries(layout: Path, digest: str) -> dict[str, tarfile.TarInfo]:
    blob = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(igzip.decompress(blob))) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_bin_sh_env_links_and_extra_files(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    extra = tmp_path / "static"
    (extra / "css").mkdir(parents=True)
    (extra / "css" / "site.css").write_text("body{}")
    out = tmp_path / "img"
    r = run_nixfly("build", tiny_closure.app, "--bin-sh", "--usr-bin-env", "--add", f"{extra}:/srv/static",
                   "-o", f"oci:{out}", "--cache-dir", str(tmp_path / "c"), "--json")  # fmt: skip
    assert r.code == 0, r.err
    s = json.loads(r.out)
    custom = layer_entries(out, s["layers"][-1]["digest"])
    assert custom["bin/sh"].issym() and custom["bin/sh"].linkname == f"{tiny_closure.bb}/bin/sh"
    assert custom["usr/bin/env"].linkname == f"{tiny_closure.bb}/bin/env"
    assert custom["srv/static/css/site.css"].isfile() and custom["srv/static/css/site.css"].size == 6
    assert custom["srv"].isdir() and custom["srv/static"].isdir()
    # The roots' contents links live in the root's own layer, not the customisation layer.
    root = layer_entries(out, s["layers"][-2]["digest"])
    assert root["bin/hello"].linkname == f"{tiny_closure.app}/bin/hello"
    assert "bin/hello" not in custom


def test_contents_priority_settles_a_conflict(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    other = tiny_closure.build(appVersion="other")["app"]
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(
        f'[image]\nroots = ["{tiny_closure.app}", "{other}"]\n[image.contents.priority]\n"hello-app-other" = 1\n'
    )
    out = tmp_path / "img"
    r = run_nixfly("build", "--config", str(cfg), "-o", f"oci:{out}", "--cache-dir", str(tmp_path / "c"), "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    links = {}
    for layer in s["layers"]:
        for name, m in layer_entries(out, layer["digest"]).items():
            if name == "bin/hello":
                links[tuple(layer["store_paths"])] = m.linkname
    assert list(links.values()) == [f"{other}/bin/hello"]
    # Both roots sit alone in the top store layers.
    assert [layer["store_paths"] for layer in s["layers"][-3:-1]] == [[tiny_closure.app], [other]]
