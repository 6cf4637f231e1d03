"""Platforms in OCI terms (``linux/amd64``) and the mapping from machine / Nix system names to them."""

from __future__ import annotations

import platform as _platform

# Machine names (uname -m, the first part of a Nix system) → Go/OCI architecture names.
_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386", "i386": "386",
    "armv7l": "arm", "armv6l": "arm", "riscv64": "riscv64", "powerpc64le": "ppc64le", "s390x": "s390x",
}  # fmt: skip


def goarch(machine: str) -> str:
    """The OCI architecture for a machine name (``x86_64`` → ``amd64``); unknown names pass through."""
    m = machine.lower()
    return _GOARCH.get(m, m)


def nix_system_platform(system: str) -> tuple[str, str]:
    """(architecture, os) of a Nix system string (``aarch64-linux`` → ``("arm64", "linux")``)."""
    arch, _, os_name = system.partition("-")
    return goarch(arch), os_name


def host_platform() -> str:
    """``os/arch`` of this machine in OCI terms (``linux/amd64``)."""
    return "linux/" + goarch(_platform.machine())


def parse_platform(text: str, where: str = "platform") -> tuple[str, str, str | None]:
    """(os, architecture, variant) of ``os/arch[/variant]`` (``linux/arm64``, ``linux/arm/v7``); architecture
    names are normalised (``linux/x86_64`` → ``linux/amd64``). Anything else is a UsageError naming ``where``."""
    from nixfly.errors import UsageError

    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(p and p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise UsageError(f"{where}: {text!r} is not a platform such as linux/amd64 or linux/arm64")
    return parts[0].lower(), goarch(parts[1]), (parts[2].lower() if len(parts) == 3 else None)


def platform_string(os_name: str, arch: str, variant: str | None = None) -> str:
    """``os/arch[/variant]``."""
    return f"{os_name}/{arch}" + (f"/{variant}" if variant else "")


def normalise_platform(text: str, where: str = "platform") -> str:
    """``text`` as the canonical ``os/arch[/variant]`` string."""
    return platform_string(*parse_platform(text, where))


def descriptor_platform(platform: object) -> str | None:
    """``os/arch[/variant]`` of an index entry's ``platform`` object, or None when it has none."""
    if not isinstance(platform, dict) or not platform.get("os") or not platform.get("architecture"):
        return None
    variant = platform.get("variant")
    arch = goarch(str(platform["architecture"]))
    return platform_string(str(platform["os"]), arch, str(variant) if variant else None)


def platform_matches(have: str | None, want: str) -> bool:
    """Whether an entry for ``have`` serves ``want``: os and arch equal, and the variant too when ``want``
    names one (``linux/arm64`` accepts ``linux/arm64/v8``)."""
    if have is None:
        return False
    h, w = have.split("/"), want.split("/")
    return h[:2] == w[:2] and (len(w) < 3 or (len(h) == 3 and h[2] == w[2]) or (w[2:] == ["v8"] and len(h) == 2))


def choose_platform(entries: list[dict[str, object]], want: str) -> dict[str, object] | None:
    """The first index entry (a descriptor dict) whose platform serves ``want`` (entries without a platform,
    e.g. attestation manifests, are never chosen)."""
    for e in entries:
        if platform_matches(descriptor_platform(e.get("platform")), want):
            return e
    return None


def entry_platforms(entries: list[dict[str, object]]) -> list[str]:
    """The platforms an index offers (sorted, without entries that name none)."""
    return sorted({p for e in entries if (p := descriptor_platform(e.get("platform"))) is not None})
