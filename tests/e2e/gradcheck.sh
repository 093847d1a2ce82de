#!/bin/sh
# The whole model's gradient (forward + backward of a 2-layer Llama, a
# GPT-2 style model, the Llama with 4-expert top-2 MoE layers, a model
# of top-1 GELU experts, their balance losses weighted up so that their
# gradients count, and a model of element-wise runs: a GeGLU MLP and a
# SiLU read twice) against finite differences in double precision. lmrun
# --gradcheck holds each MoE layer's choice of experts fixed while it
# perturbs the weights: a nudge must not flip a token to another expert.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/llama" --set D=32 --set H=4 --set G=2 --set F=48 \
  --set L=2 --set batch=2 --set seq=16 --set microbatches=2
"$LMRUN" "$WORK/llama" --data "$DATA" --f64 --gradcheck 60 > "$WORK/gc1"
tail -1 "$WORK/gc1"
"$LMC" "$SRC/models/gpt2-124m.lm" -q -o "$WORK/gpt2" --set V=256 --set D=32 --set H=4 \
  --set L=2 --set batch=2 --set seq=16
"$LMRUN" "$WORK/gpt2" --data "$DATA" --f64 --gradcheck 60 > "$WORK/gc2"
tail -1 "$WORK/gc2"
MOE="--set experts=4 --set aux_loss_coef=0.5 --set z_loss_coef=0.1"
# shellcheck disable=SC2086
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/moe" --set D=32 --set H=4 --set G=2 --set F=48 \
  --set L=2 --set batch=2 --set seq=16 --set microbatches=2 $MOE
"$LMRUN" "$WORK/moe" --data "$DATA" --f64 --gradcheck 80 > "$WORK/gc3"
tail -1 "$WORK/gc3"
"$LMC" "$SRC/tests/e2e/moe-gelu.lm" -q -o "$WORK/gelu"
"$LMRUN" "$WORK/gelu" --data "$DATA" --f64 --gradcheck 80 > "$WORK/gc4"
tail -1 "$WORK/gc4"
"$LMC" "$SRC/tests/e2e/ew-chain.lm" -q -o "$WORK/ew"
"$LMRUN" "$WORK/ew" --data "$DATA" --f64 --gradcheck 60 > "$WORK/gc5"
tail -1 "$WORK/gc5"
echo "5 passed, 0 failed"
