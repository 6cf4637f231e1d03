"""nixfly push against a real registry: validators agree with the digest, only missing blobs go up, it runs."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.image import Image
from nixfly.image.convert import with_format
from nixfly.registry.client import RegistryOptions
from nixfly.sinks import format_for
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import push_image
from nixfly.transports import LayoutLocation, RegistryLocation
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image
from tests.support.registry_proxy import FaultProxy

pytestmark = pytest.mark.slow


def skopeo_inspect(ref: str, *extra: str) -> dict[str, object]:
    out = subprocess.run(["skopeo", "inspect", *extra, f"docker://{ref}"], check=True, capture_output=True)
    loaded: dict[str, object] = json.loads(out.stdout)
    return loaded


def validate_via_skopeo_copy(ref: str, tmp: Path, *extra: str) -> Path:
    """skopeo copies the pushed image into a layout; oci-image-tool must accept it."""
    layout = tmp / f"skopeo-{uuid.uuid4().hex[:8]}"
    subprocess.run(["skopeo", "copy", *extra, f"docker://{ref}", f"oci:{layout}:t"], check=True, capture_output=True)
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=t", str(layout)],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    return layout


def run_with_runc(layout: Path, tmp: Path) -> str:
    """Unpack with umoci and run the image's command under runc; returns its stdout."""
    bundle = tmp / f"bundle-{uuid.uuid4().hex[:8]}"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)  # fmt: skip
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = False
    cfg_path.write_text(json.dumps(cfg))
    cid = f"nixfly-test-{uuid.uuid4().hex[:10]}"
    r = subprocess.run(["runc", "run", "-b", str(bundle), cid], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_push_matches_skopeo_validates_and_runs(registry: RunningRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img")
    ref = f"{registry.host}/apps/hello:v1"
    result = push_image(image, [ref])
    assert result.digest == image.manifest_digest()
    assert result.reference == f"{registry.host}/apps/hello@{result.digest}"
    assert result.uploaded_blobs == 3 and result.skipped_blobs == 0
    assert result.uploaded_bytes == sum(lyr.size for lyr in image.layers) + len(image.config_bytes)
    info = skopeo_inspect(ref, "--tls-verify=false")
    assert info["Digest"] == result.digest
    assert info["Layers"] == [lyr.digest for lyr in image.layers]
    # skopeo resolves the pinned reference nixfly printed to the same image.
    assert skopeo_inspect(result.reference, "--tls-verify=false")["Digest"] == result.digest
    layout = validate_via_skopeo_copy(ref, tmp_path, "--src-tls-verify=false")
    assert run_with_runc(layout, tmp_path) == "hello from nixfly v1\n"


def test_second_push_uploads_nothing_and_a_changed_app_uploads_one_layer(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    ref = f"{fault_proxy.host}/apps/hello:v1"
    v1 = make_image(tmp_path / "v1")
    first = push_image(v1, [ref])
    assert fault_proxy.blob_uploads_completed() == 3

    fault_proxy.reset_counters()
    again = push_image(v1, [ref])
    assert again.digest == first.digest
    assert (again.uploaded_bytes, again.uploaded_blobs, again.skipped_blobs) == (0, 0, 3)
    assert fault_proxy.blob_upload_bytes() == 0
    assert fault_proxy.count("POST", "/blobs/uploads/") == 0
    assert fault_proxy.manifest_puts() == 1

    fault_proxy.reset_counters()
    v2 = make_image(tmp_path / "v2", app=b"hello from nixfly v2\n")
    changed = [lyr for lyr in v2.layers if lyr.digest not in {x.digest for x in v1.layers}]
    assert len(changed) == 1
    second = push_image(v2, [f"{fault_proxy.host}/apps/hello:v2"])
    # Exactly the changed layer + the config went up, then one manifest.
    assert fault_proxy.blob_uploads_completed() == 2
    assert fault_proxy.blob_upload_bytes() == changed[0].size + len(v2.config_bytes)
    assert second.uploaded_bytes == changed[0].size + len(v2.config_bytes)
    assert fault_proxy.manifest_puts() == 1
    # The manifest went last: after every blob request.
    ex = fault_proxy.snapshot()
    assert ex[-1].method == "PUT" and "/manifests/v2" in ex[-1].path


def test_a_second_push_of_a_layer_larger_than_a_response_limit_skips_it(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # The registry answers the HEAD of a blob it has with the blob's Content-Length (5 MiB here): a HEAD
    # has no body, so that is no answer "larger than the 4 MiB nixfly reads" (it failed every re-push).
    image = make_image(tmp_path / "img", busybox=False, extra_layer_bytes=5 << 20)
    assert max(lyr.size for lyr in image.layers) > 4 << 20
    ref = f"{fault_proxy.host}/apps/big:v1"
    first = push_image(image, [ref])
    fault_proxy.reset_counters()
    again = push_image(image, [ref])
    assert again.digest == first.digest
    assert (again.uploaded_blobs, again.skipped_blobs) == (0, len(image.layers) + 1)
    assert fault_proxy.blob_upload_bytes() == 0


def test_several_tags_and_v2s2_format(registry: RunningRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img")
    refs = [f"{registry.host}/multi:a", f"{registry.host}/multi:b", f"{registry.host}/other:c"]
    result = push_image(image, refs, fmt="v2s2")
    v2s2 = with_format(image, "v2s2")
    assert result.digest == v2s2.manifest_digest() != image.manifest_digest()
    for r in refs:
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{r}"],
                             check=True, capture_output=True).stdout  # fmt: skip
        assert raw == v2s2.manifest_bytes()
        assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_fly_registry_defaults_to_docker_v2s2(tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", busybox=False)
    assert format_for([RegistryLocation("registry.fly.io/my-app:deploy-1")], image) == "v2s2"
    assert format_for([RegistryLocation("ghcr.io/o/r:1")], image) == "oci"


def test_cli_push_from_layout_prints_pinned_reference(registry: RunningRegistry, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    image = make_image(tmp_path / "img")
    write_layout(image, LayoutLocation(tmp_path / "layout", "v1"))
    ref = f"{registry.host}/cli/app"
    code = main(["push", f"oci:{tmp_path / 'layout'}:v1", f"{ref}:v1", f"docker://{ref}:stable", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["digest"] == image.manifest_digest()
    assert data["reference"] == f"{ref}@{image.manifest_digest()}"
    assert data["uploaded_blobs"] == 3
    assert skopeo_inspect(f"{ref}:stable", "--tls-verify=false")["Digest"] == data["digest"]
    code = main(["push", f"oci:{tmp_path / 'layout'}:v1", f"{ref}:v1", "-q"])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"{ref}@{image.manifest_digest()}"


def test_pushing_a_zstd_image_as_v2s2_is_a_clear_usage_error(tmp_path: Path, registry: RunningRegistry,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    img = make_image(tmp_path / "img", busybox=False)
    layer = img.layers[0]
    zimg = Image(img.config_bytes, (type(layer)(**{**layer.__dict__, "compression": "zstd"}),), "oci")
    write_layout(zimg, LayoutLocation(tmp_path / "z"))
    code = main(["push", f"oci:{tmp_path / 'z'}", f"{registry.host}/z:1", "--format", "v2s2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nixfly: ") and "zstd" in err


def test_bad_destination_reference_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["push", str(tmp_path), "127.0.0.1:5000/Bad/Name:tag"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err == "nixfly: invalid image reference '127.0.0.1:5000/Bad/Name:tag': bad repository name "
        "'Bad/Name' (repository names are lower case)\n"
    )


def test_options_are_honoured(registry: RunningRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", extra_layer_bytes=300_000)
    opts = RegistryOptions(chunk_size=64 * 1024, monolithic_max=64 * 1024, parallel=1)
    result = push_image(image, [f"{registry.host}/chunked:1"], options=opts)
    assert skopeo_inspect(f"{registry.host}/chunked:1", "--tls-verify=false")["Digest"] == result.digest
    log = registry.log_text()
    assert log.count('"PATCH /v2/chunked/blobs/uploads/') >= 300_000 // (64 * 1024)
