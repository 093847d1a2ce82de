#!/bin/sh
# Every script in examples/ runs, shortened (STEPS=4), and prints what its
# header promises.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM   # lmtrain sets them itself
export LMC_BUILD="$BIN" XDG_CACHE_HOME="$WORK/cache" STEPS=4 OUT="$WORK/ex"
[ -s "$SRC/data/kjv.txt" ] || { mkdir -p "$SRC/data" && cp "$DATA" "$SRC/data/kjv.txt"; }
n=0
for ex in "$SRC"/examples/0*.sh; do
  name=$(basename "$ex" .sh)
  sh "$ex" >"$WORK/$name.log" 2>&1 || { tail -30 "$WORK/$name.log"; fail "$name failed"; }
  case $name in
    02_*) want="running: mpirun -np 4" ;;
    03_*) want="layout dp 1 x tp 2 x pp 1" ;;
    04_*) want="layout dp 1 x tp 1 x pp 2" ;;
    05_*) want="running: mpirun -np 8" ;;
    06_*) want="--hostfile $WORK/ex/06/hostfile" ;;
    07_*) want="resumed from $WORK/ex/07/one/ckpt/latest" ;;
    08_*) want="weights from $WORK/ex/08/hf" ;;
    09_*) want="layout dp 1 x tp 1 x pp 1 x ep 2" ;;
    *) want="done: 4 steps" ;;
  esac
  grep -qF -- "$want" "$WORK/$name.log" || { tail -30 "$WORK/$name.log"; fail "$name: no '$want'"; }
  n=$((n + 1))
  echo "ok   $name: $want"
done
[ -s "$WORK/ex/04/trace.json" ] || fail "example 04 wrote no trace"
echo "$n passed, 0 failed"
