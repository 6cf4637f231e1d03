"""Closure resolution from binary caches: substituters and trusted keys from nix.conf, the options of one
``--from-cache`` build, installables evaluated (never built), and the closure found by following each
narinfo's References from the roots (local paths read from the store, the rest from the first cache that
has them, signatures checked before anything else is fetched).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixfly.build.bincache.fetch import BinaryCache
from nixfly.build.bincache.narinfo import (
    COMPRESSIONS,
    BinaryCacheError,
    NarInfo,
    SignatureError,
    TrustedKey,
    nix_hash,
    parse_narinfo,
    parse_public_key,
    verify_signature,
)
from nixfly.build.closure import (
    NIX_FLAGS,
    STORE_DIR,
    Closure,
    StorePath,
    is_store_path,
    query_path_info,
    to_store_path,
)
from nixfly.errors import ClosureError, NixflyError, UsageError
from nixfly.fsutil import atomic_write_text

FETCH_JOBS = 8

# ---------------------------------------------------------------------------------------------------
# nix.conf defaults


@dataclass(frozen=True)
class NixSettings:
    substituters: tuple[str, ...] = ()
    trusted_public_keys: tuple[str, ...] = ()


def _conf_files() -> list[Path]:
    files = [Path(os.environ.get("NIX_CONF_DIR", "/etc/nix")) / "nix.conf"]
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files += [Path(d) / "nix" / "nix.conf" for d in reversed(dirs) if d]
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    files.append(Path(home) / "nix" / "nix.conf")
    return files


def read_nix_settings(texts: Iterable[str] | None = None) -> NixSettings:
    """``substituters`` and ``trusted-public-keys`` (with their ``extra-`` forms) from nix.conf files and
    ``$NIX_CONFIG``, later settings overriding earlier ones as Nix does."""
    if texts is None:
        found = []
        for f in _conf_files():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found.append(f.read_text())
        found.append(os.environ.get("NIX_CONFIG", ""))
        texts = found
    vals: dict[str, list[str]] = {"substituters": [], "trusted-public-keys": []}
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep:
                continue
            words = value.split()
            if key in vals:
                vals[key] = words
            elif key.startswith("extra-") and key[6:] in vals:
                vals[key[6:]] += words
    return NixSettings(tuple(vals["substituters"]), tuple(vals["trusted-public-keys"]))


# ---------------------------------------------------------------------------------------------------
# the closure


@dataclass(frozen=True)
class CacheOptions:
    urls: tuple[str, ...]
    trusted_keys: tuple[TrustedKey, ...] = ()
    verify: bool = True
    jobs: int = FETCH_JOBS
    store_dir: str = STORE_DIR
    use_local: bool = True  # False: every path from the caches, even those in the local store


def cache_options(
    urls: Sequence[str], keys: Sequence[str], *, verify: bool = True, store_dir: str = STORE_DIR,
    use_local: bool = True,
) -> CacheOptions:
    """Options from user input; no URL means nix.conf's substituters, no key nix.conf's trusted keys."""
    settings = read_nix_settings() if not urls or not keys else NixSettings()
    chosen = [u for u in (urls or settings.substituters) if u]
    if not chosen:
        raise UsageError("--from-cache: no binary cache given and nix.conf lists no substituters")
    parsed = tuple(parse_public_key(k) for k in (keys or settings.trusted_public_keys))
    return CacheOptions(tuple(dict.fromkeys(chosen)), parsed, verify, FETCH_JOBS, store_dir, use_local)


def eval_installable(installable: str) -> tuple[str, str | None]:
    """A flake installable's output path and system, by evaluation only (``nix eval``): nothing is built,
    so ``.#packages.x86_64-linux.app`` works on any host."""
    try:
        proc = subprocess.run(
            ["nix", *NIX_FLAGS, "eval", "--json", installable, "--apply", "d: [ d.outPath (d.system or null) ]"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise ClosureError(f"nix eval {installable}: the nix command is not installed (give store paths)") from None
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ClosureError(f"nix eval {installable} failed: {last[-1] if last else 'exit ' + str(proc.returncode)}")
    try:
        out, system = json.loads(proc.stdout)
    except (ValueError, TypeError):
        raise ClosureError(f"nix eval {installable}: unexpected output") from None
    if not isinstance(out, str) or not is_store_path(out):
        raise ClosureError(f"nix eval {installable}: {out!r} is not a store path")
    return out, system if isinstance(system, str) else None


def _root_path(r: str, store_dir: str) -> str:
    if os.path.lexists(r):
        return to_store_path(r, store_dir)
    prefix = store_dir.rstrip("/") + "/"
    if r.startswith(prefix):
        top = prefix + r[len(prefix) :].split("/", 1)[0]
        if is_store_path(top, store_dir):
            return top
    raise ClosureError(f"{r}: not a store path, a ./result link or a flake installable")


@dataclass(frozen=True)
class RemoteClosure:
    closure: Closure
    narinfos: Mapping[str, NarInfo]  # the paths to fetch (missing locally)
    caches: Mapping[str, BinaryCache] = field(default_factory=dict)


class NarinfoCache:
    """narinfos fetched over HTTP, kept under the layer cache dir (store paths never change; signatures
    are checked again on every use), so a rebuild whose layers are cached touches no network."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _file(self, cache: BinaryCache, h: str) -> Path | None:
        if self.root is None or cache.dir is not None:
            return None
        return self.root / hashlib.sha256(cache.url.encode()).hexdigest()[:16] / f"{h}.narinfo"

    def load(self, cache: BinaryCache, path: str) -> NarInfo | None:
        h = path.rsplit("/", 1)[-1].split("-", 1)[0]
        f = self._file(cache, h)
        if f is None:
            return None
        with contextlib.suppress(OSError, UnicodeDecodeError, BinaryCacheError):
            ni = parse_narinfo(f.read_text(), str(f), cache.url, cache.store_dir)
            if ni.store_path == path and ni.compression in COMPRESSIONS:
                return ni
        return None

    def forget(self, cache: BinaryCache, path: str) -> None:
        f = self._file(cache, path.rsplit("/", 1)[-1].split("-", 1)[0])
        if f is not None:
            with contextlib.suppress(OSError):
                f.unlink()

    def save(self, cache: BinaryCache, ni: NarInfo, text: str) -> None:
        f = self._file(cache, ni.store_path.rsplit("/", 1)[-1].split("-", 1)[0])
        if f is None:
            return
        with contextlib.suppress(OSError, NixflyError):  # a cache that cannot be written costs a request
            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(f, text, durable=False)


def _narinfo_text(ni: NarInfo) -> str:
    lines = [
        f"StorePath: {ni.store_path}", f"URL: {ni.url}", f"Compression: {ni.compression}",
        f"NarHash: {nix_hash(ni.nar_hash)}", f"NarSize: {ni.nar_size}",
        "References: " + " ".join(r.rsplit("/", 1)[-1] for r in ni.references),
    ]  # fmt: skip
    if ni.file_hash is not None:
        lines.append(f"FileHash: {nix_hash(ni.file_hash)}")
    if ni.file_size is not None:
        lines.append(f"FileSize: {ni.file_size}")
    if ni.deriver:
        lines.append(f"Deriver: {ni.deriver.rsplit('/', 1)[-1]}")
    if ni.system:
        lines.append(f"System: {ni.system}")
    lines += [f"Sig: {s}" for s in ni.sigs]
    return "\n".join(lines) + "\n"


def resolve_from_caches(
    roots: Sequence[str],
    options: CacheOptions,
    *,
    system: str | None = None,
    narinfo_cache: Path | None = None,
    local_closure: Callable[[Sequence[str]], Mapping[str, StorePath]] | None = None,
) -> RemoteClosure:
    """The closure of ``roots``: paths on disk from the local store's metadata, the others from the
    caches' narinfos (first cache that has a path wins; signatures checked unless ``verify`` is off)."""
    if not roots:
        raise UsageError("nothing to build: give at least one store path or flake installable")
    store_dir = options.store_dir
    caches = [BinaryCache(u, store_dir) for u in options.urls]
    disk = NarinfoCache(narinfo_cache)
    evaluated_system: str | None = None
    store_roots: list[str] = []
    for r in roots:
        if "#" in r and not os.path.lexists(r):
            path, sys_ = eval_installable(r)
            store_roots.append(path)
            evaluated_system = evaluated_system or sys_
        else:
            store_roots.append(_root_path(r, store_dir))
    store_roots = list(dict.fromkeys(store_roots))

    def trusted(ni: NarInfo) -> bool:
        if options.verify:
            verify_signature(ni, options.trusted_keys)
        return True

    def lookup(path: str) -> NarInfo:
        for c in caches:
            ni = disk.load(c, path)
            if ni is not None:
                with contextlib.suppress(SignatureError):
                    if trusted(ni):
                        return ni
                disk.forget(c, path)
        refused: SignatureError | None = None
        for c in caches:
            ni = c.narinfo(path)
            if ni is None:
                continue
            try:
                trusted(ni)
            except SignatureError as e:  # another cache may have it signed by a trusted key
                refused = refused or e
                continue
            disk.save(c, ni, _narinfo_text(ni))  # only narinfos that passed are remembered
            return ni
        if refused is not None:
            raise refused
        tried = ", ".join(c.url for c in caches)
        raise BinaryCacheError(
            f"{path} is in no binary cache (tried: {tried}) and not in the local store; "
            "push it from CI (nix copy --to …) or build it"
        )

    narinfos: dict[str, NarInfo] = {}
    local: list[str] = []
    seen: set[str] = set()
    level = list(store_roots)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        while level:
            todo = []
            for p in level:
                if p in seen:
                    continue
                seen.add(p)
                if options.use_local and os.path.lexists(p):
                    local.append(p)
                else:
                    todo.append(p)
            found = list(pool.map(lookup, todo))
            nxt: list[str] = []
            for ni in found:
                narinfos[ni.store_path] = ni
                nxt.extend(r for r in ni.references if r not in seen)
            level = nxt
    for c in caches:
        if c._client is not None:
            c._client.close()
            c._client = None
    paths: dict[str, StorePath] = {p: ni.to_store_path() for p, ni in narinfos.items()}
    if local:
        info = (local_closure or (lambda rs: query_path_info(rs, store_dir)))(sorted(local))
        paths.update(info)  # a path found in a cache first but local after all is read from disk
        for p in info:
            narinfos.pop(p, None)
    for r in store_roots:
        if r not in paths:
            raise ClosureError(f"{r} is not in the closure metadata")
    sys_ = system or evaluated_system or next((narinfos[r].system for r in store_roots if r in narinfos), None)
    if sys_ is None:
        sys_ = f"{platform.machine().lower().replace('arm64', 'aarch64')}-linux"
    closure = Closure(tuple(store_roots), paths, sys_, store_dir)
    closure.closure_of(store_roots)  # every reference is listed
    return RemoteClosure(closure, narinfos, {c.url: c for c in caches})
