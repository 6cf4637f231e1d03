"""Issue 21 §3, §4, §6, §7: a first deploy makes the app reachable, stopped machines stay stopped, standbys
and replacements as flyctl makes them, smoke checks; the release and the secrets version without extra
writes; nothing deployed that cannot run; the deploy flags flyctl users reach for. Against the
spec-validating stand-in, images in a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.fly.flytoml import load_fly_toml
from nixfly.fly.machineconfig import machine_configs
from tests.support.flystandin import RunningStandin, push_tiny_image
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.slow  # real docker-registry + skopeo

SERVICE = """\
[http_service]
internal_port = 8080
processes = ["app"]
[[http_service.checks]]
interval = "10s"
timeout = "2s"
path = "/health"
"""


def write_toml(path: Path, body: str = SERVICE, strategy: str = "rolling") -> Path:
    toml = path / "fly.toml"
    toml.write_text(f'app = "demo"\nprimary_region = "ams"\n[deploy]\nstrategy = "{strategy}"\nmax_unavailable = 1\n'
                    f'wait_timeout = "5s"\n{body}')  # fmt: skip
    return toml


def deploy(toml: Path, image: str, *extra: str) -> int:
    return main(["deploy", "-c", str(toml), "--image", image, *extra])


def seed(fly_api: RunningStandin, toml: Path, image: str, states: list[str], group: str = "app") -> list[str]:
    config = machine_configs(load_fly_toml(toml), image)[group]
    return [fly_api.seed_machine("demo", config, state=s).id for s in states]


def posts(fly_api: RunningStandin, suffix: str) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in fly_api.requests if r.method == "POST" and r.path.endswith(suffix)]


# -- §3 a first deploy makes the app reachable --------------------------------------------------------------


def test_first_deploy_allocates_ipv6_and_shared_ipv4_and_status_shows_them(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    assert deploy(toml, demo_images["v1"], "--json") == 0
    out = capsys.readouterr()
    assert [p["type"] for p in posts(fly_api, "/ip_assignments")] == ["v6", "shared_v4"]
    ips = fly_api.apps["demo"].ips
    assert f"allocated dedicated IPv6: {ips[0]['ip']}" in out.err
    assert f"allocated shared IPv4: {ips[1]['ip']}" in out.err
    assert [i["ip"] for i in json.loads(out.out)["ips"]] == [ips[0]["ip"], ips[1]["ip"]]
    # IPs come before any machine: a machine that serves nobody is not the first thing made.
    writes = [r.path for r in fly_api.requests if r.method == "POST" and not r.path.endswith("/lease")]
    assert writes[0].endswith("/ip_assignments") and writes[1].endswith("/ip_assignments")
    assert main(["status", "-a", "demo"]) == 0
    text = capsys.readouterr().out
    assert f"{ips[0]['ip']} (public IPv6)" in text and f"{ips[1]['ip']} (shared IPv4)" in text
    # A redeploy (another image) allocates nothing more.
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"]) == 0
    assert posts(fly_api, "/ip_assignments") == [] and len(fly_api.apps["demo"].ips) == 2


@pytest.mark.parametrize(
    ("body", "flags", "kinds"),
    [
        ("", (), []),  # no services: nothing to reach
        (SERVICE, ("--no-public-ips",), []),
        (SERVICE, ("--flycast",), ["private_v6"]),
        # a TCP service on another port needs a dedicated IPv4, which flyctl asks about: only the IPv6
        ('[[services]]\ninternal_port = 5432\nprotocol = "tcp"\n[[services.ports]]\nport = 5432\n', (), ["v6"]),
    ],
)
def test_which_addresses_a_first_deploy_allocates(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], body: str, flags: tuple[str, ...],
    kinds: list[str], capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    toml = write_toml(demo_app, body)
    assert deploy(toml, demo_images["v1"], "--ha=false", "--smoke-period", "0.1", *flags) == 0
    assert [p["type"] for p in posts(fly_api, "/ip_assignments")] == kinds
    if kinds == ["v6"]:
        assert "fly ips allocate-v4" in capsys.readouterr().err


def test_stopped_machines_are_updated_and_left_stopped(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    running, stopped, suspended = seed(fly_api, toml, demo_images["v1"], ["started", "stopped", "suspended"])
    assert deploy(toml, demo_images["v2"], "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"update {stopped} [app] without starting it (it stays stopped)" in out
    assert f"update {suspended} [app] without starting it (it stays stopped)" in out
    assert f"update {running} [app]\n" in out
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"], "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    machines = {m.id: m for m in fly_api.machines("demo")}
    assert {m.image for m in machines.values()} == {demo_images["v2"]}
    assert machines[running].state == "started"
    assert machines[stopped].state == "stopped" and machines[suspended].state == "stopped"
    assert sorted(summary["left_stopped"]) == sorted([stopped, suspended])
    updates = {r.path.rsplit("/", 1)[1]: json.loads(r.body) for r in fly_api.requests
               if r.method == "POST" and r.path.rsplit("/", 2)[-2] == "machines"}  # fmt: skip
    assert updates[stopped]["skip_launch"] is True and "skip_launch" not in updates[running]
    # Not waited on: no /wait for the machines that stay stopped.
    waited = {r.path.split("/")[-2] for r in fly_api.requests if r.path.endswith("/wait")}
    assert waited == {running}


def test_start_stopped_starts_and_checks_them(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str]
) -> None:
    toml = write_toml(demo_app)
    (stopped,) = seed(fly_api, toml, demo_images["v1"], ["stopped"])
    assert deploy(toml, demo_images["v2"], "--start-stopped") == 0
    (m,) = fly_api.machines("demo")
    assert m.id == stopped and m.state == "started" and m.image == demo_images["v2"]


def test_renamed_mount_replaces_the_machine(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    mounts = '[[mounts]]\nsource = "{}"\ndestination = "/data"\n'
    toml = write_toml(demo_app, SERVICE + mounts.format("data"))
    assert deploy(toml, demo_images["v1"]) == 0
    (old,) = fly_api.machines("demo")
    toml.write_text(toml.read_text().replace('source = "data"', 'source = "store"'))
    assert deploy(toml, demo_images["v1"], "--dry-run") == 0
    assert f"replace {old.id} [app] with a new machine (its volume is 'data', fly.toml mounts 'store')" in (
        capsys.readouterr().out)  # fmt: skip
    assert deploy(toml, demo_images["v1"]) == 0
    (new,) = fly_api.machines("demo")
    assert new.id != old.id and new.config["mounts"][0]["name"] == "store"
    # The new machine names the one it replaced: a re-run after a kill before the old one went finishes it.
    assert new.config["metadata"]["nixfly_green_for"] == old.id
    volumes = {v["id"]: v for v in fly_api.apps["demo"].volumes.values()}
    assert volumes[new.config["mounts"][0]["volume"]]["name"] == "store"
    # An update in place could not have done it: the API cannot swap a machine's volume.
    assert not [r for r in fly_api.requests if r.method == "POST" and r.path.endswith(f"/machines/{old.id}")]


def test_a_machine_without_checks_must_stay_up_for_the_smoke_period(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, '[processes]\napp = "serve"\n')
    seed(fly_api, toml, demo_images["v1"], ["started"])
    fly_api.crash("/demo-bad@")
    fly_api.crash_after = 0.6  # up for a moment, then it exits: started is not healthy
    assert deploy(toml, demo_images["bad"], "--smoke-period", "2s") == 1
    err = capsys.readouterr().err
    assert "crashed: exited with code 1" in err and "restored the previous config on 1 machine" in err
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["v1"]}
    # Without the smoke check, "started" counted as healthy and the crashing image stayed.
    assert deploy(toml, demo_images["bad"], "--no-smoke-checks") == 0
    assert {m.image for m in fly_api.machines("demo")} == {demo_images["bad"]}


# -- §4 the release and the secrets version without extra writes -------------------------------------------


def test_release_rides_in_the_update_and_dry_run_writes_nothing(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    seed(fly_api, toml, demo_images["v1"], ["started", "started"])
    assert main(["secrets", "set", "-a", "demo", "--stage", "TOKEN=abc123"]) == 0
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"], "--dry-run") == 0
    assert deploy(toml, demo_images["v2"], "--dry-run", "--json") == 0
    assert [r for r in fly_api.requests if r.method != "GET"] == []  # not even POST /secrets {"values": {}}
    capsys.readouterr()
    fly_api.inject_fault("500", path_contains="/metadata", count=100)  # a metadata write would fail now
    assert deploy(toml, demo_images["v2"]) == 0
    assert not [r for r in fly_api.requests if "/metadata" in r.path or (r.path.endswith("/secrets")
                and r.method != "GET")]  # fmt: skip
    for body in posts(fly_api, "/machines/" + fly_api.machines("demo")[0].id):
        log = json.loads(body["config"]["metadata"]["nixfly_releases"])  # type: ignore[index]
        assert log[0]["version"] == 1 and log[0]["image"] == demo_images["v2"]
    capsys.readouterr()
    assert main(["releases", "-a", "demo", "--json"]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == [demo_images["v2"]]


# -- §6 nothing is deployed that cannot run ---------------------------------------------------------------


def test_image_without_entrypoint_or_cmd_is_refused_before_any_write(
    fly_api: RunningStandin, demo_app: Path, registry: RunningRegistry, tiny_nocmd_layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    nocmd = push_tiny_image(tiny_nocmd_layout, registry.host, "demo", "nocmd", demo_app)
    toml = write_toml(demo_app)
    assert deploy(toml, nocmd) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nixfly: image {nocmd} has no entrypoint and no cmd") and err.count("\n") == 1
    assert fly_api.mutations() == []
    # A command from fly.toml is something to run.
    toml.write_text(toml.read_text() + '[processes]\napp = "/bin/serve"\n')
    assert deploy(toml, nocmd, "--ha=false") == 0


def test_internal_port_the_image_does_not_expose_is_warned_about(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app, SERVICE.replace("8080", "3000"))
    assert deploy(toml, demo_images["v1"], "--dry-run") == 0
    assert "warning: internal_port 3000 is not a port the image exposes (8080)" in capsys.readouterr().err
    assert deploy(write_toml(demo_app), demo_images["v1"], "--dry-run") == 0
    assert "internal_port" not in capsys.readouterr().err


def test_nixfly_toml_of_the_cwd_is_not_built_for_another_directorys_fly_toml(
    fly_api: RunningStandin, demo_app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = demo_app / "app-two"
    elsewhere.mkdir()
    toml = write_toml(elsewhere)
    (demo_app / "nixfly.toml").write_text('[image]\nroots = ["/nix/store/x"]\n')
    monkeypatch.chdir(demo_app)
    rc = main(["deploy", "-c", str(toml)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{toml} is not next to ./nixfly.toml" in err and err.count("\n") == 1
    assert fly_api.requests == []


# -- §7 the flags flyctl users reach for -------------------------------------------------------------------


def test_deploy_flags(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    toml.write_text(toml.read_text().replace('wait_timeout = "5s"\n', 'wait_timeout = "5s"\nrelease_command = "m"\n'))
    config = machine_configs(load_fly_toml(toml), demo_images["v1"])["app"]
    ams = [fly_api.seed_machine("demo", config, region="ams").id for _ in range(2)]
    (fra,) = [fly_api.seed_machine("demo", config, region="fra").id]
    # --regions, a Go duration for --wait-timeout, --lease-timeout, -e, --skip-release-command.
    assert deploy(toml, demo_images["v2"], "--regions", "fra", "--wait-timeout", "10m", "--lease-timeout", "5s",
                  "-e", "GREETING=hi there", "--skip-release-command") == 0  # fmt: skip
    machines = {m.id: m for m in fly_api.machines("demo")}
    assert machines[fra].image == demo_images["v2"] and machines[fra].config["env"]["GREETING"] == "hi there"
    assert all(machines[i].image == demo_images["v1"] for i in ams)
    assert {json.loads(r.body)["ttl"] for r in fly_api.requests if r.method == "POST" and r.path.endswith("/lease")
            } == {5}  # fmt: skip
    assert not [m for m in fly_api.apps["demo"].machines.values() if m.group == "fly_app_release_command"]
    # --only-machines, --max-unavailable, --detach (no /wait at all).
    fly_api.requests.clear()
    assert deploy(toml, demo_images["v2"], "--only-machines", ams[0], "--detach", "--max-unavailable", "2",
                  "--skip-release-command") == 0  # fmt: skip
    assert fly_api.machines("demo") and {m.id for m in fly_api.machines("demo") if m.image == demo_images["v2"]} == {
        fra, ams[0]}  # fmt: skip
    assert not [r for r in fly_api.requests if r.path.endswith("/wait")]
    # A bad duration is one line, exit 2.
    assert deploy(toml, demo_images["v2"], "--wait-timeout", "ten minutes") == 2
    assert "give seconds (90) or a duration like 90s" in capsys.readouterr().err


def test_create_app_dry_run_plans_a_new_app(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(demo_app)
    toml.write_text(toml.read_text().replace('app = "demo"', 'app = "brand-new"'))
    assert deploy(toml, demo_images["v1"], "--create-app", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "create app brand-new" in out and "allocate IP address (dedicated IPv6)" in out
    assert out.count("create new machine in ams [app]") == 2
    assert [r for r in fly_api.requests if r.method != "GET"] == [] and "brand-new" not in fly_api.apps
    assert deploy(toml, demo_images["v1"], "--create-app") == 0
    assert len(fly_api.machines("brand-new")) == 2


def test_image_in_a_registry_this_host_cannot_reach(
    fly_api: RunningStandin, demo_app: Path, demo_images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.registry import free_port

    toml = write_toml(demo_app)
    unreachable = f"127.0.0.1:{free_port()}/demo@" + demo_images["v1"].split("@", 1)[1]
    assert deploy(toml, unreachable) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nixfly: cannot read image {unreachable}: ") and err.count("\n") == 1
    assert "--no-image-check" in err and fly_api.mutations() == []


def test_creds_reach_a_registry_that_needs_them(
    fly_env: RunningStandin, basic_registry: RunningRegistry, tiny_oci_layout: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import subprocess

    fly_env.create_app("demo")
    digest_file = tmp_path / "digest"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"--digestfile={digest_file}",
                    f"--dest-creds={basic_registry.username}:{basic_registry.password}", f"oci:{tiny_oci_layout}:v1",
                    f"docker://{basic_registry.host}/demo:v1"], check=True, capture_output=True)  # fmt: skip
    image = f"{basic_registry.host}/demo@{digest_file.read_text().strip()}"
    toml = write_toml(tmp_path)
    assert deploy(toml, image, "--ha=false") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nixfly: cannot read image {image}") and "--creds USER:PASS" in err
    assert err.count("\n") == 1 and fly_env.mutations() == []
    assert deploy(toml, image, "--ha=false", "--creds", f"{basic_registry.username}:{basic_registry.password}") == 0
    assert basic_registry.password not in capsys.readouterr().err
    assert [m.image for m in fly_env.machines("demo")] == [image]
