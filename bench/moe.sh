#!/bin/sh
# Mixture of Experts benchmark (CPU): one MoE layer against the dense MLP
# with the same parameters per token (bench_moe), then STEPS steps of the
# moe-tiny preset at ep = 2 on two ranks and of tiny (its dense twin) on
# one, reporting tokens/s, the all-to-all volume per step and the routing
# imbalance over the run from metrics.jsonl.
# Usage: bench/moe.sh [BUILD] [STEPS]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
steps=${2:-100}
out=$(mktemp -d "${TMPDIR:-/tmp}/lmc-bench-moe.XXXXXX")
trap 'rm -rf "$out"' EXIT
data=$root/data/kjv.txt
[ -s "$data" ] || "$root/scripts/prepare_kjv.sh" "$data" >/dev/null
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} nproc=$(nproc)"
"$build/bench/bench_moe"
"$build/compiler/lmc" "$root/models/moe-tiny.lm" -q -o "$out/moe" --set ep=2
"$build/compiler/lmc" "$root/models/tiny.lm" -q -o "$out/dense"
mpirun -np 2 --oversubscribe --bind-to none "$build/runtime/lmrun" "$out/moe" --data "$data" --max-steps "$steps" \
  --eval-interval "$steps" --out "$out/moe_run" --quiet
"$build/runtime/lmrun" "$out/dense" --data "$data" --max-steps "$steps" --eval-interval "$steps" --out "$out/dense_run" \
  --quiet
python3 - "$out/moe_run/metrics.jsonl" "$out/dense_run/metrics.jsonl" "$steps" <<'PY'
import json, sys
moe = [r for r in map(json.loads, open(sys.argv[1])) if "step" in r]
dense = [r for r in map(json.loads, open(sys.argv[2])) if "step" in r]
steps = int(sys.argv[3])
def rate(rs):
    t = [r for r in rs if "ms" in r][1:]   # the first step warms up
    return sum(r["tokens"] / r["step"] for r in t) / (sum(r["ms"] for r in t) / 1e3)
def val(rs):
    return [r["val_loss"] for r in rs if "val_loss" in r][-1]
train = [r for r in moe if "moe_load_max" in r]
print("moe-tiny at ep=2 on 2 ranks, %d steps: %.0f tokens/s, val loss %.4f; tiny (dense, 1 rank): %.0f tokens/s, val loss %.4f"
      % (steps, rate(moe), val(moe), rate(dense), val(dense)))
print("  all-to-all sent by rank 0: %.2f MiB per step" % (sum(r["moe_a2a_mib"] for r in train) / len(train)))
print("  routing: the busiest expert's load over a balanced one (per layer), the idlest's, the aux loss:")
for r in train:
    if r["step"] in (1, 2, 5) or r["step"] % max(steps // 5, 1) == 0:
        print("    step %4d  max %s  min %s  aux %s" % (r["step"], " ".join("%.2f" % x for x in r["moe_load_max"]),
              " ".join("%.2f" % x for x in r["moe_load_min"]), " ".join("%.3f" % x for x in r["moe_aux"])))
PY
