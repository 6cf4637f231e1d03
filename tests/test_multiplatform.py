"""Multi-platform images: an amd64 closure and an arm64 one under one OCI index (or Docker manifest list),
pushed to a real registry and read back by skopeo and oci-image-tool.

The arm64 closure is real offline-Nix output: the derivations of tests/data/nix/closure.nix evaluated with
``system = "aarch64-linux"`` and built here because ``extra-platforms = aarch64-linux`` lets Nix run their
builder (Debian's static x86-64 busybox) on this machine. Their .drv files say aarch64-linux, which is what
nixfly reads; the outputs are never run.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixstore import CLOSURE_NIX, TinyClosure, make_busybox_dir, nix_env
from tests.support.registry import RunningRegistry
from tests.support.registry_proxy import FaultProxy

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def build_arm64_app(workdir: Path) -> str:
    bb = make_busybox_dir(workdir)
    env = nix_env()
    env["NIX_CONFIG"] += "\nextra-platforms = aarch64-linux"
    r = subprocess.run(
        ["nix-build", str(CLOSURE_NIX), "--no-out-link", "--arg", "bbdir", str(bb), "--argstr", "system",
         "aarch64-linux", "-A", "app"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.fixture(scope="module")
def arm64_app(tmp_path_factory: pytest.TempPathFactory, nix_available: None) -> str:
    return build_arm64_app(tmp_path_factory.mktemp("nix-arm64"))


def skopeo(*args: str) -> str:
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def validate(layout: Path, tag: str) -> None:
    r = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", f"name={tag}", str(layout)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def nixfly_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = run_nixfly(*args, "--json", env=env)
    assert r.code == 0, r.err
    out: dict[str, Any] = json.loads(r.out)
    return out


@pytest.mark.slow
def test_two_platform_index_pushed_and_pulled_per_platform(
    tiny_closure: TinyClosure, arm64_app: str, registry: RunningRegistry, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reg = fault_proxy.host
    layout = tmp_path / "multi"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    s = nixfly_json("build", "--platform", f"linux/amd64={tiny_closure.app}", "--platform",
                    f"linux/arm64={arm64_app}", "--entrypoint", "/bin/hello", "-o", f"oci:{layout}:multi",
                    "--push", f"{reg}/multi:v1", *cache)  # fmt: skip
    assert s["media_type"] == OCI_INDEX and s["pushed"]["digest"] == s["digest"]
    by_platform = {p["platform"]: p for p in s["platforms"]}
    assert set(by_platform) == {"linux/amd64", "linux/arm64"}

    # Push order: every blob, then the platform manifests, then the index (under the tag) last.
    ex = [e for e in fault_proxy.snapshot() if e.method in ("PUT", "POST", "PATCH")]
    # (after the index: the repository's layer index, an artifact under its own tag)
    ex = ex[: next(i for i, e in enumerate(ex) if e.path.endswith("/manifests/v1")) + 1]
    assert any(e.path.endswith("/manifests/nixfly-layer-index") for e in fault_proxy.snapshot())
    manifest_puts = [i for i, e in enumerate(ex) if "/manifests/" in e.path]
    assert len(manifest_puts) == 3
    assert all("/manifests/" not in e.path for e in ex[: manifest_puts[0]])
    assert manifest_puts == list(range(len(ex) - 3, len(ex)))
    assert ex[-1].path.endswith("/manifests/v1")
    assert {ex[i].path.rsplit("/", 1)[1] for i in manifest_puts[:2]} == {
        by_platform["linux/amd64"]["digest"], by_platform["linux/arm64"]["digest"]
    }

    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/multi:v1"))
    assert raw["mediaType"] == OCI_INDEX
    entries = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in raw["manifests"]}
    assert entries == {p: by_platform[p]["digest"] for p in by_platform}

    for arch in ("arm64", "amd64"):
        out = tmp_path / f"pulled-{arch}"
        skopeo("copy", "--src-tls-verify=false", "--override-arch", arch, f"docker://{reg}/multi:v1", f"oci:{out}:x")
        validate(out, "x")
        pulled = json.loads(skopeo("inspect", "--raw", f"oci:{out}:x"))
        cfg = json.loads(skopeo("inspect", "--config", "--raw", f"oci:{out}:x"))
        assert cfg["architecture"] == arch and cfg["os"] == "linux"
        assert [d["digest"] for d in pulled["layers"]] == [x["digest"] for x in by_platform[f"linux/{arch}"]["layers"]]

    # The layout holds the index under its tag; skopeo and oci-image-tool read it; ours picks a platform.
    idx = json.loads((layout / "index.json").read_text())
    assert idx["manifests"][0]["mediaType"] == OCI_INDEX and idx["manifests"][0]["digest"] == s["digest"]
    validate(layout, "multi")
    arm = tmp_path / "arm-from-layout"
    skopeo("copy", "--override-arch", "arm64", f"oci:{layout}:multi", f"oci:{arm}:a")
    assert json.loads(skopeo("inspect", "--config", "--raw", f"oci:{arm}:a"))["architecture"] == "arm64"
    host = nixfly_json("inspect", "--no-scan", f"oci:{layout}:multi")
    assert host["digest"] == by_platform["linux/amd64"]["digest"]
    remote = nixfly_json("inspect", "--no-scan", "--platform", "linux/arm64", f"docker://{reg}/multi:v1")
    assert remote["digest"] == by_platform["linux/arm64"]["digest"] and remote["platform"] == "linux/arm64"
    r = run_nixfly("run", "--runtime", "bwrap", "--cache-dir", str(tmp_path / "run"), f"oci:{layout}:multi")
    assert r.code == 0 and "app version 1" in r.out, r.err
    r = run_nixfly("inspect", "--no-scan", "--platform", "linux/s390x", f"oci:{layout}:multi")
    assert r.code != 0 and "no image for linux/s390x (it has: linux/amd64, linux/arm64)" in r.err

    # A fresh runner (empty cache) pushing the same index compresses nothing: the layer index covers both.
    again = nixfly_json("build", "--platform", f"linux/amd64={tiny_closure.app}", "--platform",
                        f"linux/arm64={arm64_app}", "--entrypoint", "/bin/hello", "--push", f"{reg}/multi:v1",
                        "--cache-dir", str(tmp_path / "fresh"))  # fmt: skip
    assert again["digest"] == s["digest"]
    assert [p["totals"]["built"] for p in again["platforms"]] == [0, 0]


@pytest.mark.slow
def test_manifest_list_for_v2s2_and_fly_like_hosts_refuse_an_index(
    tiny_closure: TinyClosure, arm64_app: str, registry: RunningRegistry, tmp_path: Path
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    plats = ["--platform", f"linux/amd64={tiny_closure.app}", "--platform", f"linux/arm64={arm64_app}"]
    s = nixfly_json("build", *plats, "--format", "v2s2", "--push", f"{registry.host}/list:v1", *cache)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/list:v1"))
    assert raw["mediaType"] == DOCKER_LIST and s["digest"] == s["pushed"]["digest"]
    assert {m["platform"]["architecture"] for m in raw["manifests"]} == {"amd64", "arm64"}
    out = tmp_path / "arm"
    skopeo("copy", "--src-tls-verify=false", "--override-arch", "arm64", f"docker://{registry.host}/list:v1",
           f"oci:{out}:a")  # fmt: skip
    validate(out, "a")

    # A host configured as registry.fly.io: refused before anything is built or pushed, naming the flag.
    env = {"NIXFLY_V2S2_REGISTRIES": registry.host}
    r = run_nixfly("build", *plats, "--push", f"{registry.host}/fly:v1", *cache, env=env)
    assert r.code == 2 and "Traceback" not in r.err
    assert "--platform linux/amd64" in r.err and "--allow-index" in r.err
    tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/fly"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert tags.returncode != 0 or json.loads(tags.stdout)["Tags"] in ([], None)
    # Picking one platform pushes a plain image; --allow-index pushes the (v2s2) list anyway.
    one = nixfly_json("build", *plats, "--platform", "linux/amd64", "--push", f"{registry.host}/fly:one", *cache,
                      env=env)  # fmt: skip
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/fly:one"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert one["pushed"]["digest"] == one["digest"]
    nixfly_json("build", *plats, "--allow-index", "--push", f"{registry.host}/fly:all", *cache, env=env)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/fly:all"))
    assert raw["mediaType"] == DOCKER_LIST


@pytest.mark.slow
def test_bad_platform_input_is_one_line_and_writes_nothing(
    tiny_closure: TinyClosure, arm64_app: str, tmp_path: Path
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]

    def fails(*args: str) -> str:
        dest = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        r = run_nixfly("build", *args, "-o", f"oci:{dest}", *cache)
        assert r.code != 0 and "Traceback" not in r.err, r.err
        assert not dest.exists() and not list(tmp_path.glob(f".{dest.name}*"))
        lines = [ln for ln in r.err.strip().splitlines() if not ln.startswith("building ")]
        assert len(lines) == 1 and lines[0].startswith("nixfly: "), r.err
        return lines[0]

    app = tiny_closure.app
    assert "given twice" in fails("--platform", f"linux/amd64={app}", "--platform", f"linux/x86_64={app}")
    msg = fails("--platform", f"linux/amd64={app}", "--platform", f"linux/amd64={arm64_app}")
    assert "given twice" in msg
    msg = fails("--platform", f"linux/amd64={arm64_app}", "--platform", f"linux/arm64={app}")
    assert "built for aarch64-linux (linux/arm64), not linux/amd64" in msg
    assert "is not a platform" in fails("--platform", f"amd64={app}")
    assert "built for x86_64-linux" in fails(app, "--platform", "linux/arm64")
    # A multi-platform image cannot go into a docker-archive.
    r = run_nixfly("build", "--platform", f"linux/amd64={app}", "--platform", f"linux/arm64={arm64_app}", "-o",
                   f"docker-archive:{tmp_path / 'x.tar'}", *cache)  # fmt: skip
    assert r.code == 2 and "docker-archive holds one image" in r.err and not (tmp_path / "x.tar").exists()


@pytest.mark.slow
def test_platforms_from_nixfly_toml_and_a_base_index(
    tiny_closure: TinyClosure, arm64_app: str, registry: RunningRegistry, tmp_path: Path
) -> None:
    """[[image.platforms]] in nixfly.toml, each on the matching platform of a multi-platform base."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    base_plats = ["--platform", f"linux/amd64={tiny_closure.bb}", "--platform", f"linux/arm64={tiny_closure.bb}"]
    # The busybox import has no deriver (no Nix system); its x86-64 ELF needs --no-platform-check as arm64.
    base = nixfly_json("build", *base_plats, "--no-platform-check", "--push", f"{registry.host}/base:multi", *cache)
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(
        f"""[image]
from = "docker://{registry.host}/base:multi"
entrypoint = ["/bin/hello"]

[[image.platforms]]
platform = "linux/amd64"
roots = ["{tiny_closure.app}"]

[[image.platforms]]
platform = "linux/arm64"
roots = ["{arm64_app}"]
"""
    )
    s = nixfly_json("build", "--config", str(cfg), "--push", f"{registry.host}/app:multi", *cache)
    bases = {p["platform"]: p for p in base["platforms"]}
    for p in s["platforms"]:
        assert p["base"]["digest"] == bases[p["platform"]]["digest"]
    out = tmp_path / "arm"
    skopeo("copy", "--src-tls-verify=false", "--override-arch", "arm64", f"docker://{registry.host}/app:multi",
           f"oci:{out}:a")  # fmt: skip
    validate(out, "a")
    layers = [d["digest"] for d in json.loads(skopeo("inspect", "--raw", f"oci:{out}:a"))["layers"]]
    assert layers[: len(bases["linux/arm64"]["layers"])] == [x["digest"] for x in bases["linux/arm64"]["layers"]]
    # A base index without the image's platform: one line, nothing written.
    r = run_nixfly("build", tiny_closure.app, "--from", f"docker://{registry.host}/base:multi", "--arch", "s390x",
                   "-o", f"oci:{tmp_path / 'no'}", *cache)  # fmt: skip
    assert r.code != 0 and not (tmp_path / "no").exists()
    assert "has no image for linux/s390x (it has: linux/amd64, linux/arm64)" in r.err.strip().splitlines()[-1]
    # One platform of the file: a plain image.
    one = nixfly_json("build", "--config", str(cfg), "--platform", "linux/arm64", "-o", f"oci:{tmp_path / 'one'}",
                      *cache)  # fmt: skip
    assert one["digest"] == next(p["digest"] for p in s["platforms"] if p["platform"] == "linux/arm64")
    # push nixfly.toml builds the same index build --config does (and pushes it, by the same digest).
    pushed = nixfly_json("push", str(cfg), f"{registry.host}/app:pushed", env={"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert pushed["digest"] == s["digest"]
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/app:pushed"))
    assert len(raw["manifests"]) == 2
    # ...and refuses registry.fly.io (it cannot look images up through an index) before building anything.
    r = run_nixfly("push", str(cfg), "registry.fly.io/app:v1", env={"XDG_CACHE_HOME": str(tmp_path / "y")})
    assert r.code == 2 and "multi-platform index" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "y").exists()
