"""Deploys against the spec-validating stand-in (which answers like the real API: autostop booleans,
wrapped leases, crash loops with exit events, stale /wait answers without a version), with images in a
real registry: no needless restarts, crash loops caught in seconds, typos refused before any request,
spec-valid rollbacks, secrets from the API, tag resolution, --ha, apps create, secrets rolls, and the
status / releases / rollback round trip."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.fly.api import AccessToken, MachinesAPI, resolve_api_url
from nixfly.fly.deploy import Deployer, DeploySettings, plan_deploy
from nixfly.fly.flytoml import load_fly_toml
from nixfly.fly.machineconfig import machine_configs
from tests.support.flystandin import RunningStandin
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow  # real docker-registry + skopeo

FLY_TOML = """\
app = "demo"
primary_region = "ams"
[deploy]
strategy = "{strategy}"
max_unavailable = 1
{wait}
[http_service]
internal_port = 8080
auto_stop_machines = "stop"
auto_start_machines = true
[[http_service.checks]]
interval = "10s"
timeout = "2s"
path = "/health"
{extra}
"""


def write_toml(path: Path, *, strategy: str = "rolling", wait: str | None = "5s", extra: str = "") -> Path:
    toml = path / "fly.toml"
    toml.write_text(FLY_TOML.format(strategy=strategy, wait=f'wait_timeout = "{wait}"' if wait else "", extra=extra))
    return toml


def deploy(toml: Path, image: str, *extra: str) -> int:
    return main(["deploy", "-c", str(toml), "--image", image, *extra])


def machine_posts(fly_api: RunningStandin, ids: set[str] | None = None) -> list[str]:
    """Machine ids that got a create/update POST (not leases, waits or metadata)."""
    out = []
    for r in fly_api.requests:
        parts = r.path.rstrip("/").split("/")
        if r.method == "POST" and parts[-2] == "machines" and (ids is None or parts[-1] in ids):
            out.append(parts[-1])
        elif r.method == "POST" and parts[-1] == "machines":
            out.append("new")
    return out


# -- defects 1 and 6: an unchanged deploy changes nothing and says so ------------------------------------


def test_redeploying_the_running_image_touches_nothing(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    assert deploy(toml, demo_images["v1"]) == 0
    machines = fly_api.machines("demo")
    assert len(machines) == 2  # --ha: a service's first deploy makes two machines
    # The API answers autostop as a boolean although we sent "stop".
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    assert api.get_machine("demo", machines[0].id).config["services"][0]["autostop"] is True
    capsys.readouterr()
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v1"], "--dry-run") == 0
    assert "no change" in capsys.readouterr().out
    assert deploy(toml, demo_images["v1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("no change: demo already runs ")
    assert fly_api.mutations() == []
    assert [len(m.configs) for m in fly_api.machines("demo")] == [1, 1]


def test_dry_run_describes_bluegreen_canary_and_volumes(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, strategy="bluegreen")
    assert deploy(toml, demo_images["v1"], "--ha=false") == 0
    (blue,) = fly_api.machines("demo")
    capsys.readouterr()
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"], "--dry-run") == 0
    out = capsys.readouterr().out
    assert "create green machine in ams [app] to replace " + blue.id in out
    assert f"destroy blue machine {blue.id} [app] once every green is healthy" in out
    assert f"update {blue.id}" not in out
    assert deploy(toml, demo_images["v2"], "--dry-run", "--strategy", "canary") == 0
    out = capsys.readouterr().out
    assert "create canary machine in ams [app], destroyed once healthy" in out and f"update {blue.id} [app]" in out
    # A new group with a volume: the volume creation is in the plan; no create diff starts with "- : {}".
    toml.write_text(
        toml.read_text()
        + '[processes]\napp = "serve"\nworker = "work"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n'
        'processes = ["worker"]\ninitial_size = "3gb"\n'
    )
    toml.write_text(toml.read_text().replace("[http_service]\n", '[http_service]\nprocesses = ["app"]\n'))
    assert deploy(toml, demo_images["v2"], "--dry-run") == 0
    out = capsys.readouterr().out
    assert "create volume data (3GB) in ams [worker]" in out and "create new machine in ams [worker]" in out
    assert "- : {}" not in out
    assert fly_api.mutations() == []


# -- defect 2: every request of a failing rolling deploy, rollback included, is spec-valid ----------------


def test_failing_rolling_deploy_and_rollback_are_spec_valid(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, wait="1s")
    assert deploy(toml, demo_images["v1"]) == 0
    fly_api.fail_checks("/demo-bad@")
    assert deploy(toml, demo_images["bad"]) == 1
    assert "restored the previous config on 1 machine" in capsys.readouterr().err
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    updates = [json.loads(r.body) for r in fly_api.requests
               if r.method == "POST" and r.path.rstrip("/").split("/")[-2] == "machines"]  # fmt: skip
    assert [u["config"]["image"] for u in updates] == [demo_images["bad"], demo_images["v1"]]  # the rollback is the 2nd
    assert updates[1]["config"]["services"][0]["autostop"] == "stop"
    assert fly_api.violations == []


# -- defect 3: a crash loop fails the deploy in seconds, not at the 300 s timeout --------------------------


def test_crash_loop_is_rolled_back_within_seconds(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, wait=None)  # the default wait_timeout (300 s) applies
    assert deploy(toml, demo_images["v1"]) == 0
    fly_api.crash("/demo-bad@")
    fly_api.requests.clear()
    assert deploy(toml, demo_images["bad"]) == 1
    done = time.time()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "crashed: exited with code 1" in err and "restored the previous config on 1 machine" in err
    exits = [e["timestamp"] / 1000 for m in fly_api.machines("demo") for e in m.events
             if e["type"] == "exit"]  # fmt: skip
    assert exits and done - min(exits) < 10
    assert len(fly_api.requests) < 60
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}


# -- defect 4: unknown keys and misspelt sections fail before any request ---------------------------------


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        ("[http_servce]\ninternal_port = 8080\n", "http_servce: unknown key (did you mean 'http_service'?)"),
        ("", "http_service.force_http: unknown key (did you mean 'force_https'?)"),
    ],
)
def test_misspelt_keys_fail_before_any_request(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str],
    typo: str, message: str,
) -> None:  # fmt: skip
    toml = write_toml(demo_app, extra=typo)
    if not typo:
        toml.write_text(toml.read_text().replace("internal_port = 8080\n", "internal_port = 8080\nforce_http = true\n"))
    assert deploy(toml, demo_images["v1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "--allow-unknown-keys" in err and err.count("\n") == 1
    assert fly_api.requests == []
    assert deploy(toml, demo_images["v1"], "--allow-unknown-keys", "--ha=false") == 0
    assert "unknown key, ignored" in capsys.readouterr().err


# -- defect 5: an API URL without /v1 -----------------------------------------------------------------


def test_api_url_without_v1_is_accepted(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host_only = fly_api.url.removesuffix("/v1")
    assert resolve_api_url(host_only) == fly_api.url and resolve_api_url(fly_api.url + "/") == fly_api.url
    monkeypatch.setenv("FLY_API_URL", host_only)
    assert deploy(write_toml(demo_app), demo_images["v1"], "--ha=false") == 0
    monkeypatch.delenv("FLY_API_URL")
    monkeypatch.setenv("FLY_API_BASE_URL", host_only)  # flyctl's spelling
    assert main(["status", "-a", "demo"]) == 0


# -- defect 7: Ctrl-C says where the app is, and can roll back; --json failures are JSON ------------------


@pytest.mark.parametrize("rollback", [False, True])
def test_interrupt_reports_images_and_can_roll_back(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], rollback: bool
) -> None:
    toml = write_toml(demo_app)
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    for _ in range(3):
        fly_api.seed_machine("demo", config)
    api = MachinesAPI(AccessToken(fly_api.token), fly_api.url)
    settings = DeploySettings(app="demo", max_unavailable=1, wait_timeout=5, rollback_on_interrupt=rollback)
    plan = plan_deploy(api.list_machines("demo"), machine_configs(load_fly_toml(toml), demo_images["v2"]), settings)
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("updated machine") and sum(x.startswith("updated") for x in lines) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Deployer(api, plan, settings, state_dir=demo_app / "state", progress=progress).run()
    said = "\n".join(lines)
    assert f"interrupted: 2 machine(s) on the new image {demo_images['v2']}" in said
    assert f"interrupted: 1 machine(s) on the previous image {demo_images['v1']}" in said
    if rollback:
        assert "restored the previous config on 2 machine(s)" in said
        assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    else:
        assert "nixfly rollback" in said
        on = sorted(m.image for m in fly_api.machines("demo"))
        assert on == sorted([demo_images["v1"]] + [demo_images["v2"]] * 2)
    assert all(m.lease is None for m in fly_api.machines("demo"))


def test_failed_deploy_json_prints_an_error_object(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, wait="1s")
    fly_api.fail_checks("/demo-bad@")
    assert deploy(toml, demo_images["bad"], "--json") == 1
    out = capsys.readouterr()
    body = json.loads(out.out)
    assert body["app"] is None or body["app"] == "demo"
    assert body["exit_code"] == 1 and "checks not passing" in body["error"]
    assert out.err.strip().splitlines()[-1] == f"nixfly: {body['error']}"


# -- defect 8: /wait names the instance the update returned ----------------------------------------------


def test_wait_names_the_updated_instance(fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]) -> None:
    toml = write_toml(demo_app)
    assert deploy(toml, demo_images["v1"], "--ha=false") == 0
    fly_api.start_delay = 0.5  # long enough for a /wait without a version to get the old instance's answer
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"]) == 0
    (m,) = fly_api.machines("demo")
    update = next(r for r in fly_api.requests if r.method == "POST" and r.path.endswith(m.id))
    assert update
    waits = [dict(r.query) for r in fly_api.requests if r.path.endswith("/wait")]
    assert waits and all(w.get("version") == m.instance_id for w in waits)


# -- defect 9: the secrets version comes from the API, not from this host ---------------------------------


def test_secrets_staged_elsewhere_reach_the_machines(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write_toml(demo_app)
    assert deploy(toml, demo_images["v1"], "--ha=false") == 0
    monkeypatch.setenv("NIXFLY_STATE_DIR", str(demo_app / "laptop"))
    assert main(["secrets", "set", "-a", "demo", "--stage", "DB_URL=postgres://x"]) == 0
    monkeypatch.setenv("NIXFLY_STATE_DIR", str(demo_app / "ci"))  # another host: it never saw the version
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v1"]) == 0
    (m,) = fly_api.machines("demo")
    # The secrets' digest (from the API's list) rolled the machine; the version is not known on this host and
    # nothing is written to learn it (issue 21 §4): no min_secrets_version, so it gets the current secrets.
    assert len(m.configs) == 2 and m.min_secrets_version is None
    assert m.config["metadata"]["nixfly_secrets"] and "nixfly_secrets_version" not in m.config["metadata"]
    assert not [r for r in fly_api.requests if r.path.endswith("/secrets") and r.method != "GET"]
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v1"]) == 0  # and now nothing changes
    assert fly_api.mutations() == []


# -- parity: tags resolved once, --ha, apps create, secrets set rolls -------------------------------------


def test_tags_are_resolved_to_digests_in_the_real_registry(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    toml = write_toml(demo_app, extra=f'[build]\nimage = "{registry.host}/demo:v2"\n')
    assert main(["deploy", "-c", str(toml), "--ha=false"]) == 0
    err = capsys.readouterr().err
    assert f"resolved {registry.host}/demo:v2 to {demo_images['v2']}" in err
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}
    assert deploy(toml, f"{registry.host}/demo:v1", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"] == demo_images["v1"] and summary["resolved_from"] == f"{registry.host}/demo:v1"
    # The digest is what skopeo (an independent client) says the tag points to.
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/demo:v1"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert demo_images["v1"].endswith(json.loads(raw)["Digest"])
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    # A registry that does not answer: one line, and no Machines API request.
    from tests.support.registry import free_port

    fly_api.requests.clear()
    assert deploy(toml, f"127.0.0.1:{free_port()}/demo:v1") == 1
    err = capsys.readouterr().err
    assert err.startswith("nixfly: cannot resolve image 127.0.0.1:") and err.count("\n") == 1
    assert fly_api.requests == []


@pytest.mark.parametrize(("flag", "count"), [((), 2), (("--ha=false",), 1), (("--ha", "false"), 1)])
def test_ha_machine_counts(fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str],
                           flag: tuple[str, ...], count: int) -> None:  # fmt: skip
    toml = write_toml(demo_app, extra='[processes]\napp = "serve"\nworker = "work"\n')
    toml.write_text(toml.read_text().replace("[http_service]\n", '[http_service]\nprocesses = ["app"]\n'))
    assert deploy(toml, demo_images["v1"], "--smoke-period", "0.2", *flag) == 0
    groups = sorted(m.group for m in fly_api.machines("demo"))
    # A group without a service gets one machine and, with --ha, a standby for it (flyctl), created stopped.
    assert groups == ["app"] * count + ["worker"] * count
    workers = sorted(fly_api.machines("demo"), key=lambda m: bool(m.config.get("standbys")))
    workers = [m for m in workers if m.group == "worker"]
    if count == 2:
        assert workers[0].state == "started" and workers[1].state == "stopped"
        assert workers[1].config["standbys"] == [workers[0].id]
        assert workers[1].config["env"]["FLY_STANDBY_FOR"] == workers[0].id


def test_apps_create_and_deploy_create_app(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apps", "create", "fresh-app", "--org", "acme"]) == 0
    assert "fresh-app" in fly_api.apps
    create = next(r for r in fly_api.requests if r.path == "/v1/apps")
    assert json.loads(create.body) == {"name": "fresh-app", "org_slug": "acme"}
    assert main(["apps", "create", "fresh-app"]) == 2
    assert "already exists" in capsys.readouterr().err
    toml = write_toml(demo_app)
    toml.write_text(toml.read_text().replace('app = "demo"', 'app = "other-app"'))
    assert deploy(toml, demo_images["v1"]) == 1
    assert "nixfly apps create other-app" in capsys.readouterr().err
    assert deploy(toml, demo_images["v1"], "--create-app", "--ha=false") == 0
    assert [m.image for m in fly_api.machines("other-app")] == [demo_images["v1"]]


def test_secrets_set_rolls_each_machine_under_its_lease(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    assert deploy(toml, demo_images["v1"]) == 0
    ids = {m.id for m in fly_api.machines("demo")}
    fly_api.requests.clear()
    assert main(["secrets", "set", "-c", str(toml), "TOKEN=s3cr3t-abc"]) == 0
    out = capsys.readouterr()
    assert "restarted 2 machine(s)" in out.out and "s3cr3t-abc" not in out.out + out.err
    version = fly_api.apps["demo"].secrets_version
    for m in fly_api.machines("demo"):
        assert m.min_secrets_version == version and len(m.configs) == 2
        assert m.configs[-1]["image"] == demo_images["v1"]
        reqs = [r for r in fly_api.requests if f"/machines/{m.id}" in r.path]
        lease_at = next(i for i, r in enumerate(reqs) if r.method == "POST" and r.path.endswith("/lease"))
        update_at = next(i for i, r in enumerate(reqs) if r.method == "POST" and r.path.endswith(m.id))
        assert lease_at < update_at and reqs[update_at].headers.get("fly-machine-lease-nonce")
        assert m.lease is None
    assert machine_posts(fly_api, ids).count(next(iter(ids))) == 1
    # The machines now run with those secrets: a deploy of the same image has nothing to do.
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v1"]) == 0
    assert fly_api.mutations() == []
    # --stage stores only.
    fly_api.requests.clear()
    assert main(["secrets", "set", "-a", "demo", "--stage", "TOKEN=other"]) == 0
    assert machine_posts(fly_api, ids) == []
    # unset rolls them too; with no secrets left the machines carry no secrets tags, and a deploy is a no-op.
    assert main(["secrets", "unset", "-a", "demo", "TOKEN"]) == 0
    assert "restarted 2 machine(s)" in capsys.readouterr().out
    assert all("nixfly_secrets" not in m.config["metadata"] for m in fly_api.machines("demo"))
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v1"]) == 0
    assert fly_api.mutations() == []


# -- beyond flyctl: status, releases, rollback ------------------------------------------------------------


def test_status_releases_rollback_round_trip(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, strategy="canary")
    assert deploy(toml, demo_images["v1"]) == 0
    assert deploy(toml, demo_images["v2"]) == 0
    capsys.readouterr()
    assert main(["status", "-c", str(toml), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["last_release"]["image"] == demo_images["v2"] and st["last_release"]["version"] == 2
    assert [(m["group"], m["image"], m["matches_last_release"]) for m in st["machines"]] == [
        ("app", demo_images["v2"], True)] * 2  # fmt: skip
    assert all(set(m["checks"].values()) == {"passing"} for m in st["machines"])

    assert main(["rollback", "-c", str(toml)]) == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    capsys.readouterr()
    assert main(["releases", "-a", "demo", "--json"]) == 0
    rel = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["image"], r["command"], r["outcome"], r["strategy"]) for r in rel] == [
        (3, demo_images["v1"], "rollback", "deployed", "canary"),
        (2, demo_images["v2"], "deploy", "deployed", "canary"),
        (1, demo_images["v1"], "deploy", "deployed", "canary"),
    ]
    # The log is on every machine (metadata), so a host with no local state reads the same thing.
    for m in fly_api.machines("demo"):
        assert [r["version"] for r in json.loads(m.config["metadata"]["nixfly_releases"])] == [3, 2, 1]
    # --to names a release; rolling "back" to v2 moves forward again.
    assert main(["rollback", "-c", str(toml), "--to", "v2"]) == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v2"]}
    assert main(["rollback", "-c", str(toml), "--to", "v9"]) == 2
    assert "no release 'v9'" in capsys.readouterr().err
    assert main(["status", "-a", "demo"]) == 0
    text = capsys.readouterr().out
    assert "release v4" in text and "current" in text and "NOT the last release" not in text
