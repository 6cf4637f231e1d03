"""``nixfly.diff.tarheaders`` lists a tar stream as ``tarfile`` in ``r|`` mode does — names, kinds, sizes,
modes, link targets — for ustar (prefix + name), GNU (long names and link targets) and pax (long and
non-UTF-8 names, size records) archives, old-style directories, and refuses what is not a tar stream."""

from __future__ import annotations

import io
import tarfile

import pytest

from nixfly.diff.tarheaders import DIR, LNK, OTHER, REG, SYM, _number, members
from nixfly.errors import ImageError

_KIND = {tarfile.REGTYPE: REG, tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYM, tarfile.LNKTYPE: LNK}
LONG = "nix/store/" + "a" * 32 + "-long-" + "/".join(["segment-of-a-path"] * 12)


def _tar(fmt: int, entries: list[tuple[str, bytes, str, int, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for name, kind, data, mode, link in ((e[0], e[1], e[2], e[3], e[4]) for e in entries):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.linkname = kind, mode, link
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _entries(long: str) -> list[tuple[str, bytes, bytes, int, str]]:
    return [
        ("nix/store/" + "b" * 32 + "-x", tarfile.DIRTYPE, b"", 0o555, ""),
        ("nix/store/" + "b" * 32 + "-x/bin/tool", tarfile.REGTYPE, b"#!/bin/sh\n" * 100, 0o555, ""),
        ("nix/store/" + "b" * 32 + "-x/empty", tarfile.REGTYPE, b"", 0o444, ""),
        (long, tarfile.REGTYPE, b"z" * 513, 0o444, ""),
        ("nix/store/" + "b" * 32 + "-x/link", tarfile.SYMTYPE, b"", 0o777, "../" + long[:90]),
        ("nix/store/" + "b" * 32 + "-x/hard", tarfile.LNKTYPE, b"", 0o555, "nix/store/" + "b" * 32 + "-x/bin/tool"),
        ("dev/null", tarfile.CHRTYPE, b"", 0o666, ""),
        ("nix/store/.wh." + "c" * 32 + "-gone", tarfile.REGTYPE, b"", 0o600, ""),
    ]  # fmt: skip


def _reference(data: bytes) -> list[tuple[str, str, int, int, str]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
        return [(m.name, _KIND.get(m.type, OTHER), m.size if m.isreg() else 0, m.mode, m.linkname) for m in tf]


def _ours(data: bytes) -> list[tuple[str, str, int, int, str]]:
    return [(m.name, m.kind, m.size, m.mode, m.linkname) for m in members(io.BytesIO(data))]


@pytest.mark.parametrize(
    ("fmt", "long"),
    [
        (tarfile.USTAR_FORMAT, "nix/store/" + "a" * 32 + "-prefixed/" + "d" * 80 + "/file-name-here"),
        (tarfile.GNU_FORMAT, LONG),
        (tarfile.PAX_FORMAT, LONG),
        (tarfile.PAX_FORMAT, "nix/store/" + "a" * 32 + "-ünïcode-\udcff-bytes/" + "x" * 120),
    ],
)
def test_listing_equals_tarfile(fmt: int, long: str) -> None:
    data = _tar(fmt, _entries(long))
    assert _ours(data) == _reference(data)
    assert _ours(data)[3][0] == long


def test_old_style_directory_and_a_pax_size_record() -> None:
    hdr = tarfile.TarInfo("nix/store/" + "e" * 32 + "-old/dir/")
    hdr.type = tarfile.AREGTYPE
    raw = hdr.tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    assert _ours(raw) == _reference(raw) == [("nix/store/" + "e" * 32 + "-old/dir", DIR, 0, 0o644, "")]
    # The pax record's size wins over the header's (0 here): three bytes of data follow.
    ext = tarfile.TarInfo._create_pax_generic_header({"size": "3"}, tarfile.XHDTYPE, "utf-8")
    pax = ext + tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT) + b"abc" + bytes(509)
    pax += tarfile.TarInfo("g").tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    assert _ours(pax) == _reference(pax) == [("f", REG, 3, 0o644, ""), ("g", REG, 0, 0o644, "")]


def test_base_256_numbers() -> None:
    assert _number(b"\x80" + (5 << 33).to_bytes(11, "big")) == 5 << 33
    assert _number(b"00000000017\0") == 0o17


@pytest.mark.parametrize("damage", ["checksum", "truncated-header", "truncated-data", "not-tar", "bad-pax"])
def test_what_is_not_a_tar_stream_is_an_error(damage: str) -> None:
    data = bytearray(_tar(tarfile.PAX_FORMAT, _entries(LONG)))
    if damage == "checksum":
        data[600] ^= 0xFF  # a header's name byte (the second member's header: after a pax header)
        data[0] ^= 0x01
    elif damage == "truncated-header":
        data = data[:700]
    elif damage == "truncated-data":
        data = data[:2048 + 100]
    elif damage == "not-tar":
        data = bytearray(b"<html>" + b"x" * 2000)
    else:
        ti = tarfile.TarInfo("f")
        body = b"99999 path=x\n"
        ti.type, ti.size = tarfile.XHDTYPE, len(body)
        data = bytearray(ti.tobuf(tarfile.USTAR_FORMAT) + body + bytes(512 - len(body)) + bytes(1024))
    with pytest.raises(ImageError):
        list(members(io.BytesIO(bytes(data))))
