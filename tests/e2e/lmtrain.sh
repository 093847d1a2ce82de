#!/bin/sh
# scripts/lmtrain as a launcher: --nproc N starts the plan's ranks through
# mpirun and prints the command; a rank count that does not match the
# plan, and a bad MoE option, end with a clear message.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM   # lmtrain sets them itself
export LMC_BUILD="$BIN" XDG_CACHE_HOME="$WORK/cache"
small="--set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --batch-size 4 --seq-len 16"
# shellcheck disable=SC2086
"$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small --set dp=2 --nproc 2 --max-steps 3 --data "$DATA" \
  --out "$WORK/dp2" --quiet >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "lmtrain --nproc 2 failed"; }
grep -q "^lmtrain: running: mpirun -np 2 --bind-to none .*/runtime/lmrun .* --max-steps 3" "$WORK/out" ||
  { cat "$WORK/out"; fail "the command was not printed"; }
[ "$(grep -c '"loss"' "$WORK/dp2/metrics.jsonl")" -eq 3 ] || fail "the 2-rank run did not log 3 steps"
echo "ok   $(grep '^lmtrain: running' "$WORK/out" | cut -c1-60)..."
# shellcheck disable=SC2086
MSG="lmtrain: the plan has 2 rank(s) (dp x tp x pp x ep) but 3 were asked for" \
  expect_error "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small --set dp=2 --nproc 3 --data "$DATA"
MSG="error: top_k = 5 is more than the 4 experts [moe-top-k]" \
  expect_error "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" --num-experts 4 --top-k 5
echo "3 passed, 0 failed"
