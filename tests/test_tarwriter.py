"""The deterministic tar writer: what GNU tar and Python's tarfile read back, byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

from nixfly.build.compress import make_compressor
from nixfly.build.tarwriter import HashingSink, TarWriter, compile_perm_rule


def write(tmp: Path, fill: object, **kw: object) -> tuple[bytes, str, str]:
    out = io.BytesIO()
    sink = HashingSink(make_compressor("none"), out)
    tw = TarWriter(sink, **kw)  # type: ignore[arg-type]
    fill(tw)  # type: ignore[operator]
    tw.close()
    diff_id, digest = sink.finish()
    return out.getvalue(), diff_id, digest


def test_entries_metadata_and_pax_for_long_and_binary_names(tmp_path: Path) -> None:
    long_dir = b"d" * 120
    odd = b"caf\xe9-latin1.txt"  # not UTF-8
    target = b"/nix/store/" + b"t" * 150

    def fill(tw: TarWriter) -> None:
        tw.add_dir(b"nix", 0o755)
        tw.add_dir(b"nix/" + long_dir, 0o555)
        tw.add_bytes(b"nix/" + long_dir + b"/" + b"f" * 90, b"hello", 0o444)
        tw.add_bytes(b"nix/" + odd, b"x", 0o644)
        tw.add_symlink(b"nix/link", target)

    data, diff_id, digest = write(tmp_path, fill)
    assert diff_id == digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
        names = [os.fsencode(m.name) for m in members]
        assert names == [b"nix", b"nix/" + long_dir, b"nix/" + long_dir + b"/" + b"f" * 90, b"nix/" + odd, b"nix/link"]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", 1)
        assert members[2].mode == 0o444 and tf.extractfile(members[2]).read() == b"hello"  # type: ignore[union-attr]
        assert os.fsencode(members[4].linkname) == target
    # GNU tar agrees (it lists the non-UTF-8 name's bytes as written).
    p = tmp_path / "t.tar"
    p.write_bytes(data)
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", str(p)], capture_output=True, check=True
    ).stdout.split(b"\n")
    assert b"nix/" + odd in listing and b"nix/" + long_dir + b"/" + b"f" * 90 in listing


def test_sizes_of_8_gib_and_more_use_a_pax_size_record() -> None:
    out = io.BytesIO()
    sink = HashingSink(make_compressor("none"), out)
    tw = TarWriter(sink)
    size = 9 * 1024**3
    tw.header(b"nix/huge", b"0", 0o444, size)
    sink.finish()
    raw = out.getvalue()
    assert b" size=9663676416\n" in raw[:1024]
    # tarfile reads the header (data would follow): the PAX size wins over the ustar field.
    info = tarfile.TarInfo.frombuf(raw[1024:1536], "utf-8", "surrogateescape")
    assert info.name == "nix/huge"
    with tarfile.open(fileobj=io.BytesIO(raw + bytes(1024)), mode="r|") as tf:
        m = tf.next()
        assert m is not None and m.size == size


def test_perm_rules_set_owner_and_mode_by_regex() -> None:
    rules = (
        compile_perm_rule(regex="/nix/store/[^/]+-app/var(/.*)?", uid=1000, gid=100, mode=0o750),
        compile_perm_rule(path="/nix/store/x-app/var/log", mode=0o700),
    )

    def fill(tw: TarWriter) -> None:
        tw.add_dir(b"nix/store/x-app/var", 0o555)
        tw.add_dir(b"nix/store/x-app/var/log", 0o555)
        tw.add_bytes(b"nix/store/x-app/bin", b"", 0o555)

    data, _, _ = write(Path("."), fill, rules=rules)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: (m.uid, m.gid, m.mode) for m in tf.getmembers()}
    assert got == {
        "nix/store/x-app/var": (1000, 100, 0o750),
        "nix/store/x-app/var/log": (1000, 100, 0o700),
        "nix/store/x-app/bin": (0, 0, 0o555),
    }


def test_compressed_bytes_do_not_depend_on_write_sizes() -> None:
    payload = os.urandom(3 << 20) + bytes(5 << 20)

    def digest(chunk: int, kind: str) -> tuple[str, str]:
        sink = HashingSink(make_compressor(kind), io.BytesIO())
        for i in range(0, len(payload), chunk):
            sink.write(payload[i : i + chunk])
        return sink.finish()

    for kind in ("gzip", "zstd"):
        results = (
            {digest(c, kind) for c in (1, 4096, 777_777, 1 << 20, 3 << 20)}
            if kind == "zstd"
            else {digest(c, kind) for c in (4096, 777_777, 1 << 20, 3 << 20)}
        )
        assert len(results) == 1, kind
