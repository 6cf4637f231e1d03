"""A build's events: one listener protocol (``nixfly.build.events``), several listeners through a ``Tee``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from nixfly.build.events import BuildListener, Notes, Tee
from nixfly.build.layers import BuiltLayer, LayerSpec
from nixfly.build.pipeline import build_image
from nixfly.build.spec import ImageSpec
from nixfly.image.growing import GrowingBlob
from tests.support.nixstore import TinyClosure


class Recorder(BuildListener):
    def __init__(self, name: str, log: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.log = log
        self.done: dict[int, BuiltLayer] = {}
        self.planned_specs: list[LayerSpec] = []

    def planned(self, specs: Sequence[LayerSpec], weights: Sequence[int]) -> None:
        self.planned_specs = list(specs)
        self.log.append((self.name, "planned", len(specs)))

    def layer_done(self, i: int, built: BuiltLayer) -> None:
        self.done[i] = built
        self.log.append((self.name, "done", i))


class Blobs(BuildListener):
    """Takes every growing blob and reads it whole once the layer is done."""

    def __init__(self) -> None:
        self.blobs: dict[int, GrowingBlob] = {}

    def layer_blob(self, i: int, blob: GrowingBlob) -> None:
        self.blobs[i] = blob


def test_a_listener_listens_to_what_it_overrides_and_a_tee_to_what_any_of_its_listeners_does() -> None:
    assert not BuildListener().listens("layer_blob")
    assert not Recorder("r", []).listens("layer_bytes")
    assert Blobs().listens("layer_blob") and not Blobs().listens("layer_bytes")
    assert not Tee(Recorder("r", []), Notes(print)).listens("layer_blob")
    assert Tee(Recorder("r", []), Blobs()).listens("layer_blob")


def test_a_tee_hands_each_event_to_every_listener_in_order() -> None:
    log: list[tuple[str, str, int]] = []
    said: list[str] = []
    tee = Tee(Recorder("a", log), Recorder("b", log), Notes(said.append))
    tee.planned([], [])
    tee.note("hello")
    assert log == [("a", "planned", 0), ("b", "planned", 0)]
    assert said == ["hello"]


def test_build_reports_every_layer_once_and_blobs_only_to_a_listener_that_takes_them(
    tiny_closure: TinyClosure, tmp_path: Path
) -> None:
    spec = ImageSpec(roots=[tiny_closure.app], closure_file=str(tiny_closure.path_info))
    log: list[tuple[str, str, int]] = []
    first, second, blobs = Recorder("a", log), Recorder("b", log), Blobs()
    result = build_image(spec, cache_dir=tmp_path / "c", events=Tee(first, second, blobs))
    n = len(result.layers)
    assert [e for e in log if e[1] == "planned"] == [("a", "planned", n), ("b", "planned", n)]
    for rec in (first, second):
        assert sorted(rec.done) == list(range(n))
        assert [rec.done[i].layer.digest for i in range(n)] == [b.layer.digest for b in result.layers]
        assert [s.kind for s in rec.planned_specs] == [b.spec.kind for b in result.layers]
    # Each layer's event reaches the listeners in the Tee's order (layers themselves finish in any order).
    for i in range(n):
        assert log.index(("a", "done", i)) < log.index(("b", "done", i))
    # Every layer was built now (a fresh cache): each blob handed over is that layer's bytes.
    assert sorted(blobs.blobs) == list(range(n))
    for i, b in enumerate(result.layers):
        g = blobs.blobs[i]
        assert g.done and g.digest == b.layer.digest
        data = g.pread(g.written, 0)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == b.layer.digest
        g.close()
    # The same build again comes from the cache: layers reported, no blob (nothing is written).
    again, blobs2 = Recorder("c", []), Blobs()
    build_image(spec, cache_dir=tmp_path / "c", events=Tee(again, blobs2))
    assert sorted(again.done) == list(range(n)) and blobs2.blobs == {}
