#!/bin/sh
# Mixture of Experts: the small Llama's MLPs as 8 experts, each token sent
# to 2 of them (--num-experts 8 --top-k 2: no edit of the spec), first on
# one rank, then with the experts split over 2 ranks (ep = 2: 4 experts a
# rank, tokens exchanged by all-to-alls) from the same seed.
# Expect: lmc prints the total and the active parameters; the progress
# line shows "load", the busiest expert's load over a balanced one, which
# falls toward 1 as the balancing loss acts; the two runs log the same
# losses (metrics.jsonl: ce, moe_aux, moe_z, moe_load_max, moe_load_min).
. "$(dirname "$0")/common.sh"
MOE="--num-experts 8 --top-k 2"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL $MOE --set steps="$STEPS" --out "$OUT/09/one"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL $MOE --set steps="$STEPS" --set ep=2 --nproc 2 --out "$OUT/09/ep2"
