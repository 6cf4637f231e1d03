"""skopeo-style image locations: ``oci:DIR[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``, ``docker://REF``.

A bare string that is not one of those is a registry reference (``docker://`` implied), except where a
caller says a bare path is allowed (e.g. ``nixfly run ./layout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nixfly.errors import UsageError


@dataclass(frozen=True)
class LayoutLocation:
    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class ArchiveLocation:
    path: Path | None  # None means stdout / stdin
    name: str | None = None  # "name:tag" to record in the archive's RepoTags

    def __str__(self) -> str:
        return "docker-archive:" + (str(self.path) if self.path else "-") + (f":{self.name}" if self.name else "")


@dataclass(frozen=True)
class RegistryLocation:
    reference: str  # as the user wrote it, without "docker://"

    def __str__(self) -> str:
        return f"docker://{self.reference}"


Location = LayoutLocation | ArchiveLocation | RegistryLocation


def parse_location(text: str, *, bare_paths: bool = False) -> Location:
    """Parse a transport string. With ``bare_paths``, an existing file/dir is read as layout/archive."""
    if not text:
        raise UsageError("empty image location")
    if text == "-":
        return ArchiveLocation(None)
    if text.startswith("oci:"):
        rest = text[4:]
        path, tag = _split_tag(rest)
        if not path:
            raise UsageError(f"{text!r}: oci: needs a directory, as in oci:DIR[:TAG]")
        return LayoutLocation(Path(path), tag)
    if text.startswith("docker-archive:"):
        rest = text[len("docker-archive:") :]
        if not rest:
            raise UsageError(f"{text!r}: docker-archive: needs a file, as in docker-archive:FILE[:NAME:TAG]")
        path_s, _, name = rest.partition(":")
        if name and ":" not in name and "@" not in name:
            name = name + ":latest"
        return ArchiveLocation(None if path_s == "-" else Path(path_s), name or None)
    if text.startswith("docker://"):
        ref = text[len("docker://") :]
        if not ref:
            raise UsageError(f"{text!r}: docker:// needs a reference such as registry.fly.io/app:tag")
        return RegistryLocation(ref)
    if bare_paths:
        p = Path(text)
        try:
            is_dir, is_file = p.is_dir(), p.is_file()
        except OSError:  # e.g. ENAMETOOLONG: no local file has this name
            is_dir = is_file = False
        if is_dir:
            path, tag = _split_tag(text) if not p.exists() else (text, None)
            return LayoutLocation(Path(path), tag)
        if is_file:
            return ArchiveLocation(p)
    if "/" in text or ":" in text or text.isalnum():
        return RegistryLocation(text)
    raise UsageError(f"{text!r} is not an image location (oci:DIR, docker-archive:FILE or docker://REF)")


def _split_tag(rest: str) -> tuple[str, str | None]:
    # The tag is what follows the last ':' provided that part has no '/' (paths may contain ':').
    head, sep, tail = rest.rpartition(":")
    if sep and tail and "/" not in tail:
        return head, tail
    return rest, None
