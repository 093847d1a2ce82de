#!/bin/sh
# SIGKILL at random moments of training and saving (a checkpoint every
# step), resuming from ckpt/latest each time: the run ends with the same
# bytes in its final checkpoint as an uninterrupted run, and metrics.jsonl
# holds every step exactly once. KILLS (default 25) sets the count; the
# run has 6 steps per kill, so that most kills land in training or saving.
BIN=$1 SRC=$2 KILLS=${3:-25}
STEPS=$((KILLS * 6))
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/m" --set steps=$STEPS --set batch=2 --set seq=16
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval $STEPS --out "$WORK/straight"
delays=$(python3 -c "import random; r = random.Random(7); print(' '.join('%.3f' % r.uniform(0.05, 0.6) for _ in range($KILLS)))")
killed=0 resumed=0
for d in $delays; do
  resume=""
  [ -e "$WORK/soak/ckpt/latest" ] && resume="--resume $WORK/soak/ckpt/latest" && resumed=$((resumed + 1))
  # shellcheck disable=SC2086
  "$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval 1 --keep 3 --out "$WORK/soak" $resume 2>"$WORK/err" &
  pid=$!
  sleep "$d"
  kill -9 $pid 2>/dev/null && killed=$((killed + 1))
  wait $pid 2>/dev/null || true
  grep -v "nothing to do" "$WORK/err" | grep -q . && { cat "$WORK/err"; fail "a run after a kill failed"; }
done
resume=""
[ -e "$WORK/soak/ckpt/latest" ] && resume="--resume $WORK/soak/ckpt/latest"
# shellcheck disable=SC2086
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --save-interval 1 --keep 3 --out "$WORK/soak" $resume 2>"$WORK/err" ||
  grep -q "nothing to do" "$WORK/err" || { cat "$WORK/err"; fail "the last resume failed"; }
last=$(printf "step_%08d" $STEPS)
cmp "$WORK/straight/ckpt/$last/rank0.ckpt" "$WORK/soak/ckpt/$last/rank0.ckpt" ||
  fail "the final checkpoint differs from the uninterrupted run's"
grep -o '^{"step":[0-9]*,"loss"' "$WORK/soak/metrics.jsonl" | grep -o '[0-9]*' > "$WORK/got"
seq 1 $STEPS > "$WORK/want"
diff -q "$WORK/want" "$WORK/got" >/dev/null || fail "metrics.jsonl does not hold steps 1..$STEPS once each"
if ls "$WORK/soak/ckpt" | grep -q '\.tmp$'; then fail "a tmp folder survived"; fi
echo "ok   $killed kills, $resumed resumes: final checkpoint bitwise equal to the straight run, every step logged once"
echo "1 passed, 0 failed"
