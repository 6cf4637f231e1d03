"""The build service: closure → layer plan → layers → image. No network; returns an ``Image``.

This is the one place that strings the stages together; sinks (layout, archive, registry) consume
its result without knowing how it was made.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.build.cache import BlobCache
from nixfly.build.closure import Closure, resolve_closure

if TYPE_CHECKING:
    from nixfly.build.bincache import CacheOptions, RemoteStore
from nixfly.build.compress import make_compressor
from nixfly.build.customise import customise
from nixfly.build.layering import plan_layers
from nixfly.build.layers import BuiltLayer, KnownLayers, LayerSettings, LayerSpec, build_layers
from nixfly.build.spec import ImageSpec
from nixfly.build.tarwriter import DEFAULT_MTIME, PermRule, compile_perm_rule
from nixfly.errors import UsageError
from nixfly.image import Image, canonical_json
from nixfly.image.platform import nix_system_platform

DEFAULT_PATH = "/bin:/usr/bin:/sbin:/usr/sbin"


@dataclass(frozen=True)
class BuildResult:
    image: Image
    layers: tuple[BuiltLayer, ...]
    closure: Closure
    seconds: float

    @property
    def built_count(self) -> int:
        return sum(1 for b in self.layers if b.built)


def source_date_epoch() -> int:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    if v is None:
        return DEFAULT_MTIME
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={v!r} is not a whole number of seconds") from None


def platform_of(spec: ImageSpec, closure: Closure) -> tuple[str, str]:
    """(architecture, os) from the closure's Nix system, else the host; the spec overrides both."""
    system = closure.system or f"{platform.machine()}-{platform.system().lower()}"
    arch, os_name = nix_system_platform(system)
    return spec.architecture or arch, spec.os or os_name


def perm_rules(spec: ImageSpec) -> tuple[PermRule, ...]:
    return tuple(
        compile_perm_rule(
            p.path, p.regex, uid=p.uid, gid=p.gid, mode=p.mode, uname=p.uname, gname=p.gname, where=f"perms[{i}]"
        )
        for i, p in enumerate(spec.perms)
    )


def _describe(paths: tuple[str, ...], limit: int = 12) -> str:
    names = [p.rsplit("/", 1)[-1] for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def image_config(
    spec: ImageSpec,
    closure: Closure,
    layers: list[BuiltLayer],
    env_extra: dict[str, str],
    entrypoint: tuple[str, ...] | None = None,
    labels: dict[str, str] | None = None,
) -> bytes:
    # created: the flake's commit time when built from an installable, else SOURCE_DATE_EPOCH, else the epoch.
    epoch = closure.source_epoch if closure.source_epoch is not None else source_date_epoch()
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arch, os_name = platform_of(spec, closure)
    env = {"PATH": DEFAULT_PATH, **env_extra, **spec.env}
    cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()]}
    if entrypoint is not None:  # a generated supervisor or boot stage
        cfg["Entrypoint"] = list(entrypoint)
    elif spec.entrypoint is not None:
        cfg["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        cfg["Cmd"] = spec.cmd
    if spec.workdir:
        cfg["WorkingDir"] = spec.workdir
    if spec.user:
        cfg["User"] = spec.user
    if spec.ports:
        cfg["ExposedPorts"] = {p: {} for p in spec.ports}
    if spec.volumes:
        cfg["Volumes"] = {v: {} for v in spec.volumes}
    if spec.labels or labels:
        cfg["Labels"] = {**(labels or {}), **spec.labels}
    if spec.stop_signal:
        cfg["StopSignal"] = spec.stop_signal
    history = []
    for b in layers:
        what = (
            f"store paths: {_describe(b.spec.store_paths)}" if b.spec.store_paths else f"nixfly {b.spec.kind} layer"
        )
        history.append({"created": created, "created_by": f"nixfly ({b.spec.kind} layer)", "comment": what})
    return canonical_json(
        {
            "architecture": arch,
            "os": os_name,
            "created": created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [b.layer.diff_id for b in layers]},
            "history": history,
        }
    )


def build_image(
    spec: ImageSpec,
    *,
    cache_dir: Path | None = None,
    workers: int | None = None,
    on_plan: Callable[[list[LayerSpec], list[int]], None] | None = None,
    on_layer: Callable[[int, BuiltLayer], None] | None = None,
    on_layer_start: Callable[[int], None] | None = None,
    on_layer_bytes: Callable[[int, int], None] | None = None,
    caches: CacheOptions | None = None,
    verify: bool = True,
    platform_check: bool = True,
    on_fetch_plan: Callable[[int], None] | None = None,
    on_fetch_bytes: Callable[[int], None] | None = None,
    known: KnownLayers | None = None,
) -> BuildResult:
    """Build the image ``spec`` describes. Deterministic: same closure + settings → same digests.
    ``known`` (a destination registry's layer index) supplies layers the local cache lacks.
    With ``caches`` (or ``substituters`` in the spec), store paths missing locally come from binary
    caches; the layers are the same bytes as from a local store holding those paths."""
    t0 = time.monotonic()
    cache = BlobCache(cache_dir)
    if caches is None and spec.substituters:
        from nixfly.build.bincache import cache_options

        caches = cache_options(spec.substituters, spec.trusted_public_keys, verify=verify)
    if caches is not None:
        from nixfly.build.bincache import RemoteStore, resolve_from_caches

        remote = resolve_from_caches(spec.roots, caches, narinfo_cache=cache.root / "narinfo")
        closure = remote.closure
        store: RemoteStore | None = RemoteStore(remote, Path(tempfile.mkdtemp(prefix="nars.", dir=cache.tmp)))
    else:
        closure = resolve_closure(
            spec.roots,
            closure_file=Path(spec.closure_file) if spec.closure_file else None,
            metadata_cache=cache.root / "closures",
        )
        store = None
    try:
        return _build(
            spec, closure, cache, store, t0, workers=workers, platform_check=platform_check,
            on_plan=on_plan, on_layer=on_layer, on_layer_start=on_layer_start, on_layer_bytes=on_layer_bytes,
            on_fetch_plan=on_fetch_plan, on_fetch_bytes=on_fetch_bytes, known=known,
        )  # fmt: skip
    finally:
        if store is not None:
            store.cleanup()


def check_platform(closure: Closure, arch: str, os_name: str, store: RemoteStore | None) -> None:
    """The platform guard over the roots' bin/ and sbin/ (see ``nixfly.build.platform``)."""
    from nixfly.build.platform import check_executable, check_local_root

    for r in closure.roots:
        if store is not None and store.covers(r):
            fs = store.fs
            assert fs is not None
            for path, head in fs.bin_heads(r):
                check_executable(path, head, arch, os_name)
        else:
            check_local_root(r, arch, os_name)


def _build(
    spec: ImageSpec,
    closure: Closure,
    cache: BlobCache,
    store: RemoteStore | None,
    t0: float,
    *,
    workers: int | None,
    platform_check: bool,
    on_plan: Callable[[list[LayerSpec], list[int]], None] | None,
    on_layer: Callable[[int, BuiltLayer], None] | None,
    on_layer_start: Callable[[int], None] | None,
    on_layer_bytes: Callable[[int, int], None] | None,
    on_fetch_plan: Callable[[int], None] | None,
    on_fetch_bytes: Callable[[int], None] | None,
    known: KnownLayers | None = None,
) -> BuildResult:
    fs = None
    if store is not None:
        from nixfly.build.bincache import RemoteFS

        full = [*closure.roots, *(p for p in spec.contents.paths if p in closure.paths)]
        fs = store.fs = RemoteFS(store, full, cache.root / "listings", closure.store_dir, closure.roots)
        store.on_bytes = on_fetch_bytes
        searched = spec.ca_certificates or spec.bin_sh or spec.usr_bin_env
        listed = [*full, *(sorted(closure.paths) if searched else [])]
        if on_fetch_plan is not None:
            from nixfly.build.bincache import download_size

            on_fetch_plan(download_size(store, [p for p in listed if not fs.has_listing(p)]))
        fs.prefetch(listed, workers or os.cpu_count() or 1)
    if platform_check:
        arch, os_name = platform_of(spec, closure)
        check_platform(closure, arch, os_name, store)
    cust = customise(spec, closure, fs)
    has_custom = bool(cust.entries)
    plan = plan_layers(
        closure,
        algorithm=spec.layers.algorithm,
        max_layers=spec.layers.max_layers,
        reserved=1 if has_custom else 0,
        explicit=spec.layers.explicit,
        roots_on_top=spec.layers.roots_on_top,
    )
    specs: list[LayerSpec] = []
    placed: set[str] = set()
    for g in plan.groups:
        extra = tuple(e for p in g.paths for e in cust.root_entries.get(p, []))
        placed.update(p for p in g.paths if p in cust.root_entries)
        specs.append(LayerSpec(g.paths, extra, g.kind))
    leftover = [e for r, es in sorted(cust.root_entries.items()) if r not in placed for e in es]
    if has_custom or leftover:
        specs.append(LayerSpec((), tuple(cust.entries + leftover), "customisation"))
    weights = [sum(closure.paths[p].nar_size for p in s.store_paths) + 4096 * len(s.extra) for s in specs]
    if on_plan is not None:
        on_plan(specs, weights)
    settings = LayerSettings(
        compressor=make_compressor(spec.layers.compression, spec.layers.level),
        mtime=source_date_epoch(),
        rules=perm_rules(spec),
        store_dir=closure.store_dir,
        workers=workers or os.cpu_count() or 1,
        remote=store,
    )
    if store is not None:
        # Only the NARs of layers that are not cached are fetched: a cached rebuild downloads nothing.
        from nixfly.build.bincache import download_size

        missing = [s for s in specs if cache.lookup(settings.key(s)) is None]
        if known is not None:
            missing = [s for s in missing if known(settings.key(s)) is None]
        needed = [p for s in missing for p in s.store_paths if store.covers(p)]
        if on_fetch_plan is not None:
            on_fetch_plan(download_size(store, needed))
        store.prefetch(needed, on_bytes=on_fetch_bytes)
    built = build_layers(
        specs, settings, cache, weights=weights,
        on_done=on_layer, on_start=on_layer_start, on_bytes=on_layer_bytes, known=known,
    )  # fmt: skip
    config = image_config(spec, closure, built, cust.env, cust.entrypoint, cust.labels)
    annotations = {}
    if spec.annotations:
        annotations.update(spec.annotations)
    image = Image(config, tuple(b.layer for b in built), spec.format, annotations)
    return BuildResult(image, tuple(built), closure, time.monotonic() - t0)
