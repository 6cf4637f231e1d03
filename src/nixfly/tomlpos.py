"""Where keys are written in a TOML document: one position tracker for fly.toml and nixfly.toml errors.

:mod:`tomllib` keeps no positions, so :class:`TomlPositions` scans the text for table headers
(``[a.b]``, ``[[a.b]]``) and keys (bare, quoted, dotted) and remembers the line where each key path
starts. Paths are tuples of keys and array-of-tables indices, e.g. ``("services", 0, "ports", 1)``.
Inline tables and values spread over several lines resolve to the line of the key that holds them,
which is where a reader would look anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]

_HEADER_AOT = re.compile(r"^\s*\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_PART_RE = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_KEY = re.compile(rf"^\s*((?:{_KEY_PART_RE})(?:\s*\.\s*(?:{_KEY_PART_RE}))*)\s*=")
_KEY_PART = re.compile(_KEY_PART_RE)


def key_parts(dotted: str) -> list[str]:
    """The keys of a dotted TOML key (``a."b.c".d`` → ``["a", "b.c", "d"]``)."""
    out = []
    for m in _KEY_PART.finditer(dotted):
        part = m.group(0)
        if part.startswith('"'):
            part = json.loads(part)
        elif part.startswith("'"):
            part = part[1:-1]
        out.append(part)
    return out


def dotted_path(key: str) -> KeyPath:
    """A ``a.b.0.c`` style key (as nixfly.toml errors name them) as a key path; digits are indices."""
    return tuple(int(p) if p.isdigit() else p for p in key.split(".") if p)


class TomlPositions:
    """Line numbers of the key paths written in one TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        aot_count: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_multiline: str | None = None

        def concrete(parts: Sequence[str]) -> KeyPath:
            out: list[str | int] = []
            for p in parts:
                out.append(p)
                n = aot_count.get(tuple(out))
                if n:
                    out.append(n - 1)
            return tuple(out)

        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if m := _HEADER_AOT.match(line):
                parts = key_parts(m.group(1))
                parent = concrete(parts[:-1])
                key = (*parent, parts[-1])
                idx = aot_count.get(key, 0)
                aot_count[key] = idx + 1
                table = (*key, idx)
                self._lines.setdefault(key, lineno)
                self._lines[table] = lineno
                continue
            if m := _HEADER.match(line):
                table = concrete(key_parts(m.group(1)))
                self._lines.setdefault(table, lineno)
                continue
            if m := _KEY.match(line):
                path = (*table, *key_parts(m.group(1)))
                self._lines.setdefault(path, lineno)
                rest = line[m.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def line_of(self, loc: KeyPath) -> int | None:
        """The line where the deepest known prefix of ``loc`` is written, or None."""
        for n in range(len(loc), 0, -1):
            line = self._lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return None

    def exact_line(self, loc: KeyPath) -> int | None:
        """The line where exactly ``loc`` is written, or None."""
        return self._lines.get(tuple(loc))
