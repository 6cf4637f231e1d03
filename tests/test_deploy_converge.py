"""Issue 21 §5: a deploy never hangs, and every re-run converges.

Each test meets the unfriendly point: a Machines API that accepts and never answers; ``kill -9`` of the real
CLI at each write of a first deploy and of a bluegreen deploy (the write is still acted on: its answer is
lost), then a re-run; two deploys at once from one state directory, two first deploys at once, two from
different state directories; a 500, a reset before, and a reset after the first lease request."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.fly.flytoml import load_fly_toml
from nixfly.fly.machineconfig import machine_configs
from tests.support.flystandin import RecordedRequest, RunningStandin

pytestmark = pytest.mark.slow  # real docker-registry + skopeo, real CLI processes

NIXFLY = str(Path(sys.executable).parent / "nixfly")

FLY_TOML = """\
app = "demo"
primary_region = "ams"
[deploy]
strategy = "{strategy}"
max_unavailable = 1
wait_timeout = "10s"
[http_service]
internal_port = 8080
[[http_service.checks]]
interval = "10s"
timeout = "2s"
path = "/health"
"""


def write_toml(path: Path, strategy: str = "rolling") -> Path:
    toml = path / "fly.toml"
    toml.write_text(FLY_TOML.format(strategy=strategy))
    return toml


def is_step(r: RecordedRequest) -> bool:
    """A write that is a step of the deploy (leases and their refreshes are not counted: their timing varies)."""
    return r.method != "GET" and not r.path.endswith("/lease")


def start_cli(*args: str, state: Path | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if state is not None:
        env["NIXFLY_STATE_DIR"] = str(state)
    return subprocess.Popen([NIXFLY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_killed_at(fly_api: RunningStandin, k: int, *args: str) -> bool:
    """Run the CLI and SIGKILL it when the stand-in receives its k-th step (0-based), before the stand-in acts
    on it (so the step is done and its answer lost). Whether the kill happened (False: it finished first)."""
    box: list[subprocess.Popen[str]] = []
    seen = [0]
    killed = threading.Event()

    def hook(r: RecordedRequest) -> None:
        if not is_step(r) or not box:
            return
        if seen[0] == k:
            box[0].send_signal(signal.SIGKILL)
            box[0].wait()
            killed.set()
        seen[0] += 1

    fly_api.on_request = hook
    try:
        box.append(start_cli(*args))
        box[0].communicate(timeout=120)
    finally:
        fly_api.on_request = None
    return killed.is_set()


def no_live_cordon(fly_api: RunningStandin) -> bool:
    return not any(m.cordoned for m in fly_api.machines("demo"))


# -- it never hangs -------------------------------------------------------------------------------------


def test_api_that_accepts_and_never_answers_fails_within_the_timeout(
    fly_env: RunningStandin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listening socket nobody accepts from: connects succeed (backlog), no byte ever comes back.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setenv("FLY_API_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        assert main(["status", "-a", "demo", "--timeout", "1"]) == 1
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert err == "nixfly: Fly API GET /apps/demo/machines: no answer within 1s (--timeout to wait longer)\n"


def test_a_hung_request_mid_deploy_ends_the_deploy(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    fly_api.inject_fault("hang", method="GET", path_contains="/secrets")
    try:
        assert main(["deploy", "-c", str(toml), "--image", demo_images["v1"], "--timeout", "1s"]) == 1
    finally:
        fly_api.unhang.set()
    assert "GET /apps/demo/secrets: no answer within 1s" in capsys.readouterr().err
    assert fly_api.machines("demo") == []


# -- kill -9 at every step, then a re-run converges -----------------------------------------------------


@pytest.mark.parametrize("k", range(4))  # v6, shared v4, first machine, second machine
def test_first_deploy_killed_at_each_step_converges(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], k: int
) -> None:
    toml = write_toml(demo_app)
    args = ("deploy", "-c", str(toml), "--image", demo_images["v1"], "--lease-timeout", "4s")
    assert run_killed_at(fly_api, k, *args)
    steps = [r for r in fly_api.requests if is_step(r)]
    assert len(steps) == k + 1  # the kill came at that step, and nothing after it was sent
    rerun = start_cli(*args)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    machines = fly_api.machines("demo")
    assert len(machines) == 2 and {m.image for m in machines} == {demo_images["v1"]}
    assert all(m.state == "started" for m in machines)
    ips = sorted((ip["shared"], ":" in ip["ip"]) for ip in fly_api.apps["demo"].ips)
    assert ips == [(False, True), (True, False)]  # one dedicated IPv6, one shared IPv4, nothing twice
    # A third run has nothing left to do.
    fly_api.requests.clear()
    assert main(["deploy", "-c", str(toml), "--image", demo_images["v1"]]) == 0
    assert fly_api.mutations() == []


@pytest.mark.parametrize("k", range(10))  # 2 greens, 2 uncordons, then cordon/stop/destroy of each blue
def test_bluegreen_deploy_killed_at_each_step_converges(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], k: int
) -> None:
    toml = write_toml(demo_app, strategy="bluegreen")
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    blues = {fly_api.seed_machine("demo", config).id for _ in range(2)}
    args = ("deploy", "-c", str(toml), "--image", demo_images["v2"], "--lease-timeout", "4s")
    assert run_killed_at(fly_api, k, *args)
    rerun = start_cli(*args)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    machines = fly_api.machines("demo")
    # Two machines, both green, all on the new image, all taking traffic: not four, not a blue left over.
    assert len(machines) == 2 and {m.image for m in machines} == {demo_images["v2"]}
    assert not {m.id for m in machines} & blues
    assert no_live_cordon(fly_api) and all(m.state == "started" for m in machines)
    fly_api.requests.clear()
    assert main(["deploy", "-c", str(toml), "--image", demo_images["v2"]]) == 0
    assert fly_api.mutations() == []


# -- two deploys at once --------------------------------------------------------------------------------


def _updates_per_machine(fly_api: RunningStandin) -> dict[str, int]:
    return {m.id: len(m.configs) - 1 for m in fly_api.machines("demo")}


def test_two_deploys_at_once_from_one_state_dir_run_one_after_the_other(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    for _ in range(2):
        fly_api.seed_machine("demo", config)
    fly_api.start_delay = 0.4  # each update takes a while, so the two runs overlap
    args = ("deploy", "-c", str(toml), "--image", demo_images["v2"])
    first, second = start_cli(*args), start_cli(*args)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    # One of them waited for the other, then found nothing left to do: each machine was updated once.
    assert "waiting for nixfly deploy (pid" in err1 + err2
    assert sorted([out1.startswith("no change"), out2.startswith("no change")]) == [False, True]
    assert _updates_per_machine(fly_api) == dict.fromkeys(_updates_per_machine(fly_api), 1)
    assert all(m.lease is None for m in fly_api.machines("demo"))


def test_two_first_deploys_at_once_make_the_app_once(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    args = ("deploy", "-c", str(toml), "--image", demo_images["v1"])
    procs = [start_cli(*args), start_cli(*args)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    machines = fly_api.machines("demo")
    assert len(machines) == 2 and all(len(m.configs) == 1 for m in machines)
    assert len(fly_api.apps["demo"].ips) == 2


def test_a_live_deploy_from_another_state_dir_keeps_its_leases(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    for _ in range(2):
        fly_api.seed_machine("demo", config)
    fly_api.start_delay = 30.0  # the first run's updated machine stays "replacing" until we let it start
    updating = threading.Event()
    fly_api.on_request = lambda r: updating.set() if is_step(r) else None
    first = start_cli("deploy", "-c", str(toml), "--image", demo_images["v2"], state=demo_app / "a")
    try:
        assert updating.wait(60), "the first deploy never updated a machine"
        fly_api.on_request = None
        second = start_cli("deploy", "-c", str(toml), "--image", demo_images["v2"], state=demo_app / "b")
        _out, err2 = second.communicate(timeout=120)
    finally:
        fly_api.start_delay = 0.0
        with fly_api.lock:
            for m in fly_api.machines("demo"):
                m.due_start = 0.0
        _out, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    # The first run is alive: its leases are not "left by an interrupted deploy"; the second changes nothing.
    assert second.returncode == 1
    last = err2.strip().splitlines()[-1]
    assert f"is leased by nixfly deploy (pid {first.pid} on " in last and "nothing was changed" in last
    assert _updates_per_machine(fly_api) == dict.fromkeys(_updates_per_machine(fly_api), 1)


# -- the first lease request fails ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "reset", "lost"])
def test_first_lease_request_failing_is_retried(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], fault: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    toml = write_toml(demo_app)
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    (m,) = [fly_api.seed_machine("demo", config)]
    fly_api.inject_fault(fault, method="POST", path_contains="/lease")
    assert main(["deploy", "-c", str(toml), "--image", demo_images["v2"]]) == 0, capsys.readouterr().err
    assert fly_api.machines("demo")[0].image == demo_images["v2"] and m.lease is None
    leases = [r for r in fly_api.requests if r.method == "POST" and r.path.endswith(f"{m.id}/lease")]
    assert len(leases) >= 2  # the failed request, then the retry
    if fault == "lost":
        # The lease was granted and its answer lost: the retry met 409, and the run recognised its own lease
        # (its description names this run) instead of waiting out the TTL.
        assert any(r.method == "GET" and r.path.endswith(f"{m.id}/lease") for r in fly_api.requests)
        descriptions = {json.loads(r.body)["description"] for r in leases}
        assert len(descriptions) == 1 and next(iter(descriptions)).startswith(f"nixfly deploy pid={os.getpid()} ")
