"""runit and s6: one service directory per long-running process (``run``, ``finish``, ``check``, and
runit's ``control/d`` or s6's ``down-signal``/``timeout-kill``) and a boot script (``/etc/nixfly/init``)
that runs the boot stage, then the scanner, and stops the services dependents first on TERM/INT/HUP."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from nixfly.build import supervision as shared
from nixfly.build.layers import Entry
from nixfly.build.processes import ProcessSpec, process_order
from nixfly.build.spec import ImageSpec, process_ids


def _env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shared.q(v)}" for k, v in env.items()]


def _probe_argv(p: ProcessSpec, tools: shared.Tools, key: str) -> list[str]:
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


def _runit_flavour(tools: shared.Tools) -> _Flavour:
    sv = tools.need("sv", "supervisor", "runit", "pkgs.runit")
    chpst = tools.need("chpst", "supervisor", "runit", "pkgs.runit")
    runsvdir = tools.need("runsvdir", "supervisor", "runit", "pkgs.runit")
    tools.need("runsv", "supervisor", "runit", "pkgs.runit")  # runsvdir starts it from PATH
    return _Flavour(
        name="runit",
        scan=(runsvdir, "-P", f"{shared.ETC}/runit"),
        drop=lambda uid, gid, extra: [] if (uid, gid, extra) == (0, 0, ()) else [
            chpst, "-u", ":" + ":".join(str(x) for x in (uid, gid, *extra))],
        stop=lambda p, d: f"{sv} -w {p.stop_timeout} force-stop {d}",
        halt='kill -HUP "$svpid" 2>/dev/null',
        down_here=f"exec {sv} d .",
        signalled="-1",
        started=lambda d: f'read s < {d}/supervise/stat 2>/dev/null && [ "$s" = run ]',
    )  # fmt: skip


def _s6_flavour(tools: shared.Tools) -> _Flavour:
    svc = tools.need("s6-svc", "supervisor", "s6", "pkgs.s6")
    svwait = tools.need("s6-svwait", "supervisor", "s6", "pkgs.s6")
    svscanctl = tools.need("s6-svscanctl", "supervisor", "s6", "pkgs.s6")
    apply = tools.need("s6-applyuidgid", "supervisor", "s6", "pkgs.s6")
    svscan = tools.need("s6-svscan", "supervisor", "s6", "pkgs.s6")
    tools.need("s6-supervise", "supervisor", "s6", "pkgs.s6")
    return _Flavour(
        name="s6",
        scan=(svscan, f"{shared.ETC}/s6"),
        drop=lambda uid, gid, extra: [] if (uid, gid, extra) == (0, 0, ()) else [
            apply, "-u", str(uid), "-g", str(gid), "-G", ",".join(str(g) for g in extra) or str(gid)],
        # down-signal and timeout-kill in the service directory make s6-supervise signal and then kill it
        stop=lambda p, d: f"{svc} -wD -T {(p.stop_timeout + 1) * 1000} -d {d}",
        halt=f"{svscanctl} -t {shared.ETC}/s6",
        down_here="exit 125",  # s6-supervise: a permanent failure, not restarted
        signalled="256",
        started=lambda d: f"{svwait} -u -t 1000 {d} 2>/dev/null",
    )  # fmt: skip


def svdir(spec: ImageSpec, tools: shared.Tools, backend: str) -> shared.Supervision:
    """runit or s6: a boot script running the boot stage and then the scanner over one service directory
    per long-running process; it stops them (dependents first) on TERM/INT/HUP."""
    sh = tools.need("sh", "processes", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
    t = shared.shell_tools(tools, "processes", ("mkdir", "chown", "chmod", "sleep"))
    fl = _runit_flavour(tools) if backend == "runit" else _s6_flavour(tools)
    base = f"{shared.ETC}/{fl.name}"
    index = {p.name: i for i, p in enumerate(spec.processes)}
    ordered = process_order(spec.processes)
    services = [p for p in ordered if not p.oneshot]
    for p in ordered:
        for dep in p.depends_on:
            if p.oneshot and not spec.processes[index[dep]].oneshot:
                raise shared.Fail(
                    f"processes.{index[p.name]}.depends_on.{dep}",
                    f"under {fl.name}, oneshot {p.name!r} runs at boot, before the long-running {dep!r} starts",
                )
    entries: list[Entry] = [Entry("dir", shared.ETC, 0o755), Entry("dir", base, 0o755)]
    body = [
        f"# The boot stage: directories, then the oneshot boot steps; then {fl.name} over the services.",
        f"PATH={posixpath.dirname(fl.scan[0])}:$PATH",
        "export PATH",
        "trap 'exit 143' TERM",
        "trap 'exit 130' INT",
        "trap 'exit 129' HUP",
        f"{t['mkdir']} -p {shared.RUN} || exit 1",
        *shared.boot_dir_lines(shared.boot_dirs(spec), t),
    ]
    for p in ordered:
        if not p.oneshot:
            continue
        uid, gid, extra = process_ids(spec, p)
        inner = "; ".join(
            [*(["cd " + shared.q(p.working_dir)] if p.working_dir else []), *_env_lines(p.env),
             "exec " + shared.words([*fl.drop(uid, gid, extra), *p.command])]
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
        f'echo 0 > {shared.RUN}/stopping; : > {shared.RUN}/exit; echo "$$" > {shared.RUN}/init.pid',
        *(f"echo 0 > {shared.RUN}/{p.name}.restarts"
          for p in services if p.max_restarts and p.restart_policy != "never"),
        "stopping=0",
        "stop() {",
        '  [ "$stopping" = 1 ] && return',
        f"  stopping=1; echo 1 > {shared.RUN}/stopping",
        '  echo "nixfly: stopping the processes" >&2',
        *(f"  {fl.stop(p, f'{base}/{p.name}')} >/dev/null 2>&1" for p in reversed(services)),
        f"  {fl.halt}",
        "}",
        "trap stop TERM INT HUP",
        f"{shared.words(fl.scan)} &",
        "svpid=$!",
        'while kill -0 "$svpid" 2>/dev/null; do wait "$svpid"; done',
        f"code=; read code < {shared.RUN}/exit",
        'exit "${code:-0}"',
    ]
    init = shared.script(sh, f"{fl.name} boot stage and stop", body)
    entries.append(Entry("file", f"{shared.ETC}/init", 0o755, init))

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
            run.append(f"cd {shared.q(p.working_dir)} || exit 1")
        run += _env_lines(p.env)
        run.append("exec " + shared.words([*fl.drop(uid, gid, extra), *p.command]))
        run_script = shared.script(sh, f"service {p.name}", run)
        entries += [Entry("dir", d, 0o755), Entry("file", f"{d}/run", 0o755, run_script)]
        fin = [
            f"# $1: the exit code ({fl.signalled} when a signal ended it), $2: the signal",
            f"stopping=; read stopping < {shared.RUN}/stopping",
            '[ "$stopping" = 1 ] && exit 0',
            f'code=$1; [ "$code" = {fl.signalled} ] && code=$((128 + $2))',
        ]
        policy = p.restart_policy
        if policy == "never":
            fin += [
                'if [ "$code" != 0 ]; then',
                f'  echo "nixfly: {p.name} failed (exit $code); restart = never: stopping the machine" >&2',
                f'  echo "$code" > {shared.RUN}/exit; read pid < {shared.RUN}/init.pid && kill -TERM "$pid"',
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
                    f"n=0; read n < {shared.RUN}/{p.name}.restarts 2>/dev/null; n=$((n + 1))",
                    f"echo $n > {shared.RUN}/{p.name}.restarts",
                    f'if [ "$n" -gt {p.max_restarts} ]; then',
                    f'  echo "nixfly: {p.name} exited (exit $code) {p.max_restarts} times; not restarted" >&2',
                    f"  {fl.down_here}",
                    "fi",
                ]
            fin.append(f'echo "nixfly: {p.name} exited (exit $code); restarting in {p.backoff}s" >&2')
            if p.backoff:
                fin.append(f"exec {t['sleep']} {p.backoff}")
        entries.append(Entry("file", f"{d}/finish", 0o755, shared.script(sh, f"finish of {p.name}", fin)))
        if p.readiness is not None:
            probe = _probe_argv(p, tools, key)
            check = [f"exec {shared.words(probe)} </dev/null >/dev/null 2>&1"]
            entries.append(Entry("file", f"{d}/check", 0o755, shared.script(sh, f"readiness of {p.name}", check)))
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
                Entry("file", f"{d}/control/d", 0o755, shared.script(sh, f"stop {p.name} with {p.stop_signal}", ctl)),
            ]
    entrypoint = (sh, f"{shared.ETC}/init")
    return shared.Supervision(fl.name, tuple(entries), entrypoint, shared.describe(spec, fl.name, entrypoint))
