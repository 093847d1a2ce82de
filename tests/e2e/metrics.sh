#!/bin/sh
# metrics.jsonl holds every completed step exactly once: after a resume
# from a checkpoint older than the last logged step, after a SIGKILL in
# the middle of a run, and a full disk is an error, not an empty file.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
steps() { grep -o '^{"step":[0-9]*,"loss"' "$1" | grep -o '[0-9]*'; }

# ran to 25, resumed from the step 20 checkpoint to 30: steps 1..30 once each
small_model "$WORK/a" --set steps=30 --set batch=2 --set seq=16
"$LMRUN" "$WORK/a" --data "$DATA" --quiet --save-interval 10 --max-steps 25
"$LMRUN" "$WORK/a" --data "$DATA" --quiet --resume "$WORK/a/ckpt/step_00000020"
steps "$WORK/a/metrics.jsonl" > "$WORK/got"
seq 1 30 > "$WORK/want"
diff -u "$WORK/want" "$WORK/got" || fail "steps logged more or less than once after a resume"
echo "ok   resumed behind the last logged step: steps 1..30 once each"

# killed after its step 10 checkpoint: every step up to 10 is in the file
small_model "$WORK/k" --set steps=100000 --set batch=2 --set seq=16
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --save-interval 10 &
pid=$!
i=0
while [ ! -e "$WORK/k/ckpt/step_00000010" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
kill -9 $pid
wait $pid 2>/dev/null || true
steps "$WORK/k/metrics.jsonl" | head -10 > "$WORK/got"
seq 1 10 > "$WORK/want"
diff -u "$WORK/want" "$WORK/got" || fail "steps before the checkpoint were lost by the kill"
echo "ok   SIGKILL after step 10's checkpoint: steps 1..10 all logged"

# a full disk
small_model "$WORK/f" --set steps=3 --set batch=2 --set seq=16
ln -s /dev/full "$WORK/f/metrics.jsonl"
MSG="cannot write metrics file" expect_error "$LMRUN" "$WORK/f" --data "$DATA" --quiet
echo "3 passed, 0 failed"
