"""A registry's layer index: which of nixfly's layers a repository already holds, so a machine with an empty
layer cache (a fresh CI runner) compresses only the layers that are missing.

After a push, the repository gets (under its own tag, ``nixfly-layer-index``, never one of the image's) a
small OCI artifact: an empty config and one JSON blob mapping each layer's cache key — store paths,
settings, compressor identity and level, nixfly's layer-format version: everything that decides the
layer's bytes — to the layer's digest, diff_id, sizes and media type. A build that pushes there reads it
first; for a key it lists, the blob is HEADed in the repository and used only if the registry has it at
the listed size. Trust model: the index is exactly as trusted as the repository's tags — whoever can
push tags there could also push a different image — and every byte later read through it is still
verified against its digest. A missing, foreign or damaged index only means layers are built as usual.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nixfly.errors import NixflyError
from nixfly.image import Descriptor, Layer, canonical_json
from nixfly.image.digest import check_digest, sha256_digest
from nixfly.image.mediatypes import OCI_MANIFEST, compression_of
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference

INDEX_TAG = "nixfly-layer-index"
ARTIFACT_TYPE = "application/vnd.nixfly.layer-index.v1+json"
_EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
_EMPTY = b"{}"
_VERSION = 1
_MAX_ENTRIES = 4000  # newest first; an index of this size is a few hundred KiB
_MAX_BLOB = 8 << 20


@dataclass(frozen=True)
class IndexEntry:
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int | None
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "diff_id": self.diff_id, "size": self.size,
                "uncompressed_size": self.uncompressed_size, "media_type": self.media_type}  # fmt: skip

    @staticmethod
    def from_json(d: Any) -> IndexEntry:
        if not isinstance(d, dict) or not isinstance(d.get("size"), int) or d["size"] < 0:
            raise ValueError("bad entry")
        usize = d.get("uncompressed_size")
        if usize is not None and not isinstance(usize, int):
            raise ValueError("bad entry")
        mt = str(d.get("media_type", ""))
        compression_of(mt)
        return IndexEntry(check_digest(str(d.get("digest"))), check_digest(str(d.get("diff_id"))), d["size"], usize, mt)


def _entries_from(blob: bytes) -> dict[str, IndexEntry]:
    doc = json.loads(blob)
    if not isinstance(doc, dict) or doc.get("version") != _VERSION or not isinstance(doc.get("layers"), dict):
        raise ValueError("not a version-1 layer index")
    return {str(k): IndexEntry.from_json(v) for k, v in doc["layers"].items()}


class RegistryLayerIndex:
    """The layer index of one repository: ``lookup`` is what ``build_image(known=…)`` asks."""

    def __init__(self, ref: Reference, options: RegistryOptions | None = None,
                 client: RegistryClient | None = None) -> None:  # fmt: skip
        """``client``: the caller's client for ``ref``'s registry (one client for a whole push)."""
        self.ref = ref
        self.client = client or RegistryClient(ref.registry, options)
        self.entries: dict[str, IndexEntry] = {}
        self.note: str | None = None  # why the index could not be used, if it could not
        self._checked: dict[str, Layer | None] = {}
        self._lock = threading.Lock()

    def load(self) -> RegistryLayerIndex:
        """Read the index; a problem with the index leaves it empty (and says why in ``note``). A registry
        that cannot be reached at all (or refuses our credentials) is an error now: the push that follows
        would fail the same way, after a whole build."""
        repo = self.ref.repository
        if self.client.manifest_digest(repo, INDEX_TAG) is None:
            return self
        try:
            m = self.client.get_manifest(repo, INDEX_TAG, accept=OCI_MANIFEST)
            body = m.json()
            layers = body.get("layers")
            if body.get("artifactType") != ARTIFACT_TYPE or not isinstance(layers, list) or len(layers) != 1:
                self.note = f"{self.ref.name}:{INDEX_TAG} is not a nixfly layer index; ignored"
                return self
            blob = self.client.get_blob_bytes(repo, check_digest(str(layers[0].get("digest"))), _MAX_BLOB)
            self.entries = _entries_from(blob)
        except (NixflyError, ValueError, TypeError, AttributeError) as e:
            self.note = f"the layer index of {self.ref.name} could not be read ({e}); building every layer"
            self.entries = {}
        return self

    def lookup(self, key: str) -> Layer | None:
        """The registry's layer for this cache key, if the index lists it and the registry holds the blob at
        the listed size (one HEAD, remembered)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        with self._lock:
            if key in self._checked:
                return self._checked[key]
        from nixfly.sources.registry import RemoteLayer

        try:
            size = self.client.blob_size(self.ref.repository, entry.digest, push=True)
        except NixflyError:
            size = None
        layer: Layer | None = None
        if size == entry.size:
            layer = RemoteLayer(self.client, self.ref.repository, entry.digest, entry.diff_id, entry.size,
                                entry.media_type, entry.uncompressed_size)  # fmt: skip
        with self._lock:
            self._checked[key] = layer
        return layer

    def save(self, layers: Iterable[tuple[str, Layer]], ref: Reference | None = None,
             client: RegistryClient | None = None) -> None:  # fmt: skip
        """Record ``(cache key, layer)`` pairs (newest first) in the index of ``ref`` (default: this one's
        repository), keeping the entries already there that still fit."""
        target = ref or self.ref
        same = (target.registry, target.repository) == (self.ref.registry, self.ref.repository)
        if same:
            client, existing = self.client, self.entries
        else:
            other = RegistryLayerIndex(target, self.client.options, client=client).load()
            client, existing = other.client, other.entries
        fresh = {k: IndexEntry(lyr.digest, lyr.diff_id, lyr.size, lyr.uncompressed_size, lyr.media_type)
                 for k, lyr in layers if k}  # fmt: skip
        merged = {**fresh, **{k: v for k, v in existing.items() if k not in fresh}}
        kept = dict(list(merged.items())[:_MAX_ENTRIES])
        blob = canonical_json({"version": _VERSION, "layers": {k: v.to_json() for k, v in kept.items()}})
        blob_desc = Descriptor(ARTIFACT_TYPE, sha256_digest(blob), len(blob))
        empty = Descriptor(_EMPTY_TYPE, sha256_digest(_EMPTY), len(_EMPTY))
        repo = target.repository
        for d, data in ((empty, _EMPTY), (blob_desc, blob)):
            if client.blob_size(repo, d.digest, push=True) is None:
                client.upload_blob(repo, d.digest, d.size, lambda data=data: io.BytesIO(data))  # type: ignore[misc]
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": empty.to_json(), "layers": [blob_desc.to_json()],
        })  # fmt: skip
        client.put_manifest(repo, INDEX_TAG, manifest, OCI_MANIFEST)
        if same:
            self.entries = kept
