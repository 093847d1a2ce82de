#!/bin/sh
# Pipeline bubble: for GPipe and 1F1B at pp = 2 and 4 and several
# microbatch counts, the measured bubble of each rank (time blocked on
# receives from other stages over step time, steps after the first) next
# to the ideal (p-1)/(m+p-1), and the step time relative to one rank
# training the same global batch. With fewer cores than ranks the ranks
# share cores (timesharing inflates both numbers); compare like with like.
# Usage: bench/pipeline.sh [BUILD] [STEPS]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
steps=${2:-6}
out=$(mktemp -d "${TMPDIR:-/tmp}/lmc-pipe.XXXXXX")
trap 'rm -rf "$out"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
data="$build/data/kjv.txt"
[ -s "$data" ] || "$root/scripts/prepare_kjv.sh" "$data" >/dev/null
sets="--set D=128 --set H=4 --set G=2 --set F=344 --set L=8 --set batch=32 --set seq=128 --set eval_every=0"
echo "cores $(nproc --all); model: tiny with D=128, 8 layers, batch 32 x 128 tokens; $steps steps"
run() {  # run NAME NP [--set ...]: prints the run's metrics file
  name=$1 np=$2; shift 2
  "$build/compiler/lmc" "$root/models/tiny.lm" -q -o "$out/$name" $sets --set steps="$steps" "$@"
  mpirun --oversubscribe --bind-to none -np "$np" "$build/runtime/lmrun" "$out/$name" --data "$data" \
    --quiet >/dev/null 2>&1
}
run single 1
single=$(python3 -c "import json,sys; print([r for r in map(json.loads, open(sys.argv[1])) if 'steps_s' in r][0]['steps_s'])" "$out/single/metrics.jsonl")
printf "%-6s %3s %3s | %-29s | %6s | %s\n" schedule pp m "bubble per rank (measured)" ideal "step time vs 1 rank"
for pp in 2 4; do
  for m in 1 2 4 8; do
    for sch in gpipe 1f1b; do
      run "$sch-$pp-$m" "$pp" --set pp=$pp --set microbatches=$m --set schedule=$sch
      python3 - "$out/$sch-$pp-$m/metrics.jsonl" "$sch" "$pp" "$m" "$single" <<'PY'
import json, sys
recs = [r for r in map(json.loads, open(sys.argv[1])) if "wait_s" in r]
sch, p, m, single = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
bub = " ".join("%.2f" % (r["wait_s"] / r["steps_s"]) for r in recs)
print("%-8s %3d %3d | %-29s | %6.2f | %.2fx" % (sch, p, m, bub, (p - 1) / (m + p - 1),
      max(r["steps_s"] for r in recs) / single))
PY
    done
  done
done
