"""nixfly copy: registry → registry by mounting (same registry) or streaming (another registry), to identical
digests, without holding a whole image in memory."""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from nixfly.cli import main
from nixfly.registry.auth import Credentials
from nixfly.registry.client import RegistryOptions
from nixfly.sinks.registry import push_image
from nixfly.sources.registry import open_remote_image
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image
from tests.support.registry_proxy import FaultProxy

pytestmark = pytest.mark.slow


def test_copy_within_a_registry_mounts_every_blob(
    fault_proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img")
    src = push_image(image, [f"{fault_proxy.host}/team/app:v1"])
    fault_proxy.reset_counters()
    code = main(["copy", f"docker://{fault_proxy.host}/team/app:v1", f"{fault_proxy.host}/prod/app:v1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["digest"] == src.digest
    assert out["reference"] == f"{fault_proxy.host}/prod/app@{src.digest}"
    assert (out["mounted_blobs"], out["uploaded_blobs"], out["uploaded_bytes"]) == (3, 0, 0)
    assert fault_proxy.blob_upload_bytes() == 0
    assert fault_proxy.count("POST", "mount=") == 3


def test_copy_between_registries_streams_to_the_same_digest(
    registry: RunningRegistry, basic_registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img", extra_layer_bytes=12_000_000)
    src = push_image(image, [f"{registry.host}/src/app:v1"])
    dst_ref = f"{basic_registry.host}/dst/app:v1"
    creds = f"{basic_registry.username}:{basic_registry.password}"
    code = main(["copy", f"{registry.host}/src/app:v1", dst_ref, "--dest-creds", creds, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["digest"] == src.digest
    assert out["uploaded_bytes"] == sum(lyr.size for lyr in image.layers) + len(image.config_bytes)
    info = subprocess.run(["skopeo", "inspect", *basic_registry.skopeo_args(), f"docker://{dst_ref}"],
                          check=True, capture_output=True)  # fmt: skip
    assert json.loads(info.stdout)["Digest"] == src.digest

    # Streaming, not buffering: copying a 12 MB layer again (to a new repo) peaks far below its size.
    dest_opts = RegistryOptions(credentials=Credentials(str(basic_registry.username), str(basic_registry.password)))
    remote = open_remote_image(f"{registry.host}/src/app:v1")
    tracemalloc.start()
    try:
        push_image(remote, [f"{basic_registry.host}/dst/again:v1"], options=dest_opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6_000_000, peak


def test_copy_registry_to_layout_and_back(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img")
    src = push_image(image, [f"{registry.host}/rt/app:v1"])
    assert main(["copy", f"{registry.host}/rt/app:v1", f"oci:{tmp_path / 'lay'}:v1", "-q"]) == 0
    assert capsys.readouterr().out.strip() == src.digest
    assert main(["copy", f"oci:{tmp_path / 'lay'}:v1", f"{registry.host}/rt/back:v1", "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"{registry.host}/rt/back@{src.digest}"


def test_copy_between_registries_hashes_each_layer_byte_once(
    registry: RunningRegistry, basic_registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's verifying stream checks every blob byte; the upload to the other registry trusts it and
    does not hash the layer again (it hashed all of it when the stream came wrapped in a plain buffer)."""
    import nixfly.registry.upload as upload_mod
    from tests.support.hashcount import count_sha256

    image = make_image(tmp_path / "img", extra_layer_bytes=3_000_000)
    push_image(image, [f"{registry.host}/src/app:v1"])
    hashed = count_sha256(monkeypatch, upload_mod)
    creds = f"{basic_registry.username}:{basic_registry.password}"
    assert main(["copy", f"{registry.host}/src/app:v1", f"{basic_registry.host}/dst/app:v1",
                 "--dest-creds", creds, "-q"]) == 0  # fmt: skip
    assert hashed[0] < 3_000_000 / 10, hashed[0]  # at most the small documents, never the 3 MB layer


def test_a_corrupt_source_blob_never_reaches_the_other_registry(
    registry: RunningRegistry, basic_registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The upload trusts the source stream's check: a blob changed in the source registry must still stop
    the copy with one line, before the blob is committed or any manifest is written at the destination."""
    from tests.test_pull import _blob_data

    image = make_image(tmp_path / "img", extra_layer_bytes=3_000_000)
    push_image(image, [f"{registry.host}/src/bad:v1"])
    bad = image.layers[-1].digest
    data = _blob_data(registry, bad)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    data.write_bytes(bytes(raw))
    creds = f"{basic_registry.username}:{basic_registry.password}"
    code = main(["copy", f"{registry.host}/src/bad:v1", f"{basic_registry.host}/dst/bad:v1", "--dest-creds", creds])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "does not match its digest" in err, err
    assert not _blob_data(basic_registry, bad).exists()
    manifests = basic_registry.root / "docker" / "registry" / "v2" / "repositories" / "dst" / "bad" / "_manifests"
    assert not manifests.exists() or not any(manifests.rglob("link"))
