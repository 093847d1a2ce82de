#!/bin/sh
# SIGKILL at random moments of training and saving (a checkpoint every
# step), resuming from ckpt/latest each time: the run then ends with the
# same bytes in its final checkpoint as an uninterrupted run of as many
# steps, and metrics.jsonl holds every step exactly once. KILLS (default
# 12) sets the count.
BIN=$1 SRC=$2 KILLS=${3:-12}
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/m" --set steps=1000000 --set batch=2 --set seq=16
delays=$(python3 -c "import random; r = random.Random(7); print(' '.join('%.3f' % r.uniform(0.05, 0.6) for _ in range($KILLS)))")
killed=0
for d in $delays; do
  resume=""
  [ -e "$WORK/soak/ckpt/latest" ] && resume="--resume $WORK/soak/ckpt/latest"
  # shellcheck disable=SC2086
  "$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval 1 --keep 3 --out "$WORK/soak" $resume 2>"$WORK/err" &
  pid=$!
  sleep "$d"
  kill -9 $pid 2>/dev/null && killed=$((killed + 1))
  wait $pid 2>/dev/null || true
  [ -s "$WORK/err" ] && { cat "$WORK/err"; fail "a run after a kill failed"; }
done
# three more steps past the last checkpoint, then the same steps straight
at=0
[ -e "$WORK/soak/ckpt/latest" ] && at=$(readlink "$WORK/soak/ckpt/latest" | sed 's/step_0*//')
end=$((at + 3))
resume=""
[ $at -gt 0 ] && resume="--resume $WORK/soak/ckpt/latest"
# shellcheck disable=SC2086
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval 1 --keep 3 --out "$WORK/soak" --max-steps $end $resume
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval $end --out "$WORK/straight" --max-steps $end
last=$(printf "step_%08d" $end)
cmp "$WORK/straight/ckpt/$last/rank0.ckpt" "$WORK/soak/ckpt/$last/rank0.ckpt" ||
  fail "the final checkpoint differs from the uninterrupted run's"
grep -o '^{"step":[0-9]*,"loss"' "$WORK/soak/metrics.jsonl" | grep -o '[0-9]*' > "$WORK/got"
seq 1 $end > "$WORK/want"
diff -q "$WORK/want" "$WORK/got" >/dev/null || fail "metrics.jsonl does not hold steps 1..$end once each"
if ls "$WORK/soak/ckpt" | grep -q '\.tmp$'; then fail "a tmp folder survived"; fi
echo "ok   $killed kills over $end steps: final checkpoint bitwise equal to the straight run, every step logged once"
echo "1 passed, 0 failed"
