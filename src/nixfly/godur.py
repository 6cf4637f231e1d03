"""Go durations (``15s``, ``1m30s``, ``500ms``), as Go's ``time.ParseDuration`` reads them: fly.toml's
(flyctl and fly-go parse its durations with it) and nixfly's own duration flags. The one parser: ``fly/``
reads fly.toml with it, ``build/`` the kill_timeout its stop timeouts are checked against."""

from __future__ import annotations

import re
from datetime import timedelta

# ASCII digits only, as Go reads them (\d would take any script's digits).
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_MAX = timedelta(microseconds=((1 << 63) - 1) // 1000)  # a Go time.Duration is an int64 of nanoseconds
_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("15s", "1m30s", "1.5s", "250ms", "0"); raise ValueError otherwise."""
    s = text.strip()
    if s == "0":
        return timedelta(0)
    if not s:
        raise ValueError("empty duration")
    pos, total_ns = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration like '10s', '1m30s' or '500ms'")
        total_ns += float(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    return go_timedelta(text, microseconds=total_ns / 1000)


def go_timedelta(what: object, **amount: float) -> timedelta:
    """A timedelta, or ValueError beyond what a Go ``time.Duration`` holds (an int64 of nanoseconds, about
    2562047h: Go's time.ParseDuration, which fly-go's duration.go uses, refuses more as overflow) and
    beyond what a timedelta holds (Python says OverflowError there)."""
    try:
        d = timedelta(**amount)
    except OverflowError:
        d = _GO_MAX + _GO_MAX
    if d > _GO_MAX:
        raise ValueError(f"{what!r} is too long a duration (at most 2562047h)")
    return d
