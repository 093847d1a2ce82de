#!/bin/sh
# Stop, resume, and resume into another layout: train at dp 2 saving every
# few steps, stop at the half; resume on one rank; then continue the same
# checkpoint as tp 2 x pp 2. Checkpoints hold whole tensors by name, so any
# layout loads them; a resume in the same layout is bit-exact.
# Expect: "resumed from ... at step N" twice, and losses that go on falling.
. "$(dirname "$0")/common.sh"
half=$((STEPS / 2)) save=$((STEPS / 4 > 0 ? STEPS / 4 : 1))
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set dp=2 --set steps="$STEPS" --nproc 2 --max-steps "$half" \
  --save-interval "$save" --out "$OUT/07/dp2"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set steps="$STEPS" --resume "$OUT/07/dp2/ckpt/latest" \
  --max-steps $((half + save)) --save-interval "$save" --out "$OUT/07/one"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set tp=2 --set pp=2 --set microbatches=2 --set steps="$STEPS" --nproc 4 \
  --resume "$OUT/07/one/ckpt/latest" --out "$OUT/07/tp2pp2"
