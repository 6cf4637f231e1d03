"""The one image model: verified readers, format as an image mutation, sinks that write exactly what they get."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import subprocess
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.errors import ImageError, UsageError
from nixfly.image import Image
from nixfly.image.convert import with_format
from nixfly.image.digest import VerifyingReader, sha256_digest
from nixfly.image.mediatypes import DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP
from nixfly.image.model import BlobLayer, LocalBlob, Mountable
from nixfly.sinks import open_sink, publish
from nixfly.sinks.layout import write_layout
from nixfly.sources import open_image
from nixfly.sources.layout import read_layout
from nixfly.transports import LayoutLocation, parse_location
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

DATA = bytes(range(256)) * 100
DIGEST = sha256_digest(DATA)


def _read_all(r: VerifyingReader, step: int = 1000) -> bytes:
    out = b""
    while chunk := r.read(step):
        out += chunk
    return out


def test_verifying_reader_passes_good_bytes_and_rewinds() -> None:
    r = VerifyingReader(io.BytesIO(DATA), DIGEST, len(DATA), what="blob")
    assert r.read(5000) == DATA[:5000]
    r.seek(100)  # an uploader resuming a chunk
    assert r.read(100) == DATA[100:200]
    r.seek(20000)  # forward: the skipped bytes are read and hashed
    assert _read_all(r) == DATA[20000:]
    assert r.verified


@pytest.mark.parametrize(
    ("data", "size", "message"),
    [
        (DATA[:-1] + b"\0", len(DATA), "does not match its digest"),
        (DATA[:-10], len(DATA), "is truncated"),
        (DATA + b"x", len(DATA), "is longer than"),
        (DATA[:-1] + b"\0", None, "does not match its digest"),
    ],
)
def test_verifying_reader_refuses_bad_bytes(data: bytes, size: int | None, message: str) -> None:
    r = VerifyingReader(io.BytesIO(data), DIGEST, size, what="blob X")
    with pytest.raises(ImageError, match=message):
        _read_all(r)


def test_exact_size_read_is_verified_without_asking_for_eof() -> None:
    # tarfile.addfile reads exactly `size` bytes and never the EOF: the check must still happen.
    r = VerifyingReader(io.BytesIO(DATA[:-1] + b"\0"), DIGEST, len(DATA), what="blob")
    with pytest.raises(ImageError, match="does not match"):
        r.read(len(DATA))


def test_format_is_an_image_mutation_with_its_own_digest(tmp_path: Path) -> None:
    oci = make_image(tmp_path / "img")
    v2 = with_format(oci, "v2s2")
    assert v2.manifest_digest() != oci.manifest_digest()
    m = json.loads(v2.manifest_bytes())
    assert m["mediaType"] == DOCKER_MANIFEST
    assert {d["mediaType"] for d in m["layers"]} == {DOCKER_LAYER_GZIP}
    assert [d["digest"] for d in m["layers"]] == [lyr.digest for lyr in oci.layers]  # same blobs
    assert with_format(v2, "oci").manifest_digest() == oci.manifest_digest()  # round trip
    assert {lyr.media_type for lyr in with_format(v2, "oci").layers} == {OCI_LAYER_GZIP}
    # The local-blob capability survives the conversion: sinks can still hard-link.
    assert all(isinstance(lyr, LocalBlob) for lyr in v2.layers)
    assert not any(isinstance(lyr, Mountable) for lyr in v2.layers)


def test_zstd_cannot_become_v2s2(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", busybox=False)
    lyr = img.layers[0]
    assert isinstance(lyr, BlobLayer)
    z = Image(img.config_bytes, (BlobLayer(lyr.path, lyr.digest, lyr.diff_id, lyr.size, "zstd"),))
    with pytest.raises(UsageError, match="zstd"):
        with_format(z, "v2s2")


def test_every_sink_reports_the_digest_it_wrote(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img")
    out, written = publish(img, [parse_location(f"oci:{tmp_path / 'a'}:t"),
                                 parse_location(f"docker-archive:{tmp_path / 'b.tar'}")], fmt="v2s2")  # fmt: skip
    assert out.format == "v2s2"
    assert {w.digest for w in written} == {out.manifest_digest()}
    # The layout holds exactly that manifest; reading it back gives the same digest.
    assert read_layout(LayoutLocation(tmp_path / "a", "t")).manifest_digest() == out.manifest_digest()
    sink = open_sink(parse_location(f"oci:{tmp_path / 'c'}"))
    assert sink.write(img).digest == img.manifest_digest()


def _tamper(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_tampered_config_is_refused_by_inspect_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "l", "t"))
    _tamper(_blob(tmp_path / "l", img.config_digest), offset=10)
    for args in (["inspect", f"oci:{tmp_path / 'l'}:t", "--no-scan"], ["run", f"oci:{tmp_path / 'l'}:t"]):
        code = main(args)
        err = capsys.readouterr().err
        assert code != 0
        assert err.count("\n") == 1 and "does not match its digest" in err, err


def test_tampered_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "l", "t"))
    _tamper(_blob(tmp_path / "l", img.manifest_digest()), offset=3)
    assert main(["inspect", f"oci:{tmp_path / 'l'}:t", "--no-scan"]) == 1
    assert "does not match its digest" in capsys.readouterr().err


def test_copy_of_a_bit_flipped_layer_fails_and_writes_nothing(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "a", "t"))
    _tamper(_blob(tmp_path / "a", img.layers[-1].digest))
    code = main(["copy", f"oci:{tmp_path / 'a'}:t", f"oci:{tmp_path / 'b'}:t"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "does not match its digest" in err
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "img"]  # no partial directory left


@pytest.mark.parametrize(
    ("what", "content", "message"),
    [
        ("config", b"not json", "is not valid JSON"),
        ("index", b'{"schemaVersion":2,"manifests":[1,2]}', "manifests list of objects"),
        ("index", b"[]", "is not a JSON object"),
    ],
)
def test_malformed_layout_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
                                             content: bytes, message: str) -> None:  # fmt: skip
    img = make_image(tmp_path / "img")
    root = tmp_path / "l"
    write_layout(img, LayoutLocation(root, "t"))
    if what == "index":
        (root / "index.json").write_bytes(content)
    else:
        # A config that is not JSON, consistently named by its digest (so only the JSON check can catch it).
        digest = sha256_digest(content)
        _blob(root, digest).write_bytes(content)
        m = json.loads(img.manifest_bytes())
        m["config"] = {**m["config"], "digest": digest, "size": len(content)}
        raw = json.dumps(m).encode()
        _blob(root, sha256_digest(raw)).write_bytes(raw)
        idx = json.loads((root / "index.json").read_text())
        idx["manifests"][0].update(digest=sha256_digest(raw), size=len(raw))
        (root / "index.json").write_text(json.dumps(idx))
    for cmd in ("inspect", "run"):
        code = main([cmd, f"oci:{root}:t"])
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_oci_destination_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "src", "t"))
    target = tmp_path / "afile"
    target.write_text("keep me")
    code = main(["copy", f"oci:{tmp_path / 'src'}:t", f"oci:{target}:t"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "is not a directory" in err
    assert target.read_text() == "keep me"


def _write_tag(args: tuple[str, str, str]) -> None:
    src, dst, tag = args
    write_layout(open_image(parse_location(src)), LayoutLocation(Path(dst), tag))


def test_concurrent_tags_into_one_layout_are_all_kept(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "src", "t"))
    src = f"oci:{tmp_path / 'src'}:t"
    jobs = []
    for pair in range(25):
        dst = str(tmp_path / f"out{pair}")
        jobs += [(src, dst, "v1"), (src, dst, "v2")]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_write_tag, jobs)
    for pair in range(25):
        idx = json.loads((tmp_path / f"out{pair}" / "index.json").read_text())
        tags = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in idx["manifests"])
        assert tags == ["v1", "v2"], (pair, tags)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs, no lock files


def _skopeo_raw_digest(ref: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_push_to_a_v2s2_default_registry_prints_the_registry_digest(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIXFLY_V2S2_REGISTRIES", registry.host)  # the registry is treated like registry.fly.io
    img = make_image(tmp_path / "img")
    write_layout(img, LayoutLocation(tmp_path / "l", "t"))
    ref = f"{registry.host}/v2/app:1"
    assert main(["push", f"oci:{tmp_path / 'l'}:t", ref, "-q"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"{registry.host}/v2/app@{_skopeo_raw_digest(ref)}"
    assert printed.endswith(with_format(img, "v2s2").manifest_digest())
    assert printed.split("@")[1] != img.manifest_digest()


def test_a_progress_wrapped_layer_stays_checked_so_nothing_hashes_it_twice(tmp_path: Path) -> None:
    from nixfly.image.digest import CheckedReader
    from nixfly.registry.progress_io import ProgressLayer
    from tests.support.registry_images import blob_layer

    layer = blob_layer(tmp_path, b"x" * 300_000, level=1)
    seen: list[int] = []
    wrapped = ProgressLayer(layer, seen.append)
    with wrapped.compressed() as f:
        # An upload trusts a CheckedReader and does not hash its bytes again: the wrapper must stay one.
        assert isinstance(f, CheckedReader) and f.expected_digest == layer.digest
        assert f.read() == layer.path.read_bytes() and f.read() == b""
        assert f.verified and sum(seen) == layer.size
    data = bytearray(layer.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    layer.path.chmod(0o644)
    layer.path.write_bytes(bytes(data))
    with wrapped.compressed() as f, pytest.raises(ImageError, match="does not match its digest"):
        f.read()
