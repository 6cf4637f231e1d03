"""nixfly pull: registry → OCI layout with identical digests; corrupt, missing or garbage answers fail in one
line and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from nixfly.image.digest import digest_hex
from nixfly.sinks.layout import write_layout
from nixfly.sinks.registry import push_image
from nixfly.transports import LayoutLocation
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

pytestmark = pytest.mark.slow


def _index_digest(layout: Path) -> str:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def _validate(layout: Path, tag: str) -> None:
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", f"name={tag}", str(layout)],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr


def _blob_data(r: RunningRegistry, digest: str) -> Path:
    h = digest_hex(digest)
    return r.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / h[:2] / h / "data"


def test_pull_round_trips_nixfly_and_skopeo_pushed_images(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img")
    pushed = push_image(image, [f"{registry.host}/pull/app:v1"])
    code = main(["pull", f"{registry.host}/pull/app:v1", f"oci:{tmp_path / 'out'}:v1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["digest"] == pushed.digest == _index_digest(tmp_path / "out")
    assert out["reference"] == pushed.reference
    _validate(tmp_path / "out", "v1")
    for lyr in image.layers:
        assert (tmp_path / "out" / "blobs" / "sha256" / digest_hex(lyr.digest)).read_bytes() == lyr.compressed().read()

    # An image another tool pushed, in Docker v2s2: the exact manifest bytes (and digest) survive.
    write_layout(image, LayoutLocation(tmp_path / "src", "v1"))
    subprocess.run(["skopeo", "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1",
                    f"docker://{registry.host}/pull/skopeo:v2"], check=True, capture_output=True)  # fmt: skip
    inspect = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/pull/skopeo:v2"]
    raw = subprocess.run(inspect, check=True, capture_output=True).stdout
    code = main(["pull", f"docker://{registry.host}/pull/skopeo:v2", f"oci:{tmp_path / 'out2'}:v2", "-q"])
    printed = capsys.readouterr().out.strip()
    assert code == 0
    digest = _index_digest(tmp_path / "out2")
    assert (tmp_path / "out2" / "blobs" / "sha256" / digest_hex(digest)).read_bytes() == raw
    assert printed == f"{registry.host}/pull/skopeo@{digest}"

    # By digest, too.
    assert main(["pull", pushed.reference, f"oci:{tmp_path / 'out3'}:d", "-q"]) == 0
    assert _index_digest(tmp_path / "out3") == pushed.digest


def test_corrupt_blob_in_registry_is_detected(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img")
    push_image(image, [f"{registry.host}/pull/bad:v1"])
    data = _blob_data(registry, image.layers[-1].digest)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    data.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    code = main(["pull", f"{registry.host}/pull/bad:v1", f"oci:{dest}:v1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"nixfly: registry {registry.host}: blob {image.layers[-1].digest}")
    assert "does not match its digest" in err and err.count("\n") == 1
    assert not dest.exists()  # nothing half-written
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_missing_blob_and_missing_tag(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "img")
    push_image(image, [f"{registry.host}/pull/gone:v1"])
    _blob_data(registry, image.layers[0].digest).unlink()
    code = main(["pull", f"{registry.host}/pull/gone:v1", f"oci:{tmp_path / 'out'}:v1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"nixfly: registry {registry.host}: ") and image.layers[0].digest in err
    code = main(["pull", f"{registry.host}/pull/gone:nope", f"oci:{tmp_path / 'out'}:v1"])
    assert code == 1
    assert capsys.readouterr().err == f"nixfly: registry {registry.host}: pull/gone:nope not found\n"


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Something on a port that answers every request with 200 and a body that is not a registry's."""

    class H(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html>definitely not a registry</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_garbage_answers_are_one_line(garbage_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pull", f"{garbage_server}/x/y:1", f"oci:{tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"nixfly: registry {garbage_server}: ")
