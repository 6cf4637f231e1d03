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
