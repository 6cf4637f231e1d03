"""The customisation layer, declared rather than scripted (no fakeroot, no VM): the roots' top-level
directories linked into ``/``, users and groups, ``/tmp``, extra directories, CA certificates,
``/bin/sh`` and ``/usr/bin/env`` links, and extra non-Nix files.

The ``contents`` links of a root go into that root's own layer, so an app-only change still touches
only the app's layer; everything else goes into one small customisation layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nixfly.build.closure import Closure, to_store_path
from nixfly.build.layers import Entry
from nixfly.build.spec import ImageSpec, UserSpec
from nixfly.errors import NixflyError, UsageError

CA_CANDIDATES = ("etc/ssl/certs/ca-bundle.crt", "etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt")
CA_LINKS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-bundle.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass
class Customisation:
    root_entries: dict[str, list[Entry]] = field(default_factory=dict)  # goes into each root's layer
    entries: list[Entry] = field(default_factory=list)  # the customisation layer
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _contents_links(closure: Closure, sources: Sequence[str], priority: dict[str, int]) -> dict[str, tuple[str, str]]:
    """image path → (store path providing it, link target). Conflicts are errors unless priorities differ."""
    links: dict[str, tuple[str, str, int]] = {}
    for src in sources:
        sp = closure.paths[src]
        prio = priority.get(src, priority.get(sp.name, 100))
        if not os.path.isdir(src):
            continue
        for top in sorted(os.listdir(src)):
            full = os.path.join(src, top)
            if os.path.isdir(full) and not os.path.islink(full):
                items = [(f"/{top}/{c}", os.path.join(full, c)) for c in sorted(os.listdir(full))]
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


def _find(closure: Closure, rel: str) -> str | None:
    for p in sorted(closure.paths):
        cand = os.path.join(p, rel)
        if os.path.lexists(cand):
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
    spec: ImageSpec, closure: Closure, base_etc: Mapping[str, bytes | None] | None = None
) -> Customisation:
    """Work out the customisation entries for ``spec`` over ``closure``; ``base_etc`` holds the base image's
    ``BASE_ETC_FILES`` (None for one it lacks) when its users and groups are to be merged with ours."""
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
    for image_path, (src, target) in sorted(_contents_links(closure, sources, spec.contents.priority).items()):
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

    if spec.ca_certificates:
        bundle = None
        for rel in CA_CANDIDATES:
            bundle = _find(closure, rel)
            if bundle:
                break
        if bundle:
            for link in CA_LINKS:
                if link not in taken:
                    add(Entry("symlink", link, target=bundle), "CA certificates")
            out.env["SSL_CERT_FILE"] = CA_LINKS[0]
    if spec.bin_sh and "/bin/sh" not in taken:
        sh = _find(closure, "bin/sh") or _find(closure, "bin/bash")
        if sh is None:
            raise UsageError("bin_sh: no store path in the closure has bin/sh or bin/bash")
        add(Entry("symlink", "/bin/sh", target=sh), "bin_sh")
    if spec.usr_bin_env and "/usr/bin/env" not in taken:
        env = _find(closure, "bin/env")
        if env is None:
            raise UsageError("usr_bin_env: no store path in the closure has bin/env")
        add(Entry("symlink", "/usr/bin/env", target=env), "usr_bin_env")

    for f in spec.files:
        if not f.dest.startswith("/"):
            raise UsageError(f"files: destination {f.dest!r} must be an absolute path")
        if not os.path.lexists(f.src):
            raise UsageError(f"files: {f.src} does not exist")
        add(Entry("tree", f.dest.rstrip("/") or "/", src=f.src), f"file {f.src}")
    if any(e.path.startswith(closure.store_dir + "/") for e in out.entries):
        raise NixflyError("customisation entries may not be placed inside the Nix store")
    return out
