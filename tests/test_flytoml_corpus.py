"""Real fly.toml files from public repositories (the shared corpus, issue 21): every one flyctl deploys,
nixfly deploys, to the validated Machines API stand-in, with the machine configs flyctl's rules give.

The corpus lives in the team's shared fixtures (``../shared/fixtures/fly/flytoml-corpus``, each file's
repository and commit in its sources.tsv); tests/data/fly/flytoml-corpus is the same set for clones
without it. A file's ``[[files]] local_path`` names a file of its repository that the corpus does not
carry: the test writes a stand-in file there, as the repository would have one.

The expected configs below are written out by hand from flyctl's source (internal/appconfig/patches.go,
processgroups.go, machines.go, service.go, toplevelcheck.go; internal/command/deploy/deploy_first.go,
machines_launchinput.go, machines_releasecommand.go; fly-go machine_types.go), not from nixfly's output.
flyctl's own metadata keys (fly_flyctl_version, fly_release_*) are left out; so are Go zero values it
sends for non-pointer fields (``"init": {}``), which the API reads as absent.
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from nixfly.fly.flytoml import load_fly_toml
from nixfly.fly.machineconfig import machine_configs, release_command_config, volume_requests
from nixfly.fly.normal import comparable
from tests.support.flystandin import RunningStandin, push_tiny_image
from tests.support.registry import RunningRegistry, start_registry
from tests.test_machineconfig import assert_valid_machine_config

_REPO = Path(__file__).resolve().parents[1]


def _corpus_dir() -> Path:
    for parent in _REPO.parents:
        shared = parent / "shared" / "fixtures" / "fly" / "flytoml-corpus"
        if (shared / "sources.tsv").is_file():
            return shared
    return _REPO / "tests" / "data" / "fly" / "flytoml-corpus"


CORPUS = _corpus_dir()
FILES = sorted(CORPUS.glob("*.toml"))
IMAGE = "registry.example/corpus@sha256:" + "c0" * 32
STUB = b'#!/bin/sh\n# stands in for the repository\'s own file\nexec "$@"\n'


def test_the_corpus_is_there() -> None:
    # 37 files, every third of the 112 the issue measured; an empty glob would make every test vanish.
    assert len(FILES) == 37
    listed = [line.split("\t")[0] for line in (CORPUS / "sources.tsv").read_text().splitlines()[1:]]
    assert sorted(listed) == [p.name for p in FILES]


def prepare(src: Path, workdir: Path) -> Path:
    """``src`` as ``workdir/fly.toml``, with a stand-in for each file its ``[[files]] local_path`` names."""
    toml = workdir / "fly.toml"
    toml.write_bytes(src.read_bytes())
    files = tomllib.loads(src.read_text()).get("files") or []
    for f in [files] if isinstance(files, dict) else files:
        if isinstance(f, dict) and isinstance(f.get("local_path"), str):
            (workdir / f["local_path"]).parent.mkdir(parents=True, exist_ok=True)
            (workdir / f["local_path"]).write_bytes(STUB)
    return toml


@pytest.mark.parametrize("src", FILES, ids=[p.stem for p in FILES])
def test_every_corpus_file_loads_and_maps_to_valid_configs(src: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    cfg = load_fly_toml(prepare(src, tmp_path), warn=notes.append)  # no --allow-unknown-keys
    # At most one line for the keys flyctl ignores and one for the Docker-build keys, each naming the file.
    assert len(notes) <= 2 and all(n.startswith(str(tmp_path / "fly.toml") + ": ") for n in notes), notes
    configs = machine_configs(cfg, IMAGE)
    assert list(configs) == cfg.process_groups()
    for mc in configs.values():
        assert_valid_machine_config(mc)
    release = release_command_config(cfg, IMAGE)
    assert (release is None) == (cfg.deploy.release_command is None)
    if release is not None:
        assert_valid_machine_config(release)


# -- what flyctl sends, written out -------------------------------------------------------------------------

SHARED_1X = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}  # flyctl's --vm-size default on a launch


def _meta(group: str) -> dict[str, str]:
    return {"fly_platform_version": "v2", "fly_process_group": group}


def expected_hardcopy(image: str) -> dict[str, Any]:
    """012: old `fly launch` output. processes = [] is no [processes] (patchProcesses); the ms integers of
    the HTTP check are durations (_castDuration); its empty headers table goes (_patchCheckHeaders); method
    stays as written in a service check; tls_skip_verify = false is a pointer, so sent; kill_timeout = 5 is
    seconds; restart_limit, script_checks and allowed_public_ports are no fields of flyctl's config."""
    return {
        "app": {
            "image": image,
            "env": {"PORT": "8080", "FLY_PROCESS_GROUP": "app"},
            "metadata": _meta("app"),
            "services": [{
                "protocol": "tcp", "internal_port": 8080,
                "ports": [{"port": 80, "handlers": ["http"], "force_https": True},
                          {"port": 443, "handlers": ["tls", "http"]}],
                "concurrency": {"type": "connections", "hard_limit": 25, "soft_limit": 20},
                "checks": [
                    {"type": "tcp", "interval": "15s", "timeout": "2s", "grace_period": "1s"},
                    {"type": "http", "interval": "10s", "timeout": "2s", "grace_period": "5s", "method": "get",
                     "path": "/healthcheck", "protocol": "http", "tls_skip_verify": False},
                ],
            }],
            "stop_config": {"signal": "SIGINT", "timeout": "5s"},
            "guest": SHARED_1X,
        }
    }  # fmt: skip


def expected_hardcopy_release(image: str) -> dict[str, Any]:
    """ToReleaseMachineConfig; its guest on a first deploy is shared-cpu-2x (inferReleaseCommandGuest)."""
    return {
        "image": image,
        "init": {"cmd": ["npx", "prisma", "migrate", "deploy"]},
        "env": {"PORT": "8080", "RELEASE_COMMAND": "1", "FLY_PROCESS_GROUP": "fly_app_release_command"},
        "metadata": _meta("fly_app_release_command"),
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "dns": {"skip_registration": True},
        "stop_config": {"signal": "SIGINT", "timeout": "5s"},
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
    }


def expected_postgres(image: str) -> dict[str, Any]:
    """075: `services = []` is no service; [checks] methods are upper-cased (ToplevelCheck.toMachineCheck) and
    "1m" is Go's "1m0s"; a single [metrics] table; kill_timeout = 300 is "5m0s"; enable_consul is flyctl's
    but not part of a machine config."""
    check = {"type": "http", "port": 5500, "timeout": "10s", "method": "GET"}
    return {
        "app": {
            "image": image,
            "env": {"BACKEND_STORE": "consul", "PRIMARY_REGION": "ord", "FLY_PROCESS_GROUP": "app"},
            "metadata": _meta("app"),
            "checks": {
                "pg": {**check, "interval": "15s", "grace_period": "30s", "path": "/flycheck/pg"},
                "role": {**check, "interval": "15s", "grace_period": "30s", "path": "/flycheck/role"},
                "vm": {**check, "interval": "1m0s", "grace_period": "1s", "path": "/flycheck/vm"},
            },
            "mounts": [{"name": "pg_data", "path": "/data"}],
            "stop_config": {"signal": "SIGTERM", "timeout": "5m0s"},
            "metrics": {"port": 9187, "path": "/metrics"},
            "guest": SHARED_1X,
        }
    }


def expected_vllm(image: str) -> dict[str, Any]:
    """081: `entrypoint = "/start.sh"` is one argument (stringOrSliceToSlice); size l40s is fly-go's preset
    (8 performance CPUs, 32 GB, one L40S); the local file is sent base64-encoded (File.toMachineFile)."""
    return {
        "app": {
            "image": image,
            "init": {"entrypoint": ["/start.sh"]},
            "env": {"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ord"},
            "metadata": _meta("app"),
            "services": [{
                "protocol": "tcp", "internal_port": 8000,
                "ports": [{"port": 80, "handlers": ["http"], "force_https": True},
                          {"port": 443, "handlers": ["http", "tls"]}],
            }],
            "mounts": [{"name": "models", "path": "/root/.cache/huggingface"}],
            "files": [{"guest_path": "/start.sh", "raw_value": base64.b64encode(STUB).decode()}],
            "guest": {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768, "gpu_kind": "l40s", "gpus": 1},
        }
    }  # fmt: skip


def expected_mastodon(image: str) -> dict[str, Any]:
    """108: three groups and no "app", so "rails" (first by name) is the default; [[statics]] go on every
    group (flyctl's Static has no processes); each [[services]] on the group it names."""
    env = tomllib.loads((CORPUS / "108-tmm1-flyapp-mastodon.toml").read_text())["env"]
    common = {
        "stop_config": {"signal": "SIGINT", "timeout": "5s"},
        "statics": [{"guest_path": "/opt/mastodon/public", "url_prefix": "/"}],
        "guest": SHARED_1X,
    }
    http = {"type": "http", "interval": "15s", "timeout": "2s", "grace_period": "1s"}
    return {
        "rails": {
            "image": image, "init": {"cmd": ["bundle", "exec", "rails", "s", "-p", "3000"]},
            "env": {**env, "FLY_PROCESS_GROUP": "rails"}, "metadata": _meta("rails"),
            "services": [{
                "protocol": "tcp", "internal_port": 3000, "ports": [{"port": 443, "handlers": ["tls", "http"]}],
                "checks": [{"type": "tcp", "interval": "15s", "timeout": "2s", "grace_period": "1s"},
                           {**http, "path": "/health"}],
            }],
            **common,
        },
        "sidekiq": {
            "image": image, "init": {"cmd": ["bundle", "exec", "sidekiq"]},
            "env": {**env, "FLY_PROCESS_GROUP": "sidekiq"}, "metadata": _meta("sidekiq"), **common,
        },
        "streaming": {
            "image": image, "init": {"cmd": ["node", "./streaming"]},
            "env": {**env, "FLY_PROCESS_GROUP": "streaming"}, "metadata": _meta("streaming"),
            "services": [{
                "protocol": "tcp", "internal_port": 4000, "ports": [{"port": 80, "handlers": ["tls", "http"]}],
                "checks": [{**http, "path": "/api/v1/streaming/health"}],
            }],
            **common,
        },
    }  # fmt: skip


EXPECTED = {
    "012-03c-hardcopy": expected_hardcopy,
    "075-fly-apps-postgres-ha": expected_postgres,
    "081-fly-apps-vllm-demo": expected_vllm,
    "108-tmm1-flyapp-mastodon": expected_mastodon,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_machine_configs_equal_flyctls(name: str, tmp_path: Path) -> None:
    cfg = load_fly_toml(prepare(CORPUS / f"{name}.toml", tmp_path), warn=lambda _m: None)
    assert machine_configs(cfg, IMAGE) == EXPECTED[name](IMAGE)


def test_release_command_machine_and_first_volumes_equal_flyctls(tmp_path: Path) -> None:
    hardcopy = load_fly_toml(prepare(CORPUS / "012-03c-hardcopy.toml", tmp_path), warn=lambda _m: None)
    assert release_command_config(hardcopy, IMAGE) == expected_hardcopy_release(IMAGE)
    # With machines, the release command takes the largest guest of the default group's machines.
    big = {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}
    release = release_command_config(hardcopy, IMAGE, app_guests=[SHARED_1X, big])
    assert release is not None and release["guest"] == big
    # deploy_first.go: encrypted, the group's guest and the image; 1 GB, or 100 GB for a GPU guest.
    postgres = load_fly_toml(prepare(CORPUS / "075-fly-apps-postgres-ha.toml", tmp_path), warn=lambda _m: None)
    assert volume_requests(postgres, IMAGE) == {
        "pg_data": {"name": "pg_data", "size_gb": 1, "encrypted": True, "compute_image": IMAGE, "compute": SHARED_1X}
    }
    vllm = load_fly_toml(prepare(CORPUS / "081-fly-apps-vllm-demo.toml", tmp_path), warn=lambda _m: None)
    assert volume_requests(vllm, IMAGE)["models"]["size_gb"] == 100


# -- deploying each file to the stand-in ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """One real registry for the module (it overrides the per-test one, so the stand-in checks images in it)."""
    with start_registry(tmp_path_factory.mktemp("corpus-registry")) as r:
        yield r


@pytest.fixture(scope="module")
def corpus_image(registry: RunningRegistry, tiny_oci_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_tiny_image(tiny_oci_layout, registry.host, "corpus", "v1", tmp_path_factory.mktemp("corpus-image"))


def _sent(config: dict[str, Any]) -> dict[str, Any]:
    """What a machine was sent, without the volume ids the deploy filled in, nixfly's own metadata, and
    what makes a machine a standby for another (flyctl's first deploy of a group without services)."""
    out = comparable(config)
    out.pop("standbys", None)
    out.get("env", {}).pop("FLY_STANDBY_FOR", None)
    out["metadata"] = {k: v for k, v in out.get("metadata", {}).items() if k in ("fly_platform_version",
                                                                                  "fly_process_group")}  # fmt: skip
    for m in out.get("mounts") or []:
        m.pop("volume", None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("src", FILES, ids=[p.stem for p in FILES])
def test_every_corpus_file_deploys(
    src: Path, fly_env: RunningStandin, corpus_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = prepare(src, tmp_path)
    # -a names every app (two files have no `app`; where they do, flyctl prefers --app too).
    app = "corpus-" + src.name[:3]
    fly_env.create_app(app)
    argv = ["deploy", "-c", str(toml), "-a", app, "--image", corpus_image, "--wait-timeout", "30", "--json",
            "--smoke-period", "0.1"]  # machines without checks: a short smoke check keeps the suite fast
    assert main([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert fly_env.mutations() == [] and plan["app"] == app
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    machines = fly_env.machines(app)
    cfg = load_fly_toml(toml, warn=lambda _m: None)
    assert sorted(summary["created"]) == sorted(m.id for m in machines)
    assert {m.group for m in machines} == set(cfg.process_groups())
    assert all(m.image == corpus_image for m in machines)
    assert all(m.state == "started" for m in machines if not m.config.get("standbys"))
    if src.stem in EXPECTED:
        want = {g: _sent(c) for g, c in EXPECTED[src.stem](corpus_image).items()}
        for m in machines:
            assert _sent(m.configs[-1]) == want[m.group], m.group
    if cfg.deploy.release_command:
        (release,) = [r for r in fly_env.requests if r.method == "POST" and r.path.endswith(f"/{app}/machines")
                      and b"fly_app_release_command" in r.body]  # fmt: skip
        sent = json.loads(release.body)["config"]
        assert sent["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}
        assert sent["init"]["cmd"] == cfg.deploy.release_command_argv()
    for r in fly_env.requests:
        if r.method == "POST" and r.path.endswith(f"/{app}/volumes"):
            body = json.loads(r.body)
            assert body["encrypted"] is True and body["compute_image"] == corpus_image
            assert body["size_gb"] == (100 if src.stem == "081-fly-apps-vllm-demo" else 1)


@pytest.mark.slow
def test_an_array_of_concurrency_tables_is_refused_before_any_request(
    fly_env: RunningStandin, corpus_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The one refusal of the 112 files that is right: flyctl's _patchService refuses it too.
    toml = tmp_path / "fly.toml"
    toml.write_text(
        'app = "conc"\n[[services]]\ninternal_port = 8080\nprotocol = "tcp"\n'
        "[[services.concurrency]]\nhard_limit = 25\nsoft_limit = 20\n[[services.ports]]\nport = 80\n"
    )
    fly_env.create_app("conc")
    assert main(["deploy", "-c", str(toml), "--image", corpus_image]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ":5: services[0].concurrency: must be one table [services.concurrency]" in err[0]
    assert fly_env.requests == []
