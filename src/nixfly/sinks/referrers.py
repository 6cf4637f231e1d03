"""OCI 1.1 referrers: attach an artifact (an SBOM) to an image without touching the image.

The artifact is an image manifest whose ``config`` is the empty descriptor
(``application/vnd.oci.empty.v1+json``, the two bytes ``{}``), whose one layer is the artifact blob, with
``artifactType`` set and ``subject`` = the image manifest's descriptor. The image manifest and its tags
are never rewritten, so a registry that resolves ``name:tag`` to a single-platform manifest (Fly's) keeps
working.

In a registry: the blobs, then the artifact manifest by digest. A registry with the referrers API
(``GET /v2/<name>/referrers/<digest>`` answers 200) indexes it by itself; otherwise the image-spec's tag
schema is used: the tag ``sha256-<hex of the subject>`` holds an OCI index of the subject's referrers,
merged with whatever that tag already listed. In an OCI layout: the blobs, then an entry in ``index.json``
carrying ``artifactType`` and ``subject`` (written atomically, after the blobs).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nixfly.errors import ImageError, NixflyError
from nixfly.fsutil import atomic_write_bytes, load_json, read_regular
from nixfly.image import Descriptor, canonical_json
from nixfly.image.digest import check_digest, digest_hex, sha256_digest
from nixfly.image.mediatypes import OCI_INDEX, OCI_MANIFEST
from nixfly.limits import MANIFEST_MAX
from nixfly.sinks.layout import edit_layout_index

if TYPE_CHECKING:  # the registry client (httpx) loads only when a registry is involved
    from nixfly.registry.client import RegistryClient, RegistryOptions
    from nixfly.registry.reference import Reference

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DESCRIPTOR = Descriptor(EMPTY_MEDIA_TYPE, sha256_digest(EMPTY_BLOB), len(EMPTY_BLOB))
CREATED = "org.opencontainers.image.created"
_MAX_ARTIFACT = 64 << 20  # bytes of one artifact blob we are willing to read back


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest and the one blob it carries."""

    artifact_type: str
    blob: bytes
    subject: Descriptor
    annotations: Mapping[str, str] | None = None

    @property
    def blob_descriptor(self) -> Descriptor:
        return Descriptor(self.artifact_type, sha256_digest(self.blob), len(self.blob))

    def manifest_bytes(self) -> bytes:
        m: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": self.artifact_type,
            "config": EMPTY_DESCRIPTOR.to_json(),
            "layers": [self.blob_descriptor.to_json()],
            "subject": self.subject.to_json(),
        }
        if self.annotations:
            m["annotations"] = dict(self.annotations)
        return canonical_json(m)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes())

    def descriptor_json(self) -> dict[str, Any]:
        """The artifact manifest's descriptor as a referrers index lists it."""
        d: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest_bytes()),
            "artifactType": self.artifact_type,
        }
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True)
class Referrer:
    """One referrer of an image, as a referrers index (or a layout's index.json) lists it."""

    artifact_type: str
    digest: str
    size: int
    media_type: str = OCI_MANIFEST
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "artifactType": self.artifact_type, "digest": self.digest, "size": self.size, "mediaType": self.media_type,
        }  # fmt: skip
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True)
class AttachResult:
    digest: str  # the artifact manifest's digest
    method: Literal["referrers-api", "tag-schema", "layout"]
    tag: str | None = None  # the fallback tag, for the tag schema

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "method": self.method, "tag": self.tag}


def fallback_tag(subject_digest: str) -> str:
    """The tag schema's tag for a subject: ``sha256:<hex>`` → ``sha256-<hex>``."""
    return subject_digest.replace(":", "-", 1)


_FALLBACK_TAG = re.compile(r"^sha256-[0-9a-f]{64}$")


def is_fallback_tag(tag: str) -> bool:
    """Whether ``tag`` is a tag-schema referrers tag (``sha256-<hex>``): a list of artifacts, not a release."""
    return bool(_FALLBACK_TAG.match(tag))


def _referrers_from_index(data: bytes, where: str) -> list[Referrer]:
    try:
        idx = load_json(data)  # a NestingError is a ValueError
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{where}: the referrers index is not JSON") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("manifests"), list):
        raise ImageError(f"{where}: the referrers index has no manifests list")
    out = []
    for d in idx["manifests"]:
        if not isinstance(d, dict):
            continue
        try:
            digest = check_digest(str(d.get("digest", "")))
        except ImageError:
            continue
        ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else None
        size = d.get("size")
        out.append(
            Referrer(
                str(d.get("artifactType") or ""),
                digest,
                size if isinstance(size, int) else -1,
                str(d.get("mediaType") or OCI_MANIFEST),
                {str(k): str(v) for k, v in ann.items()} if ann else None,
            )
        )
    return out


# -- registries -------------------------------------------------------------------------------------


def _referrers_api(client: RegistryClient, repo: str, subject_digest: str) -> list[Referrer] | None:
    """The referrers the registry's referrers API lists, or None when it has no such API."""
    resp = client.request(
        "GET", f"/v2/{repo}/referrers/{subject_digest}", client.pull_scope(repo), headers={"Accept": OCI_INDEX}
    )
    if resp.status_code != 200:
        return None
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in (OCI_INDEX, "application/json"):
        return None
    try:
        return _referrers_from_index(resp.content, f"registry {client.registry}: referrers of {subject_digest}")
    except ImageError:
        return None


def _fallback_index(
    client: RegistryClient, repo: str, tag: str, *, strict: bool = True
) -> tuple[dict[str, Any] | None, list[Referrer]]:
    """The tag schema's index and its referrers. A foreign manifest under the tag is an error when
    ``strict`` (we are about to write there), else it simply lists no referrers."""
    if client.manifest_digest(repo, tag) is None:
        return None, []
    m = client.get_manifest(repo, tag)  # every type: whatever is there must be seen to be refused
    obj = m.json()
    if m.media_type != OCI_INDEX or obj.get("mediaType", OCI_INDEX) != OCI_INDEX or not isinstance(
        obj.get("manifests"), list
    ):
        if not strict:
            return None, []
        raise client.fail(f"{repo}:{tag} exists but is not an OCI index of referrers; not overwriting it")
    return obj, _referrers_from_index(m.data, f"{repo}:{tag}")


def list_registry_referrers(client: RegistryClient, repo: str, subject_digest: str) -> list[Referrer]:
    """Referrers of ``subject_digest``: from the referrers API when there is one, else the tag schema."""
    found = _referrers_api(client, repo, subject_digest)
    if found is not None:
        return found
    return _fallback_index(client, repo, fallback_tag(subject_digest), strict=False)[1]


def _listed(client: RegistryClient, repo: str, subject_digest: str) -> tuple[list[Referrer], AttachResult]:
    """The subject's referrers, and how they are indexed (the AttachResult's digest left empty)."""
    found = _referrers_api(client, repo, subject_digest)
    if found is not None:
        return found, AttachResult("", "referrers-api")
    tag = fallback_tag(subject_digest)
    return _fallback_index(client, repo, tag, strict=False)[1], AttachResult("", "tag-schema", tag)


def find_registry_artifact(
    client: RegistryClient, repo: str, subject_digest: str, artifact_type: str, match: Mapping[str, str]
) -> tuple[AttachResult, Descriptor] | None:
    """An artifact already attached to ``subject_digest`` in ``repo``: of ``artifact_type``, its manifest
    (fetched and checked against its digest) naming that subject and carrying every annotation in
    ``match``. Returns how it is indexed and its blob's descriptor, or None.

    The annotations are the pusher's word, trusted as far as the repository's tags are: whoever may push
    there could as well move a tag."""
    refs, how = _listed(client, repo, subject_digest)
    for ref in refs:
        ann = ref.annotations or {}
        if ref.artifact_type != artifact_type or any(ann.get(k) != v for k, v in match.items()):
            continue
        try:
            m = client.get_manifest(repo, ref.digest, accept=OCI_MANIFEST).json()
        except NixflyError:
            continue  # listed but gone (or not a manifest): not attached
        subj, layers, m_ann = m.get("subject"), m.get("layers"), m.get("annotations")
        if not (isinstance(subj, dict) and subj.get("digest") == subject_digest
                and m.get("artifactType") == artifact_type and isinstance(m_ann, dict)
                and all(m_ann.get(k) == v for k, v in match.items())
                and isinstance(layers, list) and len(layers) == 1 and isinstance(layers[0], dict)):  # fmt: skip
            continue
        try:
            blob = Descriptor(str(layers[0]["mediaType"]), check_digest(str(layers[0]["digest"])),
                              int(layers[0]["size"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, ImageError):
            continue
        return AttachResult(ref.digest, how.method, how.tag), blob
    return None


def attach_to_registry(client: RegistryClient, repo: str, artifact: Artifact) -> AttachResult:
    """Push ``artifact`` as a referrer of its subject (which must already be in ``repo``). An artifact
    the subject's referrers already list, and whose manifest is there, is left as it is."""
    subject = artifact.subject.digest
    if client.manifest_digest(repo, subject) is None:
        raise client.fail(f"cannot attach to {repo}@{subject}: the image is not in the repository")
    api = _referrers_api(client, repo, subject)
    tag = fallback_tag(subject)
    if api is not None:
        existing, known, result = None, api, AttachResult(artifact.digest, "referrers-api")
    else:
        existing, known = _fallback_index(client, repo, tag)
        result = AttachResult(artifact.digest, "tag-schema", tag)
    if any(r.digest == artifact.digest for r in known) and client.manifest_digest(repo, artifact.digest):
        return result
    for digest, data in ((EMPTY_DESCRIPTOR.digest, EMPTY_BLOB), (artifact.blob_descriptor.digest, artifact.blob)):
        if client.blob_size(repo, digest, push=True) is None:
            client.upload_blob(repo, digest, len(data), lambda d=data: io.BytesIO(d))  # type: ignore[misc]
    digest = client.put_manifest(repo, artifact.digest, artifact.manifest_bytes(), OCI_MANIFEST)
    if api is not None:  # the registry indexes it by itself
        return AttachResult(digest, "referrers-api")
    entries: list[dict[str, Any]] = []
    if existing is not None:
        entries = [d for d in existing["manifests"] if isinstance(d, dict) and d.get("digest") != digest]
    entries.append(artifact.descriptor_json())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    client.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)
    return AttachResult(digest, "tag-schema", tag)


def attach_to_references(
    refs: Sequence[str | Reference], artifact: Artifact, options: RegistryOptions | None = None,
    clients: Mapping[str, RegistryClient] | None = None,
) -> list[tuple[str, AttachResult]]:  # fmt: skip
    """Attach ``artifact`` once in every repository ``refs`` name (``registry/repo``, result) pairs."""
    done = attach_once(refs, artifact.artifact_type, artifact.subject.digest, {}, lambda: artifact, options,
                       look_first=False, clients=clients)  # fmt: skip
    return [(repo, res) for repo, res, _blob in done]


def attach_once(
    refs: Sequence[str | Reference],
    artifact_type: str,
    subject_digest: str,
    match: Mapping[str, str],
    make: Callable[[], Artifact],
    options: RegistryOptions | None = None,
    *,
    look_first: bool = True,
    clients: Mapping[str, RegistryClient] | None = None,
) -> list[tuple[str, AttachResult, Descriptor]]:
    """In every repository ``refs`` name: the artifact already attached there (see
    :func:`find_registry_artifact`, with ``look_first``), else ``make()``'s artifact attached — made at
    most once, and only if some repository lacks one (an SBOM costs far more to render than to look up).
    Returns (``registry/repo``, result, the artifact blob's descriptor) per repository."""
    from nixfly.registry.client import RegistryClient
    from nixfly.registry.reference import parse_reference

    repos: dict[tuple[str, str], None] = {}
    for r in refs:
        ref = parse_reference(r) if isinstance(r, str) else r
        repos.setdefault((ref.registry, ref.repository), None)
    out: list[tuple[str, AttachResult, Descriptor]] = []
    given = dict(clients or {})  # the caller's: kept open
    mine: dict[str, RegistryClient] = {}
    made: list[Artifact] = []
    try:
        for registry, repo in repos:
            client = given.get(registry) or mine.get(registry) or mine.setdefault(
                registry, RegistryClient(registry, options)
            )
            found = find_registry_artifact(client, repo, subject_digest, artifact_type, match) if look_first else None
            if found is not None:
                out.append((f"{registry}/{repo}", *found))
                continue
            if not made:
                made.append(make())
            art = made[0]
            out.append((f"{registry}/{repo}", attach_to_registry(client, repo, art), art.blob_descriptor))
    finally:
        for c in mine.values():
            c.close()
    return out


def fetch_registry_artifact(client: RegistryClient, repo: str, ref: Referrer, subject_digest: str) -> bytes:
    """The blob an artifact manifest carries, checked: the manifest names ``subject_digest`` as its subject
    and every byte matches its digest."""
    m = client.get_manifest(repo, ref.digest, accept=OCI_MANIFEST)
    return _artifact_blob(m.json(), subject_digest, f"{repo}@{ref.digest}",
                          lambda d: client.get_blob_bytes(repo, d, max_size=_MAX_ARTIFACT))  # fmt: skip


def _artifact_blob(manifest: dict[str, Any], subject_digest: str, where: str, read: Any) -> bytes:
    subj = manifest.get("subject")
    if not isinstance(subj, dict) or subj.get("digest") != subject_digest:
        raise ImageError(f"{where}: the artifact's subject is not {subject_digest}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise ImageError(f"{where}: an SBOM artifact has exactly one layer")
    digest = check_digest(str(layers[0].get("digest", "")))
    data: bytes = read(digest)
    if sha256_digest(data) != digest or len(data) != layers[0].get("size"):
        raise ImageError(f"{where}: the artifact blob does not match its descriptor")
    return data


# -- OCI layouts ------------------------------------------------------------------------------------


ARTIFACT_BLOB_MAX = 64 << 20  # an SBOM of a large closure is a few MiB


def _layout_blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest_hex(digest)


def _read_layout_index(root: Path) -> dict[str, Any]:
    from nixfly.sources.layout import read_index

    return read_index(root)


def attach_to_layout(root: Path, artifact: Artifact) -> AttachResult:
    """Add ``artifact`` to the layout at ``root`` as a referrer of its subject (already in the layout).
    An earlier referrer of the same subject and type is replaced."""
    subject = artifact.subject.digest
    if not _layout_blob(root, subject).is_file():
        raise ImageError(f"{root}: the image {subject} is not in the layout")
    manifest = artifact.manifest_bytes()
    for data in (EMPTY_BLOB, artifact.blob, manifest):
        p = _layout_blob(root, sha256_digest(data))
        if not p.exists():
            atomic_write_bytes(p, data)
    entry = artifact.descriptor_json()
    entry["subject"] = artifact.subject.to_json()

    def attach(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = [
            e for e in entries
            if not (isinstance(e.get("subject"), dict) and e["subject"].get("digest") == subject
                    and e.get("artifactType") == artifact.artifact_type)
        ]  # fmt: skip
        return [*keep, entry]

    edit_layout_index(root, attach)  # under the lock write_layout takes: a concurrent tag is kept
    return AttachResult(artifact.digest, "layout")


def list_layout_referrers(root: Path, subject_digest: str) -> list[Referrer]:
    idx = _read_layout_index(root)
    entries = [
        e for e in idx["manifests"]
        if isinstance(e, dict) and isinstance(e.get("subject"), dict) and e["subject"].get("digest") == subject_digest
    ]  # fmt: skip
    return _referrers_from_index(canonical_json({"manifests": entries}), str(root))


def fetch_layout_artifact(root: Path, ref: Referrer, subject_digest: str) -> bytes:
    return _fetch_layout_artifact(root, ref, subject_digest)[1]


def _fetch_layout_artifact(root: Path, ref: Referrer, subject_digest: str) -> tuple[dict[str, Any], bytes]:
    """The artifact's manifest and its one blob, each read once (bounded) and checked against its digest."""
    where = f"{root}@{ref.digest}"

    def read(digest: str, limit: int = ARTIFACT_BLOB_MAX) -> bytes:
        try:
            return read_regular(_layout_blob(root, digest), limit, f"{where}: blob {digest}", ImageError)
        except OSError:
            raise ImageError(f"{where}: blob {digest} is missing from the layout") from None

    raw = read(ref.digest, MANIFEST_MAX)
    if sha256_digest(raw) != ref.digest:
        raise ImageError(f"{where}: the artifact manifest does not match its digest")
    try:
        manifest = load_json(raw)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{where}: the artifact manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise ImageError(f"{where}: the artifact manifest is not a JSON object")
    return manifest, _artifact_blob(manifest, subject_digest, where, read)


def layout_artifacts(root: Path, subject_digest: str) -> list[Artifact]:
    """The referrers of ``subject_digest`` in a layout that have the shape :class:`Artifact` writes (empty
    config, one layer, ``subject``), each read back and checked against its digests."""
    out = []
    for ref in list_layout_referrers(root, subject_digest):
        manifest, blob = _fetch_layout_artifact(root, ref, subject_digest)
        subj, ann = manifest.get("subject") or {}, manifest.get("annotations")
        try:
            art = Artifact(
                str(manifest.get("artifactType") or ""), blob,
                Descriptor(str(subj.get("mediaType")), str(subj.get("digest")), int(subj.get("size", -1))),
                {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else None,
            )  # fmt: skip
        except (TypeError, ValueError, AttributeError):
            continue
        if art.artifact_type and art.digest == ref.digest:
            out.append(art)
    return out


def pick(refs: Sequence[Referrer], artifact_type: str) -> Referrer | None:
    """The referrer of ``artifact_type`` to use: the newest by ``created``, then the highest digest."""
    hits = [r for r in refs if r.artifact_type == artifact_type]
    if not hits:
        return None
    return max(hits, key=lambda r: ((r.annotations or {}).get(CREATED, ""), r.digest))


def carry_layout_referrers(
    root: Path, source_digest: str, pushed_digest: str, refs: Sequence[str | Reference], options: RegistryOptions,
    clients: Mapping[str, RegistryClient] | None = None,
) -> list[str]:  # fmt: skip
    """After ``nixfly push oci:DIR``: attach the layout's referrers of the image (its SBOM) in the
    registry too. A push that changed the manifest (another format) cannot: the SBOM names the layout's
    digest. Returns notes for the user."""
    arts = layout_artifacts(root, source_digest)
    if not arts:
        return []
    if pushed_digest != source_digest:
        return [f"the layout's SBOM describes {source_digest}, but the push wrote {pushed_digest} (another "
                "manifest format), so it is not attached; nixfly build --push attaches one that matches"]  # fmt: skip
    notes = []
    for art in arts:
        try:
            done = attach_to_references(refs, art, options, clients)
        except NixflyError as e:  # the image is pushed: say so
            raise NixflyError(f"pushed {pushed_digest}, but attaching its {art.artifact_type} failed: {e}") from None
        notes += [f"attached {art.artifact_type} {r.digest} to {repo} ({r.tag or r.method})" for repo, r in done]
    return notes


__all__ = [
    "EMPTY_DESCRIPTOR",
    "Artifact",
    "AttachResult",
    "Referrer",
    "attach_once",
    "attach_to_layout",
    "attach_to_references",
    "attach_to_registry",
    "carry_layout_referrers",
    "fallback_tag",
    "fetch_layout_artifact",
    "fetch_registry_artifact",
    "find_registry_artifact",
    "is_fallback_tag",
    "layout_artifacts",
    "list_layout_referrers",
    "list_registry_referrers",
    "pick",
]
