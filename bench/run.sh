#!/bin/sh
# CPU training benchmark: the GPT-2 124M shape at T=64, B=4 (as llm.c's
# CPU trainer runs it) and the tiny preset, each in its own process so
# that peak RSS is its own. Usage: bench/run.sh [BUILD] [STEPS]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
steps=${2:-5}
out=$(mktemp -d "${TMPDIR:-/tmp}/lmc-bench.XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} nproc=$(nproc)"
"$build/compiler/lmc" "$root/models/gpt2-124m.lm" -q -o "$out/gpt2" --set batch=4 --set seq=64
"$build/bench/bench_train" "$out/gpt2" "$steps"
"$build/compiler/lmc" "$root/models/tiny.lm" -q -o "$out/tiny"
"$build/bench/bench_train" "$out/tiny" "$steps"
