"""``nixfly inspect --why STORE_PATH``: the files that refer to a store path and the shortest chain of
references that pulls it in, from one pass over the layers.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nixfly.errors import UsageError
from nixfly.image import Image
from nixfly.inspect.files import FileEntry, _entry, _Tree, _under, _walk_layer
from nixfly.inspect.report import _Scan, reference_chains, store_name


@dataclass(frozen=True)
class WhyReport:
    """Why a store path is in the image: the chain from a top-level path, and the files that refer to it."""

    store_path: str
    size: int
    chain: tuple[str, ...]
    referrers: tuple[FileEntry, ...]  # files (in the store or not) whose bytes or link target name it

    def to_json(self) -> dict[str, Any]:
        return {
            "store_path": self.store_path,
            "size": self.size,
            "chain": list(self.chain),
            "files": [e.to_json() for e in self.referrers],
        }


def why(
    image: Image, store_path: str, *, store_dir: str = "/nix/store", on_bytes: Callable[[int], None] | None = None
) -> WhyReport:
    """Which files refer to ``store_path`` (a full path, its base name or its name, e.g. ``openssl-3.0.13``)
    and the shortest chain of references that pulls it in. One pass over the layers: every regular file's
    bytes and every symlink target are scanned for store hash parts, as Nix finds references."""
    scan = _Scan(store_dir, with_references=True)
    tree = _Tree()
    for i, lyr in enumerate(image.layers):

        def visit(m: tarfile.TarInfo, tf: tarfile.TarFile, i: int = i) -> None:
            p, e = _entry(m, i)
            found: set[bytes] = set()
            if e.type == "file":
                scan._scan_content(tf, m, found)
            elif e.type == "symlink":
                found.update(scan.link_re.findall(m.linkname.encode("utf-8", "surrogateescape")))
            tree.add(p, e, frozenset(found))

        _walk_layer(i, lyr, visit, on_bytes)
    prefix = "/" + scan.store_rel + "/"
    bases: dict[str, dict[str, FileEntry]] = {}
    for p, e in tree.entries.items():
        hit = scan.store_base(p.lstrip("/"))
        if hit is not None:
            bases.setdefault(hit[0], {})[p] = e
    want = store_path.rstrip("/").removeprefix(prefix).split("/", 1)[0]
    matches = sorted(b for b in bases if want in (b, store_name(b)))
    if not matches:
        matches = sorted(b for b in bases if store_name(b).startswith(want + "-"))
    if len(matches) != 1:
        if not matches:
            raise UsageError(f"--why {store_path}: no such store path in the image")
        raise UsageError(f"--why {store_path} is ambiguous: {', '.join(prefix + b for b in matches)}")
    target = matches[0]
    by_hash = {b[:32].encode(): prefix + b for b in bases}
    graph: dict[str, list[str]] = {}
    for b, files in bases.items():
        hashes = {h for f in files for h in tree.refs.get(f, ())}
        graph[prefix + b] = sorted({by_hash[h] for h in hashes if h in by_hash} - {prefix + b})
    _tops, chains = reference_chains(graph)
    h = target[:32].encode()
    own = prefix + target
    referrers = tuple(
        sorted(
            (e for p, e in tree.entries.items() if h in tree.refs.get(p, ()) and not _under(p, own)),
            key=lambda e: e.path.encode(),
        )
    )
    size = sum(e.size for e in bases[target].values())
    return WhyReport(own, size, chains[own], referrers)
