#!/usr/bin/env bash
# README command 1: set everything up on a fresh Debian machine, then run the built-in demo
# (offline Nix closure → image → local registry → running container → Fly stand-in deploy).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
exec .venv/bin/python demo/run_demo.py "$@"
