# Shared by the end-to-end tests: paths, a small model, assertions.
# The caller sets BIN (the build folder) and SRC (the source folder).
set -eu
LMC="$BIN/compiler/lmc"
LMRUN="$BIN/runtime/lmrun"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmc-e2e.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA="$BIN/data/kjv.txt"

need_data() {
  [ -s "$DATA" ] || "$SRC/scripts/prepare_kjv.sh" "$DATA" >/dev/null
}

fail() { echo "FAIL: $*"; exit 1; }

# expect_error CMD... : the command exits 1 and its stderr contains $MSG.
expect_error() {
  set +e
  "$@" >"$WORK/out" 2>"$WORK/err"
  rc=$?
  set -e
  [ $rc -eq 1 ] || { cat "$WORK/err"; fail "'$*' exited $rc, want 1"; }
  grep -qF -- "$MSG" "$WORK/err" || { cat "$WORK/err"; fail "'$*': no '$MSG' in stderr"; }
  echo "ok   $(head -1 "$WORK/err")"
  expected=$((${expected:-0} + 1))   # (the bad inputs passed so far)
}

# small_model DIR [--set ...]: the tiny preset shrunk for tests.
small_model() {
  dir=$1; shift
  "$LMC" "$SRC/models/tiny.lm" -q -o "$dir" --set D=64 --set H=4 --set G=2 --set F=172 \
    --set L=2 --set batch=8 --set seq=64 --set warmup=10 --set eval_every=0 "$@"
}

# mpi_env: run ranks as root, one thread each, any number on these cores.
mpi_env() {
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  # Open MPI's own allocations (some in plugins it unloads) outlive
  # MPI_Finalize: under the sanitizer build, leak checking covers the
  # single-rank tests, not the ranks started by mpirun.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
  # each test's mpirun keeps its session folder in the test's own: two
  # tests' sharing /tmp/ompi.HOST.UID raced (one's cleanup removed the
  # folder the other's orte_init was making, and its run failed)
  export OMPI_MCA_orte_tmpdir_base="$WORK"
  MPIRUN="mpirun --oversubscribe --bind-to none"
}

# The parallel equivalence tests' two steps (mpi_env first; $SETS and
# $MODEL pick the model).
# run NAME NP PRECISION [--set ...]: train 10 steps into $WORK/NAME ($EXTRA: more lmrun flags)
run() {
  name=$1 np=$2 prec=$3; shift 3
  # shellcheck disable=SC2086
  "$LMC" "$SRC/models/${MODEL:-tiny}.lm" -q -o "$WORK/$name" $SETS "$@"
  # shellcheck disable=SC2086
  $MPIRUN -np "$np" "$LMRUN" "$WORK/$name" --data "$DATA" $prec --quiet --save-interval 10 \
    --eval-interval 10 --eval-batches 2 ${EXTRA:-} >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; fail "$name did not run"; }
}

# compare NAME REF RTOL [SKIP...]: every logged loss, then the final weights
compare() {
  python3 - "$WORK/$2/metrics.jsonl" "$WORK/$1/metrics.jsonl" "$3" <<'PY' || fail "$1: losses differ from $2"
import json, sys
ref = [r for r in map(json.loads, open(sys.argv[1])) if "step" in r]
got = [r for r in map(json.loads, open(sys.argv[2])) if "step" in r]
ref = ref[len(ref) - len(got):]      # a resumed run logs only its own steps
assert got and ref[0]["step"] == got[0]["step"], "the logs do not line up"
worst = 0.0
for r, g in zip(ref, got):
    k = "loss" if "loss" in r else "val_loss"
    worst = max(worst, abs(r[k] - g[k]) / abs(r[k]))
print("losses: max rel diff %.3e over %d records" % (worst, len(ref)))
sys.exit(worst > float(sys.argv[3]))
PY
  name=$1 ref=$2 tol=$3
  shift 3
  python3 "$SRC/tests/e2e/ckpt_compare.py" "$WORK/$ref/ckpt/latest" "$WORK/$name/ckpt/latest" "$tol" "$@" || fail "$name: weights differ"
  echo "ok   $name matches $ref"
  passed=$((passed + 1))
}

# five_steps METRICS: until 5 steps are logged there (a minute at most).
five_steps() {
  for _ in $(seq 600); do
    [ -f "$1" ] && [ "$(grep -c '"loss"' "$1")" -ge 5 ] && return
    sleep 0.1
  done
}

# term_one_rank PID PATTERN METRICS: once 5 steps are logged, SIGTERM to
# the last process whose command line has PATTERN (one rank of the job
# PID), then the job's end; n: the steps it logged.
term_one_rank() {
  five_steps "$3"
  kill -TERM "$(pgrep -f "$2" | tail -1)"
  set +e
  wait "$1"
  set -e
  n=$(grep -c '"loss"' "$3")
}

# stop_rank1 LOG METRICS CMD...: CMD on 2 ranks (mpi_env), its output in
# LOG; once METRICS logs a step, rank 1 is stopped (SIGSTOP), then the
# job's end is waited for and rank 1 killed; rc: the job's exit status,
# took: seconds from the start to its end.
stop_rank1() {
  log=$1 metrics=$2
  shift 2
  rm -f "$WORK/rank1.pid"
  start=$(date +%s)
  set +e
  $MPIRUN -np 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then echo $$ > "$0.pid"; fi; p=$1; shift; exec "$p" "$@"' \
    "$WORK/rank1" "$@" >"$log" 2>&1 </dev/null &
  job=$!
  i=0
  until grep -qs '"loss"' "$metrics" || [ $i -ge 600 ]; do sleep 0.1; i=$((i + 1)); done
  kill -STOP "$(cat "$WORK/rank1.pid")"
  wait $job
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  kill -KILL "$(cat "$WORK/rank1.pid")" 2>/dev/null || true
}
