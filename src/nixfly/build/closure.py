"""The source stage: a Nix closure (store paths, sizes, references) and the roots a user asked for.

Closure metadata comes from ``nix path-info --json --recursive`` (Nix 2.8 gives a list, newer Nix an
object keyed by path: both are accepted), from an ``exportReferencesGraph`` file (classic text or
``__structuredAttrs`` JSON), or from a ``closureInfo`` directory, so nixfly also works inside a Nix
build where no nix CLI runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nixfly.errors import ClosureError, NixflyError, UsageError
from nixfly.fsutil import NestingError, atomic_write_text, load_json, read_regular, read_text_file
from nixfly.nixbase32 import STORE_BASENAME, STORE_HASH

STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
# A closure file is read whole: a path-info document for 10,000 store paths is about 10 MiB.
CLOSURE_FILE_MAX = 64 << 20


@dataclass(frozen=True)
class StorePath:
    path: str
    nar_size: int
    references: tuple[str, ...]  # without the path itself, sorted
    deriver: str | None = None
    nar_hash: str | None = None  # as Nix printed it (SRI ``sha256-…`` or ``sha256:<base32>``), when known

    @property
    def base(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def hash(self) -> str:
        return self.base.split("-", 1)[0]

    @property
    def name(self) -> str:
        return self.base.split("-", 1)[1] if "-" in self.base else self.base


@dataclass(frozen=True)
class Closure:
    roots: tuple[str, ...]
    paths: Mapping[str, StorePath]
    system: str | None = None
    store_dir: str = field(default=STORE_DIR)
    source_epoch: int | None = None  # the flake's lastModified when the roots came from an installable

    def closure_of(self, roots: Iterable[str]) -> set[str]:
        """Every path reachable from ``roots``; a reference to an unlisted path is a ClosureError."""
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            for ref in self.paths[p].references:
                if ref not in self.paths:
                    raise ClosureError(f"closure metadata is incomplete: {p} references {ref}, which is not listed")
                stack.append(ref)
        return seen



def is_store_path(p: str, store_dir: str = STORE_DIR) -> bool:
    head, _, base = p.rstrip("/").rpartition("/")
    return head == store_dir and bool(STORE_BASENAME.match(base))


def to_store_path(p: str, store_dir: str = STORE_DIR) -> str:
    """The top-level store path for ``p`` (a store path, a file inside one, or a ``./result`` link)."""
    if not os.path.lexists(p):
        raise ClosureError(f"{p}: no such file or store path")
    real = os.path.realpath(p)
    prefix = store_dir.rstrip("/") + "/"
    if not real.startswith(prefix):
        raise ClosureError(f"{p} is not in the Nix store ({store_dir}); pass a store path or a ./result link")
    top = prefix + real[len(prefix) :].split("/", 1)[0]
    if not is_store_path(top, store_dir):
        raise ClosureError(f"{p} resolves to {top}, which is not a valid store path name")
    return top


def _check_entry(path: Any, where: str, store_dir: str) -> str:
    if not isinstance(path, str) or not is_store_path(path, store_dir):
        raise ClosureError(f"{where}: {path!r} is not a store path")
    return path


def _is_path_obj(x: Any) -> bool:
    return isinstance(x, dict) and "path" in x


def parse_path_info(data: Any, where: str = "closure JSON", store_dir: str = STORE_DIR) -> dict[str, StorePath]:
    """Parse ``nix path-info --json`` output in either shape (list of objects, or object keyed by path),
    or a structuredAttrs ``exportReferencesGraph`` JSON (``{"graph": [...]}``)."""
    items: list[tuple[str, Any]]
    if isinstance(data, dict) and not all(isinstance(k, str) and k.startswith("/") for k in data):
        # A structuredAttrs .attrs.json: each exportReferencesGraph name holds a list of path objects.
        graphs = [v for v in data.values() if isinstance(v, list) and v and all(_is_path_obj(x) for x in v)]
        if not graphs:
            raise ClosureError(f"{where}: no store paths found (expected path-info or exportReferencesGraph JSON)")
        data = [x for g in graphs for x in g]
    if isinstance(data, list):
        items = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict) or "path" not in obj:
                raise ClosureError(f"{where}: entry {i} has no 'path'")
            items.append((obj["path"], obj))
    elif isinstance(data, dict):
        items = list(data.items())
    else:
        raise ClosureError(f"{where}: expected a list or an object of store paths")
    out: dict[str, StorePath] = {}
    for path, obj in items:
        path = _check_entry(path, where, store_dir)
        if obj is None:
            raise ClosureError(f"{where}: {path} is not valid in the store")
        if not isinstance(obj, dict):
            raise ClosureError(f"{where}: {path}: expected an object")
        refs = obj.get("references", [])
        size = obj.get("narSize", 0)
        if not isinstance(refs, list) or not isinstance(size, int) or size < 0:
            raise ClosureError(f"{where}: {path}: 'references' must be a list and 'narSize' a number")
        # Newer Nix may print references as bare base names.
        full = [r if r.startswith("/") else f"{store_dir}/{r}" for r in refs if isinstance(r, str)]
        for r in full:
            _check_entry(r, where, store_dir)
        deriver = obj.get("deriver") if isinstance(obj.get("deriver"), str) else None
        nar_hash = obj.get("narHash") if isinstance(obj.get("narHash"), str) else None
        out[path] = StorePath(path, size, tuple(sorted(set(full) - {path})), deriver, nar_hash)
    return out


def parse_registration(text: str, where: str, store_dir: str = STORE_DIR) -> dict[str, StorePath]:
    """Parse the line format of ``closureInfo``'s ``registration`` (path, hash, size, deriver, n, refs…)
    and of classic ``exportReferencesGraph`` (path, deriver, n, refs…)."""
    lines = text.split("\n")
    out: dict[str, StorePath] = {}
    i = 0
    try:
        while i < len(lines) and lines[i]:
            path = _check_entry(lines[i], where, store_dir)
            i += 1
            size = 0
            nar_hash = None
            if re.match(r"^(sha256:)?[0-9a-z]{52}$|^[0-9a-f]{64}$", lines[i]):
                nar_hash = lines[i] if lines[i].startswith("sha256:") else f"sha256:{lines[i]}"
                i += 1
                size = int(lines[i])
                i += 1
            deriver = lines[i] or None
            i += 1
            n = int(lines[i])
            i += 1
            refs = [_check_entry(r, where, store_dir) for r in lines[i : i + n]]
            if len(refs) != n:
                raise IndexError
            i += n
            out[path] = StorePath(path, size, tuple(sorted(set(refs) - {path})), deriver, nar_hash)
    except (IndexError, ValueError):
        raise ClosureError(f"{where}: malformed reference graph near line {i + 1}") from None
    if not out:
        raise ClosureError(f"{where}: no store paths in the reference graph")
    return out


def load_closure_file(path: Path, store_dir: str = STORE_DIR) -> dict[str, StorePath]:
    """Closure metadata from a file: path-info JSON, structuredAttrs JSON, a registration / classic
    exportReferencesGraph file, or a closureInfo directory (its ``registration``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "registration"
    try:
        text = read_text_file(p, CLOSURE_FILE_MAX, f"closure file {path}", ClosureError)
    except OSError as e:
        raise ClosureError(f"cannot read closure file {path}: {e.strerror}") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = load_json(text)
        except json.JSONDecodeError as e:
            raise ClosureError(f"{path}: malformed closure JSON ({e.msg} at line {e.lineno})") from None
        except NestingError as e:
            raise ClosureError(f"{path}: malformed closure JSON ({e.msg})") from None
        return parse_path_info(data, str(path), store_dir)
    return parse_registration(text, str(path), store_dir)


NIX_FLAGS = ("--extra-experimental-features", "nix-command flakes")
"""Passed to every nix invocation: nixfly needs ``nix path-info``/``nix build`` even where nix.conf
enables no experimental features (a stock install)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_DRV_NAME = re.compile(rf"/{STORE_HASH}-(.+?)\.drv")


def _run_nix(args: Sequence[str], what: str) -> str:
    try:
        proc = subprocess.run(["nix", *NIX_FLAGS, *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ClosureError(f"{what}: the nix command is not installed (use --closure-file instead)") from None
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ClosureError(f"{what} failed: {last[-1] if last else 'exit ' + str(proc.returncode)}")
    return proc.stdout


class NixReporter(Protocol):
    """Hears what ``nix build`` is doing, for a progress display. ``failed`` gets the lines that explain a
    failure (the failing builder's last log lines, or the whole evaluation error) just before the one-line
    NixBuildError is raised."""

    def building(self, drv_name: str) -> None: ...

    def log(self, drv_name: str, line: str) -> None: ...

    def failed(self, details: Sequence[str]) -> None: ...


class StderrNixReporter:
    """The default: silent while building; a failure's details go to stderr."""

    def building(self, drv_name: str) -> None:
        pass

    def log(self, drv_name: str, line: str) -> None:
        pass

    def failed(self, details: Sequence[str]) -> None:
        for line in details:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


nix_reporter: ContextVar[NixReporter | None] = ContextVar("nix_reporter", default=None)
"""Set (e.g. by the CLI) to show ``nix build`` progress; ``StderrNixReporter`` when unset."""

LOG_TAIL = 25  # builder log lines kept per derivation, shown when its build fails


class NixBuildError(ClosureError):
    """``nix build`` failed. ``details`` holds the builder's last log lines or the evaluation error."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = tuple(details)


@dataclass
class _BuildLog:
    """State while reading ``nix build --log-format internal-json`` from stderr."""

    reporter: NixReporter
    drvs: dict[int, str] = field(default_factory=dict)  # activity id → derivation name
    logs: dict[int, deque[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    other: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))

    def line(self, raw: str) -> None:
        if not raw.startswith("@nix "):
            if raw.strip():
                self.other.append(_ANSI.sub("", raw.rstrip()))
            return
        try:
            ev = json.loads(raw[5:])
        except ValueError:
            return
        if not isinstance(ev, dict):
            return
        action = ev.get("action")
        if action == "start" and ev.get("type") == 105:  # a derivation build
            fields = ev.get("fields") or []
            m = _DRV_NAME.search(str(fields[0] if fields else ev.get("text", "")))
            name = m.group(1) if m else str(ev.get("text", "?"))
            self.drvs[int(ev.get("id", 0))] = name
            self.logs[int(ev.get("id", 0))] = deque(maxlen=LOG_TAIL)
            self.reporter.building(name)
        elif action == "result" and ev.get("type") == 101:  # a builder log line
            act = int(ev.get("id", 0))
            fields = ev.get("fields") or [""]
            text = _ANSI.sub("", str(fields[0])).rstrip()
            if act in self.logs:
                self.logs[act].append(text)
            self.reporter.log(self.drvs.get(act, "?"), text)
        elif action == "msg" and isinstance(ev.get("level"), int) and ev["level"] <= 0:
            self.errors.append(_ANSI.sub("", str(ev.get("msg", ""))).rstrip())

    def failure(self, installable: str, rc: int) -> NixBuildError:
        text = self.errors or list(self.other)
        first = next((ln for t in text for ln in t.splitlines() if ln.strip()), f"exit status {rc}")
        first = first.strip().removeprefix("error:").strip()
        details: list[str] = []
        failed = _DRV_NAME.search(first)
        if failed:
            name = failed.group(1)
            act = next((a for a, n in reversed(self.drvs.items()) if n == name), None)
            lines = list(self.logs.get(act, ())) if act is not None else []
            if lines:
                details.append(f"last {len(lines)} log lines of {name}:")
                details += [f"  > {ln}" for ln in lines]
            drv = re.search(r"(/\S+?\.drv)", first)
            hint = f" (full log: nix log {drv.group(1)})" if lines and drv else ""
            return NixBuildError(f"nix build {installable} failed: {first}{hint}", details)
        lines = [ln for t in text for ln in t.splitlines()]
        if len([ln for ln in lines if ln.strip()]) > 1:  # an evaluation error with a trace: show all of it
            details = lines
        return NixBuildError(f"nix build {installable} failed: {first}", details)


def nix_build_installable(installable: str) -> list[str]:
    """Build a flake installable (``.#app``) with ``nix build --json --no-link``; its output paths.

    Nix's structured log (``--log-format internal-json``) drives the reporter in ``nix_reporter``: the
    derivation being built and its log lines; on failure, the builder's last log lines (or the whole
    evaluation error) go to the reporter and a one-line NixBuildError is raised."""
    reporter = nix_reporter.get() or StderrNixReporter()
    argv = ["nix", *NIX_FLAGS, "build", "--json", "--no-link", "--log-format", "internal-json", installable]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise ClosureError(f"nix build {installable}: the nix command is not installed") from None
    out: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=lambda f: out.append(f.read()), args=(proc.stdout,), daemon=True)
    reader.start()
    state = _BuildLog(reporter)
    try:
        for raw in proc.stderr:
            state.line(raw)
    finally:
        rc = proc.wait()
        reader.join()
    if rc != 0:
        err = state.failure(installable, rc)
        if err.details:
            reporter.failed(err.details)
        raise err
    try:
        results = json.loads("".join(out))
        return sorted({p for r in results for p in r["outputs"].values()})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ClosureError(f"nix build {installable}: unexpected output") from None


def flake_last_modified(installable: str) -> int | None:
    """The flake's ``lastModified`` (its commit time, for a git flake) from ``nix flake metadata``, or
    None when nix cannot say (not a flake, offline input, old nix)."""
    ref = installable.split("#", 1)[0] or "."
    try:
        data = json.loads(_run_nix(["flake", "metadata", "--json", ref], f"nix flake metadata {ref}"))
    except (ClosureError, ValueError):
        return None
    value = data.get("lastModified") if isinstance(data, dict) else None
    return value if isinstance(value, int) and value >= 0 else None


def is_installable(root: str, store_dir: str = STORE_DIR) -> bool:
    """A flake installable rather than a store path: ``.#app``, ``github:o/r#x``, or a directory with a
    flake.nix that is not itself in the store (``nixfly build .`` means ``.#default``)."""
    if os.path.lexists(root):
        real = os.path.realpath(root)
        in_store = real.startswith(store_dir.rstrip("/") + "/")
        return not in_store and os.path.isdir(root) and os.path.isfile(os.path.join(root, "flake.nix"))
    return "#" in root or bool(re.match(r"^[a-z][a-z0-9+]*:", root))


def query_path_info(roots: Sequence[str], store_dir: str = STORE_DIR) -> dict[str, StorePath]:
    out = _run_nix(["path-info", "--json", "--recursive", *roots], "nix path-info")
    try:
        data = json.loads(out)
    except ValueError:
        raise ClosureError("nix path-info printed malformed JSON") from None
    return parse_path_info(data, "nix path-info", store_dir)


def _dir_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def resolve_closure(
    roots: Sequence[str],
    *,
    closure_file: Path | None = None,
    store_dir: str = STORE_DIR,
    system: str | None = None,
    metadata_cache: Path | None = None,
) -> Closure:
    """Resolve user-given roots (store paths, ``./result`` links, flake installables like ``.#app``)
    and their full closure; check every path exists on disk. With ``metadata_cache``, the metadata
    ``nix path-info`` gave for a set of roots is remembered there: a store path's closure never changes."""
    if not roots:
        raise UsageError("nothing to build: give at least one store path, ./result link or flake installable")
    store_roots: list[str] = []
    source_epoch: int | None = None
    for r in roots:
        if is_installable(r, store_dir):
            built = nix_build_installable(r)
            for out in built:  # an installable whose output is an image (dockerTools) is refused like ./result
                _refuse_image(out, r)
            store_roots.extend(built)
            if source_epoch is None:
                source_epoch = flake_last_modified(r)
        else:
            _refuse_image(r)
            store_roots.append(to_store_path(r, store_dir))
    store_roots = sorted(set(store_roots), key=store_roots.index)
    if closure_file is not None:
        paths = load_closure_file(closure_file, store_dir)
    else:
        paths = _cached_path_info(store_roots, store_dir, metadata_cache)
    for r in store_roots:
        if r not in paths:
            raise ClosureError(f"{r} is not in the closure metadata")
    needed = Closure(tuple(store_roots), paths, system, store_dir).closure_of(store_roots)
    sized: dict[str, StorePath] = {}
    for p in sorted(needed):
        if not os.path.lexists(p):
            raise ClosureError(f"store path {p} is missing on disk (run nix-store --realise {p})")
        sp = paths[p]
        if sp.nar_size == 0:
            size = _dir_size(p) if os.path.isdir(p) else os.lstat(p).st_size
            sp = StorePath(sp.path, size, sp.references, sp.deriver, sp.nar_hash)
        sized[p] = sp
    system = system or _system_of(sized[store_roots[0]])
    return Closure(tuple(store_roots), sized, system, store_dir, source_epoch)


def _refuse_image(root: str, installable: str | None = None) -> None:
    """An image Nix already built is not a closure to pack: say what to run instead. ``installable`` names
    the flake output that built ``root``, for the message."""
    from nixfly.transports import image_file_kind

    kind = image_file_kind(root)
    what = f"{installable} built {root}, which" if installable else root
    if kind == "archive":
        raise UsageError(
            f"{what} is already an image (a docker-archive, as dockerTools.buildLayeredImage makes): "
            f"push it with 'nixfly push {root} REF', or convert it with 'nixfly copy {root} oci:DIR'"
        )
    if kind == "script":
        raise UsageError(
            f"{what} is an image script (dockerTools.streamLayeredImage): nixfly runs it for you with "
            f"'nixfly push {root} REF' or 'nixfly copy {root} oci:DIR'; or build the closure itself with "
            f"'nixfly build .#PACKAGE'"
        )


def _cached_path_info(roots: Sequence[str], store_dir: str, cache: Path | None) -> dict[str, StorePath]:
    if cache is None:
        return query_path_info(roots, store_dir)
    key = hashlib.sha256("\n".join(sorted(roots)).encode()).hexdigest()
    entry = cache / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, ClosureError):
        data = load_json(read_regular(entry, CLOSURE_FILE_MAX, error=ClosureError))
        paths = parse_path_info(data, str(entry), store_dir)
        if all(r in paths for r in roots) and all(sp.nar_hash for sp in paths.values()):
            return paths
    paths = query_path_info(roots, store_dir)
    data = [
        {"path": sp.path, "narSize": sp.nar_size, "references": list(sp.references), "deriver": sp.deriver,
         "narHash": sp.nar_hash}
        for sp in paths.values()
    ]  # fmt: skip
    with contextlib.suppress(OSError, NixflyError):  # a cache that cannot be written only costs a query
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps(data), durable=False)
    return paths


def _system_of(sp: StorePath) -> str | None:
    """The Nix system (e.g. x86_64-linux) a path was built for, read from its .drv when present."""
    if not sp.deriver:
        return None
    try:
        text = Path(sp.deriver).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'\],"([a-z0-9_]+-[a-z]+)","', text)
    return m.group(1) if m else None
