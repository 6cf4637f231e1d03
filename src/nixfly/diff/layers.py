"""Store paths and their exact NAR sizes from an image's layers, read as a stream (no unpacking).

A NAR's size depends only on the tree's shape, never on file bytes: every node is a fixed frame of
8-byte-padded strings (Nix's ``archive.cc``: ``(``, ``type``, the kind, ``)``), a regular file adds its
length padded to 8 (and the ``executable`` marker when the owner may execute it), a symlink its target
padded to 8, and each directory entry its name padded to 8 inside an ``entry ( name … node … )`` frame.
So the tar headers alone — names, kinds, sizes, modes, link targets — give what ``nix path-info -s``
says, for images built by any tool, without the local store and without reading a file's contents.

Layers apply in order (upper layers replace entries, whiteouts delete them, as a container sees them);
a layer two images share is read once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from nixfly.diff.tarheaders import DIR, LNK, REG, SYM, members
from nixfly.image import Layer
from nixfly.image.tarstream import read_layer_stream

_STORE_NAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[^/]+$")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

# NAR framing, in bytes (every string is an 8-byte length, then its bytes padded to a multiple of 8).
_MAGIC = 24  # "nix-archive-1"
_DIR = 72  # ( type directory )
_FILE = 88  # ( type regular contents <len> … )
_EXEC = 32  # executable ""
_LINK = 88  # ( type symlink target <len> … )
_ENTRY = 88  # entry ( name <len> … node … )


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def file_cost(size: int, executable: bool) -> int:
    """NAR bytes of a regular file node (without the entry frame naming it)."""
    return _FILE + _pad(size) + (_EXEC if executable else 0)


def link_cost(target: str) -> int:
    return _LINK + _pad(_blen(target))


def entry_cost(name: str) -> int:
    """NAR bytes of the frame that names a node inside its directory."""
    return _ENTRY + _pad(_blen(name))


# One change a layer makes under the store: put a node (base, path inside it, node cost), white out
# (base, path inside it; "" is the whole store path; opaque: keep the directory, drop what is under it), or
# hard-link to a file of a lower layer (base, path inside it, (target base, target path)).
_Put = tuple[str, str, int]
_Out = tuple[str, str, bool]
_Link = tuple[str, str, tuple[str, str]]


@dataclass(frozen=True)
class LayerScan:
    """What one layer does to the store: its puts, whiteouts and links, in tar order."""

    ops: tuple[_Put | _Out | _Link, ...]


class StoreTree:
    """The store as the layers applied so far leave it: per store path, each node's NAR cost."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, int]] = {}  # store base name → {path inside ("" = itself) → cost}

    def apply(self, scan: LayerScan) -> None:
        for op in scan.ops:
            base, rel, third = op
            if isinstance(third, bool):
                self._whiteout(base, rel, third)
                continue
            if isinstance(third, tuple):  # a hard link: the NAR holds the file again, with its mode
                found = self.nodes.get(third[0], {}).get(third[1])
                third = found if found is not None and found != _DIR else file_cost(0, False)
            nodes = self.nodes.setdefault(base, {})
            old = nodes.get(rel)
            # Only a directory costs exactly _DIR (every file or link node costs more): a file that
            # replaces a directory hides the tree under it.
            if old == _DIR and third != _DIR:
                self._drop_under(nodes, rel)
            nodes[rel] = third

    @staticmethod
    def _drop_under(nodes: dict[str, int], rel: str) -> None:
        prefix = rel + "/" if rel else ""
        for k in [k for k in nodes if k.startswith(prefix) and k != rel]:
            del nodes[k]

    def _whiteout(self, base: str, rel: str, opaque: bool) -> None:
        nodes = self.nodes.get(base)
        if nodes is None:
            return
        if opaque:
            self._drop_under(nodes, rel)
            return
        if not rel:
            del self.nodes[base]
            return
        self._drop_under(nodes, rel)
        nodes.pop(rel, None)

    def nar_sizes(self) -> dict[str, int]:
        """Store base name → NAR size of that path as the merged layers leave it."""
        out: dict[str, int] = {}
        for base, nodes in self.nodes.items():
            total = _MAGIC
            have = set(nodes)
            for rel, cost in nodes.items():
                total += cost
                if rel:
                    total += entry_cost(rel.rpartition("/")[2])
            # Directories a tar implies (a member under them) without a member of their own.
            implied: set[str] = set()
            for rel in nodes:
                parent = rel.rpartition("/")[0] if "/" in rel else ("" if rel else None)
                while parent is not None and parent not in have and parent not in implied:
                    implied.add(parent)
                    parent = parent.rpartition("/")[0] if "/" in parent else ("" if parent else None)
            for rel in implied:
                total += _DIR + (entry_cost(rel.rpartition("/")[2]) if rel else 0)
            out[base] = total
        return out


def _member_name(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def scan_layer(layer: Layer, store_dir: str = "/nix/store", on_bytes: Callable[[int], None] | None = None) -> LayerScan:
    """Read ``layer``'s tar stream once (``nixfly.image.tarstream``: its digest and diff_id checked at the end,
    each byte hashed once) and keep what it does under ``store_dir``: NAR costs per node, whiteouts. File
    contents are skipped."""
    store_rel = store_dir.strip("/") + "/"
    ops: list[_Put | _Out | _Link] = []
    seen: dict[str, int] = {}  # member name → cost of a regular file in this layer (for hard links)
    where = f"layer {layer.digest}"

    def locate(name: str) -> tuple[str, str] | None:
        if not name.startswith(store_rel):
            return None
        base, _, rel = name[len(store_rel) :].partition("/")
        return (base, rel) if _STORE_NAME.match(base) else None

    def consume(plain: BinaryIO) -> None:
        for m in members(plain):
            name = _member_name(m.name)
            parent, _, leaf = name.rpartition("/")
            if leaf.startswith(_WHITEOUT):
                target = parent if leaf == _OPAQUE else f"{parent}/{leaf[len(_WHITEOUT):]}".lstrip("/")
                hit = locate(target)
                if hit is not None:
                    ops.append((hit[0], hit[1], leaf == _OPAQUE))
                continue
            hit = locate(name)
            if hit is None:
                continue
            if m.kind == REG:
                cost = file_cost(m.size, bool(m.mode & 0o100))
                seen[name] = cost
            elif m.kind == DIR:
                cost = _DIR
            elif m.kind == SYM:
                cost = link_cost(m.linkname)
            elif m.kind == LNK:  # the same bytes as the member it names (Nix stores the file again)
                target = _member_name(m.linkname)
                linked = seen.get(target)
                if linked is None:  # a file of a lower layer: resolved when the layers are merged
                    lower = locate(target)
                    if lower is not None:
                        ops.append((hit[0], hit[1], lower))
                        continue
                cost = linked if linked is not None else file_cost(0, bool(m.mode & 0o100))
            else:  # devices and FIFOs cannot be in a NAR
                continue
            ops.append((hit[0], hit[1], cost))

    read_layer_stream(layer, consume, where=where, on_bytes=on_bytes)
    return LayerScan(tuple(ops))


class LayerReader:
    """Scans layers, each distinct digest once, so two images that share layers cost one read of them."""

    def __init__(self, store_dir: str = "/nix/store", on_bytes: Callable[[int], None] | None = None) -> None:
        self.store_dir = store_dir
        self.on_bytes = on_bytes
        self._scans: dict[str, LayerScan] = {}
        self.read_bytes = 0  # compressed bytes read

    def store_sizes(self, layers: Sequence[Layer]) -> dict[str, int]:
        """``/nix/store/<base>`` → NAR size for every store path the merged layers hold."""
        tree = StoreTree()
        for lyr in layers:
            scan = self._scans.get(lyr.digest)
            if scan is None:
                scan = self._scans[lyr.digest] = scan_layer(lyr, self.store_dir, self._count)
            tree.apply(scan)
        prefix = self.store_dir.rstrip("/") + "/"
        return {prefix + base: size for base, size in tree.nar_sizes().items()}

    def _count(self, n: int) -> None:
        self.read_bytes += n
        if self.on_bytes is not None:
            self.on_bytes(n)
