"""fly.toml → Machines API MachineConfig, checked against the OpenAPI spec's own fly.MachineConfig schema.

The spec allows unknown properties everywhere, so a misspelled key would slip through; the validator here
closes every object schema that lists properties, which makes a typo in our output fail the test.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nixfly.errors import ConfigError
from nixfly.fly.flytoml import VM_SIZES, FlyConfig, load_fly_toml, parse_fly_toml
from nixfly.fly.machineconfig import (
    guest_for,
    machine_config,
    machine_configs,
    mount_initial_size_gb,
    mounts_for,
    release_command_config,
)

DATA = Path(__file__).parent / "data" / "fly"
from tests.support.flyspec import SPEC_PATH as SPEC  # noqa: E402

IMAGE = "registry.example/demo@sha256:" + "ab" * 32


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            _close_objects(v)
    elif isinstance(node, list):
        for v in node:
            _close_objects(v)


@cache
def _validator(name: str = "fly.MachineConfig") -> jsonschema.Draft4Validator:
    spec = json.loads(SPEC.read_text())
    components = copy.deepcopy(spec["components"])
    _close_objects(components)
    # OpenAPI 3.0 schema objects are (close to) JSON Schema draft 4; refs point into #/components/schemas.
    return jsonschema.Draft4Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def assert_valid_machine_config(mc: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(mc), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def _cfg(text: str) -> FlyConfig:
    return parse_fly_toml(text, warn=lambda m: pytest.fail(m))


def test_the_spec_validator_rejects_wrong_shapes() -> None:
    # Guard against a validator that accepts anything: each of these breaks the spec.
    for bad in (
        {"image": IMAGE, "guest": {"cpus": "2"}},
        {"image": IMAGE, "services": [{"autostop": True}]},
        {"image": IMAGE, "restart": {"policy": "never"}},
        {"image": IMAGE, "stop_config": {"timeout": 10}},
        {"image": IMAGE, "checks": {"x": {"interval": 15}}},
        {"image": IMAGE, "services": [{"ports": [{"forceHttps": True}]}]},
        {"image": IMAGE, "env": {"PORT": 8080}},
    ):
        assert list(_validator().iter_errors(bad)), bad


def test_full_file_maps_each_process_group_like_flyctl() -> None:
    cfg = load_fly_toml(DATA / "full.toml")
    mcs = machine_configs(cfg, IMAGE)
    assert list(mcs) == ["app", "worker"]
    for mc in mcs.values():
        assert_valid_machine_config(mc)
    app, worker = mcs["app"], mcs["worker"]

    assert app["image"] == IMAGE
    assert app["init"] == {"cmd": ["server", "--port", "8080"], "entrypoint": ["/bin/tini", "--"], "swap_size_mb": 512}
    assert worker["init"]["cmd"] == ["worker", "--queue", "high prio"]
    assert app["metadata"]["fly_process_group"] == "app" and worker["metadata"]["fly_process_group"] == "worker"
    assert app["env"] == {
        "LOG_LEVEL": "debug",
        "PORT": "8080",
        "FEATURE": "true",
        "FLY_PROCESS_GROUP": "app",
        "PRIMARY_REGION": "ams",
    }
    assert worker["env"]["FLY_PROCESS_GROUP"] == "worker"

    # [http_service] → one TCP service, port 80 (http, force_https) and 443 (tls + http); app group only.
    (http,) = app["services"]
    assert http["protocol"] == "tcp" and http["internal_port"] == 8080
    assert http["ports"][0] == {
        "port": 80,
        "handlers": ["http"],
        "force_https": True,
        "http_options": {"h2_backend": True},
    }
    assert http["ports"][1]["port"] == 443 and http["ports"][1]["handlers"] == ["http", "tls"]
    assert http["ports"][1]["tls_options"] == {"alpn": ["h2", "http/1.1"], "versions": ["TLSv1.2", "TLSv1.3"]}
    assert http["autostop"] == "stop" and http["autostart"] is True and http["min_machines_running"] == 1
    assert http["concurrency"] == {"type": "requests", "hard_limit": 25, "soft_limit": 20}
    assert http["checks"] == [
        {
            "type": "http",
            "interval": "30s",
            "timeout": "5s",  # a bare 5000 is milliseconds
            "grace_period": "10s",
            "method": "GET",
            "path": "/healthz",
            "headers": [{"name": "X-Check", "values": ["1"]}],
        }
    ]
    (svc,) = worker["services"]
    assert svc["internal_port"] == 9000 and svc["ports"] == [{"port": 9000, "handlers": ["tls"]}]
    assert svc["checks"] == [{"type": "tcp", "interval": "15s", "timeout": "2s"}]

    # [checks.NAME] → top-level checks, port defaulting to the http_service's internal_port.
    assert app["checks"] == {
        "status": {
            "type": "http",
            "port": 8080,
            "interval": "1m30s",
            "timeout": "2.5s",
            "grace_period": "5s",
            "method": "GET",
            "path": "/status",
        }
    }
    assert worker["checks"] == {"worker_alive": {"type": "tcp", "port": 9000, "interval": "20s"}}

    # [[vm]]: a group-specific section beats the general one; presets then overrides.
    assert app["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}
    assert worker["guest"] == {"cpu_kind": "performance", "cpus": 2, "memory_mb": 8192}

    assert app["mounts"] == [
        {"name": "data", "path": "/data", "extend_threshold_percent": 80, "add_size_gb": 1, "size_gb_limit": 10}
    ]
    assert "mounts" not in worker
    assert app["stop_config"] == worker["stop_config"] == {"signal": "SIGTERM", "timeout": "10s"}
    assert app["restart"] == {"policy": "on-failure", "max_retries": 3}
    assert worker["restart"] == {"policy": "no"}  # fly.toml "never" is the API's "no"
    # Every [[files]] entry on every group (flyctl merges them once for the app), raw_value base64-encoded.
    assert (
        app["files"]
        == worker["files"]
        == [
            {"guest_path": "/etc/demo/motd", "raw_value": "aGVsbG8K"},
            {"guest_path": "/etc/demo/key", "secret_name": "DEMO_KEY"},
        ]
    )


def test_flyctl_style_file_maps_to_valid_config() -> None:
    cfg = load_fly_toml(DATA / "flyctl-style.toml")
    (mc,) = machine_configs(cfg, IMAGE).values()
    assert_valid_machine_config(mc)
    assert mc["services"][0]["autostop"] == "off"
    assert mc["services"][0]["checks"] == [
        {"type": "http", "interval": "10s", "grace_period": "1s", "method": "get", "path": "/"}
    ]
    assert mc["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024}
    assert mc["stop_config"] == {"signal": "SIGINT", "timeout": "5s"}
    assert mc["mounts"] == [{"name": "data", "path": "/data"}]
    (mount,) = mounts_for(cfg, "app")
    assert mount_initial_size_gb(mount) == 3


# fly-go's MachinePresets (machine_types.go), written out: 256 MB per shared CPU, 2048 MB per performance
# CPU, and the GPU sizes with 8 performance CPUs, 16 x 2048 MB and one GPU.
_GPU = {"a100-40gb": "a100-pcie-40gb", "a100-80gb": "a100-sxm4-80gb", "l40s": "l40s", "a10": "a10"}
PRESETS = {
    **{f"shared-cpu-{n}x": {"cpu_kind": "shared", "cpus": n, "memory_mb": 256 * n} for n in (1, 2, 4, 6, 8)},
    **{f"performance-{n}x": {"cpu_kind": "performance", "cpus": n, "memory_mb": 2048 * n}
       for n in (1, 2, 4, 6, 8, 10, 12, 14, 16)},
    **{size: {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768, "gpu_kind": kind, "gpus": 1}
       for size, kind in _GPU.items()},
}  # fmt: skip


def test_every_fly_go_preset_is_known() -> None:
    assert set(VM_SIZES) == set(PRESETS)


@pytest.mark.parametrize("size", list(PRESETS))
def test_size_presets(size: str) -> None:
    (mc,) = machine_configs(_cfg(f'app = "a"\n[[vm]]\nsize = "{size}"\n'), IMAGE).values()
    assert_valid_machine_config(mc)
    assert mc["guest"] == PRESETS[size]


def test_guest_follows_flyctl_compute_to_guest() -> None:
    def guest(vm: str) -> object:
        return machine_config(_cfg(f'app = "a"\n[[vm]]\n{vm}'), "app", IMAGE)["guest"]

    # memory_mb (a guest field) wins over memory, whichever comes first.
    assert guest('memory = "1gb"\nmemory_mb = 2048\n') == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 2048}
    assert guest('memory_mb = 2048\nmemory = "1gb"\n')["memory_mb"] == 2048  # type: ignore[index]
    # gpu_kind without size starts from performance-8x (fly-go DefaultGPUVMSize).
    assert guest('gpu_kind = "a100-pcie-40gb"\n') == {"cpu_kind": "performance", "cpus": 8, "memory_mb": 16384,
                                                     "gpu_kind": "a100-pcie-40gb"}  # fmt: skip
    # A preset's GPU fields are overridden field by field; cpus = 6 is fine (no schema list of counts).
    l40s = {"cpu_kind": "performance", "cpus": 6, "memory_mb": 32768, "gpu_kind": "l40s", "gpus": 2}
    assert guest('size = "l40s"\ngpus = 2\ncpus = 6\n') == l40s


def test_vm_overrides_apply_after_the_preset() -> None:
    cfg = _cfg(
        'app = "a"\nhost_dedication_id = "h1"\n[[vm]]\nsize = "shared-cpu-1x"\nmemory = "2gb"\ncpus = 4\n'
        'kernel_args = "quiet console=ttyS0"\n'
    )
    guest = machine_config(cfg, "app", IMAGE)["guest"]
    assert guest == {
        "cpu_kind": "shared",
        "cpus": 4,
        "memory_mb": 2048,
        "kernel_args": ["quiet", "console=ttyS0"],
        "host_dedication_id": "h1",
    }
    # Without a size the preset is shared-cpu-1x.
    assert guest_for(_cfg('app = "a"\n[[vm]]\nmemory_mb = 1024\n').vm[0]) == {
        "cpu_kind": "shared",
        "cpus": 1,
        "memory_mb": 1024,
    }


def test_without_vm_the_current_guest_is_kept() -> None:
    cfg = _cfg('app = "a"\n')
    current = {"cpu_kind": "performance", "cpus": 4, "memory_mb": 8192}
    assert machine_config(cfg, "app", IMAGE, current_guest=current)["guest"] == current
    # A new group's machines get flyctl's --vm-size default, shared-cpu-1x.
    assert machine_config(cfg, "app", IMAGE)["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}


def test_sections_without_processes_apply_to_the_default_group_only() -> None:
    cfg = _cfg(
        'app = "a"\n[processes]\nweb = "srv"\nworker = "wrk"\n'
        '[[mounts]]\nsource = "d"\ndestination = "/d"\n'
        '[[files]]\nguest_path = "/f"\nsecret_name = "S"\n'
        '[checks.c]\ntype = "tcp"\nport = 1\n'
    )
    # No "app" group, so the default is the first by name.
    assert cfg.default_process_group() == "web"
    mcs = machine_configs(cfg, IMAGE)
    assert [m["name"] for m in mcs["web"]["mounts"]] == ["d"] and "mounts" not in mcs["worker"]
    assert "checks" in mcs["web"] and "checks" not in mcs["worker"]
    # [[files]] and [[statics]] are the exceptions: flyctl puts them on every group.
    assert mcs["web"]["files"] == mcs["worker"]["files"] == [{"guest_path": "/f", "secret_name": "S"}]
    assert mounts_for(cfg, "worker") == []


def test_experimental_cmd_is_used_only_without_a_process_command() -> None:
    cfg = _cfg('app = "a"\n[experimental]\ncmd = ["/bin/serve", "-v"]\nexec = "/bin/init --x"\n')
    init = machine_config(cfg, "app", IMAGE)["init"]
    # A string is one argument to flyctl (patches.go stringOrSliceToSlice), not a shell line.
    assert init == {"cmd": ["/bin/serve", "-v"], "exec": ["/bin/init --x"]}
    cfg2 = _cfg('app = "a"\n[processes]\napp = "run it"\n[experimental]\ncmd = ["/bin/serve"]\n')
    assert machine_config(cfg2, "app", IMAGE)["init"]["cmd"] == ["run", "it"]


def test_check_without_port_or_http_service_is_an_error() -> None:
    cfg = _cfg('app = "a"\n[checks.alive]\ntype = "http"\npath = "/"\n')
    with pytest.raises(
        ConfigError, match=r"checks\.alive: no port set and process group 'app' has no \[http_service\]"
    ):
        machine_configs(cfg, IMAGE)


def test_unknown_keys_never_reach_the_api() -> None:
    cfg = parse_fly_toml(
        'app = "a"\n[http_service]\ninternal_port = 80\nbogus = 1\n[http_service.tls_options]\nalpn = ["h2"]\nzz = 2\n',
        warn=lambda _m: None,
        allow_unknown_keys=True,
    )
    mc = machine_config(cfg, "app", IMAGE)
    assert_valid_machine_config(mc)
    assert mc["services"][0]["ports"][1]["tls_options"] == {"alpn": ["h2"]}


def test_unknown_group_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no process group 'web'"):
        machine_config(_cfg('app = "a"\n'), "web", IMAGE)


def test_statics_and_metrics() -> None:
    cfg = _cfg(
        'app = "a"\n[[statics]]\nguest_path = "/srv/www"\nurl_prefix = "/static"\n[metrics]\nport = 9091\npath = "/m"\n'
    )
    mc = machine_config(cfg, "app", IMAGE)
    assert_valid_machine_config(mc)
    assert mc["statics"] == [{"guest_path": "/srv/www", "url_prefix": "/static"}]
    assert mc["metrics"] == {"port": 9091, "path": "/m"}


def test_release_command_machine() -> None:
    cfg = load_fly_toml(DATA / "full.toml")
    mc = release_command_config(cfg, IMAGE)
    assert mc is not None
    assert_valid_machine_config(mc)
    assert mc["init"]["cmd"] == ["migrate", "--yes", "all tables"]
    assert mc["restart"] == {"policy": "no"} and mc["auto_destroy"] is True
    assert mc["env"]["RELEASE_COMMAND"] == "1" and mc["env"]["FLY_PROCESS_GROUP"] == "fly_app_release_command"
    assert release_command_config(_cfg('app = "a"\n'), IMAGE) is None


def test_output_is_deterministic() -> None:
    cfg = load_fly_toml(DATA / "full.toml")
    a = json.dumps(machine_configs(cfg, IMAGE), sort_keys=False)
    b = json.dumps(machine_configs(load_fly_toml(DATA / "full.toml"), IMAGE), sort_keys=False)
    assert a == b


def test_zero_values_follow_gos_omitempty() -> None:
    # Plain fly-go fields (force_https, hard_limit, https, max_retries) are left out when zero; pointer
    # fields (autostart, min_machines_running, tls_skip_verify, compress) are sent even when false or 0.
    cfg = _cfg(
        'app = "a"\n[[services]]\nauto_start_machines = false\nmin_machines_running = 0\n'
        "[services.concurrency]\nhard_limit = 0\nsoft_limit = 5\n"
        "[[services.ports]]\nport = 80\nforce_https = false\n[services.ports.http_options]\ncompress = false\n"
        '[[services.http_checks]]\npath = "/"\ntls_skip_verify = false\n'
        '[metrics]\nport = 9091\nhttps = false\n[[restart]]\npolicy = "always"\nretries = 0\n'
    )
    mc = machine_config(cfg, "app", IMAGE)
    assert_valid_machine_config(mc)
    assert mc["services"] == [{
        "ports": [{"port": 80, "http_options": {"compress": False}}],
        "autostart": False, "min_machines_running": 0, "concurrency": {"soft_limit": 5},
        "checks": [{"type": "http", "path": "/", "tls_skip_verify": False}],
    }]  # fmt: skip
    assert mc["metrics"] == {"port": 9091} and mc["restart"] == {"policy": "always"}


def test_restart_applies_like_flyctl() -> None:
    cfg = _cfg(
        'app = "a"\n[processes]\napp = "a"\nworker = "w"\n'
        '[[restart]]\npolicy = "always"\n[[restart]]\npolicy = "on-failure"\nretries = 2\nprocesses = ["app"]\n'
    )
    mcs = machine_configs(cfg, IMAGE)
    # Without processes: the default group only; where several apply, the last wins.
    assert mcs["app"]["restart"] == {"policy": "on-failure", "max_retries": 2}
    assert "restart" not in mcs["worker"]
