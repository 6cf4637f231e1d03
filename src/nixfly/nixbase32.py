"""Nix's base-32, the one implementation (binary-cache narinfos in ``build/bincache``, SBOM hashes in
``sbom/nixhash``).

Nix's base-32 is not RFC 4648: its alphabet is ``0-9a-z`` without ``e o t u``, and the string is the hash
read as one little-endian number written out in base 32, most significant digit first (the first character
carries the highest five bits of the *last* byte).
"""

from __future__ import annotations

import re

from nixfly.errors import NixflyError

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
# A store path's hash part: 32 characters of the alphabet (a 160-bit digest), as a regular expression.
STORE_HASH = f"[{NIX32_ALPHABET}]{{32}}"
# A store path's base name: the hash part, '-', and a name of the characters Nix allows in one
# (libstore's checkName: letters, digits and + - . _ ? =).
STORE_BASENAME = re.compile(rf"^{STORE_HASH}-[A-Za-z0-9+\-._?=]+$")
_NIX32_VALUE = {c: i for i, c in enumerate(NIX32_ALPHABET)}
SHA256_BYTES = 32


class HashFormatError(NixflyError):
    """A hash string in none of the notations Nix uses."""


def nix32_len(nbytes: int) -> int:
    return (nbytes * 8 - 1) // 5 + 1


def nix32_encode(data: bytes) -> str:
    """Bytes → Nix base-32 (as ``nix hash to-base32`` prints it)."""
    if not data:
        return ""
    n = int.from_bytes(data, "little")
    out = []
    for _ in range(nix32_len(len(data))):
        out.append(NIX32_ALPHABET[n & 0x1F])
        n >>= 5
    return "".join(reversed(out))


def nix32_decode(text: str, nbytes: int = SHA256_BYTES) -> bytes:
    """Nix base-32 → ``nbytes`` bytes. Wrong length, foreign characters or bits beyond the hash are errors."""
    if len(text) != nix32_len(nbytes):
        raise HashFormatError(f"{text!r}: a {nbytes}-byte hash has {nix32_len(nbytes)} base-32 characters")
    n = 0
    for c in text:
        v = _NIX32_VALUE.get(c)
        if v is None:
            raise HashFormatError(f"{text!r}: {c!r} is not a Nix base-32 character")
        n = (n << 5) | v
    if n >> (nbytes * 8):
        raise HashFormatError(f"{text!r}: the value does not fit in {nbytes} bytes")
    return n.to_bytes(nbytes, "little")
