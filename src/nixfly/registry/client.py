"""A client for the OCI distribution API, over httpx, that survives flaky networks.

Retries follow :mod:`nixfly.retry` (one policy, one loop): connection trouble, 429 (honouring
``Retry-After``) and, for requests that are safe to repeat, 5xx. Blob uploads recover from a failure
mid-transfer by asking the server what it has (``HEAD`` the blob, ``GET`` the upload session's ``Range``)
and resuming from there; the retry budget resets whenever the server confirms more bytes. Every byte
received is checked against the digest that named it; every error, httpx's included, is one line naming
the registry and the operation.

Distribution-spec facts relied on here:

- ``GET /v2/`` answers 200 (with ``Docker-Distribution-API-Version: registry/2.0`` on distribution and
  its descendants) or 401 with a ``WWW-Authenticate`` challenge.
- A chunk PATCH answers 202 with ``Location`` and ``Range: 0-<last byte>``; a ``GET`` of the upload
  location answers 204 with the same two headers. The range is inclusive, so ``0-(n-1)`` means n bytes;
  distribution writes ``0-0`` for an empty session, which is what we read it as (our chunks are never one
  byte long, so the one-byte reading cannot arise). An upload the registry forgot answers 404.
- Chunks must arrive in order; one out of order gets 416, after which the status GET tells the offset.
- distribution signs the session's offset into the Location (``_state``) and refuses (404) a Location whose
  offset is not the session's: after a PATCH whose answer was lost, the old Location is dead, so that
  blob starts again in a new session (we say so through ``note``). A reset before the registry saw the
  whole chunk leaves the session as it was, and the status GET resumes it.
- HEAD of a blob answers 200 with ``Docker-Content-Digest`` and ``Content-Length``; a manifest PUT
  answers 201 with the ``Docker-Content-Digest`` of the bytes it stored.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from nixfly.errors import ImageError, RegistryError, excerpt
from nixfly.image.digest import sha256_digest
from nixfly.image.growing import GrowingBlob
from nixfly.image.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixfly.limits import ACCEPT_ENCODING, DEFAULT_MAX, MANIFEST_MAX, TOKEN_MAX, read_response
from nixfly.registry import tags, upload
from nixfly.registry.auth import Authenticator, Credentials, resolve_credentials
from nixfly.registry.options import RegistryOptions as RegistryOptions  # re-exported: its old home
from nixfly.registry.reference import DOCKER_HUB, DOCKER_HUB_API, LOCAL_HOSTS
from nixfly.registry.tls import tls_context
from nixfly.registry.wire import NoteFn, ProgressFn, registry_error_text
from nixfly.retry import (
    Transient,
    TransportFailure,
    classify_transport,
    is_idempotent,
    is_loopback,
    retry_after_seconds,
    status_is_transient,
)

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
_REDIRECTS = (301, 302, 303, 307, 308)
_MiB = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """Manifest bytes as the registry stored them, their media type and verified digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ImageError(f"manifest {self.digest} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ImageError(f"manifest {self.digest} is not a JSON object")
        return obj


class RegistryClient:
    """One registry host. Thread-safe: blob transfers may run in parallel on the same client."""

    def __init__(self, registry: str, options: RegistryOptions | None = None) -> None:
        self.registry = registry  # as users write it (docker.io for Docker Hub)
        self.options = options or RegistryOptions()
        self.policy = self.options.retry_policy()
        self.api_host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.local = self.api_host.rsplit(":", 1)[0] in LOCAL_HOSTS or self.api_host.startswith("[::1]")
        creds = resolve_credentials(registry, self.options.credentials, env=self.options.env, home=self.options.home)
        self.auth = Authenticator(registry, creds, self._fetch_token)
        t = self.options.timeout
        limits = httpx.Limits(max_connections=max(4, self.options.parallel * 2))
        self._http = httpx.Client(
            verify=tls_context(self.options),
            timeout=httpx.Timeout(t, connect=min(t, 30.0)),
            limits=limits,
            follow_redirects=False,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        self._base: str | None = None
        self._dead: RegistryError | None = None  # the ping's verdict when it was final (shared by all workers)
        self._ping_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(self, what: str) -> RegistryError:
        return RegistryError(f"registry {self.registry}: {what}")

    def _where(self, method: str, url: str) -> str:
        parts = urlsplit(url)
        on = "" if parts.netloc == self.api_host else f" on {parts.netloc}"
        return f"{method} {parts.path or '/'}{on}"

    def transport_error(self, e: httpx.HTTPError | httpx.InvalidURL, method: str, url: str, *,
                        repeatable: bool) -> Transient | RegistryError:  # fmt: skip
        """The one-line meaning of an httpx failure: Transient if another try may help, else RegistryError."""
        where = self._where(method, url)
        if isinstance(e, httpx.InvalidURL) or not isinstance(e, httpx.TransportError | httpx.TimeoutException):
            return self.fail(f"{where}: {excerpt((str(e) or type(e).__name__).splitlines()[0], 160)}")
        f = classify_transport(e)
        if self._final(f, url) or not f.transient(repeatable=repeatable):
            return self.fail(f"{where}: {f.text}")
        return Transient(f"{where}: {f.text}")

    @staticmethod
    def _final(f: TransportFailure, url: str) -> bool:
        # On loopback nothing is on its way: a refusal or a connect timeout means nothing listens there.
        host = urlsplit(url).hostname or ""
        return f.permanent or (f.kind in ("refused", "connect-timeout") and is_loopback(host))

    def _raw_send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        repeatable: bool,
        limit: int = DEFAULT_MAX,
    ) -> httpx.Response:
        """One HTTP exchange; every httpx failure comes out as Transient or a one-line RegistryError.
        Unless ``stream``, the body is read whole, at most ``limit`` bytes (more is a RegistryError)."""
        try:
            req = self._http.build_request(method, url, headers=headers, params=params, content=content)
            resp = self._http.send(req, stream=True)
            if stream:
                return resp
            return read_response(resp, limit, self._where(method, url), self.fail)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise self.transport_error(e, method, url, repeatable=repeatable) from None

    def _fetch_token(self, realm: str, params: list[tuple[str, str]], creds: Credentials | None) -> httpx.Response:
        """One token request (the enclosing request's retry loop repeats it if it fails transiently).

        The realm is the one URL outside the registry that gets its credentials (that is the token
        protocol); it must not be plain HTTP for a registry reached over verified TLS, or the credentials
        and the token would cross the network in the clear (go-containerregistry refuses it the same way)."""
        if (urlsplit(realm).scheme == "http" and self.options.tls_verify
                and urlsplit(self.base_url()).scheme == "https"):  # fmt: skip
            raise self.fail(
                f"its token service {realm[:120]} is plain http:// although the registry is https://; "
                "not sending credentials or tokens over it (--tls-verify=false allows it)"
            )
        headers = {"Authorization": creds.basic_header()} if creds else {}
        resp = self._raw_send("GET", realm, params=tuple(params), headers=headers, repeatable=True, limit=TOKEN_MAX)
        if status_is_transient(resp.status_code, repeatable=True):
            raise Transient(
                f"token service {urlsplit(realm).netloc} answered HTTP {resp.status_code}",
                retry_after_seconds(resp.headers.get("retry-after"), self.policy.clock()),
            )
        return resp

    def base_url(self) -> str:
        """``scheme://host``, decided once by pinging ``/v2/`` (https first; http only when allowed).

        A final verdict (no answer within the timeout, a refusal on loopback, not a registry, TLS refused)
        is kept: every later request and every parallel worker gets the same error without waiting again.
        """
        if self._base is not None:
            return self._base
        with self._ping_lock:
            if self._dead is not None:
                raise self._dead
            if self._base is None:
                try:
                    self._base = self._ping()
                except RegistryError as e:
                    self._dead = e
                    raise
        return self._base

    def _ping(self) -> str:
        schemes = ["https"]
        if self.options.plain_http:
            schemes = ["http"]
        elif not self.options.tls_verify or (self.local and self.options.plain_http is None):
            schemes = ["https", "http"]  # like docker/skopeo for insecure registries: TLS, then plain
        for scheme in schemes:
            url = f"{scheme}://{self.api_host}/v2/"
            try:
                resp = read_response(self._http.send(self._http.build_request("GET", url), stream=True),
                                     DEFAULT_MAX, f"GET {url}", self.fail)  # fmt: skip
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                if not isinstance(e, httpx.TransportError):
                    raise self.fail(f"cannot reach {url}: {type(e).__name__}") from None
                f = classify_transport(e)
                if f.kind == "plain-http" and scheme != schemes[-1]:
                    continue  # the TLS handshake got a plain-HTTP reply: speak plain HTTP
                if self._final(f, url) or f.kind in ("timeout", "connect-timeout", "plain-http"):
                    # A host that does not answer its first request within the timeout (or answers TLS with
                    # plain HTTP, where that is not allowed) is not retried.
                    raise self.fail(f"cannot reach {url}: {f.text}") from None
                raise Transient(f"cannot reach {url}: {f.text}") from None
            if status_is_transient(resp.status_code, repeatable=True):
                raise Transient(
                    f"GET {url} answered HTTP {resp.status_code}",
                    retry_after_seconds(resp.headers.get("retry-after"), self.policy.clock()),
                )
            base = f"{scheme}://{self.api_host}"
            if resp.status_code == 401:
                if not any(v.strip().lower().startswith(("basic", "bearer"))
                           for v in resp.headers.get_list("www-authenticate")):  # fmt: skip
                    raise self.fail("GET /v2/ answered 401 without a Basic or Bearer challenge; not an OCI registry?")
                self.auth.learn(resp)
                return base
            if resp.status_code == 200:
                if "docker-distribution-api-version" not in resp.headers:
                    raise self.fail(
                        "GET /v2/ answered 200 without a Docker-Distribution-API-Version header: "
                        "this is a web server, not an OCI registry"
                    )
                return base
            raise self.fail(f"GET /v2/ answered HTTP {resp.status_code}; is this an OCI registry?")
        raise AssertionError("unreachable")

    def _url(self, path_or_url: str) -> str:
        # A path, a URL or a scheme-relative //host/… (as a Location may be): resolved as a browser would.
        return urljoin(self.base_url() + "/", path_or_url)

    def is_own(self, url: str) -> bool:
        """Whether ``url`` is on the registry itself (same scheme, host and port as ``base_url``): only
        then does a request carry the registry's credentials. A server-given URL (an upload Location, a
        ``Link: next``, a redirect) may name any host; such hosts get the request, never the credentials
        (as go-containerregistry's transports do: the Authorization header only for the registry's host)."""
        return _origin(url) == _origin(self.base_url())

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
    ) -> httpx.Response:
        """One request with auth; answers a 401 by re-authenticating once. Trouble worth retrying → Transient.
        Credentials go only to the registry's own origin (see ``is_own``), whatever URL a server handed us."""
        url = self._url(path_or_url)
        if params:
            # Upload Locations carry state in their query (_state=…): add to it, never replace it.
            url += ("&" if "?" in url else "?") + urlencode(params)
        own = self.is_own(url)
        for auth_round in range(2):
            hdrs = dict(headers or {})
            authz = self.auth.authorization(scope) if own else None
            if authz:
                hdrs["Authorization"] = authz
            resp = self._raw_send(method, url, headers=hdrs, content=content, stream=stream, repeatable=repeatable,
                                  limit=limit)  # fmt: skip
            if resp.status_code == 401 and not own:
                # Another host wants credentials: it gets none, and its challenge is not adopted (a
                # challenge names the token service our credentials would be sent to).
                resp.close()
                raise self.fail(f"{self._where(method, url)} answered 401: the registry sent this request to "
                                "another host, which gets no credentials")  # fmt: skip
            if resp.status_code == 401 and auth_round == 0:
                resp.close()
                self.auth.unauthorized(resp, scope)  # e.g. an expired token: fetch a fresh one
                if content is not None and not isinstance(content, bytes):
                    raise Transient("authorization expired")  # a streamed body cannot be replayed here
                continue
            if resp.status_code == 401:
                resp.close()
                raise self._auth_failure()
            if status_is_transient(resp.status_code, repeatable=repeatable):
                if stream:
                    resp.close()
                raise Transient(
                    f"HTTP {resp.status_code} ({registry_error_text(resp)})",
                    retry_after_seconds(resp.headers.get("retry-after"), self.policy.clock()),
                )
            return resp
        raise AssertionError("unreachable")

    def _auth_failure(self) -> RegistryError:
        creds = self.auth.credentials
        if creds is None:
            return self.fail("authentication required; pass --creds USER:PASSWORD or log in with docker login")
        return self.fail(f"access denied with the credentials from {creds.source} (wrong user or password?)")

    def _path(self, path_or_url: str) -> str:
        return urlsplit(path_or_url).path or path_or_url

    def request(
        self,
        method: str,
        path_or_url: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
        repeatable: bool | None = None,
        limit: int = DEFAULT_MAX,
    ) -> httpx.Response:
        """Send under the retry policy. ``repeatable`` (default: the method is idempotent) allows retrying
        5xx and failures after the request went out; 429 and failures to connect are always retried.
        Unless ``stream``, the body is read whole, at most ``limit`` bytes."""
        rep = is_idempotent(method) if repeatable is None else repeatable

        def attempt() -> httpx.Response:
            return self._attempt(
                method, path_or_url, scope, headers=headers, params=params, content=content, stream=stream,
                repeatable=rep, limit=limit,
            )  # fmt: skip

        return self.policy.run(
            attempt,
            on_retry=self.retry_notice,
            give_up=lambda t, n: self.fail(f"{method} {self._path(path_or_url)} failed after {n} attempts: {t.what}"),
        )

    def retry_notice(self, failure: Transient, seconds: float) -> None:
        if self.options.on_retry is not None:
            self.options.on_retry(f"registry {self.registry}: retrying in {seconds:.1f} s: {failure.what}")

    @staticmethod
    def pull_scope(repo: str) -> str:
        return f"repository:{repo}:pull"

    @staticmethod
    def push_scope(repo: str, *mount_from: str) -> str:
        return " ".join([f"repository:{repo}:pull,push", *(f"repository:{m}:pull" for m in mount_from)])

    # -- blobs ------------------------------------------------------------------------------------

    def blob_size(self, repo: str, digest: str, *, push: bool = False) -> int | None:
        """Size of the blob if ``repo`` has it, else None (HEAD). A 200 must carry the blob's own
        ``Docker-Content-Digest`` and a ``Content-Length``; anything else is not a registry's answer."""
        scope = self.push_scope(repo) if push else self.pull_scope(repo)
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope)
        if resp.status_code == 404:
            return None
        if resp.status_code in _REDIRECTS:
            size = _int_header(resp, "content-length")  # the registry has it; its storage has the headers
            return -1 if size is None else size
        if resp.status_code != 200:
            raise self.fail(f"HEAD blob {digest} in {repo}: HTTP {resp.status_code}")
        got = resp.headers.get("docker-content-digest")
        size = _int_header(resp, "content-length")
        if got != digest or size is None:
            raise self.fail(
                f"HEAD blob {digest} in {repo} answered 200 with "
                + (f"Docker-Content-Digest {got}" if got else "no Docker-Content-Digest")
                + ("" if size is not None else " and no Content-Length")
                + "; is this an OCI registry?"
            )
        return size

    def has_blob(self, repo: str, digest: str, size: int, *, push: bool = False) -> bool:
        """Whether ``repo`` holds the blob; a HEAD that reports another size is an error, not a yes."""
        have = self.blob_size(repo, digest, push=push)
        if have is None:
            return False
        if have not in (size, -1):
            raise self.fail(f"HEAD blob {digest} in {repo} reports {have} bytes, expected {size}")
        return True

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. None if mounted; otherwise the Location of a fresh upload session."""
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            self.push_scope(repo, from_repo),
            params={"mount": digest, "from": from_repo},
            repeatable=True,  # a repeated POST only opens another session
        )
        if resp.status_code == 201:
            return None
        if resp.status_code == 202 and resp.headers.get("location"):
            return resp.headers["location"]
        raise self.fail(f"mount of {digest} into {repo}: {registry_error_text(resp)}")

    def start_upload(self, repo: str) -> str:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", self.push_scope(repo), repeatable=True)
        if resp.status_code != 202 or not resp.headers.get("location"):
            raise self.fail(f"starting an upload to {repo}: {registry_error_text(resp)}")
        return resp.headers["location"]

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        *,
        location: str | None = None,
        progress: ProgressFn | None = None,
        note: NoteFn | None = None,
    ) -> int:
        """Upload a blob; returns how many body bytes were sent (retransmissions included). The state
        machine (one PUT or PATCH chunks, resuming, restarting a lost session) is ``registry/upload.py``."""
        return upload.upload_blob(self, repo, digest, size, opener, location=location, progress=progress, note=note)

    def upload_growing(
        self,
        repo: str,
        blob: GrowingBlob,
        *,
        progress: Callable[[int], None] | None = None,
        note: NoteFn | None = None,
    ) -> tuple[str, int]:
        """Upload a blob while its writer is still producing it (``registry/upload.py``); returns (digest,
        body bytes sent)."""
        return upload.upload_growing(self, repo, blob, progress=progress, note=note)

    def open_blob(self, repo: str, digest: str, offset: int = 0) -> httpx.Response:
        """Start streaming a blob (following redirects to blob storage). The caller closes the response."""
        return self.policy.run(
            lambda: self._open_blob(repo, digest, offset),
            on_retry=self.retry_notice,
            give_up=lambda t, n: self.fail(f"GET blob {digest} failed after {n} attempts: {t.what}"),
        )

    def _open_blob(self, repo: str, digest: str, offset: int) -> httpx.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._attempt("GET", f"/v2/{repo}/blobs/{digest}", self.pull_scope(repo), headers=headers,
                             stream=True, repeatable=True)  # fmt: skip
        for _hop in range(5):
            if resp.status_code not in _REDIRECTS or not resp.headers.get("location"):
                break
            resp.close()
            nxt = urljoin(str(resp.request.url), resp.headers["location"])
            # Redirect targets (object storage) get no registry credentials.
            resp = self._raw_send("GET", nxt, headers=headers, stream=True, repeatable=True)
            if status_is_transient(resp.status_code, repeatable=True):
                resp.close()
                raise Transient(
                    f"blob {digest}: storage {urlsplit(nxt).netloc} answered HTTP {resp.status_code}",
                    retry_after_seconds(resp.headers.get("retry-after"), self.policy.clock()),
                )
        else:
            resp.close()
            raise self.fail(f"blob {digest}: too many redirects")
        if resp.status_code in (200, 206):
            if offset and resp.status_code == 200:
                resp.close()
                raise self.fail(f"blob {digest}: server ignored the range request")
            return resp
        resp.close()
        if resp.status_code == 404:
            raise self.fail(f"blob {digest} is missing from {repo} (the manifest refers to a missing blob)")
        raise self.fail(f"GET blob {digest} from {repo}: HTTP {resp.status_code}")

    def read_failure(self, e: httpx.HTTPError, digest: str) -> Transient | RegistryError:
        """What a failure while reading a blob body means (a re-read from the offset is always safe)."""
        f = classify_transport(e) if isinstance(e, httpx.TransportError) else None
        if f is None or f.permanent:
            return self.fail(f"reading blob {digest}: {f.text if f else type(e).__name__}")
        return Transient(f"reading blob {digest}: {f.text}")

    def get_blob_bytes(self, repo: str, digest: str, max_size: int = 32 * _MiB) -> bytes:
        """A small blob (a config) read whole and verified against its digest."""

        def attempt() -> bytes:
            resp = self._open_blob(repo, digest, 0)
            try:
                data = bytearray()
                for chunk in resp.iter_raw():
                    data += chunk
                    if len(data) > max_size:
                        raise self.fail(f"blob {digest} is larger than {max_size} bytes")
            except httpx.HTTPError as e:
                raise self.read_failure(e, digest) from None
            finally:
                resp.close()
            return bytes(data)

        data = self.policy.run(
            attempt, on_retry=self.retry_notice,
            give_up=lambda t, n: self.fail(f"GET blob {digest} failed after {n} attempts: {t.what}")
        )
        if sha256_digest(data) != digest:
            raise self.fail(f"blob {digest} from {repo} does not match its digest")
        return data

    # -- manifests and tags ------------------------------------------------------------------------

    def get_manifest(self, repo: str, identifier: str, accept: str = MANIFEST_ACCEPT) -> Manifest:
        """Fetch a manifest or index by tag or digest; the bytes are checked against the digest."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{identifier}", self.pull_scope(repo),
                            headers={"Accept": accept}, limit=MANIFEST_MAX)  # fmt: skip
        if resp.status_code == 404:
            raise self.fail(f"{repo}:{identifier} not found")
        if resp.status_code != 200:
            raise self.fail(f"GET manifest {repo}:{identifier}: {registry_error_text(resp)}")
        data = resp.content
        digest = sha256_digest(data)
        expected = identifier if identifier.startswith("sha256:") else resp.headers.get("docker-content-digest")
        if expected and expected.startswith("sha256:") and expected != digest:
            raise self.fail(f"manifest {repo}:{identifier} does not match its digest {expected}")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "text/plain"):
            try:
                media_type = str(json.loads(data).get("mediaType") or OCI_MANIFEST)
            except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
                raise self.fail(f"manifest {repo}:{identifier} is not JSON") from None
        return Manifest(data, media_type, digest)

    def manifest_digest(self, repo: str, identifier: str) -> str | None:
        """The digest a tag (or digest) names, by HEAD; None if the registry has no such manifest."""
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{identifier}", self.pull_scope(repo),
                            headers={"Accept": MANIFEST_ACCEPT})  # fmt: skip
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self.fail(f"HEAD manifest {repo}:{identifier}: HTTP {resp.status_code}")
        got = resp.headers.get("docker-content-digest", "")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", got):
            raise self.fail(f"HEAD manifest {repo}:{identifier}: no valid Docker-Content-Digest; is this a registry?")
        return str(got)

    def put_manifest(self, repo: str, identifier: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag or its digest; returns the digest the registry confirmed."""
        digest = sha256_digest(data)
        resp = self.request("PUT", f"/v2/{repo}/manifests/{identifier}", self.push_scope(repo),
                            headers={"Content-Type": media_type}, content=data)  # fmt: skip
        if resp.status_code not in (200, 201):
            text = registry_error_text(resp)
            if "BLOB_UNKNOWN" in text:
                raise self.fail(f"refused manifest for {repo}:{identifier}: it refers to a blob it does not have")
            raise self.fail(f"PUT manifest {repo}:{identifier}: {text}")
        got = resp.headers.get("docker-content-digest")
        if got != digest:
            raise self.fail(
                f"PUT manifest {repo}:{identifier} answered HTTP {resp.status_code} "
                + (f"but stored {got}, expected {digest}" if got else "without the Docker-Content-Digest it stored")
                + "; is this an OCI registry?"
            )
        return digest

    def list_tags(self, repo: str, page_size: int | None = None) -> list[str]:
        """All tags of ``repo`` (:func:`nixfly.registry.tags.list_tags`: every page, bounded)."""
        return tags.list_tags(self, repo, page_size)


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in: two URLs with equal origins are the
    same server as far as credentials go."""
    u = httpx.URL(url)
    return u.scheme, u.host.lower(), u.port or {"http": 80, "https": 443}.get(u.scheme, 0)


def _int_header(resp: httpx.Response, name: str) -> int | None:
    try:
        return int(resp.headers[name])
    except (KeyError, ValueError):
        return None
