"""Advice about the largest store paths where it is obvious (headers, documentation, static libraries,
a compiler in a runtime image), each naming the chain that pulls the path in.
"""

from __future__ import annotations

import re

from nixfly.fsutil import human_size
from nixfly.inspect.report import InspectReport, store_name

_GCC = re.compile(r"^gcc-\d[\w.]*$")
SUGGEST_MIN = 64 << 10  # store paths smaller than this are not worth advice


def suggest(report: InspectReport) -> tuple[str, ...]:
    """Advice about the largest store paths where it is obvious: headers (a .dev output), documentation,
    static libraries, a compiler in a runtime closure — each naming the chain that pulls the path in."""
    out: list[str] = []
    for p in report.largest:
        if p.size < SUGGEST_MIN:
            continue
        kinds = dict(p.kinds)
        via = f", pulled in through {' → '.join(store_name(c) for c in p.chain)}" if len(p.chain) > 1 else ""
        what = f"{p.name} ({human_size(p.size)}{via})"
        half = p.size / 2
        if _GCC.match(p.name):
            out.append(
                f"{what} is a compiler in a runtime image: usually a build-time path left in a binary or a "
                "script; strip it, or forbid it with disallowedReferences / remove-references-to"
            )
        elif p.name.endswith("-dev") or kinds.get("headers", 0) > half:
            out.append(f"{what} is mostly headers: consider `.out` instead of `.dev` for what needs it at run time")
        elif p.name.endswith(("-doc", "-man", "-info", "-devdoc")) or kinds.get("docs", 0) > half:
            out.append(f"{what} is mostly documentation: depend on the package's `.out` (or `.bin`) output instead")
        elif kinds.get("static-libs", 0) > half:
            out.append(f"{what} is mostly static libraries (*.a), used for linking, not running: use the output "
                       "with the shared libraries instead")  # fmt: skip
    return tuple(out)
