#!/bin/sh
# Mixture of Experts across layouts: a small Llama whose MLPs become
# 4-expert top-2 MoE layers (every other layer), 10 steps from the same
# seed. In double precision every layout with expert parallelism matches
# the single-rank run step for step to 1e-9 (losses, then the final
# weights), in single precision to 1e-4; a checkpoint saved at ep = 2
# resumes at ep = 1 and ep = 4, one saved at tp = 2 x ep = 2 at dp = 2 x
# tp = 2, as the same run; and lmtrain's
# --num-experts trains the tiny preset with the MoE metrics logged.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
SETS="--set D=32 --set H=4 --set G=2 --set F=48 --set L=4 --set batch=8 --set seq=16 --set steps=10 --set warmup=2
      --set experts=4 --set top_k=2 --set moe_every=2"
passed=0

run one64 1 --f64
run one32 1 ""
run ep2 2 --f64 --set ep=2
compare ep2 one64 1e-9
run ep4 4 --f64 --set ep=4
compare ep4 one64 1e-9
run dp2_ep2 4 --f64 --set dp=2 --set ep=2
compare dp2_ep2 one64 1e-9
run tp2_ep2 4 --f64 --set tp=2 --set ep=2
compare tp2_ep2 one64 1e-9
run ep2_f32 2 "" --set ep=2
compare ep2_f32 one32 1e-4
# the balance losses are per microbatch: the pipelined plans' reference
# runs the same microbatches on one rank
run one64_m2 1 --f64 --set microbatches=2
run pp2_ep2 4 --f64 --set pp=2 --set ep=2 --set microbatches=2
compare pp2_ep2 one64_m2 1e-9

# checkpoints: saved after 5 steps at ep = 2, resumed at ep = 1 and ep = 4
EXTRA="--max-steps 5 --save-interval 5" run half_ep2 2 --f64 --set ep=2
EXTRA="--resume $WORK/half_ep2/ckpt/latest" run resume_one 1 --f64
compare resume_one one64 1e-9
EXTRA="--resume $WORK/half_ep2/ckpt/latest" run resume_ep4 4 --f64 --set ep=4
compare resume_ep4 one64 1e-9
# and from tp 2 x ep 2 (experts split both ways) to dp 2 x tp 2
EXTRA="--max-steps 5 --save-interval 5" run half_tp2ep2 4 --f64 --set tp=2 --set ep=2
EXTRA="--resume $WORK/half_tp2ep2/ckpt/latest" run resume_dp2tp2 4 --f64 --set dp=2 --set tp=2
compare resume_dp2tp2 one64 1e-9

# lmtrain --num-experts: the tiny preset as MoE, its metrics
export LMC_BUILD="$BIN" XDG_CACHE_HOME="$WORK/cache"
"$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" --set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --batch-size 4 \
  --seq-len 16 --num-experts 4 --top-k 1 --max-steps 3 --data "$DATA" --backend cpu --out "$WORK/lmtrain" \
  >"$WORK/lmtrain.log" 2>&1 || { cat "$WORK/lmtrain.log"; fail "lmtrain --num-experts failed"; }
python3 - "$WORK/lmtrain/metrics.jsonl" <<'PY' || fail "lmtrain --num-experts: bad MoE metrics"
import json, sys
steps = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
assert len(steps) == 3, steps
for r in steps:
    assert len(r["moe_aux"]) == 2 and len(r["moe_z"]) == 2, r
    assert all(m >= 1.0 - 1e-12 for m in r["moe_load_max"]) and all(0 <= m <= 1.0 + 1e-12 for m in r["moe_load_min"]), r
    weighted = sum(0.01 * a + 0.001 * z for a, z in zip(r["moe_aux"], r["moe_z"]))
    assert abs(r["ce"] + weighted - r["loss"]) < 1e-5 * r["loss"], r
print("ok   lmtrain --num-experts 4 --top-k 1: aux, z and load logged per layer; loss = ce + 0.01 aux + 0.001 z")
PY
grep -q "| load [0-9.]* |" "$WORK/lmtrain.log" || { cat "$WORK/lmtrain.log"; fail "the progress line shows no load"; }
passed=$((passed + 1))
echo "$passed passed, 0 failed"
