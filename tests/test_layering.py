"""Layer planning: nixpkgs' popularity order, the size-aware `auto` grouping, limits, roots on top."""

from __future__ import annotations

import random

import pytest

from nixfly.build.closure import Closure, StorePath
from nixfly.build.layering import plan_layers, popularity_order
from nixfly.errors import LayeringError, UsageError

H = "0123456789abcdfghijklmnpqrsvwxyz"


def sp(name: str, i: int = 0) -> str:
    return f"/nix/store/{(H[i % 32] * 32)}-{name}"


def closure(edges: dict[str, list[str]], roots: list[str], sizes: dict[str, int] | None = None) -> Closure:
    paths = {p: StorePath(p, (sizes or {}).get(p, 1000), tuple(sorted(refs))) for p, refs in edges.items()}
    return Closure(tuple(roots), paths)


def test_popularity_matches_nixpkgs_documented_example() -> None:
    # The graph from nixpkgs' closure-graph.py: A-B-C-D-F, C-E-F, B-E, A-G. Expected: F E D C B G A.
    n = {x: sp(x, i) for i, x in enumerate("ABCDEFG")}
    edges = {
        n["A"]: [n["B"], n["G"]],
        n["B"]: [n["C"], n["E"]],
        n["C"]: [n["D"], n["E"]],
        n["D"]: [n["F"]],
        n["E"]: [n["F"]],
        n["F"]: [],
        n["G"]: [],
    }
    order = popularity_order(closure(edges, [n["A"]]))
    assert [p.rsplit("-", 1)[1] for p in order] == list("FEDCBGA")


def test_popularity_ties_by_name_then_hash() -> None:
    a1, a2, b = sp("same", 3), sp("same", 1), sp("aaa", 2)
    root = sp("root", 5)
    order = popularity_order(closure({root: [a1, a2, b], a1: [], a2: [], b: []}, [root]))
    # Equal popularity: name first ("aaa" < "same"), then the hash decides between the two "same".
    assert order == [b, a2, a1, root]


def _random_closure(n: int, seed: int) -> Closure:
    rnd = random.Random(seed)
    names = [
        sp(f"pkg{i:04d}", i).replace(H[i % 32] * 32, f"{i:032d}".translate(str.maketrans("0123456789", "abcdfghijk")))
        for i in range(n)
    ]
    edges: dict[str, list[str]] = {}
    for i, p in enumerate(names):
        # References only to later paths: a DAG whose sinks are at the end.
        cands = names[i + 1 :]
        edges[p] = rnd.sample(cands, min(len(cands), rnd.randint(0, 6)))
    sizes = {p: rnd.randint(1, 50_000_000) for p in names}
    return closure(edges, [names[0]], sizes)


@pytest.mark.parametrize("algorithm", ["popularity", "auto"])
@pytest.mark.parametrize("max_layers", [3, 4, 10, 100, 127])
def test_generated_300_path_closure_never_exceeds_the_limit(algorithm: str, max_layers: int) -> None:
    c = _random_closure(320, seed=max_layers)
    plan = plan_layers(c, algorithm=algorithm, max_layers=max_layers, reserved=1)
    assert len(plan.groups) <= max_layers - 1
    every = [p for g in plan.groups for p in g.paths]
    assert sorted(every) == sorted(c.paths), "each store path in exactly one layer"
    assert plan.groups[-1].paths == (c.roots[0],) and plan.groups[-1].kind == "root"
    # Deterministic.
    assert plan == plan_layers(c, algorithm=algorithm, max_layers=max_layers, reserved=1)


def test_one_layer_per_path_while_under_the_limit() -> None:
    c = _random_closure(40, seed=1)
    plan = plan_layers(c, algorithm="popularity", max_layers=100)
    assert len(plan.groups) == 40 and all(len(g.paths) == 1 for g in plan.groups)


def test_popularity_catch_all_is_the_least_popular() -> None:
    c = _random_closure(50, seed=2)
    plan = plan_layers(c, algorithm="popularity", max_layers=10)
    order = [p for p in popularity_order(c) if p != c.roots[0]]
    assert [g.paths[0] for g in plan.groups[:8]] == order[:8]
    assert set(plan.groups[8].paths) == set(order[8:]) and plan.groups[8].kind == "rest"


def test_auto_groups_by_users_of_large_paths() -> None:
    names = ["app", "big1", "big2", "only1", "shared", "direct", "tiny1", "tiny2"]
    root, big1, big2, only1, shared, direct, tiny1, tiny2 = (sp(x, i) for i, x in enumerate(names))
    edges = {
        root: [big1, big2, direct],
        big1: [only1, shared, tiny1],
        big2: [shared, tiny2],
        only1: [],
        shared: [],
        direct: [],
        tiny1: [],
        tiny2: [],
    }
    sizes = {root: 10, big1: 900, big2: 800, only1: 5, shared: 7, direct: 3, tiny1: 1, tiny2: 1}
    plan = plan_layers(closure(edges, [root], sizes), algorithm="auto", max_layers=4)
    # Budget 3 for dependencies: big1 keeps its private dependencies; what big1 shares with the rest
    # of the closure (reached from the root without passing big1) is grouped by its set of users.
    assert len(plan.groups) <= 4
    assert plan.groups[-1].paths == (root,)
    big1_layer = next(g for g in plan.groups if big1 in g.paths)
    assert set(big1_layer.paths) == {big1, only1, tiny1}
    assert shared not in big1_layer.paths


def test_tight_limit_folds_the_roots_into_the_dependencies() -> None:
    c = _random_closure(20, seed=5)
    plan = plan_layers(c, algorithm="auto", max_layers=2, reserved=1)
    assert len(plan.groups) == 1 and sorted(plan.groups[0].paths) == sorted(c.paths)


def test_explicit_layers_sit_under_the_roots() -> None:
    c = _random_closure(30, seed=3)
    target = sorted(c.paths)[5]
    name = target.rsplit("-", 1)[1]
    plan = plan_layers(c, algorithm="auto", max_layers=20, explicit=[[name]])
    assert plan.groups[-2].paths == (target,) and plan.groups[-2].kind == "explicit"
    assert plan.groups[-1].kind == "root"


def test_limit_below_explicit_layers_is_an_error() -> None:
    c = _random_closure(30, seed=4)
    names = [p.rsplit("-", 1)[1] for p in sorted(c.paths)[1:4]]
    with pytest.raises(LayeringError, match="below the"):
        plan_layers(c, max_layers=3, explicit=[[n] for n in names])
    with pytest.raises(LayeringError, match="matches no store path"):
        plan_layers(c, max_layers=30, explicit=[["no-such-package"]])
    with pytest.raises(UsageError, match="between 1 and 127"):
        plan_layers(c, max_layers=128)
