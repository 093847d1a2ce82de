#!/bin/sh
# A step's first backward pass sets each gradient where the program adds
# to it, so a step zeroes only the gradients it does not set (exec.c's
# plan_first_writes). With LMC_POISON_GRADS=1 the whole gradient region
# is NaN before every step's zeros, so a gradient neither wholly set nor
# wholly zeroed by the time it is read shows in the loss: each config
# trains 3 steps both ways, to the same bits (on the emulated platform the
# zeros are one kernel over the ranges, kernels.cu's lmc_zero_ranges:
# planted, half of each range zeroed -> the GPT-2 config's loss is NaN). Configs: a Llama, GPT-2 (its tied embedding set by the
# head and added to by the embedding's backward), MoE experts, pipeline
# stages with 4 microbatches (1F1B), tensor and data parallel ranks, and
# the CUDA backend (graphs, bf16 storage) on the emulated platform (but in
# the sanitizer build: the third argument "sanitize").
BIN=$1 SRC=$2 SET=${3:-all}
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
small="--set D=32 --set H=4 --set G=2 --set F=88 --set L=2 --set batch=4 --set seq=16 --set steps=3 --set eval_every=0"
n=0
check() {   # check NAME NP SPEC "LMC FLAGS" ["LMRUN FLAGS"]
  name=$1 np=$2 spec=$3 lmcf=$4 runf=${5:-}
  # shellcheck disable=SC2086
  "$LMC" "$spec" -q -o "$WORK/$name" $lmcf
  for p in 0 1; do
    # shellcheck disable=SC2086
    LMC_POISON_GRADS=$p $MPIRUN -np "$np" "$LMRUN" "$WORK/$name" --data "$DATA" --quiet --save-interval 0 \
      --out "$WORK/$name.$p" $runf || fail "$name: lmrun failed (LMC_POISON_GRADS=$p)"
    grep '"loss"' "$WORK/$name.$p/metrics.jsonl" | sed 's/,"ms":[0-9.]*//' > "$WORK/$name.$p.steps"
  done
  [ "$(wc -l < "$WORK/$name.0.steps")" -eq 3 ] && cmp -s "$WORK/$name.0.steps" "$WORK/$name.1.steps" ||
    { diff "$WORK/$name.0.steps" "$WORK/$name.1.steps"; fail "$name: gradients not wholly set by the first backward"; }
  echo "ok   $name: the same 3 steps with NaN where zeros were skipped"
  n=$((n + 1))
}
gpt2="--set V=256 --set D=32 --set H=4 --set L=2 --set batch=4 --set seq=16 --set steps=3"
check llama 1 "$SRC/models/tiny.lm" "$small"
check gpt2 1 "$SRC/models/gpt2-124m.lm" "$gpt2"
check moe 1 "$SRC/models/tiny.lm" "$small --set experts=4"
check pp2_m4 2 "$SRC/models/tiny.lm" "$small --set pp=2 --set microbatches=4"
check tp2 2 "$SRC/models/tiny.lm" "$small --set tp=2"
check dp2_m2 2 "$SRC/models/tiny.lm" "$small --set dp=2 --set microbatches=2"
if [ "$SET" = all ] && [ -f "$BIN/runtime/liblmc_cudaemu.so" ]; then
  check gpt2_emu_bf16 1 "$SRC/models/gpt2-124m.lm" "$gpt2 --set precision=bf16" "--backend cuda-emu"
  check moe_emu 1 "$SRC/models/tiny.lm" "$small --set experts=4" "--backend cuda-emu"
fi
echo "$n passed, 0 failed"
