#!/usr/bin/env python3
"""Run a Python module with per-thread CPU accounting and SHA-256 byte counts, for the push CPU scenario.

    NIXFLY_BENCH_THREADCPU=out.json python bench/threadcpu.py -m nixfly push oci:DIR docker://…

Every thread's CPU time (user+sys, ``CLOCK_THREAD_CPUTIME_ID``) is added, when its ``run`` ends, to the group
of its name (the name without its pool number: ``nixfly-early_3`` → ``nixfly-early``); the main thread's at
exit. ``hashlib.sha256`` (and ``hashlib.new("sha256")``) are wrapped so every byte hashed is counted by the
line that created the hash object. Both go to the JSON file named by ``NIXFLY_BENCH_THREADCPU``.
The wrapper costs a Python call per ``update`` (one per 64 KiB–1 MiB chunk): microseconds per push.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import os
import re
import runpy
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
_cpu: collections.Counter[str] = collections.Counter()
_hashed: collections.Counter[str] = collections.Counter()
_sha256 = hashlib.sha256
_new = hashlib.new


def _group(name: str) -> str:
    return re.sub(r"[-_ ]\d+.*$", "", name) or name


class _CountingHash:
    name = "sha256"
    digest_size = 32
    block_size = 64

    def __init__(self, data: bytes = b"", *, _site: str | None = None, **kw: Any) -> None:
        if _site is None:
            f = sys._getframe(1)
            _site = f"{f.f_code.co_filename.rsplit('/nixfly/', 1)[-1]}:{f.f_lineno}"
        self.site = _site
        self._h = _sha256(**kw)
        if data:
            self.update(data)

    def update(self, data: Any) -> None:
        with _lock:
            _hashed[self.site] += memoryview(data).nbytes
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def copy(self) -> _CountingHash:
        c = _CountingHash.__new__(_CountingHash)
        c.site, c._h = self.site, self._h.copy()
        return c


def _new_hash(name: str, data: bytes = b"", **kw: Any) -> Any:
    if name.lower().replace("-", "") == "sha256":
        f = sys._getframe(1)
        return _CountingHash(data, _site=f"{f.f_code.co_filename.rsplit('/nixfly/', 1)[-1]}:{f.f_lineno}", **kw)
    return _new(name, data, **kw)


_run = threading.Thread.run


def _timed_run(self: threading.Thread) -> None:
    try:
        _run(self)
    finally:
        spent = time.thread_time()
        with _lock:
            _cpu[_group(self.name)] += spent


def _report(path: str) -> None:
    with _lock:
        _cpu["main"] += time.thread_time()
        out = {"thread_cpu_s": dict(_cpu), "sha256_bytes": dict(_hashed.most_common())}
    with open(path, "w") as f:
        json.dump(out, f)


def main() -> None:
    out = os.environ.get("NIXFLY_BENCH_THREADCPU")
    if len(sys.argv) < 3 or sys.argv[1] != "-m" or not out:
        sys.exit("usage: NIXFLY_BENCH_THREADCPU=out.json threadcpu.py -m MODULE ARGS...")
    hashlib.sha256 = _CountingHash  # type: ignore[assignment,misc]
    hashlib.new = _new_hash  # type: ignore[assignment]
    threading.Thread.run = _timed_run  # type: ignore[method-assign]
    atexit.register(_report, out)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
