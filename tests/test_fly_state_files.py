"""What ``nixfly deploy`` and ``nixfly secrets`` remember on this host (:mod:`nixfly.fly.state`) is read
bounded: a state file that is a FIFO nobody writes to, /dev/zero, a huge file or deep JSON is as good as
none (the next write replaces it), never a process that blocks or grows for ever."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nixfly.fly.state import LeaseStore, SecretsVersionStore


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
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)


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
