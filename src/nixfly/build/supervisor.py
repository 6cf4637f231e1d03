"""Several processes in one machine: configuration for an existing, well-proven supervisor (runit or
process-compose) generated from ``[[image.processes]]`` and ``[[image.boot_dirs]]`` into the
customisation layer, with the image's Entrypoint pointing at it.

We never write a supervisor: the user puts one in the closure (``pkgs.runit`` or ``pkgs.process-compose``)
and we find its binaries there. What we generate:

- a *boot stage* (a shell script run by a shell from the closure): directories created, owned and moded at
  every start (volumes are mounted over the image's own files on Fly, so build-time directories under a
  mount point vanish), then — under runit — the oneshot boot steps in dependency order, each as its user;
- runit: ``/etc/nixfly/init`` (boot stage, then ``runsvdir`` in the background; SIGTERM/SIGINT/SIGHUP stop
  every process in reverse dependency order, each within its ``stop_timeout``, then the script exits with
  0, or with the exit code of a failed ``restart = "never"`` process) and one service directory per process
  under ``/etc/nixfly/runit/NAME`` (``run``, ``finish``, ``check``, ``control/d``), privileges dropped with
  runit's own ``chpst -u :UID:GID``;
- process-compose: ``/etc/nixfly/process-compose.yaml`` (``depends_on`` conditions, ``readiness_probe``,
  ``availability`` restart policies, ``shutdown`` signal and timeout), privileges dropped through a helper
  from the closure (``setpriv``, ``chpst`` or ``s6-applyuidgid``) because process-compose cannot switch
  users; the boot directories are a first ``nixfly-boot`` process every other one depends on.

Every output is a pure function of the spec and the closure's store paths: the same input gives the same
bytes (the tests keep golden copies).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixfly.build.closure import Closure
from nixfly.build.layers import Entry
from nixfly.build.spec import DirSpec, ImageSpec, ProcessSpec, located, process_ids, process_order
from nixfly.errors import UsageError

LABEL = "io.nixfly.processes"  # image config label: what inspect lists (JSON)
ETC = "/etc/nixfly"
RUN = "/run/nixfly"
BOOT_NAME = "nixfly-boot"
IMAGE_PATH = "/bin:/usr/bin:/sbin:/usr/sbin"
BACKENDS = ("process-compose", "runit", "s6")
# Linux signal numbers (process-compose's shutdown.signal is a number).
SIGNAL_NUMBERS = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15,
    "SIGWINCH": 28,
}  # fmt: skip
_BARE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Supervision:
    """What the supervisor adds to an image: files for the customisation layer, the Entrypoint, and the
    description ``nixfly inspect`` shows (stored as JSON in the ``io.nixfly.processes`` label)."""

    backend: str | None  # None: boot directories only, in front of the image's own entrypoint
    entries: tuple[Entry, ...]
    entrypoint: tuple[str, ...]
    description: dict[str, Any]

    @property
    def label(self) -> str:
        return json.dumps(self.description, sort_keys=True, separators=(",", ":"))


class _Fail(Exception):
    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key
        self.msg = msg


def _error(spec: ImageSpec, key: str, msg: str) -> UsageError:
    """One line naming the file and line of ``key`` when the spec came from a nixfly.toml."""
    if spec.source:
        try:
            return UsageError(located(spec.source, Path(spec.source).read_text(), key, msg))
        except OSError:
            pass
    return UsageError(f"{key}: {msg}")


def _q(word: str) -> str:
    return shlex.quote(word)


def _words(argv: Iterable[str]) -> str:
    return " ".join(_q(w) for w in argv)


# -- the image as a tree: does a path resolve inside it? -----------------------------------------------


def _view(entries: Iterable[Entry]) -> dict[str, Entry]:
    return {e.path.rstrip("/") or "/": e for e in entries}


def resolve_in_image(path: str, view: dict[str, Entry], store_dir: str, hops: int = 0) -> str | None:
    """The host file an absolute image path ends at (following the customisation's symlinks and trees and
    the store's own symlinks), or None. A generated file answers with its image path."""
    path = posixpath.normpath(path)
    if hops > 40:
        return None
    if path.startswith(store_dir + "/"):
        return path if os.path.exists(path) else None
    comps = path.split("/")
    for i in range(len(comps), 1, -1):
        prefix = "/".join(comps[:i])
        e = view.get(prefix)
        if e is None:
            continue
        rest = comps[i:]
        if e.kind == "symlink":
            target = e.target if e.target.startswith("/") else posixpath.join(posixpath.dirname(prefix), e.target)
            return resolve_in_image("/".join([target, *rest]), view, store_dir, hops + 1)
        if e.kind == "tree":
            host = os.path.join(e.src, *rest)
            return host if os.path.exists(host) else None
        if e.kind == "file" and not rest:
            return path
        return None
    return None


def _executable(word: str, path_var: str, view: dict[str, Entry], store_dir: str) -> bool:
    candidates = [word] if "/" in word else [posixpath.join(d, word) for d in path_var.split(":") if d.startswith("/")]
    for c in candidates:
        if not c.startswith("/"):
            continue
        host = resolve_in_image(c, view, store_dir)
        if host is None:
            continue
        if host == c and c in view:  # a generated file: executable when its mode says so
            if view[c].mode & 0o111:
                return True
            continue
        if os.path.isfile(host) and os.access(host, os.X_OK):
            return True
    return False


# -- tools from the closure ------------------------------------------------------------------------------


class _Tools:
    def __init__(self, closure: Closure) -> None:
        self.closure = closure
        self._cache: dict[str, str | None] = {}

    def find(self, name: str) -> str | None:
        """``STORE/…/bin/NAME`` from the closure (store paths in name order), or None."""
        if name not in self._cache:
            hit = None
            for p in sorted(self.closure.paths):
                cand = os.path.join(p, "bin", name)
                if os.path.lexists(cand):
                    hit = cand
                    break
            self._cache[name] = hit
        return self._cache[name]

    def need(self, name: str, key: str, why: str, hint: str) -> str:
        found = self.find(name)
        if found is None:
            raise _Fail(key, f"{why} needs {name} in the closure: add {hint} to roots")
        return found


def _pick_backend(spec: ImageSpec, tools: _Tools) -> str:
    markers = {"process-compose": "process-compose", "runit": "runsvdir", "s6": "s6-svscan"}
    hints = {"process-compose": "pkgs.process-compose", "runit": "pkgs.runit", "s6": "pkgs.s6"}
    if spec.supervisor is not None:
        if tools.find(markers[spec.supervisor]) is None:
            raise _Fail(
                "supervisor",
                f"supervisor {spec.supervisor!r}: no {markers[spec.supervisor]} in the closure: "
                f"add {hints[spec.supervisor]} to roots",
            )
        return spec.supervisor
    for b in BACKENDS:
        if tools.find(markers[b]) is not None:
            return b
    raise _Fail(
        "processes",
        "no supervisor in the closure to run the processes: "
        "add pkgs.process-compose (or pkgs.runit or pkgs.s6) to roots",
    )


# -- shared pieces --------------------------------------------------------------------------------------


def _boot_dirs(spec: ImageSpec) -> list[DirSpec]:
    seen: dict[str, DirSpec] = {}
    for d in [*(d for d in spec.dirs if d.at_boot), *spec.boot_dirs]:
        seen[d.path.rstrip("/")] = d
    return list(seen.values())


def _boot_dir_lines(dirs: list[DirSpec], sh_tools: dict[str, str]) -> list[str]:
    out = []
    for d in dirs:
        p = _q(d.path.rstrip("/"))
        out.append(
            f"{sh_tools['mkdir']} -p {p} && {sh_tools['chown']} {d.uid}:{d.gid} {p} && {sh_tools['chmod']} "
            f"{d.mode:04o} {p} || {{ echo {_q('nixfly: cannot prepare boot directory ' + d.path)} >&2; exit 1; }}"
        )
    return out


def _shell_tools(tools: _Tools, key: str, names: Sequence[str]) -> dict[str, str]:
    why = "the generated boot stage"
    return {n: tools.need(n, key, why, "pkgs.busybox (or pkgs.coreutils)") for n in names}


def _script(sh: str, comment: str, body: list[str]) -> bytes:
    return ("\n".join([f"#!{sh}", f"# {comment} (generated by nixfly; do not edit)", *body]) + "\n").encode()


def _description(spec: ImageSpec, backend: str | None, entrypoint: Sequence[str]) -> dict[str, Any]:
    procs = []
    for p in spec.processes:
        uid, gid, extra = process_ids(spec, p)
        r = p.readiness
        procs.append(
            {
                "name": p.name,
                "command": list(p.command),
                "user": p.user or "root",
                "uid": uid,
                "gid": gid,
                "groups": list(extra),
                "oneshot": p.oneshot,
                "depends_on": dict(p.depends_on),
                "restart": p.restart_policy,
                "readiness": None if r is None else {"kind": r.kind, "port": r.port, "command": list(r.command)},
                "stop_signal": p.stop_signal,
                "stop_timeout": p.stop_timeout,
            }
        )
    boot: list[dict[str, Any]] = [
        {"step": "dir", "path": d.path, "uid": d.uid, "gid": d.gid, "mode": f"{d.mode:04o}"} for d in _boot_dirs(spec)
    ]
    if backend in ("runit", "s6"):
        boot += [{"step": "oneshot", "name": p.name} for p in process_order(spec.processes) if p.oneshot]
    return {
        "supervisor": backend,
        "entrypoint": list(entrypoint),
        "processes": procs,
        "users": [{"name": u.name, "uid": u.uid, "gid": u.gid if u.gid is not None else u.uid} for u in spec.users],
        "boot": boot,
    }


# -- runit and s6 ----------------------------------------------------------------------------------------------


def _env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={_q(v)}" for k, v in env.items()]


def _probe_argv(p: ProcessSpec, tools: _Tools, key: str) -> list[str]:
    r = p.readiness
    assert r is not None
    if r.kind == "exec":
        argv = list(r.command)
    elif r.kind == "http":
        wget = tools.find("wget")
        url = f"http://{r.host}:{r.port}{r.path if r.path.startswith('/') else '/' + r.path}"
        if wget is not None:
            argv = [wget, "-q", "-O", "/dev/null", url]
        else:
            curl = tools.need("curl", f"{key}.readiness.kind", "an http probe", "pkgs.busybox (wget) or pkgs.curl")
            argv = [curl, "-fsS", "-o", "/dev/null", url]
    else:
        nc = tools.need("nc", f"{key}.readiness.kind", "a tcp probe", "pkgs.busybox (or pkgs.netcat)")
        argv = [nc, "-w", str(r.timeout), r.host, str(r.port)]
    timeout = tools.find("timeout")
    return [timeout, str(r.timeout), *argv] if timeout is not None else argv


@dataclass(frozen=True)
class _Flavour:
    """What differs between runit and s6 in the service-directory backend."""

    name: str
    scan: tuple[str, ...]  # the scanner's command line, started in the background
    drop: Callable[[int, int, tuple[int, ...]], list[str]]  # (uid, gid, extra gids) → privilege-dropping prefix
    stop: Callable[[ProcessSpec, str], str]  # (process, service dir) → bring it down within its stop_timeout
    halt: str  # after every service is down: make the scanner exit
    down_here: str  # in finish: keep this service down
    signalled: str  # the finish script's first argument when a signal ended the process
    started: Callable[[str], str]  # service dir → a shell condition true once the service runs


def _runit_flavour(tools: _Tools) -> _Flavour:
    sv = tools.need("sv", "supervisor", "runit", "pkgs.runit")
    chpst = tools.need("chpst", "supervisor", "runit", "pkgs.runit")
    runsvdir = tools.need("runsvdir", "supervisor", "runit", "pkgs.runit")
    tools.need("runsv", "supervisor", "runit", "pkgs.runit")  # runsvdir starts it from PATH
    return _Flavour(
        name="runit",
        scan=(runsvdir, "-P", f"{ETC}/runit"),
        drop=lambda uid, gid, extra: [] if (uid, gid, extra) == (0, 0, ()) else [
            chpst, "-u", ":" + ":".join(str(x) for x in (uid, gid, *extra))],
        stop=lambda p, d: f"{sv} -w {p.stop_timeout} force-stop {d}",
        halt='kill -HUP "$svpid" 2>/dev/null',
        down_here=f"exec {sv} d .",
        signalled="-1",
        started=lambda d: f'read s < {d}/supervise/stat 2>/dev/null && [ "$s" = run ]',
    )  # fmt: skip


def _s6_flavour(tools: _Tools) -> _Flavour:
    svc = tools.need("s6-svc", "supervisor", "s6", "pkgs.s6")
    svwait = tools.need("s6-svwait", "supervisor", "s6", "pkgs.s6")
    svscanctl = tools.need("s6-svscanctl", "supervisor", "s6", "pkgs.s6")
    apply = tools.need("s6-applyuidgid", "supervisor", "s6", "pkgs.s6")
    svscan = tools.need("s6-svscan", "supervisor", "s6", "pkgs.s6")
    tools.need("s6-supervise", "supervisor", "s6", "pkgs.s6")
    return _Flavour(
        name="s6",
        scan=(svscan, f"{ETC}/s6"),
        drop=lambda uid, gid, extra: [] if (uid, gid, extra) == (0, 0, ()) else [
            apply, "-u", str(uid), "-g", str(gid), "-G", ",".join(str(g) for g in extra) or str(gid)],
        # down-signal and timeout-kill in the service directory make s6-supervise signal and then kill it
        stop=lambda p, d: f"{svc} -wD -T {(p.stop_timeout + 1) * 1000} -d {d}",
        halt=f"{svscanctl} -t {ETC}/s6",
        down_here="exit 125",  # s6-supervise: a permanent failure, not restarted
        signalled="256",
        started=lambda d: f"{svwait} -u -t 1000 {d} 2>/dev/null",
    )  # fmt: skip


def _svdir(spec: ImageSpec, tools: _Tools, backend: str) -> Supervision:
    """runit or s6: a boot script running the boot stage and then the scanner over one service directory
    per long-running process; it stops them (dependents first) on TERM/INT/HUP."""
    sh = tools.need("sh", "processes", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
    t = _shell_tools(tools, "processes", ("mkdir", "chown", "chmod", "sleep"))
    fl = _runit_flavour(tools) if backend == "runit" else _s6_flavour(tools)
    base = f"{ETC}/{fl.name}"
    index = {p.name: i for i, p in enumerate(spec.processes)}
    ordered = process_order(spec.processes)
    services = [p for p in ordered if not p.oneshot]
    for p in ordered:
        for dep in p.depends_on:
            if p.oneshot and not spec.processes[index[dep]].oneshot:
                raise _Fail(
                    f"processes.{index[p.name]}.depends_on.{dep}",
                    f"under {fl.name}, oneshot {p.name!r} runs at boot, before the long-running {dep!r} starts",
                )
    entries: list[Entry] = [Entry("dir", ETC, 0o755), Entry("dir", base, 0o755)]
    body = [
        f"# The boot stage: directories, then the oneshot boot steps; then {fl.name} over the services.",
        f"PATH={posixpath.dirname(fl.scan[0])}:$PATH",
        "export PATH",
        "trap 'exit 143' TERM",
        "trap 'exit 130' INT",
        "trap 'exit 129' HUP",
        f"{t['mkdir']} -p {RUN} || exit 1",
        *_boot_dir_lines(_boot_dirs(spec), t),
    ]
    for p in ordered:
        if not p.oneshot:
            continue
        uid, gid, extra = process_ids(spec, p)
        inner = "; ".join(
            [*(["cd " + _q(p.working_dir)] if p.working_dir else []), *_env_lines(p.env),
             "exec " + _words([*fl.drop(uid, gid, extra), *p.command])]
        )  # fmt: skip
        give_up = f'echo "nixfly: boot step {p.name} failed (exit $code)" >&2; exit $code'
        body += [f'echo "nixfly: boot step {p.name}" >&2', "attempt=0", f"until ( {inner} ); do", "  code=$?"]
        if p.restart_policy == "never":
            body.append(f"  {give_up}")
        else:
            body.append("  attempt=$((attempt + 1))")
            if p.max_restarts:
                body.append(f'  [ "$attempt" -gt {p.max_restarts} ] && {{ {give_up}; }}')
            body.append(f'  echo "nixfly: boot step {p.name} failed (exit $code); retrying in {p.backoff}s" >&2')
            body.append(f"  {t['sleep']} {p.backoff}")
        body.append("done")
    body += [
        f'echo 0 > {RUN}/stopping; : > {RUN}/exit; echo "$$" > {RUN}/init.pid',
        *(f"echo 0 > {RUN}/{p.name}.restarts" for p in services if p.max_restarts and p.restart_policy != "never"),
        "stopping=0",
        "stop() {",
        '  [ "$stopping" = 1 ] && return',
        f"  stopping=1; echo 1 > {RUN}/stopping",
        '  echo "nixfly: stopping the processes" >&2',
        *(f"  {fl.stop(p, f'{base}/{p.name}')} >/dev/null 2>&1" for p in reversed(services)),
        f"  {fl.halt}",
        "}",
        "trap stop TERM INT HUP",
        f"{_words(fl.scan)} &",
        "svpid=$!",
        'while kill -0 "$svpid" 2>/dev/null; do wait "$svpid"; done',
        f"code=; read code < {RUN}/exit",
        'exit "${code:-0}"',
    ]
    entries.append(Entry("file", f"{ETC}/init", 0o755, _script(sh, f"{fl.name} boot stage and stop", body)))

    for p in services:
        key = f"processes.{index[p.name]}"
        d = f"{base}/{p.name}"
        uid, gid, extra = process_ids(spec, p)
        run: list[str] = []
        for dep, cond in p.depends_on.items():
            target = spec.processes[index[dep]]
            if target.oneshot:
                continue  # boot steps are done before the scanner starts
            dd = f"{base}/{dep}"
            if cond == "healthy":
                r = target.readiness
                assert r is not None
                run += [f'echo "nixfly: {p.name} waits for {dep} to be healthy" >&2']
                if r.initial_delay:
                    run.append(f"{t['sleep']} {r.initial_delay}")
                run += [
                    "ok=0",
                    f'while [ "$ok" -lt {r.success_threshold} ]; do',
                    f"  if {dd}/check >/dev/null 2>&1; then ok=$((ok + 1)); else ok=0; fi",
                    f'  [ "$ok" -ge {r.success_threshold} ] || {t["sleep"]} {r.period}',
                    "done",
                ]
            else:
                run.append(f"until {fl.started(dd)}; do {t['sleep']} 1; done")
        if p.working_dir:
            run.append(f"cd {_q(p.working_dir)} || exit 1")
        run += _env_lines(p.env)
        run.append("exec " + _words([*fl.drop(uid, gid, extra), *p.command]))
        entries += [Entry("dir", d, 0o755), Entry("file", f"{d}/run", 0o755, _script(sh, f"service {p.name}", run))]
        fin = [
            f"# $1: the exit code ({fl.signalled} when a signal ended it), $2: the signal",
            f"stopping=; read stopping < {RUN}/stopping",
            '[ "$stopping" = 1 ] && exit 0',
            f'code=$1; [ "$code" = {fl.signalled} ] && code=$((128 + $2))',
        ]
        policy = p.restart_policy
        if policy == "never":
            fin += [
                'if [ "$code" != 0 ]; then',
                f'  echo "nixfly: {p.name} failed (exit $code); restart = never: stopping the machine" >&2',
                f'  echo "$code" > {RUN}/exit; read pid < {RUN}/init.pid && kill -TERM "$pid"',
                "else",
                f'  echo "nixfly: {p.name} finished" >&2',
                "fi",
                fl.down_here,
            ]
        else:
            if policy == "on-failure":
                fin.append(f'[ "$code" = 0 ] && {{ echo "nixfly: {p.name} finished" >&2; {fl.down_here}; }}')
            if p.max_restarts:
                fin += [
                    f"n=0; read n < {RUN}/{p.name}.restarts 2>/dev/null; n=$((n + 1))",
                    f"echo $n > {RUN}/{p.name}.restarts",
                    f'if [ "$n" -gt {p.max_restarts} ]; then',
                    f'  echo "nixfly: {p.name} exited (exit $code) {p.max_restarts} times; not restarted" >&2',
                    f"  {fl.down_here}",
                    "fi",
                ]
            fin.append(f'echo "nixfly: {p.name} exited (exit $code); restarting in {p.backoff}s" >&2')
            if p.backoff:
                fin.append(f"exec {t['sleep']} {p.backoff}")
        entries.append(Entry("file", f"{d}/finish", 0o755, _script(sh, f"finish of {p.name}", fin)))
        if p.readiness is not None:
            probe = _probe_argv(p, tools, key)
            check = [f"exec {_words(probe)} </dev/null >/dev/null 2>&1"]
            entries.append(Entry("file", f"{d}/check", 0o755, _script(sh, f"readiness of {p.name}", check)))
        if fl.name == "s6":
            entries += [
                Entry("file", f"{d}/down-signal", 0o644, f"{p.stop_signal}\n".encode()),
                Entry("file", f"{d}/timeout-kill", 0o644, f"{p.stop_timeout * 1000}\n".encode()),
                Entry("file", f"{d}/timeout-finish", 0o644, f"{(p.backoff + 5) * 1000}\n".encode()),
            ]
        elif p.stop_signal != "SIGTERM":
            ctl = [f'read pid < supervise/pid && kill -{p.stop_signal.removeprefix("SIG")} "$pid"']
            entries += [
                Entry("dir", f"{d}/control", 0o755),
                Entry("file", f"{d}/control/d", 0o755, _script(sh, f"stop {p.name} with {p.stop_signal}", ctl)),
            ]
    entrypoint = (sh, f"{ETC}/init")
    return Supervision(fl.name, tuple(entries), entrypoint, _description(spec, fl.name, entrypoint))


# -- process-compose ------------------------------------------------------------------------------------


def yaml_lines(value: Any, indent: int = 0) -> list[str]:
    """A small deterministic YAML writer for the shapes we generate: mappings in block style, lists of
    scalars in flow style, strings double-quoted with JSON escapes (valid YAML)."""
    pad = "  " * indent
    out: list[str] = []
    assert isinstance(value, dict)
    for k, v in value.items():
        key = k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)
        if isinstance(v, dict) and v:
            out.append(f"{pad}{key}:")
            out += yaml_lines(v, indent + 1)
        else:
            out.append(f"{pad}{key}: {_yaml_scalar(v)}")
    return out


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    raise TypeError(f"cannot write {type(v).__name__} as YAML")


_PC_CONDITIONS = {
    "started": "process_started",
    "healthy": "process_healthy",
    "completed_successfully": "process_completed_successfully",
}


def _drop_privileges(tools: _Tools, uid: int, gid: int, extra: tuple[int, ...], key: str, name: str) -> list[str]:
    if (uid, gid, extra) == (0, 0, ()):
        return []
    setpriv = tools.find("setpriv")
    if setpriv is not None:
        groups = f"--groups={','.join(str(g) for g in extra)}" if extra else "--clear-groups"
        return [setpriv, f"--reuid={uid}", f"--regid={gid}", groups, "--"]
    chpst = tools.find("chpst")
    if chpst is not None:
        return [chpst, "-u", ":" + ":".join(str(x) for x in (uid, gid, *extra))]
    s6 = tools.find("s6-applyuidgid")
    if s6 is not None:
        return [s6, "-u", str(uid), "-g", str(gid), "-G", ",".join(str(g) for g in extra) or str(gid), "--"]
    raise _Fail(
        key,
        f"process {name!r} runs as {uid}:{gid} but process-compose cannot switch users: add a helper "
        "(pkgs.util-linux for setpriv, pkgs.runit for chpst or pkgs.s6 for s6-applyuidgid) to roots",
    )


def _process_compose(spec: ImageSpec, tools: _Tools) -> Supervision:
    pc = tools.need("process-compose", "supervisor", "process-compose", "pkgs.process-compose")
    sh = tools.find("sh")
    dirs = _boot_dirs(spec)
    entries: list[Entry] = [Entry("dir", ETC, 0o755)]
    processes: dict[str, Any] = {}
    if dirs:
        sh = tools.need("sh", "boot_dirs", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
        t = _shell_tools(tools, "boot_dirs", ("mkdir", "chown", "chmod"))
        boot = _script(sh, "boot directories", ["set -e", *_boot_dir_lines(dirs, t)])
        entries.append(Entry("file", f"{ETC}/boot", 0o755, boot))
        processes[BOOT_NAME] = {
            "entrypoint": [sh, f"{ETC}/boot"],
            "availability": {"restart": "exit_on_failure"},
        }
    needs_shell = False
    for i, p in enumerate(spec.processes):
        key = f"processes.{i}"
        uid, gid, extra = process_ids(spec, p)
        cfg: dict[str, Any] = {"entrypoint": [*_drop_privileges(tools, uid, gid, extra, f"{key}.user", p.name),
                                              *p.command]}  # fmt: skip
        if p.working_dir:
            cfg["working_dir"] = p.working_dir
        if p.env:
            cfg["environment"] = [f"{k}={v}" for k, v in p.env.items()]
        policy = p.restart_policy
        avail: dict[str, Any] = {
            "restart": {"always": "always", "on-failure": "on_failure", "never": "exit_on_failure"}[policy]
        }
        if policy != "never":
            avail["backoff_seconds"] = p.backoff
            if p.max_restarts:
                avail["max_restarts"] = p.max_restarts
        cfg["availability"] = avail
        deps = {BOOT_NAME: "completed_successfully"} if dirs else {}
        deps.update(p.depends_on)
        if deps:
            cfg["depends_on"] = {d: {"condition": _PC_CONDITIONS[c]} for d, c in deps.items()}
        r = p.readiness
        if r is not None:
            probe: dict[str, Any] = {}
            if r.kind == "http":
                path = r.path if r.path.startswith("/") else "/" + r.path
                probe["http_get"] = {"host": r.host, "scheme": "http", "path": path, "port": str(r.port)}
            else:
                needs_shell = True
                argv = list(r.command) if r.kind == "exec" else [
                    tools.need("nc", f"{key}.readiness.kind", "a tcp probe", "pkgs.busybox (or pkgs.netcat)"),
                    "-w", str(r.timeout), r.host, str(r.port),
                ]  # fmt: skip
                probe["exec"] = {"command": _words(argv) + (" </dev/null" if r.kind == "tcp" else "")}
            probe.update(
                initial_delay_seconds=r.initial_delay, period_seconds=r.period, timeout_seconds=r.timeout,
                success_threshold=r.success_threshold, failure_threshold=r.failure_threshold,
            )  # fmt: skip
            cfg["readiness_probe"] = probe
        if not p.oneshot:
            cfg["shutdown"] = {"signal": SIGNAL_NUMBERS[p.stop_signal], "timeout_seconds": p.stop_timeout}
        processes[p.name] = cfg
    project: dict[str, Any] = {"version": "0.5", "is_strict": True, "is_tui_disabled": True, "ordered_shutdown": True}
    if needs_shell:
        sh = tools.need("sh", "processes", "exec and tcp readiness probes", "pkgs.busybox (or pkgs.bash)")
        project["shell"] = {"shell_command": sh, "shell_argument": "-c"}
    project["processes"] = processes
    yaml = ("# process-compose configuration (generated by nixfly; do not edit)\n" + "\n".join(yaml_lines(project)))
    entries.append(Entry("file", f"{ETC}/process-compose.yaml", 0o644, (yaml + "\n").encode()))
    entrypoint = (pc, "up", f"--config={ETC}/process-compose.yaml", "--tui=false", "--no-server",
                  "--ordered-shutdown", "--disable-dotenv")  # fmt: skip
    return Supervision("process-compose", tuple(entries), entrypoint, _description(spec, "process-compose", entrypoint))


def _boot_only(spec: ImageSpec, tools: _Tools) -> Supervision:
    """Boot directories without processes: a boot stage in front of the image's own entrypoint."""
    sh = tools.need("sh", "boot_dirs", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
    t = _shell_tools(tools, "boot_dirs", ("mkdir", "chown", "chmod"))
    body = [*_boot_dir_lines(_boot_dirs(spec), t), 'exec "$@"']
    entries = (Entry("dir", ETC, 0o755), Entry("file", f"{ETC}/boot", 0o755, _script(sh, "boot directories", body)))
    entrypoint = (sh, f"{ETC}/boot", *(spec.entrypoint or []))
    return Supervision(None, entries, entrypoint, _description(spec, None, entrypoint))


# -- entry point ----------------------------------------------------------------------------------------


def check_commands(spec: ImageSpec, closure: Closure, entries: Iterable[Entry]) -> None:
    """Every process's program (its command's first word, and an exec probe's) must resolve inside the
    image: an absolute path through the image's links, or a bare name on the process's PATH."""
    view = _view(entries)
    base_path = spec.env.get("PATH", IMAGE_PATH)
    for i, p in enumerate(spec.processes):
        path_var = p.env.get("PATH", base_path)
        checks = [(f"processes.{i}.command", p.command[0])]
        if p.readiness is not None and p.readiness.kind == "exec":
            checks.append((f"processes.{i}.readiness.command", p.readiness.command[0]))
        for key, word in checks:
            if not _executable(word, path_var, view, closure.store_dir):
                where = "in the image" if "/" in word else f"on PATH ({path_var}) in the image"
                raise _Fail(key, f"{word!r} is not an executable file {where}: add the package providing it to roots")


def supervise(spec: ImageSpec, closure: Closure, entries: Sequence[Entry]) -> Supervision | None:
    """The supervisor configuration for ``spec`` (None when it declares no processes and no boot dirs).
    ``entries`` are the image's other non-store entries (links into the store, users, extra files), used to
    check that every command resolves inside the image. Bad input raises UsageError (FILE:LINE: KEY: …)."""
    if not spec.processes and not _boot_dirs(spec):
        return None
    tools = _Tools(closure)
    try:
        for i, p in enumerate(spec.processes):
            if p.name == BOOT_NAME:
                raise _Fail(f"processes.{i}.name", f"{BOOT_NAME!r} is reserved for nixfly's boot stage")
        if not spec.processes:
            return _boot_only(spec, tools)
        backend = _pick_backend(spec, tools)
        made = _process_compose(spec, tools) if backend == "process-compose" else _svdir(spec, tools, backend)
        check_commands(spec, closure, [*entries, *made.entries])
        return made
    except _Fail as e:
        raise _error(spec, e.key, e.msg) from None
