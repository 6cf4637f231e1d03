"""The customisation layer, declared rather than scripted (no fakeroot, no VM): the roots' top-level
directories linked into ``/``, users and groups, ``/tmp``, extra directories, CA certificates,
``/bin/sh`` and ``/usr/bin/env`` links, and extra non-Nix files.

The ``contents`` links of a root go into that root's own layer, so an app-only change still touches
only the app's layer; everything else goes into one small customisation layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nixfly.build.closure import Closure, to_store_path
from nixfly.build.layers import Entry
from nixfly.build.spec import ImageSpec, UserSpec
from nixfly.build.supervisor import LABEL, supervise
from nixfly.errors import NixflyError, UsageError
from nixfly.image.config import DEFAULT_PATH

CA_CANDIDATES = ("etc/ssl/certs/ca-bundle.crt", "etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt")
CA_LINKS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-bundle.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_MAX_HOPS = 40


class StoreFS(Protocol):
    """How the store is looked at (``os.path`` for the local store; a binary cache's listing otherwise)."""

    def isdir(self, path: str) -> bool: ...

    def islink(self, path: str) -> bool: ...

    def lexists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def isfile(self, path: str) -> bool:
        """Exists (following symlinks) and is not a directory."""
        ...


class LocalFS:
    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def islink(self, path: str) -> bool:
        return os.path.islink(path)

    def lexists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def isfile(self, path: str) -> bool:
        return os.path.exists(path) and not os.path.isdir(path)


@dataclass
class Customisation:
    root_entries: dict[str, list[Entry]] = field(default_factory=dict)  # goes into each root's layer
    entries: list[Entry] = field(default_factory=list)  # the customisation layer
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None  # set by a generated supervisor / boot stage
    labels: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _contents_links(
    closure: Closure, sources: Sequence[str], priority: dict[str, int], fs: StoreFS
) -> dict[str, tuple[str, str]]:
    """image path → (store path providing it, link target). Conflicts are errors unless priorities differ."""
    links: dict[str, tuple[str, str, int]] = {}
    for src in sources:
        sp = closure.paths[src]
        prio = priority.get(src, priority.get(sp.name, 100))
        if not fs.isdir(src):
            continue
        for top in sorted(fs.listdir(src)):
            full = os.path.join(src, top)
            if fs.isdir(full) and not fs.islink(full):
                items = [(f"/{top}/{c}", os.path.join(full, c)) for c in sorted(fs.listdir(full))]
            else:
                items = [(f"/{top}", full)]
            for image_path, target in items:
                if image_path in links:
                    other, _t, oprio = links[image_path]
                    if oprio == prio:
                        raise UsageError(
                            f"contents conflict: {image_path} is provided by both {other} and {src}; "
                            "give one a priority in contents.priority"
                        )
                    if prio > oprio:
                        continue
                links[image_path] = (src, target, prio)
    return {k: (v[0], v[1]) for k, v in links.items()}


def _find(closure: Closure, rel: str, fs: StoreFS) -> str | None:
    for p in sorted(closure.paths):
        cand = os.path.join(p, rel)
        if fs.lexists(cand):
            return cand
    return None


def _passwd(users: list[UserSpec]) -> bytes:
    return "".join(
        f"{u.name}:x:{u.uid}:{u.gid if u.gid is not None else u.uid}:{u.gecos}:{u.home}:{u.shell}\n" for u in users
    ).encode()


def _lines(data: bytes | None) -> dict[str, str]:
    """name → line of a colon-separated database (/etc/passwd, group, shadow), in file order."""
    out: dict[str, str] = {}
    for line in (data or b"").decode(errors="replace").splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            out.setdefault(line.split(":", 1)[0], line)
    return out


BASE_ETC_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/nsswitch.conf")


def _user_entries(
    spec: ImageSpec, base: Mapping[str, bytes | None] | None = None, warnings: list[str] | None = None
) -> list[Entry]:
    """/etc/passwd, group, shadow, nsswitch.conf and home directories; root and nobody by default.

    With ``base`` (the base image's files), its users and groups are kept and ours are added; on a name
    clash ours win and a warning says so. The defaults (root, nobody) are only added when neither has them,
    and the base's nsswitch.conf, when it has one, is left alone."""
    base = base or {}
    warn = warnings if warnings is not None else []
    base_users, base_groups = _lines(base.get("/etc/passwd")), _lines(base.get("/etc/group"))
    base_shadow = _lines(base.get("/etc/shadow"))
    users = list(spec.users)
    names = {u.name for u in users}
    if "root" not in names and "root" not in base_users:
        users.insert(0, UserSpec(name="root", uid=0, gid=0, home="/root", shell="/bin/sh"))
    if "nobody" not in names and "nobody" not in base_users:
        users.append(UserSpec(name="nobody", uid=65534, gid=65534, home="/var/empty", shell="/bin/false"))
    groups = {g.name: (g.gid, list(g.members)) for g in spec.groups}
    for gname, line in base_groups.items():
        parts = line.split(":")
        if gname in groups:
            if line != f"{gname}:x:{groups[gname][0]}:{','.join(sorted(set(groups[gname][1])))}":
                warn.append(f"/etc/group: group {gname} of the base image is replaced by ours")
            continue
        gid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        if gid is not None:
            members = [m for m in (parts[3].split(",") if len(parts) > 3 else []) if m]
            groups[gname] = (gid, members)
    if "root" not in base_groups:
        groups.setdefault("root", (0, []))
    if "nogroup" not in base_groups:
        groups.setdefault("nogroup", (65534, []))
    for u in users:
        for gname in u.groups:
            if gname not in groups:
                raise UsageError(f"user {u.name}: group {gname!r} is not declared in groups")
            groups[gname][1].append(u.name)
    seen_uid: dict[int, str] = {}
    for u in users:
        if u.uid in seen_uid:
            raise UsageError(f"users {seen_uid[u.uid]} and {u.name} share uid {u.uid}")
        seen_uid[u.uid] = u.name
    ours = _passwd(users).decode().splitlines()
    for u, line in zip(users, ours, strict=True):
        if u.name in base_users and base_users[u.name] != line:
            warn.append(f"/etc/passwd: user {u.name} of the base image is replaced by ours")
    passwd = "".join(f"{line}\n" for n, line in base_users.items() if n not in names) + "".join(f"{x}\n" for x in ours)
    by_gid = sorted(groups.items(), key=lambda kv: kv[1][0])
    group_lines = "".join(f"{n}:x:{gid}:{','.join(sorted(set(m)))}\n" for n, (gid, m) in by_gid)
    shadow = "".join(f"{line}\n" for n, line in base_shadow.items() if n not in names)
    shadow += "".join(f"{u.name}:!:1::::::\n" for u in users)
    nss = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nservices: files\n"
    out = [
        Entry("file", "/etc/passwd", 0o644, passwd.encode()),
        Entry("file", "/etc/group", 0o644, group_lines.encode()),
        Entry("file", "/etc/shadow", 0o600, shadow.encode()),
        Entry("dir", "/root", 0o700),
    ]
    if base.get("/etc/nsswitch.conf") is None:
        out.insert(3, Entry("file", "/etc/nsswitch.conf", 0o644, nss))
    for u in users:
        gid = u.gid if u.gid is not None else u.uid
        if u.home not in ("/", "/var/empty", "/root", ""):
            out.append(Entry("dir", u.home, 0o755, owner=(u.uid, gid, u.name, "")))
    if any(u.home == "/var/empty" for u in users):
        out.append(Entry("dir", "/var/empty", 0o555))
    return out


def customise(
    spec: ImageSpec,
    closure: Closure,
    fs: StoreFS | None = None,
    base_etc: Mapping[str, bytes | None] | None = None,
) -> Customisation:
    """Work out the customisation entries for ``spec`` over ``closure`` (looked at through ``fs``);
    ``base_etc`` holds the base image's ``BASE_ETC_FILES`` (None for one it lacks) when its users and groups
    are to be merged with ours."""
    fs = fs or LocalFS()
    out = Customisation()
    taken: dict[str, str] = {}

    def add(e: Entry, why: str, root: str | None = None) -> None:
        if e.kind != "dir" and e.path in taken:
            raise UsageError(f"{e.path} is produced twice ({taken[e.path]} and {why})")
        if e.kind != "dir":
            taken[e.path] = why
        (out.root_entries.setdefault(root, []) if root else out.entries).append(e)

    sources: list[str] = list(closure.roots) if spec.contents.roots else []
    for p in spec.contents.paths:
        sp = p if p in closure.paths else to_store_path(p, closure.store_dir)
        if sp not in closure.paths:
            raise UsageError(f"contents path {p} is not in the image's closure")
        if sp not in sources:
            sources.append(sp)
    for image_path, (src, target) in sorted(_contents_links(closure, sources, spec.contents.priority, fs).items()):
        root = src if src in closure.roots else None
        add(Entry("symlink", image_path, target=target), f"contents of {src}", root)

    for e in _user_entries(spec, base_etc, out.warnings):
        add(e, "users and groups")

    if spec.tmp:
        add(Entry("dir", "/tmp", 0o1777), "tmp")
        add(Entry("dir", "/var/tmp", 0o1777), "tmp")
    for d in spec.dirs:
        if not d.path.startswith("/"):
            raise UsageError(f"dirs: {d.path!r} must be an absolute path")
        add(Entry("dir", d.path, d.mode, owner=(d.uid, d.gid, "", "")), "dirs")
    for d in spec.boot_dirs:  # also in the image, for runs without a volume over them
        add(Entry("dir", d.path, d.mode, owner=(d.uid, d.gid, "", "")), "boot_dirs")

    if spec.ca_certificates:
        bundle = None
        for rel in CA_CANDIDATES:
            bundle = _find(closure, rel, fs)
            if bundle:
                break
        if bundle:
            for link in CA_LINKS:
                if link not in taken:
                    add(Entry("symlink", link, target=bundle), "CA certificates")
            out.env["SSL_CERT_FILE"] = CA_LINKS[0]
    if spec.bin_sh and "/bin/sh" not in taken:
        sh = _find(closure, "bin/sh", fs) or _find(closure, "bin/bash", fs)
        if sh is None:
            raise UsageError("bin_sh: no store path in the closure has bin/sh or bin/bash")
        add(Entry("symlink", "/bin/sh", target=sh), "bin_sh")
    if spec.usr_bin_env and "/usr/bin/env" not in taken:
        env = _find(closure, "bin/env", fs)
        if env is None:
            raise UsageError("usr_bin_env: no store path in the closure has bin/env")
        add(Entry("symlink", "/usr/bin/env", target=env), "usr_bin_env")

    for f in spec.files:
        if not f.dest.startswith("/"):
            raise UsageError(f"files: destination {f.dest!r} must be an absolute path")
        if not os.path.lexists(f.src):
            raise UsageError(f"files: {f.src} does not exist")
        add(Entry("tree", f.dest.rstrip("/") or "/", src=f.src), f"file {f.src}")
    sup = supervise(spec, closure, [*out.entries, *(e for es in out.root_entries.values() for e in es)])
    if sup is not None:
        for e in sup.entries:
            add(e, "the generated supervisor configuration")
        out.entrypoint = sup.entrypoint
        out.labels[LABEL] = sup.label
    if any(e.path.startswith(closure.store_dir + "/") for e in out.entries):
        raise NixflyError("customisation entries may not be placed inside the Nix store")
    _check_user(spec)
    _check_command(spec, closure, out, fs)
    return out


def _check_user(spec: ImageSpec) -> None:
    """``user = "name[:group]"``: names must be declared (the image's /etc/passwd holds exactly the declared
    users plus root and nobody); numeric ids need no entry."""
    if not spec.user:
        return
    user, _, group = spec.user.partition(":")
    users = {u.name for u in spec.users} | {"root", "nobody"}
    groups = {g.name for g in spec.groups} | {"root", "nogroup"}
    if not user or (not user.isdigit() and user not in users):
        raise UsageError(
            f"user {spec.user!r}: {user!r} is not declared in users (declared: {', '.join(sorted(users))}); "
            "declare it or give a numeric uid"
        )
    if group and not group.isdigit() and group not in groups:
        raise UsageError(f"user {spec.user!r}: group {group!r} is not declared in groups; declare it or give a gid")


def _in_image(closure: Closure, out: Customisation, fs: StoreFS) -> Callable[[str], bool]:
    """Whether an absolute path names an existing non-directory in the image (store paths, the
    customisation's files, links and copied trees, following links as the container would)."""
    entries = {e.path: e for e in [*out.entries, *(e for es in out.root_entries.values() for e in es)]}
    store = closure.store_dir + "/"

    def exists(path: str, hops: int = 0) -> bool:
        path = os.path.normpath("/" + path.lstrip("/"))
        if hops > _MAX_HOPS:
            return False
        if path.startswith(store):
            return fs.isfile(path)
        cur, rest = path, ""
        while True:
            e = entries.get(cur)
            if e is not None:
                if e.kind == "symlink":
                    t = e.target if e.target.startswith("/") else os.path.join(os.path.dirname(cur), e.target)
                    return exists(os.path.join(t, rest) if rest else t, hops + 1)
                if e.kind == "tree":
                    full = os.path.join(e.src, rest) if rest else e.src
                    return fs.lexists(full) and not fs.isdir(full)
                return e.kind == "file" and not rest
            if cur == "/":
                return False
            cur, base = os.path.split(cur)
            rest = os.path.join(base, rest) if rest else base

    return exists


def _check_command(spec: ImageSpec, closure: Closure, out: Customisation, fs: StoreFS) -> None:
    """The first word of the entrypoint (else of cmd) must name a file in the image: absolute, relative to
    the working directory, or found on the image's PATH, as a container runtime would look it up."""
    words = spec.entrypoint or spec.cmd
    if not words:
        return
    first, what = words[0], "entrypoint" if spec.entrypoint else "cmd"
    exists = _in_image(closure, out, fs)
    path = spec.env.get("PATH") or out.env.get("PATH") or DEFAULT_PATH  # the pipeline writes the same default
    if "/" in first:
        where = first if first.startswith("/") else os.path.join(spec.workdir or "/", first)
        if exists(where):
            return
        raise UsageError(f"{what} {first!r} is not in the image (no file {os.path.normpath(where)})")
    if any(exists(f"{d}/{first}") for d in path.split(":") if d.startswith("/")):
        return
    raise UsageError(f"{what} {first!r} is not in the image (searched PATH={path})")
