#!/bin/sh
# Pipeline parallel, 2 stages, 1F1B over 4 microbatches (`layout L: pp`),
# with a Chrome trace of 3 steps: open runs/examples/04/trace.json in
# https://ui.perfetto.dev to see each stage's forward and backward passes,
# the sends between them and the bubble.
# Expect: "layout dp 1 x tp 1 x pp 2", and trace.json written at the end.
. "$(dirname "$0")/common.sh"
mkdir -p "$OUT/04"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set pp=2 --set microbatches=4 --set schedule=1f1b \
  --set steps="$STEPS" --nproc 2 --out "$OUT/04" --trace "$OUT/04/trace.json"
