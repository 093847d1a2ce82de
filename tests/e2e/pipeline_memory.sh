#!/bin/sh
# Activation memory per pipeline stage, measured while training (the most
# microbatches whose forward pass ran and whose backward pass did not, times
# one microbatch's arena), against the plan: equal to it, and under 1F1B
# below GPipe's for m > pp (1F1B holds pp - stage microbatches, GPipe m).
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
for sch in gpipe 1f1b; do
  small_model "$WORK/$sch" --set pp=2 --set L=4 --set microbatches=8 --set schedule=$sch --set steps=2
  $MPIRUN -np 2 "$LMRUN" "$WORK/$sch" --data "$DATA" --quiet >"$WORK/$sch.log" 2>&1 \
    || { cat "$WORK/$sch.log"; fail "$sch did not run"; }
done
python3 - "$WORK/gpipe/metrics.jsonl" "$WORK/1f1b/metrics.jsonl" <<'PY' || fail "memory"
import json, sys
def mem(path):
    return {r["stage"]: r for r in map(json.loads, open(path)) if "act_peak_bytes" in r}
g, f = mem(sys.argv[1]), mem(sys.argv[2])
for name, m, want in (("gpipe", g, {0: 8, 1: 8}), ("1f1b", f, {0: 2, 1: 1})):
    for st, r in sorted(m.items()):
        assert r["act_peak_bytes"] == r["act_planned_bytes"], (name, st, r)
        assert r["inflight"] == want[st], (name, st, r["inflight"], want[st])
        print("ok   %s stage %d: %d microbatches in flight, %.2f MiB = planned" % (
            name, st, r["inflight"], r["act_peak_bytes"] / 2**20))
for st in (0, 1):
    assert f[st]["act_peak_bytes"] < g[st]["act_peak_bytes"]
    print("ok   stage %d: 1f1b %.2f MiB < gpipe %.2f MiB" % (
        st, f[st]["act_peak_bytes"] / 2**20, g[st]["act_peak_bytes"] / 2**20))
print("6 passed, 0 failed")
PY
