#!/usr/bin/env python3
"""Building from a binary cache vs from the local store vs the decompression floor (issue 12).

    .venv/bin/python bench/bincache.py [--scale 1] [--runs 3] [--quick]

On the bench closure (bench/gen_closure.py), for compression in xz and zstd:
  - a file:// binary cache made once by real Nix (`nix copy --to file://DIR?compression=C`), kept under
    /var/tmp/nixfly-bench-bincache so later runs reuse it;
  - nixfly from the cache: `nixfly build ROOT --from-cache file://DIR --ignore-local-store --no-verify`
    (every NAR streamed through the decompressor, the NAR parser and the tar writer; the bench paths are
    shared, so they are not signed: signature checks cost microseconds per path);
  - nixfly from the local store: the same command without --from-cache;
  - the floor: `xz -dc NAR | sha256sum` (or `zstd -dc`) over the same NAR files, `xargs -P <cores>`
    (nixfly's layer parallelism) — what reading the NARs costs at the least, with no tar, no gzip;
  - peak RSS of each (GNU time, as bench/run.py measures).
Each build uses a fresh layer cache (gzip layers, nixfly's defaults). Table and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, JOBS, Sample, base_env, gen_closure, measure, nixfly, snapshot_source

CACHE_ROOT = Path("/var/tmp/nixfly-bench-bincache")


def nix_env() -> dict[str, str]:
    return base_env()


def make_cache(root: str, compression: str, level: int | None) -> tuple[Path, float | None]:
    """A file:// cache of root's closure (made once; its narinfos name the closure)."""
    tag = f"-l{level}" if level is not None else ""
    dest = CACHE_ROOT / f"{root.rsplit('/', 1)[-1][:32]}-{compression}{tag}"
    done = dest / ".complete"
    if done.exists():
        return dest, None
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    url = f"file://{dest}?compression={compression}&parallel-compression=true"
    if level is not None:
        url += f"&compression-level={level}"
    subprocess.run(["nix", "copy", "--to", url, root], check=True, env=nix_env(), capture_output=True)
    done.write_text("")
    return dest, time.perf_counter() - t0


def nar_files(cache: Path, closure: list[str]) -> list[Path]:
    out = []
    for p in closure:
        ni = cache / (p.rsplit("/", 1)[-1].split("-", 1)[0] + ".narinfo")
        url = next(ln.split(": ", 1)[1] for ln in ni.read_text().splitlines() if ln.startswith("URL: "))
        out.append(cache / url)
    return out


def floor(files: list[Path], compression: str, work: Path) -> Sample:
    tool = {"xz": "xz -dc", "zstd": "zstd -dcq"}[compression]
    listing = work / f"floor-{compression}.txt"
    listing.write_text("\n".join(str(f) for f in sorted(files, key=lambda f: -f.stat().st_size)) + "\n")
    script = f"xargs -P {JOBS} -I{{}} sh -c '{tool} \"$1\" | sha256sum > /dev/null' _ {{}} < {listing}"
    return measure(["sh", "-c", script])


def build(root: str, work: Path, env: dict[str, str], *extra: str) -> Sample:
    out = Path(tempfile.mkdtemp(prefix="out.", dir=work)) / "layout"
    cache = Path(tempfile.mkdtemp(prefix="cache.", dir=work))
    try:
        s = measure([*nixfly("build", root, "-o", f"oci:{out}:t", "--cache-dir", str(cache), "-q", *extra)], env=env)
        s.extra["digest"] = s.stdout.strip()
        return s
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def summary(samples: list[Sample]) -> dict[str, Any]:
    walls = [s.wall for s in samples]
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "cpu_s": statistics.median(s.extra.get("cpu_s", 0.0) for s in samples),
        "peak_rss_mb": max(s.maxrss_mb for s in samples),
        "walls": walls,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="bench closure scale (1 = 1.1 GiB NAR)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a small closure, one run (a smoke test)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--xz-level", type=int, help="xz preset for the cache (default: Nix's, 6); decompression "
                    "speed hardly depends on it, making the cache does")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.scale, args.runs = 0.03, 1
    work = Path(tempfile.mkdtemp(prefix="nixfly-bincache-bench.", dir="/var/tmp"))
    try:
        facts = snapshot_source(work / "src")
        env = base_env(work / "src")
        info = gen_closure(args.scale, 1)
        closure = subprocess.run(["nix-store", "-qR", info.root], capture_output=True, text=True, check=True,
                                 env=nix_env()).stdout.split()  # fmt: skip
        facts.update({"root": info.root, "paths": str(info.paths), "nar_bytes": str(info.nar_bytes),
                      "scale": str(args.scale), "runs": str(args.runs), "jobs": str(JOBS),
                      "xz_level": str(args.xz_level or "nix default (6)")})  # fmt: skip
        caches: dict[str, Path] = {}
        for comp in ("xz", "zstd"):
            caches[comp], took = make_cache(info.root, comp, args.xz_level if comp == "xz" else None)
            files = nar_files(caches[comp], closure)
            facts[f"{comp}_cache_bytes"] = str(sum(f.stat().st_size for f in files))
            if took is not None:
                facts[f"{comp}_cache_made_s"] = f"{took:.1f}"
        results: dict[str, list[Sample]] = {}
        for _run in range(args.runs):
            results.setdefault("local store", []).append(build(info.root, work, env))
            for comp in ("xz", "zstd"):
                results.setdefault(f"from file:// cache ({comp})", []).append(
                    build(info.root, work, env, "--from-cache", f"file://{caches[comp]}",
                          "--ignore-local-store", "--no-verify")
                )
                results.setdefault(f"floor: {comp} -dc → sha256sum", []).append(
                    floor(nar_files(caches[comp], closure), comp, work)
                )
        digests = {s.extra["digest"] for k, v in results.items() if not k.startswith("floor") for s in v}
        facts["identical_manifest_digests"] = "yes" if len(digests) == 1 else f"no: {sorted(digests)}"
        table = {k: summary(v) for k, v in results.items()}
        rows = []
        for k, v in table.items():
            ratio = ""
            for comp in ("xz", "zstd"):
                if k == f"from file:// cache ({comp})":
                    f = table[f"floor: {comp} -dc → sha256sum"]["median_s"]
                    loc = table["local store"]["median_s"]
                    ratio = f"{v['median_s'] / f:.2f}× floor, {v['median_s'] / loc:.2f}× local"
            rows.append(
                f"| {k} | {v['median_s']:.2f} s ({v['min_s']:.2f}–{v['max_s']:.2f}) | {v['cpu_s']:.1f} s "
                f"| {v['peak_rss_mb']:.0f} MB | {ratio} |"
            )
        mib = {c: int(facts[f"{c}_cache_bytes"]) / 2**20 for c in ("xz", "zstd")}
        lines = [
            f"closure: {info.paths} paths, {info.nar_bytes / 2**30:.2f} GiB NAR; xz cache "
            f"{mib['xz']:.0f} MiB, zstd cache {mib['zstd']:.0f} MiB;"
            f" {args.runs} runs, median (min–max); {JOBS} cores; same manifest digest: "
            f"{facts['identical_manifest_digests']}",
            "",
            "| subject | wall | CPU | peak RSS | ratio |",
            "|---|---|---|---|---|",
            *rows,
        ]
        print("\n".join(lines))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = args.json or HERE / "results" / f"bincache-{'quick-' if args.quick else ''}{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"facts": facts, "results": table, "table": lines}, indent=2))
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
