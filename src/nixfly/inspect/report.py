"""Look inside an image: manifest and config facts, each layer, and which Nix store paths take the room.

An image carries no reference graph, so it is recovered the way Nix itself finds references: every
regular file's bytes (and every symlink target) under a store path are scanned for the hash parts of the
other store paths present in the image. From that graph, the store paths nobody refers to are the
top-level ones, and each path gets the shortest chain of references that pulls it in from one of them.

Each layer blob is read once, as a stream: compressed bytes → decompressor → ``tarfile`` in ``r|`` mode,
hashing both sides on the way so the digest and diff_id are checked as a by-product.
"""

from __future__ import annotations

import re
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from nixfly.errors import ImageError
from nixfly.fsutil import load_json
from nixfly.image import Image, Layer
from nixfly.inspect.stream import read_layer_tar

NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
PROCESSES_LABEL = "io.nixfly.processes"  # written by build/supervisor.py (LABEL); inspect does not import build/
_HASH = rb"[0-9a-df-np-sv-z]{32}"
_STORE_NAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[^/]+$")
_CHUNK = 1 << 20
_WHITEOUT = ".wh."


def store_name(path: str) -> str:
    """``/nix/store/<hash>-hello-2.12`` → ``hello-2.12``."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[33:] if _STORE_NAME.match(base) else base


@dataclass(frozen=True)
class LayerReport:
    """One layer as the manifest, the config and (when scanned) its tar stream describe it."""

    index: int  # 0-based, bottom layer first
    digest: str
    diff_id: str
    size: int  # compressed bytes, as the manifest says
    compression: str
    comment: str = ""  # the config history entry's comment for this layer
    created_by: str = ""
    uncompressed_size: int | None = None  # None: not scanned
    files: int | None = None  # regular files in the layer; None: not scanned
    store_paths: tuple[str, ...] = ()  # store paths with at least one entry in this layer

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "digest": self.digest,
            "diff_id": self.diff_id,
            "size": self.size,
            "compression": self.compression,
            "comment": self.comment,
            "created_by": self.created_by,
            "uncompressed_size": self.uncompressed_size,
            "files": self.files,
            "store_paths": list(self.store_paths),
        }


@dataclass(frozen=True)
class StorePathReport:
    """A store path in the image: its size, what it refers to and how the top-level paths reach it."""

    path: str
    size: int  # bytes of regular files under the path, as the merged layers leave them
    files: int
    layers: tuple[int, ...]  # indexes of the layers holding its entries
    references: tuple[str, ...]  # other store paths in the image it refers to
    chain: tuple[str, ...]  # top-level path first, this path last
    kinds: tuple[tuple[str, int], ...] = ()  # bytes of docs / headers / static libraries under it

    @property
    def name(self) -> str:
        return store_name(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "size": self.size,
            "files": self.files,
            "layers": list(self.layers),
            "references": list(self.references),
            "chain": list(self.chain),
        }


@dataclass(frozen=True)
class ReferrerReport:
    """An artifact (an SBOM, a signature) attached to the image as an OCI referrer."""

    artifact_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"artifact_type": self.artifact_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class InspectReport:
    """Everything ``nixfly inspect`` shows. ``scanned`` is False when layer contents were not read."""

    digest: str
    media_type: str
    config_digest: str
    platform: str
    created: str | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    working_dir: str | None
    user: str | None
    exposed_ports: tuple[str, ...]
    layers: tuple[LayerReport, ...]
    scanned: bool
    store_path_count: int = 0
    top_level: tuple[str, ...] = ()
    largest: tuple[StorePathReport, ...] = ()
    processes: dict[str, Any] | None = None  # the declared processes, users and boot steps (nixfly's label)
    referrers: tuple[ReferrerReport, ...] | None = None  # None: not looked up (e.g. a docker-archive)

    @property
    def size(self) -> int:
        return sum(lyr.size for lyr in self.layers)

    @property
    def uncompressed_size(self) -> int | None:
        sizes = [lyr.uncompressed_size for lyr in self.layers]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def to_json(self) -> dict[str, Any]:
        out = self._to_json()
        if self.processes is not None:  # only images with generated supervision carry the key
            out["processes"] = self.processes
        return out

    def _to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "config_digest": self.config_digest,
            "platform": self.platform,
            "created": self.created,
            "entrypoint": None if self.entrypoint is None else list(self.entrypoint),
            "cmd": None if self.cmd is None else list(self.cmd),
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
            "scanned": self.scanned,
            "layers": [lyr.to_json() for lyr in self.layers],
            "totals": {
                "layers": len(self.layers),
                "size": self.size,
                "uncompressed_size": self.uncompressed_size,
                "store_paths": self.store_path_count,
            },
            "top_level": list(self.top_level),
            "largest": [p.to_json() for p in self.largest],
            "referrers": None if self.referrers is None else [r.to_json() for r in self.referrers],
        }


class _Scan:
    """What the layers say about store paths, accumulated layer by layer (upper layers win)."""

    def __init__(self, store_dir: str, with_references: bool) -> None:
        self.store_rel = store_dir.strip("/")
        self.with_references = with_references
        # file contents: "/nix/store/<hash>-"; symlink targets may also be relative ("../<hash>-x/bin")
        self.content_re = re.compile(re.escape(("/" + self.store_rel + "/").encode()) + b"(" + _HASH + b")-")
        self.link_re = re.compile(rb"(?:^|/)(" + _HASH + b")-")
        self.overlap = len(self.store_rel) + 2 + 32  # a match is at most this long, minus one
        self.files: dict[str, dict[str, int]] = {}  # store base name → {relative file → size}
        self.layers_of: dict[str, set[int]] = {}
        self.hashes_seen: dict[str, set[bytes]] = {}  # store base name → hash parts found in it

    def store_base(self, name: str) -> tuple[str, str] | None:
        """(store base name, path inside it) for a member under the store, else None."""
        if not name.startswith(self.store_rel + "/"):
            return None
        base, _, rest = name[len(self.store_rel) + 1 :].partition("/")
        return (base, rest) if _STORE_NAME.match(base) else None

    def _whiteout(self, name: str) -> None:
        parent, _, leaf = name.rpartition("/")
        target = f"{parent}/{leaf[len(_WHITEOUT) :]}" if parent else leaf[len(_WHITEOUT) :]
        if leaf == _WHITEOUT + _WHITEOUT + ".opq":  # opaque dir: lower contents are hidden
            target = parent
        hit = self.store_base(target)
        if hit is None:
            return
        base, rest = hit
        if not rest:  # the whole store path is gone (an upper layer may bring it back)
            for table in (self.files, self.layers_of, self.hashes_seen):
                table.pop(base, None)
            return
        files = self.files.get(base)
        if files is None:
            return
        for rel in [r for r in files if r == rest or r.startswith(rest + "/")]:
            del files[rel]

    def layer(self, index: int, tf: tarfile.TarFile) -> tuple[int, tuple[str, ...]]:
        """Consume one layer's tar stream; returns (regular files, store base names present)."""
        present: set[str] = set()
        regular = 0
        for m in tf:
            name = m.name.lstrip("/")
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/")
            if m.isreg():
                regular += 1
            if name.rpartition("/")[2].startswith(_WHITEOUT):
                self._whiteout(name)
                continue
            hit = self.store_base(name)
            if hit is None:
                continue
            base, rest = hit
            present.add(base)
            self.layers_of.setdefault(base, set()).add(index)
            files = self.files.setdefault(base, {})
            seen = self.hashes_seen.setdefault(base, set())
            if m.isreg():
                files[rest] = m.size
                if self.with_references:
                    self._scan_content(tf, m, seen)
            elif m.islnk():
                # A hard link is a regular file with the bytes of its target (Nix counts it again too).
                target = self.store_base(m.linkname.lstrip("/").removeprefix("./"))
                if target is not None:
                    size = self.files.get(target[0], {}).get(target[1])
                    if size is not None:
                        files[rest] = size
            elif m.issym() and self.with_references:
                seen.update(self.link_re.findall(m.linkname.encode("utf-8", "surrogateescape")))
        return regular, tuple(sorted(present))

    def _scan_content(self, tf: tarfile.TarFile, m: tarfile.TarInfo, seen: set[bytes]) -> None:
        f = tf.extractfile(m)
        if f is None:
            return
        tail = b""
        while chunk := f.read(_CHUNK):
            buf = tail + chunk
            seen.update(self.content_re.findall(buf))
            # Keep enough of the end that a reference split across two reads is still found.
            tail = buf[-(self.overlap - 1) :]


def _platform(cfg: Mapping[str, Any]) -> str:
    parts = [str(cfg.get("os") or "?"), str(cfg.get("architecture") or "?")]
    if cfg.get("variant"):
        parts.append(str(cfg["variant"]))
    return "/".join(parts)


def _history(cfg: Mapping[str, Any], count: int) -> list[tuple[str, str]]:
    """(comment, created_by) per layer; history entries for empty layers are skipped."""
    hist = cfg.get("history")
    entries = [h for h in hist if isinstance(h, dict) and not h.get("empty_layer")] if isinstance(hist, list) else []
    if len(entries) != count:  # history that does not line up with the layers says nothing reliable
        return [("", "")] * count
    return [(str(h.get("comment") or ""), str(h.get("created_by") or "")) for h in entries]


def _strings(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def _sort_key(path: str) -> tuple[str, str]:
    return (store_name(path), path)


def reference_chains(refs: Mapping[str, Iterable[str]]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Top-level paths (referenced by no other) and, for every path, a shortest chain from one of them.

    Breadth-first from all top-level paths at once, visiting in name order, so among equally short chains
    the one through alphabetically earlier names wins. Paths only reachable through a cycle (Nix forbids
    these, but an image may be odd) start a chain of their own.
    """
    nodes = sorted(refs, key=_sort_key)
    referenced = {r for p in nodes for r in refs[p] if r != p}
    tops = [p for p in nodes if p not in referenced]
    parent: dict[str, str | None] = {}
    pending = list(tops)
    while True:
        queue: deque[str] = deque()
        for p in pending:
            if p not in parent:
                parent[p] = None
                queue.append(p)
        while queue:
            p = queue.popleft()
            for r in sorted(refs[p], key=_sort_key):
                if r != p and r in refs and r not in parent:
                    parent[r] = p
                    queue.append(r)
        left = [p for p in nodes if p not in parent]
        if not left:
            break
        pending = left[:1]
    chains: dict[str, tuple[str, ...]] = {}
    for p in nodes:
        chain = [p]
        up = parent[p]
        while up is not None:
            chain.append(up)
            up = parent[up]
        chains[p] = tuple(reversed(chain))
    return tuple(tops), chains


def inspect_image(
    image: Image,
    *,
    top: int = 10,
    scan: bool = True,
    store_dir: str = "/nix/store",
    on_bytes: Callable[[int], None] | None = None,
) -> InspectReport:
    """Describe ``image``. With ``scan`` each layer blob is streamed once (checking its digest and diff_id)
    to list its store paths, measure them and recover their references; without it only the manifest and
    config are used and no blob is read. ``top`` bounds how many of the largest store paths are kept.
    ``on_bytes`` hears how many compressed bytes were just read (for progress)."""
    if top < 0:
        raise ValueError("top must not be negative")
    try:
        cfg = image.config
    except ValueError:
        raise ImageError("the image config is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise ImageError("the image config is not a JSON object")
    inner: dict[str, Any] = cfg["config"] if isinstance(cfg.get("config"), dict) else {}
    history = _history(cfg, len(image.layers))
    state = _Scan(store_dir, with_references=True) if scan else None
    layers: list[LayerReport] = []
    for i, (lyr, (comment, created_by)) in enumerate(zip(image.layers, history, strict=True)):
        report = LayerReport(i, lyr.digest, lyr.diff_id, lyr.size, lyr.compression, comment, created_by)
        if state is not None:
            report = _scan_layer(report, lyr, state, on_bytes)
        layers.append(report)

    largest: tuple[StorePathReport, ...] = ()
    tops: tuple[str, ...] = ()
    count = 0
    if state is not None:
        prefix = "/" + state.store_rel + "/"
        bases = sorted(state.files)
        by_hash = {b[:32].encode(): prefix + b for b in bases}
        refs = {
            prefix + b: sorted({by_hash[h] for h in state.hashes_seen.get(b, ()) if h in by_hash} - {prefix + b})
            for b in bases
        }
        tops, chains = reference_chains(refs)
        sized = sorted(bases, key=lambda b: (-sum(state.files[b].values()), store_name(b), b))
        largest = tuple(
            StorePathReport(
                prefix + b,
                sum(state.files[b].values()),
                len(state.files[b]),
                tuple(sorted(state.layers_of.get(b, ()))),
                tuple(refs[prefix + b]),
                chains[prefix + b],
                _kinds(state.files[b]),
            )
            for b in sized[:top]
        )
        count = len(bases)
        layers = [replace(lyr, store_paths=tuple(prefix + b for b in lyr.store_paths)) for lyr in layers]

    ports = inner.get("ExposedPorts")
    return InspectReport(
        processes=_processes(inner),
        digest=image.manifest_digest(),
        media_type=image.manifest_media_type(),
        config_digest=image.config_digest,
        platform=_platform(cfg),
        created=str(cfg["created"]) if cfg.get("created") else None,
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        env=_strings(inner.get("Env")) or (),
        working_dir=str(inner["WorkingDir"]) if inner.get("WorkingDir") else None,
        user=str(inner["User"]) if inner.get("User") else None,
        exposed_ports=tuple(sorted(ports)) if isinstance(ports, dict) else (),
        layers=tuple(layers),
        scanned=scan,
        store_path_count=count,
        top_level=tops,
        largest=largest,
    )


def _processes(inner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The supervisor description nixfly recorded in the config's labels; None if absent or unreadable."""
    labels = inner.get("Labels")
    raw = labels.get(PROCESSES_LABEL) if isinstance(labels, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        value = load_json(raw)  # a label can nest 10,000 deep: NestingError is a ValueError
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("processes"), list) else None


def _scan_layer(report: LayerReport, layer: Layer, state: _Scan, on_bytes: Callable[[int], None] | None) -> LayerReport:
    (files, present), size = read_layer_tar(
        f"layer {report.index + 1} ({report.digest})", layer, consume=lambda tf: state.layer(report.index, tf),
        on_bytes=on_bytes,
    )  # fmt: skip
    return replace(report, uncompressed_size=size, files=files, store_paths=present)


# ---------------------------------------------------------------------------------------------------------
# What kinds of files take a store path's room (for the suggestions)


def _kinds(files: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """Bytes under a store path that a runtime image rarely needs, by kind."""
    totals = {"docs": 0, "headers": 0, "static-libs": 0}
    for rel, size in files.items():
        if rel.startswith(("share/doc/", "share/man/", "share/info/", "share/gtk-doc/", "share/devhelp/")):
            totals["docs"] += size
        elif rel.startswith("include/"):
            totals["headers"] += size
        elif rel.endswith(".a") and (rel.startswith("lib/") or "/lib/" in rel):
            totals["static-libs"] += size
    return tuple((k, v) for k, v in totals.items() if v)
