"""A client for the OCI distribution API, over httpx, that survives flaky networks.

Every request is retried with exponential backoff and full jitter on connection errors, 429 (honouring
``Retry-After``) and 5xx. Blob uploads recover from a failure mid-transfer by asking the server what it has
(``HEAD`` the blob, ``GET`` the upload session's ``Range``) and resuming from there. Every byte received is
checked against the digest that named it; every error is one line naming the registry.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from nixfly.errors import ImageError, RegistryError, UsageError
from nixfly.image.digest import sha256_digest
from nixfly.image.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixfly.registry.auth import Authenticator, Credentials, resolve_credentials
from nixfly.registry.reference import DOCKER_HUB, DOCKER_HUB_API, LOCAL_HOSTS

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MiB = 1 << 20
IO_CHUNK = 256 * 1024  # bytes per read/write step: bounds memory per transfer whatever the blob size

# Called with (digest, bytes completed so far) as blob bytes go out or come in.
ProgressFn = Callable[[str, int], None]


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries. The defaults are the safe ones: TLS verified, credentials looked up."""

    credentials: Credentials | None = None  # explicit (--creds); None means look them up
    tls_verify: bool = True
    cert_dir: Path | None = None  # a directory of *.crt CA files (skopeo/docker certs.d layout)
    plain_http: bool | None = None  # True: always http; None: http only as a fallback for local hosts
    timeout: float = 60.0  # seconds for connect and for each read/write to make progress
    retries: int = 5
    backoff: float = 0.5  # first backoff in seconds; doubles per attempt
    max_backoff: float = 20.0
    parallel: int = 4  # blob transfers at once
    chunk_size: int = 16 * _MiB  # PATCH size for chunked uploads
    monolithic_max: int = 16 * _MiB  # blobs up to this size go in a single PUT
    env: Mapping[str, str] | None = field(default=None, repr=False)
    home: Path | None = None

    def sleep_for(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): Retry-After if given, else jittered backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), 60.0)
        return random.uniform(0, min(self.max_backoff, self.backoff * (2 ** (attempt - 1))))


class _Transient(Exception):
    """A failure worth retrying (connection trouble, 429, 5xx). Internal: never reaches the user as is."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe_transport(e: httpx.TransportError) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    text = str(e) or type(e).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS certificate not trusted (use --cert-dir DIR with the CA, or --tls-verify=false)"
    return f"connection failed ({text.splitlines()[0][:160]})"


def _is_permanent_connect_error(e: httpx.TransportError) -> bool:
    text = str(e)
    return any(
        s in text for s in ("Name or service not known", "nodename nor servname", "CERTIFICATE_VERIFY_FAILED", "SSL")
    )


def registry_error_text(resp: httpx.Response) -> str:
    """``CODE: message`` from a distribution error body, or a short note about what came back."""
    try:
        body = resp.json()
        errs = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            e = errs[0]
            return f"{e.get('code', 'UNKNOWN')}: {str(e.get('message', ''))[:200]}"
    except (ValueError, UnicodeDecodeError):
        pass
    return f"HTTP {resp.status_code}"


@dataclass(frozen=True)
class Manifest:
    """Manifest bytes as the registry stored them, their media type and verified digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.data)
        except (ValueError, UnicodeDecodeError):
            raise ImageError(f"manifest {self.digest} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ImageError(f"manifest {self.digest} is not a JSON object")
        return obj


class RegistryClient:
    """One registry host. Thread-safe: blob transfers may run in parallel on the same client."""

    def __init__(self, registry: str, options: RegistryOptions | None = None) -> None:
        self.registry = registry  # as users write it (docker.io for Docker Hub)
        self.options = options or RegistryOptions()
        self.api_host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.local = self.api_host.rsplit(":", 1)[0] in LOCAL_HOSTS or self.api_host.startswith("[::1]")
        creds = resolve_credentials(registry, self.options.credentials, env=self.options.env, home=self.options.home)
        self.auth = Authenticator(registry, creds, self._fetch_token)
        t = self.options.timeout
        limits = httpx.Limits(max_connections=max(4, self.options.parallel * 2))
        self._http = httpx.Client(
            verify=self._tls_context(),
            timeout=httpx.Timeout(t, connect=min(t, 30.0)),
            limits=limits,
            follow_redirects=False,
        )
        self._base: str | None = None
        self._ping_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | bool:
        if not self.options.tls_verify:
            return False
        ctx = ssl.create_default_context()
        cert_dir = self.options.cert_dir
        if cert_dir is not None:
            cas = sorted(p for p in Path(cert_dir).glob("*.crt") if not p.name.endswith(".cert"))
            if not Path(cert_dir).is_dir():
                raise UsageError(f"--cert-dir {cert_dir} is not a directory")
            if not cas:
                raise UsageError(f"--cert-dir {cert_dir} holds no *.crt CA file")
            for ca in cas:
                try:
                    ctx.load_verify_locations(cafile=str(ca))
                except (ssl.SSLError, OSError):
                    raise UsageError(f"{ca} is not a PEM certificate") from None
        return ctx

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(self, what: str) -> RegistryError:
        return RegistryError(f"registry {self.registry}: {what}")

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        time.sleep(self.options.sleep_for(attempt, retry_after))

    def _fetch_token(self, realm: str, params: list[tuple[str, str]], creds: Credentials | None) -> httpx.Response:
        headers = {"Authorization": creds.basic_header()} if creds else {}
        for attempt in range(1, self.options.retries + 2):
            try:
                resp = self._http.get(realm, params=tuple(params), headers=headers)
            except httpx.TransportError as e:
                if attempt > self.options.retries or _is_permanent_connect_error(e):
                    raise self.fail(f"token service {urlsplit(realm).netloc}: {_describe_transport(e)}") from None
                self._sleep(attempt, None)
                continue
            if resp.status_code in _RETRY_STATUSES and attempt <= self.options.retries:
                self._sleep(attempt, _retry_after(resp))
                continue
            return resp
        raise AssertionError("unreachable")

    def base_url(self) -> str:
        """``scheme://host``, decided once by pinging ``/v2/`` (https first; http only when allowed)."""
        if self._base is not None:
            return self._base
        with self._ping_lock:
            if self._base is None:
                self._base = self._ping()
        return self._base

    def _ping(self) -> str:
        schemes = ["https"]
        if self.options.plain_http:
            schemes = ["http"]
        elif self.local or not self.options.tls_verify:
            schemes = ["https", "http"]  # like docker/skopeo for insecure registries: TLS, then plain
        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{self.api_host}"
            for attempt in range(1, self.options.retries + 2):
                try:
                    resp = self._http.get(url + "/v2/")
                except httpx.TransportError as e:
                    last = e
                    if scheme == "https" and len(schemes) > 1 and isinstance(e, httpx.ConnectError):
                        break  # maybe the server speaks plain HTTP: try that
                    if attempt > self.options.retries or _is_permanent_connect_error(e):
                        raise self.fail(f"cannot reach {url}/v2/: {_describe_transport(e)}") from None
                    self._sleep(attempt, None)
                    continue
                if resp.status_code in _RETRY_STATUSES and attempt <= self.options.retries:
                    self._sleep(attempt, _retry_after(resp))
                    continue
                if resp.status_code == 401:
                    self.auth.learn(resp)
                    return url
                if resp.status_code == 200:
                    return url
                if scheme == "https" and len(schemes) > 1 and resp.status_code == 400:
                    break  # a plain-HTTP-only peer answering our TLS-less probe
                raise self.fail(f"GET /v2/ answered HTTP {resp.status_code}; is this an OCI registry?")
        assert last is not None
        raise self.fail(f"cannot reach {self.api_host}: {_describe_transport(last)}")  # type: ignore[arg-type]

    def _url(self, path_or_url: str) -> str:
        base = self.base_url()
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return urljoin(base + "/", path_or_url.lstrip("/")) if not path_or_url.startswith("/") else base + path_or_url

    def _send_once(
        self,
        method: str,
        path_or_url: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request with auth; answers a 401 by re-authenticating once. Transient trouble → _Transient."""
        url = self._url(path_or_url)
        if params:
            # Upload Locations carry state in their query (_state=…): add to it, never replace it.
            url += ("&" if "?" in url else "?") + urlencode(params)
        for auth_round in range(2):
            hdrs = dict(headers or {})
            authz = self.auth.authorization(scope)
            if authz:
                hdrs["Authorization"] = authz
            try:
                req = self._http.build_request(method, url, headers=hdrs, content=content)
                resp = self._http.send(req, stream=stream)
            except httpx.TransportError as e:
                if _is_permanent_connect_error(e):
                    raise self.fail(f"{method} {urlsplit(url).path}: {_describe_transport(e)}") from None
                raise _Transient(_describe_transport(e)) from None
            if resp.status_code == 401 and auth_round == 0:
                if stream:
                    resp.close()
                self.auth.unauthorized(resp, scope)  # e.g. an expired token: fetch a fresh one
                if content is not None and not isinstance(content, bytes):
                    raise _Transient("authorization expired")  # a streamed body cannot be replayed here
                continue
            if resp.status_code == 401:
                if stream:
                    resp.close()
                raise self._auth_failure()
            if resp.status_code in _RETRY_STATUSES:
                if stream:
                    resp.close()
                raise _Transient(f"HTTP {resp.status_code} ({registry_error_text(resp)})", _retry_after(resp))
            return resp
        raise AssertionError("unreachable")

    def _auth_failure(self) -> RegistryError:
        creds = self.auth.credentials
        if creds is None:
            return self.fail("authentication required; pass --creds USER:PASSWORD or log in with docker login")
        return self.fail(f"access denied with the credentials from {creds.source} (wrong user or password?)")

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
    ) -> httpx.Response:
        """Send with retries (bodies here are bytes, so resending is safe)."""
        for attempt in range(1, self.options.retries + 2):
            try:
                return self._send_once(
                    method, path_or_url, scope, headers=headers, params=params, content=content, stream=stream
                )
            except _Transient as t:
                if attempt > self.options.retries:
                    raise self.fail(
                        f"{method} {urlsplit(self._url(path_or_url)).path} failed after {attempt} attempts: {t.what}"
                    ) from None
                self._sleep(attempt, t.retry_after)
        raise AssertionError("unreachable")

    @staticmethod
    def pull_scope(repo: str) -> str:
        return f"repository:{repo}:pull"

    @staticmethod
    def push_scope(repo: str, *mount_from: str) -> str:
        return " ".join([f"repository:{repo}:pull,push", *(f"repository:{m}:pull" for m in mount_from)])

    # -- blobs ------------------------------------------------------------------------------------

    def blob_size(self, repo: str, digest: str, *, push: bool = False) -> int | None:
        """Size of the blob if ``repo`` has it, else None (HEAD)."""
        scope = self.push_scope(repo) if push else self.pull_scope(repo)
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope)
        if resp.status_code == 404:
            return None
        if resp.status_code in (200, 307, 302):
            try:
                return int(resp.headers.get("content-length", "-1"))
            except ValueError:
                return -1
        raise self.fail(f"HEAD blob {digest} in {repo}: HTTP {resp.status_code}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. None if mounted; otherwise the Location of a fresh upload session."""
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            self.push_scope(repo, from_repo),
            params={"mount": digest, "from": from_repo},
        )
        if resp.status_code == 201:
            return None
        if resp.status_code == 202 and resp.headers.get("location"):
            return resp.headers["location"]
        raise self.fail(f"mount of {digest} into {repo}: {registry_error_text(resp)}")

    def start_upload(self, repo: str) -> str:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", self.push_scope(repo))
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
    ) -> int:
        """Upload a blob; returns how many body bytes were sent (retransmissions included).

        Small blobs go in one PUT, large ones in PATCH chunks. After any failure we ask the registry what
        it already has (the blob itself, or how far the session got) and carry on from there. The bytes
        read are hashed: if they do not match ``digest`` the upload is abandoned with an ImageError.
        """
        state = _UploadState(digest, size, opener, progress)
        attempt = 0
        while True:
            try:
                if location is None:
                    location = self.start_upload(repo)
                state.location = state.location or location
                if size <= self.options.monolithic_max:
                    self._put_whole(repo, location, state)
                else:
                    location = self._put_chunks(repo, location, state)
                return state.sent
            except _Transient as t:
                attempt += 1
                if attempt > self.options.retries:
                    raise self.fail(f"upload of {digest} to {repo} failed after {attempt} attempts: {t.what}") from None
                self._sleep(attempt, t.retry_after)
                if self.blob_size(repo, digest, push=True) == size:
                    return state.sent  # the server finished it even though we did not hear back
                location = self._resume_point(repo, state.location or location, state)
                state.location = location  # None: the next round starts a new session
            finally:
                state.close()

    def _resume_point(self, repo: str, location: str | None, state: _UploadState) -> str | None:
        """Where to carry on after a failure: the session's reported Range, or a new session from 0."""
        if location is None or state.size <= self.options.monolithic_max:
            state.offset = 0
            return None
        try:
            resp = self._send_once("GET", location, self.push_scope(repo))
        except _Transient:
            state.offset = 0
            return None
        if resp.status_code != 204:
            state.offset = 0
            return None
        m = re.fullmatch(r"(?:bytes=)?0-(\d+)", resp.headers.get("range", "").strip())
        state.offset = int(m.group(1)) + 1 if m else 0
        return resp.headers.get("location") or location

    def _put_whole(self, repo: str, location: str, state: _UploadState) -> None:
        state.offset = 0
        resp = self._send_once(
            "PUT",
            location,
            self.push_scope(repo),
            params={"digest": state.digest},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(state.size)},
            content=state.body(0, state.size),
        )
        self._check_finished(repo, resp, state)

    def _put_chunks(self, repo: str, location: str, state: _UploadState) -> str:
        while state.offset < state.size:
            start = state.offset
            end = min(state.size, start + self.options.chunk_size)
            resp = self._send_once(
                "PATCH",
                location,
                self.push_scope(repo),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(end - start),
                    "Content-Range": f"{start}-{end - 1}",
                },
                content=state.body(start, end),
            )
            if resp.status_code == 404:
                raise _Transient("upload session expired")
            if resp.status_code != 202:
                raise self.fail(f"upload of {state.digest} to {repo}: {registry_error_text(resp)}")
            location = resp.headers.get("location") or location
            state.location = location  # the newest Location carries the session state a resume needs
            m = re.fullmatch(r"(?:bytes=)?0-(\d+)", resp.headers.get("range", "").strip())
            # Trust the server's account of what it holds over ours.
            state.offset = int(m.group(1)) + 1 if m else end
        resp = self._send_once(
            "PUT", location, self.push_scope(repo), params={"digest": state.digest},
            headers={"Content-Length": "0"}, content=b"",
        )  # fmt: skip
        self._check_finished(repo, resp, state)
        return location

    def _check_finished(self, repo: str, resp: httpx.Response, state: _UploadState) -> None:
        if resp.status_code == 404:
            raise _Transient("upload session expired")
        if resp.status_code != 201:
            text = registry_error_text(resp)
            if "DIGEST_INVALID" in text:
                raise self.fail(f"rejected blob {state.digest} for {repo}: its bytes do not match the digest")
            raise self.fail(f"upload of {state.digest} to {repo}: {text}")
        got = resp.headers.get("docker-content-digest")
        if got and got != state.digest:
            raise self.fail(f"stored blob as {got}, expected {state.digest}")

    def open_blob(self, repo: str, digest: str, offset: int = 0) -> httpx.Response:
        """Start streaming a blob (following redirects to blob storage). The caller closes the response."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = f"/v2/{repo}/blobs/{digest}"
        for _hop in range(5):
            resp = self.request("GET", url, self.pull_scope(repo), headers=headers, stream=True)
            if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                resp.close()
                nxt = urljoin(str(resp.request.url), resp.headers["location"])
                # Redirect targets (object storage) get no registry credentials.
                resp = self._http.send(self._http.build_request("GET", nxt, headers=headers), stream=True)
                if resp.status_code in _RETRY_STATUSES:
                    resp.close()
                    raise self.fail(f"blob {digest}: storage answered HTTP {resp.status_code}")
            if resp.status_code in (200, 206):
                if offset and resp.status_code == 200:
                    resp.close()
                    raise self.fail(f"blob {digest}: server ignored the range request")
                return resp
            resp.read()
            resp.close()
            if resp.status_code == 404:
                raise self.fail(f"blob {digest} is missing from {repo} (the manifest refers to a missing blob)")
            raise self.fail(f"GET blob {digest} from {repo}: {registry_error_text(resp)}")
        raise self.fail(f"blob {digest}: too many redirects")

    def get_blob_bytes(self, repo: str, digest: str, max_size: int = 32 * _MiB) -> bytes:
        """A small blob (a config) read whole and verified against its digest."""
        resp = self.open_blob(repo, digest)
        try:
            data = bytearray()
            for chunk in resp.iter_raw():
                data += chunk
                if len(data) > max_size:
                    raise self.fail(f"blob {digest} is larger than {max_size} bytes")
        except httpx.TransportError as e:
            raise self.fail(f"reading blob {digest}: {_describe_transport(e)}") from None
        finally:
            resp.close()
        if sha256_digest(bytes(data)) != digest:
            raise self.fail(f"blob {digest} from {repo} does not match its digest")
        return bytes(data)

    # -- manifests and tags ------------------------------------------------------------------------

    def get_manifest(self, repo: str, identifier: str, accept: str = MANIFEST_ACCEPT) -> Manifest:
        """Fetch a manifest or index by tag or digest; the bytes are checked against the digest."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{identifier}", self.pull_scope(repo),
                            headers={"Accept": accept})  # fmt: skip
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
            except (ValueError, AttributeError, UnicodeDecodeError):
                raise self.fail(f"manifest {repo}:{identifier} is not JSON") from None
        return Manifest(data, media_type, digest)

    def manifest_digest(self, repo: str, identifier: str) -> str | None:
        """The digest a tag points to (HEAD), or None if there is no such tag."""
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{identifier}", self.pull_scope(repo),
                            headers={"Accept": MANIFEST_ACCEPT})  # fmt: skip
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self.fail(f"HEAD manifest {repo}:{identifier}: HTTP {resp.status_code}")
        got: str | None = resp.headers.get("docker-content-digest")
        return got

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
        if got and got != digest:
            raise self.fail(f"stored manifest as {got}, expected {digest}")
        return digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        scope = f"repository:{repo}:delete"
        resp = self.request("DELETE", f"/v2/{repo}/manifests/{digest}", scope)
        if resp.status_code not in (200, 202):
            raise self.fail(f"DELETE manifest {repo}@{digest}: {registry_error_text(resp)}")

    def list_tags(self, repo: str, page_size: int | None = None) -> list[str]:
        """All tags of ``repo``, following ``Link: <…>; rel="next"`` pagination."""
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list"
        params = {"n": str(page_size)} if page_size else None
        seen: set[str] = set()
        while url is not None:
            resp = self.request("GET", url, self.pull_scope(repo), params=params)
            params = None  # the Link URL carries its own query
            if resp.status_code == 404:
                text = registry_error_text(resp)
                if "NAME_UNKNOWN" in text or not tags:
                    raise self.fail(f"repository {repo} not found")
            if resp.status_code != 200:
                raise self.fail(f"GET tags of {repo}: {registry_error_text(resp)}")
            try:
                page = resp.json().get("tags") or []
                tags.extend(str(t) for t in page)
            except (ValueError, AttributeError, UnicodeDecodeError):
                raise self.fail(f"tags list of {repo} is not JSON") from None
            url = _next_link(resp.headers.get("link", ""))
            if url is not None:
                if url in seen:
                    break
                seen.add(url)
        return tags


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        m = re.match(r"\s*<([^>]+)>\s*;(.*)$", part)
        if m and re.search(r'rel="?next"?', m.group(2)):
            return m.group(1)
    return None


class _UploadState:
    """The bytes of one blob upload: reopenable source, offset, hashing of each byte exactly once."""

    def __init__(self, digest: str, size: int, opener: Callable[[], BinaryIO], progress: ProgressFn | None):
        self.digest, self.size, self.opener, self.progress = digest, size, opener, progress
        self.offset = 0
        self.sent = 0
        self.location: str | None = None
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) went through the hash
        self._src: BinaryIO | None = None
        self._pos = 0

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

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

    def body(self, start: int, end: int) -> Iterator[bytes]:
        if start > self._hashed:
            # The server holds bytes we never hashed (cannot normally happen): hash them before going on.
            src = self._seek(self._hashed)
            while self._hashed < start:
                gap = src.read(min(IO_CHUNK, start - self._hashed))
                if not gap:
                    raise ImageError(f"blob {self.digest} is shorter than its declared {self.size} bytes")
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
                self._hash.update(chunk[max(new_from, 0) :] if new_from > 0 else chunk)
                self._hashed = pos + len(chunk)
            pos += len(chunk)
            self._pos = pos
            if pos == self.size:
                if src.read(1):
                    raise ImageError(f"blob {self.digest} is longer than its declared {self.size} bytes")
                if "sha256:" + self._hash.hexdigest() != self.digest:
                    raise ImageError(f"blob {self.digest} does not match its digest; the local copy is corrupt")
            self.sent += len(chunk)
            if self.progress:
                self.progress(self.digest, pos)
            yield chunk
