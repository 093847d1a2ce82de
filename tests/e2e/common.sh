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
  MPIRUN="mpirun --oversubscribe --bind-to none"
}
