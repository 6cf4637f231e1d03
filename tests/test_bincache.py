"""Images from real Nix binary caches (made by nix copy, signed by nix store sign), read in place
(file://) and over HTTP (a loopback static file server), after the paths were deleted from the store."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfly.build.bincache import BinaryCache
from nixfly.build.nar import NarReader
from tests.support.bincache import (
    BINCACHE_NIX,
    COMPRESSIONS,
    CachedClosure,
    StaticServer,
    build_unique,
    copy_to_cache,
    delete_paths,
    make_key,
    new_marker,
    nix,
)
from tests.support.cli import NIXFLY, Result, run_nixfly
from tests.support.hostile_http import run_measured, tree_size, wait_path
from tests.support.nixstore import make_busybox_dir, nix_env

pytestmark = pytest.mark.slow


def nixfly(*args: str, env: dict[str, str] | None = None) -> Result:
    return run_nixfly(*args, env={**nix_env(), **(env or {})})


def build_digest(*args: str) -> str:
    r = nixfly("build", *args, "-q")
    assert r.code == 0, r.err
    return r.out.strip()


def one_line_error(r: Result) -> str:
    assert r.code != 0, r.out
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixfly: "), r.err
    assert "Traceback" not in r.err
    return lines[0]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, nix_available: None) -> Iterator[CachedClosure]:
    work = tmp_path_factory.mktemp("bincache")
    paths = build_unique(work, new_marker())
    sk, pk = make_key(work, "nixfly-test-1")
    nix("nix", "store", "sign", "-k", str(sk), "-r", paths["app"])
    caches = {c: copy_to_cache(work / f"cache-{c}", c, paths["app"]) for c in COMPRESSIONS}
    layout = work / "local"
    digest = build_digest(paths["app"], "-o", f"oci:{layout}:t", "--cache-dir", str(work / "lc"))
    with_sh = build_digest(paths["app"], "-o", f"oci:{work / 'local-sh'}:t", "--cache-dir", str(work / "lc"),
                           "--bin-sh")  # fmt: skip
    delete_paths(*paths.values())
    assert not any(os.path.lexists(p) for p in paths.values())
    yield CachedClosure(paths, pk, caches, digest, layout, work, with_sh)


def fresh(tmp: Path) -> str:
    return str(tmp / f"cache-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_build_from_file_cache_is_byte_identical_to_local(
    cached: CachedClosure, compression: str, tmp_path: Path
) -> None:
    out = tmp_path / "img"
    url = f"file://{cached.caches[compression]}"
    d = build_digest(cached.paths["app"], "-o", f"oci:{out}:t", "--cache-dir", fresh(tmp_path),
                     "--from-cache", url, "--trusted-public-key", cached.public_key)  # fmt: skip
    assert d == cached.local_digest
    # Same blobs, byte for byte (layers, config, manifest).
    assert sorted(os.listdir(out / "blobs" / "sha256")) == sorted(os.listdir(cached.local_layout / "blobs" / "sha256"))


def test_links_found_by_searching_remote_dependencies_are_the_same(cached: CachedClosure, tmp_path: Path) -> None:
    # /bin/sh → sh's bin/sh and the CA bundle links → data's, both found in dependencies only a cache has.
    d = build_digest(cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
                     "--from-cache", f"file://{cached.caches['zstd']}", "--trusted-public-key", cached.public_key,
                     "--bin-sh")  # fmt: skip
    assert d == cached.local_digest_bin_sh != cached.local_digest


def test_http_cache_same_digest_and_cached_rebuild_downloads_nothing(cached: CachedClosure, tmp_path: Path) -> None:
    cache_dir = fresh(tmp_path)
    with StaticServer(cached.caches["xz"]) as srv:
        args = [cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", cache_dir,
                "--from-cache", srv.url, "--trusted-public-key", cached.public_key]  # fmt: skip
        assert build_digest(*args) == cached.local_digest
        assert any(r.startswith("/nar/") for r in srv.requests) and "/nix-cache-info" in srv.requests
        before = len(srv.requests)
        assert build_digest(*args) == cached.local_digest
        assert srv.requests[before:] == []  # layers cached, narinfos remembered: nothing fetched at all


def test_http_faults_on_the_first_request_are_retried(cached: CachedClosure, tmp_path: Path) -> None:
    cache = cached.caches["zstd"]
    faults = {"/nix-cache-info": "503"}
    for name in ("app", "data", "sh"):
        ni = narinfo_of(cache, cached.paths[name])
        faults[f"/{ni.name}"] = "503"
        faults["/" + field(ni, "URL")] = "cut"
    with StaticServer(cache, faults) as srv:
        d = build_digest(cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
                         "--from-cache", srv.url, "--trusted-public-key", cached.public_key)  # fmt: skip
        assert d == cached.local_digest
        for path in faults:
            assert srv.requests.count(path) == 2, (path, srv.requests)


def test_image_from_cache_runs_under_runc(cached: CachedClosure, tmp_path: Path) -> None:
    layout = tmp_path / "img"
    build_digest(cached.paths["app"], "-o", f"oci:{layout}:t", "--cache-dir", fresh(tmp_path),
                 "--from-cache", f"file://{cached.caches['zstd']}", "--trusted-public-key", cached.public_key,
                 "--entrypoint", json.dumps([cached.paths["app"] + "/bin/hello"]))  # fmt: skip
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)  # fmt: skip
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = False
    cfg_path.write_text(json.dumps(cfg))
    cid = f"nixfly-test-{uuid.uuid4().hex[:10]}"
    try:
        r = subprocess.run(["runc", "run", "-b", str(bundle), cid], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert r.returncode == 0, r.stderr
    marker = cached.paths["app"].rsplit("-", 1)[-1]
    assert r.stdout == f"hello from the cache {marker}\n{marker}\n"


def test_installable_is_evaluated_for_its_system_not_built(cached: CachedClosure, tmp_path: Path) -> None:
    flake = tmp_path / "flake"
    flake.mkdir()
    make_busybox_dir(flake)
    shutil.copy(BINCACHE_NIX, flake / "bincache.nix")
    marker = cached.paths["app"].rsplit("-", 1)[-1]
    (flake / "flake.nix").write_text(
        "{ outputs = { self }: { packages.x86_64-linux = import ./bincache.nix "
        f'{{ bbdir = ./bb; marker = "{marker}"; system = "x86_64-linux"; }}; }}; }}\n'
    )
    installable = f"path:{flake}#packages.x86_64-linux.app"
    url = f"file://{cached.caches['xz']}"
    d = build_digest(installable, "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
                     "--from-cache", url, "--trusted-public-key", cached.public_key)  # fmt: skip
    assert d == cached.local_digest
    assert not os.path.lexists(cached.paths["app"])  # evaluated only: nothing was built or substituted


def test_nar_listings_are_used_when_the_cache_has_them(cached: CachedClosure, tmp_path: Path) -> None:
    # nix copy ...?write-nar-listing=true writes <hash>.ls (cache.nixos.org has them). A first build lists
    # the NARs as their layers stream; a build whose layers are cached but whose listings are not (here:
    # removed) takes the dependencies' listings from the .ls files and fetches no NAR.
    cache = tmp_path / "ls-cache"
    shutil.copytree(cached.caches["xz"], cache)
    bc = BinaryCache(f"file://{cache}")
    for name in ("data", "sh"):
        ni = bc.narinfo(cached.paths[name])
        assert ni is not None
        # A listing in Nix's .ls shape, derived here from the NAR the cache holds.
        listing = _ls_of(cached.paths[name], cache / ni.url)
        (cache / (cached.paths[name].rsplit("/", 1)[-1].split("-", 1)[0] + ".ls")).write_text(json.dumps(listing))
    layer_cache = fresh(tmp_path)
    with StaticServer(cache) as srv:
        args = [cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", layer_cache,
                "--from-cache", srv.url, "--trusted-public-key", cached.public_key]  # fmt: skip
        assert build_digest(*args) == cached.local_digest
        assert not any(r.endswith(".ls") for r in srv.requests)  # listed while the layers streamed
        shutil.rmtree(Path(layer_cache) / "listings")
        before = len(srv.requests)
        assert build_digest(*args) == cached.local_digest
        again = srv.requests[before:]
    ls = {n: "/" + cached.paths[n].rsplit("/", 1)[-1].split("-", 1)[0] + ".ls" for n in ("data", "sh")}
    asked = [r for r in again if r.endswith(".ls")]
    # The CA search stops at data (it has the bundle); never the root's: its bin/ heads need the NAR.
    assert ls["data"] in asked and set(asked) <= set(ls.values())
    app_nar = "/" + field(narinfo_of(cache, cached.paths["app"]), "URL")
    assert [r for r in again if r.startswith("/nar/")] == [app_nar]


def _ls_of(path: str, nar_file: Path) -> dict[str, object]:
    root: dict[str, object] = {}
    nodes: dict[bytes, dict[str, object]] = {}
    name = path.strip("/").encode()
    with lzma.open(nar_file) as f:
        for e in NarReader(f, path).entries(name):
            kind = {b"0": "regular", b"2": "symlink", b"5": "directory"}[e.type]
            node: dict[str, object] = {"type": kind}
            if kind == "regular":
                node["size"] = e.size
                if e.mode & 0o111:
                    node["executable"] = True
            elif kind == "symlink":
                node["target"] = e.target.decode()
            else:
                node["entries"] = {}
            nodes[e.name] = node
            if e.name == name:
                root = node
            else:
                parent, _, child = e.name.rpartition(b"/")
                nodes[parent]["entries"][child.decode()] = node  # type: ignore[index]
    return {"version": 1, "root": root}


def copy_cache(cached: CachedClosure, compression: str, dest: Path) -> Path:
    shutil.copytree(cached.caches[compression], dest)
    return dest


def narinfo_of(cache: Path, path: str) -> Path:
    return cache / (path.rsplit("/", 1)[-1].split("-", 1)[0] + ".narinfo")


def field(narinfo: Path, key: str) -> str:
    return next(ln.split(": ", 1)[1] for ln in narinfo.read_text().splitlines() if ln.startswith(key + ": "))


def test_corrupted_nar_is_a_hash_error_and_writes_nothing(cached: CachedClosure, tmp_path: Path) -> None:
    cache = copy_cache(cached, "xz", tmp_path / "c")
    nar = cache / field(narinfo_of(cache, cached.paths["data"]), "URL")
    data = bytearray(nar.read_bytes())
    data[len(data) // 2] ^= 0x55
    os.chmod(nar, 0o644)
    nar.write_bytes(bytes(data))
    out = tmp_path / "img"
    r = nixfly("build", cached.paths["app"], "-o", f"oci:{out}:t", "--cache-dir", fresh(tmp_path),
               "--from-cache", f"file://{cache}", "--trusted-public-key", cached.public_key)  # fmt: skip
    line = one_line_error(r)
    assert cached.paths["data"] in line and ("corrupt" in line or "FileHash" in line), line
    assert not out.exists()


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_truncated_nar_is_refused(cached: CachedClosure, compression: str, tmp_path: Path) -> None:
    cache = copy_cache(cached, compression, tmp_path / "c")
    nar = cache / field(narinfo_of(cache, cached.paths["sh"]), "URL")
    data = nar.read_bytes()
    os.chmod(nar, 0o644)
    nar.write_bytes(data[: len(data) * 2 // 3])
    r = nixfly("build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
               "--from-cache", f"file://{cache}", "--trusted-public-key", cached.public_key)  # fmt: skip
    line = one_line_error(r)
    assert cached.paths["sh"] in line and ("truncated" in line or "FileSize" in line), line
    assert not (tmp_path / "img").exists()


def test_nar_that_differs_from_its_nar_hash_is_refused(cached: CachedClosure, tmp_path: Path) -> None:
    # An uncompressed NAR with one byte of a file changed (same length), FileHash/FileSize dropped: the
    # narinfo (and its signature) still claim the old NarHash.
    cache = copy_cache(cached, "none", tmp_path / "c")
    ni = narinfo_of(cache, cached.paths["data"])
    nar = cache / field(ni, "URL")
    marker = cached.paths["data"].rsplit("-", 1)[-1].encode()
    data = nar.read_bytes()
    assert marker + b"\n" in data
    os.chmod(nar, 0o644)
    nar.write_bytes(data.replace(marker + b"\n", marker[:-1] + b"Z\n", 1))
    os.chmod(ni, 0o644)
    kept = [ln for ln in ni.read_text().splitlines() if not ln.startswith(("FileHash", "FileSize"))]
    ni.write_text("".join(ln + "\n" for ln in kept))
    r = nixfly("build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
               "--from-cache", f"file://{cache}", "--trusted-public-key", cached.public_key)  # fmt: skip
    line = one_line_error(r)
    assert "NAR hash mismatch" in line and cached.paths["data"] in line
    assert not (tmp_path / "img").exists()


def test_signatures_wrong_key_tampered_and_missing_are_refused_no_verify_accepts(
    cached: CachedClosure, tmp_path: Path
) -> None:
    _sk, other = make_key(tmp_path, "someone-else-1")
    url = f"file://{cached.caches['xz']}"
    base = [cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t"]
    r = nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", url, "--trusted-public-key", other)
    line = one_line_error(r)
    assert "no valid signature" in line and "keys tried: someone-else-1" in line and "signed by: nixfly-test-1" in line
    assert cached.paths["app"] in line
    # A signature by the right key name that does not verify (the narinfo's NarSize changed).
    cache = copy_cache(cached, "xz", tmp_path / "c")
    ni = narinfo_of(cache, cached.paths["sh"])
    os.chmod(ni, 0o644)
    size = field(ni, "NarSize")
    ni.write_text(ni.read_text().replace(f"NarSize: {size}", f"NarSize: {int(size) + 8}"))
    r = nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{cache}",
               "--trusted-public-key", cached.public_key)  # fmt: skip
    assert cached.paths["sh"] in one_line_error(r)
    # No signature at all.
    ni.write_text("".join(ln + "\n" for ln in ni.read_text().splitlines() if not ln.startswith("Sig:")))
    r = nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{cache}",
               "--trusted-public-key", cached.public_key)  # fmt: skip
    assert "signed by: nobody (unsigned)" in one_line_error(r)
    # --no-verify accepts the untampered cache with an unknown signer (hashes are still checked).
    d = build_digest(*base, "--cache-dir", fresh(tmp_path), "--from-cache", url, "--no-verify")
    assert d == cached.local_digest
    # A cache whose copy is unsigned comes first: the path is taken from the next cache that has it signed.
    unsigned = copy_cache(cached, "zstd", tmp_path / "unsigned")
    for f in unsigned.glob("*.narinfo"):
        os.chmod(f, 0o644)
        f.write_text("".join(ln + "\n" for ln in f.read_text().splitlines() if not ln.startswith("Sig:")))
    d = build_digest(*base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{unsigned},{url}",
                     "--trusted-public-key", cached.public_key)  # fmt: skip
    assert d == cached.local_digest
    # No --trusted-public-key and nothing in nix.conf: refused too.
    r = nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", url)
    assert "keys tried: none" in one_line_error(r)


def test_keys_and_substituters_from_nixfly_toml(cached: CachedClosure, tmp_path: Path) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(
        "[image]\n"
        f'roots = ["{cached.paths["app"]}"]\n'
        f'substituters = ["file://{cached.caches["zstd"]}"]\n'
        f'trusted_public_keys = ["{cached.public_key}"]\n'
    )
    d = build_digest("--config", str(cfg), "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path))
    assert d == cached.local_digest
    # --from-cache alone: nix.conf's substituters and trusted-public-keys (here through NIX_CONFIG).
    conf = nix_env()["NIX_CONFIG"].replace("substituters =", f"substituters = file://{cached.caches['xz']}")
    conf += f"\ntrusted-public-keys = {cached.public_key}\n"
    r = nixfly("build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img2'}:t", "--cache-dir", fresh(tmp_path),
               "--from-cache", "-q", env={"NIX_CONFIG": conf})  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.strip() == cached.local_digest


def test_path_in_no_cache_names_it_and_the_caches(cached: CachedClosure, tmp_path: Path) -> None:
    missing = "/nix/store/" + "0" * 32 + "-not-anywhere-1.0"
    with StaticServer(cached.caches["zstd"]) as srv:
        r = nixfly("build", missing, "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", fresh(tmp_path),
                   "--from-cache", f"{srv.url},file://{cached.caches['xz']}", "--no-verify")  # fmt: skip
    line = one_line_error(r)
    assert f"{missing} is in no binary cache (tried: {srv.url}, file://{cached.caches['xz']})" in line
    assert "push it from CI" in line and "build it" in line


def test_malformed_narinfo_store_dir_mismatch_and_unreachable_cache(cached: CachedClosure, tmp_path: Path) -> None:
    cache = copy_cache(cached, "xz", tmp_path / "c")
    ni = narinfo_of(cache, cached.paths["data"])
    os.chmod(ni, 0o644)
    ni.write_text("StorePath: " + cached.paths["data"] + "\nthis is not a narinfo\n")
    base = [cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--no-verify"]
    line = one_line_error(nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{cache}"))
    assert "malformed narinfo" in line and ni.name in line
    info = cache / "nix-cache-info"
    os.chmod(info, 0o644)
    info.write_text("StoreDir: /gnu/store\nWantMassQuery: 1\n")
    line = one_line_error(nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{cache}"))
    assert "StoreDir /gnu/store, not /nix/store" in line
    srv = StaticServer(cached.caches["xz"])  # bound, then closed: nothing listens on its port
    srv.httpd.server_close()
    line = one_line_error(nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", srv.url))
    assert "unreachable" in line and srv.url in line
    line = one_line_error(nixfly("build", *base, "--cache-dir", fresh(tmp_path), "--from-cache", "s3://bucket"))
    assert "s3:// caches are not supported yet" in line
    assert not (tmp_path / "img").exists()


def test_mixed_closure_reads_local_paths_and_fetches_only_missing(
    tmp_path: Path, nix_available: None
) -> None:
    paths = build_unique(tmp_path, new_marker())
    sk, pk = make_key(tmp_path, "mixed-1")
    nix("nix", "store", "sign", "-k", str(sk), "-r", paths["app"])
    cache = copy_to_cache(tmp_path / "cache", "zstd", paths["app"])
    local = build_digest(paths["app"], "-o", f"oci:{tmp_path / 'a'}:t", "--cache-dir", fresh(tmp_path))
    # With everything local, --from-cache changes nothing and fetches nothing.
    with StaticServer(cache) as srv:
        same = build_digest(paths["app"], "-o", f"oci:{tmp_path / 'b'}:t", "--cache-dir", fresh(tmp_path),
                            "--from-cache", srv.url, "--trusted-public-key", pk)  # fmt: skip
        assert same == local and srv.requests == []
        delete_paths(paths["app"])
        mixed = build_digest(paths["app"], "-o", f"oci:{tmp_path / 'c'}:t", "--cache-dir", fresh(tmp_path),
                             "--from-cache", srv.url, "--trusted-public-key", pk)  # fmt: skip
        assert mixed == local
        app_hash = paths["app"].rsplit("/", 1)[-1].split("-", 1)[0]
        narinfos = sorted(r for r in srv.requests if r.endswith(".narinfo"))
        assert narinfos == [f"/{app_hash}.narinfo"]  # data and sh were read from disk
    delete_paths(paths["data"], paths["sh"])


MACHO_ARM64 = bytes.fromhex("cffaedfe0c000001") + bytes(56)
ELF_AARCH64 = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\xb7\x00" + bytes(44)


@pytest.mark.parametrize(
    ("head", "what"), [(MACHO_ARM64, "a Mach-O arm64"), (ELF_AARCH64, "an ELF arm64")], ids=["macho", "elf-aarch64"]
)
def test_platform_guard_refuses_foreign_executables_in_a_root(
    head: bytes, what: str, tmp_path: Path, nix_available: None
) -> None:
    src = tmp_path / f"foreign-{new_marker()}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(head)
    os.chmod(src / "bin" / "app", 0o755)
    root = nix("nix-store", "--add", str(src)).strip()
    base = ["-o", f"oci:{tmp_path / 'img'}:t", "--platform", "linux/amd64"]
    line = one_line_error(nixfly("build", root, *base, "--cache-dir", fresh(tmp_path)))
    assert f"{root}/bin/app is {what} executable; this image is linux/amd64" in line
    assert "x86_64-linux" in line
    assert not (tmp_path / "img").exists()
    assert build_digest(root, *base, "--cache-dir", fresh(tmp_path), "--no-platform-check").startswith("sha256:")
    # The same guard on a root that only a binary cache has (its NAR read, not unpacked).
    cache = copy_to_cache(tmp_path / "cache", "xz", root)
    delete_paths(root)
    r = nixfly("build", root, *base, "--cache-dir", fresh(tmp_path), "--from-cache", f"file://{cache}", "--no-verify")
    assert f"{root}/bin/app is {what} executable" in one_line_error(r)


# ---------------------------------------------------------------------------------------------------
# hostile caches: bounded downloads, a full disk, a killed download


def _drop_field(narinfo: Path, key: str) -> None:
    """Remove an unsigned narinfo field (FileSize, FileHash): the signature still verifies."""
    os.chmod(narinfo, 0o644)
    narinfo.write_text("".join(ln + "\n" for ln in narinfo.read_text().splitlines() if not ln.startswith(key + ": ")))


def test_endless_nar_without_file_size_stops_at_what_its_nar_size_allows(
    cached: CachedClosure, tmp_path: Path
) -> None:
    cache = copy_cache(cached, "xz", tmp_path / "c")
    ni = narinfo_of(cache, cached.paths["sh"])
    nar_size = int(field(ni, "NarSize"))
    _drop_field(ni, "FileSize")
    cache_dir = Path(fresh(tmp_path))
    with StaticServer(cache, {"/" + field(ni, "URL"): "endless"}) as srv:
        r = run_measured("build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir",
                         str(cache_dir), "--from-cache", srv.url, "--trusted-public-key", cached.public_key,
                         env=nix_env(), file_size_mb=256)  # fmt: skip
        sent = srv.sent
    assert r.code not in (0, 70), r.err
    line = one_line_error(Result(r.code, r.out, r.err))
    assert cached.paths["sh"] in line and f"any xz compression of its {nar_size}-byte NAR" in line, line
    # It stopped right after the bound (plus what sat in the sockets' buffers), and left nothing behind.
    assert sent < nar_size + (64 << 20), sent
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not (tmp_path / "img").exists()


def test_a_full_disk_during_a_download_is_one_line(cached: CachedClosure, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to mount a small tmpfs in a private mount namespace")
    cache_dir = tmp_path / "small"
    cache_dir.mkdir()
    with StaticServer(cached.caches["none"]) as srv:  # uncompressed: the NAR of sh alone is > 256 KiB
        r = run_measured("build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir",
                         str(cache_dir), "--from-cache", srv.url, "--trusted-public-key", cached.public_key,
                         env=nix_env(), prefix=("unshare", "-m", "sh", "-c",
                         f'mount -t tmpfs -o size=256k nixfly-test "{cache_dir}" && exec "$0" "$@"'))  # fmt: skip
    line = one_line_error(Result(r.code, r.out, r.err))
    assert r.code != 70 and "No space left on device" in line and "cannot store the download" in line, line


def test_a_download_killed_mid_way_is_swept_by_the_next_build(cached: CachedClosure, tmp_path: Path) -> None:
    cache = cached.caches["none"]
    cache_dir = Path(fresh(tmp_path))
    nar_url = "/" + field(narinfo_of(cache, cached.paths["sh"]), "URL")
    with StaticServer(cache, {nar_url: "stall"}) as srv:
        proc = subprocess.Popen(
            [*NIXFLY, "build", cached.paths["app"], "-o", f"oci:{tmp_path / 'img'}:t", "--cache-dir", str(cache_dir),
             "--from-cache", srv.url, "--trusted-public-key", cached.public_key],
            env={**os.environ, **nix_env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_path(lambda: any(f.stat().st_size > 0 for f in (cache_dir / "tmp").glob("nars.*/*")))
        finally:
            proc.kill()
            proc.wait()
        left = list((cache_dir / "tmp").glob("nars.*"))
        assert left and tree_size(cache_dir / "tmp") > 0  # what a kill -9 leaves
    # The next build (here from the file:// cache, which downloads nothing) removes the dead one's downloads.
    d = build_digest(cached.paths["app"], "-o", f"oci:{tmp_path / 'img2'}:t", "--cache-dir", str(cache_dir),
                     "--from-cache", f"file://{cache}", "--trusted-public-key", cached.public_key)  # fmt: skip
    assert d == cached.local_digest
    assert not any(p.exists() for p in left)
