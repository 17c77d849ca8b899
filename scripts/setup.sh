#!/usr/bin/env bash
# Set up a fresh Debian machine for lazylayer: system packages, a virtualenv in
# .venv, and lazylayer installed into it (its C extension built from csrc/).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: gcc, make, pkg-config, libzstd-dev, libxxhash-dev (header-only use).
# Tests: zstd (the CLI, to check our files), clang + its sanitizer runtime (fuzz/ASan tests),
# umoci and skopeo (to build real images and unpack converted ones).
# Mounts: fuse3 (libfuse 3 and fusermount3; `lazylayer mount` loads it through mfusepy).
PACKAGES=(gcc make pkg-config libzstd-dev libxxhash-dev zstd clang libclang-rt-14-dev python3-venv umoci skopeo docker-registry apache2-utils fuse3)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import lazylayer" # fails loudly if the extension did not build
