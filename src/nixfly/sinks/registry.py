"""The registry sink: push an ``Image`` — exactly its manifest — to one or more references.

Blobs go first (only the missing ones), the manifest last. Layers are uploaded in parallel (bounded by
``RegistryOptions.parallel``) from whatever each layer's ``compressed()`` reads (the layer cache, a layout,
another registry), then the config, then the manifest under each tag. A blob the repository already has
is skipped after a HEAD; a layer that lives in another repository of the same registry (a
``Mountable`` layer, or one of ``mount_from``) is mounted. Re-running an interrupted push therefore uploads
only what is still missing. The sink never converts: choosing a format is a mutation done before it
(``nixfly.image.convert.with_format``), so the digest it returns is the one the caller printed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Literal

from nixfly.errors import UsageError
from nixfly.image import Image, Layer
from nixfly.image.convert import with_format
from nixfly.image.digest import sha256_digest
from nixfly.image.index import ImageIndex
from nixfly.image.mediatypes import ManifestFormat
from nixfly.image.model import BlobOrigin, Mountable
from nixfly.registry.client import ProgressFn, RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference, parse_reference

BlobOutcome = Literal["uploaded", "skipped", "mounted"]


@dataclass(frozen=True)
class PushResult:
    """What a push did. ``reference`` is the digest-pinned ``name@sha256:…`` that deploy consumes."""

    digest: str
    reference: str
    references: tuple[str, ...]  # every ref pushed, as name:tag (or name@digest)
    media_type: str
    format: ManifestFormat
    uploaded_bytes: int  # blob body bytes sent, retransmissions included
    uploaded_blobs: int
    skipped_blobs: int  # already present
    mounted_blobs: int

    def to_json(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "reference": self.reference,
            "references": list(self.references),
            "media_type": self.media_type,
            "format": self.format,
            "uploaded_bytes": self.uploaded_bytes,
            "uploaded_blobs": self.uploaded_blobs,
            "skipped_blobs": self.skipped_blobs,
            "mounted_blobs": self.mounted_blobs,
        }


class PushProgress:
    """Hooks a caller can implement to show progress; the default does nothing."""

    def blob_started(self, digest: str, size: int) -> None:
        pass

    def blob_advanced(self, digest: str, completed: int) -> None:
        pass

    def blob_finished(self, digest: str, outcome: BlobOutcome) -> None:
        pass

    def blob_note(self, digest: str, text: str) -> None:
        """Something worth a line about a transfer (e.g. the registry lost the session: restarting)."""


def push_image(
    image: Image,
    refs: Sequence[str | Reference],
    *,
    fmt: ManifestFormat | None = None,
    options: RegistryOptions | None = None,
    mount_from: Sequence[str] = (),
    progress: PushProgress | None = None,
) -> PushResult:
    """Push ``image`` to every reference in ``refs`` (several tags, or repositories, at once).

    ``fmt``, when given, converts the image first (a new image, a new digest); otherwise the image's own manifest is
    pushed byte for byte. Promises: no manifest is written before every blob it names is confirmed present in that
    repository; blobs the repository already holds are not uploaded again; the returned digest is the one the
    registry confirmed for the manifest. Raises RegistryError (one line, no secrets) on failure.
    """
    if fmt is not None:
        image = with_format(image, fmt)

    def blobs(client: RegistryClient, repo: str, prog: PushProgress, totals: dict[str, int]) -> None:
        _push_blobs(client, repo, image, mount_from, prog, totals)

    return _push_manifest(refs, image.manifest_bytes(), image.media_type, image.format, blobs, options, progress,
                          "the image's manifest digest")  # fmt: skip


def push_index(
    index: ImageIndex,
    refs: Sequence[str | Reference],
    *,
    options: RegistryOptions | None = None,
    progress: PushProgress | None = None,
) -> PushResult:
    """Push a multi-platform ``index`` (exactly its bytes and its images') to every reference in ``refs``.

    Per repository: every image's blobs first, then every platform manifest (by digest), then the index under
    each tag — so no manifest is written before what it names is there. Returns the index's digest."""
    def blobs(client: RegistryClient, repo: str, prog: PushProgress, totals: dict[str, int]) -> None:
        for image in index.images():
            _push_blobs(client, repo, image, (), prog, totals)
        for image in index.images():
            client.put_manifest(repo, image.manifest_digest(), image.manifest_bytes(), image.media_type)

    return _push_manifest(refs, index.manifest_bytes(), index.media_type, index.format, blobs, options, progress,
                          "the index's digest")  # fmt: skip


def _push_manifest(
    refs: Sequence[str | Reference],
    data: bytes,
    media_type: str,
    fmt: ManifestFormat,
    put_blobs: Callable[[RegistryClient, str, PushProgress, dict[str, int]], None],
    options: RegistryOptions | None,
    progress: PushProgress | None,
    what: str,
) -> PushResult:
    """Per repository (one client per registry): ``put_blobs`` first, then the manifest ``data`` under
    every tag — so no manifest is written before what it names is there."""
    if not refs:
        raise UsageError("push needs at least one destination reference")
    parsed = [parse_reference(r) if isinstance(r, str) else r for r in refs]
    digest = sha256_digest(data)
    for r in parsed:
        if r.digest and r.digest != digest:
            raise UsageError(f"{r} names digest {r.digest}, but {what} is {digest}")
    opts = options or RegistryOptions()
    prog = progress or PushProgress()
    clients: dict[str, RegistryClient] = {}
    totals = {"uploaded": 0, "bytes": 0, "skipped": 0, "mounted": 0}
    pushed: list[str] = []
    try:
        repos: dict[tuple[str, str], list[Reference]] = {}
        for r in parsed:
            repos.setdefault((r.registry, r.repository), []).append(r)
        for (registry, repo), group in repos.items():
            client = clients.get(registry) or clients.setdefault(registry, RegistryClient(registry, opts))
            put_blobs(client, repo, prog, totals)
            for r in group:
                client.put_manifest(repo, r.tag or r.digest or digest, data, media_type)
                pushed.append(f"{r.name}:{r.tag}" if r.tag else f"{r.name}@{digest}")
    finally:
        for c in clients.values():
            c.close()
    return PushResult(
        digest=digest,
        reference=parsed[0].pinned(digest),
        references=tuple(pushed),
        media_type=media_type,
        format=fmt,
        uploaded_bytes=totals["bytes"],
        uploaded_blobs=totals["uploaded"],
        skipped_blobs=totals["skipped"],
        mounted_blobs=totals["mounted"],
    )


def _push_blobs(
    client: RegistryClient,
    repo: str,
    image: Image,
    mount_from: Sequence[str],
    prog: PushProgress,
    totals: dict[str, int],
) -> None:
    layers = list({lyr.digest: lyr for lyr in image.layers}.values())

    def one(
        digest: str, size: int, opener: Callable[[], BinaryIO], origin: BlobOrigin | None = None
    ) -> tuple[BlobOutcome, int]:
        prog.blob_started(digest, size)
        if client.has_blob(repo, digest, size, push=True):
            prog.blob_finished(digest, "skipped")
            return "skipped", 0
        location = None
        sources = list(mount_from)
        if origin is not None and origin.registry == client.registry and origin.repository not in sources:
            sources.insert(0, origin.repository)
        for src in sources:
            if src == repo:
                continue
            location = client.mount_blob(repo, digest, src)
            if location is None:
                prog.blob_finished(digest, "mounted")
                return "mounted", 0
            break  # the registry started an ordinary upload session instead: use it
        advanced: ProgressFn = prog.blob_advanced
        sent = client.upload_blob(repo, digest, size, opener, location=location, progress=advanced, note=prog.blob_note)
        prog.blob_finished(digest, "uploaded")
        return "uploaded", sent

    def account(outcome: BlobOutcome, sent: int) -> None:
        totals[outcome] += 1
        totals["bytes"] += sent

    workers = max(1, min(client.options.parallel, len(layers) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nixfly-push") as pool:
        futures = [pool.submit(one, lyr.digest, lyr.size, lyr.compressed, _origin(lyr)) for lyr in layers]
        try:
            for fut in futures:
                account(*fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    # The config goes after the layers and before the manifest.
    # A config read from a registry lives where its layers do: mount it from there too.
    origins = {_origin(lyr) for lyr in image.layers}
    cfg_origin = origins.pop() if len(origins) == 1 else None
    cfg = image.config_bytes
    account(*one(image.config_digest, len(cfg), lambda: io.BytesIO(cfg), cfg_origin))


def _origin(layer: Layer) -> BlobOrigin | None:
    return layer.origin if isinstance(layer, Mountable) else None
