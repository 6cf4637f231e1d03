"""SBOMs from the real offline-Nix closure: validated by spdx-tools and cyclonedx-python-lib, checked
against `nix path-info`, reproducible, attached as OCI referrers to a layout and to the real registry
(distribution 2.8: no referrers API, so the tag schema), fetched back byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixfly.cli import main
from nixfly.sbom.cyclonedx import validate_cyclonedx
from nixfly.sbom.nixhash import sha256_hex
from nixfly.sbom.spdx import validate_spdx
from tests.support.cli import NIXFLY, run_nixfly
from tests.support.nixstore import TinyClosure, path_info
from tests.support.registry import RunningRegistry
from tests.support.registry_proxy import FaultProxy

SECRET = "s3cret-added-file-content-9f1c"
SPDX = "application/spdx+json"
CDX = "application/vnd.cyclonedx+json"


def build(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["build", *args, "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    out: dict[str, Any] = json.loads(cap.out)
    return out


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def layout_sbom(layout: Path, artifact_type: str = SPDX) -> tuple[dict[str, Any], bytes]:
    """(the index.json entry of the referrer, the SBOM bytes) of a layout."""
    idx = json.loads((layout / "index.json").read_text())
    entry = next(e for e in idx["manifests"] if e.get("artifactType") == artifact_type)
    manifest = json.loads(blob(layout, entry["digest"]))
    return entry, blob(layout, manifest["layers"][0]["digest"])


@pytest.fixture()
def added(tmp_path: Path) -> Path:
    d = tmp_path / "extra"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "secret.txt").write_text(SECRET)
    (d / "conf.txt").write_text("plain")
    return d


def _closure(tc: TinyClosure) -> dict[str, dict[str, Any]]:
    return {str(i["path"]): i for i in path_info([tc.app])}


@pytest.mark.slow
def test_spdx_from_the_real_closure_validates_and_matches_nix(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str], added: Path
) -> None:
    out = tmp_path / "img"
    s = build(capsys, tiny_closure.app, "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"),
              "--add", f"{added}:/opt/extra")  # fmt: skip
    entry, data = layout_sbom(out)
    assert s["sbom"]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert entry["subject"]["digest"] == s["digest"]
    assert validate_spdx(data) == []
    doc = json.loads(data)
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["creationInfo"]["created"] == "1970-01-01T00:00:01Z"
    assert doc["documentNamespace"].endswith(s["digest"].split(":")[1])
    closure = _closure(tiny_closure)
    store_pkgs = {p["packageFileName"]: p for p in doc["packages"] if p.get("packageFileName", "").startswith("/nix/")}
    assert set(store_pkgs) == set(closure)
    for path, info in closure.items():
        p = store_pkgs[path]
        assert p["checksums"] == [{"algorithm": "SHA256", "checksumValue": sha256_hex(str(info["narHash"]))}]
        assert f"NarSize {info['narSize']} bytes" in p["comment"]
        if info.get("deriver"):
            assert p["sourceInfo"] == f"built by {info['deriver']}"
    app = store_pkgs[tiny_closure.app]
    assert (app["name"], app["versionInfo"]) == ("hello-app", "1")
    assert store_pkgs[tiny_closure.lib]["name"] == "libgreet" and store_pkgs[tiny_closure.lib]["versionInfo"] == "2.1"
    assert "versionInfo" not in store_pkgs[tiny_closure.bb]  # busybox-static: no version
    # DEPENDS_ON edges are exactly the closure's references (self-references dropped).
    ids = {p["SPDXID"]: p.get("packageFileName") for p in doc["packages"]}
    edges = {(ids[r["spdxElementId"]], ids[r["relatedSpdxElement"]])
             for r in doc["relationships"] if r["relationshipType"] == "DEPENDS_ON"}  # fmt: skip
    expected = {(p, str(r)) for p, i in closure.items() for r in i["references"] if r != p}  # type: ignore[attr-defined]
    assert edges == expected and len(expected) >= 5
    # The image is the described root, holding everything else.
    image = next(p for p in doc["packages"] if p["SPDXID"] == "SPDXRef-Image")
    assert image["checksums"][0]["checksumValue"] == s["digest"].split(":")[1]
    describes = [r for r in doc["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert describes == [{"spdxElementId": "SPDXRef-DOCUMENT", "relatedSpdxElement": "SPDXRef-Image",
                          "relationshipType": "DESCRIBES"}]  # fmt: skip
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == len(doc["packages"]) - 1
    # Extra files and the customisation layer by path; their contents never.
    files = {p["packageFileName"] for p in doc["packages"] if p.get("primaryPackagePurpose") == "FILE"}
    assert {"/etc/shadow", "/etc/passwd", "/tmp", "/opt/extra", "/opt/extra/sub/secret.txt", "/opt/extra/conf.txt",
            "/bin/hello"} <= files  # fmt: skip
    assert len(doc["packages"]) == 1 + len(closure) + len(files)
    text = data.decode()
    assert SECRET not in text and "root:!:" not in text and "nobody:x:" not in text
    assert str(added) not in text  # the build machine's paths are not the image's


@pytest.mark.slow
def test_cyclonedx_validates_and_matches_nix(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "img"
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text(f'[image]\nroots = ["{tiny_closure.app}"]\nsbom = "cyclonedx"\n')
    s = build(capsys, "--config", str(cfg), "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / "c"))
    entry, data = layout_sbom(out, CDX)
    assert validate_cyclonedx(data) == []
    bom = json.loads(data)
    assert bom["specVersion"] == "1.6" and bom["metadata"]["timestamp"].startswith("1970-01-01T00:00:01")
    assert bom["metadata"]["component"]["bom-ref"] == s["digest"]
    closure = _closure(tiny_closure)
    comps = {c["bom-ref"]: c for c in bom["components"] if c["bom-ref"].startswith("/nix/")}
    assert set(comps) == set(closure)
    for path, info in closure.items():
        assert comps[path]["hashes"] == [{"alg": "SHA-256", "content": sha256_hex(str(info["narHash"]))}]
        props = {p["name"]: p["value"] for p in comps[path]["properties"]}
        assert props["nix:narSize"] == str(info["narSize"]) and props["nix:storePath"] == path
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    for path, info in closure.items():
        assert deps[path] == {str(r) for r in info["references"] if r != path}  # type: ignore[attr-defined]
    assert deps[s["digest"]] == {tiny_closure.app}
    files = [c for c in bom["components"] if c["type"] == "file"]
    assert "/etc/shadow" in {c["name"] for c in files}
    assert len(bom["components"]) == len(closure) + len(files)
    assert "root:!:" not in data.decode()
    # A layout read without a tag still finds the one image (the referrer is not an image).
    r = run_nixfly("inspect", f"oci:{out}", "--no-scan", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["referrers"] == [{"artifact_type": CDX, "digest": entry["digest"], "size": entry["size"]}]


@pytest.mark.slow
def test_two_builds_give_byte_identical_sboms(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str], added: Path
) -> None:
    for fmt, mt in (("spdx", SPDX), ("cyclonedx", CDX)):
        got = []
        for i in range(2):
            out = tmp_path / f"{fmt}{i}"
            build(capsys, tiny_closure.app, "-o", f"oci:{out}:v1", "--cache-dir", str(tmp_path / f"c{fmt}{i}"),
                  "--sbom", fmt, "--add", f"{added}:/opt/extra")  # fmt: skip
            entry, data = layout_sbom(out, mt)
            got.append((entry["digest"], data))
        assert got[0] == got[1]


@pytest.mark.slow
def test_layout_stays_valid_and_sbom_none_leaves_no_referrer(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sa = build(capsys, tiny_closure.app, "-o", f"oci:{a}:v1", "--cache-dir", str(tmp_path / "c"))
    sb = build(capsys, tiny_closure.app, "-o", f"oci:{b}:v1", "--cache-dir", str(tmp_path / "c"), "--sbom", "none")
    assert sa["digest"] == sb["digest"] and sb["sbom"] is None
    assert len(json.loads((b / "index.json").read_text())["manifests"]) == 1
    v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", str(a)],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr
    insp = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{a}:v1"], capture_output=True, check=True).stdout)
    assert insp["Digest"] == sa["digest"]
    # Rebuilding into the same layout replaces the referrer rather than piling them up.
    build(capsys, tiny_closure.app, "-o", f"oci:{a}:v1", "--cache-dir", str(tmp_path / "c"))
    assert len(json.loads((a / "index.json").read_text())["manifests"]) == 2


@pytest.mark.slow
def test_archives_skip_the_sbom_with_a_note(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    r = run_nixfly("build", tiny_closure.app, "-o", f"docker-archive:{tmp_path / 'a.tar'}",
                   "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code == 0, r.err
    assert "SBOM is not written into a docker-archive" in r.err


def _skopeo_raw(reg: RunningRegistry, ref: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", *reg.skopeo_args(), f"docker://{reg.host}/{ref}"],
                          capture_output=True, check=True).stdout  # fmt: skip


@pytest.mark.slow
def test_push_attaches_through_the_tag_schema_and_sbom_fetches_it_back(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", str(tmp_path / "c")]
    plain = build(capsys, tiny_closure.app, "--push", f"{registry.host}/app:plain", "--sbom", "none", *cache)
    s = build(capsys, tiny_closure.app, "--push", f"{registry.host}/app:v1", "-o", f"oci:{tmp_path / 'l'}:v1", *cache)
    digest, hexd = s["digest"], s["digest"].split(":")[1]
    assert plain["digest"] == digest and plain["sbom"] is None
    # The image manifest is byte-identical with and without an SBOM; its tags are untouched.
    assert _skopeo_raw(registry, "app:v1") == _skopeo_raw(registry, "app:plain")
    tags = json.loads(subprocess.run(["skopeo", "list-tags", *registry.skopeo_args(), f"docker://{registry.host}/app"],
                                     capture_output=True, check=True).stdout)["Tags"]  # fmt: skip
    # (nixfly-layer-index is the repository's layer index, under its own tag: see test_layer_index.py)
    assert sorted(tags) == sorted(["plain", "v1", f"sha256-{hexd}", "nixfly-layer-index"])
    reg_attach = next(a for a in s["sbom"]["attached"] if a["method"] != "layout")
    assert reg_attach["method"] == "tag-schema" and reg_attach["tag"] == f"sha256-{hexd}"
    # skopeo sees the referrers index under the fallback tag.
    index = json.loads(_skopeo_raw(registry, f"app:sha256-{hexd}"))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["artifactType"], m["digest"]) for m in index["manifests"]] == [(SPDX, reg_attach["digest"])]
    art = json.loads(_skopeo_raw(registry, f"app@{reg_attach['digest']}"))
    assert art["subject"]["digest"] == digest and art["artifactType"] == SPDX
    assert art["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                             "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    # `nixfly sbom` returns the attached bytes: the same as the layout's.
    _, local = layout_sbom(tmp_path / "l")
    r = subprocess.run([*NIXFLY, "sbom", f"docker://{registry.host}/app@{digest}"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == local and validate_spdx(r.stdout) == []
    # A second SBOM (CycloneDX) is merged into the same index, not overwriting the first.
    s2 = build(capsys, tiny_closure.app, "--push", f"{registry.host}/app:v1", "--sbom", "cyclonedx", *cache)
    assert s2["digest"] == digest
    index2 = json.loads(_skopeo_raw(registry, f"app:sha256-{hexd}"))
    assert sorted(m["artifactType"] for m in index2["manifests"]) == [SPDX, CDX]
    assert _skopeo_raw(registry, "app:v1") == _skopeo_raw(registry, "app:plain")
    out = tmp_path / "bom.json"
    assert main(["sbom", f"{registry.host}/app:v1", "--format", "cyclonedx", "-o", str(out), "--validate"]) == 0
    assert validate_cyclonedx(out.read_bytes()) == []
    assert json.loads(out.read_bytes())["metadata"]["component"]["bom-ref"] == digest
    # `nixfly inspect` lists both referrers.
    capsys.readouterr()
    assert main(["inspect", f"docker://{registry.host}/app:v1", "--no-scan", "--json"]) == 0
    refs = json.loads(capsys.readouterr().out)["referrers"]
    assert sorted(r["artifact_type"] for r in refs) == [SPDX, CDX]
    assert main(["inspect", f"docker://{registry.host}/app:v1", "--no-scan"]) == 0
    human = capsys.readouterr().out
    assert "referrers (2)" in human and reg_attach["digest"] in human


@pytest.mark.slow
def test_sbom_of_an_image_without_one_is_derived_from_its_layers(
    tiny_closure: TinyClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nixfly.sbom import from_image, subject_of
    from nixfly.sources import open_image
    from nixfly.transports import ArchiveLocation

    tar = tmp_path / "a.tar"
    build(capsys, tiny_closure.app, "-o", f"docker-archive:{tar}", "--cache-dir", str(tmp_path / "c"))
    closure = _closure(tiny_closure)
    # Without the local store: paths and references by scanning, no NarHash (and it says so).
    img = open_image(ArchiveLocation(tar))
    scanned = from_image(img, subject_of(img), use_local_store=False)
    assert {p.path for p in scanned.packages} == set(closure)
    for p in scanned.packages:
        assert set(p.references) == {str(r) for r in closure[p.path]["references"] if r != p.path}  # type: ignore[attr-defined]
        assert p.nar_hash is None
    assert any("NarHash" in n for n in scanned.notes)
    # The CLI completes it from the local Nix store, which holds these paths.
    r = run_nixfly("sbom", str(tar))
    assert r.code == 0, r.err
    assert "non-Nix files of the image are not listed" in r.err
    assert validate_spdx(r.out.encode()) == []
    doc = json.loads(r.out)
    sums = {p["packageFileName"]: p["checksums"][0]["checksumValue"]
            for p in doc["packages"] if p.get("packageFileName", "").startswith("/nix/")}  # fmt: skip
    assert sums == {p: sha256_hex(str(i["narHash"])) for p, i in closure.items()}


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    r = run_nixfly("sbom", str(tmp_path / "nope"))
    assert r.code != 0 and r.err.count("\n") == 1 and "Traceback" not in r.err
    r = run_nixfly("sbom", f"oci:{tmp_path / 'nope'}")
    assert r.code != 0 and r.err.count("\n") == 1 and "Traceback" not in r.err
    r = run_nixfly("build", "/nix/store/x", "-o", "oci:x", "--sbom", "bogus")
    assert r.code == 2 and "Traceback" not in r.err
    cfg = tmp_path / "nixfly.toml"
    cfg.write_text('[image]\nroots = ["/nix/store/x"]\nsbom = "swid"\n')
    r = run_nixfly("build", "--config", str(cfg), "-o", f"oci:{tmp_path / 'o'}")
    assert r.code == 2 and r.err.count("\n") == 1 and f"{cfg}:3: image.sbom: must be one of" in r.err, r.err


@pytest.mark.slow
def test_attach_survives_a_500_and_a_lost_reply_at_the_unfriendly_points(
    tiny_closure: TinyClosure, fault_proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reply to the artifact manifest PUT is lost (the registry stored it), the first PUT of the
    # referrers index answers 500: both are retried, and the index lists the SBOM exactly once.
    fault_proxy.add_fault("forward_then_reset", method="PUT", path_contains="/manifests/sha256:", skip=0)
    fault_proxy.add_fault("status", status=500, method="PUT", path_contains="/manifests/sha256-")
    s = build(capsys, tiny_closure.app, "--push", f"{fault_proxy.host}/f/app:v1", "--cache-dir", str(tmp_path / "c"))
    faults = [e.fault for e in fault_proxy.snapshot() if e.fault]
    assert "forward_then_reset" in faults and "status" in faults
    (attached,) = s["sbom"]["attached"]
    tag = f"sha256-{s['digest'].split(':')[1]}"
    assert attached["tag"] == tag
    index = json.loads(_skopeo_raw(fault_proxy.upstream, f"f/app:{tag}"))
    assert [m["digest"] for m in index["manifests"]] == [attached["digest"]]


@pytest.mark.slow
def test_a_foreign_manifest_under_the_fallback_tag_is_not_overwritten(
    tiny_closure: TinyClosure, registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", str(tmp_path / "c")]
    s = build(capsys, tiny_closure.app, "--push", f"{registry.host}/app:v0", "--sbom", "none", *cache)
    tag = f"sha256-{s['digest'].split(':')[1]}"
    # Someone tagged an image (not an index) with the fallback tag's name.
    build(capsys, tiny_closure.app, "--push", f"{registry.host}/app:{tag}", "--sbom", "none", *cache)
    before = _skopeo_raw(registry, f"app:{tag}")
    code = main(["build", tiny_closure.app, "--push", f"{registry.host}/app:v1", *cache])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1, err
    assert f"pushed {registry.host}/app@{s['digest']}, but attaching its SBOM failed" in err
    assert "not an OCI index of referrers" in err
    assert _skopeo_raw(registry, f"app:{tag}") == before
    assert json.loads(_skopeo_raw(registry, "app:v1"))["config"]["digest"]  # the image itself went up


def test_rendered_sboms_are_cached_and_a_tampered_cache_entry_is_not_trusted(tmp_path: Path) -> None:
    from nixfly.build.closure import StorePath
    from nixfly.sbom import Subject, render, render_cached
    from nixfly.sbom.model import from_closure

    a = "/nix/store/" + "a" * 32 + "-liba-1.0"
    b = "/nix/store/" + "b" * 32 + "-app-2"
    paths = {a: StorePath(a, 10, (), None, "sha256:" + "0" * 52), b: StorePath(b, 20, (a,), None, None)}
    subject = Subject("sha256:" + "c" * 64, "application/vnd.oci.image.manifest.v1+json", 9)
    sbom = from_closure(subject, "1970-01-01T00:00:01Z", paths, [b])
    assert any("no NarHash" in n for n in sbom.notes)
    want = render(sbom, "spdx")
    assert validate_spdx(want) == []
    assert render_cached(sbom, "spdx", tmp_path) == want
    (entry,) = (tmp_path / "sboms").iterdir()
    entry.write_bytes(want.replace(b"liba", b"evil"))
    assert render_cached(sbom, "spdx", tmp_path) == want
