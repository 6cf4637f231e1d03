"""The deploy service assembles each process group's MachineConfig (issue 9: this used to live in the CLI,
untested): a group keeps its machines' current guest unless fly.toml has a [[vm]] for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfly.fly.api import Machine
from nixfly.fly.flytoml import parse_fly_toml
from nixfly.fly.service import Connection, DeployRequest, current_guests, deploy, desired_configs
from tests.support.flystandin import RunningStandin, push_tiny_image
from tests.support.registry import RunningRegistry

IMAGE = "registry.example/app@sha256:" + "a" * 64
BIG = {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}
SMALL = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512}
TOML = 'app = "demo"\nprimary_region = "ams"\n[processes]\napp = "serve"\nworker = "work"\n'


def _machine(mid: str, group: str, guest: dict[str, object]) -> Machine:
    return Machine(mid, mid, "started", "ams", {"image": IMAGE, "guest": guest,
                                                "metadata": {"fly_process_group": group}})  # fmt: skip


def test_each_group_keeps_its_own_current_guest() -> None:
    machines = [_machine("b", "app", SMALL), _machine("a", "app", BIG), _machine("c", "worker", SMALL)]
    assert current_guests(machines) == {"app": BIG, "worker": SMALL}  # the first machine by id decides
    desired = desired_configs(parse_fly_toml(TOML), IMAGE, machines)
    assert desired["app"]["guest"] == BIG and desired["worker"]["guest"] == SMALL
    with_vm = parse_fly_toml(TOML + '[[vm]]\nsize = "shared-cpu-2x"\nprocesses = ["worker"]\n')
    desired = desired_configs(with_vm, IMAGE, machines)
    assert desired["app"]["guest"] == BIG
    assert desired["worker"]["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}
    # A new group gets flyctl's default size (its --vm-size default, shared-cpu-1x).
    assert desired_configs(parse_fly_toml(TOML), IMAGE, [])["app"]["guest"] == {"cpu_kind": "shared", "cpus": 1,
                                                                                "memory_mb": 256}  # fmt: skip


@pytest.mark.slow
def test_deploy_service_keeps_guests_through_an_update(
    fly_env: RunningStandin, registry: RunningRegistry, tiny_oci_layout: Path, tmp_path: Path
) -> None:
    v1 = push_tiny_image(tiny_oci_layout, registry.host, "demo", "v1", tmp_path)
    v2 = push_tiny_image(tiny_oci_layout, registry.host, "demo", "v2", tmp_path)
    toml = tmp_path / "fly.toml"
    toml.write_text(TOML + '[deploy]\nwait_timeout = "5s"\n')
    fly_env.create_app("demo")
    lines: list[str] = []
    first = deploy(DeployRequest(config_path=toml, image=v1, ha=False, smoke_period=0.1), progress=lines.append,
                   state_dir=tmp_path / "s")  # fmt: skip
    assert first.result is not None and len(first.result.created) == 2
    assert first.release is not None and first.release.version == 1
    for m in fly_env.machines("demo"):  # someone scales the app with flyctl
        m.config["guest"] = BIG if m.group == "app" else SMALL
    second = deploy(DeployRequest(config_path=toml, image=v2, connection=Connection(), smoke_period=0.1),
                    progress=lines.append, state_dir=tmp_path / "s")  # fmt: skip
    assert second.result is not None and len(second.result.updated) == 2
    guests = {m.group: m.config["guest"] for m in fly_env.machines("demo")}
    assert guests == {"app": BIG, "worker": SMALL}
    assert {m.image for m in fly_env.machines("demo")} == {v2}
    assert any(line.startswith("release v2:") for line in lines)
