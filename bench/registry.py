"""A throwaway real registry (Debian's docker-registry, CNCF distribution) on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Registry:
    """``with Registry(dir) as r:`` serves an empty registry at ``127.0.0.1:r.port``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Registry:
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "data").mkdir(parents=True)
        for _ in range(5):
            self.port = free_port()
            cfg = self.root / "config.yml"
            cfg.write_text(
                "version: 0.1\n"
                "log:\n  level: error\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n"
            )
            log = (self.root / "registry.log").open("wb")
            self._proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1):
                        return self
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.05)
            self._stop()
        raise RuntimeError(f"docker-registry did not start; see {self.root / 'registry.log'}")

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __exit__(self, *exc: object) -> None:
        self._stop()
        shutil.rmtree(self.root, ignore_errors=True)
