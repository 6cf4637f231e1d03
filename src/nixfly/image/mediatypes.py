"""OCI and Docker media types, and the mapping between the two manifest formats."""

from __future__ import annotations

from typing import Literal

from nixfly.errors import UsageError

ManifestFormat = Literal["oci", "v2s2"]
Compression = Literal["gzip", "zstd", "none"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

_LAYER_TYPES: dict[tuple[ManifestFormat, Compression], str] = {
    ("oci", "gzip"): OCI_LAYER_GZIP,
    ("oci", "zstd"): OCI_LAYER_ZSTD,
    ("oci", "none"): OCI_LAYER,
    ("v2s2", "gzip"): DOCKER_LAYER_GZIP,
    ("v2s2", "none"): DOCKER_LAYER,
}

DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDIST_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDIST_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDIST_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

_COMPRESSION_OF: dict[str, Compression] = {v: k[1] for k, v in _LAYER_TYPES.items()}
# Layer types other tools write: still tar streams we can read, carried through unchanged.
_COMPRESSION_OF.update({
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
    OCI_NONDIST_LAYER: "none",
    OCI_NONDIST_LAYER_GZIP: "gzip",
    OCI_NONDIST_LAYER_ZSTD: "zstd",
})  # fmt: skip

# The same kind of layer described for the other manifest format.
_OTHER_FORMAT: dict[str, str] = {
    OCI_LAYER_GZIP: DOCKER_LAYER_GZIP,
    OCI_LAYER: DOCKER_LAYER,
    OCI_NONDIST_LAYER_GZIP: DOCKER_FOREIGN_LAYER_GZIP,
}
_OTHER_FORMAT.update({v: k for k, v in list(_OTHER_FORMAT.items())})


def manifest_type(fmt: ManifestFormat) -> str:
    return OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST


def config_type(fmt: ManifestFormat) -> str:
    return OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG


def layer_type(fmt: ManifestFormat, compression: Compression) -> str:
    try:
        return _LAYER_TYPES[(fmt, compression)]
    except KeyError:
        raise UsageError(
            "zstd layers cannot be described by a Docker v2s2 manifest; use --format oci or --compression gzip"
        ) from None


def compression_of(media_type: str) -> Compression:
    """The compression a layer media type declares; unknown types are an error."""
    try:
        return _COMPRESSION_OF[media_type]
    except KeyError:
        raise UsageError(f"unsupported layer media type {media_type!r}") from None


def layer_type_for(media_type: str, fmt: ManifestFormat) -> str:
    """``media_type`` as the manifest format ``fmt`` names it; an error when ``fmt`` has no such type."""
    is_docker = media_type.startswith("application/vnd.docker.")
    if is_docker == (fmt == "v2s2"):
        return media_type
    other = _OTHER_FORMAT.get(media_type)
    if other is None:
        if compression_of(media_type) == "zstd":
            return layer_type(fmt, "zstd")  # the usage error that explains zstd and v2s2
        raise UsageError(f"layer media type {media_type!r} has no equivalent in a {fmt} manifest")
    return other


def format_of_manifest(media_type: str) -> ManifestFormat:
    if media_type == OCI_MANIFEST:
        return "oci"
    if media_type == DOCKER_MANIFEST:
        return "v2s2"
    raise UsageError(f"unsupported manifest media type {media_type!r}")
