"""Paths inside an unpacked root filesystem, resolved the way the container will see them.

One walker serves both the unpacker (where a layer may write: every directory on the way, symlinks
followed with absolute targets restarting at the root, and anything that climbs above the root refused)
and the process planner (which file ``/bin/sh`` or ``/etc/passwd`` names: ``..`` stops at the root, as
the kernel does after chroot). It works with ``lstat`` on path strings, which is safe because nothing but
nixfly writes into the tree while it is being resolved.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class Resolved:
    """The walk's answer: ``path`` (a host path inside the root) or ``problem`` (one line), never both.
    Both None means a component does not exist (and was not to be created)."""

    path: Path | None = None
    problem: str | None = None


def walk(root: Path, parts: list[str] | tuple[str, ...], *, escape_ok: bool, create: bool, dirs_only: bool) -> Resolved:
    """Resolve ``parts`` (path components, as seen inside the container) to a host path under ``root``.

    ``escape_ok``: ``..`` at the root stays at the root (kernel semantics) instead of being a problem.
    ``create``: missing components are made as directories (0755). ``dirs_only``: every component,
    the last included, must be a directory (after following symlinks)."""
    todo = [p for p in parts if p not in ("", ".")]
    cur: list[str] = []
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if not cur:
                if escape_ok:
                    continue
                return Resolved(problem="a symlink on the way leads outside the image root")
            cur.pop()
            continue
        p = root.joinpath(*cur, comp)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return Resolved()
            os.mkdir(p, 0o755)
            cur.append(comp)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return Resolved(problem="too many levels of symbolic links")
            target = os.readlink(p)
            if target.startswith("/"):
                cur = []
            todo = [t for t in target.split("/") if t] + todo
            continue
        if (dirs_only or todo) and not stat.S_ISDIR(st.st_mode):
            if not dirs_only:
                return Resolved()  # like ENOTDIR when looking a file up
            return Resolved(problem=f"{'/'.join([*cur, comp])} is not a directory")
        cur.append(comp)
    return Resolved(path=root.joinpath(*cur))


def find_in_root(root: Path, path: str) -> Path | None:
    """The host path that ``path`` (absolute, as seen inside the container) names in ``root``, following
    symlinks the way the kernel would inside the container (``..`` stops at the root). None if missing
    (or unresolvable: a loop, a file used as a directory)."""
    return walk(root, path.split("/"), escape_ok=True, create=False, dirs_only=False).path


def strictly_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` is a proper descendant of ``root`` (lexically; callers resolve first)."""
    return root in path.parents


def resolve_dir(root: Path, path: str) -> str | None:
    """``path`` (absolute, as seen inside the container) with every symlink that exists in ``root`` resolved
    the way the container would (``..`` stops at the root): the same directory, as a path without symlinks,
    so a runtime can make and enter it without following one (a link to ``/home/you`` is then
    ``<root>/home/you``, not the host's). Components that do not exist yet are kept as written; None when
    one that exists is not a directory, or the links loop."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    cur: list[str] = []
    missing_from: int | None = None  # cur[missing_from:] does not exist: nothing below it can be a link
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if cur:
                cur.pop()
            if missing_from is not None and len(cur) <= missing_from:
                missing_from = None
            continue
        if missing_from is not None:
            cur.append(comp)
            continue
        try:
            st = os.lstat(root.joinpath(*cur, comp))
        except (FileNotFoundError, NotADirectoryError):
            missing_from = len(cur)
            cur.append(comp)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            target = os.readlink(root.joinpath(*cur, comp))
            if target.startswith("/"):
                cur = []
            todo = [t for t in target.split("/") if t] + todo
            continue
        if not stat.S_ISDIR(st.st_mode):
            return None
        cur.append(comp)
    return "/" + "/".join(cur)
