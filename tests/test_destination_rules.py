"""What each destination takes, asked in one place (``sinks/rules.py``) from what each location declares
(``transports.Capabilities``), before anything is built, read or written: a malformed reference and a local
path that cannot be written are refused before the first request, an SBOM asked for a docker-archive is
refused with nothing written, and a Fly-like registry gets Docker v2s2 whichever command writes to it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from nixfly.errors import UsageError
from nixfly.sinks.registry import push_image
from nixfly.sinks.rules import check_destinations, format_for
from nixfly.transports import parse_location
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry import RunningRegistry
from tests.support.registry_images import make_image

DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"


def test_each_location_declares_what_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = parse_location(f"oci:{tmp_path / 'l'}:t")
    archive = parse_location(f"docker-archive:{tmp_path / 'a.tar'}")
    stdout = parse_location("-")
    assert (layout.caps.index, layout.caps.referrers, layout.caps.directory, layout.ref) == (True, True, True, None)
    assert (archive.caps.index, archive.caps.referrers, archive.caps.stdio) == (False, False, False)
    assert stdout.caps.stdio and stdout.caps.path is None
    # A registry location carries its reference, parsed once (the host normalised, Docker Hub's short names).
    hub = parse_location("busybox:1")
    assert hub.ref is not None
    assert (hub.ref.registry, hub.ref.repository, hub.ref.tag) == ("docker.io", "library/busybox", "1")
    fly = parse_location("docker://registry.fly.io/app:v1")
    mirror = parse_location("Mirror.Example:5000/app")
    assert fly.caps.fly_like and fly.caps.format == "v2s2"
    assert not mirror.caps.fly_like and mirror.caps.format is None
    monkeypatch.setenv("NIXFLY_V2S2_REGISTRIES", "elsewhere.io, mirror.example:5000")
    assert mirror.caps.fly_like and mirror.caps.format == "v2s2"


@pytest.mark.parametrize(
    "text", ["docker://127.0.0.1:5000/Bad/Name:v1", "127.0.0.1:5000/app:bad tag", "h.io/a@sha256:12"]
)
def test_a_malformed_reference_is_refused_when_it_is_parsed(text: str) -> None:
    with pytest.raises(UsageError, match="invalid image reference"):
        parse_location(text)


def test_the_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIXFLY_V2S2_REGISTRIES", raising=False)
    archive = parse_location(f"docker-archive:{tmp_path / 'a.tar'}")
    layout = parse_location(f"oci:{tmp_path / 'l'}")
    fly = parse_location("registry.fly.io/app:v1")
    other = parse_location("ghcr.io/o/r:1")
    image = make_image(tmp_path / "img", busybox=False)

    def refused(*locs: object, **kw: object) -> str:
        with pytest.raises(UsageError) as e:
            check_destinations(list(locs), **kw)  # type: ignore[arg-type]
        return str(e.value)

    # The format: asked for, else what a destination declares, else the image's own.
    assert format_for([layout, other], image) == image.format == "oci"
    assert format_for([layout, fly, other], image) == "v2s2"
    assert format_for([fly], image, "oci") == "oci"
    # An index: never in a docker-archive; to Fly only when allowed.
    assert "docker-archive holds one image" in refused(layout, archive, index_platform="linux/amd64")
    assert "--allow-index" in refused(other, fly, index_platform="linux/amd64")
    check_destinations([layout, other, fly], index_platform="linux/amd64", allow_index=True)
    # An SBOM asked for with nowhere to go is refused; the default one goes where it can.
    assert "no place for an SBOM" in refused(archive, sbom="spdx")
    check_destinations([archive], sbom=None)
    check_destinations([archive, layout], sbom="cyclonedx")
    check_destinations([archive], sbom="none")
    # Stdout once: one destination, and not where the command prints its own result or --json.
    out = parse_location("-")
    assert "only one" in refused(out, parse_location("docker-archive:-"))
    assert "--json" in refused(out, stdout="json")
    assert "not supported here" in refused(out, stdout="result")
    # A local path (build's -o) must be writable as what it is.
    (tmp_path / "file").write_text("x")
    assert "exists and is not a directory" in refused(parse_location(f"oci:{tmp_path / 'file'}"), paths=True)
    assert "is a directory" in refused(parse_location(f"docker-archive:{tmp_path}"), paths=True)
    assert "does not exist" in refused(parse_location(f"docker-archive:{tmp_path / 'no' / 'x.tar'}"), paths=True)


def _requests(r: RunningRegistry, since: int) -> list[str]:
    return [line for line in r.log_text()[since:].splitlines() if '"GET /v2/' in line or '"HEAD /v2/' in line]


@pytest.mark.slow
def test_bad_destinations_are_refused_before_any_request(registry: RunningRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img")
    push_image(image, [f"{registry.host}/rules/app:v1"])
    src = f"docker://{registry.host}/rules/app:v1"
    before = len(registry.log_text())
    for args in (
        ["copy", src, f"docker://{registry.host}/rules/Bad:v1"],  # a malformed reference, the source fine
        ["push", f"oci:{tmp_path / 'nothing'}", f"{registry.host}/rules/x:bad tag"],
        ["copy", f"docker://{registry.host}/rules/app:v1@sha256:12", f"oci:{tmp_path / 'out'}"],
        ["pull", src, "-"],  # stdout carries pull's result
        ["copy", src, "-"],  # and copy's (which read the source before it said so)
    ):
        r = run_nixfly(*args)
        assert r.code == 2, (args, r.err)
        assert len(r.err.splitlines()) == 1 and r.err.startswith("nixfly: ") and r.out == "", (args, r.err)
    assert _requests(registry, before) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_sbom_asked_for_a_docker_archive_is_refused_and_nothing_is_written(
    tiny_closure: TinyClosure, tmp_path: Path
) -> None:
    tar = tmp_path / "app.tar"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    r = run_nixfly("build", tiny_closure.app, "--sbom", "spdx", "-o", f"docker-archive:{tar}", *cache)
    assert r.code == 2 and r.out == "", r.err
    assert r.err.splitlines() == [
        f"nixfly: docker-archive:{tar}: a docker-archive has no place for an SBOM (an OCI referrer); write oci:DIR "
        "or push to a registry to attach one, or pass --sbom none"
    ]
    assert not tar.exists() and not (tmp_path / "cache").exists()  # refused before the build
    # The default SBOM goes where it can: none here, said in a note; the archive is written.
    r = run_nixfly("build", tiny_closure.app, "-o", f"docker-archive:{tar}", *cache)
    assert r.code == 0, r.err
    assert "note: the SBOM is not written into a docker-archive" in r.err and tar.is_file()


@pytest.mark.slow
def test_a_fly_like_registry_gets_v2s2_from_copy_and_keeps_it_through_pull(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "img")
    assert image.format == "oci"
    push_image(image, [f"{registry.host}/src/app:v1"])
    fly_ref = f"{registry.host}/fly/app:v1"
    env = {"NIXFLY_V2S2_REGISTRIES": registry.host}  # this registry is treated as registry.fly.io
    r = run_nixfly("copy", f"docker://{registry.host}/src/app:v1", fly_ref, "-q", env=env)
    assert r.code == 0, r.err
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{fly_ref}"],
                         check=True, capture_output=True).stdout  # fmt: skip
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert r.out.strip() == f"{registry.host}/fly/app@{digest}"
    assert json.loads(raw)["mediaType"] == DOCKER_V2S2 and digest != image.manifest_digest()
    # Pulling it back converts nothing: the layout holds the registry's exact v2s2 bytes.
    r = run_nixfly("pull", fly_ref, f"oci:{tmp_path / 'back'}:v1", "--json", env=env)
    assert r.code == 0, r.err
    assert json.loads(r.out)["digest"] == digest
    assert (tmp_path / "back" / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes() == raw
