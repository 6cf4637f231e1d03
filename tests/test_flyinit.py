"""`nixfly init`: a starter fly.toml from an image's ExposedPorts, and in-place updates that keep comments."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from nixfly.errors import ConfigError, UsageError
from nixfly.fly.flytoml import load_fly_toml, parse_fly_toml
from nixfly.fly.init import exposed_tcp_ports, starter_fly_toml
from nixfly.fly.machineconfig import machine_configs
from nixfly.image import BlobLayer, Image
from nixfly.image.digest import sha256_digest
from nixfly.sinks.archive import write_archive
from nixfly.sinks.layout import write_layout
from nixfly.transports import ArchiveLocation, LayoutLocation

DATA = Path(__file__).parent / "data" / "fly"


def _image_config(*ports: str) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"ExposedPorts": {p: {} for p in ports}, "Cmd": ["/bin/serve"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def test_fresh_starter_uses_the_lowest_exposed_tcp_port() -> None:
    text = starter_fly_toml(
        "my-app", _image_config("9090/tcp", "5353/udp", "3000/tcp"), None, region="ams", check_path="/"
    )
    cfg = parse_fly_toml(text, warn=lambda m: pytest.fail(m))
    assert cfg.app == "my-app" and cfg.primary_region == "ams"
    assert cfg.deploy.strategy == "rolling"
    assert cfg.http_service is not None and cfg.http_service.internal_port == 3000
    assert cfg.http_service.force_https is True
    (check,) = cfg.http_service.checks
    assert check.path == "/" and check.method == "GET"
    assert text.startswith("# fly.toml for my-app, started by `nixfly init`.\n")
    assert "internal_port = 3000  # from the image's ExposedPorts" in text
    # And it maps to a Machines API config with the port and the check.
    (mc,) = machine_configs(cfg, "img").values()
    assert mc["services"][0]["internal_port"] == 3000
    assert mc["services"][0]["checks"][0]["path"] == "/"


def test_image_without_ports_gets_flys_default() -> None:
    text = starter_fly_toml("a", {"config": {}}, None)
    assert "internal_port = 8080  # the image exposes no port; Fly's default" in text
    assert exposed_tcp_ports({}) == []
    assert exposed_tcp_ports(_image_config("80", "443/TCP", "x/tcp", "70000/tcp", "53/udp")) == [80, 443]


def test_registry_reference_is_recorded_as_build_image() -> None:
    ref = "registry.example/app@sha256:" + "c" * 64
    cfg = parse_fly_toml(starter_fly_toml("a", None, None, image_ref=ref))
    assert cfg.build is not None and cfg.build.image == ref


def test_update_keeps_comments_and_layout() -> None:
    original = (DATA / "commented.toml").read_text()
    updated = starter_fly_toml("new-name", _image_config("8000/tcp"), original, region="iad", check_path="/")
    expected = (
        original.replace('app = "old-name"   # renamed later', 'app = "new-name"   # renamed later')
        .replace('primary_region = "ams"', 'primary_region = "iad"')
        .replace("internal_port = 3000", "internal_port = 8000")
    )
    # Everything the user wrote is still there byte for byte; only the health check is appended.
    assert updated.startswith(expected), updated
    added = updated[len(expected) :]
    assert "[[http_service.checks]]" in added and 'path = "/"' in added
    cfg = parse_fly_toml(updated)
    assert cfg.app == "new-name" and cfg.env == {"LOG_LEVEL": "info"}
    assert cfg.http_service is not None and cfg.http_service.internal_port == 8000


def test_update_round_trips_unchanged_when_nothing_new() -> None:
    text = starter_fly_toml("my-app", _image_config("3000/tcp"), None)
    assert starter_fly_toml(None, _image_config("3000/tcp"), text) == text
    assert starter_fly_toml("my-app", None, text) == text


def test_update_of_file_with_services_adds_no_http_service() -> None:
    existing = 'app = "a"\n[[services]]\n  internal_port = 5000\n  [[services.ports]]\n    port = 5000\n'
    assert starter_fly_toml(None, _image_config("8080/tcp"), existing) == existing


@pytest.mark.parametrize(
    ("app", "existing", "region", "error", "match"),
    [
        ("My_App", None, None, UsageError, "app name 'My_App' is not valid"),
        ("-a", None, None, UsageError, "is not valid"),
        (None, None, None, UsageError, "no app name: pass --app NAME"),
        (None, "primary_region = 'ams'\n", None, UsageError, "existing fly.toml has no app name"),
        ("a", None, "Amsterdam", UsageError, "region 'Amsterdam' is not a Fly region code"),
        ("a", "app = \n", None, ConfigError, "invalid TOML, not editing it"),
        ("a", "app = 'a'\n[deploy]\nstrategy = 'fast'\n", None, ConfigError, "deploy.strategy: must be one of"),
    ],
)
def test_bad_input(app: str | None, existing: str | None, region: str | None, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as ei:
        starter_fly_toml(app, None, existing, region=region)
    assert "\n" not in str(ei.value)


# ---- the command, with real image files -----------------------------------------------------------------


def _image(tmp_path: Path, *ports: str) -> Image:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("bin/serve")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    blob = gzip.compress(raw, mtime=0)
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    layer = BlobLayer(path, sha256_digest(blob), sha256_digest(raw), len(blob), "gzip", len(raw))
    config = _image_config(*ports)
    config["rootfs"]["diff_ids"] = [layer.diff_id]
    return Image(json.dumps(config).encode(), (layer,))


def test_cli_writes_from_an_oci_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_layout(_image(tmp_path, "4000/tcp"), LayoutLocation(tmp_path / "layout", "v1"))
    out = tmp_path / "fly.toml"
    rc = main(["init", "--image", f"oci:{tmp_path / 'layout'}:v1", "--app", "demo", "--region", "ams", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"wrote {out} (internal_port 4000 from the image)\n"
    cfg = load_fly_toml(out)
    assert cfg.app == "demo" and cfg.http_service is not None and cfg.http_service.internal_port == 4000
    assert cfg.build is None  # a local layout is not something Fly can pull
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fly.toml")] == []


def test_cli_reads_a_docker_archive_and_updates_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_archive(_image(tmp_path, "7000/tcp"), ArchiveLocation(tmp_path / "img.tar", "demo:v1"))
    out = tmp_path / "fly.toml"
    shutil.copy(DATA / "commented.toml", out)
    out.chmod(0o600)
    before = out.read_text()

    rc = main(["init", "--image", f"docker-archive:{tmp_path / 'img.tar'}", "-o", str(out)])
    assert rc == 2
    assert (
        capsys.readouterr().err
        == f"nixfly: {out} already exists; pass --force to update it (comments and layout are kept)\n"
    )
    assert out.read_text() == before

    rc = main(["init", "--image", f"docker-archive:{tmp_path / 'img.tar'}", "-o", str(out), "--force"])
    assert rc == 0
    assert capsys.readouterr().out == f"updated {out} (internal_port 7000 from the image)\n"
    text = out.read_text()
    assert "# fly.toml for the demo app — hand edited, keep these notes!" in text
    assert (
        '  LOG_LEVEL = "info"  # noisy otherwise' in text
        and "  # our server listens here\n  internal_port = 7000" in text
    )
    assert out.stat().st_mode & 0o777 == 0o600


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fly.toml"
    assert main(["init", "-o", str(out)]) == 2
    assert capsys.readouterr().err == "nixfly: no app name: pass --app NAME\n"
    assert main(["init", "--app", "Bad Name", "-o", str(out)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["init", "--app", "ok", "--image", f"oci:{tmp_path / 'missing'}", "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("nixfly: ") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_ports_agree_with_skopeo(tmp_path: Path) -> None:
    # An independent reader of the same layout sees the same exposed ports we wrote the file from.
    write_layout(_image(tmp_path, "8443/tcp", "9000/tcp"), LayoutLocation(tmp_path / "layout", "v1"))
    seen = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci:{tmp_path / 'layout'}:v1"], check=True, capture_output=True
        ).stdout
    )
    out = tmp_path / "fly.toml"
    assert main(["init", "--image", f"oci:{tmp_path / 'layout'}:v1", "--app", "demo", "-o", str(out)]) == 0
    cfg = load_fly_toml(out)
    assert cfg.http_service is not None
    assert cfg.http_service.internal_port == min(int(p.split("/")[0]) for p in seen["config"]["ExposedPorts"])


# ---- issue 11: the check path is asked for, --force never adds a second check ------------------------


def test_no_check_path_means_no_guessed_check() -> None:
    text = starter_fly_toml("a", _image_config("3000/tcp"), None)
    cfg = parse_fly_toml(text)
    assert cfg.http_service is not None and cfg.http_service.checks == [] and cfg.checks == {}
    (mc,) = machine_configs(cfg, "img").values()
    assert "checks" not in mc["services"][0]
    text = starter_fly_toml("a", _image_config("3000/tcp"), None, check_path="/healthz")
    (check,) = parse_fly_toml(text).http_service.checks  # type: ignore[union-attr]
    assert check.path == "/healthz"
    with pytest.raises(UsageError, match="must start with '/'"):
        starter_fly_toml("a", None, None, check_path="healthz")


@pytest.mark.parametrize(
    "existing",
    [
        'app = "a"\n[http_service]\ninternal_port = 8080\n[checks.alive]\ntype = "tcp"\nport = 8080\n',
        'app = "a"\n[http_service]\ninternal_port = 8080\n[[http_service.checks]]\npath = "/old"\n',
    ],
)
def test_force_does_not_add_a_second_check(tmp_path: Path, existing: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fly.toml"
    out.write_text(existing)
    assert main(["init", "--app", "a", "-o", str(out), "--force", "--check-path", "/healthz"]) == 0
    cfg = load_fly_toml(out)
    assert cfg.http_service is not None
    n_checks = len(cfg.http_service.checks) + len(cfg.checks)
    assert n_checks == 1
    if cfg.http_service.checks:  # the one check there was now probes the path asked for
        assert cfg.http_service.checks[0].path == "/healthz"
    # Running it again changes nothing.
    before = out.read_text()
    assert main(["init", "--app", "a", "-o", str(out), "--force", "--check-path", "/healthz"]) == 0
    assert out.read_text() == before
