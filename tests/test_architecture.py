"""docs/ARCHITECTURE.md held to the code: every ``import`` of ``src/nixfly`` — at module level, inside
functions and under ``if TYPE_CHECKING`` alike, since a lazy import is still a dependency — read with
``ast``; no cycle between modules, none between packages, and no package importing one the page does not
let it import (cli → services → core; a core package only the ones to its left)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Every package may use these (the page's "plus errors, fsutil, transports" and its shared helpers;
# ``nixfly`` is the package root, for ``__version__``).
SHARED = frozenset(
    {"nixfly", "errors", "fsutil", "transports", "retry", "limits", "tomlpos", "flytoken", "nixbase32", "godur"}
)

# Cycles known today, each to be removed by the change named beside it (and then deleted here: the test
# below fails when an entry is no longer needed).
KNOWN_CYCLES: list[list[str]] = []

# What each package may import besides SHARED, as docs/ARCHITECTURE.md says it ("Imports …" per package).
ALLOWED: Mapping[str, frozenset[str]] = {
    "image": frozenset(),
    "registry": frozenset({"image"}),
    "build": frozenset({"image"}),
    "sources": frozenset({"image", "registry", "build"}),
    "sinks": frozenset({"image", "registry", "sources"}),
    "sbom": frozenset({"build", "image", "sinks", "registry", "inspect"}),
    "inspect": frozenset({"image"}),
    "fly": frozenset({"registry", "image"}),
    "run": frozenset({"image", "sources", "registry", "build", "fly"}),
    "diff": frozenset({"image", "sources", "sinks", "registry", "sbom", "build", "fly"}),
    "services": frozenset({"image", "registry", "build", "sources", "sinks", "sbom"}),
    "cli": frozenset(
        {"services", "image", "registry", "build", "sources", "sinks", "sbom", "inspect", "fly", "run", "diff"}
    ),
    "__main__": frozenset({"cli"}),
    # the shared helpers themselves
    "errors": frozenset(),
    "nixbase32": frozenset(),
    "godur": frozenset(),
    "fsutil": frozenset(),
    "flytoken": frozenset(),
    "limits": frozenset(),
    "retry": frozenset(),
    "tomlpos": frozenset(),
    "transports": frozenset({"image", "registry"}),
}


def modules(root: Path = SRC) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted((root / "nixfly").rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def imports_of(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """The nixfly modules ``path`` imports anywhere in its body (``from a.b import c`` names the module
    ``a.b.c`` when that is one, else ``a.b``)."""
    known = set(known)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t == "nixfly" or t.startswith("nixfly."):
                r = resolve(t)
                if r is not None and r != name:
                    found.add(r)
    return found


def graph(root: Path = SRC) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports_of(p, m, mods) for m, p in mods.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nixfly"


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, sorted(edges.get(w, ()))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def package_graph(edges: Mapping[str, set[str]]) -> dict[str, set[str]]:
    pkgs: dict[str, set[str]] = {}
    for a, bs in edges.items():
        pa = package_of(a)
        pkgs.setdefault(pa, set()).update(package_of(b) for b in bs if package_of(b) != pa)
    return pkgs


def layering_violations(edges: Mapping[str, set[str]]) -> list[str]:
    bad = []
    for a, bs in sorted(edges.items()):
        pa = package_of(a)
        allowed = ALLOWED.get(pa)
        for b in sorted(bs):
            pb = package_of(b)
            if pb == pa or pb in SHARED:
                continue
            if allowed is None or pb not in allowed:
                bad.append(f"{a} imports {b} ({pa} → {pb} is not in docs/ARCHITECTURE.md's rules)")
    return bad


def test_no_import_cycle_between_modules() -> None:
    found = [c for c in cycles(graph()) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles: {found}"


def test_known_cycles_are_still_there() -> None:
    assert [c for c in KNOWN_CYCLES if c not in cycles(graph())] == []


def test_no_import_cycle_between_packages() -> None:
    found = cycles(package_graph(graph()))
    assert not found, f"package cycles: {found}"


def test_imports_follow_the_layering() -> None:
    assert layering_violations(graph()) == []


def test_every_package_is_in_the_rules() -> None:
    pkgs = {package_of(m) for m in modules()}
    assert pkgs - set(ALLOWED) - {"nixfly"} == set()


# The checker must catch what it is for: a cycle hidden in function-level and TYPE_CHECKING imports, a relative
# import, and a core package reaching up to the CLI.
def test_checker_sees_hidden_cycles_and_upward_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "nixfly"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "image").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "image" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                               "    from nixfly.cli.a import x\n")  # fmt: skip
    (pkg / "cli" / "a.py").write_text("def f():\n    from nixfly.cli.b import g\n")
    (pkg / "cli" / "b.py").write_text("def g():\n    from . import a\n")
    (pkg / "cli" / "c.py").write_text("import nixfly.image\n")
    edges = graph(tmp_path)
    assert cycles(edges) == [["nixfly.cli.a", "nixfly.cli.b"]]
    assert cycles(package_graph(edges)) == [["cli", "image"]]
    assert layering_violations(edges) == [
        "nixfly.image imports nixfly.cli.a (image → cli is not in docs/ARCHITECTURE.md's rules)"
    ]


@pytest.mark.parametrize("module", ["nixfly.cli.build", "nixfly.sinks", "nixfly.build.pipeline"])
def test_graph_reads_function_level_imports(module: str) -> None:
    # Sanity: the graph is not empty where we know the code imports lazily.
    assert graph()[module]
