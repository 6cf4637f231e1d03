"""Nix's hash notations → plain hex, and ``builtins.parseDrvName``.

Nix prints a SHA-256 in one of three ways: SRI (``sha256-<base64>``, what ``nix path-info --json`` gives
since 2.4), ``sha256:<base32>`` (52 characters of Nix's own base-32, ``nixfly.nixbase32``; older tools and
the store database) or ``sha256:<hex>``.
"""

from __future__ import annotations

import base64
import binascii
import re

from nixfly.nixbase32 import SHA256_BYTES, HashFormatError, nix32_decode, nix32_len

_HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(value: str) -> str:
    """The hex digest of a SHA-256 written as SRI, ``sha256:<base32|hex|base64>`` or bare base-32/hex."""
    v = value.strip()
    if v.startswith("sha256-"):
        body = v[len("sha256-") :]
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise HashFormatError(f"{value!r}: not valid base64 after 'sha256-'") from None
        if len(raw) != SHA256_BYTES:
            raise HashFormatError(f"{value!r}: decodes to {len(raw)} bytes, a SHA-256 has 32")
        return raw.hex()
    algo, sep, body = v.partition(":")
    if sep and algo != "sha256":
        raise HashFormatError(f"{value!r}: only sha256 hashes are supported (got {algo})")
    if not sep:
        body = v
    if _HEX.match(body):
        return body
    if len(body) == nix32_len(SHA256_BYTES):
        return nix32_decode(body).hex()
    if sep and len(body) == 44:  # sha256:<base64>, which Nix also accepts
        return sha256_hex("sha256-" + body)
    raise HashFormatError(f"{value!r} is not a SHA-256 in SRI, Nix base-32 or hex notation")


def parse_drv_name(name: str) -> tuple[str, str]:
    """(name, version) the way ``builtins.parseDrvName`` splits them: the version starts after the first
    dash that is followed by something other than an ASCII letter (``hello-2.12`` → ``hello``, ``2.12``;
    ``apache-httpd-2.0.48`` → ``apache-httpd``, ``2.0.48``); no such dash → no version."""
    for i, c in enumerate(name[:-1]):
        nxt = name[i + 1]
        if c == "-" and not ("a" <= nxt <= "z" or "A" <= nxt <= "Z"):
            return name[:i], name[i + 1 :]
    return name, ""
