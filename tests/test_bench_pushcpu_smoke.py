"""The push CPU benchmark runs end to end on the small closure (`--quick --only pushcpu`): a push from a layout
and a cold `build --push` go to a real registry, and the SHA-256 bytes it counts say each uploaded byte was
hashed once (a push from a layout hashes nothing else; a build also hashes its uncompressed tar for the
diff_id, which the compressed bytes it uploads are a fraction of)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_bench_smoke import TOOLS, run_quick

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in (*TOOLS, "docker-registry")),
        reason="needs what scripts/setup.sh installs",
    ),
]


def test_quick_push_cpu_bench_counts_one_hash_pass_per_uploaded_byte(tmp_path: Path) -> None:
    data = run_quick(tmp_path, "pushcpu")
    series = data["series"]
    (push,) = series["pushcpu.push"]["samples"]
    assert push["blob_bytes"] > 1 << 20 and push["cpu_s"] > 0
    # The layers once (two passes would be 2.0), plus small documents: config, manifests, the SBOM referrer.
    assert 1.0 <= push["sha256_per_byte"] < 1.2
    (build,) = series["pushcpu.build_push"]["samples"]
    assert build["blob_bytes"] > 1 << 20 and build["upload_cpu_s"] > 0
    # The uploader of a layer pushed while it compresses hashes none of it (it sends the writer's pieces): what
    # the upload state hashes is the config, the SBOM and the layer index, small documents held in memory.
    by_upload = sum(n for site, n in build["sha256_sites"].items() if site.startswith("registry/upload.py"))
    assert by_upload < 0.05 * build["blob_bytes"], build["sha256_sites"]
