#!/bin/sh
# Tensor parallel on 2 ranks: the heads, the MLP width and the vocab are
# split (the spec's `layout H: tp, G: tp, F: tp, V: tp`); lmc inserts the
# all-reduces. Each rank holds half of most weights.
# Expect: the banner shows "layout dp 1 x tp 2 x pp 1" and about half the
# planned memory per rank of example 01.
. "$(dirname "$0")/common.sh"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set tp=2 --set steps="$STEPS" --nproc 2 --out "$OUT/03"
