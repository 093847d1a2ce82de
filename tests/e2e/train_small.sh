#!/bin/sh
# Trains a shrunk tiny preset on the KJV corpus and asserts that the
# validation loss falls from ln(256) = 5.55 to below 2.5 in 150 steps.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/b" --set steps=150 --set lr=4e-3
"$LMRUN" "$WORK/b" --data "$DATA" --eval-interval 150 --eval-batches 8 --log-interval 50 --save-interval 150
first=$(head -1 "$WORK/b/metrics.jsonl" | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
val=$(grep val_loss "$WORK/b/metrics.jsonl" | tail -1 | sed 's/.*"val_loss":\([0-9.e+-]*\).*/\1/')
echo "first train loss $first, final val loss $val"
awk -v f="$first" 'BEGIN { exit !(f > 5.3 && f < 5.8) }' || fail "first loss $f is not near ln(256)"
awk -v v="$val" 'BEGIN { exit !(v < 2.5) }' || fail "val loss $val is not below 2.5"
# text from the trained weights: the prompt, then exactly 40 sampled
# bytes, the same ones for the same seed
"$LMRUN" "$WORK/b" --resume "$WORK/b/ckpt/latest" --sample "And God said" --tokens 40 > "$WORK/s1"
"$LMRUN" "$WORK/b" --resume "$WORK/b/ckpt/latest" --sample "And God said" --tokens 40 > "$WORK/s2"
cat "$WORK/s1"
cmp "$WORK/s1" "$WORK/s2" || fail "sampling is not deterministic"
[ "$(head -c 12 "$WORK/s1")" = "And God said" ] || fail "the sample does not start with the prompt"
[ "$(wc -c < "$WORK/s1")" -eq 53 ] || fail "expected 12 + 40 bytes and a newline"
echo "2 passed, 0 failed"
