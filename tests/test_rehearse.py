"""``nixfly run -c fly.toml IMAGE``: a deploy rehearsed on this machine with the real runtimes (runc, bwrap)
and a busybox httpd image. Every assertion is on what the container did (files it wrote, what it served),
the exit code, the one-line findings, or the JSON verdict with its check history.

The containers share this machine's network, so tests that use port 8080 take a lock for it (pytest-xdist
runs tests side by side).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixfly.image import Image
from nixfly.sinks.layout import write_layout
from nixfly.transports import LayoutLocation
from tests.test_unpack import Entry, busybox_entries, make_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes are exercised as root (as in CI)"),
]

HTTPD = "httpd -f -p {addr} -h /www"
# Fast checks: the rehearsal waits grace + 2 intervals + timeout at most.
CHECK = """
[[http_service.checks]]
grace_period = "1s"
interval = "1s"
timeout = "1s"
method = "GET"
path = "{path}"
"""


def fly_toml(where: Path, body: str, *, app: str = "rehearsal") -> Path:
    path = where / "fly.toml"
    path.write_text(f'app = "{app}"\nprimary_region = "fra"\n{body}')
    return path


def web_service(port: int = 8080, path: str = "/", processes: str = "") -> str:
    procs = f"processes = [{processes}]\n" if processes else ""
    return f"[http_service]\ninternal_port = {port}\n{procs}" + CHECK.format(path=path)


def nixfly(*args: str, cache: Path, timeout: float = 90, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "nixfly", "run", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearse")


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    return work / "cache"


@pytest.fixture(scope="module")
def httpd_image(work: Path) -> Image:
    """busybox with /www/index.html; Cmd serves it on 0.0.0.0:8080 (fly.toml's commands replace the Cmd)."""
    return make_image(
        work / "httpd-blobs",
        [busybox_entries(), [Entry("www", "dir", mode=0o755), Entry("www/index.html", data=b"hello from www\n")]],
        {"Cmd": HTTPD.format(addr="8080").split(), "Env": ["PATH=/bin"]},
    )


@pytest.fixture(scope="module")
def httpd_layout(httpd_image: Image, work: Path) -> Path:
    write_layout(httpd_image, LayoutLocation(work / "httpd-layout", "latest"))
    return work / "httpd-layout"


@pytest.fixture
def port_8080() -> Iterator[None]:
    """The containers share this machine's network: one test at a time may serve 8080."""
    with open("/tmp/nixfly-tests-port-8080.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


@pytest.mark.parametrize("runtime", ["runc", "bwrap"])
def test_a_healthy_app_passes_and_its_check_history_shows_passing(
    runtime: str, httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    toml = fly_toml(tmp_path, web_service())
    r = nixfly("--runtime", runtime, "-c", str(toml), "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] is True
    (m,) = out["machines"]
    assert (m["group"], m["runtime"], m["exits"], m["problems"]) == ("app", runtime, [], [])
    assert [x["address"] for x in m["listening"]] == ["0.0.0.0:8080"] or [x["address"] for x in m["listening"]] == [
        "[::]:8080"
    ]
    (check,) = m["checks"]
    assert check["name"] == "servicecheck-00-http-8080"
    assert check["status"] == "passing"
    assert [h["status"] for h in check["history"]][-1] == "passing"
    assert check["history"][-1]["output"].startswith("GET /: 200 OK")
    assert r.stderr.endswith("nixfly: rehearsal passed\n")
