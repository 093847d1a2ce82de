#!/bin/sh
# Installs what lmc needs to build, test and train (Debian/Ubuntu), then
# builds it into build/. Uses sudo when not root. Safe to run again.
set -eu
PKGS="build-essential cmake flex bison libopenblas-openmp-dev libopenmpi-dev openmpi-bin zlib1g-dev llvm-14-tools bible-kjv python3
      clang libclang-rt-14-dev libomp-14-dev python3-venv python3-pip python3-matplotlib"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else
    echo "setup: please install as root: apt-get install -y$missing" >&2
    exit 1
  fi
  echo "setup: installing$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
cd "$(dirname "$0")/.."
# Python packages from PyPI, in a git-ignored virtual environment:
# Hugging Face tokenizers (scripts/tokenize) and TensorBoard's event reader
# (the tests)
if ! .venv/bin/python -c "import tensorboard, tokenizers" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check tensorboard tokenizers
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
echo "setup: built build/compiler/lmc and build/runtime/lmrun"
