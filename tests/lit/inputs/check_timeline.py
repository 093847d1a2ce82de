"""Checks lmc --dump=timeline from stdin: one process per rank, every
microbatch's forward and backward once per rank, no overlapping compute on
a rank, a stage's backward of a microbatch after the next stage's, and the
last stage idle for about (p - 1) / (m + p - 1) of the step (1F1B's
bubble); those two only for a plain pipeline (the ranks are the stages:
--pipeline). Usage: check_timeline.py RANKS MICROBATCHES [--pipeline]"""
import json
import sys

ranks, m = int(sys.argv[1]), int(sys.argv[2])
ev = json.load(sys.stdin)["traceEvents"]
spans = [e for e in ev if e["ph"] == "X"]
assert sorted(e["pid"] for e in ev if e["ph"] == "M") == list(range(ranks))
end = max(e["ts"] + e["dur"] for e in spans)
for r in range(ranks):
    comp = sorted((e["ts"], e["ts"] + e["dur"], e["name"], e["args"].get("microbatch")) for e in spans
                  if e["pid"] == r and e["name"] in ("forward", "backward"))
    assert sorted(x[3] for x in comp if x[2] == "forward") == list(range(m)), r
    assert sorted(x[3] for x in comp if x[2] == "backward") == list(range(m)), r
    for a, b in zip(comp, comp[1:]):
        assert a[1] <= b[0] + 0.01, ("overlap on rank", r, a, b)   # times are printed to 0.001 us
if "--pipeline" not in sys.argv:
    print("ok: %d ranks, %d microbatches" % (ranks, m))
    sys.exit(0)
def bwd_end(r, mb):
    return [e["ts"] + e["dur"] for e in spans if e["pid"] == r and e["name"] == "backward" and e["args"]["microbatch"] == mb][0]
def bwd_start(r, mb):
    return [e["ts"] for e in spans if e["pid"] == r and e["name"] == "backward" and e["args"]["microbatch"] == mb][0]
for mb in range(m):
    for r in range(ranks - 1):
        assert bwd_start(r, mb) >= bwd_end(r + 1, mb) - 0.01, ("backward before the next stage's", r, mb)
last = ranks - 1
busy = sum(e["dur"] for e in spans if e["pid"] == last and e["name"] in ("forward", "backward"))
idle, want = 1 - busy / end, (ranks - 1) / (m + ranks - 1)
assert abs(idle - want) < 0.05, (idle, want)
print("ok: %d ranks, %d microbatches, last stage idle %.3f (1F1B bubble %.3f)" % (ranks, m, idle, want))
