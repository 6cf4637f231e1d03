"""nixfly deploy against the validated Machines API stand-in, with images resolved in a real registry.

Covers: first deploy creates machines and volumes; rolling honours max_unavailable; failing checks roll
every updated machine back; a foreign lease stops the deploy with nothing changed; Ctrl-C releases leases;
an interrupted deploy's leases are recovered; secrets changes carry min_secrets_version; --dry-run changes
nothing; tag-only images are refused; canary, bluegreen, immediate; release_command gates the deploy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.fly.api import AccessToken, MachinesAPI
from nixfly.fly.deploy import Deployer, DeploySettings, LeaseStore, plan_deploy
from nixfly.fly.flytoml import load_fly_toml
from nixfly.fly.machineconfig import machine_configs
from nixfly.fly.state import Holder, process_start
from tests.support.flystandin import RecordedRequest, RunningStandin
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow  # real docker-registry + skopeo

FLY_TOML = """\
app = "demo"
primary_region = "ams"
[deploy]
strategy = "{strategy}"
max_unavailable = {max_unavailable}
wait_timeout = "{wait}"
{extra_deploy}
[http_service]
internal_port = 8080
processes = ["app"]
[[http_service.checks]]
interval = "10s"
timeout = "2s"
path = "/health"
{extra}
"""


def write_toml(path: Path, *, strategy: str = "rolling", max_unavailable: object = 1, wait: str = "5s",
               extra: str = "", extra_deploy: str = "") -> Path:  # fmt: skip
    toml = path / "fly.toml"
    toml.write_text(
        FLY_TOML.format(
            strategy=strategy, max_unavailable=max_unavailable, wait=wait, extra=extra, extra_deploy=extra_deploy
        )
    )
    return toml


def seed(fly_api: RunningStandin, toml: Path, image: str, n: int) -> list[str]:
    config = machine_configs(load_fly_toml(toml), image)["app"]
    return [fly_api.seed_machine("demo", config).id for _ in range(n)]


def deploy(toml: Path, image: str, *extra: str) -> int:
    return main(["deploy", "--config", str(toml), "--image", image, *extra])


def test_first_deploy_creates_machines_and_volume(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(
        demo_app,
        extra='[processes]\napp = "serve"\nworker = "work"\n'
        '[[mounts]]\nsource = "data"\ndestination = "/data"\nprocesses = ["worker"]\ninitial_size = "3gb"\n',
    )
    assert deploy(toml, demo_images["v1"], "--json", "--ha=false") == 0
    summary = json.loads(capsys.readouterr().out)
    machines = fly_api.machines("demo")
    assert sorted(m.group for m in machines) == ["app", "worker"]
    assert {m.image for m in machines} == {demo_images["v1"]}
    assert sorted(summary["created"]) == sorted(m.id for m in machines)
    vols = list(fly_api.apps["demo"].volumes.values())
    worker = next(m for m in machines if m.group == "worker")
    assert [(v["name"], v["size_gb"], v.get("attached_machine_id")) for v in vols] == [("data", 3, worker.id)]
    assert worker.config["mounts"] == [{"name": "data", "path": "/data", "volume": vols[0]["id"]}]
    assert all(m.state == "started" and m.lease is None for m in machines)


def test_rolling_update_honours_max_unavailable(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app, max_unavailable=2)
    ids = seed(fly_api, toml, demo_images["v1"], 5)
    assert deploy(toml, demo_images["v2"]) == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}
    # Between health waits, how many machines were updated at once: first one alone, then two at a time.
    runs, current = [], 0
    for r in fly_api.requests:
        if r.method == "POST" and r.path.rstrip("/").split("/")[-1] in ids:
            current += 1
        elif r.path.endswith("/wait") and current:
            runs.append(current)
            current = 0
    assert runs == [1, 2, 2]
    assert all(m.lease is None for m in fly_api.machines("demo"))


def test_failing_checks_restore_every_updated_machine(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, max_unavailable=2, wait="1s")
    ids = seed(fly_api, toml, demo_images["v1"], 5)
    fly_api.fail_checks("/demo-bad@")
    assert deploy(toml, demo_images["bad"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines come first
    assert err.startswith("nixfly: machine ")
    assert "checks not passing" in err and "last events:" in err and "restored the previous config" in err
    machines = {m.id: m for m in fly_api.machines("demo")}
    assert {m.image for m in machines.values()} == {demo_images["v1"]}
    touched = [i for i in ids if len(machines[i].configs) > 1]
    # The first machine failed alone: it was the only one updated, and it got the old image back.
    assert len(touched) == 1 and [c["image"] for c in machines[touched[0]].configs] == [
        demo_images["v1"], demo_images["bad"], demo_images["v1"]
    ]  # fmt: skip
    assert touched[0] in err
    assert all(m.lease is None for m in machines.values())


def test_failure_in_later_batch_restores_earlier_batches(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, max_unavailable=2, wait="1s")
    seed(fly_api, toml, demo_images["v1"], 4)
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    machines = api.list_machines("demo")
    desired = machine_configs(load_fly_toml(toml), demo_images["v2"])
    settings = DeploySettings(app="demo", max_unavailable=2, wait_timeout=1, poll_interval=0.1)
    plan = plan_deploy(machines, desired, settings)
    third = plan.of("update")[2].machine_id
    assert third is not None
    # Only the third machine crashes on the new image (a crash loop, not a check failure).
    original = fly_api.standin._tick

    def tick(m: object) -> None:
        if (
            getattr(m, "id", None) == third
            and getattr(m, "state", "") == "replacing"
            and demo_images["v2"] in str(getattr(m, "image", ""))
        ):
            m.state = "stopped"  # type: ignore[attr-defined]
            fly_api.standin._event(m, "exit", "stopped", {"exit_event": {"exit_code": 137}})  # type: ignore[arg-type]
            return
        original(m)  # type: ignore[arg-type]

    fly_api.standin._tick = tick  # type: ignore[method-assign]
    with pytest.raises(Exception, match=rf"machine {third} crashed .*exit_code=137.*restored the previous config on 3"):
        Deployer(api, plan, settings, state_dir=demo_app / "state").run()
    fly_api.standin._tick = original  # type: ignore[method-assign]
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}


def test_foreign_lease_stops_deploy_with_nothing_changed(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    ids = seed(fly_api, toml, demo_images["v1"], 3)
    fly_api.hold_lease("demo", ids[2], owner="alice@example.com")
    assert deploy(toml, demo_images["v2"]) == 1
    err = capsys.readouterr().err
    assert f"machine {ids[2]} of app demo is leased by alice@example.com" in err and "nothing was changed" in err
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    changed = [r for r in fly_api.mutations() if not r.path.endswith("/lease")]
    assert changed == []
    leases = {m.id: m.lease for m in fly_api.machines("demo")}
    assert leases[ids[0]] is None and leases[ids[1]] is None and leases[ids[2]].owner == "alice@example.com"


def test_waiting_out_an_unnamed_lease_keeps_the_other_leases_alive(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    """A lease without a holder's name (a create's lease_ttl) is waited out; meanwhile the leases already
    granted on the other machines must not run out, or the first update goes to a machine nobody holds."""
    toml = write_toml(demo_app)
    ids = seed(fly_api, toml, demo_images["v1"], 3)
    fly_api.hold_lease("demo", ids[2], owner="", description="", ttl=2.9)
    assert deploy(toml, demo_images["v2"], "--lease-timeout", "2s") == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}
    # The fixture fails the test on "machine changed without holding its lease" as well.
    assert not fly_api.standin.violations


def test_a_refresh_answered_after_the_leases_were_released_gives_its_new_lease_back(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    """The refresher's request is on its way when the deploy ends (its join gives up after 5 s) and the
    lease is released; the API then grants the late refresh as a new lease. That lease must go back at
    once, not hold the machine for its TTL against the next deploy."""
    import threading
    import time

    from nixfly.fly.leases import Leases

    toml = write_toml(demo_app)
    (mid,) = seed(fly_api, toml, demo_images["v1"], 1)
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    leases = Leases(api, "demo", LeaseStore(demo_app / "state", "demo"), holder=Holder.me(), ttl=3,
                    progress=lambda _line: None)  # fmt: skip
    slow_once = threading.Event()

    def hook(r: RecordedRequest) -> None:  # the first refresh (a lease POST with a nonce) takes 6 s
        refresh = r.method == "POST" and r.path.endswith("/lease") and "fly-machine-lease-nonce" in r.headers
        if refresh and not slow_once.is_set():
            slow_once.set()
            time.sleep(6)

    fly_api.on_request = hook
    with leases.held([mid]):
        assert slow_once.wait(10)  # the refresh is in flight
    assert leases._refresher is not None
    leases._refresher.join(15)
    assert not leases._refresher.is_alive()
    (m,) = fly_api.machines("demo")
    assert m.lease is None, m.lease
    assert LeaseStore(demo_app / "state", "demo").load() == {}


def test_ctrl_c_mid_deploy_releases_leases(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    seed(fly_api, toml, demo_images["v1"], 3)
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    settings = DeploySettings(app="demo", max_unavailable=1, wait_timeout=5)
    plan = plan_deploy(api.list_machines("demo"), machine_configs(load_fly_toml(toml), demo_images["v2"]), settings)

    def progress(line: str) -> None:
        if line.startswith("updated machine"):
            assert all(m.lease is not None for m in fly_api.machines("demo"))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Deployer(api, plan, settings, state_dir=demo_app / "state", progress=progress).run()
    assert all(m.lease is None for m in fly_api.machines("demo"))
    assert LeaseStore(demo_app / "state", "demo").load() == {}
    # Exactly one machine got the new image before the interrupt; a re-run finishes the job.
    assert sorted(m.image for m in fly_api.machines("demo")) == sorted([demo_images["v1"]] * 2 + [demo_images["v2"]])
    assert deploy(toml, demo_images["v2"]) == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}


def test_rerun_recovers_leases_left_by_a_killed_deploy(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    ids = seed(fly_api, toml, demo_images["v1"], 2)
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    # A deploy killed with SIGKILL leaves its lease on the machine (naming it as holder) and its nonce in the
    # store. Its process is gone: the re-run takes the lease over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = replace(Holder.me(), pid=dead.pid, start=process_start(dead.pid) or "t0")
    dead.wait()
    nonce = api.acquire_lease("demo", ids[0], ttl=600, description=gone.describe()).nonce
    LeaseStore(demo_app / "state", "demo").put(ids[0], nonce)
    assert deploy(toml, demo_images["v2"]) == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}
    assert LeaseStore(demo_app / "state", "demo").load() == {}


def test_secrets_change_sets_min_secrets_version(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    toml = write_toml(demo_app)
    seed(fly_api, toml, demo_images["v1"], 2)
    secret = "hunter2-very-secret-value"
    assert main(["secrets", "set", "--stage", "--config", str(toml), f"DB_PASSWORD={secret}", "API_KEY=k-123456"]) == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "k-123456" not in out.out + out.err
    # Same image: only the secrets changed, and the machines must still roll onto them.
    assert deploy(toml, demo_images["v1"], "--json") == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    version = fly_api.apps["demo"].secrets_version
    assert version == 1
    assert [m.min_secrets_version for m in fly_api.machines("demo")] == [version, version]
    assert len(json.loads(out.out)["updated"]) == 2


def test_dry_run_changes_nothing(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, extra='[processes]\napp = "serve"\nworker = "work"\n')
    seed_cfg = machine_configs(load_fly_toml(write_toml(demo_app / "..", strategy="rolling")), demo_images["v1"])["app"]
    m = fly_api.seed_machine("demo", seed_cfg)
    old = fly_api.seed_machine("demo", {**seed_cfg, "metadata": {"fly_process_group": "gone"}})
    assert deploy(toml, demo_images["v2"], "--dry-run") == 0
    out = capsys.readouterr().out
    assert fly_api.mutations() == []
    assert f"update {m.id} [app]" in out and f"destroy {old.id} [gone]" in out
    assert "create new machine in ams [worker]" in out
    assert f'- image: "{demo_images["v1"]}"' in out and f'+ image: "{demo_images["v2"]}"' in out
    assert deploy(toml, demo_images["v2"], "--dry-run", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    # The new group has no service: its first machine gets a standby, as flyctl does.
    assert sorted(a["action"] for a in plan["actions"]) == ["create", "create", "destroy", "update"]
    assert fly_api.mutations() == []


def test_tag_that_does_not_resolve_is_refused(
    demo_app: Path, capsys: pytest.CaptureFixture[str], fly_api: RunningStandin, registry: RunningRegistry
) -> None:
    # A tag is resolved to its digest once (issue 11); one that the registry does not have stops the deploy
    # before any Machines API request, with one line. (Before: every tag was refused outright.)
    toml = write_toml(demo_app)
    assert deploy(toml, f"{registry.host}/demo:nope") == 1
    err = capsys.readouterr().err
    assert err.startswith("nixfly: ") and "cannot resolve image" in err and "not found" in err
    assert err.count("\n") == 1
    assert fly_api.requests == []


def test_image_missing_from_registry_fails_cleanly(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    toml = write_toml(demo_app)
    missing = f"{registry.host}/demo@sha256:" + "0" * 64
    fly_api.requests.clear()
    assert deploy(toml, missing) == 1
    err = capsys.readouterr().err
    # Refused before any write, with one line: the registry does not have that digest.
    assert err.startswith(f"nixfly: registry {registry.host} does not have image {missing}") and err.count("\n") == 1
    assert fly_api.mutations() == [] and fly_api.machines("demo") == []


def test_an_image_whose_config_nests_100000_deep_is_one_line_before_any_write(
    fly_api: RunningStandin, demo_app: Path, registry: RunningRegistry, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The deploy reads the image's config before it sends anything; a config blob of 4 MiB nesting (under
    the read limit) is refused as not JSON, not a RecursionError traceback (exit 70)."""
    import hashlib
    import io
    import json as _json

    from nixfly.registry.client import RegistryClient

    config = b"[" * 1_000_000 + b"]" * 1_000_000
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = _json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                                       "size": len(config)}, "layers": []}).encode()  # fmt: skip
    with RegistryClient(registry.host) as client:
        client.upload_blob("deep", cdigest, len(config), lambda: io.BytesIO(config))
        digest = client.put_manifest("deep", "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    fly_api.requests.clear()
    assert deploy(write_toml(demo_app), f"{registry.host}/deep@{digest}") == 1
    err = capsys.readouterr().err
    assert err == f"nixfly: image {registry.host}/deep@{digest}: its config is not JSON\n"
    assert fly_api.mutations() == []


@pytest.mark.parametrize("strategy", ["canary", "bluegreen", "immediate"])
def test_other_strategies_end_on_new_image(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], strategy: str
) -> None:
    toml = write_toml(demo_app, strategy=strategy)
    ids = seed(fly_api, toml, demo_images["v1"], 2)
    assert deploy(toml, demo_images["v2"]) == 0
    machines = fly_api.machines("demo")
    assert len(machines) == 2 and {m.image for m in machines} == {demo_images["v2"]}
    if strategy == "bluegreen":
        assert not {m.id for m in machines} & set(ids)  # blue destroyed, green serving
        assert not any(m.cordoned for m in machines)
        creates = [json.loads(r.body) for r in fly_api.requests if r.method == "POST" and r.path.endswith("/machines")]
        assert all(c["skip_service_registration"] for c in creates)
    else:
        assert {m.id for m in machines} == set(ids)


@pytest.mark.parametrize("strategy", ["canary", "bluegreen"])
def test_failed_canary_or_green_leaves_old_machines_untouched(
    fly_api: RunningStandin,
    demo_app: Path,
    demo_images: dict[str, str],
    strategy: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    toml = write_toml(demo_app, strategy=strategy, wait="1s")
    ids = seed(fly_api, toml, demo_images["v1"], 2)
    fly_api.fail_checks("/demo-bad@")
    assert deploy(toml, demo_images["bad"]) == 1
    assert "checks not passing" in capsys.readouterr().err
    machines = fly_api.machines("demo")
    assert sorted(m.id for m in machines) == sorted(ids)
    assert all(m.image == demo_images["v1"] and len(m.configs) == 1 for m in machines)


@pytest.mark.parametrize(("code", "rc"), [(0, 0), (3, 1)])
def test_release_command_exit_code_gates_deploy(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], code: int, rc: int,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    toml = write_toml(demo_app, extra_deploy='release_command = "migrate --yes"')
    seed(fly_api, toml, demo_images["v1"], 1)
    fly_api.release_exit_code = code
    assert deploy(toml, demo_images["v2"]) == rc
    machines = fly_api.machines("demo")
    assert len(machines) == 1  # the one-off release machine is gone either way
    assert machines[0].image == (demo_images["v2"] if code == 0 else demo_images["v1"])
    if code:
        assert "exited with code 3; nothing was deployed" in capsys.readouterr().err
    release = [m for m in fly_api.apps["demo"].machines.values() if m.group == "fly_app_release_command"]
    assert len(release) == 1 and release[0].config["init"]["cmd"] == ["migrate", "--yes"]


def test_real_sigint_to_cli_releases_leases(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    """A real Ctrl-C (SIGINT) to a running `nixfly deploy` process: exit 130, every lease released.

    Nothing here depends on timing, so a loaded machine cannot fail it: the updated machine never starts
    (its start is an hour away, the deploy's wait_timeout longer than the test's patience), the signal goes
    once the CLI has asked the stand-in to /wait on the updated machine, and every wait is generous."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    patience = 300.0  # seconds; only reached when something is really stuck
    toml = write_toml(demo_app, wait="1h")
    seed(fly_api, toml, demo_images["v1"], 2)
    fly_api.start_delay = 3600.0  # the updated machine stays "replacing": the CLI sits in its /wait loop
    updated = threading.Event()
    waiting = threading.Event()

    def watch(r: RecordedRequest) -> None:
        if r.method == "POST" and r.path.count("/") == 5:  # /v1/apps/demo/machines/<id>: an update
            updated.set()
        elif updated.is_set() and r.method == "GET" and r.path.endswith("/wait"):
            waiting.set()

    fly_api.on_request = watch
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "nixfly"), "deploy", "--config", str(toml), "--image", demo_images["v2"]],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []  # read as they come, so a chatty CLI can never block on a full pipe
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        assert waiting.wait(patience), f"the deploy never waited on an updated machine: {lines}"
        assert proc.poll() is None and any(m.lease is not None for m in fly_api.machines("demo"))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=patience)
        reader.join(timeout=patience)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and lines and lines[-1].strip() == "nixfly: interrupted", lines
    assert all(m.lease is None for m in fly_api.machines("demo"))
    assert LeaseStore(demo_app / "state", "demo").load() == {}
