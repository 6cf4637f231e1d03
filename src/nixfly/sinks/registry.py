"""The registry sink: push an ``Image`` — exactly its manifest — to one or more references.

Blobs go first (only the missing ones), the manifest last. Layers are uploaded in parallel (bounded by
``RegistryOptions.parallel``) from whatever each layer's ``compressed()`` reads (the layer cache, a layout,
another registry), then the config, then the manifest under each tag. A blob the repository already has
is skipped after a HEAD; a layer that lives in another repository of the same registry (a
``Mountable`` layer, or one of ``mount_from``) is mounted. Re-running an interrupted push therefore uploads
only what is still missing. The sink never converts: choosing a format is a mutation done before it
(``nixfly.image.convert.with_format``), so the digest it returns is the one the caller printed.

A build that pushes starts sending blobs before the image exists: :class:`EarlyUploads` takes each layer as
soon as its compression starts (the blob streams from the growing cache file in chunks; the digest comes
with the last one) or, for a layer already made, as soon as its digest is known; ``push_image(early=…)``
then sends only what is left.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from nixfly.errors import RegistryError, UsageError
from nixfly.image import Image, Layer
from nixfly.image.convert import with_format
from nixfly.image.digest import sha256_digest
from nixfly.image.growing import GrowingBlob, GrowingReader
from nixfly.image.index import ImageIndex
from nixfly.image.mediatypes import ManifestFormat
from nixfly.image.model import BlobOrigin, Mountable
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.registry.reference import Reference, parse_reference
from nixfly.registry.wire import ProgressFn

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
    early: EarlyUploads | None = None,
    clients: Mapping[str, RegistryClient] | None = None,
) -> PushResult:
    """Push ``image`` to every reference in ``refs`` (several tags, or repositories, at once).

    ``fmt``, when given, converts the image first (a new image, a new digest); otherwise the image's own manifest is
    pushed byte for byte. Promises: no manifest is written before every blob it names is confirmed present in that
    repository; blobs the repository already holds are not uploaded again; the returned digest is the one the
    registry confirmed for the manifest. Raises RegistryError (one line, no secrets) on failure. With
    ``early`` (uploads started during the build), it waits for them and does not send again what they sent.
    """
    if fmt is not None:
        image = with_format(image, fmt)
    done: Mapping[str, tuple[BlobOutcome, int]] = {}
    shared: dict[str, RegistryClient] = dict(clients or {})
    if early is not None:
        done = early.finish()
        shared[early.client.registry] = early.client

    def blobs(client: RegistryClient, repo: str, prog: PushProgress, totals: dict[str, int]) -> None:
        here = early is not None and client is early.client and repo == early.repository
        _push_blobs(client, repo, image, mount_from, prog, totals, done if here else {})

    try:
        return _push_manifest(refs, image.manifest_bytes(), image.media_type, image.format, blobs, options,
                              progress, "the image's manifest digest", shared)  # fmt: skip
    finally:
        if early is not None:
            early.close()


def push_index(
    index: ImageIndex,
    refs: Sequence[str | Reference],
    *,
    options: RegistryOptions | None = None,
    progress: PushProgress | None = None,
    clients: Mapping[str, RegistryClient] | None = None,
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
                          "the index's digest", clients)  # fmt: skip


def _push_manifest(
    refs: Sequence[str | Reference],
    data: bytes,
    media_type: str,
    fmt: ManifestFormat,
    put_blobs: Callable[[RegistryClient, str, PushProgress, dict[str, int]], None],
    options: RegistryOptions | None,
    progress: PushProgress | None,
    what: str,
    clients: Mapping[str, RegistryClient] | None = None,
) -> PushResult:
    """Per repository (one client per registry): ``put_blobs`` first, then the manifest ``data`` under
    every tag — so no manifest is written before what it names is there. ``clients`` are the caller's (one
    per registry, kept open); the ones made here are closed here."""
    if not refs:
        raise UsageError("push needs at least one destination reference")
    parsed = [parse_reference(r) if isinstance(r, str) else r for r in refs]
    digest = sha256_digest(data)
    for r in parsed:
        if r.digest and r.digest != digest:
            raise UsageError(f"{r} names digest {r.digest}, but {what} is {digest}")
    opts = options or RegistryOptions()
    prog = progress or PushProgress()
    given = dict(clients or {})
    clients = dict(given)
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
        for registry, c in clients.items():
            if given.get(registry) is not c:
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
    done: Mapping[str, tuple[BlobOutcome, int]] | None = None,
) -> None:
    done = done or {}
    layers = list({lyr.digest: lyr for lyr in image.layers}.values())

    def one(
        digest: str, size: int, opener: Callable[[], BinaryIO], origin: BlobOrigin | None = None
    ) -> tuple[BlobOutcome, int]:
        return _push_blob(client, repo, digest, size, opener, origin, mount_from, prog)

    def account(outcome: BlobOutcome, sent: int) -> None:
        totals[outcome] += 1
        totals["bytes"] += sent

    for digest in {lyr.digest for lyr in layers} & done.keys():
        account(*done[digest])
    layers = [lyr for lyr in layers if lyr.digest not in done]
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


def _push_blob(
    client: RegistryClient,
    repo: str,
    digest: str,
    size: int,
    opener: Callable[[], BinaryIO],
    origin: BlobOrigin | None,
    mount_from: Sequence[str],
    prog: PushProgress,
) -> tuple[BlobOutcome, int]:
    """One blob whose digest is known: skip it (HEAD), mount it, or upload it."""
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


class EarlyUploads:
    """Blob uploads to one repository that start while the image is still being built.

    ``layer_growing`` takes a layer whose compression has just started: once a whole chunk is written it is
    sent (PATCH by PATCH, as the compressor goes), and the digest goes with the final PUT — so on a slow link
    the upload finishes about when the last byte could have been sent, not a whole build later. A blob that is
    done before its first chunk is full (a small layer) is treated like a finished one. ``layer_ready`` takes a
    layer that was already made (the local cache) or is already in the registry (its layer index): HEAD, then
    upload if missing. Uploads run ``options.parallel`` at a time, in the order offered (the build offers the
    largest first); the compressors never wait for the wire (the cache file is the buffer, on disk) and an
    upload that catches up with its compressor waits for the next chunk, so neither the CPU nor the wire idles
    while the other has work. The first failure stops taking new work and is raised by ``check``/``finish``.
    """

    def __init__(self, ref: Reference, options: RegistryOptions | None = None, progress: PushProgress | None = None,
                 client: RegistryClient | None = None):  # fmt: skip
        """``client``: the caller's client for ``ref``'s registry (kept open), else one of our own."""
        self.ref = ref
        self.repository = ref.repository
        self._own_client = client is None
        self.client = client or RegistryClient(ref.registry, options or RegistryOptions())
        self._prog = progress or PushProgress()
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.client.options.parallel),
                                        thread_name_prefix="nixfly-early")  # fmt: skip
        self._done: dict[str, tuple[BlobOutcome, int]] = {}
        self._growing: list[GrowingBlob] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False

    def check(self) -> None:
        """Raise the first upload failure, if there was one (the build calls this to stop early)."""
        if self._error is not None:
            raise self._error

    def _submit(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            if self._error is not None:
                return
            try:
                fn()
            except BaseException as e:  # kept, and raised by check() or finish()
                with self._lock:
                    if self._error is None:
                        self._error = e

        with self._lock:
            if self._closed:
                return
            self._pool.submit(run)

    def _record(self, digest: str, outcome: BlobOutcome, sent: int) -> None:
        with self._lock:
            self._done[digest] = (outcome, sent)

    def layer_ready(self, layer: Layer) -> None:
        self.check()
        if not layer.digest or layer.digest in self._done:
            return
        origin = _origin(layer)

        def one() -> None:
            outcome, sent = _push_blob(self.client, self.repository, layer.digest, layer.size, layer.compressed,
                                       origin, (), self._prog)  # fmt: skip
            self._record(layer.digest, outcome, sent)

        self._submit(one)

    def already_there(self, layer: Layer) -> None:
        """A layer the build found in this repository already (its layer index, checked by a HEAD)."""
        self._record(layer.digest, "skipped", 0)

    def layer_growing(self, blob: GrowingBlob) -> None:
        """Upload ``blob`` as it grows; it is ours from here on (closed by :meth:`finish` or :meth:`abort`),
        unless this raises the first failure of an earlier upload."""
        self.check()
        with self._lock:
            self._growing.append(blob)
            closed = self._closed
        if closed:  # after finish() or abort(): nothing would ever take it
            self._give_up(blob)
            self.check()
            return

        def one() -> None:
            try:
                blob.wait(self.client.options.chunk_size)
                if blob.done and blob.digest is not None and blob.size is not None:
                    outcome, sent = _push_blob(self.client, self.repository, blob.digest, blob.size,
                                               lambda: cast(BinaryIO, GrowingReader(blob)), None, (),
                                               self._prog)  # fmt: skip
                    self._record(blob.digest, outcome, sent)
                    return
                key = f"stream:{blob.label}#{id(blob)}"  # no digest yet: named by what it holds
                self._prog.blob_started(key, 0)
                digest, sent = self.client.upload_growing(
                    self.repository, blob, progress=lambda n: self._prog.blob_advanced(key, n),
                    note=lambda _d, text: self._prog.blob_note(key, text),
                )
                self._prog.blob_finished(key, "uploaded")
                self._record(digest, "uploaded", sent)
            finally:
                blob.close()

        self._submit(one)

    def finish(self) -> dict[str, tuple[BlobOutcome, int]]:
        """Wait for every upload; returns digest → (outcome, bytes sent). Raises the first failure. Calling it
        again returns the same answer."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
        self._close_blobs()
        self.check()
        return dict(self._done)

    def abort(self) -> None:
        """Stop (the build failed or was interrupted): pending uploads are dropped and the client is closed,
        which ends the running ones at their next request; nothing waits for the wire. Every growing blob is
        failed (an upload waiting for its bytes stops) and closed, so its held pieces go back to the process's
        budget and its descriptor is closed, whether or not its upload ever started."""
        with self._lock:
            self._closed = True
            if self._error is None:
                self._error = RegistryError("push abandoned")
        self._pool.shutdown(wait=False, cancel_futures=True)
        for blob in self._blobs():
            self._give_up(blob)
        self.close()

    def close(self) -> None:
        """Close the client, if it is our own."""
        if self._own_client:
            self.client.close()

    def _blobs(self) -> list[GrowingBlob]:
        with self._lock:
            return list(self._growing)

    def _close_blobs(self) -> None:
        for blob in self._blobs():
            blob.close()

    @staticmethod
    def _give_up(blob: GrowingBlob) -> None:
        blob.fail("push abandoned")
        blob.close()


def _origin(layer: Layer) -> BlobOrigin | None:
    return layer.origin if isinstance(layer, Mountable) else None
