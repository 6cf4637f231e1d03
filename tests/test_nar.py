"""The streaming NAR parser: real NARs from ``nix-store --dump`` give the same entries and tar bytes as a
walk of the store path; malformed NARs are NarErrors; fuzzing never crashes nor escapes the root."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixfly.build.bincache.narinfo import BinaryCacheError, parse_narinfo, parse_sha256
from nixfly.build.bincache.resolve import read_nix_settings
from nixfly.build.compress import make_compressor
from nixfly.build.nar import MAX_NAME, NarError, NarReader
from nixfly.build.tarwriter import REGULAR, HashingSink, TarWriter, TreeEntry, walk_tree
from nixfly.nixbase32 import nix32_decode, nix32_encode
from tests.support.nixstore import TinyClosure, nix_env

ROOT = b"nix/store/00000000000000000000000000000000-x"


def s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + bytes(-len(b) % 8)


def node(tree: Any) -> bytes:
    """NAR bytes of a node: bytes (a file), ("x", bytes) executable, ("l", target), dict (a directory)."""
    if isinstance(tree, bytes):
        return s(b"(") + s(b"type") + s(b"regular") + s(b"contents") + s(tree) + s(b")")
    if isinstance(tree, tuple) and tree[0] == "x":
        return s(b"(") + s(b"type") + s(b"regular") + s(b"executable") + s(b"") + s(b"contents") + s(tree[1]) + s(b")")
    if isinstance(tree, tuple) and tree[0] == "l":
        return s(b"(") + s(b"type") + s(b"symlink") + s(b"target") + s(tree[1]) + s(b")")
    out = s(b"(") + s(b"type") + s(b"directory")
    # in the given order (tests make unsorted ones on purpose)
    for name, child in tree.items() if isinstance(tree, dict) else tree:
        out += s(b"entry") + s(b"(") + s(b"name") + s(name) + s(b"node") + node(child) + s(b")")
    return out + s(b")")


def nar(tree: Any) -> bytes:
    return s(b"nix-archive-1") + node(tree)


def parse(data: bytes, limit: int | None = None) -> list[tuple[bytes, bytes, int, bytes]]:
    r = NarReader(io.BytesIO(data), "test.nar", limit)
    out = []
    for e in r.entries(ROOT):
        body = b""
        if e.type == REGULAR:
            got = bytearray()
            assert e.content is not None
            e.content.copy_to(got.extend, e.size)
            body = bytes(got)
        out.append((e.name, e.type, e.mode, body or e.target))
    assert r.digest() == hashlib.sha256(data).digest() and r.size == len(data)
    return out


def test_parses_every_node_kind_in_order() -> None:
    tree = {b"a": b"hello", b"b": {b"c": ("x", b"#!/bin/sh\n"), b"d": ("l", b"../a")}, b"e": b""}
    assert parse(nar(tree)) == [
        (ROOT, b"5", 0o555, b""),
        (ROOT + b"/a", b"0", 0o444, b"hello"),
        (ROOT + b"/b", b"5", 0o555, b""),
        (ROOT + b"/b/c", b"0", 0o555, b"#!/bin/sh\n"),
        (ROOT + b"/b/d", b"2", 0o777, b"../a"),
        (ROOT + b"/e", b"0", 0o444, b""),
    ]
    assert parse(nar(b"just a file")) == [(ROOT, b"0", 0o444, b"just a file")]


def test_unread_contents_are_skipped() -> None:
    data = nar({b"a": b"x" * 3_000_000, b"b": b"y"})
    names = [e.name for e in NarReader(io.BytesIO(data), "t").entries(ROOT)]
    assert names == [ROOT, ROOT + b"/a", ROOT + b"/b"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (s(b"nix-archive-2") + node(b""), "bad magic"),
        (b"", "truncated"),
        (nar({b"b": b"", b"a": b""}), "unsorted"),
        (nar([(b"a", b""), (b"a", b"")]), "duplicate"),
        (nar({b"..": b""}), "forbidden entry name"),
        (nar({b".": b""}), "forbidden entry name"),
        (nar({b"": b""}), "forbidden entry name"),
        (nar({b"a/b": b""}), "forbidden entry name"),
        (nar({b"a\0b": b""}), "forbidden entry name"),
        (nar({b"n" * (MAX_NAME + 1): b""}), "at most 255"),
        (nar(("l", b"x" * 5000)), "at most 4095"),
        (nar(("l", b"")), "empty symlink target"),
        (nar(b"abc") + b"\0" * 8, "bytes after the end"),
        (nar(b"abc")[:-12], "truncated"),
        (nar(b"abc").replace(b"abc\0\0\0\0\0", b"abc\0\0\0\0\1"), "non-zero padding"),
        (nar(b"").replace(b"regular", b"fifo\0\0\0"), "unknown node type"),
        (s(b"nix-archive-1") + s(b"(") + s(b"type") + s(b"regular") + s(b"contents") + struct.pack("<Q", 1 << 62),
         "a file of"),
        (s(b"nix-archive-1") + struct.pack("<Q", 1 << 40), "at most 16"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_nars_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(NarError, match=message):
        parse(data, limit=1 << 20)


def test_deep_nesting_is_bounded() -> None:
    tree: Any = b"x"
    for _ in range(300):
        tree = {b"d": tree}
    with pytest.raises(NarError, match="nested deeper"):
        parse(nar(tree))


def test_nar_longer_than_its_nar_size_stops_early() -> None:
    many = nar({b"%04d" % i: b"z" * 1000 for i in range(3000)})  # every file small, the whole too long
    with pytest.raises(NarError, match="longer than its stated NarSize"):
        parse(many, limit=1 << 20)


def tar_bytes(entries: Any) -> bytes:
    out = io.BytesIO()
    sink = HashingSink(make_compressor("gzip", 1), out)
    tw = TarWriter(sink)
    tw.add_entries(entries)
    tw.close()
    sink.finish()
    return out.getvalue()


def dump(path: str) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], capture_output=True, env=nix_env(), check=True).stdout


@pytest.mark.slow
def test_real_nars_match_the_store_walk_entry_for_entry_and_byte_for_byte(tiny_closure: TinyClosure) -> None:
    for p in (tiny_closure.app, tiny_closure.lib, tiny_closure.common, tiny_closure.tool):
        data = dump(p)
        name = p.strip("/").encode()
        r = NarReader(io.BytesIO(data), p, len(data))
        from_nar = tar_bytes(r.entries(name))
        assert r.digest() == hashlib.sha256(data).digest()
        assert from_nar == tar_bytes(walk_tree(os.fsencode(p), name))
        strip = [(e.name, e.type, e.mode, e.size, e.target) for e in walk_tree(os.fsencode(p), name)]
        nar_entries = [(e.name, e.type, e.mode, e.size, e.target)
                       for e in NarReader(io.BytesIO(data), p).entries(name)]  # fmt: skip
        assert nar_entries == strip


def check_inside(entries: list[TreeEntry]) -> None:
    for e in entries:
        assert e.name == ROOT or e.name.startswith(ROOT + b"/")
        rest = e.name[len(ROOT) + 1 :].split(b"/") if e.name != ROOT else []
        assert all(c not in (b"", b".", b"..") and b"\0" not in c for c in rest)


def consume(data: bytes) -> None:
    r = NarReader(io.BytesIO(data), "fuzz", 1 << 22)
    seen: list[TreeEntry] = []
    try:
        for e in r.entries(ROOT):
            seen.append(e)
            if e.type == REGULAR and e.content is not None:
                e.content.copy_to(lambda b: None, e.size)
    except NarError:
        pass
    check_inside(seen)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    consume(data)
    consume(s(b"nix-archive-1") + data)


SAMPLE = nar({b"bin": {b"app": ("x", b"\x7fELF" + bytes(60))}, b"etc": {b"l": ("l", b"/nix/store/x")},
              b"share": {b"a": b"a" * 100, b"b": b"", b"c": {b"d": b"deep"}}})  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255), st.sampled_from("xid")),
                min_size=1, max_size=6))  # fmt: skip
def test_fuzz_mutated_nars(mutations: list[tuple[int, int, str]]) -> None:
    data = bytearray(SAMPLE)
    for pos, byte, op in mutations:
        pos = min(pos, len(data) - 1)
        if op == "x":
            data[pos] ^= byte or 1
        elif op == "i":
            data.insert(pos, byte)
        else:
            del data[pos]
    consume(bytes(data))


@pytest.mark.slow
def test_fuzz_mutated_real_nar(tiny_closure: TinyClosure) -> None:
    real = dump(tiny_closure.lib)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, len(real) - 1), st.integers(1, 255), st.integers(0, len(real)))
    def run(pos: int, xor: int, cut: int) -> None:
        data = bytearray(real)
        data[pos] ^= xor
        consume(bytes(data))
        consume(real[:cut])

    run()


# -- narinfo and friends ------------------------------------------------------------------------------


def test_nix32_round_trip_and_hash_spellings() -> None:
    digest = hashlib.sha256(b"nixfly").digest()
    text = nix32_encode(digest)
    assert len(text) == 52 and nix32_decode(text, 32) == digest
    assert parse_sha256("sha256:" + text) == digest
    assert parse_sha256("sha256:" + digest.hex()) == digest
    import base64

    assert parse_sha256("sha256-" + base64.b64encode(digest).decode()) == digest
    with pytest.raises(ValueError):
        parse_sha256("sha256:eeee")  # 'e' is not in Nix's base-32 alphabet
    # Nix's own spelling of sha256("") (as nix-hash --type sha256 --to-base32 prints it).
    empty = hashlib.sha256(b"").digest()
    assert nix32_encode(empty) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


GOOD = """StorePath: /nix/store/p4pclmv1gyja5kzc26npqpia1qqxrf0l-ruby-2.7.3
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 4029176
NarHash: sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h
NarSize: 18735072
References: 0d71ygfwbmy1xjlbj1v027dfmy9cqavy-libffi-3.3 p4pclmv1gyja5kzc26npqpia1qqxrf0l-ruby-2.7.3
Deriver: bidkcs01mww363s4s7akdhbl6ws66b0z-ruby-2.7.3.drv
Sig: cache.nixos.org-1:GrGV/Ls10TzoOaCnrcAqmPbKXFLLSBDeGNh5EQGKyuGA4K1wv1LcRVb6/sU+NAPK8lDiam8XcdJzUngmdhfTBQ==
"""


def test_parse_narinfo_and_fingerprint() -> None:
    ni = parse_narinfo(GOOD, "x.narinfo", "https://cache.example")
    assert ni.nar_size == 18735072 and ni.compression == "xz" and ni.file_size == 4029176
    assert ni.references == (
        "/nix/store/0d71ygfwbmy1xjlbj1v027dfmy9cqavy-libffi-3.3",
        "/nix/store/p4pclmv1gyja5kzc26npqpia1qqxrf0l-ruby-2.7.3",
    )
    assert ni.fingerprint() == (
        b"1;/nix/store/p4pclmv1gyja5kzc26npqpia1qqxrf0l-ruby-2.7.3;"
        b"sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h;18735072;"
        b"/nix/store/0d71ygfwbmy1xjlbj1v027dfmy9cqavy-libffi-3.3,/nix/store/p4pclmv1gyja5kzc26npqpia1qqxrf0l-ruby-2.7.3"
    )
    assert ni.to_store_path().references == ("/nix/store/0d71ygfwbmy1xjlbj1v027dfmy9cqavy-libffi-3.3",)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("NarSize: 18735072\n", ""), "no NarSize"),
        (lambda t: t.replace("NarSize: 18735072", "NarSize: lots"), "is not a number"),
        (lambda t: t.replace("NarHash: sha256:1", "NarHash: md5:1"), "NarHash is not a SHA-256"),
        (lambda t: t.replace("URL: nar/", "URL: ../../"), "not a relative file name"),
        (lambda t: t.replace("libffi-3.3 ", "../etc "), "not a store path name"),
        (lambda t: t + "garbage\n", "is not 'Key: value'"),
        (lambda t: t + "NarSize: 1\n", "given twice"),
        (lambda t: t.replace("/nix/store/p4p", "/gnu/store/p4p", 1), "is not in /nix/store"),
    ],
)
def test_malformed_narinfo(edit: Any, message: str) -> None:
    with pytest.raises(BinaryCacheError, match=message):
        parse_narinfo(edit(GOOD), "x.narinfo", "https://cache.example")


def test_nix_conf_settings_later_override_and_extra_appends() -> None:
    got = read_nix_settings(
        [
            "substituters = https://a https://b\ntrusted-public-keys = a-1:AAAA\n# comment\n",
            "extra-substituters = https://c\nextra-trusted-public-keys = c-1:CCCC  # trailing\n",
            "substituters = https://d\n",
        ]
    )
    assert got.substituters == ("https://d",)
    assert got.trusted_public_keys == ("a-1:AAAA", "c-1:CCCC")
