"""bench/proxy.py shapes uploads like a real uplink: request bodies to a real registry go through one
token bucket shared by all connections at the given rate (10 MB at 100 Mbit/s takes 0.8 s, alone or
split over parallel uploads), unshaped uploads are not slowed, and every upload's bytes are counted
against the digest it ends with (monolithic PUT and chunked PATCH + PUT alike)."""

from __future__ import annotations

import hashlib
import http.client
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.registry import RunningRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import proxy

pytestmark = pytest.mark.slow

RATE = 100e6 / 8  # 100 Mbit/s in bytes/s


def _port(reg: RunningRegistry) -> int:
    return int(reg.host.rsplit(":", 1)[1])


@pytest.fixture
def shaped(registry: RunningRegistry) -> Iterator[proxy.CountingProxy]:
    with proxy.CountingProxy(_port(registry), rate=RATE) as px:
        yield px


def test_one_upload_takes_bytes_over_rate(shaped: proxy.CountingProxy) -> None:
    wall = proxy.upload_through(shaped.port, 10_000_000)
    assert shaped.counts.blob_bytes == 10_000_000
    assert 0.79 <= wall < 1.3, wall  # 0.8 s on the wire; above it only the registry's own work and load


def test_parallel_uploads_share_the_link(shaped: proxy.CountingProxy) -> None:
    wall = proxy.upload_through(shaped.port, 5_000_000, parallel=2)
    assert shaped.counts.blob_bytes == 10_000_000
    assert 0.79 <= wall < 1.3, wall  # not 0.4 s: two connections, one link


def test_unshaped_is_not_paced(registry: RunningRegistry) -> None:
    with proxy.CountingProxy(_port(registry)) as px:
        wall = proxy.upload_through(px.port, 10_000_000)
    assert px.counts.blob_bytes == 10_000_000 and wall < 0.79, wall


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"") -> Any:
    hdrs = {"Content-Length": str(len(body))}
    if body:
        hdrs["Content-Type"] = "application/octet-stream"
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    r.read()
    return r


def test_chunked_upload_bytes_are_counted_against_its_digest(registry: RunningRegistry) -> None:
    parts = [b"a" * 300_000, b"b" * 200_000, b"c" * 7]
    digest = "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()
    with proxy.CountingProxy(_port(registry)) as px:
        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
        r = _request(conn, "POST", "/v2/bench/chunks/blobs/uploads/")
        assert r.status == 202
        for p in parts[:2]:
            r = _request(conn, "PATCH", r.getheader("Location"), p)
            assert r.status == 202
        r = _request(conn, "PUT", f"{r.getheader('Location')}&digest={digest}", parts[2])
        assert r.status == 201
        mono = proxy.upload_through(px.port, 1000, repo="bench/mono")
        conn.close()
    assert mono > 0
    by_digest = px.counts.by_digest
    assert by_digest[digest] == 500_007
    assert sorted(by_digest.values()) == [1000, 500_007]
    assert px.counts.blob_bytes == 501_007
