"""``nixfly sbom``: the SBOM of an image that is already built or pushed.

The SBOM attached to the image (an OCI referrer in the registry or layout) is fetched and printed as it
is; without one, it is derived from the image's layers (see :func:`nixfly.sbom.from_image`) and what that
cannot know is said on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from nixfly.cli.app import cli
from nixfly.cli.common import registry_options, transport_options
from nixfly.errors import UsageError
from nixfly.transports import Location, parse_location


def _location(text: str) -> Location:
    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
        raise UsageError(f"{text}: no such file or directory (a registry image is written docker://REF)")
    loc = parse_location(text, bare_paths=True)
    if loc.caps.stdio:
        raise UsageError("nixfly sbom reads an image from a file, layout or registry, not from stdin")
    return loc


def _attached(loc: Location, digest: str, media_type: str, o: dict[str, Any]) -> bytes | None:
    """The attached SBOM of ``media_type`` for the image ``digest``, or None when there is none."""
    from nixfly.sinks import open_referrers
    from nixfly.sinks.referrers import pick

    with open_referrers(loc, registry_options(o) if loc.ref is not None else None) as store:
        ref = None if store is None else pick(store.list(digest), media_type)
        return None if store is None or ref is None else store.fetch(ref, digest)


@cli.command()
@click.argument("image")
@click.option("--format", "fmt", type=click.Choice(["spdx", "cyclonedx"]), default="spdx", show_default=True,
              help="SBOM format: SPDX 2.3 JSON or CycloneDX 1.6 JSON.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (default stdout).")
@click.option("--from-layers", is_flag=True, help="Derive it from the layers even when one is attached.")
@click.option("--validate", is_flag=True, help="Check it with the format's own validator.")
@transport_options()
def sbom(image: str, fmt: str, output: Path | None, from_layers: bool, validate: bool, **o: Any) -> None:
    """Print the SBOM of IMAGE (oci:DIR[:TAG], docker-archive:FILE, docker://REF, or a bare path).

    The SBOM attached when the image was built (an OCI referrer) is returned byte for byte. Without one,
    it is derived from the image's layers: store paths and references by scanning, NarHash, NarSize and
    derivers from the local Nix store when it holds those paths."""
    from nixfly.sbom import MEDIA_TYPES, SbomFormat, from_image, render, subject_of
    from nixfly.sources import open_image

    loc = _location(image)
    img = open_image(loc, registry_options(o) if loc.ref is not None else None)
    sbom_fmt: SbomFormat = "cyclonedx" if fmt == "cyclonedx" else "spdx"
    subject = subject_of(img)
    data = None if from_layers else _attached(loc, subject.digest, MEDIA_TYPES[sbom_fmt], o)
    if data is not None:
        click.echo(f"nixfly: the {fmt} SBOM attached to {subject.digest}", err=True)
    else:
        derived = from_image(img, subject)
        for note in derived.notes:
            click.echo(f"note: {note}", err=True)
        data = render(derived, sbom_fmt)
    if validate:
        from nixfly.errors import NixflyError

        if sbom_fmt == "spdx":
            from nixfly.sbom.spdx import validate_spdx as check
        else:
            from nixfly.sbom.cyclonedx import validate_cyclonedx as check
        problems = check(data)
        if problems:
            raise NixflyError(f"the {fmt} SBOM of {subject.digest} is not valid: {problems[0]}"
                              + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
        click.echo(f"nixfly: valid {fmt} SBOM ({len(data)} bytes)", err=True)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from nixfly.fsutil import atomic_write_bytes

    try:
        atomic_write_bytes(output, data)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
