#!/bin/sh
# Data parallel on 4 ranks: each rank takes a quarter of every batch; the
# gradients are all-reduced, so the run matches one rank's step for step
# (to float rounding). On 2 cores the ranks share them: this shows the
# mechanics, not a speedup.
# Expect: "running: mpirun -np 4 ...", then the same kind of progress as 01.
. "$(dirname "$0")/common.sh"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set dp=4 --set steps="$STEPS" --nproc 4 --out "$OUT/02"
