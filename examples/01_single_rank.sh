#!/bin/sh
# One rank: compile the tiny Llama with small overrides and train it on the
# King James Bible (the GPU when one works, else the CPU).
# Expect: a banner, then the loss falling from about 5.5 (ln 256) to about
# 1.9 by step 200 (val loss about 2.0), a val loss every 50 steps, and a
# summary line; about 30 s on 2 cores.
. "$(dirname "$0")/common.sh"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set steps="$STEPS" --set eval_every=50 --out "$OUT/01"
