"""The pipelines nixfly is compared against, run on exactly the layers nixfly planned.

- floor: one single-pass shell pipeline per layer (GNU tar → tee sha256sum → the compressor nixfly
  uses, at the same level → tee sha256sum → blob file), run with nixfly's parallelism via xargs -P.
- the usual pipeline: an uncompressed docker-archive of the same layers (what dockerTools makes),
  then ``skopeo copy docker-archive:… oci:…`` (skopeo compresses with its defaults).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

TAR_FLAGS = "--sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner"
# The same compressors at the same levels as nixfly's defaults: libdeflate level 2 (Debian libdeflate-tools;
# one gzip member per layer where nixfly writes 1 MiB members, < 0.1 % apart) and libzstd level 3.
COMPRESSORS = {"gzip": "libdeflate-gzip -2 -c", "zstd": "zstd -3 -c -q", "none": "cat"}

# One layer: $1 is a list file of store paths relative to / (one a line); outputs sit next to it. The
# two hashers read FIFOs fed by tee (like `tee >(sha256sum)`, but with PIDs we can wait for).
_LAYER_FN = f"""
layer() {{
  local o="${{1%.paths}}"
  rm -f "$o.f1" "$o.f2"; mkfifo "$o.f1" "$o.f2"
  $HASH < "$o.f1" > "$o.diffid" & local p1=$!
  $HASH < "$o.f2" > "$o.digest" & local p2=$!
  tar {TAR_FLAGS} -cf - -C / -T "$1" | tee "$o.f1" | $COMPRESS | tee "$o.f2" > "$o.blob"
  wait $p1 $p2
  rm -f "$o.f1" "$o.f2"
}}
"""

FLOOR_SCRIPT = (
    "set -euo pipefail\n"
    + _LAYER_FN
    + """export -f layer
export COMPRESS HASH
find "$1" -maxdepth 1 -name '*.paths' -print0 | sort -z \
  | xargs -0 -r -n 1 -P "$2" bash -c 'set -o pipefail; layer "$1"' _
"""
)


def write_plan(dest: Path, layers: Sequence[Sequence[str]]) -> None:
    """One `NNNN.paths` list per layer (store paths relative to /), in a fresh directory."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for i, paths in enumerate(layers):
        (dest / f"{i:04d}.paths").write_text("".join(p.lstrip("/") + "\n" for p in sorted(paths)))


# coreutils' sha256sum is the issue's floor; it hashes about 3-4x slower than OpenSSL (SHA-NI), which
# nixfly uses through hashlib, so the OpenSSL variant is the stricter floor.
HASHERS = {"sha256sum": "sha256sum", "openssl": "openssl dgst -sha256 -r"}


def floor_command(
    plan_dir: Path, jobs: int, compression: str, hasher: str = "sha256sum"
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, COMPRESS=COMPRESSORS[compression], HASH=HASHERS[hasher])
    return ["bash", "-c", FLOOR_SCRIPT, "floor", str(plan_dir), str(jobs)], env


def floor_results(plan_dir: Path) -> list[dict[str, object]]:
    """Per layer: digest, diff_id and blob size the floor produced (checks that every pipeline ran)."""
    out: list[dict[str, object]] = []
    for lst in sorted(plan_dir.glob("*.paths")):
        o = lst.with_suffix("")
        digest = (o.with_suffix(".digest")).read_text().split()[0]
        diff_id = (o.with_suffix(".diffid")).read_text().split()[0]
        out.append(
            {
                "digest": "sha256:" + digest,
                "diff_id": "sha256:" + diff_id,
                "size": o.with_suffix(".blob").stat().st_size,
            }
        )
    return out


def clear_floor_outputs(plan_dir: Path) -> None:
    for p in plan_dir.iterdir():
        if p.suffix in (".blob", ".digest", ".diffid"):
            p.unlink()


def tar_listing(blob: Path) -> list[tuple[str, str, int, int, str, str]]:
    """(name, type, mode, size, link target, content sha256) of each member of a gzip'd layer tar,
    without nixfly's ``nix`` and ``nix/store`` directory entries (GNU tar only adds what it is given)."""
    out: list[tuple[str, str, int, int, str, str]] = []
    with tarfile.open(blob, "r:gz") as tf:  # "r|gz" would stop after the first gzip member
        for m in tf:
            name = m.name.rstrip("/")
            if name in ("nix", "nix/store"):
                continue
            digest = ""
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                digest = h.hexdigest()
            out.append((name, m.type.decode(), m.mode & 0o7777, m.size, m.linkname, digest))
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_docker_archive(plan_dir: Path, archive: Path, jobs: int) -> None:
    """An uncompressed docker-archive (docker save format) of the planned layers, built with GNU tar."""
    work = archive.with_name(archive.name + ".d")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    lists = sorted(plan_dir.glob("*.paths"))
    script = (
        f'set -euo pipefail; n=$(basename "$1" .paths); mkdir -p "$2/$n"; '
        f'tar {TAR_FLAGS} -cf "$2/$n/layer.tar" -C / -T "$1"'
    )
    procs: list[subprocess.Popen[bytes]] = []
    failed: list[int] = []
    for lst in lists:
        while len(procs) >= jobs:
            p = procs.pop(0)
            if p.wait() != 0:  # every layer's exit status counts, not only the last few
                failed.append(p.returncode)
        procs.append(subprocess.Popen(["bash", "-c", script, "_", str(lst), str(work)]))
    failed += [p.returncode for p in procs if p.wait() != 0]
    if failed:
        raise RuntimeError(f"docker-archive: {len(failed)} layer tar(s) failed (exit {failed[0]})")
    names = [lst.stem for lst in lists]
    diff_ids = [_sha256_file(work / n / "layer.tar") for n in names]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "bench"} for _ in names],
    }
    cfg_bytes = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    (work / cfg_name).write_bytes(cfg_bytes)
    manifest = [{"Config": cfg_name, "RepoTags": ["bench:latest"], "Layers": [f"{n}/layer.tar" for n in names]}]
    (work / "manifest.json").write_text(json.dumps(manifest))
    subprocess.run(["tar", "-cf", str(archive), "-C", str(work), "."], check=True)
    shutil.rmtree(work)


def skopeo_archive_to_oci(archive: Path, dest: Path, compression: str) -> list[str]:
    cmd = ["skopeo", "copy", "--quiet", f"docker-archive:{archive}", f"oci:{dest}:bench"]
    if compression == "zstd":
        cmd[2:2] = ["--dest-compress-format", "zstd"]
    return cmd


def skopeo_push(layout: Path, tag: str, port: int, repo: str) -> list[str]:
    return [
        "skopeo",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci:{layout}:{tag}",
        f"docker://127.0.0.1:{port}/{repo}:latest",
    ]


def skopeo_archive_push(archive: Path, port: int, repo: str, tag: str = "latest") -> list[str]:
    """The usual pipeline's push: `skopeo copy docker-archive:… docker://…` (skopeo compresses the
    uncompressed layers with its default gzip while it uploads), with an empty blob-info cache."""
    cmd = [
        "skopeo",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"docker-archive:{archive}",
        f"docker://127.0.0.1:{port}/{repo}:{tag}",
    ]
    return fresh_blob_info_cache(cmd)


BLOB_INFO_CACHE = "/var/lib/containers/cache"  # where containers/image keeps it for root


def fresh_blob_info_cache(cmd: list[str]) -> list[str]:
    """cmd, run as on a fresh runner: skopeo remembers which compressed blob each uncompressed layer
    became (and where it pushed it) in a blob-info cache, and would skip compressing layers a registry
    already has from that memory alone. For root the cache sits in /var/lib/containers/cache: hide it
    behind a private tmpfs in a mount namespace of its own (the host's cache is untouched). Other
    users: XDG_DATA_HOME (see `fresh_blob_info_env`)."""
    if os.geteuid() != 0:
        return cmd
    script = f'mkdir -p {BLOB_INFO_CACHE} && mount -t tmpfs nixfly-bench {BLOB_INFO_CACHE} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def fresh_blob_info_env(tmp: Path) -> dict[str, str] | None:
    """The environment for `fresh_blob_info_cache` when not root (an empty XDG_DATA_HOME), else None."""
    if os.geteuid() == 0:
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, XDG_DATA_HOME=str(tmp))
