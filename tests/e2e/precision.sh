#!/bin/sh
# The bf16 precision plan on the CPU backend (its reference: every value
# the plan stores in bf16 rounded to bf16 when written): a small Llama, and
# the same with MoE layers, train 20 steps from one seed under
# precision = bf16 and fp32; each step's loss agrees within 1e-3 and the
# gradient norm within 3e-2 (bf16's precision is 2^-8; 1e-1 with MoE's
# discrete routing), and the bf16 run is not the fp32 run (the plan is
# applied).
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small="--set D=32 --set H=4 --set G=2 --set F=88 --set L=2 --set batch=4 --set seq=16 --set steps=20 --set warmup=5"
passed=0
pair() {   # pair NAME GNORM_TOL [--set ...]
  name=$1 gtol=$2
  shift 2
  for p in fp32 bf16; do
    # shellcheck disable=SC2086
    "$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/$name.$p" $small --set precision=$p "$@"
    "$LMRUN" "$WORK/$name.$p" --data "$DATA" --backend cpu --quiet --eval-interval 20 --eval-batches 2 \
      --out "$WORK/$name.$p.run" || fail "$name: the $p run failed"
  done
  python3 "$SRC/tests/e2e/compare_metrics.py" "$WORK/$name.fp32.run/metrics.jsonl" "$WORK/$name.bf16.run/metrics.jsonl" \
    "$name: bf16 plan against fp32" 1e-3 "$gtol" || fail "$name: bf16 and fp32 differ too much"
  cmp -s "$WORK/$name.fp32.run/metrics.jsonl" "$WORK/$name.bf16.run/metrics.jsonl" && fail "$name: bf16 changed nothing"
  passed=$((passed + 1))
}
pair llama 3e-2
# a token whose router logits round differently can go to another expert:
# the gradient norm's trajectory drifts further, the loss does not
pair moe 1e-1 --set experts=4
echo "$passed passed, 0 failed"
