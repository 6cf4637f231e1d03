"""Base images (``--from``): a base built by nixfly from a busybox closure and pushed to a real registry,
our image on top of it, checked with skopeo, umoci + runc, and by counting what the push sent."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from nixfly.build.base import store_paths_in
from nixfly.build.cache import BlobCache
from nixfly.image.model import LayerWrapper
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry
from tests.support.registry_proxy import FaultProxy
from tests.test_base_model import image_of, tar_layer


def mounted(proxy: FaultProxy) -> list[str]:
    """The digests the registry mounted (POST …?mount=DIGEST&from=… answered 201), sorted."""
    out = []
    for e in proxy.snapshot():
        query = parse_qs(urlsplit(e.path).query)
        if e.method == "POST" and "mount" in query and e.status == 201:
            out.append(query["mount"][0])
    return sorted(out)


def uploaded(proxy: FaultProxy) -> list[str]:
    """The digests of the blob uploads the registry accepted (the final PUT …?digest=DIGEST answered 201)."""
    out = []
    for e in proxy.snapshot():
        if e.method == "PUT" and "/blobs/uploads/" in e.path and e.status == 201:
            out += parse_qs(urlsplit(e.path).query).get("digest", [])
    return sorted(out)


def skopeo(*args: str) -> str:
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def write_base_toml(tmp: Path, tiny: TinyClosure) -> Path:
    """A base image: busybox on /bin, a user and a group of its own, and a file of its own."""
    (tmp / "base-release").write_text("nixfly test base 1\n")
    cfg = tmp / "base.toml"
    cfg.write_text(
        f"""[image]
roots = ["{tiny.bb}"]
cmd = ["/bin/sh"]
env = {{ BASE_ONLY = "b", SHARED = "from-base", PATH = "/bin:/usr/bin" }}
workdir = "/srv"
labels = {{ "org.example.base" = "yes", "org.example.shared" = "base" }}

[[image.users]]
name = "baseuser"
uid = 1000
home = "/home/baseuser"

[[image.groups]]
name = "basegroup"
gid = 1500
members = ["baseuser"]

[[image.files]]
src = "base-release"
dest = "/etc/base-release"
"""
    )
    return cfg


def write_app_toml(tmp: Path, tiny: TinyClosure, base: str) -> Path:
    cfg = tmp / "app.toml"
    cfg.write_text(
        f"""[image]
roots = ["{tiny.app}"]
from = "{base}"
entrypoint = ["/bin/hello"]
env = {{ SHARED = "from-app" }}
labels = {{ "org.example.shared" = "app" }}

[[image.users]]
name = "appuser"
uid = 2000
"""
    )
    return cfg


def run_bundle(layout: Path, tag: str, tmp: Path, args: list[str] | None = None) -> tuple[str, Path]:
    """umoci unpack + runc run; returns stdout and the bundle's rootfs."""
    bundle = tmp / f"bundle-{uuid.uuid4().hex[:8]}"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True)
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = False
    if args is not None:
        cfg["process"]["args"] = args
    cfg_path.write_text(json.dumps(cfg))
    cid = f"nixfly-test-{uuid.uuid4().hex[:10]}"
    r = subprocess.run(["runc", "run", "-b", str(bundle), cid], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout, bundle / "rootfs"


def build_json(*args: str, cache: Path) -> dict[str, Any]:
    r = run_nixfly("build", *args, "--json", "--cache-dir", str(cache))
    assert r.code == 0, r.err
    out: dict[str, Any] = json.loads(r.out)
    return out


@pytest.mark.slow
def test_image_on_a_registry_base_mounts_its_blobs_merges_config_and_users_and_runs(
    tiny_closure: TinyClosure, registry: RunningRegistry, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reg = fault_proxy.host
    cache = tmp_path / "cache"
    base = build_json("--config", str(write_base_toml(tmp_path, tiny_closure)), "--push", f"{reg}/base:v1",
                      cache=cache)  # fmt: skip
    base_raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/base:v1"))
    base_layers = [d["digest"] for d in base_raw["layers"]]
    assert base["pushed"]["digest"] == base["digest"]

    fault_proxy.reset_counters()
    app_cfg = write_app_toml(tmp_path, tiny_closure, f"docker://{reg}/base:v1")
    r = run_nixfly("build", "--config", str(app_cfg), "--push", f"{reg}/app:v1", "--json", "--sbom", "none",
                   "--no-layer-index", "--cache-dir", str(tmp_path / "cache2"))  # fmt: skip
    assert r.code == 0, r.err
    app = json.loads(r.out)
    # The base holds busybox (the app's closure has it too): it is not packed a second time.
    assert app["base"] == {
        "name": f"{reg}/base:v1", "digest": base["digest"], "layers": len(base_layers), "store_paths": 1
    }  # fmt: skip
    assert "/etc/passwd: user" not in r.err  # no clash: nothing to warn about
    ours = app["layers"]
    closure = {str(d["path"]) for d in json.loads(tiny_closure.path_info.read_text())}
    assert tiny_closure.bb in closure
    assert sorted(p for x in ours for p in x["store_paths"]) == sorted(closure - {tiny_closure.bb})

    # The base's blobs were mounted from base/, none uploaded again: only our layers and config were sent.
    assert mounted(fault_proxy) == sorted(base_layers)
    assert not set(uploaded(fault_proxy)) & set(base_layers)
    assert fault_proxy.blob_uploads_completed() == len(ours) + 1
    cfg_size = len(skopeo("inspect", "--config", "--raw", "--tls-verify=false", f"docker://{reg}/app:v1"))
    assert fault_proxy.blob_upload_bytes() == sum(x["size"] for x in ours) + cfg_size

    # skopeo sees the base's layers, then ours; the annotations and history pin the base.
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/app:v1"))
    layers = [d["digest"] for d in raw["layers"]]
    assert len(set(layers)) == len(layers), layers  # no blob twice
    assert layers[: len(base_layers)] == base_layers
    assert layers[len(base_layers) :] == [x["digest"] for x in ours]
    assert raw["layers"][0]["mediaType"] == base_raw["layers"][0]["mediaType"]
    assert raw["annotations"]["org.opencontainers.image.base.name"] == f"{reg}/base:v1"
    assert raw["annotations"]["org.opencontainers.image.base.digest"] == base["digest"]
    insp = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg}/app:v1"))
    assert insp["Digest"] == app["digest"] and insp["Layers"] == layers
    env = insp["Env"]
    assert "BASE_ONLY=b" in env and "SHARED=from-app" in env and "PATH=/bin:/usr/bin" in env
    assert insp["Labels"] == {"org.example.base": "yes", "org.example.shared": "app"}
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", f"docker://{reg}/app:v1"))
    c = config["config"]
    assert c["Entrypoint"] == ["/bin/hello"] and "Cmd" not in c  # our Entrypoint drops the base's Cmd
    assert c["WorkingDir"] == "/srv"  # inherited
    froms = [h for h in config["history"] if h.get("empty_layer")]
    assert froms and f"FROM {reg}/base:v1@{base['digest']}" in froms[0]["created_by"]
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == len(layers)

    # Pulled into a layout by skopeo (an independent reader): it validates, runs our app under runc, and the
    # base's file and both sets of users are there.
    layout = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{reg}/app:v1", f"oci:{layout}:app")
    subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=app", str(layout)],
                   check=True, capture_output=True)  # fmt: skip
    out, rootfs = run_bundle(layout, "app", tmp_path, ["/bin/sh", "-c", "/bin/hello; cat /etc/base-release"])
    assert "app version 1" in out and "nixfly test base 1" in out
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert any(p.startswith("baseuser:x:1000:") for p in passwd)
    assert any(p.startswith("appuser:x:2000:") for p in passwd)
    assert sum(1 for p in passwd if p.startswith("root:")) == 1
    group = (rootfs / "etc/group").read_text()
    assert "basegroup:x:1500:baseuser" in group and group.count("root:x:0:") == 1


@pytest.mark.slow
def test_store_paths_in_the_base_are_not_packed_again_and_its_blobs_are_mounted_not_resent(
    tiny_closure: TinyClosure, registry: RunningRegistry, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A Nix-built base holding part of our closure (busybox, the greet tool and its library): the same
    layers would otherwise appear twice in the manifest and be uploaded although the registry has them."""
    reg = fault_proxy.host
    base = build_json(tiny_closure.tool, "--push", f"{reg}/nixbase:v1", "--sbom", "none", cache=tmp_path / "c1")
    base_raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/nixbase:v1"))
    base_layers = [d["digest"] for d in base_raw["layers"]]
    in_base = {p for x in base["layers"] for p in x["store_paths"]}
    assert tiny_closure.bb in in_base and tiny_closure.tool in in_base

    fault_proxy.reset_counters()
    r = run_nixfly("build", tiny_closure.app, "--from", f"docker://{reg}/nixbase:v1", "--entrypoint", "/bin/hello",
                   "--push", f"{reg}/onnix:v1", "--json", "--sbom", "none", "--no-layer-index",
                   "--cache-dir", str(tmp_path / "c2"))  # fmt: skip
    assert r.code == 0, r.err
    app = json.loads(r.out)
    closure = {str(d["path"]) for d in json.loads(tiny_closure.path_info.read_text())}
    ours = app["layers"]
    packed = [p for x in ours for p in x["store_paths"]]
    assert sorted(packed) == sorted(closure - in_base) and app["base"]["store_paths"] == len(closure & in_base)

    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/onnix:v1"))
    layers = [d["digest"] for d in raw["layers"]]
    assert len(set(layers)) == len(layers), layers  # no blob twice in the manifest
    assert layers == base_layers + [x["digest"] for x in ours]
    # The proxy's log: every base blob mounted from nixbase/, none of them uploaded; only ours and the config sent.
    assert mounted(fault_proxy) == sorted(base_layers)
    assert not set(uploaded(fault_proxy)) & set(base_layers)
    assert sorted(uploaded(fault_proxy)) == sorted([x["digest"] for x in ours] + [raw["config"]["digest"]])
    assert fault_proxy.blob_upload_bytes() == sum(x["size"] for x in ours) + raw["config"]["size"]

    # Independent readers: skopeo's view, a pulled layout that validates and runs the app with the base's tool.
    assert json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg}/onnix:v1"))["Layers"] == layers
    layout = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{reg}/onnix:v1", f"oci:{layout}:app")
    subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=app", str(layout)],
                   check=True, capture_output=True)  # fmt: skip
    out, _ = run_bundle(layout, "app", tmp_path, ["/bin/hello"])
    assert "app version 1" in out and "hello from nixfly" in out

    # Built again into a layout on the same cache: the base's listings are cached, the digest is the same.
    fault_proxy.reset_counters()
    again = build_json(tiny_closure.app, "--from", f"docker://{reg}/nixbase:v1", "--entrypoint", "/bin/hello",
                       "-o", f"oci:{tmp_path / 'again'}:app", "--sbom", "none", cache=tmp_path / "c2")  # fmt: skip
    assert again["digest"] == app["digest"] and fault_proxy.count("GET", "/blobs/") <= 1  # the base's config


@pytest.mark.slow
def test_layout_output_holds_the_base_blobs_fetched_once_and_pinned_digest_is_honoured(
    tiny_closure: TinyClosure, registry: RunningRegistry, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reg = fault_proxy.host
    cache = tmp_path / "cache"
    base = build_json("--config", str(write_base_toml(tmp_path, tiny_closure)), "--push", f"{reg}/base:v1",
                      cache=cache)  # fmt: skip
    # A new tag moves on; the pinned digest must still give the first base.
    (tmp_path / "base-release").write_text("nixfly test base 2\n")
    moved = build_json("--config", str(tmp_path / "base.toml"), "--push", f"{reg}/base:v1", cache=cache)
    assert moved["digest"] != base["digest"]

    fault_proxy.reset_counters()
    cache2 = tmp_path / "cache2"
    pinned = f"docker://{reg}/base@{base['digest']}"
    out = tmp_path / "out"
    app = build_json(tiny_closure.app, "--from", pinned, "-o", f"oci:{out}:app", "--entrypoint", "/bin/hello",
                     cache=cache2)  # fmt: skip
    assert app["base"]["digest"] == base["digest"]
    n_base = app["base"]["layers"]
    base_raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/base@{base['digest']}"))
    # Every base blob was downloaded exactly once (reading /etc from the top layer included) and is in the layout.
    for d in base_raw["layers"]:
        assert fault_proxy.count("GET", f"/blobs/{d['digest']}") == 1
        assert (out / "blobs" / "sha256" / d["digest"].split(":")[1]).is_file()
        assert (cache2 / "blobs" / "sha256" / d["digest"].split(":")[1]).is_file()
    subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=app", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    stdout, _ = run_bundle(out, "app", tmp_path, ["/bin/sh", "-c", "cat /etc/base-release"])
    assert stdout == "nixfly test base 1\n"

    # A second build reads the base from the cache: no blob is fetched again, the digest is the same.
    fault_proxy.reset_counters()
    again = build_json(tiny_closure.app, "--from", pinned, "-o", f"oci:{tmp_path / 'out2'}:app", "--entrypoint",
                       "/bin/hello", cache=cache2)  # fmt: skip
    assert again["digest"] == app["digest"]
    assert fault_proxy.count("GET", "/blobs/sha256:") == 1  # the base's config only
    assert len(base_raw["layers"]) == n_base

    # base_etc = "replace": only our users.
    rep = build_json(tiny_closure.app, "--from", pinned, "--base-etc", "replace", "-o",
                     f"oci:{tmp_path / 'out3'}:app", cache=cache2)  # fmt: skip
    _, rootfs = run_bundle(tmp_path / "out3", "app", tmp_path, ["/bin/true"])
    assert "baseuser" not in (rootfs / "etc/passwd").read_text()
    assert rep["digest"] != app["digest"]


@pytest.mark.slow
def test_base_from_a_layout_and_an_archive_and_the_bad_inputs(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    base_layout = tmp_path / "base"
    base = build_json("--config", str(write_base_toml(tmp_path, tiny_closure)), "-o", f"oci:{base_layout}:b",
                      cache=cache)  # fmt: skip
    archive = tmp_path / "base.tar"
    build_json("--config", str(tmp_path / "base.toml"), "-o", f"docker-archive:{archive}", cache=cache)
    for src in (f"oci:{base_layout}:b", f"docker-archive:{archive}"):
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        app = build_json(tiny_closure.app, "--from", src, "-o", f"oci:{out}:app", cache=cache)
        assert app["base"]["name"] == src
        stdout, rootfs = run_bundle(out, "app", tmp_path, ["/bin/sh", "-c", "cat /etc/base-release; /bin/hello"])
        assert "nixfly test base 1" in stdout and "app version 1" in stdout
        assert "baseuser:x:1000:" in (rootfs / "etc/passwd").read_text()
    assert build_json(tiny_closure.app, "--from", f"oci:{base_layout}:b", "-o", f"oci:{tmp_path / 'x'}",
                      cache=cache)["base"]["digest"] == base["digest"]  # fmt: skip

    # A user of ours with the base's name wins, with a warning.
    r = run_nixfly("build", tiny_closure.app, "--from", f"oci:{base_layout}:b", "-o", f"oci:{tmp_path / 'y'}",
                   "--config", str(_clash_toml(tmp_path)), "--cache-dir", str(cache))  # fmt: skip
    assert r.code == 0, r.err
    assert "nixfly: warning: /etc/passwd: user baseuser of the base image is replaced by ours" in r.err

    def fails(*args: str) -> str:
        dest = tmp_path / f"bad-{uuid.uuid4().hex[:6]}"
        res = run_nixfly("build", *args, "-o", f"oci:{dest}", "--cache-dir", str(cache))
        assert res.code != 0 and "Traceback" not in res.err, res.err
        assert not dest.exists() and not list(tmp_path.glob(f".{dest.name}*"))
        lines = [ln for ln in res.err.strip().splitlines() if not ln.startswith("base ")]  # the resolved base
        assert len(lines) == 1 and lines[0].startswith("nixfly: "), res.err
        return lines[0]

    assert "not found" in fails(tiny_closure.app, "--from", f"docker://{registry.host}/nope:v1")
    assert "no image tagged" in fails(tiny_closure.app, "--from", f"oci:{base_layout}:nope")
    msg = fails(tiny_closure.app, "--from", f"oci:{base_layout}:b", "--arch", "arm64")
    assert "is for linux/amd64, not linux/arm64" in msg
    msg = fails(tiny_closure.app, "--from", f"oci:{base_layout}:b", "--max-layers", "3")
    assert f"has {len(json.loads(skopeo('inspect', '--raw', f'oci:{base_layout}:b'))['layers'])} layers" in msg
    assert "--max-layers 3" in msg


def _clash_toml(tmp: Path) -> Path:
    cfg = tmp / "clash.toml"
    cfg.write_text('[image]\n[[image.users]]\nname = "baseuser"\nuid = 1001\n')
    return cfg


@pytest.mark.slow
def test_push_to_another_registry_streams_the_base_and_keeps_credentials_to_their_host(
    tiny_closure: TinyClosure, basic_registry: RunningRegistry, registry: RunningRegistry, fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:  # fmt: skip
    b = basic_registry
    creds = f"{b.username}:{b.password}"
    cache = tmp_path / "cache"
    base = build_json("--config", str(write_base_toml(tmp_path, tiny_closure)), "--push", f"{b.host}/base:v1",
                      "--creds", creds, cache=cache)  # fmt: skip
    base_raw = json.loads(skopeo("inspect", "--raw", f"--creds={creds}", "--tls-verify=false",
                                 f"docker://{b.host}/base:v1"))  # fmt: skip

    # --creds belong to the registry pushed to: they are not offered to the base's registry.
    args = [tiny_closure.app, "--from", f"docker://{b.host}/base:v1", "--push", f"{fault_proxy.host}/app:v1",
            "--sbom", "none", "--no-layer-index", "--cache-dir", str(tmp_path / "c2")]  # fmt: skip
    r = run_nixfly("build", *args, "--creds", creds)
    assert r.code != 0 and "Traceback" not in r.err and b.password not in r.err
    assert f"base image docker://{b.host}/base:v1" in r.err
    assert fault_proxy.manifest_puts() == 0

    r = run_nixfly("build", *args, "--from-creds", creds, "--json")
    assert r.code == 0, r.err
    app = json.loads(r.out)
    assert app["base"]["digest"] == base["digest"] and b.password not in r.out + r.err
    # Another registry: every base blob was streamed across and uploaded (nothing to mount from).
    assert mounted(fault_proxy) == []
    sizes = sum(d["size"] for d in base_raw["layers"]) + sum(x["size"] for x in app["layers"])
    cfg_size = len(skopeo("inspect", "--config", "--raw", "--tls-verify=false", f"docker://{fault_proxy.host}/app:v1"))
    assert fault_proxy.blob_upload_bytes() == sizes + cfg_size
    insp = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{fault_proxy.host}/app:v1"))
    assert insp["Layers"][: len(base_raw["layers"])] == [d["digest"] for d in base_raw["layers"]]


def test_which_store_paths_a_base_holds_follows_whiteouts_and_hidden_stores(tmp_path: Path) -> None:
    """Only whole paths the merged layers still hold count: a path deleted, altered (a whiteout or an entry
    inside it from a higher layer) or hidden (the store made opaque, deleted or replaced) is packed again."""
    cache = BlobCache(tmp_path / "cache")
    s = "nix/store"
    lower = tar_layer({"nix": None, s: None, f"{s}/aaa-x": None, f"{s}/aaa-x/f": b"1", f"{s}/bbb-y": b"file",
                       f"{s}/ccc-z": None, f"{s}/ccc-z/f": b"2", f"{s}/ddd-w": None, "etc/a": b"a"})  # fmt: skip
    upper = tar_layer({f"{s}/.wh.bbb-y": b"", f"{s}/ccc-z/.wh.f": b"", f"{s}/ddd-w/extra": b"3", f"{s}/eee-v": None,
                       "nix/store-not/fff-u": None, "opt/nix/store/ggg-t": None})  # fmt: skip
    held = store_paths_in(image_of(lower, upper), "/nix/store", cache)
    assert held == {"/nix/store/aaa-x", "/nix/store/eee-v"}
    assert store_paths_in(image_of(lower), "/nix/store", cache) == {f"/nix/store/{n}" for n in
                                                                   ("aaa-x", "bbb-y", "ccc-z", "ddd-w")}  # fmt: skip
    assert store_paths_in(image_of(lower), "/gnu/store", cache) == set()
    for hide in ({"nix/.wh..wh..opq": b""}, {".wh.nix": b""}, {"nix/.wh.store": b""}, {".wh..wh..opq": b""},
                 {f"{s}/.wh..wh..opq": b""}, {s: b"not a directory"}):  # fmt: skip
        top = tar_layer({**hide, f"{s}/hhh-s": None})
        assert store_paths_in(image_of(lower, top), "/nix/store", cache) == {"/nix/store/hhh-s"}, hide

    # The listings are kept in the cache: the layers are not read again.
    class Unreadable(LayerWrapper):
        def compressed(self) -> Any:
            raise AssertionError("read again")

        def uncompressed(self) -> Any:
            raise AssertionError("read again")

    again = image_of(lower, upper)
    again = again.with_layers(tuple(Unreadable(lyr) for lyr in again.layers))
    assert store_paths_in(again, "/nix/store", cache) == held


@pytest.mark.parametrize("algorithm", ["popularity", "auto"])
def test_the_layer_plan_leaves_out_what_the_base_provides(algorithm: str) -> None:
    """Paths the base provides are in no layer (a root included, an explicit layer emptied by them dropped);
    the other paths are grouped as they would be without them."""
    from nixfly.build.closure import Closure, StorePath
    from nixfly.build.layering import plan_layers

    def sp(name: str) -> str:
        return f"/nix/store/{name[0] * 32}-{name}"

    app, tool, libc, bb, data = sp("app"), sp("tool"), sp("libc"), sp("busybox"), sp("data")
    refs = {app: [tool, data, bb], tool: [libc, bb], libc: [], bb: [], data: []}
    c = Closure((app, tool), {p: StorePath(p, 1000, tuple(sorted(r))) for p, r in refs.items()})
    plan = plan_layers(c, algorithm=algorithm, explicit=[["busybox"]], provided=frozenset({tool, bb, libc}))
    assert sorted(p for g in plan.groups for p in g.paths) == sorted([app, data])
    assert [g.kind for g in plan.groups][-1] == "root" and plan.groups[-1].paths == (app,)
    assert all(g.kind != "explicit" for g in plan.groups)
    full = plan_layers(c, algorithm=algorithm, explicit=[["busybox"]])
    assert sorted(p for g in full.groups for p in g.paths) == sorted(refs)


def test_a_base_layer_read_killed_half_way_leaves_nothing_after_the_next_open(tmp_path: Path) -> None:
    """kill -9 while a base layer streams into the cache: the next build's cache sweep removes the partial file
    (its name carries the dead reader's pid) instead of keeping it for a day."""
    import random
    import sys

    cache_dir = tmp_path / "cache"
    data = random.Random(11).randbytes(4 << 20)
    (tmp_path / "blob").write_bytes(data)
    script = f"""
import hashlib, os, signal
from pathlib import Path
from nixfly.build.base import cache_backed
from nixfly.build.cache import BlobCache
from nixfly.image.mediatypes import OCI_LAYER
from nixfly.image.model import BytesLayer
data = Path({str(tmp_path / "blob")!r}).read_bytes()
d = "sha256:" + hashlib.sha256(data).hexdigest()
stream = cache_backed(BytesLayer(data, d, d, OCI_LAYER), BlobCache(Path({str(cache_dir)!r}))).compressed()
stream.read(1 << 20)
os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == -9, r.stderr
    left = list((cache_dir / "tmp").iterdir())
    assert len(left) == 1 and left[0].stat().st_size == 1 << 20  # the half-read layer, as the kill left it
    BlobCache(cache_dir)  # the next build opens the cache
    assert list((cache_dir / "tmp").iterdir()) == [] and not list((cache_dir / "blobs" / "sha256").iterdir())
