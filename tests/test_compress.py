"""Layer compression: the same bytes whatever the thread count and write sizes, valid multi-member gzip and
multi-frame zstd (read by Python, gzip/zcat/zstd, nixfly's own readers, skopeo, umoci and oci-image-tool),
one-line errors for bad levels, and a cache identity per encoder and level."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from nixfly.build import compress
from nixfly.build.compress import BLOCK, ZSTD_FRAME, make_compressor
from nixfly.build.tarwriter import HashingSink
from nixfly.cli import main
from nixfly.image.compression import decompressing_reader
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure


def _payload() -> bytes:
    """A bit over 6 gzip blocks and 2 zstd frames: compressible text, noise, zeros, and a short tail."""
    text = b"".join(b"line %d of a log file, more or less like the others\n" % i for i in range(60_000))
    return text + os.urandom(BLOCK + 17) + bytes(2 * BLOCK + ZSTD_FRAME) + b"tail" * 1000


PAYLOAD = _payload()


@pytest.fixture(autouse=True)
def _default_pool() -> Iterator[None]:
    yield
    compress.set_threads(None)


def _compress(kind: str, level: compress.Level | None, chunk: int, data: bytes = PAYLOAD) -> tuple[str, str, bytes]:
    out = io.BytesIO()
    sink = HashingSink(make_compressor(kind, level), out)
    for i in range(0, len(data), chunk):
        sink.write(data[i : i + chunk])
    diff_id, digest = sink.finish()
    assert sink.uncompressed_size == len(data) and sink.compressed_size == len(out.getvalue())
    return diff_id, digest, out.getvalue()


def _members(blob: bytes) -> list[bytes]:
    """The gzip members of ``blob``, decompressed one by one."""
    found = []
    while blob:
        d = zlib.decompressobj(31)
        found.append(d.decompress(blob))
        assert d.eof, "truncated member"
        blob = d.unused_data
    return found


@pytest.mark.parametrize(
    ("kind", "level"), [("gzip", None), ("gzip", "fast"), ("gzip", 1), ("gzip", 6), ("zstd", None)]
)
def test_bytes_do_not_depend_on_threads_or_write_sizes(kind: str, level: compress.Level | None) -> None:
    seen = set()
    for threads in (1, 2, 4):
        compress.set_threads(threads)
        for chunk in (1, 4096, 777_777, BLOCK, 3 * BLOCK + 5) if threads == 2 else (65_536, BLOCK):
            data = PAYLOAD if chunk > 1 else PAYLOAD[: BLOCK + 300]  # byte-at-a-time on a shorter input
            seen.add((chunk > 1, _compress(kind, level, chunk, data)[1]))
    assert len(seen) == 2, seen  # one digest for the full payload, one for the short one


def test_gzip_is_one_member_per_block_and_round_trips() -> None:
    _, _, blob = _compress("gzip", None, 100_000)
    members = _members(blob)
    assert len(members) == -(-len(PAYLOAD) // BLOCK) == 11
    assert all(len(m) == BLOCK for m in members[:-1]) and b"".join(members) == PAYLOAD
    assert gzip.decompress(blob) == PAYLOAD
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # every member starts with our fixed header


def test_gzip_and_zcat_accept_multi_member_layers(tmp_path: Path) -> None:
    for level in (None, "fast", 12):
        f = tmp_path / f"layer-{level}.gz"
        f.write_bytes(_compress("gzip", level, BLOCK)[2])
        assert subprocess.run(["gzip", "-t", str(f)], capture_output=True).returncode == 0
        assert subprocess.run(["zcat", str(f)], capture_output=True, check=True).stdout == PAYLOAD


def _unzstd(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(blob)


def _frames(blob: bytes) -> list[bytes]:
    """The zstd frames of ``blob``, decompressed one by one."""
    found = []
    while blob:
        d = zstandard.ZstdDecompressor().decompressobj()
        found.append(d.decompress(blob))
        assert d.eof, "truncated frame"
        blob = d.unused_data
    return found


def test_zstd_is_one_frame_per_block_and_zstd_and_nixfly_read_it(tmp_path: Path) -> None:
    _, _, blob = _compress("zstd", None, 12_345)
    frames = _frames(blob)
    assert [len(f) for f in frames[:-1]] == [ZSTD_FRAME] * (len(PAYLOAD) // ZSTD_FRAME) and b"".join(frames) == PAYLOAD
    f = tmp_path / "layer.zst"
    f.write_bytes(blob)
    assert subprocess.run(["zstd", "-t", "-q", str(f)], capture_output=True).returncode == 0
    assert subprocess.run(["zstd", "-dcq", str(f)], capture_output=True, check=True).stdout == PAYLOAD
    for kind, data in (("zstd", blob), ("gzip", _compress("gzip", None, BLOCK)[2])):
        with decompressing_reader(kind, io.BytesIO(data)) as r:
            assert r.read() == PAYLOAD, kind


def test_empty_input_is_still_valid() -> None:
    for kind in ("gzip", "zstd"):
        _, _, blob = _compress(kind, None, 1, b"")
        assert (gzip.decompress(blob) if kind == "gzip" else _unzstd(blob)) == b""


def test_levels_change_the_bytes_and_the_identity() -> None:
    levels: list[tuple[str, compress.Level | None]] = [("gzip", None), ("gzip", 1), ("gzip", 6), ("gzip", "fast")]
    levels += [("zstd", None), ("zstd", 9)]
    ids = {make_compressor(k, lv).identity for k, lv in levels}
    assert len(ids) == len(levels)
    digests = {_compress(k, lv, BLOCK)[1] for k, lv in levels}
    assert len(digests) == len(levels)
    assert make_compressor("gzip").identity == make_compressor("gzip", 2).identity
    assert "libdeflate" in make_compressor("gzip").identity and "members" in make_compressor("gzip").identity
    assert "isal" in make_compressor("gzip", "fast").identity
    # The default gzip is smaller than the fast one on compressible input.
    assert len(_compress("gzip", None, BLOCK)[2]) < len(_compress("gzip", "fast", BLOCK)[2])


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--level", "13"], '--level: gzip level must be 1 to 12 or "fast", got 13'),
        (["--level", "0"], '--level: gzip level must be 1 to 12 or "fast", got 0'),
        (["--level", "fats"], "(did you mean 'fast'?)"),
        (["--level", "high"], '--level: must be a number or "fast"'),
        (["--compression", "zstd", "--level", "fast"], '--level: "fast" is a gzip level; zstd levels are 1 to 19'),
        (["--compression", "zstd", "--level", "20"], "--level: zstd level must be 1 to 19, got 20"),
    ],
)
def test_bad_level_is_one_line_and_exit_2(args: list[str], expect: str, tmp_path: Path) -> None:
    r = run_nixfly("build", *args, str(tmp_path / "missing"), "-o", f"oci:{tmp_path / 'img'}")
    assert r.code == 2 and r.out == "", r
    assert len(r.err.splitlines()) == 1 and expect in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "img").exists()


@pytest.mark.parametrize(
    ("toml", "expect"),
    [
        ("level = 13", 'nixfly.toml:4: layers.level: gzip level must be 1 to 12 or "fast", got 13'),
        ('level = "fastest"', "nixfly.toml:4: image.layers.level: must be a number or \"fast\" (got str 'fastest') "
                              "(did you mean 'fast'?)"),
        ("level = true", 'nixfly.toml:4: image.layers.level: must be a number or "fast" (got bool True)'),
        ('compression = "zstd"\nlevel = "fast"', 'nixfly.toml:5: layers.level: "fast" is a gzip level'),
    ],
)  # fmt: skip
def test_bad_level_in_nixfly_toml_names_the_line(toml: str, expect: str, tmp_path: Path) -> None:
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(f'[image]\nroots = ["{tmp_path}/missing"]\n[image.layers]\n{toml}\n')
    r = run_nixfly("build", "-o", f"oci:{tmp_path / 'img'}", cwd=tmp_path)
    assert r.code == 2 and len(r.err.splitlines()) == 1 and expect in r.err, r.err


def _layer_blobs(layout: Path, tag: str) -> list[Path]:
    idx = json.loads((layout / "index.json").read_text())
    d = next(m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads((layout / "blobs/sha256" / d["digest"].split(":")[1]).read_text())
    return [layout / "blobs/sha256" / x["digest"].split(":")[1] for x in manifest["layers"]]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "level"), [("gzip", "2"), ("gzip", "fast"), ("zstd", "3")])
def test_multi_member_layers_are_read_by_skopeo_umoci_and_oci_image_tool(
    kind: str,
    level: str, tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(PAYLOAD)  # > 5 blocks: the customisation layer gets 6+ members
    out = tmp_path / "img"
    code = main(["build", tiny_closure.app, "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"),
                 "--add", f"{data}:/data", "--compression", kind, "--level", level, "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    blobs = _layer_blobs(out, "v1")
    if kind == "gzip":
        assert max(len(_members(b.read_bytes())) for b in blobs) >= 11
    else:
        assert max(len(_frames(b.read_bytes())) for b in blobs) >= 3
    if kind == "gzip":  # oci-image-tool (image-spec 1.0) predates the zstd layer media type
        v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", str(out)],
                           capture_output=True, text=True)  # fmt: skip
        assert v.returncode == 0 and "Validation succeeded" in v.stdout + v.stderr, v.stdout + v.stderr
    # skopeo decompresses every layer (Go's gzip reader, klauspost's zstd, as containerd uses) to recompress it
    # in the other format; what it read must be the tar whose digest is the diff_id.
    other = "zstd" if kind == "gzip" else "gzip"
    re = tmp_path / "re"
    subprocess.run(["skopeo", "copy", "--dest-compress", "--dest-compress-format", other,
                    f"oci:{out}:v1", f"oci:{re}:v1"], check=True, capture_output=True)  # fmt: skip
    unpack = _unzstd if other == "zstd" else gzip.decompress
    unpacked = ["sha256:" + hashlib.sha256(unpack(b.read_bytes())).hexdigest() for b in _layer_blobs(re, "v1")]
    assert unpacked == [x["diff_id"] for x in summary["layers"]]
    if kind == "zstd":  # umoci 0.4.7 reads no zstd layers at all (single frame or not)
        for b in _layer_blobs(out, "v1"):
            assert subprocess.run(["zstd", "-t", "-q", str(b)], capture_output=True).returncode == 0
        return
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{out}:v1", str(bundle)], check=True, capture_output=True)
    assert (bundle / "rootfs/data/big.bin").read_bytes() == PAYLOAD
