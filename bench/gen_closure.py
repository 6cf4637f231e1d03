#!/usr/bin/env python3
"""Generate a realistic large Nix closure for the benchmarks, with offline Nix only.

The closure is made of real file trees from this machine (shared objects, executables, Python
sources, locale data, documentation with many small and already-compressed files, jars, icons),
cut into a few hundred store paths whose sizes follow a skewed distribution (many small paths, a
few big ones, like a real closure). Every piece becomes a `builtins.path` import that a busybox
derivation copies into its output, and each output records the store paths of the pieces it
depends on, so Nix's reference scanner finds a real reference graph. A small app sits on top and
references every piece no other piece depends on; `--app-version N` changes only that app.

Scale 1 is about 1 GiB; scale 2 about 2 GiB and contains every scale-1 path unchanged (the pieces
are chosen level by level, and a piece only depends on pieces chosen before it), so generating
both costs about 2 GiB of store, not 3. Re-running is cheap: staging is skipped when complete and
Nix reuses what it has already built.

Usage: gen_closure.py [--scale 1] [--app-version 1] [--work-dir DIR] [--info]
Prints the root store path (or, with --info, a JSON summary) on stdout.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
LEVEL_BYTES = 1024 * MiB  # one scale unit

NIX_CONFIG = "\n".join(
    [
        "build-users-group =",
        "sandbox = false",
        "experimental-features = nix-command flakes",
        "substituters =",
    ]
)

# (tag, root, MiB at level 1, MiB at each further level). Roots missing on a machine are skipped;
# their share is filled from FILL_ROOTS. Order matters: it fixes which pieces exist at every scale.
# Level 2 leans on a tree of many small Python files so the 2x closure has about twice the files too.
ROOTS: list[tuple[str, str, int, int]] = [
    ("so", "/usr/lib/x86_64-linux-gnu", 380, 280),
    ("py", "/usr/lib/python3.11", 54, 0),
    ("locale", "/usr/share/locale", 110, 50),
    ("doc", "/usr/share/doc", 90, 30),
    ("tz", "/usr/share/zoneinfo", 4, 0),
    ("bin", "/usr/bin", 150, 90),
    ("jvm", "/usr/lib/jvm", 160, 90),
    ("icons", "/usr/share/icons", 30, 20),
    ("man", "/usr/share/man", 46, 30),
    ("gcloud", "/usr/lib/google-cloud-sdk/lib", 0, 434),
]
FILL_ROOTS: list[tuple[str, str]] = [
    ("gcloudp", "/usr/lib/google-cloud-sdk/platform"),
    ("llvm", "/usr/lib/llvm-14"),
    ("gcc", "/usr/lib/gcc"),
    ("pylib", "/usr/lib/python3/dist-packages"),
    ("libexec", "/usr/libexec"),
    ("share", "/usr/share"),
    ("lib", "/usr/lib"),
]
APP_SOURCE = "/usr/lib/python3/dist-packages"
APP_BYTES = 6 * MiB


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the root's parent prefix, e.g. "lib/x86_64-linux-gnu/libc.so.6"
    src: str  # absolute source path
    kind: str  # "file" | "link" | "dir"
    size: int


@dataclass
class Piece:
    key: str  # stable name, e.g. "so-0007"
    tag: str
    entries: list[Entry]
    size: int
    deps: list[str]

    @property
    def stage_name(self) -> str:
        """Staging directory name: changes whenever the selected files do."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.rel}\0{e.src}\0{e.kind}\0{e.size}\n".encode())
        return f"{self.key}-{h.hexdigest()[:12]}"


def walk(root: str) -> Iterator[Entry]:
    """Regular files and symlinks under root, in a stable order (sorted names, depth first)."""
    prefix = root.removeprefix("/usr/").strip("/")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))])
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        rel_dir = os.path.join(prefix, os.path.relpath(dirpath, root)).replace("/./", "/").rstrip("/.")
        if not names and not dirnames:
            yield Entry(rel_dir, dirpath, "dir", 0)
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = f"{rel_dir}/{n}"
            if os.path.islink(p):
                yield Entry(rel, p, "link", 0)
            elif os.path.isfile(p) and os.access(p, os.R_OK):
                yield Entry(rel, p, "file", st.st_size)


def chunk_target(tag: str, k: int, factor: float) -> int:
    """Target size of the k-th piece of a root: log-uniform 32 KiB..6 MiB, 1 in 20 pieces 12..32 MiB
    (times `factor`, below 1 only for small smoke-test closures)."""
    r = random.Random(f"size/{tag}/{k}")
    if r.random() < 1 / 20:
        return int(r.uniform(12, 32) * MiB * factor)
    return int(math.exp(r.uniform(math.log(32 * 1024), math.log(6 * MiB))) * factor)


def chunks(tag: str, root: str, factor: float) -> Iterator[list[Entry]]:
    """The root cut into pieces of chunk_target sizes, in walk order."""
    k = 0
    cur: list[Entry] = []
    size = 0
    target = chunk_target(tag, k, factor)
    for e in walk(root):
        if factor < 1 and e.size > 2 * MiB:
            continue  # keep smoke-test closures small: no single huge file
        cur.append(e)
        size += e.size
        if size >= target:
            yield cur
            k += 1
            cur, size, target = [], 0, chunk_target(tag, k, factor)
    if cur:
        yield cur


class RootCursor:
    def __init__(self, tag: str, root: str, factor: float) -> None:
        self.tag = tag
        self.it = chunks(tag, root, factor) if os.path.isdir(root) else iter(())
        self.k = 0
        self.done = False

    def take(self, budget: int) -> list[Piece]:
        """Pieces until at least `budget` bytes are taken (or the root is exhausted)."""
        out: list[Piece] = []
        got = 0
        while got < budget and not self.done:
            try:
                c = next(self.it)
            except StopIteration:
                self.done = True
                break
            size = sum(e.size for e in c)
            out.append(Piece(f"{self.tag}-{self.k:04d}", self.tag, c, size, []))
            self.k += 1
            got += size
        return out


def plan(scale: float) -> list[Piece]:
    """Pieces for `scale` GiB, level by level (level 1 = first GiB), with dependencies."""
    factor = min(1.0, 4 * scale)
    cursors = {tag: RootCursor(tag, root, factor) for tag, root, _, _ in ROOTS}
    fills = [RootCursor(tag, root, factor) for tag, root in FILL_ROOTS]
    seen_src: set[str] = set()
    pieces: list[Piece] = []
    level = 0
    while level < scale:
        frac = min(1.0, scale - level)
        level_pieces: list[Piece] = []
        for tag, _, first, further in ROOTS:
            level_pieces += cursors[tag].take(int((first if level == 0 else further) * MiB * frac))
        want = int(LEVEL_BYTES * frac)
        for f in fills:
            have = sum(p.size for p in level_pieces)
            if have >= want:
                break
            level_pieces += f.take(want - have)
        # A fill root may overlap another root (/usr/share holds /usr/share/doc): skip files seen.
        for p in level_pieces:
            p.entries = [e for e in p.entries if e.src not in seen_src]
            seen_src.update(e.src for e in p.entries)
            p.size = sum(e.size for e in p.entries)
        pieces += [p for p in level_pieces if p.entries]
        level += 1
    # Dependencies: only on earlier pieces, so a piece's derivation never depends on the scale.
    # Most pieces use the first shared-object piece (a "libc"); others are drawn with a bias to
    # early pieces, which gives a few very popular paths and a long tail, like real closures.
    for i, p in enumerate(pieces):
        if i == 0:
            continue
        r = random.Random(f"deps/{p.key}")
        deps = {pieces[0].key} if r.random() < 0.8 else set()
        for _ in range(r.choice([0, 1, 1, 2, 2, 3, 4])):
            deps.add(pieces[int(i * r.random() ** 2)].key)
        p.deps = sorted(deps)
    return pieces


def stage_piece(stage: Path, entries: list[Entry]) -> None:
    """Hard-link (or copy) the piece's files into `stage`; symlinks are recreated as they are."""
    if (stage / ".complete").exists():
        return
    if stage.exists():
        shutil.rmtree(stage)
    tmp = stage.with_name(stage.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for e in entries:
        dst = tmp / "tree" / e.rel
        if e.kind == "dir":
            dst.mkdir(parents=True, exist_ok=True)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if e.kind == "link":
            os.symlink(os.readlink(e.src), dst)
            continue
        try:
            os.link(e.src, dst)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(e.src, dst)
    (tmp / ".complete").write_text("")
    tmp.rename(stage)


def stage_app(stage: Path) -> None:
    entries: list[Entry] = []
    size = 0
    for e in walk(APP_SOURCE):
        entries.append(e)
        size += e.size
        if size >= APP_BYTES:
            break
    stage_piece(stage, entries)


def stage_busybox(stage: Path) -> None:
    if (stage / ".complete").exists():
        return
    tmp = stage.with_name(stage.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "tree" / "bin").mkdir(parents=True)
    bb = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(bb, tmp / "tree" / "bin" / "busybox")
    applets = subprocess.run([bb, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", tmp / "tree" / "bin" / a)
    (tmp / ".complete").write_text("")
    tmp.rename(stage)


def nix_expr(pieces: list[Piece], app_version: int) -> str:
    lines = [
        "# Generated by bench/gen_closure.py; do not edit.",
        "let",
        "  system = builtins.currentSystem;",
        '  bb = builtins.path { path = ./stage/busybox/tree; name = "busybox-static"; };',
        "  mk = name: src: deps: builtins.derivation {",
        "    inherit name system src deps;",
        '    builder = "${bb}/bin/sh";',
        '    PATH = "${bb}/bin";',
        "    args = [ \"-c\" ''",
        '      cp -a "$src" "$out"',
        '      chmod -R u+w "$out"',
        '      mkdir -p "$out/nix-support"',
        '      for d in $deps; do echo "$d" >> "$out/nix-support/propagated-runtime-deps"; done',
        "    '' ];",
        "  };",
    ]
    lines.append("  p = {")  # `let` is recursive, so `p."key"` may name any piece, in any order
    for p in pieces:
        deps = " ".join(f'p."{d}"' for d in p.deps)
        lines.append(
            f'    "{p.key}" = mk "bench-{p.key}" '
            f'(builtins.path {{ path = ./stage/{p.stage_name}/tree; name = "bench-{p.key}-src"; }}) [ {deps} ];'
        )
    lines.append("  };")
    depended = {d for p in pieces for d in p.deps}
    tops = " ".join(f'p."{p.key}"' for p in pieces if p.key not in depended)
    lines += [
        "  app = builtins.derivation {",
        f'    name = "bench-app-{app_version}";',
        "    inherit system;",
        '    builder = "${bb}/bin/sh";',
        '    PATH = "${bb}/bin";',
        '    src = builtins.path { path = ./stage/app/tree; name = "bench-app-src"; };',
        f'    version = "{app_version}";',
        f"    deps = [ {tops} ];",
        "    args = [ \"-c\" ''",
        '      mkdir -p "$out/bin" "$out/share/app" "$out/nix-support"',
        '      cp -a "$src/." "$out/share/app/"',
        '      chmod -R u+w "$out"',
        '      echo "$version" > "$out/share/app/VERSION"',
        '      printf \'#!%s/bin/sh\\necho "bench app %s"\\n\' "${bb}" "$version" > "$out/bin/app"',
        '      chmod +x "$out/bin/app"',
        '      for d in $deps; do echo "$d" >> "$out/nix-support/propagated-runtime-deps"; done',
        "    '' ];",
        "  };",
        "in { inherit app; }",
    ]
    return "\n".join(lines) + "\n"


def nix_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_CONFIG"] = NIX_CONFIG
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="closure size in GiB-units (default 1; 2 = 2x)")
    ap.add_argument("--app-version", type=int, default=1, help="version baked into the leaf app")
    ap.add_argument("--work-dir", type=Path, default=Path("/var/tmp/nixfly-bench"), help="staging area")
    ap.add_argument("--info", action="store_true", help="print a JSON summary instead of the root path")
    ap.add_argument("--max-jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)

    pieces = plan(args.scale)
    work: Path = args.work_dir
    stage = work / "stage"
    stage.mkdir(parents=True, exist_ok=True)
    for p in pieces:
        stage_piece(stage / p.stage_name, p.entries)
    stage_app(stage / "app")
    stage_busybox(stage / "busybox")

    expr = nix_expr(pieces, args.app_version)
    name = f"closure-s{args.scale:g}-{hashlib.sha256(expr.encode()).hexdigest()[:12]}.nix"
    nix_file = work / name
    if not nix_file.exists():
        nix_file.write_text(expr)
    res = subprocess.run(
        ["nix-build", str(nix_file), "-A", "app", "--no-out-link", "--max-jobs", str(args.max_jobs), "--quiet"],
        env=nix_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    if res.returncode != 0:
        print(f"gen_closure: nix-build {nix_file} failed (exit {res.returncode})", file=sys.stderr)
        return 1
    root = res.stdout.strip().splitlines()[-1]
    if args.info:
        info = subprocess.run(
            ["nix", "path-info", "--json", "--recursive", root],
            env=nix_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        parsed = json.loads(info)
        items = parsed if isinstance(parsed, list) else [{"path": k, **v} for k, v in parsed.items()]
        print(
            json.dumps(
                {
                    "root": root,
                    "paths": len(items),
                    "nar_bytes": sum(int(i["narSize"]) for i in items),
                    "references": sum(len(i.get("references", [])) for i in items),
                    "scale": args.scale,
                    "app_version": args.app_version,
                }
            )
        )
    else:
        print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
