#!/usr/bin/env bash
# Set up a fresh Debian machine for lazylayer: system packages, a virtualenv in
# .venv, and lazylayer installed into it (its C extension built from csrc/).
# Safe to run again: it installs only what is missing, and reinstalls lazylayer
# only when what the install depends on changed (a stamp in .venv records it),
# so a second run is quick and prints nothing. A failed install fails the
# script, with pip's output.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: gcc, make, pkg-config, libzstd-dev, libxxhash-dev (header-only use), libssl-dev (libcrypto: sha256),
# zlib1g-dev (gzip checkpoints), libisal-dev (ISA-L's inflate: gzip spans and chunks, ~2x zlib's).
# Tests: zstd (the CLI, to check our files), clang + its sanitizer runtime (fuzz/ASan tests),
# umoci and skopeo (to build real images and unpack converted ones).
# Mounts: fuse3 (fusermount3, for mounts without root; the FUSE server itself is in csrc/fuse.c);
# erofs-utils (fsck.erofs and dump.erofs check the EROFS images the erofs backend writes, in tests).
# Peers' formats: golang-go and golang-github-containerd-stargz-snapshotter-dev (stargz-snapshotter's
# own Go library, built offline by the tests into tests/estargz_gen to write eStargz and zstd:chunked).
PACKAGES=(gcc make pkg-config libzstd-dev libxxhash-dev libssl-dev zlib1g-dev libisal-dev zstd clang libclang-rt-14-dev python3-venv umoci skopeo docker-registry apache2-utils fuse3 erofs-utils
          golang-go golang-github-containerd-stargz-snapshotter-dev)
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
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
    # A newer pip is nice to have, not needed: if it cannot be had, say so and go on with this one.
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 ||
        echo "setup: warning: could not upgrade pip in .venv; going on with $(.venv/bin/python -m pip --version)" >&2
fi

# What an (editable) install depends on: Python changes need no reinstall, but metadata,
# dependencies and the C extension (csrc/, its cffi build script) do.
STAMP=.venv/.lazylayer-install
want=$({ .venv/bin/python -VV
         sha256sum pyproject.toml setup.py MANIFEST.in lazylayer/core/_build.py csrc/*.c csrc/*.h scripts/setup.sh
       } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c "import lazylayer" 2>/dev/null; then
    exit 0  # installed from these very files, and it imports: nothing to do
fi

echo "setup: installing lazylayer into .venv (editable, with the test and bench extras; builds the C extension)" >&2
rm -f "$STAMP"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! .venv/bin/python -m pip install -q -e ".[test,bench]" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: error: pip install -e '.[test,bench]' failed (its output is above)" >&2
    exit 1
fi
if ! .venv/bin/python -c "import lazylayer" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: error: lazylayer was installed but does not import (did its C extension build?)" >&2
    exit 1
fi
echo "$want" >"$STAMP"
