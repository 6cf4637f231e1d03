#!/usr/bin/env python3
"""Closure diff speed and memory (issue 24): `nixfly diff` of two 2,000-path closures.

    .venv/bin/python bench/diff.py [--paths 2000] [--runs 3] [--json out.json]

Two images of synthetic closures are written as OCI layouts (no Nix needed: the store paths are trees
of real-looking names, sizes and kinds; 20 store paths per layer, gzip), each with the SPDX SBOM nixfly
attaches (rendered by spdx-tools from the same model a build uses). NEW differs from OLD the way a
channel bump does: 5 % of the packages change version (and so do everything that depends on them: here
another 5 % rebuilt with the same version), 1 % removed, 1 % added. Each OLD/NEW pair is also pushed
to a real local registry (docker-registry), which has no referrers API: the SBOM is found through the
tag schema.

Each scenario runs the real CLI as a fresh process (`nixfly diff --json`), --runs times; the table shows
the median wall time (start-up included) and the peak RSS of the process (ru_maxrss of the child).
Targets (from the issue): under 2 s and under 100 MB for the SBOM paths. The layer-reading rows (every
layer of both images downloaded and read as a stream, shared layers once) are shown for scale. Every
scenario must report the same package changes (checked). JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE = "/nix/store"
PER_LAYER = 20
WORDS = ("ssl", "z", "ffi", "xml2", "curl", "idn", "unistring", "gmp", "mpfr", "pcre", "sqlite", "bz", "lzma",
         "zstd", "uv", "event", "yaml", "png", "jpeg", "tiff", "webp", "freetype", "harfbuzz", "glib", "cairo",
         "pango", "icu", "boost", "protobuf", "grpc", "krb5", "ldap", "sasl", "pam", "cap", "seccomp", "acl",
         "attr", "selinux", "systemd", "dbus", "expat", "readline", "ncurses", "gdbm", "db", "nghttp2", "brotli",
         "python3", "perl", "ruby", "node", "go", "rust", "openjdk", "gcclibs", "glibc", "bash",
         "coreutils")  # fmt: skip


def _hash(rng: random.Random) -> str:
    return "".join(rng.choice(NIX32) for _ in range(32))


def closure_pair(n: int, seed: int = 24) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Two closures: store path → {name, version, files: [(rel, size, exec)]}, as described above."""
    rng = random.Random(seed)
    old: dict[str, dict[str, Any]] = {}
    for i in range(n):
        name = f"{rng.choice(WORDS)}{'' if i < len(WORDS) else i}"  # parseDrvName: "ssl-60-1.0" is ssl 60-1.0
        version = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"
        files = [(f"lib/lib{name}.so.{k}", int(rng.paretovariate(1.2) * 2000), False) for k in range(rng.randint(1, 5))]
        files += [(f"bin/{name}", rng.randint(2000, 60000), True)] if rng.random() < 0.3 else []
        files += [(f"share/doc/{name}/README", rng.randint(100, 4000), False)]
        old[f"{STORE}/{_hash(rng)}-{name}-{version}"] = {"name": name, "version": version, "files": files}
    new = dict(old)
    paths = sorted(old)
    rng.shuffle(paths)
    k = n // 20
    for p in paths[:k]:  # version bumps
        info = old[p]
        version = info["version"] + ".1"
        files = [(rel, size + rng.randint(-200, 400) if size > 400 else size, ex) for rel, size, ex in info["files"]]
        del new[p]
        new[f"{STORE}/{_hash(rng)}-{info['name']}-{version}"] = {**info, "version": version, "files": files}
    for p in paths[k : 2 * k]:  # rebuilt: same name and version, other inputs
        del new[p]
        new[f"{STORE}/{_hash(rng)}-{old[p]['name']}-{old[p]['version']}"] = old[p]
    for p in paths[2 * k : 2 * k + n // 100]:  # removed
        del new[p]
    for i in range(n // 100):  # added
        new[f"{STORE}/{_hash(rng)}-added{i}-1.0"] = {"name": f"added{i}", "version": "1.0",
                                                      "files": [(f"lib/libadded{i}.so", 5000 + i, False)]}  # fmt: skip
    return old, new


def nar_size(files: list[tuple[str, int, bool]]) -> int:
    from nixfly.diff.layers import _DIR, StoreTree, file_cost

    tree = StoreTree()
    nodes = {"": _DIR}
    for rel, size, ex in files:
        nodes[rel] = file_cost(size, ex)
    tree.nodes["x"] = nodes
    return tree.nar_sizes()["x"]


def write_image(closure: dict[str, dict[str, Any]], layout: Path, cache: dict[str, Any], work: Path) -> str:
    """An OCI layout of the closure (20 store paths per layer, in path order) with its SPDX SBOM attached."""
    import gzip
    import hashlib
    import io
    import tarfile

    from nixfly.image import Descriptor, Image, canonical_json
    from nixfly.image.model import BlobLayer
    from nixfly.sbom import Package, Sbom, render, subject_of
    from nixfly.sinks import publish
    from nixfly.sinks.referrers import CREATED, Artifact, attach_to_layout
    from nixfly.transports import LayoutLocation

    paths = sorted(closure, key=lambda p: (closure[p]["name"], p))
    layers = []
    for i in range(0, len(paths), PER_LAYER):
        group = tuple(paths[i : i + PER_LAYER])
        lyr = cache.get(group)
        if lyr is None:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for p in group:
                    dirs = {p.lstrip("/")}
                    for rel, _s, _e in closure[p]["files"]:
                        parts = rel.split("/")[:-1]
                        dirs.update(p.lstrip("/") + "/" + "/".join(parts[: j + 1]) for j in range(len(parts)))
                    for d in sorted(dirs):
                        ti = tarfile.TarInfo(d)
                        ti.type, ti.mode = tarfile.DIRTYPE, 0o555
                        tf.addfile(ti)
                    for rel, size, ex in closure[p]["files"]:
                        ti = tarfile.TarInfo(f"{p.lstrip('/')}/{rel}")
                        ti.size, ti.mode = size, 0o555 if ex else 0o444
                        tf.addfile(ti, io.BytesIO(hashlib.shake_128(f"{p}/{rel}".encode()).digest(size)))
            plain = buf.getvalue()
            gz = gzip.compress(plain, compresslevel=1, mtime=0)
            digest = "sha256:" + hashlib.sha256(gz).hexdigest()
            blob = work / digest.split(":")[1]
            blob.write_bytes(gz)
            lyr = cache[group] = BlobLayer(blob, digest, "sha256:" + hashlib.sha256(plain).hexdigest(), len(gz),
                                           "gzip", len(plain))  # fmt: skip
        layers.append(lyr)
    config = {"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:01Z",
              "config": {"Cmd": ["/bin/app"], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [lyr.diff_id for lyr in layers]}}  # fmt: skip
    image = Image(canonical_json(config), tuple(layers), "oci")
    publish(image, [LayoutLocation(layout, "x")])
    pkgs = tuple(
        Package(path=p, name=closure[p]["name"], version=closure[p]["version"],
                nar_hash=hashlib.sha256(p.encode()).hexdigest(), nar_size=nar_size(closure[p]["files"]), deriver=None,
                references=(), root=False)
        for p in sorted(closure)
    )  # fmt: skip
    subject = subject_of(image)
    sbom = Sbom(subject, "1970-01-01T00:00:01Z", pkgs)
    desc = Descriptor(subject.media_type, subject.digest, subject.size)
    attach_to_layout(layout, Artifact("application/spdx+json", render(sbom, "spdx"), desc, {CREATED: sbom.created}))
    return image.manifest_digest()


def _child_rss(args: list[str]) -> tuple[float, int, dict[str, Any]]:
    """Run via a tiny wrapper so that the peak RSS is the diff process's alone."""
    code = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],capture_output=True);w=time.perf_counter()-t;"
            "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
            "sys.stderr.buffer.write(p.stderr);sys.stdout.buffer.write(json.dumps({'wall':w,'rss':r*1024,"
            "'rc':p.returncode}).encode()+b'\\n'+p.stdout)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "nixfly", "diff", *args, "--json",
                           "--tls-verify=false"], capture_output=True, check=False)  # fmt: skip
    head, _, body = proc.stdout.partition(b"\n")
    meta = json.loads(head)
    if meta["rc"] != 0:
        raise SystemExit(f"nixfly diff {args} failed: {proc.stderr.decode()[-2000:]}")
    return float(meta["wall"]), int(meta["rss"]), json.loads(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from tests.support.registry import start_registry

    old, new = closure_pair(args.paths)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nixfly-bench-diff-") as tmp:
        work = Path(tmp)
        blobs = work / "blobs"
        blobs.mkdir()
        t0 = time.perf_counter()
        cache: dict[str, Any] = {}
        write_image(old, work / "old", cache, blobs)
        write_image(new, work / "new", cache, blobs)
        setup = time.perf_counter() - t0
        with start_registry(work / "registry") as reg:
            for name in ("old", "new"):
                subprocess.run([sys.executable, "-m", "nixfly", "push", f"oci:{work / name}:x",
                                f"docker://{reg.host}/bench:{name}", "--tls-verify=false", "-q"], check=True,
                               capture_output=True)  # fmt: skip
            scenarios = [
                ("SBOM, OCI layouts", [f"oci:{work / 'old'}:x", f"oci:{work / 'new'}:x"], True),
                ("SBOM, registry (tag schema)", [f"docker://{reg.host}/bench:old", f"docker://{reg.host}/bench:new"],
                 True),
                ("layers, OCI layouts", [f"oci:{work / 'old'}:x", f"oci:{work / 'new'}:x", "--from-layers"], False),
                ("layers, registry", [f"docker://{reg.host}/bench:old", f"docker://{reg.host}/bench:new",
                                      "--from-layers"], False),
            ]  # fmt: skip
            answers = []
            for label, argv, target in scenarios:
                runs = [_child_rss(argv) for _ in range(args.runs)]
                walls = [w for w, _r, _d in runs]
                rss = max(r for _w, r, _d in runs)
                d = runs[0][2]
                answers.append((d["packages"], d["closure"]))
                med = statistics.median(walls)
                rows.append({"scenario": label, "median": med, "min": min(walls), "max": max(walls), "peak_rss": rss,
                             "target": "< 2 s, < 100 MB" if target else "—",
                             "met": (med < 2.0 and rss < 100e6) if target else None,
                             "counts": d["counts"], "sources": [d["old"]["source"], d["new"]["source"]],
                             "layers": d["new"]["image"]["layers"],
                             "compressed": d["new"]["image"]["compressed_size"]})  # fmt: skip
    if any(a != answers[0] for a in answers):
        raise SystemExit("the scenarios disagree about the diff")
    c = rows[0]["counts"]
    print(f"nixfly diff of two {args.paths}-path closures ({c['changed']} changed, {c['rebuilt']} rebuilt, "
          f"{c['added']} added, {c['removed']} removed, {c['unchanged']} unchanged; {rows[0]['layers']} layers, "
          f"{rows[0]['compressed'] / 1e6:.0f} MB compressed per image), fresh process, "
          f"median of {args.runs}:")  # fmt: skip
    print("| scenario | wall (start-up included) | peak RSS | target | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        print(f"| {r['scenario']} | {r['median']:.2f} s ({r['min']:.2f}–{r['max']:.2f}) | "
              f"{r['peak_rss'] / 1e6:.0f} MB | {r['target']} | {met} |")  # fmt: skip
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    out = args.json or ROOT / "bench" / "results" / f"diff-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"paths": args.paths, "runs": args.runs, "setup_seconds": setup, "rows": rows,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_average": os.getloadavg()}}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
