#!/bin/sh
# Every parallel layout trains the same model as one rank: 10 steps of a
# small Llama from the same seed; in double precision each step's loss and
# the final weights match the single-rank run to 1e-9 relative, in single
# precision to 1e-4.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe --bind-to none"
SETS="--set D=32 --set H=4 --set G=2 --set F=48 --set L=4 --set batch=8 --set seq=16 --set steps=10 --set warmup=2"
passed=0

run() {   # run NAME NP PRECISION [--set ...]: train 10 steps into $WORK/NAME
  name=$1 np=$2 prec=$3; shift 3
  # shellcheck disable=SC2086
  "$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/$name" $SETS "$@"
  $MPIRUN -np "$np" "$LMRUN" "$WORK/$name" --data "$DATA" $prec --quiet --save-interval 10 \
    --eval-interval 10 --eval-batches 2 >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; fail "$name did not run"; }
}

compare() {   # compare NAME REF RTOL
  python3 - "$WORK/$2/metrics.jsonl" "$WORK/$1/metrics.jsonl" "$3" <<'PY' || fail "$1: losses differ from $2"
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
assert len(ref) == len(got), "different number of log lines"
worst = 0.0
for r, g in zip(ref, got):
    k = "loss" if "loss" in r else "val_loss"
    worst = max(worst, abs(r[k] - g[k]) / abs(r[k]))
print("losses: max rel diff %.3e over %d records" % (worst, len(ref)))
sys.exit(worst > float(sys.argv[3]))
PY
  python3 "$SRC/tests/e2e/ckpt_compare.py" "$WORK/$2/ckpt/latest" "$WORK/$1/ckpt/latest" "$3" || fail "$1: weights differ"
  echo "ok   $1 matches $2"
  passed=$((passed + 1))
}

run one64 1 --f64
run one32 1 ""
run dp2 2 --f64 --set dp=2
compare dp2 one64 1e-9
run dp2_m2 2 --f64 --set dp=2 --set microbatches=2
compare dp2_m2 one64 1e-9
run dp4 4 --f64 --set dp=4
compare dp4 one64 1e-9
run dp2_f32 2 "" --set dp=2
compare dp2_f32 one32 1e-4
echo "$passed passed, 0 failed"
