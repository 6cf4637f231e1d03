"""skopeo-style image locations: ``oci:DIR[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``, ``docker://REF``.

A bare string that is not one of those is a registry reference (``docker://`` implied), except where a
caller says a bare path is allowed (e.g. ``nixfly run ./layout``). A registry location is parsed once, here,
into its :class:`~nixfly.registry.reference.Reference` (``ref``; a local location's ``ref`` is None). Each
location type declares what it can hold as a destination (:class:`Capabilities`); ``sinks/rules.py`` is the one
place that asks.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, cast

from nixfly.errors import UsageError
from nixfly.image.mediatypes import ManifestFormat
from nixfly.nixbase32 import STORE_HASH
from nixfly.registry.reference import Reference, parse_reference

_STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")
_PATHLIKE = ("/", "./", "../", "~")
# Names of the first member of the archive formats docker-archive readers meet (docker save old and new,
# skopeo, dockerTools): what tells an image tarball from any other tarball.
_ARCHIVE_FIRST = re.compile(
    r"^(?:[0-9a-f]{64}(?:\.json|\.tar|/.*)?|manifest\.json|repositories|index\.json|oci-layout|blobs(?:/.*)?)$"
)


@dataclass(frozen=True)
class Capabilities:
    """What a location can hold as a destination (and is, as a source), declared by its type as data.
    ``sinks/rules.py`` asks these questions — v2s2 for Fly, no index in a docker-archive, stdout once —
    so no command or service switches on a location's type to answer them."""

    path: Path | None = None  # the file or directory on this machine (None: a registry, stdin/stdout)
    directory: bool = False  # ``path`` is a directory (an OCI layout), not a file
    stdio: bool = False  # "-": stdout as a destination, stdin as a source
    index: bool = True  # holds a multi-platform index
    referrers: bool = True  # holds artifacts attached to an image (the SBOM)
    format: ManifestFormat | None = None  # the manifest format written there unless another is asked for
    fly_like: bool = False  # registry.fly.io or a host of $NIXFLY_V2S2_REGISTRIES (an index only when allowed)


def v2s2_hosts() -> frozenset[str]:
    """registry.fly.io and the hosts of ``$NIXFLY_V2S2_REGISTRIES`` (comma-separated; mirrors of it): Fly's
    image lookup breaks on OCI indexes and attestations, so images go there as Docker v2s2."""
    from nixfly.registry.auth import FLY_REGISTRY

    return frozenset({FLY_REGISTRY, *(h.strip() for h in os.environ.get("NIXFLY_V2S2_REGISTRIES", "").split(",") if h)})


@dataclass(frozen=True)
class LayoutLocation:
    path: Path
    tag: str | None = None
    ref: ClassVar[None] = None  # not a registry

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")

    @property
    def caps(self) -> Capabilities:
        # index.json holds indexes and, as entries with a subject, referrers.
        return Capabilities(path=self.path, directory=True)

    def with_default_name(self, name: str | None) -> LayoutLocation:
        return self


@dataclass(frozen=True)
class ArchiveLocation:
    path: Path | None  # None means stdout / stdin
    name: str | None = None  # "name:tag" to record in the archive's RepoTags
    run: bool = False  # ``path`` is a program (a streamLayeredImage script) whose stdout is the archive
    ref: ClassVar[None] = None  # not a registry

    def __str__(self) -> str:
        if self.run:
            return str(self.path)
        return "docker-archive:" + (str(self.path) if self.path else "-") + (f":{self.name}" if self.name else "")

    @property
    def caps(self) -> Capabilities:
        # docker save's format: one image, its layers and config; no index, no place for referrers.
        return Capabilities(path=self.path, stdio=self.path is None, index=False, referrers=False)

    def with_default_name(self, name: str | None) -> ArchiveLocation:
        """The archive records ``name`` (name:tag) in its RepoTags unless the location names one."""
        return self if self.name or not name else ArchiveLocation(self.path, name, self.run)


@dataclass(frozen=True)
class RegistryLocation:
    reference: str  # as the user wrote it, without "docker://"
    # Parsed once, when the location is made: a malformed reference is refused before any request.
    ref: Reference = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", parse_reference(self.reference))

    def __str__(self) -> str:
        return f"docker://{self.reference}"

    @property
    def caps(self) -> Capabilities:
        fly = self.ref.registry in v2s2_hosts()
        return Capabilities(format="v2s2" if fly else None, fly_like=fly)

    def with_default_name(self, name: str | None) -> RegistryLocation:
        return self


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
        if path_s == "-":
            return ArchiveLocation(None, name or None)
        return ArchiveLocation(Path(path_s), name or None, run=is_stream_script(Path(path_s)))
    if text.startswith("docker://"):
        ref = text[len("docker://") :]
        if not ref:
            raise UsageError(f"{text!r}: docker:// needs a reference such as registry.fly.io/app:tag")
        return RegistryLocation(ref)
    if bare_paths:
        p = Path(text)
        try:
            is_dir = p.is_dir()
            is_stream = p.is_file() or p.is_fifo() or p.is_char_device()
        except OSError:  # e.g. ENAMETOOLONG: no local file has this name
            is_dir = is_stream = False
        if is_dir:
            path, tag = _split_tag(text) if not p.exists() else (text, None)
            return LayoutLocation(Path(path), tag)
        if is_stream:
            return ArchiveLocation(p, run=is_stream_script(p))
        if text.startswith(_PATHLIKE):
            raise UsageError(f"{text}: no such file or directory (a registry image is written docker://REF)")
    if text.startswith(_PATHLIKE):
        raise UsageError(f"{text!r} is a path, not a registry reference: did you mean {_suggest(text)}?")
    if "/" in text or ":" in text or text.isalnum():
        return RegistryLocation(text)
    raise UsageError(f"{text!r} is not an image location (oci:DIR, docker-archive:FILE or docker://REF)")


def _split_tag(rest: str) -> tuple[str, str | None]:
    # The tag is what follows the last ':' provided that part has no '/' (paths may contain ':').
    head, sep, tail = rest.rpartition(":")
    if sep and tail and "/" not in tail:
        return head, tail
    return rest, None


def _suggest(text: str) -> str:
    if text.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst")):
        return f"docker-archive:{text}"
    return f"oci:{text} (an OCI layout directory) or docker-archive:{text}.tar"


def is_stream_script(path: Path, store_dir: str = _STORE_DIR) -> bool:
    """Whether ``path`` is a program in the Nix store that writes an image to stdout, as
    ``dockerTools.streamLayeredImage``'s output does: an executable text file (``#!`` first) that
    resolves into the store. Judged by what the file is, never by its name."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        if not real.startswith(store_dir.rstrip("/") + "/") or not stat.S_ISREG(st.st_mode):
            return False
        if not st.st_mode & 0o111:
            return False
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"\0" not in head


def image_file_kind(path: str) -> str | None:
    """``"archive"`` if ``path`` is an image tarball (docker-archive, plain or compressed), ``"script"`` if
    it is a streamLayeredImage-style script in the store, else None. Cheap: reads the first bytes only."""
    import zstandard
    from isal import isal_zlib

    from nixfly.image.compression import sniff_compression

    codec_errors: tuple[type[BaseException], ...] = (zstandard.ZstdError, cast(type[BaseException], isal_zlib.error))
    p = Path(path)
    if is_stream_script(p):
        try:
            with p.resolve().open("rb") as f:
                text = f.read(65536)  # the script's head: where streamLayeredImage names its conf.json
        except OSError:
            return None
        if re.search(rb"/" + STORE_HASH.encode() + rb"-[^\s\"'/]*(?:conf\.json|stream)", text):
            return "script"
        return None
    try:
        if not p.is_file():
            return None
        with p.open("rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    kind = sniff_compression(head[:8])
    try:
        if kind == "gzip":
            head = isal_zlib.decompressobj(31).decompress(head, 1024)
        elif kind == "zstd":
            head = zstandard.ZstdDecompressor().decompressobj().decompress(head)[:1024]
    except codec_errors:
        return None
    if len(head) < 512 or head[257:262] != b"ustar":
        return None
    first = posixpath.normpath("/" + head[:100].split(b"\0", 1)[0].decode(errors="replace")).lstrip("/")
    return "archive" if _ARCHIVE_FIRST.match(first) else None
