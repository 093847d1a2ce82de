#!/bin/sh
# Under mpirun: a world size that does not match the plan stops every
# rank with one clear message; a rank that dies ends the whole job within
# 30 s, naming the rank, instead of leaving the others hanging.
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
[ "$n" -eq 3 ] || { cat "$WORK/out"; fail "expected the message from all 3 ranks, got $n"; }
echo "ok   world size mismatch: all 3 ranks say so and exit"

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
echo "3 passed, 0 failed"
