"""A build's SBOM attached wherever the image went: rendered once per image manifest digest (a push in
another manifest format describes another manifest), then written into a layout or pushed as a referrer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.errors import NixflyError
from nixfly.image import Descriptor, Image
from nixfly.sbom import MEDIA_TYPES, SbomFormat, from_build, render_cached, subject_of
from nixfly.sinks.referrers import CREATED, Artifact, attach_to_layout

if TYPE_CHECKING:
    from nixfly.build.pipeline import BuildResult
    from nixfly.registry.client import RegistryOptions


@dataclass
class SbomAttacher:
    result: BuildResult
    fmt: SbomFormat
    cache_root: Path
    name: str | None = None  # the image's name, for the document title
    attached: list[dict[str, Any]] = field(default_factory=list)
    _artifacts: dict[str, Artifact] = field(default_factory=dict)

    def artifact(self, image: Image) -> Artifact:
        """The SBOM artifact whose subject is ``image`` as written (the build's image, perhaps converted)."""
        subject = subject_of(image, self.name)
        art = self._artifacts.get(subject.digest)
        if art is None:
            sbom = from_build(self.result, subject)
            blob = render_cached(sbom, self.fmt, self.cache_root)
            desc = Descriptor(subject.media_type, subject.digest, subject.size)
            art = self._artifacts[subject.digest] = Artifact(MEDIA_TYPES[self.fmt], blob, desc, {CREATED: sbom.created})
        return art

    def attach_layout(self, root: Path, image: Image) -> None:
        self.attached.append({"to": str(root), **attach_to_layout(root, self.artifact(image)).to_json()})

    def attach_registry(self, refs: list[str], image: Image, pinned: str, options: RegistryOptions) -> None:
        from nixfly.sinks.referrers import attach_to_references

        art = self.artifact(image)
        try:
            for repo, res in attach_to_references(refs, art, options):
                self.attached.append({"to": repo, **res.to_json()})
        except NixflyError as e:
            raise NixflyError(f"pushed {pinned}, but attaching its SBOM failed: {e}") from None

    def summary(self) -> dict[str, Any] | None:
        """What ``build --json`` reports under ``sbom`` (None when nothing was attached)."""
        if not self.attached:
            return None
        first = next(iter(self._artifacts.values()))
        return {
            "format": self.fmt,
            "media_type": first.artifact_type,
            "digest": first.blob_descriptor.digest,
            "size": first.blob_descriptor.size,
            "attached": self.attached,
        }
