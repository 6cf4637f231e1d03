"""The layer plan stage: which store paths go into which layer.

Every plan has the same shape, bottom to top: the algorithm's layers (shared, stable dependencies),
then the user's explicit layers, then the roots the user asked to build, each alone — so an app-only
change touches one small top layer whatever the algorithm (a product decision: with nixpkgs'
popularity layering the app lands in the catch-all layer).

Paths ``provided`` by what lies below the image (a base image holding some of the closure) go into no layer;
the algorithms still rank the whole closure, so the other paths keep the order they would have had.

Algorithms:
- ``popularity``: nixpkgs' popularity contest (same order as nixpkgs on the same graph; ties by name
  then hash); one layer per path for the most popular, the rest in one last layer.
- ``auto``: size-aware. The largest paths get their own layer; a dependency used only by one of them
  joins its layer; other dependencies are grouped by the set of large paths that use them.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nixfly.build.closure import Closure
from nixfly.errors import LayeringError, UsageError

Algorithm = Literal["popularity", "auto"]
HARD_MAX_LAYERS = 127
DEFAULT_MAX_LAYERS = 100


@dataclass(frozen=True)
class LayerGroup:
    paths: tuple[str, ...]  # sorted store paths
    kind: str  # "root" | "explicit" | "popular" | "rest" | "large" | "shared"


@dataclass(frozen=True)
class LayerPlan:
    groups: tuple[LayerGroup, ...]  # bottom to top


def _package_key(path: str) -> str:
    # nixpkgs' tie-break: the name (after the hash) first, the hash last, so the order never depends
    # on hashes alone.
    head, _, rest = path.rpartition("/")[2].partition("-")
    return f"{rest}-{head}"


def popularity_order(closure: Closure) -> list[str]:
    """Store paths, most popular first, as nixpkgs' closure-graph.py orders them on the same graph."""
    refs = {p: [r for r in sp.references if r != p] for p, sp in closure.paths.items()}
    referenced = {r for rs in refs.values() for r in rs}
    tops = [p for p in refs if p not in referenced]
    memo: dict[str, dict[str, int]] = {}

    def below(p: str) -> dict[str, int]:
        # Popularity of everything under p, counted over every path through the graph.
        if p in memo:
            return memo[p]
        acc: dict[str, int] = defaultdict(int)
        for c in refs[p]:
            acc[c] += 1
            for s, n in below(c).items():
                acc[s] += n + 1
        memo[p] = acc
        return acc

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10 * len(refs) + 1000))
    try:
        score: dict[str, int] = defaultdict(int)
        for t in tops:
            score[t] += 1
            for s, n in below(t).items():
                score[s] += n + 1
    finally:
        sys.setrecursionlimit(old)
    ordered = sorted(score, key=lambda p: (-score[p], _package_key(p)))
    missing = sorted(set(refs) - set(score))  # cycles without a top: nixpkgs appends them
    return ordered + missing


def _match(closure: Closure, pattern: str) -> list[str]:
    if pattern.startswith("/"):
        return [pattern] if pattern in closure.paths else []
    hits = []
    for p, sp in closure.paths.items():
        if fnmatch.fnmatchcase(sp.name, pattern) or fnmatch.fnmatchcase(sp.base, pattern):
            hits.append(p)
    return sorted(hits)


def _popularity_groups(closure: Closure, rest: set[str], budget: int) -> list[LayerGroup]:
    order = [p for p in popularity_order(closure) if p in rest]
    if len(order) <= budget:
        return [LayerGroup((p,), "popular") for p in order]
    own = [LayerGroup((p,), "popular") for p in order[: budget - 1]]
    return [*own, LayerGroup(tuple(sorted(order[budget - 1 :])), "rest")]


def _auto_groups(closure: Closure, rest: set[str], budget: int, tops: Sequence[str]) -> list[LayerGroup]:
    size = {p: closure.paths[p].nar_size for p in rest}
    pop = {p: i for i, p in enumerate(popularity_order(closure))}
    if len(rest) <= budget:
        return [LayerGroup((p,), "large") for p in sorted(rest, key=lambda p: pop[p])]
    by_size = sorted(rest, key=lambda p: (-size[p], p))
    reach: dict[str, set[str]] = {}

    def users_for(anchors: list[str]) -> dict[str, frozenset[str]]:
        aset = set(anchors)
        users: dict[str, set[str]] = defaultdict(set)
        for a in anchors:
            if a not in reach:
                reach[a] = closure.closure_of([a])
            for p in reach[a]:
                if p in rest and p not in aset:
                    users[p].add(a)
        # What the tops reach without passing through a large path is used "from the top".
        stack = list(tops)
        seen: set[str] = set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            if p in rest and p not in aset:
                users[p].add("")
            if p not in aset:
                stack.extend(closure.paths[p].references)
        return {p: frozenset(u) for p, u in users.items()}

    k = min(budget, len(by_size))
    while True:
        anchors = by_size[:k]
        users = users_for(anchors)
        members: dict[str, list[str]] = {a: [a] for a in anchors}
        shared: dict[frozenset[str], list[str]] = defaultdict(list)
        for p in rest:
            if p in members:
                continue
            u = users.get(p, frozenset({""}))
            if len(u) == 1 and "" not in u:
                members[next(iter(u))].append(p)
            else:
                shared[u].append(p)
        count = len(anchors) + len(shared)
        if count <= budget or k == 0:
            break
        k = max(0, k - (count - budget))
    groups: list[LayerGroup] = []
    # Most widely shared first (bottom), then the large paths, largest first.
    for key in sorted(shared, key=lambda u: (-len(u), -sum(size[p] for p in shared[u]), sorted(shared[u])[0])):
        groups.append(LayerGroup(tuple(sorted(shared[key])), "shared"))
    for a in anchors:
        groups.append(LayerGroup(tuple(sorted(members[a])), "large"))
    if len(groups) > budget:  # only when k == 0 and shared sets still overflow: fold the smallest
        keep, fold = groups[: budget - 1], groups[budget - 1 :]
        groups = [*keep, LayerGroup(tuple(sorted(p for g in fold for p in g.paths)), "rest")]
    return groups


def plan_layers(
    closure: Closure,
    *,
    algorithm: str = "popularity",
    max_layers: int = DEFAULT_MAX_LAYERS,
    reserved: int = 0,
    explicit: Sequence[Sequence[str]] = (),
    roots_on_top: bool = True,
    provided: frozenset[str] = frozenset(),
) -> LayerPlan:
    """Plan the store-path layers. ``reserved`` layers (e.g. the customisation layer) count against
    ``max_layers``; ``provided`` store paths (already in the base image) are in no layer, and an explicit
    layer left empty by them is dropped. Deterministic: the same closure and settings always give the same
    plan."""
    if algorithm not in ("popularity", "auto"):
        raise UsageError(f"unknown layering {algorithm!r}: use popularity or auto")
    if not 1 <= max_layers <= HARD_MAX_LAYERS:
        raise UsageError(f"--max-layers must be between 1 and {HARD_MAX_LAYERS}, got {max_layers}")
    limit = max_layers - reserved
    taken: dict[str, int] = {}
    explicit_groups: list[LayerGroup] = []
    for i, patterns in enumerate(explicit):
        paths: set[str] = set()
        for pat in patterns:
            hits = _match(closure, pat)
            if not hits:
                raise LayeringError(f"explicit layer {i + 1}: {pat!r} matches no store path in the closure")
            paths.update(hits)
        for p in paths:
            if p in taken:
                raise LayeringError(f"{p} is in explicit layers {taken[p] + 1} and {i + 1}")
            taken[p] = i
        if paths - provided:
            explicit_groups.append(LayerGroup(tuple(sorted(paths - provided)), "explicit"))
    root_groups: list[LayerGroup] = []
    if roots_on_top:
        free_roots = [r for r in closure.roots if r not in taken and r not in provided]
        root_groups = [LayerGroup((r,), "root") for r in free_roots]
        if len(explicit_groups) + len(root_groups) > limit and len(root_groups) > 1:
            root_groups = [LayerGroup(tuple(sorted(free_roots)), "root")]
    fixed = {p for g in (*explicit_groups, *root_groups) for p in g.paths}
    rest = set(closure.paths) - fixed - set(taken) - provided
    need = len(explicit_groups) + len(root_groups) + (1 if rest else 0)
    if need > limit and root_groups and rest and len(explicit_groups) + 1 <= limit:
        # Too tight to keep the roots apart: they share the dependencies' layers.
        rest |= {p for g in root_groups for p in g.paths}
        root_groups = []
        need = len(explicit_groups) + 1
    if need > limit:
        raise LayeringError(
            f"--max-layers {max_layers} is below the {need + reserved} layers this image needs "
            f"({len(explicit_groups)} explicit, {len(root_groups)} for the roots, {reserved} for customisation, "
            f"{1 if rest else 0} for dependencies)"
        )
    budget = limit - len(explicit_groups) - len(root_groups)
    if not rest:
        base: list[LayerGroup] = []
    elif algorithm == "popularity":
        base = _popularity_groups(closure, rest, budget)
    else:
        tops = [r for r in closure.roots if r in rest] or [
            r for g in (*explicit_groups, *root_groups) for p in g.paths for r in closure.paths[p].references
        ]
        base = _auto_groups(closure, rest, budget, tops)
    return LayerPlan(tuple([*base, *explicit_groups, *root_groups]))
