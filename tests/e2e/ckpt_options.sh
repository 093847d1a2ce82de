#!/bin/sh
# Checkpoint options: --keep N keeps the newest N; --save-interval 0 turns
# off the spec's save_every; a save that fails leaves no step_N.tmp behind
# and keeps the earlier checkpoints; a resume on other data says so.
# Saves are written beside training: on a slow disk (LMC_CKPT_SLOW_DISK)
# the steps after a save run before it is in place, the bytes are those
# of a save on a fast one (one rank and two), and an error that ends the
# run puts a save in flight in place first. SIGTERM (one rank's, under
# mpirun too) ends a run after the step under way, with its checkpoint
# saved, exit status 143, and a resume from it goes on as the run would have.
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
# a slow disk: steps 3 and 4 run while step 2's checkpoint is written
"$LMRUN" "$WORK/k" --data "$DATA" --max-steps 6 --log-interval 1 --out "$WORK/fast" >/dev/null
LMC_CKPT_SLOW_DISK=1 "$LMRUN" "$WORK/k" --data "$DATA" --max-steps 6 --log-interval 1 --out "$WORK/slow" >"$WORK/out"
a=$(grep -n "^step     3/6 " "$WORK/out" | cut -d: -f1)
b=$(grep -n "^step     2 | saved $WORK/slow/ckpt/step_00000002 ([0-9.]* MiB: copied in [0-9.]* s, then written in 1.[0-9]* s beside training)\$" \
  "$WORK/out" | cut -d: -f1)
[ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ] || { cat "$WORK/out"; fail "step 3 did not run before step 2's save was in place, or no saved line"; }
for s in 2 4 6; do
  cmp "$WORK/fast/ckpt/step_0000000$s/rank0.ckpt" "$WORK/slow/ckpt/step_0000000$s/rank0.ckpt" || fail "step $s saved other bytes"
done
[ "$(readlink "$WORK/slow/ckpt/latest")" = step_00000006 ] || fail "latest is not step 6 after a slow save"
echo "ok   $(grep "step_00000002 (" "$WORK/out" | sed "s|$WORK/||"), after step 3; the same bytes"

# an error ends the run (divergence) while a save is written: it is put in place first
set +e
LMC_CKPT_SLOW_DISK=1 "$LMRUN" "$WORK/k" --data "$DATA" --quiet --save-interval 1 --lr 1e6 --out "$WORK/div" 2>"$WORK/err"
rc=$?
set -e
s=$(sed -n "s|^lmrun: the checkpoint of step \([0-9]*\) was written before the error: $WORK/div/ckpt/step_0*\1\$|\1|p" "$WORK/err")
[ $rc -eq 1 ] && [ -n "$s" ] && grep -q "training diverged" "$WORK/err" &&
  [ "$(readlink "$WORK/div/ckpt/latest")" = "$(printf step_%08d "$s")" ] || { cat "$WORK/err"; ls "$WORK/div/ckpt"; fail "the save in flight at the error was lost"; }
"$LMRUN" "$WORK/k" --data "$DATA" --quiet --resume "$WORK/div/ckpt/latest" --out "$WORK/div2" --max-steps $((s + 1)) 2>/dev/null || true
[ -f "$WORK/div2/metrics.jsonl" ] || fail "the save put in place at the error does not load"
echo "ok   $(head -1 "$WORK/err" | sed "s|$WORK/||"); it loads"

set +e
LMC_CKPT_SLOW_DISK=fast "$LMRUN" "$WORK/k" --data "$DATA" --quiet --max-steps 2 --out "$WORK/bad" 2>"$WORK/err"
rc=$?
set -e
[ $rc -eq 1 ] && grep -qx "lmrun: error: LMC_CKPT_SLOW_DISK=fast: it takes seconds from 0 to 600 (each checkpoint write waits that long first)" "$WORK/err" ||
  { cat "$WORK/err"; fail "a bad LMC_CKPT_SLOW_DISK"; }
echo "ok   $(cat "$WORK/err")"

# two ranks (pipeline stages, each writing a shard), one on a slow disk: the same bytes
mpi_env
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/pp" --set D=64 --set H=4 --set G=2 --set F=172 --set L=2 --set batch=8 \
  --set seq=64 --set eval_every=0 --set steps=4 --set save_every=2 --set pp=2
$MPIRUN -np 2 "$LMRUN" "$WORK/pp" --data "$DATA" --quiet --out "$WORK/ppfast" || fail "pp 2 did not run"
# shellcheck disable=SC2016
$MPIRUN -np 2 sh -c '[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export LMC_CKPT_SLOW_DISK=1; exec "$0" "$@"' \
  "$LMRUN" "$WORK/pp" --data "$DATA" --comm-timeout 20 --out "$WORK/ppslow" >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "pp 2 on a slow disk did not run"; }
for s in 2 4; do
  for k in 0 1; do
    cmp "$WORK/ppfast/ckpt/step_0000000$s/rank$k.ckpt" "$WORK/ppslow/ckpt/step_0000000$s/rank$k.ckpt" || fail "pp 2: step $s rank $k differs"
  done
done
grep -q "saved $WORK/ppslow/ckpt/step_00000004 (" "$WORK/out" || { cat "$WORK/out"; fail "pp 2: no saved line"; }
echo "ok   pp 2, rank 1 on a slow disk: the same shards"
# SIGTERM: the step under way finishes and is saved; the resume goes on to
# the same bits as a run never stopped
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/long" --set D=64 --set H=4 --set G=2 --set F=172 --set L=2 --set batch=8 \
  --set seq=64 --set eval_every=0 --set steps=100000
"$LMRUN" "$WORK/long" --data "$DATA" --save-interval 1000 --out "$WORK/term" >"$WORK/out" 2>&1 &
pid=$!
five_steps "$WORK/term/metrics.jsonl"
kill -TERM $pid
set +e
wait $pid
rc=$?
set -e
n=$(grep -c '"loss"' "$WORK/term/metrics.jsonl")
grep -qx "stopped by SIGTERM after step $n; to go on: --resume $WORK/term/ckpt/latest" "$WORK/out" && [ $rc -eq 143 ] &&
  [ "$(readlink "$WORK/term/ckpt/latest")" = "$(printf step_%08d "$n")" ] || { cat "$WORK/out"; fail "SIGTERM: exit $rc"; }
"$LMRUN" "$WORK/long" --data "$DATA" --quiet --resume "$WORK/term/ckpt/latest" --max-steps $((n + 2)) --out "$WORK/term"
"$LMRUN" "$WORK/long" --data "$DATA" --quiet --max-steps $((n + 2)) --save-interval 0 --out "$WORK/straight"
grep '"loss"' "$WORK/straight/metrics.jsonl" | sed 's/,"ms":[0-9.]*//' > "$WORK/a"
grep '"loss"' "$WORK/term/metrics.jsonl" | sed 's/,"ms":[0-9.]*//' > "$WORK/b"
cmp -s "$WORK/a" "$WORK/b" || { diff "$WORK/a" "$WORK/b" | head; fail "SIGTERM: the resumed run parts from the straight one"; }
echo "ok   SIGTERM after step $n: saved, exit 143; resumed, the same $((n + 2)) steps as a straight run"

# under mpirun, one rank's SIGTERM stops both stages after the same step
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/longpp" --set D=64 --set H=4 --set G=2 --set F=172 --set L=2 --set batch=8 \
  --set seq=64 --set eval_every=0 --set steps=100000 --set pp=2
$MPIRUN -np 2 "$LMRUN" "$WORK/longpp" --data "$DATA" --save-interval 1000 --comm-timeout 20 --out "$WORK/termpp" \
  >"$WORK/out" 2>&1 &
term_one_rank $! "lmrun $WORK/longpp" "$WORK/termpp/metrics.jsonl"
grep -q "stopped by SIGTERM after step $n; to go on: --resume $WORK/termpp/ckpt/latest" "$WORK/out" &&
  [ -f "$WORK/termpp/ckpt/$(printf step_%08d "$n")/rank0.ckpt" ] && [ -f "$WORK/termpp/ckpt/$(printf step_%08d "$n")/rank1.ckpt" ] ||
  { cat "$WORK/out"; ls -R "$WORK/termpp/ckpt"; fail "SIGTERM to one rank of two"; }
echo "ok   SIGTERM to one rank of pp 2 after step $n: both stages saved it"
echo "11 passed, 0 failed"
