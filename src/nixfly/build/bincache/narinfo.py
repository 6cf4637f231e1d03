"""A binary cache's narinfo: parsing (every field checked, the URL a relative file name), the SHA-256
spellings Nix writes, trusted public keys and the ed25519 signature over a path's fingerprint
(``1;<storePath>;<narHash>;<narSize>;<refs>``). Nix's base-32 is ``nixfly.nixbase32``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nixfly.build.closure import (
    STORE_DIR,
    StorePath,
    is_store_path,
)
from nixfly.errors import NixflyError, UsageError
from nixfly.nixbase32 import HashFormatError, nix32_decode, nix32_encode

COMPRESSIONS = ("xz", "zstd", "bzip2", "none")


class BinaryCacheError(NixflyError):
    """A binary cache is unreachable, malformed, lacks a path, or served bytes that do not verify."""


class SignatureError(BinaryCacheError):
    """A path has no valid signature by a trusted key."""


# ---------------------------------------------------------------------------------------------------
# hashes and signatures


def parse_sha256(value: str) -> bytes:
    """A SHA-256 in any of Nix's spellings: ``sha256:<nix32>``, ``sha256:<hex>``, ``sha256-<base64>``."""
    try:
        if value.startswith("sha256-"):
            raw = base64.b64decode(value[7:], validate=True)
            if len(raw) == 32:
                return raw
        elif value.startswith("sha256:"):
            body = value[7:]
            if len(body) == 64 and re.fullmatch(r"[0-9a-f]{64}", body):
                return bytes.fromhex(body)
            return nix32_decode(body, 32)
    except (ValueError, HashFormatError):
        pass
    raise ValueError(f"{value!r} is not a SHA-256 hash")


def nix_hash(digest: bytes) -> str:
    return "sha256:" + nix32_encode(digest)


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key: bytes  # 32 bytes


def parse_public_key(text: str, where: str = "--trusted-public-key") -> TrustedKey:
    name, sep, b64 = text.strip().partition(":")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raw = b""
    if not sep or not name or len(raw) != 32:
        raise UsageError(f"{where}: {text[:80]!r} is not a public key NAME:BASE64 (32 bytes)")
    return TrustedKey(name, raw)


# ---------------------------------------------------------------------------------------------------
# narinfo


@dataclass(frozen=True)
class NarInfo:
    store_path: str
    url: str
    compression: str
    file_hash: bytes | None
    file_size: int | None
    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...]  # full store paths, sorted, the path itself included when it refers to itself
    deriver: str | None
    sigs: tuple[str, ...]
    system: str | None
    cache: str  # the URL of the cache it came from

    def compressed_limit(self) -> int:
        """The most bytes the compressed NAR may have: FileSize if given, never more than its compressor's
        worst case for the signed NarSize (incompressible input stored, plus framing): xz stores such data
        in 64 KiB chunks with a 3-byte header, zstd's bound is n + n/256 (ZSTD_COMPRESSBOUND), bzip2's
        1% + 600 bytes (bzip2's manual); n/128 and a fixed 64 KiB cover block and stream headers."""
        n = self.nar_size
        if self.compression == "none":
            bound = n
        elif self.compression == "bzip2":
            bound = n + n // 100 + 600 + (64 << 10)
        else:
            bound = n + n // 128 + (64 << 10)
        return bound if self.file_size is None else min(self.file_size, bound)

    def fingerprint(self) -> bytes:
        return f"1;{self.store_path};{nix_hash(self.nar_hash)};{self.nar_size};{','.join(self.references)}".encode()

    def to_store_path(self) -> StorePath:
        return StorePath(self.store_path, self.nar_size, tuple(r for r in self.references if r != self.store_path),
                         self.deriver, nix_hash(self.nar_hash))  # fmt: skip


def parse_narinfo(text: str, where: str, cache: str, store_dir: str = STORE_DIR) -> NarInfo:
    """Parse a ``.narinfo``; every missing or malformed field is a BinaryCacheError naming ``where``."""
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key):
            raise BinaryCacheError(f"{where}: malformed narinfo (line {i} is not 'Key: value')")
        if key == "Sig":
            sigs.append(value.strip())
        elif key in fields:
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} given twice)")
        else:
            fields[key] = value.strip()

    def need(key: str) -> str:
        if key not in fields:
            raise BinaryCacheError(f"{where}: malformed narinfo (no {key})")
        return fields[key]

    def number(key: str) -> int:
        v = need(key)
        if not v.isdigit():
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} {v[:40]!r} is not a number)")
        return int(v)

    def sha(key: str) -> bytes:
        try:
            return parse_sha256(need(key))
        except ValueError:
            raise BinaryCacheError(f"{where}: malformed narinfo ({key} is not a SHA-256 hash)") from None

    path = need("StorePath")
    if not is_store_path(path, store_dir):
        raise BinaryCacheError(f"{where}: malformed narinfo (StorePath {path[:80]!r} is not in {store_dir})")
    url = need("URL")
    if not url or url.startswith("/") or ".." in url.split("/") or "\\" in url or "\0" in url:
        raise BinaryCacheError(f"{where}: malformed narinfo (URL {url[:80]!r} is not a relative file name)")
    compression = fields.get("Compression", "bzip2")  # Nix's default when the field is absent
    refs = []
    for r in fields.get("References", "").split():
        full = f"{store_dir}/{r}"
        if "/" in r or not is_store_path(full, store_dir):
            raise BinaryCacheError(f"{where}: malformed narinfo (reference {r[:80]!r} is not a store path name)")
        refs.append(full)
    deriver = fields.get("Deriver")
    file_hash = sha("FileHash") if "FileHash" in fields else None
    file_size = number("FileSize") if "FileSize" in fields else None
    return NarInfo(
        path, url, compression, file_hash, file_size, sha("NarHash"), number("NarSize"),
        tuple(sorted(set(refs))), f"{store_dir}/{deriver}" if deriver and deriver != "unknown-deriver" else None,
        tuple(sigs), fields.get("System"), cache,
    )  # fmt: skip


def verify_signature(ni: NarInfo, keys: Sequence[TrustedKey]) -> None:
    """Accept ``ni`` if one of its signatures is valid for a trusted key of the same name."""
    fp = ni.fingerprint()
    by_name = {k.name: k for k in keys}
    signers = []
    for sig in ni.sigs:
        name, _, b64 = sig.partition(":")
        signers.append(name)
        key = by_name.get(name)
        if key is None:
            continue
        try:
            raw = base64.b64decode(b64, validate=True)
            Ed25519PublicKey.from_public_bytes(key.key).verify(raw, fp)
            return
        except (ValueError, InvalidSignature):
            continue
    tried = ", ".join(k.name for k in keys) or "none (give --trusted-public-key NAME:KEY)"
    signed = ", ".join(signers) if signers else "nobody (unsigned)"
    raise SignatureError(
        f"{ni.store_path} from {ni.cache}: no valid signature by a trusted key (keys tried: {tried}; "
        f"signed by: {signed}); use --no-verify to accept it anyway"
    )
