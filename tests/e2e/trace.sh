#!/bin/sh
# lmrun --trace: a 2-stage 1F1B pipeline with 4 microbatches under mpirun
# writes one Chrome trace holding both ranks: every op, every send and
# receive (4 each per step per rank) and the optimizer of 3 steps, with
# sane times; a single rank traces the same way.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
small_model "$WORK/pp2" --set pp=2 --set microbatches=4 --set steps=6 --set batch=4 --set seq=16
$MPIRUN -np 2 "$LMRUN" "$WORK/pp2" --data "$DATA" --quiet --trace "$WORK/pp2.json" >"$WORK/out" 2>&1 ||
  { cat "$WORK/out"; fail "the traced run failed"; }
ls "$WORK" | grep -q 'pp2.json.rank' && fail "the per-rank parts were left behind"
python3 - "$WORK/pp2.json" 2 <<'PY' || fail "a bad trace"
import json, sys
from collections import Counter
ev = json.load(open(sys.argv[1]))["traceEvents"]
ranks = int(sys.argv[2])
spans = [e for e in ev if e["ph"] == "X"]
names = Counter((e["pid"], e["name"]) for e in spans)
assert sorted(e["pid"] for e in ev if e["ph"] == "M") == list(range(ranks)), "one process per rank"
assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans), "negative times"
for k in range(ranks):
    assert names[(k, "optimizer")] == 3, "3 traced steps on rank %d" % k
    assert names[(k, "matmul")] > 0, "ops on rank %d" % k
    if ranks > 1:
        assert names[(k, "send")] == 12 and names[(k, "recv")] == 12, names
busy = sum(e["dur"] for e in spans if e["pid"] == 0 and e["tid"] == 0)
print("ok   %d spans over %d ranks; stage 0 computes %.0f%% of the traced time" % (
    len(spans), ranks, 100 * busy / max(e["ts"] + e["dur"] for e in spans)))
PY
small_model "$WORK/one" --set steps=5 --set batch=2 --set seq=16
"$LMRUN" "$WORK/one" --data "$DATA" --quiet --trace "$WORK/one.json" --trace-steps 3
python3 - "$WORK/one.json" 1 <<'PY' || fail "a bad single-rank trace"
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
assert sum(e["name"] == "optimizer" for e in ev) == 3
print("ok   single rank: %d events" % len(ev))
PY
echo "2 passed, 0 failed"
