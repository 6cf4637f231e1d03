"""Files nixfly finds on this host rather than being handed them: what ``nixfly deploy`` and ``nixfly
secrets`` remember (:mod:`nixfly.fly.state`), flyctl's ``~/.fly/config.yml`` and docker's ``config.json``.
Each is read bounded: a FIFO nobody writes to, /dev/zero, a huge file or a 100,000-deep nesting is one
line (a config) or as good as none (a state file, which the next write replaces), never a process that
blocks or grows for ever."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nixfly.errors import NixflyError
from nixfly.fly.state import LeaseStore, SecretsVersionStore
from nixfly.flytoken import find_fly_token
from nixfly.registry.auth import resolve_credentials


def _within(fn: Callable[[], Any], seconds: float = 20.0) -> Any:
    """``fn()`` on a thread; fails (instead of hanging the suite) when it has not returned in time."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "reading the state file blocked (a FIFO opened without O_NONBLOCK?)"
    return out[0]


def _plant(path: Path, how: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "fifo":
        os.mkfifo(path)
    elif how == "zero":
        path.symlink_to("/dev/zero")
    elif how == "huge":
        with open(path, "wb") as f:
            f.truncate(10 << 30)  # sparse: 10 GiB that read_text would try to hold in memory
    elif how == "deep-yaml":
        path.write_text("access_token: " + "[" * 100_000 + "]" * 100_000 + "\n")
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)


def _one_line_error(fn: Callable[[], Any]) -> str:
    def call() -> str:
        try:
            fn()
        except NixflyError as e:
            return str(e)
        raise AssertionError("no error")

    message: str = _within(call)
    assert "\n" not in message
    return message


EXPECT = {"fifo": "is not a regular file (a FIFO)", "zero": "is not a regular file (a character device)",
          "huge": "is larger than 4 MiB (10240 MiB)"}  # fmt: skip


@pytest.mark.parametrize("how", ["fifo", "zero", "huge", "deep-yaml"])
def test_a_hostile_flyctl_config_is_one_line(how: str, tmp_path: Path) -> None:
    path = tmp_path / ".fly" / "config.yml"
    _plant(path, how)
    message = _one_line_error(lambda: find_fly_token({}, tmp_path))
    assert message == (f"{path} is not valid YAML" if how == "deep-yaml" else f"{path} {EXPECT[how]}")


@pytest.mark.parametrize("how", ["fifo", "zero", "huge", "deep"])
def test_a_hostile_docker_config_is_one_line(how: str, tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    _plant(path, how)
    env = {"DOCKER_CONFIG": str(path.parent)}
    message = _one_line_error(lambda: resolve_credentials("registry.example", env=env, home=tmp_path))
    assert message == (f"{path} is not valid JSON" if how == "deep" else f"{path} {EXPECT[how]}")


@pytest.mark.parametrize("how", ["fifo", "zero", "huge", "deep"])
def test_a_hostile_lease_store_reads_as_empty_and_is_replaced(how: str, tmp_path: Path) -> None:
    store = LeaseStore(tmp_path, "app")
    _plant(store.path, how)
    assert _within(store.load) == {}
    assert _within(lambda: store.holder_of("m1", "n1")) is None
    if how != "zero":  # a symlink to /dev/zero is replaced by the atomic rename too, but /dev/zero stays
        _within(lambda: store.put("m1", "n1", "nixfly deploy pid=1 host=h start=s run=ab"))
        assert store.load() == {"m1": "n1"}


@pytest.mark.parametrize("how", ["fifo", "zero", "huge", "deep"])
def test_a_hostile_secrets_version_file_reads_as_none(how: str, tmp_path: Path) -> None:
    store = SecretsVersionStore(tmp_path, "app")
    _plant(store.path, how)
    assert _within(store.get) is None
    store.set(7)
    assert store.get() == 7
