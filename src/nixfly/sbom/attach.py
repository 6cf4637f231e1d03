"""A build's SBOM attached wherever the image went: rendered once per image manifest digest (a push in
another manifest format describes another manifest), then written into a layout or pushed as a referrer.

The artifact carries its render key (``io.nixfly.sbom.render-key``: a hash of everything its bytes
depend on, see ``sbom.render_key``). A push to a repository where an SBOM with the same key is already
attached to the image leaves that one and renders nothing: a fresh CI runner pushing an unchanged image
does not pay for loading the SBOM library and emitting the document again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixfly.errors import NixflyError
from nixfly.image import Descriptor, Image
from nixfly.sbom import MEDIA_TYPES, Sbom, SbomFormat, Subject, from_build, render_cached, render_key, subject_of
from nixfly.sinks.referrers import CREATED, Artifact, attach_to_layout

RENDER_KEY = "io.nixfly.sbom.render-key"

if TYPE_CHECKING:
    from nixfly.build.pipeline import BuildResult
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.registry.reference import Reference


@dataclass
class SbomAttacher:
    result: BuildResult
    fmt: SbomFormat
    cache_root: Path
    name: str | None = None  # the image's name, for the document title
    attached: list[dict[str, Any]] = field(default_factory=list)
    _artifacts: dict[str, Artifact] = field(default_factory=dict)
    _sboms: dict[str, tuple[Sbom, str]] = field(default_factory=dict)  # subject digest → (SBOM, render key)
    _blob: Descriptor | None = None  # the SBOM blob attached first

    def _sbom(self, subject: Subject) -> tuple[Sbom, str]:
        got = self._sboms.get(subject.digest)
        if got is None:
            sbom = from_build(self.result, subject)
            got = self._sboms[subject.digest] = (sbom, render_key(sbom, self.fmt))
        return got

    def artifact(self, image: Image) -> Artifact:
        """The SBOM artifact whose subject is ``image`` as written (the build's image, perhaps converted)."""
        subject = subject_of(image, self.name)
        art = self._artifacts.get(subject.digest)
        if art is None:
            sbom, key = self._sbom(subject)
            blob = render_cached(sbom, self.fmt, self.cache_root)
            desc = Descriptor(subject.media_type, subject.digest, subject.size)
            art = self._artifacts[subject.digest] = Artifact(
                MEDIA_TYPES[self.fmt], blob, desc, {CREATED: sbom.created, RENDER_KEY: key}
            )
        return art

    def attach_layout(self, root: Path, image: Image) -> None:
        art = self.artifact(image)
        self._blob = self._blob or art.blob_descriptor
        self.attached.append({"to": str(root), **attach_to_layout(root, art).to_json()})

    def attach_registry(self, refs: Sequence[str | Reference], image: Image, pinned: str, options: RegistryOptions,
                        clients: Mapping[str, RegistryClient] | None = None) -> None:  # fmt: skip
        """Attach the SBOM in every repository ``refs`` name, unless one with the same render key is already
        attached there to the image."""
        from nixfly.sinks.referrers import attach_once

        subject = subject_of(image, self.name)
        _sbom, key = self._sbom(subject)
        try:
            done = attach_once(refs, MEDIA_TYPES[self.fmt], subject.digest, {RENDER_KEY: key},
                               lambda: self.artifact(image), options, clients=clients)  # fmt: skip
        except NixflyError as e:
            raise NixflyError(f"pushed {pinned}, but attaching its SBOM failed: {e}") from None
        for repo, res, blob in done:
            self._blob = self._blob or blob
            self.attached.append({"to": repo, **res.to_json()})

    def summary(self) -> dict[str, Any] | None:
        """What ``build --json`` reports under ``sbom`` (None when nothing was attached)."""
        if not self.attached or self._blob is None:
            return None
        return {
            "format": self.fmt,
            "media_type": MEDIA_TYPES[self.fmt],
            "digest": self._blob.digest,
            "size": self._blob.size,
            "attached": self.attached,
        }
