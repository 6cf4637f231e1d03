"""A typed client for the Fly Machines REST API (https://docs.machines.dev), sync, on httpx.

Promises:
- the access token never appears in ``repr``/``str`` of any object here, nor in any error message;
- requests refused by the rate limiter (429) are retried with backoff (honouring ``Retry-After``),
  5xx answers and transport failures only for idempotent requests;
- request shapes follow the published OpenAPI document strictly (lease acquire with a JSON body,
  one ``state`` query parameter per wanted state, secret delete by path);
- both shapes of a lease answer (flat ``Lease`` and ``{"status": ..., "data": Lease}``) are accepted,
  and a body where the spec documents none is ignored;
- every call ends within ``timeout`` seconds, retries included (a /wait gets its own wait on top);
- a lease request is retried after a 5xx or a broken connection, and a lease granted whose answer was lost
  is recognised as the caller's by its description.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from nixfly.errors import ConfigError, DeployError, add_secret, excerpt
from nixfly.flytoken import find_fly_token
from nixfly.limits import ACCEPT_ENCODING, JSON_MAX, read_response
from nixfly.retry import RetryPolicy, Transient, retry_after_seconds, status_is_transient

DEFAULT_API_URL = "https://api.machines.dev/v1"
API_URL_ENV = "FLY_API_URL"
FLYCTL_API_URL_ENV = "FLY_API_BASE_URL"
_VERSIONED = re.compile(r"/v\d+$")
TOKEN_ENV = "FLY_API_TOKEN"
LEASE_NONCE_HEADER = "fly-machine-lease-nonce"
# Macaroon tokens are sent with the FlyV1 scheme; everything else is a plain Bearer token.
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")
# The longest single /wait the API allows; longer waits are loops of these.
MAX_WAIT_SECONDS = 60
# How long one API call may take, its retries included, unless --timeout says otherwise. A server that
# accepts and never answers must not hold a command for minutes (each attempt gets what is left).
DEFAULT_TIMEOUT = 30.0

JSON = dict[str, Any]
Params = list[tuple[str, str | int | float | bool | None]]


class FlyAPIError(DeployError):
    """The Machines API answered with an error. ``status`` is the HTTP status (0 for transport failures)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class LeaseConflict(FlyAPIError):
    """Somebody else holds the lease on a machine. ``held``: that lease, when the API was asked (a refused
    :meth:`MachinesAPI.acquire_lease` asks; None then means it was gone by the time it was read)."""

    held: Lease | None = None


class NotFound(FlyAPIError):
    """The app, machine or secret does not exist (404)."""


@dataclass(frozen=True)
class AccessToken:
    """An API token. Its value is only reachable through :meth:`authorization`; repr/str are redacted."""

    _value: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self._value.strip():
            raise ConfigError("the Fly API token is empty")
        if not self._value.isascii() or any(c in self._value for c in "\r\n"):
            raise ConfigError("the Fly API token has characters no token has (non-ASCII or a line break)")
        for piece in {self._value.strip(), *self._value.split(",")}:  # no output may show it (errors.redact)
            add_secret(piece.strip())

    def __str__(self) -> str:
        return "<redacted token>"

    def authorization(self) -> str:
        """The ``Authorization`` header value: ``FlyV1 <macaroons,...>`` or ``Bearer <token>``."""
        raw = self._value.strip()
        if raw.startswith("FlyV1 "):
            return raw
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if any(p.startswith(_MACAROON_PREFIXES) for p in parts):
            return "FlyV1 " + ",".join(parts)
        return f"Bearer {raw}"

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the token (and of each of its macaroons) replaced."""
        for piece in {self._value.strip(), *self._value.split(",")}:
            piece = piece.strip()
            if len(piece) >= 4:
                text = text.replace(piece, "<redacted>")
        return text


def resolve_token(flag: str | None, *, env: Mapping[str, str] | None = None, home: Path | None = None) -> AccessToken:
    """The token from ``--access-token``, else ``FLY_API_TOKEN``, else ``~/.fly/config.yml``.

    Raises ConfigError (never naming the token) when none is found or the config file is unreadable.
    """
    env = os.environ if env is None else env
    if flag:
        return AccessToken(flag)
    found = find_fly_token(env, home if home is not None else Path.home())
    if found is not None:
        return AccessToken(found.value)
    raise ConfigError(f"no Fly API token: pass --access-token, set {TOKEN_ENV}, or log in with flyctl")


def resolve_api_url(flag: str | None, *, env: Mapping[str, str] | None = None) -> str:
    """The API base URL from ``--api-url``, else ``FLY_API_URL`` (or flyctl's ``FLY_API_BASE_URL``), else
    the public Machines API. A URL without a ``/vN`` path (``https://api.machines.dev``) gets ``/v1``."""
    env = os.environ if env is None else env
    url = (flag or env.get(API_URL_ENV) or env.get(FLYCTL_API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"Fly API URL {url!r} is not an http(s) URL")
    # flyctl's FLY_API_BASE_URL convention names the host only; the Machines API lives under /v1.
    if not _VERSIONED.search(parts.path):
        url += "/v1"
    return url


@dataclass(frozen=True)
class Lease:
    """A machine lease as granted by the API."""

    nonce: str
    expires_at: int | None = None
    owner: str | None = None
    description: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, body: Any) -> Lease:
        """Accept the flat ``Lease`` shape and the ``{"status":..., "data": Lease}`` envelope."""
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        if not isinstance(body, dict) or not isinstance(body.get("nonce"), str) or not body["nonce"]:
            raise FlyAPIError("the Fly API answered a lease request without a lease nonce")
        exp = body.get("expires_at")
        return cls(
            nonce=body["nonce"],
            expires_at=exp if isinstance(exp, int) else None,
            owner=body.get("owner") if isinstance(body.get("owner"), str) else None,
            description=body.get("description") if isinstance(body.get("description"), str) else None,
            version=body.get("version") if isinstance(body.get("version"), str) else None,
        )


@dataclass(frozen=True)
class Machine:
    """The parts of a Machine object nixfly reasons about; ``config`` is the raw MachineConfig."""

    id: str
    name: str
    state: str
    region: str
    config: JSON
    instance_id: str = ""
    checks: tuple[JSON, ...] = ()
    events: tuple[JSON, ...] = ()
    # The nonce of the lease a create with ``lease_ttl`` took (the API returns it only then).
    nonce: str | None = None

    def meta(self, key: str) -> str | None:
        """The string its config's metadata holds under ``key``, if any."""
        meta = self.config.get("metadata")
        value = meta.get(key) if isinstance(meta, dict) else None
        return value if isinstance(value, str) else None

    @property
    def process_group(self) -> str:
        """The fly process group (flyctl's metadata key); machines without one belong to ``app``."""
        return self.meta("fly_process_group") or "app"

    @property
    def image(self) -> str:
        image = self.config.get("image")
        return image if isinstance(image, str) else ""

    @classmethod
    def parse(cls, body: Any) -> Machine:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise FlyAPIError("the Fly API answered with a machine object that has no id")
        raw_config = body.get("config")
        config: JSON = raw_config if isinstance(raw_config, dict) else {}
        return cls(
            id=body["id"],
            name=str(body.get("name") or ""),
            state=str(body.get("state") or ""),
            region=str(body.get("region") or ""),
            config=config,
            instance_id=str(body.get("instance_id") or ""),
            checks=tuple(c for c in body.get("checks") or () if isinstance(c, dict)),
            events=tuple(e for e in body.get("events") or () if isinstance(e, dict)),
            nonce=body["nonce"] if isinstance(body.get("nonce"), str) and body["nonce"] else None,
        )


class MachinesAPI:
    """One Fly Machines API endpoint with one token. Safe to share between threads."""

    def __init__(
        self,
        token: AccessToken,
        base_url: str = DEFAULT_API_URL,
        *,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigError("the Fly API timeout must be more than 0 seconds")
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # The project's one retry policy; max_attempts counts the first try too.
        self._policy = RetryPolicy(retries=max(1, max_attempts) - 1, backoff=backoff_base, max_backoff=backoff_cap,
                                   max_retry_after=backoff_cap, sleep=sleep)  # fmt: skip
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "nixfly", "Accept-Encoding": ACCEPT_ENCODING},
        )
        self.retries = 0  # how many retried attempts this client made (for progress reporting and tests)

    def __repr__(self) -> str:
        return f"MachinesAPI(base_url={self.base_url!r}, token=<redacted>)"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MachinesAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: Params | None = None,
        nonce: str | None = None,
        ok: Sequence[int] = (200, 201, 202, 204),
        extra_time: float = 0.0,
    ) -> httpx.Response:
        """Send one API request, retrying as the module docstring promises; raise FlyAPIError otherwise.

        A 429 is retried for every request because the rate limiter refuses it before it is acted on;
        a 5xx or a broken connection may have been acted on, so only idempotent requests retry those.
        The call, retries included, ends after ``timeout`` (+ ``extra_time``, for a /wait) seconds.
        """
        headers = {"Authorization": self._token.authorization()}
        if nonce is not None:
            headers[LEASE_NONCE_HEADER] = nonce
        what = f"{method} {path}"
        last_response: list[httpx.Response] = []
        budget = self.timeout + extra_time
        deadline = time.monotonic() + budget

        def attempt() -> httpx.Response:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                raise FlyAPIError(f"Fly API {what}: no answer within {budget:g}s (--timeout to wait longer)")
            try:
                req = self._client.build_request(method, path, json=json, params=params, headers=headers,
                                                 timeout=httpx.Timeout(remaining))  # fmt: skip
                # Read whole, but never more than JSON_MAX (nixfly.limits): an endless answer is one line.
                resp = read_response(self._client.send(req, stream=True), JSON_MAX, f"Fly API {what}", FlyAPIError)
            except httpx.TimeoutException:
                raise FlyAPIError(f"Fly API {what}: no answer within {budget:g}s (--timeout to wait longer)") from None
            except UnicodeEncodeError:
                # A header (the token) or the path holds characters HTTP cannot carry: say which, not the value.
                raise FlyAPIError(f"Fly API {what}: the access token, app name or machine id has characters "
                                  "that cannot be sent in an HTTP request") from None
            except httpx.HTTPError as e:
                text = self._token.scrub(f"Fly API {what} at {self.base_url}: {type(e).__name__}: {e}")
                if idempotent:
                    raise Transient(text) from None
                raise FlyAPIError(text) from None
            if resp.status_code in ok:
                return resp
            if status_is_transient(resp.status_code, repeatable=idempotent):
                last_response[:] = [resp]
                raise Transient(f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("retry-after")))
            raise self._error(what, resp)

        def count(_failure: Transient, _seconds: float) -> None:
            self.retries += 1

        def give_up(failure: Transient, _attempts: int) -> Exception:
            if last_response and failure.what.startswith("HTTP "):
                return self._error(what, last_response[0])
            return FlyAPIError(failure.what)

        return self._policy.run(attempt, give_up=give_up, on_retry=count)

    def _error(self, what: str, resp: httpx.Response) -> FlyAPIError:
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("error"):
                detail = str(body["error"])
        except (ValueError, RecursionError):
            detail = excerpt(resp.text, 200)  # redacted before it is cut: no prefix of a secret survives
        msg = self._token.scrub(f"Fly API {what}: HTTP {resp.status_code}" + (f": {detail}" if detail else ""))
        if resp.status_code == 404:
            return NotFound(msg, status=404)
        if resp.status_code == 409:
            return LeaseConflict(msg, status=409)
        if resp.status_code == 401:
            return FlyAPIError(f"Fly API {what}: HTTP 401: the access token was refused", status=401)
        return FlyAPIError(msg, status=resp.status_code)

    @staticmethod
    def _json(resp: httpx.Response, what: str) -> Any:
        try:
            return resp.json()
        except (ValueError, RecursionError):
            raise FlyAPIError(f"Fly API {what}: answer is not JSON") from None

    @staticmethod
    def _p(*parts: str) -> str:
        # surrogateescape: an argument that was not UTF-8 is sent as its bytes, percent-encoded (then a 404)
        return "/" + "/".join(quote(p.encode("utf-8", "surrogateescape"), safe="") for p in parts)

    # -- apps --------------------------------------------------------------------------------------

    def get_app(self, app: str) -> JSON | None:
        """The app object, or None if it does not exist."""
        try:
            body = self._json(self.request("GET", self._p("apps", app), idempotent=True), "get app")
        except NotFound:
            return None
        return body if isinstance(body, dict) else {}

    def create_app(self, app: str, org: str) -> None:
        """Create an app in ``org`` (a slug, or ``personal``); FlyAPIError if the name is taken."""
        self.request("POST", "/apps", idempotent=False, json={"name": app, "org_slug": org})

    # -- machines ----------------------------------------------------------------------------------

    def list_machines(self, app: str) -> list[Machine]:
        """Every machine of ``app`` that is not destroyed."""
        body = self._json(self.request("GET", self._p("apps", app, "machines"), idempotent=True), "list")
        if not isinstance(body, list):
            raise FlyAPIError("Fly API list machines: answer is not a list")
        machines = [Machine.parse(m) for m in body]
        return [m for m in machines if m.state not in ("destroyed", "destroying")]

    def get_machine(self, app: str, machine_id: str) -> Machine:
        resp = self.request("GET", self._p("apps", app, "machines", machine_id), idempotent=True)
        return Machine.parse(self._json(resp, "get machine"))

    def create_machine(self, app: str, body: JSON) -> Machine:
        """Create a machine. With ``lease_ttl`` in ``body`` the API leases it to us at once and the answer
        carries the nonce (``Machine.nonce``), so nobody can touch it between its creation and our lease."""
        resp = self.request("POST", self._p("apps", app, "machines"), idempotent=False, json=body)
        return Machine.parse(self._json(resp, "create machine"))

    def update_machine(self, app: str, machine_id: str, body: JSON, *, nonce: str) -> Machine:
        # Re-sending the same config converges on the same machine version, so a retry is harmless.
        resp = self.request(
            "POST", self._p("apps", app, "machines", machine_id), idempotent=True, json=body, nonce=nonce
        )
        return Machine.parse(self._json(resp, "update machine"))

    def destroy_machine(self, app: str, machine_id: str, *, nonce: str | None, force: bool = True) -> None:
        params: Params | None = [("force", "true")] if force else None
        self.request(
            "DELETE", self._p("apps", app, "machines", machine_id), idempotent=True, params=params, nonce=nonce
        )

    def _action(self, app: str, machine_id: str, action: str, nonce: str | None, json: Any = None) -> None:
        self.request(
            "POST", self._p("apps", app, "machines", machine_id, action), idempotent=True, nonce=nonce, json=json
        )

    def start_machine(self, app: str, machine_id: str, *, nonce: str | None) -> None:
        self._action(app, machine_id, "start", nonce)

    def stop_machine(self, app: str, machine_id: str, *, nonce: str | None) -> None:
        self._action(app, machine_id, "stop", nonce, json={"signal": "SIGTERM"})

    def cordon_machine(self, app: str, machine_id: str, *, nonce: str | None) -> None:
        self._action(app, machine_id, "cordon", nonce)

    def uncordon_machine(self, app: str, machine_id: str, *, nonce: str | None) -> None:
        self._action(app, machine_id, "uncordon", nonce)

    def wait_state(
        self,
        app: str,
        machine_id: str,
        states: Sequence[str],
        *,
        timeout: int = MAX_WAIT_SECONDS,
        version: str | None = None,
    ) -> str | None:
        """One /wait call of at most 60 s. The state reached, or None when the wait timed out (408)."""
        params: Params = [("state", s) for s in states]  # repeated, as the spec describes
        params.append(("timeout", str(max(1, min(int(timeout), MAX_WAIT_SECONDS)))))
        if version:
            # The machine version (instance id) to wait on: after an update the API may otherwise answer
            # for the instance that is being replaced.
            params.append(("version", version))
        try:
            resp = self.request(
                "GET", self._p("apps", app, "machines", machine_id, "wait"), idempotent=True, params=params,
                extra_time=min(float(timeout), MAX_WAIT_SECONDS),
            )  # fmt: skip
        except FlyAPIError as e:
            if e.status == 408:
                return None
            raise
        body = self._json(resp, "wait")
        state = body.get("state") if isinstance(body, dict) else None
        return state if isinstance(state, str) else states[0]

    def list_events(self, app: str, machine_id: str, *, limit: int = 20) -> list[JSON]:
        resp = self.request(
            "GET",
            self._p("apps", app, "machines", machine_id, "events"),
            idempotent=True,
            params=[("limit", str(limit))],
        )
        body = self._json(resp, "events")
        return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []

    # -- leases ------------------------------------------------------------------------------------

    def acquire_lease(self, app: str, machine_id: str, *, ttl: int, description: str) -> Lease:
        """A new lease; LeaseConflict when another holder has one.

        ``description`` must be unique to the caller (it names the process): a 5xx or a broken connection
        is retried, and when a retry finds the machine leased, the lease is ours if it carries our
        description (the first answer was lost after the lease was granted)."""
        path = self._p("apps", app, "machines", machine_id, "lease")
        try:
            resp = self.request("POST", path, idempotent=True, json={"ttl": ttl, "description": description})
        except LeaseConflict as conflict:
            held = self.get_lease(app, machine_id)
            if held is not None and held.description == description:
                return held
            conflict.held = held
            raise
        return Lease.parse(self._json(resp, "acquire lease"))

    def refresh_lease(self, app: str, machine_id: str, *, nonce: str, ttl: int) -> Lease:
        resp = self.request(
            "POST",
            self._p("apps", app, "machines", machine_id, "lease"),
            idempotent=True,
            json={"ttl": ttl},
            nonce=nonce,
        )
        return Lease.parse(self._json(resp, "refresh lease"))

    def get_lease(self, app: str, machine_id: str) -> Lease | None:
        try:
            resp = self.request("GET", self._p("apps", app, "machines", machine_id, "lease"), idempotent=True)
        except NotFound:
            return None
        return Lease.parse(self._json(resp, "get lease"))

    def release_lease(self, app: str, machine_id: str, *, nonce: str) -> None:
        """Release a lease; a machine or lease that is already gone counts as released."""
        with contextlib.suppress(NotFound):
            self.request("DELETE", self._p("apps", app, "machines", machine_id, "lease"), idempotent=True, nonce=nonce)

    # -- volumes -----------------------------------------------------------------------------------

    def list_volumes(self, app: str) -> list[JSON]:
        body = self._json(self.request("GET", self._p("apps", app, "volumes"), idempotent=True), "volumes")
        return [v for v in body if isinstance(v, dict)] if isinstance(body, list) else []

    def create_volume(self, app: str, *, name: str, region: str, size_gb: int, extra: JSON | None = None) -> JSON:
        resp = self.request(
            "POST",
            self._p("apps", app, "volumes"),
            idempotent=False,
            json={**(extra or {}), "name": name, "region": region, "size_gb": size_gb},
        )
        body = self._json(resp, "create volume")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise FlyAPIError("Fly API create volume: answer has no volume id")
        return body

    # -- IP addresses ------------------------------------------------------------------------------

    def list_ips(self, app: str) -> list[JSON]:
        """The app's IP assignments (``ip``, ``region``, ``shared``, ...)."""
        resp = self.request("GET", self._p("apps", app, "ip_assignments"), idempotent=True)
        body = self._json(resp, "list IP addresses")
        items = body.get("ips") if isinstance(body, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def assign_ip(self, app: str, kind: str, *, org: str | None = None) -> JSON:
        """Allocate one address: ``kind`` is ``v6``, ``shared_v4``, ``v4`` (dedicated) or ``private_v6``
        (flyctl's types, internal/command/deploy/deploy_first.go)."""
        body: JSON = {"type": kind}
        if org:
            body["org_slug"] = org
        resp = self.request("POST", self._p("apps", app, "ip_assignments"), idempotent=False, json=body)
        out = self._json(resp, "allocate IP address")
        if not isinstance(out, dict) or not isinstance(out.get("ip"), str):
            raise FlyAPIError("Fly API allocate IP address: answer has no address")
        return out

    # -- secrets -----------------------------------------------------------------------------------

    def list_secrets(self, app: str) -> list[JSON]:
        """Secret names and digests (never values: show_secrets is not requested)."""
        body = self._json(self.request("GET", self._p("apps", app, "secrets"), idempotent=True), "secrets")
        items = body.get("secrets") if isinstance(body, dict) else None
        return [s for s in items if isinstance(s, dict)] if isinstance(items, list) else []

    def update_secrets(self, app: str, values: Mapping[str, str]) -> int:
        """Set several secrets at once; the new secrets version."""
        resp = self.request("POST", self._p("apps", app, "secrets"), idempotent=True, json={"values": dict(values)})
        return self._version(self._json(resp, "set secrets"))

    def delete_secret(self, app: str, name: str) -> int:
        """Unset one secret; the new secrets version."""
        resp = self.request("DELETE", self._p("apps", app, "secrets", name), idempotent=True)
        return self._version(self._json(resp, "unset secret"))

    @staticmethod
    def _version(body: Any) -> int:
        if isinstance(body, dict):
            for key in ("version", "Version"):
                if isinstance(body.get(key), int):
                    return int(body[key])
        raise FlyAPIError("the Fly API answered a secrets change without a secrets version")
