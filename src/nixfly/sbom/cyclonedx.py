"""CycloneDX 1.6 JSON through ``cyclonedx-python-lib``: its model, its serializer, its schema validator.

The image is ``metadata.component`` (type container, ``bom-ref`` = the manifest digest) and depends on the
roots; each store path is a component (``bom-ref`` = the store path, SHA-256 = NarHash, NarSize and the
deriver as ``nix:`` properties) depending on the store paths it references; each non-Nix entry of the
image is a ``file`` component (path only). The serial number is derived from the image digest and the
timestamp is the image's ``created``, so the same image gives the same bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from nixfly import __version__
from nixfly.errors import NixflyError
from nixfly.sbom.model import Sbom

# A fixed namespace for the serial number: uuid5(this, manifest digest).
SERIAL_NAMESPACE = uuid.UUID("6f1c6d2e-3a59-5b8e-9d0e-6e69786679a1")


class SbomValidationError(NixflyError):
    pass


def _created(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise NixflyError(f"the image's created time {text!r} is not an RFC 3339 time") from None
    return dt.astimezone(UTC).replace(microsecond=0)


def serial_number(digest: str) -> uuid.UUID:
    return uuid.uuid5(SERIAL_NAMESPACE, digest)


def to_cyclonedx(sbom: Sbom, validate: bool = False) -> bytes:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.output.json import JsonV1Dot6

    subj = sbom.subject
    hexdigest = subj.digest.split(":", 1)[1]
    image_props = [
        Property(name="nixfly:version", value=__version__),
        Property(name="oci:manifest.mediaType", value=subj.media_type),
        Property(name="oci:manifest.size", value=str(subj.size)),
        Property(name="nixfly:sbom.source", value=sbom.source),
    ]
    image_props += [Property(name="nixfly:note", value=n) for n in sbom.notes]
    image = Component(
        name=subj.name or "image",
        version=subj.digest,
        type=ComponentType.CONTAINER,
        bom_ref=subj.digest,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)],
        properties=image_props,
    )
    bom = Bom(serial_number=serial_number(subj.digest), metadata=BomMetaData(timestamp=_created(sbom.created),
                                                                            component=image))  # fmt: skip
    comps: dict[str, Component] = {}
    for p in sbom.packages:
        props = [Property(name="nix:storePath", value=p.path)]
        if p.nar_size is not None:
            props.append(Property(name="nix:narSize", value=str(p.nar_size)))
        if p.deriver:
            props.append(Property(name="nix:deriver", value=p.deriver))
        if p.root:
            props.append(Property(name="nixfly:root", value="true"))
        c = Component(
            name=p.name,
            version=p.version or None,
            type=ComponentType.APPLICATION if p.root else ComponentType.LIBRARY,
            bom_ref=p.path,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=p.nar_hash)] if p.nar_hash else [],
            properties=props,
        )
        comps[p.path] = c
        bom.components.add(c)
    for f in sbom.files:
        bom.components.add(
            Component(
                name=f.path,
                type=ComponentType.FILE,
                bom_ref=f"file:{f.path}",
                properties=[Property(name="nixfly:kind", value=f.kind), Property(name="nixfly:origin", value=f.origin)],
            )
        )
    # One Dependency per component, built at once (Bom.register_dependency scans the whole set per call).
    graph = [Dependency(ref=image.bom_ref, dependencies=[Dependency(ref=comps[r].bom_ref) for r in sbom.roots])]
    for p in sbom.packages:
        refs = [Dependency(ref=comps[r].bom_ref) for r in p.references if r in comps]
        graph.append(Dependency(ref=comps[p.path].bom_ref, dependencies=refs))
    bom.dependencies = graph
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    problems = validate_cyclonedx(text.encode()) if validate else []
    if problems:
        raise SbomValidationError(f"the CycloneDX document is not valid: {problems[0]}")
    return (text + "\n").encode()


def validate_cyclonedx(data: bytes) -> list[str]:
    """Check CycloneDX 1.6 JSON against the schema with cyclonedx-python-lib's strict validator."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        text = data.decode()
    except UnicodeDecodeError:
        return ["not UTF-8"]
    err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return [] if err is None else [str(err.data)[:500] if hasattr(err, "data") else str(err)]
