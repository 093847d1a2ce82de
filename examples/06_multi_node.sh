#!/bin/sh
# Several machines. With a hostfile (one line per machine, "host slots=N"),
# lmtrain hands it to mpirun; under Slurm (SLURM_NTASKS set, e.g. inside
# `sbatch -N 2 --ntasks-per-node 4`), it starts the ranks with srun
# instead. Every machine needs the same build and data at the same paths
# (a shared folder), and checkpoints and traces must go to a shared folder.
# This example runs the hostfile path on this machine alone.
# Expect: "running: mpirun -np 2 --bind-to none --hostfile ..." and a run
# as in 02. For Slurm, the same command inside a batch script:
#   #SBATCH -N 2 --ntasks-per-node 4
#   scripts/lmtrain models/tiny.lm --set dp=8
. "$(dirname "$0")/common.sh"
mkdir -p "$OUT/06"
echo "localhost slots=2" > "$OUT/06/hostfile"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set dp=2 --set steps="$STEPS" --hostfile "$OUT/06/hostfile" --nproc 2 --out "$OUT/06"
