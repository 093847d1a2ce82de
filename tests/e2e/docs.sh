#!/bin/sh
# Every command in the ```sh blocks of README.md and docs/*.md runs and
# succeeds, in order, from a folder laid out like the repository, with
# every training run cut to 2 steps (LMC_SMOKE_STEPS=2). scripts/setup.sh
# and scripts/test.sh lines are left to CI, which runs them anyway.
BIN=$(cd "$1" && pwd) SRC=$(cd "$2" && pwd)
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMP_NUM_THREADS   # as a user's shell has them
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   # the README says to, for mpirun by hand as root
export LMC_BUILD="$BIN" XDG_CACHE_HOME="$WORK/cache" LMC_SMOKE_STEPS=2
# (ctest runs another test beside this one: OpenMP's threads, a core each,
# that spin while they wait take that test's core; asleep while they wait,
# this test took 84 s beside a busy core against 116)
export OMP_WAIT_POLICY=passive
[ -s "$SRC/data/kjv.txt" ] || { mkdir -p "$SRC/data" && cp "$DATA" "$SRC/data/kjv.txt"; }
mkdir "$WORK/repo" "$WORK/repo/data"
for d in models scripts .venv; do ln -s "$SRC/$d" "$WORK/repo/$d"; done
ln -s "$BIN" "$WORK/repo/build"
cp "$DATA" "$WORK/repo/data/kjv.txt"
n=0
for doc in "$SRC/README.md" "$SRC"/docs/*.md; do
  awk '/^```sh$/ {on = 1; next} /^```/ {on = 0} on && NF && !/^#/' "$doc" > "$WORK/cmds"
  while IFS= read -r cmd; do
    case $cmd in *scripts/setup.sh*|*scripts/test.sh*) continue ;; esac
    (cd "$WORK/repo" && sh -c "$cmd") >"$WORK/log" 2>&1 </dev/null || { tail -20 "$WORK/log"; fail "$(basename "$doc"): '$cmd'"; }
    n=$((n + 1))
    echo "ok   $(basename "$doc"): $cmd" | cut -c1-110
  done < "$WORK/cmds"
done
echo "$n passed, 0 failed"
