"""The pure plan of issue 21 (no I/O): it counts what the app should have, so any re-run converges, and it
models flyctl's rules for stopped machines, standbys, replacements and first-deploy addresses; lease holders
are told apart by pid, host and process start."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import replace

from nixfly.fly.api import Machine
from nixfly.fly.plan import (
    GREEN_FOR_KEY,
    GROUP_SIZE_KEY,
    DeploySettings,
    plan_deploy,
    plan_ips,
)
from nixfly.fly.state import Holder, process_start

IMAGE = "registry.example/app@sha256:" + "a" * 64
OLD = "registry.example/app@sha256:" + "b" * 64
SERVICE = {"internal_port": 8080, "protocol": "tcp",
           "ports": [{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["tls", "http"]}]}  # fmt: skip


def config(image: str = IMAGE, **extra: object) -> dict[str, object]:
    return {"image": image, "services": [SERVICE], "metadata": {"fly_process_group": "app"}, **extra}


def machine(mid: str, cfg: dict[str, object], state: str = "started", **meta: str) -> Machine:
    c = copy.deepcopy(cfg)
    c["metadata"] = {**c["metadata"], **meta}  # type: ignore[dict-item]
    return Machine(mid, mid, state, "ams", c)


S = DeploySettings(app="demo")


def test_an_interrupted_first_deploy_gets_its_missing_machine() -> None:
    first = plan_deploy([], {"app": config()}, S)
    assert [a.kind for a in first.actions] == ["create", "create"]
    assert all(a.new is not None and a.new["metadata"][GROUP_SIZE_KEY] == "2" for a in first.actions)
    # Killed after the first create: the re-run sees one machine that says its group has two.
    rerun = plan_deploy([machine("m1", config(), **{GROUP_SIZE_KEY: "2"})], {"app": config()}, S)
    assert [a.kind for a in rerun.actions] == ["create"] and rerun.unchanged == ("m1",)
    # A group an earlier deploy made (no count recorded) is never grown behind the user's back.
    assert plan_deploy([machine("m1", config())], {"app": config()}, S).empty


def test_a_group_without_services_gets_a_standby() -> None:
    worker = {"image": IMAGE, "metadata": {"fly_process_group": "worker"}}
    plan = plan_deploy([], {"worker": worker}, S)
    assert [(a.kind, a.standby) for a in plan.actions] == [("create", False), ("create", True)]
    assert [a.standby for a in plan_deploy([], {"worker": worker}, replace(S, ha=False)).actions] == [False]


def test_greens_of_an_interrupted_bluegreen_deploy_finish_the_switch() -> None:
    blue1, blue2 = machine("b1", config(OLD)), machine("b2", config(OLD))
    green1 = machine("g1", config(), **{GREEN_FOR_KEY: "b1"})
    stale = machine("g0", config("registry.example/app@sha256:" + "c" * 64), **{GREEN_FOR_KEY: "b2"})
    plan = plan_deploy([blue1, blue2, green1, stale], {"app": config()}, replace(S, strategy="bluegreen"))
    kinds = sorted((a.kind, a.machine_id) for a in plan.actions)
    # g1 already runs the new config: it replaces b1 (no second green for b1); g0 is a stale green: it goes;
    # b2 gets its green as usual. Four machines never become six.
    assert kinds == [("destroy", "g0"), ("switch", "g1"), ("update", "b2")]
    assert plan.of("switch")[0].green_for == "b1"


def test_stopped_machines_are_updated_with_skip_launch_unless_asked() -> None:
    ms = [machine("m1", config(OLD)), machine("m2", config(OLD), "stopped"), machine("m3", config(OLD), "suspended")]
    plan = plan_deploy(ms, {"app": config()}, S)
    assert {a.machine_id: a.skip_launch for a in plan.actions} == {"m1": False, "m2": True, "m3": True}
    assert "update m2 [app] without starting it (it stays stopped)" in plan.render()
    started = plan_deploy(ms, {"app": config()}, replace(S, start_stopped=True))
    assert not any(a.skip_launch for a in started.actions)


def test_mount_and_host_dedication_changes_replace_the_machine() -> None:
    mounted = config(mounts=[{"name": "data", "path": "/data", "volume": "vol_1"}])
    m = machine("m1", mounted)
    moved = config(mounts=[{"name": "data", "path": "/srv"}])
    (a,) = plan_deploy([m], {"app": moved}, S).actions
    assert a.kind == "update" and a.new is not None and a.new["mounts"] == [{"name": "data", "path": "/srv",
                                                                             "volume": "vol_1"}]  # fmt: skip
    (a,) = plan_deploy([m], {"app": config(mounts=[{"name": "store", "path": "/data"}])}, S).actions
    assert a.kind == "replace" and "'data'" in a.reason and "'store'" in a.reason
    (a,) = plan_deploy([machine("m2", config(OLD))], {"app": mounted | {"image": IMAGE}}, S).actions
    assert a.kind == "replace" and a.reason == "a volume mount was added"
    (a,) = plan_deploy([m], {"app": config()}, S).actions
    assert a.kind == "replace" and a.reason == "its volume mount was removed"
    dedicated = config(guest={"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "host_dedication_id": "hd1"})
    (a,) = plan_deploy([machine("m3", config())], {"app": dedicated}, S).actions
    assert a.kind == "replace" and a.reason == "host dedication changed to hd1"


def test_first_deploy_addresses() -> None:
    web = {"app": config()}
    assert plan_ips(web, [], "public") == (("v6", "shared_v4"), None)
    assert plan_ips(web, [], "private") == (("private_v6",), None)
    assert plan_ips(web, [], "none") == ((), None)
    assert plan_ips({"app": {"image": IMAGE}}, [], "public") == ((), None)
    # What an interrupted run left: only the missing one; an app with a private address is left alone.
    assert plan_ips(web, [{"ip": "2a09:8280:1::5"}], "public") == (("shared_v4",), None)
    assert plan_ips(web, [{"ip": "2a09:8280:1::5"}, {"ip": "66.241.124.7", "shared": True}], "public")[0] == ()
    assert plan_ips(web, [{"ip": "fdaa:0:1::3"}], "public")[0] == ()
    udp = {"app": config() | {"services": [{"protocol": "udp", "internal_port": 53, "ports": [{"port": 53}]}]}}
    kinds, note = plan_ips(udp, [], "public")
    assert kinds == ("v6",) and note is not None and "fly ips allocate-v4" in note


def test_lease_holders_are_told_apart() -> None:
    me = Holder.me()
    assert Holder.parse(me.describe()) == me and not me.gone()  # this very process
    assert Holder.parse("nixfly deploy") is None and Holder.parse(None) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start(dead.pid)
    dead.wait()
    assert replace(me, pid=dead.pid, start=start or "t0").gone()
    # A live pid whose process started at another time is another process: the holder is gone.
    assert replace(me, start="1@deadbeef").gone()
    # A holder on another host is never gone as far as this host can tell.
    assert not replace(me, host="elsewhere", pid=os.getpid() + 10_000_000).gone()
    assert DeploySettings(app="x").lease_ttl == 13  # flyctl's default


def test_filters_limit_what_the_plan_touches() -> None:
    worker = {"image": IMAGE, "metadata": {"fly_process_group": "worker"}}
    old_worker = {"image": OLD, "metadata": {"fly_process_group": "worker"}}
    ms = [machine("a1", config(OLD)), machine("a2", config(OLD)) , Machine("w1", "w1", "started", "fra", old_worker),
          machine("g1", config(OLD) | {"metadata": {"fly_process_group": "gone"}})]  # fmt: skip
    desired = {"app": config(), "worker": worker, "new": {"image": IMAGE, "metadata": {"fly_process_group": "new"}}}
    only = plan_deploy(ms, desired, replace(S, only_machines=("a2",)))
    assert [(a.kind, a.machine_id) for a in only.actions] == [("update", "a2")]  # no creates, no destroys
    groups = plan_deploy(ms, desired, replace(S, process_groups=("worker",)))
    assert [(a.kind, a.machine_id) for a in groups.actions] == [("update", "w1")]
    regions = plan_deploy(ms, desired, replace(S, regions=("fra",)))
    assert [(a.kind, a.machine_id) for a in regions.actions] == [("update", "w1")]
    assert [(a.kind, a.group) for a in plan_deploy(ms, desired, replace(S, process_groups=("new",))).actions] == [
        ("create", "new"), ("create", "new")]  # fmt: skip
    # Unfiltered: the new group is created, the gone group destroyed.
    kinds = sorted((a.kind, a.group) for a in plan_deploy(ms, desired, S).actions)
    assert ("destroy", "gone") in kinds and ("create", "new") in kinds


def test_a_replacement_interrupted_before_the_old_machine_went_is_finished() -> None:
    old = machine("m1", config(mounts=[{"name": "data", "path": "/data", "volume": "vol_1"}]))
    want = config(mounts=[{"name": "store", "path": "/data"}])
    new = machine("m2", config(mounts=[{"name": "store", "path": "/data", "volume": "vol_2"}]), **{GREEN_FOR_KEY: "m1"})
    plan = plan_deploy([old, new], {"app": want}, S)
    assert [(a.kind, a.machine_id, a.green_for) for a in plan.actions] == [("switch", "m2", "m1")]


def test_a_release_log_nested_deeper_than_any_release_reads_as_none() -> None:
    """A machine's metadata is written by anyone with a token for the app: a 100,000-deep release log is
    no release (and no RecursionError), while the machine's real log next to it still counts."""
    from nixfly.fly.releases import app_releases, machine_releases, new_release, release_log_text

    hostile = machine("m1", config(), nixfly_releases="[" * 100_000 + "]" * 100_000)
    assert machine_releases(hostile) == []
    good = new_release([], "registry.example/app@sha256:" + "a" * 64, "rolling", "deployed", "deploy")
    fine = machine("m2", config(), nixfly_releases=release_log_text(good, []))
    assert [r.version for r in app_releases([hostile, fine])] == [good.version]
