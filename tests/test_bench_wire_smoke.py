"""The wire and fresh-runner benchmarks run end to end on the small closure (`--quick --only
wire,fresh`): every subject pushes through the shaped proxy, the usual pipeline pushes what nixfly
planned, and a fresh runner with an empty cache builds and uploads no layer for an unchanged image and
exactly the changed layer after an app change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_bench_smoke import TOOLS, run_quick

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in (*TOOLS, "docker-registry", "unshare")),
        reason="needs what scripts/setup.sh installs",
    ),
]


def test_quick_wire_and_fresh_runner_bench(tmp_path: Path) -> None:
    data = run_quick(tmp_path, "wire,fresh")
    series = data["series"]
    for subj in ("nixfly_gzip", "nixfly_zstd", "usual"):
        (s,) = series[f"wire.100.{subj}"]["samples"]
        # the whole image went over the link, and no faster than the link allows
        assert s["layers_uploaded"] == s["image_layers"] > 1
        assert s["layer_bytes"] == s["image_layer_bytes"]
        assert s["wall"] >= s["wire_s"] * 0.98 > 0
    (a,) = series["fresh.0.nochange.nixfly"]["samples"]
    assert a["built"] == 0 and a["layer_bytes"] == 0 and a["config_bytes"] == 0
    (b,) = series["fresh.0.app.nixfly"]["samples"]
    assert b["changed_layers"] == 1 and b["built"] == 1 and b["only_changed_uploaded"]
    assert b["layer_bytes"] == b["changed_layer_bytes"] and b["config_bytes"] == b["config_size"]
    (u,) = series["fresh.0.nochange.usual"]["samples"]
    assert u["layers_uploaded"] == u["image_layers"]  # skopeo cannot know the digests before compressing
    assert any(r["scenario"].startswith("wire: cold push at 100 Mbit/s") for r in data["rows"])
