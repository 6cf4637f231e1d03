"""The platform guard: the roots' executables must run on the image's platform.

Reads the first bytes of each regular file directly in a root's ``bin/`` (and ``sbin/``): an ELF whose
machine is not the image's architecture, or any Mach-O (macOS) executable, is an error naming the file.
Scripts and other files are not judged. The entries come from disk or from a NAR alike.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nixfly.build.tarwriter import REGULAR, TreeEntry
from nixfly.errors import NixflyError

HEAD = 64

# ELF e_machine → OCI architecture
_ELF_MACHINES = {
    0x03: "386",
    0x08: "mips",
    0x14: "ppc",
    0x15: "ppc64",
    0x16: "s390x",
    0x28: "arm",
    0x3E: "amd64",
    0xB7: "arm64",
    0xF3: "riscv64",
    0x102: "loong64",
}
# Mach-O cputype → name
_MACHO_CPUS = {0x01000007: "x86_64", 0x0100000C: "arm64", 7: "i386", 12: "arm", 0x0200000C: "arm64_32"}
_NIX_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "arm": "armv7l", "riscv64": "riscv64"}


class PlatformError(NixflyError):
    """A root's executable would not run on the image's platform."""


@dataclass(frozen=True)
class Executable:
    format: str  # "elf" | "mach-o"
    arch: str  # OCI architecture for ELF, Mach-O cpu name otherwise


def identify(head: bytes) -> Executable | None:
    """What the first bytes of a file say it is: an ELF (with its architecture), a Mach-O, or None."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        fmt = "<H" if head[5] == 1 else ">H"
        machine: int = struct.unpack(fmt, head[18:20])[0]
        return Executable("elf", _ELF_MACHINES.get(machine, f"machine {machine:#x}"))
    if len(head) >= 8:
        magic_le = struct.unpack("<I", head[:4])[0]
        magic_be = struct.unpack(">I", head[:4])[0]
        if magic_le in (0xFEEDFACE, 0xFEEDFACF):
            cpu = struct.unpack("<I", head[4:8])[0]
            return Executable("mach-o", _MACHO_CPUS.get(cpu, f"cpu {cpu:#x}"))
        if magic_be in (0xFEEDFACE, 0xFEEDFACF):
            cpu = struct.unpack(">I", head[4:8])[0]
            return Executable("mach-o", _MACHO_CPUS.get(cpu, f"cpu {cpu:#x}"))
        if magic_be in (0xCAFEBABE, 0xCAFEBABF):
            # A universal binary has a small arch count; a Java class file (same magic) has a version >= 45.
            nfat = struct.unpack(">I", head[4:8])[0]
            if 0 < nfat < 45:
                cpus = []
                for i in range(min(nfat, (len(head) - 8) // 20)):
                    cpu = struct.unpack(">I", head[8 + 20 * i : 12 + 20 * i])[0]
                    cpus.append(_MACHO_CPUS.get(cpu, f"cpu {cpu:#x}"))
                return Executable("mach-o", "universal " + "+".join(cpus) if cpus else "universal")
    return None


def _hint(arch: str, os_name: str) -> str:
    return f"{_NIX_ARCH.get(arch, arch)}-{os_name}"


def check_executable(path: str, head: bytes, arch: str, os_name: str) -> None:
    exe = identify(head)
    if exe is None:
        return
    want = f"{os_name}/{arch}"
    hint = f"evaluate the installable for {_hint(arch, os_name)} (e.g. .#packages.{_hint(arch, os_name)}.app)"
    if exe.format == "mach-o" and os_name != "darwin":
        raise PlatformError(f"{path} is a Mach-O {exe.arch} executable; this image is {want} — {hint}")
    if exe.format == "elf" and exe.arch != arch:
        raise PlatformError(f"{path} is an ELF {exe.arch} executable; this image is {want} — {hint}")


def is_bin_entry(root_name: bytes, name: bytes) -> bool:
    """Whether ``name`` is a file directly in the root's bin/ or sbin/."""
    for d in (b"/bin/", b"/sbin/"):
        prefix = root_name + d
        if name.startswith(prefix) and b"/" not in name[len(prefix) :]:
            return True
    return False


def check_entries(
    root: str, entries: Iterable[TreeEntry], arch: str, os_name: str, read_head: Callable[[TreeEntry], bytes]
) -> None:
    """Check every regular file in ``root``'s bin/ among ``entries`` (records named after ``root``)."""
    root_name = root.strip("/").encode()
    for e in entries:
        if e.type == REGULAR and is_bin_entry(root_name, e.name):
            check_executable("/" + os.fsdecode(e.name), read_head(e), arch, os_name)


def check_local_root(root: str, arch: str, os_name: str) -> None:
    """Check a root on disk: the regular files (not symlinks) directly in its bin/ and sbin/."""
    for d in ("bin", "sbin"):
        full = os.path.join(root, d)
        if os.path.islink(full) or not os.path.isdir(full):
            continue
        for name in sorted(os.listdir(full)):
            p = os.path.join(full, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                with open(p, "rb") as f:
                    head = f.read(HEAD)
            except OSError as e:
                raise PlatformError(f"cannot read {p}: {e.strerror}") from None
            check_executable(p, head, arch, os_name)
