"""A local stand-in for the Fly Machines API, checked against Fly's published OpenAPI document.

Every request the stand-in receives and every response it sends is validated with openapi-core against
``/work/shared/fixtures/fly/fly-machines-openapi.json`` (shared fixtures); each mismatch is recorded in
``.violations`` and the ``fly_api`` fixture fails the test at teardown if there is any. Error statuses an
operation does not list (409 lease conflicts, 429, 408 wait timeouts, 404) are checked against the spec's
``ErrorResponse`` schema instead, which is the body the real API sends for them.

It simulates apps, machines (created → started, stop → stopped, destroy), leases (409 for a foreign
nonce), check status, events, metadata, secrets with versions and volumes. Tests script failures with
``fail_checks(image_substring)``, ``crash(image_substring)``, ``inject_429(...)``, ``hold_lease(...)`` and
``release_exit_code``; ``start_delay`` and ``check_delay`` set the lifecycle's timing.

Where the real API differs from its own spec, the stand-in answers like the real API (TEST-INFRA.md):
- ``services[].autostop`` comes back as a boolean for "stop"/"off" (the spec's own description says so);
  responses are validated with that one difference undone, requests strictly;
- lease answers are wrapped (``{"status": "success", "data": {...}}``) unless ``lease_envelope`` is off;
- the API fills in what a create left out: a default guest (shared-cpu-1x) and an empty ``init``;
- a crashing image runs the restart policy (on-failure, 10 retries by default): ``start``, then an
  ``exit`` event (exit_code 1, restarting) ``crash_after`` seconds later, again and again;
- right after an update, a ``/wait`` that names no ``version`` (or ``instance_id``) answers for the
  instance being replaced, which was already started;
- an update of the secrets that sets and unsets nothing changes nothing and reports the current version.

Given a registry (``RunningRegistry``), machine create/update also checks that the
image reference is pinned by digest and that the manifest resolves in that real registry.

Only ever listens on 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
import secrets as pysecrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_schema_validator import OAS30Validator
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request is noise

from tests.support.flyspec import SPEC_PATH  # noqa: E402

TOKEN = "fly-test-token-Zq81xPw0"  # what the fixture expects in "Authorization: Bearer ..."
OTHER_OWNER = "someone-else@example.com"
RELEASE_GROUP = "fly_app_release_command"
_MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

JSON = dict[str, Any]


def load_spec() -> JSON:
    """The spec with its one defect repaired in memory (duplicate operationId on metadata PUT/PATCH)."""
    spec: JSON = json.loads(SPEC_PATH.read_text())
    spec["paths"]["/apps/{app_name}/machines/{machine_id}/metadata"]["patch"]["operationId"] += "_patch"
    spec["servers"] = [{"url": "/v1"}]  # the stand-in serves the same paths under /v1 on loopback
    return spec


_OPENAPI_CACHE: dict[str, tuple[JSON, OpenAPI]] = {}
_CACHE_LOCK = threading.Lock()


def _openapi() -> tuple[JSON, OpenAPI]:
    # Building the validator takes ~0.5 s; share one per test process.
    with _CACHE_LOCK:
        if "v" not in _OPENAPI_CACHE:
            spec = load_spec()
            _OPENAPI_CACHE["v"] = (spec, OpenAPI.from_dict(spec))
        return _OPENAPI_CACHE["v"]


def _inline(schema: Any, components: JSON) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ulid() -> str:
    return pysecrets.token_hex(13).upper()[:26]


@dataclass
class HeldLease:
    nonce: str
    owner: str
    expires_at: float
    description: str = ""


@dataclass
class FakeMachine:
    id: str
    name: str
    region: str
    config: JSON
    state: str = "created"
    instance_id: str = field(default_factory=_ulid)
    events: list[JSON] = field(default_factory=list)
    lease: HeldLease | None = None
    min_secrets_version: int | None = None
    skip_service_registration: bool = False
    cordoned: bool = False
    due_start: float = 0.0
    configs: list[JSON] = field(default_factory=list)  # every config it has run, oldest first
    started_at: float = 0.0  # when the current instance reached "started" (checks pass check_delay later)
    crash_at: float = 0.0  # when a crashing instance exits next (0: it does not)
    restarts: int = 0
    prev_instance: str = ""  # the instance an update replaced, and the state it was in
    prev_state: str = ""

    @property
    def image(self) -> str:
        return str(self.config.get("image", ""))

    @property
    def group(self) -> str:
        meta = self.config.get("metadata") or {}
        return str(meta.get("fly_process_group", "app"))


@dataclass
class FakeApp:
    name: str
    machines: dict[str, FakeMachine] = field(default_factory=dict)
    ips: list[JSON] = field(default_factory=list)  # IPAssignment objects
    volumes: dict[str, JSON] = field(default_factory=dict)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (value, created_at)
    secrets_version: int = 0


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when the stand-in received it


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _err(status: int, message: str) -> _Reply:
    return _Reply(status, {"error": message})


_ROUTES: list[tuple[str, str]] = [
    ("GET", "/apps/{app_name}"),
    ("POST", "/apps"),
    ("GET", "/apps/{app_name}/machines"),
    ("POST", "/apps/{app_name}/machines"),
    ("GET", "/apps/{app_name}/machines/{machine_id}"),
    ("POST", "/apps/{app_name}/machines/{machine_id}"),
    ("DELETE", "/apps/{app_name}/machines/{machine_id}"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/start"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/stop"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/cordon"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/uncordon"),
    ("GET", "/apps/{app_name}/machines/{machine_id}/wait"),
    ("GET", "/apps/{app_name}/machines/{machine_id}/events"),
    ("GET", "/apps/{app_name}/machines/{machine_id}/lease"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/lease"),
    ("DELETE", "/apps/{app_name}/machines/{machine_id}/lease"),
    ("GET", "/apps/{app_name}/machines/{machine_id}/metadata"),
    ("POST", "/apps/{app_name}/machines/{machine_id}/metadata/{key}"),
    ("DELETE", "/apps/{app_name}/machines/{machine_id}/metadata/{key}"),
    ("GET", "/apps/{app_name}/volumes"),
    ("POST", "/apps/{app_name}/volumes"),
    ("GET", "/apps/{app_name}/ip_assignments"),
    ("POST", "/apps/{app_name}/ip_assignments"),
    ("GET", "/apps/{app_name}/secrets"),
    ("POST", "/apps/{app_name}/secrets"),
    ("DELETE", "/apps/{app_name}/secrets/{secret_name}"),
]


def _is_version_read(r: RecordedRequest) -> bool:
    if r.method != "POST" or not r.path.endswith("/secrets"):
        return False
    try:
        return json.loads(r.body or b"{}").get("values") in ({}, None)
    except ValueError:
        return False


def _api_shape(config: JSON) -> JSON:
    """A config as the real API returns it: autostop "stop"/"off" as booleans."""
    out = copy.deepcopy(config)
    for svc in out.get("services") or []:
        if isinstance(svc, dict) and svc.get("autostop") in ("stop", "off"):
            svc["autostop"] = svc["autostop"] == "stop"
    return out


def _spec_shape(body: Any) -> Any:
    """Undo the one documented difference (autostop booleans) so a response can be checked by the spec."""
    machines = body if isinstance(body, list) else [body]
    for m in machines:
        config = m.get("config") if isinstance(m, dict) else None
        for svc in (config or {}).get("services") or []:
            if isinstance(svc, dict) and isinstance(svc.get("autostop"), bool):
                svc["autostop"] = "stop" if svc["autostop"] else "off"
    return body


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^/v1" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


_COMPILED = [(m, t, _compile(t)) for m, t in _ROUTES]
_MUTATING = {"update", "delete", "start", "stop", "cordon", "uncordon"}


class FlyStandin:
    """The stand-in server's state and scripting knobs. Thread-safe: one lock around all state."""

    def __init__(self, *, registry_url: str | None = None, registry_host: str | None = None) -> None:
        self.spec, self.openapi = _openapi()
        schemas = self.spec["components"]["schemas"]
        self._error_schema = _inline(schemas["ErrorResponse"], schemas)
        self.lock = threading.RLock()
        self.apps: dict[str, FakeApp] = {}
        self.violations: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.registry_url = registry_url
        self.registry_host = registry_host
        self.start_delay = 0.0  # seconds from create/update/start until "started"
        self.check_delay = 0.0  # seconds from "started" until the checks pass
        self.crash_after = 0.5  # seconds a crashing image runs before it exits
        self.restart_delay = 0.2  # seconds the restart policy waits before starting it again
        self.max_wait = 0.3  # the stand-in never blocks a /wait longer than this (tests stay fast)
        self.release_exit_code = 0
        self.lease_envelope = True  # answer leases in the real API's {"status","data"} shape, or flat
        self.require_lease = True  # a mutation of an existing machine without its lease nonce is a violation
        self._failing_checks: list[str] = []
        self._crashing: list[str] = []
        self._429: list[tuple[str | None, str | None, int, str]] = []
        # Scripted faults: (method, path substring, kind, count); kinds: "500" (answered before acting),
        # "reset" (the connection drops before the request is acted on), "lost" (acted on, then the
        # connection drops: the answer is lost), "hang" (accepted, never answered until released).
        self._faults: list[tuple[str | None, str | None, str, int]] = []
        self.unhang = threading.Event()
        self.on_request: Callable[[RecordedRequest], None] | None = None  # test hook (e.g. to interrupt)
        self.url = ""

    # -- scripting API for tests -------------------------------------------------------------------

    def create_app(self, name: str) -> FakeApp:
        with self.lock:
            return self.apps.setdefault(name, FakeApp(name))

    def fail_checks(self, image_substring: str) -> None:
        """Machines whose image contains this string report a critical check."""
        self._failing_checks.append(image_substring)

    def crash(self, image_substring: str) -> None:
        """Machines whose image contains this string exit right after starting (a crash loop)."""
        self._crashing.append(image_substring)

    def inject_429(self, count: int, *, method: str | None = None, path_contains: str | None = None,
                   retry_after: str = "0") -> None:  # fmt: skip
        """The next ``count`` matching requests get 429 Too Many Requests."""
        with self.lock:
            self._429.append((method, path_contains, count, retry_after))

    def inject_fault(self, kind: str, *, count: int = 1, method: str | None = None,
                     path_contains: str | None = None) -> None:  # fmt: skip
        """The next ``count`` matching requests meet a fault: "500", "reset", "lost" or "hang" (see __init__)."""
        assert kind in ("500", "reset", "lost", "hang")
        with self.lock:
            self._faults.append((method, path_contains, kind, count))

    def _fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for i, (m, sub, kind, count) in enumerate(self._faults):
                if (m is None or m == method) and (sub is None or sub in path) and count > 0:
                    self._faults[i] = (m, sub, kind, count - 1)
                    return kind
        return None

    def hold_lease(self, app: str, machine_id: str, *, owner: str = OTHER_OWNER, ttl: float = 300,
                   description: str = "other") -> str:  # fmt: skip
        """Lease a machine as somebody else would; returns that lease's nonce."""
        with self.lock:
            nonce = pysecrets.token_hex(16)
            self.apps[app].machines[machine_id].lease = HeldLease(nonce, owner, time.time() + ttl, description)
            return nonce

    def seed_machine(self, app: str, config: JSON, *, region: str = "ams", state: str = "started") -> FakeMachine:
        """A machine as if an earlier deploy had made it."""
        with self.lock:
            a = self.create_app(app)
            m = FakeMachine(id=pysecrets.token_hex(7), name=f"m-{len(a.machines)}", region=region,
                            config=copy.deepcopy(config), state=state)  # fmt: skip
            m.configs.append(copy.deepcopy(config))
            self._event(m, "launch", "created")
            a.machines[m.id] = m
            return m

    def machines(self, app: str) -> list[FakeMachine]:
        with self.lock:
            return [m for m in self.apps[app].machines.values() if m.state != "destroyed"]

    def mutations(self) -> list[RecordedRequest]:
        """Requests that would change state: anything but GET, and but a secrets update with no values
        (which only reads the secrets version)."""
        return [r for r in self.requests if r.method != "GET" and not _is_version_read(r)]

    # -- request handling ---------------------------------------------------------------------------

    def wsgi(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        rec = RecordedRequest(
            request.method,
            request.path,
            list(request.args.items(multi=True)),
            {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
            body,
        )
        with self.lock:
            self.requests.append(rec)
        if self.on_request is not None:
            self.on_request(rec)
        match = None
        for method, template, rx in _COMPILED:
            m = rx.match(request.path)
            if m and method == request.method:
                match = (template, m.groupdict())
                break
        try:
            self._validate_request(request)
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise _err(401, "unauthorized")
            if match is None:
                self._violation(f"{request.method} {request.path}: not implemented by the stand-in")
                raise _err(404, "not found")
            self._maybe_429(request.method, request.path)
            fault = self._fault(request.method, request.path)
            if fault == "500":
                raise _err(500, "internal error (injected)")
            if fault == "hang":
                self.unhang.wait(120)
                raise _err(503, "hung (injected)")
            if fault == "reset":
                return self._reset(environ)
            payload = json.loads(body) if body else None
            try:
                with self.lock:
                    self._dispatch(request, match[0], match[1], payload)
                raise _Reply(200, {})
            except _Reply as reply:
                if fault == "lost":
                    self._validate_response(request, self._response(reply), match[0])
                    return self._reset(environ)
                raise
        except _Reply as reply:
            response = self._response(reply)
        self._validate_response(request, response, match[0] if match else None)
        return response(environ, start_response)

    @staticmethod
    def _reset(environ: Any) -> Any:
        """Drop the connection without an answer (what a client sees as a reset)."""
        import socket

        sock = environ.get("werkzeug.socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
        return []

    def _response(self, reply: _Reply) -> Response:
        if reply.body is None:
            resp = Response(b"", status=reply.status)
            resp.headers.pop("Content-Type", None)
        else:
            resp = Response(json.dumps(reply.body), status=reply.status, mimetype="application/json")
        for k, v in reply.headers.items():
            resp.headers[k] = v
        return resp

    def _violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def _validate_request(self, request: Request) -> None:
        try:
            self.openapi.validate_request(WerkzeugOpenAPIRequest(request))
        except Exception as e:
            cause = getattr(e, "__cause__", None)
            detail = f"{e}" + (f" ({cause})" if cause else "")
            self._violation(f"request {request.method} {request.path}: {detail}")
            raise _err(400, f"request does not match the OpenAPI spec: {detail}") from None

    def _validate_response(self, request: Request, response: Response, template: str | None) -> None:
        documented: JSON = {}
        if template is not None:
            documented = self.spec["paths"][template][request.method.lower()]["responses"]
        status = str(response.status_code)
        if status not in documented:
            if response.status_code < 400:
                self._violation(f"{request.method} {request.path}: undocumented success status {status}")
                return
            try:
                OAS30Validator(self._error_schema).validate(json.loads(response.get_data() or b"null"))
            except Exception as e:
                self._violation(f"{request.method} {request.path}: {status} body is not an ErrorResponse: {e}")
            return
        if not (documented[status].get("content") or {}):
            # The spec lists no body here; the real API may still send one (SOURCES.md), so a documented
            # status is all there is to check. (openapi-core would demand a body for `content: {}`.)
            return
        check = response
        if response.mimetype == "application/json":
            fixed = json.dumps(_spec_shape(json.loads(response.get_data() or b"null")))
            check = Response(fixed, status=response.status_code, mimetype="application/json")
        try:
            self.openapi.validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(check))
        except Exception as e:
            cause = getattr(e, "__cause__", None)
            self._violation(f"response {request.method} {request.path} {status}: {e} ({cause})")

    def _maybe_429(self, method: str, path: str) -> None:
        with self.lock:
            for i, (m, sub, count, ra) in enumerate(self._429):
                if (m is None or m == method) and (sub is None or sub in path) and count > 0:
                    self._429[i] = (m, sub, count - 1, ra)
                    raise _Reply(429, {"error": "rate limit exceeded"}, {"Retry-After": ra})

    # -- simulation --------------------------------------------------------------------------------

    def _event(self, m: FakeMachine, type_: str, status: str, request: JSON | None = None,
               at: float | None = None) -> None:  # fmt: skip
        ev: JSON = {"id": _ulid(), "type": type_, "status": status, "source": "flyd",
                    "timestamp": int((time.time() if at is None else at) * 1000)}  # fmt: skip
        if request is not None:
            ev["request"] = request
        m.events.append(ev)

    def _tick(self, m: FakeMachine) -> None:
        now = time.time()
        while True:
            if m.state in ("created", "starting", "replacing") and now >= m.due_start:
                at = m.due_start
                if m.group == RELEASE_GROUP:
                    self._event(m, "start", "started", at=at)
                    m.state = "stopped"
                    self._event(m, "exit", "stopped", {"exit_event": {"exit_code": self.release_exit_code}}, at=at)
                    continue
                m.state = "started"
                m.started_at = at
                m.prev_instance = m.prev_state = ""
                self._event(m, "start", "started", at=at)
                if any(s in m.image for s in self._crashing):
                    m.crash_at = at + self.crash_after
                continue
            if m.state == "started" and m.crash_at and now >= m.crash_at:
                at, m.crash_at = m.crash_at, 0.0
                m.restarts += 1
                policy = m.config.get("restart") or {}
                retries = policy.get("max_retries", 10)
                restarting = policy.get("policy", "on-failure") in ("on-failure", "always") and m.restarts <= retries
                exit_event = {"exit_code": 1, "oom_killed": False, "restarting": restarting,
                              "exited_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}  # fmt: skip
                self._event(m, "exit", "stopped", {"exit_event": exit_event}, at=at)
                if restarting:
                    m.state = "starting"
                    m.due_start = at + self.restart_delay
                else:
                    m.state = "stopped"
                continue
            break
        if m.lease is not None and m.lease.expires_at < now:
            m.lease = None

    def _checks(self, m: FakeMachine) -> list[JSON]:
        names = list((m.config.get("checks") or {}).keys())
        for si, svc in enumerate(m.config.get("services") or []):
            names += [f"servicecheck-{si:02d}-{ci}" for ci, _ in enumerate(svc.get("checks") or [])]
        failing = any(s in m.image for s in self._failing_checks + self._crashing)
        if m.state == "started" and time.time() < m.started_at + self.check_delay:
            return [{"name": n, "status": "critical", "output": "waiting for the app", "updated_at": _now_iso()}
                    for n in names]  # fmt: skip
        if m.state != "started":
            return [{"name": n, "status": "critical", "output": "machine not started", "updated_at": _now_iso()}
                    for n in names]  # fmt: skip
        return [
            {"name": n, "status": "critical" if failing else "passing",
             "output": "connect: connection refused" if failing else "OK", "updated_at": _now_iso()}
            for n in names
        ]  # fmt: skip

    def _machine_json(self, m: FakeMachine) -> JSON:
        self._tick(m)
        ref: JSON = {}
        if "@" in m.image:
            name, digest = m.image.split("@", 1)
            reg, _, repo = name.partition("/")
            ref = {"registry": reg, "repository": repo, "digest": digest, "tag": ""}
        return {
            "id": m.id, "name": m.name, "state": m.state, "region": m.region, "instance_id": m.instance_id,
            "private_ip": "fdaa:0:1:a7b:1::2", "config": _api_shape(m.config), "image_ref": ref,
            "checks": self._checks(m),
            "events": list(reversed(m.events))[:5], "created_at": _now_iso(), "updated_at": _now_iso(),
            "host_status": "ok",
        }  # fmt: skip

    def _lease_json(self, lease: HeldLease, version: str) -> JSON:
        flat = {"nonce": lease.nonce, "expires_at": int(lease.expires_at), "owner": lease.owner,
                "description": lease.description, "version": version}  # fmt: skip
        return {"status": "success", "data": flat} if self.lease_envelope else flat

    def _app(self, name: str) -> FakeApp:
        if name not in self.apps:
            raise _err(404, f"app {name} not found")
        return self.apps[name]

    def _machine(self, app: FakeApp, mid: str) -> FakeMachine:
        m = app.machines.get(mid)
        if m is None or m.state == "destroyed":
            raise _err(404, f"machine {mid} not found")
        self._tick(m)
        return m

    def _check_image(self, image: str) -> None:
        if "@sha256:" not in image:
            self._violation(f"machine image {image!r} is not pinned by digest")
            raise _err(400, f"image {image} is not pinned by digest")
        if self.registry_url is None:
            return
        name, digest = image.split("@", 1)
        host, _, repo = name.partition("/")
        if host not in ("registry.fly.io", self.registry_host):
            raise _err(400, f"image registry {host} is not reachable from the stand-in")
        try:
            r = httpx.head(f"{self.registry_url}/v2/{repo}/manifests/{digest}",
                           headers={"Accept": _MANIFEST_ACCEPT}, timeout=10)  # fmt: skip
        except httpx.HTTPError as e:
            raise _err(400, f"image {image}: registry unreachable: {e}") from None
        if r.status_code != 200 or r.headers.get("Docker-Content-Digest") != digest:
            raise _err(400, f"image {image} does not resolve in the registry (HTTP {r.status_code})")

    def _check_lease(self, m: FakeMachine, request: Request) -> None:
        nonce = request.headers.get("fly-machine-lease-nonce")
        if m.lease is not None and m.lease.nonce != nonce:
            raise _err(409, f"machine {m.id} lease currently held by {m.lease.owner}")
        if m.lease is None and self.require_lease:
            self._violation(f"{request.method} {request.path}: machine changed without holding its lease")

    def _apply_config(self, m: FakeMachine, payload: JSON, app: FakeApp) -> None:
        config = payload.get("config") or {}
        self._check_image(str(config.get("image", "")))
        for mount in config.get("mounts") or []:
            vol = app.volumes.get(str(mount.get("volume")))
            if vol is None:
                raise _err(400, f"volume {mount.get('volume')} not found")
            vol["attached_machine_id"] = m.id
        msv = payload.get("min_secrets_version")
        if msv is not None and msv > app.secrets_version:
            raise _err(400, f"min_secrets_version {msv} is newer than the app's secrets ({app.secrets_version})")
        stored = copy.deepcopy(config)
        stored.setdefault("guest", {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
        stored.setdefault("init", {})
        stored.setdefault("metadata", {})
        m.config = stored
        m.configs.append(copy.deepcopy(config))
        m.prev_instance, m.prev_state = m.instance_id, m.state
        m.restarts, m.crash_at = 0, 0.0
        m.min_secrets_version = msv
        m.skip_service_registration = bool(payload.get("skip_service_registration"))
        m.cordoned = m.skip_service_registration
        m.instance_id = _ulid()
        if payload.get("skip_launch"):
            m.state = "stopped"
        else:
            m.state = "created" if m.state == "created" else "replacing"
            m.due_start = time.time() + self.start_delay
            self._tick(m)

    def _dispatch(self, request: Request, template: str, args: dict[str, str], payload: Any) -> None:
        method = request.method
        if template == "/apps":
            self.create_app(payload["name"])
            raise _Reply(201, None)
        app = self._app(args["app_name"])
        if template == "/apps/{app_name}":
            raise _Reply(200, {"id": app.name, "name": app.name, "status": "deployed",
                               "machine_count": len(self.machines(app.name))})  # fmt: skip
        if template == "/apps/{app_name}/machines":
            if method == "GET":
                raise _Reply(200, [self._machine_json(m) for m in app.machines.values() if m.state != "destroyed"])
            m = FakeMachine(id=pysecrets.token_hex(7), name=payload.get("name") or f"m-{len(app.machines)}",
                            region=payload.get("region") or "ams", config={})  # fmt: skip
            self._event(m, "launch", "created")
            self._apply_config(m, payload, app)
            app.machines[m.id] = m
            body = self._machine_json(m)
            if payload.get("lease_ttl"):
                # Leased to the creator at once; the nonce comes only in this answer (spec: Machine.nonce).
                m.lease = HeldLease(pysecrets.token_hex(16), "nixfly-test@example.com",
                                    time.time() + float(payload["lease_ttl"]), "")  # fmt: skip
                body["nonce"] = m.lease.nonce
            raise _Reply(200, body)
        if template == "/apps/{app_name}/ip_assignments":
            if method == "GET":
                raise _Reply(200, {"ips": list(app.ips)})
            kind = str(payload.get("type", ""))
            if kind not in ("v4", "v6", "shared_v4", "private_v6"):
                raise _err(400, f"unknown IP type {kind!r}")
            n = len(app.ips) + 1
            ip = {"v4": f"137.66.0.{n}", "shared_v4": "66.241.124.7", "v6": f"2a09:8280:1::{n:x}",
                  "private_v6": f"fdaa:0:1:a7b:0:{n:x}::1"}[kind]  # fmt: skip
            item = {"ip": ip, "region": "global", "shared": kind == "shared_v4", "created_at": _now_iso(),
                    "service_name": ""}  # fmt: skip
            app.ips.append(item)
            raise _Reply(200, item)
        if template == "/apps/{app_name}/volumes":
            if method == "GET":
                raise _Reply(200, list(app.volumes.values()))
            vid = "vol_" + pysecrets.token_hex(8)
            vol = {"id": vid, "name": payload["name"], "region": payload.get("region", "ams"),
                   "size_gb": payload.get("size_gb", 1), "state": "created", "created_at": _now_iso(),
                   "encrypted": True, "fstype": "ext4"}  # fmt: skip
            app.volumes[vid] = vol
            raise _Reply(200, vol)
        if template == "/apps/{app_name}/secrets":
            if method == "GET":
                raise _Reply(200, {"secrets": [self._secret_json(n, v) for n, v in sorted(app.secrets.items())]})
            for name, value in (payload.get("values") or {}).items():
                app.secrets[name] = (value, app.secrets.get(name, (value, _now_iso()))[1])
            if payload.get("values"):
                app.secrets_version += 1
            listing = [self._secret_json(n, v) for n, v in sorted(app.secrets.items())]
            raise _Reply(200, {"version": app.secrets_version, "Version": app.secrets_version, "secrets": listing})
        if template == "/apps/{app_name}/secrets/{secret_name}":
            if args["secret_name"] not in app.secrets:
                raise _err(404, f"secret {args['secret_name']} not found")
            del app.secrets[args["secret_name"]]
            app.secrets_version += 1
            raise _Reply(200, {"version": app.secrets_version, "Version": app.secrets_version})
        m = self._machine(app, args["machine_id"])
        if "/metadata" in template:
            self._metadata(m, request, args, payload)
        action = template.rsplit("/", 1)[1] if not template.endswith("}") else "machine"
        if action == "machine":
            action = {"GET": "show", "POST": "update", "DELETE": "delete"}[method]
        if action in _MUTATING:
            self._check_lease(m, request)
        if action == "show":
            raise _Reply(200, self._machine_json(m))
        if action == "update":
            self._event(m, "update", "replacing", {"config": payload.get("config")})
            self._apply_config(m, payload, app)
            raise _Reply(200, self._machine_json(m))
        if action == "delete":
            if m.state == "started" and request.args.get("force") != "true":
                raise _err(412, "machine is running; stop it or pass force=true")
            m.state = "destroyed"
            m.lease = None
            self._event(m, "destroy", "destroyed")
            for vol in app.volumes.values():
                if vol.get("attached_machine_id") == m.id:
                    vol.pop("attached_machine_id")
            raise _Reply(200, {"ok": True})
        if action == "start":
            m.state = "starting"
            m.due_start = time.time() + self.start_delay
            self._tick(m)
            raise _Reply(200, {"previous_state": "stopped"})
        if action == "stop":
            m.state = "stopped"
            self._event(m, "stop", "stopped")
            raise _Reply(200, {"ok": True})  # a body where the spec documents none, as the real API does
        if action in ("cordon", "uncordon"):
            m.cordoned = action == "cordon"
            raise _Reply(200, {"ok": True})
        if action == "events":
            limit = int(request.args.get("limit", "20"))
            raise _Reply(200, list(reversed(m.events))[:limit])
        if action == "wait":
            self._wait(m, request)
        if action == "lease":
            self._lease(m, request, payload)
        raise _err(500, f"stand-in has no handler for {method} {template}")

    def _metadata(self, m: FakeMachine, request: Request, args: dict[str, str], payload: Any) -> None:
        meta = m.config.setdefault("metadata", {})
        if request.method == "GET":
            raise _Reply(200, dict(meta))
        nonce = request.headers.get("fly-machine-lease-nonce")
        if m.lease is not None and m.lease.nonce != nonce:
            raise _err(409, f"machine {m.id} lease currently held by {m.lease.owner}")
        if request.method == "DELETE":
            meta.pop(args["key"], None)
        else:
            meta[args["key"]] = str((payload or {}).get("value", ""))
        raise _Reply(204, None)

    def _secret_json(self, name: str, v: tuple[str, str]) -> JSON:
        digest = hashlib.sha256(v[0].encode()).hexdigest()[:16]
        return {"name": name, "digest": digest, "created_at": v[1], "updated_at": v[1]}

    def _wait(self, m: FakeMachine, request: Request) -> None:
        states = request.args.getlist("state") or ["started"]
        if any("," in s for s in states):
            self._violation("/wait with a comma-joined state list; the spec describes repeated parameters")
        timeout = min(float(request.args.get("timeout", "60")), self.max_wait)
        deadline = time.time() + timeout
        version = request.args.get("version") or request.args.get("instance_id")
        if version and version not in (m.instance_id, m.prev_instance):
            raise _err(400, f"machine {m.id} has no version {version}")
        while True:
            self._tick(m)
            old = (not version or version == m.prev_instance) and m.prev_instance
            if old and m.prev_state in states and m.state in ("replacing", "starting", "created"):
                # The real API may answer for the instance that is being replaced.
                raise _Reply(200, {"ok": True, "state": m.prev_state, "version": m.prev_instance})
            if m.state in states:
                raise _Reply(200, {"ok": True, "state": m.state, "version": m.instance_id})
            if time.time() >= deadline:
                raise _err(408, f"machine {m.id} did not reach {','.join(states)} (state {m.state})")
            self.lock.release()
            try:
                time.sleep(0.01)
            finally:
                self.lock.acquire()

    def _lease(self, m: FakeMachine, request: Request, payload: Any) -> None:
        nonce = request.headers.get("fly-machine-lease-nonce")
        if request.method == "GET":
            if m.lease is None:
                raise _err(404, "no lease")
            raise _Reply(200, self._lease_json(m.lease, m.instance_id))
        if request.method == "DELETE":
            if m.lease is None:
                raise _Reply(200, None)
            if m.lease.nonce != nonce:
                raise _err(409, f"lease held by {m.lease.owner}; nonce does not match")
            m.lease = None
            raise _Reply(200, None)
        ttl = float((payload or {}).get("ttl") or 30)
        if m.lease is not None and m.lease.nonce != nonce:
            raise _err(409, f"machine {m.id} lease currently held by {m.lease.owner}, "
                            f"expires at {time.strftime('%H:%M:%S', time.gmtime(m.lease.expires_at))}")  # fmt: skip
        if m.lease is not None:
            m.lease.expires_at = time.time() + ttl
        else:
            m.lease = HeldLease(pysecrets.token_hex(16), "nixfly-test@example.com", time.time() + ttl,
                                str((payload or {}).get("description", "")))  # fmt: skip
        raise _Reply(201, self._lease_json(m.lease, m.instance_id))


@dataclass
class RunningStandin:
    """What a test gets from ``fly_api``: the server's state/knobs plus how to reach it."""

    standin: FlyStandin
    url: str  # base URL ending in /v1, for --api-url / FLY_API_URL
    token: str = TOKEN

    def __getattr__(self, name: str) -> Any:
        return getattr(self.standin, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Knobs (release_exit_code, lease_envelope, ...) live on the stand-in, not on this handle.
        if name in ("standin", "url", "token"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.standin, name, value)


@pytest.fixture
def fly_api(request: pytest.FixtureRequest) -> Iterator[RunningStandin]:
    """A validated Machines API stand-in on 127.0.0.1; fails the test if any exchange broke the spec.

    If the test also uses the ``registry`` fixture, images are resolved by digest in that registry.
    """
    registry = request.getfixturevalue("registry") if "registry" in request.fixturenames else None
    standin = FlyStandin(registry_url=getattr(registry, "url", None), registry_host=getattr(registry, "host", None))
    server = make_server("127.0.0.1", 0, standin.wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    standin.url = url
    try:
        yield RunningStandin(standin, url)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert not standin.violations, "Machines API spec violations:\n" + "\n".join(standin.violations)


@pytest.fixture
def fly_env(fly_api: RunningStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunningStandin:
    """``fly_api`` plus the environment nixfly reads: its URL and token, and state/cache dirs in tmp_path."""
    monkeypatch.setenv("FLY_API_TOKEN", fly_api.token)
    monkeypatch.setenv("FLY_API_URL", fly_api.url)
    monkeypatch.setenv("NIXFLY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return fly_api


@pytest.fixture(scope="session")
def tiny_oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small OCI layout made by umoci with tags v1, v2, v3 (same empty rootfs, different configs; each has a
    cmd and exposes 8080/tcp, as a deployable image does)."""
    import subprocess

    layout = tmp_path_factory.mktemp("fly-oci") / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:v1"], check=True, capture_output=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:v1", "--config.cmd=/bin/serve",
                    "--config.exposedports=8080/tcp"], check=True, capture_output=True)  # fmt: skip
    for n in (2, 3):
        subprocess.run(
            ["umoci", "config", "--image", f"{layout}:v1", "--tag", f"v{n}", f"--config.env=VERSION={n}"],
            check=True,
            capture_output=True,
        )
    return layout


@pytest.fixture(scope="session")
def tiny_nocmd_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout whose image (tag ``nocmd``) has neither an entrypoint nor a cmd: nothing to run."""
    import subprocess

    layout = tmp_path_factory.mktemp("fly-oci-nocmd") / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:nocmd"], check=True, capture_output=True)
    return layout


def push_tiny_image(layout: Path, registry_host: str, repo: str, tag: str, workdir: Path) -> str:
    """Copy ``layout:tag`` into the registry with skopeo; the digest-pinned reference it now has there."""
    import subprocess

    digest_file = workdir / f"{repo.replace('/', '_')}-{tag}.digest"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"--digestfile={digest_file}",
         f"oci:{layout}:{tag}", f"docker://{registry_host}/{repo}:{tag}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return f"{registry_host}/{repo}@{digest_file.read_text().strip()}"
