"""The image's file tree (``nixfly inspect --files``): each layer streamed once and checked (digest and
diff_id), entries merged as the container sees them (upper layers win, whiteouts delete).
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nixfly.errors import UsageError
from nixfly.image import Image
from nixfly.inspect.report import _WHITEOUT
from nixfly.inspect.stream import read_layer_tar

# ---------------------------------------------------------------------------------------------------------
# The file tree (``nixfly inspect --files``) and ``--why STORE_PATH``

_TYPE_CHARS = {"dir": "d", "file": "-", "symlink": "l", "hardlink": "h", "char": "c", "block": "b", "fifo": "p",
               "whiteout": "w"}  # fmt: skip


@dataclass(frozen=True)
class FileEntry:
    """One entry of an image's file tree as a layer's tar stream gives it."""

    path: str  # absolute, as the container sees it: "/etc/passwd"
    type: str  # dir, file, symlink, hardlink, char, block, fifo (whiteout in a single layer's listing)
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    target: str  # what a symlink points to / the path a hard link shares its bytes with
    layer: int  # 0-based index of the layer the entry comes from

    @property
    def mode_string(self) -> str:
        """``drwxrwxrwt``, as ``ls -l`` prints it."""
        bits = ""
        for shift, special, ch in ((6, 0o4000, "s"), (3, 0o2000, "s"), (0, 0o1000, "t")):
            r, w, x = (self.mode >> shift) & 4, (self.mode >> shift) & 2, (self.mode >> shift) & 1
            xc = "x" if x else "-"
            if self.mode & special:
                xc = ch if x else ch.upper()
            bits += ("r" if r else "-") + ("w" if w else "-") + xc
        return _TYPE_CHARS.get(self.type, "?") + bits

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "uname": self.uname,
            "gname": self.gname,
            "size": self.size,
            "target": self.target or None,
            "layer": self.layer,
        }


def _entry(m: tarfile.TarInfo, index: int) -> tuple[str, FileEntry]:
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    path = "/" + name.strip("/") if name.strip("/") not in ("", ".") else "/"
    if m.isdir():
        kind = "dir"
    elif m.issym():
        kind = "symlink"
    elif m.islnk():
        kind = "hardlink"
    elif m.ischr():
        kind = "char"
    elif m.isblk():
        kind = "block"
    elif m.isfifo():
        kind = "fifo"
    else:
        kind = "file"
    if path.rpartition("/")[2].startswith(_WHITEOUT):
        kind = "whiteout"
    target = m.linkname
    if kind == "hardlink":  # a hard link names another member of the same tar
        target = "/" + posixpath.normpath("/" + m.linkname).lstrip("/")
    size = m.size if kind == "file" else 0
    entry = FileEntry(path, kind, m.mode & 0o7777, m.uid, m.gid, m.uname, m.gname, size, target, index)
    return path, entry


def _walk_layer(
    index: int,
    layer: Any,
    visit: Callable[[tarfile.TarInfo, tarfile.TarFile], None],
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Stream one layer blob through ``visit`` (each member, with the tar to read its bytes), checking the
    blob's digest and diff_id on the way."""
    def consume(tf: tarfile.TarFile) -> None:
        for m in tf:
            visit(m, tf)

    read_layer_tar(f"layer {index + 1} ({layer.digest})", layer, consume=consume, on_bytes=on_bytes)


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


class _Tree:
    """The merged file tree of the layers read so far: upper layers replace entries, whiteouts delete."""

    def __init__(self) -> None:
        self.entries: dict[str, FileEntry] = {}
        self.refs: dict[str, frozenset[bytes]] = {}  # path → store hash parts its bytes / target mention

    def _remove(self, top: str, below_layer: int | None = None) -> None:
        for p in [p for p in self.entries if _under(p, top)]:
            if below_layer is None or self.entries[p].layer < below_layer:
                del self.entries[p]
                self.refs.pop(p, None)

    def add(self, path: str, entry: FileEntry, refs: frozenset[bytes] = frozenset()) -> None:
        parent, _, leaf = path.rpartition("/")
        parent = parent or "/"
        if entry.type == "whiteout":
            if leaf == _WHITEOUT + _WHITEOUT + ".opq":  # an opaque dir: what lower layers had in it is hidden
                keep = self.entries.get(parent)
                self._remove(parent, below_layer=entry.layer)
                if keep is not None:
                    self.entries[parent] = keep
                return
            self._remove(f"{parent.rstrip('/')}/{leaf[len(_WHITEOUT):]}")
            return
        old = self.entries.get(path)
        if old is not None and old.type == "dir" and entry.type != "dir":
            self._remove(path)
        self.entries[path] = entry
        self.refs[path] = refs


def list_files(
    image: Image,
    *,
    layer: int | None = None,
    path: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[FileEntry]:
    """The image's file tree, each entry with the layer it comes from (the merged view the container sees:
    upper layers win, whiteouts delete), sorted by path. With ``layer`` (0-based), only that layer's own
    entries, whiteouts included, and only that layer is read. ``path`` keeps that path and what is under it."""
    if layer is not None and not 0 <= layer < len(image.layers):
        raise UsageError(f"--layer {layer + 1}: the image has {len(image.layers)} layers")
    top = "/" + path.strip("/") if path else "/"
    tree = _Tree()
    own: list[FileEntry] = []
    for i, lyr in enumerate(image.layers):
        if layer is not None and i != layer:
            continue

        def visit(m: tarfile.TarInfo, tf: tarfile.TarFile, i: int = i) -> None:
            p, e = _entry(m, i)
            if layer is not None:
                own.append(e)
            else:
                tree.add(p, e)

        _walk_layer(i, lyr, visit, on_bytes)
    entries = own if layer is not None else list(tree.entries.values())
    found = sorted((e for e in entries if _under(e.path, top)), key=lambda e: e.path.encode())
    if path and not found:
        where = f"layer {layer + 1}" if layer is not None else "the image"
        raise UsageError(f"{top}: no such path in {where}")
    return found
