#!/bin/sh
# Under mpirun: a world size that does not match the plan stops every
# rank with one clear message; a rank that dies ends the whole job within
# 30 s, naming the rank, instead of leaving the others hanging; a rank
# that is stopped (not dead) ends the job after --comm-timeout, naming the
# rank and the operation it waited on.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
small_model "$WORK/dp2" --set dp=2 --set steps=100000 --set batch=4 --set seq=32

set +e
$MPIRUN -np 3 "$LMRUN" "$WORK/dp2" --data "$DATA" >"$WORK/out" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "a world of 3 for a plan of 2 ran"
n=$(grep -c "lmrun: error: bundle $WORK/dp2 plans 2 ranks but 3 were started; run it with mpirun -np 2" "$WORK/out")
[ "$n" -eq 1 ] || { cat "$WORK/out"; fail "expected the message once, got $n"; }
echo "ok   world size mismatch: said once, all 3 ranks exit"

# an error every rank hits: reported once, for all
set +e
$MPIRUN -np 2 "$LMRUN" "$WORK/dp2" --data "$WORK/missing.txt" >"$WORK/out" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "a missing data file ran"
n=$(grep -c "lmrun: error:" "$WORK/out")
grep -q "lmrun: error: cannot open data file '$WORK/missing.txt': No such file or directory (all 2 ranks)" "$WORK/out" &&
  [ "$n" -eq 1 ] || { cat "$WORK/out"; fail "expected one message for all ranks, got $n"; }
echo "ok   an error on every rank: $(grep 'lmrun: error' "$WORK/out")"

MSG="bundle $WORK/dp2 plans 2 ranks but 1 was started; run it with mpirun -np 2" \
  expect_error "$LMRUN" "$WORK/dp2" --data "$DATA"

# rank 1 is killed after a second of training
start=$(date +%s)
set +e
$MPIRUN -np 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then (sleep 1; kill -9 $$) & fi; exec "$0" "$@"' \
  "$LMRUN" "$WORK/dp2" --data "$DATA" --quiet >"$WORK/out" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
[ $rc -ne 0 ] || fail "the job survived a dead rank"
[ $took -le 30 ] || fail "the job took ${took}s to end after a rank died"
grep -q "rank 1" "$WORK/out" || { cat "$WORK/out"; fail "the message does not name rank 1"; }
echo "ok   rank 1 killed: job ended in ${took}s: $(grep -m1 'rank 1' "$WORK/out" | sed 's/^ *//')"
# rank 1 is stopped once training has logged a step (so that rank 0 waits
# in a step's all-reduce, not in the start-up barrier); the limit is 3 s
stop_rank1 "$WORK/out" "$WORK/stop/metrics.jsonl" "$LMRUN" "$WORK/dp2" --data "$DATA" --quiet --comm-timeout 3 --out "$WORK/stop"
[ $rc -ne 0 ] || fail "the job survived a stopped rank"
[ $took -le 60 ] || fail "the job took ${took}s to end after a rank stopped"
# (in the step's all-reduce, or where the ranks agree after a step whether
# to stop: lmrun's SIGTERM handling)
grep -qE "lmrun: error: rank 0: no progress for 3 s in (an all-reduce of [0-9]* values over the dp group|agreeing with the other ranks)" "$WORK/out" ||
  { cat "$WORK/out"; fail "no message naming rank 0's wait"; }
echo "ok   rank 1 stopped: job ended in ${took}s: $(grep -m1 'no progress' "$WORK/out" | cut -c1-100)..."
echo "5 passed, 0 failed"
