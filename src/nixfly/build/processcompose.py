"""process-compose: ``/etc/nixfly/process-compose.yaml`` (``depends_on`` conditions, ``readiness_probe``,
``availability`` restart policies, ``shutdown`` signal and timeout), written by a small deterministic YAML
writer. process-compose cannot switch users, so a helper from the closure drops privileges; the boot
directories are a first ``nixfly-boot`` process every other one depends on."""

from __future__ import annotations

import json
import re
from typing import Any

from nixfly.build import supervision as shared
from nixfly.build.layers import Entry
from nixfly.build.spec import ImageSpec, process_ids

# Linux signal numbers (process-compose's shutdown.signal is a number).
SIGNAL_NUMBERS = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15,
    "SIGWINCH": 28,
}  # fmt: skip
_BARE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


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


def _drop_privileges(tools: shared.Tools, uid: int, gid: int, extra: tuple[int, ...], key: str, name: str) -> list[str]:
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
    raise shared.Fail(
        key,
        f"process {name!r} runs as {uid}:{gid} but process-compose cannot switch users: add a helper "
        "(pkgs.util-linux for setpriv, pkgs.runit for chpst or pkgs.s6 for s6-applyuidgid) to roots",
    )


def process_compose(spec: ImageSpec, tools: shared.Tools) -> shared.Supervision:
    pc = tools.need("process-compose", "supervisor", "process-compose", "pkgs.process-compose")
    sh = tools.find("sh")
    dirs = shared.boot_dirs(spec)
    entries: list[Entry] = [Entry("dir", shared.ETC, 0o755)]
    processes: dict[str, Any] = {}
    if dirs:
        sh = tools.need("sh", "boot_dirs", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
        t = shared.shell_tools(tools, "boot_dirs", ("mkdir", "chown", "chmod"))
        boot = shared.script(sh, "boot directories", ["set -e", *shared.boot_dir_lines(dirs, t)])
        entries.append(Entry("file", f"{shared.ETC}/boot", 0o755, boot))
        processes[shared.BOOT_NAME] = {
            "entrypoint": [sh, f"{shared.ETC}/boot"],
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
        deps = {shared.BOOT_NAME: "completed_successfully"} if dirs else {}
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
                probe["exec"] = {"command": shared.words(argv) + (" </dev/null" if r.kind == "tcp" else "")}
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
    entries.append(Entry("file", f"{shared.ETC}/process-compose.yaml", 0o644, (yaml + "\n").encode()))
    entrypoint = (pc, "up", f"--config={shared.ETC}/process-compose.yaml", "--tui=false", "--no-server",
                  "--ordered-shutdown", "--disable-dotenv")  # fmt: skip
    description = shared.describe(spec, "process-compose", entrypoint)
    return shared.Supervision("process-compose", tuple(entries), entrypoint, description)
