"""Blob uploads, the state machine: one PUT for a small blob, PATCH chunks for a large one, and a blob still
being written (``GrowingBlob``) sent chunk by chunk as its compressor writes it, the digest on the final
PUT. After any failure the registry is asked what it holds (the blob, or the session's ``Range``) and the
upload carries on from there; a lost session restarts from byte 0. Every byte sent is checked against the
digest once — hashed here, unless the source checks it itself (``CheckedReader``: a layer's ``compressed()``,
a growing blob's reader) — and nothing is committed whose bytes do not match it.

The HTTP side (auth, single requests, TLS) is the client's: this module asks it through ``UploadClient``,
the few calls it needs, so it never imports ``client.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO, Protocol, cast

import httpx

from nixfly.errors import ImageError, RegistryError
from nixfly.image.digest import CheckedReader
from nixfly.image.growing import GrowingBlob, GrowingReader
from nixfly.limits import DEFAULT_MAX
from nixfly.registry.options import RegistryOptions
from nixfly.registry.wire import IO_CHUNK, NoteFn, ProgressFn, parse_range, registry_error_text
from nixfly.retry import RetryPolicy, Transient


class UploadClient(Protocol):
    """What an upload needs of ``RegistryClient``."""

    options: RegistryOptions
    policy: RetryPolicy

    def _attempt(
        self,
        method: str,
        path_or_url: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        repeatable: bool,
        limit: int = DEFAULT_MAX,
    ) -> httpx.Response: ...

    def fail(self, what: str) -> RegistryError: ...

    def retry_notice(self, failure: Transient, seconds: float) -> None: ...

    def push_scope(self, repo: str, *mount_from: str) -> str: ...

    def has_blob(self, repo: str, digest: str, size: int, *, push: bool = False) -> bool: ...

    def start_upload(self, repo: str) -> str: ...


def upload_blob(
    client: UploadClient,
    repo: str,
    digest: str,
    size: int,
    opener: Callable[[], BinaryIO],
    *,
    location: str | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> int:
    """Upload a blob; returns how many body bytes were sent (retransmissions included).

    Small blobs go in one PUT, large ones in PATCH chunks. After any failure we ask the registry what
    it already has (the blob itself, or how far the session got) and carry on from there; only when the
    registry forgot the session does the blob start again from byte 0 (``note`` is told). The retry
    budget resets whenever the registry confirms bytes it had not confirmed before, so a push fails
    only when the registry stops making progress. The bytes read are hashed: if they do not match
    ``digest`` the upload is abandoned with an ImageError.
    """
    state = _UploadState(digest, size, opener, progress)
    state.location = location

    def attempt() -> int:
        try:
            if state.failed and _resync(client, repo, state, note):
                return state.sent  # the registry finished it even though we did not hear back
            if state.location is None:
                state.location = client.start_upload(repo)
                state.offset = 0
            if state.offset == 0 and size <= client.options.monolithic_max:
                _put_whole(client, repo, state)
            else:
                _put_chunks(client, repo, state)
            return state.sent
        except Transient:
            state.failed = True
            raise

    try:
        return client.policy.run(
            attempt,
            progress=lambda: state.confirmed,  # grows with every byte the registry confirms
            on_retry=client.retry_notice,
        give_up=lambda t, n: client.fail(f"upload of {digest} to {repo} failed after {n} attempts: {t.what}"),
        )
    finally:
        state.close()

def upload_growing(
    client: UploadClient,
    repo: str,
    blob: GrowingBlob,
    *,
    progress: Callable[[int], None] | None = None,
    note: NoteFn | None = None,
) -> tuple[str, int]:
    """Upload a blob while its writer is still producing it: a PATCH per whole chunk as soon as the
    chunk is written, then, once the writer has finished and the digest is known, the last chunk and the
    PUT with the digest. Returns (digest, body bytes sent). Failures are handled as in
    ``upload_blob`` (resume where the registry says it is, restart if it lost the session); every
    byte sent is hashed and the PUT is not made unless the bytes match the digest the writer reported.
    ``progress`` hears the bytes confirmed so far."""
    chunk = client.options.chunk_size
    what = blob.label or "a layer"
    state = _UploadState("", _GROWING, lambda: cast(BinaryIO, GrowingReader(blob)), None)

    def attempt() -> int:
        try:
            if state.failed and _resync(client, repo, state, note):
                return state.sent
            if state.location is None:
                state.location = client.start_upload(repo)
                state.offset = 0
            while True:
                have = blob.wait(state.offset + chunk)
                if blob.done and state.size == _GROWING:
                    state.digest, state.size = blob.digest or "", have
                if state.offset >= have:
                    break
                _patch(client, repo, state, min(have, state.offset + chunk))
                if progress is not None:
                    progress(state.offset)
            state.check_complete()
            _close_session(client, repo, state)
            return state.sent
        except Transient:
            state.failed = True
            raise

    try:
        sent = client.policy.run(
            attempt,
            progress=lambda: state.confirmed,
            on_retry=client.retry_notice,
            give_up=lambda t, n: client.fail(f"upload of {what} to {repo} failed after {n} attempts: {t.what}"),
        )
    finally:
        state.close()
    return state.digest, sent

def _chunk_accepted(client: UploadClient, repo: str, resp: httpx.Response, state: _UploadState, end: int) -> None:
    """Check a PATCH answer and advance ``state`` to what the registry says it holds."""
    if resp.status_code in (404, 416):
        raise Transient("upload session expired" if resp.status_code == 404 else "chunk out of order")
    if resp.status_code != 202:
        raise client.fail(f"upload of {state.digest or 'a layer'} to {repo}: {registry_error_text(resp)}")
    # The newest Location carries the session state a resume needs; the server's count of what it
    # holds wins over ours.
    state.location = resp.headers.get("location") or state.location
    held = parse_range(resp.headers.get("range"))
    state.offset = end if held is None else held
    state.confirm(state.offset)

def _resync(client: UploadClient, repo: str, state: _UploadState, note: NoteFn | None) -> bool:
    """After a failure: True if the blob is already there; else set offset/location to carry on from.
    (A blob still being written has no digest yet: only its session can be asked.)"""
    if state.digest and client.has_blob(repo, state.digest, state.size, push=True):
        return True
    if state.location is not None:
        resp = client._attempt("GET", state.location, client.push_scope(repo), repeatable=True)
        held = parse_range(resp.headers.get("range")) if resp.status_code == 204 else None
        if held is not None and held <= state.size:
            state.offset = held
            state.location = resp.headers.get("location") or state.location
            state.confirm(held)
            return False
    # The session is gone (distribution, for one, refuses a Location whose signed state is older than the
    # session, which is what a lost PATCH answer leaves us with): start again from byte 0.
    if state.offset > 0 or state.session_confirmed > 0:
        state.restarts += 1
        if state.restarts > max(3, client.policy.retries):
            raise client.fail(f"upload of {state.digest} to {repo}: the registry lost the upload session "
                            f"{state.restarts} times")  # fmt: skip
        if note is not None:
            note(state.digest, f"the registry lost the upload session at byte {state.offset}; restarting from 0")
    state.offset, state.location, state.session_confirmed = 0, None, 0
    return False

def _put_whole(client: UploadClient, repo: str, state: _UploadState) -> None:
    assert state.location is not None
    resp = client._attempt(
        "PUT",
        state.location,
        client.push_scope(repo),
        params={"digest": state.digest},
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(state.size)},
        content=state.body(0, state.size),
        repeatable=True,  # the upload loop re-reads the session's state before any repeat
    )
    _check_finished(client, repo, resp, state)

def _put_chunks(client: UploadClient, repo: str, state: _UploadState) -> None:
    assert state.location is not None
    while state.offset < state.size:
        _patch(client, repo, state, min(state.size, state.offset + client.options.chunk_size))
    # The registry may say it holds everything (after a resync, or a PATCH answer's Range) before we read
    # every byte: then what it would commit under our digest was never checked by us.
    state.check_complete()
    _close_session(client, repo, state)

def _patch(client: UploadClient, repo: str, state: _UploadState, end: int) -> None:
    """Send bytes [offset, end) of the blob as one PATCH; advance to what the registry then holds."""
    assert state.location is not None
    start = state.offset
    resp = client._attempt(
        "PATCH",
        state.location,
        client.push_scope(repo),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
            "Content-Range": f"{start}-{end - 1}",
        },
        content=state.body(start, end),
        repeatable=True,
    )
    _chunk_accepted(client, repo, resp, state, end)

def _close_session(client: UploadClient, repo: str, state: _UploadState) -> None:
    """The empty PUT with the digest that commits a chunked upload."""
    assert state.location is not None
    resp = client._attempt(
        "PUT", state.location, client.push_scope(repo), params={"digest": state.digest},
        headers={"Content-Length": "0"}, content=b"", repeatable=True,
    )  # fmt: skip
    _check_finished(client, repo, resp, state)

def _check_finished(client: UploadClient, repo: str, resp: httpx.Response, state: _UploadState) -> None:
    if resp.status_code in (404, 416):
        raise Transient("upload session expired" if resp.status_code == 404 else "upload incomplete")
    if resp.status_code != 201:
        text = registry_error_text(resp)
        if "DIGEST_INVALID" in text:
            raise client.fail(f"rejected blob {state.digest} for {repo}: its bytes do not match the digest")
        raise client.fail(f"upload of {state.digest} to {repo}: {text}")
    got = resp.headers.get("docker-content-digest")
    if got and got != state.digest:
        raise client.fail(f"stored blob as {got}, expected {state.digest}")
    state.confirm(state.size)


_GROWING = 1 << 62  # the size of a blob still being written: larger than any real one


class _UploadState:
    """The bytes of one blob upload: reopenable source, offset, hashing of each byte exactly once — unless
    the source is a reader that checks this digest itself (a ``CheckedReader``: a layer's ``compressed()``, a
    growing blob's reader): then it must have raised or be ``verified`` at the end, and the bytes are not
    hashed twice."""

    def __init__(self, digest: str, size: int, opener: Callable[[], BinaryIO], progress: ProgressFn | None):
        self.digest, self.size, self.opener, self.progress = digest, size, opener, progress
        self.offset = 0  # where the next body starts (the server's count when we have one)
        self.sent = 0
        self.confirmed = 0  # bytes the registry confirmed, summed over sessions: the retry loop's progress
        self.session_confirmed = 0  # what the current session confirmed holding
        self.restarts = 0  # sessions the registry lost
        self.failed = False  # an attempt failed: re-read the registry's state before going on
        self.location: str | None = None
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) went through the hash
        self._src: BinaryIO | None = None
        self._pos = 0
        self._checked_by_source = False

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def confirm(self, held: int) -> None:
        if held > self.session_confirmed:
            self.confirmed += held - self.session_confirmed
            self.session_confirmed = held

    def _seek(self, pos: int) -> BinaryIO:
        src = self._src
        if src is not None and self._pos == pos:
            return src
        if src is not None and src.seekable():
            src.seek(pos)
            self._pos = pos
            return src
        self.close()
        src = self._src = self.opener()
        # A growing blob's reader does not know its digest yet, nor (before the writer finished) do we.
        self._checked_by_source = isinstance(src, CheckedReader) and (
            not self.digest or src.expected_digest in (None, self.digest)
        )
        self._pos = 0
        if pos:
            if src.seekable():
                src.seek(pos)
            else:
                left = pos
                while left:
                    skipped = src.read(min(left, IO_CHUNK))
                    if not skipped:
                        raise ImageError(f"blob {self.digest} is shorter than {self.size} bytes")
                    left -= len(skipped)
            self._pos = pos
        return src

    def check_complete(self) -> None:
        """Before the final PUT: every byte was checked and matches the digest."""
        if self._hashed != self.size:
            raise ImageError(f"blob {self.digest}: {self._hashed} of {self.size} bytes were read")
        if self._checked_by_source:
            self._source_verified(self._seek(self.size))
        elif "sha256:" + self._hash.hexdigest() != self.digest:
            raise ImageError(f"blob {self.digest} does not match its digest; the local copy is corrupt")

    def _source_verified(self, src: BinaryIO) -> None:
        """A checking source read to its end has raised on a mismatch; make sure it checked this digest."""
        if src.read(1):
            raise ImageError(f"blob {self.digest} is longer than its declared {self.size} bytes")
        if not (isinstance(src, CheckedReader) and src.verified and src.expected_digest == self.digest):
            raise ImageError(f"blob {self.digest} does not match its digest; the local copy is corrupt")

    def body(self, start: int, end: int) -> Iterator[bytes]:
        if start > self._hashed:
            # The server holds bytes we never hashed (cannot normally happen): hash them before going on.
            src = self._seek(self._hashed)
            while self._hashed < start:
                gap = src.read(min(IO_CHUNK, start - self._hashed))
                if not gap:
                    raise ImageError(f"blob {self.digest} is shorter than its declared {self.size} bytes")
                if not self._checked_by_source:
                    self._hash.update(gap)
                self._hashed += len(gap)
                self._pos = self._hashed
        src = self._seek(start)
        pos = start
        if self.progress:
            self.progress(self.digest, start)
        while pos < end:
            chunk = src.read(min(IO_CHUNK, end - pos))
            if not chunk:
                raise ImageError(f"blob {self.digest} is shorter than its declared {self.size} bytes")
            new_from = self._hashed - pos
            if new_from < len(chunk):
                if not self._checked_by_source:
                    self._hash.update(chunk[max(new_from, 0) :] if new_from > 0 else chunk)
                self._hashed = pos + len(chunk)
            pos += len(chunk)
            self._pos = pos
            if pos == self.size:
                if self._checked_by_source:
                    self._source_verified(src)
                elif src.read(1):
                    raise ImageError(f"blob {self.digest} is longer than its declared {self.size} bytes")
                elif "sha256:" + self._hash.hexdigest() != self.digest:
                    raise ImageError(f"blob {self.digest} does not match its digest; the local copy is corrupt")
            self.sent += len(chunk)
            if self.progress:
                self.progress(self.digest, pos)
            yield chunk
