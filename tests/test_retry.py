"""The one retry policy, with an injected clock: attempt counts, backoff bounds, Retry-After in both forms,
budget reset on progress, no nested retries, and how transport errors are classified."""

from __future__ import annotations

import email.utils
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from nixfly.errors import NixflyError
from nixfly.retry import (
    RetryPolicy,
    Transient,
    classify_transport,
    is_loopback,
    never,
    retry_after_seconds,
    retrying_disabled,
    status_is_transient,
)

NOW = 1_800_000_000.0  # a fixed wall clock


@dataclass
class FakeTime:
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class GaveUp(NixflyError):
    pass


def give_up(t: Transient, n: int) -> Exception:
    return GaveUp(f"{t.what} after {n}")


def policy(fake: FakeTime, **kw: object) -> RetryPolicy:
    base: dict[str, object] = {
        "retries": 3,
        "backoff": 1.0,
        "max_backoff": 5.0,
        "sleep": fake.sleep,
        "clock": lambda: NOW,
        "jitter": lambda lo, hi: hi,  # the top of the jitter window, so waits are exact
    }
    base.update(kw)
    return RetryPolicy(**base)  # type: ignore[arg-type]


def failing(times: int, result: str = "ok", retry_after: float | None = None) -> tuple[Callable[[], str], list[int]]:
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise Transient(f"boom {calls[0]}", retry_after)
        return result

    return fn, calls


def test_attempt_count_and_capped_exponential_backoff() -> None:
    fake = FakeTime()
    fn, calls = failing(3)
    assert policy(fake).run(fn, give_up=give_up) == "ok"
    assert calls[0] == 4
    assert fake.slept == [1.0, 2.0, 4.0]

    fake = FakeTime()
    fn, calls = failing(100)
    with pytest.raises(GaveUp, match=r"^boom 4 after 4$"):
        policy(fake).run(fn, give_up=give_up)
    assert calls[0] == 4  # one try plus three retries
    assert fake.slept == [1.0, 2.0, 4.0]

    fake = FakeTime()
    fn, _ = failing(5)
    policy(fake, retries=6).run(fn, give_up=give_up)
    assert fake.slept == [1.0, 2.0, 4.0, 5.0, 5.0]  # capped at max_backoff


def test_full_jitter_draws_between_zero_and_the_cap() -> None:
    windows: list[tuple[float, float]] = []

    def jitter(lo: float, hi: float) -> float:
        windows.append((lo, hi))
        return lo

    fake = FakeTime()
    fn, _ = failing(4)
    policy(fake, retries=4, jitter=jitter).run(fn, give_up=give_up)
    assert windows == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0)]
    assert fake.slept == [0.0] * 4
    # The default jitter really is random within the window.
    real = RetryPolicy(backoff=1.0, max_backoff=8.0)
    draws = {real.delay(4) for _ in range(50)}
    assert len(draws) > 10 and all(0.0 <= d <= 8.0 for d in draws)


def test_non_transient_errors_are_not_retried() -> None:
    fake = FakeTime()
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        raise ValueError("permanent")

    with pytest.raises(ValueError):
        policy(fake).run(fn, give_up=give_up)
    assert calls[0] == 1 and fake.slept == []


def test_retry_after_seconds_and_http_date_are_honoured() -> None:
    fake = FakeTime()
    fn, _ = failing(1, retry_after=7.0)
    policy(fake).run(fn, give_up=give_up)
    assert fake.slept == [7.0]  # not the 1.0 the backoff would have chosen

    assert retry_after_seconds("12", NOW) == 12.0
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after_seconds(date, NOW) == pytest.approx(30.0)
    assert retry_after_seconds(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0  # in the past
    for junk in ("", None, "soon", "-3", "1.5e9", "Sun, 06 Nov 1994 08:49:37"):
        assert retry_after_seconds(junk, NOW) is None

    # Capped: a server asking for an hour gets max_retry_after.
    fake = FakeTime()
    fn, _ = failing(1, retry_after=3600.0)
    policy(fake, max_retry_after=60.0).run(fn, give_up=give_up)
    assert fake.slept == [60.0]


def test_on_retry_is_told_each_wait() -> None:
    fake = FakeTime()
    seen: list[tuple[str, float]] = []
    fn, _ = failing(2)
    policy(fake).run(fn, give_up=give_up, on_retry=lambda t, s: seen.append((t.what, s)))
    assert seen == [("boom 1", 1.0), ("boom 2", 2.0)]


def test_budget_resets_on_progress() -> None:
    """A failure every second attempt never exhausts the budget while each success moves on."""
    fake = FakeTime()
    done = [0]
    calls = [0]

    def step() -> str:
        # Ten units of work; every attempt does one unit and then fails, except the last.
        calls[0] += 1
        done[0] += 1
        if done[0] < 10:
            raise Transient("hiccup")
        return "finished"

    assert policy(fake, retries=1).run(step, give_up=give_up, progress=lambda: done[0]) == "finished"
    assert calls[0] == 10
    assert fake.slept == [1.0] * 9  # backoff restarts with the budget

    # Without progress the same budget is spent after two failures.
    fake = FakeTime()
    fn, calls2 = failing(100)
    with pytest.raises(GaveUp):
        policy(fake, retries=1).run(fn, give_up=give_up, progress=lambda: 0)
    assert calls2[0] == 2


def test_no_nested_retries() -> None:
    fake = FakeTime()
    inner_calls = [0]
    outer_calls = [0]

    def inner() -> str:
        inner_calls[0] += 1
        raise Transient("inner down")

    def outer() -> str:
        outer_calls[0] += 1
        assert retrying_disabled()
        return policy(fake).run(inner, give_up=give_up)

    with pytest.raises(GaveUp, match="inner down after 4"):
        policy(fake).run(outer, give_up=give_up)
    # (retries+1) attempts in all, not (retries+1)²: the inner run made one attempt per outer attempt.
    assert outer_calls[0] == 4 and inner_calls[0] == 4
    assert len(fake.slept) == 3
    assert not retrying_disabled()

    # never(): a block that handles failures itself sees the Transient after one attempt.
    fn, calls = failing(5)
    with never(), pytest.raises(Transient):
        policy(fake).run(fn, give_up=give_up)
    assert calls[0] == 1


def test_threads_have_their_own_loops() -> None:
    """A worker thread started while a loop runs is not "inside" it: it retries on its own."""
    fake = FakeTime()
    results: list[int] = []

    def worker() -> None:
        fn, calls = failing(2)
        policy(fake).run(fn, give_up=give_up)
        results.append(calls[0])

    def outer() -> str:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        return "ok"

    policy(fake).run(outer, give_up=give_up)
    assert results == [3]


def test_status_classes() -> None:
    assert status_is_transient(429, repeatable=False)
    for s in (500, 502, 503, 504):
        assert status_is_transient(s, repeatable=True)
        assert not status_is_transient(s, repeatable=False)
    for s in (200, 400, 401, 404, 501, 505):
        assert not status_is_transient(s, repeatable=True)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket that accepts TCP (the kernel completes the handshake) and never says anything."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def _error(url: str, **kw: object) -> httpx.HTTPError:
    try:
        httpx.get(url, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError as e:
        return e
    raise AssertionError("no error")


def test_transport_errors_are_classified_by_type(listener: socket.socket) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    f = classify_transport(_error(f"http://127.0.0.1:{port}/"))
    assert (f.kind, f.sent, f.permanent) == ("refused", False, False)
    assert f.transient(repeatable=False)  # nothing was sent: safe to repeat even a POST

    f = classify_transport(_error("http://no-such-host.invalid/"))
    assert f.kind == "dns" and f.permanent

    silent = f"127.0.0.1:{listener.getsockname()[1]}"
    f = classify_transport(_error(f"http://{silent}/", timeout=0.3))
    assert f.kind == "timeout" and f.sent and not f.transient(repeatable=False) and f.transient(repeatable=True)
    f = classify_transport(_error(f"https://{silent}/", timeout=0.3))
    assert f.kind == "connect-timeout" and not f.sent


def test_tls_errors_by_type() -> None:
    # A plain-HTTP server answering our ClientHello: the only case where falling back to http is right.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/"
        f = classify_transport(_error(url, verify=ssl.create_default_context()))
        assert f.kind == "plain-http" and not f.permanent
    finally:
        srv.shutdown()
        srv.server_close()
    # An untrusted certificate, recognised by its exception type (the text of the message is not consulted).
    err = httpx.ConnectError("something unrelated")
    cause = ssl.SSLCertVerificationError(1, "whatever")
    cause.verify_message = "self-signed certificate"
    err.__cause__ = cause
    f = classify_transport(err)
    assert f.kind == "tls-untrusted" and f.permanent and "self-signed certificate" in f.text
    # A TLS error mid-stream (after the handshake) is a broken connection, worth another try.
    mid = httpx.ReadError("bad record")
    mid.__cause__ = ssl.SSLError(1, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    assert classify_transport(mid).kind == "io" and classify_transport(mid).transient(repeatable=True)
    # Text that merely mentions SSL is not a TLS failure.
    f = classify_transport(httpx.ReadError("SSL is mentioned here but nothing failed in TLS"))
    assert f.kind == "io" and not f.permanent


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.4.5") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("registry.example")
