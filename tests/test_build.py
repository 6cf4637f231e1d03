"""nixfly build on a real offline-Nix closure, checked by real validators and a real runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from nixfly.cli import main
from tests.support.cli import NIXFLY, run_nixfly
from tests.support.nixstore import TinyClosure


def build(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    code = main(["build", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def manifest_of(layout: Path, tag: str) -> dict:  # type: ignore[type-arg]
    idx = json.loads((layout / "index.json").read_text())
    d = next(m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return json.loads((layout / "blobs" / "sha256" / d["digest"].split(":")[1]).read_text())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_layout_validates_and_skopeo_sees_our_config(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "img"
    s = build(
        capsys, tiny_closure.app, "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"),
        "--entrypoint", "/bin/hello", "--cmd", "world", "-e", "APP_ECHO_ME=hi", "--port", "8080",
        "--label", "org.example=1", "--workdir", "/tmp",
    )  # fmt: skip
    v = subprocess.run(
        ["oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", str(out)], capture_output=True, text=True
    )
    assert v.returncode == 0 and "Validation succeeded" in v.stdout + v.stderr, v.stdout + v.stderr
    insp = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{out}:v1"], capture_output=True, check=True).stdout)
    assert insp["Digest"] == s["digest"]
    assert insp["Layers"] == [layer["digest"] for layer in s["layers"]]
    cfg = json.loads(
        subprocess.run(["skopeo", "inspect", "--config", f"oci:{out}:v1"], capture_output=True, check=True).stdout
    )
    assert cfg["config"]["Entrypoint"] == ["/bin/hello"] and cfg["config"]["Cmd"] == ["world"]
    assert "APP_ECHO_ME=hi" in cfg["config"]["Env"]
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in cfg["config"]["Env"]
    assert cfg["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["created"] == "1970-01-01T00:00:01Z" and cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    assert len(cfg["history"]) == len(s["layers"])
    # The root sits alone in the top store layer, the customisation layer above it.
    assert s["layers"][-2]["store_paths"] == [tiny_closure.app] and s["layers"][-2]["kind"] == "root"
    assert s["layers"][-1]["kind"] == "customisation"
    assert s["totals"]["store_paths"] == 6


@pytest.mark.slow
def test_image_runs_under_runc_and_honours_users_tmp_and_perms(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(
        f"""
[image]
roots = ["{tiny_closure.app}"]
entrypoint = ["/bin/hello"]
user = "app"
workdir = "/data"
env = {{ APP_ECHO_ME = "from-config" }}

[[image.users]]
name = "app"
uid = 1000
gid = 1000
home = "/home/app"

[[image.groups]]
name = "app"
gid = 1000

[[image.dirs]]
path = "/data"
mode = "0750"
uid = 1000
gid = 1000

[[image.perms]]
regex = "/nix/store/[^/]+-common-data-1.0/share/common/data.txt"
uid = 1000
gid = 1000
mode = "0640"
"""
    )
    out = tmp_path / "img"
    build(capsys, "--config", str(cfg), "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"))
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{out}:v1", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (rootfs / "var/tmp").stat().st_mode & 0o7777 == 0o1777
    data = (rootfs / "data").stat()
    assert (data.st_uid, data.st_gid, data.st_mode & 0o7777) == (1000, 1000, 0o750)
    home = (rootfs / "home/app").stat()
    assert (home.st_uid, home.st_gid) == (1000, 1000)
    common = rootfs / tiny_closure.common.lstrip("/") / "share/common/data.txt"
    st = common.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o640)
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "root:x:0:0::/root:/bin/sh" in passwd and any(p.startswith("app:x:1000:1000:") for p in passwd)
    assert any(p.startswith("nobody:x:65534:65534:") for p in passwd)
    assert "app:x:1000:" in (rootfs / "etc/group").read_text()
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/hello", "a", "b"]
    (bundle / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        ["runc", "run", "-b", str(bundle), f"nixfly-test-{os.getpid()}"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "app version 1" in run.stdout and "hello from nixfly" in run.stdout
    assert "user=1000 cwd=/data APP_ECHO_ME=from-config" in run.stdout
    assert "args: a b" in run.stdout


@pytest.mark.slow
def test_docker_archive_file_and_stdout(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "img.tar"
    s = build(capsys, tiny_closure.app, "-o", f"docker-archive:{arch}:hello:v1", "--cache-dir", str(tmp_path / "c"))
    insp = json.loads(
        subprocess.run(["skopeo", "inspect", f"docker-archive:{arch}"], capture_output=True, check=True).stdout
    )
    assert len(insp["Layers"]) == len(s["layers"])
    listing = subprocess.run(["tar", "-xOf", str(arch), "manifest.json"], capture_output=True, check=True).stdout
    assert json.loads(listing)[0]["RepoTags"] == ["hello:v1"]
    cfg = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"docker-archive:{arch}"], capture_output=True, check=True
        ).stdout
    )
    assert cfg["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in s["layers"]]
    # -o - streams the same archive to stdout.
    proc = subprocess.run(
        [*NIXFLY, "build", tiny_closure.app, "-o", "-", "--cache-dir", str(tmp_path / "c"), "--name", "hello"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    streamed = tmp_path / "streamed.tar"
    streamed.write_bytes(proc.stdout)
    cfg2 = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"docker-archive:{streamed}"], capture_output=True, check=True
        ).stdout
    )
    assert cfg2["rootfs"]["diff_ids"] == cfg["rootfs"]["diff_ids"]
    assert proc.stderr.decode().strip().endswith(s["digest"])


@pytest.mark.slow
def test_docker_archive_loads_into_podman(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "img.tar"
    dest = f"docker-archive:{arch}:localhost/hello:v1"
    build(capsys, tiny_closure.app, "-o", dest, "--cache-dir", str(tmp_path / "c"), "--entrypoint", "/bin/hello")
    nofile = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
    conf = tmp_path / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\nnetns = "none"\n'
        '[engine]\nruntime = "runc"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    runroot = tempfile.mkdtemp(prefix="nfp", dir="/tmp")  # podman wants a runroot under 50 characters
    root = ["--root", str(tmp_path / "storage"), "--runroot", runroot, "--storage-driver", "vfs"]
    load = subprocess.run(["podman", *root, "load", "-i", str(arch)], capture_output=True, text=True, env=env)
    assert load.returncode == 0, load.stderr
    run = subprocess.run(
        ["podman", *root, "run", "--rm", "-e", "APP_ECHO_ME=podman", "localhost/hello:v1", "x"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "APP_ECHO_ME=podman" in run.stdout and "args: x" in run.stdout


def test_reproducible_across_caches_and_epochs(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'a'}", "--cache-dir", str(tmp_path / "c1"))
    b = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'b'}", "--cache-dir", str(tmp_path / "c2"))
    assert a["digest"] == b["digest"] and a["totals"]["built"] == b["totals"]["built"] == len(a["layers"])
    # Same cache: nothing is built again.
    c = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'c'}", "--cache-dir", str(tmp_path / "c1"))
    assert c["digest"] == a["digest"] and c["totals"]["built"] == 0
    # Wipe the cache: identical again.
    shutil.rmtree(tmp_path / "c1")
    d = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'd'}", "--cache-dir", str(tmp_path / "c1"))
    assert d["digest"] == a["digest"]
    # zstd and another epoch change the bytes, deterministically.
    z1 = build(
        capsys,
        tiny_closure.app,
        "-o",
        f"oci:{tmp_path / 'z1'}",
        "--cache-dir",
        str(tmp_path / "c3"),
        "--compression",
        "zstd",
    )
    z2 = build(
        capsys,
        tiny_closure.app,
        "-o",
        f"oci:{tmp_path / 'z2'}",
        "--cache-dir",
        str(tmp_path / "c4"),
        "--compression",
        "zstd",
    )
    assert z1["digest"] == z2["digest"] != a["digest"]
    assert [x["diff_id"] for x in z1["layers"]] == [x["diff_id"] for x in a["layers"]]
    z_idx = json.loads((tmp_path / "z1" / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    z_manifest = json.loads((tmp_path / "z1" / "blobs" / "sha256" / z_idx).read_text())
    assert {x["mediaType"] for x in z_manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    e = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'e'}", "--cache-dir", str(tmp_path / "c1"))
    assert e["digest"] != a["digest"] and e["totals"]["built"] == len(a["layers"])


def test_app_change_rebuilds_only_the_app_layer(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "c")
    v1 = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'v1'}", "--cache-dir", cache)
    app2 = tiny_closure.build(appVersion="2")["app"]
    v2 = build(capsys, app2, "-o", f"oci:{tmp_path / 'v2'}", "--cache-dir", cache)
    assert v2["totals"]["built"] == 1
    changed = [
        (x["digest"], y["digest"])
        for x, y in zip(v1["layers"], v2["layers"], strict=True)
        if x["digest"] != y["digest"]
    ]
    assert len(changed) == 1
    assert [y["store_paths"] for y in v2["layers"] if y["built"]] == [[app2]]


def test_closure_metadata_sources_agree(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "c")
    ref = build(capsys, tiny_closure.app, "-o", f"oci:{tmp_path / 'ref'}", "--cache-dir", cache)["digest"]
    # path-info as a list (Nix 2.8), as an object keyed by path (newer Nix), and closureInfo's registration.
    data = json.loads(tiny_closure.path_info.read_text())
    as_obj = tmp_path / "obj.json"
    as_obj.write_text(json.dumps({d["path"]: {k: v for k, v in d.items() if k != "path"} for d in data}))
    reg = tmp_path / "closure-info"
    reg.mkdir()
    everything = subprocess.run(["nix-store", "-qR", tiny_closure.app], capture_output=True, text=True, check=True)
    dump = subprocess.run(
        ["nix-store", "--dump-db", *everything.stdout.split()], capture_output=True, text=True, check=True
    )
    (reg / "registration").write_text(dump.stdout)
    for f in (tiny_closure.path_info, as_obj, reg):
        got = build(
            capsys, tiny_closure.app, "--closure-file", str(f), "-o", f"oci:{tmp_path / f.name}x", "--cache-dir", cache
        )
        assert got["digest"] == ref, f
    # A ./result symlink works like the store path.
    link = tmp_path / "result"
    link.symlink_to(tiny_closure.app)
    assert build(capsys, str(link), "-o", f"oci:{tmp_path / 'viares'}", "--cache-dir", cache)["digest"] == ref


def _bad(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    before = set(os.listdir(tmp_path))
    r = run_nixfly("build", *args, env=env)
    assert r.code != 0
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nixfly: "), r.err
    assert "Traceback" not in r.err
    assert set(os.listdir(tmp_path)) == before, "no partial output is left behind"
    return lines[0]


def test_bad_inputs_give_one_line_and_leave_nothing(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    out = f"oci:{work / 'out'}"
    cache = ["--cache-dir", str(tmp_path / "c")]
    (tmp_path / "notstore").write_text("x")
    assert "not in the Nix store" in _bad(work, str(tmp_path / "notstore"), "-o", out, *cache)
    missing = "/nix/store/" + "a" * 32 + "-missing-1.0"
    assert "missing-1.0" in _bad(work, missing, "-o", out, *cache)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"path": ')
    msg = _bad(work, tiny_closure.app, "--closure-file", str(broken), "-o", out, *cache)
    assert "broken.json" in msg and "malformed" in msg
    partial = tmp_path / "partial.json"
    partial.write_text(
        json.dumps([d for d in json.loads(tiny_closure.path_info.read_text()) if d["path"] == tiny_closure.app])
    )
    assert "incomplete" in _bad(work, tiny_closure.app, "--closure-file", str(partial), "-o", out, *cache)
    app2 = tiny_closure.build(appVersion="conflict")["app"]
    msg = _bad(work, tiny_closure.app, app2, "-o", out, *cache)
    assert "contents conflict" in msg and "/bin/hello" in msg
    cfg = tmp_path / "bad-perms.toml"
    cfg.write_text(f'roots = ["{tiny_closure.app}"]\n[[perms]]\nregex = "(unclosed"\nuid = 1\n')
    assert "invalid regex" in _bad(work, "--config", str(cfg), "-o", out, *cache)
    msg = _bad(
        work,
        tiny_closure.app,
        "--max-layers",
        "2",
        "--layer",
        "libgreet-*",
        "--layer",
        "greet-tool-*",
        "-o",
        out,
        *cache,
    )
    assert "--max-layers 2" in msg
    assert "cannot write" in _bad(work, tiny_closure.app, "-o", "oci:/proc/nixfly-cannot-write/x", *cache)
    cfg2 = tmp_path / "typo.toml"
    cfg2.write_text(f'roots = ["{tiny_closure.app}"]\n\n[layers]\nmax_layrs = 3\n')
    msg = _bad(work, "--config", str(cfg2), "-o", out, *cache)
    assert "typo.toml:4" in msg and "layers.max_layrs" in msg and "unknown key" in msg
