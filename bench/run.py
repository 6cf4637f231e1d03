#!/usr/bin/env python3
"""nixfly benchmarks: every scenario side by side with its baselines, in one run.

    .venv/bin/python bench/run.py [--quick] [--runs 3] [--json out.json] [--only build,rebuild,push,rss]

Scenarios (issue 6):
  1. cold build into an OCI layout (gzip, zstd) vs the floor (per-layer GNU tar | tee sha256sum |
     same compressor and level | tee sha256sum, nixfly's parallelism, nixfly's layer plan) and vs the
     usual pipeline (uncompressed docker-archive of the same layers, `skopeo copy docker-archive: oci:`);
  2. rebuild with nothing changed; rebuild after the leaf app changed (vs the floor on that path alone);
  3. push to a real local registry (cold, unchanged, after an app change): wall time and blob bytes
     uploaded (counted by a proxy in front of the registry) vs `skopeo copy oci: docker://`;
  4. peak RSS of cold builds of the 1x and 2x closures.

Each measurement is repeated --runs times (interleaved: nixfly, then its baselines, per run); the table
shows median and min-max, ratios of medians, and whether each target is met. JSON goes to
bench/results/ (or --json). Page cache is warm for every subject alike (no cache dropping: the
machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import baselines
from proxy import CountingProxy
from registry import Registry

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NIX_CONFIG = "build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes\nsubstituters ="
JOBS = os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------
# measuring one child process


@dataclass
class Sample:
    wall: float
    maxrss_mb: float
    rc: int
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")
    extra: dict[str, Any] = field(default_factory=dict)


def measure(cmd: Sequence[str], env: dict[str, str] | None = None, check: bool = True) -> Sample:
    """Run cmd under GNU time: wall time, CPU time, and peak RSS of it and its waited-for descendants.

    GNU time, not our own wait4: a child forked from this (large) Python process inherits our RSS high
    water mark at exec, which would make every child look as big as the harness."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as tf:
        t0 = time.perf_counter()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", tf.name, *cmd], stdout=out, stderr=err, env=env)
        rc = p.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        fields = Path(tf.name).read_text().strip().splitlines()[-1].split()
        s = Sample(wall, int(fields[0]) / 1024, rc, out.read().decode(errors="replace"), err.read().decode())
        s.extra["cpu_s"] = float(fields[1]) + float(fields[2])
    if check and s.rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {s.rc}):\n{s.stderr[-3000:]}")
    return s


def base_env(snapshot: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, NIX_CONFIG=NIX_CONFIG)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    if snapshot is not None:
        env["PYTHONPATH"] = str(snapshot)
    return env


def snapshot_source(dest: Path) -> dict[str, str]:
    """Copy src/nixfly to dest/nixfly and check it imports, so that edits others make to the shared
    working tree during a run neither break it nor change what is measured halfway. Retries for a
    while if the tree is mid-edit. Returns the git revision and the state of src/."""
    for attempt in range(10):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(REPO / "src" / "nixfly", dest / "nixfly", ignore=shutil.ignore_patterns("__pycache__"))
        # byte-compile up front, as an installed package is: no run pays for compiling the sources
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=False)
        probe = subprocess.run(
            [sys.executable, "-c", "import nixfly, nixfly.cli; print(nixfly.__file__)"],
            env=base_env(dest),
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip().startswith(str(dest)):
            break
        print(f"src/nixfly does not import yet (attempt {attempt + 1}); retrying in 15 s", file=sys.stderr)
        time.sleep(15)
    else:
        raise RuntimeError(f"src/nixfly does not import:\n{probe.stderr[-2000:]}")
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for f in sorted((dest / "nixfly").rglob("*.py")):
        h.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes())
    return {
        "git_head": head,
        "src_uncommitted_files": str(len(dirty.splitlines())),
        "snapshot_sha256": h.hexdigest()[:16],
    }


def nixfly(*args: str) -> list[str]:
    return [sys.executable, "-m", "nixfly", *args]


# ---------------------------------------------------------------------------------------------------
# closures


@dataclass(frozen=True)
class ClosureInfo:
    root: str
    paths: int
    nar_bytes: int
    scale: float
    app_version: int


def gen_closure(scale: float, app_version: int) -> ClosureInfo:
    res = subprocess.run(
        [
            sys.executable,
            str(HERE / "gen_closure.py"),
            "--scale",
            f"{scale:g}",
            "--app-version",
            str(app_version),
            "--info",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=base_env(),
    )
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return ClosureInfo(d["root"], d["paths"], d["nar_bytes"], d["scale"], d["app_version"])


# ---------------------------------------------------------------------------------------------------
# nixfly's layer plan, read from `nixfly build --json`


def _layers_of(obj: Any) -> list[dict[str, Any]]:
    if isinstance(obj, dict):
        for k in ("layers", "layer_plan", "plan"):
            if isinstance(obj.get(k), list):
                return [x for x in obj[k] if isinstance(x, dict)]
        for v in obj.values():
            found = _layers_of(v)
            if found:
                return found
    return []


def plan_from_build_json(text: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """(store paths per layer, raw layer objects) from nixfly build's JSON output."""
    obj = json.loads(text)
    layers = _layers_of(obj)
    plan: list[list[str]] = []
    for lyr in layers:
        paths = lyr.get("store_paths") or lyr.get("paths") or lyr.get("storePaths") or []
        plan.append([str(p) for p in paths])
    if not plan or not any(plan):
        raise RuntimeError("nixfly build --json did not list the store paths of its layers")
    return plan, layers


# ---------------------------------------------------------------------------------------------------
# results


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    def median(self, key: str = "wall") -> float:
        return statistics.median(self._vals(key))

    def _vals(self, key: str) -> list[float]:
        if key == "wall":
            return self.walls()
        if key == "cpu_s":
            return [float(s.extra["cpu_s"]) for s in self.samples]
        if key == "maxrss_mb":
            return [s.maxrss_mb for s in self.samples]
        return [float(s.extra[key]) for s in self.samples]

    def summary(self, key: str = "wall") -> dict[str, float]:
        v = self._vals(key)
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


@dataclass
class Row:
    scenario: str
    subject: str
    value: str  # median, formatted
    spread: str  # min-max, formatted
    vs: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


class Report:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.rows: list[Row] = []
        self.targets: dict[str, bool] = {}
        self.notes: list[str] = []
        self.facts: dict[str, Any] = {}

    def s(self, key: str) -> Series:
        return self.series.setdefault(key, Series())

    def add(self, key: str, sample: Sample) -> None:
        self.s(key).samples.append(sample)

    def time_row(
        self,
        scenario: str,
        subject: str,
        key: str,
        vs: str | None = None,
        target: str = "",
        limit: float | None = None,
        abs_limit: float | None = None,
    ) -> None:
        ser = self.series.get(key)
        if ser is None or not ser.samples:
            return
        sm = ser.summary()
        row = Row(scenario, subject, f"{sm['median']:.3f} s", f"{sm['min']:.3f}–{sm['max']:.3f}")
        ok: bool | None = None
        if vs is not None and self.series.get(vs) and self.series[vs].samples:
            ratio = sm["median"] / self.series[vs].median()
            row.vs, row.ratio = vs, f"{ratio:.2f}×"
            if limit is not None:
                ok = ratio <= limit
        if abs_limit is not None:
            ok = sm["median"] < abs_limit if ok is None else ok and sm["median"] < abs_limit
        if target:
            row.target = target
            row.met = "—" if ok is None else ("yes" if ok else "NO")
            if ok is not None:
                self.targets[f"{scenario}: {subject}: {target}"] = ok
        self.rows.append(row)

    def cpu_row(self, scenario: str, subject: str, key: str) -> None:
        ser = self.series.get(key)
        if ser is None or not ser.samples:
            return
        sm = ser.summary("cpu_s")
        self.rows.append(
            Row(scenario, f"{subject} CPU (user+sys)", f"{sm['median']:.2f} s", f"{sm['min']:.2f}–{sm['max']:.2f}")
        )

    def value_row(self, scenario: str, subject: str, value: str, target: str = "", ok: bool | None = None) -> None:
        row = Row(scenario, subject, value, "", target=target)
        if target:
            row.met = "—" if ok is None else ("yes" if ok else "NO")
            if ok is not None:
                self.targets[f"{scenario}: {subject}: {target}"] = ok
        self.rows.append(row)

    def table(self) -> str:
        heads = ["scenario", "subject", "median", "min–max", "vs", "ratio", "target", "met"]
        cells = [[r.scenario, r.subject, r.value, r.spread, r.vs, r.ratio, r.target, r.met] for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "series": {
                k: {
                    "wall": v.summary(),
                    "maxrss_mb": v.summary("maxrss_mb"),
                    "samples": [{"wall": s.wall, "maxrss_mb": s.maxrss_mb, **s.extra} for s in v.samples],
                }
                for k, v in self.series.items()
                if v.samples
            },
            "rows": [asdict(r) for r in self.rows],
            "targets": self.targets,
            "facts": self.facts,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Ctx:
    work: Path
    runs: int
    c1: ClosureInfo
    c2: ClosureInfo | None
    app_versions: list[ClosureInfo]  # one fresh app change per run
    report: Report
    env: dict[str, str]
    # filled by the cold gzip build: a warm cache and a layout holding tag v1
    warm_cache: Path | None = None
    layout: Path | None = None
    plan: list[list[str]] = field(default_factory=list)
    # the wire and fresh-runner scenarios: link rates (bytes/s; None: unshaped loopback), and nixfly's
    # layer plan per root (from its own --json), which the usual pipeline's archive is made of
    wire_rates: list[float] = field(default_factory=list)
    fresh_rates: list[float | None] = field(default_factory=list)
    plans: dict[str, list[list[str]]] = field(default_factory=dict)
    rtt: float = 0.0  # seconds added to every request on the shaped link (0: none)
    # pushcpu: the same measurements with nixfly at this git revision too, interleaved (``--baseline-rev``)
    baseline_env: dict[str, str] | None = None
    # the wire scenario's subjects: "nixfly gzip", "nixfly gzip-fast" (--level fast), "nixfly zstd", "usual"
    wire_subjects: tuple[str, ...] = ("nixfly gzip", "nixfly zstd", "usual")


def nixfly_build(ctx: Ctx, root: str, out: Path, tag: str, cache: Path, compression: str) -> Sample:
    s = measure(
        nixfly(
            "build", root, "-o", f"oci:{out}:{tag}", "--compression", compression, "--cache-dir", str(cache), "--json"
        ),
        env=ctx.env,
    )
    with contextlib.suppress(ValueError):
        s.extra["layers"] = len(plan_from_build_json(s.stdout)[0])
    return s


def _compare_entries(layout: Path, plan_dir: Path, layers: list[dict[str, Any]]) -> str:
    """How many of nixfly's layers hold exactly the entries (names, types, modes, sizes, link targets,
    file contents) of the floor's GNU tar layer for the same store paths."""
    same = 0
    mismatches: list[str] = []
    for i, lyr in enumerate(layers):
        mine = baselines.tar_listing(layout / "blobs" / "sha256" / str(lyr["digest"]).split(":")[1])
        mine = [e for e in mine if e[0].startswith("nix/store/")]  # not nixfly's extra (/bin, /etc...) entries
        floor = baselines.tar_listing(plan_dir / f"{i:04d}.blob")
        if mine == floor:
            same += 1
        elif len(mismatches) < 3:
            diff = [a for a, b in zip(mine, floor, strict=False) if a != b][:1]
            mismatches.append(f"layer {i}: nixfly {len(mine)} entries, floor {len(floor)}; first diff {diff}")
    return f"{same}/{len(layers)}" + ("" if not mismatches else " (" + "; ".join(mismatches) + ")")


def compute_bound(archive: Path, blob: Path, compression: str) -> Sample:
    """The work no layer builder can skip, as CPU time: compress all layer bytes (the docker-archive
    holds them) with the same compressor and level, and SHA-256 both sides with OpenSSL, one after the
    other with no pipes; divided by the cores, that is the wall time of a perfect parallel build."""
    comp = measure(
        ["bash", "-c", f'{baselines.COMPRESSORS[compression]} < "$1" > "$2"', "bound", str(archive), str(blob)]
    )
    h1 = measure(["openssl", "dgst", "-sha256", str(archive)])
    h2 = measure(["openssl", "dgst", "-sha256", str(blob)])
    blob.unlink()
    cpu = sum(float(x.extra["cpu_s"]) for x in (comp, h1, h2))
    return Sample(cpu / JOBS, 0.0, 0, extra={"cpu_s": cpu})


def scenario_cold_build(ctx: Ctx, compression: str) -> None:
    rep = ctx.report
    scen = f"cold build {compression} (1x)"
    archive = ctx.work / "docker-archive.tar"
    for i in range(ctx.runs):
        cache = ctx.work / f"cache-{compression}-{i}"
        out = ctx.work / f"layout-{compression}-{i}"
        for d in (cache, out):
            shutil.rmtree(d, ignore_errors=True)
        s = nixfly_build(ctx, ctx.c1.root, out, "v1", cache, compression)
        rep.add(f"build.{compression}.nixfly", s)
        plan, layers = plan_from_build_json(s.stdout)
        plan_dir = ctx.work / f"plan-{compression}"
        if i == 0:
            baselines.write_plan(plan_dir, plan)
            rep.facts[f"build.{compression}.layers"] = len(plan)
            if not archive.exists():
                t0 = time.perf_counter()
                baselines.write_docker_archive(plan_dir, archive, JOBS)
                rep.facts["docker_archive_write_s"] = time.perf_counter() - t0
                rep.facts["docker_archive_bytes"] = archive.stat().st_size
        # the floor, on the same layers with the same parallelism
        baselines.clear_floor_outputs(plan_dir)
        cmd, env = baselines.floor_command(plan_dir, JOBS, compression, "openssl")
        rep.add(f"build.{compression}.floor_openssl", measure(cmd, env=env))
        fl_openssl = baselines.floor_results(plan_dir)
        baselines.clear_floor_outputs(plan_dir)
        cmd, env = baselines.floor_command(plan_dir, JOBS, compression)
        rep.add(f"build.{compression}.floor", measure(cmd, env=env))
        fl = baselines.floor_results(plan_dir)
        if fl != fl_openssl:
            raise RuntimeError("the two floor variants disagree on digests: a pipeline failed")
        if i == 0:
            same_diff = sum(1 for a, b in zip(fl, layers, strict=False) if a["diff_id"] == b.get("diff_id"))
            same_dig = sum(1 for a, b in zip(fl, layers, strict=False) if a["digest"] == b.get("digest"))
            rep.facts[f"build.{compression}.floor_blob_bytes"] = sum(int(str(x["size"])) for x in fl)
            rep.facts[f"build.{compression}.nixfly_blob_bytes"] = sum(int(x.get("size", 0)) for x in layers)
            rep.facts[f"build.{compression}.identical_diff_ids"] = f"{same_diff}/{len(fl)}"
            rep.facts[f"build.{compression}.identical_digests"] = f"{same_dig}/{len(fl)}"
            if compression == "gzip":
                rep.facts["build.gzip.same_tar_entries"] = _compare_entries(out, plan_dir, layers)
        baselines.clear_floor_outputs(plan_dir)
        if i == 0:
            rep.add(f"build.{compression}.bound", compute_bound(archive, ctx.work / "bound.blob", compression))
        # the usual pipeline: skopeo compresses the uncompressed docker-archive into an OCI layout
        sk_out = ctx.work / f"skopeo-{compression}"
        shutil.rmtree(sk_out, ignore_errors=True)
        rep.add(f"build.{compression}.skopeo", measure(baselines.skopeo_archive_to_oci(archive, sk_out, compression)))
        shutil.rmtree(sk_out, ignore_errors=True)
        if compression == "gzip" and i == ctx.runs - 1:
            ctx.warm_cache, ctx.layout, ctx.plan = cache, out, plan
        else:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    rep.time_row(scen, "nixfly build", f"build.{compression}.nixfly")
    rep.time_row(scen, "floor (sha256sum)", f"build.{compression}.floor")
    rep.time_row(scen, "floor (openssl sha256)", f"build.{compression}.floor_openssl")
    rep.time_row(scen, "skopeo copy docker-archive→oci", f"build.{compression}.skopeo")
    rep.time_row(scen, "compute bound (CPU ÷ cores)", f"build.{compression}.bound")
    rep.time_row(scen, "nixfly vs compute bound", f"build.{compression}.nixfly", f"build.{compression}.bound")
    rep.time_row(scen, "nixfly vs floor", f"build.{compression}.nixfly", f"build.{compression}.floor", "≤ 1.3×", 1.3)
    rep.time_row(
        scen,
        "nixfly vs floor (openssl)",
        f"build.{compression}.nixfly",
        f"build.{compression}.floor_openssl",
        "≤ 1.3× (stricter)",
        1.3,
    )
    for subj in ("nixfly", "floor", "floor_openssl", "skopeo", "bound"):
        rep.cpu_row(scen, subj, f"build.{compression}.{subj}")
    rep.time_row(
        scen, "nixfly vs skopeo", f"build.{compression}.nixfly", f"build.{compression}.skopeo", "< 1.0×", 0.9999
    )


def scenario_rebuild(ctx: Ctx) -> None:
    rep = ctx.report
    if ctx.warm_cache is None or ctx.layout is None:
        raise RuntimeError("needs the cold gzip build's cache and layout")
    for _ in range(ctx.runs):
        s = nixfly_build(ctx, ctx.c1.root, ctx.layout, "v1", ctx.warm_cache, "gzip")
        rep.add("rebuild.nochange.nixfly", s)
    plan_dir = ctx.work / "plan-app"
    for i, app in enumerate(ctx.app_versions):
        s = nixfly_build(ctx, app.root, ctx.layout, f"app{i}", ctx.warm_cache, "gzip")
        rep.add("rebuild.app.nixfly", s)
        # the floor for that path alone
        baselines.write_plan(plan_dir, [[app.root]])
        cmd, env = baselines.floor_command(plan_dir, 1, "gzip")
        rep.add("rebuild.app.floor", measure(cmd, env=env))
        cmd, env = baselines.floor_command(plan_dir, 1, "gzip", "openssl")
        rep.add("rebuild.app.floor_openssl", measure(cmd, env=env))
        rep.facts["rebuild.app_path_blob_bytes"] = baselines.floor_results(plan_dir)[0]["size"]
    scen = "rebuild gzip (1x)"
    rep.time_row(scen, "no change", "rebuild.nochange.nixfly", target="< 1 s", abs_limit=1.0)
    rep.time_row(scen, "app path changed", "rebuild.app.nixfly")
    rep.time_row(scen, "floor: app path alone", "rebuild.app.floor")
    rep.time_row(scen, "floor (openssl): app path alone", "rebuild.app.floor_openssl")
    rep.time_row(scen, "app changed vs floor", "rebuild.app.nixfly", "rebuild.app.floor", "≤ 1.5×", 1.5)


def _push_supported(ctx: Ctx) -> bool:
    s = measure(nixfly("push", "--help"), env=ctx.env, check=False)
    return s.rc == 0


def _new_blob_bytes(layout: Path, old_tag: str, new_tag: str) -> int:
    """Bytes of the blobs (layers and config) that `new_tag` has and `old_tag` has not."""
    _, _, old = _layout_blob_size(layout, old_tag)
    _, cfg, new = _layout_blob_size(layout, new_tag)
    return cfg + sum((layout / "blobs" / "sha256" / d.split(":")[1]).stat().st_size for d in new - old)


def _layout_blob_size(layout: Path, tag: str) -> tuple[int, int, set[str]]:
    """(sum of layer sizes, config size, layer digests) of the image tagged `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            mf = json.loads((layout / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text())
            return (
                sum(int(x["size"]) for x in mf["layers"]),
                int(mf["config"]["size"]),
                {x["digest"] for x in mf["layers"]},
            )
    raise RuntimeError(f"tag {tag} not in {layout}")


def _image_digests(layout: Path, tag: str) -> set[str]:
    """The layer and config digests of the image tagged `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            mf = json.loads((layout / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text())
            return {str(x["digest"]) for x in mf["layers"]} | {str(mf["config"]["digest"])}
    raise RuntimeError(f"tag {tag} not in {layout}")


def scenario_push(ctx: Ctx) -> None:
    rep = ctx.report
    if ctx.layout is None or not ctx.report.series.get("rebuild.app.nixfly"):
        raise RuntimeError("needs the layout with the cold build and the app-change rebuilds")
    layout = ctx.layout
    have_push = _push_supported(ctx)
    if not have_push:
        rep.notes.append("nixfly push is not available yet: push scenarios ran skopeo only")
    for i in range(ctx.runs):
        app_tag = f"app{i % len(ctx.app_versions)}"
        subjects: list[str] = ["nixfly", "skopeo"] if have_push else ["skopeo"]
        for subj in subjects:
            with Registry(ctx.work / f"registry-{subj}") as reg, CountingProxy(reg.port) as px:
                ref = f"docker://127.0.0.1:{px.port}/bench/{subj}:latest"

                def push(tag: str, subj: str = subj, ref: str = ref, px: CountingProxy = px) -> Sample:
                    px.reset()
                    if subj == "nixfly":
                        s = measure(nixfly("push", f"oci:{layout}:{tag}", ref, "--json"), env=ctx.env)
                        with contextlib.suppress(ValueError):
                            s.extra["reported"] = json.loads(s.stdout)
                    else:
                        s = measure(baselines.skopeo_push(layout, tag, px.port, f"bench/{subj}"))
                    c = px.counts
                    # The image's own blobs (layers, config) apart from what goes with it (nixfly carries
                    # the layout's SBOM referrer along): the targets are about the image.
                    mine = _image_digests(layout, tag)
                    image_bytes = sum(v for d, v in c.by_digest.items() if d in mine)
                    s.extra.update(blob_bytes=image_bytes, other_bytes=c.blob_bytes - image_bytes,
                                   manifest_bytes=c.manifest_bytes, requests=c.requests)  # fmt: skip
                    return s

                rep.add(f"push.cold.{subj}", push("v1"))
                rep.add(f"push.nochange.{subj}", push("v1"))
                s = push(app_tag)
                s.extra["expected_bytes"] = _new_blob_bytes(layout, "v1", app_tag)
                rep.add(f"push.app.{subj}", s)
    total, cfg, _ = _layout_blob_size(layout, "v1")
    rep.facts["push.image_blob_bytes"] = total + cfg
    for kind, label in (("cold", "cold"), ("nochange", "unchanged re-push"), ("app", "after app change")):
        scen = f"push gzip (1x): {label}"
        for subj in ("nixfly", "skopeo"):
            key = f"push.{kind}.{subj}"
            ser = rep.series.get(key)
            if not ser or not ser.samples:
                continue
            target, lim = "", None
            if subj == "nixfly" and kind == "nochange":
                target, lim = "< 1 s", 1.0
            rep.time_row(scen, f"{subj} wall", key, target=target, abs_limit=lim)
            b = [int(s.extra["blob_bytes"]) for s in ser.samples]
            ok: bool | None = None
            tgt = ""
            if subj == "nixfly" and kind == "nochange":
                tgt, ok = "0 blob bytes", max(b) == 0
            if subj == "nixfly" and kind == "app":
                exp = [int(s.extra["expected_bytes"]) for s in ser.samples]
                tgt, ok = f"= changed layer + config ({statistics.median(exp):,.0f} B)", b == exp
            if subj == "nixfly" and kind == "cold":
                tgt, ok = f"= image blobs ({total + cfg} B)", all(x == total + cfg for x in b)
            other = [int(s.extra.get("other_bytes", 0)) for s in ser.samples]
            extra = f" (+ {statistics.median(other):,.0f} B SBOM referrer)" if max(other) else ""
            rep.value_row(scen, f"{subj} image blob bytes uploaded", f"{statistics.median(b):,.0f} B{extra}", tgt, ok)
        if have_push:
            rep.time_row(scen, "nixfly vs skopeo", f"push.{kind}.nixfly", f"push.{kind}.skopeo")


def scenario_rss(ctx: Ctx) -> None:
    rep = ctx.report
    if ctx.c2 is None:
        return
    for i in range(ctx.runs):
        cache = ctx.work / f"cache-2x-{i}"
        out = ctx.work / f"layout-2x-{i}"
        s = nixfly_build(ctx, ctx.c2.root, out, "v1", cache, "gzip")
        rep.add("build.gzip.2x.nixfly", s)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    one = rep.series.get("build.gzip.nixfly")
    two = rep.series["build.gzip.2x.nixfly"]
    scen = "peak RSS, cold build gzip"
    rep.time_row("cold build gzip (2x)", "nixfly build", "build.gzip.2x.nixfly")
    if one and one.samples:
        r1 = one.summary("maxrss_mb")
        rep.value_row(scen, "1x closure", f"{r1['median']:.1f} MB", "< 200 MB", r1["max"] < 200)
    r2 = two.summary("maxrss_mb")
    rep.value_row(scen, "2x closure", f"{r2['median']:.1f} MB", "< 200 MB", r2["max"] < 200)
    if one and one.samples:
        ratio = r2["median"] / one.summary("maxrss_mb")["median"]
        rep.value_row(scen, "2x / 1x", f"{ratio:.3f}", "≤ 1.10", ratio <= 1.10)
    z = rep.series.get("build.zstd.nixfly")
    if z and z.samples:
        rep.value_row(scen.replace("gzip", "zstd"), "1x closure", f"{z.summary('maxrss_mb')['median']:.1f} MB")


# ---------------------------------------------------------------------------------------------------
# CPU per uploaded byte of a push (issue 22: one SHA-256 pass per uploaded byte)


def snapshot_revision(rev: str, dest: Path) -> str:
    """src/nixfly as of git revision ``rev``, extracted to dest/nixfly and byte-compiled; returns the full hash."""
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", full.stdout.strip(), "src/nixfly"],
                             capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest), "--strip-components=1"], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=False)
    return full.stdout.strip()


def measure_threads(ctx: Ctx, args: Sequence[str], name: str, env: dict[str, str] | None = None) -> Sample:
    """``nixfly ARGS`` under GNU time and ``threadcpu.py``: the process's CPU, and per thread group the CPU
    and the SHA-256 bytes hashed (extra: ``threads``, ``sha256_bytes``)."""
    out = ctx.work / f"threadcpu-{name}.json"
    out.unlink(missing_ok=True)
    env = dict(env or ctx.env, NIXFLY_BENCH_THREADCPU=str(out))
    s = measure([sys.executable, str(HERE / "threadcpu.py"), "-m", "nixfly", *args], env=env)
    data = json.loads(out.read_text())
    s.extra["threads"] = data["thread_cpu_s"]
    s.extra["sha256_bytes"] = sum(data["sha256_bytes"].values())
    s.extra["sha256_sites"] = dict(list(data["sha256_bytes"].items())[:8])
    return s


def scenario_pushcpu(ctx: Ctx) -> None:
    """The push's CPU per uploaded byte, unshaped, to a fresh real registry per sample (through the counting
    proxy): (a) ``nixfly push oci:LAYOUT`` (the layout built once beforehand, not timed), minus the same push
    again when everything is there (start-up, HEADs, manifest: the fixed cost), over the blob bytes sent;
    (b) a cold ``nixfly build ROOT --push`` (empty cache): the whole process and the upload threads alone
    (``nixfly-early``, ``nixfly-push``: reading, hashing and sending), over the blob bytes sent. Also the
    SHA-256 bytes hashed per uploaded byte, counted (not timed)."""
    layout = ctx.work / "layout-pushcpu"
    cache = ctx.work / "cache-pushcpu"
    if not (layout / "index.json").exists():
        measure(nixfly("build", ctx.c1.root, "-o", f"oci:{layout}:v1", "--cache-dir", str(cache), "-q"), env=ctx.env)
    subjects: list[tuple[str, dict[str, str]]] = [("", ctx.env)]
    if ctx.baseline_env is not None:
        subjects.insert(0, ("baseline.", ctx.baseline_env))
    for i in range(ctx.runs):
        for tag, env in subjects:  # interleaved: the baseline revision, then this tree, in every round
            _pushcpu_round(ctx, layout, i, tag, env)
    for tag, _ in subjects:
        _pushcpu_rows(ctx, tag)
    if ctx.baseline_env is None:
        return
    scen = "push CPU per uploaded byte: this tree ÷ baseline revision (ratio of medians; of minimums)"
    for kind, fields in (
        ("push", ("cpu_s", "marginal_ns_per_byte", "sha256_per_byte")),
        ("build_push", ("cpu_s", "upload_cpu_s", "upload_ns_per_byte", "sha256_per_byte")),
    ):
        new_s, old_s = ctx.report.series.get(f"pushcpu.{kind}"), ctx.report.series.get(f"pushcpu.baseline.{kind}")
        if not new_s or not old_s or not new_s.samples or not old_s.samples:
            continue
        for f in fields:
            a, b = new_s.summary(f), old_s.summary(f)
            ctx.report.rows.append(Row(scen, f"{kind}: {f}", f"{a['median']:.4g} vs {b['median']:.4g}",
                                       f"min {a['min']:.4g} vs {b['min']:.4g}", "baseline",
                                       f"{a['median'] / b['median']:.3f}× ({a['min'] / b['min']:.3f}×)"))  # fmt: skip


def _pushcpu_round(ctx: Ctx, layout: Path, i: int, tag: str, env: dict[str, str]) -> None:
    rep = ctx.report
    with Registry(ctx.work / "registry-pushcpu") as reg, CountingProxy(reg.port) as px:
        ref = f"docker://127.0.0.1:{px.port}/bench/pushcpu:latest"
        s = measure_threads(ctx, ["push", f"oci:{layout}:v1", ref, "--json"], f"{tag}push-{i}", env)
        sent = px.counts.blob_bytes
        px.reset()
        again = measure(nixfly("push", f"oci:{layout}:v1", ref, "--json"), env=env)
        cpu, fixed = float(s.extra["cpu_s"]), float(again.extra["cpu_s"])
        s.extra.update(blob_bytes=sent, fixed_cpu_s=fixed, ns_per_byte=cpu / sent * 1e9,
                       marginal_ns_per_byte=(cpu - fixed) / sent * 1e9,
                       sha256_per_byte=float(s.extra["sha256_bytes"]) / sent)  # fmt: skip
        rep.add(f"pushcpu.{tag}push", s)
    with Registry(ctx.work / "registry-pushcpu") as reg, CountingProxy(reg.port) as px:
        ref = f"docker://127.0.0.1:{px.port}/bench/pushcpu:latest"
        empty = ctx.work / f"cache-pushcpu-cold-{i}"
        shutil.rmtree(empty, ignore_errors=True)
        s = measure_threads(ctx, ["build", ctx.c1.root, "--push", ref, "--cache-dir", str(empty), "--json"],
                            f"{tag}build-push-{i}", env)  # fmt: skip
        shutil.rmtree(empty, ignore_errors=True)
        sent = px.counts.blob_bytes
        threads = s.extra["threads"]
        up = sum(float(v) for k, v in threads.items() if k in ("nixfly-early", "nixfly-push"))
        s.extra.update(blob_bytes=sent, upload_cpu_s=up, ns_per_byte=float(s.extra["cpu_s"]) / sent * 1e9,
                       upload_ns_per_byte=up / sent * 1e9,
                       sha256_per_byte=float(s.extra["sha256_bytes"]) / sent)  # fmt: skip
        rep.add(f"pushcpu.{tag}build_push", s)


def _pushcpu_rows(ctx: Ctx, tag: str) -> None:
    rep = ctx.report
    rev = ctx.report.facts.get("baseline_rev", "")[:10] if tag else "this tree"
    scen = f"push CPU per uploaded byte (1x, loopback), nixfly at {rev}"
    for key, label, fields in (
        (f"pushcpu.{tag}push", "nixfly push oci: → registry",
         ("ns_per_byte", "marginal_ns_per_byte", "sha256_per_byte")),
        (f"pushcpu.{tag}build_push", "nixfly build --push, cold",
         ("ns_per_byte", "upload_ns_per_byte", "sha256_per_byte")),
    ):  # fmt: skip
        ser = rep.series.get(key)
        if not ser or not ser.samples:
            continue
        rep.value_row(scen, f"{label}: blob bytes", _fmt_bytes(ser.median("blob_bytes")))
        rep.cpu_row(scen, label, key)
        for f in fields:
            sm = ser.summary(f)
            unit = "" if f == "sha256_per_byte" else " ns/B"
            rep.rows.append(Row(scen, f"{label}: {f}", f"{sm['median']:.3f}{unit}",
                                f"{sm['min']:.3f}–{sm['max']:.3f}"))  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# the wire: cold push through a shaped link, and a fresh runner (empty cache) pushing to a registry
# that already holds the image

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def registry_manifest(port: int, repo: str, ref: str) -> dict[str, Any]:
    """The image manifest under repo:ref, straight from the registry (not through the proxy)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        mf: dict[str, Any] = json.loads(r.read())
    return mf


def classify_upload(counts: Any, mf: dict[str, Any]) -> dict[str, Any]:
    """Split the blob bytes a push sent into the image's layers, its config and the rest (nixfly's SBOM
    and layer index); `layer_digests` are the layers that were uploaded at all."""
    layers = {str(x["digest"]) for x in mf["layers"]}
    cfg = str(mf["config"]["digest"])
    by = dict(counts.by_digest)
    up_layers = sorted(d for d in by if d in layers)
    return {
        "blob_bytes": counts.blob_bytes,
        "layer_bytes": sum(by[d] for d in up_layers),
        "config_bytes": by.get(cfg, 0),
        "other_bytes": sum(v for d, v in by.items() if d not in layers and d != cfg),
        "layers_uploaded": len(up_layers),
        "layer_digests": up_layers,
        "image_layers": len(layers),
        "image_layer_bytes": sum(int(x["size"]) for x in mf["layers"]),
        "config_size": int(mf["config"]["size"]),
        "requests": counts.requests,
    }


def mbit_label(rate: float | None) -> str:
    return "loopback" if not rate else f"{rate * 8 / 1e6:g} Mbit/s"


def nixfly_build_push(
    ctx: Ctx, root: str, ref: str, cache: Path, compression: str = "gzip", level: str | None = None
) -> Sample:
    """The user's command on a runner: build and push, with the given (usually empty) layer cache."""
    shutil.rmtree(cache, ignore_errors=True)
    cmd = nixfly("build", root, "--push", ref, "--compression", compression, "--cache-dir", str(cache), "--json")
    if level is not None:
        cmd += ["--level", level]
    load = os.getloadavg()
    s = measure(cmd, env=ctx.env)
    s.extra["loadavg_before"] = list(load)
    shutil.rmtree(cache, ignore_errors=True)
    try:
        out = json.loads(s.stdout)
        t = out.get("totals", {})
        s.extra["built"] = int(t.get("built", -1))
        s.extra["layers"] = int(t.get("layers", -1))
        ctx.plans[root] = plan_from_build_json(s.stdout)[0]
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        s.extra["built"] = -1
    return s


def usual_pipeline_push(ctx: Ctx, root: str, port: int, repo: str, name: str) -> Sample:
    """The usual pipeline from nothing: write the uncompressed docker-archive of nixfly's layer plan for
    `root` (what streamLayeredImage streams), then `skopeo copy docker-archive:… docker://…` with an
    empty blob-info cache. Wall = both; the parts are in extra (archive_s, copy_s)."""
    plan = ctx.plans.get(root)
    if plan is None:
        raise RuntimeError(f"no nixfly layer plan for {root} yet (nixfly runs first)")
    plan_dir = ctx.work / f"plan-{name}"
    archive = ctx.work / f"archive-{name}.tar"
    baselines.write_plan(plan_dir, plan)
    t0 = time.perf_counter()
    baselines.write_docker_archive(plan_dir, archive, JOBS)
    archive_s = time.perf_counter() - t0
    env = baselines.fresh_blob_info_env(ctx.work / f"xdg-{name}")
    copy = measure(baselines.skopeo_archive_push(archive, port, repo), env=env)
    archive.unlink()
    s = Sample(archive_s + copy.wall, copy.maxrss_mb, copy.rc, copy.stdout, copy.stderr)
    s.extra.update(archive_s=archive_s, copy_s=copy.wall, cpu_s=float(copy.extra["cpu_s"]))
    return s


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n:,.0f} B"


def scenario_wire(ctx: Ctx) -> None:
    """Cold push of the 1x closure, from nothing, through a loopback link shaped to each rate."""
    rep = ctx.report
    subjects = ctx.wire_subjects
    for i in range(ctx.runs):
        for rate in ctx.wire_rates:
            for subj in subjects:
                key = f"wire.{rate * 8 / 1e6:g}.{subj.replace(' ', '_')}"
                repo = "bench/wire"
                with (
                    Registry(ctx.work / "registry-wire") as reg,
                    CountingProxy(reg.port, rate=rate, latency=ctx.rtt) as px,
                ):
                    ref = f"docker://127.0.0.1:{px.port}/{repo}:latest"
                    if subj == "usual":
                        s = usual_pipeline_push(ctx, ctx.c1.root, px.port, repo, "wire")
                    else:
                        comp, _, level = subj.split()[1].partition("-")
                        s = nixfly_build_push(ctx, ctx.c1.root, ref, ctx.work / f"cache-wire-{i}", comp, level or None)
                    s.extra.update(classify_upload(px.counts, registry_manifest(reg.port, repo, "latest")))
                wire_s = float(s.extra["blob_bytes"]) / rate
                s.extra.update(wire_s=wire_s, wall_over_wire=s.wall / wire_s if wire_s else 0.0)
                s.extra.pop("layer_digests", None)
                rep.add(key, s)
    for rate in ctx.wire_rates:
        mb = f"{rate * 8 / 1e6:g}"
        scen = f"wire: cold push at {mbit_label(rate)} (1x)"
        for subj in subjects:
            key = f"wire.{mb}.{subj.replace(' ', '_')}"
            ser = rep.series.get(key)
            if not ser or not ser.samples:
                continue
            label = "usual pipeline" if subj == "usual" else subj
            b = ser.median("blob_bytes")
            target, ok = "", None
            if subj != "usual":
                lim = 1.05 * b / rate + 1.0
                target, ok = f"≤ 1.05 × bytes ÷ bw + 1 s = {lim:.1f} s", ser.median() <= lim
            sm = ser.summary()
            what = " (archive write + skopeo copy)" if subj == "usual" else ""
            row = Row(scen, f"{label} wall{what}", f"{sm['median']:.2f} s", f"{sm['min']:.2f}–{sm['max']:.2f}")
            if target:
                row.target, row.met = target, "yes" if ok else "NO"
                rep.targets[f"{scen}: {label}: wall ≤ 1.05 × bytes ÷ bw + 1 s"] = bool(ok)
            rep.rows.append(row)
            if subj == "usual":
                a, c = ser.summary("archive_s"), ser.summary("copy_s")
                rep.value_row(scen, f"{label}: the two parts", f"{a['median']:.2f} s + {c['median']:.2f} s")
            lb = ser.median("layer_bytes")
            rep.value_row(
                scen,
                f"{label} bytes",
                f"{_fmt_bytes(b)} (layers {_fmt_bytes(lb)}), ÷ bw = {ser.median('wire_s'):.2f} s",
            )
            w = ser.summary("wall_over_wire")
            rep.rows.append(
                Row(scen, f"{label} wall ÷ (bytes ÷ bw)", f"{w['median']:.2f}", f"{w['min']:.2f}–{w['max']:.2f}")
            )
        g, z, u = (rep.series.get(f"wire.{mb}.{x}") for x in ("nixfly_gzip", "nixfly_zstd", "usual"))
        if g and u and g.samples and u.samples:
            gl, ul = g.median("layer_bytes"), u.median("layer_bytes")
            rep.value_row(
                scen,
                "nixfly gzip layer bytes vs skopeo's",
                f"{gl / ul:.3f}× ({gl - ul:+,.0f} B)",
                "≤ 1.00×",
                gl <= ul,
            )
        for ser, name, need in ((z, "zstd", 1.8), (g, "gzip", 1.4)):
            if not ser or not u or not ser.samples or not u.samples:
                continue
            ratio = ser.median() / u.median()
            row = Row(
                scen, f"nixfly {name} vs usual pipeline", f"{1 / ratio:.2f}× faster", "", "usual", f"{ratio:.2f}×"
            )
            if abs(rate - 100e6 / 8) < 1:
                row.target = f"≥ {need}× faster (ratio ≤ {1 / need:.2f}×)"
                ok = 1 / ratio >= need
                row.met = "yes" if ok else "NO"
                rep.targets[f"{scen}: nixfly {name} ≥ {need}× faster than the usual pipeline"] = ok
            rep.rows.append(row)
        # the compression choices side by side: each nixfly variant against the default (gzip level 2)
        for subj in subjects:
            ser = rep.series.get(f"wire.{mb}.{subj.replace(' ', '_')}")
            if subj in ("usual", "nixfly gzip") or not ser or not ser.samples or not g or not g.samples:
                continue
            rep.rows.append(Row(scen, f"{subj} vs nixfly gzip (default), median", f"{ser.median():.2f} s", "",
                                "nixfly gzip", f"{ser.median() / g.median():.3f}×"))  # fmt: skip
            best, gbest = min(ser.walls()), min(g.walls())
            rep.rows.append(Row(scen, f"{subj} vs nixfly gzip (default), minimum", f"{best:.2f} s", "",
                                "nixfly gzip", f"{best / gbest:.3f}×"))  # fmt: skip


def scenario_fresh(ctx: Ctx) -> None:
    """A fresh runner (empty layer cache) pushing to a registry that already holds the image: unchanged,
    and after an app change; the usual pipeline in the same situation."""
    rep = ctx.report
    repo = "bench/fresh"
    for i in range(ctx.runs):
        app = ctx.app_versions[i % len(ctx.app_versions)]
        for rate in ctx.fresh_rates:
            mb = f"{rate * 8 / 1e6:g}" if rate else "0"
            for subj in ("nixfly", "usual"):
                with Registry(ctx.work / "registry-fresh") as reg, CountingProxy(reg.port) as px:
                    ref = f"docker://127.0.0.1:{px.port}/{repo}:latest"

                    def push(root: str, tag: str, subj: str = subj, ref: str = ref, px: CountingProxy = px) -> Sample:
                        if subj == "nixfly":
                            return nixfly_build_push(ctx, root, ref, ctx.work / f"cache-fresh-{tag}")
                        return usual_pipeline_push(ctx, root, px.port, repo, f"fresh-{tag}")

                    push(ctx.c1.root, "prime")  # the image is there, pushed once, unshaped
                    old = registry_manifest(reg.port, repo, "latest")
                    old_layers = {str(x["digest"]) for x in old["layers"]}
                    px.set_rate(rate)
                    px.latency = ctx.rtt
                    for kind, root in (("nochange", ctx.c1.root), ("app", app.root)):
                        px.reset()
                        s = push(root, kind)
                        new = registry_manifest(reg.port, repo, "latest")
                        info = classify_upload(px.counts, new)
                        changed = sorted(str(x["digest"]) for x in new["layers"] if x["digest"] not in old_layers)
                        info["changed_layers"] = len(changed)
                        info["changed_layer_bytes"] = sum(
                            int(x["size"]) for x in new["layers"] if x["digest"] not in old_layers
                        )
                        info["only_changed_uploaded"] = info.pop("layer_digests") == changed
                        s.extra.update(info)
                        rep.add(f"fresh.{mb}.{kind}.{subj}", s)
                    px.set_rate(None)
                    px.latency = 0.0
    for rate in ctx.fresh_rates:
        mb = f"{rate * 8 / 1e6:g}" if rate else "0"
        for kind, label in (("nochange", "unchanged"), ("app", "after app change")):
            scen = f"fresh runner, {label}, {mbit_label(rate)} (1x)"
            n, u = (rep.series.get(f"fresh.{mb}.{kind}.{x}") for x in ("nixfly", "usual"))
            for subj, ser in (("nixfly", n), ("usual", u)):
                if not ser or not ser.samples:
                    continue
                name = "nixfly build --push" if subj == "nixfly" else "archive + skopeo copy"
                sm = ser.summary()
                row = Row(scen, f"{name} wall", f"{sm['median']:.3f} s", f"{sm['min']:.3f}–{sm['max']:.3f}")
                xs = ser.samples
                app_wire = statistics.median(float(x.extra["changed_layer_bytes"]) for x in xs) / rate if rate else 0.0
                if subj == "nixfly":
                    lim = 1.0 if kind == "nochange" else 1.5 + app_wire
                    row.target = f"< {lim:.2f} s" + ("" if kind == "nochange" or not rate else " (1.5 s + layer ÷ bw)")
                    ok = sm["median"] < lim
                    row.met = "yes" if ok else "NO"
                    rep.targets[f"{scen}: {name}: {row.target}"] = ok
                if u is not None and u.samples and subj == "nixfly":
                    row.vs, row.ratio = "usual", f"{sm['median'] / u.median():.2f}×"
                rep.rows.append(row)
                built = [int(x.extra.get("built", -1)) for x in xs]
                lb = [int(x.extra["layer_bytes"]) for x in xs]
                val = (
                    f"{_fmt_bytes(statistics.median(float(x.extra['blob_bytes']) for x in xs))} blobs, "
                    f"{statistics.median(int(x.extra['layers_uploaded']) for x in xs):g} layers "
                    f"({_fmt_bytes(statistics.median(lb))}), config {_fmt_bytes(xs[0].extra['config_bytes'])}, "
                    f"other {_fmt_bytes(statistics.median(float(x.extra['other_bytes']) for x in xs))}"
                )
                if subj == "nixfly":
                    val += f"; {statistics.median(built):g} layers built"
                target, ok2 = "", None
                if subj == "nixfly" and kind == "nochange":
                    target, ok2 = "0 layers built, 0 layer bytes", max(built) == 0 and max(lb) == 0
                if subj == "nixfly" and kind == "app":
                    ch = xs[0].extra["changed_layers"]
                    target = f"only the {ch} changed layer(s) (+config) uploaded and built"
                    ok2 = all(bool(x.extra["only_changed_uploaded"]) for x in xs) and all(
                        b == int(x.extra["changed_layers"]) for b, x in zip(built, xs, strict=True)
                    )
                rep.value_row(scen, f"{name} uploaded", val, target, ok2)


# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def work_dir(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    d = Path(tempfile.mkdtemp(prefix="nixfly-bench-", dir="/var/tmp"))
    try:
        yield d
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small closure (~40 MB): a smoke test in under a minute")
    ap.add_argument("--runs", type=int, help="repetitions of each measurement (default 3; 1 with --quick)")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/<time>.json)")
    ap.add_argument(
        "--only", default="build,rebuild,push,rss,wire,fresh", help="comma list of scenarios (default: all)"
    )
    ap.add_argument(
        "--wire-mbit", help="link rates of the wire scenario, Mbit/s, comma list (default 100,1000; --quick: 100)"
    )
    ap.add_argument(
        "--fresh-mbit",
        help="link rates of the fresh-runner scenario, Mbit/s, 0 = unshaped loopback (default 0,100; --quick: 0)",
    )
    ap.add_argument(
        "--wire-subjects",
        default="gzip,zstd,usual",
        help="wire scenario subjects, comma list of gzip (the default level), fast (gzip --level fast), zstd, usual",
    )
    ap.add_argument("--baseline-rev", help="pushcpu: also measure nixfly at this git revision, interleaved")
    ap.add_argument("--scale", type=float, help="scale of the 1x closure (default 1; --quick: 0.03); 2x is twice it")
    ap.add_argument("--work-dir", type=Path, help="scratch directory (default: a fresh one in /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="wire and fresh: latency added to every request")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - {"build", "rebuild", "push", "rss", "wire", "fresh", "pushcpu"}
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    wire_mbit = args.wire_mbit or ("100" if args.quick else "100,1000")
    fresh_mbit = args.fresh_mbit or ("0" if args.quick else "0,100")
    try:
        wire_rates = [float(x) * 1e6 / 8 for x in wire_mbit.split(",")]
        fresh_rates = [float(x) * 1e6 / 8 or None for x in fresh_mbit.split(",")]
    except ValueError:
        ap.error("--wire-mbit and --fresh-mbit take comma lists of numbers")
    if any(r <= 0 for r in wire_rates) or any(r is not None and r < 0 for r in fresh_rates):
        ap.error("link rates must be positive (0 means unshaped, for --fresh-mbit only)")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    s1, s2 = (0.03, 0.06) if args.quick else (1.0, 2.0)
    if args.scale is not None:
        s1, s2 = args.scale, 2 * args.scale
    names = {"gzip": "nixfly gzip", "fast": "nixfly gzip-fast", "zstd": "nixfly zstd", "usual": "usual"}
    wire_subjects = tuple(names.get(x.strip(), "") for x in args.wire_subjects.split(","))
    if "" in wire_subjects:
        ap.error("--wire-subjects takes a comma list of gzip, fast, zstd, usual")

    t_start = time.perf_counter()
    print(f"generating closures (scale {s1:g}, {s2:g}) ...", file=sys.stderr)
    c1 = gen_closure(s1, 1)
    apps = [gen_closure(s1, 2 + i) for i in range(args.runs)] if {"rebuild", "push", "fresh"} & only else []
    c2 = gen_closure(s2, 1) if "rss" in only else None
    report = Report()
    report.facts.update(
        closure_1x=asdict(c1),
        closure_2x=asdict(c2) if c2 else None,
        jobs=JOBS,
        runs=args.runs,
        quick=args.quick,
        host=platform.node(),
        cpus=os.cpu_count(),
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        loadavg_start=list(os.getloadavg()),
        tools={
            t: subprocess.run([t, "--version"], capture_output=True, text=True).stdout.splitlines()[0:1]
            for t in ("tar", "skopeo", "zstd", "nix")
        },
    )
    with work_dir(args.work_dir, args.keep) as work:
        report.facts["source"] = snapshot_source(work / "src")
        env = base_env(work / "src")
        ctx = Ctx(work, args.runs, c1, c2, apps, report, env, wire_rates=wire_rates, fresh_rates=fresh_rates)
        ctx.rtt = max(0.0, args.rtt_ms) / 1000
        ctx.wire_subjects = wire_subjects
        if args.baseline_rev:
            report.facts["baseline_rev"] = snapshot_revision(args.baseline_rev, work / "src-baseline")
            ctx.baseline_env = base_env(work / "src-baseline")
        report.facts.update(wire_mbit=wire_mbit, fresh_mbit=fresh_mbit, wire_rtt_ms=ctx.rtt * 1000,
                            wire_subjects=list(wire_subjects))  # fmt: skip
        steps: list[tuple[str, bool, Callable[[], None]]] = [
            (
                "cold build gzip",
                bool({"build", "rebuild", "push", "rss"} & only),
                lambda: scenario_cold_build(ctx, "gzip"),
            ),
            ("cold build zstd", "build" in only, lambda: scenario_cold_build(ctx, "zstd")),
            ("rebuild", bool({"rebuild", "push"} & only), lambda: scenario_rebuild(ctx)),
            ("push", "push" in only, lambda: scenario_push(ctx)),
            ("peak RSS 2x", "rss" in only, lambda: scenario_rss(ctx)),
            ("push CPU per byte", "pushcpu" in only, lambda: scenario_pushcpu(ctx)),
            ("wire", "wire" in only, lambda: scenario_wire(ctx)),
            ("fresh runner", "fresh" in only, lambda: scenario_fresh(ctx)),
        ]
        failed: list[str] = []
        for name, wanted, step in steps:
            if not wanted:
                continue
            print(f"scenario: {name}", file=sys.stderr)
            try:
                step()
            except Exception as e:
                # Keep going, so one broken scenario does not lose the others' numbers, but the run fails.
                failed.append(name)
                report.notes.append(f"scenario {name} failed: {str(e).strip()[-600:]}")
                print(f"scenario {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    report.facts["failed_scenarios"] = failed
    report.facts["bench_wall_s"] = time.perf_counter() - t_start
    report.facts["loadavg_end"] = list(os.getloadavg())

    c2txt = f"; 2x: {c2.paths} paths, {c2.nar_bytes / 2**30:.2f} GiB" if c2 else ""
    print(f"\nclosure 1x: {c1.paths} paths, {c1.nar_bytes / 2**30:.2f} GiB{c2txt}; runs={args.runs}; jobs={JOBS}")
    print(report.table())
    for k, v in report.facts.items():
        if k.startswith(("build.", "rebuild.", "push.", "docker_", "wire", "fresh")):
            print(f"  {k}: {v}")
    for n in report.notes:
        print(f"  note: {n}")
    if report.notes:
        print("")
    met = sum(report.targets.values())
    print(f"targets met: {met}/{len(report.targets)}")
    out = args.json or HERE / "results" / f"bench-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2))
    print(f"wrote {out}")
    if failed:
        print(f"bench: {len(failed)} scenario(s) failed: {', '.join(failed)} (errors above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
