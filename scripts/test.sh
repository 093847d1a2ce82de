#!/bin/sh
# Runs every test: the normal build, then the same suite under
# AddressSanitizer + UBSan, then the libFuzzer targets (skip both with
# --fast).
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc)
# ctest runs $jobs tests at once: OpenBLAS's threads (one a core each, by
# default) would only contend with the other tests and spin between their
# small GEMMs (a sixth of the suite's time on 2 cores). docs.sh unsets it
# to run the docs' commands as a user's shell would.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# a kernel that never ends fails its test by name (the emulated platform's
# watchdog) rather than at ctest's timeout
export LMC_CUDA_EMU_TIMEOUT="${LMC_CUDA_EMU_TIMEOUT:-300}"
run() {
  dir=$1; shift
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null
  mkdir -p "$dir/data"
  [ -s "$dir/data/kjv.txt" ] || scripts/prepare_kjv.sh "$dir/data/kjv.txt"
  (cd "$dir" && ctest --output-on-failure -j"$jobs")
}
run build -DCMAKE_BUILD_TYPE=Release
if [ "${1:-}" != --fast ]; then
  # (at -O1, as AddressSanitizer's authors advise: its suite took 187 s
  # on 2 cores against 286 at -O0, 2026-11-28)
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run build-asan -DCMAKE_BUILD_TYPE=Debug -DLMC_SANITIZE=ON "-DCMAKE_C_FLAGS_DEBUG=-g -O1"
  # libFuzzer over the front end and the loaders (clang), seed corpora and a short burst
  run build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DLMC_FUZZ=ON
fi
