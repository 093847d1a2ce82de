#!/usr/bin/env python3
"""Mutates a compiled bundle's manifest and schedule (dropped, edited and
duplicated lines) and runs one training step on each: lmrun must exit 0
or 1 with no sanitizer report or hang.
Usage: fuzz_bundle.py SEED N LMRUN BUNDLE DATA"""
import os, random, shutil, subprocess, sys, tempfile

seed, n, lmrun, base, data = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
random.seed(seed)
orig = {f: open(os.path.join(base, f)).read() for f in ("manifest.txt", "rank0.sched")}
edits = ["%999", "-1", "9999999999", "x", "=", "", "%0", "1e308", ",", "_"]
work = tempfile.mkdtemp()
bad = 0
for i in range(n):
    b = os.path.join(work, "b%d" % i)
    os.mkdir(b)
    f = random.choice(sorted(orig))
    for g, text in orig.items():
        if g == f:
            lines = text.split("\n")
            for _ in range(random.randint(1, 3)):
                k, op = random.randrange(len(lines)), random.random()
                if op < 0.3:
                    del lines[k]
                elif op < 0.6:
                    l, j = lines[k], random.randrange(len(lines[k]) + 1)
                    lines[k] = l[:j] + random.choice(edits) + l[j + random.randint(0, 3):]
                else:
                    lines.insert(k, random.choice(lines))
            text = "\n".join(lines)
        open(os.path.join(b, g), "w").write(text)
    try:
        r = subprocess.run([lmrun, b, "--data", data, "--max-steps", "1", "--quiet", "--eval-interval", "0"],
                           capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        print("FAIL hang on", b)
        bad += 1
        continue
    if r.returncode not in (0, 1) or b"Sanitizer" in r.stderr or b"runtime error" in r.stderr:
        print("FAIL exit %d on %s:\n%s" % (r.returncode, b, r.stderr[-600:].decode("latin-1")))
        bad += 1
    else:
        shutil.rmtree(b)
print("%d passed, %d failed" % (n - bad, bad))
sys.exit(1 if bad else 0)
