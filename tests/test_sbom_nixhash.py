"""Nix's hash notations and parseDrvName, checked against real Nix (nix hash, builtins.parseDrvName)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixfly.nixbase32 import NIX32_ALPHABET, HashFormatError, nix32_decode, nix32_encode
from nixfly.sbom.nixhash import parse_drv_name, sha256_hex
from tests.support.nixstore import TinyClosure, nix_env, path_info


def _nix(*args: str) -> str:
    return subprocess.run(["nix", *args], capture_output=True, text=True, env=nix_env(), check=True).stdout.strip()


def test_alphabet_is_nixs() -> None:
    assert NIX32_ALPHABET == "0123456789abcdfghijklmnpqrsvwxyz"
    assert not set("eotu") & set(NIX32_ALPHABET) and len(set(NIX32_ALPHABET)) == 32


@pytest.mark.slow
def test_real_nar_hashes_convert_like_nix_does(tiny_closure: TinyClosure) -> None:
    infos = path_info([tiny_closure.app])
    assert len(infos) >= 5
    for info in infos:
        sri = str(info["narHash"])
        assert sri.startswith("sha256-")
        b16 = _nix("hash", "to-base16", sri)
        b32 = _nix("hash", "to-base32", sri)
        assert sha256_hex(sri) == b16
        assert sha256_hex(f"sha256:{b32}") == b16 == sha256_hex(b32)
        assert sha256_hex(f"sha256:{b16}") == b16
        assert nix32_encode(bytes.fromhex(b16)) == b32
        assert nix32_decode(b32).hex() == b16


@pytest.mark.slow
def test_store_path_hash_parts_are_nix32_of_20_bytes(tiny_closure: TinyClosure) -> None:
    part = tiny_closure.app.rsplit("/", 1)[1][:32]
    assert nix32_encode(nix32_decode(part, 20)) == part


def test_a_known_vector() -> None:
    # `nix hash to-base32 sha256-<base64 of sha256("")>` on Nix 2.8
    empty = hashlib.sha256(b"").digest()
    sri = "sha256-" + base64.b64encode(empty).decode()
    assert sha256_hex(sri) == empty.hex()
    assert nix32_encode(empty) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


@given(st.binary(min_size=32, max_size=32))
def test_roundtrip(data: bytes) -> None:
    text = nix32_encode(data)
    assert len(text) == 52 and set(text) <= set(NIX32_ALPHABET)
    assert nix32_decode(text) == data
    assert sha256_hex("sha256:" + text) == data.hex()
    assert sha256_hex("sha256-" + base64.b64encode(data).decode()) == data.hex()


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "e" * 52,  # not in the alphabet
        "sha256:" + "z" * 52,  # more than 256 bits
        "sha256:" + "0" * 51,
        "sha512:" + "0" * 52,
        "sha256-" + "A" * 10,
        "sha256-!!!!",
        "md5:abc",
        "",
    ],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(HashFormatError):
        sha256_hex(bad)


NAMES = [
    "hello-2.12",
    "apache-httpd-2.0.48",
    "hello-app-1",
    "busybox-static",
    "nss-cacert-3.0",
    "python3.11-requests-2.31.0",
    "gcc-1-2",
    "bash--1-2",
    "xvidtune-?1-2",
    "foo-_bar",
    "foo-",
    "-foo",
    "7zip_archiver-0.2",
    "glibc-2.37-8-bin",
    "source",
    "ab-Cd-9",
]


@pytest.mark.slow
def test_parse_drv_name_matches_builtins(nix_available: None) -> None:
    expr = "map builtins.parseDrvName " + "[" + " ".join(json.dumps(n) for n in NAMES) + "]"
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True, text=True, env=nix_env(), check=True,
    ).stdout  # fmt: skip
    real = json.loads(out)
    assert [parse_drv_name(n) for n in NAMES] == [(r["name"], r["version"]) for r in real]
