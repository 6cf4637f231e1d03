"""Many writers on one OCI layout (issue 25 item 8): every tag and every SBOM referrer written at the same
time survives, whether the layout exists already or the writers create it together. ``index.json`` has
one writer at a time: the image write and the SBOM attach both change it under the layout's lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nixfly.image import Descriptor
from nixfly.sinks.layout import write_layout
from nixfly.sinks.referrers import Artifact, attach_to_layout
from nixfly.sources.layout import REF_NAME, read_index
from nixfly.transports import LayoutLocation
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure
from tests.support.registry_images import make_image

SBOM_TYPE = "application/spdx+json"


def _tags_and_referrers(root: Path) -> tuple[set[str], set[str]]:
    entries = read_index(root)["manifests"]
    tags = {(e.get("annotations") or {}).get(REF_NAME) for e in entries} - {None}
    subjects = {e["subject"]["digest"] for e in entries if isinstance(e.get("subject"), dict)}
    return tags, subjects  # type: ignore[return-value]


def _validate(root: Path, tags: list[str]) -> None:
    """oci-image-tool validates each tag. Its ``--ref name=`` filter (image-tools 1.0) deletes from the list
    it iterates and so skips the entry after each one it drops: with several tags and referrers it
    reports "not unique" for a sound layout. So each tag is checked in a view of the layout that has the
    same blobs (hard links) and only that tag's entry in index.json."""
    entries = read_index(root)["manifests"]
    for tag in tags:
        view = root.parent / f".view-{root.name}-{tag}"
        shutil.copytree(root / "blobs", view / "blobs", copy_function=os.link)
        shutil.copy(root / "oci-layout", view / "oci-layout")
        mine = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == tag]
        (view / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": mine}))
        v = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", f"name={tag}", str(view)],
                           capture_output=True, text=True)  # fmt: skip
        assert v.returncode == 0 and "Validation succeeded" in v.stdout + v.stderr, v.stdout + v.stderr
        shutil.rmtree(view)


def _writer(i: int, root: Path, images: Path, barrier: Any) -> None:
    image = make_image(images / f"i{i}", app=f"app v{i}\n".encode(), busybox=False)
    subject = Descriptor(image.media_type, image.manifest_digest(), len(image.manifest_bytes()))
    artifact = Artifact(SBOM_TYPE, f'{{"sbom": {i}}}'.encode(), subject, None)
    barrier.wait()  # all writers start together: the widest window for a lost update
    write_layout(image, LayoutLocation(root, f"t{i}"))
    attach_to_layout(root, artifact)


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new-layout", "existing-layout"])
def test_concurrent_tag_writers_with_sbom_keep_every_tag(tmp_path: Path, existing: bool) -> None:
    writers, rounds = 12, 3  # before the fix, every round lost tags or SBOMs
    ctx = multiprocessing.get_context("fork")
    for r in range(rounds):
        root = tmp_path / f"layout{r}"
        if existing:
            write_layout(make_image(tmp_path / "seed", busybox=False), LayoutLocation(root, "seed"))
        barrier = ctx.Barrier(writers)
        procs = [ctx.Process(target=_writer, args=(i, root, tmp_path / "images", barrier)) for i in range(writers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * writers
        tags, subjects = _tags_and_referrers(root)
        want = {f"t{i}" for i in range(writers)} | ({"seed"} if existing else set())
        assert tags == want, f"round {r}: lost tags {sorted(want - tags)}"
        assert len(subjects) == writers, f"round {r}: lost {writers - len(subjects)} SBOM referrers"
    _validate(root, sorted(want))


@pytest.mark.slow
def test_concurrent_cli_builds_into_one_layout_keep_every_tag_and_sbom(
    tiny_closure: TinyClosure, tmp_path: Path
) -> None:
    layout, cache = tmp_path / "shared", tmp_path / "c"
    warm = run_nixfly("build", tiny_closure.app, "-o", f"oci:{tmp_path / 'warm'}", "--cache-dir", str(cache))
    assert warm.code == 0, warm.err

    def build(i: int) -> dict[str, Any]:
        r = run_nixfly("build", tiny_closure.app, "--label", f"n={i}", "-o", f"oci:{layout}:t{i}",
                       "--cache-dir", str(cache), "--json")  # fmt: skip
        assert r.code == 0, r.err
        return json.loads(r.out)  # type: ignore[no-any-return]

    n = 8
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(build, range(n)))
    tags, subjects = _tags_and_referrers(layout)
    assert tags == {f"t{i}" for i in range(n)}
    assert subjects == {r["digest"] for r in results}  # each image keeps its SBOM
    _validate(layout, sorted(tags))
