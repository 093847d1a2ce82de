#!/bin/sh
# All three at once: dp 2 x tp 2 x pp 2 = 8 ranks (oversubscribed on a
# small machine). `lmc SPEC --plan 8` lists every legal layout for 8 ranks
# with its planned memory; this picks one by hand.
# Expect: "running: mpirun -np 8 ... --oversubscribe" and the loss falling
# as in 01.
. "$(dirname "$0")/common.sh"
"${LMC_BUILD:-$ROOT/build}/compiler/lmc" "$ROOT/models/tiny.lm" $SMALL --plan 8 | head -6
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set dp=2 --set tp=2 --set pp=2 --set microbatches=2 \
  --set steps="$STEPS" --nproc 8 --out "$OUT/05"
