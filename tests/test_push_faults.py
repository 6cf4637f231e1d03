"""Pushes survive resets, 5xx, 429 and stalls injected by a loopback proxy, resume chunked uploads from the
server's Range, re-upload only what a killed push left missing, and refuse corrupt blobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixfly.errors import ImageError, RegistryError
from nixfly.image import BlobLayer, Image
from nixfly.registry.client import RegistryClient, RegistryOptions
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import push_image
from nixfly.transports import LayoutLocation
from tests.support.registry_images import make_image
from tests.support.registry_proxy import FaultProxy

pytestmark = pytest.mark.slow

FAST = RegistryOptions(backoff=0.05, max_backoff=0.2, timeout=5)


def skopeo_validate(ref: str, tmp: Path) -> str:
    layout = tmp / "check"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:t"],
                   check=True, capture_output=True)  # fmt: skip
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=t", str(layout)],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    index = json.loads((layout / "index.json").read_text())
    digest: str = index["manifests"][0]["digest"]
    return digest


def test_reset_mid_chunk_resumes_from_server_range(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", extra_layer_bytes=450_000, busybox=False)
    big = max(image.layers, key=lambda lyr: lyr.size)
    # The third PATCH dies after 30 kB; the server keeps the two chunks that came before.
    fault_proxy.add_fault("reset", method="PATCH", after_bytes=30_000, skip=2)
    ref = f"{fault_proxy.host}/faults/chunk:v1"
    opts = RegistryOptions(backoff=0.05, max_backoff=0.2, timeout=5, chunk_size=50_000, monolithic_max=50_000,
                           parallel=1)  # fmt: skip
    result = push_image(image, [ref], options=opts)
    resets = [e for e in fault_proxy.snapshot() if e.fault == "reset"]
    assert len(resets) == 1
    # Resumed, not restarted: only the lost partial chunk was sent twice, and a status GET was made.
    sent = fault_proxy.blob_upload_bytes()
    total = sum(lyr.size for lyr in image.layers) + len(image.config_bytes)
    assert total < sent <= total + 30_000
    assert fault_proxy.count("GET", "/blobs/uploads/") == 1
    assert big.size > 100_000
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_500_and_429_mid_upload_are_retried(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img")
    fault_proxy.add_fault("status", status=500, method="PUT", path_contains="/blobs/uploads/", times=2)
    fault_proxy.add_fault("status", status=429, retry_after="1", method="PUT", path_contains="/manifests/")
    ref = f"{fault_proxy.host}/faults/status:v1"
    t0 = time.monotonic()
    result = push_image(image, [ref], options=FAST)
    assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured
    statuses = [(e.method, e.status) for e in fault_proxy.snapshot() if e.fault]
    assert statuses == [("PUT", 500), ("PUT", 500), ("PUT", 429)]
    assert fault_proxy.manifest_puts() == 2
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_stall_times_out_and_is_retried(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    fault_proxy.add_fault("stall", method="PUT", path_contains="/blobs/uploads/", stall_seconds=30)
    opts = RegistryOptions(backoff=0.05, max_backoff=0.2, timeout=1.5)
    ref = f"{fault_proxy.host}/faults/stall:v1"
    t0 = time.monotonic()
    result = push_image(image, [ref], options=opts)
    assert 1.5 <= time.monotonic() - t0 < 15
    assert [e.fault for e in fault_proxy.snapshot() if e.fault] == ["stall"]
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_lost_response_after_server_stored_blob_is_not_reuploaded(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    fault_proxy.add_fault("forward_then_reset", method="PUT", path_contains="/blobs/uploads/")
    ref = f"{fault_proxy.host}/faults/lost:v1"
    result = push_image(image, [ref], options=FAST)
    # The blob landed despite the reset; a HEAD saw it, so the layer went up exactly once.
    assert fault_proxy.blob_upload_bytes() == sum(lyr.size for lyr in image.layers) + len(image.config_bytes)
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_killed_push_rerun_uploads_only_what_is_missing(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", extra_layer_bytes=200_000)
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    big = max(image.layers, key=lambda lyr: lyr.size)
    fault_proxy.add_fault("stall", method="PUT", path_contains="/blobs/uploads/", min_body=big.size,
                          stall_seconds=60)  # fmt: skip
    ref = f"{fault_proxy.host}/faults/killed:v1"
    proc = subprocess.Popen([sys.executable, "-m", "nixfly", "push", f"oci:{tmp_path / 'layout'}:v1", ref, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while fault_proxy.blob_uploads_completed() < len(image.layers) - 1 or not any(
            e.fault == "stall" for e in fault_proxy.snapshot()
        ):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert fault_proxy.manifest_puts() == 0  # killed before any manifest: nothing half-published
    fault_proxy.release.set()
    fault_proxy.reset_counters()
    result = push_image(image, [ref], options=FAST)
    assert result.uploaded_blobs == 2 and result.skipped_blobs == len(image.layers) - 1
    assert fault_proxy.blob_upload_bytes() == big.size + len(image.config_bytes)
    assert skopeo_validate(ref, tmp_path) == result.digest


def test_corrupt_local_blob_is_an_error_and_no_manifest_is_pushed(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    layer = image.layers[0]
    assert isinstance(layer, BlobLayer)
    data = bytearray(layer.path.read_bytes())
    data[-10] ^= 0xFF
    layer.path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="does not match its digest"):
        push_image(Image(image.config_bytes, image.layers), [f"{fault_proxy.host}/faults/corrupt:v1"], options=FAST)
    assert fault_proxy.manifest_puts() == 0
    assert fault_proxy.blob_uploads_completed() == 0


def test_a_layer_changed_in_a_layout_fails_the_cli_push_with_one_line(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    # The upload does not hash what the layer's verifying reader checks: that reader must still stop it.
    from tests.support.cli import run_nixfly

    image = make_image(tmp_path / "img", busybox=False, extra_layer_bytes=300_000)
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    big = max(image.layers, key=lambda lyr: lyr.size)
    blob = tmp_path / "layout" / "blobs" / "sha256" / big.digest.split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = run_nixfly("push", f"oci:{tmp_path / 'layout'}:v1", f"{fault_proxy.host}/faults/changed:v1", "-q")
    assert r.code == 1 and r.err.count("\n") == 1 and "does not match its digest" in r.err, r.err
    assert fault_proxy.manifest_puts() == 0
    with RegistryClient(fault_proxy.host, RegistryOptions()) as c:
        assert not c.has_blob("faults/changed", big.digest, big.size)


def test_persistent_failure_is_one_line_naming_the_registry(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    fault_proxy.add_fault("status", status=503, path_contains="/blobs/", times=100)
    opts = RegistryOptions(backoff=0.01, max_backoff=0.02, retries=2)
    with pytest.raises(RegistryError) as ei:
        push_image(image, [f"{fault_proxy.host}/faults/down:v1"], options=opts)
    msg = str(ei.value)
    assert msg.startswith(f"registry {fault_proxy.host}: ") and "\n" not in msg and "503" in msg
    assert fault_proxy.manifest_puts() == 0


def test_unknown_registry_host_is_one_line(tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    write_layout(image, LayoutLocation(tmp_path / "layout"))
    r = subprocess.run([sys.executable, "-m", "nixfly", "push", f"oci:{tmp_path / 'layout'}",
                        "no-such-registry.invalid/a/b:1", "--retries", "1"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("nixfly: registry no-such-registry.invalid: cannot reach")
    assert r.stderr.count("\n") == 1


def test_each_retry_is_announced_before_its_wait(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    fault_proxy.add_fault("status", status=503, method="HEAD", path_contains="/blobs/", times=2)
    lines: list[str] = []
    opts = RegistryOptions(backoff=0.05, max_backoff=0.2, timeout=5, on_retry=lines.append)
    push_image(image, [f"{fault_proxy.host}/faults/notice:v1"], options=opts)
    assert len(lines) >= 2 and any("HTTP 503" in ln for ln in lines), lines
    assert all(ln.startswith(f"registry {fault_proxy.host}: retrying in ") for ln in lines), lines
