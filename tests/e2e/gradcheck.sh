#!/bin/sh
# The whole model's gradient (forward + backward of a 2-layer Llama and a
# GPT-2 style model) against finite differences in double precision.
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
echo "2 passed, 0 failed"
