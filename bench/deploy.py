#!/usr/bin/env python3
"""Deploy latency: what users feel after the image is pushed (issue 11).

    .venv/bin/python bench/deploy.py [--runs 3] [--start 2.0] [--checks 1.0] [--json out.json]

Runs `nixfly deploy` (the real CLI, a fresh process each time) against the spec-validating Machines API
stand-in (tests/support/flystandin.py) at a known timing scale: a machine is "started" --start seconds
after its update or create, and its checks pass --checks seconds after that; a crashing image exits
0.5 s after it starts. The stand-in's own lifecycle time for the steps a deploy takes is the floor:

  rolling, 3 machines (max_unavailable 1):   3 × (start + checks)
  canary, 3 machines:                       4 × (start + checks)  (the canary, then each machine)
  failing image, rolling, rolled back:       start + 0.5 s (first exit) + start (the restored machine)
  same image again:                          0 (nothing to do; target ≤ 1 s wall, CLI start-up included)

Each scenario is repeated --runs times; the table shows the median (min–max) wall time, the floor and
the ratio of medians (goal ≤ 1.1: no idle polling gaps, no fixed sleeps). JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.support.flystandin import TOKEN, FlyStandin  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

IMAGES = {n: f"registry.fly.io/bench@sha256:{c * 64}" for n, c in (("v1", "1"), ("v2", "2"), ("bad", "b"))}
FLY_TOML = """\
app = "bench"
primary_region = "ams"
[deploy]
strategy = "{strategy}"
max_unavailable = 1
[http_service]
internal_port = 8080
auto_stop_machines = "stop"
[[http_service.checks]]
interval = "10s"
timeout = "2s"
path = "/health"
"""


@contextmanager
def standin(start: float, checks: float) -> Iterator[tuple[FlyStandin, str]]:
    s = FlyStandin()
    s.start_delay, s.check_delay = start, checks
    s.crash(IMAGES["bad"].split("@")[1])
    s.max_wait = 60.0  # the real API holds a /wait open until the state is reached (up to its timeout)
    server = make_server("127.0.0.1", 0, s.wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield s, f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def seed(s: FlyStandin, toml: Path, image: str, n: int) -> None:
    from nixfly.fly.flytoml import load_fly_toml
    from nixfly.fly.machineconfig import machine_configs

    s.apps.pop("bench", None)
    config = machine_configs(load_fly_toml(toml), image)["app"]
    for _ in range(n):
        s.seed_machine("bench", config)


def run_cli(url: str, workdir: Path, toml: Path, image: str) -> tuple[float, float, float, int, str]:
    """(wall seconds, CPU seconds, time.time() at the start, exit code, last stderr line) of one
    `nixfly deploy`."""
    env = dict(os.environ, FLY_API_TOKEN=TOKEN, FLY_API_URL=url, NIXFLY_STATE_DIR=str(workdir / "state"))
    cli = Path(sys.executable).parent / "nixfly"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, t0 = time.time(), time.perf_counter()
    # The images are made-up references: nothing to read from a registry.
    p = subprocess.run([str(cli), "deploy", "-c", str(toml), "--image", image, "--no-image-check"], env=env,
                       capture_output=True, text=True, cwd=workdir)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    return wall, cpu, started, p.returncode, last


def scenario(name: str, s: FlyStandin, url: str, work: Path, start: float, checks: float) -> dict[str, Any]:
    strategy = "canary" if name == "canary" else "rolling"
    toml = work / f"{name}.toml"
    toml.write_text(FLY_TOML.format(strategy=strategy))
    if name == "redeploy":
        seed(s, toml, IMAGES["v1"], 3)
        image, floor, want_rc = IMAGES["v1"], 0.0, 0
    elif name == "failing":
        seed(s, toml, IMAGES["v1"], 3)
        image, floor, want_rc = IMAGES["bad"], start + s.crash_after + start, 1
    else:
        seed(s, toml, IMAGES["v1"], 3)
        steps = 4 if name == "canary" else 3
        image, floor, want_rc = IMAGES["v2"], steps * (start + checks), 0
    s.requests.clear()
    wall, cpu, started, rc, last = run_cli(url, work, toml, image)
    if rc != want_rc:
        raise SystemExit(f"{name}: nixfly deploy exited {rc} (wanted {want_rc}): {last}")
    images = {m.image for m in s.machines("bench")}
    expected = IMAGES["v1"] if name in ("redeploy", "failing") else IMAGES["v2"]
    if images != {expected}:
        raise SystemExit(f"{name}: machines ended on {sorted(images)}, not {expected}")
    at = [r.at for r in s.requests]
    # Start-up: process start → first API request; the API phase: first request → last request.
    return {"wall": wall, "cpu": cpu, "startup": at[0] - started, "api_phase": at[-1] - at[0], "floor": floor,
            "requests": len(s.requests), "violations": len(s.violations)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--start", type=float, default=2.0, help="seconds from update/create to started")
    ap.add_argument("--checks", type=float, default=1.0, help="seconds from started to checks passing")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    names = ["rolling", "canary", "failing", "redeploy"]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with (
        tempfile.TemporaryDirectory(prefix="nixfly-bench-deploy-") as tmp,
        standin(args.start, args.checks) as (
            standin_state,
            url,
        ),
    ):
        work = Path(tmp)
        for _ in range(args.runs):
            for n in names:
                results[n].append(scenario(n, standin_state, url, work, args.start, args.checks))
        violations = len(standin_state.violations)
    rows = []
    for n in names:
        walls = [r["wall"] for r in results[n]]
        med, floor = statistics.median(walls), results[n][0]["floor"]
        phase = statistics.median(r["api_phase"] for r in results[n])
        ratio = med / floor if floor else None
        target = "≤ 1 s" if n == "redeploy" else "≤ 1.1×"
        met = med <= 1.0 if n == "redeploy" else (ratio is not None and ratio <= 1.1)
        rows.append({"scenario": n, "median": med, "min": min(walls), "max": max(walls), "floor": floor,
                     "ratio": ratio, "api_phase": phase, "api_phase_ratio": phase / floor if floor else None,
                     "startup": statistics.median(r["startup"] for r in results[n]),
                     "cpu": statistics.median(r["cpu"] for r in results[n]), "target": target, "met": met,
                     "requests": statistics.median(r["requests"] for r in results[n])})  # fmt: skip
    label = {"rolling": "rolling, 3 machines", "canary": "canary, 3 machines",
             "failing": "failing image → rollback", "redeploy": "same image again"}  # fmt: skip
    print(f"deploy latency, stand-in at start {args.start:g} s + checks {args.checks:g} s, median of {args.runs}:")
    print("| scenario | nixfly wall | CPU | of which start-up | API phase | stand-in lifecycle | ratio (wall) | "
          "ratio (API phase) | requests | target | met |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.3f}×" if r["ratio"] is not None else ""
        pratio = f"{r['api_phase_ratio']:.3f}×" if r["api_phase_ratio"] is not None else ""
        floor = f"{r['floor']:.2f} s" if r["floor"] else "0"
        print(f"| {label[r['scenario']]} | {r['median']:.2f} s ({r['min']:.2f}–{r['max']:.2f}) | {r['cpu']:.2f} s | "
              f"{r['startup']:.2f} s | {r['api_phase']:.2f} s | {floor} | {ratio} | {pratio} | {r['requests']:g} | "
              f"{r['target']} | {'yes' if r['met'] else '**no**'} |")  # fmt: skip
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    out = args.json or ROOT / "bench" / "results" / f"deploy-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"scale": {"start": args.start, "checks": args.checks, "crash_after": 0.5}, "runs": args.runs,
           "rows": rows, "raw": results, "spec_violations": violations,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_average": os.getloadavg()}}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2))
    print(f"JSON: {out}")
    if violations:
        raise SystemExit(f"{violations} Machines API spec violations")


if __name__ == "__main__":
    main()
