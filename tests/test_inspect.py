"""nixfly inspect: layers, sizes and the largest store paths with the reference chain that pulls each in,
on images built from a real offline-Nix closure (layout, docker-archive, zstd, a real registry)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import nixfly.inspect.report
from nixfly.cli import main
from nixfly.inspect import inspect_image, reference_chains, store_name
from nixfly.sources import open_image
from nixfly.transports import LayoutLocation
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tiny_closure: TinyClosure, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One gzip OCI layout (tag t) and one docker-archive of the same closure, sharing a layer cache."""
    d = tmp_path_factory.mktemp("inspect")
    cache = str(d / "cache")
    assert main(["build", tiny_closure.app, "-o", f"oci:{d / 'layout'}:t", "--cache-dir", cache, "-q"]) == 0
    assert main(["build", tiny_closure.app, "-o", f"docker-archive:{d / 'img.tar'}", "--cache-dir", cache, "-q"]) == 0
    return d


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["inspect", *args, "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    out: dict[str, Any] = json.loads(cap.out)
    return out


def layout_manifest(layout: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    idx = json.loads((layout / "index.json").read_text())
    digest = idx["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return manifest, config, digest


def disk_bytes(store_path: str) -> tuple[int, int]:
    """(bytes, count) of the regular files under a store path, from the file system."""
    total = count = 0
    for root, _dirs, files in os.walk(store_path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if not os.path.islink(os.path.join(root, f)):
                total += st.st_size
                count += 1
    return total, count


def nix_references(path_info: Path) -> dict[str, set[str]]:
    """What real Nix recorded as each path's references (self-references left out)."""
    out: dict[str, set[str]] = {}
    for e in json.loads(path_info.read_text()):
        out[e["path"]] = {r for r in e.get("references", []) if r != e["path"]}
    return out


def test_layers_match_the_manifest_and_config(
    built: Path, tiny_closure: TinyClosure, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, config, digest = layout_manifest(built / "layout")
    r = inspect_json(capsys, f"oci:{built / 'layout'}:t")
    assert r["digest"] == digest
    assert r["media_type"] == manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert r["config_digest"] == manifest["config"]["digest"]
    assert r["platform"] == f"{config['os']}/{config['architecture']}"
    assert r["created"] == config["created"]
    assert r["env"] == config["config"]["Env"]
    assert [(x["digest"], x["size"]) for x in r["layers"]] == [(d["digest"], d["size"]) for d in manifest["layers"]]
    assert [x["diff_id"] for x in r["layers"]] == config["rootfs"]["diff_ids"]
    assert [x["comment"] for x in r["layers"]] == [h["comment"] for h in config["history"]]
    assert [x["compression"] for x in r["layers"]] == ["gzip"] * len(manifest["layers"])
    # Uncompressed sizes are the real tar stream lengths (the sha256 of which is the diff_id).
    for x in r["layers"]:
        blob = built / "layout" / "blobs" / "sha256" / x["digest"].split(":")[1]
        assert x["uncompressed_size"] == len(gzip.decompress(blob.read_bytes()))
    # Each store path of the closure sits in exactly the layer the build put it in.
    per_layer = [x["store_paths"] for x in r["layers"]]
    assert [tiny_closure.app] in per_layer and [tiny_closure.bb] in per_layer
    assert per_layer[-1] == []  # the customisation layer holds no store path
    assert sorted(p for ps in per_layer for p in ps) == sorted(nix_references(tiny_closure.path_info))
    assert r["totals"] == {
        "layers": len(manifest["layers"]),
        "size": sum(d["size"] for d in manifest["layers"]),
        "uncompressed_size": sum(x["uncompressed_size"] for x in r["layers"]),
        "store_paths": 6,
    }


def test_largest_store_paths_sizes_and_chains(
    built: Path, tiny_closure: TinyClosure, capsys: pytest.CaptureFixture[str]
) -> None:
    r = inspect_json(capsys, f"oci:{built / 'layout'}:t", "--top", "6")
    largest = {p["path"]: p for p in r["largest"]}
    assert len(largest) == 6
    first = r["largest"][0]
    assert first["path"] == tiny_closure.bb and first["name"] == "busybox-static"
    assert (first["size"], first["files"]) == disk_bytes(tiny_closure.bb)
    for p in r["largest"]:
        assert (p["size"], p["files"]) == disk_bytes(p["path"]), p["name"]
    sizes = [p["size"] for p in r["largest"]]
    assert sizes == sorted(sizes, reverse=True)
    # The references recovered by scanning the image are exactly those Nix recorded when it built them.
    nix_refs = nix_references(tiny_closure.path_info)
    assert {p: set(v["references"]) for p, v in largest.items()} == nix_refs
    assert r["top_level"] == [tiny_closure.app]
    chains = {store_name(p): [store_name(c) for c in v["chain"]] for p, v in largest.items()}
    assert chains["libgreet-2.1"] == ["hello-app-1", "greet-tool-0.3", "libgreet-2.1"]
    assert chains["busybox-static"] == ["hello-app-1", "busybox-static"]
    assert chains["hello-app-1"] == ["hello-app-1"]

    assert len(inspect_json(capsys, f"oci:{built / 'layout'}:t", "--top", "2")["largest"]) == 2


def test_human_output_lists_layers_and_chains(built: Path, tiny_closure: TinyClosure) -> None:
    res = run_nixfly("inspect", str(built / "layout"))  # a bare directory is a layout
    assert res.code == 0, res.err
    out = res.out
    manifest, _, digest = layout_manifest(built / "layout")
    assert digest in out and "linux/amd64" in out
    for d in manifest["layers"]:
        assert d["digest"].split(":")[1][:12] in out
    lines = out.splitlines()
    head = lines.index("largest store paths (6 of 6):")
    assert "busybox-static" in lines[head + 1]  # the largest first
    lib_line = next(line for line in lines[head:] if " libgreet-2.1 " in line)
    assert lib_line.rstrip().endswith("hello-app-1 → greet-tool-0.3 → libgreet-2.1")
    assert lib_line.split()[:2] == ["110", "B"]  # 18 + 74 + 5 bytes of files, as on disk
    assert disk_bytes(tiny_closure.lib)[0] == 110


def test_docker_archive_gives_the_same_layers(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay = inspect_json(capsys, f"oci:{built / 'layout'}:t")
    arc = inspect_json(capsys, f"docker-archive:{built / 'img.tar'}")
    assert [x["diff_id"] for x in arc["layers"]] == [x["diff_id"] for x in lay["layers"]]
    assert [x["uncompressed_size"] for x in arc["layers"]] == [x["uncompressed_size"] for x in lay["layers"]]
    assert arc["largest"] == lay["largest"]
    bare = inspect_json(capsys, str(built / "img.tar"))  # a bare file is an archive
    assert [x["diff_id"] for x in bare["layers"]] == [x["diff_id"] for x in lay["layers"]]


def test_json_keys_and_no_scan(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = inspect_json(capsys, f"oci:{built / 'layout'}:t")
    assert set(r) == {
        "location", "digest", "media_type", "config_digest", "platform", "created", "entrypoint", "cmd", "env",
        "working_dir", "user", "exposed_ports", "scanned", "layers", "totals", "top_level", "largest", "suggestions",
        "referrers",
    }  # fmt: skip
    assert r["location"] == f"oci:{built / 'layout'}:t" and r["scanned"] is True
    assert set(r["layers"][0]) == {
        "index", "digest", "diff_id", "size", "compression", "comment", "created_by", "uncompressed_size", "files",
        "store_paths",
    }  # fmt: skip
    assert set(r["largest"][0]) == {"path", "name", "size", "files", "layers", "references", "chain"}

    quick = inspect_json(capsys, f"oci:{built / 'layout'}:t", "--no-scan")
    assert quick["scanned"] is False and quick["largest"] == [] and quick["top_level"] == []
    assert [x["digest"] for x in quick["layers"]] == [x["digest"] for x in r["layers"]]
    assert all(x["uncompressed_size"] is None and x["store_paths"] == [] for x in quick["layers"])
    assert quick["totals"]["uncompressed_size"] is None


def test_no_scan_reads_no_layer_blob(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "layout"
    shutil.copytree(built / "layout", copy)
    manifest, _, _ = layout_manifest(copy)
    for d in manifest["layers"]:  # unreadable blobs of the right size: only a read would notice
        blob = copy / "blobs" / "sha256" / d["digest"].split(":")[1]
        blob.chmod(0o644)
        blob.write_bytes(b"\0" * d["size"])
    assert inspect_json(capsys, f"oci:{copy}:t", "--no-scan")["digest"] == layout_manifest(built / "layout")[2]
    code = main(["inspect", f"oci:{copy}:t"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("nixfly: layer 1 (") and err.count("\n") == 1


def test_corrupt_layer_is_one_line_error(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "layout"
    shutil.copytree(built / "layout", copy)
    manifest, _, _ = layout_manifest(copy)
    d = manifest["layers"][1]  # busybox: flip one byte in the middle, size unchanged
    blob = copy / "blobs" / "sha256" / d["digest"].split(":")[1]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    res = run_nixfly("inspect", f"oci:{copy}:t")
    assert res.code == 1 and res.out == ""
    assert res.err.startswith(f"nixfly: layer 2 ({d['digest']})") and res.err.count("\n") == 1
    assert "Traceback" not in res.err


def test_missing_locations_are_one_line_errors(tmp_path: Path) -> None:
    res = run_nixfly("inspect", f"oci:{tmp_path / 'nope'}")
    assert res.code != 0 and res.out == ""
    assert res.err == f"nixfly: {tmp_path / 'nope'} is not an OCI layout (no index.json)\n"
    res = run_nixfly("inspect", str(tmp_path / "nope"))
    assert res.code == 2 and res.err.startswith(f"nixfly: {tmp_path / 'nope'}: no such file or directory")
    res = run_nixfly("inspect", f"docker-archive:{tmp_path / 'nope.tar'}")
    assert res.code != 0 and res.err.startswith("nixfly: ") and res.err.count("\n") == 1


def test_zstd_image_reads_the_same(
    tiny_closure: TinyClosure, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "z"
    args = ["build", tiny_closure.app, "-o", f"oci:{out}", "--compression", "zstd", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "-q"]) == 0
    z = inspect_json(capsys, f"oci:{out}")
    g = inspect_json(capsys, f"oci:{built / 'layout'}:t")
    assert {x["compression"] for x in z["layers"]} == {"zstd"}
    assert [x["diff_id"] for x in z["layers"]] == [x["diff_id"] for x in g["layers"]]
    assert z["largest"] == g["largest"]


def test_references_split_across_reads_are_found(
    built: Path, tiny_closure: TinyClosure, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 7-byte reads every "/nix/store/<hash>-" (44 bytes) straddles several reads.
    monkeypatch.setattr(nixfly.inspect.report, "_CHUNK", 7)
    img = open_image(LayoutLocation(built / "layout", "t"))
    small = {p.path: set(p.references) for p in inspect_image(img, top=100).largest}
    assert small == nix_references(tiny_closure.path_info)


def test_chains_prefer_short_then_by_name() -> None:
    a, b, c, d, x = (
        f"/nix/store/{h * 32}-{n}" for h, n in zip("abcdf", ["app", "b-lib", "a-lib", "z", "x"], strict=True)
    )
    tops, chains = reference_chains({a: [b, c], b: [d], c: [d], d: [], x: []})
    assert tops == (a, x)  # by name: "app" < "x"
    assert chains[d] == (a, c, d)  # two chains of length 3 from app: through a-lib before b-lib
    tops, chains = reference_chains({a: [b, c], b: [d], c: [d], d: [], x: [d]})
    assert chains[d] == (x, d)  # shorter wins over an earlier name
    # A cycle with no way in still gets a chain (starting at itself).
    tops, chains = reference_chains({a: [b], b: [a]})
    assert tops == () and chains[b] == (a, b)


def test_registry_image_with_credentials(
    built: Path, basic_registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    r = basic_registry
    ref = f"{r.host}/inspect/app:1"
    creds = f"{r.username}:{r.password}"
    assert main(["push", f"oci:{built / 'layout'}:t", ref, "--creds", creds, "-q"]) == 0
    local = inspect_json(capsys, f"oci:{built / 'layout'}:t")
    remote = inspect_json(capsys, f"docker://{ref}", "--creds", creds)
    assert remote["digest"] == local["digest"]
    assert remote["layers"] == local["layers"] and remote["largest"] == local["largest"]
    res = run_nixfly("inspect", f"docker://{ref}", "--creds", creds)
    assert res.code == 0 and "hello-app-1 → greet-tool-0.3 → libgreet-2.1" in res.out
    assert r.password is not None and r.password not in res.out + res.err
    bad = run_nixfly("inspect", f"docker://{ref}", "--creds", f"{r.username}:wrong-pw-123", "--no-scan")
    assert bad.code != 0 and bad.err.startswith("nixfly: ") and bad.err.count("\n") == 1
    assert "wrong-pw-123" not in bad.out + bad.err


def test_whiteouts_in_upper_layers_are_honoured(tmp_path: Path) -> None:
    from nixfly.image import Image, canonical_json
    from tests.support.registry_images import _tar, blob_layer

    a, b = f"nix/store/{'a' * 32}-alpha-1", f"nix/store/{'b' * 32}-beta-2"
    lower = _tar([
        (f"{a}/keep", b"k" * 100, 0o444),
        (f"{a}/gone", b"g" * 50, 0o444),
        (f"{a}/dir/inner", b"i" * 10, 0o444),
        (f"{b}/uses-alpha", f"see /{a}/keep".encode(), 0o444),
        (f"{a}/back-to-beta", f"/{b}/uses-alpha", 0o777),
    ])  # fmt: skip
    upper = _tar(
        [(f"{a}/.wh.gone", b"", 0o444), (f"{a}/dir/.wh..wh..opq", b"", 0o444), (f"nix/store/.wh.{b[10:]}", b"", 0o444)]
    )
    layers = (blob_layer(tmp_path, lower), blob_layer(tmp_path, upper))
    cfg = {
        "os": "linux",
        "architecture": "arm64",
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
    }
    report = inspect_image(Image(canonical_json(cfg), layers), top=5)
    assert [x.store_paths for x in report.layers] == [(f"/{a}", f"/{b}"), (f"/{a}",)]
    assert [(p.name, p.size, p.files, p.layers) for p in report.largest] == [("alpha-1", 100, 1, (0, 1))]
    assert report.largest[0].references == () and report.largest[0].chain == (f"/{a}",)
    assert report.store_path_count == 1 and report.platform == "linux/arm64"


def test_a_scan_hashes_each_compressed_and_uncompressed_byte_once(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inspect, the file listing and the closure diff read a layer through one pipeline: the blob's reader
    checks its digest, the diff_id check covers the tar stream, and nothing hashes either a second time."""
    import nixfly.image.digest as digest_mod
    from nixfly.diff.layers import LayerReader
    from nixfly.inspect.files import list_files
    from tests.support.hashcount import count_sha256

    image = open_image(LayoutLocation(built / "layout", "t"))
    report = inspect_image(image)
    compressed = sum(lyr.size for lyr in image.layers)
    plain = sum(lyr.uncompressed_size or 0 for lyr in report.layers)
    assert plain > compressed > 0
    streamed = count_sha256(monkeypatch, digest_mod)
    for read in (lambda: inspect_image(image), lambda: list_files(image),
                 lambda: LayerReader().store_sizes(image.layers)):  # fmt: skip
        streamed[0] = 0
        read()
        assert streamed[0] == compressed + plain
