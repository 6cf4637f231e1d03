"""Layers upload while they are still being compressed: a blob still being written goes up chunk
by chunk through a real registry, survives faults on its first requests, and is never finished with bytes
that do not match the digest its writer reports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from nixfly.build.cache import BlobCache
from nixfly.build.compress import make_compressor
from nixfly.build.layers import Entry, LayerSettings, LayerSpec, build_layer
from nixfly.errors import ImageError, RegistryError
from nixfly.image import BlobLayer
from nixfly.image.growing import GrowingBlob
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.registry.reference import parse_reference
from nixfly.sinks.registry import EarlyUploads, PushProgress
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry_proxy import FaultProxy
from tests.test_push_faults import skopeo_validate

pytestmark = pytest.mark.slow

CHUNK = 64 * 1024
OPTS = RegistryOptions(backoff=0.05, max_backoff=0.2, timeout=5, chunk_size=CHUNK, monolithic_max=CHUNK)


class SlowWriter(threading.Thread):
    """Writes ``data`` to ``path`` in pieces, announcing each to ``blob``; waits on ``gate`` halfway."""

    def __init__(self, path: Path, blob: GrowingBlob, data: bytes, piece: int = 16 * 1024,
                 digest: str | None = None) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.path, self.blob, self.data, self.piece = path, blob, data, piece
        self.digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self.halfway = threading.Event()
        self.gate = threading.Event()

    def run(self) -> None:
        with open(self.path, "ab") as f:
            for off in range(0, len(self.data), self.piece):
                if off >= len(self.data) // 2 and not self.halfway.is_set():
                    self.halfway.set()
                    self.gate.wait(10)
                f.write(self.data[off : off + self.piece])
                f.flush()
                self.blob.wrote(len(self.data[off : off + self.piece]))
        self.blob.finish(self.digest, len(self.data))


def growing(tmp_path: Path, data: bytes, name: str = "blob.tmp", **kw: object) -> tuple[GrowingBlob, SlowWriter]:
    path = tmp_path / name
    path.write_bytes(b"")
    blob = GrowingBlob(path, "test layer")
    return blob, SlowWriter(path, blob, data, **kw)  # type: ignore[arg-type]


def blob_on_registry(host: str, repo: str, digest: str) -> bytes:
    with RegistryClient(host, RegistryOptions()) as c:
        return c.get_blob_bytes(repo, digest)


def test_a_growing_blob_is_sent_before_its_writer_finishes(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    data = os.urandom(600_000)
    blob, writer = growing(tmp_path, data)
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/a:v1"), OPTS)
    writer.start()
    early.layer_growing(blob)
    assert writer.halfway.wait(10)
    # The writer is parked at the halfway mark: whole chunks of the first half must already be on the wire.
    deadline = time.monotonic() + 10
    while fault_proxy.blob_upload_bytes() < 4 * CHUNK and time.monotonic() < deadline:
        time.sleep(0.02)
    before_finish = fault_proxy.blob_upload_bytes()
    assert not blob.done
    assert before_finish >= 4 * CHUNK, before_finish
    writer.gate.set()
    done = early.finish()
    digest = writer.digest
    assert done == {digest: ("uploaded", len(data))}
    assert blob_on_registry(fault_proxy.host, "overlap/a", digest) == data
    # Each byte went once: PATCHes of whole chunks, then the rest, then an empty PUT with the digest.
    assert fault_proxy.blob_upload_bytes() == len(data)
    puts = [e for e in fault_proxy.snapshot() if e.method == "PUT" and "/blobs/uploads/" in e.path]
    assert [(e.request_bytes, e.status) for e in puts] == [(0, 201)]


def test_faults_on_the_first_requests_of_a_growing_upload_are_survived(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(400_000)
    blob, writer = growing(tmp_path, data)
    writer.gate.set()
    fault_proxy.add_fault("status", status=500, method="POST", path_contains="/blobs/uploads/")
    fault_proxy.add_fault("status", status=500, method="PATCH")
    fault_proxy.add_fault("reset", method="PATCH", after_bytes=10_000, skip=1)
    fault_proxy.add_fault("status", status=503, method="PUT", path_contains="/blobs/uploads/")
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/faults:v1"), OPTS)
    writer.start()
    early.layer_growing(blob)
    done = early.finish()
    assert done[writer.digest][0] == "uploaded"
    assert [e.fault for e in fault_proxy.snapshot() if e.fault] == ["status", "status", "reset", "status"]
    assert blob_on_registry(fault_proxy.host, "overlap/faults", writer.digest) == data


def test_a_lost_session_restarts_from_the_file(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob, writer = growing(tmp_path, data)
    writer.gate.set()
    # The third PATCH is answered 404 and so is the status GET (the registry forgot the session): start
    # again from byte 0, re-reading the file.
    fault_proxy.add_fault("status", status=404, method="PATCH", skip=2)
    fault_proxy.add_fault("status", status=404, method="GET", path_contains="/blobs/uploads/")
    notes: list[str] = []

    class Notes(PushProgress):
        def blob_note(self, digest: str, text: str) -> None:
            notes.append(text)

    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/lost:v1"), OPTS, Notes())
    writer.start()
    early.layer_growing(blob)
    early.finish()
    assert blob_on_registry(fault_proxy.host, "overlap/lost", writer.digest) == data
    assert any("restarting from 0" in n for n in notes), notes
    assert fault_proxy.blob_upload_bytes() > len(data)  # the first session's chunks went twice


def test_bytes_that_do_not_match_the_reported_digest_are_never_committed(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    blob, writer = growing(tmp_path, data, digest=wrong)
    writer.gate.set()
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/corrupt:v1"), OPTS)
    writer.start()
    early.layer_growing(blob)
    with pytest.raises(ImageError, match="does not match its digest"):
        early.finish()
    assert fault_proxy.blob_uploads_completed() == 0
    with RegistryClient(fault_proxy.host, RegistryOptions()) as c:
        assert not c.has_blob("overlap/corrupt", wrong, len(data))


def test_a_failing_writer_fails_the_upload_without_a_final_put(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    path = tmp_path / "blob.tmp"
    path.write_bytes(os.urandom(3 * CHUNK))
    blob = GrowingBlob(path, "broken layer")
    blob.wrote(3 * CHUNK)
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/broken:v1"), OPTS)
    early.layer_growing(blob)
    time.sleep(0.3)
    blob.fail("cannot read /nix/store/x: Permission denied")
    with pytest.raises(ImageError, match="Permission denied"):
        early.finish()
    assert fault_proxy.blob_uploads_completed() == 0
    with pytest.raises(ImageError):
        early.check()


def test_a_small_growing_blob_is_a_head_and_one_put(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    data = os.urandom(CHUNK // 2)
    blob, writer = growing(tmp_path, data)
    writer.gate.set()
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/small:v1"), OPTS)
    writer.start()
    early.layer_growing(blob)
    assert early.finish() == {writer.digest: ("uploaded", len(data))}
    assert fault_proxy.count("PATCH") == 0
    assert fault_proxy.count("HEAD", "/blobs/") == 1
    # Offered again (a second build of the same layer): the HEAD finds it, nothing is sent.
    fault_proxy.reset_counters()
    blob2, writer2 = growing(tmp_path, data, "again.tmp")
    writer2.gate.set()
    early2 = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/small:v1"), OPTS)
    writer2.start()
    early2.layer_growing(blob2)
    assert early2.finish() == {writer.digest: ("skipped", 0)}
    assert fault_proxy.blob_upload_bytes() == 0


def test_an_unreachable_registry_stops_the_uploads_with_one_error(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob, writer = growing(tmp_path, data)
    writer.gate.set()
    opts = RegistryOptions(retries=1, backoff=0.01, max_backoff=0.01, timeout=1, chunk_size=CHUNK)
    early = EarlyUploads(parse_reference("127.0.0.1:9/overlap/none:v1"), opts)
    writer.start()
    early.layer_growing(blob)
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1:9"):
        early.finish()


def test_build_push_streams_its_layers_and_pushes_what_skopeo_reads(
    tiny_closure: TinyClosure, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # A small chunk size so the tiny closure's layers go up in several PATCHes each, while being written;
    # a 500 on the first upload request of all, to show the stream survives a fault before its first byte.
    fault_proxy.add_fault("status", status=500, method="POST", path_contains="/blobs/uploads/")
    ref = f"{fault_proxy.host}/overlap/app:v1"
    r = run_nixfly("build", tiny_closure.app, "--push", ref, "--json", "--chunk-size", "4096", "--sbom", "none",
                   "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code == 0, r.err
    s = json.loads(r.out)
    insp = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True, check=True)  # fmt: skip
    assert "sha256:" + hashlib.sha256(insp.stdout).hexdigest() == s["pushed"]["digest"] == s["digest"]
    manifest = json.loads(insp.stdout)
    blobs = [*manifest["layers"], manifest["config"]]
    # After the image, the push recorded its layers in the repository's layer index (an artifact of its own).
    idx = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{fault_proxy.host}/overlap/app:nixfly-layer-index"],
                         capture_output=True, check=True)  # fmt: skip
    idx_manifest = json.loads(idx.stdout)
    artifact = [*idx_manifest["layers"], idx_manifest["config"]]
    # Every blob went exactly once (the first POST failed before any body was sent)...
    assert fault_proxy.blob_upload_bytes() == sum(b["size"] for b in blobs + artifact)
    assert fault_proxy.blob_uploads_completed() == len({b["digest"] for b in blobs + artifact})
    # ...and the big layers went in chunks, not in one PUT after their compression.
    assert fault_proxy.count("PATCH") > len(blobs)
    assert skopeo_validate(ref, tmp_path) == s["digest"]  # copied by skopeo, validated by oci-image-tool

    # The same build again, with an empty cache: the layer index vouches for every layer, nothing is sent.
    fault_proxy.reset_counters()
    r2 = run_nixfly("build", tiny_closure.app, "--push", ref, "--json", "--sbom", "none",
                    "--cache-dir", str(tmp_path / "c2"))  # fmt: skip
    assert r2.code == 0, r2.err
    assert json.loads(r2.out)["pushed"]["digest"] == s["digest"]
    assert fault_proxy.blob_upload_bytes() == 0
    assert fault_proxy.count("PATCH") == 0


def test_build_push_to_an_unreachable_registry_is_one_line(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    r = run_nixfly("build", tiny_closure.app, "--push", "127.0.0.1:9/app:v1", "--retries", "0",
                   "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code != 0
    assert "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "127.0.0.1:9" in r.err


def test_abort_does_not_wait_for_a_stalled_upload(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob, writer = growing(tmp_path, data)
    writer.gate.set()
    fault_proxy.add_fault("stall", method="PATCH", stall_seconds=30)
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/stall:v1"), OPTS)
    writer.start()
    early.layer_growing(blob)
    deadline = time.monotonic() + 10
    while not any(e.fault == "stall" for e in fault_proxy.snapshot()) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    early.abort()  # the build failed: give up now, not after the registry's 30 s
    assert time.monotonic() - t0 < 2
    with pytest.raises(RegistryError, match="abandoned"):
        early.check()
    assert fault_proxy.blob_uploads_completed() == 0


# -- one SHA-256 pass per uploaded byte ----------------------------------------------------------------------


class _CountingSha256:
    """hashlib's sha256, counting the bytes it is fed (shared by every instance)."""

    fed = 0

    def __init__(self, data: bytes = b"") -> None:
        self._h = hashlib.sha256(data)
        _CountingSha256.fed += len(data)

    def update(self, data: bytes) -> None:
        _CountingSha256.fed += len(memoryview(data).cast("B"))
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _build_growing_layer(tmp_path: Path, size: int) -> tuple[GrowingBlob, BlobLayer]:
    """A real gzip layer of ``size`` incompressible bytes built by ``build_layer``, its blob handed over while
    it grows (as a build --push does), kept for the caller to upload."""
    blobs: list[GrowingBlob] = []
    spec = LayerSpec(extra=(Entry("file", "/data/blob", 0o644, data=os.urandom(size)),), comment="data")
    cached, built = build_layer(spec, LayerSettings(make_compressor("gzip")), BlobCache(tmp_path / "cache"),
                                on_blob=blobs.append)  # fmt: skip
    assert built and len(blobs) == 1
    return blobs[0], BlobLayer(cached.path, cached.digest, cached.diff_id, cached.size)


def test_a_growing_layer_goes_up_from_the_hashed_bytes_without_a_second_pass(
    fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nixfly.image.growing as growing_mod
    import nixfly.registry.upload as upload_mod

    # Only the upload side's hashing is counted: the reader's and the upload state's.
    counting = types.SimpleNamespace(sha256=_CountingSha256)
    monkeypatch.setattr(growing_mod, "hashlib", counting, raising=False)
    monkeypatch.setattr(upload_mod, "hashlib", counting)
    read_back = []
    real_pread = GrowingBlob.pread
    monkeypatch.setattr(GrowingBlob, "pread", lambda self, n, off: read_back.append(n) or real_pread(self, n, off))
    _CountingSha256.fed = 0
    blob, layer = _build_growing_layer(tmp_path, 3 << 20)
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/once:v1"), OPTS)
    early.layer_growing(blob)
    assert early.finish() == {layer.digest: ("uploaded", layer.size)}
    assert blob_on_registry(fault_proxy.host, "overlap/once", layer.digest) == layer.path.read_bytes()
    # The bytes went from the writer's pieces, which its digest covers: not read back, not hashed again.
    assert _CountingSha256.fed == 0 and sum(read_back) == 0
    assert growing_mod.held_bytes() == 0  # every piece given back


def test_a_reader_behind_the_held_pieces_checks_what_it_reads_back(
    fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nixfly.image.growing as growing_mod

    # Memory holds only the first ~256 KiB: the rest must come back from the file, where it changed.
    monkeypatch.setattr(growing_mod, "HOLD_MAX", 256 << 10)
    blob, layer = _build_growing_layer(tmp_path, 2 << 20)
    data = bytearray(layer.path.read_bytes())
    data[-100] ^= 0x01
    layer.path.chmod(0o644)
    layer.path.write_bytes(bytes(data))  # the same inode the blob reads from
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/changed:v1"), OPTS)
    early.layer_growing(blob)
    with pytest.raises(ImageError, match="does not match its digest"):
        early.finish()
    assert fault_proxy.blob_uploads_completed() == 0
    with RegistryClient(fault_proxy.host, RegistryOptions()) as c:
        assert not c.has_blob("overlap/changed", layer.digest, layer.size)
    assert growing_mod.held_bytes() == 0


def test_bytes_changed_in_the_file_behind_held_pieces_never_go_out(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # What is held in memory is what the digest covers: a byte changed in the file afterwards is not sent.
    blob, layer = _build_growing_layer(tmp_path, 1 << 20)
    good = layer.path.read_bytes()
    bad = bytearray(good)
    bad[10] ^= 0x01
    layer.path.chmod(0o644)
    layer.path.write_bytes(bytes(bad))
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/held:v1"), OPTS)
    early.layer_growing(blob)
    assert early.finish() == {layer.digest: ("uploaded", layer.size)}
    assert blob_on_registry(fault_proxy.host, "overlap/held", layer.digest) == good


# -- an abandoned push gives back what its growing blobs hold ------------------------------------------------


def _open_fds_under(root: Path) -> list[str]:
    """The files under ``root`` this process has open (its blob descriptors)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def test_an_aborted_push_fails_and_closes_every_growing_blob(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    import nixfly.image.growing as growing_mod

    # The registry refuses every upload; one upload at a time, so the first failure leaves the other blobs'
    # uploads queued (skipped, never run): abort must still give back their held pieces and descriptors.
    fault_proxy.add_fault("status", status=403, method="POST", path_contains="/blobs/uploads/", times=100)
    opts = RegistryOptions(backoff=0.01, max_backoff=0.01, timeout=5, chunk_size=CHUNK, parallel=1)
    early = EarlyUploads(parse_reference(f"{fault_proxy.host}/overlap/refused:v1"), opts)
    blobs = []
    for i in range(3):
        data = os.urandom(3 * CHUNK)
        path = tmp_path / f"blob{i}.tmp"
        path.write_bytes(data)
        blob = GrowingBlob(path, f"layer {i}")
        for off in range(0, len(data), CHUNK):
            blob.wrote(CHUNK, data[off : off + CHUNK])
        blob.finish("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        blobs.append(blob)
    assert growing_mod.held_bytes() == 9 * CHUNK
    for blob in blobs:
        early.layer_growing(blob)
    deadline = time.monotonic() + 10
    with pytest.raises(RegistryError):  # the first upload's refusal, as the build hears it
        while time.monotonic() < deadline:
            early.check()
            time.sleep(0.01)
    early.abort()  # the build raised the failure: abandon
    assert growing_mod.held_bytes() == 0
    assert _open_fds_under(tmp_path) == []
    for blob in blobs:
        with pytest.raises(ImageError, match="read after close"):
            blob.pread(1, 0)
    assert fault_proxy.blob_uploads_completed() == 0


def test_a_build_push_the_registry_refuses_gives_back_every_blob(
    tiny_closure: TinyClosure, fault_proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nixfly.image.growing as growing_mod
    from nixfly.cli import main

    fault_proxy.add_fault("status", status=403, method="POST", path_contains="/blobs/uploads/", times=1000)
    cache = tmp_path / "c"
    code = main(["build", tiny_closure.app, "--push", f"{fault_proxy.host}/overlap/refused:v1", "--chunk-size",
                 "4096", "--parallel", "1", "--retries", "0", "--sbom", "none", "--cache-dir", str(cache)])  # fmt: skip
    err = capsys.readouterr().err
    assert code not in (0, 70), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert growing_mod.held_bytes() == 0
    assert _open_fds_under(cache) == []
    assert fault_proxy.blob_uploads_completed() == 0


def test_a_layer_the_cache_cannot_remember_ends_the_build_push_with_one_line(
    tiny_closure: TinyClosure, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # Run in a child: before, the upload waited for ever for a layer that was never finished or failed, and
    # its (non-daemon) worker thread kept the process from exiting.
    code = (
        "import errno, os, sys\n"
        "from nixfly.build.cache import BlobCache\n"
        "def remember(self, key, layer):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "BlobCache.remember = remember\n"
        "from nixfly.cli import main\n"
        f"sys.exit(main(['build', {tiny_closure.app!r}, '--push', '{fault_proxy.host}/overlap/full:v1',"
        f" '--chunk-size', '4096', '--sbom', 'none', '--cache-dir', {str(tmp_path / 'c')!r}]))\n"
    )
    try:
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}  # a crash file, if any, stays here
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the build hung after the cache failed to remember a layer")
    assert r.returncode not in (0, 70), r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "No space left on device" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
