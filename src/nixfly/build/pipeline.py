"""The build service: closure → layer plan → layers → image. No network; returns an ``Image``.

This is the one place that strings the stages together; sinks (layout, archive, registry) consume
its result without knowing how it was made.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from nixfly.build.base import cache_backed_image, scan_base
from nixfly.build.cache import BlobCache
from nixfly.build.closure import Closure, resolve_closure

if TYPE_CHECKING:
    from nixfly.build.bincache import CacheOptions, RemoteStore
from nixfly.build.compress import make_compressor
from nixfly.build.customise import BASE_ETC_FILES, customise
from nixfly.build.events import NO_EVENTS, BuildEvents
from nixfly.build.layering import plan_layers
from nixfly.build.layers import BuiltLayer, KnownLayers, LayerSettings, LayerSpec, build_layers
from nixfly.build.spec import ImageSpec
from nixfly.build.tarwriter import DEFAULT_MTIME, PermRule, compile_perm_rule
from nixfly.errors import ClosureError, LayeringError, NixflyError, UsageError
from nixfly.image import Image, canonical_json
from nixfly.image.base import BaseImage, stack_on_base
from nixfly.image.config import DEFAULT_PATH
from nixfly.image.convert import with_format
from nixfly.image.growing import GrowingBlob
from nixfly.image.platform import nix_system_platform, parse_platform, platform_matches

# (base image location, platform) → the resolved base; the CLI passes one with registry options.
BaseResolver = Callable[[str, str], BaseImage]


@dataclass(frozen=True)
class BuildResult:
    image: Image
    layers: tuple[BuiltLayer, ...]  # ours (the base's layers are image.layers[:len(image.layers) - len(layers)])
    closure: Closure
    seconds: float
    base: BaseImage | None = None
    warnings: tuple[str, ...] = ()
    platform: str = ""
    from_base: frozenset[str] = frozenset()  # store paths of the closure the base already holds (not packed)

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
    *,
    default_path: bool = True,
) -> bytes:
    # created: the flake's commit time when built from an installable, else SOURCE_DATE_EPOCH, else the epoch.
    epoch = closure.source_epoch if closure.source_epoch is not None else source_date_epoch()
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arch, os_name = platform_of(spec, closure)
    env = {**({"PATH": DEFAULT_PATH} if default_path else {}), **env_extra, **spec.env}
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
    events: BuildEvents = NO_EVENTS,
    caches: CacheOptions | None = None,
    verify: bool = True,
    platform_check: bool = True,
    base: BaseResolver | None = None,
    platform: str | None = None,
    known: KnownLayers | None = None,
) -> BuildResult:
    """Build the image ``spec`` describes. Deterministic: same closure + settings → same digests.
    ``known`` (a destination registry's layer index) supplies layers the local cache lacks. ``events`` hears the
    layer plan, each layer's progress and each layer being built as its compressed blob grows (to upload it
    while it is written): see :mod:`nixfly.build.events`.
    With ``caches`` (or ``substituters`` in the spec), store paths missing locally come from binary
    caches; the layers are the same bytes as from a local store holding those paths.

    ``platform`` (``linux/arm64``) is the platform the image is declared for: a closure evaluated for another
    Nix system is an error. With ``spec.base_image``, the base is resolved for the image's platform (by
    ``base``, which the caller passes; ``services.ship`` defaults to ``sources.base.open_base``) before any
    layer is built, its layers count against ``max_layers``, its users and groups are merged with ours (unless
    ``base_etc = "replace"``), and our layers go on top of its (:func:`nixfly.image.base.stack_on_base`)."""
    t0 = time.monotonic()
    cache = BlobCache(cache_dir)
    if caches is None and spec.substituters:
        from nixfly.build.bincache import cache_options

        caches = cache_options(spec.substituters, spec.trusted_public_keys, verify=verify)
    if caches is not None:
        from nixfly.build.bincache import RemoteStore, resolve_from_caches

        remote = resolve_from_caches(spec.roots, caches, narinfo_cache=cache.root / "narinfo")
        closure = remote.closure
        # The pid in the name lets the next build sweep the downloads of one that was killed.
        nars = Path(tempfile.mkdtemp(prefix=f"nars.{os.getpid()}.", dir=cache.tmp))
        store: RemoteStore | None = RemoteStore(remote, nars)
    else:
        closure = resolve_closure(
            spec.roots,
            closure_file=Path(spec.closure_file) if spec.closure_file else None,
            metadata_cache=cache.root / "closures",
        )
        store = None
    if platform is not None:
        check_closure_platform(closure, platform, spec.roots)
        p_os, p_arch, _variant = parse_platform(platform)
        spec = replace(spec, architecture=p_arch, os=p_os)
    try:
        return _build(
            spec, closure, cache, store, t0, workers=workers, platform_check=platform_check, base=base,
            events=events, known=known,
        )  # fmt: skip
    finally:
        if store is not None:
            store.cleanup()


def check_platform(closure: Closure, arch: str, os_name: str, store: RemoteStore | None) -> None:
    """The platform guard over the roots' bin/ and sbin/ (see ``nixfly.build.platform``)."""
    from nixfly.build.platform import check_executable, check_local_root

    for r in closure.roots:
        if store is not None and store.covers(r):
            from nixfly.build.bincache import RemoteFS  # only from a binary cache: it loads the HTTP stack

            fs = store.fs
            assert isinstance(fs, RemoteFS)
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
    events: BuildEvents,
    base: BaseResolver | None = None,
    known: KnownLayers | None = None,
) -> BuildResult:
    fs = None
    # From a binary cache, the search through the closure (CA certificates, /bin/sh, /usr/bin/env) waits
    # until the store layers are written: their NARs are listed on the way, so none is read twice.
    searched = False
    if store is not None:
        from nixfly.build.bincache import RemoteFS, download_size

        full = [*closure.roots, *(p for p in spec.contents.paths if p in closure.paths)]
        fs = store.fs = RemoteFS(store, full, cache.root / "listings", closure.store_dir, closure.roots)
        fetched = events.fetch_bytes if events.listens("fetch_bytes") else None
        store.on_bytes = fetched
        events.fetch_planned(download_size(store, [p for p in full if not fs.has_listing(p)]))
        fs.prefetch(full, workers or os.cpu_count() or 1)
        searched = spec.ca_certificates or spec.bin_sh or spec.usr_bin_env
    if platform_check:
        arch, os_name = platform_of(spec, closure)
        check_platform(closure, arch, os_name, store)
    arch, os_name = platform_of(spec, closure)
    image_platform = f"{os_name}/{arch}"
    resolved: BaseImage | None = None
    base_files: dict[str, bytes | None] | None = None
    from_base: frozenset[str] = frozenset()
    if spec.base_image:
        if base is None:  # build/ opens nothing itself (it sits left of sources/): the caller says how
            raise UsageError(f"{spec.base_image}: a base image needs a resolver (base=…) to open it")
        resolved = base(spec.base_image, image_platform)
        resolved = replace(resolved, image=cache_backed_image(resolved.image, cache))
        # Store paths the base already holds (a Nix-built base) are not packed again: the image would carry
        # them twice, and a layer equal to a base layer would be uploaded instead of mounted.
        # One read per layer for both (store listings are cached by diff_id; the /etc files come along).
        wanted = BASE_ETC_FILES if spec.base_etc == "merge" else ()
        scanned = scan_base(resolved.image, closure.store_dir, cache, wanted, workers=workers or 4)
        from_base = frozenset(p for p in closure.paths if p in scanned.store_paths)
        if spec.base_etc == "merge":
            base_files = scanned.files
    n_base = len(resolved.image.layers) if resolved else 0
    first = dataclasses.replace(spec, ca_certificates=False, bin_sh=False, usr_bin_env=False) if searched else spec
    cust = customise(first, closure, fs, base_files)
    # A root the base holds gets no layer of its own: its links (contents) then go into the customisation layer.
    has_custom = bool(cust.entries) or searched or any(r in from_base for r in cust.root_entries)
    max_layers = spec.layers.max_layers
    if resolved is not None and max_layers - n_base < 1 + (1 if has_custom else 0):
        raise LayeringError(
            f"base image {resolved.name} has {n_base} layers, which leaves {max(max_layers - n_base, 0)} of "
            f"--max-layers {max_layers} for this image's own; raise --max-layers (at most 127) or choose a base "
            "with fewer layers"
        )
    try:
        plan = plan_layers(
            closure,
            algorithm=spec.layers.algorithm,
            max_layers=max_layers - n_base,
            reserved=1 if has_custom else 0,
            explicit=spec.layers.explicit,
            roots_on_top=spec.layers.roots_on_top,
            provided=from_base,
        )
    except LayeringError as e:
        if resolved is None:
            raise
        raise LayeringError(
            f"{e} — the base image's {n_base} layers count against --max-layers {max_layers}, leaving "
            f"{max_layers - n_base}"
        ) from None
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
    events.planned(specs, weights)
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
        events.fetch_planned(download_size(store, needed))
        store.prefetch(needed, on_bytes=events.fetch_bytes if events.listens("fetch_bytes") else None)
    if not searched:
        built = build_layers(specs, settings, cache, weights=weights, known=known, **_layer_hooks(events))
    else:
        last = len(specs) - 1  # the customisation layer
        built = build_layers(specs[:last], settings, cache, weights=weights[:last], known=known,
                             **_layer_hooks(events))  # fmt: skip
        whole = customise(spec, closure, fs, base_files)
        if whole.root_entries != cust.root_entries:  # the roots' links never depend on the search
            raise NixflyError("internal error: the roots' contents links changed during the build")
        cust = whole
        specs[last] = LayerSpec((), tuple(cust.entries + leftover), "customisation")
        built += build_layers(specs[last:], settings, cache, known=known, **_layer_hooks(events, last))
    base_env = (resolved.image.config.get("config") or {}).get("Env") or [] if resolved is not None else []
    base_has_path = any(str(e).startswith("PATH=") for e in base_env)
    config = image_config(spec, closure, built, cust.env, cust.entrypoint, cust.labels, default_path=not base_has_path)
    annotations = {}
    if spec.annotations:
        annotations.update(spec.annotations)
    # Layers from the cache carry OCI media types: the image is made in OCI and then converted, so that a
    # v2s2 image names Docker layer types (an Image in format v2s2 with OCI layer types is not valid).
    image = Image(config, tuple(b.layer for b in built), "oci", annotations)
    if resolved is not None:
        image = stack_on_base(resolved, image)
    image = with_format(image, spec.format)
    return BuildResult(
        image, tuple(built), closure, time.monotonic() - t0, resolved, tuple(cust.warnings), image_platform, from_base
    )


class _LayerHooks(TypedDict):
    on_done: Callable[[int, BuiltLayer], None]
    on_start: Callable[[int], None]
    on_bytes: Callable[[int, int], None] | None
    on_blob: Callable[[int, GrowingBlob], None] | None


def _layer_hooks(events: BuildEvents, offset: int = 0) -> _LayerHooks:
    """``build_layers``' callbacks from ``events``, layer ``i`` reported as ``offset + i``; the costly ones
    only when a listener wants them (a growing blob changes how a layer is written)."""

    def done(i: int, b: BuiltLayer) -> None:
        events.layer_done(i + offset, b)

    def start(i: int) -> None:
        events.layer_started(i + offset)

    def count(i: int, n: int) -> None:
        events.layer_bytes(i + offset, n)

    def blob(i: int, g: GrowingBlob) -> None:
        events.layer_blob(i + offset, g)

    return {
        "on_done": done,
        "on_start": start,
        "on_bytes": count if events.listens("layer_bytes") else None,
        "on_blob": blob if events.listens("layer_blob") else None,
    }


def check_closure_platform(closure: Closure, platform: str, roots: list[str]) -> None:
    """A closure declared for ``platform`` must not have been evaluated for another Nix system."""
    if closure.system is None:
        return  # e.g. a closure file, or paths with no deriver: nothing says otherwise
    arch, os_name = nix_system_platform(closure.system)
    if not platform_matches(f"{os_name}/{arch}", platform):
        root = roots[0] if roots else "the roots"
        raise ClosureError(
            f"--platform {platform}={root}: it was built for {closure.system} ({os_name}/{arch}), not {platform}"
        )
