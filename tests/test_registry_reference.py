"""References parse and normalise the way users write them; bad ones are one clear UsageError."""

from __future__ import annotations

import pytest

from nixfly.errors import UsageError
from nixfly.registry.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.fly.io/app:tag", Reference("registry.fly.io", "app", "tag")),
        (f"localhost:5000/a/b@{D}", Reference("localhost:5000", "a/b", None, D)),
        ("ghcr.io/o/r", Reference("ghcr.io", "o/r")),
        ("busybox", Reference("docker.io", "library/busybox")),
        ("library/busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
        ("registry-1.docker.io/user/img", Reference("docker.io", "user/img")),
        ("index.docker.io/nginx", Reference("docker.io", "library/nginx")),
        ("docker://127.0.0.1:5000/x_y/z-w.v:T_1", Reference("127.0.0.1:5000", "x_y/z-w.v", "T_1")),
        (f"h.io:443/n:t@{D}", Reference("h.io:443", "n", "t", D)),
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_pinned_and_api_host() -> None:
    r = parse_reference("busybox:latest")
    assert r.pinned(D) == f"docker.io/library/busybox@{D}"
    assert r.api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/a").is_local
    assert parse_reference("registry.fly.io/app").identifier == "latest"
    assert parse_reference(f"registry.fly.io/app:v1@{D}").identifier == D


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Upper/Case", "lower case"),
        ("h.io/a:b:c", "bad repository"),
        ("h.io/a@sha256:123", "digest must be"),
        ("h.io/a:" + "t" * 200, "bad tag"),
        ("h.io/a b", "whitespace"),
        ("bad_host.io:99999999/a", "bad registry host"),
    ],
)
def test_bad_references(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_reference(text)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)
