#!/bin/sh
# scripts/plot turns two runs' metrics into one PNG (steps and tokens on
# the x axis), an MoE run's with its expert load panel; a folder without
# metrics is a clear error.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/m" --set steps=6 --set batch=2 --set seq=16 --set eval_every=3
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --out "$WORK/runs/a"
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --out "$WORK/runs/b" --lr 1e-4
"$SRC/scripts/plot" "$WORK/runs/a" "$WORK/runs/b" -o "$WORK/two.png" >/dev/null
"$SRC/scripts/plot" "$WORK/runs/a/metrics.jsonl" --tokens -o "$WORK/tokens.png" >/dev/null
for f in two tokens; do
  [ "$(head -c 8 "$WORK/$f.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] || fail "$f.png is not a PNG"
  [ "$(wc -c < "$WORK/$f.png")" -gt 20000 ] || fail "$f.png is too small to hold the curves"
done
echo "ok   two runs, by steps and by tokens"
small_model "$WORK/moe" --set steps=6 --set batch=2 --set seq=16 --set experts=4
"$LMRUN" "$WORK/moe" --data "$DATA" --quiet --out "$WORK/runs/moe"
"$SRC/scripts/plot" "$WORK/runs/moe" "$WORK/runs/a" -o "$WORK/moe.png" >/dev/null
[ "$(head -c 8 "$WORK/moe.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] || fail "moe.png is not a PNG"
[ "$(wc -c < "$WORK/moe.png")" -gt "$(wc -c < "$WORK/two.png")" ] || fail "moe.png has no load panel"
echo "ok   an MoE run beside a dense one, with the load panel"
mkdir "$WORK/empty"
set +e
"$SRC/scripts/plot" "$WORK/empty" -o "$WORK/x.png" 2>"$WORK/err"
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "plot: cannot read $WORK/empty/metrics.jsonl" "$WORK/err" || { cat "$WORK/err"; fail "no clear error"; }
echo "ok   $(cat "$WORK/err")"
echo "3 passed, 0 failed"
