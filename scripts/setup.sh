#!/usr/bin/env bash
# Installs everything nixfly's demo and tests need on a Debian (bookworm) machine:
# Debian packages (real registry, Nix, validators, runtimes) and a venv with pinned Python deps.
# Idempotent and quick when everything is already there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

APT_PACKAGES=(docker-registry apache2-utils curl openssl skopeo umoci busybox-static runc bubblewrap
  podman uidmap slirp4netns fuse-overlayfs catatonit nix-bin oci-image-tool jq zstd isal libdeflate-tools tar coreutils time
  runit s6 patchelf)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.nixfly-deps-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "setup: installing Python dependencies"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  rm -f .venv/.nixfly-deps-*
  touch "$stamp"
fi
