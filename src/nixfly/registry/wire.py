"""Small facts of the distribution wire that the client and the upload state machine share: the size of
one read/write step, the progress and note callbacks, an error body's one line, an upload's ``Range``."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from nixfly.errors import excerpt

IO_CHUNK = 256 * 1024  # bytes per read/write step: bounds memory per transfer whatever the blob size

# Called with (digest, bytes completed so far) as blob bytes go out or come in.
ProgressFn = Callable[[str, int], None]
# Called with (digest, one line) when something about a transfer is worth telling (a restart from 0).
NoteFn = Callable[[str, str], None]


def parse_range(value: str | None) -> int | None:
    """How many bytes an upload session holds, from its ``Range: 0-<last>`` header (None if absent/odd).

    ``0-0`` is an empty session (distribution's convention); ``0-(n-1)`` is n bytes.
    """
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", (value or "").strip())
    if not m:
        return None
    last = int(m.group(1))
    return 0 if last == 0 else last + 1


def registry_error_text(resp: httpx.Response) -> str:
    """``CODE: message`` from a distribution error body, or a short note about what came back."""
    try:
        body = resp.json()
        errs = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            e = errs[0]
            return f"{e.get('code', 'UNKNOWN')}: {excerpt(str(e.get('message', '')), 200)}"
    except (ValueError, UnicodeDecodeError, RecursionError, httpx.ResponseNotRead):
        pass
    return f"HTTP {resp.status_code}"
