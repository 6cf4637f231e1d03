#!/usr/bin/env bash
# README command 2: set everything up, then run lint, types and the whole test suite (slow tests included).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -n "${NIXFLY_TEST_WORKERS:-2}" "$@"
