"""The remote file system: a look at remote store paths (listings, file heads, symlinks) without
unpacking them, for the platform check and the build's customisation of paths that are not local.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nixfly.build.bincache.narinfo import BinaryCacheError
from nixfly.build.bincache.store import RemoteStore, listing_item
from nixfly.errors import NixflyError
from nixfly.fsutil import atomic_write_text
from nixfly.limits import NAR_LISTING_MAX

# ---------------------------------------------------------------------------------------------------
# a look at remote paths without unpacking them


_HEAD = 64


class RemoteFS:
    """``customise``'s and the platform guard's view of the store: local paths through ``os.path``,
    remote ones through a listing read from their NAR (entries two levels deep, ``etc/`` five, the first
    bytes of ``bin/`` and ``sbin/`` files). A path that is not a root only needs ``bin`` and ``etc``, so
    its NAR is read only until the entries sort past ``etc``. Listings are remembered under the cache
    dir (store paths never change), so a rebuild reads no NAR; a NAR that does not verify fails the
    build when its layer is written, so a listing never outlives a bad NAR in a finished image."""

    def __init__(
        self, store: RemoteStore, full: Iterable[str], cache_dir: Path | None, store_dir: str,
        roots: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.full = set(full)
        self.roots = set(roots)
        self.cache_dir = cache_dir
        self.store_dir = store_dir.rstrip("/")
        self._listings: dict[str, tuple[bool, dict[str, list[str]], dict[str, list[str]]]] = {}
        self._lock = threading.Lock()

    # -- listings --------------------------------------------------------------------------------

    def _from_ls(self, path: str) -> dict[str, list[str]] | None:
        """The listing from the cache's ``<hash>.ls`` (``nix copy --to '…?write-nar-listing=true'``;
        cache.nixos.org has them), when there is one: no NAR is read then."""
        ni = self.store.narinfos[path]
        cache = self.store._cache(ni)
        try:
            data = cache.get(path.rsplit("/", 1)[-1].split("-", 1)[0] + ".ls", NAR_LISTING_MAX, "NAR listing")
            if data is None:
                return None
            root = json.loads(data)["root"]
        except (BinaryCacheError, ValueError, KeyError, TypeError, RecursionError):
            return None
        entries: dict[str, list[str]] = {}
        kinds = {"regular": "f", "symlink": "l", "directory": "d"}
        stack: list[tuple[str, Any]] = [("", root)]
        while stack:
            rel, node = stack.pop()
            if not isinstance(node, dict) or node.get("type") not in kinds:
                return None
            kind = kinds[node["type"]]
            if kind == "f" and node.get("executable"):
                kind = "x"
            target = node.get("target", "") if kind == "l" else ""
            if not isinstance(target, str):
                return None
            entries[rel] = [kind, target]
            if kind == "d":
                children = node.get("entries", {})
                if not isinstance(children, dict):
                    return None
                parts = rel.split("/") if rel else []
                for name, child in children.items():
                    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                        return None
                    depth = len(parts) + 1
                    if depth <= 2 or (parts and parts[0] == "etc" and depth <= 5):
                        stack.append((f"{rel}/{name}" if rel else name, child))
        return entries

    def _read(self, path: str, full: bool) -> tuple[bool, dict[str, list[str]]]:
        if path not in self.roots:  # roots need the first bytes of bin/ files: those only a NAR has
            listed = self._from_ls(path)
            if listed is not None:
                return True, listed
        entries: dict[str, list[str]] = {}
        root = path.strip("/").encode()
        complete = True
        gen = self.store.entries(path, root)
        try:
            for e in gen:
                if not full and e.name != root and e.name[len(root) + 1 :].split(b"/", 1)[0] > b"etc":
                    complete = False
                    break
                item = listing_item(e, root)
                if item is None:
                    continue
                rel, (kind, extra) = item
                parts = rel.split("/")
                if e.type == b"0" and len(parts) == 2 and parts[0] in ("bin", "sbin"):
                    extra = base64.b64encode(self.store.read_head(e, _HEAD)).decode()
                entries[rel] = [kind, extra]
        finally:
            gen.close()
        return complete, entries

    def has_complete_listing(self, path: str) -> bool:
        with self._lock:
            got = self._listings.get(path)
        return got is not None and got[0]

    def keep_listing(self, path: str, entries: dict[str, list[str]]) -> None:
        """A complete listing noted while the path's layer was written (and its NAR verified)."""
        self._store(path, True, entries)

    def _file(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (path.rsplit("/", 1)[-1].split("-", 1)[0] + ".json")

    def has_listing(self, path: str) -> bool:
        f = self._file(path)
        return path in self._listings or (f is not None and f.exists())

    def listing(self, path: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(entries by relative path, child names by relative directory) of a remote path."""
        full = path in self.full
        with self._lock:
            got = self._listings.get(path)
        if got is not None and (got[0] or not full):
            return got[1], got[2]
        complete, entries = False, {}
        f = self._file(path)
        loaded = False
        if f is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(f.read_bytes())
                complete, entries = bool(data["complete"]), dict(data["entries"])
                loaded = complete or not full
        if not loaded:
            complete, entries = self._read(path, full)
            return self._store(path, complete, entries)
        return self._store(path, complete, entries, write=False)

    def _store(
        self, path: str, complete: bool, entries: dict[str, list[str]], write: bool = True
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        f = self._file(path)
        if write and f is not None:
            with contextlib.suppress(OSError, NixflyError):
                f.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(f, json.dumps({"complete": complete, "entries": entries}), durable=False)
        children: dict[str, list[str]] = {}
        for rel in entries:
            if rel:
                parent, _, name = rel.rpartition("/")
                children.setdefault(parent, []).append(name)
        with self._lock:
            self._listings[path] = (complete, entries, children)
        return entries, children

    def prefetch(self, paths: Iterable[str], jobs: int) -> None:
        """Read the listings of ``paths`` (remote ones), ``jobs`` at a time: the decompressors run in
        parallel, and a search through the closure (CA certificates, /bin/sh) then finds them ready."""
        todo = [p for p in dict.fromkeys(paths) if self.store.covers(p)]
        if len(todo) <= 1 or jobs <= 1:
            for p in todo:
                self.listing(p)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for fut in [pool.submit(self.listing, p) for p in todo]:
                fut.result()

    # -- path resolution -------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[str, list[str]] | None:
        prefix = self.store_dir + "/"
        if not path.startswith(prefix):
            return None
        top, _, rest = path[len(prefix) :].partition("/")
        return prefix + top, [c for c in rest.split("/") if c and c != "."]

    def _resolve(self, path: str, follow: bool) -> tuple[bool, str, list[str] | None]:
        """Follow symlinks through remote listings: (False, path, None) once the path leaves the remote
        paths (the OS answers for it), else (True, resolved path, its entry or None if absent)."""
        for _ in range(40):
            path = os.path.normpath(path)
            sp = self._split(path)
            if sp is None or not self.store.covers(sp[0]):
                return False, path, None
            top, comps = sp
            entries, _children = self.listing(top)
            for i in range(len(comps) + 1):
                rel = "/".join(comps[:i])
                e = entries.get(rel)
                if e is None:
                    return True, path, None
                last = i == len(comps)
                if e[0] == "l" and (not last or follow):
                    path = os.path.join(os.path.dirname(top + ("/" + rel if rel else "")), e[1], *comps[i + 1 :])
                    break
                if not last and e[0] != "d":
                    return True, path, None
            else:
                return True, path, e
        return True, path, None  # a symlink loop

    def isdir(self, path: str) -> bool:
        remote, p, e = self._resolve(path, True)
        return e is not None and e[0] == "d" if remote else os.path.isdir(p)

    def islink(self, path: str) -> bool:
        remote, p, e = self._resolve(path, False)
        return e is not None and e[0] == "l" if remote else os.path.islink(p)

    def lexists(self, path: str) -> bool:
        remote, p, e = self._resolve(path, False)
        return e is not None if remote else os.path.lexists(p)

    def isfile(self, path: str) -> bool:
        remote, p, e = self._resolve(path, True)
        if not remote:
            return os.path.exists(p) and not os.path.isdir(p)
        if e is not None:
            return e[0] != "d"
        # Deeper than a listing goes (two levels, etc/ five): not known without the NAR; say yes, the
        # layer is written from the NAR whatever this answers.
        sp = self._split(p)
        comps = sp[1] if sp is not None else []
        return len(comps) > 2 and not (comps[0] == "etc" and len(comps) <= 5)

    def listdir(self, path: str) -> list[str]:
        remote, p, e = self._resolve(path, True)
        if not remote:
            return os.listdir(p)
        if e is None or e[0] != "d":
            raise BinaryCacheError(f"{path}: not a directory in its NAR")
        sp = self._split(p)
        assert sp is not None
        _entries, children = self.listing(sp[0])
        return sorted(children.get("/".join(sp[1]), []))

    def bin_heads(self, root: str) -> list[tuple[str, bytes]]:
        """(file, first bytes) of the regular files directly in a remote root's bin/ and sbin/."""
        entries, _c = self.listing(root)
        out = []
        for rel, (kind, extra) in sorted(entries.items()):
            parts = rel.split("/")
            if len(parts) == 2 and parts[0] in ("bin", "sbin") and kind in ("f", "x"):
                out.append((f"{root}/{rel}", base64.b64decode(extra)))
        return out
