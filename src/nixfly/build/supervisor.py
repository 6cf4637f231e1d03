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

import os
import posixpath
from collections.abc import Iterable, Sequence

from nixfly.build.closure import Closure
from nixfly.build.layers import Entry
from nixfly.build.processcompose import process_compose, yaml_lines
from nixfly.build.spec import ImageSpec
from nixfly.build.supervision import (
    BACKENDS,
    BOOT_NAME,
    ETC,
    IMAGE_PATH,
    LABEL,
    Fail,
    Supervision,
    Tools,
    boot_dir_lines,
    boot_dirs,
    describe,
    error,
    script,
    shell_tools,
)
from nixfly.build.svdir import svdir

__all__ = ["BACKENDS", "LABEL", "Supervision", "check_commands", "resolve_in_image", "supervise", "yaml_lines"]


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


def _pick_backend(spec: ImageSpec, tools: Tools) -> str:
    markers = {"process-compose": "process-compose", "runit": "runsvdir", "s6": "s6-svscan"}
    hints = {"process-compose": "pkgs.process-compose", "runit": "pkgs.runit", "s6": "pkgs.s6"}
    if spec.supervisor is not None:
        if tools.find(markers[spec.supervisor]) is None:
            raise Fail(
                "supervisor",
                f"supervisor {spec.supervisor!r}: no {markers[spec.supervisor]} in the closure: "
                f"add {hints[spec.supervisor]} to roots",
            )
        return spec.supervisor
    for b in BACKENDS:
        if tools.find(markers[b]) is not None:
            return b
    raise Fail(
        "processes",
        "no supervisor in the closure to run the processes: "
        "add pkgs.process-compose (or pkgs.runit or pkgs.s6) to roots",
    )


def _boot_only(spec: ImageSpec, tools: Tools) -> Supervision:
    """Boot directories without processes: a boot stage in front of the image's own entrypoint."""
    sh = tools.need("sh", "boot_dirs", "the generated boot stage", "pkgs.busybox (or pkgs.bash)")
    t = shell_tools(tools, "boot_dirs", ("mkdir", "chown", "chmod"))
    body = [*boot_dir_lines(boot_dirs(spec), t), 'exec "$@"']
    entries = (Entry("dir", ETC, 0o755), Entry("file", f"{ETC}/boot", 0o755, script(sh, "boot directories", body)))
    entrypoint = (sh, f"{ETC}/boot", *(spec.entrypoint or []))
    return Supervision(None, entries, entrypoint, describe(spec, None, entrypoint))


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
                raise Fail(key, f"{word!r} is not an executable file {where}: add the package providing it to roots")


def supervise(spec: ImageSpec, closure: Closure, entries: Sequence[Entry]) -> Supervision | None:
    """The supervisor configuration for ``spec`` (None when it declares no processes and no boot dirs).
    ``entries`` are the image's other non-store entries (links into the store, users, extra files), used to
    check that every command resolves inside the image. Bad input raises UsageError (FILE:LINE: KEY: …)."""
    if not spec.processes and not boot_dirs(spec):
        return None
    tools = Tools(closure)
    try:
        for i, p in enumerate(spec.processes):
            if p.name == BOOT_NAME:
                raise Fail(f"processes.{i}.name", f"{BOOT_NAME!r} is reserved for nixfly's boot stage")
        if not spec.processes:
            return _boot_only(spec, tools)
        backend = _pick_backend(spec, tools)
        made = process_compose(spec, tools) if backend == "process-compose" else svdir(spec, tools, backend)
        check_commands(spec, closure, [*entries, *made.entries])
        return made
    except Fail as e:
        raise error(spec, e.key, e.msg) from None
