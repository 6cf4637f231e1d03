#!/usr/bin/env bash
# README command 2: set everything up, then run lint, types and the whole test suite (slow tests included).
# With --fast first: the same lint and types, then only the tests not marked slow (no real registry, Nix
# build, runtime or validator): a developer's answer in under a minute. CI calls it without --fast.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
fast=()
if [ "${1:-}" = "--fast" ]; then
    shift
    fast=(-m "not slow")
fi
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest${fast:+ (fast tier: not slow)}"
exec .venv/bin/pytest -n "${NIXFLY_TEST_WORKERS:-2}" "${fast[@]}" "$@"
