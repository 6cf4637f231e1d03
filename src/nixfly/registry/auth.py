"""Registry credentials and the Basic/Bearer challenge dance.

Credentials come, in this order, from: the command line (``--creds``), the environment
(``NIXFLY_REGISTRY_USERNAME``/``NIXFLY_REGISTRY_PASSWORD``), for ``registry.fly.io`` the Fly token (user ``x``,
``FLY_API_TOKEN`` or ``access_token`` in ``~/.fly/config.yml``), then ``~/.docker/config.json``
(``credHelpers``, ``auths``, ``credsStore`` through ``docker-credential-*`` programs).

Secrets never leave this module in text form except in an Authorization header: ``Credentials`` redacts
itself, and every error message names the *source* of the credentials, never their value. Passwords,
their Basic header and every token a token service issues are announced to ``nixfly.errors.add_secret``,
so no output of this process can carry them even if a server echoes them back.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nixfly.errors import RegistryError, UsageError, add_secret
from nixfly.flytoken import find_fly_token
from nixfly.fsutil import CONFIG_FILE_MAX, load_json, read_text_file

if TYPE_CHECKING:  # only in annotations: parsing --creds must not load the HTTP stack
    import httpx

FLY_REGISTRY = "registry.fly.io"


@dataclass(frozen=True)
class Credentials:
    """A username and secret. ``repr``/``str`` never show the secret."""

    username: str
    password: str = field(repr=False)
    source: str = "--creds"  # where they came from, for error messages

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', source={self.source!r})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        add_secret(self.password)
        add_secret(self.basic_header().split(" ", 1)[1])

    def basic_header(self) -> str:
        # surrogateescape: a password given as non-UTF-8 bytes (argv, environment) goes out as those bytes
        raw = f"{self.username}:{self.password}".encode("utf-8", "surrogateescape")
        return "Basic " + base64.b64encode(raw).decode()


def parse_creds(text: str, source: str = "--creds") -> Credentials:
    """Parse ``USER:PASS`` (the secret may contain ':'); errors never echo the secret."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError(f"{source} must be USER:PASSWORD")
    return Credentials(user, password, source)


def _docker_config_path(env: Mapping[str, str], home: Path) -> Path:
    base = env.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else home / ".docker" / "config.json"


def _normalise_server(key: str) -> str:
    # Keys in config.json may be URLs ("https://index.docker.io/v1/") or bare hosts.
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0].lower()
    if host in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return "docker.io"
    return host


def _run_helper(helper: str, server: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=30)
    except FileNotFoundError:
        raise UsageError(f"credential helper {program} (named in docker config.json) is not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer within 30 s") from None
    if proc.returncode != 0:
        return None  # helpers exit non-zero for "credentials not found"
    try:
        data = json.loads(proc.stdout)
        user, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"credential helper {program} printed something that is not credentials") from None
    return Credentials(user, secret, program)


def _from_docker_config(registry: str, env: Mapping[str, str], home: Path) -> Credentials | None:
    path = _docker_config_path(env, home)
    try:  # a regular file, bounded (a FIFO or /dev/zero named by DOCKER_CONFIG is one line, not a hang)
        cfg = load_json(read_text_file(path, CONFIG_FILE_MAX, str(path), UsageError))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    except ValueError:  # not JSON, or nested deeper than any docker config
        raise UsageError(f"{path} is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{path} is not a JSON object")
    helpers = cfg.get("credHelpers") or {}
    for key, helper in helpers.items() if isinstance(helpers, dict) else ():
        if _normalise_server(key) == registry:
            return _run_helper(str(helper), key)
    auths = cfg.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _normalise_server(key) != registry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, pw = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"{path}: auths entry for {key} is not base64 USER:PASSWORD") from None
            if sep:
                return Credentials(user, pw, str(path))
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]), str(path))
    store = cfg.get("credsStore")
    if store:
        server = "https://index.docker.io/v1/" if registry == "docker.io" else registry
        return _run_helper(str(store), server)
    return None


def resolve_credentials(
    registry: str,
    explicit: Credentials | None = None,
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Credentials | None:
    """The credentials to use for ``registry`` (normalised host[:port]), or None for anonymous access."""
    if explicit is not None:
        return explicit
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    user, pw = env.get("NIXFLY_REGISTRY_USERNAME"), env.get("NIXFLY_REGISTRY_PASSWORD")
    if user and pw is not None:
        return Credentials(user, pw, "NIXFLY_REGISTRY_USERNAME/NIXFLY_REGISTRY_PASSWORD")
    if registry == FLY_REGISTRY:
        fly = Credentials("x", t.value, t.source) if (t := find_fly_token(env, home)) else None
        if fly is not None:
            return fly
    return _from_docker_config(registry, env, home)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_www_authenticate(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value such as ``Bearer realm="…",service="…",scope="…"``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else (m.group(3) or "")
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme.lower(), params)


TokenFetcher = Callable[[str, list[tuple[str, str]], Credentials | None], "httpx.Response"]


class Authenticator:
    """Answers a registry's challenges: Basic with the credentials, Bearer by fetching a token per scope.

    Tokens are cached per scope string until shortly before they expire; a 401 on a request that carried
    a cached token drops that token so the next attempt fetches a fresh one.
    """

    def __init__(self, registry: str, credentials: Credentials | None, fetch: TokenFetcher) -> None:
        self.registry = registry
        self.credentials = credentials
        self._fetch = fetch
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._pushing: set[str] = set()  # repositories this client pushes to (see push_session)
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self.tokens_fetched = 0

    def learn(self, response: httpx.Response) -> None:
        """Remember the challenge a 401 (e.g. from ``GET /v2/``) carried."""
        for value in response.headers.get_list("www-authenticate"):
            ch = parse_www_authenticate(value)
            if ch is not None and ch.scheme in ("basic", "bearer"):
                self._challenge = ch
                return

    def push_session(self, repository: str) -> None:
        """This client is about to push to ``repository``: its reads there ask for the push scope as well, so
        one token serves the whole operation (layer index, uploads, manifest, SBOM) instead of one per scope."""
        with self._lock:
            self._pushing.add(repository)

    def _widened(self, scope: str) -> str:
        if not self._pushing:
            return scope
        parts = [f"repository:{s[11:-5]}:pull,push" if s.startswith("repository:") and s.endswith(":pull")
                 and s[11:-5] in self._pushing else s for s in scope.split(" ")]  # fmt: skip
        return " ".join(dict.fromkeys(parts))

    def authorization(self, scope: str) -> str | None:
        """The Authorization header to send for ``scope`` now (fetching a token if the registry wants one)."""
        scope = self._widened(scope)
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        with self._lock:
            scope_lock = self._fetching.setdefault(scope, threading.Lock())
        # One fetch per scope at a time: parallel blob transfers share the token the first one gets.
        with scope_lock:
            with self._lock:
                cached = self._tokens.get(scope)
                if cached and cached[1] > time.monotonic():
                    return "Bearer " + cached[0]
            token, ttl = self._fetch_token(ch, scope)
            with self._lock:
                # Refresh a little early so a token never expires between our check and the registry's.
                self._tokens[scope] = (token, time.monotonic() + max(ttl - 10, 1))
        return "Bearer " + token

    def unauthorized(self, response: httpx.Response, scope: str) -> None:
        """A request was refused with 401: drop the cached token and adopt the new challenge."""
        with self._lock:
            self._tokens.pop(self._widened(scope), None)
        self.learn(response)

    def _fetch_token(self, ch: Challenge, scope: str) -> tuple[str, float]:
        realm = ch.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry {self.registry}: Bearer challenge without a usable realm")
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        params.extend(("scope", s) for s in scope.split(" ") if s)
        resp = self._fetch(realm, params, self.credentials)
        self.tokens_fetched += 1
        if resp.status_code in (401, 403):
            if self.credentials is not None:
                raise RegistryError(
                    f"registry {self.registry}: token service refused the credentials from "
                    f"{self.credentials.source} (HTTP {resp.status_code})"
                )
            raise RegistryError(
                f"registry {self.registry}: authentication required; pass --creds USER:PASSWORD "
                "or log in with docker login"
            )
        if resp.status_code != 200:
            raise RegistryError(f"registry {self.registry}: token service answered HTTP {resp.status_code}")
        try:
            data = resp.json()
            token = data.get("token") or data.get("access_token")
            ttl = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError, RecursionError):
            raise RegistryError(f"registry {self.registry}: token service answered garbage") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.registry}: token service answered without a token")
        add_secret(token)
        return token, ttl
