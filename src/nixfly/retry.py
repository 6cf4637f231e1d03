"""One retry policy for every network call nixfly makes (registries, token services, blob storage, Fly.io).

The loop itself is tenacity's; this module fixes what it does:

- An attempt raises :class:`Transient` to ask for another try; anything else ends the loop at once.
- Backoff is exponential with full jitter (a uniform draw between 0 and ``min(max_backoff, backoff·2ⁿ)``),
  unless the server said how long to wait: ``Retry-After`` in seconds or as an HTTP-date, capped.
- The budget (``retries``) counts failures *since the last progress*: a caller may pass ``progress``, a
  function whose value changes when work got further (bytes a server confirmed, say). So a long upload
  fails only when the server stops making progress, not after N scattered hiccups.
- No nesting: while an attempt runs, any :meth:`RetryPolicy.run` inside it makes a single attempt and lets
  its :class:`Transient` through to the outer loop (go-containerregistry's ``retry.Never`` idea). The
  :func:`never` context manager does the same for a block of code that handles failures itself.
- Time is injectable (``sleep``, ``clock``, ``jitter``) so tests count attempts and waits without waiting.

HTTP helpers decide what is worth retrying: 429 always; 500/502/503/504 only for requests that are
idempotent or marked safe to repeat; connection failures always when the request cannot have reached the
server, otherwise only when repeating is safe. Permanent failures (a name that does not resolve, a TLS
certificate or handshake failure) are told apart by exception type, never by matching message text.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import httpx
import tenacity

T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
RETRY_5XX = frozenset({500, 502, 503, 504})

_never: ContextVar[bool] = ContextVar("nixfly_retry_never", default=False)


class Transient(Exception):
    """Raised by an attempt: this failure is worth another try. ``what`` is one line for the final error;
    ``retry_after`` is the wait in seconds the server asked for, if it did."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


@contextlib.contextmanager
def never() -> Iterator[None]:
    """Inside this block every :meth:`RetryPolicy.run` makes exactly one attempt (no nested retries)."""
    token = _never.set(True)
    try:
        yield
    finally:
        _never.reset(token)


def retrying_disabled() -> bool:
    """True inside :func:`never` or inside an attempt of an outer :meth:`RetryPolicy.run`."""
    return _never.get()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. ``retries`` is the number of retries after a first failure, counted
    since the last progress."""

    retries: int = 5
    backoff: float = 0.5  # upper bound of the first jittered wait, seconds; doubles per failure
    max_backoff: float = 20.0
    max_retry_after: float = 60.0  # a server's Retry-After is honoured up to this many seconds
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)  # wall clock (HTTP-dates)
    jitter: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        high = min(self.max_backoff, self.backoff * (2.0 ** max(failures - 1, 0)))
        return self.jitter(0.0, high)

    def run(
        self,
        attempt: Callable[[], T],
        *,
        give_up: Callable[[Transient, int], Exception],
        progress: Callable[[], object] | None = None,
        on_retry: Callable[[Transient, float], None] | None = None,
    ) -> T:
        """Call ``attempt`` until it returns, raises something other than :class:`Transient`, or has failed
        ``retries + 1`` times without ``progress()`` changing. Then ``give_up(last, attempts)`` is raised.

        ``on_retry(failure, seconds)`` is told before each wait. Inside an outer ``run`` (or :func:`never`)
        this is a single attempt whose Transient propagates.
        """
        if _never.get():
            return attempt()
        mark = progress() if progress is not None else None
        streak = 0  # failures since the last progress

        def guarded() -> T:
            token = _never.set(True)
            try:
                return attempt()
            finally:
                _never.reset(token)

        def should_retry(rs: tenacity.RetryCallState) -> bool:
            nonlocal mark, streak
            exc = rs.outcome.exception() if rs.outcome is not None else None
            if not isinstance(exc, Transient):
                return False
            now = progress() if progress is not None else None
            if now != mark:
                mark, streak = now, 1
            else:
                streak += 1
            return True

        def wait(rs: tenacity.RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            assert isinstance(exc, Transient)
            seconds = self.delay(streak, exc.retry_after)
            if on_retry is not None and streak <= self.retries:
                on_retry(exc, seconds)
            return seconds

        loop = tenacity.Retrying(
            retry=should_retry,
            wait=wait,
            stop=lambda rs: streak > self.retries,
            sleep=self.sleep,
            reraise=True,
        )
        attempts = 0

        def counted() -> T:
            nonlocal attempts
            attempts += 1
            return guarded()

        try:
            return loop(counted)
        except Transient as t:
            raise give_up(t, attempts) from None


# -- HTTP ---------------------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` value in seconds: delta-seconds, or an HTTP-date relative to ``now`` (epoch)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP-date is always GMT; a date without a zone is not one
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT_METHODS


def status_is_transient(status: int, *, repeatable: bool) -> bool:
    """429 is always worth retrying; 500/502/503/504 only when repeating the request is safe."""
    return status == 429 or (repeatable and status in RETRY_5XX)


FailureKind = Literal["dns", "refused", "tls-untrusted", "tls", "plain-http", "connect-timeout", "timeout", "io"]


@dataclass(frozen=True)
class TransportFailure:
    """What an httpx transport error means. ``sent`` is False when the request cannot have reached the
    server (no connection was made), so repeating it is safe whatever the method."""

    kind: FailureKind
    text: str  # one line, for an error message
    sent: bool

    @property
    def permanent(self) -> bool:
        """Trying again will not help: the name does not resolve, or TLS refuses this peer."""
        return self.kind in ("dns", "tls-untrusted", "tls")

    def transient(self, *, repeatable: bool) -> bool:
        return not self.permanent and (repeatable or not self.sent)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


# OpenSSL's reasons when the bytes that came back to our ClientHello were not TLS at all (an HTTP reply).
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})


def classify_transport(exc: httpx.HTTPError) -> TransportFailure:
    """Map an httpx error to a :class:`TransportFailure` by the exception types in its cause chain."""
    causes = list(_causes(exc))
    connecting = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    for c in causes:
        if isinstance(c, ssl.SSLCertVerificationError):
            detail = c.verify_message or "certificate verification failed"
            return TransportFailure(
                "tls-untrusted",
                f"TLS certificate not trusted ({detail}); use --cert-dir DIR with the CA, or --tls-verify=false",
                False,
            )
        if connecting and isinstance(c, ssl.SSLError) and not isinstance(c, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            # A handshake that fails will fail again; a TLS error mid-stream is a broken connection ("io").
            if c.reason in _NOT_TLS_REASONS:
                return TransportFailure("plain-http", "the server answered TLS with plain HTTP", False)
            return TransportFailure("tls", f"TLS handshake failed ({c.reason or type(c).__name__})", False)
        if isinstance(c, socket.gaierror):
            return TransportFailure("dns", "the host name does not resolve", False)
        if isinstance(c, ConnectionRefusedError):
            return TransportFailure("refused", "connection refused", False)
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportFailure("connect-timeout", "no answer (connect timed out)", False)
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure("timeout", "no answer (timed out)", not isinstance(exc, httpx.PoolTimeout))
    if isinstance(exc, httpx.RemoteProtocolError):
        return TransportFailure("io", "the connection closed mid-answer", True)
    reset = any(isinstance(c, ConnectionResetError | BrokenPipeError) for c in causes)
    if reset:
        return TransportFailure("io", "connection reset", not connecting)
    first = (str(exc) or type(exc).__name__).splitlines()[0][:160]
    return TransportFailure("io", f"connection failed ({first})", not connecting)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (where a connect timeout means nothing listens)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
