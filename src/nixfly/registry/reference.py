"""Image references the way users write them, normalised the way registries need them.

``registry.fly.io/app:tag``, ``localhost:5000/a/b@sha256:…``, ``ghcr.io/o/r``, and Docker Hub short
names (``busybox`` → ``docker.io/library/busybox``) all parse to one :class:`Reference`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from nixfly.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# Grammar from the distribution reference package, expressed in our own patterns.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be set (the digest then decides)."""

    registry: str  # normalised host[:port]; Docker Hub is "docker.io"
    repository: str  # e.g. "library/busybox", "app"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the part before ``:tag`` / ``@digest``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host:port the distribution API is served from (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def hostname(self) -> str:
        """The host without a port."""
        if self.registry.startswith("["):
            return self.registry.split("]", 1)[0] + "]"
        return self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry

    @property
    def is_local(self) -> bool:
        return self.hostname in LOCAL_HOSTS

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest if known, else the tag (``latest`` by default)."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """The digest-pinned form ``registry/repository@sha256:…`` (what deploy consumes)."""
        return f"{self.name}@{digest}"

    def with_tag(self, tag: str | None) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def with_repository(self, repository: str) -> Reference:
        return replace(self, repository=repository)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(text: str) -> Reference:
    """Parse ``[docker://][HOST[:PORT]/]NAME[:TAG][@DIGEST]``; a bad reference is a UsageError naming it."""
    original = text
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    if not text or any(c.isspace() for c in text):
        raise UsageError(f"invalid image reference {original!r}: empty or contains whitespace")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise UsageError(f"invalid image reference {original!r}: digest must be sha256: followed by 64 hex digits")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise UsageError(f"invalid image reference {original!r}: bad tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
        if not _HOST_RE.match(registry):
            raise UsageError(f"invalid image reference {original!r}: bad registry host {registry!r}")
        registry = registry.lower()
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO_RE.match(repository):
        hint = " (repository names are lower case)" if repository.lower() != repository else ""
        raise UsageError(f"invalid image reference {original!r}: bad repository name {repository!r}{hint}")
    if len(f"{registry}/{repository}") > 255:
        raise UsageError(f"invalid image reference {original!r}: name longer than 255 characters")
    return Reference(registry, repository, tag, digest)


def parse_repository(text: str) -> Reference:
    """Parse a repository (``nixfly tags REPO``); a tag or digest is not allowed."""
    return as_repository(parse_reference(text), text)


def as_repository(ref: Reference, text: str) -> Reference:
    """``ref`` (parsed from ``text``) when it names just a repository; a tag or digest is a UsageError."""
    if ref.tag or ref.digest:
        raise UsageError(f"{text!r} names a tag or digest; give just the repository, as in registry/name")
    return ref
