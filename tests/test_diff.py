"""``nixfly diff``: two real Nix diff_closures (tests/data/nix/diff.nix) that differ in exactly one version
(libgreet 2.1 → 2.2), one added path (newhelper-1.4), one removed path (oldhelper-0.9) and one rebuilt
path (hello-app-1: same name and version, other inputs), as images in a real registry.

The diff must list exactly those, with NAR size deltas equal to ``nix path-info`` arithmetic, and give the
same answer from the attached SBOM (no layer downloaded), from the layers (of images skopeo pushed from a
docker-archive, which carry no SBOM) and from the local store. Its bytes-on-the-wire figure is checked
against what a real push then sends, counted by a proxy in front of the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_nixfly
from tests.support.nixdiff import Closures, closure_size, expected_packages
from tests.support.registry import RunningRegistry, start_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import proxy

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with start_registry(tmp_path_factory.mktemp("diff-registry")) as r:
        yield r


def nixfly(*args: str) -> Any:
    r = run_nixfly(*args)
    assert r.code == 0, r.err
    return r


def diff_json(*args: str) -> tuple[dict[str, Any], str]:
    r = nixfly("diff", *args, "--json", "--tls-verify=false")
    out: dict[str, Any] = json.loads(r.out)
    return out, r.err


@pytest.fixture(scope="module")
def pushed(diff_closures: Closures, reg: RunningRegistry) -> dict[str, str]:
    """Both diff_closures built by nixfly (SBOM attached) and pushed: registry references."""
    refs = {}
    for name, root in (("old", diff_closures.old), ("new", diff_closures.new)):
        layout = diff_closures.work / f"layout-{name}"
        nixfly("build", root, "-o", f"oci:{layout}:{name}", "--cache-dir", str(diff_closures.work / "cache"), "-q",
               "--cmd", "/bin/hello")  # fmt: skip
        ref = f"{reg.host}/app:{name}"
        nixfly("push", f"oci:{layout}:{name}", f"docker://{ref}", "--tls-verify=false", "-q")
        refs[name] = ref
    return refs


def _check_closure(d: dict[str, Any], c: Closures) -> None:
    assert d["packages"] == expected_packages(c)
    assert d["counts"] == {"changed": 1, "added": 1, "removed": 1, "rebuilt": 1, "unchanged": 2}
    assert d["closure"]["old"] == closure_size(c.old) == sum(c.sizes[p] for p in c.old_paths)
    assert d["closure"]["new"] == closure_size(c.new)
    assert d["closure"]["delta"] == closure_size(c.new) - closure_size(c.old)
    assert (d["closure"]["old_paths"], d["closure"]["new_paths"]) == (len(c.old_paths), len(c.new_paths))


def test_sbom_and_layers_give_exactly_the_changes_nix_path_info_gives(
    diff_closures: Closures, pushed: dict[str, str], reg: RunningRegistry
) -> None:
    before = len(reg.log_text())
    d, err = diff_json(f"docker://{pushed['old']}", f"docker://{pushed['new']}")
    assert (d["old"]["source"], d["new"]["source"]) == ("sbom", "sbom"), err
    assert d["notes"] == [] and "note:" not in err
    _check_closure(d, diff_closures)
    # From the SBOM, no layer blob was fetched: only manifests, configs and the SBOM artifacts.
    log = reg.log_text()[before:]
    layer_digests = {lyr["digest"] for name in ("old", "new") for lyr in _manifest(reg, pushed[name])["layers"]}
    assert not [line for line in log.splitlines() if "GET" in line and any(x in line for x in layer_digests)]

    layers, err = diff_json(f"docker://{pushed['old']}", f"docker://{pushed['new']}", "--from-layers")
    assert (layers["old"]["source"], layers["new"]["source"]) == ("layers", "layers")
    _check_closure(layers, diff_closures)
    for key in ("packages", "counts", "closure", "image", "wire", "config"):
        assert layers[key] == d[key], key


def _manifest(reg: RunningRegistry, ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], capture_output=True,
                         check=True).stdout  # fmt: skip
    m: dict[str, Any] = json.loads(out)
    return m


def test_store_paths_diff_from_the_local_store(diff_closures: Closures, tmp_path: Path) -> None:
    link = tmp_path / "result"
    link.symlink_to(diff_closures.new)
    d, _err = diff_json(diff_closures.old, str(link))
    assert (d["old"]["source"], d["new"]["source"]) == ("store", "store")
    _check_closure(d, diff_closures)
    assert d["wire"] is None and d["config"] is None and d["image"] is None
    assert d["notes"] == ["OLD: closure from the local Nix store (nix path-info)",
                          "NEW: closure from the local Nix store (nix path-info)"]  # fmt: skip


def test_an_image_without_sbom_diffs_from_its_layers_and_predicts_the_push(
    diff_closures: Closures, reg: RunningRegistry, tmp_path: Path
) -> None:
    # Images from elsewhere: docker-archives pushed by skopeo (its own gzip; no SBOM anywhere).
    for name, root, ref in (("old", diff_closures.old, "plain:old"), ("new", diff_closures.new, "staging:new")):
        archive = tmp_path / f"{name}.tar"
        nixfly("build", root, "-o", f"docker-archive:{archive}", "--cache-dir", str(diff_closures.work / "cache"), "-q")
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"docker-archive:{archive}",
                        f"docker://{reg.host}/{ref}"], check=True, capture_output=True)  # fmt: skip
    d, _err = diff_json(f"docker://{reg.host}/plain:old", f"docker://{reg.host}/staging:new")
    assert (d["old"]["source"], d["new"]["source"]) == ("layers", "layers")
    assert [n.split(":", 2)[:2] for n in d["notes"]] == [["OLD", " no SBOM attached"], ["NEW", " no SBOM attached"]]
    human = nixfly("diff", f"docker://{reg.host}/plain:old", f"docker://{reg.host}/staging:new", "--tls-verify=false")
    assert human.err.count("note: ") == 2 and "read from its" in human.err
    _check_closure(d, diff_closures)
    wire = d["wire"]
    assert 0 < wire["layers"] < wire["layers_total"]  # the unchanged store paths' layers are shared

    # Now push NEW into the repository that holds OLD, through a proxy that counts what goes up.
    port = int(reg.host.rsplit(":", 1)[1])
    with proxy.CountingProxy(port) as px:
        nixfly("copy", f"docker://{reg.host}/staging:new", f"docker://127.0.0.1:{px.port}/plain:new",
               "--src-tls-verify=false", "--dest-tls-verify=false")  # fmt: skip
        counts = px.counts
    assert counts.blob_bytes == wire["blob_bytes"]
    assert counts.manifest_bytes == wire["manifest_bytes"]
    assert len(counts.by_digest) == wire["layers"] + (1 if wire["config_bytes"] else 0)


def test_quiet_prints_the_summary_line_and_human_output_starts_with_it(pushed: dict[str, str]) -> None:
    q = nixfly("diff", f"docker://{pushed['old']}", f"docker://{pushed['new']}", "-q", "--tls-verify=false")
    lines = q.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("1 changed, 1 added, 1 removed, 1 rebuilt; closure ")
    full = nixfly("diff", f"docker://{pushed['old']}", f"docker://{pushed['new']}", "--tls-verify=false")
    out = full.out.splitlines()
    assert out[0] == lines[0]
    assert any(line.split()[:4] == ["libgreet", "2.1", "→", "2.2"] for line in out)
    same = nixfly("diff", f"docker://{pushed['new']}", f"docker://{pushed['new']}", "-q", "--tls-verify=false")
    assert same.out.startswith("same image; ")


def test_config_changes_hide_values_that_look_secret(diff_closures: Closures, tmp_path: Path) -> None:
    secret_old, secret_new = "hunter2-old-value-5f3a", "hunter2-new-value-9b1c"
    layouts = []
    for name, extra in (
        ("a", ["-e", f"API_TOKEN={secret_old}", "-e", "MODE=blue", "-e", f"DB=postgres://u:{secret_old}@db/x",
               "--port", "8080", "--label", "team=web"]),
        ("b", ["-e", f"API_TOKEN={secret_new}", "-e", "MODE=green", "-e", f"DB=postgres://u:{secret_new}@db/x",
               "--port", "9090", "--user", "1000:1000", "--label", "team=api", "--cmd", "/bin/hello --loud"]),
    ):  # fmt: skip
        layout = tmp_path / name
        nixfly("build", diff_closures.old, "-o", f"oci:{layout}:x", "--cache-dir", str(diff_closures.work / "cache"),
               "-q", *extra)  # fmt: skip
        layouts.append(f"oci:{layout}:x")
    d, _err = diff_json(*layouts)
    assert d["packages"] == [] and d["counts"]["unchanged"] == len(diff_closures.old_paths)
    changes = {(c["field"], c["key"]): c for c in d["config"]}
    assert changes[("env", "MODE")] == {"field": "env", "key": "MODE", "change": "changed", "old": "blue",
                                        "new": "green", "hidden": False}  # fmt: skip
    for key in ("API_TOKEN", "DB"):
        assert changes[("env", key)]["hidden"] is True and changes[("env", key)]["new"] is None
    assert changes[("ports", "8080/tcp")]["new"] is None and changes[("ports", "9090/tcp")]["old"] is None
    assert changes[("user", None)]["new"] == "1000:1000"
    assert changes[("labels", "team")]["new"] == "api"
    assert changes[("cmd", None)]["new"] == '["/bin/hello", "--loud"]'
    human = run_nixfly("diff", *layouts)
    for text in (json.dumps(d), human.out, human.err):
        assert secret_old not in text and secret_new not in text
    assert "  env API_TOKEN: value hidden (looks secret), changed" in human.out.splitlines()
    assert "  + user = 1000:1000" in human.out.splitlines() and "  + ports 9090/tcp" in human.out.splitlines()


@pytest.mark.parametrize(
    "args",
    [
        ["only-one"],
        ["v3", "v4"],
        ["/nix/store/00000000000000000000000000000000-gone-1.0", "oci:/nonexistent"],
        ["./no-such-layout", "./nor-this"],
        ["oci:/nonexistent-dir:tag", "oci:/also-missing:tag"],
    ],
)
def test_bad_input_is_one_line(args: list[str]) -> None:
    r = run_nixfly("diff", *args)
    assert r.code not in (0, 70), r
    assert r.err.startswith("nixfly: ") and len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err and r.out == ""


@pytest.mark.parametrize("blob", [b"not json at all", b"[" * 100000, b'{"packages": 7}'])
def test_an_unusable_sbom_falls_back_to_the_layers(diff_closures: Closures, tmp_path: Path,
                                                    blob: bytes) -> None:  # fmt: skip
    from nixfly.image import Descriptor
    from nixfly.sinks.referrers import Artifact, attach_to_layout
    from nixfly.sources.layout import read_index

    layouts = []
    for name in ("old", "new"):
        layout = tmp_path / name
        nixfly("build", getattr(diff_closures, name), "-o", f"oci:{layout}:x", "--cache-dir",
               str(diff_closures.work / "cache"), "-q", "--sbom", "none")  # fmt: skip
        entry = next(e for e in read_index(layout)["manifests"] if e.get("annotations"))
        desc = Descriptor(entry["mediaType"], entry["digest"], entry["size"])
        attach_to_layout(layout, Artifact("application/spdx+json", blob, desc))
        layouts.append(f"oci:{layout}:x")
    d, _err = diff_json(*layouts)
    assert (d["old"]["source"], d["new"]["source"]) == ("layers", "layers")
    assert all("its attached SBOM is unusable" in n for n in d["notes"]) and len(d["notes"]) == 2
    _check_closure(d, diff_closures)
