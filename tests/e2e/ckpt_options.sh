#!/bin/sh
# Checkpoint options: --keep N keeps the newest N; --save-interval 0 turns
# off the spec's save_every; a save that fails leaves no step_N.tmp behind
# and keeps the earlier checkpoints; a resume on other data says so.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/k" --set steps=10 --set batch=2 --set seq=16 --set save_every=2
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --keep 2
[ "$(ls "$WORK/k/ckpt" | grep -c '^step_')" -eq 2 ] && [ -d "$WORK/k/ckpt/step_00000010" ] &&
  [ -d "$WORK/k/ckpt/step_00000008" ] || { ls "$WORK/k/ckpt"; fail "--keep 2 did not keep exactly steps 8 and 10"; }
[ "$(readlink "$WORK/k/ckpt/latest")" = step_00000010 ] || fail "latest moved"
echo "ok   --keep 2: $(ls "$WORK/k/ckpt" | tr '\n' ' ')"

rm -rf "$WORK/k/ckpt"
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --save-interval 0
[ ! -e "$WORK/k/ckpt" ] || fail "--save-interval 0 still saved"
echo "ok   --save-interval 0 overrides the spec's save_every"

# the file size limit makes the step 4 save fail (metrics stay small)
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --max-steps 2 --out "$WORK/f"
set +e
(trap '' XFSZ; ulimit -f 400; exec "$LMRUN" "$WORK/k" --data "$DATA" --quiet --resume "$WORK/f/ckpt/latest" --out "$WORK/f" --max-steps 4) 2>"$WORK/err"
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "cannot write checkpoint '$WORK/f/ckpt/step_00000004.tmp/rank0.ckpt': File too large" "$WORK/err" ||
  { cat "$WORK/err"; fail "a failing save: exit $rc"; }
ls "$WORK/f/ckpt" | grep -q tmp && { ls "$WORK/f/ckpt"; fail "the failed save left its tmp folder"; }
[ "$(readlink "$WORK/f/ckpt/latest")" = step_00000002 ] || fail "latest does not point at step 2 after the failed save"
echo "ok   $(cat "$WORK/err"); nothing left behind"

head -c 200000 "$DATA" > "$WORK/other.txt"
"$LMRUN" "$WORK/k" --data "$WORK/other.txt" --quiet --resume "$WORK/f/ckpt/latest" --out "$WORK/o" --max-steps 3 2>"$WORK/err"
grep -q "lmrun: warning: the checkpoint was trained on other data (kjv.txt, [0-9]* tokens) than $WORK/other.txt (200000 tokens)" "$WORK/err" ||
  { cat "$WORK/err"; fail "no warning for other data"; }
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --resume "$WORK/f/ckpt/latest" --out "$WORK/o2" --max-steps 3 2>"$WORK/err"
[ ! -s "$WORK/err" ] || { cat "$WORK/err"; fail "a warning for the same data"; }
echo "ok   resume on other data warns, on the same data not"
echo "4 passed, 0 failed"
