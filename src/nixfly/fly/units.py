"""Units as flyctl reads them in fly.toml: Go durations (parsed by :mod:`nixfly.godur`), memory and volume sizes,
VM size presets."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, NamedTuple

from nixfly.godur import go_timedelta
from nixfly.godur import parse_go_duration as parse_go_duration  # fly.toml's durations: the one parser


def go_duration_string(d: timedelta) -> str:
    """Format like Go's ``time.Duration.String()`` ("15s", "1m30s", "1.5s", "500ms", "1h0m0s"), which is
    the form the Machines API and flyctl exchange durations in."""
    ns = round(d.total_seconds() * 1_000_000) * 1000
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{frac(rest, 1_000_000_000)}s"


def duration(value: Any, int_unit: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like '10s', not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return go_timedelta(value, milliseconds=value) if int_unit == "ms" else go_timedelta(value, seconds=value)
    if isinstance(value, str):
        return parse_go_duration(value)
    raise ValueError("expected a duration like '10s'")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_BINARY_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_memory_mb(value: int | str) -> int:
    """Memory as flyctl reads it: an integer or unitless string is MiB; "512mb", "1gb", "2GiB" use binary
    multiples (so "1gb" is 1024). Raise ValueError for anything else or for less than 1 MiB."""
    if isinstance(value, bool):
        raise ValueError("memory must be a number of MB or a size like '512mb'")
    if isinstance(value, int):
        mb = value
    else:
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a memory size like 512, '512mb' or '1gb'")
        number, unit = float(m.group(1)), m.group(2).lower()
        if not unit and m.group(3) is None:
            mb_f = number
        elif not unit:
            mb_f = number / (1024 * 1024)  # plain bytes
        else:
            mb_f = number * 1024 ** _BINARY_POWER[unit] / 1024**2
        mb = int(mb_f)
    if mb < 1:
        raise ValueError(f"memory {value!r} is less than 1 MB")
    return mb


def parse_size_gb(value: int | str) -> int:
    """Volume sizes ("10gb", "1GB", 3): decimal units as flyctl's go-units FromHumanSize, whole GB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a size like '10gb'")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit and m.group(3) is None:
        return int(number)
    return int(number * 1000 ** _BINARY_POWER[unit] / 1000**3)


class VmPreset(NamedTuple):
    cpu_kind: str
    cpus: int
    memory_mb: int
    gpu_kind: str | None = None
    gpus: int = 0


# VM size presets: name → guest. fly-go's MachinePresets table (machine_types.go), every entry: shared
# CPUs come with 256 MB each, performance CPUs with 2048 MB each, the GPU sizes with 8 performance CPUs,
# 32 GB and one GPU of their kind.
VM_SIZES: dict[str, VmPreset] = {
    **{f"shared-cpu-{n}x": VmPreset("shared", n, 256 * n) for n in (1, 2, 4, 6, 8)},
    **{f"performance-{n}x": VmPreset("performance", n, 2048 * n) for n in (1, 2, 4, 6, 8, 10, 12, 14, 16)},
    "a100-40gb": VmPreset("performance", 8, 32768, "a100-pcie-40gb", 1),
    "a100-80gb": VmPreset("performance", 8, 32768, "a100-sxm4-80gb", 1),
    "l40s": VmPreset("performance", 8, 32768, "l40s", 1),
    "a10": VmPreset("performance", 8, 32768, "a10", 1),
}
DEFAULT_VM_SIZE = "shared-cpu-1x"  # fly-go DefaultVMSize
DEFAULT_GPU_VM_SIZE = "performance-8x"  # fly-go DefaultGPUVMSize: a [[vm]] with gpu_kind and no size
