"""Compares two runs' metrics.jsonl step by step: loss, gradient norm and
validation loss within a relative tolerance. Used by the emulated-CUDA test
and by scripts/gpu_check.sh.
Usage: compare_metrics.py REF.jsonl GOT.jsonl NAME [RTOL [GRAD_NORM_RTOL [UNTIL]]]
(the gradient norm gets its own tolerance where the arithmetic differs, as
with tf32 or bf16 products: its trajectory drifts step by step while the loss stays
close; with UNTIL it is held to it through that step only, the loss
throughout: a bf16 run on a GPU flips a few roundings against the CPU's from
the first step, and by step 15 or so the two trajectories have parted, the
gradient norm at a spike by 10% while the loss stays within 1e-3. A bug
shows from the first steps; the per-step line printed on failure says
which it is)"""
import json
import sys


def records(path):
    return [r for r in map(json.loads, open(path)) if "step" in r]


ref_path, got_path, name = sys.argv[1:4]
rtol = float(sys.argv[4]) if len(sys.argv) > 4 else 2e-3
gtol = float(sys.argv[5]) if len(sys.argv) > 5 else rtol
until = int(sys.argv[6]) if len(sys.argv) > 6 else None
try:
    ref, got = records(ref_path), records(got_path)
except OSError as e:
    print("FAIL", name, e)
    sys.exit(1)
worst = {"loss": 0.0, "grad_norm": 0.0, "val_loss": 0.0}
at = {}
for r, g in zip(ref, got):
    for k in worst:
        if k == "grad_norm" and until is not None and r["step"] > until:
            continue
        if k in r and k in g and (r[k] is None or g[k] is None):   # (lmrun writes an inf or nan as null)
            worst[k], at[k] = float("inf"), r["step"]
        elif k in r and k in g and abs(r[k] - g[k]) / abs(r[k]) > worst[k]:
            worst[k], at[k] = abs(r[k] - g[k]) / abs(r[k]), r["step"]
ok = len(ref) == len(got) and len(ref) > 0 and all(worst[k] < (gtol if k == "grad_norm" else rtol) for k in worst)
print("%s %s: max rel diff loss %.2e, grad norm %.2e%s, val loss %.2e over %d records (tolerance %.0e%s)" % (
    "ok  " if ok else "FAIL", name, worst["loss"], worst["grad_norm"], " to step %d" % until if until else "",
    worst["val_loss"], len(got), rtol, ", grad norm %.0e" % gtol if gtol != rtol else ""))
def rel(r, g, k):
    if k not in r or k not in g:
        return 0.0
    return float("inf") if r[k] is None or g[k] is None else abs(r[k] - g[k]) / abs(r[k])


if not ok and at:   # where it went wrong: a difference from the first step is a bug, a late one drift
    print("     largest at step " + ", ".join("%s %d" % (k, at[k]) for k in worst if k in at))
    print("     step: loss, grad norm rel diff: " + " ".join(
        "%d:%.0e,%.0e" % (r["step"], rel(r, g, "loss"), rel(r, g, "grad_norm")) for r, g in zip(ref, got)))
sys.exit(0 if ok else 1)
