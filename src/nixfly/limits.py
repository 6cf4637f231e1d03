"""How much nixfly reads whole from a server, and the one bounded reader every HTTP client here uses.

A body read into memory (a manifest, a token answer, a tags list, a narinfo, a Fly API answer, an error
body) is read up to a limit fitting its kind; one byte more ends the request with one line instead of a
process that grows until the machine runs out of memory. Blobs and NARs are never read whole: they stream
to disk or through a verifier, bounded by their (signed) sizes where they are read.

Compressed bodies: clients advertise only gzip and deflate (``ACCEPT_ENCODING``), and a body in any other
``Content-Encoding`` is refused before it is decoded, because zstd or brotli can expand one network read
into gigabytes before a limit on the decoded bytes could be checked. gzip/deflate expand a read at most
~1000-fold, and the limit is checked after every decoded piece.

This module imports no HTTP library at load time (the CLI's start-up path imports it without httpx).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

_KiB = 1 << 10
_MiB = 1 << 20

# distribution refuses to store a larger manifest (maxManifestBodySize = 4 MiB in its manifests handler);
# an index or an OCI referrers index is a manifest too.
MANIFEST_MAX = 4 * _MiB
TOKEN_MAX = 1 * _MiB  # a token service's JSON answer: a JWT and a few fields, a few KiB in practice
TAGS_MAX = 16 * _MiB  # one page of a tags list (distribution sends every tag in one page without ?n=)
JSON_MAX = 16 * _MiB  # a Fly Machines API answer (a machine list carries every machine's config)
DEFAULT_MAX = 4 * _MiB  # any other answer read whole, error bodies included
NARINFO_MAX = 1 * _MiB  # a narinfo: a store path, hashes, references and signatures
CACHE_INFO_MAX = 64 * _KiB  # nix-cache-info: three short lines
NAR_LISTING_MAX = 16 * _MiB  # a <hash>.ls NAR listing (large for big trees, parsed into memory)

# A body read whole must also keep coming: after a grace as long as the request's read timeout, it has to
# average this rate, or the read ends (curl's --speed-limit/--speed-time). A server that trickles one byte
# just inside the read timeout would otherwise hold a command for as long as it likes.
MIN_RATE = 4 * _KiB  # bytes per second

ACCEPT_ENCODING = "gzip, deflate"
_DECODABLE = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})

ErrorFactory = Callable[[str], Exception]


def human_limit(n: int) -> str:
    if n % _MiB == 0:
        return f"{n // _MiB} MiB"
    if n % _KiB == 0:
        return f"{n // _KiB} KiB"
    return f"{n} bytes"


def check_encoding(resp: httpx.Response, what: str, error: ErrorFactory) -> None:
    """Refuse a body in a Content-Encoding we did not ask for (see the module docstring)."""
    enc = ",".join(v.strip().lower() for v in resp.headers.get_list("content-encoding"))
    for part in enc.split(","):
        if part.strip() not in _DECODABLE:
            raise error(f"{what}: the answer is in Content-Encoding {enc[:40]!r}, which nixfly does not accept")


def _request(resp: httpx.Response) -> httpx.Request | None:
    try:
        return resp.request
    except RuntimeError:  # a response made by hand, with no request
        return None


def _read_timeout(request: httpx.Request | None) -> float:
    """The read timeout the request was sent with (httpx keeps it in the request's extensions), else 60 s."""
    t = request.extensions.get("timeout", {}).get("read") if request is not None else None
    return float(t) if isinstance(t, (int, float)) and t > 0 else 60.0


def read_limited(resp: httpx.Response, limit: int, what: str, error: ErrorFactory) -> bytes:
    """The whole (decoded) body of a streamed ``resp``, at most ``limit`` bytes; ``error(line)`` is raised
    as soon as it is known to be longer. httpx errors while reading pass through for the caller to judge.
    Closes the response either way."""
    try:
        check_encoding(resp, what, error)
        # A HEAD's Content-Length is the size of what a GET would send (a blob's, for one): it has no body.
        request = _request(resp)
        declared = "" if request is not None and request.method == "HEAD" else resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit and not resp.headers.get("content-encoding"):
            raise error(f"{what}: the answer is {declared} bytes, more than the {human_limit(limit)} nixfly reads")
        data = bytearray()
        grace = _read_timeout(request)
        start = time.monotonic()
        for chunk in resp.iter_bytes():  # as it arrives: a trickle is seen byte by byte
            data += chunk
            if len(data) > limit:
                raise error(f"{what}: the answer is larger than the {human_limit(limit)} nixfly reads")
            late = time.monotonic() - start - grace
            if late > 0 and len(data) < late * MIN_RATE:
                raise error(f"{what}: the answer trickles in ({len(data)} bytes in "
                            f"{time.monotonic() - start:.0f}s, under {MIN_RATE // _KiB} KiB/s); giving up")  # fmt: skip
        return bytes(data)
    finally:
        resp.close()


def read_response(resp: httpx.Response, limit: int, what: str, error: ErrorFactory) -> httpx.Response:
    """``resp`` (sent with ``stream=True``) as an ordinary, fully read response, its body bounded as in
    :func:`read_limited`: ``.content``, ``.json()`` and the headers work as usual."""
    import httpx

    data = read_limited(resp, limit, what, error)
    # The body is decoded already: the copy must not claim an encoding, or httpx would decode it again.
    headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(resp.status_code, headers=headers, content=data, request=resp.request,
                          extensions=resp.extensions)  # fmt: skip
