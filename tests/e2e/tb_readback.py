"""Reads a run's TensorBoard event files with TensorBoard's own reader and
compares every scalar with metrics.jsonl (an MoE run's too): each step once (a resume's
START event drops what the earlier run logged past the checkpoint), the
same values at float precision. Usage: tb_readback.py OUT"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

out = sys.argv[1]
acc = EventAccumulator(out + "/tb")
acc.Reload()
rows = [r for r in map(json.loads, open(out + "/metrics.jsonl")) if "step" in r]
want = {"train/loss": {r["step"]: r["loss"] for r in rows if "loss" in r},
        "train/lr": {r["step"]: r["lr"] for r in rows if "lr" in r},
        "train/grad_norm": {r["step"]: r["grad_norm"] for r in rows if "grad_norm" in r},
        "val/loss": {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}}
# an MoE run: the cross-entropy and each layer's balance metrics
if any("ce" in r for r in rows):
    want["train/ce"] = {r["step"]: r["ce"] for r in rows if "ce" in r}
    for key in ("aux", "z", "load_max", "load_min"):
        for layer in range(len(next(r for r in rows if "ce" in r)["moe_" + key])):
            want["moe/layer%d/%s" % (layer, key)] = {r["step"]: r["moe_" + key][layer] for r in rows if "ce" in r}
bad = 0
for tag, w in want.items():
    if not w:
        continue   # not logged by this run (no validation)
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    steps = [s for s, _ in got]
    if steps != sorted(w):
        print("FAIL %s: steps %s, want %s" % (tag, steps, sorted(w)))
        bad += 1
        continue
    worst = max(abs(v - w[s]) / max(abs(w[s]), 1e-30) for s, v in got)
    if worst > 1e-6:
        print("FAIL %s: values differ by %.1e" % (tag, worst))
        bad += 1
    else:
        print("ok   %s: %d steps read back by TensorBoard, max rel diff %.1e" % (tag, len(got), worst))
sys.exit(1 if bad else 0)
